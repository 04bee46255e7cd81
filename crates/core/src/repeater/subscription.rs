//! uWSGI's subscription packets, as its `subscribe2` / `subscribe-to`
//! client sends them (core/subscription.c): a uwsgi header (modifier1 224,
//! a little-endian 16-bit size, modifier2 0 to subscribe and anything else
//! to unsubscribe), then keyvals (u16le length, bytes, u16le length, bytes)
//! in the order `key`, `address`, `modifier1`, `modifier2`, `cores`,
//! `load`, `weight`, maybe `sni_*` and `notify`, and when signed `unix`
//! (the sender's time, plus one for an unsubscribe) and `sign` last: a
//! signature of every keyval before it.
//!
//! Signature checks are uWSGI's `subscriptions-sign-check = ALGO:DIR`: a
//! public key `DIR/KEY.pem` per cluster (characters of the key outside
//! `[0-9A-Za-z._-]` read as `_`), RSASSA-PKCS1-v1_5 over the digest ALGO.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::sign::Verifier;

/// modifier1 of a subscription packet.
pub const MODIFIER1: u8 = 224;
/// Longest key and address uWSGI accepts.
const MAX_FIELD: usize = 255;

/// A parsed subscription or unsubscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription<'a> {
    pub unsubscribe: bool,
    /// The cluster.
    pub key: &'a [u8],
    /// Where the node receives datagrams.
    pub address: SocketAddr,
    /// The sender's clock (signed packets only).
    pub unix: Option<u64>,
    pub sign: Option<&'a [u8]>,
    /// The bytes the signature covers.
    pub signed: &'a [u8],
}

/// Why a packet is not a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Header,
    Keyvals,
    /// No `key` or no `address`, or one over 255 bytes.
    Missing,
    /// `address` is not `IP:PORT`.
    Address,
    /// `unix` is not a number.
    Unix,
    /// `sign` present but not last.
    SignNotLast,
}

/// Parses one datagram.
pub fn parse(datagram: &[u8]) -> Result<Subscription<'_>, Malformed> {
    let [m1, lo, hi, m2, body @ ..] = datagram else {
        return Err(Malformed::Header);
    };
    if *m1 != MODIFIER1 || u16::from_le_bytes([*lo, *hi]) as usize != body.len() {
        return Err(Malformed::Header);
    }
    let (mut key, mut address, mut unix, mut sign) = (None, None, None, None);
    let mut signed = body;
    let mut rest = body;
    while !rest.is_empty() {
        let start = body.len() - rest.len();
        let (name, after) = field(rest).ok_or(Malformed::Keyvals)?;
        let (value, after) = field(after).ok_or(Malformed::Keyvals)?;
        rest = after;
        if sign.is_some() {
            return Err(Malformed::SignNotLast);
        }
        match name {
            b"key" => key = Some(value),
            b"address" => address = Some(value),
            b"unix" => {
                let text = std::str::from_utf8(value).map_err(|_| Malformed::Unix)?;
                unix = Some(text.parse::<u64>().map_err(|_| Malformed::Unix)?);
            }
            b"sign" => {
                sign = Some(value);
                signed = &body[..start];
            }
            _ => {}
        }
    }
    let short = |v: &Option<&[u8]>| v.is_some_and(|v| !v.is_empty() && v.len() <= MAX_FIELD);
    if !short(&key) || !short(&address) {
        return Err(Malformed::Missing);
    }
    let address = std::str::from_utf8(address.unwrap_or_default())
        .ok()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .ok_or(Malformed::Address)?;
    Ok(Subscription {
        unsubscribe: *m2 != 0,
        key: key.unwrap_or_default(),
        address,
        unix,
        sign,
        signed,
    })
}

/// One u16le-prefixed field and what follows it.
fn field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let [lo, hi, rest @ ..] = bytes else { return None };
    let len = u16::from_le_bytes([*lo, *hi]) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Signs the bytes it is given (for [`build`]).
pub type SignFn<'a> = &'a dyn Fn(&[u8]) -> Vec<u8>;

