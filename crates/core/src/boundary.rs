//! The one panic boundary of sslcache. A panic must never unwind into C
//! (uWSGI's hooks, OpenSSL's callbacks) or end a thread that serves the
//! node: every `extern "C"` entry point and every thread body runs its work
//! through [`Boundary::guard`], which turns a panic into the caller's fallback value
//! and one log line per place (the first time it happens in the process).
//! Only bodies that cannot panic go without (a constant return, a
//! pthread call: uWSGI's hash stub, the option handler, the fork handlers).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

/// Where a panic is caught; logs its first panic only.
pub struct Boundary {
    what: &'static str,
    panicked: AtomicBool,
}

impl Boundary {
    /// A boundary named in its log line ("the get session callback", ...).
    pub const fn new(what: &'static str) -> Boundary {
        Boundary {
            what,
            panicked: AtomicBool::new(false),
        }
    }

    /// Runs `body`; a panic becomes `fallback`.
    pub fn guard<T>(&self, fallback: T, body: impl FnOnce() -> T) -> T {
        match catch_unwind(AssertUnwindSafe(body)) {
            Ok(value) => value,
            Err(panic) => {
                if !self.panicked.swap(true, Ordering::Relaxed) {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    log::error!("internal error in {} ({msg})", self.what);
                }
                fallback
            }
        }
    }

    /// Whether a panic was caught here.
    pub fn panicked(&self) -> bool {
        self.panicked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_fallback() {
        static B: Boundary = Boundary::new("a test");
        assert_eq!(B.guard(1, || 2), 2);
        assert!(!B.panicked());
        assert_eq!(B.guard(1, || panic!("boom")), 1);
        assert!(B.panicked());
    }
}
