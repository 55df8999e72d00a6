//! Reading a scrape: exposition text parsed into `series -> value`, the names
//! of the series a run or a delivery moves, and the assertions on what moved
//! between two scrapes. Written from the documented metrics, not from the
//! exporter's code: every expectation is what a Prometheus user sees.

use std::collections::BTreeMap;

use super::deliveries::Run;

/// `series -> value`, the series written as in the exposition
/// (`name{label="v",...}`).
pub type Samples = BTreeMap<String, f64>;

/// The fixed set of outcomes, in no particular order.
pub const OUTCOMES: [&str; 9] = [
    "finished",
    "timed_out",
    "aborted_by_user",
    "aborted_by_system",
    "aborted_by_script_error",
    "aborted_by_threshold",
    "aborted_by_limit",
    "failed_threshold",
    "unknown",
];

/// Telemetry of the process itself (its store's commits, its open
/// connections, with Redis its place in the shared log), not part of the
/// state kept in the store: it differs between replicas.
const PER_PROCESS_PREFIXES: [&str; 3] = [
    "loadimpact_exporter_store_",
    "loadimpact_exporter_connections",
    "loadimpact_exporter_log_",
];

/// True for a series (or metric name) of the process's own telemetry.
pub fn is_per_process(series: &str) -> bool {
    PER_PROCESS_PREFIXES.iter().any(|p| series.starts_with(p))
}

/// Parses exposition text into `series -> value` for names starting with `prefix`.
pub fn parse_samples(text: &str, prefix: &str) -> Samples {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with(prefix) {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        };
        out.insert(series.to_owned(), value);
    }
    out
}

/// The value of one series, or 0 when absent.
pub fn sample(samples: &Samples, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// `after - before` for one series (absent = 0).
pub fn delta(before: &Samples, after: &Samples, series: &str) -> f64 {
    sample(after, series) - sample(before, series)
}

/// Sum of every series whose text starts with `prefix`.
pub fn sum_with_prefix(samples: &Samples, prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| *v)
        .sum()
}

/// Sum of every series of the metric `name` (any labels).
pub fn sum_of(samples: &Samples, name: &str) -> f64 {
    sample(samples, name) + sum_with_prefix(samples, &format!("{name}{{"))
}

/// Parses `name{a="x",b="y"}` into its labels, undoing the exposition
/// format's escapes (`\\`, `\"`, `\n`) in the values.
pub fn labels(series: &str) -> BTreeMap<String, String> {
    let inner = series
        .split_once('{')
        .and_then(|(_, rest)| rest.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not a labelled series: {series}"));
    let mut out = BTreeMap::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label=\"value\" in {series}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("an escape at the end of {series}"),
                },
                Some((_, c)) => value.push(c),
                None => panic!("no closing quote in {series}"),
            }
        };
        out.insert(name.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    out
}

/// The labels and value of every labelled series of the metric `name`.
pub fn labelled(samples: &Samples, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let prefix = format!("{name}{{");
    samples
        .iter()
        .filter(|(series, _)| series.starts_with(&prefix))
        .map(|(series, value)| (labels(series), *value))
        .collect()
}

