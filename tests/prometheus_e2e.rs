//! End to end: the real exporter, scraped by a real Prometheus (Debian's
//! package) that loads the real `deploy/prometheus/loadimpact.rules.yml`, fed
//! by the real `loadimpact-exporter simulate`. Then Prometheus's HTTP API must
//! show every recording rule with data, exactly the alerts the scenario should
//! raise (pending or firing), and every dashboard panel's query returning data.
//!
//! The rules are loaded unchanged: an alert with `for: 5m` is `pending` as soon
//! as its condition holds, which is what the scenario asserts.
//!
//! A second Prometheus scrapes the same exporter as two replicas (two targets
//! with their own `instance` and `pod` labels, as the Prometheus Operator
//! labels the pods of one Service), which is what N replicas on Redis look
//! like: the same global series once per replica. Every check holds there
//! too, the alerts fire once, and every recording rule and panel query gives
//! what it gives with one target (the panels' increase() and rate() compared
//! on the counters' values, which do not depend on each server's scrape
//! times).

mod support;

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};
use support::exporter::{run_binary, spawn_binary, Exporter};
use support::files::{dashboards, panels, repo};
use support::http::{free_port, get};
use support::samples::sum_with_prefix;
use support::tools::Server;
use support::wait_for;

const ORG: &str = "1";
/// The project every dashboard panel is queried for (it has finished,
/// aborted and successful runs, durations and load tests).
const PANEL_PROJECT: &str = "11";

/// The two replicas the second Prometheus sees: `instance` and `pod` labels
/// of its two targets, both the one exporter.
const REPLICAS: [(&str, &str); 2] = [
    ("replica-a:16565", "loadimpact-exporter-0"),
    ("replica-b:16565", "loadimpact-exporter-1"),
];

/// A Prometheus server on a free loopback port with its own storage,
/// scraping its targets every second with the shipped rules.
struct Prometheus {
    server: Server,
    /// How many targets it scrapes (each the one exporter).
    targets: usize,
}

impl Prometheus {
    /// Scrapes `target` once.
    fn start(target: &str) -> Prometheus {
        Prometheus::start_with(&format!("      - targets: [{target:?}]\n"), 1)
    }

    /// Scrapes `target` as each of `REPLICAS`.
    fn start_as_replicas(target: &str) -> Prometheus {
        let groups: String = REPLICAS
            .iter()
            .map(|(instance, pod)| {
                format!(
                    "      - targets: [{target:?}]\n        labels: {{instance: {instance:?}, pod: {pod:?}}}\n"
                )
            })
            .collect();
        Prometheus::start_with(&groups, REPLICAS.len())
    }

    /// `static_configs` is the job's list of target groups, as YAML.
    fn start_with(static_configs: &str, targets: usize) -> Prometheus {
        let rules = repo().join("deploy/prometheus/loadimpact.rules.yml");
        let server = Server::start("prometheus", |dir: &Path| {
            let config = format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: loadimpact-exporter\n    static_configs:\n{static_configs}",
                rules = rules.display().to_string(),
            );
            let config_path = dir.join("prometheus.yml");
            std::fs::write(&config_path, config).expect("write prometheus.yml");
            vec![
                format!("--config.file={}", config_path.display()),
                format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
                "--log.level=warn".to_owned(),
            ]
        });
        Prometheus { server, targets }
    }

    /// `GET /api/v1/<path>`; panics unless Prometheus answers `success`.
    fn api(&self, path: &str) -> Value {
        let resp = get(&self.server.url(&format!("/api/v1/{path}")));
        let body = resp.json();
        assert_eq!(
            body["status"], "success",
            "GET /api/v1/{path}: {} {}",
            resp.status, resp.body
        );
        body["data"].clone()
    }

    /// An instant query; the result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api(&format!("query?query={}", encode(promql)));
        match &data["result"] {
            Value::Array(items) => items.clone(),
            // A scalar or string result: one value.
            other => vec![json!({"metric": {}, "value": other})],
        }
    }

    /// Every pending or firing alert, keyed by its labels without `alertname`'s
    /// companions that do not identify it. Panics if two alerts have the
    /// same key (one per replica).
    fn alerts(&self) -> BTreeSet<String> {
        let data = self.api("alerts");
        let mut out = BTreeSet::new();
        for alert in data["alerts"].as_array().cloned().unwrap_or_default() {
            let state = alert["state"].as_str().unwrap_or("");
            if state == "pending" || state == "firing" {
                let key = alert_key(&alert["labels"]);
                assert!(out.insert(key.clone()), "alert {key} is held twice: {data}");
            }
        }
        out
    }
}

