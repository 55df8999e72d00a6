//! Packaging for Kubernetes: every kustomization renders (`kubectl
//! kustomize`), validates offline (`kubernetes-validate --strict` against a
//! pinned Kubernetes version) and lints (`yamllint`) with the objects it must
//! have; every workload is hardened (security settings, probes, resources,
//! pinned images); the exporter is deployed as documented (one writer per
//! store, its volume, two listeners, probes on the metrics port, its token
//! from a Secret mounted as a file); the Ingress reaches only the webhook
//! port, the NetworkPolicy lets only the monitoring namespace reach the
//! metrics port; the documented overlay replaces the placeholder token; and
//! the manifest's own flags, token file, probes and webhook path work on the
//! real binary.
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
use support::files::{parse_yaml, parse_yaml_documents, read, repo, write_temp};
use support::http::get;
use support::tools::{assert_success, describe, require_tool, run};
use support::wait_for;

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
                // The pieces of the base and of the ha overlay (generated
                // dashboards, the Secrets) are applied through the
                // kustomizations that include them.
                if doc["kind"] == "Kustomization"
                    && !rel.ends_with("base/dashboards")
                    && !rel.ends_with("base/webhook-token")
                    && !rel.ends_with("ha/redis-url")
                {
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
    let yamllint = require_tool("yamllint");
    let tmp = tempfile::tempdir().expect("temp dir");
    for dir in KUSTOMIZATIONS {
        let rendered = render(dir);
        let objs = parse_yaml_documents(&rendered, dir);
        assert!(!objs.is_empty(), "{dir} renders nothing");
        let file = write_temp(&tmp, &format!("{}.yaml", dir.replace('/', "_")), &rendered);
        // What kubectl applies is lint-clean too (duplicate keys, truthy
        // values, syntax), in kustomize's own layout: its sequences are not
        // indented, and the dashboards' JSON makes long lines.
        assert_success(
            &run(
                &yamllint,
                &[
                    "--strict",
                    "-d",
                    RENDERED_YAMLLINT,
                    file.to_str().expect("utf-8 path"),
                ],
            ),
            &format!("yamllint of the rendered {dir}"),
        );
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

/// yamllint's rules for kustomize's output (see above).
const RENDERED_YAMLLINT: &str = "{extends: default, rules: {line-length: disable, \
     document-start: disable, indentation: {spaces: 2, indent-sequences: consistent}}}";

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
                ("Secret", WEBHOOK_SECRET),
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
                ("Secret", WEBHOOK_SECRET),
            ],
        ),
        (
            "deploy/kubernetes/overlays/ha",
            &[
                ("ServiceAccount", EXPORTER),
                ("Deployment", EXPORTER),
                ("PodDisruptionBudget", EXPORTER),
                ("Service", EXPORTER),
                ("Ingress", EXPORTER),
                ("NetworkPolicy", EXPORTER),
                ("ConfigMap", "loadimpact-exporter-dashboards"),
                ("Secret", WEBHOOK_SECRET),
                ("Secret", "loadimpact-exporter-redis"),
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
                ("Secret", WEBHOOK_SECRET),
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

/// What a workload on the Redis backend needs: two replicas or more, a
/// rolling update that starts a new pod before it stops an old one, a
/// PodDisruptionBudget and a spread over nodes, and the Redis URL from a
/// Secret mounted as a file (never in the arguments or the environment).
fn several_replicas_on_redis(objs: &[Value], w: &Value, at: &str) {
    let c = exporter_container(w).expect("exporter container");
    let pod = &w["spec"]["template"]["spec"];
    assert_eq!(
        kind(w),
        "Deployment",
        "{at}: replicas on Redis are a Deployment"
    );
    assert!(
        w["spec"]["replicas"].as_i64().is_some_and(|n| n >= 2),
        "{at}: at least two replicas"
    );
    assert_eq!(w["spec"]["strategy"]["type"], "RollingUpdate", "{at}");
    assert_eq!(
        w["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
        "{at}: a rollout never has fewer replicas ready"
    );
    let pod_labels = &w["spec"]["template"]["metadata"]["labels"];
    let budgets: Vec<_> = of_kind(objs, "PodDisruptionBudget")
        .into_iter()
        .filter(|b| selects(&b["spec"]["selector"]["matchLabels"], pod_labels))
        .collect();
    assert_eq!(
        budgets.len(),
        1,
        "{at}: one PodDisruptionBudget for the replicas"
    );
    assert!(
        budgets[0]["spec"]["maxUnavailable"] == 1 || budgets[0]["spec"]["minAvailable"] == 1,
        "{at}: the budget keeps one replica up: {}",
        budgets[0]["spec"]
    );
    let spread = items(&pod["topologySpreadConstraints"]).any(|t| {
        t["topologyKey"] == "kubernetes.io/hostname"
            && selects(&t["labelSelector"]["matchLabels"], pod_labels)
    });
    assert!(spread, "{at}: the replicas spread over nodes");
    let args = strings(&c["args"]);
    assert!(
        flag(&args, "--storage.redis-url").is_none(),
        "{at}: the Redis URL (and its password) must not be an argument"
    );
    assert!(
        items(&c["env"]).all(|e| e["name"] != "LOADIMPACT_EXPORTER_REDIS_URL"),
        "{at}: the Redis URL must come from a mounted Secret"
    );
    let file = flag(&args, "--storage.redis-url-file")
        .unwrap_or_else(|| panic!("{at}: --storage.redis-url-file"));
    let (dir, key) = file.rsplit_once('/').expect("a path");
    let mount = items(&c["volumeMounts"])
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("{at}: nothing mounted at {dir}"));
    assert_eq!(mount["readOnly"], true, "{at}: the Redis Secret read-only");
    let volume = items(&pod["volumes"])
        .find(|v| v["name"] == mount["name"])
        .expect("the Redis volume");
    let secret = volume["secret"]["secretName"]
        .as_str()
        .expect("a Secret volume");
    assert!(
        items(&volume["secret"]["items"]).any(|i| i["path"] == key),
        "{at}: the Secret's item is {key}"
    );
    let shipped = find(objs, "Secret", secret);
    assert!(
        shipped["data"][key].is_string(),
        "{at}: the Secret {secret} ships a {key}"
    );
}

#[test]
fn the_exporter_is_deployed_as_documented() {
    for dir in KUSTOMIZATIONS {
        let objs = objects(dir);
        let w = the_exporter_workload(&objs);
        let at = format!("{dir}: {} {}", kind(w), name(w));
        let pod = &w["spec"]["template"]["spec"];
        let c = exporter_container(w).expect("exporter container");

        let args = strings(&c["args"]);
        let replicated = args.contains(&"--storage.backend=redis");
        if replicated {
            several_replicas_on_redis(&objs, w, &at);
        } else {
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
        }

        // The image is this version's.
        assert_eq!(
            c["image"],
            format!("{EXPORTER}:{}", cargo_version()),
            "{at}: image tag follows Cargo.toml's version"
        );

        // Two named ports, each the one its listener's flag binds.
        assert_eq!(
            container_port(c, &json!(METRICS_PORT_NAME)),
            Some(METRICS_PORT),
            "{at}: named port {METRICS_PORT_NAME}"
        );
        assert_eq!(
            container_port(c, &json!(WEBHOOK_PORT_NAME)),
            Some(WEBHOOK_PORT),
            "{at}: named port {WEBHOOK_PORT_NAME}"
        );
        assert_eq!(items(&c["ports"]).count(), 2, "{at}: two ports");
        let main = flag(&args, "--web.listen-address").expect("--web.listen-address");
        assert_eq!(address_port(main), METRICS_PORT, "{at}: {main}");
        let hook = flag(&args, "--webhook.listen-address")
            .unwrap_or_else(|| panic!("{at}: the webhook needs its own listener"));
        assert_eq!(address_port(hook), WEBHOOK_PORT, "{at}: {hook}");

        // Every probe on the metrics port (the webhook port serves no probe).
        for (probe, path) in [
            ("startupProbe", "/-/healthy"),
            ("livenessProbe", "/-/healthy"),
            ("readinessProbe", "/-/ready"),
        ] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{at}: {probe} path");
            assert_eq!(
                container_port(c, &get["port"]),
                Some(METRICS_PORT),
                "{at}: {probe} on the metrics port"
            );
        }

        // The store on a persistent volume at /data (with Redis, each
        // replica's snapshot in a volume of its own, an emptyDir).
        assert!(
            args.contains(&"--storage.path=/data"),
            "{at}: --storage.path=/data"
        );
        let mount = items(&c["volumeMounts"])
            .find(|m| m["mountPath"] == "/data")
            .unwrap_or_else(|| panic!("{at}: nothing mounted at /data"));
        assert_ne!(mount["readOnly"], true, "{at}: /data must be writable");
        let volume = mount["name"].as_str().expect("mount name");
        let from_empty_dir = items(&pod["volumes"])
            .find(|v| v["name"] == volume)
            .is_some_and(|v| v["emptyDir"].is_object());
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
        if replicated {
            assert!(
                from_empty_dir,
                "{at}: a replica's snapshot is its own emptyDir"
            );
        } else {
            assert!(
                from_template || from_pvc,
                "{at}: /data is not on a PersistentVolumeClaim"
            );
        }

        // The webhook's tokens: the Secret, mounted read-only as a file,
        // named by --webhook.token-file; never in the environment.
        let mount = token_mount(w, &at);
        assert_eq!(mount.path(), TOKEN_FILE, "{at}: the documented path");
        assert_eq!(
            flag(&args, "--webhook.token-file"),
            Some(mount.path().as_str()),
            "{at}: --webhook.token-file names the mounted Secret's file"
        );
        for e in items(&c["env"]) {
            assert!(
                !e["name"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("LOADIMPACT_EXPORTER_WEBHOOK_TOKEN"),
                "{at}: the token (file) comes from the flag, not {}",
                e["name"]
            );
            assert_ne!(
                e["valueFrom"]["secretKeyRef"]["name"], WEBHOOK_SECRET,
                "{at}: the token must not be in the environment"
            );
        }
        assert!(
            items(&c["envFrom"]).all(|e| e["secretRef"]["name"] != WEBHOOK_SECRET),
            "{at}: the token must not be in the environment"
        );
        // The Secret ships beside the workload, with a token the exporter
        // takes, plainly a placeholder.
        let secret = find(&objs, "Secret", WEBHOOK_SECRET);
        assert_eq!(
            secret["metadata"]["namespace"], w["metadata"]["namespace"],
            "{at}: the Secret is in the pod's namespace"
        );
        let shipped = secret_value(&objs, WEBHOOK_SECRET, WEBHOOK_SECRET_KEY);
        let tokens = tokens_of(&shipped);
        assert_eq!(tokens.len(), 1, "{at}: one placeholder token: {shipped}");
        assert!(
            tokens[0].to_lowercase().contains("placeholder")
                && shipped.contains("README.md, \"Deploying\""),
            "{at}: the shipped token must say it is a placeholder, and where to replace it"
        );
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
    // The token Secret's volume too.
    let token_volume = |w: &Value| {
        items(&w["spec"]["template"]["spec"]["volumes"])
            .find(|v| v["secret"]["secretName"] == WEBHOOK_SECRET)
            .cloned()
    };
    assert_eq!(
        token_volume(deployment),
        token_volume(the_exporter_workload(&base)),
        "the sidecar's token volume drifted from the base's: run deploy/generate.sh"
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
fn the_ingress_reaches_only_the_webhook_port_and_the_network_policy_splits_the_ports() {
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

        // The Ingress exposes the webhook path (and the token segment under
        // it), and only to the webhook port: never to the metrics port.
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
                let target = service_port_target(svc, &backend["port"], exporter)
                    .unwrap_or_else(|| panic!("{dir}: the Ingress's Service port is missing"));
                assert_eq!(
                    target, WEBHOOK_PORT,
                    "{dir}: the Ingress must reach the webhook port"
                );
                assert_ne!(
                    target, METRICS_PORT,
                    "{dir}: the Ingress reaches the metrics port"
                );
            }
        }
        assert_eq!(
            paths,
            [(json!("/webhook"), json!("Prefix"))],
            "{dir}: the Ingress exposes /webhook and /webhook/<token> only"
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
        // No Service of the exporter's pod is anything but ClusterIP (no
        // NodePort or LoadBalancer opening the metrics port outside).
        for svc in of_kind(&objs, "Service") {
            if selects(&svc["spec"]["selector"], pod_labels) {
                assert_eq!(svc["spec"]["type"], "ClusterIP", "{dir}: {}", name(svc));
            }
        }

        // One NetworkPolicy applies to the exporter's pod. Each rule names
        // its ports and its peers; the metrics port is reached only from the
        // monitoring namespace, the webhook port only from the ingress
        // controller's pods, and no rule opens both.
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
        let pod_containers = containers(&w["spec"]["template"]["spec"]);
        let mut reached: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
        for rule in np["spec"]["ingress"].as_array().expect("ingress rules") {
            let from = rule["from"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert!(
                !from.is_empty(),
                "{dir}: a rule without `from` lets everyone in"
            );
            let ports = rule["ports"].as_array().expect("rule ports");
            assert!(!ports.is_empty(), "{dir}: a rule names its ports");
            let ports: Vec<i64> = ports
                .iter()
                .map(|p| {
                    pod_containers
                        .iter()
                        .find_map(|c| container_port(c, &p["port"]))
                        .unwrap_or_else(|| panic!("{dir}: port {} is no container's", p["port"]))
                })
                .collect();
            assert!(
                !(ports.contains(&METRICS_PORT) && ports.contains(&WEBHOOK_PORT)),
                "{dir}: one rule opens both the metrics and the webhook port"
            );
            for peer in from {
                assert!(peer["ipBlock"].is_null(), "{dir}: no ipBlock peers");
                let ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{dir}: every peer names its namespace: {peer}"));
                let peer_name = if ns == "ingress-nginx" {
                    assert_eq!(
                        string_map(&peer["podSelector"]["matchLabels"]),
                        BTreeMap::from([(
                            "app.kubernetes.io/name".to_owned(),
                            "ingress-nginx".to_owned()
                        )]),
                        "{dir}: only the controller's pods"
                    );
                    "ingress-nginx controller".to_owned()
                } else {
                    assert!(
                        peer["podSelector"].is_null(),
                        "{dir}: the {ns} namespace as a whole"
                    );
                    ns.to_owned()
                };
                for port in &ports {
                    reached.entry(*port).or_default().insert(peer_name.clone());
                }
            }
        }
        let only = |peer: &str| BTreeSet::from([peer.to_owned()]);
        assert_eq!(
            reached.get(&WEBHOOK_PORT),
            Some(&only("ingress-nginx controller")),
            "{dir}: the webhook port from the ingress controller only"
        );
        // The sidecar's Prometheus scrapes over localhost: there no rule
        // needs the metrics port; elsewhere Prometheus must reach it.
        let metrics_peers = reached.get(&METRICS_PORT).cloned().unwrap_or_default();
        if name(w) == EXPORTER {
            assert_eq!(
                metrics_peers,
                only(MONITORING_NAMESPACE),
                "{dir}: the metrics port from the {MONITORING_NAMESPACE} namespace only"
            );
        } else {
            assert!(
                metrics_peers.is_subset(&only(MONITORING_NAMESPACE)),
                "{dir}: the metrics port from {metrics_peers:?}"
            );
        }
        for (port, peers) in &reached {
            assert!(
                peers.is_subset(&BTreeSet::from([
                    MONITORING_NAMESPACE.to_owned(),
                    "ingress-nginx controller".to_owned()
                ])),
                "{dir}: port {port} from {peers:?}"
            );
        }
    }
}

/// A directory laid out as the kubelet lays out a Secret volume: each
/// version of the Secret in a directory of its own, `..data` a symlink to
/// the current one, and each key a symlink through `..data`. An update
/// swaps `..data` in one rename, as the kubelet does.
struct SecretVolume {
    dir: tempfile::TempDir,
    key: String,
    versions: usize,
}

impl SecretVolume {
    fn new(key: &str, value: &str) -> SecretVolume {
        let mut volume = SecretVolume {
            dir: tempfile::tempdir().expect("temp dir"),
            key: key.to_owned(),
            versions: 0,
        };
        volume.update(value);
        std::os::unix::fs::symlink(format!("..data/{key}"), volume.dir.path().join(&volume.key))
            .expect("symlink the key");
        volume
    }

    /// The Secret changes: a new version, then `..data` swapped to it.
    fn update(&mut self, value: &str) {
        self.versions += 1;
        let version = format!("..{}", self.versions);
        let root = self.dir.path();
        std::fs::create_dir(root.join(&version)).expect("version dir");
        std::fs::write(root.join(&version).join(&self.key), value).expect("write the key");
        std::os::unix::fs::symlink(&version, root.join("..data_tmp")).expect("symlink ..data");
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap ..data");
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[test]
fn the_manifest_flags_token_file_probes_and_webhook_path_work_on_the_real_binary() {
    let objs = objects("deploy/kubernetes/base");
    let sts = find(&objs, "StatefulSet", EXPORTER);
    let c = exporter_container(sts).expect("exporter");
    let mount = token_mount(sts, "the base StatefulSet");
    let shipped = secret_value(&objs, WEBHOOK_SECRET, WEBHOOK_SECRET_KEY);
    let placeholder = tokens_of(&shipped)[0].to_owned();

    // The Secret as the pod has it, in a directory of our own.
    let mut volume = SecretVolume::new(&mount.file, &shipped);

    // The manifest's own flags, each one: the two listeners on free loopback
    // ports (the launcher's), the store in a temporary directory, the token
    // file under that directory. Every other flag as it is.
    let mut substituted = BTreeSet::new();
    let mut args = Vec::new();
    for arg in strings(&c["args"]) {
        let (name_, value) = arg.split_once('=').unwrap_or((arg, ""));
        match name_ {
            "--web.listen-address" | "--webhook.listen-address" | "--storage.path" => {}
            "--webhook.token-file" => {
                let rest = value
                    .strip_prefix(&format!("{}/", mount.dir))
                    .unwrap_or_else(|| panic!("{arg} is not under the mount {}", mount.dir));
                args.push(format!(
                    "--webhook.token-file={}",
                    volume.path().join(rest).display()
                ));
            }
            _ => args.push(arg.to_owned()),
        }
        if arg.starts_with("--") && name_ != arg {
            substituted.insert(name_.to_owned());
        }
    }
    for wanted in [
        "--web.listen-address",
        "--webhook.listen-address",
        "--storage.path",
        "--webhook.token-file",
    ] {
        assert!(substituted.contains(wanted), "the manifest sets {wanted}");
    }
    let mut exporter = Exporter::builder().webhook_listener().args(&args).start();

    // The probes answer on the metrics port (and not on the webhook's).
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().expect("probe path");
        let resp = get(&exporter.url(path));
        assert_eq!(resp.status, 200, "{probe} {path}: {}", resp.body);
    }
    assert_eq!(get(&exporter.url("/metrics")).status, 200);

    let ingress = find(&objs, "Ingress", EXPORTER);
    let path = ingress["spec"]["rules"][0]["http"]["paths"][0]["path"]
        .as_str()
        .expect("ingress path");
    let accepted = |token: &str| {
        deliveries::post_fresh(
            &exporter.webhook_url(&format!("{path}/{token}")),
            &test_hook(),
        )
        .status
    };
    // The shipped placeholder is public: it is never accepted, so a
    // deployment that still has it takes no delivery at all.
    assert_eq!(accepted(&placeholder), 401, "the placeholder is refused");
    assert_eq!(
        deliveries::post_fresh(&exporter.webhook_url(path), &test_hook()).status,
        401,
        "a placeholder does not leave the webhook open"
    );

    // The Secret given a real token, as documented: the one path the
    // Ingress exposes takes a delivery with it on the webhook port, and
    // refuses one without it.
    let real_token = "0f3c9a7d5e1b2468ace0f3c9a7d5e1b2468ace0f3c9a7d5e1b2468ace0f3c9a";
    volume.update(&format!("{real_token}\n"));
    wait_for("the real token", Duration::from_secs(10), || {
        (accepted(real_token) == 200).then_some(())
    });
    assert_webhook_secured(&exporter, path, real_token, "the base's flags");

    // Rotation as documented, through the Secret: a second line with the new
    // token, then the old one removed; each is in force within seconds,
    // without a restart.
    let new_token = "rotated-token-0123456789abcdef";
    assert_eq!(accepted(new_token), 401);
    volume.update(&format!("{real_token}\n{new_token}\n"));
    wait_for("the second token", Duration::from_secs(10), || {
        (accepted(new_token) == 200).then_some(())
    });
    assert_eq!(accepted(real_token), 200, "the old token, until removed");
    volume.update(&format!("{new_token}\n"));
    wait_for("the old token to go", Duration::from_secs(10), || {
        (accepted(real_token) == 401).then_some(())
    });
    assert_eq!(accepted(new_token), 200);

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

#[test]
fn the_documented_token_overlay_replaces_the_placeholder() {
    // docs/deployment.md's overlay, on top of each kustomization: the one
    // Secret keeps its name and namespace and holds the new token only, and
    // the workload mounts it as before.
    let docs = read("docs/deployment.md");
    let snippet = docs
        .split("<!-- token-overlay:start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- token-overlay:end -->").next())
        .expect("docs/deployment.md: the token overlay between its markers");
    let yaml = snippet
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a yaml block");
    let mut overlay = parse_yaml(yaml, "the documented token overlay");
    let new_token = "0123456789abcdef0123456789abcdef";
    for dir in KUSTOMIZATIONS {
        let tmp = tempfile::tempdir().expect("temp dir");
        // kustomize takes a base only by a relative path.
        let up = "../".repeat(tmp.path().components().count() - 1);
        let absolute = repo().join(dir);
        let from_root = absolute.strip_prefix("/").expect("an absolute path");
        overlay["resources"] = json!([format!("{up}{}", from_root.display())]);
        write_temp(&tmp, "kustomization.yaml", &overlay.to_string());
        for file in strings(&overlay["secretGenerator"][0]["files"]) {
            let file = file.rsplit_once('=').map_or(file, |(_, f)| f);
            write_temp(&tmp, file, &format!("{new_token}\n"));
        }
        let before = objects(dir);
        let after = objects(tmp.path().to_str().expect("utf-8"));
        let secrets: Vec<&Value> = of_kind(&after, "Secret")
            .into_iter()
            .filter(|s| name(s) == WEBHOOK_SECRET)
            .collect();
        assert_eq!(secrets.len(), 1, "{dir}: one Secret {WEBHOOK_SECRET}");
        let old = find(&before, "Secret", WEBHOOK_SECRET);
        assert_eq!(
            secrets[0]["metadata"]["namespace"], old["metadata"]["namespace"],
            "{dir}: the Secret stays in its namespace"
        );
        assert_eq!(
            tokens_of(&secret_value(&after, WEBHOOK_SECRET, WEBHOOK_SECRET_KEY)),
            [new_token],
            "{dir}: the overlay's token, and no placeholder"
        );
        assert_eq!(
            the_exporter_workload(&after),
            the_exporter_workload(&before),
            "{dir}: the workload is unchanged"
        );
    }
}
