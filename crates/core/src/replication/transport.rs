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
