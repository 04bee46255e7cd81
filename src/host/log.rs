//! Logging through `uwsgi_log`, so lines land wherever the operator sent
//! uWSGI's log (logto, daemonize, log plugins). Always a constant `"%s"`
//! format: the text never reaches printf as a format string.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};

use super::symbols;

/// Prefix of every line.
pub const PREFIX: &str = "[sslcache]";

/// Writes one line (prefix and newline are added).
pub fn line(msg: &str) {
    let text = format!("{PREFIX} {msg}\n");
    match symbols::get() {
        Some(host) => {
            let c = CString::new(text.replace('\0', "?")).expect("NULs were replaced");
            // SAFETY: uwsgi_log is variadic printf-style; "%s" consumes exactly
            // the one NUL-terminated string passed.
            unsafe { (host.log)(c"%s".as_ptr(), c.as_ptr()) };
        }
        None => eprint!("{text}"),
    }
}

/// Writes a line only the first time `once` is passed for this process.
pub fn once(flag: &AtomicBool, msg: &str) {
    if !flag.swap(true, Ordering::Relaxed) {
        line(msg);
    }
}

/// Logs `msg` and exits the process, as uWSGI does for fatal config errors.
pub fn fatal(msg: &str) -> ! {
    line(msg);
    std::process::exit(1);
}
