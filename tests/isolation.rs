//! Session isolation between TLS contexts with different client
//! certificate policies, tried as a hostile client would: the real
//! `openssl s_client`, a session made where no client certificate is asked
//! for (`-sess_out`), offered (`-sess_in`) where one is required, without a
//! certificate. A resumption there skips the certificate check: the request
//! reaches the application with no client certificate at all.
//!
//! One node on loopback, the same listeners for stock uWSGI and sslcache:
//!
//! ```ini
//! https-session-context = foobar
//! https = 127.0.0.1:PA,a.crt,a.key                  ; no client certificate
//! https = 127.0.0.1:PB,b.crt,b.key,HIGH,!ca.crt     ; client certificate required
//! https = 127.0.0.1:PA2,a.crt,a.key                 ; same certificate and policy as PA
//! sni = c.example b.crt,b.key,HIGH,!ca.crt          ; SNI host requiring a client certificate
//! ```
//!
//! Stock uWSGI 2.0.21 refuses three of the four crossings and resumes a TLS
//! 1.2 ticket on the SNI host (an OpenSSL/uWSGI weakness); sslcache must
//! refuse all four, and keep resuming where the policy is the same.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sslcache_testkit::*;

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n";
/// What the backend answers, as the client sees it after the router.
const RESPONSE_BODY: &str = "\r\n\r\nhello";
const S_CLIENT_DEADLINE: Duration = Duration::from_secs(10);
const SNI_HOST: &str = "c.example";

// ---------------------------------------------------------------------------
// openssl s_client

/// What one `openssl s_client` connection showed.
struct SClientResult {
    /// `Reused, TLSv1.x`: the offered session was resumed.
    reused: bool,
    /// The backend's answer reached the client: the request got through.
    response: bool,
    /// `SSL alert number N` (received from the server), if any.
    alert: Option<String>,
    /// Killed at the deadline.
    timed_out: bool,
    output: String,
}

impl SClientResult {
    /// The session was not resumed and the request did not get through
    /// (and the connection ended: a hang is no answer).
    fn refused(&self) -> bool {
        !self.reused && !self.response && !self.timed_out
    }

    /// The server ended the connection with an alert, or reset it: in TLS
    /// 1.3 the server refuses a missing client certificate after the
    /// client's Finished, when the client has written its request already;
    /// the server's close with that request unread sends a reset, which can
    /// overtake the alert (s_client then says `errno=104`, no alert: seen
    /// on a loaded machine).
    fn ended_by_server(&self) -> bool {
        self.alert.is_some() || self.output.contains("errno=104")
    }

    /// `New, TLSv1.3, Cipher is ...` or `Reused, ...`.
    fn handshake(&self) -> &str {
        self.output
            .lines()
            .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))
            .map(|l| l.split(", Cipher").next().unwrap_or(l))
            .unwrap_or("no handshake line")
    }

    /// One line for assertion messages and the printed table.
    fn summary(&self) -> String {
        format!(
            "{}; app response {}; alert {}{}",
            self.handshake(),
            if self.response { "RECEIVED" } else { "none" },
            self.alert.as_deref().unwrap_or("none"),
            if self.timed_out { "; timed out" } else { "" }
        )
    }

    fn verdict(&self) -> &'static str {
        match (self.reused, self.response) {
            (true, true) => "RESUMED",
            (false, false) if self.timed_out => "hung",
            (false, false) => "refused",
            (true, false) => "resumed, no response",
            (false, true) => "full handshake, response",
        }
    }
}

/// The s_client flags of a protocol.
fn proto_flags(proto: Proto) -> &'static [&'static str] {
    match proto {
        Proto::Tls12NoTickets => &["-tls1_2", "-no_ticket"],
        Proto::Tls12Tickets => &["-tls1_2"],
        Proto::Tls13 => &["-tls1_3"],
    }
}

fn proto_label(proto: Proto) -> &'static str {
    match proto {
        Proto::Tls12NoTickets => "TLS 1.2 (session id)",
        Proto::Tls12Tickets => "TLS 1.2 (ticket)",
        Proto::Tls13 => "TLS 1.3",
    }
}

