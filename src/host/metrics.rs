//! Counters shown as uWSGI metrics `sslcache.<cache>.<name>`: read by
//! uWSGI's metrics thread, listed by the stats server and pushed by its
//! stats pushers.

use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::AtomicU64;

use super::symbols;
use super::sys::UWSGI_METRIC_COUNTER;

/// Registers counters as uWSGI metrics `sslcache.<cache>.<name>` (read by
/// uWSGI's metrics thread, shown by the stats server).
pub fn register(cache_name: &str, fields: &[(&'static str, &AtomicU64)]) -> usize {
    let Some(register) = symbols::get().and_then(|s| s.register_metric) else {
        return 0;
    };
    let prefix: String = cache_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut registered = 0;
    for (field, counter) in fields {
        let name = CString::new(format!("sslcache.{prefix}.{field}")).expect("no NUL");
        // SAFETY: uwsgi_register_metric copies the name; the "ptr"
        // collector reads the counter (a u64 in a mapping that lives as
        // long as the process) from uWSGI's metrics thread.
        let metric = unsafe {
            register(
                name.as_ptr() as *mut c_char,
                std::ptr::null_mut(),
                UWSGI_METRIC_COUNTER as u8,
                c"ptr".as_ptr() as *mut c_char,
                counter.as_ptr().cast::<c_void>(),
                0,
                std::ptr::null_mut(),
            )
        };
        registered += usize::from(!metric.is_null());
    }
    registered
}
