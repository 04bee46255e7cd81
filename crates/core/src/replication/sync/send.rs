//! What the sync worker sends, one message or frame at a time: a message
//! goes in an envelope (the address the recipient answers to, the proof it
//! gave this node, a cookie granted to it); every frame is sealed when a
//! cluster key is configured and leaves through the replier that reaches
//! the recipient, counted as sync traffic.

use std::io;
use std::net::SocketAddr;

use super::Worker;
use crate::clock;
use crate::replication::counters::ReplicationCounters;
use crate::replication::digest::{Envelope, Message};
use crate::replication::wire;

impl Worker<'_> {
    /// Sends `message` to `to` with the cookie `to` gave this node as proof.
    pub(super) fn send_message(&mut self, message: &Message, to: SocketAddr) {
        let proof = self.their_cookies.get(&to).copied().unwrap_or(0);
        self.send_with_proof(message, to, proof);
    }

    /// Sends `message` to `to` in an envelope: from the address `to`
    /// answers to, with `proof`, granting `to` this node's cookie.
    pub(super) fn send_with_proof(&mut self, message: &Message, to: SocketAddr, proof: u64) {
        let Some(from) = self.repliers.iter().find(|r| r.reaches(&to)).map(|r| r.local_addr()) else {
            return;
        };
        let envelope = Envelope {
            to,
            from,
            proof,
            grant: self.cookies.mint(&to, clock::unix_secs()),
        };
        let mut frame = Vec::new();
        for body in message.encode(&envelope) {
            frame.clear();
            if wire::encode_sync(&body, &mut frame).is_ok() {
                let _ = self.send(&frame, to);
            }
        }
    }

    /// Seals (when sealing) and sends one frame to `to`, counted as sync
    /// traffic.
    pub(super) fn send(&mut self, frame: &[u8], to: SocketAddr) -> io::Result<()> {
        let datagram = match self.sealer {
            Some(sealer) => {
                sealer.seal(frame, &self.counters.sealed, clock::unix_ms(), &mut self.sealed);
                &self.sealed[..]
            }
            None => frame,
        };
        let Some(replier) = self.repliers.iter().find(|r| r.reaches(&to)) else {
            return Err(io::ErrorKind::AddrNotAvailable.into());
        };
        let c = self.counters;
        match replier.send_to(datagram, to) {
            Ok(()) => {
                ReplicationCounters::bump(&c.sync_sent);
                ReplicationCounters::add(&c.sync_sent_bytes, datagram.len() as u64);
                Ok(())
            }
            Err(e) => {
                let counter = if e.kind() == io::ErrorKind::WouldBlock {
                    &c.send_dropped
                } else {
                    &c.send_errors
                };
                ReplicationCounters::bump(counter);
                Err(e)
            }
        }
    }
}
