//! The udprepeater (the seed's gateway): real uWSGI nodes whose only
//! replication setting is the repeater (`cache-udp-node` pointing at it,
//! uWSGI's own `subscribe2`), behind HAProxy; a stock uWSGI node
//! subscribed the same way; nodes that leave; signed subscriptions.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use sslcache_testkit::*;

const RECONNECTS: usize = 300;
const CLUSTER: &str = "sessions.example";

/// A repeater instance of its own on 127.0.0.10.
struct Repeater {
    process: Uwsgi,
    data: SocketAddr,
    subscription: SocketAddr,
    stats: SocketAddr,
}

impl Repeater {
    fn start(dir: &Path, name: &str, extra: &str) -> Repeater {
        Repeater::start_on(dir, name, free_port(), free_port(), free_port(), extra)
    }

    fn start_on(dir: &Path, name: &str, data: u16, subscription: u16, stats: u16, extra: &str) -> Repeater {
        let ip = [127, 0, 0, 10];
        Repeater::start_at(
            dir,
            name,
            [(ip, data).into(), (ip, subscription).into(), (ip, stats).into()],
            extra,
        )
    }

    /// On the data, subscription and stats addresses given.
    fn start_at(dir: &Path, name: &str, [data, subscription, stats]: [SocketAddr; 3], extra: &str) -> Repeater {
        let ini = format!(
            "[uwsgi]\nplugin-dir = {}\nplugins = sslcache\nmaster = true\nudprepeater = {data}\n\
             udprepeater-subscription-server = {subscription}\nudprepeater-stats = {stats}\n{extra}",
            plugin_dir().display()
        );
        let mut process = Uwsgi::spawn(dir, name, &ini);
        process.wait_ready_on(&[stats]);
        Repeater {
            process,
            data,
            subscription,
            stats,
        }
    }

    fn stats(&self) -> serde_json::Value {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(self.stats).expect("repeater stats");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn counter(&self, name: &str) -> u64 {
        self.stats()["udprepeater"]["counters"][name].as_u64().unwrap_or(0)
    }

    /// The subscribers of `cluster`.
    fn subscribers(&self, cluster: &str) -> Vec<String> {
        let stats = self.stats();
        let clusters = stats["udprepeater"]["clusters"].as_array().cloned().unwrap_or_default();
        clusters
            .iter()
            .filter(|c| c["key"] == cluster)
            .flat_map(|c| c["subscribers"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| s["address"].as_str().map(str::to_string))
            .collect()
    }

    fn wait_subscribers(&self, cluster: &str, n: usize) {
        assert!(
            eventually(Duration::from_secs(15), || self.subscribers(cluster).len() == n),
            "{n} subscribers expected: {:?}\n{}",
            self.subscribers(cluster),
            self.process.log()
        );
    }
}

/// A node's replication lines: the repeater only.
fn through(repeater: &Repeater, i: usize, udp: u16, extra: &str) -> String {
    through_all(&[repeater.data], &[repeater.subscription], i, udp, extra)
}

/// A node's replication lines: every repeater of `data` (and where each
/// takes subscriptions).
fn through_all(data: &[SocketAddr], subscription: &[SocketAddr], i: usize, udp: u16, extra: &str) -> String {
    let mut lines = format!("cache-udp-server = 127.0.0.{i}:{udp}\n");
    for (d, s) in data.iter().zip(subscription) {
        lines += &format!("cache-udp-node = {d}\nsubscribe2 = server={s},key={CLUSTER},addr=127.0.0.{i}:{udp}\n");
    }
    lines + extra
}

struct Nodes {
    nodes: Vec<Uwsgi>,
    https: u16,
    udp: u16,
    stats: Vec<u16>,
    extra: String,
}

impl Nodes {
    fn start(dir: &Path, repeater: &Repeater, n: usize, extra: &str) -> Nodes {
        Nodes::start_with_udp(dir, repeater, n, free_port(), extra)
    }

    fn start_with_udp(dir: &Path, repeater: &Repeater, n: usize, udp: u16, extra: &str) -> Nodes {
        let mut nodes = Nodes {
            nodes: Vec::new(),
            https: free_port(),
            udp,
            stats: Vec::new(),
            extra: extra.to_string(),
        };
        for _ in 0..n {
            nodes.add(dir, repeater);
        }
        nodes
    }

    /// Starts one more node, on 127.0.0.(n+1); returns when its HTTPS port
    /// opened (and that instant).
    fn add(&mut self, dir: &Path, repeater: &Repeater) -> Instant {
        let i = self.nodes.len() + 1;
        let stats = free_port();
        let replication = through(repeater, i, self.udp, &self.extra);
        let ini = seed_setup2_node(&plugin_dir(), i, self.https, stats, &replication);
        let mut node = Uwsgi::spawn(dir, &format!("node{i}"), &ini);
        node.wait_ready_on(&[SocketAddr::from(([127, 0, 0, i as u8], self.https))]);
        let opened = Instant::now();
        node.wait_ready(&[stats]);
        self.nodes.push(node);
        self.stats.push(stats);
        opened
    }

    fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i as u8], self.https))
    }

    fn backends(&self) -> Vec<SocketAddr> {
        node_addrs(self.nodes.len(), self.https)
    }
}

