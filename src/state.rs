//! The state machine: what every delivery does to the exporter's state.
//!
//! [`State`] holds everything the metrics are rendered from: runs, the
//! de-duplication window, load tests and every counter and histogram.
//! [`Machine::apply`] takes one [`Input`] (a parsed webhook, a rejected request
//! or a clock tick) and decides every count. It is pure: time comes in with the
//! input, and each change is recorded as a [`Key`] in [`Changes`] so the store
//! writes exactly the entries that moved. Restart-safety follows: the store
//! holds the same maps, so state loaded after a crash is the state that was
//! acknowledged.

use crate::outcome::{classify, Outcome, StatusTable};
use crate::webhook::{Event, Project, RunEvent, RunEventKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

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
}

impl EventResult {
    pub fn as_str(self) -> &'static str {
        match self {
            EventResult::Accepted => "accepted",
            EventResult::Duplicate => "duplicate",
            EventResult::Ignored => "ignored",
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
        match (self.started_at, self.finished_at) {
            (Some(started), Some(finished)) if !self.started_late => {
                Some(u64::try_from(finished.saturating_sub(started)).unwrap_or(0))
            }
            _ => None,
        }
    }
}

impl Run {
    /// The run's span, ending at `end`.
    pub fn span(&self, end: Millis, end_kind: SpanEnd) -> SpanRecord {
        SpanRecord {
            project: self.project,
            load_test_id: self.load_test_id,
            user_id: self.user_id,
            name: self.name.clone(),
            start: self.started_at,
            end,
            end_kind,
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

/// A counter's identity: metric and labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CounterKey {
    /// `loadimpact_webhook_requests_total{code}`
    Requests { code: u16 },
    /// `loadimpact_webhook_events_total{event,result}`
    Events { event: String, result: EventResult },
    /// `loadimpact_test_runs_started_total`
    Started(Project),
    /// `loadimpact_test_runs_finished_total`
    Finished(Project, Outcome),
    /// `loadimpact_test_runs_expired_total`
    Expired(Project),
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
    /// When `test.started` was received; `None` for a finish with no start.
    pub start: Option<Millis>,
    pub end: Millis,
    pub end_kind: SpanEnd,
}

/// The identity of one stored entry; what a change touched.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Run(u64),
    Dedup(String),
    LoadTest(u64),
    Counter(CounterKey),
    Histogram(Project, Outcome),
    LastEvent(String),
    Outbox(u64),
    Finish(Project, FinishCode),
    Recent(u64),
}

impl Key {
    /// True for the entries kept only to recognise a repeat (request ids and
    /// ended runs): they live in the store and are read when a delivery
    /// needs them, never held in memory between commits.
    pub fn is_cold(&self, state: &State) -> bool {
        match self {
            Key::Dedup(_) => true,
            Key::Run(id) => state.runs.get(id).is_none_or(|run| !run.is_running()),
            _ => false,
        }
    }
}

/// One entry of the state as it was (`None`: absent), to undo a change.
#[derive(Debug, Clone, PartialEq)]
pub enum Saved {
    Run(Option<Run>),
    Dedup(Option<Millis>),
    LoadTest(Option<LoadTest>),
    Counter(Option<u64>),
    Histogram(Option<Histogram>),
    LastEvent(Option<Millis>),
    Outbox(Option<SpanRecord>),
    /// How many finishes had that code.
    Finish(usize),
    Recent(Option<Run>),
}

/// The entries an apply touched, for the store to write (or delete, when the
/// entry is gone from the state), with each entry's value from before the
/// first touch, so that a change that could not be stored can be undone.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    pub keys: BTreeSet<Key>,
    undo: Vec<(Key, Saved)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Records that `key` is about to change. Called before the change.
    fn touch(&mut self, state: &State, key: Key) {
        if !self.keys.contains(&key) {
            self.undo.push((key.clone(), state.snapshot(&key)));
            self.keys.insert(key);
        }
    }

    /// Puts every touched entry back as it was before these changes.
    pub fn undo(self, state: &mut State) {
        for (key, saved) in self.undo.into_iter().rev() {
            state.restore(&key, saved);
        }
    }
}

fn put<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: Option<V>) {
    match value {
        Some(value) => {
            map.insert(key, value);
        }
        None => {
            map.remove(&key);
        }
    }
}

