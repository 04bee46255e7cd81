//! Several real uWSGI nodes on 127.0.0.x replicating sessions: behind
//! HAProxy and behind uWSGI's rawrouter (seed Setup 2), the seed's
//! two-node named-cache example, its multicast example, interop with stock
//! uWSGI nodes, and hostile datagrams.

use sslcache_testkit::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

const RECONNECTS: usize = 300;

struct Cluster {
    nodes: Vec<Uwsgi>,
    https: u16,
    stats: Vec<u16>,
}

impl Cluster {
    /// `n` nodes of seed Setup 2; `plugin = false` is the same cluster on
    /// stock uWSGI (the baseline).
    fn start(dir: &std::path::Path, n: usize, plugin: bool) -> Cluster {
        let (https, udp) = (free_port(), free_port());
        let stats: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let nodes = (1..=n)
            .map(|i| {
                let mut ini = seed_setup2_node(&plugin_dir(), i, https, stats[i - 1], &setup2_replication(i, n, udp));
                if !plugin {
                    ini = ini.replace("plugins = sslcache\n", "plugins = http\n");
                }
                let mut node = Uwsgi::spawn(dir, &format!("node{i}"), &ini);
                node.wait_ready(&[stats[i - 1]]);
                node
            })
            .collect();
        wait_nodes(n, https);
        Cluster { nodes, https, stats }
    }

    fn backends(&self) -> Vec<SocketAddr> {
        node_addrs(self.nodes.len(), self.https)
    }
}

#[test]
fn three_nodes_behind_haproxy_resume() {
    let _heavy = heavy();
    let dir = test_dir("haproxy");
    let stock_dir = dir.join("stock");
    std::fs::create_dir_all(&stock_dir).unwrap();
    let stock = Cluster::start(&stock_dir, 3, false);
    let stock_lb = free_port();
    let stock_proxy = haproxy(&stock_dir, stock_lb, &stock.backends());
    let [stock12, stock13] = reconnects_both(stock_lb, RECONNECTS, "stock uWSGI, 3 nodes behind HAProxy");
    let (s12, s13) = (stock12.resumption_rate(), stock13.resumption_rate());
    assert!(
        s12 < 0.05 && s13 < 0.40,
        "stock baseline unexpectedly resumed: {s12} {s13}"
    );
    drop(stock_proxy);
    drop(stock);

    let cluster = Cluster::start(&dir, 3, true);
    let lb = free_port();
    let _proxy = haproxy(&dir, lb, &cluster.backends());
    resumed_both(lb, RECONNECTS, "sslcache, 3 nodes behind HAProxy");
    // Every node served and replicated.
    for (i, &port) in cluster.stats.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(5), || metric(port, "sslcache.default.applied")
                > 100),
            "node {} applied {}",
            i + 1,
            metric(port, "sslcache.default.applied")
        );
        assert!(cache_stats(port, "default")["hits"].as_u64().unwrap() > 100);
    }
}

#[test]
fn three_nodes_behind_rawrouter_resume() {
    let _heavy = heavy();
    let dir = test_dir("rawrouter");
    let cluster = Cluster::start(&dir, 3, true);
    let lb = free_port();
    let _router = rawrouter(&dir, lb, &cluster.backends());
    resumed_both(lb, RECONNECTS, "sslcache, 3 nodes behind uWSGI's rawrouter");
}

