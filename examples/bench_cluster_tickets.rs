//! Cluster tickets (`ssl-sessions-tickets = cluster`) side by side with
//! stock uWSGI's own tickets and with sslcache's store mode, in one run
//! (`make bench`; `BENCH_PART=rate` or `BENCH_PART=cost` runs one part).
//!
//! Part 1, resumed connections per second on one node. Method: two uWSGI
//! nodes with the seed's Setup 1 on 127.0.0.1 (HTTPS router,
//! `http-processes = 4`): stock uWSGI (it resumes with the ticket keys
//! OpenSSL made for its context), and sslcache with a cluster key and
//! `ssl-sessions-tickets = cluster`, once as it comes and once with
//! `ssl-sessions-quickack = false` (the ACK sslcache pushes after a resumed
//! TLS 1.2 handshake costs a system call and a segment). The client is
//! `openssl s_time -reuse -www /` (it resumes by ticket) for 4 s against one
//! node then the next, alternating, 7 rounds per TLS version; each run is checked to have
//! resumed all but its first connection. Reported: the median of each
//! node's rates (connections / wall-clock seconds) and the median of the
//! per-round ratios; and the CPU time (user + system, /proc/PID/stat) its
//! router processes spent per connection, which other load on the machine
//! disturbs less.
//!
//! Part 2, what a resumed client costs a 3-node cluster. Method: seed Setup
//! 2's three nodes sealed with one key behind HAProxy (round robin), once in
//! store mode (tickets off: TLS 1.2 clients resume by session id, TLS 1.3
//! with stateful tickets) and once with cluster tickets (TLS 1.2 clients
//! that send tickets, TLS 1.3). 1,000 clients per protocol, each a full
//! handshake then a resumption (on the next node). Read from every node
//! before and after, once the metrics are steady: sessions stored
//! (`items`), their bytes (`bytes`), the kB allocated to the nodes' store
//! memory files (shared memory actually used), replication datagrams and
//! bytes sent (`sent`, `sent_bytes`). Each divided by the clients resumed.
//!
//! Part 3 (`BENCH_PART=cpu`), the server's CPU per resumption in process,
//! which a loaded machine disturbs far less than part 1: two OpenSSL server
//! contexts in this process, one with OpenSSL's own ticket keys (what stock
//! uWSGI runs), one set up by sslcache's `tls::hook_listener` with cluster
//! tickets (its ClientHello, info, ticket key, generate and decrypt
//! callbacks all run); an OpenSSL client resumes one ticket over an
//! in-memory pipe, 20,000 times per round, only the server's handshake
//! calls timed, in this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`: time
//! other processes take from the cores is not counted); 9 alternating
//! rounds, medians of per-round times and ratios.

use std::path::Path;
use std::time::Duration;

use sslcache_testkit::*;

const ROUNDS: usize = 7;
const SECONDS: u32 = 4;
const CLIENTS: usize = 1000;
const KEY: &str = "3333333333333333333333333333333333333333333333333333333333333333";

fn main() {
    let part = std::env::var("BENCH_PART").unwrap_or_default();
    if part.is_empty() || part == "rate" {
        rate();
    }
    if part.is_empty() || part == "cost" {
        cost();
    }
    if part.is_empty() || part == "cpu" {
        cpu();
    }
}

/// CPU seconds (user + system) the router processes of `node` used so far.
fn routers_cpu(node: &Uwsgi) -> f64 {
    // SAFETY: sysconf has no side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    node.children()
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let rest = stat.rsplit_once(") ")?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / hz)
        })
        .sum()
}

/// `s_time` against `port`: (connections per wall second, share resumed,
/// router CPU µs per connection).
fn measured(node: &Uwsgi, port: u16, version: &str) -> (f64, f64, f64) {
    let before = routers_cpu(node);
    let (rate, resumed) = s_time(port, version, SECONDS);
    let cpu = routers_cpu(node) - before;
    (rate, resumed, cpu * 1e6 / (rate * f64::from(SECONDS)).max(1.0))
}