/// Everything the exporter knows. Each map is one table of the store.
///
/// Two kinds of entry are *cold*: request ids (`dedup`) and runs that have
/// ended. They exist only so that a repeat is recognised, and they are as
/// many as the deliveries of a day, so the writer keeps them in the store
/// alone: it reads the ones a group of inputs needs into these maps before
/// applying it ([`Wanted`]) and drops them again once committed. Everything
/// else, all that `/metrics` renders, stays in memory. The machine sees no
/// difference: it always finds here every entry that its input can read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct State {
    /// Runs now running, plus (while a group is applied) the ended runs it reads.
    pub runs: BTreeMap<u64, Run>,
    /// Request id -> when it was first seen (while a group is applied).
    pub dedup: HashMap<String, Millis>,
    pub load_tests: BTreeMap<u64, LoadTest>,
    pub counters: BTreeMap<CounterKey, u64>,
    pub histograms: BTreeMap<(Project, Outcome), Histogram>,
    /// Event name -> when a delivery of it was last received.
    pub last_event: BTreeMap<String, Millis>,
    /// Spans not yet acknowledged by the collector, by run id.
    pub outbox: BTreeMap<u64, SpanRecord>,
    /// Per project, the finishes within the abort-ratio window, sorted.
    pub finishes: BTreeMap<Project, VecDeque<FinishCode>>,
    /// The `--runs.info-limit` most recently ended runs (finished or
    /// expired), by run id: the runs API and `loadimpact_test_run_info`.
    pub recent: BTreeMap<u64, Run>,
}

/// The cold entries a group of inputs may read: what the store must put in
/// the state before the group is applied.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Wanted {
    pub request_ids: Vec<String>,
    pub run_ids: Vec<u64>,
}

impl Wanted {
    /// The runs `changes` touched and the runs wanted: all that a group can
    /// have brought into memory.
    pub fn runs_in<'a>(&'a self, changes: &'a Changes) -> impl Iterator<Item = u64> + 'a {
        let touched = changes.keys.iter().filter_map(|key| match key {
            Key::Run(id) => Some(*id),
            _ => None,
        });
        self.run_ids.iter().copied().chain(touched)
    }

    /// Adds what `input` may read.
    pub fn add(&mut self, input: &Input) {
        if let Input::Webhook {
            request_id, event, ..
        } = input
        {
            self.request_ids.extend(request_id.iter().cloned());
            if let Event::Run(run) = event {
                self.run_ids.push(run.load_test_run_id);
            }
        }
    }
}

impl State {
    pub fn counter(&self, key: &CounterKey) -> u64 {
        self.counters.get(key).copied().unwrap_or(0)
    }

    /// Every project the exporter has counted a run for.
    pub fn projects(&self) -> BTreeSet<Project> {
        self.counters
            .keys()
            .filter_map(|key| match key {
                CounterKey::Started(p) | CounterKey::Finished(p, _) | CounterKey::Expired(p) => {
                    Some(*p)
                }
                _ => None,
            })
            .collect()
    }

    fn bump(&mut self, key: CounterKey, changes: &mut Changes) {
        changes.touch(self, Key::Counter(key.clone()));
        *self.counters.entry(key).or_insert(0) += 1;
    }

    /// A copy without the cold entries: what stays in memory between commits.
    pub fn without_cold(&self) -> State {
        let mut hot = self.clone();
        hot.runs.retain(|_, run| run.is_running());
        hot.dedup.clear();
        hot
    }

    /// Drops the cold entries a group brought in (once committed): every
    /// request id, and those of `runs` (the runs it fetched or touched) that
    /// are not running. The hot entries stay as they are.
    pub fn evict_cold(&mut self, runs: impl IntoIterator<Item = u64>) {
        for id in runs {
            if self.runs.get(&id).is_some_and(|run| !run.is_running()) {
                self.runs.remove(&id);
            }
        }
        self.dedup.clear();
    }

    /// The recent runs, most recently ended first.
    pub fn recent_runs(&self) -> Vec<(u64, &Run, Millis, &'static str)> {
        let mut runs: Vec<_> = self
            .recent
            .iter()
            .filter_map(|(id, run)| run.ended().map(|(at, outcome)| (*id, run, at, outcome)))
            .collect();
        runs.sort_by_key(|(id, _, at, _)| (std::cmp::Reverse(*at), std::cmp::Reverse(*id)));
        runs
    }

