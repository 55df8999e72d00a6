//! Crashes under load: four posters send a stream of runs (a start, then a
//! finish; Load Impact's and Grafana Cloud k6's formats mixed; every
//! delivery with its own id) while the exporter is `kill -9`ed at random
//! moments and restarted on the same store, eight times. Every delivery's
//! fate is recorded: a 2xx, another answer, or none.
//!
//! It proves, per poster's projects: (a) after the last restart every
//! counter lies between what was acknowledged and what was acknowledged or
//! unanswered, and it is exactly the acknowledged plus the unanswered ones
//! that a re-send then finds already stored (`duplicate`): an acknowledged
//! delivery is never lost, and nothing is counted twice; and (b) once every
//! unanswered or refused delivery is re-sent with its own id, as a webhook
//! sender retries, every run is counted exactly once (started and finished
//! by outcome, none running, none expired, none in the runs API's running
//! list). A SIGTERM restart then changes no byte of the `loadimpact_*`
//! exposition (less the process's own telemetry).

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::deliveries::{k6_headers, Delivery, Fate, Run};
use support::exporter::{api_run, Exporter};
use support::samples::{labelled, sample, Samples, OUTCOMES};

const POSTERS: u64 = 4;
const ROUNDS: usize = 8;
/// The organization of every run here.
const ORG: u64 = 77;

/// A small deterministic generator (xorshift64*), seeded from the clock and
/// printed, so that a failing sequence of kill moments can be replayed with
/// `CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The two projects of poster `t`.
fn projects_of(t: u64) -> [u64; 2] {
    [700 + 2 * t, 701 + 2 * t]
}

/// What a finish reports, by format, and the outcome it is counted under.
const LEGACY_FINISHES: [(i64, &str, &str); 2] = [
    (3, "Finished", "finished"),
    (12, "Failed threshold", "failed_threshold"),
];
const K6_FINISHES: [(&str, &str); 2] = [
    ("test.finished.aborted_user", "aborted_by_user"),
    ("test.finished.timed_out", "timed_out"),
];

/// One run a poster sends: its two deliveries and what it must count as.
struct PlannedRun {
    run: Run,
    outcome: &'static str,
    start: Delivery,
    finish: Delivery,
}

/// Run `i` of poster `t`: its format and outcome follow from `i`.
fn planned_run(t: u64, i: u64) -> PlannedRun {
    let project = projects_of(t)[(i % 2) as usize];
    let run = Run::new(ORG, project, project * 10 + i % 3, (t + 1) * 1_000_000 + i);
    let id = |what: &str| format!("crash-{t}-{i}-{what}");
    if i % 4 < 2 {
        let (status, text, outcome) = LEGACY_FINISHES[(i / 4 % 2) as usize];
        PlannedRun {
            start: Delivery::new(&run.started(), &id("start")),
            finish: Delivery::new(&run.finished(status, Some(text)), &id("finish")),
            outcome,
            run,
        }
    } else {
        let (event, outcome) = K6_FINISHES[(i / 4 % 2) as usize];
        let k6 = |event: &str, short: &str, status, result, ended, what: &str| {
            let mut body = run.k6(event, status, result, "2024-05-06T10:00:00Z", ended);
            body["event"]["id"] = json!(id(&format!("{what}-event")));
            Delivery {
                headers: k6_headers(short, &id(what)),
                payload: serde_json::to_vec(&body).expect("serialize"),
            }
        };
        PlannedRun {
            start: k6(
                "test.started",
                "test.started",
                2,
                None,
                json!(null),
                "start",
            ),
            finish: k6(
                event,
                "test.finished",
                3,
                Some(0),
                json!("2024-05-06T10:01:30Z"),
                "finish",
            ),
            outcome,
            run,
        }
    }
}

/// A delivery sent, and what it got.
struct Sent {
    run: usize,
    start: bool,
    fate: Fate,
}

/// One poster: runs one after another, each a start then a finish, to
/// whichever port the exporter listens on now (0 while it is down), until
/// told to stop (never between a run's two deliveries).
fn poster(t: u64, port: Arc<AtomicU16>, stop: Arc<AtomicBool>) -> (Vec<PlannedRun>, Vec<Sent>) {
    let (mut runs, mut sent) = (Vec::new(), Vec::new());
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let planned = planned_run(t, i);
        for start in [true, false] {
            let delivery = if start {
                &planned.start
            } else {
                &planned.finish
            };
            // While the exporter is down a sender keeps its deliveries for
            // later; wait for it rather than count a thousand refusals.
            let port = loop {
                match port.load(Ordering::Acquire) {
                    0 => std::thread::sleep(Duration::from_millis(5)),
                    p => break p,
                }
            };
            sent.push(Sent {
                run: runs.len(),
                start,
                fate: delivery.fate_at(port),
            });
        }
        runs.push(planned);
    }
    (runs, sent)
}

