//! Tests of the sync messages and digests: windows, differences found from
//! the digests, every message kind round trip (and split when too large),
//! malformed bodies refused, and a decoder that never panics (proptest).

use super::*;
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000;

fn window() -> Window {
    Window::at(NOW, 300, 64).unwrap()
}

fn snapshot(entries: &[(&[u8], Held, u64)]) -> Snapshot {
    let mut s = Snapshot::new(window());
    for (key, held, expires) in entries {
        s.add(id_of(key), *held, *expires);
    }
    s
}

fn envelope() -> Envelope {
    Envelope {
        to: "127.0.0.2:4000".parse().unwrap(),
        from: "[::1]:4001".parse().unwrap(),
        proof: 7,
        grant: u64::MAX,
    }
}

fn roundtrip(m: &Message) -> Vec<Message> {
    m.encode(&envelope())
        .iter()
        .map(|b| {
            let (e, m) = Message::decode(b).unwrap();
            assert_eq!(e, envelope());
            m
        })
        .collect()
}

/// A body of `kind` with `payload` after a valid envelope.
fn body(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    envelope().encode(kind, &mut out);
    out.extend_from_slice(payload);
    out
}

#[test]
fn windows_leave_out_fresh_and_dying_sessions() {
    let w = Window::at(NOW, 300, 64).unwrap();
    // Stored this second (expires NOW + 300): in flight, not settled.
    assert!(!w.covers(NOW + 300));
    assert!(w.covers(NOW + 299));
    assert!(w.covers(NOW + 3));
    assert!(!w.covers(NOW + 2));
    assert_eq!(Window::at(NOW, 3, 64), None);
    assert_eq!(Window::at(NOW, 300, 63), None);
    // Above a full store's horizon: only what expires later.
    let above = w.above(NOW + 200).unwrap();
    assert!(!above.covers(NOW + 200) && above.covers(NOW + 201) && above.covers(NOW + 299));
    assert_eq!(w.above(NOW), Some(w), "a horizon behind the window changes nothing");
    assert_eq!(w.above(NOW + 299), None);
    assert_eq!(buckets_for(100), 64);
    assert_eq!(buckets_for(100_000), 512);
    assert_eq!(buckets_for(u64::MAX / 2), MAX_BUCKETS);
}

#[test]
fn equal_holdings_equal_digests_and_differences_are_found() {
    let live = NOW + 100;
    let a = snapshot(&[
        (b"s1", Held::Session, live),
        (b"s2", Held::Session, live),
        (b"new", Held::Session, NOW + 300),
    ]);
    let b = snapshot(&[(b"s2", Held::Session, live), (b"s1", Held::Session, live)]);
    // The unsettled session does not count.
    assert!(a.differing(&b.xors).is_empty());

    let c = snapshot(&[
        (b"s1", Held::Session, live),
        (b"s3", Held::Session, live),
        (b"gone", Held::Tombstone, live),
    ]);
    let a2 = snapshot(&[
        (b"s1", Held::Session, live),
        (b"s2", Held::Session, live),
        (b"gone", Held::Session, live),
    ]);
    let differing = a2.differing(&c.xors);
    assert!(!differing.is_empty());
    let Message::Keys { buckets, .. } = c.keys(&differing) else {
        panic!()
    };
    let d = a2.compare(&buckets);
    assert_eq!(d.send, vec![id_of(b"s2")]);
    assert_eq!(d.want, vec![id_of(b"s3")]);
    assert_eq!(d.delete, vec![id_of(b"gone")]);
}

#[test]
fn a_single_difference_is_read_off_the_digests() {
    let live = NOW + 100;
    let a = snapshot(&[(b"s1", Held::Session, live), (b"s2", Held::Session, live)]);
    let b = snapshot(&[(b"s1", Held::Session, live)]);
    let differing = a.differing(&b.xors);
    assert_eq!(a.single_differences(&b.xors, &differing), (vec![id_of(b"s2")], vec![]));
    assert_eq!(b.single_differences(&a.xors, &differing), (vec![], vec![id_of(b"s2")]));
}

#[test]
fn nothing_is_sent_on_an_incomplete_list_and_unsendable_is_never_asked() {
    let live = NOW + 100;
    let a = snapshot(&[(b"s1", Held::Session, live)]);
    let b = snapshot(&[(b"plain", Held::Unsendable, live)]);
    let bucket = bucket_of(id_of(b"s1"), 64);
    let theirs = vec![BucketIds {
        bucket: bucket as u16,
        complete: false,
        ids: vec![],
    }];
    assert_eq!(a.compare(&theirs), Differences::default());
    let plain_bucket = bucket_of(id_of(b"plain"), 64);
    let Message::Keys { buckets, .. } = b.keys(&[plain_bucket]) else {
        panic!()
    };
    assert!(a.compare(&buckets).want.is_empty());
}

