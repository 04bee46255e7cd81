//! Reading and adjusting `struct uwsgi_server` in the master, before fork:
//! the configured options, the cache definitions the plugin takes over, and
//! the TLS contexts whose sessions it stores.

use std::ffi::{c_char, CStr};

use sslcache_core::config::{CacheDef, CacheOrigin, RawOptions};

use super::sys::{self, link_at, nodes};
use crate::ffi::UWSGI_HTTP_SSL;

/// Owner names that mark a gateway socket whose `ctx` is an `SSL_CTX`.
const HTTP_OWNER: &[u8] = b"uWSGI http";
const SSLROUTER_OWNER: &[u8] = b"uWSGI sslrouter";

/// What kind of listener a context belongs to; decides its session id context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextKind {
    /// `https` / `https2` of the HTTP router.
    Https,
    /// `sslrouter` / `sslrouter2`.
    SslRouter,
    /// Core `https-socket` / `ssl-socket`.
    Socket,
}

/// A TLS context found in uWSGI's structures.
#[derive(Debug, Clone)]
pub struct Context {
    pub ctx: *mut openssl_sys::SSL_CTX,
    pub kind: ContextKind,
    /// The socket name, from which uWSGI derives the default session id
    /// context ("http-" + name for the HTTPS router, and so on).
    pub name: String,
}

fn text(ptr: *const c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: uWSGI strings are NUL-terminated and live as long as the
    // process (they are never freed once configured).
    Some(unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned())
}

fn bytes<'a>(ptr: *const c_char) -> &'a [u8] {
    if ptr.is_null() {
        return b"";
    }
    // SAFETY: `ptr` is non-null (checked above) and a uWSGI string:
    // NUL-terminated and never freed once configured, so valid for any 'a.
    unsafe { CStr::from_ptr(ptr) }.to_bytes()
}

/// The running server. Only used from the master's main thread, before the
/// router processes fork, while no other thread reads these fields.
pub struct Server {
    raw: *mut sys::uwsgi_server,
}

impl Server {
    /// # Safety
    /// `raw` must be the host's `uwsgi` symbol, checked by `abi::check`, and
    /// the caller must be the master's main thread before fork.
    pub unsafe fn new(raw: *mut sys::uwsgi_server) -> Server {
        Server { raw }
    }

    fn get(&self) -> &sys::uwsgi_server {
        // SAFETY: see `new`: a valid, correctly laid out struct that no other
        // thread touches while we hold this reference.
        unsafe { &*self.raw }
    }

    fn get_mut(&mut self) -> &mut sys::uwsgi_server {
        // SAFETY: the `uwsgi` struct is valid and laid out as the bindings
        // say (abi::check, `new`'s contract); changes go through a Server
        // made in `jail` or `init`, on the master's only thread before fork,
        // when nothing else reads the struct; `&mut self` makes this the only
        // reference made through this Server.
        unsafe { &mut *self.raw }
    }

    /// Every option as configured (ini, command line, environment...), in
    /// order. A value is `None` for a flag given without one.
    pub fn exported_options(&self) -> Vec<(String, Option<String>)> {
        let s = self.get();
        let count = s.exported_opts_cnt.max(0) as usize;
        if s.exported_opts.is_null() {
            return Vec::new();
        }
        (0..count)
            .filter_map(|i| {
                // SAFETY: exported_opts holds exported_opts_cnt pointers to
                // uwsgi_opt records owned by the core.
                let opt = unsafe { *s.exported_opts.add(i) };
                if opt.is_null() {
                    return None;
                }
                // SAFETY: non-null records are fully initialised.
                let opt = unsafe { &*opt };
                Some((text(opt.key)?, text(opt.value)))
            })
            .collect()
    }

    /// The option strings sslcache reads (see the option table).
    pub fn raw_options(&self) -> RawOptions {
        RawOptions::from_exported(self.exported_options())
    }

