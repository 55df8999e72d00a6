//! The rules: [`Machine::apply`] takes one [`Input`] and decides every count.
//! Pure: time comes in with the input, and every entry it changes is first
//! recorded in [`Changes`].

use super::{
    finish_code, finish_of, Changes, CounterKey, ErrorCode, EventResult, Key, Limit, LoadTest, Run,
    SpanEnd, SpanRecord, State, MAX_ERROR_CODES,
};
use crate::clock::{millis, Millis};
use crate::outcome::{classify, classify_k6cloud, Outcome, StatusTable};
use crate::webhook::{Event, Format, Project, RunEvent, RunEventKind};
use std::collections::BTreeMap;
use std::time::Duration;

/// An input to the state machine.
// Inputs pass through one channel and are applied at once; the webhook
// variant is the common one, so boxing it would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Input {
    /// A valid delivery, received at `at`, with the ids that identify it.
    Webhook {
        request_ids: Vec<String>,
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
    /// An entry of the shared log that this build cannot read (written by
    /// another version): it changes nothing, on every replica alike.
    Unreadable,
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
    /// For a refused delivery, the cap it met.
    pub refused: Option<Limit>,
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
            refused: None,
        }
    }
}

/// The label an error `code` is counted under: its own while it is one of
/// the first [`MAX_ERROR_CODES`] distinct codes seen, else `other`.
fn error_code(state: &State, code: i64) -> ErrorCode {
    let mut seen = std::collections::BTreeSet::new();
    for key in state.counters.keys() {
        if let CounterKey::RunErrors(_, ErrorCode::Code(c)) = key {
            if *c == code {
                return ErrorCode::Code(code);
            }
            seen.insert(*c);
        }
    }
    if seen.len() < MAX_ERROR_CODES {
        ErrorCode::Code(code)
    } else {
        ErrorCode::Other
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
    /// The most distinct projects counted.
    pub max_projects: usize,
    /// The most distinct load tests with series at once.
    pub max_load_tests: usize,
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
            max_projects: 2000,
            max_load_tests: 20000,
        }
    }
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
        self.is_past_retention(ended, run.last_event_at, now)
    }

    /// [`Machine::is_forgotten`] from the two things it depends on: whether
    /// the run ended, and its last event.
    pub fn is_past_retention(&self, ended: bool, last_event_at: Millis, now: Millis) -> bool {
        ended && last_event_at.saturating_add(self.run_retention()) <= now
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
                request_ids,
                event,
                at,
            } => Some(self.apply_webhook(state, request_ids, event, at, changes)),
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
            Input::Unreadable => None,
        }
    }

    /// Applies one delivery received at `at`: what it decided.
    pub fn apply_webhook(
        &self,
        state: &mut State,
        request_ids: Vec<String>,
        event: Event,
        at: Millis,
        changes: &mut Changes,
    ) -> Applied {
        let name = event.name();
        if let Some(limit) = self.refusal(state, &event, at) {
            state.bump(CounterKey::Requests { code: 429 }, changes);
            state.bump(
                CounterKey::Events {
                    event: name.to_owned(),
                    result: EventResult::Refused,
                },
                changes,
            );
            let run_id = match &event {
                Event::Run(run) => Some(run.load_test_run_id),
                Event::NotificationChannel => None,
            };
            return Applied {
                refused: Some(limit),
                ..Applied::new(EventResult::Refused, name, run_id)
            };
        }
        state.bump(CounterKey::Requests { code: 200 }, changes);

        // A repeat of any of its ids makes a delivery a duplicate.
        let seen_before = request_ids.iter().any(|id| {
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
            for id in request_ids {
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

    /// The cap a delivery would break: a new project past `max_projects`
    /// for a run the exporter does not know yet, or a new load test past
    /// `max_load_tests`. A run already known goes on under its own load
    /// test (and is counted under its own project); an event of it that
    /// names another load test would add that one, so the cap applies.
    fn refusal(&self, state: &State, event: &Event, at: Millis) -> Option<Limit> {
        let Event::Run(run) = event else {
            return None;
        };
        let known_run = state
            .runs
            .get(&run.load_test_run_id)
            .filter(|r| !self.is_forgotten(r, at));
        match known_run {
            Some(known) if known.load_test_id == run.load_test_id => return None,
            Some(_) => {}
            // Counting the projects walks the counters: only for a new one.
            None if !state.is_known_project(run.project)
                && state.projects().len() >= self.max_projects =>
            {
                return Some(Limit::Projects);
            }
            None => {}
        }
        if !state.load_tests.contains_key(&run.load_test_id)
            && state.load_tests.len() >= self.max_load_tests
        {
            return Some(Limit::LoadTests);
        }
        None
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
            reported_start: None,
            reported_end: None,
            url: None,
            load_test_url: None,
        });
        let mut applied = Applied {
            outcome: run.outcome,
            status: run.status,
            ..Applied::new(EventResult::Duplicate, event.kind.name(), Some(run_id))
        };
        if event.url.is_some() {
            run.url = event.url.clone();
        }
        if event.load_test_url.is_some() {
            run.load_test_url = event.load_test_url.clone();
        }
        let project = run.project;
        match event.kind {
            RunEventKind::Started => {
                if run.started_at.is_some() {
                    return applied;
                }
                run.started_at = Some(at);
                run.last_event_at = at;
                if run.reported_start.is_none() {
                    run.reported_start = event.reported_start;
                }
                if run.finished_at.is_some() {
                    run.started_late = true;
                    applied.result = EventResult::Ignored;
                } else {
                    applied.result = EventResult::Accepted;
                }
                if run.name.is_none() {
                    run.name = event.name.clone();
                }
                state.bump(CounterKey::Started(project, event.trigger), changes);
            }
            RunEventKind::Finished => {
                if run.finished_at.is_some() {
                    return applied;
                }
                let outcome = match event.format {
                    Format::LoadImpact => classify(
                        event.status_text.as_deref(),
                        event.status,
                        self.status_table,
                    ),
                    Format::K6Cloud => classify_k6cloud(
                        event.event_outcome,
                        event.status_text.as_deref(),
                        event.status,
                        event.result_failed,
                    ),
                };
                if event.reported_start.is_some() {
                    run.reported_start = event.reported_start;
                }
                run.reported_end = event.reported_end;
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
                let span = run.expired_at.is_none().then(|| SpanRecord {
                    errors: event.errors.clone(),
                    ..run.span(
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
                // The errors of a run come with its finish, counted once.
                for error in &event.errors {
                    let code = error_code(state, error.code);
                    state.bump(CounterKey::RunErrors(project, code), changes);
                }
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
