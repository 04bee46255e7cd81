//! What the store keeps for a session: one byte saying where it came from,
//! then its DER encoding. The origin decides what a session may open: one
//! learnt from an unauthenticated (plain) datagram never resumes a context
//! that verifies client certificates and never carries a client identity;
//! one made here with a client identity never leaves the node in the clear.

/// Where a stored session came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Made by a handshake on this node.
    Local,
    /// Made by a handshake on this node with a client identity (a client
    /// certificate, or on a context that verifies clients): replicated
    /// only sealed, never in the clear.
    LocalIdentity,
    /// Received in a sealed (authenticated) datagram.
    Sealed,
    /// Received in a plain datagram: anyone who reaches the port may have
    /// sent it.
    Plain,
}

impl Origin {
    fn byte(self) -> u8 {
        match self {
            Origin::Local => b'L',
            Origin::LocalIdentity => b'I',
            Origin::Sealed => b'S',
            Origin::Plain => b'P',
        }
    }

    /// Whether a session of this origin may be sent in a plain
    /// (unauthenticated, readable) datagram or Redis value.
    pub fn sendable_in_clear(self) -> bool {
        self != Origin::LocalIdentity
    }

    fn from_byte(b: u8) -> Option<Origin> {
        match b {
            b'L' => Some(Origin::Local),
            b'I' => Some(Origin::LocalIdentity),
            b'S' => Some(Origin::Sealed),
            b'P' => Some(Origin::Plain),
            _ => None,
        }
    }
}

/// Bytes the record adds to a session.
pub const OVERHEAD: usize = 1;

/// What a peer's delete leaves for a while: a `set` of the same session
/// held back on the network, arriving later, must not bring it back.
pub const TOMBSTONE: &[u8] = b"T";

/// A stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    Session(Origin, &'a [u8]),
    /// Deleted by a peer: a miss, and no `set` revives it until it expires.
    Tombstone,
}

/// What a stored value is; `None` for bytes no version of sslcache wrote.
pub fn read(value: &[u8]) -> Option<Record<'_>> {
    if value == TOMBSTONE {
        return Some(Record::Tombstone);
    }
    decode(value).map(|(origin, der)| Record::Session(origin, der))
}

/// The stored form of a session.
pub fn encode(origin: Origin, der: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(der.len() + OVERHEAD);
    out.push(origin.byte());
    out.extend_from_slice(der);
    out
}

/// Origin and DER of a stored session; `None` for bytes no version of
/// sslcache wrote.
pub fn decode(value: &[u8]) -> Option<(Origin, &[u8])> {
    let (&first, der) = value.split_first()?;
    Some((Origin::from_byte(first)?, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_origins() {
        for origin in [Origin::Local, Origin::LocalIdentity, Origin::Sealed, Origin::Plain] {
            let v = encode(origin, b"\x30\x03der");
            assert_eq!(decode(&v), Some((origin, &b"\x30\x03der"[..])));
        }
        assert_eq!(read(TOMBSTONE), Some(Record::Tombstone));
        assert_eq!(
            read(&encode(Origin::Sealed, b"x")),
            Some(Record::Session(Origin::Sealed, b"x"))
        );
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"\x30\x03der"), None);
    }
}
