//! Cluster tickets: TLS session ticket keys that every node of a cluster
//! derives by itself from the cluster key, with no traffic and nothing on
//! disk.
//!
//! From each cluster key `K` (the sealed mode's key file) a node derives a
//! root `R = HKDF-Extract(salt = "sslcache cluster tickets v1", K)` and a
//! public ticket key id (4 bytes of `HKDF-Expand(R, "sslcache ticket key
//! id")`). Time is cut into epochs of the rotation interval `I` (epoch =
//! unix time / `I`, the same on every node whose clock is right). The keys
//! of a ticket made in epoch `e` for a TLS context whose fingerprint is `F`
//! (see the plugin's `tls::fingerprint`: session context, certificate,
//! client-certificate policy) are
//!
//! ```text
//! HKDF-Expand(R, "sslcache ticket keys v1" || e (u64 BE) || F, 72)
//!   = AES-256-CBC key (32) || HMAC-SHA256 key (32) || context tag (8)
//! ```
//!
//! and the ticket's 16-byte key name, which OpenSSL puts in front of every
//! ticket, is `id (4) || e (u32 BE) || tag (8)`. So:
//!
//! - a ticket made on any node decrypts on any other node holding the same
//!   cluster key, and on no node without it (the id is unknown there: "wrong
//!   cluster");
//! - a ticket decrypts only under the fingerprint it was made for: the keys
//!   derive from it, so a listener or SNI host with another fingerprint
//!   derives other keys, and the tag (derived with them) tells that case
//!   ("wrong context") from a forgery without revealing the fingerprint;
//! - the first cluster key encrypts, every key of the file decrypts (the
//!   sealed mode's rotation steps rotate the ticket keys with it); a ticket
//!   decrypted with a later key of the file or an older epoch is renewed.
//!
//! **Which epochs decrypt** ([`Schedule::judge`]): a key of epoch `e` issues
//! tickets until `(e + 1) * I` and such a ticket lives `lifetime` seconds, so
//! it is accepted while `(e + 1) * I + lifetime > now`; a node whose clock
//! runs up to `skew` seconds ahead already issues later epochs, so epochs
//! starting up to `now + skew` are accepted too. A key is thus usable from
//! `skew` before its epoch starts until `interval + lifetime` after: that is
//! the forward-secrecy bound, after which nothing it encrypted can be
//! decrypted by any node (its root stays, but the epoch is refused).
//!
//! **Where keys live**: roots in a [`SecretPage`] (left out of core dumps,
//! locked when allowed, zeroed when dropped, dropped in the application's
//! processes); derived keys in a small per-process cache in another secret
//! page, each slot zeroed as soon as its epoch leaves the window. Nothing is
//! written anywhere: after a reload the same keys are derived again.

use std::sync::Mutex;

use openssl::md::Md;
use openssl::pkey::Id;
use openssl::pkey_ctx::{HkdfMode, PkeyCtx};

use crate::replication::keys::{wipe, Key};
use crate::shm::SecretPage;

/// Bytes of a ticket key name (`TLSEXT_KEYNAME_LENGTH`).
pub const NAME_LEN: usize = 16;
/// Bytes of a context fingerprint.
pub const FINGERPRINT_LEN: usize = 32;

const EXTRACT_SALT: &[u8] = b"sslcache cluster tickets v1";
const ID_INFO: &[u8] = b"sslcache ticket key id";
const KEYS_INFO: &[u8] = b"sslcache ticket keys v1";
const AES_LEN: usize = 32;
const HMAC_LEN: usize = 32;
const TAG_LEN: usize = 8;

/// When keys change and how long what they made is good for, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Rotation interval (at least 1).
    pub interval: u64,
    /// Ticket lifetime.
    pub lifetime: u64,
    /// How far ahead another node's clock may run.
    pub skew: u64,
}

/// Where an epoch stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochVerdict {
    /// The epoch that encrypts now.
    Current,
    /// An earlier epoch whose tickets may still live: decrypt and renew.
    Older,
    /// A later epoch, from a node whose clock is ahead (within the skew).
    Ahead,
    /// Nothing it made can still be valid.
    TooOld,
    /// Beyond the skew: from a clock too far ahead (or made up).
    TooNew,
}

impl Schedule {
    pub fn epoch(&self, now: u64) -> u64 {
        now / self.interval.max(1)
    }