    /// How many finishes of `project` in the window have `code`.
    pub fn finish_count(&self, project: &Project, code: FinishCode) -> usize {
        self.finishes.get(project).map_or(0, |codes| {
            codes.partition_point(|c| *c <= code) - codes.partition_point(|c| *c < code)
        })
    }

    /// Makes `n` the number of finishes of `project` with `code`.
    fn set_finish_count(&mut self, project: Project, code: FinishCode, n: usize) {
        let codes = self.finishes.entry(project).or_default();
        let (from, to) = (
            codes.partition_point(|c| *c < code),
            codes.partition_point(|c| *c <= code),
        );
        for _ in n..to - from {
            codes.remove(from);
        }
        for _ in to - from..n {
            codes.insert(from, code);
        }
        if codes.is_empty() {
            self.finishes.remove(&project);
        }
    }

    /// The entry named by `key`, as it is now.
    pub fn snapshot(&self, key: &Key) -> Saved {
        match key {
            Key::Run(id) => Saved::Run(self.runs.get(id).cloned()),
            Key::Dedup(id) => Saved::Dedup(self.dedup.get(id).copied()),
            Key::LoadTest(id) => Saved::LoadTest(self.load_tests.get(id).cloned()),
            Key::Counter(k) => Saved::Counter(self.counters.get(k).copied()),
            Key::Histogram(p, o) => Saved::Histogram(self.histograms.get(&(*p, *o)).cloned()),
            Key::LastEvent(e) => Saved::LastEvent(self.last_event.get(e).copied()),
            Key::Outbox(id) => Saved::Outbox(self.outbox.get(id).cloned()),
            Key::Finish(project, code) => Saved::Finish(self.finish_count(project, *code)),
            Key::Recent(id) => Saved::Recent(self.recent.get(id).cloned()),
        }
    }

    /// Sets the entry named by `key` to `saved` (a snapshot of the same key).
    pub fn restore(&mut self, key: &Key, saved: Saved) {
        match (key, saved) {
            (Key::Run(id), Saved::Run(v)) => put(&mut self.runs, *id, v),
            (Key::LoadTest(id), Saved::LoadTest(v)) => put(&mut self.load_tests, *id, v),
            (Key::Counter(k), Saved::Counter(v)) => put(&mut self.counters, k.clone(), v),
            (Key::Histogram(p, o), Saved::Histogram(v)) => put(&mut self.histograms, (*p, *o), v),
            (Key::LastEvent(e), Saved::LastEvent(v)) => put(&mut self.last_event, e.clone(), v),
            (Key::Outbox(id), Saved::Outbox(v)) => put(&mut self.outbox, *id, v),
            (Key::Finish(project, code), Saved::Finish(n)) => {
                self.set_finish_count(*project, *code, n)
            }
            (Key::Recent(id), Saved::Recent(v)) => put(&mut self.recent, *id, v),
            (Key::Dedup(id), Saved::Dedup(v)) => match v {
                Some(v) => {
                    self.dedup.insert(id.clone(), v);
                }
                None => {
                    self.dedup.remove(id);
                }
            },
            (key, saved) => debug_assert!(false, "snapshot {saved:?} is not of {key:?}"),
        }
    }
}

/// An input to the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A valid delivery, received at `at`.
    Webhook {
        request_id: Option<String>,
        event: Event,
        at: Millis,
    },
    /// A request to the webhook path that was answered `code` without being applied.
    Rejected { code: u16 },
    /// The clock moved: expire runs and forget what is past its retention.
    Tick { now: Millis },
    /// The collector acknowledged these runs' spans.
    SpansExported { run_ids: Vec<u64> },
    /// An export attempt failed; the spans stay in the outbox.
    SpanExportFailed,
}

/// What applying a webhook decided, for the response and the log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub result: EventResult,
    pub event: &'static str,
    pub run_id: Option<u64>,
    pub outcome: Option<Outcome>,
    pub status: Option<i64>,
    pub duration_millis: Option<u64>,
}

impl Applied {
    /// A decision that carries no outcome, status or duration (yet).
    fn new(result: EventResult, event: &'static str, run_id: Option<u64>) -> Applied {
        Applied {
            result,
            event,
            run_id,
            outcome: None,
            status: None,
            duration_millis: None,
        }
    }
}

