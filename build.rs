//! Stamps the git revision into the binary for `loadimpact_exporter_build_info`.
//! `LOADIMPACT_EXPORTER_REVISION` overrides it (container builds have no .git).
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LOADIMPACT_EXPORTER_REVISION");
    for path in [".git/HEAD", ".git/logs/HEAD"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let revision = std::env::var("LOADIMPACT_EXPORTER_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=LOADIMPACT_EXPORTER_REVISION={revision}");
}
