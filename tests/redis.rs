//! Redis as replication transport and store of record (`ssl-sessions-redis`):
//! three nodes configured with Redis only behind HAProxy resume each other's
//! sessions, plain and sealed; a whole fleet stopped and started again still
//! resumes; values planted in Redis are never used.

use sslcache_testkit::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const RECONNECTS: usize = 300;
const KEY: &str = "8f1e5f3b2c4d6a7980a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8";

/// Three nodes on 127.0.0.1-3 sharing `https`, replicating through Redis
/// only; their stats ports.
struct Fleet {
    nodes: Vec<Uwsgi>,
    stats: Vec<u16>,
    https: u16,
}

impl Fleet {
    /// Each node relays requests to a live backend (as in production: a
    /// client's next connection comes after a response, not within the
    /// fraction of a millisecond a dead backend's 502 takes).
    fn start(dir: &Path, redis: u16, key: Option<&Path>, https: u16) -> Fleet {
        Fleet::start_with(
            dir,
            &format!("ssl-sessions-redis = redis://127.0.0.1:{redis}\n"),
            key,
            https,
        )
    }

    /// As `start`, with these Redis lines.
    fn start_with(dir: &Path, redis_lines: &str, key: Option<&Path>, https: u16) -> Fleet {
        std::fs::create_dir_all(dir).unwrap();
        let backend = uwsgi_backend(Duration::from_secs(300));
        let mut nodes = Vec::new();
        let mut stats = Vec::new();
        for i in 1..=3 {
            let stats_port = free_port();
            let mut lines = redis_lines.to_string();
            if let Some(k) = key {
                lines += &format!("cache-udp-key = {}\n", k.display());
            }
            let ini = with_http_to(&seed_setup2_node(&plugin_dir(), i, https, stats_port, &lines), backend);
            nodes.push(Uwsgi::start(dir, &format!("node{i}"), &ini, &[stats_port]));
            stats.push(stats_port);
        }
        wait_nodes(3, https);
        Fleet { nodes, stats, https }
    }

    fn backends(&self) -> Vec<std::net::SocketAddr> {
        node_addrs(3, self.https)
    }
}

fn behind_haproxy(name: &str, sealed: bool) {
    let _heavy = heavy();
    let dir = test_dir(name);
    let redis_port = free_port();
    let _redis = redis_server(&dir, "redis", redis_port);
    let key = sealed.then(|| key_file(&dir, "sslcache.key", &[KEY]));
    let fleet = Fleet::start(&dir, redis_port, key.as_deref(), free_port());
    for node in &fleet.nodes {
        let log = node.log();
        assert!(log.contains("receiving on redis://127.0.0.1"), "{log}");
    }
    let lb = free_port();
    let _proxy = haproxy(&dir, lb, &fleet.backends());
    let outcomes = reconnects_both(lb, RECONNECTS, name);
    let fresh = |m: &str| -> u64 {
        fleet
            .stats
            .iter()
            .map(|&p| metric(p, &format!("sslcache.default.{m}")))
            .sum()
    };
    println!(
        "{name}: waits for sessions made an instant ago: {} ({} found, {} us in all)",
        fresh("fresh_waits"),
        fresh("fresh_found"),
        fresh("fresh_wait_us")
    );
    assert_both_resumed(&outcomes, name, "");
    for &port in &fleet.stats {
        // uWSGI's metrics thread copies the counters once a second.
        assert!(eventually(Duration::from_secs(5), || metric(
            port,
            "sslcache.default.redis_published"
        ) > 0));
        assert_eq!(metric(port, "sslcache.default.redis_refused"), 0);
        assert_eq!(metric(port, "sslcache.default.forged"), 0);
    }
}

#[test]
fn redis_only_fleet_behind_haproxy_resumes() {
    behind_haproxy("redis-plain", false);
}

#[test]
fn sealed_redis_only_fleet_behind_haproxy_resumes() {
    behind_haproxy("redis-sealed", true);
}

/// `n` full handshakes spread over the fleet's nodes; their sessions.
fn make_sessions(fleet: &Fleet, proto: Proto, n: usize) -> Vec<openssl::ssl::SslSession> {
    let client = Client::new(proto);
    let backends = fleet.backends();
    (0..n)
        .map(|i| {
            let c = client.connect_to(backends[i % 3], None, &[]).expect("full handshake");
            c.session.expect("a session")
        })
        .collect()
}