const KEY: &str = "7777777777777777777777777777777777777777777777777777777777777777";

fn three_nodes_through_the_repeater(sealed: bool) {
    let _heavy = heavy();
    let dir = test_dir(if sealed { "repeater-sealed" } else { "repeater-plain" });
    let repeater = Repeater::start(&dir, "repeater", "");
    let extra = if sealed {
        format!("cache-udp-key = {}\n", key_file(&dir, "cluster.key", &[KEY]).display())
    } else {
        String::new()
    };
    let nodes = Nodes::start(&dir, &repeater, 3, &extra);
    repeater.wait_subscribers(CLUSTER, 3);
    let mode = if sealed { "sealed" } else { "plain" };
    let lb = free_port();
    let proxy = haproxy(&dir, lb, &nodes.backends());
    resumed_both(lb, RECONNECTS, &format!("3 nodes through a udprepeater, {mode}"));
    drop(proxy);
    // The sessions went through the repeater: each node's to the other two.
    let forwarded = repeater.counter("forwarded");
    let received = repeater.counter("received");
    assert!(
        forwarded >= 2 * received * 9 / 10,
        "received {received}, forwarded {forwarded}"
    );
    for (i, &port) in nodes.stats.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(5), || metric(port, "sslcache.default.applied")
                > 100),
            "node {} applied {}",
            i + 1,
            metric(port, "sslcache.default.applied")
        );
        for refused in ["forged", "replayed", "rejected", "plain_refused"] {
            assert_eq!(
                metric(port, &format!("sslcache.default.{refused}")),
                0,
                "node {} {refused}",
                i + 1
            );
        }
    }
    for zero in ["unknown_source", "malformed", "over_rate", "send_failed"] {
        assert_eq!(repeater.counter(zero), 0, "{zero}");
    }
}

#[test]
fn three_nodes_whose_only_peer_is_the_repeater_resume() {
    three_nodes_through_the_repeater(false);
}

#[test]
fn three_sealed_nodes_whose_only_peer_is_the_repeater_resume() {
    three_nodes_through_the_repeater(true);
}

