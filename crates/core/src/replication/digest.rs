//! Sync messages between sslcache nodes, and the digests they compare.
//!
//! Two things travel in them. A **warm-start pull**: a node that starts
//! empty asks its peers for every live session (`Pull`); each says it
//! started (`PullStarted`), answers with paced sets and ends with `Pulled`. **Anti-entropy**: every node sends
//! each peer, now and then, a `Digest` of the sessions it holds: per bucket
//! of session ids, the XOR of their ids. A peer whose own digest differs in
//! some buckets answers with the ids it holds there (`Keys`); the first node
//! then sends what the peer lacks and asks (`Want`) for what it lacks
//! itself. A digest covers only *settled* sessions, those expiring inside
//! a window both sides take from the digest (stored at least a second ago,
//! not about to expire): sessions still in flight never look lost.
//!
//! Body of a sync message (after the 4-byte header of [`super::wire`],
//! command [`CMD_SYNC`](super::wire::CMD_SYNC)), integers big endian:
//!
//! ```text
//! u8 version = 0xC2
//! u8 kind
//! addr to:    where the sender sent it (this node, as the sender knows it)
//! addr from:  where the sender takes answers (its receiving address)
//! u64 proof:  a cookie of the recipient's for the sender (0: none yet)
//! u64 grant:  the sender's cookie for the recipient
//! then by kind:
//! 1 Pull:   u8 version, u64 instance (random per process image of the puller)
//! 2 Pulled: u64 sessions sent
//! 3 Digest: window, u64 xor * buckets
//! 4 Keys:   window, then per bucket: u16 bucket, u8 complete, u16 n, u64 id * n
//! 5 Want:   u64 id * n
//! 6 PullStarted: u64 sessions about to be sent
//! 7 PullProgress: u64 sessions of the answer received so far
//! 8 Cookie: nothing (the answer to a message without a valid proof)
//! window:   u64 lo, u64 hi (unix seconds: lo < expires <= hi), u16 buckets
//! addr:     u8 4, 4 bytes, u16 port | u8 6, 16 bytes, u16 port
//! ```
//!
//! The envelope binds a message to its recipient and its answers to an
//! address that proved it receives (see [`super::routability`]): a node
//! acts on a message only when its proof is a cookie it gave the sender's
//! address lately, and answers anything else with a `Cookie` no larger than
//! the message. Sealed, the envelope is authenticated: a message replayed
//! to another node names the wrong recipient, and answers go to `from`,
//! never to a datagram's (forgeable) source.
//!
//! An id is a keyed hash of the session id that every node computes alike;
//! its two low bits are flags in `Keys` ([`SETTLED`], [`TOMBSTONE`]).

use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};

use siphasher::sip::SipHasher13;

use super::wire::{Reader, WireError};

/// In `Keys`: the session is in the window (the peer may ask for it).
pub const SETTLED: u64 = 1;
/// In `Keys`: a peer deleted this session lately.
pub const TOMBSTONE: u64 = 2;
const FLAGS: u64 = SETTLED | TOMBSTONE;

/// Largest sync message body built for `Keys` and `Want`: a few IP
/// fragments at most on a 1500-byte MTU.
pub const MAX_BODY: usize = 8192;
/// Largest envelope (IPv6 addresses).
pub const MAX_ENVELOPE: usize = 2 + 2 * 19 + 16;
/// Bytes of a body left for a message after its envelope.
const MAX_MESSAGE: usize = MAX_BODY - MAX_ENVELOPE;
/// Ids that fit a `Want`.
pub const WANT_IDS: usize = (MAX_MESSAGE - 1) / 8;
/// Fewest and most buckets in a digest.
const MIN_BUCKETS: usize = 64;
pub const MAX_BUCKETS: usize = 2048;

const PULL: u8 = 1;
const PULLED: u8 = 2;
const DIGEST: u8 = 3;
const KEYS: u8 = 4;
const WANT: u8 = 5;
const PULL_STARTED: u8 = 6;
const PULL_PROGRESS: u8 = 7;
const COOKIE: u8 = 8;
/// Of a `Pull`'s own format.
const VERSION: u8 = 1;
/// Of the envelope: sync messages of earlier versions started with their
/// kind (1 to 7) and are refused.
pub const ENVELOPE_VERSION: u8 = 0xC2;

/// The id of a session in sync messages (low flag bits clear).
pub fn id_of(key: &[u8]) -> u64 {
    // Fixed keys: every node must compute the same ids. Session ids are
    // random, so buckets balance without a secret.
    let mut hasher = SipHasher13::new_with_keys(0x7373_6c63_6163_6865, 0x7379_6e63_2076_3100);
    hasher.write(key);
    hasher.finish() & !FLAGS
}

