//! Session ids that tell their age, and a bounded wait for a session that a
//! peer made an instant ago.
//!
//! A client that reconnects at once to another node (a balancer's round
//! robin, a TLS 1.3 ticket used the moment it arrived) can offer its
//! session before replication stored it there: a miss by microseconds to
//! a few milliseconds, longer on a loaded node whose receiving threads
//! wait for a CPU. sslcache makes every session id itself: the first six
//! bytes are the creation time in milliseconds, the rest random. On a miss
//! for an id made in the last [`RECENT_MS`], a router process looks again
//! a few times, for `ssl-sessions-fresh-wait` at most ([`WAIT_MAX_US`] by
//! default), and never for more than [`BUDGET_US_PER_SEC`] in a second
//! (anyone can make up an id that looks fresh; the budget bounds what that
//! costs).

/// Bytes of the ids sslcache makes (`SSL_MAX_SSL_SESSION_ID_LENGTH`).
pub const ID_LEN: usize = 32;
/// Bytes of the creation time at the start of an id.
const STAMP_LEN: usize = 6;
/// An id made this long ago or less is worth waiting for.
pub const RECENT_MS: u64 = 250;
/// Clocks of two nodes may differ this much (an id "from the future").
const CLOCK_SLACK_MS: u64 = 50;
/// Longest wait for one lookup by default (`ssl-sessions-fresh-wait`):
/// two and a half scheduler ticks at HZ 250. On a loaded node the session
/// can come one tick late (its receiving thread, or this router process
/// after a sleep, waited out a busy process's slice), and a 4 ms bound
/// missed those by a hair (a pair of udprepeaters under two busy
/// processes: 19 of 221 immediate reconnects).
pub const WAIT_MAX_US: u64 = 10_000;
/// How often a waiting lookup looks at the store again.
pub const POLL_US: u64 = 200;
/// Waiting a router process may do in a second, at most.
pub const BUDGET_US_PER_SEC: u64 = 50_000;

/// A new id: `now_ms` stamped first, then `random`.
pub fn make_id(now_ms: u64, random: &[u8; ID_LEN - STAMP_LEN]) -> [u8; ID_LEN] {
    let mut id = [0u8; ID_LEN];
    id[..STAMP_LEN].copy_from_slice(&now_ms.to_be_bytes()[8 - STAMP_LEN..]);
    id[STAMP_LEN..].copy_from_slice(random);
    id
}

/// Whether a lookup that missed `id` at `now_ms` is worth waiting for: an
/// id of sslcache's form made in the last [`RECENT_MS`].
pub fn worth_waiting(id: &[u8], now_ms: u64) -> bool {
    if id.len() != ID_LEN {
        return false;
    }
    let mut stamp = [0u8; 8];
    stamp[8 - STAMP_LEN..].copy_from_slice(&id[..STAMP_LEN]);
    let made = u64::from_be_bytes(stamp);
    let now = now_ms & ((1 << (8 * STAMP_LEN)) - 1);
    made <= now + CLOCK_SLACK_MS && now.saturating_sub(made) <= RECENT_MS
}

/// Microseconds of waiting left this second (one per router process).
#[derive(Debug, Clone, Copy)]
pub struct WaitBudget {
    second: u64,
    used_us: u64,
}

impl WaitBudget {
    pub const fn new() -> WaitBudget {
        WaitBudget { second: 0, used_us: 0 }
    }

    /// How long the next wait may last at `now_ms`, `max_us` at most (the
    /// longest wait for one lookup).
    pub fn allowance_us(&mut self, now_ms: u64, max_us: u64) -> u64 {
        if now_ms / 1000 != self.second {
            self.second = now_ms / 1000;
            self.used_us = 0;
        }
        BUDGET_US_PER_SEC.saturating_sub(self.used_us).min(max_us)
    }

    pub fn spend(&mut self, us: u64) {
        self.used_us += us;
    }
}

impl Default for WaitBudget {
    fn default() -> Self {
        WaitBudget::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_123;

    #[test]
    fn fresh_ids_are_worth_waiting_for_and_old_or_foreign_ones_not() {
        let id = make_id(NOW, &[7; ID_LEN - STAMP_LEN]);
        assert_eq!(&id[STAMP_LEN..], &[7; ID_LEN - STAMP_LEN]);
        assert!(worth_waiting(&id, NOW));
        assert!(worth_waiting(&id, NOW + RECENT_MS));
        assert!(!worth_waiting(&id, NOW + RECENT_MS + 1));
        // Another node's clock a little ahead.
        assert!(worth_waiting(&id, NOW - CLOCK_SLACK_MS));
        assert!(!worth_waiting(&id, NOW - CLOCK_SLACK_MS - 1));
        // Not of sslcache's length.
        assert!(!worth_waiting(&id[..16], NOW));
        // Random bytes are as good as old.
        assert!(!worth_waiting(&[0xa5; ID_LEN], NOW));
    }

    #[test]
    fn the_budget_bounds_waiting_per_second() {
        let mut b = WaitBudget::new();
        let mut waited = 0;
        for _ in 0..100 {
            let a = b.allowance_us(NOW, WAIT_MAX_US);
            assert!(a <= WAIT_MAX_US);
            b.spend(a);
            waited += a;
        }
        assert_eq!(waited, BUDGET_US_PER_SEC);
        assert_eq!(b.allowance_us(NOW + 999 - NOW % 1000, WAIT_MAX_US), 0);
        assert_eq!(b.allowance_us(NOW + 1000, WAIT_MAX_US), WAIT_MAX_US);
        // A shorter longest wait, and none at all.
        assert_eq!(b.allowance_us(NOW + 2000, 3_000), 3_000);
        assert_eq!(b.allowance_us(NOW + 2000, 0), 0);
    }
}
