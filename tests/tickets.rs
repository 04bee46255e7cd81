//! Cluster tickets (`ssl-sessions-tickets = cluster`) on real uWSGI nodes:
//! tickets made on one node resume on the others with nothing stored and no
//! datagram sent, session-id clients keep resuming through the store beside
//! them, keys rotate under load with one node's clock 30 s ahead
//! (libfaketime), every ticket that must not resume gets a full handshake
//! and is counted, tickets follow reloads and the cluster key's rotation,
//! and clients nobody here wrote (`openssl s_client`, `gnutls-cli`) resume
//! by ticket across nodes.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use openssl::ssl::SslSession;
use sslcache_testkit::*;

const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The environment that runs a process with its clock `offset` away
/// (libfaketime: `+30s`, `-2d`), the monotonic clock left alone; `None`
/// when libfaketime is not installed (`make deps` installs it).
fn faketime(offset: &str) -> Option<Vec<(String, String)>> {
    if !Path::new(LIBFAKETIME).exists() {
        assert!(!require_all(), "{LIBFAKETIME} is missing: apt-get install libfaketime");
        return None;
    }
    Some(vec![
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ])
}

/// Nodes of seed Setup 2 on 127.0.0.1..n, sealed with `keys`, cluster
/// tickets on, plus `extra`; node `i` runs with `env(i)`.
struct Fleet {
    nodes: Vec<Uwsgi>,
    https: u16,
    stats: Vec<u16>,
}

impl Fleet {
    fn start(dir: &Path, n: usize, keys: &Path, extra: &str, env: impl Fn(usize) -> Vec<(String, String)>) -> Fleet {
        let (https, udp) = (free_port(), free_port());
        let stats: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let nodes = (1..=n)
            .map(|i| {
                let lines = setup2_replication(i, n, udp)
                    + &format!(
                        "cache-udp-key = {}\nssl-sessions-tickets = cluster\n{extra}",
                        keys.display()
                    );
                let ini = seed_setup2_node(&plugin_dir(), i, https, stats[i - 1], &lines);
                let mut node = Uwsgi::spawn_env(dir, &format!("node{i}"), &ini, &env(i));
                node.wait_ready(&[stats[i - 1]]);
                assert!(
                    node.log().contains("TLS session tickets: cluster mode"),
                    "{}",
                    node.log()
                );
                node
            })
            .collect();
        wait_nodes(n, https);
        Fleet { nodes, https, stats }
    }

    fn backends(&self) -> Vec<SocketAddr> {
        node_addrs(self.nodes.len(), self.https)
    }

    fn sum(&self, name: &str) -> u64 {
        self.stats
            .iter()
            .map(|&p| metric(p, &format!("sslcache.default.{name}")))
            .sum()
    }

    fn each(&self, name: &str) -> Vec<u64> {
        self.stats
            .iter()
            .map(|&p| metric(p, &format!("sslcache.default.{name}")))
            .collect()
    }

    /// Waits until uWSGI's metrics (copied once a second) show at least
    /// `least` for `name`, summed over the nodes.
    fn settle(&self, name: &str, least: u64) {
        assert!(
            eventually(Duration::from_secs(10), || self.sum(name) >= least),
            "{name}: {} of at least {least}",
            self.sum(name)
        );
    }
}

