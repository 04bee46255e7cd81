//! Layers point inward: inside each crate of the workspace, a module
//! imports only from layers below its own (see each crate's docs), so there
//! are no cycles either. Cargo enforces the same between the crates (the
//! core cannot name the plugin crate). Runs here, without uWSGI, over both. Cargo enforces the same between
//! the crates; this test does it between the modules of this one.

use std::path::Path;

/// The core's top-level modules by layer, lowest first.
const CORE: &[&[&str]] = &[
    &["os", "clock", "boundary"],
    &["shm"],
    &["store"],
    &["record", "client_hello"],
    &["config"],
    &["replication"],
];

/// The plugin crate's (the workspace root's `src/`).
const PLUGIN: &[&[&str]] = &[&["ffi"], &["tls"], &["host"]];

fn layer_of(layers: &[&[&str]], module: &str) -> usize {
    layers
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module {module} is in no layer: add it to LAYERS"))
}

/// Every `crate::<module>` named in `text`.
fn crate_imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// Every import of a module from its own or a higher layer under `src`.
fn upward_imports(src: &Path, layers: &[&[&str]]) -> Vec<String> {
    let mut files = Vec::new();
    visit(src, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "layering" {
            continue;
        }
        let own = layer_of(layers, &top);
        let text = std::fs::read_to_string(file).unwrap();
        for import in crate_imports(&text) {
            // Strictly lower layers only (or itself): no cycles either.
            if import != top && layer_of(layers, &import) >= own {
                upward.push(format!("{} imports crate::{import}", relative.display()));
            }
        }
    }
    upward
}

#[test]
fn layers_point_inward() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (src, layers) in [(core.join("src"), CORE), (core.join("../../src"), PLUGIN)] {
        let upward = upward_imports(&src, layers);
        assert!(
            upward.is_empty(),
            "imports pointing up a layer in {}: {upward:#?}",
            src.display()
        );
    }
}

#[test]
fn the_check_sees_an_upward_import() {
    assert_eq!(
        crate_imports("use crate::replication::wire;\nx crate::store"),
        ["replication", "store"]
    );
    assert!(layer_of(CORE, "replication") > layer_of(CORE, "store"));
    assert!(layer_of(PLUGIN, "host") > layer_of(PLUGIN, "tls"));
}
