//! Load for benchmarks: `openssl s_time`, a client resuming one session over
//! and over, medians.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use openssl::ssl::SslSession;

use crate::client::{Client, Proto};

/// `openssl s_time -reuse -www /` for `seconds` against 127.0.0.1:`port`.
/// Returns (connections per wall-clock second, share of them resumed).
/// s_time prints `r` for a resumed connection and `*` for a full one; its
/// own "real seconds" are whole seconds, hence the wall clock here.
pub fn s_time(port: u16, version: &str, seconds: u32) -> (f64, f64) {
    let started = Instant::now();
    let out = Command::new("openssl")
        .args(["s_time", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-reuse", "-www", "/", "-time", &seconds.to_string(), version])
        .output()
        .expect("openssl s_time");
    let wall = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let marks: String = text
        .lines()
        .filter(|l| !l.is_empty() && l.chars().all(|c| "r*".contains(c)))
        .collect();
    let total = marks.len().max(1);
    let resumed = marks.chars().filter(|&c| c == 'r').count();
    (total as f64 / wall, resumed as f64 / total as f64)
}

/// Resumes `session` (made first if `None`) over and over for `seconds`
/// through 127.0.0.1:`port`: handshake, `GET /`, the response read to the
/// end and checked, close_notify. Returns (resumed and answered
/// connections per second, failed handshakes). TCP_NODELAY, as curl,
/// browsers and s_time set it: without it, the request waits behind any
/// balancer's delayed ACK of the Finished (about 40 ms).
pub fn resuming_client(port: u16, seconds: u32, session: &mut Option<SslSession>) -> (f64, u32) {
    let client = Client::new(Proto::Tls12NoTickets);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    let (mut answered, mut failed) = (0u32, 0u32);
    while started.elapsed() < Duration::from_secs(seconds.into()) {
        let Ok(tcp) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            failed += 1;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let Ok(mut stream) = client.handshake_on(tcp, session.as_ref()) else {
            failed += 1;
            continue;
        };
        let resumed = stream.ssl().session_reused();
        let _ = stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
        // Up to the known body, then a clean close: OpenSSL drops a session
        // whose connection ends in an error (an EOF without close_notify).
        let mut response = Vec::new();
        let mut chunk = [0u8; 1024];
        while !response.ends_with(b"hello") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
            }
        }
        if resumed && response.ends_with(b"hello") {
            answered += 1;
        }
        let _ = stream.shutdown();
        if session.is_none() {
            *session = stream.ssl().session().map(|s| s.to_owned());
        }
    }
    (f64::from(answered) / started.elapsed().as_secs_f64(), failed)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
