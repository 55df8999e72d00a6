//! The simulated stream, planned up front and pure: which runs, which
//! outcome, when each webhook goes out and which ones are sent twice, all
//! from `--seed`.

use crate::config::{OutcomeWeights, SimulateArgs};
use crate::outcome::{from_code, Outcome, StatusTable};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// Load test names the simulated projects draw from.
pub(super) const TEST_NAMES: [&str; 6] = [
    "checkout flow",
    "search API soak",
    "login spike",
    "catalog browse",
    "payments smoke",
    "websocket fan-out",
];

/// Splits `total` runs among the weights in proportion, exactly (largest
/// remainder, ties to the earlier outcome).
pub(super) fn allocate(weights: &OutcomeWeights, total: u64) -> Vec<(Outcome, u64)> {
    let sum: f64 = weights.0.iter().map(|(_, w)| w).sum();
    let exact: Vec<f64> = weights
        .0
        .iter()
        .map(|(_, w)| w / sum * total as f64)
        .collect();
    let mut counts: Vec<u64> = exact.iter().map(|x| x.floor() as u64).collect();
    let mut left = total.saturating_sub(counts.iter().sum());
    let mut order: Vec<usize> = (0..exact.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for i in order.into_iter().cycle() {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    weights.0.iter().map(|(o, _)| *o).zip(counts).collect()
}

/// Status code and text Load Impact sends for an outcome: the last (final,
/// "Aborted" rather than "Aborting") code of the table that means it, or 99
/// (no meaning) when the table has none; the text always names the outcome.
pub(super) fn status_of(outcome: Outcome, table: StatusTable) -> (i64, String) {
    let code = (3..=12)
        .rev()
        .find(|&c| outcome != Outcome::Unknown && from_code(c, table) == outcome)
        .unwrap_or(99);
    let words = outcome.as_str().replace('_', " ");
    let mut chars = words.chars();
    let text = match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    };
    (code, text)
}

/// One webhook delivery of the plan.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Delivery {
    pub(super) at: Duration,
    pub(super) id: String,
    pub(super) event: &'static str,
    pub(super) body: Vec<u8>,
}

/// The whole stream: deliveries sorted by time, and what the runs are.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    pub(super) deliveries: Vec<Delivery>,
    pub(super) outcomes: Vec<(Outcome, u64)>,
    pub(super) unfinished: u64,
}

pub(super) fn plan(args: &SimulateArgs) -> Plan {
    let mut rng = StdRng::seed_from_u64(args.seed);
    // Run ids: disjoint per seed and project, so runs of other seeds or other
    // invocations with other projects are new runs to the exporter.
    let run_id_base = (args.seed % 1_000_000) * 1_000_000_000_000;
    let mut totals: Vec<(Outcome, u64)> = args.outcomes.0.iter().map(|(o, _)| (*o, 0)).collect();
    let mut unfinished = 0;

    // Per project: its runs' outcomes (None: never finishes), shuffled.
    let mut per_project: Vec<Vec<Option<Outcome>>> = Vec::new();
    for _ in 0..args.projects {
        let stuck = ((args.runs as f64) * args.unfinished_ratio).round() as u64;
        let finishing = args.runs - stuck.min(args.runs);
        unfinished += args.runs - finishing;
        let mut runs: Vec<Option<Outcome>> = vec![None; (args.runs - finishing) as usize];
        let factor = (args.spread * rng.random_range(-1.0..=1.0)).exp();
        let weights = OutcomeWeights(
            args.outcomes
                .0
                .iter()
                .map(|&(o, w)| {
                    (
                        o,
                        if o == Outcome::Finished {
                            w
                        } else {
                            w * factor
                        },
                    )
                })
                .collect(),
        );
        for (i, (outcome, n)) in allocate(&weights, finishing).into_iter().enumerate() {
            totals[i].1 += n;
            runs.extend(std::iter::repeat_n(Some(outcome), n as usize));
        }
        runs.shuffle(&mut rng);
        per_project.push(runs);
    }

    let mut deliveries = Vec::new();
    let mut send = |rng: &mut StdRng, at: Duration, event: &'static str, body: Vec<u8>| {
        let id = format!("sim-{:016x}", rng.random::<u64>());
        if rng.random_bool(args.duplicate_ratio) {
            let again = at + Duration::from_millis(rng.random_range(20..=200));
            let dup_id = if rng.random_bool(0.5) {
                id.clone()
            } else {
                format!("sim-{:016x}", rng.random::<u64>())
            };
            deliveries.push(Delivery {
                at: again,
                id: dup_id,
                event,
                body: body.clone(),
            });
        }
        deliveries.push(Delivery {
            at,
            id,
            event,
            body,
        });
    };

    // Runs start round-robin over the projects, `interval` apart.
    let mut slot = 0u32;
    for run in 0..args.runs {
        for (p, runs) in per_project.iter().enumerate() {
            let project_id = args.first_project_id + p as u64;
            let load_test = rng.random_range(0..args.load_tests);
            let load_test_id = project_id * 1000 + load_test + 1;
            let name = TEST_NAMES[((project_id + load_test) % TEST_NAMES.len() as u64) as usize];
            let run_id = run_id_base + project_id * 1_000_000 + run + 1;
            let user_id = args.organization_id * 100 + rng.random_range(1..=5);
            let start = args.interval * slot;
            slot += 1;
            let body = |event: &str, status: i64, status_text: &str| {
                serde_json::json!({
                    "event": event,
                    "status": status,
                    "status_text": status_text,
                    "user_id": user_id,
                    "name": name,
                    "organization_id": args.organization_id,
                    "load_test_id": load_test_id,
                    "load_test_run_id": run_id,
                    "project_id": project_id,
                })
                .to_string()
                .into_bytes()
            };
            send(
                &mut rng,
                start,
                "test.started",
                body("test.started", 2, "Running"),
            );
            if let Some(outcome) = runs[run as usize] {
                let length = args.run_duration.mul_f64(rng.random_range(0.5..=1.5));
                let (status, text) = status_of(outcome, args.status_table);
                send(
                    &mut rng,
                    start + length,
                    "test.finished",
                    body("test.finished", status, &text),
                );
            }
        }
    }
    deliveries.sort_by_key(|d| d.at);
    Plan {
        deliveries,
        outcomes: totals,
        unfinished,
    }
}