    pub fn judge(&self, epoch: u64, now: u64) -> EpochVerdict {
        let interval = self.interval.max(1);
        let current = self.epoch(now);
        if epoch == current {
            EpochVerdict::Current
        } else if epoch < current {
            let end = epoch.saturating_add(1).saturating_mul(interval);
            if end.saturating_add(self.lifetime) > now {
                EpochVerdict::Older
            } else {
                EpochVerdict::TooOld
            }
        } else if epoch.saturating_mul(interval) <= now.saturating_add(self.skew) {
            EpochVerdict::Ahead
        } else {
            EpochVerdict::TooNew
        }
    }

    /// Seconds a key can decrypt, from the first node that may use it (a
    /// clock `skew` ahead) to the end of the last ticket it made.
    pub fn key_span(&self) -> u64 {
        self.skew + self.interval + self.lifetime
    }
}

/// Why a ticket's key name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No key of this cluster has its key id.
    WrongCluster,
    /// Its epoch is outside the window: too old, or too far ahead.
    Expired,
    /// Made for a context with another fingerprint (or a forged name).
    WrongContext,
}

/// How a ticket's key name was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Made with an older epoch or a later cluster key of the file: give
    /// the client a ticket under the current key.
    pub renew: bool,
    /// Made by a node whose clock is ahead of this one.
    pub ahead: bool,
}

/// The keys of one ticket, borrowed from the key cache.
pub struct Material<'a> {
    pub name: &'a [u8; NAME_LEN],
    pub aes: &'a [u8; AES_LEN],
    pub hmac: &'a [u8; HMAC_LEN],
}

/// The root of one cluster key.
struct Root {
    id: [u8; 4],
    prk: SecretPage,
}

impl Root {
    fn prk(&self) -> &[u8] {
        &self.prk.bytes()[..32]
    }
}

fn hkdf(mode: HkdfMode, key: &[u8], salt: Option<&[u8]>, info: &[&[u8]], out: &mut [u8]) -> Result<(), String> {
    let run = || -> Result<(), openssl::error::ErrorStack> {
        let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
        ctx.derive_init()?;
        ctx.set_hkdf_md(Md::sha256())?;
        ctx.set_hkdf_mode(mode)?;
        ctx.set_hkdf_key(key)?;
        if let Some(salt) = salt {
            ctx.set_hkdf_salt(salt)?;
        }
        for part in info {
            ctx.add_hkdf_info(part)?;
        }
        ctx.derive(Some(out))?;
        Ok(())
    };
    run().map_err(|e| format!("HKDF-SHA256: {e}"))
}

/// Bytes of one cache slot: used (1), root index (1), epoch (8),
/// fingerprint (32), name (16), AES key (32), HMAC key (32), padding.
const SLOT: usize = 128;
const SLOTS: usize = 64;
const O_USED: usize = 0;
const O_ROOT: usize = 1;
const O_EPOCH: usize = 2;
const O_FP: usize = 10;
const O_NAME: usize = O_FP + FINGERPRINT_LEN;
const O_AES: usize = O_NAME + NAME_LEN;
const O_HMAC: usize = O_AES + AES_LEN;
const _: () = assert!(O_HMAC + HMAC_LEN <= SLOT);

/// Derived keys of this process, in a secret page: a slot per (cluster
/// key, epoch, fingerprint) in use.
struct Cache {
    page: SecretPage,
    /// Derivations made (tests).
    derived: u64,
}

impl Cache {
    fn slot(&self, i: usize) -> &[u8] {
        &self.page.bytes()[i * SLOT..(i + 1) * SLOT]
    }

    fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.page.bytes_mut()[i * SLOT..(i + 1) * SLOT]
    }

    fn epoch_of(slot: &[u8]) -> u64 {
        u64::from_be_bytes(slot[O_EPOCH..O_EPOCH + 8].try_into().expect("8 bytes"))
    }

    fn find(&self, root: usize, epoch: u64, fp: &[u8; FINGERPRINT_LEN]) -> Option<usize> {
        (0..SLOTS).find(|&i| {
            let s = self.slot(i);
            s[O_USED] == 1 && s[O_ROOT] as usize == root && Self::epoch_of(s) == epoch && s[O_FP..O_NAME] == fp[..]
        })
    }

    /// Zeroes every slot whose epoch can no longer decrypt at `now`.
    fn retire(&mut self, schedule: &Schedule, now: u64) {
        for i in 0..SLOTS {
            let s = self.slot(i);
            if s[O_USED] == 1 && schedule.judge(Self::epoch_of(s), now) == EpochVerdict::TooOld {
                wipe(self.slot_mut(i));
            }
        }
    }

    /// A free slot, else the one of the oldest epoch (zeroed).
    fn take(&mut self) -> usize {
        if let Some(i) = (0..SLOTS).find(|&i| self.slot(i)[O_USED] == 0) {
            return i;
        }
        let i = (0..SLOTS).min_by_key(|&i| Self::epoch_of(self.slot(i))).expect("slots");
        wipe(self.slot_mut(i));
        i
    }

    fn material(&self, i: usize) -> Material<'_> {
        let s = self.slot(i);
        Material {
            name: s[O_NAME..O_NAME + NAME_LEN].try_into().expect("name"),
            aes: s[O_AES..O_AES + AES_LEN].try_into().expect("aes"),
            hmac: s[O_HMAC..O_HMAC + HMAC_LEN].try_into().expect("hmac"),
        }
    }
}

