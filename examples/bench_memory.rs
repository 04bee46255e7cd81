//! Resident memory per stored session: sslcache against stock uWSGI's cache
//! block, side by side (`make bench`).
//!
//! Method: two uWSGI masters with the seed's `cache = 20000` and
//! `cache-blocksize = 4096`, each receiving cache updates on a UDP port
//! (`cache-udp-server`): stock uWSGI (its own cache) and uWSGI with
//! sslcache (`ssl-sessions-use-cache = true`). The same N stock-format set
//! datagrams (32-byte ids, 150-byte sessions: the DER size of the TLS
//! sessions of a 2048-bit RSA certificate) go to both. Resident memory is
//! the `Rss` of the master's cache mappings in /proc/<pid>/smaps (mappings
//! of 1 MiB or more, anonymous), measured after startup and after the
//! sessions arrived (each store is written only by its master here).
//!
//! Then the master at the largest capacity (`at_capacity`): uWSGI with
//! sslcache, `cache = 10000000` (the bound) and `cache-blocksize = 4096`,
//! receiving the same kind of datagrams, 10,000 sessions. The master's
//! resident memory (`VmRSS` in /proc/<pid>/status, its store mapping
//! included) and the store mapping's `Rss` are read 4 s after startup
//! (empty store, the master's 3-second sweep has run), and 7 s after the
//! sessions arrived (two more sweeps). With `SSLCACHE_BEFORE_PLUGIN_DIR`
//! naming the directory of another build's `sslcache_plugin.so` (e.g. one
//! made before issue 18, whose sweep read every bucket), that build runs
//! beside this one, at the same time, and gets a row of its own.

use std::net::UdpSocket;
use std::time::Duration;

use sslcache_testkit::*;

const SESSIONS: u64 = 10_000;

/// Sum of Rss (bytes) of the process's anonymous mappings of at least 1 MiB.
fn big_anon_rss(pid: i32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut total = 0;
    let mut take = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let (a, b) = first.split_once('-').unwrap();
            let size = u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
            let path = line.split_whitespace().nth(5).unwrap_or("");
            take = size >= 1 << 20
                && (path.is_empty()
                    || path.starts_with("/dev/zero")
                    || path.starts_with("[anon")
                    || path.starts_with("/memfd:"));
        } else if let Some(kb) = line.strip_prefix("Rss:") {
            if take {
                total += kb.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap() * 1024;
            }
        }
    }
    total
}

/// `VmRSS` of a process, bytes.
fn vm_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap();
    kb * 1024
}

fn send_sessions(socket: &UdpSocket, ports: &[u16]) {
    let mut datagram = Vec::new();
    for i in 0..SESSIONS {
        let mut key = [0x5au8; 32];
        key[..8].copy_from_slice(&i.to_le_bytes());
        sslcache_core::replication::encode_set(&key, &[(i % 251) as u8; 150], 4_000_000_000, &mut datagram).unwrap();
        for port in ports {
            socket.send_to(&datagram, ("127.0.0.1", *port)).unwrap();
        }
        // Stock's receiver keeps the default socket buffer: pace.
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn at_capacity() {
    let dir = test_dir("bench-memory-capacity");
    let mut builds = vec![("this version".to_string(), plugin_dir())];
    if let Some(before) = std::env::var_os("SSLCACHE_BEFORE_PLUGIN_DIR") {
        builds.push(("before (SSLCACHE_BEFORE_PLUGIN_DIR)".to_string(), before.into()));
    }
    let mut nodes = Vec::new();
    for (i, (_, plugins)) in builds.iter().enumerate() {
        let (udp, stats) = (free_port(), free_port());
        let ini = seed_setup1(
            plugins,
            free_port(),
            stats,
            1,
            "cache = 10000000\ncache-blocksize = 4096\nssl-sessions-use-cache = true",
        ) + &format!("cache-udp-server = 127.0.0.1:{udp}\n");
        nodes.push((Uwsgi::start(&dir, &format!("node{i}"), &ini, &[stats]), udp, stats));
    }
    std::thread::sleep(Duration::from_secs(4));
    let empty: Vec<(u64, u64)> = nodes
        .iter()
        .map(|(n, _, _)| (vm_rss(n.pid), big_anon_rss(n.pid)))
        .collect();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ports: Vec<u16> = nodes.iter().map(|(_, udp, _)| *udp).collect();
    send_sessions(&socket, &ports);
    let filled = eventually(Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|(_, _, stats)| cache_stats(*stats, "default")["items"] == SESSIONS)
    });
    assert!(filled, "not all sessions arrived");
    std::thread::sleep(Duration::from_secs(7));
    let stored: Vec<(u64, u64)> = nodes
        .iter()
        .map(|(n, _, _)| (vm_rss(n.pid), big_anon_rss(n.pid)))
        .collect();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("\nThe master at capacity 10000000 (cache-blocksize 4096), MiB: VmRSS (store mapping's Rss)\n");
    println!("| build | empty, after startup | with {SESSIONS} sessions, after 2 more sweeps |");
    println!("|---|---|---|");
    for (i, (name, _)) in builds.iter().enumerate() {
        println!(
            "| {name} | {:.1} ({:.1}) | {:.1} ({:.1}) |",
            mib(empty[i].0),
            mib(empty[i].1),
            mib(stored[i].0),
            mib(stored[i].1)
        );
    }
}

