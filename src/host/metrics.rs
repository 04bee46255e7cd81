//! Counters shown as uWSGI metrics `sslcache.<cache>.<name>`: read by
//! uWSGI's metrics thread (in the master, once a second), listed by the
//! stats server, written by `metrics-dir` and sent by its stats pushers
//! (statsd, carbon, zabbix).

use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicU64, Ordering};

use sslcache_core::store::Store;

use super::symbols;
use super::sys::{UWSGI_METRIC_COUNTER, UWSGI_METRIC_GAUGE};

/// How a metric's value moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (uWSGI's counter type).
    Counter,
    /// Goes up and down (uWSGI's gauge type).
    Gauge,
}

/// The store's levels, copied here by the master (see [`update_gauges`]):
/// uWSGI's `ptr` collector reads one 64-bit value, and the number of
/// sessions is a sum over shards.
pub struct Gauges {
    items: AtomicU64,
    capacity: AtomicU64,
    bytes: AtomicU64,
}

static GAUGES: Gauges = Gauges {
    items: AtomicU64::new(0),
    capacity: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};

impl Gauges {
    fn fields(&self) -> [(&'static str, &AtomicU64); 3] {
        [
            ("items", &self.items),
            ("capacity", &self.capacity),
            ("bytes", &self.bytes),
        ]
    }
}

/// Registers the store's levels as gauges and its counters.
pub fn register_store(cache_name: &str, store: &Store, capacity: u64) -> usize {
    GAUGES.capacity.store(capacity, Ordering::Relaxed);
    update_gauges(store);
    register(cache_name, Kind::Gauge, &GAUGES.fields())
        + register(cache_name, Kind::Counter, &store.counters().fields())
}

/// Copies the store's levels into the gauges (the master, each cycle).
pub fn update_gauges(store: &Store) {
    GAUGES.items.store(store.len(), Ordering::Relaxed);
    GAUGES.bytes.store(store.stored_bytes(), Ordering::Relaxed);
}

/// The metric name of `field` of cache `cache_name`: uWSGI accepts
/// letters, digits, `.`, `-` and `_` (and exits on anything else).
pub fn metric_name(cache_name: &str, field: &str) -> String {
    let cache: String = cache_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("sslcache.{cache}.{field}")
}

/// Registers values as uWSGI metrics `sslcache.<cache>.<name>`.
pub fn register(cache_name: &str, kind: Kind, fields: &[(&'static str, &AtomicU64)]) -> usize {
    let Some(register) = symbols::get().and_then(|s| s.register_metric) else {
        return 0;
    };
    let kind = match kind {
        Kind::Counter => UWSGI_METRIC_COUNTER,
        Kind::Gauge => UWSGI_METRIC_GAUGE,
    } as u8;
    let mut registered = 0;
    for (field, value) in fields {
        let name = CString::new(metric_name(cache_name, field)).expect("no NUL");
        // SAFETY: uwsgi_register_metric copies the name; the "ptr"
        // collector reads the value (a u64 in a static or in a mapping
        // that lives as long as the process) from uWSGI's metrics thread.
        let metric = unsafe {
            register(
                name.as_ptr() as *mut c_char,
                std::ptr::null_mut(),
                kind,
                c"ptr".as_ptr() as *mut c_char,
                value.as_ptr().cast::<c_void>(),
                0,
                std::ptr::null_mut(),
            )
        };
        registered += usize::from(!metric.is_null());
    }
    registered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::SessionCounters;
    use sslcache_core::replication::counters::ReplicationCounters;
    use sslcache_core::store::Counters;
    use std::collections::HashSet;

    /// uWSGI keeps one metric per name: a name used twice would silently
    /// point both at one value.
    #[test]
    fn every_metric_name_is_unique() {
        let (store, replication, sessions) = (
            Counters::default(),
            ReplicationCounters::default(),
            SessionCounters::default(),
        );
        let names: Vec<&str> = GAUGES
            .fields()
            .iter()
            .chain(store.fields().iter())
            .chain(replication.fields().iter())
            .chain(sessions.fields().iter())
            .map(|(name, _)| *name)
            .collect();
        let unique: HashSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    #[test]
    fn cache_names_become_valid_metric_names() {
        assert_eq!(metric_name("default", "hits"), "sslcache.default.hits");
        assert_eq!(metric_name("tls sessions/1", "items"), "sslcache.tls_sessions_1.items");
    }
}
