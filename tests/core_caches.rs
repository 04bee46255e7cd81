//! The session cache as the rest of uWSGI sees it: the stats server lists
//! it, the core's cache API (here through the Python plugin) finds it and
//! must not crash on it, and every other cache stays the core's.

use sslcache_testkit::*;
use std::io::{Read, Write};
use std::time::Duration;

const APP: &str = r#"
import uwsgi

def application(env, start_response):
    name = env.get('QUERY_STRING') or None
    out = []
    def step(label, f):
        try:
            out.append('%s=%r' % (label, f()))
        except Exception as e:
            out.append('%s=error:%s' % (label, type(e).__name__))
    step('get', lambda: uwsgi.cache_get('k', name))
    step('set', lambda: uwsgi.cache_set('k', b'v', 0, name))
    step('update', lambda: uwsgi.cache_update('k', b'v2', 0, name))
    step('exists', lambda: uwsgi.cache_exists('k', name))
    step('inc', lambda: uwsgi.cache_inc('n', 1, 0, name))
    step('num', lambda: uwsgi.cache_num('n', name))
    step('keys', lambda: uwsgi.cache_keys(name))
    step('del', lambda: uwsgi.cache_del('k', name))
    step('clear', lambda: uwsgi.cache_clear(name))
    step('get_after', lambda: uwsgi.cache_get('k', name))
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [' '.join(out).encode()]
"#;

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

fn python_plugin_available() -> bool {
    let found = std::path::Path::new("/usr/lib/uwsgi/plugins/python3_plugin.so").exists();
    assert!(
        found || !require_all(),
        "python3 plugin missing: apt-get install uwsgi-plugin-python3"
    );
    found
}

#[test]
fn core_cache_api_on_the_session_cache_is_safe() {
    if !python_plugin_available() {
        eprintln!("skipped: no uwsgi-plugin-python3");
        return;
    }
    let dir = test_dir("core-api");
    std::fs::write(dir.join("app.py"), APP).unwrap();
    let (https, stats_port, web) = (free_port(), free_port(), free_port());
    let cache_lines =
        "cache2 = name=ssl,items=300,keysize=64,blocksize=4096\ncache2 = name=other,items=10,blocksize=64\n\
                       ssl-sessions-use-cache = ssl";
    let ini = seed_setup1(&plugin_dir(), https, stats_port, 2, cache_lines)
        + &format!("plugins = python3\nhttp-socket = 127.0.0.1:{web}\nwsgi-file = app.py\nprocesses = 1\n");
    let node = Uwsgi::start(&dir, "node", &ini, &[https, web, stats_port]);

    // Sessions go in, through the routers.
    let out = Client::new(Proto::Tls12NoTickets).reconnects(https, 20, &[]);
    out.assert_resumed("", "");

    // The core's API finds the session cache empty and cannot change it.
    let ssl = http_get(web, "/?ssl");
    assert!(ssl.contains("200 OK"), "{ssl}\n{}", node.log());
    for expected in [
        "get=None",
        "set=None",
        "update=None",
        "exists=None",
        "inc=None",
        "keys=[]",
        "del=None",
        "clear=True",
        "get_after=None",
    ] {
        assert!(ssl.contains(expected), "{expected} missing in {ssl}");
    }
    // Another cache is the core's, fully working.
    let other = http_get(web, "/?other");
    for expected in [
        "get=None",
        "set=True",
        "exists=True",
        "inc=True",
        "num=1",
        "del=True",
        "get_after=None",
    ] {
        assert!(other.contains(expected), "{expected} missing in {other}");
    }
    assert!(
        other.contains("keys=[b'k', b'n']") || other.contains("keys=[b'n', b'k']"),
        "{other}"
    );

    // Sessions survived all of that, the stats show both caches, and no
    // process died.
    let out = Client::new(Proto::Tls12NoTickets).reconnects(https, 20, &[]);
    out.assert_resumed("", "");
    let all = stats(stats_port);
    let names: Vec<&str> = all["caches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ssl", "other"]);
    let ssl_stats = cache_stats(stats_port, "ssl");
    assert_eq!(ssl_stats["hash"], "siphash");
    assert!(ssl_stats["items"].as_u64().unwrap() >= 1, "{ssl_stats}");
    let log = node.log();
    assert!(
        !log.contains("DAMN !") && !log.contains("killed by signal"),
        "a process died:\n{log}"
    );
}

/// Stats counters track the store across router processes: hits for each
/// resumption, misses for unknown sessions, items for what is stored,
/// full for evictions.
#[test]
fn stats_count_hits_misses_items_and_evictions() {
    let _heavy = heavy();
    let dir = test_dir("stats");
    let (https, stats_port) = (free_port(), free_port());
    let lines = "cache2 = name=small,items=5,keysize=64,blocksize=4096\nssl-sessions-use-cache = small";
    let _node = Uwsgi::start(
        &dir,
        "node",
        &seed_setup1(&plugin_dir(), https, stats_port, 4, lines),
        &[https, stats_port],
    );

    // 10 fresh TLS 1.2 clients: 10 sessions in a store of 5.
    let mut sessions = Vec::new();
    for _ in 0..10 {
        let c = Client::new(Proto::Tls12NoTickets).connect(https, None, &[]).unwrap();
        sessions.push(c.session.unwrap());
    }
    let s = cache_stats(stats_port, "small");
    assert_eq!(s["items"], 5, "{s}");
    assert_eq!(s["full"], 5, "{s}");
    assert_eq!(s["max_items"], 5);

    // Newest first: the 5 newest resume (hits), the 5 oldest were evicted
    // (misses; their new sessions then evict the ones just used).
    let client = Client::new(Proto::Tls12NoTickets);
    let resumed: Vec<bool> = sessions
        .iter()
        .rev()
        .map(|sess| client.connect(https, Some(sess), &[]).unwrap().resumed)
        .collect();
    assert_eq!(
        resumed,
        [true, true, true, true, true, false, false, false, false, false]
    );
    let s = cache_stats(stats_port, "small");
    assert_eq!(s["hits"], 5, "{s}");
    assert_eq!(s["miss"], 5, "{s}");
    assert!(s["last_modified_at"].as_i64().unwrap() > 1_600_000_000, "{s}");
}