fn main() {
    let dir = test_dir("bench-memory");
    let (stock_udp, ours_udp, stock_stats, ours_stats) = (free_port(), free_port(), free_port(), free_port());
    let stock = Uwsgi::start(
        &dir,
        "stock",
        &format!(
            "[uwsgi]\nmaster = true\ncache = 20000\ncache-blocksize = 4096\ncache-udp-server = 127.0.0.1:{stock_udp}\n\
             stats = 127.0.0.1:{stock_stats}\nhttp = 127.0.0.1:{}\nplugins = http\n",
            free_port()
        ),
        &[stock_stats],
    );
    let ours_ini = seed_setup1(&plugin_dir(), free_port(), ours_stats, 1, DEFAULT_CACHE)
        + &format!("cache-udp-server = 127.0.0.1:{ours_udp}\n");
    let ours = Uwsgi::start(&dir, "sslcache", &ours_ini, &[ours_stats]);
    std::thread::sleep(Duration::from_secs(2));
    let (stock_before, ours_before) = (big_anon_rss(stock.pid), big_anon_rss(ours.pid));

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    send_sessions(&socket, &[stock_udp, ours_udp]);
    let filled = eventually(Duration::from_secs(10), || {
        cache_stats(stock_stats, "default")["items"] == SESSIONS
            && cache_stats(ours_stats, "default")["items"] == SESSIONS
    });
    assert!(
        filled,
        "not all sessions arrived: stock {} sslcache {}",
        cache_stats(stock_stats, "default")["items"],
        cache_stats(ours_stats, "default")["items"]
    );
    let (stock_after, ours_after) = (big_anon_rss(stock.pid), big_anon_rss(ours.pid));

    println!(
        "Resident memory of the session cache, {SESSIONS} sessions of 150 bytes (cache = 20000, blocksize 4096)\n"
    );
    println!("| | after startup | with {SESSIONS} sessions | per session (total) | per session (growth) |");
    println!("|---|---|---|---|---|");
    for (name, before, after) in [
        ("stock uWSGI cache", stock_before, stock_after),
        ("sslcache", ours_before, ours_after),
    ] {
        println!(
            "| {name} | {:.1} MiB | {:.1} MiB | {} bytes | {} bytes |",
            before as f64 / (1 << 20) as f64,
            after as f64 / (1 << 20) as f64,
            after / SESSIONS,
            (after - before) / SESSIONS
        );
    }
    println!(
        "\nratio, total per session: stock / sslcache = {:.1}",
        stock_after as f64 / ours_after.max(1) as f64
    );
    drop((stock, ours));
    at_capacity();
}
