//! Sessions survive every reload uWSGI has (seed Setup 1, 4 router
//! processes): SIGHUP, touch-reload, the master FIFO's `r` (graceful) and
//! `R` (brutal). Stock uWSGI, resuming by tickets, loses them all.

mod support;

use std::time::{Duration, SystemTime};

use openssl::ssl::SslSession;
use support::*;

const SESSIONS: usize = 500;

/// `n` full handshakes; the sessions they made.
fn make_sessions(client: &Client, port: u16, n: usize) -> Vec<SslSession> {
    (0..n)
        .map(|i| {
            let conn = client
                .connect(port, None, &[])
                .unwrap_or_else(|e| panic!("handshake {i}: {e}"));
            conn.session.expect("a session")
        })
        .collect()
}

/// Offers each session once; returns how many resumed, and replaces each
/// by the session of its connection (a TLS 1.3 ticket is used once).
fn resume_all(client: &Client, port: u16, sessions: &mut [SslSession]) -> usize {
    let mut resumed = 0;
    for session in sessions.iter_mut() {
        if let Ok(conn) = client.connect(port, Some(session), &[]) {
            resumed += usize::from(conn.resumed);
            if let Some(next) = conn.session {
                *session = next;
            }
        }
    }
    resumed
}

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
    Touch,
    FifoGraceful,
    FifoBrutal,
}

fn trigger(reload: &Reload, node: &Uwsgi, dir: &std::path::Path, round: u64) {
    match reload {
        // SAFETY: signals the test's own child process by pid.
        Reload::Sighup => assert_eq!(unsafe { libc::kill(node.pid, libc::SIGHUP) }, 0),
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
    let mut sessions12 = make_sessions(&tls12, https, SESSIONS);
    let mut sessions13 = make_sessions(&tls13, https, SESSIONS);
    let marker = "sessions came back from before the reload";
    let reloads = [
        ("SIGHUP", Reload::Sighup),
        ("touch-reload", Reload::Touch),
        ("master FIFO r", Reload::FifoGraceful),
        ("master FIFO R (brutal)", Reload::FifoBrutal),
    ];
    for (round, (name, reload)) in reloads.iter().enumerate() {
        trigger(reload, &node, &dir, round as u64 + 1);
        wait_reloaded(&node, https, round + 1, marker);
        let r12 = resume_all(&tls12, https, &mut sessions12);
        let r13 = resume_all(&tls13, https, &mut sessions13);
        println!("after {name}: TLS 1.2 {r12}/{SESSIONS}, TLS 1.3 {r13}/{SESSIONS} resumed");
        let least = SESSIONS * 99 / 100;
        assert!(
            r12 >= least && r13 >= least,
            "after {name}: {r12} and {r13} of {SESSIONS}\n{}",
            node.log()
        );
    }
    let log = node.log();
    assert!(!log.contains("was discarded"), "{log}");
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
    let mut sessions = make_sessions(&client, https, 50);
    let before = resume_all(&client, https, &mut sessions);
    assert!(before >= 49, "stock resumes by tickets before the reload: {before}");
    // SAFETY: signals the test's own child process by pid.
    assert_eq!(unsafe { libc::kill(node.pid, libc::SIGHUP) }, 0);
    wait_reloaded(&node, https, 1, "binary reloading uWSGI");
    let after = resume_all(&client, https, &mut sessions);
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
    let mut sessions = make_sessions(&client, https, 20);
    // The reload reads the ini again: the cache is now smaller.
    std::fs::write(&node.ini_path, ini(10000)).unwrap();
    std::fs::write(dir.join("master.fifo"), "r").unwrap();
    wait_reloaded(&node, https, 1, "was discarded");
    let log = node.log();
    assert_eq!(log.matches("was discarded").count(), 1, "{log}");
    assert!(
        log.contains("made for items=20000, keysize=2048, blocksize=4096"),
        "{log}"
    );
    assert_eq!(resume_all(&client, https, &mut sessions), 0);
    assert_eq!(metric(stats_port, "sslcache.default.restore_discarded"), 1);
    // And it caches again.
    assert!(
        Client::new(Proto::Tls12NoTickets)
            .reconnects(https, 10, &[])
            .resumption_rate()
            >= 0.9
    );
}
