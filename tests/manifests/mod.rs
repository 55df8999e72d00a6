//! The Kubernetes manifests as the packaging tests read them: each
//! kustomization rendered by the real `kubectl kustomize`, the rendered
//! objects looked up by kind and name, their workloads, containers, ports,
//! selectors, flags and the token Secret's mount, and the shared facts every
//! packaging file agrees on (the exporter's name, its two ports, the token
//! file, the rules file). Also the one check of a secured webhook on the real
//! binary that the Kubernetes and compose tests share.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::support::deliveries::{post_fresh, test_hook};
use crate::support::exporter::Exporter;
use crate::support::files::{parse_yaml, parse_yaml_documents, read};
use crate::support::http::get;
use crate::support::tools::{assert_success, describe, require_tool, run, run_with_input};

/// The Kubernetes version the manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.30.0";

/// The kustomizations a user applies; `every_kustomization_is_listed` keeps the
/// list in step with the directories.
pub const KUSTOMIZATIONS: &[&str] = &[
    "deploy/kubernetes/base",
    "deploy/kubernetes/overlays/ha",
    "deploy/kubernetes/overlays/kube-prometheus",
    "deploy/kubernetes/overlays/sidecar",
];

pub const EXPORTER: &str = "loadimpact-exporter";
/// The main listener (`--web.listen-address`): /metrics, the API, the probes.
pub const METRICS_PORT: i64 = 16565;
pub const METRICS_PORT_NAME: &str = "metrics";
/// The webhook's own listener (`--webhook.listen-address`): nothing else.
pub const WEBHOOK_PORT: i64 = 9781;
pub const WEBHOOK_PORT_NAME: &str = "webhook";
/// The Secret holding the webhook's tokens, its key, and where the pod has it.
pub const WEBHOOK_SECRET: &str = "loadimpact-exporter-webhook";
pub const WEBHOOK_SECRET_KEY: &str = "tokens";
pub const TOKEN_FILE: &str = "/etc/loadimpact-exporter/webhook/tokens";
/// The only namespace whose pods may reach the metrics port.
pub const MONITORING_NAMESPACE: &str = "monitoring";
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

/// The value of `--flag=value` among `args` (`None` when absent).
pub fn flag<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter().find_map(|a| a.strip_prefix(prefix.as_str()))
}

/// The port of a `HOST:PORT` listen address.
pub fn address_port(address: &str) -> i64 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{address} is not HOST:PORT"))
}

/// The container port a Service's port (found by the `name` or `number` of
/// `port`, as an Ingress or ServiceMonitor names it) sends to, on `container`.
pub fn service_port_target(service: &Value, port: &Value, container: &Value) -> Option<i64> {
    let sp = items(&service["spec"]["ports"]).find(|sp| {
        (port["name"].is_string() && sp["name"] == port["name"])
            || (port["number"].is_i64() && sp["port"] == port["number"])
    })?;
    container_port(container, &sp["targetPort"])
}

/// The decoded value of `key` of the Secret `name` among `objs` (a
/// generator's `data` is base64, decoded by coreutils' `base64 -d`).
pub fn secret_value(objs: &[Value], name_: &str, key: &str) -> String {
    let secret = find(objs, "Secret", name_);
    if let Some(text) = secret["stringData"][key].as_str() {
        return text.to_owned();
    }
    let encoded = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("Secret {name_} has no key {key}"));
    let output = run_with_input(&require_tool("base64"), &["-d"], encoded.as_bytes());
    assert_success(&output, &format!("base64 -d of Secret {name_}"));
    String::from_utf8(output.stdout).expect("the token file is UTF-8")
}