fn drain(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        buf
    })
}

/// Stops `child` by its pid at the deadline; returns whether it had to.
fn wait_or_kill(child: &mut Child, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    true
}

/// One `openssl s_client` connection to `target` (`host:port`): the
/// handshake, one request (sent on stdin; `-ign_eof` keeps reading after
/// it), then everything until the router closes, within a deadline.
/// `extra` holds `-sess_in`/`-sess_out`, `-servername`, `-cert`/`-key`.
fn s_client(target: &str, proto: Proto, extra: &[&str]) -> SClientResult {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", target, "-ign_eof"])
        .args(proto_flags(proto))
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(REQUEST);
    drop(stdin);
    let timed_out = wait_or_kill(&mut child, Instant::now() + S_CLIENT_DEADLINE);
    let mut output = String::from_utf8_lossy(&stdout.join().unwrap()).into_owned();
    output.push_str(&String::from_utf8_lossy(&stderr.join().unwrap()));
    let alert = output
        .split("SSL alert number ")
        .nth(1)
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_digit()).collect::<String>());
    SClientResult {
        reused: output.contains("Reused, TLSv1."),
        response: output.contains(RESPONSE_BODY),
        alert,
        timed_out,
        output,
    }
}

/// A session file name unique in this test process.
fn session_path(dir: &Path, tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    dir.join(format!("{tag}-{}.pem", N.fetch_add(1, Ordering::Relaxed)))
}

/// A full handshake on `target` that saves its session (for TLS 1.3 the
/// ticket that arrives after the handshake: the request is answered first).
fn new_session(dir: &Path, target: &str, proto: Proto, extra: &[&str]) -> PathBuf {
    let path = session_path(dir, "session");
    let out_arg = path.to_str().unwrap();
    let r = s_client(target, proto, &[&["-sess_out", out_arg], extra].concat());
    assert!(
        !r.reused && r.response && path.metadata().map(|m| m.len() > 0).unwrap_or(false),
        "{} session on {target} {extra:?} not made: {}\n{}",
        proto_label(proto),
        r.summary(),
        r.output
    );
    path
}

/// Offers the session saved in `session` on `target`.
fn offer(session: &Path, target: &str, proto: Proto, extra: &[&str]) -> SClientResult {
    s_client(
        target,
        proto,
        &[&["-sess_in", session.to_str().unwrap()], extra].concat(),
    )
}

// ---------------------------------------------------------------------------
// The node

#[derive(Clone, Copy)]
enum Flavour {
    Stock,
    Sslcache,
}

struct Node {
    _uwsgi: Uwsgi,
    dir: PathBuf,
    /// No client certificate.
    pa: String,
    /// Client certificate required.
    pb: String,
    /// Same certificate and policy as `pa`.
    pa2: String,
}

/// The node of the module comment; the backend answers `hello` through
/// `http-to`, so that a request that gets through is seen by the client.
fn start_node(flavour: Flavour, name: &str) -> Node {
    let dir = test_dir(name);
    let pki = pki();
    let (pa, pb, pa2) = (free_port(), free_port(), free_port());
    let backend = uwsgi_backend(Duration::from_secs(60));
    let head = match flavour {
        Flavour::Stock => "plugins = http\n".to_string(),
        Flavour::Sslcache => format!(
            "plugin-dir = {}\nplugins = sslcache\n{DEFAULT_CACHE}\n",
            plugin_dir().display()
        ),
    };
    let ini = format!(
        "[uwsgi]\n\
         {head}\
         master = true\n\
         https-session-context = foobar\n\
         https = 127.0.0.1:{pa},{a_crt},{a_key}\n\
         https = 127.0.0.1:{pb},{b_crt},{b_key},HIGH,!{ca}\n\
         https = 127.0.0.1:{pa2},{a_crt},{a_key}\n\
         sni = {SNI_HOST} {b_crt},{b_key},HIGH,!{ca}\n\
         http-processes = 2\n\
         http-to = 127.0.0.1:{backend}\n",
        a_crt = pki.a.0.display(),
        a_key = pki.a.1.display(),
        b_crt = pki.b.0.display(),
        b_key = pki.b.1.display(),
        ca = pki.ca_crt.display(),
    );
    let uwsgi = Uwsgi::start(&dir, name, &ini, &[pa, pb, pa2]);
    Node {
        _uwsgi: uwsgi,
        dir,
        pa: format!("127.0.0.1:{pa}"),
        pb: format!("127.0.0.1:{pb}"),
        pa2: format!("127.0.0.1:{pa2}"),
    }
}

