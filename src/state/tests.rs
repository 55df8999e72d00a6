//! The state machine's tests: one per rule, then property tests of the
//! invariants over random streams (order, duplicates, ticks).

use super::testing::*;
use super::*;
use crate::outcome::{classify, StatusTable};
use crate::webhook::{RunEvent, RunEventKind, Trigger};
use proptest::prelude::*;

/// Run counters and duration histograms: what a duplicate must never move.
type RunMetrics = (
    Vec<(CounterKey, u64)>,
    BTreeMap<(Project, Outcome), Histogram>,
);

struct Harness {
    machine: Machine,
    state: State,
    /// What a store would hold: the entries the changes named, copied.
    committed: State,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            machine: Machine::default(),
            state: State::default(),
            committed: State::default(),
        }
    }

    /// Applies and commits one input, and checks that the committed copy is
    /// the state (every change was tracked).
    fn apply(&mut self, input: Input) -> Option<Applied> {
        let mut changes = Changes::default();
        let applied = self.machine.apply(&mut self.state, input, &mut changes);
        self.committed.copy_entries(&self.state, &changes.keys);
        assert_eq!(self.committed, self.state, "a change was not tracked");
        applied
    }

    fn deliver(&mut self, id: &str, event: Event, at: Millis) -> EventResult {
        self.apply(Input::Webhook {
            request_ids: (!id.is_empty())
                .then(|| id.to_owned())
                .into_iter()
                .collect(),
            event,
            at,
        })
        .expect("webhook answers")
        .result
    }

    fn tick(&mut self, now: Millis) {
        assert_eq!(self.apply(Input::Tick { now }), None);
    }

    fn counter(&self, key: CounterKey) -> u64 {
        self.state.counter(&key)
    }

    /// Runs of `project` started, whatever their trigger.
    fn started(&self, project: Project) -> u64 {
        Trigger::ALL
            .iter()
            .map(|t| self.counter(CounterKey::Started(project, *t)))
            .sum()
    }

    fn running(&self, project: Project) -> u64 {
        self.machine
            .running(&self.state)
            .get(&project)
            .copied()
            .unwrap_or(0)
    }

    /// The run-level part of the state: everything but the delivery counters.
    fn run_metrics(&self) -> RunMetrics {
        let counters = self
            .state
            .counters
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k,
                    CounterKey::Started(..) | CounterKey::Finished(..) | CounterKey::Expired(_)
                )
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        (counters, self.state.histograms.clone())
    }
}

#[test]
fn start_then_finish_counts_once_and_observes_the_duration() {
    let mut h = Harness::new();
    assert_eq!(h.deliver("a", start(1, P1), 1_000), EventResult::Accepted);
    assert_eq!(h.running(P1), 1);
    assert_eq!(
        h.deliver("b", finish(1, P1, 3, "Finished"), 91_000),
        EventResult::Accepted
    );
    assert_eq!(h.running(P1), 0);
    assert_eq!(h.started(P1), 1);
    assert_eq!(h.counter(CounterKey::Finished(P1, Outcome::Finished)), 1);
    let hist = &h.state.histograms[&(P1, Outcome::Finished)];
    assert_eq!(hist.count, 1);
    assert_eq!(hist.sum_millis, 90_000);
    // 90 s falls in the (60, 120] bucket, index 3.
    assert_eq!(hist.buckets[3], 1);
    assert_eq!(hist.buckets.iter().sum::<u64>(), 1);
    assert_eq!(h.state.load_tests[&1].last_status, Some(3));
    assert_eq!(
        h.counter(CounterKey::Events {
            event: "test.finished".into(),
            result: EventResult::Accepted
        }),
        1
    );
    assert_eq!(h.counter(CounterKey::Requests { code: 200 }), 2);
    assert_eq!(h.state.last_event["test.finished"], 91_000);
}

/// `event` naming load test `load_test`.
fn of_load_test(event: Event, load_test: u64) -> Event {
    match event {
        Event::Run(run) => Event::Run(RunEvent {
            load_test_id: load_test,
            ..run
        }),
        other => other,
    }
}

