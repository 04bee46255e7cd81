//! What the udprepeater costs (`make bench`, or `cargo run --release
//! --example bench_repeater`): the added latency of its hop beside a direct
//! mesh, and how many datagrams a second one repeater process forwards.
//!
//! Method. A real repeater (uWSGI with the plugin, its gateway process) on
//! 127.0.0.10; SUBSCRIBERS subscriber sockets (uWSGI subscription packets,
//! as `subscribe2` sends) on 127.0.0.20-29, each read by a thread of this
//! program; one sender on 127.0.0.2 (a node's sending IP). Datagrams are
//! sealed-size (SIZE bytes, modifier1 111) and carry the send time on the
//! system-wide monotonic clock.
//!
//! Latency: the sender sends RATE datagrams a second for SECONDS, through
//! the repeater (one datagram to it, which sends SUBSCRIBERS copies), then
//! the same as a node of a direct mesh does (one datagram to each of the
//! SUBSCRIBERS peers); the two alternate, ROUNDS times (ABAB). A
//! datagram's latency is the time from its send to its arrival at the last
//! subscriber; p50/p99/max over all, and the difference repeater − mesh.
//! What a node does with a datagram is the same either way, so this is
//! the repeater's share of "stored on A to present on B".
//!
//! Throughput: the sender sends at rising rates for THROUGHPUT_SECONDS
//! each; forwarded = copies received by the subscribers per second (the
//! repeater's own `forwarded` counter agrees); the highest rate at which
//! nothing was lost is where one repeater stops.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sslcache_testkit::*;

const SUBSCRIBERS: usize = 10;
const RATE: u64 = 10_000;
const SECONDS: u64 = 3;
const ROUNDS: usize = 2;
const SIZE: usize = 260;
const THROUGHPUT_SECONDS: u64 = 2;
const CLUSTER: &str = "bench";

/// An 8 MB socket buffer (`option`: SO_RCVBUF or SO_SNDBUF).
fn buffer(socket: &UdpSocket, option: libc::c_int) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 8 << 20;
    // SAFETY: setsockopt on an open socket with a pointer to an int and its size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn now_ns() -> u64 {
    let t = sslcache_core::os::monotonic();
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Per datagram sequence number: copies seen and the latest arrival.
struct Arrivals {
    copies: Vec<AtomicU64>,
    latest: Vec<AtomicU64>,
    received: AtomicU64,
}

