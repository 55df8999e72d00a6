//! `loadimpact-exporter simulate`: posts a realistic stream of Load Impact
//! webhooks to a running exporter, so dashboards and alerts come alive before
//! Load Impact itself is wired up.
//!
//! The whole stream is planned up front from `--seed` (which runs, which
//! outcome, when each webhook goes out, which ones are sent twice), so the same
//! flags always post the same webhooks; only the exporter's answers are
//! counted live. Each project gets exactly the share of outcomes that
//! `--outcomes` asks for (largest remainder, after `--spread` has made some
//! projects worse or better than others), in a shuffled order. Runs start
//! `--interval` apart and last about `--run-duration` (0.5x to 1.5x), so they
//! overlap; `--duplicate-ratio` of the webhooks are delivered a second time,
//! half as a retry with the same `X-LoadImpact-ID` and half as a redelivery
//! under a new one; `--unfinished-ratio` of the runs never get `test.finished`
//! (the exporter expires them after its `--run.max-duration`).

mod plan;

use crate::config::SimulateArgs;
use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use plan::{plan, Delivery, Format};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What the exporter answered, counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub posted: u64,
    pub accepted: u64,
    pub duplicate: u64,
    pub ignored: u64,
    pub errors: u64,
}

enum Answer {
    Result(String),
    Error(String),
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Posts one delivery, retrying a refused connection or a 503 (the exporter's
/// "store busy") up to three times with a growing pause.
async fn post(client: &HttpClient, uri: &Uri, delivery: &Delivery) -> Answer {
    let mut last = String::new();
    for attempt in 0..4u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        let (user_agent, id_header, event_header) = match delivery.format {
            Format::LoadImpact => (
                "LoadImpactWebHook (loadimpact-exporter simulate)",
                "x-loadimpact-id",
                "x-loadimpact-event",
            ),
            Format::K6Cloud => (
                "K6CloudWebHook (loadimpact-exporter simulate)",
                "x-k6cloud-id",
                "x-k6cloud-event",
            ),
        };
        let request = Request::post(uri.clone())
            .header("content-type", "application/json")
            .header("user-agent", user_agent)
            .header(id_header, delivery.id.as_str())
            .header(event_header, delivery.event_header.as_str())
            .body(Full::new(Bytes::from(delivery.body.clone())));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Answer::Error(format!("building the request: {e}")),
        };
        let response = match client.request(request).await {
            Ok(r) => r,
            Err(e) => {
                last = format!("POST {uri}: {e}");
                continue;
            }
        };
        let status = response.status();
        let body = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                last = format!("reading the answer: {e}");
                continue;
            }
        };
        let text = String::from_utf8_lossy(&body);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            last = format!("{status}: {text}");
            continue;
        }
        if status != StatusCode::OK {
            return Answer::Error(format!("{status}: {text}"));
        }
        let result = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("result")?.as_str().map(str::to_owned));
        return match result {
            Some(r) => Answer::Result(r),
            None => Answer::Error(format!("200 without a result: {text}")),
        };
    }
    Answer::Error(last)
}

