//! Packaging for Kubernetes: every kustomization renders (`kubectl
//! kustomize`) and validates offline (`kubernetes-validate --strict` against a
//! pinned Kubernetes version) with the objects it must have; every workload is
//! hardened (security settings, probes, resources, pinned images); the
//! exporter is deployed as documented (one writer per store, its volume, its
//! token); the Service, Ingress and NetworkPolicy reach it; and the manifest's
//! own flags, probes and webhook path work on the real binary.
//!
//! The rendered objects are parsed and asserted one by one, so that a later
//! change cannot drop a setting silently.

mod manifests;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use manifests::*;
use serde_json::{json, Value};
use support::deliveries::{self, test_hook};
use support::exporter::{run_binary, Exporter};
use support::files::{parse_yaml, parse_yaml_documents, repo, write_temp};
use support::http::get;
use support::tools::{assert_success, describe};

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
    let tmp = tempfile::tempdir().expect("temp dir");
    for dir in KUSTOMIZATIONS {
        let rendered = render(dir);
        let objs = parse_yaml_documents(&rendered, dir);
        assert!(!objs.is_empty(), "{dir} renders nothing");
        let file = write_temp(&tmp, &format!("{}.yaml", dir.replace('/', "_")), &rendered);
        let output = kubernetes_validate(&file);
        assert_success(&output, &format!("kubernetes-validate of {dir}"));
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
    let objs = objects("deploy/kubernetes/base");
    let mut sts = find(&objs, "StatefulSet", EXPORTER).clone();
    sts["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] =
        json!(true);
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = write_temp(&tmp, "broken.json", &sts.to_string());
    let output = kubernetes_validate(&file);
    assert!(
        !output.status.success(),
        "a broken manifest passed\n{}",
        describe(&output)
    );
    assert!(
        describe(&output).contains("readOnlyRootFileSystem"),
        "the error names the field\n{}",
        describe(&output)
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
        let mount = items(&c["volumeMounts"])
            .find(|m| m["mountPath"] == "/data")
            .unwrap_or_else(|| panic!("{at}: nothing mounted at /data"));
        assert_ne!(mount["readOnly"], true, "{at}: /data must be writable");
        let volume = mount["name"].as_str().expect("mount name");
        let from_template =
            items(&w["spec"]["volumeClaimTemplates"]).any(|t| t["metadata"]["name"] == volume);
        let from_pvc = items(&pod["volumes"])
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
        let token = items(&c["env"])
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
    let mut exporter = Exporter::start(&args);
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().expect("probe path");
        let resp = get(&exporter.url(path));
        assert_eq!(resp.status, 200, "{probe} {path}: {}", resp.body);
    }
    // The one path the Ingress exposes is where the exporter takes webhooks.
    let ingress = find(&objs, "Ingress", EXPORTER);
    let path = ingress["spec"]["rules"][0]["http"]["paths"][0]["path"]
        .as_str()
        .expect("ingress path");
    let resp = deliveries::post_fresh(&exporter.url(path), &test_hook());
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
    let help = run_binary(&["--help"]);
    assert_success(&help, "loadimpact-exporter --help");
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("LOADIMPACT_EXPORTER_STORAGE_PATH"),
        "the binary reads LOADIMPACT_EXPORTER_STORAGE_PATH"
    );
}