/// Every `loadimpact_` sample except the per-process store telemetry.
pub fn state_samples(samples: &Samples) -> Samples {
    samples
        .iter()
        .filter(|(k, _)| !is_per_process(k))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Series whose value differs (or that appeared or went away), store telemetry excluded.
pub fn changes(before: &Samples, after: &Samples) -> BTreeMap<String, (Option<f64>, Option<f64>)> {
    let before = state_samples(before);
    let after = state_samples(after);
    let mut out = BTreeMap::new();
    for key in before.keys().chain(after.keys()) {
        let (b, a) = (before.get(key).copied(), after.get(key).copied());
        if b != a {
            out.insert(key.clone(), (b, a));
        }
    }
    out
}

/// Asserts that exactly the `expected` series moved, each by its delta
/// (an absent series counts as 0), and nothing else did.
pub fn assert_only_moved(before: &Samples, after: &Samples, expected: &[(&str, f64)], what: &str) {
    let moved = changes(before, after);
    for (series, want) in expected {
        let got = delta(before, after, series);
        assert_eq!(
            got, *want,
            "{what}: `{series}` moved by {got}, expected {want}; all moves: {moved:#?}"
        );
    }
    let unexpected: Vec<_> = moved
        .iter()
        .filter(|(k, _)| !expected.iter().any(|(e, _)| e == k))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{what}: series moved that should not have: {unexpected:#?}"
    );
}

/// Asserts that nothing but the store telemetry differs between two scrapes.
pub fn assert_unchanged(before: &Samples, after: &Samples, what: &str) {
    let moved = changes(before, after);
    assert!(
        moved.is_empty(),
        "{what}: series differ (before, after): {moved:#?}"
    );
}

/// Asserts that the series exists with exactly this value.
pub fn assert_value(samples: &Samples, series: &str, value: f64) {
    assert_eq!(
        samples.get(series),
        Some(&value),
        "`{series}`: expected {value}"
    );
}

pub fn events_total(event: &str, result: &str) -> String {
    format!("loadimpact_webhook_events_total{{event=\"{event}\",result=\"{result}\"}}")
}

pub fn requests_total(code: u16) -> String {
    format!("loadimpact_webhook_requests_total{{code=\"{code}\"}}")
}

pub fn last_event_timestamp(event: &str) -> String {
    format!("loadimpact_webhook_last_event_timestamp_seconds{{event=\"{event}\"}}")
}

/// The series of a run's project and load test.
impl Run {
    /// `organization_id="..",project_id=".."`
    pub fn project_labels(&self) -> String {
        format!(
            "organization_id=\"{}\",project_id=\"{}\"",
            self.org, self.project
        )
    }

    /// `name{organization_id="..",project_id=".."<extra>}`; `extra` starts with a comma.
    pub fn series(&self, name: &str, extra: &str) -> String {
        format!("{name}{{{}{extra}}}", self.project_labels())
    }

    fn by_outcome(&self, name: &str, outcome: &str) -> String {
        self.series(name, &format!(",outcome=\"{outcome}\""))
    }

    /// Started runs of its project with no trigger said (Load Impact's).
    pub fn started_total(&self) -> String {
        self.started_total_by("unknown")
    }

    /// Started runs of its project with this `trigger`.
    pub fn started_total_by(&self, trigger: &str) -> String {
        self.series(
            "loadimpact_test_runs_started_total",
            &format!(",trigger=\"{trigger}\""),
        )
    }

    pub fn running(&self) -> String {
        self.series("loadimpact_test_runs_running", "")
    }

    pub fn expired_total(&self) -> String {
        self.series("loadimpact_test_runs_expired_total", "")
    }

    pub fn abort_ratio(&self) -> String {
        self.series("loadimpact_project_abort_ratio", "")
    }

    pub fn finished_total(&self, outcome: &str) -> String {
        self.by_outcome("loadimpact_test_runs_finished_total", outcome)
    }

    pub fn duration_count(&self, outcome: &str) -> String {
        self.by_outcome("loadimpact_test_run_duration_seconds_count", outcome)
    }

    pub fn duration_sum(&self, outcome: &str) -> String {
        self.by_outcome("loadimpact_test_run_duration_seconds_sum", outcome)
    }

    pub fn last_run_status(&self) -> String {
        self.series(
            "loadimpact_load_test_last_run_status",
            &format!(",load_test_id=\"{}\"", self.load_test),
        )
    }

    pub fn info(&self) -> String {
        self.series(
            "loadimpact_load_test_info",
            &format!(
                ",load_test_id=\"{}\",name=\"{}\"",
                self.load_test, self.name
            ),
        )
    }

    /// Sum of the duration histogram's `_count` over every outcome.
    pub fn durations_observed(&self, samples: &Samples) -> f64 {
        OUTCOMES
            .iter()
            .map(|o| sample(samples, &self.duration_count(o)))
            .sum()
    }
}
