//! Datagram formats of session replication.
//!
//! One datagram carries one [`Frame`]. The plain format is byte for byte
//! uWSGI's cache UDP sync packet (core/cache.c), so that stock uWSGI nodes
//! and sslcache nodes understand each other:
//!
//! ```text
//! u8 modifier1 = 111 | u16le pktsize (bytes after these 4) | u8 modifier2
//! modifier2 10 (set):    u16le keylen, key, u16le vallen, value,
//!                        u16le explen, expiry as decimal ASCII unix time
//! modifier2 11 (delete): u16le keylen, key
//! ```
//!
//! sslcache nodes also send each other modifier2 values stock uWSGI ignores
//! (its cache UDP server skips unknown commands): 20, a sync message whose
//! body is the digest module's; 21 and 22, a set laid out as 10 but sent in
//! answer to a warm-start pull or to a repair request.
//!
//! Stock senders may omit the expiry of a set (no expiry) and send
//! `0` for "never". The decoder is strict where stock uWSGI is lax: every
//! length must match the datagram exactly, expiries are digits only, and
//! keys and values must fit the local limits. Other formats (the sealed one)
//! start with a different first byte; [`Format::of`] tells them apart.

use std::fmt;

/// First byte of a sealed datagram (the sealed format); never a modifier1
/// uWSGI sends.
pub const SEALED_MAGIC: u8 = b'S';
/// uWSGI's modifier1 for cache sync packets.
pub const MODIFIER1_CACHE: u8 = 111;
/// modifier2 of a set and of a delete.
pub const CMD_SET: u8 = 10;
pub const CMD_DELETE: u8 = 11;
/// modifier2 of a sync message and of sets sent in answer to one.
pub const CMD_SYNC: u8 = 20;
pub const CMD_SET_PULLED: u8 = 21;
pub const CMD_SET_REPAIRED: u8 = 22;
/// Largest body (after the 4-byte header) a u16 length can describe.
pub const MAX_BODY: usize = u16::MAX as usize;
/// Longest expiry field accepted (u64::MAX has 20 digits).
const MAX_EXPIRY_DIGITS: usize = 20;

/// Why a set was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A session just stored by the sender (stock's command 10).
    Live,
    /// In answer to a warm-start pull.
    Pulled,
    /// In answer to a repair request (anti-entropy).
    Repaired,
}

impl Via {
    fn command(self) -> u8 {
        match self {
            Via::Live => CMD_SET,
            Via::Pulled => CMD_SET_PULLED,
            Via::Repaired => CMD_SET_REPAIRED,
        }
    }
}

/// One replicated operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Store `value` under `key` until `expires` (unix seconds; 0: no
    /// expiry given).
    Set {
        key: &'a [u8],
        value: &'a [u8],
        expires: u64,
        via: Via,
    },
    /// Forget `key`.
    Delete { key: &'a [u8] },
    /// A sync message between sslcache nodes (warm start, repair).
    Sync { body: &'a [u8] },
}

impl Frame<'_> {
    /// The session id it names (empty for a sync message).
    pub fn key(&self) -> &[u8] {
        match self {
            Frame::Set { key, .. } | Frame::Delete { key } => key,
            Frame::Sync { .. } => &[],
        }
    }
}

/// Why a datagram was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than a header, or lengths that do not add up.
    Truncated,
    /// The header's size disagrees with the datagram's.
    BadLength,
    /// Bytes left after the last field.
    TrailingBytes,
    /// Not a cache packet, or an unknown command.
    BadModifier,
    /// Expiry that is not a decimal number.
    BadExpiry,
    /// Key empty or longer than the limit.
    BadKey,
    /// Value longer than the limit (or empty).
    BadValue,
    /// Too large to encode in the format.
    TooLarge,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            WireError::Truncated => "truncated",
            WireError::BadLength => "length mismatch",
            WireError::TrailingBytes => "trailing bytes",
            WireError::BadModifier => "not a cache sync packet",
            WireError::BadExpiry => "bad expiry",
            WireError::BadKey => "bad key",
            WireError::BadValue => "bad value",
            WireError::TooLarge => "too large",
        };
        f.write_str(s)
    }
}

impl std::error::Error for WireError {}

/// Limits a decoded frame must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub max_key: usize,
    pub max_value: usize,
}

