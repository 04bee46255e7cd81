//! The example configurations of examples/configs, run as written: each
//! family is copied into a fresh directory with a certificate (foobar.crt,
//! foobar.key) and, for the sealed cluster, a key file made the way its
//! comments say; uWSGI starts there on the copied file with nothing added
//! but `--plugin-dir` on the command line (before `--ini`: uWSGI loads a
//! plugin the moment it reads `plugins =`). Each test shows sessions
//! resumed: across router processes (Setup 1), from node to node (the
//! clusters) and through the balancer in front of them (rawrouter,
//! HAProxy); the sealed cluster also goes through the key rotation its
//! comments describe, node by node, resuming across nodes after each
//! reload.
//!
//! The examples use fixed ports (8443, 5001-5003, 7171, 8000, 8001, and a
//! backend on 3031), below the ports `free_port` hands out (20000+); the
//! tests here share them, hence `heavy()` around each.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sslcache_testkit::*;

/// The nodes' HTTPS port (on 127.0.0.1, .2, .3) and stats ports.
const HTTPS: u16 = 8443;
const STATS: [u16; 3] = [5001, 5002, 5003];
/// Replication (unicast and multicast).
const UDP: u16 = 7171;
/// The rawrouter of setup2-rawrouter.ini, the frontend of haproxy.cfg.
const RAWROUTER: u16 = 8000;
const HAPROXY: u16 = 8001;
/// Where the examples' `http-to` points.
const BACKEND: u16 = 3031;

/// Reconnects through a balancer, per protocol (the first is a full
/// handshake): 99% of the others must resume.
const RECONNECTS: usize = 101;
/// Connections going round the nodes directly, per protocol.
const HOPS: usize = 101;
/// After each reload of the key rotation: fewer (all but one resume).
const ROTATION_HOPS: usize = 31;

fn configs() -> PathBuf {
    repo_root().join("examples/configs")
}

fn node_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i as u8], HTTPS))
}

fn node_addrs() -> Vec<SocketAddr> {
    (1..=3).map(node_addr).collect()
}

/// A fresh directory holding copies of the example `files`, unchanged, and
/// a certificate under the names they use.
fn prepare(name: &str, files: &[&str]) -> PathBuf {
    let dir = test_dir(name);
    for f in files {
        fs::copy(configs().join(f), dir.join(f)).unwrap_or_else(|e| panic!("examples/configs/{f}: {e}"));
    }
    let (crt, key) = cert("localhost");
    fs::copy(crt, dir.join("foobar.crt")).unwrap();
    fs::copy(key, dir.join("foobar.key")).unwrap();
    dir
}

/// Waits (bounded) until the examples' fixed ports are free: nothing of a
/// previous test, nor anything else, holds them.
fn wait_ports_free(tcp: &[u16], udp: &[u16]) {
    let free = || {
        tcp.iter().all(|&p| TcpListener::bind(("0.0.0.0", p)).is_ok())
            && udp.iter().all(|&p| UdpSocket::bind(("0.0.0.0", p)).is_ok())
    };
    assert!(
        eventually(Duration::from_secs(15), free),
        "the examples' ports (TCP {tcp:?}, UDP {udp:?}) are taken on this machine"
    );
}

/// A uWSGI instance started on an example file as written, in `dir`.
struct Node {
    file: String,
    uwsgi: Uwsgi,
}

impl Node {
    /// `uwsgi [--plugin-dir <repo>] --ini <file>` with `dir` as its current
    /// directory; waits until every address in `addrs` accepts.
    fn start(dir: &Path, file: &str, with_plugin_dir: bool, addrs: &[SocketAddr]) -> Node {
        let plugins = plugin_dir();
        let before_ini: Vec<&OsStr> = match with_plugin_dir {
            true => vec![OsStr::new("--plugin-dir"), plugins.as_os_str()],
            false => Vec::new(),
        };
        let mut uwsgi = Uwsgi::spawn_file(&uwsgi_binary(), dir, file, Path::new(file), &before_ini);
        uwsgi.wait_ready_on(addrs);
        Node {
            file: file.into(),
            uwsgi,
        }
    }