/// The state machine's settings (from the flags).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Machine {
    pub status_table: StatusTable,
    /// A request id is remembered this long.
    pub dedup_ttl: Millis,
    /// A run with no finish leaves `running` after this long.
    pub run_max_duration: Millis,
    /// A load test's series go away after this long without events.
    pub series_ttl: Millis,
    /// The abort ratio looks back this far.
    pub abort_window: Millis,
    /// With tracing on, the most spans the outbox holds; `None`: tracing off.
    pub spans_max_pending: Option<usize>,
    /// How many recently ended runs are kept for the runs API and
    /// `loadimpact_test_run_info`.
    pub runs_info_limit: usize,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            status_table: StatusTable::V3,
            dedup_ttl: millis(Duration::from_secs(24 * 3600)),
            run_max_duration: millis(Duration::from_secs(24 * 3600)),
            series_ttl: millis(Duration::from_secs(7 * 24 * 3600)),
            abort_window: millis(Duration::from_secs(3600)),
            spans_max_pending: None,
            runs_info_limit: 50,
        }
    }
}

/// A duration in whole milliseconds, saturating.
pub fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

impl Machine {
    /// How long a run that has ended is kept: long enough to recognise a
    /// repeated event for it and to compute the abort ratio over its window.
    pub fn run_retention(&self) -> Millis {
        self.dedup_ttl.max(self.abort_window)
    }

    /// True for an ended run that is past its retention at `now`: it is as
    /// good as absent, whether or not a tick has removed it yet.
    pub fn is_forgotten(&self, run: &Run, now: Millis) -> bool {
        let ended = run.finished_at.is_some() || run.expired_at.is_some();
        ended && run.last_event_at.saturating_add(self.run_retention()) <= now
    }

    /// True for a request id first seen at `seen` that no longer makes a
    /// delivery at `now` a duplicate.
    pub fn is_stale_id(&self, seen: Millis, now: Millis) -> bool {
        seen.saturating_add(self.dedup_ttl) <= now
    }

    /// Applies one input. Returns what a webhook decided (`None` for other inputs).
    pub fn apply(&self, state: &mut State, input: Input, changes: &mut Changes) -> Option<Applied> {
        match input {
            Input::Webhook {
                request_id,
                event,
                at,
            } => Some(self.webhook(state, request_id, event, at, changes)),
            Input::Rejected { code } => {
                state.bump(CounterKey::Requests { code }, changes);
                None
            }
            Input::Tick { now } => {
                self.tick(state, now, changes);
                None
            }
            Input::SpansExported { run_ids } => {
                for id in run_ids {
                    if state.outbox.contains_key(&id) {
                        changes.touch(state, Key::Outbox(id));
                        state.outbox.remove(&id);
                        state.bump(CounterKey::SpansExported, changes);
                    }
                }
                None
            }
            Input::SpanExportFailed => {
                state.bump(CounterKey::SpanExportFailures, changes);
                None
            }
        }
    }

    fn webhook(
        &self,
        state: &mut State,
        request_id: Option<String>,
        event: Event,
        at: Millis,
        changes: &mut Changes,
    ) -> Applied {
        let name = event.name();
        state.bump(CounterKey::Requests { code: 200 }, changes);

        let seen_before = request_id.as_ref().is_some_and(|id| {
            state
                .dedup
                .get(id)
                .is_some_and(|seen| !self.is_stale_id(*seen, at))
        });
        let applied = if seen_before {
            let run_id = match &event {
                Event::Run(run) => Some(run.load_test_run_id),
                Event::NotificationChannel => None,
            };
            Applied::new(EventResult::Duplicate, name, run_id)
        } else {
            if let Some(id) = request_id {
                changes.touch(state, Key::Dedup(id.clone()));
                state.dedup.insert(id, at);
            }
            match event {
                Event::NotificationChannel => Applied::new(EventResult::Accepted, name, None),
                Event::Run(run) => self.run_event(state, run, at, changes),
            }
        };
        // A duplicate changes nothing but its own counts.
        if applied.result != EventResult::Duplicate {
            changes.touch(state, Key::LastEvent(name.to_owned()));
            state.last_event.insert(name.to_owned(), at);
        }
        state.bump(
            CounterKey::Events {
                event: name.to_owned(),
                result: applied.result,
            },
            changes,
        );
        applied
    }

