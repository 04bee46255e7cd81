//! Layers point inward. Cargo enforces it between the crates (the core
//! cannot name the plugin crate); this test enforces it inside them: a
//! module names only modules of layers below its own, so there are no
//! cycles either. And each module sits right above what it names: in the
//! layer just over the highest one it imports from, so the list says what
//! the imports are. It reads the sources of both crates as text, so it runs
//! here, without uWSGI.

use std::path::{Path, PathBuf};

/// The core's top-level modules by layer, lowest first (see lib.rs): those
/// that name no other module, then the clock and trace (over `os`), shared
/// memory, the store, the configuration (the store's bounds), replication,
/// and what builds on it.
const CORE: &[&[&str]] = &[
    &["os", "boundary", "record", "client_hello", "fresh"],
    &["clock", "trace"],
    &["shm"],
    &["store"],
    &["config"],
    &["replication"],
    &["repeater", "tickets"],
];

/// The replication engine's modules: formats, keys, counters and cookies, then
/// sealing, digests and Redis names, then the transport traits and the
/// applier, then the transports and the sync worker, then the engine.
const REPLICATION: &[&[&str]] = &[
    &["counters", "keys", "log_budget", "wire", "routability"],
    &["seal", "digest", "names"],
    &["transport", "apply"],
    &["udp", "sync", "redis"],
    &["engine"],
];

/// The plugin crate's (the workspace root's `src/`).
const PLUGIN: &[&[&str]] = &[&["ffi"], &["tls"], &["host"]];

/// One tree of modules to check: its directory, its layers, and how its
/// modules name each other.
struct Tree {
    dir: PathBuf,
    layers: &'static [&'static [&'static str]],
    prefixes: &'static [&'static str],
}

fn layer_of(layers: &[&[&str]], module: &str) -> Option<usize> {
    layers.iter().position(|layer| layer.contains(&module))
}

/// Every name that follows one of `prefixes` in `text`.
fn named_after(text: &str, prefixes: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in prefixes {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            rest = &rest[at + prefix.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

fn sources(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The modules of `tree`'s layers each of its modules names (itself left
/// out).
fn named_by_module(tree: &Tree) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut files = Vec::new();
    sources(&tree.dir, &mut files);
    let mut named = std::collections::BTreeMap::<String, Vec<String>>::new();
    for file in &files {
        let relative = file.strip_prefix(&tree.dir).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        let text = std::fs::read_to_string(file).unwrap();
        let names = named.entry(module.clone()).or_default();
        for name in named_after(&text, tree.prefixes) {
            if name != module && layer_of(tree.layers, &name).is_some() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    named
}

/// Every module of `tree` that names its own or a higher layer's module.
fn upward_imports(tree: &Tree) -> Vec<String> {
    let mut files = Vec::new();
    sources(&tree.dir, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&tree.dir).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs");
        if ["lib", "mod", "layering"].contains(&module) {
            continue;
        }
        let own = layer_of(tree.layers, module)
            .unwrap_or_else(|| panic!("{} is in no layer: add it to the layers in layering.rs", file.display()));
        let text = std::fs::read_to_string(file).unwrap();
        for named in named_after(&text, tree.prefixes) {
            // Names that are not modules of this tree (items, `*`) are
            // someone else's business.
            let Some(layer) = layer_of(tree.layers, &named) else {
                continue;
            };
            if named != module && layer >= own {
                upward.push(format!("{} names {named}", relative.display()));
            }
        }
    }
    upward
}

fn trees() -> Vec<Tree> {
    let core = Path::new(env!("CARGO_MANIFEST_DIR"));
    vec![
        Tree {
            dir: core.join("src"),
            layers: CORE,
            prefixes: &["crate::"],
        },
        Tree {
            dir: core.join("src/replication"),
            layers: REPLICATION,
            prefixes: &["super::", "crate::replication::"],
        },
        Tree {
            dir: core.join("../../src"),
            layers: PLUGIN,
            prefixes: &["crate::"],
        },
    ]
}

#[test]
fn layers_point_inward() {
    for tree in trees() {
        let upward = upward_imports(&tree);
        assert!(
            upward.is_empty(),
            "modules naming their own or a higher layer in {}: {upward:#?}",
            tree.dir.display()
        );
    }
}

/// A module above the lowest layer names a module of the layer just below
/// its own: else the list puts it higher than its imports say (as it once
/// put `record` over `store`, which it never names).
#[test]
fn each_module_sits_right_above_what_it_names() {
    for tree in trees() {
        let named = named_by_module(&tree);
        for (layer, modules) in tree.layers.iter().enumerate().skip(1) {
            for module in *modules {
                let names = named.get(*module).cloned().unwrap_or_default();
                assert!(
                    names.iter().any(|n| layer_of(tree.layers, n) == Some(layer - 1)),
                    "{module} (layer {}) in {} names nothing of layer {layer}: {names:?}; move it down",
                    layer + 1,
                    tree.dir.display()
                );
            }
        }
    }
}

#[test]
fn every_top_level_module_has_a_layer() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&core).unwrap() {
        let name = entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if !["lib", "layering"].contains(&name.as_str()) {
            assert!(layer_of(CORE, &name).is_some(), "{name} is in no layer");
        }
    }
}

#[test]
fn the_check_sees_an_upward_import() {
    assert_eq!(
        named_after("use crate::replication::wire;\nx crate::store", &["crate::"]),
        ["replication", "store"]
    );
    let tree = Tree {
        dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("src/replication"),
        layers: &[
            &[
                "engine",
                "apply",
                "udp",
                "seal",
                "counters",
                "keys",
                "log_budget",
                "transport",
                "digest",
                "sync",
                "names",
                "redis",
                "routability",
            ],
            &["wire"],
        ],
        prefixes: &["super::"],
    };
    // With wire on top, seal's use of it points up.
    assert!(upward_imports(&tree).iter().any(|u| u == "seal.rs names wire"));
}
