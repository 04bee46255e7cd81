//! The store file (`cache-store`, cache2 `store=`) in the real uWSGI: a
//! path through a symbolic link, or a file that is not a session store,
//! stops uWSGI at startup with one clear line and leaves every file as it
//! was.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use sslcache_testkit::*;

/// Runs uWSGI on the seed's Setup 1 plus `cache_lines`, expects it to exit
/// with status 1 and exactly one `[sslcache]` line that is not a warning
/// (the store file's warning about secrets comes first), equal to
/// `[sslcache] cannot create the session store for cache "NAME": EXPECTED`.
fn refused(dir: &Path, name: &str, cache_lines: &str, cache: &str, expected: &str) {
    let ini = seed_setup1(&plugin_dir(), free_port(), free_port(), 1, cache_lines);
    let (status, log) = run_to_exit(dir, name, &ini);
    let status = status.unwrap_or_else(|| panic!("{name}: uWSGI did not exit:\n{log}"));
    assert_eq!(status.code(), Some(1), "{name}: {status}\n{log}");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("[sslcache]") && !l.starts_with("[sslcache] warning"))
        .collect();
    assert_eq!(errors.len(), 1, "{name}: expected one [sslcache] error line:\n{log}");
    assert_eq!(
        errors[0],
        format!("[sslcache] cannot create the session store for cache \"{cache}\": {expected}"),
        "{name}"
    );
}

/// What a file is: bytes, size, mode, modification time.
fn snapshot(path: &Path) -> (Vec<u8>, u64, u32, i64, i64) {
    let meta = std::fs::metadata(path).unwrap();
    (
        std::fs::read(path).unwrap(),
        meta.len(),
        meta.mode(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

/// The review's case: in a sticky, world-writable directory, a symbolic
/// link to a directory holding someone's 0600 file; `cache-store` named
/// that file through the link and it was replaced by a store. Now refused,
/// for an existing file and for one that would be created, the default
/// cache and a cache2 alike.
#[test]
fn a_store_path_through_a_symlinked_directory_is_refused() {
    let dir = test_dir("store-symlinked-dir");
    let shared = dir.join("tmp");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let private = dir.join("private");
    std::fs::create_dir(&private).unwrap();
    let victim = private.join("victim");
    std::fs::write(&victim, b"someone's data, not a session store\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&private, shared.join("link")).unwrap();
    let before = snapshot(&victim);

    let through = shared.join("link/victim");
    refused(
        &dir,
        "existing",
        &format!(
            "cache = 1000\ncache-blocksize = 4096\ncache-store = {}\nssl-sessions-use-cache = true",
            through.display()
        ),
        "default",
        &format!(
            "cache-store = {}: a component of the path is a symbolic link; name the real path",
            through.display()
        ),
    );
    assert_eq!(snapshot(&victim), before);

    let new = shared.join("link/new.store");
    refused(
        &dir,
        "new",
        &format!(
            "cache2 = name=ssl,items=1000,blocksize=4096,store={}\nssl-sessions-use-cache = ssl",
            new.display()
        ),
        "ssl",
        &format!(
            "cache2 \"ssl\" store = {}: a component of the path is a symbolic link; name the real path",
            new.display()
        ),
    );
    assert!(!private.join("new.store").exists());
    let names: Vec<_> = std::fs::read_dir(&private)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("victim")]);
}

/// A symbolic link as the file itself, relative to uWSGI's current
/// directory: refused as well.
#[test]
fn a_store_file_that_is_a_symbolic_link_is_refused() {
    let dir = test_dir("store-symlink");
    std::fs::write(dir.join("real.store"), b"").unwrap();
    std::fs::set_permissions(dir.join("real.store"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("real.store", dir.join("link.store")).unwrap();
    // run_to_exit starts uWSGI in `dir`: the relative path is resolved there.
    refused(
        &dir,
        "link",
        "cache = 1000\ncache-blocksize = 4096\ncache-store = link.store\nssl-sessions-use-cache = true",
        "default",
        "cache-store = link.store: a component of the path is a symbolic link; name the real path",
    );
    assert_eq!(std::fs::metadata(dir.join("real.store")).unwrap().len(), 0);
}

/// An existing file that is not a session store (here a private file of
/// the same user, mode 0600) is refused and left exactly as it was.
#[test]
fn an_existing_file_that_is_not_a_store_is_refused_and_kept() {
    let dir = test_dir("store-foreign");
    let path = dir.join("data.db");
    let content: Vec<u8> = (0..50_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&path, &content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = snapshot(&path);
    refused(
        &dir,
        "foreign",
        &format!(
            "cache2 = name=ssl,items=1000,blocksize=4096,store={}\nssl-sessions-use-cache = ssl",
            path.display()
        ),
        "ssl",
        &format!(
            "cache2 \"ssl\" store = {}: the file is not a session store (50000 bytes that do not start with \
             a store's header); it was left as it is: name a new or empty file, or remove it",
            path.display()
        ),
    );
    assert_eq!(snapshot(&path), before);
    assert_eq!(before.0, content);
}
