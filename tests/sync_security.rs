//! Warm start and repair cannot be turned against a node or a bystander
//! (what a security review reproduced on real nodes, tried again here).
//!
//! - **An address is not an identity.** A local user who binds a stopped
//!   peer's address (any port above 1024: no privilege needed) and speaks
//!   the sync protocol as a peer would, cookie round trip included, gets
//!   the sessions a plain node holds (that is what plain replication is),
//!   but never one with a client identity: not pushed, pulled nor repaired.
//! - **No reflection.** In a network namespace of the test's own, raw
//!   sockets send `Pull`, `Keys`, `Want` and `Digest` from a forged source
//!   (a configured peer's address, where a socket of the test counts what
//!   arrives): what the node sends there in answer, per datagram and over
//!   10 s of flooding, is at most 3 times what was sent.
//! - **Sealed messages name their recipient.** A sealed `Pull` meant for
//!   one node gets no answer from another, and a node answers a sealed
//!   message only at the reply address it names, never at the forged
//!   source it came from.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sslcache_core::replication::digest::{self, Envelope, Message, Window};
use sslcache_core::replication::keys::Key;
use sslcache_core::replication::seal::{Opener, Sealer};
use sslcache_core::replication::wire::{self, Frame, FrameLimits};
use sslcache_testkit::*;

const LIMITS: FrameLimits = FrameLimits {
    max_key: 1024,
    max_value: 65_535,
};
/// The bound on bytes answered per byte received, from a source that did
/// not prove it receives: no answer is larger than its question (the worst
/// measured is 0.82; a node's own digests and pulls are not answers).
const MAX_AMPLIFICATION: f64 = 1.0;

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The plain frames that carry `message` in `envelope`.
fn frames(message: &Message, envelope: &Envelope) -> Vec<Vec<u8>> {
    message
        .encode(envelope)
        .iter()
        .map(|body| {
            let mut frame = Vec::new();
            wire::encode_sync(body, &mut frame).unwrap();
            frame
        })
        .collect()
}

/// What arrived at a socket of the test, decoded.
#[derive(Debug, Default)]
struct Arrived {
    /// Session ids of the sets, and the sync messages.
    sets: Vec<Vec<u8>>,
    messages: Vec<(Envelope, Message)>,
    /// Bytes of the datagrams that answer something: all but the node's
    /// own digests and pulls (it sends those to its peers unasked).
    answer_bytes: usize,
    answers: usize,
}

impl Arrived {
    fn add(&mut self, frame: &[u8], datagram_len: usize) {
        match wire::decode_plain(frame, LIMITS) {
            Ok(Frame::Set { key, .. }) => {
                self.sets.push(key.to_vec());
            }
            Ok(Frame::Sync { body }) => {
                if let Ok(m) = Message::decode(body) {
                    if matches!(m.1, Message::Digest { .. } | Message::Pull { .. }) {
                        self.messages.push(m);
                        return;
                    }
                    self.messages.push(m);
                }
            }
            _ => {}
        }
        self.answers += 1;
        self.answer_bytes += datagram_len;
    }

    /// The grant of the last `Cookie` that arrived.
    fn cookie(&self) -> Option<u64> {
        self.messages
            .iter()
            .rev()
            .find(|(_, m)| *m == Message::Cookie)
            .map(|(e, _)| e.grant)
    }
}

/// Reads what arrives at `socket` for `quiet` after the last datagram (at
/// most `limit` in all), opening sealed datagrams with `opener`.
/// A socket standing in for a node or a victim at `addr`, with a receive
/// buffer as large as a node's (4 MB): a pull is answered with hundreds of
/// datagrams at once, which the 208 kB default drops when this process
/// reads late (a loaded machine).
fn receiver(addr: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind(addr).unwrap();
    let size: libc::c_int = 4 << 20;
    // SAFETY: setsockopt on a descriptor `socket` owns, with a pointer to a
    // c_int that lives through the call and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE (needs root)");
    socket
}

fn collect(socket: &UdpSocket, quiet: Duration, limit: Duration, opener: Option<&Opener>) -> Arrived {
    socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut arrived = Arrived::default();
    let started = Instant::now();
    let mut last = Instant::now();
    let mut buf = vec![0u8; 65_536];
    while last.elapsed() < quiet && started.elapsed() < limit {
        let Ok(n) = socket.recv(&mut buf) else { continue };
        last = Instant::now();
        match opener {
            Some(o) => {
                if let Ok(frame) = o.open(&buf[..n], unix_ms()) {
                    arrived.add(&frame, n);
                }
            }
            None => arrived.add(&buf[..n], n),
        }
    }
    arrived
}

