//! Packaging (issue 5): the Kubernetes manifests, the docker-compose stack, the
//! Dockerfile and the generated copies of the rules and dashboards.
//!
//! Every check drives the real tools, offline: `kubectl kustomize` renders each
//! kustomization, `kubernetes-validate --strict` validates the result against a
//! pinned Kubernetes version, `promtool` checks the rules and Prometheus
//! configurations, `check-jsonschema` checks the ServiceMonitor (against the
//! schema in deploy/schemas/) and docker-compose.yml (against the Compose
//! specification's schema), and `yamllint` lints every YAML file. A missing
//! tool fails the test (`tests/run.sh` installs them all).
//!
//! The rendered objects are parsed and their security settings, probes,
//! volumes and wiring (selectors, ports, paths) are asserted one by one, so
//! that a later change cannot drop them silently.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.30.0";

/// The kustomizations a user applies; `every_kustomization_is_listed` keeps the
/// list in step with the directories.
const KUSTOMIZATIONS: &[&str] = &[
    "deploy/kubernetes/base",
    "deploy/kubernetes/overlays/kube-prometheus",
    "deploy/kubernetes/overlays/sidecar",
];

const EXPORTER: &str = "loadimpact-exporter";
const EXPORTER_PORT: i64 = 16565;
const RULES_FILE: &str = "deploy/prometheus/loadimpact.rules.yml";

// ---------------------------------------------------------------------------
// helpers

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Runs a command in the repository and returns its output, whatever the exit code.
fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

fn text(output: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a command and panics with its output unless it succeeds.
fn run_ok(program: &Path, args: &[&str]) -> Output {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "`{} {}` failed\n{}",
        program.display(),
        args.join(" "),
        text(&output)
    );
    output
}

fn parse_yaml_documents(yaml: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml).unwrap_or_else(|e| panic!("parse {what}: {e}"))
}

fn parse_yaml(yaml: &str, what: &str) -> Value {
    let mut docs = parse_yaml_documents(yaml, what);
    assert_eq!(docs.len(), 1, "{what}: expected one YAML document");
    docs.remove(0)
}

fn write_temp(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// `kubectl kustomize DIR`: the rendered YAML.
fn render(dir: &str) -> String {
    let kubectl = common::require_tool("kubectl");
    let output = run(&kubectl, &["kustomize", dir]);
    assert!(
        output.status.success(),
        "`kubectl kustomize {dir}` failed (generated files missing? run deploy/generate.sh)\n{}",
        text(&output)
    );
    String::from_utf8(output.stdout).expect("kustomize output is UTF-8")
}

/// The rendered objects of a kustomization.
fn objects(dir: &str) -> Vec<Value> {
    parse_yaml_documents(&render(dir), dir)
}

fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or("")
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

fn find<'a>(objs: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    objs.iter()
        .find(|o| kind(o) == kind_ && name(o) == name_)
        .unwrap_or_else(|| panic!("no {kind_} {name_} among the rendered objects"))
}

fn of_kind<'a>(objs: &'a [Value], kind_: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| kind(o) == kind_).collect()
}

/// Objects that carry a pod template.
fn workloads(objs: &[Value]) -> Vec<&Value> {
    objs.iter()
        .filter(|o| {
            matches!(
                kind(o),
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job"
            )
        })
        .collect()
}

fn containers(pod_spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|key| pod_spec[key].as_array().into_iter().flatten())
        .collect()
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
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
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = string_map(selector);
    let labels = string_map(labels);
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The exporter container of a workload, if it has one.
fn exporter_container(workload: &Value) -> Option<&Value> {
    containers(&workload["spec"]["template"]["spec"])
        .into_iter()
        .find(|c| c["name"] == EXPORTER)
}