/// One attempt to carry a session made on PA (no client certificate) to a
/// place that requires a client certificate, without one.
struct Bypass {
    what: String,
    result: SClientResult,
}

/// The two crossings for `proto`, each with a fresh session from PA (a
/// refused attempt may remove the session it offered).
fn bypass_attempts(node: &Node, proto: Proto) -> Vec<Bypass> {
    let crossings: [(&str, &str, &[&str]); 2] = [
        ("on PB (client certificate required)", &node.pb, &[]),
        (
            "on PA with SNI c.example (client certificate required)",
            &node.pa,
            &["-servername", SNI_HOST],
        ),
    ];
    crossings
        .into_iter()
        .map(|(place, target, extra)| {
            let session = new_session(&node.dir, &node.pa, proto, &[]);
            Bypass {
                what: format!("{} session from PA {place}", proto_label(proto)),
                result: offer(&session, target, proto, extra),
            }
        })
        .collect()
}

fn table(rows: &[Bypass]) -> String {
    rows.iter()
        .map(|r| format!("  {:<24} {}: {}\n", r.result.verdict(), r.what, r.result.summary()))
        .collect()
}

// ---------------------------------------------------------------------------
// Tests

/// Stock uWSGI, the reference: it refuses the crossings except a TLS 1.2
/// ticket on the SNI host, which it resumes (the request reaches the
/// application without a client certificate).
#[test]
fn stock_uwsgi_client_cert_crossings() {
    let node = start_node(Flavour::Stock, "isolation-stock");
    // Stock resumes TLS 1.2 only with tickets: without them nothing resumes
    // and the weakness cannot show.
    let mut rows = bypass_attempts(&node, Proto::Tls12Tickets);
    rows.extend(bypass_attempts(&node, Proto::Tls13));
    println!("stock uWSGI:\n{}", table(&rows));

    let [pb12, sni12, pb13, sni13] = &rows[..] else {
        unreachable!()
    };
    for refused in [pb12, pb13, sni13] {
        assert!(
            refused.result.refused() && refused.result.ended_by_server(),
            "stock uWSGI was expected to refuse {}: {}\n{}\n{}",
            refused.what,
            refused.result.summary(),
            table(&rows),
            refused.result.output
        );
    }
    assert!(
        sni12.result.reused && sni12.result.response,
        "stock uWSGI was expected to resume (its known weakness) {}: {}\n{}\n{}",
        sni12.what,
        sni12.result.summary(),
        table(&rows),
        sni12.result.output
    );

    // The sessions are good ones: they resume where they were made.
    for proto in [Proto::Tls12Tickets, Proto::Tls13] {
        let session = new_session(&node.dir, &node.pa, proto, &[]);
        let r = offer(&session, &node.pa, proto, &[]);
        assert!(
            r.reused && r.response,
            "stock uWSGI: {} session not resumed on PA: {}",
            proto_label(proto),
            r.summary()
        );
    }
}

/// sslcache must refuse all four crossings: a session made where no client
/// certificate is asked for never resumes where one is required.
#[test]
fn sslcache_sessions_do_not_bypass_client_certificates() {
    let node = start_node(Flavour::Sslcache, "isolation-sslcache");
    // sslcache turns tickets off: TLS 1.2 resumes by session id.
    let mut rows = bypass_attempts(&node, Proto::Tls12NoTickets);
    rows.extend(bypass_attempts(&node, Proto::Tls13));
    println!("sslcache:\n{}", table(&rows));
    let bypassed: Vec<&Bypass> = rows.iter().filter(|r| !r.result.refused()).collect();
    assert!(
        bypassed.is_empty(),
        "sslcache let {} of {} sessions made without a client certificate through where one is \
         required:\n{}",
        bypassed.len(),
        rows.len(),
        table(&rows)
    );
}