    fn run_event(
        &self,
        state: &mut State,
        event: RunEvent,
        at: Millis,
        changes: &mut Changes,
    ) -> Applied {
        let run_id = event.load_test_run_id;
        changes.touch(state, Key::Run(run_id));
        if state
            .runs
            .get(&run_id)
            .is_some_and(|run| self.is_forgotten(run, at))
        {
            state.runs.remove(&run_id);
        }
        let run = state.runs.entry(run_id).or_insert_with(|| Run {
            project: event.project,
            load_test_id: event.load_test_id,
            user_id: event.user_id,
            name: event.name.clone(),
            started_at: None,
            finished_at: None,
            expired_at: None,
            started_late: false,
            status: None,
            status_text: None,
            outcome: None,
            last_event_at: at,
        });
        let mut applied = Applied {
            outcome: run.outcome,
            status: run.status,
            ..Applied::new(EventResult::Duplicate, event.kind.name(), Some(run_id))
        };
        let project = run.project;
        match event.kind {
            RunEventKind::Started => {
                if run.started_at.is_some() {
                    return applied;
                }
                run.started_at = Some(at);
                run.last_event_at = at;
                if run.finished_at.is_some() {
                    run.started_late = true;
                    applied.result = EventResult::Ignored;
                } else {
                    applied.result = EventResult::Accepted;
                }
                if run.name.is_none() {
                    run.name = event.name.clone();
                }
                state.bump(CounterKey::Started(project), changes);
            }
            RunEventKind::Finished => {
                if run.finished_at.is_some() {
                    return applied;
                }
                let outcome = classify(
                    event.status_text.as_deref(),
                    event.status,
                    self.status_table,
                );
                run.finished_at = Some(at);
                run.last_event_at = at;
                run.status = Some(event.status);
                run.status_text = event.status_text.clone();
                run.outcome = Some(outcome);
                if event.name.is_some() {
                    run.name = event.name.clone();
                }
                applied.result = EventResult::Accepted;
                applied.outcome = Some(outcome);
                applied.status = Some(event.status);
                applied.duration_millis = run.duration_millis();
                // An expired run already has its span (ended at the expiry).
                let span = run.expired_at.is_none().then(|| {
                    run.span(
                        at,
                        SpanEnd::Finished {
                            outcome,
                            status: event.status,
                            status_text: event.status_text.clone(),
                        },
                    )
                });
                if let Some(millis) = applied.duration_millis {
                    changes.touch(state, Key::Histogram(project, outcome));
                    state
                        .histograms
                        .entry((project, outcome))
                        .or_default()
                        .observe(millis);
                }
                let code = finish_code(at, outcome.is_abort());
                changes.touch(state, Key::Finish(project, code));
                let n = state.finish_count(&project, code);
                state.set_finish_count(project, code, n + 1);
                state.bump(CounterKey::Finished(project, outcome), changes);
                if let Some(span) = span {
                    self.enqueue_span(state, run_id, span, changes);
                }
            }
        }
        self.remember_if_ended(state, run_id, changes);
        self.touch_load_test(state, &event, project, &applied, at, changes);
        applied
    }

    /// Keeps the run among the recent runs if it has ended and is among the
    /// `runs_info_limit` most recently ended ones (or updates its entry).
    fn remember_if_ended(&self, state: &mut State, run_id: u64, changes: &mut Changes) {
        let Some(run) = state.runs.get(&run_id).filter(|r| r.ended().is_some()) else {
            return;
        };
        let run = run.clone();
        changes.touch(state, Key::Recent(run_id));
        state.recent.insert(run_id, run);
        while state.recent.len() > self.runs_info_limit {
            let oldest = state
                .recent
                .iter()
                .filter_map(|(id, r)| r.ended().map(|(at, _)| (at, *id)))
                .min();
            let Some((_, id)) = oldest else {
                break;
            };
            changes.touch(state, Key::Recent(id));
            state.recent.remove(&id);
        }
    }

    /// Puts a span in the outbox (tracing on), or counts it dropped when the
    /// outbox is full.
    fn enqueue_span(
        &self,
        state: &mut State,
        run_id: u64,
        record: SpanRecord,
        changes: &mut Changes,
    ) {
        let Some(max_pending) = self.spans_max_pending else {
            return;
        };
        if state.outbox.len() >= max_pending {
            state.bump(CounterKey::SpansDropped, changes);
            return;
        }
        changes.touch(state, Key::Outbox(run_id));
        state.outbox.insert(run_id, record);
    }