/// The bucket of an id, for `buckets` (a power of two).
pub fn bucket_of(id: u64, buckets: usize) -> usize {
    (id >> 40) as usize & (buckets - 1)
}

/// Buckets of the digests of a store of `capacity` sessions: a few hundred
/// sessions per bucket when full, so that a bucket's ids fit one `Keys`.
pub fn buckets_for(capacity: u64) -> usize {
    ((capacity / 256).max(1) as usize)
        .next_power_of_two()
        .clamp(MIN_BUCKETS, MAX_BUCKETS)
}

/// Which sessions a digest covers and how it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Sessions expiring after `lo` and at or before `hi` (unix seconds).
    pub lo: u64,
    pub hi: u64,
    pub buckets: u16,
}

impl Window {
    /// The window at `now` for a node whose sessions live `timeout`
    /// seconds: settled (stored a second ago or more) and not expiring in
    /// the next two seconds. `None` when sessions live too short for one.
    pub fn at(now: u64, timeout: u32, buckets: usize) -> Option<Window> {
        let (lo, hi) = (now + 2, (now + timeout as u64).checked_sub(1)?);
        (lo < hi && buckets.is_power_of_two() && buckets <= MAX_BUCKETS).then_some(Window {
            lo,
            hi,
            buckets: buckets as u16,
        })
    }

    /// This window without the sessions expiring at or before `horizon`;
    /// `None` when none are left.
    pub fn above(self, horizon: u64) -> Option<Window> {
        let lo = self.lo.max(horizon);
        (lo < self.hi).then_some(Window { lo, ..self })
    }

    pub fn covers(&self, expires: u64) -> bool {
        self.lo < expires && expires <= self.hi
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.lo.to_be_bytes());
        out.extend_from_slice(&self.hi.to_be_bytes());
        out.extend_from_slice(&self.buckets.to_be_bytes());
    }

    fn decode(r: &mut Reader<'_>) -> Result<Window, WireError> {
        let (lo, hi, buckets) = (r.u64_be()?, r.u64_be()?, r.u16_be()?);
        let n = buckets as usize;
        if lo >= hi || !n.is_power_of_two() || n > MAX_BUCKETS {
            return Err(WireError::BadValue);
        }
        Ok(Window { lo, hi, buckets })
    }
}

/// The ids one node holds in one bucket, tagged with [`SETTLED`] and
/// [`TOMBSTONE`]; `complete` when none were left out for size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketIds {
    pub bucket: u16,
    pub complete: bool,
    pub ids: Vec<u64>,
}

/// A decoded sync message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `instance` tells a repeated ask from a new process image's.
    Pull {
        instance: u64,
    },
    Pulled {
        sessions: u64,
    },
    PullStarted {
        sessions: u64,
    },
    PullProgress {
        received: u64,
    },
    Digest {
        window: Window,
        xors: Vec<u64>,
    },
    Keys {
        window: Window,
        buckets: Vec<BucketIds>,
    },
    Want {
        ids: Vec<u64>,
    },
    /// Carries only its envelope: the grant the recipient needs to be
    /// heard, and as proof the grant of the message it answers.
    Cookie,
}

/// Who a sync message is for, where its answers go, and the cookies that
/// prove the two addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    pub to: SocketAddr,
    pub from: SocketAddr,
    pub proof: u64,
    pub grant: u64,
}

impl Envelope {
    fn encode(&self, kind: u8, out: &mut Vec<u8>) {
        out.push(ENVELOPE_VERSION);
        out.push(kind);
        encode_addr(&self.to, out);
        encode_addr(&self.from, out);
        out.extend_from_slice(&self.proof.to_be_bytes());
        out.extend_from_slice(&self.grant.to_be_bytes());
    }
}

fn encode_addr(addr: &SocketAddr, out: &mut Vec<u8>) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

fn decode_addr(r: &mut Reader<'_>) -> Result<SocketAddr, WireError> {
    let ip = match r.u8()? {
        4 => IpAddr::from(<[u8; 4]>::try_from(r.take(4)?).expect("4 bytes")),
        6 => IpAddr::from(<[u8; 16]>::try_from(r.take(16)?).expect("16 bytes")),
        _ => return Err(WireError::BadValue),
    };
    Ok(SocketAddr::new(ip, r.u16_be()?))
}