/// The seed's named-cache example, as written but on loopback ports.
#[test]
fn seed_named_cache_two_nodes() {
    // Not beside the flood test, which fills loopback with datagrams.
    let _heavy = heavy();
    let dir = test_dir("named-two");
    let (crt, key) = cert("localhost");
    let (udp_a, udp_b) = (free_port(), free_port());
    let nodes: Vec<(Uwsgi, u16, u16)> = [(udp_b, udp_a, "keysize=128,"), (udp_a, udp_b, "")]
        .into_iter()
        .enumerate()
        .map(|(i, (node, udp, keysize))| {
            let (https, stats_port) = (free_port(), free_port());
            let ini = format!(
                "[uwsgi]\nplugin-dir = {}\nplugins = sslcache\nmaster = true\n\
                 cache2 = name=ssl,items=20000,{keysize}blocksize=4096,node=127.0.0.1:{node},udp=127.0.0.1:{udp}\n\
                 ssl-sessions-use-cache = ssl\nssl-sessions-timeout = 300\nhttps-session-context = foobar\n\
                 https = :{https},{},{}\nhttp-processes = 8\nstats = :{stats_port}\n",
                plugin_dir().display(),
                crt.display(),
                key.display()
            );
            (
                Uwsgi::start(&dir, &format!("node{i}"), &ini, &[https, stats_port]),
                https,
                stats_port,
            )
        })
        .collect();
    for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
        let client = Client::new(proto);
        let mut session = None;
        let mut resumed = 0;
        for i in 0..100 {
            let c = client.connect(nodes[i % 2].1, session.as_ref(), &[]).unwrap();
            resumed += usize::from(c.resumed);
            session = c.session.or(session);
        }
        assert!(resumed >= 98, "{proto:?}: {resumed}/99 resumed alternating nodes");
    }
    for (_, _, stats_port) in &nodes {
        assert!(eventually(Duration::from_secs(5), || metric(
            *stats_port,
            "sslcache.ssl.applied"
        ) > 20));
    }
}

/// The seed's multicast note: every node sends to and receives from
/// 225.1.1.1, pinned to the loopback interface.
#[test]
fn multicast_example() {
    // Not beside the flood test, which fills loopback with datagrams.
    let _heavy = heavy();
    let dir = test_dir("multicast");
    let (https, group_port) = (free_port(), free_port());
    let stats: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _nodes: Vec<Uwsgi> = (1..=3)
        .map(|i| {
            let replication = format!(
                "cache-udp-server = 225.1.1.1:{group_port}\ncache-udp-node = 225.1.1.1:{group_port}\n\
                 ssl-sessions-multicast-if = 127.0.0.1\n"
            );
            let ini = seed_setup2_node(&plugin_dir(), i, https, stats[i - 1], &replication);
            let mut node = Uwsgi::spawn(&dir, &format!("node{i}"), &ini);
            node.wait_ready(&[stats[i - 1]]);
            assert!(node.log().contains("receiving on 225.1.1.1"), "{}", node.log());
            node
        })
        .collect();
    wait_nodes(3, https);
    for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
        let client = Client::new(proto);
        let mut session = None;
        let mut resumed = 0;
        for i in 0..90u8 {
            let port_owner = SocketAddr::from(([127, 0, 0, 1 + i % 3], https));
            // Connect to each node in turn through its own address.
            let c = connect_to(&client, port_owner, session.as_ref());
            resumed += usize::from(c.0);
            session = c.1.or(session);
        }
        assert!(resumed >= 88, "{proto:?}: {resumed}/89 resumed across multicast nodes");
    }
}

/// A client connection to an arbitrary loopback address.
fn connect_to(
    client: &Client,
    addr: SocketAddr,
    session: Option<&openssl::ssl::SslSession>,
) -> (bool, Option<openssl::ssl::SslSession>) {
    use std::io::{Read, Write};
    let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut stream = client.handshake_on(tcp, session).unwrap();
    let resumed = stream.ssl().session_reused();
    let _ = stream.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut buf = [0u8; 1024];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    let session = stream.ssl().session().map(|s| s.to_owned());
    // Shut down cleanly: a client connection freed without it marks its
    // session not resumable (on the client side).
    let _ = stream.shutdown();
    (resumed, session)
}