/// A stock uWSGI node (no plugin: its cache's own `cache-udp-server`)
/// subscribed as the sslcache nodes are stores the sessions they make; a
/// node that leaves, by unsubscribing or by dying, is sent nothing after.
#[test]
fn stock_nodes_subscribe_and_nodes_that_leave_get_nothing() {
    let _heavy = heavy();
    let dir = test_dir("repeater-members");
    let repeater = Repeater::start(&dir, "repeater", "subscription-tolerance = 3\n");
    let nodes = Nodes::start(&dir, &repeater, 2, "subscribe-freq = 1\n");
    let (stock_udp, stock_stats) = (free_port(), free_port());
    let stock_ini = format!(
        "[uwsgi]\nmaster = true\ncache = 1000\ncache-blocksize = 4096\ncache-udp-server = 127.0.0.5:{stock_udp}\n\
         subscribe2 = server={},key={CLUSTER},addr=127.0.0.5:{stock_udp}\nsubscribe-freq = 1\n\
         stats = 127.0.0.1:{stock_stats}\nsocket = 127.0.0.5:{}\n",
        repeater.subscription,
        free_port()
    );
    let mut stock = Uwsgi::start(&dir, "stock", &stock_ini, &[stock_stats]);
    repeater.wait_subscribers(CLUSTER, 3);
    let client = Client::new(Proto::Tls12NoTickets);
    let backends = nodes.backends();
    for i in 0..40 {
        client.connect_to(backends[i % 2], None, &[]).expect("full handshake");
    }
    let mut items = 0;
    assert!(
        eventually(Duration::from_secs(5), || {
            items = cache_stats(stock_stats, "default")["items"].as_u64().unwrap_or(0);
            items >= 40
        }),
        "the stock node holds {items} of the 40 sessions"
    );
    println!("a stock uWSGI node subscribed to the repeater holds {items} sessions");

    // Stopped: uWSGI unsubscribes on shutdown; gone at once.
    let stopping = Instant::now();
    stock.stop();
    repeater.wait_subscribers(CLUSTER, 2);
    let unsubscribed_after = stopping.elapsed();
    // SIGKILL: no unsubscribe; gone within the tolerance (3 s) + 1 s.
    let mut second = nodes;
    let killed = second.nodes.remove(1);
    killed.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(6), || repeater.subscribers(CLUSTER).len() == 1),
        "{:?}",
        repeater.subscribers(CLUSTER)
    );
    let gone_after = killed_at.elapsed();
    assert!(gone_after <= Duration::from_secs(5), "{gone_after:?}");
    println!(
        "stopped stock node gone {unsubscribed_after:?} after its stop began, killed node {gone_after:?} after \
         its kill (tolerance 3 s)"
    );
    drop(killed);
    // Nothing reaches their addresses any more while node 1 makes sessions.
    let listeners: Vec<UdpSocket> = [format!("127.0.0.5:{stock_udp}"), repeater_udp_of(&second, 2)]
        .iter()
        .map(|a| {
            let s = UdpSocket::bind(a.as_str()).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            s
        })
        .collect();
    let before = repeater.counter("received");
    for _ in 0..20 {
        client.connect_to(backends[0], None, &[]).expect("full handshake");
    }
    assert!(eventually(Duration::from_secs(5), || repeater.counter("received") >= before + 20));
    std::thread::sleep(Duration::from_millis(300));
    // Nothing from the repeater. (Node 1 may still send a learnt node's
    // digests straight there until it has been silent for 30 s.)
    let mut buf = [0u8; 4096];
    for l in &listeners {
        while let Ok((_, from)) = l.recv_from(&mut buf) {
            assert_ne!(
                from,
                repeater.data,
                "the repeater sent to {:?} after it left",
                l.local_addr()
            );
        }
    }
    assert_eq!(repeater.counter("unsubscribed"), 1);
    assert!(repeater.counter("expired") >= 1);
}

/// The UDP address node `i` of `nodes` receives on.
fn repeater_udp_of(nodes: &Nodes, i: usize) -> String {
    format!("127.0.0.{i}:{}", nodes.udp)
}

