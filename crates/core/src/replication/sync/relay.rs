//! Relays and the nodes learnt through them. A relay is a udprepeater: a
//! configured peer that forwards to the nodes of its cluster. Through it a
//! message arrives from the relay's address naming the relay as recipient:
//! it is for this node, and answered at the envelope's reply address. A
//! node that answers what this node sent through a relay proves it with
//! this node's cookie for the relay: it is learnt, a peer like a configured
//! one once its own cookie comes back (before, only a cookie or a pull, no
//! larger, goes there), and forgotten when it falls silent. The relay's own
//! pull is given up: the nodes it reaches are pulled from instead.

use std::net::SocketAddr;

use super::{Peer, Worker};

/// Nodes learnt through a relay (a udprepeater), at most; one silent this
/// long is forgotten (it digests every few seconds while alive).
const MAX_LEARNED: usize = 256;
pub(super) const LEARNED_SILENCE_MS: u64 = 30_000;
/// A node learnt this soon after start is pulled from (at most this many:
/// each sends every live session).
pub(super) const LEARNED_PULL_MS: u64 = 30_000;
const LEARNED_PULLS: usize = 2;
/// Digests to a relay go every second for this long after start or after a
/// node was learnt (each one that arrives introduces this node to every
/// node the relay reaches), every DIGEST_IDLE_MS otherwise.
pub(super) const DISCOVERY_MS: u64 = 30_000;

impl Worker<'_> {
    /// Notes that configured peer `addr` relays (a udprepeater): its own
    /// pull is given up (the nodes it relays to are pulled from instead).
    pub(super) fn relay_seen(&mut self, addr: SocketAddr) {
        let cache = self.cache;
        let Some(peer) = self.peers.iter_mut().find(|p| !p.learned && p.addr == addr) else {
            return;
        };
        if !peer.relay {
            peer.relay = true;
            peer.pulling = None;
            log::info!(
                "cache \"{cache}\": {addr} relays to the nodes of its cluster (a udprepeater): warm start and repair \
                 with the nodes it reaches"
            );
        }
    }

    /// The configured peer whose cookie `proof` is, if any.
    pub(super) fn relay_of_cookie(&self, proof: u64, unix_now: u64) -> Option<SocketAddr> {
        self.peers
            .iter()
            .filter(|p| !p.learned)
            .map(|p| p.addr)
            .find(|a| self.cookies.verify(a, proof, unix_now))
    }

    /// Learns `addr`, a node reached through a relay (or refreshes it);
    /// false when it cannot be (this node, unreachable, too many).
    pub(super) fn learn(&mut self, addr: SocketAddr, now: u64) -> bool {
        if let Some(peer) = self.peers.iter_mut().find(|p| p.addr == addr) {
            peer.heard_ms = now;
            return true;
        }
        let learned = self.peers.iter().filter(|p| p.learned).count();
        if self.is_me(&addr) || learned >= MAX_LEARNED || !self.repliers.iter().any(|r| r.reaches(&addr)) {
            return false;
        }
        let pull = now < self.learned_pull_until_ms && self.learned_pulls < LEARNED_PULLS;
        self.learned_pulls += usize::from(pull);
        self.discovering_until_ms = now + DISCOVERY_MS;
        let mut peer = Peer::new(addr, pull, now);
        peer.learned = true;
        peer.proven = false;
        if self.verbose {
            log::info!("cache \"{}\": learnt node {addr} through a relay", self.cache);
        }
        self.peers.push(peer);
        true
    }
}
