//! Time as the exporter keeps it: whole milliseconds since the Unix epoch.
//!
//! The state machine never reads a clock; time comes in with each input. This
//! is the one place that reads the wall clock ([`now_millis`]), at the edge:
//! when a request arrives and when the clock ticks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// A duration in whole milliseconds, saturating.
pub fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}