/// The format of a datagram, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Plain,
    /// A sealed datagram (see `seal`), carrying a plain frame.
    Sealed,
    /// Anything else.
    Unknown(u8),
}

impl Format {
    pub fn of(datagram: &[u8]) -> Format {
        match datagram.first() {
            Some(&MODIFIER1_CACHE) => Format::Plain,
            Some(&SEALED_MAGIC) => Format::Sealed,
            Some(&b) => Format::Unknown(b),
            None => Format::Unknown(0),
        }
    }
}

/// A bounds-checked reader over a datagram: stock's little-endian fields
/// here, the big-endian integers of sync messages (`digest`).
pub(super) struct Reader<'a> {
    pub rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(rest: &'a [u8]) -> Reader<'a> {
        Reader { rest }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u16_le(&mut self) -> Result<usize, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }

    /// A stock field: u16le length, then that many bytes.
    fn field(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u16_le()?;
        self.take(len)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16_be(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    pub fn u64_be(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// `n` big-endian u64s.
    pub fn u64s_be(&mut self, n: usize) -> Result<Vec<u64>, WireError> {
        let bytes = self.take(n.checked_mul(8).ok_or(WireError::BadLength)?)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
            .collect())
    }
}

fn parse_expiry(digits: &[u8]) -> Result<u64, WireError> {
    if digits.is_empty() || digits.len() > MAX_EXPIRY_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return Err(WireError::BadExpiry);
    }
    digits
        .iter()
        .try_fold(0u64, |acc, d| acc.checked_mul(10)?.checked_add((d - b'0') as u64))
        .ok_or(WireError::BadExpiry)
}

/// Decodes a plain (stock uWSGI) datagram.
pub fn decode_plain(datagram: &[u8], limits: FrameLimits) -> Result<Frame<'_>, WireError> {
    let mut r = Reader::new(datagram);
    let header = r.take(4)?;
    if header[0] != MODIFIER1_CACHE {
        return Err(WireError::BadModifier);
    }
    let pktsize = u16::from_le_bytes([header[1], header[2]]) as usize;
    if pktsize != r.rest.len() {
        return Err(WireError::BadLength);
    }
    let via = match header[3] {
        CMD_SYNC if !r.rest.is_empty() => return Ok(Frame::Sync { body: r.rest }),
        CMD_SYNC => return Err(WireError::Truncated),
        CMD_SET => Via::Live,
        CMD_SET_PULLED => Via::Pulled,
        CMD_SET_REPAIRED => Via::Repaired,
        CMD_DELETE => Via::Live,
        _ => return Err(WireError::BadModifier),
    };
    let key = r.field()?;
    if key.is_empty() || key.len() > limits.max_key {
        return Err(WireError::BadKey);
    }
    let frame = match header[3] {
        CMD_DELETE => Frame::Delete { key },
        _ => {
            let value = r.field()?;
            if value.is_empty() || value.len() > limits.max_value {
                return Err(WireError::BadValue);
            }
            // Stock senders always add the expiry; stock receivers accept
            // sets without it.
            let expires = if r.rest.is_empty() {
                0
            } else {
                parse_expiry(r.field()?)?
            };
            Frame::Set {
                key,
                value,
                expires,
                via,
            }
        }
    };
    if !r.rest.is_empty() {
        return Err(WireError::TrailingBytes);
    }
    Ok(frame)
}

fn push_field(out: &mut Vec<u8>, field: &[u8]) -> Result<(), WireError> {
    let len = u16::try_from(field.len()).map_err(|_| WireError::TooLarge)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(field);
    Ok(())
}

/// Encodes a frame as a plain (stock uWSGI) datagram into `out` (cleared).
pub fn encode_plain(frame: &Frame<'_>, out: &mut Vec<u8>) -> Result<(), WireError> {
    out.clear();
    let cmd = match frame {
        Frame::Set { via, .. } => via.command(),
        Frame::Delete { .. } => CMD_DELETE,
        Frame::Sync { .. } => CMD_SYNC,
    };
    out.extend_from_slice(&[MODIFIER1_CACHE, 0, 0, cmd]);
    match frame {
        Frame::Set {
            key, value, expires, ..
        } => {
            push_field(out, key)?;
            push_field(out, value)?;
            push_field(out, expires.to_string().as_bytes())?;
        }
        Frame::Delete { key } => push_field(out, key)?,
        Frame::Sync { body } => out.extend_from_slice(body),
    }
    let body = u16::try_from(out.len() - 4).map_err(|_| WireError::TooLarge)?;
    out[1..3].copy_from_slice(&body.to_le_bytes());
    Ok(())
}