    /// Takes the session cache's definition away from the core, so that it
    /// neither allocates that cache nor binds its UDP ports. Every other
    /// cache stays the core's.
    pub fn take_cache(&mut self, def: &CacheDef) -> Result<(), String> {
        let s = self.get_mut();
        match def.origin {
            CacheOrigin::Default => {
                s.cache_max_items = 0;
                s.cache_udp_server = std::ptr::null_mut();
                s.cache_udp_node = std::ptr::null_mut();
                Ok(())
            }
            CacheOrigin::Cache2 { index } => {
                // SAFETY: cache2 is the core's list of configured cache2
                // values, not used by anyone else in the master before
                // fork; the unlinked node's memory stays the core's (it
                // never frees it).
                unsafe {
                    let link = link_at(&raw mut s.cache2, index);
                    let node = *link;
                    if !node.is_null() {
                        *link = (*node).next;
                        return Ok(());
                    }
                }
                Err(format!(
                    "cache2 number {} (\"{}\") not found in uWSGI's list",
                    index + 1,
                    def.name
                ))
            }
        }
    }

    /// Turns on uWSGI's metrics subsystem (`enable-metrics`), where the
    /// replication counters are shown.
    pub fn enable_metrics(&mut self) -> bool {
        let s = self.get_mut();
        let was = s.has_metrics != 0;
        s.has_metrics = 1;
        !was
    }

    /// Whether the master is reloading (graceful or brutal), as opposed to
    /// stopping.
    pub fn is_reloading(&self) -> bool {
        let status = &self.get().status;
        status.gracefully_reloading != 0 || status.brutally_reloading != 0
    }

    /// Whether the core still creates a default cache (it comes first).
    pub fn has_core_default_cache(&self) -> bool {
        self.get().cache_max_items > 0
    }

    /// Every TLS context that starts sessions: HTTPS router, SSL router and
    /// core https/ssl sockets.
    pub fn listener_contexts(&self) -> Vec<Context> {
        let s = self.get();
        let mut out = Vec::new();
        // SAFETY: the core's lists of fully initialised gateway sockets and
        // sockets, not changed before fork.
        let (gateways, sockets) = unsafe { (nodes(s.gateway_sockets), nodes(s.sockets)) };
        for g in gateways {
            let owner = bytes(g.owner);
            let kind = if owner == HTTP_OWNER && g.mode == UWSGI_HTTP_SSL {
                Some(ContextKind::Https)
            } else if owner == SSLROUTER_OWNER {
                Some(ContextKind::SslRouter)
            } else {
                None
            };
            if let (Some(kind), false) = (kind, g.ctx.is_null()) {
                out.push(Context {
                    ctx: g.ctx.cast(),
                    kind,
                    name: text(g.name).unwrap_or_default(),
                });
            }
        }
        for u in sockets.filter(|u| !u.ssl_ctx.is_null()) {
            out.push(Context {
                ctx: u.ssl_ctx.cast(),
                kind: ContextKind::Socket,
                name: text(u.name).unwrap_or_default(),
            });
        }
        out
    }

    /// SNI contexts configured so far (`sni`, `sni-regexp`). The SNI
    /// callback copies their options onto the connection, so they must not
    /// turn session tickets back on.
    pub fn sni_contexts(&self) -> Vec<*mut openssl_sys::SSL_CTX> {
        let s = self.get();
        // SAFETY: the core's lists of SNI entries, not changed before fork.
        let (names, patterns) = unsafe { (nodes(s.sni), nodes(s.sni_regexp)) };
        names
            .map(|u| u.custom_ptr)
            .chain(patterns.map(|u| u.custom_ptr))
            .filter(|ctx| !ctx.is_null())
            .map(|ctx| ctx.cast())
            .collect()
    }

    /// Pointer to the head of `uwsgi.caches`, for the stats entry.
    pub fn caches_head(&mut self) -> *mut *mut sys::uwsgi_cache {
        &raw mut self.get_mut().caches
    }

    /// `uwsgi.lock_ops.rwlock_init`, available once the core set up locking.
    pub fn new_rwlock(&mut self, name: &'static CStr) -> *mut sys::uwsgi_lock_item {
        match self.get().lock_ops.rwlock_init {
            // SAFETY: the core's lock constructor; it copies nothing from the
            // name but keeps the pointer, so `name` must be 'static (callers
            // pass literals).
            Some(init) => unsafe { init(name.as_ptr() as *mut c_char) },
            None => std::ptr::null_mut(),
        }
    }
}
