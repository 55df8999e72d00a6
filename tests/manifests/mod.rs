//! The Kubernetes manifests as the packaging tests read them: each
//! kustomization rendered by the real `kubectl kustomize`, the rendered
//! objects looked up by kind and name, their workloads, containers, ports and
//! selectors, and the shared facts every packaging file agrees on (the
//! exporter's name and port, the rules file).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::support::files::{parse_yaml, parse_yaml_documents, read};
use crate::support::tools::{describe, require_tool, run};

/// The Kubernetes version the manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.30.0";

/// The kustomizations a user applies; `every_kustomization_is_listed` keeps the
/// list in step with the directories.
pub const KUSTOMIZATIONS: &[&str] = &[
    "deploy/kubernetes/base",
    "deploy/kubernetes/overlays/kube-prometheus",
    "deploy/kubernetes/overlays/sidecar",
];

pub const EXPORTER: &str = "loadimpact-exporter";
pub const EXPORTER_PORT: i64 = 16565;
pub const RULES_FILE: &str = "deploy/prometheus/loadimpact.rules.yml";

/// `kubernetes-validate --strict` against `KUBERNETES_VERSION`, of `file`;
/// its output, whatever the exit code.
pub fn kubernetes_validate(file: &Path) -> Output {
    run(
        &require_tool("kubernetes-validate"),
        &[
            "--strict",
            "-k",
            KUBERNETES_VERSION,
            file.to_str().expect("utf-8 path"),
        ],
    )
}

/// `check-jsonschema --schemafile schema file`; its output, whatever the exit code.
pub fn check_jsonschema(schema: &str, file: &Path) -> Output {
    run(
        &require_tool("check-jsonschema"),
        &["--schemafile", schema, file.to_str().expect("utf-8 path")],
    )
}

/// `kubectl kustomize DIR`: the rendered YAML.
pub fn render(dir: &str) -> String {
    let kubectl = require_tool("kubectl");
    let output = run(&kubectl, &["kustomize", dir]);
    assert!(
        output.status.success(),
        "`kubectl kustomize {dir}` failed (generated files missing? run deploy/generate.sh)\n{}",
        describe(&output)
    );
    String::from_utf8(output.stdout).expect("kustomize output is UTF-8")
}

/// The rendered objects of a kustomization.
pub fn objects(dir: &str) -> Vec<Value> {
    parse_yaml_documents(&render(dir), dir)
}

pub fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or("")
}

pub fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

pub fn find<'a>(objs: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    objs.iter()
        .find(|o| kind(o) == kind_ && name(o) == name_)
        .unwrap_or_else(|| panic!("no {kind_} {name_} among the rendered objects"))
}

pub fn of_kind<'a>(objs: &'a [Value], kind_: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| kind(o) == kind_).collect()
}

/// Objects that carry a pod template.
pub fn workloads(objs: &[Value]) -> Vec<&Value> {
    objs.iter()
        .filter(|o| {
            matches!(
                kind(o),
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job"
            )
        })
        .collect()
}

pub fn containers(pod_spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|key| items(&pod_spec[key]))
        .collect()
}

/// The items of a JSON array (none when it is not one).
pub fn items(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

pub fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Every key/value of `selector` is in `labels` (and the selector is not empty).
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = string_map(selector);
    let labels = string_map(labels);
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The exporter container of a workload, if it has one.
pub fn exporter_container(workload: &Value) -> Option<&Value> {
    containers(&workload["spec"]["template"]["spec"])
        .into_iter()
        .find(|c| c["name"] == EXPORTER)
}

pub fn the_exporter_workload(objs: &[Value]) -> &Value {
    let found: Vec<&Value> = workloads(objs)
        .into_iter()
        .filter(|w| exporter_container(w).is_some())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one workload running the exporter"
    );
    found[0]
}

/// The container port a probe or Service `targetPort` names (by name or number).
pub fn container_port(container: &Value, port: &Value) -> Option<i64> {
    let ports = container["ports"].as_array()?;
    match port {
        Value::String(name) => ports
            .iter()
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64()),
        Value::Number(n) => ports
            .iter()
            .filter_map(|p| p["containerPort"].as_i64())
            .find(|p| Some(*p) == n.as_i64()),
        _ => None,
    }
}

pub fn cargo_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

pub fn rules_file_groups() -> Value {
    let rules = parse_yaml(&read(RULES_FILE), RULES_FILE);
    let groups = rules["groups"].clone();
    assert!(
        groups.as_array().is_some_and(|g| !g.is_empty()),
        "{RULES_FILE} has no groups"
    );
    groups
}

/// The static targets of the scrape job `loadimpact-exporter` of a Prometheus
/// configuration (panics when the job is missing).
pub fn exporter_job_targets(file: &str) -> Value {
    let config = parse_yaml(&read(file), file);
    let job = config["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .find(|s| s["job_name"] == EXPORTER)
        .unwrap_or_else(|| panic!("{file}: no scrape job {EXPORTER}"));
    job["static_configs"][0]["targets"].clone()
}
