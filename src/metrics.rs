//! Rendering of the state as Prometheus metric families, at scrape time.
//!
//! Nothing here counts: every value is read from the committed [`State`] when
//! Prometheus scrapes, so what is exported is exactly what is stored and a
//! restart changes nothing. The process's own telemetry (process collector,
//! store commit timings) lives in a `prometheus::Registry` and is gathered
//! beside it.

use crate::outcome::Outcome;
use crate::state::{CounterKey, Histogram, Machine, Millis, Run, State, DURATION_BUCKETS};
use crate::webhook::Project;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram as ProtoHistogram, LabelPair, Metric, MetricFamily,
    MetricType,
};
use prometheus::{Encoder, Registry, TextEncoder};

/// The version and revision in `loadimpact_exporter_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("LOADIMPACT_EXPORTER_REVISION");

/// The status codes the webhook path answers with, always exported.
const EXPECTED_CODES: [u16; 7] = [200, 400, 405, 413, 415, 422, 503];

/// Renders the full exposition: the state's families, then `registry`'s.
pub fn render(state: &State, machine: &Machine, now: Millis, registry: &Registry) -> String {
    let mut families = families(state, machine, now);
    families.extend(registry.gather());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

fn label_pairs(pairs: &[(&str, String)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value(value.clone());
            pair
        })
        .collect()
}

fn project_labels(project: &Project) -> Vec<(&'static str, String)> {
    vec![
        ("organization_id", project.organization_id.to_string()),
        ("project_id", project.project_id.to_string()),
    ]
}