fn the_exporter_workload(objs: &[Value]) -> &Value {
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
fn container_port(container: &Value, port: &Value) -> Option<i64> {
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

fn cargo_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

// ---------------------------------------------------------------------------
// generation and rendering

#[test]
fn generated_files_are_up_to_date() {
    let bash = common::require_tool("bash");
    let output = run(&bash, &["deploy/generate.sh", "--check"]);
    assert!(
        output.status.success(),
        "generated files are stale: run deploy/generate.sh\n{}",
        text(&output)
    );
}

#[test]
fn every_kustomization_is_listed() {
    // Every directory under deploy/kubernetes with a Kustomization (not a
    // Component, not the generated dashboards piece of the base) is one a user
    // applies, and must be in KUSTOMIZATIONS so the tests below render it.
    fn walk(dir: &Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                let doc = parse_yaml(
                    &std::fs::read_to_string(&path).expect("read kustomization"),
                    &path.display().to_string(),
                );
                let rel = path
                    .parent()
                    .expect("parent")
                    .strip_prefix(repo())
                    .expect("in repo")
                    .to_string_lossy()
                    .into_owned();
                if doc["kind"] == "Kustomization" && !rel.ends_with("base/dashboards") {
                    found.insert(rel);
                }
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(&repo().join("deploy/kubernetes"), &mut found);
    let listed: BTreeSet<String> = KUSTOMIZATIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        found, listed,
        "KUSTOMIZATIONS must list every kustomization"
    );
}

#[test]
fn every_kustomization_renders_and_validates_offline() {
    let validate = common::require_tool("kubernetes-validate");
    let tmp = tempfile::tempdir().expect("temp dir");
    for dir in KUSTOMIZATIONS {
        let rendered = render(dir);
        let objs = parse_yaml_documents(&rendered, dir);
        assert!(!objs.is_empty(), "{dir} renders nothing");
        let file = write_temp(&tmp, &format!("{}.yaml", dir.replace('/', "_")), &rendered);
        let output = run_ok(
            &validate,
            &[
                "--strict",
                "-k",
                KUBERNETES_VERSION,
                file.to_str().expect("utf-8 path"),
            ],
        );
        // kubernetes-validate passes objects it has no schema for with a
        // warning: only the Operator's CRDs may be among them (a typo in an
        // apiVersion would otherwise pass unchecked).
        let out = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        let mut passed = 0;
        for line in out.lines() {
            if line.contains("Couldn't find schema") {
                assert!(
                    line.contains("kind ServiceMonitor with api version monitoring.coreos.com/v1")
                        || line.contains(
                            "kind PrometheusRule with api version monitoring.coreos.com/v1"
                        ),
                    "{dir}: an object was not validated: {line}"
                );
            } else if line.contains(" passed for resource ") {
                passed += 1;
            } else {
                assert!(!line.starts_with("ERROR"), "{dir}: {line}");
            }
        }
        let crds = objs
            .iter()
            .filter(|o| o["apiVersion"] == "monitoring.coreos.com/v1")
            .count();
        assert_eq!(
            passed + crds,
            objs.len(),
            "{dir}: every object is validated or is an Operator object\n{out}"
        );
    }
}

#[test]
fn kubernetes_validate_rejects_a_broken_manifest() {
    // The validation above can fail: a misspelt field in a container's
    // securityContext is refused under --strict.
    let validate = common::require_tool("kubernetes-validate");
    let objs = objects("deploy/kubernetes/base");
    let mut sts = find(&objs, "StatefulSet", EXPORTER).clone();
    sts["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] =
        json!(true);
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = write_temp(&tmp, "broken.json", &sts.to_string());
    let output = run(
        &validate,
        &[
            "--strict",
            "-k",
            KUBERNETES_VERSION,
            file.to_str().expect("utf-8 path"),
        ],
    );
    assert!(
        !output.status.success(),
        "a broken manifest passed\n{}",
        text(&output)
    );
    assert!(
        text(&output).contains("readOnlyRootFileSystem"),
        "the error names the field\n{}",
        text(&output)
    );
}

#[test]
fn each_kustomization_has_its_objects() {
    let expect: &[(&str, &[(&str, &str)])] = &[
        (
            "deploy/kubernetes/base",
            &[
                ("ServiceAccount", EXPORTER),
                ("StatefulSet", EXPORTER),
                ("Service", EXPORTER),
                ("Ingress", EXPORTER),
                ("NetworkPolicy", EXPORTER),
                ("ConfigMap", "loadimpact-exporter-dashboards"),
            ],
        ),
        (
            "deploy/kubernetes/overlays/kube-prometheus",
            &[
                ("Namespace", "loadimpact"),
                ("StatefulSet", EXPORTER),
                ("Service", EXPORTER),
                ("Ingress", EXPORTER),
                ("NetworkPolicy", EXPORTER),
                ("ConfigMap", "loadimpact-exporter-dashboards"),
                ("ServiceMonitor", EXPORTER),
                ("PrometheusRule", EXPORTER),
            ],
        ),
        (
            "deploy/kubernetes/overlays/sidecar",
            &[
                ("Deployment", "prometheus-server"),
                ("Service", "prometheus-server"),
                ("Ingress", EXPORTER),
                ("NetworkPolicy", "prometheus-server"),
                ("PersistentVolumeClaim", "loadimpact-exporter-data"),
                ("PersistentVolumeClaim", "prometheus-server-data"),
                ("ConfigMap", "loadimpact-exporter-dashboards"),
            ],
        ),
    ];
    for (dir, wanted) in expect {
        let objs = objects(dir);
        for (k, n) in *wanted {
            find(&objs, k, n);
        }
        // The base must apply on a cluster without the Operator's CRDs.
        if *dir == "deploy/kubernetes/base" {
            assert!(
                objs.iter()
                    .all(|o| o["apiVersion"] != "monitoring.coreos.com/v1"),
                "the base must not need the Prometheus Operator's CRDs"
            );
        }
    }
    // The overlays put everything in their namespace.
    for (dir, namespace) in [
        ("deploy/kubernetes/overlays/kube-prometheus", "loadimpact"),
        ("deploy/kubernetes/overlays/sidecar", "monitoring"),
    ] {
        for obj in objects(dir).iter().filter(|o| kind(o) != "Namespace") {
            assert_eq!(
                obj["metadata"]["namespace"],
                namespace,
                "{dir}: {} {}",
                kind(obj),
                name(obj)
            );
        }
    }
    // The kube-prometheus-stack Helm chart selects by its release label.
    let objs = objects("deploy/kubernetes/overlays/kube-prometheus");
    for k in ["ServiceMonitor", "PrometheusRule"] {
        let obj = find(&objs, k, EXPORTER);
        assert_eq!(
            obj["metadata"]["labels"]["release"], "kube-prometheus-stack",
            "{k}"
        );
        assert_eq!(obj["metadata"]["namespace"], "loadimpact", "{k}");
    }
}

// ---------------------------------------------------------------------------
// security settings, probes, storage

fn assert_container_hardened(dir: &str, pod_spec: &Value, c: &Value) {
    let cname = c["name"].as_str().unwrap_or("?");
    let at = format!("{dir}: container {cname}");
    let sc = &c["securityContext"];
    let pod_sc = &pod_spec["securityContext"];
    assert_eq!(
        sc["allowPrivilegeEscalation"], false,
        "{at}: allowPrivilegeEscalation"
    );
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "{at}: readOnlyRootFilesystem"
    );
    assert!(
        strings(&sc["capabilities"]["drop"]).contains(&"ALL"),
        "{at}: capabilities.drop ALL"
    );
    assert!(
        strings(&sc["capabilities"]["add"]).is_empty(),
        "{at}: no capabilities added"
    );
    assert_ne!(sc["privileged"], true, "{at}: privileged");
    // Container settings win over the pod's: each must be right where it applies.
    let effective = |key: &str| {
        if sc[key].is_null() {
            pod_sc[key].clone()
        } else {
            sc[key].clone()
        }
    };
    assert_eq!(effective("runAsNonRoot"), true, "{at}: runAsNonRoot");
    assert_ne!(effective("runAsUser"), 0, "{at}: runAsUser 0");
    assert_eq!(
        effective("seccompProfile")["type"],
        "RuntimeDefault",
        "{at}: seccompProfile RuntimeDefault"
    );
    // Sized: requests for scheduling, a memory limit.
    let res = &c["resources"];
    assert!(res["requests"]["cpu"].is_string(), "{at}: CPU request");
    assert!(
        res["requests"]["memory"].is_string(),
        "{at}: memory request"
    );
    assert!(res["limits"]["memory"].is_string(), "{at}: memory limit");
    // Images pinned by tag.
    let image = c["image"].as_str().unwrap_or_default();
    let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
    assert!(
        !tag.is_empty() && !tag.contains('/') && tag != "latest",
        "{at}: image {image} is not pinned by tag"
    );
    // Liveness and readiness probes on both.
    assert!(c["livenessProbe"].is_object(), "{at}: livenessProbe");
    assert!(c["readinessProbe"].is_object(), "{at}: readinessProbe");
}

#[test]
fn every_workload_is_hardened() {
    for dir in KUSTOMIZATIONS {
        let objs = objects(dir);
        let loads = workloads(&objs);
        assert!(!loads.is_empty(), "{dir}: no workload");
        for w in loads {
            let at = format!("{dir}: {} {}", kind(w), name(w));
            let pod = &w["spec"]["template"]["spec"];
            let pod_sc = &pod["securityContext"];
            assert_eq!(pod_sc["runAsNonRoot"], true, "{at}: pod runAsNonRoot");
            assert_eq!(
                pod_sc["seccompProfile"]["type"], "RuntimeDefault",
                "{at}: pod seccompProfile"
            );
            assert!(
                pod_sc["fsGroup"].is_i64(),
                "{at}: fsGroup (writable volumes for non-root)"
            );
            assert_eq!(
                pod["automountServiceAccountToken"], false,
                "{at}: no API token"
            );
            assert_ne!(pod["hostNetwork"], true, "{at}: hostNetwork");
            assert_ne!(pod["hostPID"], true, "{at}: hostPID");
            let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
            assert!(
                grace >= 30,
                "{at}: terminationGracePeriodSeconds {grace} leaves no time to drain"
            );
            let cs = containers(pod);
            assert!(!cs.is_empty(), "{at}: no containers");
            for c in cs {
                assert_container_hardened(dir, pod, c);
            }
        }
    }
}

#[test]
fn the_exporter_is_deployed_as_documented() {
    for dir in KUSTOMIZATIONS {
        let objs = objects(dir);
        let w = the_exporter_workload(&objs);
        let at = format!("{dir}: {} {}", kind(w), name(w));
        let pod = &w["spec"]["template"]["spec"];
        let c = exporter_container(w).expect("exporter container");

        // One writer per store: a single replica that never overlaps its successor.
        assert_eq!(w["spec"]["replicas"], 1, "{at}: replicas");
        match kind(w) {
            "StatefulSet" => {}
            "Deployment" => assert_eq!(
                w["spec"]["strategy"]["type"], "Recreate",
                "{at}: a Deployment must Recreate, or two pods share the store"
            ),
            other => panic!("{at}: unexpected workload kind {other}"),
        }

        // The image is this version's.
        assert_eq!(
            c["image"],
            format!("{EXPORTER}:{}", cargo_version()),
            "{at}: image tag follows Cargo.toml's version"
        );

        // Port, probes.
        assert_eq!(
            container_port(c, &json!("http")),
            Some(EXPORTER_PORT),
            "{at}: named port http"
        );
        for (probe, path) in [
            ("livenessProbe", "/-/healthy"),
            ("readinessProbe", "/-/ready"),
        ] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{at}: {probe} path");
            assert_eq!(
                container_port(c, &get["port"]),
                Some(EXPORTER_PORT),
                "{at}: {probe} port"
            );
        }

        // The store on a persistent volume at /data.
        let args = strings(&c["args"]);
        assert!(
            args.contains(&"--storage.path=/data"),
            "{at}: --storage.path=/data"
        );
        let mount = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"] == "/data")
            .unwrap_or_else(|| panic!("{at}: nothing mounted at /data"));
        assert_ne!(mount["readOnly"], true, "{at}: /data must be writable");
        let volume = mount["name"].as_str().expect("mount name");
        let from_template = w["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["metadata"]["name"] == volume);
        let from_pvc = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == volume)
            .and_then(|v| v["persistentVolumeClaim"]["claimName"].as_str())
            .map(|claim| {
                let pvc = find(&objs, "PersistentVolumeClaim", claim);
                assert_eq!(
                    strings(&pvc["spec"]["accessModes"]),
                    ["ReadWriteOnce"],
                    "{at}"
                );
            })
            .is_some();
        assert!(
            from_template || from_pvc,
            "{at}: /data is not on a PersistentVolumeClaim"
        );

        // The webhook token from an optional Secret.
        let token = c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == "LOADIMPACT_EXPORTER_WEBHOOK_TOKEN")
            .unwrap_or_else(|| panic!("{at}: LOADIMPACT_EXPORTER_WEBHOOK_TOKEN"));
        let secret = &token["valueFrom"]["secretKeyRef"];
        assert_eq!(secret["name"], "loadimpact-exporter-webhook", "{at}");
        assert_eq!(secret["optional"], true, "{at}: the Secret is optional");
    }
}