/// `Name{severity,organization_id/project_id, job or instance}`: what tells
/// alerts apart.
fn alert_key(labels: &Value) -> String {
    let get = |name: &str| labels[name].as_str().unwrap_or("").to_owned();
    let mut key = format!("{} {}", get("alertname"), get("severity"));
    for name in ["organization_id", "project_id", "job", "instance"] {
        if !get(name).is_empty() {
            key.push_str(&format!(" {name}={}", get(name)));
        }
    }
    key
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The numeric value of one vector sample.
fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// `loadimpact-exporter simulate` posting to `url`: the scenario's common
/// settings, then `args`.
fn simulate(url: &str, args: &[&str]) -> support::process::ChildGuard {
    let mut all = vec!["simulate", "--url", url];
    // Runs last 2 to 6 s: at least one scrape (1 s) sees each project's
    // zero-valued series before its first finish, so increase() counts it.
    all.extend(["--projects", "1", "--run-duration", "4s"]);
    if !args.contains(&"--interval") {
        all.extend(["--interval", "50ms"]);
    }
    all.extend([
        "--duplicate-ratio",
        "0.2",
        "--concurrency",
        "4",
        "--spread",
        "0",
    ]);
    all.extend(args);
    spawn_binary(&all)
}

fn check_simulation(args: &str, output: Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "simulate {args} failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains(" errors=0 "),
        "simulate {args}: summary without errors=0:\n{stdout}"
    );
}