/// The tokens of a token file's text, as the exporter reads it: one a line,
/// blank lines and `#` comments skipped.
pub fn tokens_of(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// How a workload has the webhook's token Secret: the directory its exporter
/// container mounts it at, and the file name the Secret's key becomes there.
pub struct TokenMount {
    pub dir: String,
    pub file: String,
}

impl TokenMount {
    /// The file `--webhook.token-file` must name.
    pub fn path(&self) -> String {
        format!("{}/{}", self.dir, self.file)
    }
}

/// The token Secret's volume and mount in `workload`, asserted as they must
/// be: a `secret` volume of `WEBHOOK_SECRET` projecting `WEBHOOK_SECRET_KEY`,
/// mounted read-only as a directory (a `subPath` mount never sees a change of
/// the Secret), readable only by owner and group.
pub fn token_mount(workload: &Value, at: &str) -> TokenMount {
    let pod = &workload["spec"]["template"]["spec"];
    let volumes: Vec<&Value> = items(&pod["volumes"])
        .filter(|v| v["secret"]["secretName"] == WEBHOOK_SECRET)
        .collect();
    assert_eq!(
        volumes.len(),
        1,
        "{at}: one volume from the Secret {WEBHOOK_SECRET}"
    );
    let volume = volumes[0];
    let secret = &volume["secret"];
    assert_ne!(
        secret["optional"], true,
        "{at}: the token Secret must not be optional (the exporter would start open)"
    );
    let file = items(&secret["items"])
        .find(|i| i["key"] == WEBHOOK_SECRET_KEY)
        .map(|i| i["path"].as_str().expect("item path").to_owned())
        .unwrap_or_else(|| WEBHOOK_SECRET_KEY.to_owned());
    let mode = secret["defaultMode"].as_i64().unwrap_or(0o644);
    assert_eq!(
        mode & 0o007,
        0,
        "{at}: the token file is not world-readable (defaultMode {mode:o})"
    );
    let c = exporter_container(workload).expect("exporter container");
    let mounts: Vec<&Value> = items(&c["volumeMounts"])
        .filter(|m| m["name"] == volume["name"])
        .collect();
    assert_eq!(mounts.len(), 1, "{at}: the token volume is mounted once");
    let mount = mounts[0];
    assert_eq!(
        mount["readOnly"], true,
        "{at}: the token mount is read-only"
    );
    assert!(
        mount["subPath"].is_null() && mount["subPathExpr"].is_null(),
        "{at}: a subPath mount would never see the Secret change"
    );
    for other in containers(pod) {
        if other["name"] != EXPORTER {
            assert!(
                items(&other["volumeMounts"]).all(|m| m["name"] != volume["name"]),
                "{at}: only the exporter mounts the token"
            );
        }
    }
    TokenMount {
        dir: mount["mountPath"]
            .as_str()
            .expect("mountPath")
            .trim_end_matches('/')
            .to_owned(),
        file,
    }
}

/// On a running exporter that serves the webhook on its own listener behind
/// `token`: a delivery to `path/<token>` (and `path?token=<token>`) on the
/// webhook port is accepted; one without the token, or with another, gets
/// 401; the webhook port serves no /metrics nor probe, and the main port
/// takes no delivery.
pub fn assert_webhook_secured(exporter: &Exporter, path: &str, token: &str, what: &str) {
    let hook = test_hook();
    for target in [format!("{path}/{token}"), format!("{path}?token={token}")] {
        let resp = post_fresh(&exporter.webhook_url(&target), &hook);
        assert_eq!(
            resp.status, 200,
            "{what}: POST {path}/<token> on the webhook port: {}",
            resp.body
        );
    }
    for target in [
        path.to_owned(),
        format!("{path}/"),
        format!("{path}/not-{token}"),
        format!("{path}?token=not-{token}"),
    ] {
        let resp = post_fresh(&exporter.webhook_url(&target), &hook);
        assert_eq!(
            resp.status, 401,
            "{what}: POST {target} without the token: {}",
            resp.body
        );
    }
    for page in ["/metrics", "/-/healthy", "/-/ready", "/api/v1/runs", "/"] {
        let resp = get(&exporter.webhook_url(page));
        assert_eq!(
            resp.status, 404,
            "{what}: GET {page} on the webhook port: {}",
            resp.body
        );
        assert!(
            !resp.body.contains("loadimpact_"),
            "{what}: the webhook port shows metrics"
        );
    }
    let resp = post_fresh(&exporter.url(&format!("{path}/{token}")), &hook);
    assert_eq!(
        resp.status, 404,
        "{what}: the main port takes no delivery: {}",
        resp.body
    );
}