/// What must keep resuming on sslcache: the same listener, a
/// client-certificate listener with the certificate, and a second listener
/// with the same certificate and policy (equivalent contexts).
#[test]
fn sslcache_equivalent_contexts_keep_resuming() {
    let node = start_node(Flavour::Sslcache, "isolation-controls");
    let pki = pki();
    let with_cert = [
        "-cert",
        pki.client_crt.to_str().unwrap(),
        "-key",
        pki.client_key.to_str().unwrap(),
    ];
    let with_sni_cert = [&with_cert[..], &["-servername", SNI_HOST]].concat();
    let mut rows = Vec::new();
    for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
        let cases: [(&str, &str, &str, &[&str]); 4] = [
            ("PA to PA", &node.pa, &node.pa, &[]),
            ("PA to PA2 (same certificate and policy)", &node.pa, &node.pa2, &[]),
            ("PB to PB with the client certificate", &node.pb, &node.pb, &with_cert),
            (
                "PA with SNI c.example to the same, with the client certificate",
                &node.pa,
                &node.pa,
                &with_sni_cert,
            ),
        ];
        for (what, made_on, offered_on, extra) in cases {
            let session = new_session(&node.dir, made_on, proto, extra);
            rows.push(Bypass {
                what: format!("{} session {what}", proto_label(proto)),
                result: offer(&session, offered_on, proto, extra),
            });
        }
    }
    println!("sslcache controls:\n{}", table(&rows));
    let failed: Vec<&Bypass> = rows
        .iter()
        .filter(|r| !(r.result.reused && r.result.response))
        .collect();
    assert!(
        failed.is_empty(),
        "sslcache no longer resumes {} of {} equivalent-context sessions:\n{}",
        failed.len(),
        rows.len(),
        table(&rows)
    );
}

/// The session id context uWSGI gives an HTTPS listener without
/// `https-session-context`: "http-" + the address as written in the ini,
/// of which OpenSSL takes at most 32 bytes (sslcache keeps the last 32).
fn default_context_tail(address: &str) -> String {
    let full = format!("http-{address}");
    full[full.len().saturating_sub(32)..].to_string()
}

/// IPv6 addresses on `lo` for the duration of a test (removed on drop).
/// Test processes running at the same time take turns (a lock file), so
/// that one does not remove the addresses another is using.
struct LoopbackAddrs {
    addrs: Vec<String>,
    _turn: std::fs::File,
}

impl LoopbackAddrs {
    fn add(addrs: &[&str]) -> Result<LoopbackAddrs, String> {
        let lock_path = repo_root().join("target/itest/isolation-ipv6.lock");
        let _ = std::fs::create_dir_all(lock_path.parent().unwrap());
        let turn = std::fs::File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
        // SAFETY: flock on a descriptor this struct owns; released when the
        // file is closed, after the addresses are removed.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&turn), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "flock {}: {}",
                lock_path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let mut added = LoopbackAddrs {
            addrs: Vec::new(),
            _turn: turn,
        };
        for a in addrs {
            let out = Command::new("ip")
                .args(["-6", "addr", "replace", &format!("{a}/128"), "dev", "lo", "nodad"])
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ip -6 addr replace {a}/128 dev lo: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            added.addrs.push(a.to_string());
        }
        Ok(added)
    }
}

impl Drop for LoopbackAddrs {
    fn drop(&mut self) {
        for a in &self.addrs {
            let _ = Command::new("ip")
                .args(["-6", "addr", "del", &format!("{a}/128"), "dev", "lo"])
                .output();
        }
    }
}