    fn log(&self) -> String {
        self.uwsgi.log()
    }

    fn children(&self) -> Vec<i32> {
        self.uwsgi.children()
    }

    /// The last startup line of sslcache's replication (one per start and
    /// reload), and how many there are.
    fn replication_lines(&self) -> (usize, String) {
        let log = self.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("[sslcache] replication of cache \"default\""))
            .collect();
        (lines.len(), lines.last().map(|l| l.to_string()).unwrap_or_default())
    }

    /// SIGHUP (uWSGI re-executes itself on the same files, same pid); back
    /// when the new image logged its replication line and its HTTPS port
    /// completes a handshake again.
    fn reload(&mut self, https: SocketAddr) {
        let (before, _) = self.replication_lines();
        // SAFETY: signals the master this test started, by its pid.
        assert_eq!(unsafe { libc::kill(self.uwsgi.pid, libc::SIGHUP) }, 0);
        assert!(
            eventually(Duration::from_secs(30), || self.replication_lines().0 > before),
            "{} did not reload:\n{}",
            self.file,
            self.log()
        );
        let client = Client::new(Proto::Tls12NoTickets);
        assert!(
            eventually(Duration::from_secs(20), || client.connect_to(https, None, &[]).is_ok()),
            "{} serves no handshake after its reload:\n{}",
            self.file,
            self.log()
        );
    }
}

/// One HTTPS request to `addr`: the response.
fn get(addr: SocketAddr) -> String {
    let (mut stream, _) = Client::new(Proto::Tls13)
        .handshake_to(addr, None)
        .unwrap_or_else(|e| panic!("handshake with {addr}: {e}"));
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    let _ = stream.shutdown();
    String::from_utf8_lossy(&body).into_owned()
}

fn assert_served(addr: SocketAddr) {
    let response = get(addr);
    assert!(
        response.starts_with("HTTP/1.0 200 OK") && response.ends_with("hello"),
        "{addr} answered {response:?}"
    );
}

/// `n` connections going round `addrs` (each to the next node), each
/// offering the previous connection's session: how many of the `n - 1`
/// that could resume did.
fn hops(proto: Proto, addrs: &[SocketAddr], n: usize) -> usize {
    let client = Client::new(proto);
    let mut session = None;
    let mut resumed = 0;
    for i in 0..n {
        let addr = addrs[i % addrs.len()];
        let c = client
            .connect_to(addr, session.as_ref(), &[])
            .unwrap_or_else(|e| panic!("{proto:?}: connection {i} to {addr}: {e}"));
        if i > 0 {
            resumed += usize::from(c.resumed);
        }
        session = c.session.or(session);
    }
    resumed
}

/// Both protocols round the nodes: every hop lands on another node, so
/// each resumption is of a session another node made. All but one of the
/// `n - 1` resumable connections must resume (99 of 100 for `HOPS`).
fn across_nodes(what: &str, addrs: &[SocketAddr], n: usize) {
    for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
        let resumed = hops(proto, addrs, n);
        println!("{what}: {proto:?} {resumed}/{} resumed going round the nodes", n - 1);
        assert!(resumed + 1 >= n - 1, "{what}: {proto:?} {resumed}/{} resumed", n - 1);
    }
}

/// The three nodes of a family (`<prefix>-node<i>.ini`), started in order,
/// each listening on its HTTPS address and stats port.
fn start_nodes(dir: &Path, prefix: &str) -> Vec<Node> {
    (1..=3)
        .map(|i| {
            let node = Node::start(
                dir,
                &format!("{prefix}-node{i}.ini"),
                true,
                &[node_addr(i), SocketAddr::from(([127, 0, 0, 1], STATS[i - 1]))],
            );
            let log = node.log();
            assert!(
                log.contains("[sslcache] TLS session cache \"default\": 20000 sessions"),
                "{}: no sslcache startup line:\n{log}",
                node.file
            );
            node
        })
        .collect()
}

