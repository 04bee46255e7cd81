//! Sessions survive every reload uWSGI has (seed Setup 1, 4 router
//! processes): SIGHUP, touch-reload, the master FIFO's `r` (graceful) and
//! `R` (brutal), SIGTERM (brutal in uWSGI 2.0). Stock uWSGI, resuming by
//! tickets, loses them all. Sealed replication goes on across a reload.

use std::time::{Duration, SystemTime};

use openssl::ssl::SslSession;
use sslcache_testkit::*;

const SESSIONS: usize = 500;

/// Waits until the node has come back from its `n`-th reload and serves.
fn wait_reloaded(node: &Uwsgi, https: u16, n: usize, marker: &str) {
    assert!(
        eventually(Duration::from_secs(60), || node.log().matches(marker).count() >= n),
        "reload {n} never finished: {}",
        node.log()
    );
    let client = Client::new(Proto::Tls12NoTickets);
    assert!(
        eventually(Duration::from_secs(30), || client.connect(https, None, &[]).is_ok()),
        "no handshake after reload {n}"
    );
}

enum Reload {
    Sighup,
    Sigterm,
    Touch,
    FifoGraceful,
    FifoBrutal,
}

fn trigger(reload: &Reload, node: &Uwsgi, dir: &std::path::Path, round: u64) {
    match reload {
        Reload::Sighup => node.signal(libc::SIGHUP),
        Reload::Sigterm => node.signal(libc::SIGTERM),
        Reload::Touch => {
            let file = std::fs::File::options()
                .write(true)
                .open(dir.join("reload.touch"))
                .unwrap();
            // uWSGI compares whole-second mtimes: move it well away.
            file.set_modified(SystemTime::now() + Duration::from_secs(10 * round))
                .unwrap();
        }
        Reload::FifoGraceful => std::fs::write(dir.join("master.fifo"), "r").unwrap(),
        Reload::FifoBrutal => std::fs::write(dir.join("master.fifo"), "R").unwrap(),
    }
}

#[test]
fn sessions_survive_every_kind_of_reload() {
    let _heavy = heavy();
    let dir = test_dir("reload");
    let (https, stats_port) = (free_port(), free_port());
    std::fs::write(dir.join("reload.touch"), "").unwrap();
    let extra = format!(
        "{DEFAULT_CACHE}\nmaster-fifo = {}\ntouch-reload = {}",
        dir.join("master.fifo").display(),
        dir.join("reload.touch").display()
    );
    let node = Uwsgi::start(
        &dir,
        "node",
        &seed_setup1(&plugin_dir(), https, stats_port, 4, &extra),
        &[https],
    );
    let (tls12, tls13) = (Client::new(Proto::Tls12NoTickets), Client::new(Proto::Tls13));
    let mut sessions12 = tls12.sessions(loopback(https), SESSIONS);
    let mut sessions13 = tls13.sessions(loopback(https), SESSIONS);
    let marker = "sessions came back from before the reload";
    let reloads = [
        ("SIGHUP", Reload::Sighup),
        ("touch-reload", Reload::Touch),
        ("master FIFO r", Reload::FifoGraceful),
        ("master FIFO R (brutal)", Reload::FifoBrutal),
        // uWSGI 2.0 without die-on-term: SIGTERM is a brutal reload.
        ("SIGTERM", Reload::Sigterm),
    ];
    for (round, (name, reload)) in reloads.iter().enumerate() {
        trigger(reload, &node, &dir, round as u64 + 1);
        wait_reloaded(&node, https, round + 1, marker);
        let r12 = tls12.resume_all(loopback(https), &mut sessions12);
        let r13 = tls13.resume_all(loopback(https), &mut sessions13);
        println!("after {name}: TLS 1.2 {r12}/{SESSIONS}, TLS 1.3 {r13}/{SESSIONS} resumed");
        let log = node.log();
        assert_share_resumed(format_args!("after {name}, TLS 1.2"), r12, SESSIONS, &log);
        assert_share_resumed(format_args!("after {name}, TLS 1.3"), r13, SESSIONS, &log);
    }
    let log = node.log();
    assert!(!log.contains("discarded the store"), "{log}");
    // In memory only: the store is a memory file, nothing under a disk.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", node.pid)).unwrap();
    assert!(maps.contains("/memfd:sslcache-store"), "{maps}");
    // The counter says what came back at the last reload.
    assert!(metric(stats_port, "sslcache.default.restored") >= SESSIONS as u64);
}