/// Replaces Grafana's variables the way Grafana would for one selection.
fn substitute(expr: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut names: Vec<&&str> = vars.keys().collect();
    // Longest first, so `$__rate_interval` is not read as `$__rate…`.
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = expr.to_owned();
    for name in names {
        let value = vars[*name];
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("[[{name}]]"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

/// The scenario: what each `simulate` run posts, by name. Every project of
/// organization 1 unless said otherwise.
const SCENARIO: [(&str, &[&str]); 8] = [
    // 11: 4 of 6 aborted -> LoadImpactAbortRateHigh.
    (
        "aborts",
        &[
            "--first-project-id",
            "11",
            "--runs",
            "6",
            "--outcomes",
            "finished=1,aborted_by_user=1,aborted_by_system=1",
            "--seed",
            "11",
            // The panels' project: its finishes 1.2 s apart, so that a
            // scrape (1 s) falls between any two. A duration histogram's
            // series appears with its outcome's first finish, and increase()
            // counts only what a later scrape sees move.
            "--interval",
            "1200ms",
        ],
    ),
    // 12: 2 of 6 failed threshold (33%) -> FailedThresholdRateHigh warning only.
    (
        "threshold warning",
        &[
            "--first-project-id",
            "12",
            "--runs",
            "6",
            "--outcomes",
            "finished=2,failed_threshold=1",
            "--seed",
            "12",
        ],
    ),
    // 13: 4 of 5 failed or aborted by threshold (80%) -> warning and critical;
    // abort ratio 1 of 5 (20%) -> no abort alert.
    (
        "threshold critical",
        &[
            "--first-project-id",
            "13",
            "--runs",
            "5",
            "--outcomes",
            "finished=1,failed_threshold=3,aborted_by_threshold=1",
            "--seed",
            "13",
        ],
    ),
    // 14: all fine.
    (
        "healthy",
        &[
            "--first-project-id",
            "14",
            "--runs",
            "6",
            "--outcomes",
            "finished=1",
            "--seed",
            "14",
        ],
    ),
    // 15: 2 of 2 aborted, too few runs.
    (
        "too few",
        &[
            "--first-project-id",
            "15",
            "--runs",
            "2",
            "--outcomes",
            "aborted_by_user=1",
            "--seed",
            "15",
        ],
    ),
    // 16: 2 of 7 aborted (28.6%), just under 30%.
    (
        "just under",
        &[
            "--first-project-id",
            "16",
            "--runs",
            "7",
            "--outcomes",
            "finished=5,aborted_by_user=2",
            "--seed",
            "16",
        ],
    ),
    // 17: two runs that never finish -> expired after 10 s -> LoadImpactTestRunStuck.
    (
        "stuck",
        &[
            "--first-project-id",
            "17",
            "--runs",
            "2",
            "--unfinished-ratio",
            "1",
            "--seed",
            "17",
        ],
    ),
    // Organization 2 has a healthy project 11: alerts are per organization too.
    (
        "other organization",
        &[
            "--organization-id",
            "2",
            "--first-project-id",
            "11",
            "--runs",
            "6",
            "--outcomes",
            "finished=1",
            "--seed",
            "21",
        ],
    ),
];

/// The alerts the scenario raises, as `alert_key` writes them.
const EXPECTED_ALERTS: [&str; 6] = [
    "LoadImpactAbortRateHigh warning organization_id=1 project_id=11",
    "LoadImpactFailedThresholdRateHigh warning organization_id=1 project_id=12",
    "LoadImpactFailedThresholdRateHigh warning organization_id=1 project_id=13",
    "LoadImpactFailedThresholdRateHigh critical organization_id=1 project_id=13",
    "LoadImpactTestRunStuck warning organization_id=1 project_id=17",
    "LoadImpactWebhookRejections warning job=loadimpact-exporter",
];

/// One rejected request (an unknown event: 422).
fn reject(exporter: &Exporter) {
    let r = exporter.post_id(
        &json!({"event": "test.exploded", "project_id": 1}),
        "e2e-bad",
    );
    assert_eq!(r.status, 422, "unknown event: {}", r.body);
}

/// Waits until Prometheus has scraped the exporter as each of its targets,
/// the rejection included.
fn wait_for_the_first_scrape(prometheus: &Prometheus) {
    wait_for("the first scrape", Duration::from_secs(30), || {
        let up = prometheus.query(r#"up{job="loadimpact-exporter"} == 1"#);
        let rejected = prometheus.query(r#"loadimpact_webhook_requests_total{code="422"}"#);
        (up.len() == prometheus.targets && rejected.len() == prometheus.targets).then_some(())
    });
}

/// Runs every part of `SCENARIO` at once against `webhook`; each must end
/// without errors.
fn run_the_scenario(webhook: &str) {
    let children: Vec<_> = SCENARIO
        .iter()
        .map(|(name, args)| (*name, simulate(webhook, args)))
        .collect();
    for (name, child) in children {
        check_simulation(name, child.output());
    }
}

/// Exactly `expected` are pending or firing within 40 s, and stay so for a
/// few evaluations.
fn assert_exactly_these_alerts_hold(prometheus: &Prometheus, expected: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now = prometheus.alerts();
        if now == *expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alerts after 40 s:\n  missing: {:?}\n  unexpected: {:?}",
            expected.difference(&now).collect::<Vec<_>>(),
            now.difference(expected).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(prometheus.alerts(), *expected, "the alerts changed");
    }
}

/// The annotations' templates expand in the real Prometheus, with the
/// numbers: the ratio and (through a `query`) the runs finished.
fn assert_the_annotations_expand_with_the_numbers(prometheus: &Prometheus) {
    let data = prometheus.api("alerts");
    let abort = data["alerts"]
        .as_array()
        .and_then(|alerts| {
            alerts.iter().find(|a| {
                a["labels"]["alertname"] == "LoadImpactAbortRateHigh"
                    && a["labels"]["project_id"] == "11"
            })
        })
        .cloned()
        .unwrap_or_else(|| panic!("no LoadImpactAbortRateHigh for project 11: {data}"));
    let description = abort["annotations"]["description"].as_str().unwrap_or("");
    assert!(
        description.starts_with("66.67% of the test runs of project 11 (organization 1) "),
        "{description}"
    );
    let runs = description
        .split(" runs finished")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|n| n.parse::<u32>().ok());
    assert!(
        matches!(runs, Some(6 | 7)),
        "runs finished in: {description}"
    );
    assert!(
        abort["annotations"]["runbook_url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/docs/runbooks.md#loadimpactabortratehigh")),
        "{abort}"
    );
}

/// Every rule evaluates without error; every recording rule has data; every
/// alerting rule is loaded, the quiet ones too.
fn assert_every_rule_is_healthy_and_loaded(prometheus: &Prometheus, expected: &BTreeSet<String>) {
    let rules = prometheus.api("rules");
    let mut recorded = 0;
    let mut alerting = BTreeSet::new();
    for group in rules["groups"].as_array().cloned().unwrap_or_default() {
        for rule in group["rules"].as_array().cloned().unwrap_or_default() {
            let name = rule["name"].as_str().unwrap_or("").to_owned();
            assert_eq!(rule["health"], "ok", "rule {name}: {}", rule["lastError"]);
            if rule["type"] == "recording" {
                let result = prometheus.query(&name);
                assert!(!result.is_empty(), "recording rule {name} has no data");
                recorded += 1;
            } else {
                alerting.insert(name);
            }
        }
    }
    assert_eq!(recorded, 10, "recording rules loaded: {rules}");
    // The alerts that must stay quiet here are loaded too.
    let mut names: BTreeSet<String> = expected
        .iter()
        .filter_map(|k| k.split(' ').next())
        .map(str::to_owned)
        .collect();
    names.insert("LoadImpactExporterDown".to_owned());
    names.insert("LoadImpactSpanExportBacklog".to_owned());
    assert_eq!(alerting, names, "alerting rules loaded");
}

/// The recorded numbers are the scenario's.
fn assert_the_recorded_numbers_are_the_scenarios(prometheus: &Prometheus) {
    let value = |promql: &str| -> f64 {
        let result = prometheus.query(promql);
        assert_eq!(result.len(), 1, "{promql}: {result:?}");
        sample_value(&result[0])
    };
    let ratio = |what: &str, project: &str| {
        value(&format!(
            r#"organization_id_project_id:loadimpact_test_runs_{what}:ratio1h{{organization_id="1",project_id="{project}"}}"#
        ))
    };
    for (what, project, want) in [
        ("aborted", "11", 4.0 / 6.0),
        ("aborted", "13", 1.0 / 5.0),
        ("aborted", "16", 2.0 / 7.0),
        ("aborted", "14", 0.0),
        ("failed_threshold", "12", 2.0 / 6.0),
        ("failed_threshold", "13", 4.0 / 5.0),
        ("failed_threshold", "11", 0.0),
    ] {
        let got = ratio(what, project);
        assert!(
            (got - want).abs() < 1e-9,
            "{what} ratio of project {project}: {got}, want {want}"
        );
    }
    // increase() extrapolates to the end of the window by at most 10% (1.1
    // scrape intervals over a series at least 10 s old).
    let finished = value(
        r#"organization_id_project_id:loadimpact_test_runs_finished:increase1h{organization_id="2",project_id="11"}"#,
    );
    assert!(
        (6.0..7.0).contains(&finished),
        "org 2 project 11 finished: {finished}"
    );
    assert!(
        prometheus
            .query(r#"organization_id_project_id:loadimpact_test_runs_aborted:ratio24h{project_id="17"}"#)
            .is_empty(),
        "project 17 finished nothing: it must have no ratio"
    );
}

/// Those of the run-info and span metrics that this run of the binary does
/// not expose (it exposes them all today; a panel on one it dropped would
/// still have to parse and evaluate).
fn metrics_not_exposed(exporter: &Exporter) -> Vec<&'static str> {
    let exposition = exporter.scrape();
    let optional = [
        "loadimpact_test_run_info",
        "loadimpact_spans_exported_total",
        "loadimpact_span_export_failures_total",
        "loadimpact_spans_pending",
    ];
    optional
        .into_iter()
        .filter(|m| {
            !exposition
                .lines()
                .any(|l| l.starts_with(&format!("{m}{{")) || l.starts_with(&format!("{m} ")))
        })
        .collect()
}

/// Grafana's variables as a user viewing project 11 sets them.
fn panel_variables() -> BTreeMap<&'static str, &'static str> {
    [
        ("datasource", "prometheus"),
        ("tempo", "tempo"),
        ("job", "loadimpact-exporter"),
        ("organization_id", ORG),
        ("project_id", PANEL_PROJECT),
        ("load_test_id", ".+"),
        ("__rate_interval", "15s"),
        ("__interval", "5s"),
        ("__range", "10m"),
    ]
    .into_iter()
    .collect()
}

/// Every dashboard panel's query returns data for project 11; a panel on a
/// metric of `metrics_not_exposed` must still parse and evaluate. The number
/// of queries that returned data, and those only evaluated.
fn assert_every_panel_has_data(
    prometheus: &Prometheus,
    exporter: &Exporter,
) -> (usize, Vec<String>) {
    let missing = metrics_not_exposed(exporter);
    let vars = panel_variables();
    let mut checked = 0;
    let mut skipped = Vec::new();
    for dashboard in dashboards() {
        let (file, dashboard) = (dashboard.file.as_str(), &dashboard.json);
        for panel in panels(dashboard) {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{file}: panel {title} has no query");
            for target in targets {
                let raw = target["expr"].as_str().unwrap_or("");
                let expr = substitute(raw, &vars);
                assert!(
                    !expr.contains('$'),
                    "{file}: {title}: unknown variable in {raw}"
                );
                if let Some(m) = missing.iter().find(|m| expr.contains(*m)) {
                    // Still must parse and evaluate.
                    prometheus.query(&expr);
                    skipped.push(format!("{file}: {title} ({m})"));
                    continue;
                }
                let result = prometheus.query(&expr);
                assert!(
                    result.iter().any(|s| sample_value(s).is_finite()),
                    "{file}: panel {title}: no data for {expr}: {result:?}"
                );
                checked += 1;
            }
        }
        assert_the_variables_list_the_scenario(prometheus, file, dashboard, &vars);
    }
    assert!(checked >= 40, "only {checked} panel queries checked");
    (checked, skipped)
}

/// The template variables `label_values(SELECTOR, LABEL)` of `dashboard` list
/// the scenario's values.
fn assert_the_variables_list_the_scenario(
    prometheus: &Prometheus,
    file: &str,
    dashboard: &Value,
    vars: &BTreeMap<&str, &str>,
) {
    for var in dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        if var["type"] != "query" {
            continue;
        }
        let definition = substitute(var["definition"].as_str().unwrap_or(""), vars);
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{file}: variable {}: {definition}", var["name"]));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let values = prometheus.api(&format!(
            "label/{}/values?match[]={}",
            label.trim(),
            encode(selector.trim())
        ));
        let want = vars[var["name"].as_str().unwrap_or("")];
        let values = values.as_array().cloned().unwrap_or_default();
        assert!(
            want == ".+" && !values.is_empty() || values.iter().any(|v| v == want),
            "{file}: variable {} lists {values:?}, not {want}",
            var["name"]
        );
    }
}