/// Every node received and stored sessions from the others, and resumed
/// far more than it missed (the seed's check: "hits" much higher than
/// "miss").
fn check_replicated(nodes: &[Node], what: &str) {
    for (i, node) in nodes.iter().enumerate() {
        let port = STATS[i];
        assert!(
            eventually(Duration::from_secs(5), || metric(port, "sslcache.default.applied") > 0),
            "{what}: {} applied nothing:\n{}",
            node.file,
            node.log()
        );
        let cache = cache_stats(port, "default");
        let (hits, miss) = (cache["hits"].as_u64().unwrap(), cache["miss"].as_u64().unwrap());
        println!(
            "{what}: {} items {} hits {hits} miss {miss}, applied {}, sent {}",
            node.file,
            cache["items"],
            metric(port, "sslcache.default.applied"),
            metric(port, "sslcache.default.sent")
        );
        assert!(hits > 0 && hits >= 10 * miss, "{what}: {}: {cache}", node.file);
    }
}

const SETUP2: [&str; 3] = ["setup2-node1.ini", "setup2-node2.ini", "setup2-node3.ini"];
const NODE_TCP: [u16; 5] = [HTTPS, STATS[0], STATS[1], STATS[2], BACKEND];

/// Setup 1: one node, eight router processes sharing one session cache.
#[test]
fn setup1_resumes_across_router_processes() {
    let _heavy = heavy();
    wait_ports_free(&NODE_TCP, &[]);
    let dir = prepare("ex-setup1", &["setup1.ini"]);
    let _backend = Backend::uwsgi_on(BACKEND);
    let https = node_addr(1);
    let node = Node::start(
        &dir,
        "setup1.ini",
        true,
        &[https, SocketAddr::from(([127, 0, 0, 1], 5001))],
    );
    let log = node.log();
    assert!(
        log.contains(
            "[sslcache] TLS session cache \"default\": 20000 sessions (keys up to 2048 bytes, sessions up to 4096 bytes)"
        ),
        "{log}"
    );
    assert!(eventually(Duration::from_secs(20), || node.children().len() >= 8));
    let routers = node.children();
    assert_served(https);
    for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
        let out = Client::new(proto).reconnects(HTTPS, RECONNECTS, &routers);
        assert!(out.errors.is_empty(), "{proto:?}: {:?}", out.errors);
        println!(
            "setup1: {proto:?} {}/{} reconnects resumed, over {} of {} router processes",
            out.resumed,
            out.attempts - 1,
            out.owners.len(),
            routers.len()
        );
        out.assert_resumed(format_args!("{proto:?}"), "");
        assert!(out.owners.len() > 1, "one router process only: {:?}", out.owners);
    }
    let cache = cache_stats(5001, "default");
    println!("setup1: stats 127.0.0.1:5001 caches[default] = {cache}");
    assert!(cache["hits"].as_u64().unwrap() >= 2 * 99, "{cache}");
    assert!(cache["items"].as_u64().unwrap() > 0, "{cache}");
}

/// Setup 2 behind the seed's balancer, uWSGI's rawrouter.
#[test]
fn setup2_behind_rawrouter_resumes() {
    let _heavy = heavy();
    wait_ports_free(&[HTTPS, STATS[0], STATS[1], STATS[2], BACKEND, RAWROUTER], &[UDP]);
    let mut files = SETUP2.to_vec();
    files.push("setup2-rawrouter.ini");
    let dir = prepare("ex-setup2-rawrouter", &files);
    let _backend = Backend::uwsgi_on(BACKEND);
    let nodes = start_nodes(&dir, "setup2");
    for (i, node) in nodes.iter().enumerate() {
        let (_, line) = node.replication_lines();
        assert!(
            line.contains(&format!("receiving on 127.0.0.{}:7171", i + 1))
                && line.contains("warm start and repair with the unicast peers"),
            "{line}"
        );
        assert_served(node_addr(i + 1));
    }
    across_nodes("setup2", &node_addrs(), HOPS);
    // The rawrouter never sees TLS: no plugin-dir, it needs no sslcache.
    let _router = Node::start(
        &dir,
        "setup2-rawrouter.ini",
        false,
        &[SocketAddr::from(([127, 0, 0, 1], RAWROUTER))],
    );
    assert_served(SocketAddr::from(([127, 0, 0, 1], RAWROUTER)));
    resumed_both(RAWROUTER, RECONNECTS, "setup2 behind the rawrouter");
    check_replicated(&nodes, "setup2 behind the rawrouter");
}