/// Stock uWSGI resumes by session tickets whose keys are new after a
/// reload: nothing resumes (the baseline).
#[test]
fn stock_uwsgi_loses_every_session_at_a_reload() {
    let _heavy = heavy();
    let dir = test_dir("reload-stock");
    let https = free_port();
    let (crt, key) = cert("localhost");
    let ini = format!(
        "[uwsgi]\nplugins = http\nmaster = true\nhttps = 127.0.0.1:{https},{},{}\nhttp-processes = 4\n\
         http-to = 127.0.0.1:9\n",
        crt.display(),
        key.display()
    );
    let node = Uwsgi::start(&dir, "stock", &ini, &[https]);
    let client = Client::new(Proto::Tls12Tickets);
    let mut sessions = client.sessions(loopback(https), 50);
    let before = client.resume_all(loopback(https), &mut sessions);
    assert!(before >= 49, "stock resumes by tickets before the reload: {before}");
    node.signal(libc::SIGHUP);
    wait_reloaded(&node, https, 1, "binary reloading uWSGI");
    let after = client.resume_all(loopback(https), &mut sessions);
    println!("stock after SIGHUP: {after}/50 resumed");
    assert_eq!(after, 0);
}

/// A store left by a process image with other cache sizes is discarded in
/// one line, and the node starts empty and works.
#[test]
fn a_store_of_other_sizes_is_discarded_in_one_line() {
    let _heavy = heavy();
    let dir = test_dir("reload-resize");
    let (https, stats_port) = (free_port(), free_port());
    let ini = |items: u32| {
        let cache = format!(
            "cache = {items}\ncache-blocksize = 4096\nssl-sessions-use-cache = true\nmaster-fifo = {}",
            dir.join("master.fifo").display()
        );
        seed_setup1(&plugin_dir(), https, stats_port, 2, &cache)
    };
    let node = Uwsgi::start(&dir, "node", &ini(20000), &[https]);
    let client = Client::new(Proto::Tls12NoTickets);
    let mut sessions = client.sessions(loopback(https), 20);
    // The reload reads the ini again: the cache is now smaller.
    std::fs::write(&node.ini_path, ini(10000)).unwrap();
    std::fs::write(dir.join("master.fifo"), "r").unwrap();
    wait_reloaded(&node, https, 1, "discarded the store");
    let log = node.log();
    assert_eq!(log.matches("discarded the store").count(), 1, "{log}");
    assert!(
        log.contains("made for items=20000, keysize=2048, blocksize=4096"),
        "{log}"
    );
    assert_eq!(client.resume_all(loopback(https), &mut sessions), 0);
    assert_eq!(metric(stats_port, "sslcache.default.restore_discarded"), 1);
    // And it caches again.
    assert!(
        Client::new(Proto::Tls12NoTickets)
            .reconnects(https, 10, &[])
            .resumption_rate()
            >= 0.9
    );
}