impl Message {
    /// Decodes a sync message body and its envelope; strict: every byte
    /// accounted for.
    pub fn decode(body: &[u8]) -> Result<(Envelope, Message), WireError> {
        let mut r = Reader::new(body);
        if r.u8()? != ENVELOPE_VERSION {
            return Err(WireError::BadModifier);
        }
        let kind = r.u8()?;
        let envelope = Envelope {
            to: decode_addr(&mut r)?,
            from: decode_addr(&mut r)?,
            proof: r.u64_be()?,
            grant: r.u64_be()?,
        };
        let message = match kind {
            COOKIE => Message::Cookie,
            PULL => match r.u8()? {
                VERSION => Message::Pull { instance: r.u64_be()? },
                _ => return Err(WireError::BadModifier),
            },
            PULLED => Message::Pulled { sessions: r.u64_be()? },
            PULL_STARTED => Message::PullStarted { sessions: r.u64_be()? },
            PULL_PROGRESS => Message::PullProgress { received: r.u64_be()? },
            DIGEST => {
                let window = Window::decode(&mut r)?;
                let xors = r.u64s_be(window.buckets as usize)?;
                Message::Digest { window, xors }
            }
            KEYS => {
                let window = Window::decode(&mut r)?;
                let mut buckets = Vec::new();
                while !r.rest.is_empty() {
                    let bucket = r.u16_be()?;
                    if bucket >= window.buckets {
                        return Err(WireError::BadValue);
                    }
                    let complete = match r.u8()? {
                        0 => false,
                        1 => true,
                        _ => return Err(WireError::BadValue),
                    };
                    let n = r.u16_be()? as usize;
                    let ids = r.u64s_be(n)?;
                    if ids
                        .iter()
                        .any(|&id| bucket_of(id, window.buckets as usize) != bucket as usize)
                    {
                        return Err(WireError::BadValue);
                    }
                    buckets.push(BucketIds { bucket, complete, ids });
                }
                Message::Keys { window, buckets }
            }
            WANT => {
                if r.rest.is_empty() || !r.rest.len().is_multiple_of(8) {
                    return Err(WireError::BadLength);
                }
                let n = r.rest.len() / 8;
                Message::Want { ids: r.u64s_be(n)? }
            }
            _ => return Err(WireError::BadModifier),
        };
        if !r.rest.is_empty() {
            return Err(WireError::TrailingBytes);
        }
        Ok((envelope, message))
    }

    fn kind(&self) -> u8 {
        match self {
            Message::Pull { .. } => PULL,
            Message::Pulled { .. } => PULLED,
            Message::PullStarted { .. } => PULL_STARTED,
            Message::PullProgress { .. } => PULL_PROGRESS,
            Message::Digest { .. } => DIGEST,
            Message::Keys { .. } => KEYS,
            Message::Want { .. } => WANT,
            Message::Cookie => COOKIE,
        }
    }

    /// The bodies that carry this message in `envelope`: one, or for
    /// `Keys` and `Want` as many as keep each under [`MAX_BODY`] (a
    /// bucket's ids are never split: those beyond a body are left out and
    /// the bucket marked incomplete).
    pub fn encode(&self, envelope: &Envelope) -> Vec<Vec<u8>> {
        let kind = self.kind();
        let mut bodies = self.payloads();
        for body in &mut bodies {
            let mut out = Vec::with_capacity(MAX_ENVELOPE + body.len());
            envelope.encode(kind, &mut out);
            out.append(body);
            *body = out;
        }
        bodies
    }

    /// What follows the envelope, per body.
    fn payloads(&self) -> Vec<Vec<u8>> {
        match self {
            Message::Pull { instance } => {
                let mut out = vec![VERSION];
                out.extend_from_slice(&instance.to_be_bytes());
                vec![out]
            }
            Message::Pulled { sessions: n }
            | Message::PullStarted { sessions: n }
            | Message::PullProgress { received: n } => vec![n.to_be_bytes().to_vec()],
            Message::Digest { window, xors } => {
                let mut out = Vec::new();
                window.encode(&mut out);
                xors.iter().for_each(|x| out.extend_from_slice(&x.to_be_bytes()));
                vec![out]
            }
            Message::Keys { window, buckets } => {
                let start = || {
                    let mut out = Vec::new();
                    window.encode(&mut out);
                    out
                };
                let fits = (MAX_MESSAGE - 1 - start().len() - 5) / 8;
                let mut bodies = Vec::new();
                let mut out = start();
                for b in buckets {
                    let n = b.ids.len().min(fits);
                    if 1 + out.len() + 5 + 8 * n > MAX_MESSAGE {
                        bodies.push(std::mem::replace(&mut out, start()));
                    }
                    out.extend_from_slice(&b.bucket.to_be_bytes());
                    out.push(u8::from(b.complete && n == b.ids.len()));
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                    b.ids[..n]
                        .iter()
                        .for_each(|id| out.extend_from_slice(&id.to_be_bytes()));
                }
                if !buckets.is_empty() {
                    bodies.push(out);
                }
                bodies
            }
            Message::Want { ids } => ids
                .chunks(WANT_IDS)
                .map(|chunk| chunk.iter().flat_map(|id| id.to_be_bytes()).collect())
                .collect(),
            Message::Cookie => vec![Vec::new()],
        }
    }
}

