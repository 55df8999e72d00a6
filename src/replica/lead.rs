//! The lease holder's duties. One replica at a time holds a lease in Redis
//! (taken over once its holder stops renewing it); it alone
//! - appends the clock's ticks (run expiry, windows), once a second;
//! - exports the spans of the outbox (the span exporter asks
//!   [`Shared::exports_spans`]);
//! - puts a snapshot of the whole state in Redis every
//!   `--storage.redis-snapshot-interval`, and then trims the log.
//!
//! The trim rule: an entry is deleted once it is before both the snapshot
//! just written and the stored position of every replica that reported
//! within [`live_within`]. A live replica never loses an entry it still
//! needs; one that comes back later, or a new one, finds a gap and starts
//! from the snapshot, which holds everything before the entries kept.

use super::redis::RedisLog;
use super::{LogHandle, LogMetrics, Settings, Snapshot};
use crate::clock::now_millis;
use crate::state::Input;
use crate::writer::{Shared, WriterHandle};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the clock ticks.
const TICK: Duration = Duration::from_secs(1);
/// A replica's report is forgotten after this long without a new one.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How recent a replica's report must be for the trim to wait for it.
fn live_within(lease: Duration) -> Duration {
    (lease * 3).max(Duration::from_secs(30))
}

/// The lease task's state.
pub(super) struct Leader {
    pub redis: RedisLog,
    pub log: LogHandle,
    pub shared: Arc<Shared>,
    pub writer: WriterHandle,
    pub settings: Settings,
    pub metrics: LogMetrics,
}

impl Leader {
    /// Renews (or tries to take) the lease every third of its time to live,
    /// and does the holder's duties while it holds it.
    pub async fn run(self) {
        let renew_every = self.settings.lease / 3;
        let mut interval = tokio::time::interval(TICK.min(renew_every));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut held = false;
        let mut renewed: Option<Instant> = None;
        let mut ticked: Option<Instant> = None;
        let mut snapshot_at = Instant::now();
        loop {
            interval.tick().await;
            if renewed.is_none_or(|at| at.elapsed() >= renew_every) {
                let now_held = match self
                    .redis
                    .lease(&self.settings.replica_id, self.settings.lease)
                    .await
                {
                    Ok(now_held) => now_held,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot renew the lease");
                        false
                    }
                };
                if now_held != held {
                    tracing::info!(
                        held = now_held,
                        "the lease (clock ticks, span export, snapshots)"
                    );
                }
                held = now_held;
                renewed = Some(Instant::now());
                self.shared.set_exports_spans(held);
                self.metrics.lease_held.set(i64::from(held));
            }
            if !held {
                continue;
            }
            if ticked.is_none_or(|at| at.elapsed() >= TICK) {
                ticked = Some(Instant::now());
                if let Err(e) = self
                    .log
                    .append_only(Input::Tick { now: now_millis() })
                    .await
                {
                    tracing::debug!(error = %e, "cannot append a clock tick");
                }
            }
            if snapshot_at.elapsed() >= self.settings.snapshot_interval {
                snapshot_at = Instant::now();
                if let Err(e) = self.snapshot_and_trim().await {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "cannot snapshot the state to Redis; the log is not trimmed"
                    );
                }
            }
        }
    }

    /// Puts the whole state in Redis and trims the log by the rule above.
    async fn snapshot_and_trim(&self) -> anyhow::Result<()> {
        let (state, position) = self.writer.dump().await?;
        let Some(position) = position else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(&Snapshot { position, state })?;
        self.redis.put_snapshot(&bytes).await?;
        self.metrics.snapshots.inc();
        let now = now_millis();
        let age = |at_ms: i64| Duration::from_millis(u64::try_from(now - at_ms).unwrap_or(0));
        let reports = self.redis.reports().await?;
        let live = live_within(self.settings.lease);
        let keep = reports
            .iter()
            .filter(|(_, report)| age(report.at_ms) <= live)
            .map(|(_, report)| report.position)
            .chain(std::iter::once(position))
            .min()
            .unwrap_or(position);
        let gone: Vec<String> = reports
            .iter()
            .filter(|(_, report)| age(report.at_ms) > FORGET_AFTER)
            .map(|(replica, _)| replica.clone())
            .collect();
        self.redis.forget(&gone).await?;
        let trimmed = self.redis.trim_before(&keep).await?;
        tracing::debug!(snapshot = %position, kept_from = %keep, trimmed, bytes = bytes.len(), "state snapshot in Redis");
        Ok(())
    }
}