/// Without `https-session-context` every listener has its own default
/// context, cut to 32 bytes: two IPv6 listeners on the same port whose
/// addresses differ only before their last 32 bytes get the same one. A
/// session of the first (no client certificate) must still not resume on
/// the second (client certificate required). A third listener whose
/// default context differs shows the crossing is refused when the contexts
/// do not collide.
#[test]
fn sslcache_ipv6_default_contexts_do_not_collide() {
    let port = free_port();
    // Written in full so that the groups that differ fall before the last
    // 32 bytes of "http-[address]:port".
    let open = "fd00:0001:0000:0000:1234:5678:9abc:def0";
    let colliding = "fd00:0002:0000:0000:1234:5678:9abc:def0";
    let distinct = "fd00:0000:0000:0003:1234:5678:9abc:def0";
    let name = |a: &str| format!("[{a}]:{port}");
    assert_eq!(
        default_context_tail(&name(open)),
        default_context_tail(&name(colliding)),
        "the addresses must collide in the last 32 bytes of their default contexts"
    );
    assert_ne!(default_context_tail(&name(open)), default_context_tail(&name(distinct)));
    let _addrs = match LoopbackAddrs::add(&[open, colliding, distinct]) {
        Ok(a) => a,
        Err(e) if !require_all() => {
            println!("skipped: cannot add IPv6 addresses to lo ({e})");
            return;
        }
        Err(e) => panic!("cannot add IPv6 addresses to lo: {e}"),
    };

    let dir = test_dir("isolation-ipv6");
    let pki = pki();
    let backend = uwsgi_backend(Duration::from_secs(60));
    let (a_crt, a_key) = (pki.a.0.display(), pki.a.1.display());
    let (b_crt, b_key, ca) = (pki.b.0.display(), pki.b.1.display(), pki.ca_crt.display());
    let ini = format!(
        "[uwsgi]\n\
         plugin-dir = {plugins}\n\
         plugins = sslcache\n\
         master = true\n\
         {DEFAULT_CACHE}\n\
         https = {open},{a_crt},{a_key}\n\
         https = {colliding},{b_crt},{b_key},HIGH,!{ca}\n\
         https = {distinct},{b_crt},{b_key},HIGH,!{ca}\n\
         http-processes = 2\n\
         http-to = 127.0.0.1:{backend}\n",
        plugins = plugin_dir().display(),
        open = name(open),
        colliding = name(colliding),
        distinct = name(distinct),
    );
    let mut node = Uwsgi::spawn(&dir, "ipv6", &ini);
    let addrs: Vec<SocketAddr> = [open, colliding, distinct]
        .iter()
        .map(|a| name(a).parse().unwrap())
        .collect();
    node.wait_ready_on(&addrs);

    let mut rows = Vec::new();
    for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
        for (what, target) in [
            ("on the colliding listener", name(colliding)),
            ("on the distinct listener", name(distinct)),
        ] {
            let session = new_session(&dir, &name(open), proto, &[]);
            rows.push(Bypass {
                what: format!(
                    "{} session from {} {what} {target} (client certificate required)",
                    proto_label(proto),
                    name(open)
                ),
                result: offer(&session, &target, proto, &[]),
            });
        }
        // Control: the session is a good one.
        let session = new_session(&dir, &name(open), proto, &[]);
        let r = offer(&session, &name(open), proto, &[]);
        assert!(
            r.reused && r.response,
            "{} session not resumed on its own listener: {}\n{}",
            proto_label(proto),
            r.summary(),
            node.log()
        );
    }
    println!("sslcache, IPv6 default contexts:\n{}", table(&rows));
    let bypassed: Vec<&Bypass> = rows.iter().filter(|r| !r.result.refused()).collect();
    assert!(
        bypassed.is_empty(),
        "sslcache let {} of {} sessions made without a client certificate through where one is \
         required (default session id contexts \"{}\"):\n{}",
        bypassed.len(),
        rows.len(),
        default_context_tail(&name(open)),
        table(&rows)
    );
}

// ---------------------------------------------------------------------------
// Replication: planted identities, evictions

/// An sslcache node like [`start_node`], with a stats server and `extra`
/// lines (replication).
struct ReplicaNode {
    uwsgi: Uwsgi,
    pa: String,
    pb: String,
    stats: u16,
}

