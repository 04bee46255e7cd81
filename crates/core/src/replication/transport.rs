//! What the engine needs of a way to reach other nodes: a [`Transport`]
//! sends datagrams, an [`Inbound`] receives them, and a [`Replier`] answers
//! a peer from the inbound's own address (warm start, repair). UDP peers and multicast
//! groups (the `udp` module) are the ones today; anything that carries opaque
//! datagrams (Redis pub/sub) fits the same two traits, and encoding,
//! sealing, opening and applying stay the engine's.

use std::io;
use std::net::SocketAddr;

use super::counters::ReplicationCounters;

/// The ways in and out of a node, as configured.
#[derive(Default)]
pub struct Links {
    pub transports: Vec<Box<dyn Transport>>,
    pub inbounds: Vec<Box<dyn Inbound>>,
}

/// A way to reach the other nodes. Sending never waits: a datagram that
/// cannot be handed over at once is dropped and counted.
pub trait Transport: Send + Sync {
    /// Hands one datagram (plain or sealed) to every peer it reaches.
    fn send(&self, datagram: &[u8], counters: &ReplicationCounters);
    /// Where it sends, for the startup line.
    fn describe(&self) -> String;
}

/// Where datagrams of other nodes come from (a bound UDP socket, today),
/// read by a receiver thread of its own.
pub trait Inbound: Send {
    /// Waits for the next datagram, at most about a second; `Ok(None)` when
    /// none came in that time. Says who sent it when it can tell.
    fn next(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, Option<SocketAddr>)>>;
    /// Where it listens (for logs and benchmarks).
    fn local(&self) -> String;
    /// A way to send from where it listens, so that answers come back to
    /// it; `None` when it has none.
    fn replier(&self) -> Option<Box<dyn Replier>>;
}

/// Sends to one peer from an inbound's own address; never waits (a full
/// buffer is `WouldBlock`).
pub trait Replier: Send {
    fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()>;
    /// Whether it can send to `to` at all (its address family).
    fn reaches(&self, to: &SocketAddr) -> bool;
}