// ---------------------------------------------------------------------------
// An address is not an identity

extern "C" {
    fn SSL_SESSION_get0_ticket(s: *const openssl_sys::SSL_SESSION, tick: *mut *const u8, len: *mut usize);
}

/// The session id a handshake on `port` made, as the server stored it: the
/// session id in TLS 1.2 without tickets, the ticket in TLS 1.3 (a stateful
/// ticket is the stored session's id; the client's own id for it is a hash).
fn session_id(client: &Client, port: u16) -> Vec<u8> {
    let (mut stream, _) = client.handshake(port, None).expect("handshake");
    // TLS 1.3: the session comes after the handshake.
    stream
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let _ = std::io::Read::read(&mut stream, &mut [0u8; 1]);
    let session = stream.ssl().session().expect("a session");
    let (mut tick, mut len) = (std::ptr::null(), 0usize);
    // An openssl-crate reference to an OpenSSL object is the object's
    // address (foreign-types' `as_ptr`).
    let raw = session as *const openssl::ssl::SslSessionRef as *const openssl_sys::SSL_SESSION;
    // SAFETY: a valid session; OpenSSL points `tick` into it (or at
    // nothing), and it is copied before the session goes.
    let ticket = unsafe {
        SSL_SESSION_get0_ticket(raw, &mut tick, &mut len);
        if tick.is_null() {
            Vec::new()
        } else {
            std::slice::from_raw_parts(tick, len).to_vec()
        }
    };
    let id = if ticket.is_empty() {
        session.id().to_vec()
    } else {
        ticket
    };
    assert!(!id.is_empty());
    id
}

#[test]
fn a_taken_peer_address_gets_no_session_with_a_client_identity() {
    let dir = test_dir("identity-plain");
    let pki = pki();
    let (udp, taken) = (free_port(), free_port());
    assert!(taken > 1024, "a port any local user may bind");
    // The peer is down; the test holds its address.
    let attacker = receiver(local(taken));
    let (open, verified, stats_port) = (free_port(), free_port(), free_port());
    let ini = format!(
        "[uwsgi]\nplugin-dir = {}\nplugins = sslcache\nmaster = true\n{DEFAULT_CACHE}\n\
         ssl-sessions-timeout = 300\nhttps-session-context = foobar\n\
         https = 127.0.0.1:{open},{},{}\n\
         https = 127.0.0.1:{verified},{},{},HIGH,!{}\n\
         http-processes = 2\nhttp-to = 127.0.0.1:{}\nstats = 127.0.0.1:{stats_port}\n\
         cache-udp-server = 127.0.0.1:{udp}\ncache-udp-node = 127.0.0.1:{taken}\n",
        plugin_dir().display(),
        pki.a.0.display(),
        pki.a.1.display(),
        pki.b.0.display(),
        pki.b.1.display(),
        pki.ca_crt.display(),
        free_port(),
    );
    let mut node = Uwsgi::start(&dir, "node", &ini, &[open, verified, stats_port]);
    assert!(node.log().contains("never sent in the clear"), "{}", node.log());

    let mut plain_ids = Vec::new();
    let mut identity_ids = Vec::new();
    for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
        plain_ids.push(session_id(&Client::new(proto), open));
        identity_ids.push(session_id(
            &Client::with_identity(proto, &pki.client_crt, &pki.client_key),
            verified,
        ));
    }
    // Pushed as they were made: the ones without identity only.
    let pushed = collect(&attacker, Duration::from_millis(700), Duration::from_secs(5), None);
    let held = |arrived: &Arrived, ids: &[Vec<u8>]| ids.iter().filter(|id| arrived.sets.contains(id)).count();
    assert_eq!(held(&pushed, &plain_ids), 2, "{pushed:?}");
    assert_eq!(held(&pushed, &identity_ids), 0, "{pushed:?}");

    // A pull, as a peer makes it: the cookie round trip, then the answer.
    let node_addr = local(udp);
    let envelope = |proof| Envelope {
        to: node_addr,
        from: local(taken),
        proof,
        grant: 1,
    };
    let send = |m: &Message, proof| {
        for f in frames(m, &envelope(proof)) {
            attacker.send_to(&f, node_addr).unwrap();
        }
    };
    let pull = Message::Pull { instance: 42 };
    send(&pull, 0);
    let first = collect(&attacker, Duration::from_millis(500), Duration::from_secs(5), None);
    let cookie = first.cookie().expect("a cookie for the taken address");
    assert_eq!(
        first.sets.len(),
        0,
        "nothing but a cookie before the address proved itself"
    );
    send(&pull, cookie);
    let pulled = collect(&attacker, Duration::from_millis(700), Duration::from_secs(10), None);
    assert_eq!(held(&pulled, &plain_ids), 2, "the pull works: {pulled:?}");
    assert_eq!(held(&pulled, &identity_ids), 0, "{pulled:?}");

    // Repair: asked for by id, and offered through a digest.
    let ids: Vec<u64> = plain_ids
        .iter()
        .chain(&identity_ids)
        .map(|k| digest::id_of(k))
        .collect();
    send(&Message::Want { ids }, cookie);
    let repaired = collect(&attacker, Duration::from_millis(700), Duration::from_secs(5), None);
    assert_eq!(held(&repaired, &plain_ids), 2, "the repair works: {repaired:?}");
    assert_eq!(held(&repaired, &identity_ids), 0, "{repaired:?}");
    let buckets = digest::buckets_for(20_000);
    let window = Window::at(unix_secs(), 300, buckets).unwrap();
    send(
        &Message::Keys {
            window,
            buckets: (0..buckets as u16)
                .map(|bucket| digest::BucketIds {
                    bucket,
                    complete: true,
                    ids: Vec::new(),
                })
                .collect(),
        },
        cookie,
    );
    let offered = collect(&attacker, Duration::from_millis(700), Duration::from_secs(5), None);
    assert_eq!(held(&offered, &identity_ids), 0, "{offered:?}");

    assert!(metric(stats_port, "sslcache.default.kept_identity") >= 2);
    node.stop();
}