/// How many of `sessions` resume, each offered on the node after the one
/// that made it.
fn resumed_on_others(fleet: &Fleet, proto: Proto, sessions: &[openssl::ssl::SslSession]) -> usize {
    let client = Client::new(proto);
    let backends = fleet.backends();
    sessions
        .iter()
        .enumerate()
        .filter(|(i, s)| {
            client
                .connect_to(backends[(i + 1) % 3], Some(s), &[])
                .is_ok_and(|c| c.resumed)
        })
        .count()
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stop_fleet(fleet: &mut Fleet) {
    for node in &mut fleet.nodes {
        node.stop();
    }
}

#[test]
fn a_whole_fleet_restarted_resumes_from_redis() {
    let _heavy = heavy();
    for sealed in [false, true] {
        let dir = test_dir(if sealed {
            "redis-restart-sealed"
        } else {
            "redis-restart"
        });
        let redis_port = free_port();
        let _redis = redis_server(&dir, "redis", redis_port);
        let key = sealed.then(|| key_file(&dir, "sslcache.key", &[KEY]));
        let https = free_port();
        let mut fleet = Fleet::start(&dir.join("before"), redis_port, key.as_deref(), https);
        let tls12 = make_sessions(&fleet, Proto::Tls12NoTickets, 200);
        let tls13 = make_sessions(&fleet, Proto::Tls13, 200);
        // Written to Redis (each TLS 1.3 handshake makes two sessions).
        assert!(
            eventually(Duration::from_secs(10), || redis_cli(redis_port, &["DBSIZE"])
                .parse::<usize>()
                .unwrap_or(0)
                >= 600),
            "DBSIZE {}",
            redis_cli(redis_port, &["DBSIZE"])
        );
        stop_fleet(&mut fleet);
        drop(fleet);
        let fleet = Fleet::start(&dir.join("after"), redis_port, key.as_deref(), https);
        for node in &fleet.nodes {
            assert!(
                eventually(Duration::from_secs(10), || node
                    .log()
                    .contains("sessions of record from")),
                "{}",
                node.log()
            );
        }
        let (r12, r13) = (
            resumed_on_others(&fleet, Proto::Tls12NoTickets, &tls12),
            resumed_on_others(&fleet, Proto::Tls13, &tls13),
        );
        println!("whole fleet restarted (sealed {sealed}): TLS 1.2 {r12}/200, TLS 1.3 {r13}/200 resumed");
        assert!(r12 >= 198 && r13 >= 198, "sealed {sealed}: {r12} {r13}");
        for &port in &fleet.stats {
            assert!(eventually(Duration::from_secs(5), || metric(
                port,
                "sslcache.default.redis_loaded"
            ) >= 600));
            assert_eq!(metric(port, "sslcache.default.redis_refused"), 0);
        }
    }
}

#[test]
fn redis_outage_costs_no_handshake_and_loses_no_session() {
    let _heavy = heavy();
    let dir = test_dir("redis-outage");
    let redis_port = free_port();
    let redis = redis_server(&dir, "redis", redis_port);
    let fleet = Fleet::start(&dir, redis_port, None, free_port());
    let lb = free_port();
    let _proxy = haproxy(&dir, lb, &fleet.backends());
    // A resumption load through HAProxy, across the outage.
    let load = std::thread::spawn(move || Client::new(Proto::Tls12NoTickets).reconnects(lb, 1500, &[]));
    std::thread::sleep(Duration::from_millis(500));
    drop(redis);
    // Sessions made while Redis is down.
    std::thread::sleep(Duration::from_millis(500));
    let during = make_sessions(&fleet, Proto::Tls12NoTickets, 60);
    std::thread::sleep(Duration::from_secs(1));
    let _redis = redis_server(&dir, "redis-again", redis_port);
    let outcome = load.join().unwrap();
    assert!(outcome.errors.is_empty(), "handshakes failed: {:?}", outcome.errors);
    outcome.assert_resumed("through the outage", "");
    // The writers catch up once Redis is back: the sessions made during
    // the outage reach the other nodes.
    let mut resumed = 0;
    assert!(
        eventually(Duration::from_secs(15), || {
            resumed = resumed_on_others(&fleet, Proto::Tls12NoTickets, &during);
            resumed >= 59
        }),
        "sessions made during the outage resumed elsewhere: {resumed}/60"
    );
    for &port in &fleet.stats {
        assert!(eventually(Duration::from_secs(5), || metric(
            port,
            "sslcache.default.redis_reconnects"
        ) > 0
            && metric(port, "sslcache.default.redis_errors") > 0));
    }
    println!(
        "outage: {} resumptions, {} errors; {resumed}/60 sessions of the outage resumed on other nodes",
        outcome.attempts,
        outcome.errors.len()
    );
}

#[test]
fn values_planted_in_redis_are_never_used() {
    use sslcache_core::replication::keys::Key;
    use sslcache_core::replication::seal::Sealer;
    let _heavy = heavy();
    let dir = test_dir("redis-planted");
    let redis_port = free_port();
    let _redis = redis_server(&dir, "redis", redis_port);
    let key = key_file(&dir, "sslcache.key", &[KEY]);
    let mut fleet = Fleet::start(&dir, redis_port, Some(&key), free_port());
    let sessions = make_sessions(&fleet, Proto::Tls12NoTickets, 30);
    assert!(eventually(Duration::from_secs(10), || redis_cli(
        redis_port,
        &["DBSIZE"]
    ) == "30"));
    let names = redis_cli(redis_port, &["--raw", "KEYS", "sslcache:default:s:*"]);
    let real: Vec<&str> = names.lines().collect();
    let fake = |c: char| format!("sslcache:default:s:{}", c.to_string().repeat(32));
    // Random bytes; a real record copied under another name; a session
    // sealed with a key this fleet does not hold.
    let random = dir.join("random");
    std::fs::write(&random, (0..300u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>()).unwrap();
    let set_from = |name: &str, file: &Path| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis_port.to_string(), "-x", "SET", name])
            .stdin(std::fs::File::open(file).unwrap())
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    };
    set_from(&fake('a'), &random);
    assert_eq!(redis_cli(redis_port, &["COPY", real[0], &fake('b')]), "1");
    let mut frame = Vec::new();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    sslcache_core::replication::encode_set(&[9; 32], &[7; 120], expires, &mut frame).unwrap();
    let mut forged = Vec::new();
    let now_ms = (expires - 300) * 1000;
    Sealer::new(&Key::new([5; 32])).seal(&frame, &std::sync::atomic::AtomicU64::new(0), now_ms, &mut forged);
    let forged_file = dir.join("forged");
    std::fs::write(&forged_file, &forged).unwrap();
    set_from(&fake('c'), &forged_file);
    // Published: random bytes (refused as not sealed), the forged value,
    // real records again (replays).
    let publish_from = |file: &Path| {
        std::process::Command::new("redis-cli")
            .args([
                "-p",
                &redis_port.to_string(),
                "-x",
                "PUBLISH",
                "sslcache:default:updates",
            ])
            .stdin(std::fs::File::open(file).unwrap())
            .output()
            .unwrap();
    };
    publish_from(&random);
    publish_from(&forged_file);
    // Eleven real records replayed: a node refuses its own datagrams sent
    // back uncounted, and each node sealed only 10 of the 30, so every node
    // sees at least one replay of a peer's.
    let mut replay = vec![
        "EVAL",
        "for i, k in ipairs(KEYS) do redis.call('PUBLISH', ARGV[1], redis.call('GET', k)) end return 0",
        "11",
    ];
    replay.extend(&real[1..12]);
    replay.push("sslcache:default:updates");
    redis_cli(redis_port, &replay);
    for &port in &fleet.stats[..2] {
        assert!(
            eventually(Duration::from_secs(5), || metric(port, "sslcache.default.forged") >= 1
                && metric(port, "sslcache.default.replayed") >= 1
                && metric(port, "sslcache.default.plain_refused")
                    + metric(port, "sslcache.default.rejected")
                    >= 1),
            "forged {} replayed {} plain_refused {} rejected {}",
            metric(port, "sslcache.default.forged"),
            metric(port, "sslcache.default.replayed"),
            metric(port, "sslcache.default.plain_refused"),
            metric(port, "sslcache.default.rejected")
        );
    }
    // Node 3 starts again and reads the records back: the three planted
    // ones are refused, only the 30 real sessions are stored.
    fleet.nodes[2].stop();
    let ini = std::fs::read_to_string(&fleet.nodes[2].ini_path).unwrap();
    let stats_port = fleet.stats[2];
    fleet.nodes[2] = Uwsgi::start(&dir, "node3-again", &ini, &[stats_port]);
    assert!(eventually(Duration::from_secs(10), || metric(
        stats_port,
        "sslcache.default.redis_refused"
    ) >= 3));
    assert!(eventually(Duration::from_secs(5), || metric(
        stats_port,
        "sslcache.default.items"
    ) == 30));
    assert_eq!(metric(stats_port, "sslcache.default.redis_loaded"), 30);
    // And every real session still resumes there.
    let client = Client::new(Proto::Tls12NoTickets);
    let node3 = fleet.backends()[2];
    let resumed = sessions
        .iter()
        .filter(|s| client.connect_to(node3, Some(s), &[]).is_ok_and(|c| c.resumed))
        .count();
    assert_eq!(resumed, 30);
}

