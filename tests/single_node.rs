//! One node: Debian's uWSGI (or `UWSGI=...`) with the plugin, real TLS
//! clients over loopback.

use sslcache_testkit::*;
use std::time::Duration;

const RECONNECTS: usize = 200;

fn assert_resumes(outcome: &Outcome, what: &str) {
    assert!(
        outcome.errors.is_empty(),
        "{what}: connection errors {:?}",
        outcome.errors
    );
    outcome.assert_resumed(what, "");
}

/// The Done-when of the single-node issue for one cache form: TLS 1.2
/// without tickets and TLS 1.3, 200 reconnects each, over 4 router
/// processes, with the stats server showing the hits and items.
fn resumes_across_router_processes(cache_lines: &str, cache_name: &str) {
    let _heavy = heavy();
    let dir = test_dir(&format!("resume-{cache_name}"));
    let (https, stats_port) = (free_port(), free_port());
    let node = Uwsgi::start(
        &dir,
        "node",
        &seed_setup1(&plugin_dir(), https, stats_port, 4, cache_lines),
        &[https, stats_port],
    );
    let routers = node.routers(4);
    assert_eq!(routers.len(), 4, "router processes: {routers:?}");

    let tls12 = Client::new(Proto::Tls12NoTickets).reconnects(https, RECONNECTS, &routers);
    assert_resumes(&tls12, "TLS 1.2 without tickets");
    assert!(
        tls12.owners.len() > 1,
        "all connections went to one router process: {:?}",
        tls12.owners
    );

    let tls13 = Client::new(Proto::Tls13).reconnects(https, RECONNECTS, &routers);
    assert_resumes(&tls13, "TLS 1.3");

    let cache = cache_stats(stats_port, cache_name);
    let hits = cache["hits"].as_u64().unwrap();
    let items = cache["items"].as_u64().unwrap();
    let resumed = (tls12.resumed + tls13.resumed) as u64;
    // TLS 1.3 may look a session up twice per resumption.
    assert!(
        hits >= resumed && hits <= 2 * resumed + 2,
        "hits {hits} for {resumed} resumptions: {cache}"
    );
    // One session per full TLS 1.2 handshake, two tickets per TLS 1.3 one.
    assert!(items >= 2, "items: {cache}");
    assert_eq!(cache["max_items"], 20000);
    assert_eq!(cache["blocksize"], 4096);
    println!(
        "{cache_name}: TLS1.2 {}/{} over {} processes, TLS1.3 {}/{}, stats {cache}",
        tls12.resumed,
        RECONNECTS - 1,
        tls12.owners.len(),
        tls13.resumed,
        RECONNECTS - 1
    );
}

#[test]
fn seed_setup1_default_cache_resumes() {
    resumes_across_router_processes(DEFAULT_CACHE, "default");
}

#[test]
fn seed_named_cache_resumes() {
    resumes_across_router_processes(NAMED_CACHE, "ssl");
}

/// Without the plugin, stock uWSGI resumes nothing for clients without
/// tickets: the baseline the plugin is measured against.
#[test]
fn stock_uwsgi_does_not_resume_without_tickets() {
    let dir = test_dir("stock");
    let (https, stats_port) = (free_port(), free_port());
    let (crt, key) = cert("localhost");
    let ini = format!(
        "[uwsgi]\nplugins = http\nmaster = true\ncache = 100\nhttps = 127.0.0.1:{https},{},{}\nhttp-processes = 2\n\
         http-to = 127.0.0.1:9\nstats = 127.0.0.1:{stats_port}\n",
        crt.display(),
        key.display()
    );
    let _node = Uwsgi::start(&dir, "stock", &ini, &[https]);
    let out = Client::new(Proto::Tls12NoTickets).reconnects(https, 20, &[]);
    assert_eq!(out.resumed, 0);
    let with_tickets = Client::new(Proto::Tls12Tickets).reconnects(https, 20, &[]);
    assert!(with_tickets.resumed >= 18, "stock ticket resumption: {with_tickets:?}");
}

