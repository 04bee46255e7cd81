//! Tests of the cluster ticket keys: derivation (HKDF), fingerprints, rotation
//! and clock skew, epochs, the cache of derived keys, and lifetime limits.

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