#[test]
fn a_known_run_brings_in_no_load_test_past_the_cap() {
    let mut h = Harness::new();
    h.machine.max_load_tests = 1;
    let started = of_load_test(start(1, P1), 7);
    assert_eq!(h.deliver("a", started, 1_000), EventResult::Accepted);
    // Its finish naming another load test would add a second one.
    let elsewhere = of_load_test(finish(1, P1, 3, "Finished"), 8);
    assert_eq!(h.deliver("b", elsewhere, 2_000), EventResult::Refused);
    assert_eq!(h.state.load_tests.len(), 1);
    // Under its own load test it finishes, cap or not.
    let own = of_load_test(finish(1, P1, 3, "Finished"), 7);
    assert_eq!(h.deliver("c", own, 3_000), EventResult::Accepted);
    // The same when the finish came first.
    let first = of_load_test(finish(2, P1, 3, "Finished"), 7);
    assert_eq!(h.deliver("d", first, 4_000), EventResult::Accepted);
    let late = of_load_test(start(2, P1), 9);
    assert_eq!(h.deliver("e", late, 5_000), EventResult::Refused);
    assert_eq!(h.state.load_tests.len(), 1);
    assert_eq!(h.counter(CounterKey::Started(P1, Trigger::Unknown)), 1);
}

#[test]
fn a_repeated_request_id_is_a_duplicate_and_changes_no_run_metric() {
    let mut h = Harness::new();
    h.deliver("a", start(1, P1), 1_000);
    let before = h.run_metrics();
    let runs = h.state.runs.clone();
    let last_event = h.state.last_event.clone();
    assert_eq!(h.deliver("a", start(1, P1), 2_000), EventResult::Duplicate);
    // Even with another body: the id decides.
    assert_eq!(
        h.deliver("a", finish(1, P1, 3, "Finished"), 3_000),
        EventResult::Duplicate
    );
    assert_eq!(h.run_metrics(), before);
    assert_eq!(h.state.runs, runs);
    assert_eq!(
        h.state.last_event, last_event,
        "a duplicate moves no timestamp"
    );
    assert_eq!(
        h.counter(CounterKey::Events {
            event: "test.started".into(),
            result: EventResult::Duplicate
        }),
        1
    );
    assert_eq!(
        h.counter(CounterKey::Events {
            event: "test.finished".into(),
            result: EventResult::Duplicate
        }),
        1
    );
}

#[test]
fn the_same_run_and_event_under_a_new_id_is_a_duplicate() {
    let mut h = Harness::new();
    h.deliver("a", start(1, P1), 1_000);
    h.deliver("b", finish(1, P1, 6, "Aborted by user"), 2_000);
    let before = h.run_metrics();
    assert_eq!(h.deliver("c", start(1, P1), 3_000), EventResult::Duplicate);
    assert_eq!(
        h.deliver("d", finish(1, P1, 3, "Finished"), 4_000),
        EventResult::Duplicate
    );
    assert_eq!(h.deliver("", start(1, P1), 5_000), EventResult::Duplicate);
    assert_eq!(h.run_metrics(), before);
    assert_eq!(h.state.runs[&1].outcome, Some(Outcome::AbortedByUser));
}

#[test]
fn finish_before_start_counts_the_finish_and_never_shows_running() {
    let mut h = Harness::new();
    assert_eq!(
        h.deliver("f", finish(7, P1, 12, "Failed threshold"), 5_000),
        EventResult::Accepted
    );
    assert_eq!(h.running(P1), 0);
    assert_eq!(
        h.counter(CounterKey::Finished(P1, Outcome::FailedThreshold)),
        1
    );
    assert!(h.state.histograms.is_empty(), "no start, no duration");
    assert_eq!(h.deliver("s", start(7, P1), 6_000), EventResult::Ignored);
    assert_eq!(h.running(P1), 0);
    assert_eq!(h.started(P1), 1);
    assert!(h.state.histograms.is_empty());
    // And the late start is itself deduplicated.
    assert_eq!(h.deliver("s2", start(7, P1), 7_000), EventResult::Duplicate);
    assert_eq!(h.started(P1), 1);
}

#[test]
fn a_run_with_no_finish_expires_after_the_maximum_duration() {
    let mut h = Harness::new();
    let max = h.machine.run_max_duration;
    h.deliver("a", start(1, P1), 1_000);
    h.tick(1_000 + max - 1);
    assert_eq!(h.running(P1), 1);
    assert_eq!(h.counter(CounterKey::Expired(P1)), 0);
    h.tick(1_000 + max);
    assert_eq!(h.running(P1), 0);
    assert_eq!(h.counter(CounterKey::Expired(P1)), 1);
    h.tick(1_000 + max + 5);
    assert_eq!(h.counter(CounterKey::Expired(P1)), 1, "expires once");
    // A finish that still comes is counted, with its duration.
    h.deliver("b", finish(1, P1, 4, "Timed out"), 2_000 + max);
    assert_eq!(h.counter(CounterKey::Finished(P1, Outcome::TimedOut)), 1);
    assert_eq!(h.state.histograms[&(P1, Outcome::TimedOut)].count, 1);
}

