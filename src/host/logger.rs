//! uWSGI's log as the `log` crate's logger: every line of sslcache (the
//! core's included) lands wherever the operator sent uWSGI's log (logto,
//! daemonize, log plugins), prefixed `[sslcache]`. Always a constant `"%s"`
//! format: the text never reaches printf as a format string.

use std::ffi::CString;

use super::symbols;

/// Prefix of every line.
pub const PREFIX: &str = "[sslcache]";

struct UwsgiLog;

static LOGGER: UwsgiLog = UwsgiLog;

impl log::Log for UwsgiLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        match record.level() {
            log::Level::Warn => line(&format!("warning: {}", record.args())),
            _ => line(&record.args().to_string()),
        }
    }

    fn flush(&self) {}
}

/// Makes uWSGI's log the destination of the `log` macros (once per process
/// image; a logger installed by someone else stays).
pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Writes one line (prefix and newline are added).
fn line(msg: &str) {
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

/// Logs `msg` and exits the process, as uWSGI does for fatal config errors.
pub fn fatal(msg: &str) -> ! {
    line(msg);
    std::process::exit(1);
}