fn a_node_that_joins_pulls_through_the_repeater(sealed: bool) {
    let _heavy = heavy();
    let dir = test_dir(if sealed {
        "repeater-join-sealed"
    } else {
        "repeater-join"
    });
    let repeater = Repeater::start(&dir, "repeater", "");
    let extra = if sealed {
        format!("cache-udp-key = {}\n", key_file(&dir, "cluster.key", &[KEY]).display())
    } else {
        String::new()
    };
    let mut nodes = Nodes::start(&dir, &repeater, 3, &extra);
    repeater.wait_subscribers(CLUSTER, 3);
    let client = Client::new(Proto::Tls12NoTickets);
    let mut before: Vec<_> = (0..1000)
        .map(|i| {
            client
                .connect_to(nodes.addr(i % 3 + 1), None, &[])
                .expect("full handshake")
                .session
                .expect("a session")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // The same ini but its own addresses: it knows only the repeater.
    let opened = nodes.add(&dir, &repeater);
    let deadline = opened + Duration::from_secs(5);
    while Instant::now() < deadline && metric(nodes.stats[3], "sslcache.default.pulled") < 990 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ready = opened.elapsed();
    let resumed = client.resume_all(nodes.addr(4), &mut before);
    let log = nodes.nodes[3].log();
    println!(
        "{}: node 4 pulled {} sessions through the repeater, ready {:.2} s after its HTTPS port opened; \
         {resumed}/1000 resumed there",
        if sealed { "sealed" } else { "plain" },
        metric(nodes.stats[3], "sslcache.default.pulled"),
        ready.as_secs_f64()
    );
    assert!(resumed >= 990, "{resumed}/1000\n{log}");
    assert!(log.contains("relays to the nodes of its cluster"), "{log}");
    // Sessions made on it resume on the first three.
    let made: Vec<_> = (0..100)
        .map(|_| client.connect_to(nodes.addr(4), None, &[]).unwrap().session.unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for i in 1..=3 {
        let resumed = client.resume_all(nodes.addr(i), &mut made.clone());
        assert_share_resumed(format_args!("node {i}, node 4's sessions"), resumed, 100, "");
    }
}

#[test]
fn a_node_that_joins_pulls_its_clusters_sessions_through_the_repeater() {
    a_node_that_joins_pulls_through_the_repeater(false);
}

#[test]
fn a_sealed_node_that_joins_pulls_its_clusters_sessions_through_the_repeater() {
    a_node_that_joins_pulls_through_the_repeater(true);
}

/// 30% of the datagrams between the repeater and the nodes lost (both
/// ways, a network namespace of the test's own): repair, with the nodes
/// the repeater introduced, mends what was lost.
#[test]
fn repair_mends_what_the_repeater_lost_under_30_percent_loss() {
    let _heavy = heavy();
    let dir = test_dir("repeater-loss");
    // The ports first: the namespace drops datagrams to them.
    let (data, subscription, stats) = (free_port(), free_port(), free_port());
    let udp = free_port();
    let (held, resumed) = in_lossy_namespace(&[data, udp], 0.3, || {
        let repeater = Repeater::start_on(&dir, "repeater", data, subscription, stats, "");
        let mut nodes = Nodes::start_with_udp(&dir, &repeater, 3, udp, "subscribe-freq = 1\n");
        repeater.wait_subscribers(CLUSTER, 3);
        // The nodes find each other through the repeater (a digest a second
        // each, 30% lost each way): the check is about a running cluster,
        // not one still meeting, so each node has learnt the other two
        // (proven: peers of its repair) first.
        let learned = || -> Vec<u64> {
            nodes
                .stats
                .iter()
                .map(|&p| metric(p, "sslcache.default.learned"))
                .collect()
        };
        let meeting = Instant::now();
        assert!(
            eventually(Duration::from_secs(30), || learned().iter().all(|&n| n >= 2)),
            "nodes learnt through the repeater: {:?}",
            learned()
        );
        println!(
            "each node learnt the other two through the repeater {:.1} s after they subscribed",
            meeting.elapsed().as_secs_f64()
        );
        let client = Client::new(Proto::Tls12NoTickets);
        let sessions: Vec<_> = (0..600)
            .map(|_| client.connect_to(nodes.addr(1), None, &[]).unwrap().session.unwrap())
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        let held: Vec<u64> = (2..=3)
            .map(|i| {
                cache_stats(nodes.stats[i - 1], "default")["items"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .collect();
        let resumed: Vec<usize> = (2..=3)
            .map(|i| client.resume_all(nodes.addr(i), &mut sessions.clone()))
            .collect();
        let repaired: Vec<[u64; 3]> = (1..=3)
            .map(|i| {
                ["applied", "pulled", "repaired"].map(|m| metric(nodes.stats[i - 1], &format!("sslcache.default.{m}")))
            })
            .collect();
        println!(
            "30% loss between the repeater and the nodes: 2 s after the last of 600 sessions, nodes 2 and 3 held \
             {held:?} and resumed {resumed:?}; (applied, pulled, repaired) per node {repaired:?}; repeater forwarded {}",
            repeater.counter("forwarded")
        );
        nodes.nodes.clear();
        (held, resumed)
    });
    for (i, r) in resumed.iter().enumerate() {
        assert_share_resumed(format_args!("node {} (held {})", i + 2, held[i]), *r, 600, "");
    }
}

/// Two repeaters for one cluster (each node names both); one is killed
/// (`kill -9` of its master: its gateway goes with it) under a load of
/// clients that make a session and at once resume it on the next node,
/// then started again.
#[test]
fn two_repeaters_one_killed_under_load_lose_nothing() {
    let _heavy = heavy();
    let dir = test_dir("repeater-pair");
    let addrs = |ip: u8| -> [SocketAddr; 3] { [0; 3].map(|_| SocketAddr::from(([127, 0, 0, ip], free_port()))) };
    let (first_addrs, second_addrs) = (addrs(10), addrs(11));
    let mut first = Repeater::start_at(&dir, "repeater1", first_addrs, "");
    let second = Repeater::start_at(&dir, "repeater2", second_addrs, "");
    let (data, subscription) = ([first.data, second.data], [first.subscription, second.subscription]);
    let key = key_file(&dir, "cluster.key", &[KEY]);
    let (https, udp) = (free_port(), free_port());
    let mut nodes = Vec::new();
    let mut stats = Vec::new();
    for i in 1..=3 {
        let port = free_port();
        let extra = format!("cache-udp-key = {}\n", key.display());
        let ini = seed_setup2_node(
            &plugin_dir(),
            i,
            https,
            port,
            &through_all(&data, &subscription, i, udp, &extra),
        );
        nodes.push(Uwsgi::start(&dir, &format!("node{i}"), &ini, &[port]));
        stats.push(port);
    }
    first.wait_subscribers(CLUSTER, 3);
    second.wait_subscribers(CLUSTER, 3);
    let backends: Vec<SocketAddr> = (1..=3).map(|i| SocketAddr::from(([127, 0, 0, i], https))).collect();
    let lb = free_port();
    let _proxy = haproxy(&dir, lb, &backends);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let began = Instant::now();
    let mut events = Vec::new();
    let (made, resumed, errors, missed_at) = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let client = Client::new(Proto::Tls12NoTickets);
            let (mut made, mut resumed, mut errors, mut missed_at) = (0, 0, Vec::new(), Vec::new());
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline && made < 3000 {
                match client.connect(lb, None, &[]) {
                    Ok(full) => {
                        made += 1;
                        match client.connect(lb, full.session.as_ref(), &[]) {
                            Ok(c) if c.resumed => resumed += 1,
                            Ok(_) => missed_at.push(format!("{:.2}", began.elapsed().as_secs_f64())),
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (made, resumed, errors, missed_at)
        });
        std::thread::sleep(Duration::from_secs(2));
        events.push(format!("killed at {:.2}", began.elapsed().as_secs_f64()));
        first.process.signal(libc::SIGKILL);
        first.process.stop();
        std::thread::sleep(Duration::from_secs(3));
        events.push(format!("started again at {:.2}", began.elapsed().as_secs_f64()));
        first = Repeater::start_at(&dir, "repeater1-again", first_addrs, "");
        first.wait_subscribers(CLUSTER, 3);
        events.push(format!(
            "its 3 subscribers back at {:.2}",
            began.elapsed().as_secs_f64()
        ));
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().unwrap()
    });
    println!(
        "two repeaters, one killed and started again: {resumed}/{made} sessions resumed at once on the next node, \
         {} failed handshakes; the other forwarded {}; repeater 1 {}; missed at {:?} s",
        errors.len(),
        second.counter("forwarded"),
        events.join(", "),
        missed_at
    );
    // Where misses came from: lookups that waited for a session made an
    // instant ago elsewhere, found it or not, and how long they waited.
    let waits: Vec<String> = stats
        .iter()
        .map(|&port| {
            let m = |name: &str| metric(port, &format!("sslcache.default.{name}"));
            format!(
                "misses {}, waited {} (found {}, {} us)",
                m("misses"),
                m("fresh_waits"),
                m("fresh_found"),
                m("fresh_wait_us")
            )
        })
        .collect();
    println!("nodes: {}", waits.join("; "));
    assert!(errors.is_empty(), "{errors:?}");
    assert!(made >= 100, "{made}");
    assert_share_resumed(format_args!("nodes: {}", waits.join("; ")), resumed, made, "");
    for &port in &stats {
        assert_eq!(metric(port, "sslcache.default.forged"), 0);
    }
}

/// With `subscriptions-sign-check`: a node that signs (uWSGI's own
/// `sign=` of `subscribe2`) is a subscriber; an unsigned subscription, one
/// signed with another key, and one with an old timestamp are refused and
/// counted, and none of them is sent anything.
#[test]
fn only_signed_subscriptions_count_when_signatures_are_checked() {
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::sign::Signer;
    use sslcache_core::repeater::subscription::build;
    let _heavy = heavy();
    let dir = test_dir("repeater-signed");
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (right, wrong) = (
        PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
        PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
    );
    std::fs::write(keys.join(format!("{CLUSTER}.pem")), right.public_key_to_pem().unwrap()).unwrap();
    let private = dir.join("node.key");
    std::fs::write(&private, right.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let repeater = Repeater::start(
        &dir,
        "repeater",
        &format!("subscriptions-sign-check = sha256:{}\n", keys.display()),
    );
    assert!(!repeater.process.log().contains("subscriptions are not signed"));
    let (https, udp, stats) = (free_port(), free_port(), free_port());
    let replication = format!(
        "cache-udp-server = 127.0.0.1:{udp}\ncache-udp-node = {}\n\
         subscribe2 = server={},key={CLUSTER},addr=127.0.0.1:{udp},sign=sha256:{}\n",
        repeater.data,
        repeater.subscription,
        private.display()
    );
    let _node = Uwsgi::start(
        &dir,
        "node1",
        &seed_setup2_node(&plugin_dir(), 1, https, stats, &replication),
        &[stats],
    );
    repeater.wait_subscribers(CLUSTER, 1);

    let sign_with = |key: &PKey<openssl::pkey::Private>| {
        let key = key.clone();
        move |bytes: &[u8]| {
            let mut s = Signer::new(MessageDigest::sha256(), &key).unwrap();
            s.update(bytes).unwrap();
            s.sign_to_vec().unwrap()
        }
    };
    let (right_sign, wrong_sign) = (sign_with(&right), sign_with(&wrong));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let listeners: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.7:0").unwrap()).collect();
    let addr = |i: usize| listeners[i].local_addr().unwrap().to_string();
    let sender = UdpSocket::bind("127.0.0.7:0").unwrap();
    let packets = [
        ("refused_unsigned", build(false, CLUSTER, &addr(0), None, None)),
        (
            "refused_forged",
            build(false, CLUSTER, &addr(1), Some(now), Some(&wrong_sign)),
        ),
        (
            "refused_stale",
            build(false, CLUSTER, &addr(2), Some(now - 3600), Some(&right_sign)),
        ),
    ];
    for (counter, packet) in &packets {
        let before = repeater.counter(counter);
        sender.send_to(packet, repeater.subscription).unwrap();
        assert!(
            eventually(Duration::from_secs(5), || repeater.counter(counter) == before + 1),
            "{counter}: {}",
            repeater.counter(counter)
        );
    }
    assert_eq!(repeater.subscribers(CLUSTER), [format!("127.0.0.1:{udp}")]);
    // The node makes sessions: none of the refused receives a datagram.
    let client = Client::new(Proto::Tls12NoTickets);
    for _ in 0..10 {
        client
            .connect_to(SocketAddr::from(([127, 0, 0, 1], https)), None, &[])
            .unwrap();
    }
    assert!(eventually(Duration::from_secs(5), || repeater.counter("received") >= 10));
    let mut buf = [0u8; 4096];
    for l in &listeners {
        l.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        assert!(l.recv_from(&mut buf).is_err(), "a refused subscriber got a datagram");
    }
    // Signed with the right key and fresh: it counts.
    sender
        .send_to(
            &build(false, CLUSTER, &addr(0), Some(now), Some(&right_sign)),
            repeater.subscription,
        )
        .unwrap();
    repeater.wait_subscribers(CLUSTER, 2);
    println!(
        "signed subscriptions: node subscribed; refused unsigned {}, forged {}, stale {}",
        repeater.counter("refused_unsigned"),
        repeater.counter("refused_forged"),
        repeater.counter("refused_stale")
    );
}

/// Without signature checks anyone may subscribe; in a sealed cluster such
/// a subscriber gets sealed datagrams only: no session id, no secret.
#[test]
fn a_stranger_subscribed_to_a_sealed_cluster_reads_nothing() {
    use sslcache_core::repeater::subscription::build;
    use sslcache_core::replication::wire::Format;
    let _heavy = heavy();
    let dir = test_dir("repeater-stranger");
    let repeater = Repeater::start(&dir, "repeater", "");
    let extra = format!("cache-udp-key = {}\n", key_file(&dir, "cluster.key", &[KEY]).display());
    let nodes = Nodes::start(&dir, &repeater, 2, &extra);
    let stranger = UdpSocket::bind("127.0.0.9:0").unwrap();
    stranger.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let packet = build(false, CLUSTER, &stranger.local_addr().unwrap().to_string(), None, None);
    UdpSocket::bind("127.0.0.9:0")
        .unwrap()
        .send_to(&packet, repeater.subscription)
        .unwrap();
    repeater.wait_subscribers(CLUSTER, 3);
    // A subscription naming the repeater itself would loop: refused.
    let own = build(false, CLUSTER, &repeater.data.to_string(), None, None);
    UdpSocket::bind("127.0.0.9:0")
        .unwrap()
        .send_to(&own, repeater.subscription)
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || repeater
        .counter("refused_malformed")
        == 1));
    assert_eq!(repeater.subscribers(CLUSTER).len(), 3);
    let client = Client::new(Proto::Tls12NoTickets);
    let ids: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            let c = client.connect_to(nodes.addr(i % 2 + 1), None, &[]).unwrap();
            c.session.unwrap().id().to_vec()
        })
        .collect();
    let mut buf = [0u8; 65536];
    let mut got = 0;
    while let Ok((n, _)) = stranger.recv_from(&mut buf) {
        let d = &buf[..n];
        assert_eq!(Format::of(d), Format::Sealed, "a plain datagram reached the stranger");
        for id in &ids {
            assert!(
                !d.windows(id.len()).any(|w| w == id.as_slice()),
                "a session id in the clear"
            );
        }
        got += 1;
    }
    assert!(got >= 20, "the stranger received {got} datagrams");
    println!("a stranger subscribed to a sealed cluster got {got} datagrams, every one sealed, no session id in any");
}

/// The repeater inside a node's own instance (its ini has the repeater's
/// lines too): both nodes resume each other's sessions.
#[test]
fn a_repeater_inside_a_node_serves_its_cluster() {
    let _heavy = heavy();
    let dir = test_dir("repeater-inside");
    let (data, subscription) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let (https, udp) = (free_port(), free_port());
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let stats = free_port();
        let mut extra = String::new();
        if i == 1 {
            extra = format!("udprepeater = {data}\nudprepeater-subscription-server = {subscription}\n");
        }
        let ini = seed_setup2_node(
            &plugin_dir(),
            i,
            https,
            stats,
            &through_all(&[data], &[subscription], i, udp, &extra),
        );
        let mut node = Uwsgi::spawn(&dir, &format!("node{i}"), &ini);
        node.wait_ready_on(&[SocketAddr::from(([127, 0, 0, i as u8], https))]);
        node.wait_ready(&[stats]);
        nodes.push((node, stats));
    }
    let log = nodes[0].0.log();
    assert!(log.contains("spawned sslcache udprepeater 1"), "{log}");
    let addrs: Vec<SocketAddr> = (1..=2).map(|i| SocketAddr::from(([127, 0, 0, i], https))).collect();
    assert!(
        eventually(Duration::from_secs(15), || metric(
            nodes[0].1,
            "sslcache.udprepeater.subscribers"
        ) == 2),
        "{}",
        nodes[0].0.log()
    );
    let client = Client::new(Proto::Tls12NoTickets);
    for (from, to) in [(0, 1), (1, 0)] {
        let mut made: Vec<_> = (0..50)
            .map(|_| client.connect_to(addrs[from], None, &[]).unwrap().session.unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let resumed = client.resume_all(addrs[to], &mut made);
        assert!(
            resumed >= 49,
            "node {} resumed {resumed}/50 of node {}'s sessions",
            to + 1,
            from + 1
        );
    }
}

/// A reload of the repeater's instance (SIGHUP: uWSGI re-executes it): its
/// new gateway serves again, its stats answer, the nodes' next announces
/// bring them back, and sessions go through it again.
#[test]
fn a_reloaded_repeater_forwards_again() {
    let _heavy = heavy();
    let dir = test_dir("repeater-reload");
    let repeater = Repeater::start(&dir, "repeater", "");
    let nodes = Nodes::start(&dir, &repeater, 2, "subscribe-freq = 1\n");
    repeater.wait_subscribers(CLUSTER, 2);
    repeater.process.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(20), || repeater
            .process
            .log()
            .matches("spawned sslcache udprepeater 1")
            .count()
            >= 2),
        "{}",
        repeater.process.log()
    );
    let stats = || std::net::TcpStream::connect(repeater.stats).is_ok();
    assert!(eventually(Duration::from_secs(10), stats), "no stats after the reload");
    repeater.wait_subscribers(CLUSTER, 2);
    let client = Client::new(Proto::Tls12NoTickets);
    let mut made: Vec<_> = (0..50)
        .map(|_| client.connect_to(nodes.addr(1), None, &[]).unwrap().session.unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let resumed = client.resume_all(nodes.addr(2), &mut made);
    assert!(resumed >= 49, "{resumed}/50 after the repeater's reload");
}
