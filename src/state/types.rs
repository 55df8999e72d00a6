//! The domain types the state's maps hold: what the exporter knows of runs,
//! load tests, counters, histograms and spans. Plain data, serialised into
//! the store as they are.

use crate::clock::Millis;
use crate::outcome::Outcome;
use crate::webhook::{Project, RunError, Trigger};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Upper bounds (whole seconds) of the run duration histogram: seconds to a day.
pub const DURATION_BUCKETS: [u64; 14] = [
    10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400,
];

/// Milliseconds as the seconds a metric shows. Durations are kept as whole
/// milliseconds (integers round-trip exactly through the store) and only
/// turned into seconds when rendered, so the same state renders the same
/// text before and after any restart.
pub fn seconds(millis: u64) -> f64 {
    millis as f64 / 1000.0
}

/// What became of a delivery: the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventResult {
    /// Counted.
    Accepted,
    /// Seen before (same request id, or same run and event): changes nothing else.
    Duplicate,
    /// A start that arrived after its run's finish: counted as started, never running.
    Ignored,
    /// For a new project or load test past its cap (`--limits.*`): answered
    /// 429, changes nothing but its own counts.
    Refused,
}

/// A cap on distinct entities, past which deliveries for new ones are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Projects,
    LoadTests,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Projects => "projects",
            Limit::LoadTests => "load_tests",
        }
    }
}

impl EventResult {
    pub fn as_str(self) -> &'static str {
        match self {
            EventResult::Accepted => "accepted",
            EventResult::Duplicate => "duplicate",
            EventResult::Ignored => "ignored",
            EventResult::Refused => "refused",
        }
    }
}

/// One load test run, as far as the exporter has seen it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub project: Project,
    pub load_test_id: u64,
    pub user_id: Option<u64>,
    pub name: Option<String>,
    /// When `test.started` was received.
    pub started_at: Option<Millis>,
    /// When `test.finished` was received.
    pub finished_at: Option<Millis>,
    /// When the run was taken off `running` for lack of a finish.
    pub expired_at: Option<Millis>,
    /// The started event came after the finished one.
    #[serde(default)]
    pub started_late: bool,
    /// Raw status code and text of the finish.
    pub status: Option<i64>,
    pub status_text: Option<String>,
    pub outcome: Option<Outcome>,
    /// The last time any event for this run was applied (retention clock).
    pub last_event_at: Millis,
    /// When the run started and ended as the deliveries' bodies say (k6
    /// Cloud's `test.started` and `test.ended`), where they say it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_start: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_end: Option<Millis>,
    /// k6 Cloud's links to the run and its load test, where a delivery gave them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_test_url: Option<String>,
}

impl Run {
    /// Started, not finished, not expired.
    pub fn is_running(&self) -> bool {
        self.started_at.is_some()
            && self.finished_at.is_none()
            && self.expired_at.is_none()
            && !self.started_late
    }

    /// When the run ended (its finish, else its expiry), with its outcome
    /// label; `None` while it has neither.
    pub fn ended(&self) -> Option<(Millis, &'static str)> {
        match (self.finished_at, self.outcome, self.expired_at) {
            (Some(at), Some(outcome), _) => Some((at, outcome.as_str())),
            (None, _, Some(at)) => Some((at, "expired")),
            _ => None,
        }
    }

    /// From start to finish, for a run that had both in that order.
    pub fn duration_millis(&self) -> Option<u64> {
        if let Some((start, end)) = self.reported_times() {
            return Some(u64::try_from(end - start).unwrap_or(0));
        }
        match (self.started_at, self.finished_at) {
            (Some(started), Some(finished)) if !self.started_late => {
                Some(u64::try_from(finished.saturating_sub(started)).unwrap_or(0))
            }
            _ => None,
        }
    }
}

impl Run {
    /// The start and end the bodies reported, when both are there and in
    /// order: they win over the times of receipt.
    pub fn reported_times(&self) -> Option<(Millis, Millis)> {
        match (self.reported_start, self.reported_end) {
            (Some(start), Some(end)) if start <= end => Some((start, end)),
            _ => None,
        }
    }