fn rate() {
    let dir = test_dir("bench-cluster-tickets-rate");
    let keys = key_file(&dir, "cluster.key", &[KEY]);
    let cluster_node = |name: &str, extra: &str| {
        let (https, stats_port) = (free_port(), free_port());
        let ini = seed_setup1(&plugin_dir(), https, stats_port, 4, DEFAULT_CACHE)
            + &format!(
                "cache-udp-key = {}\nssl-sessions-tickets = cluster\n{extra}",
                keys.display()
            );
        (Uwsgi::start(&dir, name, &ini, &[https]), https, stats_port)
    };
    let (node, https, stats_port) = cluster_node("cluster-tickets", "");
    let (no_ack, no_ack_https, _) = cluster_node("cluster-tickets-no-quickack", "ssl-sessions-quickack = false\n");
    let (stock_https, stock_stats) = (free_port(), free_port());
    let stock_ini =
        seed_setup1(&plugin_dir(), stock_https, stock_stats, 4, "").replace("plugins = sslcache\n", "plugins = http\n");
    let stock = Uwsgi::start(&dir, "stock", &stock_ini, &[stock_https]);

    println!(
        "Resumed TLS handshakes per second by ticket, one node, {ROUNDS} alternating rounds of {SECONDS} s; router \
         CPU per connection\n"
    );
    println!(
        "| TLS | sslcache node | stock uWSGI (its own tickets) | sslcache cluster tickets | ratio (median of rounds) | \
         router CPU, stock / sslcache | CPU ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    for version in ["-tls1_2", "-tls1_3"] {
        // Per variant: rates, CPU per connection, and their per-round ratios.
        let mut rows: [[Vec<f64>; 6]; 2] = Default::default();
        for _ in 0..ROUNDS {
            let (s_rate, s_resumed, s_cpu) = measured(&stock, stock_https, version);
            assert!(s_resumed > 0.99, "stock not resumed: {s_resumed}");
            for (row, (n, port)) in rows.iter_mut().zip([(&node, https), (&no_ack, no_ack_https)]) {
                let (o_rate, o_resumed, o_cpu) = measured(n, port, version);
                assert!(o_resumed > 0.99, "cluster tickets not resumed: {o_resumed}");
                for (v, x) in row
                    .iter_mut()
                    .zip([s_rate, o_rate, o_rate / s_rate, s_cpu, o_cpu, s_cpu / o_cpu])
                {
                    v.push(x);
                }
            }
        }
        for (row, what) in rows.into_iter().zip(["default", "`ssl-sessions-quickack = false`"]) {
            let [a, b, c, d, e, f] = row.map(median);
            println!(
                "| {} | {what} | {a:.0}/s | {b:.0}/s | {c:.3} | {d:.0} µs / {e:.0} µs | {f:.3} |",
                &version[4..].replace('_', ".")
            );
        }
    }
    println!(
        "\nstore of the cluster-tickets node: {} sessions (s_time resumes by ticket)\n",
        metric(stats_port, "sslcache.default.items")
    );
}

/// The kB allocated to the memory files (memfd: the store) `pid` holds.
fn memory_files_kb(pid: i32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let is_memfd = std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:"));
        if let (true, Ok(meta)) = (is_memfd, std::fs::metadata(entry.path())) {
            total += meta.blocks() * 512 / 1024;
        }
    }
    total
}

struct Cluster {
    nodes: Vec<Uwsgi>,
    stats: Vec<u16>,
    _proxy: Process,
    lb: u16,
}