/// A Redis Cluster of three masters on 127.0.0.1 (no replicas); their ports.
fn redis_cluster(dir: &Path) -> (Vec<Process>, Vec<u16>) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let servers = ports
        .iter()
        .map(|&port| {
            let p = port.to_string();
            let conf = dir.join(format!("nodes-{port}.conf"));
            let server = Process::spawn(
                dir,
                &format!("redis-{port}"),
                "redis-server",
                &[
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &p,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                ],
            );
            wait_port(port, "redis-server");
            server
        })
        .collect();
    let mut create = vec!["--cluster".to_string(), "create".to_string()];
    create.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
    let out = std::process::Command::new("redis-cli")
        .args(&create)
        .output()
        .expect("redis-cli --cluster create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    for &port in &ports {
        assert!(
            eventually(Duration::from_secs(15), || redis_cli(port, &["CLUSTER", "INFO"])
                .contains("cluster_state:ok")),
            "cluster not ok on {port}"
        );
    }
    (servers, ports)
}

#[test]
fn a_fleet_on_a_redis_cluster_resumes_and_restarts() {
    let _heavy = heavy();
    let dir = test_dir("redis-cluster");
    let (_servers, ports) = redis_cluster(&dir);
    let key = key_file(&dir, "sslcache.key", &[KEY]);
    // Two of the three masters as seeds: the third is found.
    let lines = format!(
        "ssl-sessions-redis-cluster = redis://127.0.0.1:{}\nssl-sessions-redis-cluster = redis://127.0.0.1:{}\n",
        ports[0], ports[1]
    );
    let https = free_port();
    let mut fleet = Fleet::start_with(&dir.join("before"), &lines, Some(&key), https);
    let lb = free_port();
    let proxy = haproxy(&dir, lb, &fleet.backends());
    resumed_both(lb, RECONNECTS, "Redis Cluster");
    drop(proxy);
    let sessions = make_sessions(&fleet, Proto::Tls12NoTickets, 150);
    // Spread over the masters by slot.
    assert!(eventually(Duration::from_secs(10), || ports
        .iter()
        .all(|&p| redis_cli(p, &["DBSIZE"]).parse::<u32>().unwrap_or(0) > 10)));
    stop_fleet(&mut fleet);
    drop(fleet);
    let fleet = Fleet::start_with(&dir.join("after"), &lines, Some(&key), https);
    for node in &fleet.nodes {
        assert!(
            eventually(Duration::from_secs(10), || node
                .log()
                .contains("sessions of record from the Redis Cluster")),
            "{}",
            node.log()
        );
    }
    let resumed = resumed_on_others(&fleet, Proto::Tls12NoTickets, &sessions);
    println!("Redis Cluster, whole fleet restarted: {resumed}/150 resumed");
    assert!(resumed >= 149, "{resumed}/150");
}