    /// The run's span, ending at `end` (unless the bodies reported both
    /// ends, which it then spans).
    pub fn span(&self, end: Millis, end_kind: SpanEnd) -> SpanRecord {
        let (start, end) = match self.reported_times() {
            Some((start, end)) => (Some(start), end),
            None => (self.started_at, end),
        };
        SpanRecord {
            project: self.project,
            load_test_id: self.load_test_id,
            user_id: self.user_id,
            name: self.name.clone(),
            start,
            end,
            end_kind,
            url: self.url.clone(),
            load_test_url: self.load_test_url.clone(),
            errors: Vec::new(),
        }
    }
}

/// A load test's metadata and the status of its latest finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadTest {
    pub project: Project,
    pub name: Option<String>,
    pub last_status: Option<i64>,
    pub last_seen: Millis,
    /// Its finished runs by outcome (while the load test is within `--series.ttl`).
    #[serde(default)]
    pub finished: BTreeMap<Outcome, u64>,
    /// Duration of its latest finished run that had a start.
    #[serde(default)]
    pub last_duration_millis: Option<u64>,
}

/// The `code` label of a run's errors: k6 Cloud's internal code, or `other`
/// past the first [`MAX_ERROR_CODES`] distinct codes, so that made-up codes
/// cannot grow the series without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Code(i64),
    Other,
}

/// How many distinct error codes get a label of their own.
pub const MAX_ERROR_CODES: usize = 32;

/// A counter's identity: metric and labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CounterKey {
    /// `loadimpact_webhook_requests_total{code}`
    Requests { code: u16 },
    /// `loadimpact_webhook_events_total{event,result}`
    Events { event: String, result: EventResult },
    /// `loadimpact_test_runs_started_total`
    Started(Project, Trigger),
    /// `loadimpact_test_runs_finished_total`
    Finished(Project, Outcome),
    /// `loadimpact_test_runs_expired_total`
    Expired(Project),
    /// `loadimpact_test_run_errors_total`
    RunErrors(Project, ErrorCode),
    /// `loadimpact_spans_exported_total`
    SpansExported,
    /// `loadimpact_span_export_failures_total`
    SpanExportFailures,
    /// `loadimpact_spans_dropped_total`
    SpansDropped,
}

/// A duration histogram: buckets (not cumulative; the last one is +Inf),
/// the sum in whole milliseconds, and the count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub sum_millis: u64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; DURATION_BUCKETS.len() + 1],
            sum_millis: 0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn observe(&mut self, millis: u64) {
        let index = DURATION_BUCKETS
            .iter()
            .position(|bound| millis <= bound * 1000)
            .unwrap_or(DURATION_BUCKETS.len());
        if let Some(bucket) = self.buckets.get_mut(index) {
            *bucket += 1;
        }
        self.sum_millis = self.sum_millis.saturating_add(millis);
        self.count += 1;
    }
}

/// A finish within the abort-ratio window, as the window keeps it: the
/// finish time in milliseconds shifted left one bit, with the low bit set for
/// an abort, so that codes sort by time. Two finishes of a project with the
/// same time and kind are alike to the ratio, so a project's window is a
/// sorted list of codes: 8 bytes a finish, all the ratio needs.
pub type FinishCode = i64;

/// The code of a finish at `at`, an abort or not.
pub fn finish_code(at: Millis, aborted: bool) -> FinishCode {
    at.saturating_mul(2) | FinishCode::from(aborted)
}

/// The finish time and whether it was an abort, from a code.
pub fn finish_of(code: FinishCode) -> (Millis, bool) {
    (code >> 1, code & 1 == 1)
}

/// How a run's span ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SpanEnd {
    /// `test.finished` arrived.
    Finished {
        outcome: Outcome,
        status: i64,
        status_text: Option<String>,
    },
    /// No finish came within `--run.max-duration`.
    Expired,
}

/// A finished run's span, waiting in the outbox until the collector
/// acknowledges it. Holds everything the span is built from, so a restart in
/// between changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub project: Project,
    pub load_test_id: u64,
    pub user_id: Option<u64>,
    pub name: Option<String>,
    /// When the run started (reported, else received); `None` for a finish
    /// with no start.
    pub start: Option<Millis>,
    pub end: Millis,
    pub end_kind: SpanEnd,
    /// k6 Cloud's links to the run and its load test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_test_url: Option<String>,
    /// The errors k6 Cloud attached to the run: the span's events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<RunError>,
}
