//! Tests of the engine with two replicators on loopback: a session stored on
//! one node reaches the other, warm start and repair between them, and a
//! key file named but not read.

use super::*;
use crate::replication::keys::Key;
use crate::store::{Limits, Lookup};
use std::sync::atomic::AtomicU64;
use std::time::Instant;

fn store() -> Arc<Store> {
    store_of(100)
}

fn store_of(capacity: u64) -> Arc<Store> {
    Arc::new(
        Store::create(Limits {
            capacity,
            keysize: 64,
            blocksize: 1024,
        })
        .unwrap(),
    )
}

struct Counting {
    applied: AtomicU64,
    stop: AtomicBool,
}

impl Observer for Counting {
    fn applied(&self, key: &[u8], outcome: Applied) {
        assert_eq!(key, b"session-id");
        assert_eq!(outcome, Applied::Stored);
        self.applied.fetch_add(1, Ordering::Relaxed);
    }
    fn keep_running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

/// Node A sends through the engine, node B's receiver thread applies:
/// plain and sealed.
#[test]
fn a_session_stored_on_one_node_reaches_the_other() {
    for sealed in [false, true] {
        let key_file = sealed.then(|| ("test".to_string(), "-".to_string()));
        let keys = || sealed.then(|| vec![Key::new([9; 32])]);
        let receiving = Replication {
            servers: vec!["127.0.0.1:0".parse().unwrap()],
            key_file: key_file.clone(),
            max_skew: 30,
            ..Replication::default()
        };
        let b_store = store();
        let b = Arc::new(Replicator::new(&receiving, keys(), b_store.clone(), 300, true, "b").unwrap());
        let sending = Replication {
            nodes: b.receiving_on().iter().map(|a| a.parse().unwrap()).collect(),
            key_file,
            max_skew: 30,
            ..Replication::default()
        };
        let a = Replicator::new(&sending, keys(), store(), 300, false, "a").unwrap();
        assert_eq!(a.sealed_with().is_some(), sealed);
        assert!(a.summary(&sending, "a").contains("sending to 127.0.0.1:"));
        let observer = Arc::new(Counting {
            applied: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        b.start_receivers(observer.clone(), false);
        a.stored(b"session-id", b"der", clock::unix_secs() + 100, Origin::Local);
        let started = Instant::now();
        while observer.applied.load(Ordering::Relaxed) == 0 && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        observer.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        assert!(matches!(
            b_store.get(b"session-id", clock::unix_secs(), &mut out),
            Lookup::Hit { .. }
        ));
        assert_eq!(a.counters().sent.load(Ordering::Relaxed), 1);
        assert_eq!(b.counters().applied.load(Ordering::Relaxed), 1);
    }
}

struct Running(AtomicBool);

impl Observer for Running {
    fn keep_running(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(what: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    while !what() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    what()
}

/// Whether `store` holds a session (not a deletion) under `key`.
fn holds(store: &Store, key: &[u8]) -> bool {
    let mut value = Vec::new();
    matches!(store.get(key, clock::unix_secs(), &mut value), Lookup::Hit { .. })
        && matches!(crate::record::read(&value), Some(crate::record::Record::Session(..)))
}

/// Two nodes, plain and sealed: one that starts empty pulls the other's
/// sessions; sessions that never reached a peer (as if every datagram
/// was lost) get there by repair, both ways; a node that is not a peer
/// gets nothing when replication is plain.
#[test]
fn warm_start_and_repair_between_two_nodes() {
    for sealed in [false, true] {
        let (port_a, port_b) = (free_udp_port(), free_udp_port());
        let addr = |port: u16| -> std::net::SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
        let key_file = sealed.then(|| ("test".to_string(), "-".to_string()));
        let settings = |me: u16, peer: u16| Replication {
            servers: vec![addr(me)],
            nodes: vec![addr(peer)],
            key_file: key_file.clone(),
            max_skew: 30,
            ..Replication::default()
        };
        let keys = || sealed.then(|| vec![Key::new([5; 32])]);
        let now = clock::unix_secs();
        let timeout = 300;
        let (a_store, b_store) = (store_of(3000), store_of(3000));
        // B holds 1000 sessions before A starts; A starts empty.
        for i in 0..1000u32 {
            b_store.insert(
                format!("b-{i}").as_bytes(),
                &crate::record::encode(crate::record::Origin::Local, b"der"),
                now + 100,
                now,
            );
        }
        let b =
            Arc::new(Replicator::new(&settings(port_b, port_a), keys(), b_store.clone(), timeout, false, "b").unwrap());
        let a =
            Arc::new(Replicator::new(&settings(port_a, port_b), keys(), a_store.clone(), timeout, false, "a").unwrap());
        let running = Arc::new(Running(AtomicBool::new(true)));
        b.start_receivers(running.clone(), false);
        a.start_receivers(running.clone(), true);
        assert!(
            wait_for(|| a_store.len() == 1000),
            "sealed {sealed}: A pulled {} of 1000",
            a_store.len()
        );
        assert_eq!(a.counters().pulled.load(Ordering::Relaxed), 1000);
        assert!(holds(&a_store, b"b-999"));

        // Sessions each node stored and never sent: repair brings them
        // over, both ways.
        for i in 0..200u32 {
            let value = crate::record::encode(crate::record::Origin::Local, b"der");
            a_store.insert(format!("a-only-{i}").as_bytes(), &value, now + 200, now);
            b_store.insert(format!("b-only-{i}").as_bytes(), &value, now + 200, now);
        }
        assert!(
            wait_for(|| a_store.len() == 1400 && b_store.len() == 1400),
            "sealed {sealed}: after repair A holds {}, B {}",
            a_store.len(),
            b_store.len()
        );
        assert!(holds(&b_store, b"a-only-7") && holds(&a_store, b"b-only-7"));
        assert!(a.counters().repaired.load(Ordering::Relaxed) >= 200);
        assert!(b.counters().repaired.load(Ordering::Relaxed) >= 200);

        // A deletion that did not reach A is repaired too.
        b.store.remove(b"b-only-3", now);
        b.store.insert(b"b-only-3", crate::record::TOMBSTONE, now + 31, now);
        assert!(wait_for(|| !holds(&a_store, b"b-only-3")));
        assert!(a.counters().repair_deleted.load(Ordering::Relaxed) >= 1);

        // A stranger's pull: answered only when sealed with the key.
        let stranger_store = store_of(3000);
        let stranger = Arc::new(
            Replicator::new(
                &settings(free_udp_port(), port_b),
                keys(),
                stranger_store.clone(),
                timeout,
                false,
                "c",
            )
            .unwrap(),
        );
        stranger.start_receivers(running.clone(), true);
        if sealed {
            assert!(wait_for(|| stranger_store.len() >= 1000));
        } else {
            assert!(wait_for(|| b.counters().sync_ignored.load(Ordering::Relaxed) >= 1));
            std::thread::sleep(Duration::from_millis(500));
            assert!(stranger_store.is_empty());
        }
        running.0.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1200));
    }
}

#[test]
fn keys_named_but_not_read_is_an_error() {
    let settings = Replication {
        key_file: Some(("cache-udp-key".into(), "/k".into())),
        ..Replication::default()
    };
    let e = Replicator::new(&settings, None, store(), 300, false, "c")
        .err()
        .unwrap();
    assert!(e.contains("cache-udp-key = /k: the keys were not read"), "{e}");
}