#[test]
fn rediss_carries_the_sessions_over_tls() {
    let _heavy = heavy();
    let dir = test_dir("redis-tls");
    let (crt, key) = cert("localhost");
    let port = free_port();
    let p = port.to_string();
    let _redis = Process::spawn(
        &dir,
        "redis-tls",
        "redis-server",
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &p,
            "--tls-cert-file",
            crt.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    );
    wait_port(port, "redis-server (TLS)");
    // A self-signed certificate: `#insecure` tells the client not to check it.
    let lines = format!("ssl-sessions-redis = rediss://127.0.0.1:{port}/#insecure\n");
    let fleet = Fleet::start_with(&dir, &lines, None, free_port());
    let tls12 = make_sessions(&fleet, Proto::Tls12NoTickets, 60);
    let mut resumed = 0;
    assert!(
        eventually(Duration::from_secs(10), || {
            resumed = resumed_on_others(&fleet, Proto::Tls12NoTickets, &tls12);
            resumed >= 60
        }),
        "{resumed}/60 resumed on other nodes through rediss"
    );
    assert!(fleet.nodes[0].log().contains("receiving on rediss://127.0.0.1"));
}

/// A private CA made with the openssl CLI in `dir`: its certificate, a
/// Redis server certificate it signed (SAN IP 127.0.0.1) and a client
/// certificate it signed, with their keys (the client's mode 0600).
struct PrivateCa {
    ca: PathBuf,
    server_crt: PathBuf,
    server_key: PathBuf,
    client_crt: PathBuf,
    client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn private_ca(dir: &Path) -> PrivateCa {
    let dir = dir.join("ca");
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=sslcache test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    for (name, cn, ext) in [
        (
            "server",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "sslcache node", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key, csr, crt, ext_file) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(dir.join(&ext_file), ext).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "2",
                "-days",
                "2",
                "-extfile",
                &ext_file,
                "-out",
                &crt,
            ],
        );
    }
    std::fs::set_permissions(dir.join("client.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    PrivateCa {
        ca: dir.join("ca.pem"),
        server_crt: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_crt: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

/// redis-server on 127.0.0.1:`port`, TLS only, with the private CA's
/// server certificate; `verify_clients`: `--tls-auth-clients yes`.
fn redis_tls_server(dir: &Path, name: &str, port: u16, ca: &PrivateCa, verify_clients: bool) -> Process {
    let p = port.to_string();
    let server = Process::spawn(
        dir,
        name,
        "redis-server",
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &p,
            "--tls-cert-file",
            ca.server_crt.to_str().unwrap(),
            "--tls-key-file",
            ca.server_key.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca.ca.to_str().unwrap(),
            "--tls-auth-clients",
            if verify_clients { "yes" } else { "no" },
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    );
    wait_port(port, "redis-server (TLS)");
    server
}

/// Keys in the TLS Redis on `port`, asked with redis-cli as a client the
/// CA signed.
fn tls_dbsize(port: u16, ca: &PrivateCa) -> usize {
    let out = std::process::Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(&ca.ca)
        .arg("--cert")
        .arg(&ca.client_crt)
        .arg("--key")
        .arg(&ca.client_key)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "DBSIZE"])
        .output()
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("redis-cli DBSIZE: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

/// One node on 127.0.0.1 replicating through these Redis lines only; its
/// stats port and HTTPS address.
fn redis_node(dir: &Path, name: &str, redis_lines: &str) -> (Uwsgi, u16, std::net::SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    let (stats_port, https) = (free_port(), free_port());
    let ini = seed_setup2_node(&plugin_dir(), 1, https, stats_port, redis_lines);
    let node = Uwsgi::start(dir, name, &ini, &[stats_port, https]);
    (node, stats_port, std::net::SocketAddr::from(([127, 0, 0, 1], https)))
}

/// A node refused by the TLS Redis on `port`: it logs why, once, no session
/// reaches Redis, and its handshakes (full and resumed, on the node) go on.
fn refused(
    node: &Uwsgi,
    stats_port: u16,
    https: std::net::SocketAddr,
    port: u16,
    ca: &PrivateCa,
    why: &str,
    hint: &str,
) {
    let failure = format!("cannot write sessions to rediss://127.0.0.1:{port}: ");
    assert!(
        eventually(Duration::from_secs(10), || node.log().contains(&failure)),
        "{}",
        node.log()
    );
    let client = Client::new(Proto::Tls12NoTickets);
    let mut resumed = 0;
    for _ in 0..20 {
        let full = client.connect_to(https, None, &[]).expect("a full handshake");
        let again = client
            .connect_to(https, full.session.as_ref(), &[])
            .expect("a resumed handshake");
        resumed += usize::from(again.resumed);
    }
    assert_eq!(resumed, 20, "sessions resume on the node itself");
    // The writer retries with back-off: sessions never reach Redis.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tls_dbsize(port, ca), 0);
    assert_eq!(metric(stats_port, "sslcache.default.redis_published"), 0);
    assert!(metric(stats_port, "sslcache.default.redis_errors") > 0);
    let log = node.log();
    let line = log.lines().find(|l| l.contains(&failure)).unwrap();
    println!("refused: {line}");
    assert!(line.contains(why) && line.contains(hint), "{line}");
    assert_eq!(log.matches(&failure).count(), 1, "logged once per outage:\n{log}");
}

#[test]
fn rediss_with_a_private_ca_verifies_with_the_ca_option_and_refuses_without() {
    let _heavy = heavy();
    let dir = test_dir("redis-private-ca");
    let ca = private_ca(&dir);
    let port = free_port();
    let _redis = redis_tls_server(&dir, "redis-tls", port, &ca, false);
    // Without the CA option: the system's trust store does not know it.
    let (node, stats_port, https) = redis_node(
        &dir.join("without"),
        "node",
        &format!("ssl-sessions-redis = rediss://127.0.0.1:{port}\n"),
    );
    assert!(
        node.log().contains(&format!(
            "Redis TLS: rediss://127.0.0.1:{port} verified with the system's trust store"
        )),
        "{}",
        node.log()
    );
    refused(
        &node,
        stats_port,
        https,
        port,
        &ca,
        "certificate verify failed",
        "(the server's certificate is not signed by a CA the system trusts, or does not name this host: name its \
         CA with ssl-sessions-redis-ca)",
    );
    drop(node);
    // With it: three nodes write and resume each other's sessions.
    let lines = format!(
        "ssl-sessions-redis = rediss://127.0.0.1:{port}\nssl-sessions-redis-ca = {}\n",
        ca.ca.display()
    );
    let fleet = Fleet::start_with(&dir.join("with"), &lines, None, free_port());
    let summary = format!(
        "Redis TLS: rediss://127.0.0.1:{port} verified with the CA of ssl-sessions-redis-ca = {}",
        ca.ca.display()
    );
    for node in &fleet.nodes {
        assert!(node.log().contains(&summary), "{}", node.log());
    }
    let sessions = make_sessions(&fleet, Proto::Tls12NoTickets, 60);
    assert!(
        eventually(Duration::from_secs(10), || tls_dbsize(port, &ca) >= 60),
        "DBSIZE {}",
        tls_dbsize(port, &ca)
    );
    let mut resumed = 0;
    assert!(
        eventually(Duration::from_secs(10), || {
            resumed = resumed_on_others(&fleet, Proto::Tls12NoTickets, &sessions);
            resumed >= 60
        }),
        "{resumed}/60 resumed on other nodes through rediss with a private CA"
    );
    // Never refused (a connection that timed out while the nodes start is
    // retried, and is not what this is about).
    for node in &fleet.nodes {
        let log = node.log();
        assert!(
            !log.contains("certificate verify failed") && !log.contains("is not signed by"),
            "{log}"
        );
    }
    println!("private CA: {summary}; {resumed}/60 resumed on other nodes");
}

#[test]
fn rediss_verifying_clients_takes_the_client_certificate_option() {
    let _heavy = heavy();
    let dir = test_dir("redis-client-cert");
    let ca = private_ca(&dir);
    let port = free_port();
    let _redis = redis_tls_server(&dir, "redis-tls", port, &ca, true);
    let ca_line = format!(
        "ssl-sessions-redis = rediss://127.0.0.1:{port}\nssl-sessions-redis-ca = {}\n",
        ca.ca.display()
    );
    // The CA alone: the server asks for a certificate and gets none.
    let (node, stats_port, https) = redis_node(&dir.join("without"), "node", &ca_line);
    refused(
        &node,
        stats_port,
        https,
        port,
        &ca,
        "",
        "(a server that verifies clients (tls-auth-clients) refuses a client without a certificate: give one with \
         ssl-sessions-redis-cert)",
    );
    drop(node);
    let lines = format!(
        "{ca_line}ssl-sessions-redis-cert = {}\nssl-sessions-redis-key = {}\n",
        ca.client_crt.display(),
        ca.client_key.display()
    );
    let (node, stats_port, https) = redis_node(&dir.join("with"), "node", &lines);
    assert!(
        node.log().contains(&format!(
            "client certificate ssl-sessions-redis-cert = {}",
            ca.client_crt.display()
        )),
        "{}",
        node.log()
    );
    let client = Client::new(Proto::Tls12NoTickets);
    for _ in 0..20 {
        client.connect_to(https, None, &[]).expect("a full handshake");
    }
    assert!(
        eventually(Duration::from_secs(10), || tls_dbsize(port, &ca) >= 20),
        "DBSIZE {}\n{}",
        tls_dbsize(port, &ca),
        node.log()
    );
    assert!(eventually(Duration::from_secs(5), || metric(
        stats_port,
        "sslcache.default.redis_published"
    ) >= 20));
    assert!(!node.log().contains("tls-auth-clients"), "{}", node.log());
}

/// uWSGI refuses to start on a bad Redis TLS file: status 1, one
/// `[sslcache]` line naming the option.
fn refuses_to_start(dir: &Path, name: &str, lines: &str, expected: &str) {
    let ini = seed_setup2_node(&plugin_dir(), 1, free_port(), free_port(), lines);
    let line = assert_refused(dir, name, &ini, expected);
    println!("{name}: {line}");
}

#[test]
fn a_bad_redis_tls_file_stops_uwsgi_with_one_line() {
    let dir = test_dir("redis-tls-files");
    let ca = private_ca(&dir);
    let url = "ssl-sessions-redis = rediss://127.0.0.1:6380\n";
    let missing = dir.join("missing.pem");
    refuses_to_start(
        &dir,
        "missing-ca",
        &format!("{url}ssl-sessions-redis-ca = {}\n", missing.display()),
        &format!(
            "ssl-sessions-redis-ca = {}: cannot read the CA file: No such file or directory",
            missing.display()
        ),
    );
    refuses_to_start(
        &dir,
        "key-as-ca",
        &format!("{url}ssl-sessions-redis-ca = {}\n", ca.server_key.display()),
        "the CA file holds no PEM certificate",
    );
    let shared_key = dir.join("shared.key");
    std::fs::copy(&ca.client_key, &shared_key).unwrap();
    std::fs::set_permissions(&shared_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    refuses_to_start(
        &dir,
        "shared-key",
        &format!(
            "{url}ssl-sessions-redis-cert = {}\nssl-sessions-redis-key = {}\n",
            ca.client_crt.display(),
            shared_key.display()
        ),
        &format!(
            "ssl-sessions-redis-key = {}: the key file is readable or writable by group or others (mode 0640)",
            shared_key.display()
        ),
    );
    refuses_to_start(
        &dir,
        "cache2-cluster",
        &format!(
            "cache2 = name=s,items=100,redis_cluster=rediss://127.0.0.1:7000,redis_ca={}\n\
             ssl-sessions-use-cache = s\n",
            ca.ca.display()
        ),
        "cache2 \"s\" redis_ca cannot apply to cache2 \"s\" redis_cluster = rediss://127.0.0.1:7000",
    );
}

#[test]
fn insecure_rediss_warns_at_startup() {
    let dir = test_dir("redis-insecure-warning");
    let port = free_port();
    let (node, _, _) = redis_node(
        &dir,
        "node",
        &format!("ssl-sessions-redis = rediss://127.0.0.1:{port}/#insecure\n"),
    );
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("#insecure: the Redis server's certificate is not verified"))
        .unwrap_or_else(|| panic!("{log}"));
    println!("{line}");
    assert!(line.starts_with("[sslcache]"), "{line}");
    assert!(
        log.contains(&format!(
            "Redis TLS: rediss://127.0.0.1:{port} NOT verified (#insecure)"
        )),
        "{log}"
    );
}
