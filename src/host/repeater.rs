//! The udprepeater in uWSGI ([`sslcache_core::repeater`]): its options are
//! read and its sockets bound in `init` (the master, before privileges drop
//! and before any fork), its counters are uWSGI metrics
//! (`sslcache.udprepeater.<name>`), and its loop is a uWSGI gateway, a
//! process of its own that the master forks and forks again if it dies.

use std::ffi::{c_int, c_void};
use std::sync::{Mutex, OnceLock};

use sslcache_core::boundary::Boundary;
use sslcache_core::config;
use sslcache_core::repeater::{Repeater, SharedRepeaterCounters};
use sslcache_core::shm::Shared;

use super::server::Server;
use super::{metrics, symbols};
use crate::ffi::RegisterGatewayFn;

/// What the gateway takes in its process (the master keeps its copy).
static REPEATER: Mutex<Option<Repeater>> = Mutex::new(None);
static COUNTERS: OnceLock<SharedRepeaterCounters> = OnceLock::new();
static LOOP: Boundary = Boundary::new("the udprepeater");

/// The name uWSGI shows (and keeps a pointer to).
const NAME: &std::ffi::CStr = c"sslcache udprepeater";

/// Sets the repeater up if `udprepeater` is set.
pub fn init(server: &mut Server) -> Result<(), String> {
    let Some(settings) = config::repeater(&server.raw_options()).map_err(|e| e.to_string())? else {
        return Ok(());
    };
    if REPEATER.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
        return Ok(());
    }
    let repeater = Repeater::bind(settings)?;
    // Bound here, before privileges drop, as uWSGI's gateways bind theirs;
    // a reloaded image closes the descriptors it does not know between
    // `init` and `post_init`, so these are made known. (They close on exec:
    // the next image binds its own.)
    if let Some(add_safe_fd) = symbols::get().and_then(|s| s.add_safe_fd) {
        for fd in repeater.fds() {
            // SAFETY: uwsgi_add_safe_fd records the number in the list its
            // descriptor closing consults; the master's only thread.
            unsafe { add_safe_fd(fd) };
        }
    }
    log::info!("{}", repeater.summary());
    if let Some(warning) = repeater.warning() {
        log::warn!("{warning}");
    }
    let counters =
        SharedRepeaterCounters::create().map_err(|e| format!("cannot map the udprepeater's counters: {e}"))?;
    let counters: &'static Shared<_> = COUNTERS.get_or_init(|| counters);
    // Before registering: uWSGI registers no metric without it.
    server.enable_metrics();
    let fields = counters.get().fields();
    let (gauges, counts): (Vec<_>, Vec<_>) = fields.iter().partition(|(name, _)| *name == "subscribers");
    metrics::register("udprepeater", metrics::Kind::Counter, &counts);
    metrics::register("udprepeater", metrics::Kind::Gauge, &gauges);
    let register = symbols::lookup_fn(c"register_gateway")
        .ok_or("udprepeater: this uWSGI has no register_gateway (built without gateways?)")?;
    // SAFETY: register_gateway has had this prototype since uWSGI 1.9
    // (core/gateway.c).
    let register = unsafe { std::mem::transmute::<*mut c_void, RegisterGatewayFn>(register) };
    *REPEATER.lock().unwrap_or_else(|e| e.into_inner()) = Some(repeater);
    // SAFETY: `NAME` is static (uWSGI keeps the pointer); init runs in the
    // master before the gateways are forked.
    let gateway = unsafe { register(NAME.as_ptr().cast_mut(), Some(gateway_loop), std::ptr::null_mut()) };
    if gateway.is_null() {
        return Err("udprepeater: uWSGI refused another gateway (64 at most)".into());
    }
    Ok(())
}

/// The gateway process's body: forwards until uWSGI kills it.
unsafe extern "C" fn gateway_loop(_id: c_int, _data: *mut c_void) {
    LOOP.guard((), || {
        let repeater = REPEATER.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (Some(repeater), Some(counters)) = (repeater, COUNTERS.get()) else {
            log::error!("udprepeater: started without its sockets");
            return;
        };
        repeater.run(counters.get())
    });
    // A panic ends up here: uWSGI's gateway exits and the master forks it
    // again.
}