/// The ticket keys of a node: roots of its cluster keys, its schedule and
/// the keys this process derived from them.
pub struct TicketKeys {
    roots: Vec<Root>,
    schedule: Schedule,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a byte of a key.
        f.debug_struct("TicketKeys")
            .field("roots", &self.roots.len())
            .field("schedule", &self.schedule)
            .finish()
    }
}

impl TicketKeys {
    /// Derives the roots of `keys` (the first encrypts). Errors name what
    /// failed, never a key.
    pub fn new(keys: &[Key], schedule: Schedule) -> Result<TicketKeys, String> {
        if keys.is_empty() {
            return Err("no cluster key to derive ticket keys from".into());
        }
        if schedule.interval == 0 || schedule.lifetime == 0 {
            return Err("the rotation interval and the ticket lifetime must be positive".into());
        }
        let mut roots: Vec<Root> = Vec::with_capacity(keys.len());
        for key in keys {
            let mut prk = SecretPage::new(32).map_err(|e| format!("cannot map a page for a ticket key: {e}"))?;
            hkdf(
                HkdfMode::EXTRACT_ONLY,
                key.bytes(),
                Some(EXTRACT_SALT),
                &[],
                &mut prk.bytes_mut()[..32],
            )?;
            let mut id = [0u8; 4];
            hkdf(HkdfMode::EXPAND_ONLY, &prk.bytes()[..32], None, &[ID_INFO], &mut id)?;
            if roots.iter().any(|r| r.id == id) {
                return Err("two cluster keys give the same ticket key id: replace one of them".into());
            }
            roots.push(Root { id, prk });
        }
        let page = SecretPage::new(SLOT * SLOTS).map_err(|e| format!("cannot map a page for ticket keys: {e}"))?;
        Ok(TicketKeys {
            roots,
            schedule,
            cache: Mutex::new(Cache { page, derived: 0 }),
        })
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// How many cluster keys decrypt (the first also encrypts).
    pub fn key_count(&self) -> usize {
        self.roots.len()
    }

    /// Runs `f` with the keys of a slot for (root, epoch, fingerprint),
    /// derived if needed.
    fn with_slot<R>(
        &self,
        root: usize,
        epoch: u64,
        fp: &[u8; FINGERPRINT_LEN],
        now: u64,
        f: impl FnOnce(&Material<'_>) -> R,
    ) -> Result<R, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let i = match cache.find(root, epoch, fp) {
            Some(i) => i,
            None => {
                cache.retire(&self.schedule, now);
                let i = cache.take();
                let mut okm = [0u8; AES_LEN + HMAC_LEN + TAG_LEN];
                let derived = hkdf(
                    HkdfMode::EXPAND_ONLY,
                    self.roots[root].prk(),
                    None,
                    &[KEYS_INFO, &epoch.to_be_bytes(), fp],
                    &mut okm,
                );
                if let Err(e) = derived {
                    wipe(&mut okm);
                    return Err(e);
                }
                let id = self.roots[root].id;
                let s = cache.slot_mut(i);
                s[O_USED] = 1;
                s[O_ROOT] = root as u8;
                s[O_EPOCH..O_EPOCH + 8].copy_from_slice(&epoch.to_be_bytes());
                s[O_FP..O_NAME].copy_from_slice(fp);
                s[O_NAME..O_NAME + 4].copy_from_slice(&id);
                s[O_NAME + 4..O_NAME + 8].copy_from_slice(&(epoch as u32).to_be_bytes());
                s[O_NAME + 8..O_AES].copy_from_slice(&okm[AES_LEN + HMAC_LEN..]);
                s[O_AES..O_AES + AES_LEN].copy_from_slice(&okm[..AES_LEN]);
                s[O_HMAC..O_HMAC + HMAC_LEN].copy_from_slice(&okm[AES_LEN..AES_LEN + HMAC_LEN]);
                wipe(&mut okm);
                cache.derived += 1;
                i
            }
        };
        Ok(f(&cache.material(i)))
    }

    /// The keys that encrypt a ticket for fingerprint `fp` at `now`: the
    /// first cluster key's, of the current epoch.
    pub fn issue<R>(
        &self,
        now: u64,
        fp: &[u8; FINGERPRINT_LEN],
        f: impl FnOnce(&Material<'_>) -> R,
    ) -> Result<R, String> {
        self.with_slot(0, self.schedule.epoch(now), fp, now, f)
    }

    /// The keys that decrypt a ticket whose key name is `name`, offered at
    /// `now` where the connection's fingerprint is `fp`.
    pub fn open<R>(
        &self,
        name: &[u8; NAME_LEN],
        now: u64,
        fp: &[u8; FINGERPRINT_LEN],
        f: impl FnOnce(&Material<'_>) -> R,
    ) -> Result<(Opened, R), Refused> {
        let Some(root) = self.roots.iter().position(|r| r.id == name[..4]) else {
            return Err(Refused::WrongCluster);
        };
        let epoch = self.full_epoch(u32::from_be_bytes(name[4..8].try_into().expect("4 bytes")), now);
        let verdict = self.schedule.judge(epoch, now);
        if matches!(verdict, EpochVerdict::TooOld | EpochVerdict::TooNew) {
            return Err(Refused::Expired);
        }
        let opened = Opened {
            renew: root != 0 || verdict == EpochVerdict::Older,
            ahead: verdict == EpochVerdict::Ahead,
        };
        let result = self.with_slot(root, epoch, fp, now, |m| {
            // Constant time: the tag is compared as the MAC it is.
            openssl::memcmp::eq(&m.name[8..], &name[8..]).then(|| f(m))
        });
        match result {
            Ok(Some(r)) => Ok((opened, r)),
            Ok(None) => Err(Refused::WrongContext),
            // A derivation that fails decrypts nothing; never seen.
            Err(_) => Err(Refused::WrongContext),
        }
    }

    /// The epoch a key name's 32 low bits stand for: the one nearest to
    /// now's (epochs wrap every 2^32 intervals).
    fn full_epoch(&self, low: u32, now: u64) -> u64 {
        let current = self.schedule.epoch(now);
        let base = current & !0xffff_ffff;
        let candidates = [base.wrapping_sub(1 << 32), base, base.wrapping_add(1 << 32)];
        candidates
            .into_iter()
            .map(|b| b | u64::from(low))
            .min_by_key(|e| e.abs_diff(current))
            .expect("candidates")
    }

    /// Keys derived by this process so far (tests).
    pub fn derivations(&self) -> u64 {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).derived
    }

    /// Slots holding keys now (tests).
    pub fn cached(&self) -> usize {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        (0..SLOTS).filter(|&i| cache.slot(i)[O_USED] == 1).count()
    }

    /// Whether any cached slot holds a key of `epoch` (tests: retired keys
    /// are gone).
    pub fn holds_epoch(&self, epoch: u64) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        (0..SLOTS).any(|i| cache.slot(i)[O_USED] == 1 && Cache::epoch_of(cache.slot(i)) == epoch)
    }
}

/// What cluster tickets carry besides the session (OpenSSL's ticket
/// appdata): the time of the full handshake that authenticated the client
/// first, which every ticket of the resumption chain keeps.
pub const APPDATA_LEN: usize = 11;
const APPDATA_MAGIC: &[u8; 3] = b"sc1";

pub fn appdata(authenticated: u64) -> [u8; APPDATA_LEN] {
    let mut out = [0u8; APPDATA_LEN];
    out[..3].copy_from_slice(APPDATA_MAGIC);
    out[3..].copy_from_slice(&authenticated.to_be_bytes());
    out
}

/// The authentication time in a ticket's appdata, if it is one of ours.
pub fn authenticated_at(appdata: &[u8]) -> Option<u64> {
    (appdata.len() == APPDATA_LEN && appdata[..3] == APPDATA_MAGIC[..])
        .then(|| u64::from_be_bytes(appdata[3..].try_into().expect("8 bytes")))
}

/// How long a ticket issued at `now` for a chain authenticated at
/// `authenticated` may live: at most `lifetime`, and never past
/// `authenticated + lifetime`; 0: issue none.
pub fn remaining(authenticated: u64, now: u64, lifetime: u64) -> u64 {
    authenticated.saturating_add(lifetime).saturating_sub(now).min(lifetime)
}

#[cfg(test)]
mod tests;