/// Two sealed nodes; node B reloads. What B had comes back, and sessions
/// still travel both ways afterwards: B's new process image seals under a
/// new sender id (new nonces), A's receiver takes it, B's takes A's.
#[test]
fn sealed_replication_goes_on_across_a_reload() {
    use std::os::unix::fs::PermissionsExt;
    let _heavy = heavy();
    let dir = test_dir("reload-sealed");
    let keys = dir.join("keys");
    std::fs::write(
        &keys,
        "2222222222222222222222222222222222222222222222222222222222222222\n",
    )
    .unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (udp_a, udp_b) = (free_port(), free_port());
    let node = |name: &str, udp: u16, peer: u16| {
        let (https, stats_port) = (free_port(), free_port());
        let ini = seed_setup1(&plugin_dir(), https, stats_port, 2, DEFAULT_CACHE)
            + &format!(
                "cache-udp-server = 127.0.0.1:{udp}\ncache-udp-node = 127.0.0.1:{peer}\ncache-udp-key = {}\n",
                keys.display()
            );
        (Uwsgi::start(&dir, name, &ini, &[https, stats_port]), https, stats_port)
    };
    let (_a, https_a, stats_a) = node("a", udp_a, udp_b);
    let (b, https_b, stats_b) = node("b", udp_b, udp_a);
    let client = Client::new(Proto::Tls12NoTickets);
    let resumed_on = |port: u16, sessions: &mut Vec<SslSession>| client.resume_all(loopback(port), sessions);

    let mut before = client.sessions(loopback(https_a), 50);
    std::thread::sleep(Duration::from_millis(500));
    b.signal(libc::SIGHUP);
    wait_reloaded(&b, https_b, 1, "sessions came back from before the reload");
    assert!(resumed_on(https_b, &mut before) >= 49, "{}", b.log());

    let mut from_a = client.sessions(loopback(https_a), 50);
    let mut from_b = client.sessions(loopback(https_b), 50);
    std::thread::sleep(Duration::from_millis(500));
    let (on_b, on_a) = (resumed_on(https_b, &mut from_a), resumed_on(https_a, &mut from_b));
    println!("after B reloaded: A's new sessions {on_b}/50 on B, B's new sessions {on_a}/50 on A");
    assert!(on_b >= 49 && on_a >= 49, "{on_b} {on_a}\n{}", b.log());
    for port in [stats_a, stats_b] {
        for refused in ["forged", "replayed", "out_of_window", "skewed"] {
            assert_eq!(metric(port, &format!("sslcache.default.{refused}")), 0, "{refused}");
        }
    }
}

/// `cache2 ... store=`: the cache lives in that file (0600), and a full
/// stop and start of the node keeps its sessions.
#[test]
fn a_store_file_keeps_sessions_across_a_stop_and_start() {
    use std::os::unix::fs::PermissionsExt;
    let _heavy = heavy();
    let dir = test_dir("persist");
    let (https, stats_port) = (free_port(), free_port());
    let store = dir.join("sessions.store");
    let cache = format!(
        "cache2 = name=ssl,items=20000,keysize=128,blocksize=4096,store={}\nssl-sessions-use-cache = ssl",
        store.display()
    );
    let ini = seed_setup1(&plugin_dir(), https, stats_port, 4, &cache);
    let mut node = Uwsgi::start(&dir, "node", &ini, &[https]);
    assert!(
        node.log().contains("that file holds the master secrets"),
        "{}",
        node.log()
    );
    assert_eq!(std::fs::metadata(&store).unwrap().permissions().mode() & 0o777, 0o600);
    // A second instance on the same file is refused: it would pull the
    // store from under the first one.
    let other = seed_setup1(&plugin_dir(), free_port(), free_port(), 1, &cache);
    let (status, log) = run_to_exit(&dir, "second", &other);
    assert!(!status.expect("exits").success(), "{log}");
    assert!(log.contains("another uWSGI instance uses this store file"), "{log}");
    let (tls12, tls13) = (Client::new(Proto::Tls12NoTickets), Client::new(Proto::Tls13));
    let mut sessions12 = tls12.sessions(loopback(https), SESSIONS);
    let mut sessions13 = tls13.sessions(loopback(https), SESSIONS);
    node.stop();
    let node = Uwsgi::start(&dir, "node-again", &ini, &[https]);
    assert!(
        node.log().contains("sessions came back from its store file"),
        "{}",
        node.log()
    );
    let r12 = tls12.resume_all(loopback(https), &mut sessions12);
    let r13 = tls13.resume_all(loopback(https), &mut sessions13);
    println!("after a stop and start: TLS 1.2 {r12}/{SESSIONS}, TLS 1.3 {r13}/{SESSIONS} resumed");
    let log = node.log();
    assert_share_resumed("after a stop and start, TLS 1.2", r12, SESSIONS, &log);
    assert_share_resumed("after a stop and start, TLS 1.3", r13, SESSIONS, &log);
}