#[test]
fn request_ids_and_ended_runs_are_forgotten_after_their_retention() {
    let mut h = Harness::new();
    let ttl = h.machine.dedup_ttl;
    h.deliver("a", start(1, P1), 0);
    h.deliver("b", finish(1, P1, 3, "Finished"), 10);
    h.tick(ttl - 1);
    assert_eq!(h.state.dedup.len(), 2);
    assert_eq!(h.state.runs.len(), 1);
    h.tick(ttl + 10);
    assert!(h.state.dedup.is_empty());
    assert!(h.state.runs.is_empty());
    // Counters are never forgotten.
    assert_eq!(h.counter(CounterKey::Finished(P1, Outcome::Finished)), 1);
}

#[test]
fn a_load_test_keeps_its_outcomes_and_latest_duration() {
    let mut h = Harness::new();
    // Runs 1 and 4 both belong to load test 1 (run % 3).
    h.deliver("a", start(1, P1), 0);
    h.deliver("b", finish(1, P1, 6, "Aborted by user"), 30_000);
    h.deliver("c", finish(4, P1, 3, "Finished"), 40_000);
    let test = &h.state.load_tests[&1];
    assert_eq!(test.finished[&Outcome::AbortedByUser], 1);
    assert_eq!(test.finished[&Outcome::Finished], 1);
    assert_eq!(test.last_status, Some(3));
    // Run 4 had no start: the latest duration stays run 1's.
    assert_eq!(test.last_duration_millis, Some(30_000));
    h.deliver("d", finish(4, P1, 3, "Finished"), 50_000);
    assert_eq!(h.state.load_tests[&1].finished[&Outcome::Finished], 1);
}

#[test]
fn load_test_series_go_away_after_the_series_ttl() {
    let mut h = Harness::new();
    h.deliver("a", finish(3, P1, 3, "Finished"), 0);
    assert!(h.state.load_tests.contains_key(&0));
    h.tick(h.machine.series_ttl - 1);
    assert!(h.state.load_tests.contains_key(&0));
    h.tick(h.machine.series_ttl);
    assert!(h.state.load_tests.is_empty());
}

#[test]
fn abort_ratio_counts_runs_finished_within_the_window() {
    let mut h = Harness::new();
    let window = h.machine.abort_window;
    h.deliver("1", finish(1, P1, 6, "Aborted by user"), 0);
    h.deliver("2", finish(2, P1, 3, "Finished"), 10);
    h.deliver("3", finish(3, P1, 12, "Failed threshold"), 20);
    h.deliver("4", finish(4, P1, 11, "Aborted by threshold"), 30);
    h.deliver("5", finish(5, P2, 3, "Finished"), 30);
    let ratios = h.machine.abort_ratios(&h.state, 40);
    assert_eq!(
        ratios[&P1], 0.5,
        "2 aborts of 4; failed_threshold is no abort"
    );
    assert_eq!(ratios[&P2], 0.0);
    // The first finish leaves the window.
    let ratios = h.machine.abort_ratios(&h.state, window + 5);
    assert_eq!(ratios[&P1], 1.0 / 3.0);
    // Nothing in the window: no series.
    assert!(h.machine.abort_ratios(&h.state, window + 100).is_empty());
}

#[test]
fn rejections_count_only_their_code() {
    let mut h = Harness::new();
    assert_eq!(h.apply(Input::Rejected { code: 400 }), None);
    assert_eq!(h.apply(Input::Rejected { code: 400 }), None);
    assert_eq!(h.counter(CounterKey::Requests { code: 400 }), 2);
    assert_eq!(h.state.counters.len(), 1);
    assert!(h.state.runs.is_empty() && h.state.last_event.is_empty());
}