/// Of one project's starts or finishes: how many were acknowledged, and how
/// many got no answer.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    acknowledged: u64,
    unanswered: u64,
}

fn started_total(s: &Samples, project: u64) -> f64 {
    by_project(s, "loadimpact_test_runs_started_total", project)
}

fn finished_total(s: &Samples, project: u64) -> f64 {
    by_project(s, "loadimpact_test_runs_finished_total", project)
}

/// The sum of every series of `name` labelled with `project` of `ORG`.
fn by_project(s: &Samples, name: &str, project: u64) -> f64 {
    labelled(s, name)
        .into_iter()
        .filter(|(l, _)| {
            l["organization_id"] == ORG.to_string() && l["project_id"] == project.to_string()
        })
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn kill_9_under_concurrent_posters_loses_no_acknowledged_delivery_and_retries_count_once() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| support::now_ns() | 1);
    eprintln!("crash: CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let began = Instant::now();

    let mut exporter = Exporter::start(&[]);
    let port = Arc::new(AtomicU16::new(exporter.port()));
    let stop = Arc::new(AtomicBool::new(false));
    let posters: Vec<_> = (0..POSTERS)
        .map(|t| {
            let (port, stop) = (port.clone(), stop.clone());
            std::thread::spawn(move || poster(t, port, stop))
        })
        .collect();

    for round in 0..ROUNDS {
        std::thread::sleep(Duration::from_millis(200 + rng.below(1300)));
        port.store(0, Ordering::Release);
        exporter.kill9();
        exporter.restart();
        eprintln!("crash: round {round} at {:.1?}", began.elapsed());
        port.store(exporter.port(), Ordering::Release);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let posted: Vec<(Vec<PlannedRun>, Vec<Sent>)> = posters
        .into_iter()
        .map(|p| p.join().expect("poster"))
        .collect();

    // (a) What the store kept, before any re-send.
    let s = exporter.samples();
    let api = exporter.runs_api();
    let mut fates: BTreeMap<String, u64> = BTreeMap::new();
    // Per project: (starts, finishes).
    let mut counts: BTreeMap<u64, (Counts, Counts)> = BTreeMap::new();
    for (runs, sent) in &posted {
        for d in sent {
            let project = runs[d.run].run.project;
            let entry = counts.entry(project).or_default();
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
                }
                Fate::Unanswered => c.unanswered += 1,
            }
            let key = match &d.fate {
                Fate::Acknowledged(_) => "acknowledged".to_owned(),
                Fate::Refused(status, _) => format!("refused {status}"),
                Fate::Unanswered => "unanswered".to_owned(),
            };
            *fates.entry(key).or_default() += 1;
        }
    }
    let runs_sent: usize = posted.iter().map(|(runs, _)| runs.len()).sum();
    eprintln!("crash: {runs_sent} runs, deliveries {fates:?}");
    assert!(
        fates.get("unanswered").copied().unwrap_or(0) >= ROUNDS as u64,
        "every kill should leave deliveries unanswered: {fates:?}"
    );
    for (project, (starts, finishes)) in &counts {
        for (what, got, c) in [
            ("started", started_total(&s, *project), starts),
            ("finished", finished_total(&s, *project), finishes),
        ] {
            let (low, high) = (c.acknowledged, c.acknowledged + c.unanswered);
            assert!(
                got >= low as f64 && got <= high as f64,
                "project {project}: {got} runs {what}, {low} acknowledged, {high} acknowledged or unanswered"
            );
        }
    }
    // A run is running only if its start may have been stored and its
    // finish was not acknowledged; the runs API and the gauge agree.
    for (runs, sent) in &posted {
        for (i, planned) in runs.iter().enumerate() {
            let fate = |start: bool| {
                sent.iter()
                    .find(|d| d.run == i && d.start == start)
                    .map(|d| d.fate.clone())
            };
            if api_run(&api, "running", planned.run.id).is_some() {
                assert!(
                    !matches!(fate(false), Some(Fate::Acknowledged(_))),
                    "run {} is running, yet its finish was acknowledged",
                    planned.run.id
                );
                assert!(
                    matches!(fate(true), Some(Fate::Acknowledged(_) | Fate::Unanswered)),
                    "run {} is running with its start refused",
                    planned.run.id
                );
            }
        }
    }
    for t in 0..POSTERS {
        for project in projects_of(t) {
            let listed = api["running"]
                .as_array()
                .expect("running")
                .iter()
                .filter(|r| r["project_id"] == json!(project))
                .count();
            let run = Run::new(ORG, project, 0, 0);
            assert_eq!(
                sample(&s, &run.running()),
                listed as f64,
                "project {project}: the running gauge and the runs API"
            );
        }
    }

    // (b) A sender re-sends what got no 2xx, with the same ids.
    let mut stored: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut resent: BTreeMap<String, u64> = BTreeMap::new();
    for (runs, sent) in &posted {
        for d in sent {
            let planned = &runs[d.run];
            let entry = stored.entry(planned.run.project).or_default();
            let n = if d.start { &mut entry.0 } else { &mut entry.1 };
            if matches!(d.fate, Fate::Acknowledged(_)) {
                *n += 1;
                continue;
            }
            let delivery = if d.start {
                &planned.start
            } else {
                &planned.finish
            };
            let fate = delivery.fate_at(exporter.port());
            if let Fate::Acknowledged(result) = &fate {
                *resent.entry(result.clone()).or_default() += 1;
            }
            match fate {
                // Stored before the kill, its answer lost with the process.
                Fate::Acknowledged(result) if result == "duplicate" => *n += 1,
                // Not stored: counted now (a start after its finish is
                // counted as ignored).
                Fate::Acknowledged(result) if result == "accepted" || result == "ignored" => {}
                other => panic!("re-sent delivery of run {}: {other:?}", planned.run.id),
            }
        }
    }
    eprintln!("crash: re-sent, answered {resent:?}");
    // What the store had kept is exactly the acknowledged deliveries and
    // the unanswered ones the re-send found stored.
    for (project, (starts, finishes)) in &stored {
        assert_eq!(
            started_total(&s, *project),
            *starts as f64,
            "project {project}: starts stored before the re-send"
        );
        assert_eq!(
            finished_total(&s, *project),
            *finishes as f64,
            "project {project}: finishes stored before the re-send"
        );
    }

    // Now every run counts exactly once.
    let s = exporter.samples();
    let api = exporter.runs_api();
    let mut expected: BTreeMap<(u64, &str), f64> = BTreeMap::new();
    let mut per_project: BTreeMap<u64, f64> = BTreeMap::new();
    for (runs, _) in &posted {
        for planned in runs {
            *expected
                .entry((planned.run.project, planned.outcome))
                .or_default() += 1.0;
            *per_project.entry(planned.run.project).or_default() += 1.0;
            assert!(
                api_run(&api, "running", planned.run.id).is_none(),
                "run {} still running after the re-send",
                planned.run.id
            );
        }
    }
    for (project, runs) in &per_project {
        let run = Run::new(ORG, *project, 0, 0);
        assert_eq!(
            started_total(&s, *project),
            *runs,
            "project {project}: started"
        );
        assert_eq!(
            finished_total(&s, *project),
            *runs,
            "project {project}: finished"
        );
        assert_eq!(
            sample(&s, &run.running()),
            0.0,
            "project {project}: running"
        );
        assert_eq!(
            sample(&s, &run.expired_total()),
            0.0,
            "project {project}: expired"
        );
        for outcome in OUTCOMES {
            let want = expected.get(&(*project, outcome)).copied().unwrap_or(0.0);
            assert_eq!(
                sample(&s, &run.finished_total(outcome)),
                want,
                "project {project}: finished as {outcome}"
            );
        }
    }
    assert_eq!(
        per_project.values().sum::<f64>(),
        runs_sent as f64,
        "every run sent is in some project"
    );

    // And a SIGTERM restart changes no byte of it.
    let before = exporter.state_exposition();
    let status = exporter.terminate();
    assert!(status.success(), "SIGTERM exit status: {status}");
    exporter.restart();
    let after = exporter.state_exposition();
    let gone: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
    let new: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
    assert!(
        before == after,
        "the exposition changed across a SIGTERM restart\nbefore: {gone:#?}\nafter: {new:#?}"
    );
    eprintln!("crash: done in {:.1?}", began.elapsed());
}
