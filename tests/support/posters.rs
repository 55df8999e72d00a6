//! Concurrent posters and their bookkeeping, for the tests that take an
//! exporter (`tests/crash.rs`) or a replica or Redis (`tests/replicas.rs`)
//! away under load: the runs each poster sent (`PlannedRun`), every
//! delivery's fate (`Sent`), and the checks that nothing acknowledged was
//! lost, nothing was counted twice, and that re-sending every delivery, as a
//! webhook sender retries what got no 2xx, counts each run exactly once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::deliveries::{Delivery, Fate, Run};
use super::exporter::{api_run, Exporter};
use super::samples::{labelled, sample, Samples, OUTCOMES};

/// Load Impact's finishes: (status, status_text, outcome).
const LEGACY_FINISHES: [(i64, &str, &str); 4] = [
    (3, "Finished", "finished"),
    (5, "Aborted by user", "aborted_by_user"),
    (12, "Failed threshold", "failed_threshold"),
    (4, "Timed out", "timed_out"),
];
/// Grafana Cloud k6's finishes: (event, status, result, outcome).
const K6_FINISHES: [(&str, i64, Option<u8>, &str); 3] = [
    ("test.finished.finished", 3, Some(0), "finished"),
    ("test.finished.aborted_system", 6, None, "aborted_by_system"),
    ("test.finished.failed", 3, Some(1), "failed_threshold"),
];

/// One run: its two deliveries and the outcome it must count as.
pub struct PlannedRun {
    pub run: Run,
    pub outcome: &'static str,
    pub start: Delivery,
    pub finish: Delivery,
}

impl PlannedRun {
    /// Its start or its finish.
    pub fn delivery(&self, start: bool) -> &Delivery {
        if start {
            &self.start
        } else {
            &self.finish
        }
    }
}

/// Run `id` of `project` in `org`; its format and outcome follow from `i`:
/// two of every four in Load Impact's format, two in Grafana Cloud k6's.
/// Its deliveries' ids are `run-<id>-start` and `run-<id>-finish`.
pub fn planned(org: u64, project: u64, id: u64, i: u64) -> PlannedRun {
    let run = Run::new(org, project, project * 10 + i % 3, id);
    let key = |what: &str| format!("run-{id}-{what}");
    if i % 4 < 2 {
        let (status, text, outcome) = LEGACY_FINISHES[(i / 4 % 4) as usize];
        PlannedRun {
            start: Delivery::new(&run.started(), &key("start")),
            finish: Delivery::new(&run.finished(status, Some(text)), &key("finish")),
            outcome,
            run,
        }
    } else {
        let (event, status, result, outcome) = K6_FINISHES[(i / 4 % 3) as usize];
        PlannedRun {
            start: Delivery::k6(&run, "test.started", 2, None, json!(null), &key("start")),
            finish: Delivery::k6(
                &run,
                event,
                status,
                result,
                json!("2024-05-06T10:01:30Z"),
                &key("finish"),
            ),
            outcome,
            run,
        }
    }
}

/// A delivery sent, and what it got.
pub struct Sent {
    /// The index of its run among its poster's runs.
    pub run: usize,
    pub start: bool,
    pub fate: Fate,
    /// Sent after the posters' marker was set (a replica killed, Redis back…).
    pub after_marker: bool,
}

/// Runs sent by the posters, and every delivery's fate, one entry a poster.
pub type Posted = Vec<(Vec<PlannedRun>, Vec<Sent>)>;

/// Where the posters send: the webhook ports of one or more exporters. A
/// port of 0 is an exporter that is down.
pub type Ports = Arc<[AtomicU16]>;

/// Starts `posters` threads; poster `t` sends runs of its two projects in
/// `org` (`org * 10 + 2t` and the next), one after another, each a start
/// then a finish, to the exporters of `ports` in turn (the start of a run
/// to one, its finish to the next). A delivery meant for an exporter that
/// is down goes to the next one that is up; while all are down the poster
/// waits, as a sender keeps its deliveries for later. After an answer that
/// is not a 2xx it waits 20 ms. Stops when `stop` is set, never between a
/// run's two deliveries.
pub fn start_posters(
    posters: u64,
    org: u64,
    ports: &Ports,
    stop: &Arc<AtomicBool>,
    marker: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(Vec<PlannedRun>, Vec<Sent>)>> {
    (0..posters)
        .map(|t| {
            let (ports, stop, marker) = (ports.clone(), stop.clone(), marker.clone());
            std::thread::spawn(move || {
                let (mut runs, mut sent) = (Vec::new(), Vec::new());
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let project = org * 10 + 2 * t + i % 2;
                    let planned = planned(org, project, (org * 100 + t) * 100_000 + i, i);
                    for start in [true, false] {
                        let want = (t + i + u64::from(!start)) as usize;
                        let port = port_up(&ports, want);
                        let after_marker = marker.load(Ordering::Acquire);
                        let fate = planned.delivery(start).fate_at(port);
                        if !matches!(fate, Fate::Acknowledged(_)) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        sent.push(Sent {
                            run: runs.len(),
                            start,
                            fate,
                            after_marker,
                        });
                    }
                    runs.push(planned);
                }
                (runs, sent)
            })
        })
        .collect()
}