/// Router processes SIGKILLed in the middle of a resumption load: no
/// deadlock (the load goes on), and resumption is complete afterwards.
#[test]
fn sigkill_of_router_processes_under_load() {
    let _heavy = heavy();
    let dir = test_dir("sigkill");
    let (https, stats_port) = (free_port(), free_port());
    let mut node = Uwsgi::start(
        &dir,
        "node",
        &seed_setup1(&plugin_dir(), https, stats_port, 4, DEFAULT_CACHE),
        &[https, stats_port],
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loaders: Vec<_> = (0..3)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let client = Client::new(if i % 2 == 0 {
                    Proto::Tls12NoTickets
                } else {
                    Proto::Tls13
                });
                let mut session = None;
                let mut done = 0;
                // Bounded in count and time.
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && done < 5000
                    && std::time::Instant::now() < deadline
                {
                    if let Ok(c) = client.connect(https, session.as_ref(), &[]) {
                        session = c.session.or(session);
                    }
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut killed = 0;
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(150 + 40 * round));
        let routers = node.children();
        if let Some(&victim) = routers.get(round as usize % routers.len().max(1)) {
            // SAFETY: signals a router process of the uWSGI this test started.
            unsafe { libc::kill(victim, libc::SIGKILL) };
            killed += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let done: Vec<usize> = loaders.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(killed, 6);
    assert!(done.iter().all(|&n| n > 10), "load stalled: {done:?}");

    // The master respawned the routers; nothing is wedged.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node.children().len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "routers not respawned:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    node.wait_ready(&[https]);
    let routers = node.children();
    let tls12 = Client::new(Proto::Tls12NoTickets).reconnects(https, RECONNECTS, &routers);
    assert_resumes(&tls12, "TLS 1.2 after SIGKILLs");
    let tls13 = Client::new(Proto::Tls13).reconnects(https, RECONNECTS, &routers);
    assert_resumes(&tls13, "TLS 1.3 after SIGKILLs");
    println!(
        "after {killed} SIGKILLs: TLS1.2 {}/{}, TLS1.3 {}/{}",
        tls12.resumed,
        RECONNECTS - 1,
        tls13.resumed,
        RECONNECTS - 1
    );
}

/// Clients that drop the connection without close_notify, and connections
/// the router closes on its idle timeout, keep their sessions.
#[test]
fn abrupt_and_idle_closes_keep_sessions() {
    let dir = test_dir("abrupt");
    let (https, stats_port) = (free_port(), free_port());
    let ini =
        seed_setup1(&plugin_dir(), https, stats_port, 1, DEFAULT_CACHE) + "http-timeout = 1\nssl-verbose = true\n";
    let node = Uwsgi::start(&dir, "node", &ini, &[https]);
    for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
        let client = Client::new(proto);
        let mut session = client.connect(https, None, &[]).unwrap().session;
        let mut resumed = 0;
        for i in 0..10 {
            let (c, s) = abrupt_connect(&client, https, session.as_ref(), i % 2 == 0);
            resumed += usize::from(c);
            session = s.or(session);
        }
        assert_eq!(
            resumed,
            10,
            "{proto:?}: resumed {resumed}/10 after abrupt/idle closes:\n{}",
            node.log()
        );
    }
}

/// Handshakes, then either drops the TCP connection at once or idles until
/// the router's timeout closes it. Returns (resumed, session).
fn abrupt_connect(
    client: &Client,
    port: u16,
    session: Option<&openssl::ssl::SslSession>,
    drop_at_once: bool,
) -> (bool, Option<openssl::ssl::SslSession>) {
    use std::io::Read;
    let (mut stream, _) = client.handshake(port, session).unwrap();
    let resumed = stream.ssl().session_reused();
    // TLS 1.3 tickets arrive after the handshake; an idle read also waits
    // for the router's timeout (1 s) to close the connection.
    let wait = Duration::from_millis(if drop_at_once { 300 } else { 3000 });
    stream.get_ref().set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    let _ = stream.read(&mut buf);
    // A copy: freeing a client connection that was not shut down marks its
    // own session object not resumable, on the client side.
    let session = stream
        .ssl()
        .session()
        .and_then(|s| openssl::ssl::SslSession::from_der(&s.to_der().unwrap()).ok());
    // No close_notify: the socket goes away under the TLS stream.
    drop(stream);
    (resumed, session)
}

/// `sni = host crt,key` keeps serving its own certificate, and sessions of
/// both the default and the SNI certificate resume.
#[test]
fn sni_contexts_keep_their_certificate_and_resume() {
    let dir = test_dir("sni");
    let (https, stats_port) = (free_port(), free_port());
    let (sni_crt, sni_key) = cert("sni.example");
    let ini = seed_setup1(&plugin_dir(), https, stats_port, 2, DEFAULT_CACHE)
        + &format!("sni = sni.example {},{}\n", sni_crt.display(), sni_key.display());
    let node = Uwsgi::start(&dir, "node", &ini, &[https]);
    assert!(node.log().contains("sni 1)"), "{}", node.log());
    for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
        let plain = Client::new(proto);
        let first = plain.connect(https, None, &[]).unwrap();
        assert_eq!(first.peer_cn, "localhost");
        let sni = Client::new(proto).with_sni("sni.example");
        let out = sni.reconnects(https, 50, &[]);
        assert_resumes(&out, &format!("SNI {proto:?}"));
        let last = sni.connect(https, None, &[]).unwrap();
        assert_eq!(last.peer_cn, "sni.example");
        let out = plain.reconnects(https, 50, &[]);
        assert_resumes(&out, &format!("default certificate {proto:?}"));
    }
}