impl Cluster {
    fn start(dir: &Path, tickets: bool) -> Cluster {
        let keys = key_file(dir, "cluster.key", &[KEY]);
        let (https, udp) = (free_port(), free_port());
        let stats: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes: Vec<Uwsgi> = (1..=3)
            .map(|i| {
                let lines = setup2_replication(i, 3, udp)
                    + &format!("cache-udp-key = {}\n", keys.display())
                    + if tickets {
                        "ssl-sessions-tickets = cluster\n"
                    } else {
                        ""
                    };
                let mut n = Uwsgi::spawn(
                    dir,
                    &format!("node{i}"),
                    &seed_setup2_node(&plugin_dir(), i, https, stats[i - 1], &lines),
                );
                n.wait_ready(&[stats[i - 1]]);
                n
            })
            .collect();
        let backends = wait_nodes(3, https);
        let lb = free_port();
        let proxy = haproxy(dir, lb, &backends);
        Cluster {
            nodes,
            stats,
            _proxy: proxy,
            lb,
        }
    }

    /// (items, bytes, store kB, datagrams, bytes sent) over the nodes,
    /// once two reads 1.2 s apart agree (metrics are copied once a second).
    fn reading(&self) -> [u64; 5] {
        let read = || {
            let sum = |name: &str| -> u64 {
                self.stats
                    .iter()
                    .map(|&p| metric(p, &format!("sslcache.default.{name}")))
                    .sum()
            };
            [
                sum("items"),
                sum("bytes"),
                self.nodes.iter().map(|n| memory_files_kb(n.pid)).sum(),
                sum("sent"),
                sum("sent_bytes"),
            ]
        };
        let mut last = read();
        for _ in 0..15 {
            std::thread::sleep(Duration::from_millis(1200));
            let now = read();
            if now == last {
                return now;
            }
            last = now;
        }
        last
    }
}

fn cost() {
    println!(
        "What a resumed client costs a 3-node sealed cluster behind HAProxy: {CLIENTS} clients per protocol, \
         each a full handshake then a resumption on the next node (sums over the nodes, per resumed client)\n"
    );
    println!(
        "| clients | mode | resumed | sessions stored | store bytes | store memory (kB allocated) | datagrams sent | \
         bytes sent |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for tickets in [false, true] {
        let dir = test_dir(if tickets {
            "bench-cluster-tickets-cost"
        } else {
            "bench-store-cost"
        });
        let cluster = Cluster::start(&dir, tickets);
        let protos = if tickets {
            [Proto::Tls12Tickets, Proto::Tls13]
        } else {
            [Proto::Tls12NoTickets, Proto::Tls13]
        };
        for proto in protos {
            let before = cluster.reading();
            let mut resumed = 0u64;
            for _ in 0..CLIENTS {
                let client = Client::new(proto);
                let Ok(first) = client.connect(cluster.lb, None, &[]) else {
                    continue;
                };
                if let Ok(again) = client.connect(cluster.lb, first.session.as_ref(), &[]) {
                    resumed += again.resumed as u64;
                }
            }
            let after = cluster.reading();
            let per = |i: usize| after[i].saturating_sub(before[i]) as f64 / resumed.max(1) as f64;
            println!(
                "| {} | {} | {resumed}/{CLIENTS} | {:.2} | {:.0} | {:.2} | {:.2} | {:.0} |",
                match proto {
                    Proto::Tls12NoTickets => "TLS 1.2, session id",
                    Proto::Tls12Tickets => "TLS 1.2, tickets",
                    Proto::Tls13 => "TLS 1.3",
                },
                if tickets { "cluster tickets" } else { "store" },
                per(0),
                per(1),
                per(2),
                per(3),
                per(4)
            );
        }
        drop(cluster);
    }
}