/// Runs the simulator to completion.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let uri: Uri = args
        .url
        .parse()
        .with_context(|| format!("--url `{}` is not a URL", args.url))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        bail!(
            "--url `{}`: only http://HOST[:PORT]/PATH is supported",
            args.url
        );
    }
    let plan = plan(&args, crate::clock::now_millis());
    let mut mix: Vec<String> = plan
        .outcomes
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(o, n)| format!("{}={n}", o.as_str()))
        .collect();
    mix.push(format!("unfinished={}", plan.unfinished));
    println!(
        "simulate: organization {}, projects {}..={}, {} runs each, seed {}: {} webhooks to {}",
        args.organization_id,
        args.first_project_id,
        args.first_project_id + args.projects - 1,
        args.runs,
        args.seed,
        plan.deliveries.len(),
        args.url
    );
    println!("runs by outcome: {}", mix.join(" "));

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let limit = Arc::new(Semaphore::new(args.concurrency as usize));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for delivery in plan.deliveries {
        tokio::time::sleep_until(started + delivery.at).await;
        let permit = Arc::clone(&limit).acquire_owned().await?;
        let (client, uri) = (client.clone(), uri.clone());
        tasks.spawn(async move {
            let answer = post(&client, &uri, &delivery).await;
            drop(permit);
            answer
        });
    }

    let mut summary = Summary::default();
    let mut shown = 0;
    while let Some(joined) = tasks.join_next().await {
        summary.posted += 1;
        match joined {
            Ok(Answer::Result(r)) if r == "accepted" => summary.accepted += 1,
            Ok(Answer::Result(r)) if r == "duplicate" => summary.duplicate += 1,
            Ok(Answer::Result(r)) if r == "ignored" => summary.ignored += 1,
            other => {
                summary.errors += 1;
                let message = match other {
                    Ok(Answer::Result(r)) => format!("unexpected result `{r}`"),
                    Ok(Answer::Error(e)) => e,
                    Err(e) => format!("task failed: {e}"),
                };
                if shown < 5 {
                    eprintln!("simulate: error: {message}");
                    shown += 1;
                }
            }
        }
    }
    println!(
        "posted={} accepted={} duplicate={} ignored={} errors={} in {:.1}s",
        summary.posted,
        summary.accepted,
        summary.duplicate,
        summary.ignored,
        summary.errors,
        started.elapsed().as_secs_f64()
    );
    if summary.errors > 0 {
        bail!("{} of {} webhooks failed", summary.errors, summary.posted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::plan::*;
    use super::*;
    use crate::config::OutcomeWeights;
    use crate::outcome::{Outcome, StatusTable};
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn args(extra: &[&str]) -> SimulateArgs {
        let argv = std::iter::once("simulate").chain(extra.iter().copied());
        match Wrapper::try_parse_from(argv) {
            Ok(w) => w.args,
            Err(e) => panic!("{e}"),
        }
    }

    fn weights(text: &str) -> OutcomeWeights {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn allocation_is_exact_and_proportional() {
        let got = allocate(&weights("finished=2,failed_threshold=1"), 6);
        assert_eq!(
            got,
            vec![(Outcome::Finished, 4), (Outcome::FailedThreshold, 2)]
        );
        let got = allocate(&weights(crate::config::DEFAULT_OUTCOMES), 7);
        assert_eq!(got.iter().map(|(_, n)| n).sum::<u64>(), 7);
        assert_eq!(got[0], (Outcome::Finished, 5));
    }

    #[test]
    fn bad_weights_are_refused() {
        assert!("finished".parse::<OutcomeWeights>().is_err());
        assert!("exploded=1".parse::<OutcomeWeights>().is_err());
        assert!("finished=-1".parse::<OutcomeWeights>().is_err());
        assert!("finished=0".parse::<OutcomeWeights>().is_err());
        assert!("finished=1,finished=2".parse::<OutcomeWeights>().is_err());
        assert!(Wrapper::try_parse_from(["simulate", "--duplicate-ratio", "1.5"]).is_err());
        assert!(Wrapper::try_parse_from(["simulate", "--outcomes", "finished=0"]).is_err());
    }

    #[test]
    fn statuses_follow_the_table_and_the_text_names_the_outcome() {
        use crate::outcome::classify;
        for table in [StatusTable::V3, StatusTable::V4] {
            for outcome in Outcome::ALL {
                let (code, text) = status_of(outcome, table);
                assert_eq!(classify(Some(&text), code, table), outcome, "{text}");
                assert_eq!(
                    classify(None, code, table) == outcome,
                    code != 99 || outcome == Outcome::Unknown
                );
            }
        }
        assert_eq!(
            status_of(Outcome::AbortedByUser, StatusTable::V3),
            (6, "Aborted by user".into())
        );
        assert_eq!(
            status_of(Outcome::FailedThreshold, StatusTable::V3),
            (12, "Failed threshold".into())
        );
        assert_eq!(
            status_of(Outcome::AbortedByLimit, StatusTable::V4),
            (9, "Aborted by limit".into())
        );
    }

    #[test]
    fn the_plan_is_deterministic_and_complete() {
        let a = args(&[
            "--projects",
            "2",
            "--runs",
            "5",
            "--unfinished-ratio",
            "0.2",
            "--duplicate-ratio",
            "0.5",
            "--seed",
            "7",
        ]);
        let (p1, p2) = (plan(&a, 0), plan(&a, 0));
        assert_eq!(p1, p2);
        let other = plan(&args(&["--projects", "2", "--runs", "5", "--seed", "8"]), 0);
        assert_ne!(p1.deliveries, other.deliveries);

        let events =
            |plan: &Plan, event: &str| plan.deliveries.iter().filter(|d| d.event == event).count();
        let finished: u64 = p1.outcomes.iter().map(|(_, n)| n).sum();
        assert_eq!(p1.unfinished, 2);
        assert_eq!(finished, 8);
        // Every run starts (some twice); duplicates add up to the planned total.
        assert!(events(&p1, "test.started") >= 10);
        assert!(events(&p1, "test.finished") >= 8);
        let mut ids: Vec<u64> = p1
            .deliveries
            .iter()
            .filter_map(|d| serde_json::from_slice::<serde_json::Value>(&d.body).ok())
            .filter(|v| v["event"] == "test.started")
            .filter_map(|v| v["load_test_run_id"].as_u64())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 10, "one distinct run id per run");
        assert!(p1.deliveries.windows(2).all(|w| w[0].at <= w[1].at));
    }

    /// Distinct finished runs per (project, status text).
    fn finished_runs(plan: &Plan) -> std::collections::BTreeMap<(u64, String), usize> {
        let mut runs =
            std::collections::BTreeMap::<(u64, String), std::collections::BTreeSet<u64>>::new();
        for delivery in plan
            .deliveries
            .iter()
            .filter(|d| d.event == "test.finished")
        {
            let Ok(body) = serde_json::from_slice::<serde_json::Value>(&delivery.body) else {
                panic!("body is not JSON")
            };
            let project = body["project_id"].as_u64().unwrap_or_default();
            let text = body["status_text"].as_str().unwrap_or_default().to_owned();
            let run = body["load_test_run_id"].as_u64().unwrap_or_default();
            runs.entry((project, text)).or_default().insert(run);
        }
        runs.into_iter().map(|(k, v)| (k, v.len())).collect()
    }

    #[test]
    fn every_format_posts_what_the_exporter_reads_as_the_same_runs() {
        let base = [
            "--projects",
            "2",
            "--runs",
            "6",
            "--seed",
            "3",
            "--duplicate-ratio",
            "0",
        ];
        let runs_of = |format: &str| {
            let mut flags = base.to_vec();
            flags.extend(["--format", format]);
            let plan = plan(&args(&flags), 1_700_000_000_000);
            let mut seen = std::collections::BTreeSet::new();
            let mut formats = std::collections::BTreeSet::new();
            for d in &plan.deliveries {
                let is_k6 = d.format == Format::K6Cloud;
                formats.insert(is_k6);
                let headers = crate::webhook::Headers {
                    content_type: Some("application/json"),
                    event: (!is_k6).then_some(d.event_header.as_str()),
                    request_id: (!is_k6).then_some(d.id.as_str()),
                    k6_event: is_k6.then_some(d.event_header.as_str()),
                    k6_id: is_k6.then_some(d.id.as_str()),
                    user_agent: None,
                };
                let parsed =
                    crate::webhook::parse(headers, &d.body).expect("the exporter reads it");
                let crate::webhook::Event::Run(run) = parsed.event else {
                    panic!("not a run event")
                };
                assert_eq!(run.kind.name(), d.event);
                seen.insert((
                    run.load_test_run_id,
                    run.kind.name(),
                    run.project.project_id,
                ));
            }
            (seen, formats)
        };
        let (legacy, formats) = runs_of("legacy");
        assert_eq!(formats, [false].into());
        let (k6, formats) = runs_of("k6cloud");
        assert_eq!(formats, [true].into());
        let (mixed, formats) = runs_of("mixed");
        assert_eq!(formats, [false, true].into());
        assert_eq!(legacy, k6);
        assert_eq!(legacy, mixed);
    }

    #[test]
    fn spread_zero_keeps_the_mix_and_a_spread_makes_projects_differ() {
        let flat = plan(
            &args(&[
                "--projects",
                "4",
                "--runs",
                "10",
                "--spread",
                "0",
                "--outcomes",
                "finished=4,aborted_by_user=1",
            ]),
            0,
        );
        for project in 1..=4 {
            let runs = finished_runs(&flat);
            assert_eq!(runs.get(&(project, "Finished".into())), Some(&8));
            assert_eq!(runs.get(&(project, "Aborted by user".into())), Some(&2));
        }
        let spread = plan(
            &args(&[
                "--projects",
                "4",
                "--runs",
                "20",
                "--spread",
                "2",
                "--outcomes",
                "finished=4,aborted_by_user=1",
            ]),
            0,
        );
        let runs = finished_runs(&spread);
        let aborted: std::collections::BTreeSet<usize> = (1..=4)
            .map(|p| {
                runs.get(&(p, "Aborted by user".into()))
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        assert!(
            aborted.len() > 1,
            "every project got the same aborts: {runs:?}"
        );
        assert!(Wrapper::try_parse_from(["simulate", "--spread", "-1"]).is_err());
    }

    #[test]
    fn a_url_that_is_not_http_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let Ok(rt) = rt else { panic!("runtime") };
        for url in ["https://example.invalid/webhook", "not a url", "/webhook"] {
            let result = rt.block_on(run(args(&["--url", url, "--runs", "1"])));
            assert!(result.is_err(), "{url} was accepted");
        }
    }
}
