//! What the engine needs of a way to reach other nodes: a [`Transport`]
//! sends datagrams, an [`Inbound`] receives them, a [`Replier`] answers a
//! peer from the inbound's own address (warm start, repair), and a [`Pump`]
//! is a master thread a transport needs (Redis: the writer). UDP peers and
//! multicast groups (the `udp` module) and Redis (the `redis` module) are
//! the ones today; encoding, sealing, opening and applying stay the
//! engine's.

use std::io;
use std::net::SocketAddr;

use super::counters::ReplicationCounters;

use super::names::Names;
use super::seal::Sealer;

/// The ways in and out of a node, as configured.
#[derive(Default)]
pub struct Links {
    pub transports: Vec<Box<dyn Transport>>,
    pub inbounds: Vec<Box<dyn Inbound>>,
    pub pumps: Vec<Box<dyn Pump>>,
}

impl Links {
    pub fn extend(&mut self, other: Links) {
        self.transports.extend(other.transports);
        self.inbounds.extend(other.inbounds);
        self.pumps.extend(other.pumps);
    }
}

/// What an inbound received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Bytes of it in the buffer.
    pub len: usize,
    /// Who sent it, when the inbound can tell.
    pub from: Option<SocketAddr>,
    /// A session of record read back from a store (Redis), and the name it
    /// was stored under: it is opened without a replay window (it is as old
    /// as its session) and must belong under that name.
    pub record: Option<Vec<u8>>,
}

impl Received {
    pub fn datagram(len: usize, from: Option<SocketAddr>) -> Received {
        Received {
            len,
            from,
            record: None,
        }
    }
}

/// A thread a transport runs in the master (after the first fork).
pub trait Pump: Send {
    /// Runs until `keep_running` says stop; seals with `sealer` when set.
    fn run(self: Box<Self>, sealer: Option<&Sealer>, counters: &ReplicationCounters, keep_running: &dyn Fn() -> bool);
    /// What it does, for the thread's error message.
    fn describe(&self) -> String;
}

/// A way to reach the other nodes. Sending never waits: a datagram that
/// cannot be handed over at once is dropped and counted.
pub trait Transport: Send + Sync {
    /// Hands one datagram (plain or sealed) to every peer it reaches.
    fn send(&self, datagram: &[u8], counters: &ReplicationCounters);
    /// Whether it takes plain frames, to seal later itself (a hand-off to
    /// the master that never leaves the host).
    fn wants_plain(&self) -> bool {
        false
    }
    /// Where it sends, for the startup line.
    fn describe(&self) -> String;
}

/// Where datagrams of other nodes come from (a bound UDP socket, today),
/// read by a receiver thread of its own.
pub trait Inbound: Send {
    /// Waits for the next datagram, at most about a second; `Ok(None)` when
    /// none came in that time. Counts its own troubles in `counters`.
    fn next(&mut self, buf: &mut [u8], counters: &ReplicationCounters) -> io::Result<Option<Received>>;
    /// Where it listens (for logs and benchmarks).
    fn local(&self) -> String;
    /// A way to send from where it listens, so that answers come back to
    /// it; `None` when it has none.
    fn replier(&self) -> Option<Box<dyn Replier>>;
    /// Where its records belong (an inbound that reads records back).
    fn names(&self) -> Option<&Names> {
        None
    }
}

/// Sends to one peer from an inbound's own address; never waits (a full
/// buffer is `WouldBlock`).
pub trait Replier: Send {
    fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()>;
    /// Whether it can send to `to` at all (its address family).
    fn reaches(&self, to: &SocketAddr) -> bool;
    /// The address it sends from (and receives on).
    fn local_addr(&self) -> SocketAddr;
}

/// Favours the calling thread (one that carries sessions between nodes,
/// see [`os::favour_latency`](crate::os::favour_latency)); the first one says how, once.
pub fn favour_this_thread() {
    static SAID: std::sync::Once = std::sync::Once::new();
    let favour = crate::os::favour_latency();
    SAID.call_once(|| match favour {
        crate::os::Favour {
            nice,
            boost,
            short_slice: true,
        } if boost > 0 => log::info!(
            "replication threads run at nice {nice} with a short slice: they do not wait behind busy router processes"
        ),
        crate::os::Favour { short_slice: true, .. } => log::info!(
            "replication threads run with a short slice (not at a lower nice value: the master is not root when \
             they start)"
        ),
        crate::os::Favour { nice, boost, .. } if boost > 0 => log::info!(
            "replication threads run at nice {nice} (this kernel has no short slices for them: Linux 6.12 or later)"
        ),
        _ => log::warn!(
            "replication threads run at normal priority (the master is not root when they start, and this kernel \
             has no short slices: Linux 6.12 or later): under CPU load a session may reach the other nodes \
             milliseconds late"
        ),
    });
}