#[test]
fn notification_channel_is_accepted_and_touches_no_run() {
    let mut h = Harness::new();
    assert_eq!(
        h.deliver("x", Event::NotificationChannel, 1),
        EventResult::Accepted
    );
    assert_eq!(
        h.deliver("x", Event::NotificationChannel, 2),
        EventResult::Duplicate
    );
    assert!(h.state.runs.is_empty());
    assert!(h.state.projects().is_empty());
}

#[test]
fn the_status_table_decides_unknown_texts() {
    let mut h = Harness::new();
    h.machine.status_table = StatusTable::V4;
    h.deliver("a", finish(1, P1, 9, ""), 0);
    h.deliver("b", finish(2, P1, 42, "Brand new state"), 0);
    assert_eq!(
        h.counter(CounterKey::Finished(P1, Outcome::AbortedByLimit)),
        1
    );
    assert_eq!(h.counter(CounterKey::Finished(P1, Outcome::Unknown)), 1);
    assert_eq!(h.state.runs[&2].status, Some(42), "raw code kept");
}

// ---- properties -----------------------------------------------------------

fn play(steps: &[Step]) -> Harness {
    let mut h = Harness::new();
    for (i, s) in steps.iter().enumerate() {
        h.apply(input_of(s, i, 1_000 * i as i64));
        if i % 7 == 3 {
            // Ticks inside every retention: they must change no count.
            h.tick(1_000 * i as i64);
        }
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Counts depend only on which (run, event) pairs were delivered, never on
    /// order or on how often: a run starts at most once and finishes at most once.
    #[test]
    fn counts_are_exact_whatever_the_order_and_duplicates(steps in prop::collection::vec(step(), 0..60)) {
        let h = play(&steps);
        for project in [P1, P2] {
            let started: BTreeSet<u64> = steps.iter()
                .filter(|s| !s.finish && project_of(s.run) == project).map(|s| s.run).collect();
            let finished: BTreeSet<u64> = steps.iter()
                .filter(|s| s.finish && project_of(s.run) == project).map(|s| s.run).collect();
            prop_assert_eq!(h.started(project), started.len() as u64);
            let total: u64 = Outcome::ALL.iter()
                .map(|o| h.counter(CounterKey::Finished(project, *o))).sum();
            prop_assert_eq!(total, finished.len() as u64);
            for outcome in Outcome::ALL {
                let want = finished.iter().filter(|run| {
                    let (status, text) = status_of(**run);
                    classify((!text.is_empty()).then_some(text), status, StatusTable::V3) == outcome
                }).count() as u64;
                prop_assert_eq!(h.counter(CounterKey::Finished(project, outcome)), want);
            }
            // Running: started, not finished.
            prop_assert_eq!(h.running(project), started.difference(&finished).count() as u64);
            // A duration for each run whose start came before its finish.
            let timed = finished.iter().filter(|run| {
                let first_start = steps.iter().position(|s| s.run == **run && !s.finish);
                let first_finish = steps.iter().position(|s| s.run == **run && s.finish);
                matches!((first_start, first_finish), (Some(a), Some(b)) if a < b)
            }).count() as u64;
            let observed: u64 = h.state.histograms.iter()
                .filter(|((p, _), _)| *p == project).map(|(_, hist)| hist.count).sum();
            prop_assert_eq!(observed, timed);
        }
        // Per load test, the finished runs add up to the per-project counts.
        let by_test: u64 = h.state.load_tests.values().flat_map(|t| t.finished.values()).sum();
        let by_project: u64 = h.state.counters.iter()
            .filter(|(k, _)| matches!(k, CounterKey::Finished(..))).map(|(_, v)| *v).sum();
        prop_assert_eq!(by_test, by_project);
        // Every delivery is answered once and counted once.
        let events: u64 = h.state.counters.iter()
            .filter(|(k, _)| matches!(k, CounterKey::Events { .. })).map(|(_, v)| *v).sum();
        prop_assert_eq!(events, steps.len() as u64);
        prop_assert_eq!(h.counter(CounterKey::Requests { code: 200 }), steps.len() as u64);
    }

    /// Replaying every delivery again (Load Impact retrying it all, under new
    /// ids) changes no run metric.
    #[test]
    fn replaying_the_stream_changes_no_run_metric(steps in prop::collection::vec(step(), 0..40)) {
        let mut h = play(&steps);
        let before = h.run_metrics();
        for (i, s) in steps.iter().enumerate() {
            let result = h.deliver(&format!("replay-{i}"), event_of(s), 100_000 + i as i64);
            prop_assert_eq!(result, EventResult::Duplicate);
        }
        prop_assert_eq!(h.run_metrics(), before);
    }

    /// Two orders of the same deliveries give the same run counters.
    #[test]
    fn order_does_not_change_the_counters(steps in prop::collection::vec(step(), 0..40), seed in any::<u64>()) {
        let mut shuffled = steps.clone();
        // A deterministic shuffle from the seed.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let a = play(&steps);
        let b = play(&shuffled);
        prop_assert_eq!(a.run_metrics().0, b.run_metrics().0);
        prop_assert_eq!(a.machine.running(&a.state), b.machine.running(&b.state));
    }

    /// Undoing a group of changes gives back the state exactly as it was:
    /// what a failed commit relies on to show nothing that was not stored.
    #[test]
    fn undo_restores_the_state_exactly(
        before in prop::collection::vec(step(), 0..30),
        group in prop::collection::vec(step(), 1..30),
        tick in 0i64..200_000_000_000,
    ) {
        let mut h = play(&before);
        h.machine.spans_max_pending = Some(4);
        let original = h.state.clone();
        let mut changes = Changes::default();
        for (i, s) in group.iter().enumerate() {
            let input = Input::Webhook {
                request_ids: vec![format!("g-{i}-{}", s.id_kind)],
                event: event_of(s),
                at: 50_000 + i as i64,
            };
            h.machine.apply(&mut h.state, input, &mut changes);
        }
        h.machine.apply(&mut h.state, Input::Tick { now: tick }, &mut changes);
        h.machine.apply(&mut h.state, Input::SpansExported { run_ids: vec![1, 2] }, &mut changes);
        h.machine.apply(&mut h.state, Input::Rejected { code: 400 }, &mut changes);
        changes.undo(&mut h.state);
        prop_assert_eq!(h.state, original);
    }

    /// Gauges and counters never go negative or backwards across ticks.
    #[test]
    fn counters_never_decrease(steps in prop::collection::vec(step(), 0..40), ticks in prop::collection::vec(0i64..200_000_000_000, 0..5)) {
        let mut h = play(&steps);
        let mut last = h.state.counters.clone();
        for now in ticks {
            h.tick(now);
            for (key, value) in &last {
                prop_assert!(h.state.counter(key) >= *value, "{:?} went down", key);
            }
            last = h.state.counters.clone();
        }
    }
}

// ---- the span outbox ------------------------------------------------------

fn tracing_on(max_pending: usize) -> Harness {
    let mut h = Harness::new();
    h.machine.spans_max_pending = Some(max_pending);
    h
}

#[test]
fn tracing_off_puts_nothing_in_the_outbox() {
    let mut h = Harness::new();
    h.deliver("a", start(1, P1), 0);
    h.deliver("b", finish(1, P1, 3, "Finished"), 10);
    assert!(h.state.outbox.is_empty());
}

#[test]
fn a_finished_run_waits_in_the_outbox_until_acknowledged() {
    let mut h = tracing_on(10);
    h.deliver("a", start(1, P1), 1_000);
    assert!(h.state.outbox.is_empty(), "no span before the finish");
    h.deliver("b", finish(1, P1, 12, "Failed threshold"), 9_000);
    let span = &h.state.outbox[&1];
    assert_eq!((span.start, span.end), (Some(1_000), 9_000));
    assert_eq!(
        span.end_kind,
        SpanEnd::Finished {
            outcome: Outcome::FailedThreshold,
            status: 12,
            status_text: Some("Failed threshold".into())
        }
    );
    // A duplicate finish does not make a second span.
    h.deliver("c", finish(1, P1, 12, "Failed threshold"), 9_500);
    assert_eq!(h.state.outbox.len(), 1);
    h.apply(Input::SpanExportFailed);
    assert_eq!(h.state.outbox.len(), 1);
    assert_eq!(h.counter(CounterKey::SpanExportFailures), 1);
    h.apply(Input::SpansExported { run_ids: vec![1] });
    h.apply(Input::SpansExported { run_ids: vec![1] });
    assert!(h.state.outbox.is_empty());
    assert_eq!(h.counter(CounterKey::SpansExported), 1, "acknowledged once");
}

#[test]
fn an_expired_run_gets_its_span_at_the_expiry_and_no_second_one() {
    let mut h = tracing_on(10);
    let max = h.machine.run_max_duration;
    h.deliver("a", start(1, P1), 0);
    h.tick(max);
    assert_eq!(h.state.outbox[&1].end, max);
    assert_eq!(h.state.outbox[&1].end_kind, SpanEnd::Expired);
    h.apply(Input::SpansExported { run_ids: vec![1] });
    h.deliver("b", finish(1, P1, 3, "Finished"), max + 1);
    assert!(h.state.outbox.is_empty());
}

#[test]
fn a_full_outbox_drops_new_spans_and_counts_them() {
    let mut h = tracing_on(2);
    for run in 1..=3 {
        h.deliver(&run.to_string(), finish(run, P1, 3, "Finished"), 0);
    }
    assert_eq!(
        h.state.outbox.keys().copied().collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(h.counter(CounterKey::SpansDropped), 1);
    // All three still count as finished runs.
    assert_eq!(h.counter(CounterKey::Finished(P1, Outcome::Finished)), 3);
}

// ---- Grafana Cloud k6 notifications -----------------------------------------

fn k6_finish(run: u64, project: Project, status: i64, result_failed: bool) -> RunEvent {
    RunEvent {
        kind: RunEventKind::Finished,
        load_test_run_id: run,
        load_test_id: run % 3,
        project,
        status,
        format: crate::webhook::Format::K6Cloud,
        result_failed,
        ..RunEvent::default()
    }
}

#[test]
fn a_k6cloud_finish_reads_the_k6_table_and_its_result_whatever_the_flag() {
    let mut h = Harness::new();
    assert_eq!(h.machine.status_table, StatusTable::V3);
    // 9 is "aborted by limit" in the k6 table (Load Impact 3.0: script error).
    h.deliver("a", Event::Run(k6_finish(1, P1, 9, false)), 0);
    assert_eq!(
        h.counter(CounterKey::Finished(P1, Outcome::AbortedByLimit)),
        1
    );
    // Finished with a failed result: a failed threshold.
    h.deliver("b", Event::Run(k6_finish(2, P1, 3, true)), 0);
    assert_eq!(
        h.counter(CounterKey::Finished(P1, Outcome::FailedThreshold)),
        1
    );
    // The event identifier's outcome wins over the code.
    let named = RunEvent {
        event_outcome: Some(Outcome::AbortedByUser),
        ..k6_finish(3, P1, 3, false)
    };
    h.deliver("c", Event::Run(named), 0);
    assert_eq!(
        h.counter(CounterKey::Finished(P1, Outcome::AbortedByUser)),
        1
    );
}

#[test]
fn reported_times_give_the_duration_and_the_span_and_bad_ones_fall_back() {
    let mut h = Harness {
        machine: Machine {
            spans_max_pending: Some(10),
            ..Machine::default()
        },
        ..Harness::new()
    };
    // Both deliveries arrive a second apart; the body says the run took 90 s.
    let started = RunEvent {
        kind: RunEventKind::Started,
        reported_start: Some(100_000),
        ..k6_finish(1, P1, 2, false)
    };
    h.deliver("s", Event::Run(started), 500_000);
    let finished = RunEvent {
        reported_start: Some(100_000),
        reported_end: Some(190_000),
        ..k6_finish(1, P1, 3, false)
    };
    h.deliver("f", Event::Run(finished), 501_000);
    let hist = &h.state.histograms[&(P1, Outcome::Finished)];
    assert_eq!((hist.count, hist.sum_millis), (1, 90_000));
    assert_eq!(h.state.load_tests[&1].last_duration_millis, Some(90_000));
    let span = &h.state.outbox[&1];
    assert_eq!((span.start, span.end), (Some(100_000), 190_000));

    // An inverted pair falls back to the times of receipt.
    h.deliver("s2", start(2, P1), 600_000);
    let inverted = RunEvent {
        reported_start: Some(190_000),
        reported_end: Some(100_000),
        ..k6_finish(2, P1, 3, false)
    };
    h.deliver("f2", Event::Run(inverted), 601_500);
    assert_eq!(
        h.state.histograms[&(P1, Outcome::Finished)].sum_millis,
        91_500
    );
    assert_eq!(h.state.outbox[&2].start, Some(600_000));
    assert_eq!(h.state.outbox[&2].end, 601_500);
}

#[test]
fn a_run_started_in_one_format_and_finished_in_the_other_is_one_run() {
    let mut h = Harness::new();
    h.deliver("legacy-start", start(7, P1), 1_000);
    h.deliver("k6-finish", Event::Run(k6_finish(7, P1, 3, false)), 4_000);
    assert_eq!(h.started(P1), 1);
    assert_eq!(h.counter(CounterKey::Finished(P1, Outcome::Finished)), 1);
    assert_eq!(h.running(P1), 0);
    assert_eq!(
        h.state.histograms[&(P1, Outcome::Finished)].sum_millis,
        3_000
    );
    // A k6 Cloud repeat under another id, of the run's finish: a duplicate.
    let again = h.deliver(
        "k6-finish-again",
        Event::Run(k6_finish(7, P1, 3, false)),
        5_000,
    );
    assert_eq!(again, EventResult::Duplicate);
}

#[test]
fn a_start_counts_under_its_trigger() {
    let mut h = Harness::new();
    let scheduled = RunEvent {
        kind: RunEventKind::Started,
        trigger: Trigger::Scheduled,
        ..k6_finish(1, P1, 2, false)
    };
    h.deliver("s", Event::Run(scheduled), 0);
    h.deliver("l", start(2, P1), 0);
    assert_eq!(h.counter(CounterKey::Started(P1, Trigger::Scheduled)), 1);
    assert_eq!(h.counter(CounterKey::Started(P1, Trigger::Unknown)), 1);
    assert_eq!(h.counter(CounterKey::Started(P1, Trigger::Manual)), 0);
    assert_eq!(h.started(P1), 2);
}

#[test]
fn any_of_a_deliverys_ids_makes_it_a_duplicate() {
    let mut h = Harness::new();
    let ping = |ids: &[&str], at| Input::Webhook {
        request_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
        event: Event::NotificationChannel,
        at,
    };
    let result = |a: Option<Applied>| a.expect("webhook").result;
    assert_eq!(
        result(h.apply(ping(&["req-1", "event-1"], 0))),
        EventResult::Accepted
    );
    // The same event under a new request id, and the same request id alone.
    assert_eq!(
        result(h.apply(ping(&["req-2", "event-1"], 1))),
        EventResult::Duplicate
    );
    assert_eq!(result(h.apply(ping(&["req-1"], 2))), EventResult::Duplicate);
    assert_eq!(
        result(h.apply(ping(&["req-3", "event-3"], 3))),
        EventResult::Accepted
    );
}

#[test]
fn a_finishs_errors_count_once_and_codes_past_the_cap_are_other() {
    let mut h = Harness::new();
    let errors = |codes: &[i64]| -> Vec<crate::webhook::RunError> {
        codes
            .iter()
            .map(|code| crate::webhook::RunError {
                code: *code,
                detail: None,
                created: None,
            })
            .collect()
    };
    let with_errors = RunEvent {
        errors: errors(&[5, 5, 9]),
        ..k6_finish(1, P1, 7, false)
    };
    h.deliver("a", Event::Run(with_errors.clone()), 0);
    // The same finish again is a duplicate: its errors are not counted again.
    h.deliver("b", Event::Run(with_errors), 1);
    assert_eq!(h.counter(CounterKey::RunErrors(P1, ErrorCode::Code(5))), 2);
    assert_eq!(h.counter(CounterKey::RunErrors(P1, ErrorCode::Code(9))), 1);
    // Codes past the first MAX_ERROR_CODES distinct ones are counted as other.
    let many: Vec<i64> = (100..100 + MAX_ERROR_CODES as i64).collect();
    let flood = RunEvent {
        errors: errors(&many),
        ..k6_finish(2, P2, 7, false)
    };
    h.deliver("c", Event::Run(flood), 2);
    let other = h.counter(CounterKey::RunErrors(P2, ErrorCode::Other));
    assert_eq!(other, 2, "two of the new codes were past the cap");
    let labelled = h
        .state
        .counters
        .keys()
        .filter(|k| matches!(k, CounterKey::RunErrors(_, ErrorCode::Code(_))))
        .count();
    assert_eq!(
        labelled, MAX_ERROR_CODES,
        "codes 5 and 9 for P1, 30 new for P2"
    );
    // A code already labelled keeps its label.
    let again = RunEvent {
        errors: errors(&[9]),
        ..k6_finish(3, P2, 7, false)
    };
    h.deliver("d", Event::Run(again), 3);
    assert_eq!(h.counter(CounterKey::RunErrors(P2, ErrorCode::Code(9))), 1);
}