/// The port of exporter `want` (modulo their number), or of the next one
/// that is up; waits while every one is down.
fn port_up(ports: &Ports, want: usize) -> u16 {
    loop {
        let up = (0..ports.len())
            .map(|k| ports[(want + k) % ports.len()].load(Ordering::Acquire))
            .find(|&p| p != 0);
        match up {
            Some(port) => return port,
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Waits for every poster and collects what they sent.
pub fn join(posters: Vec<std::thread::JoinHandle<(Vec<PlannedRun>, Vec<Sent>)>>) -> Posted {
    posters
        .into_iter()
        .map(|p| p.join().expect("poster"))
        .collect()
}

/// How many deliveries got what, by kind of fate.
pub fn tally(posted: &Posted) -> BTreeMap<String, u64> {
    let mut fates = BTreeMap::new();
    for (_, sent) in posted {
        for d in sent {
            let key = match &d.fate {
                Fate::Acknowledged(result) => format!("2xx {result}"),
                Fate::Refused(status, _) => format!("refused {status}"),
                Fate::Unanswered => "unanswered".to_owned(),
            };
            *fates.entry(key).or_default() += 1;
        }
    }
    fates
}

/// The sum of every series of `name` labelled with `project` of `org`.
pub fn by_project(s: &Samples, name: &str, org: u64, project: u64) -> f64 {
    labelled(s, name)
        .into_iter()
        .filter(|(l, _)| {
            l.get("organization_id") == Some(&org.to_string())
                && l.get("project_id") == Some(&project.to_string())
        })
        .map(|(_, v)| v)
        .sum()
}

/// Runs of `project` started, by any trigger.
pub fn started(s: &Samples, org: u64, project: u64) -> f64 {
    by_project(s, "loadimpact_test_runs_started_total", org, project)
}

/// Runs of `project` finished, by any outcome.
pub fn finished(s: &Samples, org: u64, project: u64) -> f64 {
    by_project(s, "loadimpact_test_runs_finished_total", org, project)
}

/// Asserts that `runs` (all finished) count exactly once each in `s`: by
/// project started and finished, by outcome, none running, none expired.
pub fn assert_counted_once<'a>(
    s: &Samples,
    runs: impl IntoIterator<Item = &'a PlannedRun>,
    what: &str,
) {
    let mut per_project: BTreeMap<(u64, u64), f64> = BTreeMap::new();
    let mut per_outcome: BTreeMap<(u64, u64, &str), f64> = BTreeMap::new();
    for planned in runs {
        let r = &planned.run;
        *per_project.entry((r.org, r.project)).or_default() += 1.0;
        *per_outcome
            .entry((r.org, r.project, planned.outcome))
            .or_default() += 1.0;
    }
    for (&(org, project), &n) in &per_project {
        let run = Run::new(org, project, 0, 0);
        assert_eq!(
            started(s, org, project),
            n,
            "{what}: project {project} started"
        );
        assert_eq!(
            finished(s, org, project),
            n,
            "{what}: project {project} finished"
        );
        assert_eq!(
            sample(s, &run.running()),
            0.0,
            "{what}: project {project} running"
        );
        assert_eq!(
            sample(s, &run.expired_total()),
            0.0,
            "{what}: project {project} expired"
        );
        for outcome in OUTCOMES {
            let want = per_outcome
                .get(&(org, project, outcome))
                .copied()
                .unwrap_or(0.0);
            assert_eq!(
                sample(s, &run.finished_total(outcome)),
                want,
                "{what}: project {project} finished as {outcome}"
            );
        }
    }
}

/// Whether a delivery answered 503 may have been stored all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusals {
    /// One exporter on its own store: a 503 means the commit failed and
    /// was undone.
    NeverStored,
    /// Replicas on a shared log: the append may have reached Redis and
    /// only its answer been lost.
    MayBeStored,
}

/// Of one project's starts or finishes: how many were acknowledged, and how
/// many got no answer or a refusal that may have been stored.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    acknowledged: u64,
    maybe: u64,
}