/// Plain mode is stock uWSGI's format: a stock node stores what we send,
/// and we store what a stock node sends.
#[test]
fn interop_with_stock_uwsgi_both_ways() {
    // Not beside the flood test, which fills loopback with datagrams.
    let _heavy = heavy();
    let dir = test_dir("interop");
    let (stock_udp, our_udp, stock_stats, our_stats, https, stock_web) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    std::fs::write(
        dir.join("app.py"),
        "import uwsgi\ndef application(env, sr):\n    n = int(env['QUERY_STRING'])\n    \
         ok = [uwsgi.cache_set('stock-%d' % i, b'x' * 100, 0, 'ssl') for i in range(n)]\n    \
         sr('200 OK', [])\n    return [repr(ok).encode()]\n",
    )
    .unwrap();
    let python = std::path::Path::new("/usr/lib/uwsgi/plugins/python3_plugin.so").exists();
    assert!(python || !require_all(), "python3 plugin missing");
    // The stock node: the seed's named cache, pointed at our node.
    let stock_ini = format!(
        "[uwsgi]\nplugins = http{}\nmaster = true\n\
         cache2 = name=ssl,items=1000,keysize=128,blocksize=4096,udp=127.0.0.1:{stock_udp},node=127.0.0.1:{our_udp}\n\
         stats = 127.0.0.1:{stock_stats}\nhttp-socket = 127.0.0.1:{stock_web}\n{}",
        if python { ",python3" } else { "" },
        if python {
            "wsgi-file = app.py\nprocesses = 1\n"
        } else {
            ""
        }
    );
    let _stock = Uwsgi::start(&dir, "stock", &stock_ini, &[stock_stats, stock_web]);
    let ours_ini = seed_setup1(&plugin_dir(), https, our_stats, 2, "")
        + &format!(
            "cache2 = name=ssl,items=1000,keysize=128,blocksize=4096,udp=127.0.0.1:{our_udp},node=127.0.0.1:{stock_udp}\n\
             ssl-sessions-use-cache = ssl\n"
        );
    let _ours = Uwsgi::start(&dir, "ours", &ours_ini, &[https, our_stats]);

    // Ours -> stock: 20 full TLS handshakes, 20 sessions in the stock cache.
    for _ in 0..20 {
        Client::new(Proto::Tls12NoTickets).connect(https, None, &[]).unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || cache_stats(stock_stats, "ssl")["items"]
            == 20),
        "stock node holds {} of our sessions",
        cache_stats(stock_stats, "ssl")["items"]
    );

    // Stock -> ours: 30 sets through the stock node's cache API.
    if python {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", stock_web)).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"GET /?30 HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        assert!(body.contains("True"), "{body}");
        assert!(
            eventually(Duration::from_secs(5), || metric(our_stats, "sslcache.ssl.applied")
                == 30),
            "applied {}",
            metric(our_stats, "sslcache.ssl.applied")
        );
        assert_eq!(cache_stats(our_stats, "ssl")["items"], 50);
    }
}