mod in_process {
    use std::cell::RefCell;
    use std::collections::{HashSet, VecDeque};
    use std::io::{Read, Write};
    use std::rc::Rc;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use foreign_types::ForeignType;
    use openssl::ssl::{
        ErrorCode, Ssl, SslConnector, SslContext, SslFiletype, SslMethod, SslOptions, SslSession, SslStream,
        SslVerifyMode, SslVersion,
    };
    use sslcache::tls::fingerprint::{self, Verify};
    use sslcache::tls::{self, Listener, SessionCache, SessionEvents, SniResolver, SniTarget};
    use sslcache_core::replication::keys::Key;
    use sslcache_core::shm::Shared;
    use sslcache_core::store::{Limits, Store};
    use sslcache_core::tickets::{Schedule, TicketKeys};

    /// One direction of an in-memory connection each way.
    #[derive(Clone)]
    struct Pipe {
        inbox: Rc<RefCell<VecDeque<u8>>>,
        outbox: Rc<RefCell<VecDeque<u8>>>,
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let mut q = self.inbox.borrow_mut();
            if q.is_empty() {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(q.len());
            for (b, v) in buf.iter_mut().zip(q.drain(..n)) {
                *b = v;
            }
            Ok(n)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.outbox.borrow_mut().extend(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn pipes() -> (Pipe, Pipe) {
        let (a, b) = (
            Rc::new(RefCell::new(VecDeque::new())),
            Rc::new(RefCell::new(VecDeque::new())),
        );
        (
            Pipe {
                inbox: a.clone(),
                outbox: b.clone(),
            },
            Pipe { inbox: b, outbox: a },
        )
    }

    /// CPU time of this thread.
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    struct NoSni;
    impl SniResolver for NoSni {
        fn resolve(&self, _name: &[u8]) -> SniTarget {
            SniTarget::Listener
        }
        fn single_threaded(&self) -> bool {
            true
        }
    }
    struct NoEvents;
    impl SessionEvents for NoEvents {}

    pub struct Bench {
        stock: SslContext,
        cluster: SslContext,
    }

    fn server_context(crt: &std::path::Path, key: &std::path::Path) -> SslContext {
        let mut b = SslContext::builder(SslMethod::tls_server()).unwrap();
        b.set_certificate_chain_file(crt).unwrap();
        b.set_private_key_file(key, SslFiletype::PEM).unwrap();
        b.build()
    }

    impl Bench {
        pub fn new(crt: &std::path::Path, key: &std::path::Path) -> Bench {
            let stock = server_context(crt, key);
            let cluster = server_context(crt, key);
            let ctx = cluster.as_ptr();
            // SAFETY: a context of this process, not yet used by any connection.
            let (digest, verify) = unsafe { (fingerprint::context_digest(ctx), Verify::of_ctx(ctx)) };
            let sid = fingerprint::fingerprint(b"foobar", &digest, verify);
            // SAFETY: `ctx` is the context `cluster` owns, alive for this
            // call; no connection uses it yet and this thread alone holds it,
            // so hook_listener may set its callbacks and options.
            unsafe { tls::hook_listener(ctx, &sid, 300, 2, true) }.unwrap();
            let limits = Limits {
                capacity: 1000,
                keysize: 64,
                blocksize: 4096,
            };
            let schedule = Schedule {
                interval: 3600,
                lifetime: 300,
                skew: 30,
            };
            tls::install(SessionCache {
                store: Arc::new(Store::create(limits).unwrap()),
                timeout: 300,
                events: Box::new(NoEvents),
                verbose: false,
                quickack: false,
                fresh_wait_us: sslcache_core::fresh::WAIT_MAX_US,
                listeners: vec![Listener {
                    ctx: ctx as usize,
                    context: b"foobar".to_vec(),
                    verify,
                    fingerprint: sid,
                }],
                sni: Box::new(NoSni),
                counters: Shared::create().unwrap(),
                digests: vec![(ctx as usize, digest)],
                runtime_prepared: Mutex::new(HashSet::new()),
                tickets: Some(TicketKeys::new(&[Key::new([3; 32])], schedule).unwrap()),
            });
            Bench { stock, cluster }
        }

        /// One handshake against `server` (resuming `session`), the time
        /// spent in the server's handshake calls, the client's session and
        /// whether it resumed.
        fn handshake(
            server: &SslContext,
            client: &SslConnector,
            session: Option<&SslSession>,
        ) -> (Duration, SslSession, bool) {
            let (c_io, s_io) = pipes();
            let mut config = client.configure().unwrap();
            config.set_verify_hostname(false);
            let mut c_ssl = config.into_ssl("localhost").unwrap();
            if let Some(s) = session {
                // SAFETY: the session comes from this client's context.
                unsafe { c_ssl.set_session(s).unwrap() };
            }
            let mut c = SslStream::new(c_ssl, c_io).unwrap();
            let mut s = SslStream::new(Ssl::new(server).unwrap(), s_io).unwrap();
            let (mut c_done, mut s_done, mut spent) = (false, false, Duration::ZERO);
            let pending = |e: &openssl::ssl::Error| matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE);
            for _ in 0..100 {
                if !c_done {
                    match c.connect() {
                        Ok(()) => c_done = true,
                        Err(e) if pending(&e) => {}
                        Err(e) => panic!("client: {e}"),
                    }
                }
                if !s_done {
                    let t = thread_cpu();
                    let r = s.accept();
                    spent += thread_cpu().saturating_sub(t);
                    match r {
                        Ok(()) => s_done = true,
                        Err(e) if pending(&e) => {}
                        Err(e) => panic!("server: {e}"),
                    }
                }
                if c_done && s_done {
                    break;
                }
            }
            assert!(c_done && s_done, "no handshake");
            // TLS 1.3 tickets follow the handshake.
            let mut byte = [0u8; 1];
            let _ = c.ssl_read(&mut byte);
            let resumed = c.ssl().session_reused();
            let session = c.ssl().session().unwrap().to_owned();
            // Closed cleanly: OpenSSL makes the session of a connection
            // freed without close_notify unresumable.
            let _ = c.shutdown();
            let _ = s.shutdown();
            (spent, session, resumed)
        }

        /// Median µs of server time per resumption against `server`.
        fn round(server: &SslContext, client: &SslConnector, n: usize) -> f64 {
            let (_, session, _) = Self::handshake(server, client, None);
            let mut total = Duration::ZERO;
            for _ in 0..n {
                let (spent, _, resumed) = Self::handshake(server, client, Some(&session));
                assert!(resumed, "not resumed");
                total += spent;
            }
            total.as_secs_f64() * 1e6 / n as f64
        }

        pub fn run(&self, tls13: bool, rounds: usize, n: usize) -> (f64, f64, f64) {
            let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
            b.set_verify(SslVerifyMode::NONE);
            if tls13 {
                b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
            } else {
                b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
            }
            b.clear_options(SslOptions::NO_TICKET);
            let client = b.build();
            let (mut stock, mut ours, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                let s = Self::round(&self.stock, &client, n);
                let o = Self::round(&self.cluster, &client, n);
                stock.push(s);
                ours.push(o);
                ratios.push(s / o);
            }
            (super::median(stock), super::median(ours), super::median(ratios))
        }
    }
}

fn cpu() {
    let (crt, key) = cert("localhost");
    let bench = in_process::Bench::new(&crt, &key);
    println!(
        "\nServer CPU per resumption by ticket, in process (OpenSSL handshakes over memory, the server's calls in \
         thread CPU time; 9 alternating rounds of 20,000)\n"
    );
    println!(
        "| TLS | OpenSSL's own tickets (stock uWSGI) | sslcache cluster tickets | stock / cluster (median of rounds) |"
    );
    println!("|---|---|---|---|");
    for tls13 in [false, true] {
        let (stock, ours, ratio) = bench.run(tls13, 9, 20_000);
        println!(
            "| {} | {stock:.1} µs | {ours:.1} µs | {ratio:.3} |",
            if tls13 { "1.3" } else { "1.2" }
        );
    }
}
