//! The shipped Prometheus rules, Alertmanager example and Grafana dashboards,
//! checked with the real tools (promtool, amtool, Alertmanager) and against
//! each other: every rule unit-tested, every alert with a runbook section,
//! every dashboard importable with no hard-coded data source.

mod support;

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use support::files::{dashboards, panels, read, repo};
use support::http::{get, post_json};
use support::tools::{require_tool, run_ok_in, stdout, Server};

const RUNBOOK_BASE: &str =
    "https://github.com/loadimpact-exporter/loadimpact-exporter/blob/main/docs/runbooks.md#";

/// Where the rules, their tests and the Alertmanager example are.
const PROM_DIR: &str = "deploy/prometheus";

/// Runs a tool in `deploy/prometheus`; panics with its output unless it exits
/// 0. Returns stdout.
fn run_ok(tool: &str, args: &[&str]) -> String {
    stdout(&run_ok_in(
        &repo().join(PROM_DIR),
        &require_tool(tool),
        args,
    ))
}

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<Group>,
}

#[derive(Debug, Deserialize)]
struct Group {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    record: Option<String>,
    alert: Option<String>,
    expr: String,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct TestFile {
    rule_files: Vec<String>,
    tests: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
struct TestCase {
    name: String,
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
    #[serde(default)]
    promql_expr_test: Vec<ExprTest>,
}

#[derive(Debug, Deserialize)]
struct AlertTest {
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpAlert>,
}

#[derive(Debug, Deserialize)]
struct ExpAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct ExprTest {
    expr: String,
    #[serde(default)]
    exp_samples: Vec<serde::de::IgnoredAny>,
}

fn rules() -> Vec<Rule> {
    let text = read(&format!("{PROM_DIR}/loadimpact.rules.yml"));
    let file: RuleFile = serde_saphyr::from_str(&text).expect("parse loadimpact.rules.yml");
    assert!(
        file.groups.iter().all(|g| !g.name.is_empty()),
        "unnamed group"
    );
    file.groups.into_iter().flat_map(|g| g.rules).collect()
}

#[test]
fn promtool_checks_and_unit_tests_pass() {
    let count = rules().len();
    let out = run_ok("promtool", &["check", "rules", "loadimpact.rules.yml"]);
    assert!(
        out.contains(&format!("SUCCESS: {count} rules found")),
        "promtool saw another number of rules than {count}:\n{out}"
    );
    let out = run_ok("promtool", &["test", "rules", "loadimpact.rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_rule_has_unit_tests_that_fire_and_that_stay_quiet() {
    let text = read(&format!("{PROM_DIR}/loadimpact.rules.test.yml"));
    let tests: TestFile = serde_saphyr::from_str(&text).expect("parse the rule tests");
    assert_eq!(tests.rule_files, ["loadimpact.rules.yml"]);
    let rules = rules();

    for name in rules.iter().filter_map(|r| r.record.as_deref()) {
        let cases: Vec<&ExprTest> = tests
            .tests
            .iter()
            .flat_map(|t| &t.promql_expr_test)
            .filter(|e| e.expr.split('{').next() == Some(name))
            .collect();
        assert!(
            cases.iter().any(|e| !e.exp_samples.is_empty()),
            "recording rule {name} has no unit test with a result"
        );
    }

    let alerts: BTreeSet<&str> = rules.iter().filter_map(|r| r.alert.as_deref()).collect();
    for name in alerts {
        let cases: Vec<(&str, &AlertTest)> = tests
            .tests
            .iter()
            .flat_map(|t| t.alert_rule_test.iter().map(move |a| (t.name.as_str(), a)))
            .filter(|(_, a)| a.alertname == name)
            .collect();
        assert!(
            cases.iter().any(|(_, a)| a.exp_alerts.is_empty()),
            "alert {name}: no case where it must not fire"
        );
        // Every severity the alert has must be seen firing in a test.
        let fired: BTreeSet<&str> = cases
            .iter()
            .flat_map(|(_, a)| &a.exp_alerts)
            .filter_map(|e| e.exp_labels.get("severity").map(String::as_str))
            .collect();
        let severities: BTreeSet<&str> = rules
            .iter()
            .filter(|r| r.alert.as_deref() == Some(name))
            .filter_map(|r| r.labels.get("severity").map(String::as_str))
            .collect();
        assert_eq!(fired, severities, "alert {name}: severities seen firing");
    }
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn alerts_are_labelled_annotated_and_have_a_runbook() {
    let runbooks = read("docs/runbooks.md");
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let rules = rules();
    let mut documented = BTreeSet::new();
    for rule in rules.iter().filter(|r| r.alert.is_some()) {
        let name = rule.alert.as_deref().unwrap_or_default();
        let severity = rule.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                rule.annotations
                    .get(key)
                    .is_some_and(|v| !v.trim().is_empty()),
                "{name}: no {key}"
            );
        }
        let description = &rule.annotations["description"];
        // Every alert but the target-down one has a number to give.
        assert!(
            description.contains("$value") || name == "LoadImpactExporterDown",
            "{name}: the description does not give the number"
        );
        if rule.expr.contains("project_id") {
            assert!(
                description.contains("$labels.project_id")
                    && description.contains("$labels.organization_id"),
                "{name}: the description does not name the project"
            );
        }
        let url = &rule.annotations["runbook_url"];
        let fragment = url
            .strip_prefix(RUNBOOK_BASE)
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} is not under {RUNBOOK_BASE}"));
        assert_eq!(fragment, name.to_lowercase(), "{name}: runbook anchor");
        assert!(
            anchors.contains(fragment),
            "{name}: docs/runbooks.md has no section #{fragment}"
        );
        documented.insert(fragment.to_owned());
    }
    assert_eq!(
        documented, anchors,
        "docs/runbooks.md sections and alerts differ"
    );
    let two_severities = rules
        .iter()
        .filter(|r| r.alert.as_deref() == Some("LoadImpactFailedThresholdRateHigh"))
        .count();
    assert_eq!(two_severities, 2, "warning and critical rules");
}

#[test]
fn recording_rules_follow_the_level_metric_operations_convention() {
    for rule in rules() {
        let Some(name) = rule.record.as_deref() else {
            assert!(rule.for_.is_some() || rule.alert.is_some());
            continue;
        };
        let parts: Vec<&str> = name.split(':').collect();
        assert_eq!(parts.len(), 3, "{name}: not level:metric:operations");
        let (level, metric, operation) = (parts[0], parts[1], parts[2]);
        assert!(metric.starts_with("loadimpact_"), "{name}: metric");
        assert!(
            ["max5m", "increase1h", "increase24h", "ratio1h", "ratio24h"].contains(&operation),
            "{name}: operation {operation}"
        );
        // The level is the labels the expression keeps: its first `by (...)`,
        // or, with none, the level of the recorded series it reads.
        if !rule.expr.contains("by (") {
            assert!(
                rule.expr.contains(&format!("({level}:")),
                "{name}: no by (…) and no recorded series of level {level} read"
            );
            continue;
        }
        let by = rule
            .expr
            .split_once("by (")
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(labels, _)| {
                labels
                    .split(',')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join("_")
            });
        assert_eq!(
            by.as_deref(),
            Some(level),
            "{name}: level and by (…) differ"
        );
        // The window in the name is the one the expression uses.
        let window = operation.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        assert!(
            rule.expr.contains(&format!("[{window}]"))
                || rule.expr.contains(&format!(":increase{window}")),
            "{name}: window {window} not used"
        );
    }
}

#[test]
fn exporter_down_matches_the_packaging_job_name() {
    let down: BTreeMap<String, Rule> = rules()
        .into_iter()
        .filter(|r| r.alert.as_deref() == Some("LoadImpactExporterDown"))
        .map(|r| (r.labels["severity"].clone(), r))
        .collect();
    assert_eq!(
        down.keys().map(String::as_str).collect::<Vec<_>>(),
        ["critical", "warning"],
        "one rule per severity"
    );
    // A warning per target that is down ...
    assert_eq!(
        down["warning"].expr.trim(),
        r#"up{job="loadimpact-exporter"} == 0"#
    );
    // ... and the critical when none of the job's targets is up, or there is none.
    let critical = &down["critical"].expr;
    assert!(
        critical.contains(r#"max without (instance, pod) (up{job="loadimpact-exporter"}) == 0"#)
    );
    assert!(critical.contains(r#"absent(up{job="loadimpact-exporter"})"#));
    for rule in down.values() {
        assert_eq!(rule.for_.as_deref(), Some("5m"));
    }
    // The scrape-config example and the ServiceMonitor use that job name.
    let scrape = format!("{PROM_DIR}/prometheus.yml");
    if repo().join(&scrape).exists() {
        assert!(
            read(&scrape).contains("job_name: loadimpact-exporter"),
            "deploy/prometheus/prometheus.yml scrapes another job name"
        );
    }
}

// ------------------------------------------------------------------ replicas

/// The aggregation operators of PromQL.
const AGGREGATORS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// `expr` with the text of its string literals blanked out (same length), so
/// that a parenthesis inside a label value is not read as one.
fn without_strings(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut quote = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    out.push(c);
                    continue;
                }
                out.extend(std::iter::repeat_n(' ', c.len_utf8()));
            }
            None => {
                if matches!(c, '"' | '\'' | '`') {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

/// The index of the parenthesis that matches the one at `at`: the `)` that
/// closes a `(`, or the `(` that opens a `)`.
fn matching_paren(text: &str, at: usize) -> Option<usize> {
    let forward = text[at..].starts_with('(');
    let (same, other) = if forward { ('(', ')') } else { (')', '(') };
    let chars: Box<dyn Iterator<Item = (usize, char)>> = if forward {
        Box::new(text.char_indices().skip_while(|(i, _)| *i < at))
    } else {
        Box::new(text[..=at].char_indices().rev())
    };
    let mut depth = 0;
    for (i, c) in chars {
        if c == same {
            depth += 1;
        } else if c == other {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// The identifier that ends `text` (after trailing blanks), and where it starts.
fn last_word(text: &str) -> (&str, usize) {
    let text = text.trim_end();
    let start = text
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |p| p + 1);
    (&text[start..], start)
}

/// An aggregation in a PromQL expression, as in
/// `max without (instance, pod) (increase(x[1h]))`.
#[derive(Debug, Clone)]
struct Aggregation {
    /// `max`
    op: String,
    /// `without (instance, pod)`, or empty
    clause: String,
    /// `increase(x[1h])`
    argument: String,
}

/// The aggregation nearest around byte `at` of `expr` (functions such as
/// rate() and plain parentheses in between are looked through); `None` when
/// nothing aggregates the series there.
fn enclosing_aggregation(expr: &str, at: usize) -> Option<Aggregation> {
    let mut end = at;
    loop {
        // The nearest `(` before `end` that is not closed before it.
        let mut depth = 0;
        let open = expr[..end].char_indices().rev().find_map(|(i, c)| {
            match c {
                ')' => depth += 1,
                '(' if depth == 0 => return Some(i),
                '(' => depth -= 1,
                _ => {}
            }
            None
        })?;
        let before = expr[..open].trim_end();
        let (head, clause) = match before.strip_suffix(')') {
            // `by (…)` or `without (…)` between the operator and its argument.
            Some(_) => {
                let start = matching_paren(before, before.len() - 1)?;
                let (keyword, at) = last_word(&before[..start]);
                if keyword == "by" || keyword == "without" {
                    let clause = format!("{keyword} {}", &before[start..]);
                    (&before[..at], clause)
                } else {
                    (before, String::new())
                }
            }
            None => (before, String::new()),
        };
        let (word, _) = last_word(head);
        if AGGREGATORS.contains(&word) {
            let close = matching_paren(expr, open)?;
            let argument = expr[open + 1..close].trim().to_owned();
            return Some(Aggregation {
                op: word.to_owned(),
                clause,
                argument,
            });
        }
        end = open;
    }
}

/// Where the raw series of the exporter's shared state (`loadimpact_*`, not
/// the per-process `loadimpact_exporter_*` nor a recording rule) are in
/// `text`, and their names.
fn state_series_at(text: &str) -> Vec<(usize, String)> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    for (at, _) in text.match_indices("loadimpact_") {
        if text[..at].chars().next_back().is_some_and(ident) {
            continue;
        }
        let name: String = text[at..].chars().take_while(|c| ident(*c)).collect();
        if name.contains(':') || name.starts_with("loadimpact_exporter_") {
            continue;
        }
        out.push((at, name));
    }
    out
}

/// Every raw series of the shared state in `expr`, with the aggregation
/// nearest around it.
fn state_series(expr: &str) -> Vec<(String, Option<Aggregation>)> {
    let text = without_strings(expr);
    state_series_at(&text)
        .into_iter()
        .map(|(at, name)| (name, enclosing_aggregation(&text, at)))
        .collect()
}

/// Several replicas on Redis export the same global values (each series once
/// per replica, differing in `instance` and `pod`): every rule and every
/// dashboard query must read one replica's value per series first, with
/// `max without (instance, pod)` (or a `max` that keeps neither label)
/// around that series alone (a function such as increase() in between), before
/// any sum, count or match: `max by (…) (a * on (…) group_left b)` would
/// still match each replica's `a` with every replica's `b`.
#[test]
fn every_query_reads_one_replica_per_series() {
    let dedupes = |aggregation: &Aggregation| {
        let Aggregation {
            op,
            clause,
            argument,
        } = aggregation;
        op == "max"
            && (clause.is_empty()
                || clause == "without (instance, pod)"
                || clause.starts_with("by (")
                    && !clause.contains("instance")
                    && !clause.contains("pod"))
            && state_series_at(&without_strings(argument)).len() == 1
    };
    let mut queries: Vec<(String, String)> = rules()
        .into_iter()
        .map(|r| {
            let name = r.record.or(r.alert).unwrap_or_default();
            (format!("rule {name}"), r.expr)
        })
        .collect();
    for dashboard in dashboards() {
        let mut targets = Vec::new();
        find_all(&dashboard.json, "targets", &mut targets);
        for target in targets.iter().filter_map(|t| t.as_array()).flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((dashboard.file.clone(), expr.to_owned()));
            }
        }
    }
    let mut seen = 0;
    let mut wrong = Vec::new();
    for (source, expr) in &queries {
        for (series, aggregation) in state_series(expr) {
            seen += 1;
            if !aggregation.as_ref().is_some_and(dedupes) {
                let how = aggregation.map_or("without aggregation".to_owned(), |a| {
                    format!("under `{} {}`", a.op, a.clause)
                });
                wrong.push(format!("{source}: {series} {how} in {expr}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "not read through `max without (instance, pod)`:\n{}",
        wrong.join("\n")
    );
    assert!(seen > 40, "only {seen} series found in the queries");
}

#[test]
fn the_replica_check_reads_promql_right() {
    let one = |expr: &str| {
        let found = state_series(expr);
        assert_eq!(found.len(), 1, "{expr}: {found:?}");
        found[0]
            .1
            .clone()
            .map(|a| format!("{} {}", a.op, a.clause).trim().to_owned())
    };
    for (expr, want) in [
        ("loadimpact_spans_pending > 0", None),
        ("sum(loadimpact_test_runs_running)", Some("sum")),
        (
            "sum by (a) (rate(loadimpact_x_total{code!~\"(2..)\"}[5m]))",
            Some("sum by (a)"),
        ),
        (
            "sum by (a) (max without (instance, pod) (increase(loadimpact_x_total[1h])))",
            Some("max without (instance, pod)"),
        ),
        (
            "histogram_quantile(0.5, sum by (le) (max without (instance, pod) (increase(loadimpact_x_bucket[1h]))))",
            Some("max without (instance, pod)"),
        ),
        (
            "time() - max by (event) (loadimpact_last_seconds)",
            Some("max by (event)"),
        ),
    ] {
        assert_eq!(one(expr).as_deref(), want, "{expr}");
    }
    assert!(state_series("a:loadimpact_x:ratio1h + loadimpact_exporter_build_info").is_empty());
    // Both series of a match under one `max`: found, each with the whole match
    // as the argument.
    let found = state_series("max by (a) (loadimpact_x * on (a) group_left (n) loadimpact_y)");
    assert_eq!(found.len(), 2);
    assert!(found
        .iter()
        .all(|(_, agg)| agg.as_ref().is_some_and(|a| a.argument.contains('*'))));
}

// ------------------------------------------------------------------ Alertmanager

#[test]
fn alertmanager_example_is_valid_and_routes_by_severity() {
    let out = run_ok("amtool", &["check-config", "alertmanager.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    for (labels, receiver) in [
        (
            vec![
                "alertname=LoadImpactFailedThresholdRateHigh",
                "severity=critical",
                "project_id=2",
            ],
            "slack-loadimpact-critical",
        ),
        (
            vec!["alertname=LoadImpactExporterDown", "severity=critical"],
            "slack-loadimpact-critical",
        ),
        (
            vec!["alertname=LoadImpactAbortRateHigh", "severity=warning"],
            "slack-loadimpact",
        ),
        (
            vec!["alertname=LoadImpactTestRunStuck", "severity=warning"],
            "slack-loadimpact",
        ),
    ] {
        let mut args = vec!["config", "routes", "test", "--config.file=alertmanager.yml"];
        args.extend(labels.iter().copied());
        let out = run_ok("amtool", &args);
        assert_eq!(out.trim(), receiver, "route of {labels:?}");
    }
}

/// A real Alertmanager with the example configuration: the critical
/// LoadImpactFailedThresholdRateHigh inhibits the warning of the same project,
/// not another project's; the critical LoadImpactExporterDown (no target up)
/// inhibits its per-target warnings and the job's other alerts, a warning (one
/// replica of several down) inhibits nothing.
#[test]
fn alertmanager_inhibits_the_warning_under_the_critical() {
    let config = repo().join(PROM_DIR).join("alertmanager.yml");
    let alertmanager = Server::start("prometheus-alertmanager", |dir: &Path| {
        vec![
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", dir.display()),
            "--cluster.listen-address=".to_owned(),
            "--log.level=warn".to_owned(),
        ]
    });

    let alert = |labels: &[(&str, &str)]| {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        json!({"labels": labels, "annotations": {"summary": "test"}})
    };
    let threshold = |severity: &str, project: &str| {
        alert(&[
            ("alertname", "LoadImpactFailedThresholdRateHigh"),
            ("severity", severity),
            ("organization_id", "1"),
            ("project_id", project),
        ])
    };
    let down = |severity: &str, job: &str, instance: &str| {
        let mut labels = vec![
            ("alertname", "LoadImpactExporterDown"),
            ("severity", severity),
            ("job", job),
        ];
        if !instance.is_empty() {
            labels.push(("instance", instance));
        }
        alert(&labels)
    };
    let rejections = |job: &str| {
        alert(&[
            ("alertname", "LoadImpactWebhookRejections"),
            ("severity", "warning"),
            ("job", job),
        ])
    };
    let alerts = json!([
        threshold("critical", "2"),
        threshold("warning", "2"),
        threshold("warning", "3"),
        // One of two replicas of job a down: nothing inhibited.
        down("warning", "a", "a-0:16565"),
        rejections("a"),
        // Every target of job b down.
        down("critical", "b", ""),
        down("warning", "b", "b-0:16565"),
        rejections("b"),
    ]);
    let resp = post_json(&alertmanager.url("/api/v2/alerts"), &alerts);
    assert_eq!(resp.status, 200, "post alerts: {}", resp.body);

    // (alertname, severity, project or job) -> (state, inhibiting alerts)
    let states = |list: &Value| -> BTreeMap<(String, String, String), (String, usize)> {
        let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
        list.as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let labels = &a["labels"];
                let whose = if labels["project_id"].is_string() {
                    format!("project {}", text(&labels["project_id"]))
                } else {
                    format!("job {}", text(&labels["job"]))
                };
                (
                    (text(&labels["alertname"]), text(&labels["severity"]), whose),
                    (
                        text(&a["status"]["state"]),
                        a["status"]["inhibitedBy"].as_array().map_or(0, Vec::len),
                    ),
                )
            })
            .collect()
    };
    let key = |name: &str, severity: &str, whose: &str| {
        (
            format!("LoadImpact{name}"),
            severity.to_owned(),
            whose.to_owned(),
        )
    };
    let active = || ("active".to_owned(), 0);
    let suppressed = || ("suppressed".to_owned(), 1);
    let want: BTreeMap<_, _> = [
        (
            key("FailedThresholdRateHigh", "critical", "project 2"),
            active(),
        ),
        (
            key("FailedThresholdRateHigh", "warning", "project 2"),
            suppressed(),
        ),
        (
            key("FailedThresholdRateHigh", "warning", "project 3"),
            active(),
        ),
        (key("ExporterDown", "warning", "job a"), active()),
        (key("WebhookRejections", "warning", "job a"), active()),
        (key("ExporterDown", "critical", "job b"), active()),
        (key("ExporterDown", "warning", "job b"), suppressed()),
        (key("WebhookRejections", "warning", "job b"), suppressed()),
    ]
    .into_iter()
    .collect();
    let mut last = BTreeMap::new();
    let settled = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < settled {
        last = states(&get(&alertmanager.url("/api/v2/alerts")).json());
        if last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(last, want, "the alerts' states after 20 s");
}

// ------------------------------------------------------------------ dashboards

/// Every value of a key anywhere in the JSON.
fn find_all<'a>(value: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == key {
                    out.push(v);
                }
                find_all(v, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| find_all(v, key, out)),
        _ => {}
    }
}

#[test]
fn dashboards_have_stable_uids_and_no_hard_coded_data_source() {
    for dashboard in dashboards() {
        let (uid, dashboard) = (dashboard.uid.as_str(), &dashboard.json);
        assert_eq!(dashboard["uid"], uid, "stable uid");
        assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
        assert!(
            dashboard.get("__inputs").is_none() && dashboard.get("id").is_none_or(Value::is_null),
            "{uid}: export for sharing without __inputs or a database id"
        );

        // Data sources only through variables.
        let mut sources = Vec::new();
        find_all(dashboard, "datasource", &mut sources);
        assert!(sources.len() > 20, "{uid}: panels without data source?");
        for source in sources {
            let ok = match source {
                Value::Object(map) => {
                    let uid_value = map.get("uid").and_then(Value::as_str).unwrap_or("");
                    uid_value.starts_with("${") || uid_value == "-- Grafana --"
                }
                _ => false,
            };
            assert!(ok, "{uid}: hard-coded or missing data source uid: {source}");
        }

        // The variables.
        let vars: BTreeMap<&str, &Value> = dashboard["templating"]["list"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|v| Some((v["name"].as_str()?, v)))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(vars["datasource"]["type"], "datasource", "{uid}");
        assert_eq!(vars["datasource"]["query"], "prometheus", "{uid}");
        assert_eq!(vars["tempo"]["query"], "tempo", "{uid}");
        for name in ["organization_id", "project_id"] {
            let var = vars
                .get(name)
                .unwrap_or_else(|| panic!("{uid}: no ${name}"));
            assert_eq!(var["type"], "query", "{uid}: {name}");
            assert_eq!(var["datasource"]["uid"], "${datasource}", "{uid}: {name}");
            let definition = var["definition"].as_str().unwrap_or("");
            assert!(
                definition.starts_with("label_values(")
                    && definition.ends_with(&format!(", {name})")),
                "{uid}: {name}: {definition}"
            );
        }

        // Panels: unique ids, inside the 24-column grid, not overlapping,
        // each with a query, a description, and only known variables.
        let panels: Vec<&Value> = dashboard["panels"]
            .as_array()
            .map(|p| p.iter().collect())
            .unwrap_or_default();
        let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
        assert_eq!(ids.len(), panels.len(), "{uid}: panel ids not unique");
        let rects: Vec<(u64, u64, u64, u64, &str)> = panels
            .iter()
            .map(|p| {
                let g = &p["gridPos"];
                let n = |k: &str| {
                    g[k].as_u64()
                        .unwrap_or_else(|| panic!("{uid}: gridPos.{k}: {p}"))
                };
                (
                    n("x"),
                    n("y"),
                    n("w"),
                    n("h"),
                    p["title"].as_str().unwrap_or(""),
                )
            })
            .collect();
        for (i, a) in rects.iter().enumerate() {
            assert!(a.0 + a.2 <= 24, "{uid}: {} is wider than the grid", a.4);
            for b in &rects[i + 1..] {
                let apart =
                    a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0 || a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1;
                assert!(apart, "{uid}: panels {} and {} overlap", a.4, b.4);
            }
        }
        let known = [
            "$organization_id",
            "$project_id",
            "$load_test_id",
            "$job",
            "$__rate_interval",
            "$__range",
        ];
        for panel in panels.iter().filter(|p| p["type"] != "row") {
            let title = panel["title"].as_str().unwrap_or("");
            assert!(!title.is_empty(), "{uid}: untitled panel");
            assert!(
                panel["description"].as_str().is_some_and(|d| d.len() > 20),
                "{uid}: {title}: no description"
            );
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{uid}: {title}: no query");
            for target in &targets {
                let expr = target["expr"].as_str().unwrap_or("");
                assert!(!expr.is_empty(), "{uid}: {title}: empty query");
                let mut rest = expr;
                while let Some(at) = rest.find('$') {
                    rest = &rest[at..];
                    let var = known.iter().find(|k| rest.starts_with(*k));
                    let var =
                        var.unwrap_or_else(|| panic!("{uid}: {title}: unknown variable in {expr}"));
                    assert!(
                        var.starts_with("$__") || vars.contains_key(&var[1..]),
                        "{uid}: {title}: {var} is not a variable of the dashboard"
                    );
                    rest = &rest[var.len()..];
                }
            }
        }
    }
}

#[test]
fn every_panel_is_described_in_the_readme() {
    let docs = read("README.md");
    for dashboard in dashboards() {
        let (uid, dashboard) = (dashboard.uid.as_str(), &dashboard.json);
        assert!(
            docs.contains(&format!("`{uid}.json`")),
            "README.md: no {uid}"
        );
        let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
        for title in panels.iter().filter_map(|p| p["title"].as_str()) {
            assert!(
                docs.contains(&format!("**{title}**")) || docs.contains(&format!("### {title}")),
                "README.md does not describe panel {title:?} of {uid}"
            );
        }
    }
}

/// The dashboards' counts over the time range add up across a pod's
/// replacement (a new `instance`, counters going on from the store), as the
/// alerts' do: checked by promtool on the panels' own queries. 3 runs
/// started and finished before the replacement at 31m, 3 after, and an
/// expiry on the new pod's first tick; the range is the last hour.
#[test]
fn the_dashboards_counts_add_up_across_a_pod_replacement() {
    let overview = dashboards()
        .into_iter()
        .find(|d| d.file == "loadimpact-overview.json")
        .expect("the overview dashboard");
    let panels = panels(&overview.json);
    let query = |title: &str| -> String {
        let panel = panels
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title:?}"));
        let expr = panel["targets"][0]["expr"].as_str().expect("expr");
        expr.replace("$organization_id", ".*")
            .replace("$project_id", ".*")
            .replace("$__range", "1h")
    };
    let labels = |instance: &str| {
        format!(
            r#"job="loadimpact-exporter",namespace="loadimpact",instance="{instance}",pod="loadimpact-exporter-0",organization_id="1",project_id="10""#
        )
    };
    let (old, new) = (labels("10.0.0.1:16565"), labels("10.0.0.9:16565"));
    let series = [
        format!(r#"loadimpact_test_runs_started_total{{{old},trigger="manual"}}"#),
        "0x10 3x20".to_owned(),
        format!(r#"loadimpact_test_runs_started_total{{{new},trigger="manual"}}"#),
        "_x31 3x8 6x100".to_owned(),
        format!(r#"loadimpact_test_runs_finished_total{{{old},outcome="finished"}}"#),
        "0x12 3x18".to_owned(),
        format!(r#"loadimpact_test_runs_finished_total{{{new},outcome="finished"}}"#),
        "_x31 3x10 6x100".to_owned(),
        format!(r#"loadimpact_test_runs_expired_total{{{old}}}"#),
        "0x30".to_owned(),
        format!(r#"loadimpact_test_runs_expired_total{{{new}}}"#),
        "_x31 1x100".to_owned(),
    ];
    let mut text = String::from(
        "rule_files: []\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
    );
    for pair in series.chunks(2) {
        text += &format!(
            "      - series: '{}'\n        values: '{}'\n",
            pair[0], pair[1]
        );
    }
    text += "    promql_expr_test:\n";
    for (title, runs) in [
        ("Started in range", 6),
        ("Finished in range", 6),
        ("Expired in range", 1),
    ] {
        text += &format!(
            "      - expr: '{}'\n        eval_time: 60m\n        exp_samples:\n          - labels: '{{}}'\n            value: {runs}\n",
            query(title).replace('\'', "''")
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = support::files::write_temp(&dir, "dashboard.test.yml", &text);
    let out = stdout(&run_ok_in(
        dir.path(),
        &require_tool("promtool"),
        &["test", "rules", file.to_str().expect("utf-8 path")],
    ));
    assert!(out.contains("SUCCESS"), "{out}\n{text}");
}
