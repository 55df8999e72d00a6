//! Packaging as a container image: the Dockerfile builds a non-root
//! distroless image from a locked release build, and its build context (what
//! `.dockerignore` lets through) holds everything cargo needs and nothing
//! heavy. There is no Docker engine here: the Dockerfile's content is
//! checked, and the context is laid out and loaded by `cargo metadata`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::files::{read, repo};
use support::tools::describe;

#[test]
fn the_dockerfile_builds_a_nonroot_distroless_image() {
    let dockerfile = read("Dockerfile");
    let instructions = meaningful_lines(&dockerfile.replace("\\\n", " "));
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
        describe(&output)
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

/// The lines of `text` that are neither blank nor `#` comments, trimmed.
fn meaningful_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The Docker build context: the repository's top-level entries that
/// `.dockerignore` does not exclude. Only top-level names and `*` globs are
/// understood; the test refuses other patterns rather than misread them.
struct DockerContext {
    entries: Vec<String>,
}

impl DockerContext {
    fn from_dockerignore() -> DockerContext {
        let patterns = meaningful_lines(&read(".dockerignore"));
        for p in &patterns {
            assert!(
                !p.contains('/') && !p.starts_with('!') && !p.contains("**"),
                ".dockerignore pattern {p:?}: extend DockerContext in tests/packaging_image.rs to read it"
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