/// Builds a subscription packet as uWSGI does (for tests and benches: the
/// repeater itself never sends one). `sign` gets the bytes to sign and
/// returns the signature.
pub fn build(unsubscribe: bool, key: &str, address: &str, unix: Option<u64>, sign: Option<SignFn<'_>>) -> Vec<u8> {
    let mut body = Vec::new();
    let mut keyval = |k: &[u8], v: &[u8]| {
        for part in [k, v] {
            body.extend_from_slice(&(part.len() as u16).to_le_bytes());
            body.extend_from_slice(part);
        }
    };
    keyval(b"key", key.as_bytes());
    keyval(b"address", address.as_bytes());
    for (k, v) in [
        ("modifier1", "0"),
        ("modifier2", "0"),
        ("cores", "1"),
        ("load", "0"),
        ("weight", "0"),
    ] {
        keyval(k.as_bytes(), v.as_bytes());
    }
    if let Some(unix) = unix {
        keyval(b"unix", unix.to_string().as_bytes());
    }
    if let Some(sign) = sign {
        let signature = sign(&body);
        body.extend_from_slice(&4u16.to_le_bytes());
        body.extend_from_slice(b"sign");
        body.extend_from_slice(&(signature.len() as u16).to_le_bytes());
        body.extend_from_slice(&signature);
    }
    let mut out = vec![MODIFIER1];
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.push(u8::from(unsubscribe));
    out.extend_from_slice(&body);
    out
}

/// Why a signed subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignRefusal {
    /// No `sign` or no `unix`.
    Unsigned,
    /// No readable `DIR/KEY.pem`.
    NoKey,
    /// The signature does not verify.
    Forged,
}

/// uWSGI's `subscriptions-sign-check`: the digest and the directory of
/// public keys, read once per cluster key.
pub struct SignCheck {
    digest: MessageDigest,
    dir: PathBuf,
    keys: HashMap<Vec<u8>, Option<PKey<Public>>>,
}

/// Public keys kept, at most (a key never seen is read from the directory).
const MAX_KEYS: usize = 1024;