/// A sample's labels without the target labels that tell replicas apart.
fn series_key(sample: &Value) -> String {
    let labels: BTreeMap<&str, &str> = sample["metric"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| *name != "instance" && *name != "pod")
        .map(|(name, value)| (name.as_str(), value.as_str().unwrap_or("")))
        .collect();
    format!("{labels:?}")
}

/// True when `expr` reads only per-process series (`up`, `process_*`,
/// `loadimpact_exporter_*`): those stay per target.
fn per_process(expr: &str) -> bool {
    !expr
        .replace("loadimpact_exporter_", "")
        .contains("loadimpact_")
}

/// `expr` with every `increase(X[…])` and `rate(X[…])` replaced by `X`: the
/// same aggregations over the counters' values, which are the same on both
/// servers at rest, whatever their scrape times.
fn cumulative(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    loop {
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let next = ["increase(", "rate("]
            .iter()
            .flat_map(|f| rest.match_indices(f))
            .filter(|(at, _)| !rest[..*at].chars().next_back().is_some_and(ident))
            .min();
        let Some((at, function)) = next else {
            out.push_str(rest);
            return out;
        };
        let inner = at + function.len();
        let open = inner
            + rest[inner..]
                .find('[')
                .expect("a range after increase( or rate(");
        let close = open + rest[open..].find("])").expect("`])` closing the range");
        out.push_str(&rest[..at]);
        out.push_str(&rest[inner..open]);
        rest = &rest[close + 2..];
    }
}