/// Hostile datagrams: random bytes, truncations, lying lengths, wrong
/// modifiers, oversized values and keys. All rejected and counted; nothing
/// reaches the store; the node keeps resuming.
#[test]
fn malformed_datagrams_are_dropped_and_counted() {
    let dir = test_dir("malformed");
    let (https, stats_port, udp) = (free_port(), free_port(), free_port());
    let lines = format!(
        "cache2 = name=ssl,items=1000,keysize=64,blocksize=1024,udp=127.0.0.1:{udp}\nssl-sessions-use-cache = ssl"
    );
    let node = Uwsgi::start(
        &dir,
        "node",
        &seed_setup1(&plugin_dir(), https, stats_port, 1, &lines),
        &[https, stats_port],
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = SocketAddr::from(([127, 0, 0, 1], udp));
    let good = {
        let mut d = Vec::new();
        sslcache_core::replication::encode_set(b"good-key", &[1; 100], 4_000_000_000, &mut d).unwrap();
        d
    };
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut sent = 0u64;
    for i in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let datagram: Vec<u8> = match i % 6 {
            0 => (0..(x % 200) as usize).map(|j| (x >> (j % 56)) as u8).collect(),
            1 => good[..(x as usize % (good.len() - 1)) + 1].to_vec(),
            2 => {
                let mut d = good.clone();
                d[1] = d[1].wrapping_add(1 + (x % 200) as u8);
                d
            }
            3 => {
                let mut d = good.clone();
                // Past every command sslcache knows (10, 11; 20-22 between
                // sslcache nodes).
                d[3] = 23 + (x % 100) as u8;
                d
            }
            4 => {
                let mut d = Vec::new();
                sslcache_core::replication::encode_set(b"k", &[2; 2000], 4_000_000_000, &mut d).unwrap();
                d
            }
            _ => {
                let mut d = Vec::new();
                sslcache_core::replication::encode_set(&[3; 65], b"v", 4_000_000_000, &mut d).unwrap();
                d
            }
        };
        if datagram.is_empty() {
            continue;
        }
        socket.send_to(&datagram, target).unwrap();
        sent += 1;
        if i % 100 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(
        eventually(Duration::from_secs(5), || metric(stats_port, "sslcache.ssl.rejected")
            == sent),
        "rejected {} of {sent}",
        metric(stats_port, "sslcache.ssl.rejected")
    );
    assert_eq!(metric(stats_port, "sslcache.ssl.applied"), 0);
    assert_eq!(cache_stats(stats_port, "ssl")["items"], 0);
    let out = Client::new(Proto::Tls12NoTickets).reconnects(https, 20, &[]);
    out.assert_resumed("", &node.log());
}

/// A binary reload (SIGHUP re-execs the master in place) keeps replication
/// working: uWSGI closes sockets it does not know on a reload, so the
/// plugin must make its own after that.
#[test]
fn reload_keeps_replication_working() {
    // Not beside the flood test, which fills loopback with datagrams.
    let _heavy = heavy();
    let dir = test_dir("reload");
    let (udp_a, udp_b) = (free_port(), free_port());
    let start = |name: &str, udp: u16, peer: u16| {
        let (https, stats_port) = (free_port(), free_port());
        let ini = seed_setup1(&plugin_dir(), https, stats_port, 2, DEFAULT_CACHE)
            + &format!("cache-udp-server = 127.0.0.1:{udp}\ncache-udp-node = 127.0.0.1:{peer}\n");
        (Uwsgi::start(&dir, name, &ini, &[https, stats_port]), https)
    };
    let (mut a, a_https) = start("a", udp_a, udp_b);
    let (_b, b_https) = start("b", udp_b, udp_a);
    let alternate = |proto: Proto| {
        let client = Client::new(proto);
        let mut session = None;
        let mut resumed = 0;
        for i in 0..40 {
            let c = client
                .connect(if i % 2 == 0 { a_https } else { b_https }, session.as_ref(), &[])
                .unwrap();
            resumed += usize::from(c.resumed);
            session = c.session.or(session);
        }
        resumed
    };
    assert!(alternate(Proto::Tls12NoTickets) >= 38);
    a.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(20), || a
            .log()
            .matches("[sslcache] replication of cache")
            .count()
            == 2),
        "no reload:\n{}",
        a.log()
    );
    a.wait_ready(&[a_https]);
    std::thread::sleep(Duration::from_millis(500));
    for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
        let resumed = alternate(proto);
        assert!(resumed >= 38, "{proto:?} after reload: {resumed}/39\n{}", a.log());
    }
}

/// Ten seconds of hostile datagrams at a node with `ssl-verbose`: every one
/// is counted, but the log gets a bounded number of lines.
#[test]
fn a_flood_of_hostile_datagrams_writes_few_log_lines() {
    let _heavy = heavy();
    let dir = test_dir("flood");
    let (https, stats_port, udp) = (free_port(), free_port(), free_port());
    let lines = format!("{DEFAULT_CACHE}\ncache-udp-server = 127.0.0.1:{udp}\nssl-verbose = true");
    let node = Uwsgi::start(
        &dir,
        "node",
        &seed_setup1(&plugin_dir(), https, stats_port, 1, &lines),
        &[https, stats_port],
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = SocketAddr::from(([127, 0, 0, 1], udp));
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    // Bounded in count and in time.
    while sent < 5_000_000 && started.elapsed() < Duration::from_secs(10) {
        let d = [0x6fu8, (sent & 0xff) as u8, (sent >> 8) as u8, 10, 1, 2, 3];
        if socket.send_to(&d, target).is_ok() {
            sent += 1;
        }
    }
    assert!(eventually(Duration::from_secs(5), || {
        metric(stats_port, "sslcache.default.received") > 0
    }));
    let received = metric(stats_port, "sslcache.default.received");
    let lines = node
        .log()
        .lines()
        .filter(|l| l.contains("replication datagram"))
        .count();
    println!("flood: {sent} datagrams sent, {received} received, {lines} log lines");
    assert!(received >= 10_000, "the flood did not reach the node: {received}");
    assert!(lines <= 300, "{lines} log lines for {received} datagrams");
    assert!(lines >= 10, "ssl-verbose logged nothing: {lines}");
}