/// The same nodes behind HAProxy (haproxy.cfg).
#[test]
fn setup2_behind_haproxy_resumes() {
    let _heavy = heavy();
    wait_ports_free(&[HTTPS, STATS[0], STATS[1], STATS[2], BACKEND, HAPROXY], &[UDP]);
    let mut files = SETUP2.to_vec();
    files.push("haproxy.cfg");
    let dir = prepare("ex-setup2-haproxy", &files);
    let _backend = Backend::uwsgi_on(BACKEND);
    let nodes = start_nodes(&dir, "setup2");
    let _haproxy = Process::spawn(&dir, "haproxy", "haproxy", &["-db", "-f", "haproxy.cfg"]);
    wait_port(HAPROXY, "haproxy");
    assert_served(SocketAddr::from(([127, 0, 0, 1], HAPROXY)));
    resumed_both(HAPROXY, RECONNECTS, "setup2 behind HAProxy");
    check_replicated(&nodes, "setup2 behind HAProxy");
}

/// The udprepeater example: a repeater and three nodes that know only it,
/// behind HAProxy.
#[test]
fn nodes_through_the_udprepeater_behind_haproxy_resume() {
    let _heavy = heavy();
    let repeater_stats = 5010;
    wait_ports_free(
        &[HTTPS, STATS[0], STATS[1], STATS[2], BACKEND, HAPROXY, repeater_stats],
        &[UDP, 7272, 7273],
    );
    let files = [
        "udprepeater.ini",
        "repeater-node1.ini",
        "repeater-node2.ini",
        "repeater-node3.ini",
        "haproxy.cfg",
    ];
    let dir = prepare("ex-udprepeater", &files);
    let _backend = Backend::uwsgi_on(BACKEND);
    let repeater = Node::start(
        &dir,
        "udprepeater.ini",
        true,
        &[
            SocketAddr::from(([127, 0, 0, 10], 7274)),
            SocketAddr::from(([127, 0, 0, 1], repeater_stats)),
        ],
    );
    assert!(
        repeater.log().contains("udprepeater on 127.0.0.10:7272"),
        "{}",
        repeater.log()
    );
    let nodes = start_nodes(&dir, "repeater");
    assert!(
        eventually(Duration::from_secs(15), || metric(
            repeater_stats,
            "sslcache.udprepeater.subscribers"
        ) == 3),
        "{}",
        repeater.log()
    );
    let _haproxy = Process::spawn(&dir, "haproxy", "haproxy", &["-db", "-f", "haproxy.cfg"]);
    wait_port(HAPROXY, "haproxy");
    assert_served(SocketAddr::from(([127, 0, 0, 1], HAPROXY)));
    resumed_both(HAPROXY, RECONNECTS, "udprepeater behind HAProxy");
    check_replicated(&nodes, "udprepeater behind HAProxy");
    assert!(metric(repeater_stats, "sslcache.udprepeater.forwarded") > 0);
}