// ---------------------------------------------------------------------------
// No reflection

/// Runs `f` in a network namespace of its own (this thread and what it
/// starts), loopback up.
fn in_namespace<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare(2) moves this thread alone (spawned for it)
                // into a new network namespace; processes it starts inherit
                // it, and it ends with the thread.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare (needs root)");
                let out = Command::new("ip").args(["link", "set", "lo", "up"]).output().unwrap();
                assert!(out.status.success());
                f()
            })
            .join()
            .unwrap()
    })
}

/// Sends UDP datagrams with any source address (IP_HDRINCL).
struct RawSender(i32);

impl RawSender {
    fn new() -> RawSender {
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket (needs root)");
        RawSender(fd)
    }

    /// Sends `payload` from `from` to `to`; returns the UDP payload's size.
    fn send(&self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> usize {
        let total = 20 + 8 + payload.len();
        let mut packet = Vec::with_capacity(total);
        // IPv4 header: the kernel fills in the checksum and the id.
        packet.extend_from_slice(&[0x45, 0]);
        packet.extend_from_slice(&(total as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
        packet.extend_from_slice(&from.ip().octets());
        packet.extend_from_slice(&to.ip().octets());
        // UDP header, no checksum (allowed over IPv4).
        packet.extend_from_slice(&from.port().to_be_bytes());
        packet.extend_from_slice(&to.port().to_be_bytes());
        packet.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0]);
        packet.extend_from_slice(payload);
        let dest = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(*to.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `packet` and `dest` outlive the call; the lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                self.0,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&dest as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(sent, packet.len() as isize, "raw send");
        payload.len()
    }
}

impl Drop for RawSender {
    fn drop(&mut self) {
        // SAFETY: the descriptor is this sender's own.
        unsafe { libc::close(self.0) };
    }
}

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("IPv4 only"),
    }
}

/// `n` sessions into the node at `to`, as stock replication sets; their ids.
fn inject(to: SocketAddr, n: usize) -> Vec<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let expires = unix_secs() + 280;
    let mut datagram = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{i:032x}").into_bytes();
        wire::encode_set(&id, &[(i % 251) as u8; 250], expires, &mut datagram).unwrap();
        socket.send_to(&datagram, to).unwrap();
        ids.push(id);
        if i % 200 == 199 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    ids
}

