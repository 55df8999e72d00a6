//! Rendering of the state as the Prometheus text exposition, at scrape time.
//!
//! Nothing here counts: every value is read from the committed [`State`] when
//! Prometheus scrapes, so what is exported is exactly what is stored and a
//! restart changes nothing. The text is written straight from the state into
//! one buffer (no intermediate metric objects: a scrape of 150,000 series is
//! one pass over the maps); integers are written as integers, so counters are
//! exact at any size. The process's own telemetry (process collector, store
//! commit timings) lives in a `prometheus::Registry` and is encoded after it.

use crate::clock::Millis;
use crate::outcome::Outcome;
use crate::state::{seconds, CounterKey, ErrorCode, Histogram, Machine, State, DURATION_BUCKETS};
use crate::version::{REVISION, VERSION};
use crate::webhook::{Project, Trigger};
use prometheus::{Registry, TextEncoder};
use std::fmt::Write as _;

/// The content type of the text exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The status codes the webhook path answers with, always exported.
const EXPECTED_CODES: [u16; 11] = [200, 400, 401, 403, 405, 408, 413, 415, 422, 429, 503];

/// 2^53: every whole `f64` below it is exactly an integer, and Rust writes
/// it with the same digits (and no exponent) as that integer.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// A label value: an id (written as an integer) or text (escaped).
#[derive(Clone, Copy)]
enum Value<'a> {
    Id(u64),
    Text(&'a str),
}

type Labels<'a> = [(&'static str, Value<'a>)];

/// A sample value.
#[derive(Clone, Copy)]
enum Number {
    Count(u64),
    Float(f64),
}

/// The exposition being written: one family at a time, its `# HELP` and
/// `# TYPE` lines written before its first sample (a family with no sample
/// is left out, as the text format wants).
struct Exposition {
    out: String,
    /// The family whose header is owed: (name, help, type).
    pending: Option<(&'static str, &'static str, &'static str)>,
}

impl Exposition {
    fn family(&mut self, name: &'static str, help: &'static str, kind: &'static str) {
        self.pending = Some((name, help, kind));
    }

    fn sample(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &Labels<'_>,
        extra: Option<(&str, &str)>,
        value: Number,
    ) {
        if let Some((family, help, kind)) = self.pending.take() {
            // Writing to a String cannot fail.
            let _ = write!(
                self.out,
                "# HELP {family} {}\n# TYPE {family} {kind}\n",
                help.replace('\\', "\\\\").replace('\n', "\\n")
            );
        }
        self.out.push_str(name);
        self.out.push_str(suffix);
        let extra = extra.map(|(name, value)| (name, Value::Text(value)));
        let mut separator = '{';
        for (label, value) in labels.iter().copied().chain(extra) {
            self.out.push(separator);
            separator = ',';
            self.out.push_str(label);
            self.out.push_str("=\"");
            match value {
                Value::Id(id) => self.integer(id),
                Value::Text(text) => escape_label(&mut self.out, text),
            }
            self.out.push('"');
        }
        if separator == ',' {
            self.out.push('}');
        }
        self.out.push(' ');
        match value {
            Number::Count(n) => self.integer(n),
            Number::Float(x) if x.is_nan() => self.out.push_str("NaN"),
            Number::Float(x) if x.is_infinite() => {
                self.out.push_str(if x > 0.0 { "+Inf" } else { "-Inf" })
            }
            // Whole numbers (the info gauges' 1, counts as gauges) read the
            // same either way, and an integer is written several times
            // faster than `f64`'s shortest round-trip digits.
            Number::Float(x)
                if x.is_sign_positive() && x.fract() == 0.0 && x < MAX_EXACT_INTEGER =>
            {
                self.integer(x as u64)
            }
            Number::Float(x) => {
                let _ = write!(self.out, "{x}");
            }
        }
        self.out.push('\n');
    }

    /// Writes `n` in decimal: the bulk of a large exposition's text.
    fn integer(&mut self, n: u64) {
        self.out.push_str(itoa::Buffer::new().format(n));
    }

    fn counter(&mut self, name: &str, labels: &Labels<'_>, value: u64) {
        self.sample(name, "", labels, None, Number::Count(value));
    }

    fn gauge(&mut self, name: &str, labels: &Labels<'_>, value: f64) {
        self.sample(name, "", labels, None, Number::Float(value));
    }