/// A family under construction.
struct Family {
    inner: MetricFamily,
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut inner = MetricFamily::default();
        inner.set_name(name.to_owned());
        inner.set_help(help.to_owned());
        inner.set_field_type(kind);
        Family { inner }
    }

    fn push(&mut self, labels: &[(&str, String)], fill: impl FnOnce(&mut Metric)) {
        let mut metric = Metric::default();
        metric.set_label(label_pairs(labels));
        fill(&mut metric);
        self.inner.mut_metric().push(metric);
    }

    fn counter(&mut self, labels: &[(&str, String)], value: u64) {
        self.push(labels, |m| {
            let mut c = Counter::default();
            c.set_value(value as f64);
            m.set_counter(c);
        });
    }

    fn gauge(&mut self, labels: &[(&str, String)], value: f64) {
        self.push(labels, |m| {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        });
    }

    fn histogram(&mut self, labels: &[(&str, String)], h: &Histogram) {
        self.push(labels, |m| {
            let mut proto = ProtoHistogram::default();
            let mut cumulative = 0;
            let buckets = DURATION_BUCKETS
                .iter()
                .zip(h.buckets.iter())
                .map(|(bound, count)| {
                    cumulative += count;
                    let mut b = Bucket::default();
                    b.set_upper_bound(*bound);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect();
            proto.set_bucket(buckets);
            proto.set_sample_count(h.count);
            proto.set_sample_sum(h.sum);
            m.set_histogram(proto);
        });
    }

    fn done(self, out: &mut Vec<MetricFamily>) {
        if !self.inner.get_metric().is_empty() {
            out.push(self.inner);
        }
    }
}

/// The families rendered from the state.
pub fn families(state: &State, machine: &Machine, now: Millis) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE, HISTOGRAM};
    let mut out = Vec::new();
    // Runs now running, keyed by every known project (0 where none run).
    let running_now = machine.running(state);

    let mut requests = Family::new(
        "loadimpact_webhook_requests_total",
        "Requests to the webhook path, by HTTP status code of the answer.",
        COUNTER,
    );
    let mut events = Family::new(
        "loadimpact_webhook_events_total",
        "Valid webhook deliveries by event and result (accepted, duplicate, or ignored: a start after its run's finish).",
        COUNTER,
    );
    let mut started = Family::new(
        "loadimpact_test_runs_started_total",
        "Distinct test runs seen to start.",
        COUNTER,
    );
    let mut expired = Family::new(
        "loadimpact_test_runs_expired_total",
        "Runs taken off running after --run.max-duration with no finish event.",
        COUNTER,
    );
    for (key, value) in &state.counters {
        match key {
            CounterKey::Requests { code } if !EXPECTED_CODES.contains(code) => {
                requests.counter(&[("code", code.to_string())], *value)
            }
            CounterKey::Requests { .. } => {}
            CounterKey::Events { event, result } => events.counter(
                &[("event", event.clone()), ("result", result.as_str().into())],
                *value,
            ),
            CounterKey::Started(p) => started.counter(&project_labels(p), *value),
            CounterKey::Expired(_)
            | CounterKey::Finished(..)
            | CounterKey::SpansExported
            | CounterKey::SpanExportFailures
            | CounterKey::SpansDropped => {}
        }
    }

    // The codes the webhook answers, 0 until used, so that rate() sees the
    // first rejection of each.
    for code in EXPECTED_CODES {
        requests.counter(
            &[("code", code.to_string())],
            state.counter(&CounterKey::Requests { code }),
        );
    }

    // Every outcome of every known project, 0 until used, so that increase()
    // and rate() see a project's first finish of each outcome.
    let mut finished = Family::new(
        "loadimpact_test_runs_finished_total",
        "Finished test runs by final outcome.",
        COUNTER,
    );
    for project in running_now.keys() {
        let mut labels = project_labels(project);
        for outcome in Outcome::ALL {
            labels.push(("outcome", outcome.as_str().into()));
            finished.counter(
                &labels,
                state.counter(&CounterKey::Finished(*project, outcome)),
            );
            labels.pop();
        }
        expired.counter(
            &project_labels(project),
            state.counter(&CounterKey::Expired(*project)),
        );
    }

    let mut running = Family::new(
        "loadimpact_test_runs_running",
        "Test runs started and not yet finished (nor expired).",
        GAUGE,
    );
    for (project, count) in running_now {
        running.gauge(&project_labels(&project), count as f64);
    }

    let mut durations = Family::new(
        "loadimpact_test_run_duration_seconds",
        "Duration of finished test runs, from the start event to the finish event.",
        HISTOGRAM,
    );
    for ((project, outcome), histogram) in &state.histograms {
        let mut labels = project_labels(project);
        labels.push(("outcome", outcome.as_str().into()));
        durations.histogram(&labels, histogram);
    }

    let mut ratio = Family::new(
        "loadimpact_project_abort_ratio",
        "Share of the runs finished within --abort-ratio.window whose outcome is aborted_*.",
        GAUGE,
    );
    for (project, value) in machine.abort_ratios(state, now) {
        ratio.gauge(&project_labels(&project), value);
    }

    let mut last_status = Family::new(
        "loadimpact_load_test_last_run_status",
        "Raw Load Impact status code of the load test's latest finished run.",
        GAUGE,
    );
    let mut info = Family::new(
        "loadimpact_load_test_info",
        "Metadata of a load test seen within --series.ttl; always 1.",
        GAUGE,
    );
    let mut last_duration = Family::new(
        "loadimpact_load_test_last_run_duration_seconds",
        "Duration of the load test's latest finished run that had a start event.",
        GAUGE,
    );
    let mut test_finished = Family::new(
        "loadimpact_load_test_runs_finished_total",
        "Finished runs of a load test by outcome; goes away with the load test after --series.ttl.",
        COUNTER,
    );
    let fresh_since = now.saturating_sub(machine.series_ttl);
    for (id, test) in state
        .load_tests
        .iter()
        .filter(|(_, t)| t.last_seen > fresh_since)
    {
        let mut labels = project_labels(&test.project);
        labels.push(("load_test_id", id.to_string()));
        if let Some(status) = test.last_status {
            last_status.gauge(&labels, status as f64);
        }
        if let Some(seconds) = test.last_duration_seconds {
            last_duration.gauge(&labels, seconds);
        }
        for outcome in Outcome::ALL {
            labels.push(("outcome", outcome.as_str().into()));
            let count = test.finished.get(&outcome).copied().unwrap_or(0);
            test_finished.counter(&labels, count);
            labels.pop();
        }
        labels.push(("name", test.name.clone().unwrap_or_default()));
        info.gauge(&labels, 1.0);
    }

    let mut last_event = Family::new(
        "loadimpact_webhook_last_event_timestamp_seconds",
        "Unix time at which an event of this name was last accepted or ignored (duplicates excluded).",
        GAUGE,
    );
    for (event, at) in &state.last_event {
        last_event.gauge(&[("event", event.clone())], *at as f64 / 1000.0);
    }

    let mut run_info = Family::new(
        "loadimpact_test_run_info",
        "The most recent finished or expired runs (--runs.info-limit) with their trace id; always 1.",
        GAUGE,
    );
    for (id, run, outcome) in recent_runs(state, machine.runs_info_limit) {
        let mut labels = project_labels(&run.project);
        labels.push(("load_test_id", run.load_test_id.to_string()));
        labels.push(("load_test_run_id", id.to_string()));
        labels.push(("outcome", outcome.into()));
        labels.push(("trace_id", crate::otel::trace_id(id).to_string()));
        run_info.gauge(&labels, 1.0);
    }

    let mut spans = Vec::new();
    for (key, name, help) in [
        (
            CounterKey::SpansExported,
            "loadimpact_spans_exported_total",
            "Run spans acknowledged by the OTLP collector.",
        ),
        (
            CounterKey::SpanExportFailures,
            "loadimpact_span_export_failures_total",
            "Failed OTLP export attempts (the spans stay pending and are retried).",
        ),
        (
            CounterKey::SpansDropped,
            "loadimpact_spans_dropped_total",
            "Run spans dropped because the outbox held --otlp.max-pending spans.",
        ),
    ] {
        let mut family = Family::new(name, help, COUNTER);
        family.counter(&[], state.counter(&key));
        spans.push(family);
    }
    let mut pending = Family::new(
        "loadimpact_spans_pending",
        "Run spans stored and waiting for the OTLP collector's acknowledgement.",
        GAUGE,
    );
    pending.gauge(&[], state.outbox.len() as f64);
    spans.push(pending);

    let mut build = Family::new(
        "loadimpact_exporter_build_info",
        "Version and git revision of the running exporter; always 1.",
        GAUGE,
    );
    build.gauge(
        &[("version", VERSION.into()), ("revision", REVISION.into())],
        1.0,
    );

    for family in [
        requests,
        events,
        started,
        finished,
        running,
        durations,
        ratio,
        last_status,
        last_duration,
        test_finished,
        info,
        expired,
        last_event,
        run_info,
        build,
    ]
    .into_iter()
    .chain(spans)
    {
        family.done(&mut out);
    }
    out
}

/// The `limit` most recently ended runs (finished or expired), newest first,
/// with their outcome label.
fn recent_runs(state: &State, limit: usize) -> Vec<(u64, &Run, &'static str)> {
    let mut ended: Vec<(Millis, u64, &Run, &'static str)> = state
        .runs
        .iter()
        .filter_map(
            |(id, run)| match (run.finished_at, run.outcome, run.expired_at) {
                (Some(at), Some(outcome), _) => Some((at, *id, run, outcome.as_str())),
                (None, _, Some(at)) => Some((at, *id, run, "expired")),
                _ => None,
            },
        )
        .collect();
    ended.sort_by_key(|(at, id, _, _)| (std::cmp::Reverse(*at), std::cmp::Reverse(*id)));
    ended
        .into_iter()
        .take(limit)
        .map(|(_, id, run, outcome)| (id, run, outcome))
        .collect()
}