    /// Records a run event on its load test: last seen, name, and for a
    /// finish its status, outcome count and duration.
    fn touch_load_test(
        &self,
        state: &mut State,
        event: &RunEvent,
        project: Project,
        applied: &Applied,
        at: Millis,
        changes: &mut Changes,
    ) {
        let finished = (event.kind == RunEventKind::Finished)
            .then_some(applied.outcome)
            .flatten();
        changes.touch(state, Key::LoadTest(event.load_test_id));
        let test = state
            .load_tests
            .entry(event.load_test_id)
            .or_insert_with(|| LoadTest {
                project,
                name: None,
                last_status: None,
                last_seen: at,
                finished: BTreeMap::new(),
                last_duration_millis: None,
            });
        test.last_seen = test.last_seen.max(at);
        if event.name.is_some() {
            test.name = event.name.clone();
        }
        if let Some(outcome) = finished {
            test.last_status = Some(event.status);
            *test.finished.entry(outcome).or_insert(0) += 1;
            if applied.duration_millis.is_some() {
                test.last_duration_millis = applied.duration_millis;
            }
        }
    }

    fn tick(&self, state: &mut State, now: Millis, changes: &mut Changes) {
        let mut expiring = Vec::new();
        let mut forgotten = Vec::new();
        for (id, run) in &state.runs {
            let overdue = run
                .started_at
                .is_some_and(|started| started.saturating_add(self.run_max_duration) <= now);
            if run.is_running() && overdue {
                expiring.push(*id);
            } else if self.is_forgotten(run, now) {
                forgotten.push(*id);
            }
        }
        for id in expiring {
            changes.touch(state, Key::Run(id));
            let Some(run) = state.runs.get_mut(&id) else {
                continue;
            };
            run.expired_at = Some(now);
            run.last_event_at = now;
            let (project, span) = (run.project, run.span(now, SpanEnd::Expired));
            state.bump(CounterKey::Expired(project), changes);
            self.enqueue_span(state, id, span, changes);
            self.remember_if_ended(state, id, changes);
        }
        for id in forgotten {
            changes.touch(state, Key::Run(id));
            state.runs.remove(&id);
        }
        let stale: Vec<String> = state
            .dedup
            .iter()
            .filter(|(_, seen)| self.is_stale_id(**seen, now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            changes.touch(state, Key::Dedup(id.clone()));
            state.dedup.remove(&id);
        }
        let series_ttl = self.series_ttl;
        let quiet: Vec<u64> = state
            .load_tests
            .iter()
            .filter(|(_, test)| test.last_seen.saturating_add(series_ttl) <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in quiet {
            changes.touch(state, Key::LoadTest(id));
            state.load_tests.remove(&id);
        }
        // Finishes that left the abort-ratio window.
        let since = now.saturating_sub(self.abort_window);
        let mut left = Vec::new();
        for (project, codes) in &state.finishes {
            let gone = codes.partition_point(|c| finish_of(*c).0 <= since);
            let mut previous = None;
            for code in codes.iter().take(gone) {
                if previous != Some(*code) {
                    left.push((*project, *code));
                    previous = Some(*code);
                }
            }
        }
        for (project, code) in left {
            changes.touch(state, Key::Finish(project, code));
            state.set_finish_count(project, code, 0);
        }
    }

    /// Per project, the share of runs finished within the abort window (up to
    /// `now`) whose outcome is an abort. Projects with no finish in the window
    /// are absent.
    pub fn abort_ratios(&self, state: &State, now: Millis) -> BTreeMap<Project, f64> {
        let since = now.saturating_sub(self.abort_window);
        let mut ratios = BTreeMap::new();
        for (project, codes) in &state.finishes {
            let from = codes.partition_point(|c| finish_of(*c).0 <= since);
            let to = codes.partition_point(|c| finish_of(*c).0 <= now);
            let total = to.saturating_sub(from);
            if total == 0 {
                continue;
            }
            let aborted = codes.range(from..to).filter(|c| finish_of(**c).1).count();
            ratios.insert(*project, aborted as f64 / total as f64);
        }
        ratios
    }

    /// Runs now running, per known project (0 for projects with none).
    pub fn running(&self, state: &State) -> BTreeMap<Project, u64> {
        let mut running: BTreeMap<Project, u64> =
            state.projects().into_iter().map(|p| (p, 0)).collect();
        for run in state.runs.values().filter(|r| r.is_running()) {
            *running.entry(run.project).or_insert(0) += 1;
        }
        running
    }
}

#[cfg(test)]
mod tests;