fn replica_node(dir: &Path, name: &str, extra: &str) -> ReplicaNode {
    let pki = pki();
    let (pa, pb, stats) = (free_port(), free_port(), free_port());
    let backend = uwsgi_backend(Duration::from_secs(120));
    let ini = format!(
        "[uwsgi]\n\
         plugin-dir = {plugins}\nplugins = sslcache\n{DEFAULT_CACHE}\n\
         master = true\n\
         https-session-context = foobar\n\
         https = 127.0.0.1:{pa},{a_crt},{a_key}\n\
         https = 127.0.0.1:{pb},{b_crt},{b_key},HIGH,!{ca}\n\
         http-processes = 2\n\
         http-to = 127.0.0.1:{backend}\n\
         stats = 127.0.0.1:{stats}\n\
         {extra}",
        plugins = plugin_dir().display(),
        a_crt = pki.a.0.display(),
        a_key = pki.a.1.display(),
        b_crt = pki.b.0.display(),
        b_key = pki.b.1.display(),
        ca = pki.ca_crt.display(),
    );
    let uwsgi = Uwsgi::start(dir, name, &ini, &[pa, pb, stats]);
    ReplicaNode {
        uwsgi,
        pa: format!("127.0.0.1:{pa}"),
        pb: format!("127.0.0.1:{pb}"),
        stats,
    }
}

/// Two nodes replicating plain datagrams both ways.
fn plain_pair(name: &str) -> (PathBuf, ReplicaNode, ReplicaNode) {
    let dir = test_dir(name);
    let (ux, uy) = (free_port(), free_port());
    let x = replica_node(
        &dir,
        "x",
        &format!("cache-udp-server = 127.0.0.1:{ux}\ncache-udp-node = 127.0.0.1:{uy}\n"),
    );
    let y = replica_node(
        &dir,
        "y",
        &format!("cache-udp-server = 127.0.0.1:{uy}\ncache-udp-node = 127.0.0.1:{ux}\n"),
    );
    (dir, x, y)
}

/// A session made with a client certificate stays on its node when
/// replication is plain: never sent (counted), it resumes there and
/// nowhere else.
#[test]
fn plain_replication_keeps_client_identities_home() {
    let (dir, x, y) = plain_pair("isolation-plain-identity");
    let pki = pki();
    let cert = [
        "-cert",
        pki.client_crt.to_str().unwrap(),
        "-key",
        pki.client_key.to_str().unwrap(),
    ];
    // The control: a session without identity reaches y.
    new_session(&dir, &x.pa, Proto::Tls12NoTickets, &[]);
    assert!(eventually(Duration::from_secs(5), || {
        metric(y.stats, "sslcache.default.applied") >= 1
    }));
    for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
        let (kept, applied) = (
            metric(x.stats, "sslcache.default.kept_identity"),
            metric(y.stats, "sslcache.default.applied"),
        );
        let session = new_session(&dir, &x.pb, proto, &cert);
        assert!(
            eventually(Duration::from_secs(5), || metric(
                x.stats,
                "sslcache.default.kept_identity"
            ) > kept),
            "{}: not kept on x",
            proto_label(proto)
        );
        let home = offer(&session, &x.pb, proto, &cert);
        assert!(
            home.reused && home.response,
            "{} on x: {}",
            proto_label(proto),
            home.summary()
        );
        let away = offer(&session, &y.pb, proto, &cert);
        assert!(!away.reused, "{} on y: {}", proto_label(proto), away.summary());
        assert_eq!(
            metric(y.stats, "sslcache.default.applied"),
            applied,
            "{}: replicated to y",
            proto_label(proto)
        );
    }
    drop((x.uwsgi, y.uwsgi));
}