#[test]
fn cumulative_reads_the_counters_instead_of_their_windows() {
    assert_eq!(
        cumulative(
            r#"sum by (a) (max without (instance, pod) (increase(x_total{b=~"c.*"}[$__range]))) / sum(irate(y[5m])) + rate(z[15s])"#
        ),
        r#"sum by (a) (max without (instance, pod) (x_total{b=~"c.*"})) / sum(irate(y[5m])) + z"#
    );
    assert_eq!(cumulative("max(up)"), "max(up)");
}

/// One series of a query's result on both servers.
#[derive(Default)]
struct Compared {
    /// Its values with one target (one, or none when only the other has it).
    one: Vec<f64>,
    /// Its values with two replicas.
    two: Vec<f64>,
    /// The `instance` labels it has with two replicas.
    instances: Vec<String>,
    /// It has an `instance` label with one target.
    per_target: bool,
}

/// `expr` gives on `replicas` (the exporter scraped as `REPLICAS`) what it
/// gives on `single`: the same series, with values within `tolerance` (a
/// share of the larger; a sum over two replicas would be twice as much) or
/// both NaN; a query of per-process series shows each replica instead.
fn assert_the_same(
    single: &Prometheus,
    replicas: &Prometheus,
    what: &str,
    expr: &str,
    tolerance: f64,
) {
    let one = single.query(expr);
    let two = replicas.query(expr);
    let shown = format!("{what}: {expr}\n  one target: {one:?}\n  two replicas: {two:?}");
    let mut by_key: BTreeMap<String, Compared> = BTreeMap::new();
    for sample in &one {
        let entry = by_key.entry(series_key(sample)).or_default();
        entry.one.push(sample_value(sample));
        entry.per_target |= sample["metric"]["instance"].is_string();
    }
    for sample in &two {
        let entry = by_key.entry(series_key(sample)).or_default();
        entry.two.push(sample_value(sample));
        if let Some(instance) = sample["metric"]["instance"].as_str() {
            entry.instances.push(instance.to_owned());
        }
    }
    let instances: Vec<&str> = REPLICAS.iter().map(|(instance, _)| *instance).collect();
    for (key, mut series) in by_key {
        assert_eq!(
            series.one.len(),
            1,
            "{key} not once with one target: {shown}"
        );
        series.instances.sort();
        if series.per_target {
            // Per target: once per replica, and only for per-process series.
            assert!(per_process(expr), "{key} is per target: {shown}");
            assert_eq!(
                series.instances, instances,
                "{key}: not each replica: {shown}"
            );
            continue;
        }
        assert!(
            series.instances.is_empty() && series.two.len() == 1,
            "{key} is not once with two replicas: {shown}"
        );
        let (a, b) = (series.one[0], series.two[0]);
        assert!(
            (a.is_nan() && b.is_nan()) || (a - b).abs() <= tolerance * a.abs().max(b.abs()) + 1e-9,
            "{key}: {a} with one target, {b} with two replicas: {shown}"
        );
    }
}

