//! Replication counters, in shared memory: router processes count what they
//! send, the master's receiver counts what arrives. The host layer shows
//! them in the stats server as uWSGI metrics (`sslcache.<cache>.<name>`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::shm::{Concurrent, Shared, SharedPod};

/// Every replication counter.
#[repr(C)]
#[derive(Default)]
pub struct ReplicationCounters {
    /// Datagrams handed to the kernel (one per peer).
    pub sent: AtomicU64,
    /// Datagrams dropped because the socket buffer was full: sending never
    /// waits.
    pub send_dropped: AtomicU64,
    /// Datagrams the kernel refused for another reason.
    pub send_errors: AtomicU64,
    /// Sessions too large for a datagram, never sent.
    pub send_too_big: AtomicU64,
    /// Datagrams received.
    pub received: AtomicU64,
    /// Sessions stored from peers.
    pub applied: AtomicU64,
    /// Deletes applied from peers.
    pub removed: AtomicU64,
    /// Datagrams dropped as malformed (or of a format not accepted).
    pub rejected: AtomicU64,
    /// Sessions that arrived already expired.
    pub stale: AtomicU64,
    /// Well-formed sessions the store refused (too big for it, or busy).
    pub not_stored: AtomicU64,
    /// Sealed datagrams sent; also the nonce sequence of this node.
    pub sealed: AtomicU64,
    /// Sealed datagrams refused: unknown key, tag that does not verify.
    pub forged: AtomicU64,
    /// Sealed datagrams refused: sequence already seen.
    pub replayed: AtomicU64,
    /// Sealed datagrams refused: older than the sender's window, or sent
    /// before this receiver started (so that it cannot tell a replay).
    pub out_of_window: AtomicU64,
    /// Sealed datagrams refused: timestamp beyond the allowed clock skew.
    pub skewed: AtomicU64,
    /// Plain datagrams refused by a node that requires sealing.
    pub plain_refused: AtomicU64,
    /// Sealed datagrams of this node's own that came back, ignored:
    /// multicast loopback and Redis return every one; over unicast, a loop
    /// or a replay.
    pub own_returned: AtomicU64,
    /// Bytes of the datagrams counted in `sent`.
    pub sent_bytes: AtomicU64,
    /// Sync datagrams sent (pulls, digests, keys, wants, and the sessions
    /// sent in answer), and their bytes.
    pub sync_sent: AtomicU64,
    pub sync_sent_bytes: AtomicU64,
    /// Sync messages received, and those left unanswered (not from a peer,
    /// malformed, too frequent, or more than the queue holds).
    pub sync_received: AtomicU64,
    pub sync_ignored: AtomicU64,
    /// Sessions new here from peers' answers to a warm-start pull.
    pub pulled: AtomicU64,
    /// Sessions new here from peers' answers to a repair.
    pub repaired: AtomicU64,
    /// Sessions deleted here because a repair showed a peer deleted them.
    pub repair_deleted: AtomicU64,
    /// Sessions a pull or repair brought that expire before one this full
    /// store already evicted for room: not stored, they would only evict
    /// newer ones.
    pub crowded_out: AtomicU64,
    /// Redis: sessions and deletes written and published.
    pub redis_published: AtomicU64,
    /// Redis: hand-offs to the master dropped (queue full) and sessions
    /// dropped from the backlog kept while Redis was unreachable.
    pub redis_dropped: AtomicU64,
    /// Redis: failed commands and connection attempts.
    pub redis_errors: AtomicU64,
    /// Redis: connections made again after one was lost.
    pub redis_reconnects: AtomicU64,
    /// Redis: sessions of record stored here from Redis (at start and
    /// after each reconnection).
    pub redis_loaded: AtomicU64,
    /// Redis: records refused (forged, under another session's name,
    /// plain on a sealed node, malformed).
    pub redis_refused: AtomicU64,
    /// Sessions with a client identity kept on this node: plain
    /// replication never sends them (not pushed, pulled nor repaired).
    pub kept_identity: AtomicU64,
    /// Sync messages not acted on: without a valid cookie for the address
    /// answers would go to (answered with a cookie, within a rate), naming
    /// another node as recipient, or over a rate (requests, scans, cookie
    /// answers).
    pub sync_unproven: AtomicU64,
    pub sync_misdirected: AtomicU64,
    pub sync_throttled: AtomicU64,
    /// Nodes learnt through a relay (a udprepeater) that proved they
    /// receive at their address: peers of this node's warm start and repair
    /// from then on (one forgotten when silent and learnt again counts
    /// again).
    pub learned: AtomicU64,
}

// SAFETY: repr(C), atomics only, zero is a valid value of each.
unsafe impl SharedPod for ReplicationCounters {}
// SAFETY: every field is an AtomicU64, changed only through atomic
// operations: shared references while other processes count are sound.
unsafe impl Concurrent for ReplicationCounters {}

impl ReplicationCounters {
    /// Names and fields, in the order they are shown.
    pub fn fields(&self) -> [(&'static str, &AtomicU64); 37] {
        [
            ("sent", &self.sent),
            ("send_dropped", &self.send_dropped),
            ("send_errors", &self.send_errors),
            ("send_too_big", &self.send_too_big),
            ("received", &self.received),
            ("applied", &self.applied),
            ("removed", &self.removed),
            ("rejected", &self.rejected),
            ("stale", &self.stale),
            ("not_stored", &self.not_stored),
            ("sealed", &self.sealed),
            ("forged", &self.forged),
            ("replayed", &self.replayed),
            ("out_of_window", &self.out_of_window),
            ("skewed", &self.skewed),
            ("plain_refused", &self.plain_refused),
            ("own_returned", &self.own_returned),
            ("sent_bytes", &self.sent_bytes),
            ("sync_sent", &self.sync_sent),
            ("sync_sent_bytes", &self.sync_sent_bytes),
            ("sync_received", &self.sync_received),
            ("sync_ignored", &self.sync_ignored),
            ("pulled", &self.pulled),
            ("repaired", &self.repaired),
            ("repair_deleted", &self.repair_deleted),
            ("crowded_out", &self.crowded_out),
            ("redis_published", &self.redis_published),
            ("redis_dropped", &self.redis_dropped),
            ("redis_errors", &self.redis_errors),
            ("redis_reconnects", &self.redis_reconnects),
            ("redis_loaded", &self.redis_loaded),
            ("redis_refused", &self.redis_refused),
            ("kept_identity", &self.kept_identity),
            ("sync_unproven", &self.sync_unproven),
            ("sync_misdirected", &self.sync_misdirected),
            ("sync_throttled", &self.sync_throttled),
            ("learned", &self.learned),
        ]
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The replication counters' mapping.
pub type SharedCounters = Shared<ReplicationCounters>;