#[test]
fn messages_roundtrip_and_split() {
    for m in [
        Message::Pull { instance: 42 },
        Message::Pulled { sessions: 12345 },
        Message::PullStarted { sessions: 7 },
        Message::PullProgress { received: 9 },
        Message::Digest {
            window: window(),
            xors: (0..64).collect(),
        },
        Message::Want { ids: vec![4, 8, 12] },
    ] {
        assert_eq!(roundtrip(&m), vec![m.clone()]);
    }
    // Three buckets of 600 ids: one per body (two do not fit 8 KB).
    let buckets: Vec<BucketIds> = (0..3u16)
        .map(|b| BucketIds {
            bucket: b,
            complete: true,
            ids: (0..600u64).map(|i| (b as u64) << 40 | i << 2).collect(),
        })
        .collect();
    let keys = Message::Keys {
        window: window(),
        buckets: buckets.clone(),
    };
    let bodies = keys.encode(&envelope());
    assert_eq!(bodies.len(), 3);
    assert!(bodies.iter().all(|b| b.len() <= MAX_BODY));
    for (i, m) in roundtrip(&keys).into_iter().enumerate() {
        assert_eq!(
            m,
            Message::Keys {
                window: window(),
                buckets: vec![buckets[i].clone()]
            }
        );
    }
    // A bucket too big for a body is cut and marked incomplete.
    let big = Message::Keys {
        window: window(),
        buckets: vec![BucketIds {
            bucket: 0,
            complete: true,
            ids: (0..2000u64).map(|i| i << 2).collect(),
        }],
    };
    let [m] = &roundtrip(&big)[..] else { panic!() };
    let Message::Keys { buckets, .. } = m else { panic!() };
    assert!(!buckets[0].complete);
    assert!(buckets[0].ids.len() < 2000);
    let want = Message::Want {
        ids: (0..2500).collect(),
    };
    assert_eq!(want.encode(&envelope()).len(), 3);
}

#[test]
fn rejects_malformed_bodies() {
    let digest = Message::Digest {
        window: window(),
        xors: vec![0; 64],
    }
    .encode(&envelope())
    .remove(0);
    let mut keys_head = Vec::new();
    window().encode(&mut keys_head);
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        // An earlier version's Pull (no envelope).
        vec![PULL, VERSION, 0, 0, 0, 0, 0, 0, 0, 0],
        body(9, &[]),
        body(PULL, &[]),
        body(PULL, &[2]),
        body(PULLED, &[1, 2]),
        body(COOKIE, &[0]),
        digest[..digest.len() - 1].to_vec(),
        [&digest[..], &[0]].concat(),
        body(WANT, &[]),
        body(WANT, &[1, 2, 3]),
        // A bucket id beyond the window's buckets.
        body(KEYS, &[&keys_head[..], &[0, 64, 1, 0, 0]].concat()),
        // An id listed under the wrong bucket.
        body(KEYS, &[&keys_head[..], &[0, 1, 1, 0, 1], &0u64.to_be_bytes()].concat()),
        // An address of no family, a truncated envelope.
        {
            let mut b = body(COOKIE, &[]);
            b[2] = 5;
            b
        },
        body(COOKIE, &[])[..20].to_vec(),
    ];
    for case in cases {
        assert!(Message::decode(&case).is_err(), "{case:?}");
    }
    assert_eq!(Message::decode(&body(COOKIE, &[])), Ok((envelope(), Message::Cookie)));
    // Buckets not a power of two.
    let mut digest = digest;
    let at = digest.len() - 64 * 8 - 1;
    digest[at] = 63;
    assert!(Message::decode(&digest).is_err());
}

proptest! {
    #[test]
    fn never_panics(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Message::decode(&body);
    }

    /// Two nodes that differ by any sets of sessions find every
    /// difference in one exchange.
    #[test]
    fn one_exchange_finds_every_difference(
        common in proptest::collection::hash_set(any::<u32>(), 0..200),
        only_a in proptest::collection::hash_set(any::<u32>(), 0..50),
        only_b in proptest::collection::hash_set(any::<u32>(), 0..50),
    ) {
        let live = NOW + 100;
        let (mut a, mut b) = (Snapshot::new(window()), Snapshot::new(window()));
        for k in &common {
            a.add(id_of(&k.to_be_bytes()), Held::Session, live);
            b.add(id_of(&k.to_be_bytes()), Held::Session, live);
        }
        let only_a: Vec<_> = only_a.difference(&common).map(|k| id_of(&k.to_be_bytes())).collect();
        let only_b: Vec<_> = only_b.difference(&common).map(|k| id_of(&k.to_be_bytes())).filter(|id| !only_a.contains(id)).collect();
        only_a.iter().for_each(|&id| a.add(id, Held::Session, live));
        only_b.iter().for_each(|&id| b.add(id, Held::Session, live));
        // a's digest reaches b; b answers with its keys; a compares.
        let Message::Keys { buckets, .. } = b.keys(&b.differing(&a.xors)) else { panic!() };
        let d = a.compare(&buckets);
        let mut send = d.send.clone();
        send.sort();
        let mut expected_send = only_a.clone();
        expected_send.sort();
        prop_assert_eq!(send, expected_send);
        let mut want = d.want.clone();
        want.sort();
        let mut expected_want = only_b.clone();
        expected_want.sort();
        prop_assert_eq!(want, expected_want);
    }
}
