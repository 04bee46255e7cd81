//! uWSGI's own symbols, found in the running process.
//!
//! Looking them up with `dlsym` instead of linking them keeps the crate
//! linkable without uWSGI (unit tests, benches) and lets the ABI check run
//! before anything reads `struct uwsgi_server`.

use std::ffi::{c_void, CStr};
use std::sync::OnceLock;

use super::sys::uwsgi_server;
use crate::ffi::{AddSafeFdFn, LogFn, RegisterMetricFn};

/// Addresses of the host's symbols.
#[derive(Clone, Copy)]
pub struct Symbols {
    pub server: *mut uwsgi_server,
    pub log: LogFn,
    pub register_metric: Option<RegisterMetricFn>,
    pub add_safe_fd: Option<AddSafeFdFn>,
}

// SAFETY: plain addresses inside the process image (the `uwsgi` struct and
// uWSGI's functions), valid for its lifetime from any thread: moving a copy
// moves only addresses.
unsafe impl Send for Symbols {}
// SAFETY: a Symbols is Copy and immutable: sharing one shares only addresses;
// reading or calling through them is unsafe, and each such use states why it
// is sound there (`Server::new`, `UwsgiSni::new`, the logger, metrics,
// add_safe_fd).
unsafe impl Sync for Symbols {}

static SYMBOLS: OnceLock<Option<Symbols>> = OnceLock::new();

fn lookup(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

/// Another function of the host, by name; `None` when absent.
pub fn lookup_fn(name: &CStr) -> Option<*mut c_void> {
    let f = lookup(name);
    (!f.is_null()).then_some(f)
}

/// The host's symbols, or `None` outside uWSGI.
pub fn get() -> Option<Symbols> {
    *SYMBOLS.get_or_init(|| {
        let server = lookup(c"uwsgi");
        let log = lookup(c"uwsgi_log");
        if server.is_null() || log.is_null() {
            return None;
        }
        let register_metric = lookup(c"uwsgi_register_metric");
        let add_safe_fd = lookup(c"uwsgi_add_safe_fd");
        Some(Symbols {
            server: server.cast(),
            // SAFETY: `uwsgi_log` is `void uwsgi_log(const char *, ...)` in
            // every uWSGI version.
            log: unsafe { std::mem::transmute::<*mut c_void, LogFn>(log) },
            // SAFETY: uwsgi_register_metric has had this prototype since
            // uWSGI 1.9.19 (core/metrics.c).
            register_metric: (!register_metric.is_null())
                .then(|| unsafe { std::mem::transmute::<*mut c_void, RegisterMetricFn>(register_metric) }),
            // SAFETY: `void uwsgi_add_safe_fd(int)` since uWSGI 1.9 (core/io.c).
            add_safe_fd: (!add_safe_fd.is_null())
                .then(|| unsafe { std::mem::transmute::<*mut c_void, AddSafeFdFn>(add_safe_fd) }),
        })
    })
}
