//! The simulated stream, planned up front and pure: which runs, which
//! outcome, when each webhook goes out and which ones are sent twice, all
//! from `--seed`.

use crate::clock::Millis;
use crate::config::{OutcomeWeights, SimulateArgs, SimulateFormat};
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
    // The largest remainders get the units left, first index first.
    let mut order: Vec<(usize, f64)> = exact.iter().map(|x| x - x.floor()).enumerate().collect();
    order.sort_by(|(a, ra), (b, rb)| rb.total_cmp(ra).then(a.cmp(b)));
    for (i, _) in order.into_iter().cycle() {
        if left == 0 {
            break;
        }
        if let Some(count) = counts.get_mut(i) {
            *count += 1;
        }
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

/// Which format one delivery goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    LoadImpact,
    K6Cloud,
}

/// One webhook delivery of the plan.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Delivery {
    pub(super) at: Duration,
    /// The request id header's value.
    pub(super) id: String,
    /// `test.started` or `test.finished`.
    pub(super) event: &'static str,
    /// The event header's value (k6 Cloud: the full identifier).
    pub(super) event_header: String,
    pub(super) format: Format,
    pub(super) body: Vec<u8>,
}

/// Makes one notification in a format, from its event id: the event
/// header's value and the body.
type Body<'a> = dyn Fn(Format, &str) -> (String, Vec<u8>) + 'a;

/// k6 Cloud's event identifier for a finish with this outcome.
fn k6_finish_event(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Finished => "test.finished.finished",
        Outcome::TimedOut => "test.finished.timed_out",
        Outcome::AbortedByUser => "test.finished.aborted_user",
        Outcome::AbortedBySystem => "test.finished.aborted_system",
        Outcome::AbortedByScriptError => "test.finished.aborted_script_error",
        Outcome::AbortedByThreshold => "test.finished.aborted_threshold",
        Outcome::AbortedByLimit => "test.finished.aborted_limit",
        Outcome::FailedThreshold => "test.finished.failed",
        Outcome::Unknown => "test.finished.all",
    }
}

/// A time as k6 Cloud writes it: ISO 8601 in GMT.
fn iso(at: Millis) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(at).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// The whole stream: deliveries sorted by time, and what the runs are.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    pub(super) deliveries: Vec<Delivery>,
    pub(super) outcomes: Vec<(Outcome, u64)>,
    pub(super) unfinished: u64,
}

/// The plan of `args`, with the runs' reported times counted from `base`
/// (the time the stream starts).
pub(super) fn plan(args: &SimulateArgs, base: Millis) -> Plan {
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
        // `allocate` keeps the order of the weights, which is the totals'.
        for ((_, sum), (outcome, n)) in totals.iter_mut().zip(allocate(&weights, finishing)) {
            *sum += n;
            runs.extend(std::iter::repeat_n(Some(outcome), n as usize));
        }
        runs.shuffle(&mut rng);
        per_project.push(runs);
    }

    let mut deliveries = Vec::new();
    // The formats come from a stream of their own, so that every format
    // plans the same runs.
    let mut formats = StdRng::seed_from_u64(args.seed ^ 0x6b36_636c_6f75);
    // One logical notification: its body is made from its event id, shared
    // by a re-send (same request id) and a redelivery (a new one).
    let mut send = |rng: &mut StdRng, at: Duration, event: &'static str, body: &Body<'_>| {
        let id = format!("sim-{:016x}", rng.random::<u64>());
        let format = match args.format {
            SimulateFormat::Legacy => Format::LoadImpact,
            SimulateFormat::K6cloud => Format::K6Cloud,
            SimulateFormat::Mixed if formats.random_bool(0.5) => Format::K6Cloud,
            SimulateFormat::Mixed => Format::LoadImpact,
        };
        let (event_header, body) = body(format, &id);
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
                event_header: event_header.clone(),
                format,
                body: body.clone(),
            });
        }
        deliveries.push(Delivery {
            at,
            id,
            event,
            event_header,
            format,
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
            let name = TEST_NAMES
                .get(((project_id + load_test) % TEST_NAMES.len() as u64) as usize)
                .copied()
                .unwrap_or_default();
            let run_id = run_id_base + project_id * 1_000_000 + run + 1;
            let user_id = args.organization_id * 100 + rng.random_range(1..=5);
            let scheduled = rng.random_bool(0.3);
            let start = args.interval * slot;
            slot += 1;
            let started_at = base + crate::clock::millis(start);
            let legacy = |event: &str, status: i64, status_text: &str| {
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
            // The Generic Template's fields, as the README's template renders them.
            let k6 = |event_id: &str,
                      event: &str,
                      status: i64,
                      status_text: &str,
                      result: Option<u8>,
                      ended: Option<Millis>| {
                serde_json::json!({
                    "event": {"id": event_id, "type": event},
                    "test": {
                        "organization_id": args.organization_id,
                        "project_id": project_id,
                        "id": run_id,
                        "url": format!("https://app.k6.io/runs/{run_id}"),
                        "load_test_id": load_test_id,
                        "load_test_url": format!("https://app.k6.io/tests/{load_test_id}"),
                        "name": name,
                        "was_scheduled": u8::from(scheduled),
                        "started": iso(started_at),
                        "ended": ended.map(iso),
                        "status": status,
                        "status_text": status_text,
                        "result": result,
                        "result_text": result.map(|r| if r == 1 { "Failed" } else { "Passed" }),
                    },
                    "user": {"id": user_id, "name": "simulated user"},
                    "errors": [],
                })
                .to_string()
                .into_bytes()
            };
            let start_event = if scheduled {
                "test.started.scheduled"
            } else {
                "test.started.manual"
            };
            send(
                &mut rng,
                start,
                "test.started",
                &|format, id| match format {
                    Format::LoadImpact => {
                        ("test.started".into(), legacy("test.started", 2, "Running"))
                    }
                    Format::K6Cloud => (
                        start_event.into(),
                        k6(id, start_event, 2, "Running", None, None),
                    ),
                },
            );
            if let Some(outcome) = runs.get(run as usize).copied().flatten() {
                let length = args.run_duration.mul_f64(rng.random_range(0.5..=1.5));
                let ended_at = started_at + crate::clock::millis(length);
                let (status, text) = status_of(outcome, args.status_table);
                // k6 Cloud: a failed threshold is Finished with a failed result.
                let (k6_status, k6_text, result) = match outcome {
                    Outcome::FailedThreshold => (3, "Finished".to_owned(), 1),
                    other => {
                        let (code, text) = status_of(other, StatusTable::V4);
                        (code, text, 0)
                    }
                };
                let event = k6_finish_event(outcome);
                send(
                    &mut rng,
                    start + length,
                    "test.finished",
                    &|format, id| match format {
                        Format::LoadImpact => (
                            "test.finished".into(),
                            legacy("test.finished", status, &text),
                        ),
                        Format::K6Cloud => (
                            event.into(),
                            k6(id, event, k6_status, &k6_text, Some(result), Some(ended_at)),
                        ),
                    },
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
