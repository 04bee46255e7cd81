//! Loopback ports: claiming a free one, waiting until one accepts, and
//! finding which process holds an accepted connection.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A loopback port free for both TCP and UDP right now, and reserved for
/// this process until it exits: test processes run side by side (`make
/// test` runs every test in a process of its own, several at once), so a
/// port is claimed with a lock file in a directory of the machine's (flock,
/// released by the kernel when the process ends, even by a crash) before it
/// is tried. Below Linux's ephemeral range (32768-60999), where a client's
/// connection could take it between this check and the bind of the process
/// under test.
pub fn free_port() -> u16 {
    const FIRST: u16 = 10_000;
    const LAST: u16 = 32_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    static CLAIMED: Mutex<Vec<fs::File>> = Mutex::new(Vec::new());
    // Machine-wide: suites of two checkouts may run at once.
    let claims = std::env::temp_dir().join("sslcache-test-ports");
    fs::create_dir_all(&claims).unwrap();
    let start = FIRST + (std::process::id() % 2_000) as u16 * 10;
    let _ = NEXT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in FIRST..=LAST {
        let mut p = NEXT.fetch_add(1, Ordering::Relaxed);
        if p > LAST {
            NEXT.store(FIRST, Ordering::Relaxed);
            p = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(claim) = fs::File::create(claims.join(p.to_string())) else {
            continue;
        };
        // SAFETY: flock on a descriptor this function owns (close-on-exec:
        // the processes a test starts do not inherit the claim).
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&claim), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        let tcp = TcpListener::bind(("127.0.0.1", p));
        let udp = UdpSocket::bind(("127.0.0.1", p));
        if tcp.is_ok() && udp.is_ok() {
            CLAIMED.lock().unwrap_or_else(|e| e.into_inner()).push(claim);
            return p;
        }
    }
    panic!("no free port left between {FIRST} and {LAST}");
}

/// 127.0.0.1:`port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until 127.0.0.1:`port` accepts TCP connections.
pub fn wait_port(port: u16, what: &str) {
    wait_addr(loopback(port), what);
}

/// Waits until `addr` accepts TCP connections (20 s at most).
pub fn wait_addr(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{what} not listening on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The addresses of a cluster's nodes on loopback: `port` on 127.0.0.1 to
/// 127.0.0.`n`.
pub fn node_addrs(n: usize, port: u16) -> Vec<SocketAddr> {
    (1..=n)
        .map(|i| SocketAddr::from(([127, 0, 0, i as u8], port)))
        .collect()
}

/// [`node_addrs`], once each of them accepts TCP connections.
pub fn wait_nodes(n: usize, port: u16) -> Vec<SocketAddr> {
    let addrs = node_addrs(n, port);
    for &addr in &addrs {
        wait_addr(addr, "node");
    }
    addrs
}

/// Which of `pids` holds the accepted socket of the connection from
/// 127.0.0.1:`client_port` to 127.0.0.1:`server_port`.
pub fn socket_owner(server_port: u16, client_port: u16, pids: &[i32]) -> Option<i32> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{server_port:04X}");
    let remote = format!("0100007F:{client_port:04X}");
    let inode = table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() > 9 && cols[1] == local && cols[2] == remote).then(|| cols[9].to_string())
    })?;
    let needle = format!("socket:[{inode}]");
    pids.iter().copied().find(|pid| {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| {
                dir.flatten().any(|fd| {
                    fs::read_link(fd.path())
                        .map(|l| l.to_string_lossy() == needle)
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    })
}
