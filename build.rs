//! Generates the uWSGI bindings from the binary the plugin will run in.
//!
//! The layout of `struct uwsgi_server` depends on the version and the build
//! flags of that binary, so the header comes from `uwsgi --dot-h` and the
//! defines from `uwsgi --cflags`, never from a vendored copy. The binary's
//! identity (GNU build-id, size of the `uwsgi` symbol, version) is stamped into
//! the plugin so that it can refuse to start inside any other binary.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

fn fail(msg: &str) -> ! {
    eprintln!("\nsslcache build error: {msg}\n");
    // `cargo:warning` makes the reason visible even when cargo hides the
    // build script's stderr.
    println!("cargo:warning=sslcache: {msg}");
    exit(1);
}

fn find_uwsgi() -> PathBuf {
    if let Some(path) = env::var_os("UWSGI").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        let resolved = if path.components().count() == 1 {
            which(&path)
        } else {
            Some(path.clone())
        };
        return match resolved.and_then(|p| fs::canonicalize(p).ok()) {
            Some(p) => p,
            None => fail(&format!(
                "UWSGI={} does not name an existing uWSGI binary",
                path.display()
            )),
        };
    }
    // Only then is PATH read: a change of it may select another binary.
    println!("cargo:rerun-if-env-changed=PATH");
    match which(Path::new("uwsgi")).and_then(|p| fs::canonicalize(p).ok()) {
        Some(p) => p,
        None => fail(
            "no uWSGI binary found: `uwsgi` is not on PATH and UWSGI is not set. \
             Install one (apt-get install -y uwsgi-core) or build with UWSGI=/path/to/uwsgi",
        ),
    }
}

fn which(name: &Path) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn run(binary: &Path, args: &[&str]) -> String {
    let out = Command::new(binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run {} {}: {e}", binary.display(), args.join(" "))));
    if !out.status.success() || out.stdout.is_empty() {
        fail(&format!(
            "{} {} failed ({}): {}",
            binary.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Size of the `uwsgi` data symbol, from the binary's dynamic symbol table.
fn uwsgi_symbol_size(binary: &Path) -> u64 {
    let out = Command::new("nm")
        .args(["-D", "-S", "--defined-only"])
        .arg(binary)
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run nm (binutils): {e}")));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() == 4 && cols[3] == "uwsgi" {
            if let Ok(size) = u64::from_str_radix(cols[1], 16) {
                return size;
            }
        }
    }
    fail(&format!(
        "{} exports no `uwsgi` symbol: is it really a uWSGI binary?",
        binary.display()
    ))
}

/// The GNU build-id of the binary, lower-case hex, or empty if it has none.
fn build_id(binary: &Path) -> String {
    let Ok(out) = Command::new("readelf").arg("-n").arg(binary).output() else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID:"))
        .map(|id| id.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn main() {
    println!("cargo:rerun-if-env-changed=UWSGI");
    println!("cargo:rerun-if-env-changed=LIBCLANG_PATH");
    println!("cargo:rerun-if-changed=include/wrapper.h");
    println!("cargo:rerun-if-changed=build.rs");

    let binary = find_uwsgi();
    println!("cargo:rerun-if-changed={}", binary.display());

    let cflags_line = run(&binary, &["--cflags"]);
    // uWSGI prints its flags shell-quoted (-DUWSGI_VERSION="\"2.0.21\"").
    let cflags = shlex::split(&cflags_line)
        .unwrap_or_else(|| fail(&format!("cannot split the output of {} --cflags", binary.display())));
    if !cflags.iter().any(|f| f == "-DUWSGI_SSL") {
        fail(&format!(
            "{} was built without SSL support (no -DUWSGI_SSL in its --cflags): \
             it has no HTTPS router whose sessions sslcache could cache",
            binary.display()
        ));
    }
    let version = cflags
        .iter()
        .find_map(|f| f.strip_prefix("-DUWSGI_VERSION="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dot_h = run(&binary, &["--dot-h"]);
    fs::write(out_dir.join("uwsgi.h"), dot_h).unwrap_or_else(|e| fail(&format!("cannot write uwsgi.h: {e}")));

    let mut clang_args: Vec<String> = cflags
        .iter()
        .filter(|f| f.starts_with("-D") || (f.starts_with("-I") && f.len() > 2 && *f != "-I."))
        .cloned()
        .collect();
    clang_args.push(format!("-I{}", out_dir.display()));

    let builder = bindgen::Builder::default()
        .header("include/wrapper.h")
        .clang_args(&clang_args)
        .allowlist_var("UWSGI_OPT_MASTER|UWSGI_METRIC_COUNTER|UWSGI_METRIC_GAUGE")
        .allowlist_var("no_argument|required_argument|optional_argument")
        .allowlist_type("uwsgi_server|uwsgi_plugin|uwsgi_option|uwsgi_cache|uwsgi_opt")
        .allowlist_type("uwsgi_gateway_socket|uwsgi_socket|uwsgi_string_list")
        .allowlist_type("uwsgi_hash_algo|uwsgi_lock_item|uwsgi_cache_item")
        // OpenSSL types come from openssl-sys; uWSGI's structs only hold
        // pointers to them.
        .opaque_type("ssl_ctx_st|ssl_st|SSL_CTX|SSL")
        .derive_default(false)
        .layout_tests(false)
        .generate_comments(false);

    // bindgen panics when it cannot load libclang; turn that into one line.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let generated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate()));
    std::panic::set_hook(previous_hook);
    let bindings = match generated {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => fail(&format!(
            "bindgen could not parse the uwsgi.h of {}: {e}. Its headers need \
             libssl-dev libpcre3-dev zlib1g-dev libcap-dev uuid-dev",
            binary.display()
        )),
        Err(_) => fail(
            "bindgen needs libclang, which was not found: apt-get install -y libclang-dev \
             (or point LIBCLANG_PATH at the directory holding libclang.so)",
        ),
    };
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("cannot write bindings.rs: {e}")));
    // uwsgi_regexp_match takes (pcre *, pcre_extra *, subject, len) up to
    // 2.0.2x and (uwsgi_pcre *, subject, len) since; absent without PCRE.
    println!("cargo::rustc-check-cfg=cfg(uwsgi_regexp, values(\"split\", \"wrapped\"))");
    if cflags.iter().any(|f| f == "-DUWSGI_PCRE" || f == "-DUWSGI_PCRE2") {
        let text = bindings.to_string();
        let api = if text.contains("pub pattern_extra:") {
            "split"
        } else {
            "wrapped"
        };
        println!("cargo:rustc-cfg=uwsgi_regexp=\"{api}\"");
    }

    let symbol_size = uwsgi_symbol_size(&binary);
    let stamp = format!(
        "/// The uWSGI binary these bindings were generated from.\n\
         pub const BUILT_FOR_BINARY: &str = {:?};\n\
         /// Its version (UWSGI_VERSION).\n\
         pub const BUILT_FOR_VERSION: &str = {:?};\n\
         /// Its GNU build-id in hex, empty when it has none.\n\
         pub const BUILT_FOR_BUILD_ID: &str = {:?};\n\
         /// Size of its `uwsgi` symbol, i.e. of `struct uwsgi_server`.\n\
         pub const BUILT_FOR_UWSGI_SIZE: usize = {};\n",
        binary.display().to_string(),
        version,
        build_id(&binary),
        symbol_size
    );
    fs::write(out_dir.join("stamp.rs"), stamp).unwrap_or_else(|e| fail(&format!("cannot write stamp.rs: {e}")));
}