/// Every recording rule and every panel query gives on `replicas` (the
/// exporter scraped as `REPLICAS`) what it gives on `single`, once the
/// exporter's state is at rest; panel queries on their counters' values (see
/// `cumulative`). The number of comparisons.
fn assert_two_replicas_read_as_one(single: &Prometheus, replicas: &Prometheus) -> usize {
    // Compared at rest: a change at the edge of a panel's 15 s rate() window
    // could be inside one server's window and outside the other's. (One
    // changes() per metric: changes() drops the name, so one over all of
    // them would make series of the same labels.)
    let names = single.api("label/__name__/values");
    let still = names
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|name| name.starts_with("loadimpact_") && !per_process(name))
        .map(|name| format!("(changes({name}[16s]) > 0)"))
        .collect::<Vec<_>>()
        .join(" or ");
    assert!(!still.is_empty(), "no metric names: {names}");
    for prometheus in [single, replicas] {
        wait_for(
            "16 s without a change of the exporter's state",
            Duration::from_secs(60),
            || prometheus.query(&still).is_empty().then_some(()),
        );
    }

    let mut compared = 0;
    // The recording rules, within 10%: increase() extrapolates from each
    // server's own scrape times.
    for group in single.api("rules")["groups"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for rule in group["rules"].as_array().into_iter().flatten() {
            if rule["type"] == "recording" {
                let name = rule["name"].as_str().unwrap_or("");
                assert_the_same(single, replicas, "recording rule", name, 0.1);
                compared += 1;
            }
        }
    }
    let vars = panel_variables();
    for dashboard in dashboards() {
        for panel in panels(&dashboard.json) {
            let title = panel["title"].as_str().unwrap_or("?");
            let what = format!("{}: panel {title}", dashboard.file);
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = substitute(target["expr"].as_str().unwrap_or(""), &vars);
                // Where it reads increase() or rate(), on the counters'
                // values instead: the same on both servers (1% for time(),
                // read a few milliseconds apart). As written, a series that
                // first appears with a value rather than at 0 (a new
                // project's first starts, an outcome's first run in the
                // duration histogram) would differ by what increase() misses
                // of it, which depends on each server's scrape times.
                let counters = cumulative(&expr);
                let tolerance = if counters == expr { 0.1 } else { 0.01 };
                assert_the_same(single, replicas, &what, &counters, tolerance);
                compared += 1;
            }
        }
    }
    compared
}