/// Every session-capable context is hooked: core https-socket and the SSL
/// router, whatever the order of the lines. The SSL router frees its
/// connections without close_notify, which OpenSSL would punish by dropping
/// the session.
#[test]
fn https_socket_and_sslrouter_contexts_resume() {
    let dir = test_dir("contexts");
    let (router, socket, stats_port) = (free_port(), free_port(), free_port());
    let backend = http_backend(Duration::from_secs(60));
    let (crt, key) = cert("localhost");
    let ini = format!(
        "[uwsgi]\n\
         https-socket = 127.0.0.1:{socket},{crt},{key}\n\
         sslrouter = 127.0.0.1:{router},{crt},{key}\n\
         sslrouter-to = 127.0.0.1:{backend}\n\
         sslrouter-processes = 2\n\
         ssl-sessions-use-cache = true\n\
         plugin-dir = {plugins}\n\
         plugins = sslrouter,sslcache\n\
         cache = 1000\n\
         cache-blocksize = 4096\n\
         master = true\n\
         stats = 127.0.0.1:{stats_port}\n",
        crt = crt.display(),
        key = key.display(),
        plugins = plugin_dir().display()
    );
    let node = Uwsgi::start(&dir, "node", &ini, &[router, socket]);
    assert!(
        node.log()
            .contains("TLS contexts hooked: 2 (https 0, sslrouter 1, https/ssl-socket 1"),
        "{}",
        node.log()
    );
    for port in [router, socket] {
        for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
            let out = Client::new(proto).reconnects(port, 30, &[]);
            out.assert_resumed(format_args!("port {port} {proto:?}"), &node.log());
        }
    }
}

/// SNI contexts uWSGI creates at run time (`sni-dir`) are prepared after
/// their first connection: from then on their sessions resume.
#[test]
fn sni_dir_contexts_keep_their_first_session() {
    let dir = test_dir("sni-dir");
    let certs = dir.join("sni");
    std::fs::create_dir_all(&certs).unwrap();
    let (crt, key) = cert("dyn.example");
    std::fs::copy(&crt, certs.join("dyn.example.crt")).unwrap();
    std::fs::copy(&key, certs.join("dyn.example.key")).unwrap();
    let (https, stats_port) = (free_port(), free_port());
    let ini =
        seed_setup1(&plugin_dir(), https, stats_port, 1, DEFAULT_CACHE) + &format!("sni-dir = {}\n", certs.display());
    let _node = Uwsgi::start(&dir, "node", &ini, &[https]);
    for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
        let client = Client::new(proto).with_sni("dyn.example");
        let first = client.connect(https, None, &[]).unwrap();
        assert_eq!(first.peer_cn, "dyn.example");
        // uWSGI made the context during that very handshake; it was set up
        // before its ServerHello, so its first session was kept.
        let again = client.connect(https, first.session.as_ref(), &[]).unwrap();
        assert!(
            again.resumed,
            "{proto:?}: the first session of an sni-dir host was not kept"
        );
        let out = client.reconnects(https, 30, &[]);
        out.assert_resumed(format_args!("{proto:?}"), "");
    }
}

/// `gnutls-cli --resume` reconnects the instant its first TLS 1.2
/// handshake ends; with 4 router processes the second connection often
/// lands on another one. The session must already be stored.
#[test]
fn immediate_reconnects_resume() {
    if std::process::Command::new("gnutls-cli")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!require_all(), "gnutls-cli is missing (apt-get install gnutls-bin)");
        println!("skipped: gnutls-cli is missing");
        return;
    }
    let _heavy = heavy();
    let dir = test_dir("gnutls");
    let (https, stats_port) = (free_port(), free_port());
    let _node = Uwsgi::start(
        &dir,
        "node",
        &seed_setup1(&plugin_dir(), https, stats_port, 4, DEFAULT_CACHE),
        &[https, stats_port],
    );
    let runs = 300;
    let mut resumed = 0;
    let started = std::time::Instant::now();
    for _ in 0..runs {
        let out = std::process::Command::new("timeout")
            .args(["10", "gnutls-cli", "--resume", "--insecure", "--priority"])
            .arg("NORMAL:-VERS-ALL:+VERS-TLS1.2:%NO_TICKETS_TLS12")
            .args(["-p", &https.to_string(), "127.0.0.1"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("gnutls-cli");
        let text = String::from_utf8_lossy(&out.stdout);
        resumed += usize::from(text.contains("This is a resumed session"));
        if started.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    let early = metric(stats_port, "sslcache.default.stored_early");
    println!("gnutls-cli --resume, TLS 1.2 without tickets, 4 router processes: {resumed}/{runs} resumed ({early} stored early)");
    assert!(resumed >= runs - 1, "{resumed}/{runs} resumed");
}