/// One reconnect chain per protocol in its own thread, all at once.
fn side_by_side(port: u16, protos: &[Proto], n: usize) -> Vec<(Proto, Outcome)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = protos
            .iter()
            .map(|&proto| scope.spawn(move || (proto, Client::new(proto).reconnects(port, n, &[]))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// What one foreign TLS client run showed.
fn run_client(program: &str, args: &[&str], input: &[u8]) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let _ = child.stdin.take().unwrap().write_all(input);
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Ok(None) = child.try_wait() {
        // SAFETY: stops the client this test started, by its pid.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `openssl s_client` to `target` with `extra` (a request on stdin,
/// `-ign_eof`: it reads until the router closes, TLS 1.3 tickets included).
fn s_client(target: &str, extra: &[&str]) -> String {
    run_client(
        "openssl",
        &[&["s_client", "-connect", target, "-ign_eof"], extra].concat(),
        b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    )
}

fn s_client_flags(proto: Proto) -> &'static [&'static str] {
    match proto {
        Proto::Tls12NoTickets => &["-tls1_2", "-no_ticket"],
        Proto::Tls12Tickets => &["-tls1_2"],
        Proto::Tls13 => &["-tls1_3"],
    }
}

fn session_file(dir: &Path) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    dir.join(format!("session-{}.pem", N.fetch_add(1, Ordering::Relaxed)))
}

/// Three sealed nodes behind HAProxy with cluster tickets: TLS 1.2 ticket
/// clients and TLS 1.3 reconnects resume on the next node with nothing
/// stored and no datagram sent; session-id clients beside them resume
/// through the store as before; `openssl s_client -sess_out/-sess_in` and
/// `gnutls-cli --resume` resume by ticket across nodes.
#[test]
fn cluster_tickets_resume_on_every_node_with_no_replication() {
    let _heavy = heavy();
    let dir = test_dir("tickets-cluster");
    let keys = key_file(&dir, "keys", &[K1]);
    let fleet = Fleet::start(&dir, 3, &keys, "", |_| Vec::new());
    let lb = free_port();
    let _proxy = haproxy(&dir, lb, &fleet.backends());

    // Ticket clients alone: every reconnect goes to the next node.
    let (sent0, inserts0, resumed0) = (fleet.sum("sent"), fleet.sum("inserts"), fleet.sum("tickets_resumed"));
    let mut resumed = 0;
    for proto in [Proto::Tls12Tickets, Proto::Tls13] {
        let out = Client::new(proto).reconnects(lb, 300, &[]);
        assert!(out.errors.is_empty(), "{proto:?}: {:?}", out.errors);
        out.assert_resumed(format_args!("{proto:?}"), "");
        println!("cluster tickets behind HAProxy, {proto:?}: {}/299 resumed", out.resumed);
        resumed += out.resumed as u64;
    }
    fleet.settle("tickets_resumed", resumed0 + resumed);
    let (sent, inserts) = (fleet.sum("sent") - sent0, fleet.sum("inserts") - inserts0);
    println!(
        "ticket clients: {resumed} resumptions, {sent} replication datagrams, {inserts} sessions stored; \
         per node resumed {:?}, issued {:?}",
        fleet.each("tickets_resumed"),
        fleet.each("tickets_issued")
    );
    assert_eq!(sent, 0, "replication datagrams caused by ticket clients");
    assert_eq!(inserts, 0, "sessions stored for ticket clients");
    assert_eq!(fleet.sum("items"), 0);
    for (i, n) in fleet.each("tickets_resumed").iter().enumerate() {
        assert!(*n >= 150, "node {} resumed {n} tickets", i + 1);
    }
    for refused in ["cluster", "expired", "context", "forged"] {
        assert_eq!(fleet.sum(&format!("tickets_refused_{refused}")), 0, "{refused}");
    }

    // Side by side: session-id clients resume through the store, the
    // ticket clients still add nothing.
    let (sent0, hits0) = (fleet.sum("sent"), fleet.sum("hits"));
    let outcomes = side_by_side(lb, &[Proto::Tls12NoTickets, Proto::Tls12Tickets, Proto::Tls13], 200);
    for (proto, out) in &outcomes {
        assert!(out.errors.is_empty(), "{proto:?}: {:?}", out.errors);
        out.assert_resumed(format_args!("side by side, {proto:?}"), "");
        println!("side by side, {proto:?}: {}/199 resumed", out.resumed);
    }
    let by_id = &outcomes[0].1;
    fleet.settle("hits", hits0 + by_id.resumed as u64);
    // Each full handshake of the session-id client is one session, sent to
    // the 2 other nodes; ticket clients add nothing.
    let full = (by_id.attempts - by_id.resumed) as u64;
    let sent = fleet.sum("sent") - sent0;
    println!("side by side: {sent} datagrams for {full} session-id sessions");
    assert!(
        sent >= 2 * full && sent <= 2 * full + 2,
        "{sent} datagrams for {full} sessions"
    );

    // openssl s_client: a ticket made on node 1 resumes on node 2 (TLS
    // 1.2 and 1.3).
    for proto in [Proto::Tls12Tickets, Proto::Tls13] {
        let session = session_file(&dir);
        let session = session.to_str().unwrap();
        let made = s_client(
            &format!("127.0.0.1:{}", fleet.https),
            &[s_client_flags(proto), &["-sess_out", session]].concat(),
        );
        assert!(made.contains("New, TLSv1."), "{made}");
        let resumed = s_client(
            &format!("127.0.0.2:{}", fleet.https),
            &[s_client_flags(proto), &["-sess_in", session]].concat(),
        );
        assert!(resumed.contains("Reused, TLSv1."), "{proto:?} on node 2: {resumed}");
        println!("openssl s_client, {proto:?}: made on node 1, reused on node 2");
    }
    // gnutls-cli --resume through HAProxy: its second connection lands on
    // the next node.
    let before = fleet.sum("tickets_resumed");
    for version in ["TLS1.2", "TLS1.3"] {
        let priority = format!("NORMAL:-VERS-ALL:+VERS-{version}");
        let port = lb.to_string();
        let out = run_client(
            "gnutls-cli",
            &[
                "--insecure",
                "--resume",
                "--priority",
                &priority,
                "-p",
                &port,
                "127.0.0.1",
            ],
            b"",
        );
        assert!(out.contains("This is a resumed session"), "gnutls-cli {version}: {out}");
        println!("gnutls-cli --resume, {version}: resumed on the next node");
    }
    fleet.settle("tickets_resumed", before + 2);
    // Each node holds the session-id client's sessions, and nothing else.
    assert_eq!(
        fleet.each("items"),
        vec![full; 3],
        "only session-id sessions are stored"
    );
}

/// A ticket chain under load across rotation boundaries (every 4 s), with
/// node 3's clock 30 s ahead (libfaketime): no resumption fails; keys of
/// older epochs are renewed, node 3's later epochs are accepted.
#[test]
fn rotation_under_load_with_a_clock_30s_ahead() {
    let Some(ahead) = faketime("+30s") else {
        println!("skipped: libfaketime is not installed");
        return;
    };
    let _heavy = heavy();
    let dir = test_dir("tickets-rotation");
    let keys = key_file(&dir, "keys", &[K1]);
    let interval = 4u64;
    let fleet = Fleet::start(
        &dir,
        3,
        &keys,
        &format!("ssl-sessions-tickets-rotation = {interval}\n"),
        |i| if i == 3 { ahead.clone() } else { Vec::new() },
    );
    let lb = free_port();
    let _proxy = haproxy(&dir, lb, &fleet.backends());
    // Three intervals at least: every client crosses boundaries.
    let duration = Duration::from_secs(3 * interval + 1);
    let results: Vec<(Proto, usize, usize, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = [Proto::Tls12Tickets, Proto::Tls13, Proto::Tls12Tickets, Proto::Tls13]
            .into_iter()
            .map(|proto| {
                scope.spawn(move || {
                    let client = Client::new(proto);
                    let started = Instant::now();
                    let (mut attempts, mut resumed, mut errors) = (0usize, 0usize, Vec::new());
                    let mut session: Option<SslSession> = None;
                    while started.elapsed() < duration {
                        match client.connect(lb, session.as_ref(), &[]) {
                            Ok(c) => {
                                if session.is_some() {
                                    attempts += 1;
                                    resumed += c.resumed as usize;
                                }
                                if c.session.is_some() {
                                    session = c.session;
                                }
                            }
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                    (proto, attempts, resumed, errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = 0;
    for (proto, attempts, resumed, errors) in &results {
        println!("across rotations, {proto:?}: {resumed}/{attempts} resumed");
        assert!(errors.is_empty(), "{proto:?}: {errors:?}");
        assert!(*attempts > 20, "{proto:?}: only {attempts} reconnects");
        assert_eq!(resumed, attempts, "{proto:?}: failed resumptions");
        total += resumed;
    }
    fleet.settle("tickets_resumed", total as u64);
    let (renewed, ahead) = (fleet.each("tickets_renewed"), fleet.each("tickets_ahead"));
    println!("renewed per node {renewed:?}, opened from a clock ahead {ahead:?}");
    assert!(
        renewed.iter().sum::<u64>() > 0,
        "no ticket of an older epoch was renewed"
    );
    // Nodes 1 and 2 opened tickets of node 3's later epochs.
    assert!(ahead[0] > 0 && ahead[1] > 0, "{ahead:?}");
    for refused in ["cluster", "expired", "context", "forged"] {
        assert_eq!(fleet.sum(&format!("tickets_refused_{refused}")), 0, "{refused}");
    }
}

// ---------------------------------------------------------------------------
// Tickets that must not resume

/// DER length at `buf[at..]`: (length, bytes of the length).
fn der_len(buf: &[u8], at: usize) -> (usize, usize) {
    let first = buf[at] as usize;
    if first < 0x80 {
        return (first, 1);
    }
    let n = first & 0x7f;
    let len = buf[at + 1..at + 1 + n]
        .iter()
        .fold(0usize, |acc, &b| (acc << 8) | b as usize);
    (len, 1 + n)
}

fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match body.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(body);
    out
}

/// `session` with its ticket (`[10] EXPLICIT OCTET STRING` of OpenSSL's
/// session encoding) changed by `edit`.
fn with_ticket(session: &SslSession, edit: impl FnOnce(&mut Vec<u8>)) -> SslSession {
    let der = session.to_der().unwrap();
    assert_eq!(der[0], 0x30);
    let (len, hl) = der_len(&der, 1);
    let body = &der[1 + hl..1 + hl + len];
    let (mut out, mut i, mut edit) = (Vec::new(), 0, Some(edit));
    while i < body.len() {
        let (l, h) = der_len(body, i + 1);
        let end = i + 1 + h + l;
        if body[i] == 0xaa {
            let inner = &body[i + 1 + h..end];
            assert_eq!(inner[0], 0x04);
            let (il, ih) = der_len(inner, 1);
            let mut ticket = inner[1 + ih..1 + ih + il].to_vec();
            (edit.take().unwrap())(&mut ticket);
            out.extend(der_tlv(0xaa, &der_tlv(0x04, &ticket)));
        } else {
            out.extend_from_slice(&body[i..end]);
        }
        i = end;
    }
    assert!(edit.is_none(), "the session holds no ticket");
    SslSession::from_der(&der_tlv(0x30, &out)).unwrap()
}

/// A node of its own (on 127.0.0.1) with cluster tickets sealed with `keys`.
fn lone_node(dir: &Path, name: &str, keys: &Path, extra: &str, env: &[(String, String)]) -> (Uwsgi, u16, u16) {
    let (https, stats_port) = (free_port(), free_port());
    let ini = seed_setup1(&plugin_dir(), https, stats_port, 2, DEFAULT_CACHE)
        + &format!(
            "cache-udp-key = {}\nssl-sessions-tickets = cluster\n{extra}",
            keys.display()
        );
    let mut node = Uwsgi::spawn_env(dir, name, &ini, env);
    node.wait_ready(&[https, stats_port]);
    (node, https, stats_port)
}

/// A fresh ticket session of `proto` from 127.0.0.1:`port`.
fn ticket(proto: Proto, port: u16) -> SslSession {
    let c = Client::new(proto).connect(port, None, &[]).unwrap();
    assert!(!c.resumed);
    let s = c.session.expect("a session");
    // Panics if the session holds no ticket.
    with_ticket(&s, |_| ());
    s
}

/// Offers `session` on 127.0.0.1:`port`: it must get a full handshake
/// (which succeeds), and `counter` of the node on `stats` must grow by 1.
fn refused(what: &str, proto: Proto, session: &SslSession, port: u16, stats: u16, counter: &str) {
    let name = format!("sslcache.default.tickets_refused_{counter}");
    let before = metric(stats, &name);
    let c = Client::new(proto)
        .connect(port, Some(session), &[])
        .unwrap_or_else(|e| panic!("{what}: the handshake failed: {e}"));
    assert!(!c.resumed, "{what} ({proto:?}) resumed");
    assert!(
        eventually(Duration::from_secs(5), || metric(stats, &name) > before),
        "{what} ({proto:?}): {name} stayed {before}"
    );
    assert_eq!(metric(stats, &name), before + 1, "{what} ({proto:?})");
    println!("{what}, {proto:?}: full handshake, counted in tickets_refused_{counter}");
}

/// A ticket from another cluster key, expired ones (a key epoch long past;
/// a session past its lifetime), forged and truncated ones: each gets a
/// full handshake and is counted.
#[test]
fn foreign_expired_and_forged_tickets_get_full_handshakes() {
    let dir = test_dir("tickets-refused");
    let (k1, k2) = (key_file(&dir, "k1", &[K1]), key_file(&dir, "k2", &[K2]));
    // A day-long rotation, so that a node 400 s behind is (nearly always)
    // in the same epoch: its tickets expire by their lifetime, not their key.
    let rotation = "ssl-sessions-tickets-rotation = 86400\n";
    let (_a, a, a_stats) = lone_node(&dir, "a", &k1, rotation, &[]);
    let (_b, b, _) = lone_node(&dir, "other-cluster", &k2, rotation, &[]);
    let past = faketime("-2d").map(|env| lone_node(&dir, "two-days-ago", &k1, rotation, &env));
    let behind = faketime("-400s").map(|env| lone_node(&dir, "400s-ago", &k1, rotation, &env));
    for proto in [Proto::Tls12Tickets, Proto::Tls13] {
        // The control: a ticket of A resumes on A.
        let good = ticket(proto, a);
        assert!(Client::new(proto).connect(a, Some(&good), &[]).unwrap().resumed);

        refused(
            "a ticket of another cluster key",
            proto,
            &ticket(proto, b),
            a,
            a_stats,
            "cluster",
        );
        if let Some((_, port, _)) = &past {
            refused(
                "a ticket made two days ago",
                proto,
                &ticket(proto, *port),
                a,
                a_stats,
                "expired",
            );
        }
        if let Some((_, port, _)) = &behind {
            refused(
                "a ticket made 400 s ago (lifetime 300 s)",
                proto,
                &ticket(proto, *port),
                a,
                a_stats,
                "expired",
            );
        }
        let forged = with_ticket(&ticket(proto, a), |t| {
            let middle = t.len() / 2;
            t[middle] ^= 0x01;
        });
        refused("a ticket with a flipped bit", proto, &forged, a, a_stats, "forged");
        let forged_mac = with_ticket(&ticket(proto, a), |t| {
            let last = t.len() - 1;
            t[last] ^= 0x80;
        });
        refused(
            "a ticket with a flipped MAC bit",
            proto,
            &forged_mac,
            a,
            a_stats,
            "forged",
        );
        for keep in [40, 20] {
            let truncated = with_ticket(&ticket(proto, a), |t| t.truncate(keep));
            refused(
                &format!("a ticket cut to {keep} bytes"),
                proto,
                &truncated,
                a,
                a_stats,
                "forged",
            );
        }
    }
    // Nothing refused was stored: the store holds no session at all.
    assert_eq!(metric(a_stats, "sslcache.default.items"), 0);
}

/// Where client certificates are required: a ticket made on a listener
/// without client certificates, offered (by `openssl s_client`, without a
/// certificate) to a listener and an SNI host that require one, TLS 1.2
/// and 1.3: a full handshake, counted, and the request never gets through.
/// Equivalent contexts keep resuming.
#[test]
fn tickets_do_not_cross_client_certificate_policies() {
    let dir = test_dir("tickets-isolation");
    let keys = key_file(&dir, "keys", &[K1]);
    let pki = pki();
    let (pa, pb, pa2, stats_port) = (free_port(), free_port(), free_port(), free_port());
    let backend = uwsgi_backend(Duration::from_secs(120));
    let ini = format!(
        "[uwsgi]\n\
         plugin-dir = {plugins}\n\
         plugins = sslcache\n\
         master = true\n\
         {DEFAULT_CACHE}\n\
         cache-udp-key = {keys}\n\
         ssl-sessions-tickets = cluster\n\
         https-session-context = foobar\n\
         https = 127.0.0.1:{pa},{a_crt},{a_key}\n\
         https = 127.0.0.1:{pb},{b_crt},{b_key},HIGH,!{ca}\n\
         https = 127.0.0.1:{pa2},{a_crt},{a_key}\n\
         sni = c.example {b_crt},{b_key},HIGH,!{ca}\n\
         http-processes = 2\n\
         http-to = 127.0.0.1:{backend}\n\
         stats = 127.0.0.1:{stats_port}\n",
        plugins = plugin_dir().display(),
        keys = keys.display(),
        a_crt = pki.a.0.display(),
        a_key = pki.a.1.display(),
        b_crt = pki.b.0.display(),
        b_key = pki.b.1.display(),
        ca = pki.ca_crt.display(),
    );
    let _node = Uwsgi::start(&dir, "node", &ini, &[pa, pb, pa2, stats_port]);
    let context = "sslcache.default.tickets_refused_context";
    let with_cert = [
        "-cert",
        pki.client_crt.to_str().unwrap(),
        "-key",
        pki.client_key.to_str().unwrap(),
    ];
    let sni = ["-servername", "c.example"];
    let response = "\r\n\r\nhello";
    for proto in [Proto::Tls12Tickets, Proto::Tls13] {
        let flags = s_client_flags(proto);
        let made_on = |target: u16, extra: &[&str]| {
            let session = session_file(&dir);
            let out = s_client(
                &format!("127.0.0.1:{target}"),
                &[flags, extra, &["-sess_out", session.to_str().unwrap()]].concat(),
            );
            assert!(out.contains("New, TLSv1.") && out.contains(response), "{out}");
            assert!(session.metadata().map(|m| m.len() > 0).unwrap_or(false), "{out}");
            session
        };
        let offered = |session: &Path, target: u16, extra: &[&str]| {
            s_client(
                &format!("127.0.0.1:{target}"),
                &[flags, extra, &["-sess_in", session.to_str().unwrap()]].concat(),
            )
        };
        // Crossings: refused, counted, nothing reaches the application.
        let crossings: [(&str, u16, &[&str]); 2] = [
            ("on PB (client certificate required)", pb, &[]),
            ("on PA with SNI c.example (client certificate required)", pa, &sni),
        ];
        for (place, target, extra) in crossings {
            let before = metric(stats_port, context);
            let out = offered(&made_on(pa, &[]), target, extra);
            assert!(
                !out.contains("Reused, TLSv1.") && !out.contains(response),
                "{proto:?} ticket from PA {place}: {out}"
            );
            assert!(
                eventually(Duration::from_secs(5), || metric(stats_port, context) == before + 1),
                "{proto:?} {place}: {context} = {} (was {before})",
                metric(stats_port, context)
            );
            println!("{proto:?} ticket from PA {place}: refused, counted");
        }
        // Controls: they resume.
        let controls: [(&str, u16, u16, &[&str]); 4] = [
            ("PA to PA", pa, pa, &[]),
            ("PA to PA2 (same certificate and policy)", pa, pa2, &[]),
            ("PB to PB with the client certificate", pb, pb, &with_cert),
            (
                "PA with SNI c.example, with the client certificate",
                pa,
                pa,
                &[&with_cert[..], &sni[..]].concat(),
            ),
        ];
        for (what, from, to, extra) in controls {
            let out = offered(&made_on(from, extra), to, extra);
            assert!(
                out.contains("Reused, TLSv1.") && out.contains(response),
                "{proto:?} {what}: {out}"
            );
            println!("{proto:?} {what}: resumed");
        }
    }
    assert_eq!(metric(stats_port, "sslcache.default.items"), 0);
}

/// Tickets survive a reload (the keys are derived again), follow the
/// cluster key's three rotation steps (old tickets renewed under the new
/// key, then refused once the old key is gone).
#[test]
fn tickets_survive_reloads_and_follow_the_cluster_key_rotation() {
    let dir = test_dir("tickets-reload");
    let keys = key_file(&dir, "keys", &[K1]);
    let (node, port, stats_port) = lone_node(&dir, "node", &keys, "", &[]);
    let marker = "TLS session tickets: cluster mode";
    let reload = |n: usize| {
        node.signal(libc::SIGHUP);
        assert!(
            eventually(Duration::from_secs(60), || node.log().matches(marker).count() >= n),
            "reload {n}: {}",
            node.log()
        );
        let client = Client::new(Proto::Tls12Tickets);
        assert!(eventually(Duration::from_secs(30), || client
            .connect(port, None, &[])
            .is_ok()));
    };
    let protos = [Proto::Tls12Tickets, Proto::Tls13];
    let old: Vec<SslSession> = protos.iter().map(|&p| ticket(p, port)).collect();

    reload(2);
    for (proto, s) in protos.iter().zip(&old) {
        assert!(
            Client::new(*proto).connect(port, Some(s), &[]).unwrap().resumed,
            "{proto:?} after a reload"
        );
    }
    println!("after a reload: both tickets resumed");

    // Step 2 of a key rotation: the new key first, the old one second.
    key_file(&dir, "keys", &[K2, K1]);
    reload(3);
    let mut renewed = Vec::new();
    for (proto, s) in protos.iter().zip(&old) {
        let c = Client::new(*proto).connect(port, Some(s), &[]).unwrap();
        assert!(c.resumed, "{proto:?} with the old key second");
        renewed.push(c.session.unwrap());
    }
    assert!(
        eventually(Duration::from_secs(5), || metric(
            stats_port,
            "sslcache.default.tickets_renewed"
        ) >= 2),
        "old-key tickets not renewed"
    );
    println!("new key first: old tickets resumed and renewed");

    // Step 3: the old key removed.
    key_file(&dir, "keys", &[K2]);
    reload(4);
    for (proto, s) in protos.iter().zip(&old) {
        refused(
            "an old-key ticket after the rotation",
            *proto,
            s,
            port,
            stats_port,
            "cluster",
        );
    }
    for (proto, s) in protos.iter().zip(&renewed) {
        assert!(
            Client::new(*proto).connect(port, Some(s), &[]).unwrap().resumed,
            "{proto:?}: the renewed ticket"
        );
    }
    println!("old key removed: old tickets refused, renewed ones resume");
}

/// A TLS 1.3 client that resumes again and again (each resumption brings a
/// new ticket) makes a full handshake at least once per ticket lifetime:
/// no resumption comes later than the chain's first authentication + the
/// lifetime (3 s here), and chains are renewed by full handshakes.
#[test]
fn tls13_resumption_chains_end_with_their_first_authentication() {
    let dir = test_dir("tickets-chain");
    let keys = key_file(&dir, "keys", &[K1]);
    let lifetime = 3.0;
    let (_node, port, stats_port) = lone_node(&dir, "node", &keys, "ssl-sessions-timeout = 3\n", &[]);
    let client = Client::new(Proto::Tls13);
    let started = Instant::now();
    let (mut session, mut chain_start, mut full, mut resumed, mut longest) = (None, Instant::now(), 0, 0, 0.0f64);
    while started.elapsed() < Duration::from_secs_f64(2.5 * lifetime) {
        let at = Instant::now();
        let c = client.connect(port, session.as_ref(), &[]).unwrap();
        if c.resumed {
            resumed += 1;
            let age = at.duration_since(chain_start).as_secs_f64();
            longest = longest.max(age);
            // Lifetimes are whole seconds: up to 1 s of rounding.
            assert!(
                age <= lifetime + 1.0,
                "resumed {age:.2} s after the chain's full handshake"
            );
        } else {
            full += 1;
            chain_start = at;
        }
        session = c.session;
    }
    println!(
        "TLS 1.3 chains, lifetime {lifetime} s: {full} full handshakes, {resumed} resumptions, longest {longest:.2} s"
    );
    assert!(full >= 2, "the chain was never renewed by a full handshake");
    assert!(resumed > 10);
    assert!(longest >= lifetime - 1.0, "chains ended too early: {longest:.2} s");
    assert!(eventually(Duration::from_secs(5), || metric(
        stats_port,
        "sslcache.default.tickets_resumed"
    ) >= resumed));
}

/// Without a cluster key there is nothing to derive ticket keys from: the
/// option is refused with one line.
#[test]
fn cluster_tickets_are_refused_in_plain_mode() {
    let dir = test_dir("tickets-plain");
    let (https, stats_port) = (free_port(), free_port());
    let ini = seed_setup1(&plugin_dir(), https, stats_port, 1, DEFAULT_CACHE) + "ssl-sessions-tickets = cluster\n";
    let (status, log) = run_to_exit(&dir, "plain", &ini);
    assert!(status.is_some_and(|s| !s.success()), "{status:?}\n{log}");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("ssl-sessions-tickets")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("ssl-sessions-tickets = cluster needs a cluster key (cache-udp-key)"),
        "{log}"
    );
}
