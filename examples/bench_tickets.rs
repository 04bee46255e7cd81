//! What `ssl-sessions-tls13-tickets` costs and saves (`make bench`).
//!
//! Method: one node of the seed's Setup 1 (2 router processes) per ticket
//! count, replicating to one peer address (nobody listens: only the
//! datagrams sent are counted). A TLS 1.3 client (OpenSSL) that keeps every
//! ticket it receives and uses each ticket once, as RFC 8446 (C.4) asks of
//! clients and browsers do, makes ROUNDS full handshakes; after each it
//! opens two connections at once, each with a ticket of its own if it has
//! one left, else with none (a full handshake). Reported: tickets received
//! per full handshake, how many of the parallel connections resumed, the
//! connections made (full / resumed), and the sessions stored (stats
//! `items`) and datagrams sent for them all.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use openssl::ssl::{SslConnector, SslMethod, SslSession, SslSessionCacheMode, SslVerifyMode, SslVersion};
use sslcache_testkit::*;

const ROUNDS: usize = 50;

fn connector(tickets: Arc<Mutex<Vec<SslSession>>>) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    b.set_new_session_callback(move |_, session| tickets.lock().unwrap().push(session));
    b.build()
}

/// One connection with a request answered (so that tickets arrive);
/// returns whether it resumed. The stream is returned open.
fn open(
    c: &SslConnector,
    port: u16,
    ticket: Option<&SslSession>,
) -> (bool, openssl::ssl::SslStream<std::net::TcpStream>) {
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut ssl = c
        .configure()
        .unwrap()
        .verify_hostname(false)
        .into_ssl("localhost")
        .unwrap();
    if let Some(t) = ticket {
        // SAFETY: the ticket came from this connector's context.
        unsafe { ssl.set_session(t).unwrap() };
    }
    let mut s = ssl.connect(tcp).map_err(|e| e.to_string()).unwrap();
    let resumed = s.ssl().session_reused();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    let _ = s.read(&mut buf);
    (resumed, s)
}

fn main() {
    let dir = test_dir("bench-tickets");
    println!("TLS 1.3 tickets per full handshake, {ROUNDS} full handshakes, a client using each ticket once\n");
    println!("| tickets | received per full handshake | parallel connections resumed | connections full / resumed | sessions stored | datagrams sent |");
    println!("|---|---|---|---|---|---|");
    for count in [1u8, 2] {
        let (https, stats_port, peer) = (free_port(), free_port(), free_port());
        let lines =
            format!("{DEFAULT_CACHE}\nssl-sessions-tls13-tickets = {count}\ncache-udp-node = 127.0.0.1:{peer}\n");
        let _node = Uwsgi::start(
            &dir,
            &format!("tickets{count}"),
            &seed_setup1(&plugin_dir(), https, stats_port, 2, &lines),
            &[https, stats_port],
        );
        let tickets = Arc::new(Mutex::new(Vec::new()));
        let c = connector(tickets.clone());
        let (mut received, mut pair_resumed) = (0, 0);
        for _ in 0..ROUNDS {
            tickets.lock().unwrap().clear();
            let (_, mut first) = open(&c, https, None);
            // A client that drops a connection without close_notify makes
            // OpenSSL forget its last ticket: close it properly.
            let _ = first.shutdown();
            let fresh: Vec<SslSession> = std::mem::take(&mut *tickets.lock().unwrap());
            received += fresh.len();
            // Two connections at once, a ticket each while they last.
            let (a, mut keep_a) = open(&c, https, fresh.first());
            let (b, mut keep_b) = open(&c, https, fresh.get(1));
            pair_resumed += usize::from(a) + usize::from(b);
            let _ = (keep_a.shutdown(), keep_b.shutdown());
        }
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let stats = stats(stats_port);
        let items = cache_stats(stats_port, "default")["items"].as_u64().unwrap_or(0);
        let sent = stats["metrics"]["sslcache.default.sent"]["value"].as_u64().unwrap_or(0);
        let full = ROUNDS + (2 * ROUNDS - pair_resumed);
        println!(
            "| {count} | {:.2} | {pair_resumed}/{} | {full} / {pair_resumed} | {items} | {sent} |",
            received as f64 / ROUNDS as f64,
            2 * ROUNDS
        );
    }
}