/// The bookkeeping of a test that took exporters away under the posters.
/// `s` is the state before any re-send. Checks that every first answer was
/// `accepted` or a 503, and that each project's counters lie between what
/// was acknowledged and what was acknowledged or may have been stored
/// (unanswered, or per `refusals` a 503); then re-sends every delivery,
/// round-robin over `to`: an acknowledged one must be found stored
/// (`duplicate`), a refused one that is [`Refusals::NeverStored`] must not,
/// the others are found stored or counted now; and what `s` held is exactly
/// the acknowledged ones plus the ones found stored. The caller then checks
/// that every run counts once ([`assert_counted_once`],
/// [`assert_none_running`]).
pub fn check_then_resend(
    posted: &Posted,
    org: u64,
    s: &Samples,
    to: &[&Exporter],
    refusals: Refusals,
) {
    let mut counts: BTreeMap<u64, (Counts, Counts)> = BTreeMap::new();
    for (runs, sent) in posted {
        for d in sent {
            let entry = counts.entry(runs[d.run].run.project).or_default();
            let c = if d.start { &mut entry.0 } else { &mut entry.1 };
            match &d.fate {
                Fate::Acknowledged(result) => {
                    assert_eq!(
                        result, "accepted",
                        "a first delivery of a run's event is accepted"
                    );
                    c.acknowledged += 1;
                }
                Fate::Refused(status, body) => {
                    assert_eq!(
                        *status, 503,
                        "only a 503 may refuse a valid delivery: {body}"
                    );
                    if refusals == Refusals::MayBeStored {
                        c.maybe += 1;
                    }
                }
                Fate::Unanswered => c.maybe += 1,
            }
        }
    }
    for (project, (starts, finishes)) in &counts {
        for (what, got, c) in [
            ("started", started(s, org, *project), starts),
            ("finished", finished(s, org, *project), finishes),
        ] {
            let (low, high) = (c.acknowledged, c.acknowledged + c.maybe);
            assert!(
                got >= low as f64 && got <= high as f64,
                "project {project}: {got} runs {what}, {low} acknowledged, {high} acknowledged or maybe stored"
            );
        }
    }

    let mut stored: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut resent: BTreeMap<String, u64> = BTreeMap::new();
    let mut k = 0;
    for (runs, sent) in posted {
        for d in sent {
            let planned = &runs[d.run];
            let target = to[k % to.len()];
            k += 1;
            let resp = planned.delivery(d.start).send(&target.delivery_url());
            assert_eq!(
                resp.status, 200,
                "re-sent delivery of run {}: {}",
                planned.run.id, resp.body
            );
            let result = resp.json()["result"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            *resent.entry(result.clone()).or_default() += 1;
            let entry = stored.entry(planned.run.project).or_default();
            let n = if d.start { &mut entry.0 } else { &mut entry.1 };
            let what = if d.start { "start" } else { "finish" };
            match (&d.fate, result.as_str()) {
                (Fate::Acknowledged(_), "duplicate") => *n += 1,
                (Fate::Acknowledged(_), _) => panic!(
                    "run {}: an acknowledged {what} re-sent is not found stored: {}",
                    planned.run.id, resp.body
                ),
                (Fate::Refused(..), "duplicate") if refusals == Refusals::NeverStored => panic!(
                    "run {}: a {what} answered 503 was stored all the same",
                    planned.run.id
                ),
                // Stored, its answer lost (or a 503 though Redis had it).
                (_, "duplicate") => *n += 1,
                // Not stored: counted now (a start after its finish as ignored).
                (_, "accepted" | "ignored") => {}
                (_, other) => panic!("re-sent delivery of run {}: {other:?}", planned.run.id),
            }
        }
    }
    eprintln!("posters: re-sent, answered {resent:?}");
    for (project, (starts, finishes)) in &stored {
        assert_eq!(
            started(s, org, *project),
            *starts as f64,
            "project {project}: starts stored before the re-send"
        );
        assert_eq!(
            finished(s, org, *project),
            *finishes as f64,
            "project {project}: finishes stored before the re-send"
        );
    }
}

/// Asserts that no run the posters sent is running in the runs API of any
/// exporter of `to`.
pub fn assert_none_running(posted: &Posted, to: &[&Exporter], what: &str) {
    for exporter in to {
        let api = exporter.runs_api();
        for (runs, _) in posted {
            for planned in runs {
                assert!(
                    api_run(&api, "running", planned.run.id).is_none(),
                    "{what}: run {} still running",
                    planned.run.id
                );
            }
        }
    }
}

/// Every run the posters sent.
pub fn all_runs(posted: &Posted) -> impl Iterator<Item = &PlannedRun> {
    posted.iter().flat_map(|(runs, _)| runs.iter())
}
