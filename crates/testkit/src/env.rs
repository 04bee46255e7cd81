//! Where things are and what a test run shares: the repository, the uWSGI
//! binary and the plugin under test, a fresh directory per test, files made
//! once per run, and the lock of the heavy tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The workspace: this crate is `crates/testkit` in it.
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The uWSGI binary under test (`UWSGI`, else `uwsgi` on PATH).
pub fn uwsgi_binary() -> PathBuf {
    std::env::var_os("UWSGI")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("uwsgi"))
}

/// Directory holding `sslcache_plugin.so` (`SSLCACHE_PLUGIN_DIR`, else the
/// repository root where `make` puts it).
pub fn plugin_dir() -> PathBuf {
    let dir = std::env::var_os("SSLCACHE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(repo_root);
    let so = dir.join("sslcache_plugin.so");
    assert!(
        so.exists(),
        "{} is missing: build it with `make` (tests run through `make test`)",
        so.display()
    );
    dir
}

/// When set (by `make test`), prerequisites of optional tests must exist.
pub fn require_all() -> bool {
    std::env::var_os("SSLCACHE_REQUIRE_ALL").is_some()
}

/// A fresh directory under target/itest for one test.
pub fn test_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = repo_root().join("target/itest").join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A directory shared by the test processes of one run (`cargo nextest`
/// names its run in `NEXTEST_RUN_ID`; elsewhere, one process is one run),
/// and `make` done in it once, whichever process comes first: the others
/// wait on its lock (flock), then find what it made.
pub(crate) fn made_once(name: &str, done: &str, make: impl FnOnce(&Path)) -> PathBuf {
    let run = std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| std::process::id().to_string());
    let dir = repo_root().join("target/itest/shared").join(run).join(name);
    fs::create_dir_all(&dir).unwrap();
    let lock = fs::File::create(dir.join(".lock")).unwrap();
    // SAFETY: flock on a descriptor this function owns; released when it is
    // closed at the end of the function.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock {}", dir.display());
    if !dir.join(done).exists() {
        make(&dir);
        assert!(dir.join(done).exists(), "{} not made in {}", done, dir.display());
    }
    dir
}

/// A lock shared by the tests of one test binary that start many router
/// processes (or use the example configurations' fixed ports), when the
/// binary runs its tests on threads (`cargo test`). `make test` runs each
/// test in a process of its own (cargo nextest), where this lock holds
/// nothing: `.config/nextest.toml` weighs those tests instead (how many run
/// at once), keeps the fixed-port ones apart and runs the loopback flood
/// alone.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: OnceLock<Mutex<()>> = OnceLock::new();
    HEAVY
        .get_or_init(|| Mutex::new(()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}
