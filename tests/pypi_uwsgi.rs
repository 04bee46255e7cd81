//! The same single-node checks against uWSGI 2.0.31 built from PyPI's sdist
//! (HTTP router embedded), with the plugin built against that binary; and
//! each plugin refusing to run inside the other binary.
//!
//! `make test` builds both (SSLCACHE_PYPI_UWSGI, SSLCACHE_PYPI_PLUGIN_DIR).

use sslcache_testkit::*;
use std::path::PathBuf;

fn pypi() -> Option<(PathBuf, PathBuf)> {
    let binary = std::env::var_os("SSLCACHE_PYPI_UWSGI").map(PathBuf::from);
    let plugins = std::env::var_os("SSLCACHE_PYPI_PLUGIN_DIR").map(PathBuf::from);
    match (binary, plugins) {
        (Some(b), Some(p)) if b.exists() && p.join("sslcache_plugin.so").exists() => Some((b, p)),
        _ => {
            assert!(
                !require_all(),
                "the PyPI uWSGI or its plugin is missing: run `make test`"
            );
            eprintln!("skipped: no PyPI uWSGI (run `make test`)");
            None
        }
    }
}

fn resumes_on_pypi_uwsgi(cache_lines: &str, cache_name: &str) {
    let Some((binary, plugins)) = pypi() else { return };
    let _heavy = heavy();
    let dir = test_dir(&format!("pypi-{cache_name}"));
    let (https, stats_port) = (free_port(), free_port());
    let ini = seed_setup1(&plugins, https, stats_port, 4, cache_lines);
    let node = Uwsgi::start_with(&binary, &dir, "node", &ini, &[https, stats_port]);
    assert!(node.log().contains("uWSGI 2.0.31"), "{}", node.log());
    let routers = node.routers(4);
    let tls12 = Client::new(Proto::Tls12NoTickets).reconnects(https, 200, &routers);
    tls12.assert_resumed("TLS 1.2", "");
    assert!(tls12.owners.len() > 1, "one router process only: {:?}", tls12.owners);
    let tls13 = Client::new(Proto::Tls13).reconnects(https, 200, &routers);
    tls13.assert_resumed("TLS 1.3", "");
    let cache = cache_stats(stats_port, cache_name);
    let hits = cache["hits"].as_u64().unwrap();
    assert!(hits >= (tls12.resumed + tls13.resumed) as u64, "{cache}");
    println!(
        "uWSGI 2.0.31 {cache_name}: TLS1.2 {}/199 over {} processes, TLS1.3 {}/199, stats {cache}",
        tls12.resumed,
        tls12.owners.len(),
        tls13.resumed
    );
}

#[test]
fn pypi_uwsgi_default_cache_resumes() {
    resumes_on_pypi_uwsgi(DEFAULT_CACHE, "default");
}

#[test]
fn pypi_uwsgi_named_cache_resumes() {
    resumes_on_pypi_uwsgi(NAMED_CACHE, "ssl");
}

/// A plugin refuses, in one line, to run in a binary it was not built for.
#[test]
fn plugins_refuse_the_other_binary() {
    let Some((pypi_binary, pypi_plugins)) = pypi() else {
        return;
    };
    let cases = [
        (pypi_binary.clone(), plugin_dir(), "built for uWSGI 2.0.21"),
        (uwsgi_binary(), pypi_plugins, "built for uWSGI 2.0.31"),
    ];
    for (i, (binary, plugins, expected)) in cases.into_iter().enumerate() {
        let dir = test_dir("wrong-binary");
        let (https, stats_port) = (free_port(), free_port());
        let ini = seed_setup1(&plugins, https, stats_port, 1, DEFAULT_CACHE);
        let (status, log) = run_to_exit_with(&binary, &dir, &format!("case{i}"), &ini);
        assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
        let ours: Vec<&str> = log.lines().filter(|l| l.starts_with("[sslcache]")).collect();
        assert_eq!(ours.len(), 1, "{log}");
        assert!(
            ours[0].contains("refusing to start") && ours[0].contains(expected),
            "{}",
            ours[0]
        );
        assert!(
            ours[0].contains("rebuild it for this binary: make UWSGI="),
            "{}",
            ours[0]
        );
    }
}