/// The forged datagrams tried, each alone and then all in a flood.
fn forged(to: SocketAddr, from: SocketAddr, ids: &[Vec<u8>], buckets: usize) -> Vec<(&'static str, Vec<u8>)> {
    let window = Window::at(unix_secs(), 300, buckets).unwrap();
    let wide = Window {
        lo: 0,
        hi: u64::MAX / 2,
        buckets: buckets as u16,
    };
    let empty_keys = |window| Message::Keys {
        window,
        buckets: (0..buckets as u16)
            .map(|bucket| digest::BucketIds {
                bucket,
                complete: true,
                ids: Vec::new(),
            })
            .collect(),
    };
    let all: Vec<u64> = ids.iter().map(|k| digest::id_of(k)).collect();
    let mut out = Vec::new();
    for (proof, label) in [(0, "no cookie"), (0x1234_5678_9abc_def1, "a made-up cookie")] {
        let envelope = Envelope {
            to,
            from,
            proof,
            grant: 7,
        };
        let messages: Vec<(&'static str, Message)> = vec![
            ("Pull", Message::Pull { instance: 1 }),
            ("Keys, empty buckets, the node's window", empty_keys(window)),
            ("Keys, empty buckets, a window of all time", empty_keys(wide)),
            ("Want, every session", Message::Want { ids: all.clone() }),
            (
                "Digest, all zero",
                Message::Digest {
                    window,
                    xors: vec![0; buckets],
                },
            ),
            ("PullProgress", Message::PullProgress { received: u64::MAX }),
        ];
        for (what, m) in messages {
            for frame in frames(&m, &envelope) {
                out.push((if proof == 0 { what } else { label }, frame));
            }
        }
    }
    out
}