    fn histogram(&mut self, name: &str, labels: &Labels<'_>, h: &Histogram) {
        let mut cumulative = 0;
        let mut bound = itoa::Buffer::new();
        for (upper, count) in DURATION_BUCKETS.iter().zip(h.buckets.iter()) {
            cumulative += count;
            let le = Some(("le", bound.format(*upper)));
            self.sample(name, "_bucket", labels, le, Number::Count(cumulative));
        }
        let inf = Some(("le", "+Inf"));
        self.sample(name, "_bucket", labels, inf, Number::Count(h.count));
        let sum = Number::Float(seconds(h.sum_millis));
        self.sample(name, "_sum", labels, None, sum);
        self.sample(name, "_count", labels, None, Number::Count(h.count));
    }
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape_label(out: &mut String, text: &str) {
    if !text.contains(['\\', '"', '\n']) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn project_labels(p: &Project) -> [(&'static str, Value<'static>); 2] {
    [
        ("organization_id", Value::Id(p.organization_id)),
        ("project_id", Value::Id(p.project_id)),
    ]
}

/// Renders the families of the state: call with the state's read lock held.
/// `capacity` is what the text is expected to need (the last scrape's
/// length): a large exposition grown by doubling from a small buffer spent
/// a quarter of its time copying and faulting in memory.
pub fn render_state(state: &State, machine: &Machine, now: Millis, capacity: usize) -> String {
    let mut text = Exposition {
        out: String::with_capacity(capacity.max(64 * 1024)),
        pending: None,
    };
    write_state(&mut text, state, machine, now);
    text.out
}

/// Appends `registry`'s families (the process's own telemetry), which need
/// no lock on the state.
pub fn append_registry(out: &mut String, registry: &Registry) {
    match TextEncoder::new().encode_to_string(&registry.gather()) {
        Ok(text) => out.push_str(&text),
        Err(e) => tracing::error!(error = %e, "cannot encode the process metrics"),
    }
}

/// Writes every family rendered from the state, in name order.
fn write_state(x: &mut Exposition, state: &State, machine: &Machine, now: Millis) {
    write_build_info(x);
    write_load_tests(x, state, machine, now);
    write_abort_ratio(x, state, machine, now);
    write_spans(x, state);
    write_runs(x, state, machine);
    write_webhook(x, state);
}

/// `loadimpact_exporter_build_info`.
fn write_build_info(x: &mut Exposition) {
    x.family(
        "loadimpact_exporter_build_info",
        "Version and git revision of the running exporter; always 1.",
        "gauge",
    );
    x.gauge(
        "loadimpact_exporter_build_info",
        &[
            ("version", Value::Text(VERSION)),
            ("revision", Value::Text(REVISION)),
        ],
        1.0,
    );
}

/// `loadimpact_project_abort_ratio`, per project with a finish in the window.
fn write_abort_ratio(x: &mut Exposition, state: &State, machine: &Machine, now: Millis) {
    let name = "loadimpact_project_abort_ratio";
    x.family(
        name,
        "Share of the runs finished within --abort-ratio.window whose outcome is aborted_*.",
        "gauge",
    );
    for (project, value) in machine.abort_ratios(state, now) {
        x.gauge(name, &project_labels(&project), value);
    }
}

/// The span outbox's counters and its size.
fn write_spans(x: &mut Exposition, state: &State) {
    for (key, name, help) in [
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
        (
            CounterKey::SpansExported,
            "loadimpact_spans_exported_total",
            "Run spans acknowledged by the OTLP collector.",
        ),
    ] {
        x.family(name, help, "counter");
        x.counter(name, &[], state.counter(&key));
    }
    let name = "loadimpact_spans_pending";
    x.family(
        name,
        "Run spans stored and waiting for the OTLP collector's acknowledgement.",
        "gauge",
    );
    x.gauge(name, &[], state.outbox.len() as f64);
}

/// The per-project run families: durations, recent runs, and the expired,
/// finished, running and started counts of every known project.
fn write_runs(x: &mut Exposition, state: &State, machine: &Machine) {
    // Every known project (0 where none run).
    let running_now = machine.running(state);

    let name = "loadimpact_test_run_duration_seconds";
    x.family(
        name,
        "Duration of finished test runs, from the start event to the finish event.",
        "histogram",
    );
    for ((project, outcome), histogram) in &state.histograms {
        let [org, proj] = project_labels(project);
        let labels = [org, proj, ("outcome", Value::Text(outcome.as_str()))];
        x.histogram(name, &labels, histogram);
    }

    let name = "loadimpact_test_run_errors_total";
    x.family(
        name,
        "Errors Grafana Cloud k6 attached to finished runs, by its internal code (other past the first 32 codes).",
        "counter",
    );
    for (key, value) in &state.counters {
        if let CounterKey::RunErrors(project, code) = key {
            let [org, proj] = project_labels(project);
            let code = match code {
                ErrorCode::Code(c) => c.to_string(),
                ErrorCode::Other => "other".to_owned(),
            };
            let labels = [org, proj, ("code", Value::Text(&code))];
            x.counter(name, &labels, *value);
        }
    }

    let name = "loadimpact_test_run_info";
    x.family(
        name,
        "The most recent finished or expired runs (--runs.info-limit) with their trace id (and, from Grafana Cloud k6, the run's and the load test's urls); always 1.",
        "gauge",
    );
    for (id, run, _, outcome) in state.recent_runs() {
        let [org, proj] = project_labels(&run.project);
        let trace_id = crate::otel::trace_id(id).to_string();
        let mut labels = vec![
            org,
            proj,
            ("load_test_id", Value::Id(run.load_test_id)),
            ("load_test_run_id", Value::Id(id)),
            ("outcome", Value::Text(outcome)),
            ("trace_id", Value::Text(&trace_id)),
        ];
        // Grafana Cloud k6's pages of the run and its load test, where a
        // notification gave them.
        if let Some(url) = &run.url {
            labels.push(("url", Value::Text(url)));
        }
        if let Some(url) = &run.load_test_url {
            labels.push(("load_test_url", Value::Text(url)));
        }
        x.gauge(name, &labels, 1.0);
    }

    // Every outcome of every known project, 0 until used, so that increase()
    // and rate() see a project's first finish of each outcome.
    let name = "loadimpact_test_runs_expired_total";
    x.family(
        name,
        "Runs taken off running after --run.max-duration with no finish event.",
        "counter",
    );
    for project in running_now.keys() {
        let value = state.counter(&CounterKey::Expired(*project));
        x.counter(name, &project_labels(project), value);
    }
    let name = "loadimpact_test_runs_finished_total";
    x.family(name, "Finished test runs by final outcome.", "counter");
    for project in running_now.keys() {
        let [org, proj] = project_labels(project);
        for outcome in Outcome::ALL {
            let labels = [org, proj, ("outcome", Value::Text(outcome.as_str()))];
            let value = state.counter(&CounterKey::Finished(*project, outcome));
            x.counter(name, &labels, value);
        }
    }
    let name = "loadimpact_test_runs_running";
    x.family(
        name,
        "Test runs started and not yet finished (nor expired).",
        "gauge",
    );
    for (project, count) in &running_now {
        x.gauge(name, &project_labels(project), *count as f64);
    }
    // Every trigger of every known project, 0 until used.
    let name = "loadimpact_test_runs_started_total";
    x.family(
        name,
        "Distinct test runs seen to start, by trigger (scheduled, manual; unknown where the format does not say).",
        "counter",
    );
    for project in running_now.keys() {
        let [org, proj] = project_labels(project);
        for trigger in Trigger::ALL {
            let labels = [org, proj, ("trigger", Value::Text(trigger.as_str()))];
            x.counter(
                name,
                &labels,
                state.counter(&CounterKey::Started(*project, trigger)),
            );
        }
    }
}

/// The webhook path's families: events, last event times, answers by code.
fn write_webhook(x: &mut Exposition, state: &State) {
    let name = "loadimpact_webhook_events_total";
    x.family(
        name,
        "Valid webhook deliveries by event and result (accepted, duplicate, or ignored: a start after its run's finish).",
        "counter",
    );
    for (key, value) in &state.counters {
        if let CounterKey::Events { event, result } = key {
            let labels = [
                ("event", Value::Text(event)),
                ("result", Value::Text(result.as_str())),
            ];
            x.counter(name, &labels, *value);
        }
    }
    let name = "loadimpact_webhook_last_event_timestamp_seconds";
    x.family(
        name,
        "Unix time at which an event of this name was last accepted or ignored (duplicates excluded).",
        "gauge",
    );
    for (event, at) in &state.last_event {
        x.gauge(name, &[("event", Value::Text(event))], *at as f64 / 1000.0);
    }

    // The codes the webhook answers, 0 until used, so that rate() sees the
    // first rejection of each; then any other code it answered.
    let name = "loadimpact_webhook_requests_total";
    x.family(
        name,
        "Requests to the webhook path, by HTTP status code of the answer.",
        "counter",
    );
    let mut codes: Vec<u16> = EXPECTED_CODES.to_vec();
    codes.extend(state.counters.keys().filter_map(|key| match key {
        CounterKey::Requests { code } if !EXPECTED_CODES.contains(code) => Some(*code),
        _ => None,
    }));
    codes.sort_unstable();
    for code in codes {
        let value = state.counter(&CounterKey::Requests { code });
        x.counter(name, &[("code", Value::Id(u64::from(code)))], value);
    }
}

/// The per-load-test families, for load tests seen within `--series.ttl`.
fn write_load_tests(x: &mut Exposition, state: &State, machine: &Machine, now: Millis) {
    let fresh_since = now.saturating_sub(machine.series_ttl);
    let fresh = || {
        state
            .load_tests
            .iter()
            .filter(move |(_, t)| t.last_seen > fresh_since)
    };
    let labels = |id: u64, project: &Project| {
        let [org, proj] = project_labels(project);
        [org, proj, ("load_test_id", Value::Id(id))]
    };

    let name = "loadimpact_load_test_info";
    x.family(
        name,
        "Metadata of a load test seen within --series.ttl; always 1.",
        "gauge",
    );
    for (id, test) in fresh() {
        let [org, proj, load_test] = labels(*id, &test.project);
        let test_name = Value::Text(test.name.as_deref().unwrap_or_default());
        x.gauge(name, &[org, proj, load_test, ("name", test_name)], 1.0);
    }
    let name = "loadimpact_load_test_last_run_duration_seconds";
    x.family(
        name,
        "Duration of the load test's latest finished run that had a start event.",
        "gauge",
    );
    for (id, test) in fresh() {
        if let Some(millis) = test.last_duration_millis {
            x.gauge(name, &labels(*id, &test.project), seconds(millis));
        }
    }
    let name = "loadimpact_load_test_last_run_status";
    x.family(
        name,
        "Raw Load Impact status code of the load test's latest finished run.",
        "gauge",
    );
    for (id, test) in fresh() {
        if let Some(status) = test.last_status {
            x.gauge(name, &labels(*id, &test.project), status as f64);
        }
    }
    let name = "loadimpact_load_test_runs_finished_total";
    x.family(
        name,
        "Finished runs of a load test by outcome; goes away with the load test after --series.ttl.",
        "counter",
    );
    for (id, test) in fresh() {
        let [org, proj, load_test] = labels(*id, &test.project);
        for outcome in Outcome::ALL {
            let labels = [
                org,
                proj,
                load_test,
                ("outcome", Value::Text(outcome.as_str())),
            ];
            let count = test.finished.get(&outcome).copied().unwrap_or(0);
            x.counter(name, &labels, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_label(&mut out, "a\\b\"c\nd é");
        assert_eq!(out, "a\\\\b\\\"c\\nd é");
    }

    #[test]
    fn floats_read_as_rust_writes_them_whatever_the_path() {
        let values = [
            0.0,
            -0.0,
            1.0,
            2.5,
            0.239,
            1e15,
            MAX_EXACT_INTEGER - 1.0,
            MAX_EXACT_INTEGER,
            1e300,
            -3.0,
            f64::MIN_POSITIVE,
            1_733_600_000.123,
        ];
        for x in values {
            let mut e = Exposition {
                out: String::new(),
                pending: None,
            };
            e.gauge("g", &[], x);
            assert_eq!(e.out, format!("g {x}\n"), "{x:?}");
        }
    }

    #[test]
    fn families_without_samples_are_left_out_and_numbers_are_exact() {
        let mut x = Exposition {
            out: String::new(),
            pending: None,
        };
        x.family("empty_total", "Never used.", "counter");
        x.family("big_total", "Large.", "counter");
        x.counter("big_total", &[("id", Value::Id(u64::MAX))], u64::MAX);
        x.gauge("g", &[], 0.1 + 0.2);
        x.gauge("inf", &[], f64::INFINITY);
        assert_eq!(
            x.out,
            "# HELP big_total Large.\n# TYPE big_total counter\n\
             big_total{id=\"18446744073709551615\"} 18446744073709551615\n\
             g 0.30000000000000004\ninf +Inf\n"
        );
    }
}
