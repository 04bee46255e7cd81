//! uWSGI's SNI table as its SNI callback (`uwsgi_sni_cb`, core/ssl.c)
//! reads it, so that the session lookup, which OpenSSL makes before that
//! callback runs, knows where the connection will land: exact `sni` names
//! (with `subscription-dotsplit`, then each parent domain), then
//! `sni-regexp`, then `sni-dir` files, else the listener.

use std::ffi::OsString;
use std::ffi::{c_char, c_int, c_void};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use super::sys::{self, nodes};
use crate::tls::{SniResolver, SniTarget};

#[cfg(any(uwsgi_regexp = "split", uwsgi_regexp = "wrapped"))]
use crate::ffi::RegexpMatch;

/// uWSGI's SNI lists in this process.
pub struct UwsgiSni {
    server: *mut sys::uwsgi_server,
    #[cfg(any(uwsgi_regexp = "split", uwsgi_regexp = "wrapped"))]
    regexp_match: Option<RegexpMatch>,
}

// SAFETY: `server` points at uWSGI's process-wide `uwsgi` struct, valid for
// the life of the process whichever thread holds it, and `regexp_match` is a
// plain function pointer: moving a UwsgiSni moves only addresses.
unsafe impl Send for UwsgiSni {}
// SAFETY: through `&UwsgiSni` uWSGI's fields are only read (`server`), from
// handshake callbacks, as uWSGI's own SNI callback reads them on the same
// thread (see `server`); nothing here writes them.
unsafe impl Sync for UwsgiSni {}

impl UwsgiSni {
    /// # Safety
    /// `server` must be the checked `uwsgi` symbol of this process.
    pub unsafe fn new(server: *mut sys::uwsgi_server) -> UwsgiSni {
        UwsgiSni {
            server,
            #[cfg(any(uwsgi_regexp = "split", uwsgi_regexp = "wrapped"))]
            // SAFETY: uwsgi_regexp_match has the prototype of RegexpMatch in
            // this uWSGI's uwsgi.h (build.rs picked the variant from its bindings).
            regexp_match: super::symbols::lookup_fn(c"uwsgi_regexp_match")
                .map(|f| unsafe { std::mem::transmute::<*mut c_void, RegexpMatch>(f) }),
        }
    }

    fn server(&self) -> &sys::uwsgi_server {
        // SAFETY: the checked `uwsgi` symbol, alive for the process; the
        // fields read here are changed only by uWSGI's SNI callback and
        // subscription handling, which run on the thread now in a
        // handshake callback (or, with threads, read as uWSGI's own
        // callback reads them).
        unsafe { &*self.server }
    }

    #[cfg(any(uwsgi_regexp = "split", uwsgi_regexp = "wrapped"))]
    fn regexp(&self, name: &[u8]) -> Option<SniTarget> {
        let matches = self.regexp_match?;
        // SAFETY: `sni_regexp` is null or the head of uWSGI's list of
        // compiled SNI patterns, built from the `sni-regexp` options before
        // any handshake and never changed or freed after, so valid and
        // unchanged while this loop walks it.
        let patterns = unsafe { nodes(self.server().sni_regexp) };
        for u in patterns {
            // SAFETY: the pattern compiled by uWSGI; the subject is passed
            // with its length and only read.
            #[cfg(uwsgi_regexp = "split")]
            let hit = unsafe {
                matches(
                    u.pattern.cast(),
                    u.pattern_extra.cast(),
                    name.as_ptr() as *mut c_char,
                    name.len() as c_int,
                )
            };
            // SAFETY: the same for the `wrapped` prototype: the pattern was
            // compiled by uWSGI; the subject is passed with its length and
            // only read.
            #[cfg(uwsgi_regexp = "wrapped")]
            let hit = unsafe { matches(u.pattern.cast(), name.as_ptr().cast(), name.len() as c_int) };
            if hit >= 0 {
                return Some(target(u.custom_ptr, false));
            }
        }
        None
    }

    #[cfg(not(any(uwsgi_regexp = "split", uwsgi_regexp = "wrapped")))]
    fn regexp(&self, _name: &[u8]) -> Option<SniTarget> {
        None
    }
}

fn target(ctx: *mut c_void, copies_verify: bool) -> SniTarget {
    if ctx.is_null() {
        SniTarget::Unknown
    } else {
        SniTarget::Context {
            ctx: ctx as usize,
            copies_verify,
        }
    }
}

fn c_bytes<'a>(ptr: *const c_char, len: usize) -> &'a [u8] {
    if ptr.is_null() {
        return b"";
    }
    // SAFETY: uWSGI strings hold `len` bytes and live while listed.
    unsafe { std::slice::from_raw_parts(ptr.cast(), len) }
}

impl SniResolver for UwsgiSni {
    fn resolve(&self, name: &[u8]) -> SniTarget {
        let s = self.server();
        let mut servername = name;
        // uWSGI tries at most 5 names: the name, then (dotsplit) each
        // parent domain, dot included.
        for _ in 0..5 {
            // SAFETY: `sni` is null or the head of uWSGI's list of SNI names;
            // uWSGI adds and frees nodes (subscriptions, `sni-dir`) only on the
            // thread now in this handshake callback (see `server`), so none
            // changes or goes while `names` is used.
            let mut names = unsafe { nodes(s.sni) };
            if let Some(u) = names.find(|u| c_bytes(u.value, u.len) == servername) {
                return target(u.custom_ptr, true);
            }
            if s.subscription_dotsplit == 0 || servername.len() < 2 {
                break;
            }
            match servername[1..].iter().position(|&b| b == b'.') {
                Some(at) => servername = &servername[at + 1..],
                None => break,
            }
        }
        if s.subscription_dotsplit != 0 {
            return SniTarget::Listener;
        }
        if let Some(found) = self.regexp(servername) {
            return found;
        }
        if !s.sni_dir.is_null() {
            // SAFETY: `sni_dir` is non-null (checked above): the value of
            // uWSGI's `sni-dir` option, a NUL-terminated string it keeps for
            // the life of the process.
            let dir = unsafe { std::ffi::CStr::from_ptr(s.sni_dir) }.to_bytes();
            let file = |ext: &str| {
                let mut p = dir.to_vec();
                p.push(b'/');
                p.extend_from_slice(servername);
                p.extend_from_slice(ext.as_bytes());
                PathBuf::from(OsString::from_vec(p))
            };
            if file(".crt").exists() && file(".key").exists() {
                // uWSGI will make its context during this handshake.
                return SniTarget::Unknown;
            }
        }
        SniTarget::Listener
    }

    fn single_threaded(&self) -> bool {
        let s = self.server();
        // Router processes (no worker id) and single-threaded workers.
        s.mywid == 0 || s.threads <= 1
    }
}
