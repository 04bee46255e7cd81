//! The core's layers point inward: a module imports only from its own layer
//! or those below it (see the crate docs). Cargo enforces the same between
//! the crates; this test does it between the modules of this one.

use std::path::Path;

/// Top-level modules by layer, lowest first.
const LAYERS: &[&[&str]] = &[
    &["os", "clock", "boundary"],
    &["shm"],
    &["store"],
    &["record", "client_hello"],
    &["config"],
    &["replication"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
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

#[test]
fn layers_point_inward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
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
        let own = layer_of(&top);
        let text = std::fs::read_to_string(file).unwrap();
        for import in crate_imports(&text) {
            if layer_of(&import) > own {
                upward.push(format!("{} imports crate::{import}", relative.display()));
            }
        }
    }
    assert!(upward.is_empty(), "imports pointing up a layer: {upward:#?}");
}

#[test]
fn the_check_sees_an_upward_import() {
    assert_eq!(
        crate_imports("use crate::replication::wire;\nx crate::store"),
        ["replication", "store"]
    );
    assert!(layer_of("replication") > layer_of("store"));
}
