//! Packaging as a docker-compose stack: `docker-compose.yml` valid against
//! the Compose specification's schema and complete (every service, pinned
//! images, mounts that exist, hosts that are its services, Grafana's data
//! sources and dashboards), and the exporter services' environment and
//! mounted token file on the real binary: two replicas on a real Redis
//! (the stack's, with `appendfsync always`), the webhook on its own port
//! behind the token, the metrics on the other, and a run started on one
//! replica and finished on the other counted once on both.

mod manifests;
mod support;

use std::collections::BTreeSet;

use manifests::*;
use serde_json::{json, Value};
use support::deliveries::{post, Run};
use support::exporter::Exporter;
use support::files::{dashboards, parse_yaml, read, read_path, repo};
use support::http::get;
use support::redis::Redis;
use support::samples::sample;
use support::tools::{require_tool, run_ok};

#[test]
fn the_compose_stack_is_valid_and_complete() {
    let check = require_tool("check-jsonschema");
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
    for wanted in [
        EXPORTER,
        SECOND_REPLICA,
        "redis",
        "prometheus",
        "alertmanager",
        "grafana",
        "tempo",
    ] {
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
    // Both listeners published, on the loopback only.
    let ports = strings(&exporter["ports"]);
    for port in [METRICS_PORT, WEBHOOK_PORT] {
        assert!(
            ports.contains(&format!("127.0.0.1:{port}:{port}").as_str()),
            "the exporter publishes {port} on 127.0.0.1: {ports:?}"
        );
    }
    for (service, def) in services {
        for port in strings(&def["ports"]) {
            assert!(port.starts_with("127.0.0.1:"), "{service} publishes {port}");
        }
    }
    assert!(strings(&services["prometheus"]["volumes"])
        .contains(&"./deploy/prometheus:/etc/prometheus:ro"));
    assert!(strings(&services["alertmanager"]["volumes"])
        .iter()
        .any(|v| v.starts_with("./deploy/prometheus/alertmanager.yml:")));
    assert!(strings(&services["grafana"]["volumes"])
        .iter()
        .any(|v| v.starts_with("./dashboards:")));
    // Prometheus in compose scrapes both replicas by their service names.
    assert_eq!(
        exporter_job_targets("deploy/prometheus/prometheus.yml"),
        json!([
            format!("{EXPORTER}:{METRICS_PORT}"),
            format!("{SECOND_REPLICA}:{METRICS_PORT}")
        ]),
        "Prometheus scrapes each replica's metrics port"
    );
    // The replicas share one environment (so one set of rules) and one
    // Redis, which fsyncs every write; each has its own snapshot volume.
    let second = &services[SECOND_REPLICA];
    assert_eq!(second["environment"], exporter["environment"]);
    assert_eq!(
        exporter["environment"]["LOADIMPACT_EXPORTER_STORAGE_BACKEND"],
        "redis"
    );
    assert_eq!(
        exporter["environment"]["LOADIMPACT_EXPORTER_REDIS_URL"],
        REDIS_URL
    );
    assert_eq!(second["image"], exporter["image"]);
    assert!(strings(&second["volumes"]).contains(&"exporter-2-data:/data"));
    let redis = strings(&services["redis"]["command"]).join(" ");
    assert!(
        redis.contains("--appendonly yes") && redis.contains("--appendfsync always"),
        "the stack's Redis fsyncs every write: {redis}"
    );
    assert!(
        services["redis"]["ports"].is_null(),
        "the stack's Redis (no password) is not published"
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
    for dashboard in dashboards() {
        let file = &dashboard.file;
        for var in items(&dashboard.json["templating"]["list"]) {
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

#[test]
fn the_compose_environment_and_token_file_secure_the_real_binary() {
    // The exporter service's environment, as docker-compose.yml sets it, on
    // the real binary, with the paths it names inside the container resolved
    // through the service's bind mounts to the repository's files: it starts
    // and gets ready (the Tempo host need not exist: spans wait in the
    // outbox), and its webhook takes the mounted file's token on its own
    // port only.
    let compose = parse_yaml(&read("docker-compose.yml"), "docker-compose.yml");
    let service = &compose["services"][EXPORTER];
    let env: Vec<(String, String)> = service["environment"]
        .as_object()
        .expect("environment map")
        .iter()
        .map(|(k, v)| {
            let value = v.as_str().expect("string value");
            (k.clone(), in_the_repository(service, value))
        })
        .collect();
    let var = |name_: &str| {
        env.iter()
            .find(|(k, _)| k == name_)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("docker-compose.yml: the exporter sets {name_}"))
    };
    // The webhook's own listener, on the published port.
    assert_eq!(
        address_port(var("LOADIMPACT_EXPORTER_WEBHOOK_LISTEN_ADDRESS")),
        WEBHOOK_PORT
    );
    // The token file, mounted from the repository, with a placeholder.
    let token_file = var("LOADIMPACT_EXPORTER_WEBHOOK_TOKEN_FILE");
    assert!(
        token_file.starts_with(repo().join("deploy/compose").to_str().expect("utf-8")),
        "the token file {token_file} is mounted from deploy/compose"
    );
    let text = read_path(std::path::Path::new(token_file));
    let tokens = tokens_of(&text);
    assert_eq!(tokens.len(), 1, "{token_file}: one token");
    assert!(
        tokens[0].contains("placeholder"),
        "{token_file}: the shipped token says it is a placeholder"
    );
    assert!(
        env.iter()
            .all(|(k, _)| k != "LOADIMPACT_EXPORTER_WEBHOOK_TOKEN"),
        "the token comes from the file"
    );
    // The launcher's flags put both listeners on free loopback ports; the
    // stack's Redis is a real one on another; the rest is the compose
    // environment's. Two replicas, as the stack runs them.
    let redis = Redis::start();
    let env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| {
            let v = if v == REDIS_URL { redis.url() } else { v };
            (k, v)
        })
        .collect();
    let replicas: Vec<Exporter> = (0..2)
        .map(|_| Exporter::builder().webhook_listener().envs(&env).start())
        .collect();
    for exporter in &replicas {
        let resp = get(&exporter.url("/-/ready"));
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_webhook_secured(exporter, "/webhook", tokens[0], "docker-compose.yml");
    }
    // A run started on one replica and finished on the other: once, on both.
    let run = Run::new(5, 50, 500, 5_000);
    let target = |e: &Exporter| e.webhook_url(&format!("/webhook/{}", tokens[0]));
    assert_eq!(
        post(&target(&replicas[0]), &run.started(), "compose-start").status,
        200
    );
    assert_eq!(
        post(
            &target(&replicas[1]),
            &run.finished(3, Some("Finished")),
            "compose-finish"
        )
        .status,
        200
    );
    for exporter in &replicas {
        support::wait_for(
            "the finish on both replicas",
            std::time::Duration::from_secs(10),
            || {
                let s = exporter.samples();
                (sample(&s, &run.finished_total("finished")) == 1.0).then_some(())
            },
        );
        let s = exporter.samples();
        assert_eq!(sample(&s, &run.running()), 0.0);
        assert_eq!(sample(&s, &run.started_total()), 1.0);
    }
}

/// The second replica of the stack.
const SECOND_REPLICA: &str = "loadimpact-exporter-2";
/// The stack's Redis, as the replicas' environment names it.
const REDIS_URL: &str = "redis://redis:6379/0";

/// `value` with a path inside the container (the target of one of the
/// service's `./source:/target[:ro]` bind mounts, or under it) replaced by
/// the repository's path; any other value unchanged.
fn in_the_repository(service: &Value, value: &str) -> String {
    for volume in strings(&service["volumes"]) {
        let Some(bind) = volume.strip_prefix("./") else {
            continue;
        };
        let mut parts = bind.split(':');
        let (source, target) = (parts.next().expect("source"), parts.next().expect("target"));
        if value == target || value.starts_with(&format!("{target}/")) {
            return format!(
                "{}{}",
                repo().join(source).display(),
                &value[target.len()..]
            );
        }
    }
    value.to_owned()
}