fn receivers(
    sockets: Vec<UdpSocket>,
    arrivals: Arc<Mutex<Arc<Arrivals>>>,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    sockets
        .into_iter()
        .map(|s| {
            let (arrivals, stop) = (Arc::clone(&arrivals), Arc::clone(&stop));
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                buffer(&s, libc::SO_RCVBUF);
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = s.recv(&mut buf) else { continue };
                    let at = now_ns();
                    if n < 20 {
                        continue;
                    }
                    let seq = u64::from_le_bytes(buf[4..12].try_into().unwrap()) as usize;
                    let a = arrivals.lock().unwrap().clone();
                    a.received.fetch_add(1, Ordering::Relaxed);
                    if let (Some(c), Some(l)) = (a.copies.get(seq), a.latest.get(seq)) {
                        c.fetch_add(1, Ordering::Relaxed);
                        l.fetch_max(at, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect()
}

fn fresh(n: usize) -> Arc<Arrivals> {
    Arc::new(Arrivals {
        copies: (0..n).map(|_| AtomicU64::new(0)).collect(),
        latest: (0..n).map(|_| AtomicU64::new(0)).collect(),
        received: AtomicU64::new(0),
    })
}

/// Sends `n` datagrams at `rate` a second to each of `targets`; their
/// send times.
fn send(sender: &UdpSocket, targets: &[SocketAddr], n: usize, rate: u64) -> Vec<u64> {
    let mut datagram = vec![0u8; SIZE];
    datagram[0] = 111;
    datagram[1..3].copy_from_slice(&((SIZE - 4) as u16).to_le_bytes());
    datagram[3] = 10;
    let start = Instant::now();
    let mut sent = Vec::with_capacity(n);
    for seq in 0..n {
        let due = start + Duration::from_nanos(seq as u64 * 1_000_000_000 / rate);
        while Instant::now() < due {
            if due - Instant::now() > Duration::from_micros(200) {
                std::thread::sleep(Duration::from_micros(100));
            } else {
                std::hint::spin_loop();
            }
        }
        datagram[4..12].copy_from_slice(&(seq as u64).to_le_bytes());
        let at = now_ns();
        for t in targets {
            let _ = sender.send_to(&datagram, t);
        }
        sent.push(at);
    }
    sent
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let dir = test_dir("bench-repeater");
    let ip = [127, 0, 0, 10];
    let (data, subscription, stats) = (
        SocketAddr::from((ip, free_port())),
        SocketAddr::from((ip, free_port())),
        SocketAddr::from((ip, free_port())),
    );
    let ini = format!(
        "[uwsgi]\nplugin-dir = {}\nplugins = sslcache\nmaster = true\nudprepeater = {data}\n\
         udprepeater-subscription-server = {subscription}\nudprepeater-stats = {stats}\n\
         udprepeater-rate = 100000000\n",
        plugin_dir().display()
    );
    let mut repeater = Uwsgi::spawn(&dir, "repeater", &ini);
    repeater.wait_ready_on(&[stats]);
    let sockets: Vec<UdpSocket> = (0..SUBSCRIBERS)
        .map(|i| UdpSocket::bind(format!("127.0.0.{}:0", 20 + i)).unwrap())
        .collect();
    let subscribers: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
    let announcer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut members = subscribers.clone();
    let sender = UdpSocket::bind("127.0.0.2:0").unwrap();
    buffer(&sender, libc::SO_SNDBUF);
    // The sender's IP is a member too (its datagrams are a member's).
    members.push(SocketAddr::from(([127, 0, 0, 2], 9)));
    let stop = Arc::new(AtomicBool::new(false));
    // Announced every second, as uWSGI's subscribe-freq does (a member
    // silent for subscription-tolerance is dropped).
    let announcing = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for m in &members {
                    let packet =
                        sslcache_core::repeater::subscription::build(false, CLUSTER, &m.to_string(), None, None);
                    let _ = announcer.send_to(&packet, subscription);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let arrivals = Arc::new(Mutex::new(fresh(0)));
    let threads = receivers(sockets, Arc::clone(&arrivals), Arc::clone(&stop));

    println!(
        "udprepeater latency: {SUBSCRIBERS} subscribers, {RATE} datagrams/s of {SIZE} bytes for {SECONDS} s, \
         through the repeater vs. a direct mesh, {ROUNDS} rounds (ABAB); latency to the last subscriber, µs"
    );
    let n = (RATE * SECONDS) as usize;
    let mut summary = Vec::new();
    for round in 1..=ROUNDS {
        for (name, targets) in [("repeater", vec![data]), ("direct mesh", subscribers.clone())] {
            let a = fresh(n);
            *arrivals.lock().unwrap() = Arc::clone(&a);
            let sent = send(&sender, &targets, n, RATE);
            std::thread::sleep(Duration::from_millis(300));
            let mut lat: Vec<u64> = (0..n)
                .filter(|&i| a.copies[i].load(Ordering::Relaxed) as usize == SUBSCRIBERS)
                .map(|i| a.latest[i].load(Ordering::Relaxed).saturating_sub(sent[i]) / 1000)
                .collect();
            let complete = lat.len();
            lat.sort_unstable();
            let (p50, p99, max) = (
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                lat.last().copied().unwrap_or(0),
            );
            println!(
                "  round {round} {name:<12} p50 {p50:>6} p99 {p99:>6} max {max:>7}; {complete}/{n} reached all \
                 {SUBSCRIBERS}"
            );
            summary.push((name, p50, p99));
        }
    }
    for round in 0..ROUNDS {
        let (r, m) = (summary[2 * round], summary[2 * round + 1]);
        println!(
            "  round {}: the repeater adds p50 {:+} µs, p99 {:+} µs",
            round + 1,
            r.1 as i64 - m.1 as i64,
            r.2 as i64 - m.2 as i64
        );
    }

    println!(
        "udprepeater throughput: one sender, {SUBSCRIBERS} subscribers, {THROUGHPUT_SECONDS} s per rate; \
         forwarded = copies received a second"
    );
    let mut best = 0;
    for rate in [5_000u64, 10_000, 15_000, 20_000, 30_000, 40_000, 60_000] {
        let n = (rate * THROUGHPUT_SECONDS) as usize;
        let a = fresh(n);
        *arrivals.lock().unwrap() = Arc::clone(&a);
        let start = Instant::now();
        send(&sender, &[data], n, rate);
        let took = start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(500));
        let received = a.received.load(Ordering::Relaxed);
        let expected = n as u64 * SUBSCRIBERS as u64;
        let lost = expected.saturating_sub(received);
        println!(
            "  in {:>6.0}/s: forwarded {:>7.0}/s, lost {lost} of {expected} ({:.2}%)",
            n as f64 / took,
            received as f64 / took,
            lost as f64 * 100.0 / expected as f64
        );
        if lost == 0 {
            best = best.max((received as f64 / took) as u64);
        } else if lost * 100 > expected {
            break;
        }
    }
    println!("  without loss at most: {best} forwarded datagrams/s");
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let _ = announcing.join();
    repeater.stop();
}
