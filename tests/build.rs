//! Building the plugin: `uwsgi --build-plugin <checkout>` produces a working
//! plugin, and build.rs stops with one clear line for a missing binary, a
//! binary without SSL, and a missing libclang.

use sslcache_testkit::*;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn uwsgi_build_plugin_builds_a_working_plugin() {
    let dir = test_dir("build-plugin");
    let out = Command::new(uwsgi_binary())
        .arg("--build-plugin")
        .arg(repo_root())
        .current_dir(&dir)
        .env("PYTHON", "python3")
        // The suite's own target directory: the dependencies are built
        // already, only the plugin is (as a static library).
        .env("CARGO_TARGET_DIR", repo_root().join("target"))
        .output()
        .expect("uwsgi --build-plugin");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(dir.join("sslcache_plugin.so").exists(), "{text}");

    let (https, stats_port) = (free_port(), free_port());
    let node = Uwsgi::start(
        &dir,
        "node",
        &seed_setup1(&dir, https, stats_port, 2, DEFAULT_CACHE),
        &[https],
    );
    assert!(node.log().contains("[sslcache] TLS session cache"), "{}", node.log());
    let outcome = Client::new(Proto::Tls12NoTickets).reconnects(https, 30, &[]);
    outcome.assert_resumed("TLS 1.2", &node.log());
}

/// Runs build.rs through cargo with `env`; returns cargo's output.
fn cargo_build(env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // Release, in the suite's target directory: what build.rs needs is
    // built already, build.rs itself runs again (its inputs changed).
    cmd.args(["build", "--release", "--lib", "--quiet"])
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", repo_root().join("target"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("cargo");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn fails_clearly(env: &[(&str, &str)], expected: &str) {
    let (ok, text) = cargo_build(env);
    assert!(!ok, "build succeeded with {env:?}");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("sslcache build error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains(expected),
        "{:?} does not contain {expected:?}",
        lines[0]
    );
}

#[test]
fn build_errors_are_one_clear_line() {
    fails_clearly(
        &[("UWSGI", "/nonexistent/uwsgi")],
        "UWSGI=/nonexistent/uwsgi does not name an existing uWSGI binary",
    );
    // A PATH with the Rust toolchain but no uwsgi.
    let out = Command::new("rustc").args(["--print", "sysroot"]).output().unwrap();
    let toolchain = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin");
    fails_clearly(
        &[("UWSGI", ""), ("PATH", toolchain.to_str().unwrap())],
        "no uWSGI binary found",
    );
    fails_clearly(
        &[("LIBCLANG_PATH", "/nonexistent")],
        "bindgen needs libclang, which was not found",
    );
    match std::env::var_os("SSLCACHE_NOSSL_UWSGI").map(PathBuf::from) {
        Some(nossl) if nossl.exists() => {
            fails_clearly(&[("UWSGI", nossl.to_str().unwrap())], "was built without SSL support");
        }
        _ => assert!(!require_all(), "SSLCACHE_NOSSL_UWSGI missing: run `make test`"),
    }
}

/// The core crate needs neither uWSGI nor libclang: nothing in its build
/// graph generates bindings, and its tests pass with no uWSGI binary named
/// and libclang pointed nowhere.
#[test]
fn the_core_builds_and_tests_without_uwsgi_or_libclang() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = Command::new(&cargo)
        .args([
            "tree",
            "-p",
            "sslcache-core",
            "-e",
            "normal,build,dev",
            "--prefix",
            "none",
        ])
        .current_dir(repo_root())
        .output()
        .expect("cargo tree");
    let tree = String::from_utf8_lossy(&tree.stdout);
    assert!(tree.starts_with("sslcache-core "), "{tree}");
    for needs_libclang in ["bindgen ", "clang-sys "] {
        assert!(
            !tree.contains(needs_libclang),
            "{needs_libclang}in the core's graph:\n{tree}"
        );
    }
    // Its output in a file, so that a run stopped at the deadline still
    // shows what cargo was doing (compiling, waiting for a lock, a test).
    let dir = test_dir("core-alone");
    let log = dir.join("cargo-test.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(&cargo)
        .args(["test", "-p", "sslcache-core", "--release"])
        .current_dir(repo_root())
        // The suite's own target directory: the core's dependencies and its
        // tests are built already; what is checked is that nothing needs
        // uWSGI or libclang (a build script that did would run again, as
        // both variables changed, and fail).
        .env("CARGO_TARGET_DIR", repo_root().join("target"))
        .env("UWSGI", "/nonexistent/uwsgi")
        .env("LIBCLANG_PATH", "/nonexistent")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("cargo test");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(900);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("cargo test of the core alone ran 15 minutes:\n{text}"));
    assert!(status.success(), "{text}");
    assert!(text.contains("test result: ok."), "{text}");
}