impl SignCheck {
    /// `ALGO:DIR`; an unknown digest or a missing directory is an error.
    pub fn new(option: &str, spec: &str) -> Result<SignCheck, String> {
        let (algo, dir) = spec
            .split_once(':')
            .ok_or_else(|| format!("{option} = {spec}: expected ALGO:DIR (for example sha256:/etc/uwsgi/keys)"))?;
        let digest =
            MessageDigest::from_name(algo).ok_or_else(|| format!("{option} = {spec}: unknown digest {algo:?}"))?;
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            return Err(format!("{option} = {spec}: {} is not a directory", dir.display()));
        }
        Ok(SignCheck {
            digest,
            dir,
            keys: HashMap::new(),
        })
    }

    /// Where the public key of cluster `key` is read from.
    pub fn key_path(&self, key: &[u8]) -> PathBuf {
        let name: String = key
            .iter()
            .map(|&b| match b {
                b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' | b'.' | b'_' | b'-' => b as char,
                _ => '_',
            })
            .collect();
        self.dir.join(format!("{name}.pem"))
    }

    /// Verifies `s`'s signature with its cluster's key.
    pub fn verify(&mut self, s: &Subscription<'_>) -> Result<(), SignRefusal> {
        let (Some(sign), Some(_)) = (s.sign, s.unix) else {
            return Err(SignRefusal::Unsigned);
        };
        if !self.keys.contains_key(s.key) {
            if self.keys.len() >= MAX_KEYS {
                self.keys.clear();
            }
            let key = std::fs::read(self.key_path(s.key))
                .ok()
                .and_then(|pem| PKey::public_key_from_pem(&pem).ok());
            self.keys.insert(s.key.to_vec(), key);
        }
        let Some(Some(key)) = self.keys.get(s.key) else {
            return Err(SignRefusal::NoKey);
        };
        let verified = Verifier::new(self.digest, key)
            .and_then(|mut v| {
                v.update(s.signed)?;
                v.verify(sign)
            })
            .unwrap_or(false);
        if verified {
            Ok(())
        } else {
            Err(SignRefusal::Forged)
        }
    }

    /// Forgets the keys read (a key file replaced is read again).
    pub fn forget_keys(&mut self) {
        self.keys.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::pkey::Private;
    use openssl::rsa::Rsa;
    use openssl::sign::Signer;

    fn rsa() -> PKey<Private> {
        PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
    }

    fn signer(key: &PKey<Private>) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
        move |bytes| {
            let mut s = Signer::new(MessageDigest::sha256(), key).unwrap();
            s.update(bytes).unwrap();
            s.sign_to_vec().unwrap()
        }
    }

    #[test]
    fn parses_what_uwsgi_sends() {
        // uWSGI 2.0's own bytes for key=app.local, address=127.0.0.1:3031
        // (core/subscription.c), unsigned.
        let mut stock = vec![0xe0, 0, 0, 0];
        for (k, v) in [
            ("key", "app.local"),
            ("address", "127.0.0.1:3031"),
            ("modifier1", "0"),
            ("modifier2", "0"),
            ("cores", "4"),
            ("load", "0"),
            ("weight", "0"),
        ] {
            for part in [k, v] {
                stock.extend_from_slice(&(part.len() as u16).to_le_bytes());
                stock.extend_from_slice(part.as_bytes());
            }
        }
        let size = (stock.len() - 4) as u16;
        stock[1..3].copy_from_slice(&size.to_le_bytes());
        assert_eq!(size, 99);
        let s = parse(&stock).unwrap();
        assert!(!s.unsubscribe);
        assert_eq!(s.key, b"app.local");
        assert_eq!(s.address, "127.0.0.1:3031".parse().unwrap());
        assert_eq!((s.unix, s.sign), (None, None));
        stock[3] = 1;
        assert!(parse(&stock).unwrap().unsubscribe);
        assert_eq!(
            parse(&build(true, "c", "[::1]:9", Some(5), None)).unwrap().unix,
            Some(5)
        );
    }

    #[test]
    fn refuses_every_malformed_packet() {
        let good = build(false, "cluster", "127.0.0.2:4000", Some(7), None);
        assert!(parse(&good).is_ok());
        assert_eq!(parse(&[]), Err(Malformed::Header));
        assert_eq!(parse(&good[..good.len() - 1]), Err(Malformed::Header));
        let mut wrong = good.clone();
        wrong[0] = 111;
        assert_eq!(parse(&wrong), Err(Malformed::Header));
        // A length that runs past the end.
        let mut lying = good.clone();
        lying[4] = 200;
        assert_eq!(parse(&lying), Err(Malformed::Keyvals));
        assert_eq!(
            parse(&build(false, "", "127.0.0.1:1", None, None)),
            Err(Malformed::Missing)
        );
        assert_eq!(
            parse(&build(false, &"k".repeat(256), "127.0.0.1:1", None, None)),
            Err(Malformed::Missing)
        );
        assert_eq!(
            parse(&build(false, "c", "somewhere", None, None)),
            Err(Malformed::Address)
        );
        assert_eq!(
            parse(&build(false, "c", "/tmp/sock", None, None)),
            Err(Malformed::Address)
        );
        // A signature followed by more keyvals.
        let sign = |_: &[u8]| vec![1, 2, 3];
        let mut signed = build(false, "c", "127.0.0.1:1", Some(1), Some(&sign));
        signed.extend_from_slice(&[1, 0, b'x', 1, 0, b'y']);
        let size = (signed.len() - 4) as u16;
        signed[1..3].copy_from_slice(&size.to_le_bytes());
        assert_eq!(parse(&signed), Err(Malformed::SignNotLast));
        // Every truncation and every one-byte flip: an answer, never a panic.
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
        }
        for i in 0..good.len() {
            let mut d = good.clone();
            d[i] ^= 0xff;
            let _ = parse(&d);
        }
    }

    #[test]
    fn signatures_verify_with_the_clusters_key_only() {
        let dir = std::env::temp_dir().join(format!("sslcache-sign-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (key, other) = (rsa(), rsa());
        std::fs::write(dir.join("my_cluster.pem"), key.public_key_to_pem().unwrap()).unwrap();
        let mut check = SignCheck::new("subscriptions-sign-check", &format!("sha256:{}", dir.display())).unwrap();
        assert_eq!(check.key_path(b"my/cluster"), dir.join("my_cluster.pem"));
        let ok = build(false, "my/cluster", "127.0.0.1:5", Some(100), Some(&signer(&key)));
        assert_eq!(check.verify(&parse(&ok).unwrap()), Ok(()));
        let forged = build(false, "my/cluster", "127.0.0.1:5", Some(100), Some(&signer(&other)));
        assert_eq!(check.verify(&parse(&forged).unwrap()), Err(SignRefusal::Forged));
        // The address changed after signing.
        let mut moved = ok.clone();
        let at = moved.windows(11).position(|w| w == b"127.0.0.1:5").unwrap();
        moved[at + 10] = b'6';
        assert_eq!(check.verify(&parse(&moved).unwrap()), Err(SignRefusal::Forged));
        let unsigned = build(false, "my/cluster", "127.0.0.1:5", Some(100), None);
        assert_eq!(check.verify(&parse(&unsigned).unwrap()), Err(SignRefusal::Unsigned));
        let elsewhere = build(false, "another", "127.0.0.1:5", Some(100), Some(&signer(&key)));
        assert_eq!(check.verify(&parse(&elsewhere).unwrap()), Err(SignRefusal::NoKey));
        assert!(SignCheck::new("o", "nodigest:/tmp").is_err());
        assert!(SignCheck::new("o", "sha256:/nonexistent-dir").is_err());
        assert!(SignCheck::new("o", "sha256").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