#[test]
fn forged_sources_get_no_more_bytes_than_they_sent() {
    let dir = test_dir("reflection");
    in_namespace(move || {
        let (udp, victim_port, https, stats_port) = (free_port(), free_port(), free_port(), free_port());
        // The victim: a configured peer's address, where nothing of the
        // node's is.
        let victim = receiver(local(victim_port));
        let ini = seed_setup1(&plugin_dir(), https, stats_port, 1, DEFAULT_CACHE)
            + &format!("cache-udp-server = 127.0.0.1:{udp}\ncache-udp-node = 127.0.0.1:{victim_port}\n");
        let mut node = Uwsgi::start(&dir, "node", &ini, &[https, stats_port]);
        let ids = inject(local(udp), 2000);
        assert!(eventually(Duration::from_secs(10), || {
            cache_stats(stats_port, "default")["items"].as_u64() == Some(2000)
        }));
        // The node's own pulls and digests to its peer are not answers.
        let _ = collect(&victim, Duration::from_millis(300), Duration::from_secs(3), None);
        let raw = RawSender::new();
        let datagrams = forged(local(udp), local(victim_port), &ids, digest::buckets_for(20_000));
        let mut worst: (f64, &str) = (0.0, "");
        for (what, datagram) in &datagrams {
            let sent = raw.send(v4(local(victim_port)), v4(local(udp)), datagram);
            let arrived = collect(&victim, Duration::from_millis(400), Duration::from_secs(3), None);
            let factor = arrived.answer_bytes as f64 / sent as f64;
            println!(
                "{what}: {sent} bytes sent, {} answers, {} bytes: {factor:.2}x",
                arrived.answers, arrived.answer_bytes
            );
            assert!(arrived.sets.is_empty(), "{what}: sessions sent to a forged source");
            if factor > worst.0 {
                worst = (factor, what);
            }
        }
        println!("worst single datagram: {:.2}x ({})", worst.0, worst.1);
        assert!(worst.0 <= MAX_AMPLIFICATION, "{worst:?}");

        // 10 s of flooding, 1,000 forged datagrams a second.
        let receiver =
            std::thread::spawn(move || collect(&victim, Duration::from_secs(2), Duration::from_secs(20), None));
        let (started, mut sent, mut n) = (Instant::now(), 0usize, 0usize);
        while started.elapsed() < Duration::from_secs(10) && n < 10_000 {
            let (_, datagram) = &datagrams[n % datagrams.len()];
            sent += raw.send(v4(local(victim_port)), v4(local(udp)), datagram);
            n += 1;
            if n % 10 == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let arrived = receiver.join().unwrap();
        let factor = arrived.answer_bytes as f64 / sent as f64;
        println!(
            "flood: {n} datagrams, {sent} bytes in {secs:.1} s; {} answers, {} bytes ({:.0} bytes/s): {factor:.3}x",
            arrived.answers,
            arrived.answer_bytes,
            arrived.answer_bytes as f64 / secs
        );
        assert!(arrived.sets.is_empty());
        assert!(factor <= MAX_AMPLIFICATION);
        assert!(metric(stats_port, "sslcache.default.sync_unproven") > 0);
        node.stop();
    });
}

// ---------------------------------------------------------------------------
// Sealed messages name their recipient

const KEY_HEX: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

fn key() -> Key {
    Key::new([0x5a; 32])
}

#[test]
fn sealed_messages_are_answered_only_by_their_recipient_at_their_reply_address() {
    let dir = test_dir("sealed-recipient");
    let key_path = key_file(&dir, "cluster.key", &[KEY_HEX]);
    in_namespace(move || {
        // B and C: sealed nodes; A: the peer B and C know, played by the
        // test (it holds A's address and the key); V: a bystander.
        let (a, b, c, v) = (free_port(), free_port(), free_port(), free_port());
        let a_socket = receiver(local(a));
        let victim = receiver(local(v));
        let start = |name: &str, udp: u16| {
            let (https, stats_port) = (free_port(), free_port());
            let ini = seed_setup1(&plugin_dir(), https, stats_port, 1, DEFAULT_CACHE)
                + &format!(
                    "cache-udp-server = 127.0.0.1:{udp}\ncache-udp-node = 127.0.0.1:{a}\ncache-udp-key = {}\n",
                    key_path.display()
                );
            (Uwsgi::start(&dir, name, &ini, &[https, stats_port]), stats_port)
        };
        let (mut node_b, stats_b) = start("b", b);
        let (mut node_c, stats_c) = start("c", c);
        let ids = inject_sealed(local(b), 500);
        assert!(eventually(Duration::from_secs(10), || {
            cache_stats(stats_b, "default")["items"].as_u64() == Some(500)
        }));
        let opener = Opener::new(vec![key()], 30, unix_ms());
        let sealer = Sealer::new(&key());
        let seq = AtomicU64::new(1);
        let seal = |frame: &[u8]| {
            let mut out = Vec::new();
            sealer.seal(frame, &seq, unix_ms(), &mut out);
            out
        };
        let raw = RawSender::new();
        // What B and C send to A on their own (pulls, digests) is drained.
        let _ = collect(
            &a_socket,
            Duration::from_millis(300),
            Duration::from_secs(3),
            Some(&opener),
        );

        // A sealed Pull meant for B, from A: first without a cookie, so B
        // answers with one, to A's address and not the forged source's.
        let pull = |proof| {
            frames(
                &Message::Pull { instance: 9 },
                &Envelope {
                    to: local(b),
                    from: local(a),
                    proof,
                    grant: 3,
                },
            )
            .remove(0)
        };
        raw.send(v4(local(v)), v4(local(b)), &seal(&pull(0)));
        let at_a = collect(
            &a_socket,
            Duration::from_millis(500),
            Duration::from_secs(3),
            Some(&opener),
        );
        let cookie = at_a.cookie().expect("B's cookie, at A's address");
        let at_v = collect(&victim, Duration::from_millis(100), Duration::from_secs(1), None);
        assert_eq!(at_v.answers, 0, "B answered the forged source");

        // With B's cookie, from the forged source: B's sessions go to A.
        let proven = seal(&pull(cookie));
        raw.send(v4(local(v)), v4(local(b)), &proven);
        let at_a = collect(
            &a_socket,
            Duration::from_millis(700),
            Duration::from_secs(10),
            Some(&opener),
        );
        assert!(
            ids.iter().filter(|id| at_a.sets.contains(id)).count() >= 490,
            "B answers the pull at A: {} sets",
            at_a.sets.len()
        );
        let at_v = collect(&victim, Duration::from_millis(100), Duration::from_secs(1), None);
        assert_eq!(at_v.answers, 0, "B answered the forged source");

        // The same Pull (B's cookie and all) replayed to C, which it does not
        // name: no answer anywhere.
        let misdirected = metric(stats_c, "sslcache.default.sync_misdirected");
        raw.send(v4(local(v)), v4(local(c)), &proven);
        raw.send(v4(local(a)), v4(local(c)), &seal(&pull(cookie)));
        let at_a = collect(
            &a_socket,
            Duration::from_millis(500),
            Duration::from_secs(3),
            Some(&opener),
        );
        let at_v = collect(&victim, Duration::from_millis(100), Duration::from_secs(1), None);
        assert_eq!(at_v.answers, 0);
        assert!(at_a.sets.is_empty() && at_a.cookie().is_none(), "C answered: {at_a:?}");
        assert!(eventually(Duration::from_secs(3), || metric(
            stats_c,
            "sslcache.default.sync_misdirected"
        ) >= misdirected + 2));
        node_b.stop();
        node_c.stop();
    });
}

/// `n` sessions into the sealed node at `to`, as sealed sets; their ids.
fn inject_sealed(to: SocketAddr, n: usize) -> Vec<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sealer = Sealer::new(&key());
    let seq = AtomicU64::new(1);
    let expires = unix_secs() + 280;
    let (mut frame, mut sealed, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let id = format!("{i:032x}").into_bytes();
        wire::encode_set(&id, &[(i % 251) as u8; 250], expires, &mut frame).unwrap();
        sealer.seal(&frame, &seq, unix_ms(), &mut sealed);
        socket.send_to(&sealed, to).unwrap();
        ids.push(id);
        if i % 200 == 199 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    ids
}
