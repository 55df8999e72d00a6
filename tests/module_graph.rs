//! The modules of `src/` form no import cycle: reading every source file, each
//! top-level module's references to another (`crate::name`) make a graph,
//! and that graph must have an order from bottom to top. The order found is
//! the one docs/architecture.md shows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for the crate
/// root and the binary).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative
        .components()
        .next()?
        .as_os_str()
        .to_str()?
        .to_owned();
    let name = first.trim_end_matches(".rs").to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// Every `crate::x` in `text`, and every name in `use crate::{x, y::z}`.
fn references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group only: `a::{b, c}` inside counts as a.
            let (mut depth, mut start) = (0, 0);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(group[start..j].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(group[start..j].trim()));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|name| !name.is_empty());
    found
}

#[test]
fn the_modules_of_src_form_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        let uses = graph.entry(module.clone()).or_default();
        for name in references(&text) {
            if name != module {
                uses.insert(name);
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for uses in graph.values_mut() {
        uses.retain(|name| modules.contains(name));
    }
    assert!(modules.len() >= 10, "too few modules found: {modules:?}");

    // Peel off the modules that use nothing left, layer by layer.
    let mut left = graph.clone();
    let mut layers: Vec<Vec<String>> = Vec::new();
    while !left.is_empty() {
        let ready: Vec<String> = left
            .iter()
            .filter(|(_, uses)| uses.iter().all(|u| !left.contains_key(u)))
            .map(|(m, _)| m.clone())
            .collect();
        assert!(
            !ready.is_empty(),
            "an import cycle among {:?}: {left:#?}",
            left.keys().collect::<Vec<_>>()
        );
        for module in &ready {
            left.remove(module);
        }
        layers.push(ready);
    }
    // The pure modules sit at the bottom; wiring at the top.
    let layer_of = |name: &str| layers.iter().position(|l| l.iter().any(|m| m == name));
    for (low, high) in [
        ("clock", "state"),
        ("webhook", "state"),
        ("state", "store"),
        ("store", "writer"),
        ("writer", "http"),
        ("http", "server"),
    ] {
        assert!(
            layer_of(low) < layer_of(high),
            "{low} should sit below {high}: layers {layers:?}"
        );
    }
    // Pure modules use no I/O module.
    for pure in ["webhook", "outcome", "state", "clock", "version"] {
        for io in ["store", "writer", "http", "server", "otel", "simulate"] {
            assert!(
                !graph[pure].contains(io),
                "{pure} uses {io}: {:?}",
                graph[pure]
            );
        }
    }
    // Nothing of the server uses the simulator, a client of it.
    for (module, uses) in &graph {
        assert!(
            module == "simulate" || !uses.contains("simulate"),
            "{module} uses the simulator"
        );
    }
}

#[test]
fn references_are_read_from_paths_and_use_groups() {
    let text = "use crate::a::B;\nuse crate::{c, d::{E, F}, g};\nlet x = crate::h::i();";
    let names: Vec<String> = references(text).into_iter().collect();
    assert_eq!(names, ["a", "c", "d", "g", "h"]);
}
