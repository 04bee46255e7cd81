//! The Debian package (`make deb`): its dependencies name this uWSGI's ABI
//! and the libraries the plugin links; installed with apt-get, the seed's
//! Setup 1 runs with `plugins = sslcache` alone (no plugin-dir) and resumes
//! sessions; purged, it leaves nothing behind; a package built for another
//! uWSGI ABI is refused.
//!
//! `make test` builds both packages (SSLCACHE_DEB, SSLCACHE_DEB_OTHER_ABI)
//! and runs this as root. The package is installed system-wide while these
//! tests run: every other test names its plugin-dir, which uWSGI searches
//! before its compiled-in plugin directory, so they keep loading the
//! repository's sslcache_plugin.so.

use sslcache_testkit::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const PACKAGE: &str = "uwsgi-plugin-sslcache";
const DOC_DIR: &str = "/usr/share/doc/uwsgi-plugin-sslcache";

/// The package named by `var`, if it exists and this runs as root (dpkg);
/// otherwise says why and skips, or fails under `make test`.
fn package(var: &str) -> Option<PathBuf> {
    let why = match std::env::var_os(var).map(PathBuf::from) {
        None => format!("{var} is not set"),
        Some(p) if !p.is_file() => format!("{var}={} does not exist", p.display()),
        // SAFETY: geteuid has no preconditions.
        Some(_) if unsafe { libc::geteuid() } != 0 => "installing a package needs root".to_string(),
        Some(p) => return Some(fs::canonicalize(p).unwrap()),
    };
    assert!(!require_all(), "{why}: run `make test` as root");
    eprintln!("skipped: {why} (run `make test` as root)");
    None
}

/// Runs a command to its end, stdout and stderr together in the text.
fn run(program: &str, args: &[&str]) -> (Output, String) {
    let out = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out, text)
}

/// apt-get, waiting for the dpkg lock rather than failing on it.
fn apt_get(args: &[&str]) -> (Output, String) {
    let mut all = vec!["-o", "DPkg::Lock::Timeout=120"];
    all.extend_from_slice(args);
    run("apt-get", &all)
}

/// dpkg's status of the package ("install ok installed"), None when dpkg
/// holds nothing about it (never installed, or purged).
fn status() -> Option<String> {
    let (out, _) = run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty() && text != "unknown ok not-installed").then_some(text)
}

fn purge() {
    let (out, text) = run("dpkg", &["--purge", PACKAGE]);
    if !out.status.success() {
        eprintln!("dpkg --purge {PACKAGE}: {text}");
    }
}

/// `uwsgi-abi-<md5 of binary --dot-h>`: what Debian's uwsgi-core provides
/// and its plugins depend on.
fn abi_of(binary: &Path) -> String {
    let dot_h = Command::new(binary).arg("--dot-h").output().expect("uwsgi --dot-h");
    assert!(
        dot_h.status.success() && !dot_h.stdout.is_empty(),
        "{} --dot-h",
        binary.display()
    );
    let mut md5sum = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    md5sum.stdin.take().unwrap().write_all(&dot_h.stdout).unwrap();
    let out = md5sum.wait_with_output().unwrap();
    let sum = String::from_utf8_lossy(&out.stdout);
    format!("uwsgi-abi-{}", sum.split_whitespace().next().unwrap())
}

/// The plugin directory compiled into uWSGI (`-DUWSGI_PLUGIN_DIR="\"...\""`).
fn system_plugin_dir() -> PathBuf {
    let out = Command::new(uwsgi_binary())
        .arg("--cflags")
        .output()
        .expect("uwsgi --cflags");
    let flags = String::from_utf8_lossy(&out.stdout);
    let dir = flags
        .split_whitespace()
        .find_map(|f| f.strip_prefix("-DUWSGI_PLUGIN_DIR=\"\\\"")?.strip_suffix("\\\"\""))
        .unwrap_or_else(|| panic!("no UWSGI_PLUGIN_DIR in {flags}"));
    PathBuf::from(dir)
}

