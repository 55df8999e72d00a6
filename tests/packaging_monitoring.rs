//! Packaging of the monitoring pieces: the Prometheus Operator objects (the
//! ServiceMonitor against its schema and the Service, the PrometheusRule
//! against the rules file and promtool), the job name the rules select, the
//! dashboards ConfigMap byte for byte, and the Prometheus configurations
//! (plain, and the sidecar's from its ConfigMap) through `promtool check
//! config`.

mod manifests;
mod support;

use std::collections::BTreeMap;

use manifests::*;
use serde_json::{json, Value};
use support::files::{dashboards, parse_yaml_documents, read, write_temp};
use support::tools::{assert_success, describe, require_tool, run_ok};

#[test]
fn the_service_monitor_matches_the_schema_and_the_service() {
    let schema = "deploy/schemas/servicemonitor.schema.json";
    let objs = objects("deploy/kubernetes/overlays/kube-prometheus");
    let sm = find(&objs, "ServiceMonitor", EXPORTER);
    let tmp = tempfile::tempdir().expect("temp dir");
    let good = write_temp(&tmp, "servicemonitor.json", &sm.to_string());
    assert_success(
        &check_jsonschema(schema, &good),
        "check-jsonschema of the ServiceMonitor",
    );

    // The schema refuses a misspelt field: the check above can fail.
    let mut bad = sm.clone();
    bad["spec"]["endpoints"][0]["intervall"] = json!("30s");
    let bad = write_temp(&tmp, "bad.json", &bad.to_string());
    let output = check_jsonschema(schema, &bad);
    assert!(
        !output.status.success(),
        "the schema accepted a typo\n{}",
        describe(&output)
    );

    // It scrapes the exporter's Service, on its named port, at /metrics.
    let svc = find(&objs, "Service", EXPORTER);
    assert!(
        selects(
            &sm["spec"]["selector"]["matchLabels"],
            &svc["metadata"]["labels"]
        ),
        "the ServiceMonitor selects the Service"
    );
    let services_selected = of_kind(&objs, "Service")
        .into_iter()
        .filter(|s| {
            selects(
                &sm["spec"]["selector"]["matchLabels"],
                &s["metadata"]["labels"],
            )
        })
        .count();
    assert_eq!(
        services_selected, 1,
        "one Service selected: no double scrape"
    );
    // One endpoint, the Service's metrics port (which reaches the exporter's
    // metrics listener), never the webhook port.
    let endpoints = sm["spec"]["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1);
    assert!(
        endpoints[0]["targetPort"].is_null(),
        "the endpoint names the Service's port, not a pod port"
    );
    assert_eq!(endpoints[0]["port"], METRICS_PORT_NAME);
    let exporter = exporter_container(the_exporter_workload(&objs)).expect("exporter");
    assert_eq!(
        service_port_target(svc, &json!({ "name": endpoints[0]["port"] }), exporter),
        Some(METRICS_PORT),
        "the ServiceMonitor scrapes the metrics port"
    );
    assert_eq!(endpoints[0]["path"], "/metrics");
    // The job label is the Service's name: what the rules and dashboards select.
    assert!(sm["spec"]["jobLabel"].is_null());
    assert_eq!(name(svc), EXPORTER);
}

#[test]
fn the_prometheus_rule_agrees_with_the_rules_file_and_passes_promtool() {
    let promtool = require_tool("promtool");
    let groups = rules_file_groups();
    for dir in [
        "deploy/kubernetes/components/prometheus-operator/prometheusrule.yaml",
        "deploy/kubernetes/overlays/kube-prometheus",
    ] {
        let objs = if dir.ends_with(".yaml") {
            parse_yaml_documents(&read(dir), dir)
        } else {
            objects(dir)
        };
        let rule = find(&objs, "PrometheusRule", EXPORTER);
        assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
        let spec = rule["spec"].as_object().expect("spec");
        assert_eq!(
            spec.keys().collect::<Vec<_>>(),
            ["groups"],
            "{dir}: spec holds only the groups"
        );
        assert_eq!(
            spec["groups"], groups,
            "{dir}: the PrometheusRule differs from {RULES_FILE}: run deploy/generate.sh"
        );

        let tmp = tempfile::tempdir().expect("temp dir");
        let file = write_temp(
            &tmp,
            "extracted.rules.yml",
            &json!({ "groups": spec["groups"] }).to_string(),
        );
        let output = run_ok(
            &promtool,
            &["check", "rules", file.to_str().expect("utf-8")],
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("SUCCESS"),
            "{}",
            describe(&output)
        );
    }
}

#[test]
fn the_rules_select_the_documented_job_name() {
    // Every job="..." the rules select is the scrape job this packaging sets up.
    let rules = read(RULES_FILE);
    for (i, _) in rules.match_indices("job=\"") {
        let rest = &rules[i + 5..];
        let value = &rest[..rest.find('"').expect("closing quote")];
        assert_eq!(value, EXPORTER, "{RULES_FILE} selects job=\"{value}\"");
    }
}

#[test]
fn the_dashboards_configmap_is_byte_identical_to_dashboards() {
    let expected: BTreeMap<String, String> =
        dashboards().into_iter().map(|d| (d.file, d.text)).collect();
    for dir in KUSTOMIZATIONS {
        let objs = objects(dir);
        let maps: Vec<&Value> = of_kind(&objs, "ConfigMap")
            .into_iter()
            .filter(|cm| cm["metadata"]["labels"]["grafana_dashboard"] == "1")
            .collect();
        assert_eq!(
            maps.len(),
            1,
            "{dir}: one ConfigMap labelled grafana_dashboard: \"1\""
        );
        let cm = maps[0];
        assert_eq!(
            name(cm),
            "loadimpact-exporter-dashboards",
            "{dir}: a fixed name (no hash suffix)"
        );
        let data: BTreeMap<String, String> = cm["data"]
            .as_object()
            .expect("data")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("string data").to_owned()))
            .collect();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{dir}: one entry per dashboard: run deploy/generate.sh"
        );
        for (file, contents) in &expected {
            assert!(
                data[file].as_bytes() == contents.as_bytes(),
                "{dir}: {file} differs from dashboards/{file}: run deploy/generate.sh"
            );
        }
        let size: usize = data.values().map(String::len).sum();
        assert!(size < 1024 * 1024, "{dir}: a ConfigMap holds at most 1 MiB");
    }
}