#[test]
fn the_sidecar_runs_the_same_exporter_container_as_the_base() {
    let base = objects("deploy/kubernetes/base");
    let sidecar = objects("deploy/kubernetes/overlays/sidecar");
    let from_base = exporter_container(the_exporter_workload(&base)).expect("base exporter");
    let deployment = find(&sidecar, "Deployment", "prometheus-server");
    let in_sidecar = exporter_container(deployment).expect("sidecar exporter");
    assert_eq!(
        in_sidecar, from_base,
        "the sidecar's exporter container drifted from the base's: run deploy/generate.sh"
    );
    let names: BTreeSet<&str> = containers(&deployment["spec"]["template"]["spec"])
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["prometheus", EXPORTER]),
        "both containers in the pod"
    );
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("grace period");
    assert!(
        grace >= 30,
        "the pod's grace period covers the exporter's drain"
    );
}

// ---------------------------------------------------------------------------
// wiring: Service, Ingress, NetworkPolicy

#[test]
fn services_ingress_and_network_policy_reach_the_exporter() {
    for dir in KUSTOMIZATIONS {
        let objs = objects(dir);
        let w = the_exporter_workload(&objs);
        let pod_labels = &w["spec"]["template"]["metadata"]["labels"];
        let exporter = exporter_container(w).expect("exporter");
        if kind(w) == "StatefulSet" {
            let governing = w["spec"]["serviceName"].as_str().expect("serviceName");
            find(&objs, "Service", governing);
        }
        // The workload's selector matches its own pods.
        assert!(
            selects(&w["spec"]["selector"]["matchLabels"], pod_labels),
            "{dir}: workload selector"
        );

        // The Ingress exposes exactly the webhook path, to the exporter's port.
        let ingresses = of_kind(&objs, "Ingress");
        assert_eq!(ingresses.len(), 1, "{dir}: one Ingress");
        let rules = ingresses[0]["spec"]["rules"].as_array().expect("rules");
        let mut paths = Vec::new();
        for rule in rules {
            for p in rule["http"]["paths"].as_array().expect("paths") {
                paths.push((p["path"].clone(), p["pathType"].clone()));
                let backend = &p["backend"]["service"];
                let svc = find(&objs, "Service", backend["name"].as_str().expect("name"));
                assert!(
                    selects(&svc["spec"]["selector"], pod_labels),
                    "{dir}: Service {} does not select the exporter's pod",
                    name(svc)
                );
                let port = svc["spec"]["ports"]
                    .as_array()
                    .expect("ports")
                    .iter()
                    .find(|sp| {
                        sp["name"] == backend["port"]["name"]
                            || sp["port"] == backend["port"]["number"]
                    })
                    .unwrap_or_else(|| panic!("{dir}: the Ingress's Service port is missing"));
                assert_eq!(
                    container_port(exporter, &port["targetPort"]),
                    Some(EXPORTER_PORT),
                    "{dir}: the Ingress reaches the exporter's port"
                );
            }
        }
        assert_eq!(
            paths,
            [(json!("/webhook"), json!("Exact"))],
            "{dir}: the Ingress exposes /webhook only"
        );
        // Each delivery is held in memory for --dedup.ttl: a flood is slowed.
        let annotations = &ingresses[0]["metadata"]["annotations"];
        assert!(
            annotations["nginx.ingress.kubernetes.io/limit-rps"].is_string(),
            "{dir}: the Ingress rate-limits the webhook"
        );
        assert!(
            ingresses[0]["spec"]["defaultBackend"].is_null(),
            "{dir}: no default backend"
        );

        // The NetworkPolicy applies to the exporter's pod and lets in only the
        // monitoring namespace and the ingress controller.
        let policies: Vec<&Value> = of_kind(&objs, "NetworkPolicy")
            .into_iter()
            .filter(|np| selects(&np["spec"]["podSelector"]["matchLabels"], pod_labels))
            .collect();
        assert_eq!(
            policies.len(),
            1,
            "{dir}: one NetworkPolicy selects the exporter's pod"
        );
        let np = policies[0];
        assert!(
            strings(&np["spec"]["policyTypes"]).contains(&"Ingress"),
            "{dir}"
        );
        let mut namespaces = BTreeSet::new();
        for rule in np["spec"]["ingress"].as_array().expect("ingress rules") {
            let from = rule["from"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert!(
                !from.is_empty(),
                "{dir}: a rule without `from` lets everyone in"
            );
            for peer in from {
                assert!(peer["ipBlock"].is_null(), "{dir}: no ipBlock peers");
                let ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{dir}: every peer names its namespace: {peer}"));
                if ns == "ingress-nginx" {
                    assert_eq!(
                        string_map(&peer["podSelector"]["matchLabels"]),
                        BTreeMap::from([(
                            "app.kubernetes.io/name".to_owned(),
                            "ingress-nginx".to_owned()
                        )]),
                        "{dir}: only the controller's pods"
                    );
                }
                namespaces.insert(ns.to_owned());
            }
            let ports = rule["ports"].as_array().expect("rule ports");
            assert!(!ports.is_empty(), "{dir}: a rule names its ports");
            for p in ports {
                let reached = containers(&w["spec"]["template"]["spec"])
                    .iter()
                    .find_map(|c| container_port(c, &p["port"]))
                    .unwrap_or_else(|| panic!("{dir}: port {} is no container's", p["port"]));
                assert!(reached > 0, "{dir}");
            }
        }
        assert!(
            namespaces.contains("ingress-nginx"),
            "{dir}: the ingress controller must reach the webhook"
        );
        let allowed: BTreeSet<String> = ["monitoring", "ingress-nginx"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(
            namespaces.is_subset(&allowed),
            "{dir}: peers {namespaces:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Prometheus Operator objects

#[test]
fn the_service_monitor_matches_the_schema_and_the_service() {
    let check = common::require_tool("check-jsonschema");
    let schema = "deploy/schemas/servicemonitor.schema.json";
    let objs = objects("deploy/kubernetes/overlays/kube-prometheus");
    let sm = find(&objs, "ServiceMonitor", EXPORTER);
    let tmp = tempfile::tempdir().expect("temp dir");
    let good = write_temp(&tmp, "servicemonitor.json", &sm.to_string());
    run_ok(
        &check,
        &["--schemafile", schema, good.to_str().expect("utf-8")],
    );

    // The schema refuses a misspelt field: the check above can fail.
    let mut bad = sm.clone();
    bad["spec"]["endpoints"][0]["intervall"] = json!("30s");
    let bad = write_temp(&tmp, "bad.json", &bad.to_string());
    let output = run(
        &check,
        &["--schemafile", schema, bad.to_str().expect("utf-8")],
    );
    assert!(
        !output.status.success(),
        "the schema accepted a typo\n{}",
        text(&output)
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
    let endpoints = sm["spec"]["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1);
    let port_names: Vec<&Value> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| &p["name"])
        .collect();
    assert!(
        port_names.contains(&&endpoints[0]["port"]),
        "the endpoint port exists"
    );
    assert_eq!(endpoints[0]["path"], "/metrics");
    // The job label is the Service's name: what the rules and dashboards select.
    assert!(sm["spec"]["jobLabel"].is_null());
    assert_eq!(name(svc), EXPORTER);
}

fn rules_file_groups() -> Value {
    let rules = parse_yaml(&read(RULES_FILE), RULES_FILE);
    let groups = rules["groups"].clone();
    assert!(
        groups.as_array().is_some_and(|g| !g.is_empty()),
        "{RULES_FILE} has no groups"
    );
    groups
}

#[test]
fn the_prometheus_rule_agrees_with_the_rules_file_and_passes_promtool() {
    let promtool = common::require_tool("promtool");
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
            text(&output)
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

// ---------------------------------------------------------------------------
// dashboards

fn dashboards() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join("dashboards"))
        .expect("dashboards/")
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            out.insert(
                name,
                std::fs::read_to_string(&path).expect("read dashboard"),
            );
        }
    }
    for wanted in ["loadimpact-overview.json", "loadimpact-project.json"] {
        assert!(out.contains_key(wanted), "dashboards/{wanted} is missing");
    }
    out
}

#[test]
fn the_dashboards_configmap_is_byte_identical_to_dashboards() {
    let expected = dashboards();
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

// ---------------------------------------------------------------------------
// plain Prometheus, the sidecar's Prometheus, compose

/// The static targets of the scrape job `loadimpact-exporter` of a Prometheus
/// configuration (panics when the job is missing).
fn exporter_job_targets(file: &str) -> Value {
    let config = parse_yaml(&read(file), file);
    let job = config["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .find(|s| s["job_name"] == EXPORTER)
        .unwrap_or_else(|| panic!("{file}: no scrape job {EXPORTER}"));
    job["static_configs"][0]["targets"].clone()
}

#[test]
fn the_prometheus_configurations_pass_promtool() {
    let promtool = common::require_tool("promtool");
    for file in [
        "deploy/prometheus/prometheus.yml",
        "deploy/kubernetes/overlays/sidecar/prometheus.yml",
    ] {
        // `check config` also checks the rule files it names.
        let output = run_ok(&promtool, &["check", "config", file]);
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("SUCCESS: 1 rule files found"),
            "{file} loads the rules\n{}",
            text(&output)
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
        json!([format!("localhost:{EXPORTER_PORT}")])
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

#[test]
fn the_compose_stack_is_valid_and_complete() {
    let check = common::require_tool("check-jsonschema");
    run_ok(
        &check,
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            "docker-compose.yml",
        ],
    );
    let compose = parse_yaml(&read("docker-compose.yml"), "docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for wanted in [EXPORTER, "prometheus", "alertmanager", "grafana", "tempo"] {
        assert!(
            names.contains(wanted),
            "docker-compose.yml: service {wanted}"
        );
    }
    for (service, def) in services {
        let image = def["image"].as_str().unwrap_or_default();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        assert!(
            !tag.is_empty() && tag != "latest",
            "{service}: image {image} not pinned"
        );
        // Every file or directory it mounts from the repository exists.
        for volume in strings(&def["volumes"]) {
            if let Some(source) = volume.strip_prefix("./") {
                let source = source.split(':').next().expect("source");
                assert!(
                    repo().join(source).exists(),
                    "{service} mounts ./{source}, which does not exist"
                );
            }
        }
    }
    let exporter = &services[EXPORTER];
    assert_eq!(exporter["image"], format!("{EXPORTER}:{}", cargo_version()));
    assert_eq!(
        exporter["build"], ".",
        "the exporter is built from the Dockerfile"
    );
    assert_eq!(
        exporter["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"],
        "http://tempo:4317"
    );
    // Port 4317 is OTLP/gRPC; the exporter's default protocol is http/protobuf.
    assert_eq!(
        exporter["environment"]["OTEL_EXPORTER_OTLP_PROTOCOL"],
        "grpc"
    );
    assert_eq!(exporter["read_only"], true);
    assert!(strings(&exporter["cap_drop"]).contains(&"ALL"));
    assert!(strings(&exporter["volumes"]).contains(&"exporter-data:/data"));
    assert!(strings(&services["prometheus"]["volumes"])
        .contains(&"./deploy/prometheus:/etc/prometheus:ro"));
    assert!(strings(&services["alertmanager"]["volumes"])
        .iter()
        .any(|v| v.starts_with("./deploy/prometheus/alertmanager.yml:")));
    assert!(strings(&services["grafana"]["volumes"])
        .iter()
        .any(|v| v.starts_with("./dashboards:")));
    // Prometheus in compose scrapes the exporter by its service name.
    assert_eq!(
        exporter_job_targets("deploy/prometheus/prometheus.yml"),
        json!([format!("{EXPORTER}:{EXPORTER_PORT}")])
    );

    // Every host the stack's configurations name is one of its services.
    let hosts: Vec<String> = [
        "deploy/prometheus/prometheus.yml",
        "deploy/compose/grafana/provisioning/datasources/datasources.yml",
    ]
    .iter()
    .map(|f| read(f))
    .chain(std::iter::once(
        exporter["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ))
    .flat_map(|text| {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split([' ', '"', '\'', '[', ']']))
            .filter_map(|word| {
                let word = word.trim_start_matches("http://");
                let (host, port) = word.split_once(':')?;
                port.parse::<u16>().ok().map(|_| host.to_owned())
            })
            .collect::<Vec<_>>()
    })
    .collect();
    assert!(hosts.len() >= 6, "found the hosts: {hosts:?}");
    for host in &hosts {
        assert!(
            host == "localhost" || names.contains(host.as_str()),
            "{host} is not a service of docker-compose.yml"
        );
    }

    // The Grafana provisioning: the data sources the stack needs, and the
    // dashboards directory the compose file mounts.
    let datasources = parse_yaml(
        &read("deploy/compose/grafana/provisioning/datasources/datasources.yml"),
        "datasources.yml",
    );
    let types: BTreeSet<&str> = datasources["datasources"]
        .as_array()
        .expect("datasources")
        .iter()
        .filter_map(|d| d["type"].as_str())
        .collect();
    for wanted in ["prometheus", "alertmanager", "tempo"] {
        assert!(types.contains(wanted), "data source {wanted}");
    }
    // Each data source variable of the dashboards finds one of its type.
    for (file, dashboard) in dashboards() {
        let dashboard: Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
        for var in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if var["type"] == "datasource" {
                let wanted = var["query"].as_str().expect("data source type");
                assert!(
                    types.contains(wanted),
                    "{file}: variable {} needs a {wanted} data source",
                    var["name"]
                );
            }
        }
    }
    let providers = parse_yaml(
        &read("deploy/compose/grafana/provisioning/dashboards/dashboards.yml"),
        "dashboards.yml",
    );
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    assert!(
        strings(&services["grafana"]["volumes"])
            .contains(&format!("./dashboards:{path}:ro").as_str()),
        "Grafana loads the mounted dashboards"
    );
}

// ---------------------------------------------------------------------------
// YAML style

#[test]
fn all_yaml_passes_yamllint() {
    let yamllint = common::require_tool("yamllint");
    let listed = run_ok(&yamllint, &["-c", ".yamllint", "--list-files", "."]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    for wanted in [
        "docker-compose.yml",
        "deploy/kubernetes/base/statefulset.yaml",
        "deploy/prometheus/prometheus.yml",
        RULES_FILE,
    ] {
        assert!(
            listed.lines().any(|l| l.trim_start_matches("./") == wanted),
            "yamllint does not see {wanted}"
        );
    }
    assert!(
        !listed
            .lines()
            .any(|l| l.contains("target/") || l.contains(".venv-tools/")),
        "yamllint must skip target/ and .venv-tools/"
    );
    run_ok(
        &yamllint,
        &["--strict", "-c", ".yamllint", "-f", "parsable", "."],
    );
}

// ---------------------------------------------------------------------------
// Dockerfile (no docker engine here: its content is checked, not built)

#[test]
fn the_dockerfile_builds_a_nonroot_distroless_image() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<String> = dockerfile
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let froms: Vec<&String> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "two stages");
    assert!(
        froms[0].starts_with("FROM rust:1-bookworm AS "),
        "{}",
        froms[0]
    );
    assert_eq!(froms[1], "FROM gcr.io/distroless/cc-debian12:nonroot");
    let last_stage: Vec<&String> = instructions
        .iter()
        .skip_while(|l| !l.starts_with("FROM gcr.io/"))
        .collect();
    let has = |line: &str| last_stage.iter().any(|l| l.as_str() == line);
    assert!(has("USER 65532:65532"), "runs as 65532");
    assert!(has("VOLUME [\"/data\"]"), "the store is a volume");
    assert!(has("EXPOSE 16565"));
    assert!(has("ENV LOADIMPACT_EXPORTER_STORAGE_PATH=/data"));
    assert!(has("ENTRYPOINT [\"/usr/local/bin/loadimpact-exporter\"]"));
    assert!(
        instructions
            .iter()
            .any(|l| l.contains("cargo build --release --locked --bin loadimpact-exporter")),
        "a locked release build"
    );

    // The build context keeps what cargo needs, and keeps out the heavy parts.
    let context = DockerContext::from_dockerignore();
    for heavy in ["target", ".git", ".venv-tools", "data"] {
        assert!(!context.includes(heavy), ".dockerignore keeps out {heavy}");
    }
    // Lay the context out as `docker build` would send it, and let cargo load
    // it: the manifest, every target it names and an up-to-date lock file
    // must be there (`cargo build --locked` in the image needs all three).
    let tmp = tempfile::tempdir().expect("temp dir");
    context.copy_to(tmp.path());
    // (build.rs stamps the revision the sources read with env!: without it the
    // build fails, yet cargo loads the manifest happily.)
    let mut needed = vec!["Cargo.toml", "Cargo.lock", "src/main.rs"];
    if repo().join("build.rs").exists() {
        needed.push("build.rs");
    }
    for needed in needed {
        assert!(
            tmp.path().join(needed).exists(),
            "the build context lacks {needed}"
        );
    }
    let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    // Not --offline: metadata reads the manifest of every package in the lock
    // file, the other platforms' too, and a machine that only ever built for
    // Linux has never downloaded those. Cargo fetches what it lacks.
    let output = Command::new(&cargo)
        .args(["metadata", "--locked", "--format-version", "1"])
        .current_dir(tmp.path())
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo cannot load the Docker build context\n{}",
        text(&output)
    );
    // Files the sources include at compile time are in the context too.
    for file in rust_files(&tmp.path().join("src")) {
        let source = std::fs::read_to_string(&file).expect("read source");
        for marker in ["include_str!(\"", "include_bytes!(\""] {
            for (i, _) in source.match_indices(marker) {
                let rest = &source[i + marker.len()..];
                let included = &rest[..rest.find('"').expect("closing quote")];
                let path = file.parent().expect("dir").join(included);
                assert!(
                    path.exists(),
                    "{} includes {included}, which .dockerignore leaves out",
                    file.display()
                );
            }
        }
    }
}

/// The Docker build context: the repository's top-level entries that
/// `.dockerignore` does not exclude. Only top-level names and `*` globs are
/// understood; the test refuses other patterns rather than misread them.
struct DockerContext {
    entries: Vec<String>,
}

impl DockerContext {
    fn from_dockerignore() -> DockerContext {
        let patterns: Vec<String> = read(".dockerignore")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        for p in &patterns {
            assert!(
                !p.contains('/') && !p.starts_with('!') && !p.contains("**"),
                ".dockerignore pattern {p:?}: extend DockerContext in tests/packaging.rs to read it"
            );
        }
        let entries = std::fs::read_dir(repo())
            .expect("read repo")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !patterns.iter().any(|p| glob_matches(p, name)))
            .collect();
        DockerContext { entries }
    }

    fn includes(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e == name)
    }

    fn copy_to(&self, dest: &Path) {
        fn copy(from: &Path, to: &Path) {
            if from.is_dir() {
                std::fs::create_dir_all(to).expect("mkdir");
                for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
                    copy(&entry.path(), &to.join(entry.file_name()));
                }
            } else if from.is_file() {
                std::fs::copy(from, to).expect("copy");
            }
        }
        for entry in &self.entries {
            copy(&repo().join(entry), &dest.join(entry));
        }
    }
}

/// A single-segment glob with `*` wildcards, as Docker matches a top-level name.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// the manifests against the real binary

#[test]
fn the_manifest_flags_probes_and_webhook_path_work_on_the_real_binary() {
    let objs = objects("deploy/kubernetes/base");
    let sts = find(&objs, "StatefulSet", EXPORTER);
    let c = exporter_container(sts).expect("exporter");
    // The manifest's own flags, but on a free port and a temporary store.
    let args: Vec<&str> = strings(&c["args"])
        .into_iter()
        .filter(|a| !a.starts_with("--web.listen-address=") && !a.starts_with("--storage.path="))
        .collect();
    let mut exporter = common::Exporter::start(&args);
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().expect("probe path");
        let resp = common::get(&exporter.url(path));
        assert_eq!(resp.status, 200, "{probe} {path}: {}", resp.body);
    }
    // The one path the Ingress exposes is where the exporter takes webhooks.
    let ingress = find(&objs, "Ingress", EXPORTER);
    let path = ingress["spec"]["rules"][0]["http"]["paths"][0]["path"]
        .as_str()
        .expect("ingress path");
    let resp = common::request(
        "POST",
        &exporter.url(path),
        &[
            ("Content-Type", "application/json"),
            ("X-LoadImpact-Event", "test.notification_channel"),
        ],
        Some(br#"{"event": "test.notification_channel"}"#),
    );
    assert_eq!(resp.status, 200, "POST {path}: {}", resp.body);

    // SIGTERM: the exporter is gone well within the grace period.
    let grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    let started = Instant::now();
    let status = exporter.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(
        started.elapsed() < Duration::from_secs(grace),
        "took {:?} to stop, grace period is {grace}s",
        started.elapsed()
    );

    // The Dockerfile's environment variable is one the binary reads.
    let help = run_ok(&common::exporter_bin(), &["--help"]);
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("LOADIMPACT_EXPORTER_STORAGE_PATH"),
        "the binary reads LOADIMPACT_EXPORTER_STORAGE_PATH"
    );
}

#[test]
fn the_compose_environment_is_accepted_by_the_binary() {
    // The exporter service's environment, as docker-compose.yml sets it, on
    // the real binary: it starts and gets ready (the Tempo host need not
    // exist: spans wait in the outbox).
    let compose = parse_yaml(&read("docker-compose.yml"), "docker-compose.yml");
    let env: Vec<(String, String)> = compose["services"][EXPORTER]["environment"]
        .as_object()
        .expect("environment map")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string value").to_owned()))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let exporter = common::Exporter::start_with_env(&[], &env);
    let resp = common::get(&exporter.url("/-/ready"));
    assert_eq!(resp.status, 200, "{}", resp.body);
}