/// A store file others may read, or random bytes, are refused (uWSGI does
/// not start, the file is left as it is); an empty file is used; a store of
/// other cache sizes is discarded in one line.
#[test]
fn bad_store_files_are_refused_or_discarded_in_one_line() {
    use std::os::unix::fs::PermissionsExt;
    let _heavy = heavy();
    let dir = test_dir("persist-bad");
    let (https, stats_port) = (free_port(), free_port());
    let store = dir.join("sessions.store");
    let ini = |items: u32| {
        let cache = format!(
            "cache = {items}\ncache-blocksize = 4096\ncache-store = {}\nssl-sessions-use-cache = true",
            store.display()
        );
        seed_setup1(&plugin_dir(), https, stats_port, 2, &cache)
    };
    // Readable by others: refused.
    std::fs::write(&store, "").unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (status, log) = run_to_exit(&dir, "shared", &ini(20000));
    assert!(!status.expect("exits").success(), "{log}");
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("[sslcache]")).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cache-store = ") && l.contains("(mode 0644): chmod 600 it")),
        "{log}"
    );
    // Random bytes: refused (uWSGI does not start), the file left as it is.
    let noise: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&store, &noise).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (status, log) = run_to_exit(&dir, "noise", &ini(20000));
    assert!(!status.expect("exits").success(), "{log}");
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("[sslcache]")).collect();
    assert!(
        lines.iter().any(|l| l.contains("cache-store = ")
            && l.contains("the file is not a session store")
            && l.contains("left as it is")),
        "{log}"
    );
    assert_eq!(std::fs::read(&store).unwrap(), noise);
    // An empty file is used: a new store, and the cache works.
    std::fs::write(&store, "").unwrap();
    let mut node = Uwsgi::start(&dir, "empty", &ini(20000), &[https]);
    let log = node.log();
    assert!(!log.contains("discarded"), "{log}");
    let client = Client::new(Proto::Tls12NoTickets);
    let mut sessions = client.sessions(loopback(https), 20);
    node.stop();
    // Other cache sizes: discarded, saying what it was made for.
    let node = Uwsgi::start(&dir, "smaller", &ini(10000), &[https]);
    let log = node.log();
    assert_eq!(log.matches("discarded the store file").count(), 1, "{log}");
    assert!(
        log.contains("made for items=20000, keysize=2048, blocksize=4096"),
        "{log}"
    );
    assert_eq!(client.resume_all(loopback(https), &mut sessions), 0);
    assert!(client.reconnects(https, 10, &[]).resumption_rate() >= 0.9);
}

/// A store file made by root before uWSGI drops privileges stays the
/// cache's across a reload of the (then unprivileged) master: it is handed
/// over as a descriptor, never opened again.
#[test]
fn a_root_owned_store_file_survives_a_reload_with_dropped_privileges() {
    use std::os::unix::fs::MetadataExt;
    let _heavy = heavy();
    let dir = test_dir("persist-nobody");
    let (https, stats_port) = (free_port(), free_port());
    let store = dir.join("sessions.store");
    let cache = format!(
        "cache = 20000\ncache-blocksize = 4096\ncache-store = {}\nssl-sessions-use-cache = true\n\
         uid = nobody\ngid = nogroup",
        store.display()
    );
    // uWSGI itself reads the certificate's key again after the reload exec,
    // as nobody by then: let it (the store file stays root's, 0600).
    let (_, key) = cert("localhost");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let node = Uwsgi::start(
        &dir,
        "node",
        &seed_setup1(&plugin_dir(), https, stats_port, 2, &cache),
        &[https],
    );
    assert_eq!(std::fs::metadata(&store).unwrap().uid(), 0);
    let client = Client::new(Proto::Tls12NoTickets);
    let mut sessions = client.sessions(loopback(https), 100);
    node.signal(libc::SIGHUP);
    wait_reloaded(&node, https, 1, "sessions came back from before the reload");
    let resumed = client.resume_all(loopback(https), &mut sessions);
    assert_share_resumed("after the reload", resumed, 100, &node.log());
}
