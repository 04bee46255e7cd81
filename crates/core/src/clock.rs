//! The one clock of sslcache: wall time (session expiry, which travels
//! between nodes as unix time) and the system-wide monotonic clock (lock
//! deadlines and rate windows, the same in every process of a node).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the unix epoch (0 if the clock is before it).
pub fn unix_secs() -> u64 {
    unix_ms() / 1000
}

/// Milliseconds since the unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds on the system-wide monotonic clock (`CLOCK_MONOTONIC`, the
/// same in every process, unaffected by changes of the wall clock).
pub fn monotonic_ms() -> u64 {
    let t = monotonic();
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

/// `CLOCK_MONOTONIC` as a timespec, for absolute lock deadlines.
pub fn monotonic() -> libc::timespec {
    crate::os::monotonic()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_agree_and_advance() {
        let (s, ms) = (unix_secs(), unix_ms());
        assert!(ms / 1000 >= s && ms / 1000 - s <= 1);
        assert!(s > 1_600_000_000);
        let a = monotonic_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(monotonic_ms() >= a + 20);
    }
}