/// Three nodes replicating through one multicast group on loopback.
#[test]
fn multicast_nodes_resume_each_others_sessions() {
    let _heavy = heavy();
    wait_ports_free(&NODE_TCP, &[UDP]);
    let dir = prepare(
        "ex-multicast",
        &["multicast-node1.ini", "multicast-node2.ini", "multicast-node3.ini"],
    );
    let _backend = Backend::uwsgi_on(BACKEND);
    let nodes = start_nodes(&dir, "multicast");
    for node in &nodes {
        let (_, line) = node.replication_lines();
        assert!(
            line.contains("receiving on 239.255.17.17:7171") && line.contains("sending to 239.255.17.17:7171"),
            "{line}"
        );
    }
    assert_served(node_addr(2));
    across_nodes("multicast", &node_addrs(), HOPS);
    check_replicated(&nodes, "multicast");
}

/// Runs `openssl rand -hex 32`, as the sealed examples' comments say.
fn new_key(dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(["rand", "-hex", "32"])
        .current_dir(dir)
        .output()
        .expect("openssl rand");
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(key.len(), 64, "{key}");
    key
}

/// Rewrites sslcache.key with `keys`, one per line, mode 0600.
fn write_keys(dir: &Path, keys: &[&str]) {
    let path = dir.join("sslcache.key");
    fs::write(&path, keys.join("\n") + "\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// The sealed cluster: resumes across nodes, then rotates its key in the
/// three steps its comments give, reloading node by node, and resumes
/// across nodes after every reload; no datagram is refused on the way.
#[test]
fn sealed_cluster_rotates_its_key_without_a_flag_day() {
    let _heavy = heavy();
    wait_ports_free(&NODE_TCP, &[UDP]);
    let dir = prepare(
        "ex-sealed",
        &["sealed-node1.ini", "sealed-node2.ini", "sealed-node3.ini"],
    );
    // The key file, made by the commands of the comments.
    let made = Command::new("sh")
        .args(["-c", "openssl rand -hex 32 > sslcache.key; chmod 600 sslcache.key"])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(made.success());
    let old = fs::read_to_string(dir.join("sslcache.key")).unwrap().trim().to_string();
    assert_eq!(old.len(), 64);
    let _backend = Backend::uwsgi_on(BACKEND);
    let mut nodes = start_nodes(&dir, "sealed");
    for node in &nodes {
        let (_, line) = node.replication_lines();
        assert!(
            line.contains("sealed with AES-256-GCM") && line.contains("1 key to open"),
            "{line}"
        );
        assert!(!node.log().contains(&old), "the key is in the log");
    }
    across_nodes("sealed", &node_addrs(), HOPS);

    let new = new_key(&dir);
    let steps: [(&str, Vec<&str>, &str); 3] = [
        ("1. new key second", vec![&old, &new], "2 keys to open"),
        ("2. new key first", vec![&new, &old], "2 keys to open"),
        ("3. old key removed", vec![&new], "1 key to open"),
    ];
    let started = Instant::now();
    for (step, keys, opens) in steps {
        write_keys(&dir, &keys);
        for (i, node) in nodes.iter_mut().enumerate() {
            node.reload(node_addr(i + 1));
            let (_, line) = node.replication_lines();
            assert!(line.contains(opens), "{step}: {}: {line}", node.file);
            across_nodes(
                &format!("sealed, step {step}, node{} reloaded", i + 1),
                &node_addrs(),
                ROTATION_HOPS,
            );
        }
    }
    println!(
        "sealed: rotation (9 reloads) took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    across_nodes("sealed, after the rotation", &node_addrs(), HOPS);
    check_replicated(&nodes, "sealed");
    for (i, node) in nodes.iter().enumerate() {
        let port = STATS[i];
        // Copied by uWSGI's metrics thread once a second.
        assert!(
            eventually(Duration::from_secs(5), || metric(port, "sslcache.default.sealed") > 0),
            "{}",
            node.file
        );
        for refused in [
            "forged",
            "replayed",
            "out_of_window",
            "skewed",
            "plain_refused",
            "rejected",
        ] {
            assert_eq!(
                metric(port, &format!("sslcache.default.{refused}")),
                0,
                "{}: {refused}",
                node.file
            );
        }
        let log = node.log();
        assert!(
            !log.contains(&old) && !log.contains(&new),
            "a key is in the log of {}",
            node.file
        );
    }
}