/// What one node holds, seen through a window: the digest and, per
/// bucket, the tagged ids.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub window: Window,
    pub xors: Vec<u64>,
    pub ids: Vec<Vec<u64>>,
}

/// How a stored entry counts in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A session this node may send to peers.
    Session,
    /// A session it must not send (learnt from a plain datagram, on a
    /// node that seals): listed, never digested.
    Unsendable,
    Tombstone,
}

/// What comparing a peer's `Keys` with a snapshot found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Differences {
    /// Settled here, absent there: send them.
    pub send: Vec<u64>,
    /// Settled there, absent here: ask for them.
    pub want: Vec<u64>,
    /// Deleted there lately, a session here: delete here too.
    pub delete: Vec<u64>,
}

impl Snapshot {
    pub fn new(window: Window) -> Snapshot {
        let n = window.buckets as usize;
        Snapshot {
            window,
            xors: vec![0; n],
            ids: vec![Vec::new(); n],
        }
    }

    /// Counts one stored entry.
    pub fn add(&mut self, id: u64, held: Held, expires: u64) {
        let b = bucket_of(id, self.window.buckets as usize);
        let tagged = match held {
            Held::Session if self.window.covers(expires) => {
                self.xors[b] ^= id;
                id | SETTLED
            }
            Held::Session | Held::Unsendable => id,
            Held::Tombstone => id | TOMBSTONE,
        };
        self.ids[b].push(tagged);
    }

    /// Buckets where a peer's digest differs from this one.
    pub fn differing(&self, theirs: &[u64]) -> Vec<usize> {
        (0..self.xors.len())
            .filter(|&b| theirs.get(b) != Some(&self.xors[b]))
            .collect()
    }

    /// For buckets where a peer's digest differs by one session only, that
    /// session's id: the XOR of the two digests. Returns the ids this node
    /// holds settled (the peer lacks them) and the others (the peer may
    /// hold them and this node lacks them; a bucket that differs by more
    /// than one gives an id nobody holds, harmlessly).
    pub fn single_differences(&self, theirs: &[u64], differing: &[usize]) -> (Vec<u64>, Vec<u64>) {
        let (mut theirs_lack, mut mine_lack) = (Vec::new(), Vec::new());
        for &b in differing {
            let id = self.xors[b] ^ theirs.get(b).copied().unwrap_or(0);
            if id & FLAGS != 0 || bucket_of(id, self.xors.len()) != b {
                continue;
            }
            match self.ids[b].iter().find(|t| *t & !FLAGS == id) {
                Some(t) if t & SETTLED != 0 => theirs_lack.push(id),
                Some(_) => {}
                None => mine_lack.push(id),
            }
        }
        (theirs_lack, mine_lack)
    }

    /// This node's ids of `buckets`, for a `Keys` answer.
    pub fn keys(&self, buckets: &[usize]) -> Message {
        Message::Keys {
            window: self.window,
            buckets: buckets
                .iter()
                .map(|&b| BucketIds {
                    bucket: b as u16,
                    complete: true,
                    ids: self.ids[b].clone(),
                })
                .collect(),
        }
    }

    /// Compares a peer's ids of some buckets (its `Keys`, same window) with
    /// this node's.
    pub fn compare(&self, theirs: &[BucketIds]) -> Differences {
        let mut d = Differences::default();
        for bucket in theirs {
            let Some(mine) = self.ids.get(bucket.bucket as usize) else {
                continue;
            };
            let mine: HashMap<u64, u64> = mine.iter().map(|t| (t & !FLAGS, t & FLAGS)).collect();
            let their_ids: HashSet<u64> = bucket.ids.iter().map(|t| t & !FLAGS).collect();
            for &tagged in &bucket.ids {
                let (id, flags) = (tagged & !FLAGS, tagged & FLAGS);
                match mine.get(&id) {
                    None if flags & SETTLED != 0 => d.want.push(id),
                    Some(&f) if flags & TOMBSTONE != 0 && f & TOMBSTONE == 0 => d.delete.push(id),
                    _ => {}
                }
            }
            // Only a complete list tells what the peer lacks.
            if bucket.complete {
                d.send.extend(
                    mine.iter()
                        .filter(|(id, f)| **f & SETTLED != 0 && !their_ids.contains(id))
                        .map(|(id, _)| *id),
                );
            }
        }
        d
    }
}

#[cfg(test)]
mod tests;
