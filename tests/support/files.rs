//! The repository's files as the tests read them: paths from the package
//! root, text, YAML documents and the Grafana dashboards.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The package root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the repository, by its path from the package root, as text.
pub fn read(path: &str) -> String {
    read_path(&repo().join(path))
}

/// A file anywhere, as text.
pub fn read_path(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Writes `contents` to `name` in `dir`; the file's path.
pub fn write_temp(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// Every YAML document of `yaml`; `what` names it in errors.
pub fn parse_yaml_documents(yaml: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml).unwrap_or_else(|e| panic!("parse {what}: {e}"))
}

/// The one YAML document of `yaml`.
pub fn parse_yaml(yaml: &str, what: &str) -> Value {
    let mut docs = parse_yaml_documents(yaml, what);
    assert_eq!(docs.len(), 1, "{what}: expected one YAML document");
    docs.remove(0)
}

/// The dashboards every deployment ships, by file name.
pub const DASHBOARDS: [&str; 2] = ["loadimpact-overview.json", "loadimpact-project.json"];

/// One Grafana dashboard of `dashboards/`.
pub struct Dashboard {
    /// `loadimpact-overview.json`
    pub file: String,
    /// The file name less `.json`: the uid the dashboard must keep.
    pub uid: String,
    /// The file's bytes, as text.
    pub text: String,
    pub json: Value,
}

/// Every `*.json` file of `dashboards/`, by name; those of `DASHBOARDS` must be
/// among them.
pub fn dashboards() -> Vec<Dashboard> {
    let mut out: Vec<Dashboard> = std::fs::read_dir(repo().join("dashboards"))
        .expect("dashboards/")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let file = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            let text = read_path(&path);
            let json =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("dashboards/{file}: {e}"));
            Dashboard {
                uid: file.trim_end_matches(".json").to_owned(),
                file,
                text,
                json,
            }
        })
        .collect();
    out.sort_by(|a, b| a.file.cmp(&b.file));
    for wanted in DASHBOARDS {
        assert!(
            out.iter().any(|d| d.file == wanted),
            "dashboards/{wanted} is missing"
        );
    }
    out
}

/// Every panel of a dashboard's JSON (rows' nested panels included; not the
/// rows themselves).
pub fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut stack: Vec<Value> = dashboard["panels"].as_array().cloned().unwrap_or_default();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested.iter().cloned());
        }
        if panel["type"] != "row" {
            out.push(panel);
        }
    }
    out
}