#[test]
fn rules_alerts_and_dashboards_work_on_the_real_binary() {
    let begin = Instant::now();
    let exporter = Exporter::start(&["--run.max-duration=10s"]);
    let target = format!("127.0.0.1:{}", exporter.port());
    let single = Prometheus::start(&target);
    let replicas = Prometheus::start_as_replicas(&target);

    // One rejected request before Prometheus's first scrape, so the rejection
    // counter's series exists from the start.
    reject(&exporter);
    wait_for_the_first_scrape(&single);
    wait_for_the_first_scrape(&replicas);
    run_the_scenario(&exporter.url("/webhook"));
    // 30 more rejections (31 in ~80 accepted webhooks): well over 10% ->
    // LoadImpactWebhookRejections.
    for _ in 0..30 {
        reject(&exporter);
    }

    let expected: BTreeSet<String> = EXPECTED_ALERTS.iter().map(|a| a.to_string()).collect();
    let mut checked = 0;
    let mut skipped = Vec::new();
    for (name, prometheus) in [("one target", &single), ("two replicas", &replicas)] {
        eprintln!("e2e: checking the Prometheus that scrapes the exporter as {name}");
        assert_exactly_these_alerts_hold(prometheus, &expected);
        assert_the_annotations_expand_with_the_numbers(prometheus);
        assert_every_rule_is_healthy_and_loaded(prometheus, &expected);
        assert_the_recorded_numbers_are_the_scenarios(prometheus);
        (checked, skipped) = assert_every_panel_has_data(prometheus, &exporter);
    }
    let compared = assert_two_replicas_read_as_one(&single, &replicas);
    eprintln!(
        "e2e: {checked} panel queries returned data; not required (metric not exposed): {skipped:?}; \
         {compared} comparisons of rules and queries read the same with two replicas; {:.1}s",
        begin.elapsed().as_secs_f64()
    );
}

