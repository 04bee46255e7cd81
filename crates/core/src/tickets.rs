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
mod tests {
    use super::*;

    const FP_A: [u8; 32] = [0xa; 32];
    const FP_B: [u8; 32] = [0xb; 32];
    const NOW: u64 = 1_700_000_000;

    fn schedule() -> Schedule {
        Schedule {
            interval: 3600,
            lifetime: 300,
            skew: 30,
        }
    }

    fn keys(bytes: &[[u8; 32]]) -> TicketKeys {
        let keys: Vec<Key> = bytes.iter().map(|b| Key::new(*b)).collect();
        TicketKeys::new(&keys, schedule()).unwrap()
    }

    fn issue(k: &TicketKeys, now: u64, fp: &[u8; 32]) -> ([u8; 16], [u8; 32], [u8; 32]) {
        k.issue(now, fp, |m| (*m.name, *m.aes, *m.hmac)).unwrap()
    }

    fn open(k: &TicketKeys, name: &[u8; 16], now: u64, fp: &[u8; 32]) -> Result<(Opened, [u8; 32], [u8; 32]), Refused> {
        k.open(name, now, fp, |m| (*m.aes, *m.hmac))
            .map(|(o, (a, h))| (o, a, h))
    }

    #[test]
    fn hkdf_is_rfc5869() {
        // RFC 5869, test case 1.
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let mut prk = [0u8; 32];
        hkdf(HkdfMode::EXTRACT_ONLY, &ikm, Some(&salt), &[], &mut prk).unwrap();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(&prk),
            "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
        );
        let mut okm = [0u8; 42];
        hkdf(HkdfMode::EXPAND_ONLY, &prk, None, &[&info[..5], &info[5..]], &mut okm).unwrap();
        assert_eq!(
            hex(&okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn every_node_of_a_cluster_derives_the_same_keys_and_no_other_cluster_does() {
        let (node1, node2, stranger) = (keys(&[[1; 32]]), keys(&[[1; 32]]), keys(&[[2; 32]]));
        let (name, aes, hmac) = issue(&node1, NOW, &FP_A);
        let (opened, aes2, hmac2) = open(&node2, &name, NOW, &FP_A).unwrap();
        assert_eq!((aes, hmac), (aes2, hmac2));
        assert_eq!(
            opened,
            Opened {
                renew: false,
                ahead: false
            }
        );
        assert_eq!(open(&stranger, &name, NOW, &FP_A).unwrap_err(), Refused::WrongCluster);
        // The AES and HMAC keys differ, and differ from the other cluster's.
        assert_ne!(aes, hmac);
        assert_ne!(issue(&stranger, NOW, &FP_A).1, aes);
    }

    #[test]
    fn a_ticket_opens_only_under_its_fingerprint() {
        let k = keys(&[[1; 32]]);
        let (name_a, aes_a, _) = issue(&k, NOW, &FP_A);
        let (name_b, aes_b, _) = issue(&k, NOW, &FP_B);
        assert_ne!(aes_a, aes_b);
        assert_ne!(name_a[8..], name_b[8..]);
        assert_eq!(name_a[..8], name_b[..8]);
        assert_eq!(open(&k, &name_a, NOW, &FP_B).unwrap_err(), Refused::WrongContext);
        assert!(open(&k, &name_a, NOW, &FP_A).is_ok());
        // A forged tag under the right id and epoch.
        let mut forged = name_a;
        forged[15] ^= 1;
        assert_eq!(open(&k, &forged, NOW, &FP_A).unwrap_err(), Refused::WrongContext);
    }

    #[test]
    fn rotation_renews_older_epochs_until_lifetime_and_interval_have_passed() {
        let s = schedule();
        let k = keys(&[[1; 32]]);
        let epoch_start = (NOW / 3600) * 3600;
        let (old, old_aes, _) = issue(&k, epoch_start + 3599, &FP_A);
        let (new, new_aes, _) = issue(&k, epoch_start + 3600, &FP_A);
        assert_ne!(old_aes, new_aes, "the key rotates at the epoch boundary");
        assert_ne!(old[4..8], new[4..8]);
        // The previous epoch still decrypts, renewed, for `lifetime` after
        // its end; then never again.
        let (o, a, _) = open(&k, &old, epoch_start + 3600 + 1, &FP_A).unwrap();
        assert_eq!((o.renew, o.ahead, a), (true, false, old_aes));
        assert!(open(&k, &old, epoch_start + 3600 + s.lifetime - 1, &FP_A).is_ok());
        assert_eq!(
            open(&k, &old, epoch_start + 3600 + s.lifetime, &FP_A).unwrap_err(),
            Refused::Expired
        );
        // The key span: from skew before the epoch to interval + lifetime after.
        assert_eq!(s.key_span(), 30 + 3600 + 300);
    }

    #[test]
    fn a_clock_ahead_within_the_skew_is_accepted_beyond_it_not() {
        let k = keys(&[[1; 32]]);
        let boundary = (NOW / 3600 + 1) * 3600;
        // Made by a node 30 s ahead, just past the boundary on its clock.
        let (ahead, _, _) = issue(&k, boundary + 1, &FP_A);
        let (o, _, _) = open(&k, &ahead, boundary - 29, &FP_A).unwrap();
        assert_eq!(
            o,
            Opened {
                renew: false,
                ahead: true
            }
        );
        assert_eq!(open(&k, &ahead, boundary - 31, &FP_A).unwrap_err(), Refused::Expired);
        // Far in the future: refused.
        let (future, _, _) = issue(&k, NOW + 86_400, &FP_A);
        assert_eq!(open(&k, &future, NOW, &FP_A).unwrap_err(), Refused::Expired);
        // Far in the past: refused.
        let (past, _, _) = issue(&k, NOW - 86_400, &FP_A);
        assert_eq!(open(&k, &past, NOW, &FP_A).unwrap_err(), Refused::Expired);
    }

    #[test]
    fn short_intervals_accept_every_epoch_a_ticket_may_live_in() {
        let s = Schedule {
            interval: 5,
            lifetime: 60,
            skew: 30,
        };
        let k = TicketKeys::new(&[Key::new([1; 32])], s).unwrap();
        let (name, _, _) = k.issue(NOW, &FP_A, |m| (*m.name, *m.aes, *m.hmac)).unwrap();
        // Its epoch ends at NOW + 5 (NOW is a multiple of 5); the key
        // decrypts until the last ticket it may have made is dead (the
        // ticket's own lifetime is checked apart, from its issue time).
        for later in 0..70 {
            let r = k.open(&name, NOW + later, &FP_A, |_| ());
            assert_eq!(r.is_ok(), later < 5 + 60, "{later}");
        }
        // A node 30 s ahead makes epoch NOW/5 + 6: accepted here.
        let (ahead, _, _) = k.issue(NOW + 30, &FP_A, |m| (*m.name, *m.aes, *m.hmac)).unwrap();
        assert!(k.open(&ahead, NOW, &FP_A, |_| ()).unwrap().0.ahead);
    }

    #[test]
    fn cluster_key_rotation_rotates_ticket_keys() {
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        // Step 1: the new key second everywhere; step 2: first; step 3: alone.
        let step1 = keys(&[k1, k2]);
        let step2 = keys(&[k2, k1]);
        let step3 = keys(&[k2]);
        let (t1, _, _) = issue(&step1, NOW, &FP_A);
        let (t2, _, _) = issue(&step2, NOW, &FP_A);
        assert_ne!(t1[..4], t2[..4]);
        // Step 1 and 2 nodes open each other's tickets; the old key's are renewed.
        assert!(open(&step1, &t2, NOW, &FP_A).unwrap().0.renew);
        assert!(open(&step2, &t1, NOW, &FP_A).unwrap().0.renew);
        assert!(!open(&step2, &t2, NOW, &FP_A).unwrap().0.renew);
        // Once the old key is gone, its tickets are another cluster's.
        assert_eq!(open(&step3, &t1, NOW, &FP_A).unwrap_err(), Refused::WrongCluster);
        assert!(open(&step3, &t2, NOW, &FP_A).is_ok());
    }

    #[test]
    fn derived_keys_are_cached_and_retired_keys_zeroed() {
        let s = Schedule {
            interval: 10,
            lifetime: 20,
            skew: 0,
        };
        let k = TicketKeys::new(&[Key::new([1; 32])], s).unwrap();
        let t0 = 1_000_000_000;
        for _ in 0..5 {
            k.issue(t0, &FP_A, |_| ()).unwrap();
        }
        assert_eq!(k.derivations(), 1);
        assert!(k.holds_epoch(t0 / 10));
        // Deriving at t0 + 40 (epoch + 4) retires the epoch of t0, whose
        // tickets died at t0 + 10 + 20.
        k.issue(t0 + 40, &FP_A, |_| ()).unwrap();
        assert!(!k.holds_epoch(t0 / 10));
        assert_eq!(k.cached(), 1);
        // More (epoch, fingerprint) pairs than slots: the oldest goes.
        for i in 0..(SLOTS as u64 + 8) {
            let mut fp = [0u8; 32];
            fp[..8].copy_from_slice(&i.to_be_bytes());
            k.issue(t0 + 40, &fp, |_| ()).unwrap();
        }
        assert_eq!(k.cached(), SLOTS);
        assert!(format!("{k:?}").contains("roots: 1"));
    }

    #[test]
    fn the_page_holding_derived_keys_is_left_out_of_core_dumps() {
        let k = keys(&[[1; 32]]);
        let addr = k.issue(NOW, &FP_A, |m| m.aes.as_ptr() as usize).unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_mapping = false;
        let mut flags = None;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, hi)) = range.split_once('-') {
                    if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                        in_mapping = (lo..hi).contains(&addr);
                        continue;
                    }
                }
            }
            if in_mapping {
                if let Some(f) = line.strip_prefix("VmFlags:") {
                    flags = Some(f.to_string());
                }
            }
        }
        let flags = flags.expect("the key cache's mapping is in smaps");
        assert!(flags.split_whitespace().any(|f| f == "dd"), "VmFlags:{flags}");
    }

    #[test]
    fn epochs_wrap_to_the_nearest() {
        let k = TicketKeys::new(
            &[Key::new([1; 32])],
            Schedule {
                interval: 1,
                lifetime: 100,
                skew: 10,
            },
        )
        .unwrap();
        let now = (1u64 << 32) + 5;
        // Made 10 s ago, before the low 32 bits wrapped.
        let (name, _, _) = k.issue(now - 10, &FP_A, |m| (*m.name, *m.aes, *m.hmac)).unwrap();
        assert_eq!(u32::from_be_bytes(name[4..8].try_into().unwrap()), u32::MAX - 4);
        assert!(k.open(&name, now, &FP_A, |_| ()).unwrap().0.renew);
    }

    #[test]
    fn appdata_and_chain_limits() {
        let a = appdata(NOW);
        assert_eq!(authenticated_at(&a), Some(NOW));
        assert_eq!(authenticated_at(&a[..10]), None);
        assert_eq!(authenticated_at(b"xyz12345678"), None);
        // A chain never outlives its first authentication by more than the lifetime.
        assert_eq!(remaining(NOW, NOW, 300), 300);
        assert_eq!(remaining(NOW, NOW + 100, 300), 200);
        assert_eq!(remaining(NOW, NOW + 300, 300), 0);
        assert_eq!(remaining(NOW, NOW + 1000, 300), 0);
        // An authentication stamped in the future (a clock ahead): never more than the lifetime.
        assert_eq!(remaining(NOW + 30, NOW, 300), 300);
    }
}