/// One field of a package's control file.
fn field(deb: &Path, name: &str) -> String {
    let (out, text) = run("dpkg-deb", &["-f", deb.to_str().unwrap(), name]);
    assert!(out.status.success(), "dpkg-deb -f: {text}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Holds the system's dpkg state for one test: one test at a time touches
/// the package, in this process and in any other (a lock file, flock), the
/// package is purged before (a crashed earlier run) and after (whatever
/// failed), and a plugin not from the package (`make install`) is set aside
/// meanwhile and put back.
struct Dpkg {
    _lock: fs::File,
    set_aside: Option<(PathBuf, PathBuf)>,
}

impl Dpkg {
    fn take(plugin: &Path) -> Dpkg {
        let lock = fs::File::create("/run/lock/uwsgi-plugin-sslcache-test.lock").unwrap();
        // SAFETY: flock on a descriptor this function owns; released when it closes.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        if let Some(earlier) = status() {
            eprintln!("purging an earlier install ({earlier})");
        }
        purge();
        assert_eq!(status(), None, "{PACKAGE} is still known to dpkg after a purge");
        let aside = plugin.with_extension("so.deb-test");
        if aside.exists() && !plugin.exists() {
            // Set aside by a run killed before it could put it back.
            fs::rename(&aside, plugin).unwrap();
        }
        let set_aside = plugin.exists().then(|| {
            eprintln!(
                "{} does not come from the package: set aside until the test ends",
                plugin.display()
            );
            fs::rename(plugin, &aside).unwrap();
            (aside, plugin.to_path_buf())
        });
        Dpkg { _lock: lock, set_aside }
    }
}

impl Drop for Dpkg {
    fn drop(&mut self) {
        purge();
        if let Some((aside, plugin)) = &self.set_aside {
            if let Err(e) = fs::rename(aside, plugin) {
                eprintln!("cannot put {} back: {e}", plugin.display());
            }
        }
    }
}

#[test]
fn package_installs_runs_and_purges() {
    let Some(deb) = package("SSLCACHE_DEB") else { return };
    let plugin = system_plugin_dir().join("sslcache_plugin.so");
    let _dpkg = Dpkg::take(&plugin);

    // The control file: this binary's ABI, as uwsgi-core provides it, and
    // the libraries the plugin links (dpkg-shlibdeps).
    let (_, info) = run("dpkg-deb", &["-I", deb.to_str().unwrap()]);
    println!("{info}");
    let abi = abi_of(&uwsgi_binary());
    let depends = field(&deb, "Depends");
    let entries: Vec<&str> = depends.split(',').map(str::trim).collect();
    assert!(entries.contains(&abi.as_str()), "{abi} not in Depends: {depends}");
    let (_, provides) = run("dpkg-query", &["-W", "-f=${Provides}", "uwsgi-core"]);
    assert!(provides.contains(&abi), "uwsgi-core provides {provides}, not {abi}");
    for lib in ["libc6 (>= ", "libssl"] {
        assert!(
            entries.iter().any(|e| e.starts_with(lib)),
            "no {lib} in Depends: {depends}"
        );
    }
    assert_eq!(field(&deb, "Package"), PACKAGE);
    assert_eq!(field(&deb, "Version"), env!("CARGO_PKG_VERSION"));
    let (arch, _) = run("dpkg", &["--print-architecture"]);
    let arch = String::from_utf8_lossy(&arch.stdout).trim().to_string();
    assert_eq!(field(&deb, "Architecture"), arch);
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("{PACKAGE}_{}_{arch}.deb", env!("CARGO_PKG_VERSION"))
    );

    // Installed the way the README says.
    let (out, text) = apt_get(&["install", "-y", deb.to_str().unwrap()]);
    assert!(out.status.success(), "apt-get install: {text}");
    assert_eq!(status().as_deref(), Some("install ok installed"), "{text}");
    let (out, listed) = run("dpkg", &["-L", PACKAGE]);
    assert!(out.status.success(), "{listed}");
    let listed: Vec<PathBuf> = listed
        .lines()
        .filter(|l| l.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    for wanted in [
        plugin.clone(),
        Path::new(DOC_DIR).join("README.md"),
        Path::new(DOC_DIR).join("copyright"),
        Path::new(DOC_DIR).join("changelog.gz"),
    ] {
        assert!(
            listed.contains(&wanted),
            "{} not in dpkg -L: {listed:?}",
            wanted.display()
        );
        let meta = fs::metadata(&wanted).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o644, 0), "{}", wanted.display());
    }
    // Every example config of the checkout (uWSGI inis, HAProxy's cfg).
    let examples = fs::read_dir(repo_root().join("examples/configs"))
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    assert!(!examples.is_empty(), "no example configs in the checkout");
    for config in &examples {
        let installed = Path::new(DOC_DIR).join("examples").join(config.file_name().unwrap());
        assert!(
            listed.contains(&installed),
            "{} not in the package: rebuild it (make deb)",
            installed.display()
        );
    }
    // Every page of docs/, which the README links to (docs/NAME.md), beside it.
    let pages: Vec<PathBuf> = fs::read_dir(repo_root().join("docs"))
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    assert!(!pages.is_empty(), "no docs/*.md in the checkout");
    for page in &pages {
        let installed = Path::new(DOC_DIR).join("docs").join(page.file_name().unwrap());
        assert!(
            listed.contains(&installed),
            "{} not in the package: rebuild it (make deb)",
            installed.display()
        );
        let meta = fs::metadata(&installed).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid()),
            (0o644, 0),
            "{}",
            installed.display()
        );
    }
    // Files, as opposed to the directories other packages share.
    let files: Vec<&PathBuf> = listed.iter().filter(|p| !p.is_dir()).collect();

    // The seed's Setup 1, its plugin-dir line taken out: uWSGI finds the
    // plugin in its own directory.
    let dir = test_dir("deb");
    let (https, stats_port) = (free_port(), free_port());
    let seed = seed_setup1(Path::new("/nonexistent"), https, stats_port, 2, DEFAULT_CACHE);
    let ini: String = seed
        .lines()
        .filter(|l| !l.starts_with("plugin-dir"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        ini.len() < seed.len() && ini.contains("\nplugins = sslcache\n"),
        "{ini}"
    );
    assert!(!ini.contains("plugin-dir") && !ini.contains("plugins-dir"), "{ini}");
    let mut node = Uwsgi::start(&dir, "node", &ini, &[https, stats_port]);
    let maps = fs::read_to_string(format!("/proc/{}/maps", node.pid)).unwrap();
    assert!(
        maps.contains(plugin.to_str().unwrap()),
        "the master did not map {}",
        plugin.display()
    );
    let log = node.log();
    assert!(log.contains("[sslcache] TLS session cache \"default\""), "{log}");
    let routers = node.routers(2);
    // Stock uWSGI resumes nothing for a client without tickets: these are
    // the plugin's sessions.
    let tls12 = Client::new(Proto::Tls12NoTickets).reconnects(https, 10, &routers);
    assert!(tls12.errors.is_empty() && tls12.resumed == 9, "TLS 1.2: {tls12:?}");
    let tls13 = Client::new(Proto::Tls13).reconnects(https, 10, &routers);
    assert!(tls13.errors.is_empty() && tls13.resumed == 9, "TLS 1.3: {tls13:?}");
    let cache = cache_stats(stats_port, "default");
    assert!(cache["hits"].as_u64().unwrap() >= 18, "{cache}");
    println!(
        "installed plugin: TLS1.2 {}/9 over {} processes, TLS1.3 {}/9, stats {cache}",
        tls12.resumed,
        tls12.owners.len(),
        tls13.resumed
    );
    node.stop();

    // Purged: every file it listed is gone, and its doc directory.
    let (out, text) = apt_get(&["purge", "-y", PACKAGE]);
    assert!(out.status.success(), "apt-get purge: {text}");
    assert_eq!(status(), None, "{text}");
    let left: Vec<&&PathBuf> = files.iter().filter(|p| p.symlink_metadata().is_ok()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!Path::new(DOC_DIR).exists(), "{DOC_DIR} left behind");
    assert!(!plugin.exists());
    println!("purged: {} files gone", files.len());
}