/// The simulator posts exactly the runs it announces: the exporter's counters
/// agree with its summary, duplicates included.
#[test]
fn simulate_posts_exactly_the_planned_runs() {
    let exporter = Exporter::start(&[]);
    let webhook = exporter.url("/webhook");
    let output = run_binary(&[
        "simulate",
        "--url",
        &webhook,
        "--organization-id",
        "7",
        "--first-project-id",
        "70",
        "--projects",
        "2",
        "--runs",
        "10",
        "--duplicate-ratio",
        "0.5",
        "--seed",
        "3",
        "--spread",
        "0",
        "--outcomes",
        "finished=3,aborted_by_system=1,failed_threshold=1",
        "--interval",
        "10ms",
        "--run-duration",
        "100ms",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // "posted=N accepted=N duplicate=N ignored=N errors=N in …"
    let field = |name: &str| -> f64 {
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in {stdout}"))
    };
    // 2 projects x 10 runs, each a start and a finish; 0.5 of them sent twice.
    assert_eq!(field("accepted"), 40.0, "{stdout}");
    assert!(field("duplicate") > 0.0, "{stdout}");
    assert_eq!(
        field("posted"),
        field("accepted") + field("duplicate"),
        "{stdout}"
    );
    assert_eq!(field("errors"), 0.0, "{stdout}");
    // Per project: 6 finished, 2 aborted by system, 2 failed threshold.
    assert_eq!(field("finished"), 12.0, "{stdout}");

    let samples = exporter.samples();
    let total = |prefix: &str| sum_with_prefix(&samples, prefix);
    let duplicates =
        total(r#"loadimpact_webhook_events_total{event="test.started",result="duplicate"}"#)
            + total(r#"loadimpact_webhook_events_total{event="test.finished",result="duplicate"}"#);
    assert_eq!(duplicates, field("duplicate"));
    for project in ["70", "71"] {
        let labels = format!(r#"organization_id="7",project_id="{project}""#);
        assert_eq!(
            // Whatever the trigger label says.
            total(&format!("loadimpact_test_runs_started_total{{{labels},")),
            10.0
        );
        assert_eq!(
            total(&format!("loadimpact_test_runs_running{{{labels}}}")),
            0.0
        );
        for (outcome, want) in [
            ("finished", 6.0),
            ("aborted_by_system", 2.0),
            ("failed_threshold", 2.0),
        ] {
            let series =
                format!(r#"loadimpact_test_runs_finished_total{{{labels},outcome="{outcome}"}}"#);
            assert_eq!(total(&series), want, "{series}");
        }
        assert_eq!(
            total(&format!("loadimpact_test_runs_finished_total{{{labels},")),
            10.0
        );
        assert_eq!(
            total(&format!(
                "loadimpact_test_run_duration_seconds_count{{{labels},"
            )),
            10.0
        );
    }
}

/// With nothing listening, the simulator says so and exits non-zero.
#[test]
fn simulate_fails_when_the_exporter_is_unreachable() {
    let url = format!("http://127.0.0.1:{}/webhook", free_port());
    let output = run_binary(&[
        "simulate",
        "--url",
        &url,
        "--projects",
        "1",
        "--runs",
        "1",
        "--duplicate-ratio",
        "0",
        "--run-duration",
        "10ms",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("posted=2 accepted=0 duplicate=0 ignored=0 errors=2"),
        "{stdout}"
    );
}