/// Encodes a stored session for peers.
pub fn encode_set(key: &[u8], value: &[u8], expires: u64, out: &mut Vec<u8>) -> Result<(), WireError> {
    encode_set_via(key, value, expires, Via::Live, out)
}

/// Encodes a session sent for the reason `via`.
pub fn encode_set_via(key: &[u8], value: &[u8], expires: u64, via: Via, out: &mut Vec<u8>) -> Result<(), WireError> {
    encode_plain(
        &Frame::Set {
            key,
            value,
            expires,
            via,
        },
        out,
    )
}

/// Encodes a sync message carrying `body`.
pub fn encode_sync(body: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    encode_plain(&Frame::Sync { body }, out)
}

/// Encodes a removal for peers.
pub fn encode_delete(key: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    encode_plain(&Frame::Delete { key }, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: FrameLimits = FrameLimits {
        max_key: 64,
        max_value: 4096,
    };

    /// A set datagram exactly as uWSGI's cache_send_udp_command builds it.
    fn stock_set(key: &[u8], value: &[u8], expires: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(key.len() as u16).to_le_bytes());
        body.extend_from_slice(key);
        body.extend_from_slice(&(value.len() as u16).to_le_bytes());
        body.extend_from_slice(value);
        body.extend_from_slice(&(expires.len() as u16).to_le_bytes());
        body.extend_from_slice(expires.as_bytes());
        let mut d = vec![111, 0, 0, 10];
        d[1..3].copy_from_slice(&(body.len() as u16).to_le_bytes());
        d.extend_from_slice(&body);
        d
    }

    #[test]
    fn matches_stock_set_and_delete_bytes() {
        let mut out = Vec::new();
        encode_plain(
            &Frame::Set {
                key: b"abc",
                value: b"xyz!",
                expires: 1700000000,
                via: Via::Live,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out, stock_set(b"abc", b"xyz!", "1700000000"));
        encode_plain(&Frame::Delete { key: b"abc" }, &mut out).unwrap();
        assert_eq!(out, [111, 5, 0, 11, 3, 0, b'a', b'b', b'c']);
    }

    #[test]
    fn decodes_what_stock_sends() {
        let d = stock_set(b"k1", b"value", "1800000000");
        assert_eq!(
            decode_plain(&d, LIMITS),
            Ok(Frame::Set {
                key: b"k1",
                value: b"value",
                expires: 1800000000,
                via: Via::Live,
            })
        );
        // Without an expiry, and with stock's "0".
        let mut short = d[..4 + 2 + 2 + 2 + 5].to_vec();
        let body = (short.len() - 4) as u16;
        short[1..3].copy_from_slice(&body.to_le_bytes());
        assert_eq!(
            decode_plain(&short, LIMITS),
            Ok(Frame::Set {
                key: b"k1",
                value: b"value",
                expires: 0,
                via: Via::Live,
            })
        );
        assert_eq!(
            decode_plain(&stock_set(b"k1", b"v", "0"), LIMITS),
            Ok(Frame::Set {
                key: b"k1",
                value: b"v",
                expires: 0,
                via: Via::Live,
            })
        );
        assert_eq!(
            decode_plain(&[111, 4, 0, 11, 2, 0, b'k', b'1'], LIMITS),
            Ok(Frame::Delete { key: b"k1" })
        );
    }

    #[test]
    fn rejects_every_malformation() {
        let good = stock_set(b"key", b"value", "1800000000");
        let cases: Vec<(Vec<u8>, WireError)> = vec![
            (vec![], WireError::Truncated),
            (vec![111, 0, 0], WireError::Truncated),
            (good[..good.len() - 1].to_vec(), WireError::BadLength),
            ([&good[..], b"x"].concat(), WireError::BadLength),
            (
                {
                    let mut d = good.clone();
                    d[0] = 112;
                    d
                },
                WireError::BadModifier,
            ),
            (
                {
                    let mut d = good.clone();
                    d[3] = 12;
                    d
                },
                WireError::BadModifier,
            ),
            // Key length lying beyond the datagram.
            (
                {
                    let mut d = good.clone();
                    d[4] = 200;
                    d
                },
                WireError::Truncated,
            ),
            // Value length lying beyond the datagram.
            (
                {
                    let mut d = good.clone();
                    d[9] = 250;
                    d
                },
                WireError::Truncated,
            ),
            (stock_set(b"", b"v", "1"), WireError::BadKey),
            (stock_set(&[1; 65], b"v", "1"), WireError::BadKey),
            (stock_set(b"k", b"", "1"), WireError::BadValue),
            (stock_set(b"k", &[0; 4097], "1"), WireError::BadValue),
            (stock_set(b"k", b"v", "12x"), WireError::BadExpiry),
            (stock_set(b"k", b"v", ""), WireError::BadExpiry),
            (stock_set(b"k", b"v", "99999999999999999999"), WireError::BadExpiry),
            // A delete with a body after the key.
            (vec![111, 5, 0, 11, 2, 0, b'k', b'1', 0], WireError::TrailingBytes),
        ];
        for (datagram, expected) in cases {
            assert_eq!(decode_plain(&datagram, LIMITS), Err(expected), "{datagram:?}");
        }
    }

    #[test]
    fn sync_messages_and_answered_sets_are_commands_stock_skips() {
        let mut out = Vec::new();
        encode_sync(b"\x01body", &mut out).unwrap();
        // Longer than 7 bytes, so stock's reader does not log an error
        // before it skips the unknown command.
        assert_eq!(out, [111, 5, 0, CMD_SYNC, 1, b'b', b'o', b'd', b'y']);
        assert_eq!(decode_plain(&out, LIMITS), Ok(Frame::Sync { body: b"\x01body" }));
        assert_eq!(decode_plain(&[111, 0, 0, CMD_SYNC], LIMITS), Err(WireError::Truncated));
        encode_set_via(b"k", b"v", 5, Via::Repaired, &mut out).unwrap();
        assert_eq!(out[3], CMD_SET_REPAIRED);
        let mut live = Vec::new();
        encode_set(b"k", b"v", 5, &mut live).unwrap();
        // The same body as a stock set.
        assert_eq!(out[4..], live[4..]);
        assert_eq!(
            decode_plain(&out, LIMITS),
            Ok(Frame::Set {
                key: b"k",
                value: b"v",
                expires: 5,
                via: Via::Repaired
            })
        );
    }

    #[test]
    fn refuses_to_encode_what_does_not_fit() {
        let mut out = Vec::new();
        let big = vec![0; 70_000];
        assert_eq!(
            encode_plain(
                &Frame::Set {
                    key: b"k",
                    value: &big,
                    expires: 1,
                    via: Via::Live,
                },
                &mut out
            ),
            Err(WireError::TooLarge)
        );
        assert_eq!(
            encode_plain(
                &Frame::Set {
                    key: b"k",
                    value: &big[..65_530],
                    expires: 1,
                    via: Via::Live,
                },
                &mut out
            ),
            Err(WireError::TooLarge)
        );
    }

    proptest! {
        #[test]
        fn roundtrip(key in proptest::collection::vec(any::<u8>(), 1..64), value in proptest::collection::vec(any::<u8>(), 1..4096), expires: u64, delete: bool, via in prop_oneof![Just(Via::Live), Just(Via::Pulled), Just(Via::Repaired)]) {
            let frame = if delete { Frame::Delete { key: &key } } else { Frame::Set { key: &key, value: &value, expires, via } };
            let mut out = Vec::new();
            encode_plain(&frame, &mut out).unwrap();
            prop_assert_eq!(decode_plain(&out, LIMITS), Ok(frame));
        }

        #[test]
        fn never_panics(datagram in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_plain(&datagram, LIMITS);
        }

        #[test]
        fn mutations_of_valid_datagrams_never_panic(pos: usize, byte: u8, cut: usize) {
            let mut d = stock_set(b"some-session-id", &[7; 150], "1800000000");
            let at = pos % d.len();
            d[at] = byte;
            d.truncate(d.len() - cut % d.len());
            let _ = decode_plain(&d, LIMITS);
        }
    }
}