#[test]
fn package_for_another_uwsgi_abi_is_refused() {
    let Some(deb) = package("SSLCACHE_DEB_OTHER_ABI") else {
        return;
    };
    let plugin = system_plugin_dir().join("sslcache_plugin.so");
    let _dpkg = Dpkg::take(&plugin);

    let ours = abi_of(&uwsgi_binary());
    let depends = field(&deb, "Depends");
    let theirs = depends
        .split(',')
        .map(str::trim)
        .find(|e| e.starts_with("uwsgi-abi-"))
        .unwrap_or_else(|| panic!("no uwsgi-abi- in Depends: {depends}"))
        .to_string();
    assert_ne!(theirs, ours, "{depends}");
    if let Some(pypi) = std::env::var_os("SSLCACHE_PYPI_UWSGI") {
        assert_eq!(theirs, abi_of(Path::new(&pypi)), "{depends}");
    }

    // apt resolves before it unpacks anything: refused, nothing on disk.
    let (out, text) = apt_get(&["install", "-y", deb.to_str().unwrap()]);
    assert!(!out.status.success(), "apt-get installed it: {text}");
    assert!(
        text.contains(&format!("Depends: {theirs}")) && text.contains("not installable"),
        "{text}"
    );
    assert_eq!(status(), None, "{text}");
    assert!(!plugin.exists(), "{} on disk after a refusal", plugin.display());
    assert!(!Path::new(DOC_DIR).exists(), "{DOC_DIR} on disk after a refusal");

    // dpkg alone unpacks first, then refuses to configure it: never
    // "installed", and a purge takes it all away.
    let (out, text) = run("dpkg", &["-i", deb.to_str().unwrap()]);
    assert!(!out.status.success(), "dpkg -i configured it: {text}");
    assert!(
        text.contains(&format!("depends on {theirs}")) && text.contains("not installed"),
        "{text}"
    );
    let state = status().unwrap_or_default();
    assert!(state.ends_with("unpacked"), "{state}: {text}");
    purge();
    assert_eq!(status(), None);
    assert!(!plugin.exists() && !Path::new(DOC_DIR).exists());
    println!("refused: Depends {theirs}, this uWSGI provides {ours}");
}