/// A session with a client identity planted through a plain datagram (a
/// plain peer could have forged it: here it is a real one, taken from a
/// sealed node's datagram and sent on in the clear) never opens the
/// client-certificate listener, with or without the certificate, and the
/// refusal is counted.
#[test]
fn a_planted_client_identity_never_resumes() {
    use sslcache_core::replication::keys::Key;
    use sslcache_core::replication::seal::Opener;

    let dir = test_dir("isolation-planted-identity");
    let key_path = key_file(&dir, "cluster.key", &[&"7e".repeat(32)]);
    let (ux, uy, tap) = (free_port(), free_port(), free_port());
    let tap_socket = std::net::UdpSocket::bind(("127.0.0.1", tap)).unwrap();
    tap_socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    // x seals (to y, which refuses nothing plain, and to the test's tap).
    let x = replica_node(
        &dir,
        "x",
        &format!(
            "cache-udp-server = 127.0.0.1:{ux}
cache-udp-node = 127.0.0.1:{tap}
cache-udp-key = {}
",
            key_path.display()
        ),
    );
    let y = replica_node(
        &dir,
        "y",
        &format!(
            "cache-udp-server = 127.0.0.1:{uy}
cache-udp-key = {}
ssl-sessions-accept-plain = true
",
            key_path.display()
        ),
    );
    let opener = Opener::new(vec![Key::new([0x7e; 32])], 30, now_ms());
    let pki = pki();
    let cert = [
        "-cert",
        pki.client_crt.to_str().unwrap(),
        "-key",
        pki.client_key.to_str().unwrap(),
    ];
    for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
        let applied = metric(y.stats, "sslcache.default.applied");
        let session = new_session(&dir, &x.pb, proto, &cert);
        // x's sealed sets, opened and sent on to y in the clear.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 65_536];
        let (mut planted, mut last) = (0, None::<Instant>);
        // Until 300 ms after the last set (TLS 1.3 makes two sessions).
        while Instant::now() < deadline && last.is_none_or(|t| t.elapsed() < Duration::from_millis(300)) {
            let Ok(n) = tap_socket.recv(&mut buf) else { continue };
            let Ok(frame) = opener.open(&buf[..n], now_ms()) else {
                continue;
            };
            // A stock set (modifier2 10).
            if frame.get(3) == Some(&10) {
                tap_socket.send_to(&frame, ("127.0.0.1", uy)).unwrap();
                planted += 1;
                last = Some(Instant::now());
            }
        }
        assert!(planted > 0, "{}: no sealed set from x", proto_label(proto));
        assert!(eventually(Duration::from_secs(5), || {
            metric(y.stats, "sslcache.default.applied") >= applied + planted
        }));
        let refused = metric(y.stats, "sslcache.default.refused_plain_identity");
        let without = offer(&session, &y.pb, proto, &[]);
        assert!(
            !without.reused && !without.response,
            "{} on y without a cert: {}",
            proto_label(proto),
            without.summary()
        );
        let with = offer(&session, &y.pb, proto, &cert);
        assert!(
            !with.reused,
            "{} on y with the cert: {}",
            proto_label(proto),
            with.summary()
        );
        assert!(
            eventually(Duration::from_secs(3), || {
                metric(y.stats, "sslcache.default.refused_plain_identity") >= refused + 2
            }),
            "{}: refusals not counted",
            proto_label(proto)
        );
    }
    drop((x.uwsgi, y.uwsgi));
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Someone who saw a TLS 1.2 session id offers it with a cipher list that
/// excludes the session's cipher: OpenSSL answers illegal_parameter and
/// asks to remove the session. It stays, on both nodes, and resumes.
#[test]
fn eviction_probes_do_not_evict() {
    let (dir, x, y) = plain_pair("isolation-eviction");
    let proto = Proto::Tls12NoTickets;
    let victim_cipher = ["-cipher", "ECDHE-RSA-AES128-GCM-SHA256"];
    let other_cipher = ["-cipher", "ECDHE-RSA-AES256-GCM-SHA384"];
    let session = new_session(&dir, &x.pa, proto, &victim_cipher);
    assert!(eventually(Duration::from_secs(5), || {
        metric(y.stats, "sslcache.default.applied") >= 1
    }));
    for node in [&x, &y] {
        for _ in 0..3 {
            let probe = offer(&session, &node.pa, proto, &other_cipher);
            assert!(!probe.reused, "probe resumed: {}", probe.summary());
            // illegal_parameter: the server found the session and refused
            // the ClientHello.
            assert_eq!(probe.alert.as_deref(), Some("47"), "probe: {}", probe.summary());
        }
    }
    // A wrong Finished on a resumption of the victim: decrypt_error or
    // bad_record_mac from the server, which also asks for a removal.
    for node in [&x, &y] {
        wrong_finished(&session, &node.pa);
    }
    for node in [&x, &y] {
        let r = offer(&session, &node.pa, proto, &victim_cipher);
        assert!(
            r.reused && r.response,
            "victim after the probes on {}: {}",
            node.pa,
            r.summary()
        );
    }
    // Each probe made OpenSSL ask for a removal, which was ignored
    // (uWSGI collects metrics once a second).
    let kept = |n: &ReplicaNode| metric(n.stats, "sslcache.default.kept_unproven");
    assert!(
        eventually(Duration::from_secs(3), || kept(&x) >= 4 && kept(&y) >= 4),
        "probes did not reach a removal: x {} y {}",
        kept(&x),
        kept(&y)
    );
    let kept = kept(&x) + kept(&y);
    let removed = metric(x.stats, "sslcache.default.removed") + metric(y.stats, "sslcache.default.removed");
    println!("eviction probes: kept_unproven {kept}, deletes applied {removed}");
    assert_eq!(removed, 0, "a delete was replicated");
    drop((x.uwsgi, y.uwsgi));
}

