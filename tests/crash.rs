//! Crashes under load: four posters send a stream of runs (a start, then a
//! finish; Load Impact's and Grafana Cloud k6's formats mixed; every
//! delivery with its own id) while the exporter is `kill -9`ed at random
//! moments and restarted on the same store, eight times. Every delivery's
//! fate is recorded: a 2xx, another answer, or none (`support::posters`
//! keeps the books).
//!
//! It proves, per poster's projects: (a) after the last restart every
//! counter lies between what was acknowledged and what was acknowledged or
//! unanswered, and it is exactly the acknowledged plus the unanswered ones
//! that a re-send then finds already stored (`duplicate`): an acknowledged
//! delivery is never lost (re-sent, each is found stored), a 503 stored
//! nothing, and nothing is counted twice; and (b) once every delivery is
//! re-sent with its own id, as a webhook sender retries what got no 2xx,
//! every run is counted exactly once (started and finished
//! by outcome, none running, none expired, none in the runs API's running
//! list). A SIGTERM restart then changes no byte of the `loadimpact_*`
//! exposition (less the process's own telemetry).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::deliveries::{Fate, Run};
use support::exporter::{api_run, Exporter};
use support::posters::{
    all_runs, assert_counted_once, assert_none_running, check_then_resend, join, start_posters,
    tally, Ports, Refusals,
};
use support::samples::sample;

const POSTERS: u64 = 4;
const ROUNDS: usize = 8;
/// The organization of every run here; poster `t` sends to its projects
/// `ORG * 10 + 2t` and the next.
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
    let ports: Ports = Arc::new([AtomicU16::new(exporter.port())]);
    let (stop, marker) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let posters = start_posters(POSTERS, ORG, &ports, &stop, &marker);

    for round in 0..ROUNDS {
        std::thread::sleep(Duration::from_millis(200 + rng.below(1300)));
        // While the exporter is down the posters wait, as a sender keeps
        // its deliveries for later.
        ports[0].store(0, Ordering::Release);
        exporter.kill9();
        exporter.restart();
        eprintln!("crash: round {round} at {:.1?}", began.elapsed());
        ports[0].store(exporter.port(), Ordering::Release);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let posted = join(posters);

    // (a) What the store kept, before any re-send.
    let s = exporter.samples();
    let api = exporter.runs_api();
    let fates = tally(&posted);
    eprintln!(
        "crash: {} runs, deliveries {fates:?}",
        all_runs(&posted).count()
    );
    assert!(
        fates.get("unanswered").copied().unwrap_or(0) >= ROUNDS as u64,
        "every kill should leave deliveries unanswered: {fates:?}"
    );
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
        for project in [ORG * 10 + 2 * t, ORG * 10 + 2 * t + 1] {
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

    // (b) A sender re-sends what got no 2xx, with the same ids: the store
    // held exactly what was acknowledged and what the re-send finds stored,
    // and now every run counts exactly once.
    check_then_resend(&posted, ORG, &s, &[&exporter], Refusals::NeverStored);
    assert_counted_once(&exporter.samples(), all_runs(&posted), "after the re-send");
    assert_none_running(&posted, &[&exporter], "after the re-send");

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
