//! Session replication between nodes: one engine, pluggable transports.
//!
//! A router process that stores a new session hands it to the
//! [`Replicator`], which encodes it ([`wire`], byte for byte uWSGI's cache
//! sync packet), seals it when a cluster key is configured ([`seal`],
//! [`keys`]) and gives the datagram to every [`Transport`]
//! ([`udp::UdpPeers`]: unicast peers or a multicast group;
//! [`redis::HandOff`]: the plain frame to the master's Redis writer, a
//! [`transport::Pump`] that seals and publishes it), never waiting. In each
//! node's master a receiver thread per [`Inbound`] ([`udp::UdpInbound`], a
//! bound address; [`redis::RedisInbound`], a subscription and the sessions
//! of record read back, named by [`names`]) opens and decodes what arrives
//! and applies it to the local store ([`apply`]), counted in shared memory
//! ([`counters`]), logged within a [`log_budget`].

pub mod apply;
pub mod counters;
pub mod digest;
mod engine;
pub mod keys;
pub mod log_budget;
pub mod names;
pub mod redis;
pub mod routability;
pub mod seal;
pub mod sync;
pub mod transport;
pub mod udp;
pub mod wire;

pub use apply::{Applied, Applier};
pub use counters::{ReplicationCounters, SharedCounters};
pub use engine::{Observer, Replicator, PLAIN_WARNING};
pub use transport::{Inbound, Links, Transport};
pub use wire::{encode_delete, encode_set};