/// The client's side of a socket that corrupts the first encrypted
/// handshake record after the client's ChangeCipherSpec: its Finished.
#[derive(Debug)]
struct CorruptFinished {
    tcp: std::net::TcpStream,
    after_ccs: bool,
    corrupted: bool,
}

impl Read for CorruptFinished {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for CorruptFinished {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // OpenSSL writes whole records: walk their 5-byte headers.
        let mut out = buf.to_vec();
        let mut at = 0;
        while at + 5 <= out.len() {
            let (kind, len) = (out[at], u16::from_be_bytes([out[at + 3], out[at + 4]]) as usize);
            let end = (at + 5 + len).min(out.len());
            if kind == 20 {
                self.after_ccs = true;
            } else if kind == 22 && self.after_ccs && !self.corrupted && end > at + 5 {
                out[end - 1] ^= 0x55;
                self.corrupted = true;
            }
            at = end;
        }
        self.tcp.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// Offers the session in `session_pem` on `target` (TLS 1.2) and corrupts
/// the client's Finished: the handshake must fail, the session resume
/// nothing.
fn wrong_finished(session_pem: &Path, target: &str) {
    use openssl::ssl::{SslConnector, SslMethod, SslOptions, SslSession, SslVerifyMode, SslVersion};
    let der = Command::new("openssl")
        .args(["sess_id", "-outform", "DER", "-in"])
        .arg(session_pem)
        .output()
        .expect("openssl sess_id");
    let session = SslSession::from_der(&der.stdout).unwrap();
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
    b.set_options(SslOptions::NO_TICKET);
    b.set_cipher_list("ECDHE-RSA-AES128-GCM-SHA256").unwrap();
    let connector = b.build();
    let tcp = std::net::TcpStream::connect(target).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut ssl = connector
        .configure()
        .unwrap()
        .verify_hostname(false)
        .into_ssl("localhost")
        .unwrap();
    // SAFETY: a session decoded from its PEM; OpenSSL only reads it.
    unsafe { ssl.set_session(&session).unwrap() };
    let stream = CorruptFinished {
        tcp,
        after_ccs: false,
        corrupted: false,
    };
    let result = ssl.connect(stream);
    let mut s = match result {
        Err(openssl::ssl::HandshakeError::Failure(mid)) => {
            assert!(mid.get_ref().corrupted, "failed before the Finished: {}", mid.error());
            return;
        }
        Err(e) => panic!("probe on {target}: {e}"),
        Ok(s) => s,
    };
    assert!(
        s.get_ref().corrupted && s.ssl().session_reused(),
        "no resumption to corrupt"
    );
    // TLS 1.2: the client is done once it sent its Finished; the server's
    // verdict comes with the first read.
    let _ = s.write_all(REQUEST);
    let mut buf = [0u8; 256];
    let got = s.read(&mut buf).unwrap_or(0);
    assert!(
        !String::from_utf8_lossy(&buf[..got]).contains("hello"),
        "a wrong Finished got through on {target}"
    );
}