#[test]
fn the_prometheus_configurations_pass_promtool() {
    let promtool = require_tool("promtool");
    for file in [
        "deploy/prometheus/prometheus.yml",
        "deploy/kubernetes/overlays/sidecar/prometheus.yml",
    ] {
        // `check config` also checks the rule files it names.
        let output = run_ok(&promtool, &["check", "config", file]);
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("SUCCESS: 1 rule files found"),
            "{file} loads the rules\n{}",
            describe(&output)
        );
        exporter_job_targets(file);
    }

    // The sidecar's Prometheus gets its configuration and the rules from the
    // ConfigMap, unchanged, and scrapes the exporter on localhost.
    let objs = objects("deploy/kubernetes/overlays/sidecar");
    let cm = of_kind(&objs, "ConfigMap")
        .into_iter()
        .find(|cm| name(cm).starts_with("prometheus-server-config"))
        .expect("prometheus-server-config ConfigMap");
    // Compared whole, reported briefly (the files are long).
    assert!(
        cm["data"]["prometheus.yml"] == read("deploy/kubernetes/overlays/sidecar/prometheus.yml"),
        "the ConfigMap's prometheus.yml differs from overlays/sidecar/prometheus.yml"
    );
    assert!(
        cm["data"]["loadimpact.rules.yml"] == read(RULES_FILE),
        "the sidecar's rules differ from {RULES_FILE}: run deploy/generate.sh"
    );
    assert_eq!(
        exporter_job_targets("deploy/kubernetes/overlays/sidecar/prometheus.yml"),
        json!([format!("localhost:{METRICS_PORT}")]),
        "the sidecar's Prometheus scrapes the metrics port"
    );
    let deployment = find(&objs, "Deployment", "prometheus-server");
    let config_volume = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "config")
        .expect("config volume");
    assert_eq!(config_volume["configMap"]["name"], cm["metadata"]["name"]);
}
