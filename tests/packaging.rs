//! Packaging, what holds for every file of it: the generated copies of the
//! rules and dashboards (in the Kubernetes manifests and elsewhere) are
//! current, and every YAML file passes `yamllint --strict`.
//!
//! The other packaging files check one kind of packaging each:
//! `packaging_kubernetes.rs` (the kustomizations), `packaging_monitoring.rs`
//! (Prometheus Operator objects, dashboards and Prometheus configurations),
//! `packaging_compose.rs` (the docker-compose stack) and `packaging_image.rs`
//! (the Dockerfile). Every check drives the real tools, offline; a missing
//! tool fails the test (`tests/run.sh` installs them all).

mod manifests;
mod support;

use manifests::RULES_FILE;
use support::tools::{describe, require_tool, run, run_ok};

#[test]
fn generated_files_are_up_to_date() {
    let bash = require_tool("bash");
    let output = run(&bash, &["deploy/generate.sh", "--check"]);
    assert!(
        output.status.success(),
        "generated files are stale: run deploy/generate.sh\n{}",
        describe(&output)
    );
}

#[test]
fn all_yaml_passes_yamllint() {
    let yamllint = require_tool("yamllint");
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
