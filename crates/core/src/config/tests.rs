//! Tests of [`resolve`](super::resolve): each option's values, defaults,
//! warnings and one-line errors, from [`RawOptions`](super::RawOptions) as
//! the host gathers them; the boolean words and `cache2` lists as uWSGI
//! reads them. The Redis settings' tests are in `tests/redis.rs`.

use std::net::{Ipv4Addr, SocketAddr};

use super::*;

mod redis;

fn raw() -> RawOptions {
    RawOptions {
        use_cache: Some("true".into()),
        cache: Some("20000".into()),
        cache_blocksize: Some("4096".into()),
        ..RawOptions::default()
    }
}

#[test]
fn seed_setup_one() {
    let mut r = raw();
    r.timeout = Some("300".into());
    r.https_session_context = Some("foobar".into());
    let s = resolve(&r).unwrap().unwrap();
    assert_eq!(s.cache.name, "default");
    assert_eq!(s.cache.origin, CacheOrigin::Default);
    assert_eq!((s.cache.items, s.cache.keysize, s.cache.blocksize), (20000, 2048, 4096));
    assert_eq!(s.timeout, 300);
    assert_eq!(s.https_session_context.as_deref(), Some("foobar"));
    assert!(s.warnings.is_empty());
}

#[test]
fn not_enabled_without_use_cache() {
    let mut r = raw();
    r.use_cache = None;
    assert_eq!(resolve(&r).unwrap(), None);
}

#[test]
fn true_like_values_select_the_default_cache() {
    for v in ["", "true", "TRUE", "1", "yes", "on"] {
        let mut r = raw();
        r.use_cache = Some(v.into());
        assert_eq!(resolve(&r).unwrap().unwrap().cache.name, "default", "{v:?}");
    }
}

#[test]
fn seed_named_cache() {
    let mut r = raw();
    r.cache = None;
    r.use_cache = Some("ssl".into());
    r.cache2 = vec![
        "name=other,items=10".into(),
        "name=ssl,items=20000,keysize=128,blocksize=4096,node=127.0.0.1:4242,udp=127.0.0.1:4141".into(),
    ];
    let s = resolve(&r).unwrap().unwrap();
    let c = s.cache;
    assert_eq!(c.name, "ssl");
    assert_eq!(c.origin, CacheOrigin::Cache2 { index: 1 });
    assert_eq!((c.items, c.keysize, c.blocksize), (20000, 128, 4096));
    assert_eq!(c.nodes, vec!["127.0.0.1:4242"]);
    assert_eq!(c.udp_servers, vec!["127.0.0.1:4141"]);
}

#[test]
fn every_stock_spelling_of_nodes_and_servers() {
    let mut r = raw();
    r.use_cache = Some("s".into());
    r.cache2 = vec![
        "name=s,maxitems=5,nodes=127.0.0.1:1;127.0.0.2:2,udp_servers=127.0.0.3:3,udpserver=127.0.0.4:4,lru=1".into(),
    ];
    let c = resolve(&r).unwrap().unwrap().cache;
    assert_eq!(c.items, 5);
    assert_eq!(c.nodes, vec!["127.0.0.1:1", "127.0.0.2:2"]);
    assert_eq!(c.udp_servers, vec!["127.0.0.3:3", "127.0.0.4:4"]);
    assert!(c.ignored_keys.is_empty());
}

#[test]
fn store_files_and_their_sync() {
    let mut r = raw();
    r.use_cache = Some("s".into());
    r.cache2 = vec!["name=s,items=5,store=/var/lib/x.store,store_sync=30".into()];
    let c = resolve(&r).unwrap().unwrap().cache;
    assert_eq!(c.store, Some(("cache2 \"s\" store".into(), "/var/lib/x.store".into())));
    assert_eq!(c.store_sync, Some(30));
    let mut r = raw();
    r.cache_store = Some("/x".into());
    r.cache_store_sync = Some("0".into());
    assert!(resolve(&r)
        .unwrap_err()
        .0
        .contains("cache-store-sync must be greater than 0"));
    r.cache_store_sync = None;
    let c = resolve(&r).unwrap().unwrap().cache;
    assert_eq!(
        (c.store, c.store_sync),
        (Some(("cache-store".into(), "/x".into())), None)
    );
}

#[test]
fn meaningless_keys_warn_once() {
    let mut r = raw();
    r.use_cache = Some("s".into());
    r.cache2 = vec!["name=s,items=5,bitmap=1,store_delete=1,hash=murmur2,frobnicate=2".into()];
    let s = resolve(&r).unwrap().unwrap();
    assert_eq!(s.warnings.len(), 1);
    assert!(
        s.warnings[0].contains("bitmap, store_delete, hash, frobnicate (unknown)"),
        "{}",
        s.warnings[0]
    );
}

#[test]
fn true_without_default_takes_first_cache2() {
    let mut r = raw();
    r.cache = None;
    r.cache2 = vec!["name=first,items=7".into(), "name=second,items=9".into()];
    assert_eq!(resolve(&r).unwrap().unwrap().cache.name, "first");
}

#[test]
fn clear_errors() {
    type Mutation = Box<dyn Fn(&mut RawOptions)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|r| r.use_cache = Some("nope".into())),
            "no cache named \"nope\" is defined (defined: default)",
        ),
        (
            Box::new(|r| {
                r.cache = None;
            }),
            "none is defined",
        ),
        (
            Box::new(|r| {
                r.cache = None;
                r.use_cache = Some("x".into());
            }),
            "no cache is defined at all",
        ),
        (
            Box::new(|r| r.cache = Some("lots".into())),
            "cache = \"lots\" is not a number",
        ),
        (Box::new(|r| r.cache = Some("0".into())), "cache must be greater than 0"),
        (
            Box::new(|r| r.cache_blocksize = Some("4k".into())),
            "cache-blocksize = \"4k\" is not a number",
        ),
        (
            Box::new(|r| r.timeout = Some("-3".into())),
            "ssl-sessions-timeout = \"-3\" is not a number",
        ),
        (
            Box::new(|r| r.timeout = Some("0".into())),
            "ssl-sessions-timeout must be greater than 0",
        ),
        (
            Box::new(|r| r.https_session_context = Some("x".repeat(33))),
            "https-session-context = xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx is 33 bytes long",
        ),
        (
            Box::new(|r| {
                r.use_cache = Some("s".into());
                r.cache2 = vec!["name=s,items=10,keysize=16".into()];
            }),
            "keysize = 16 is too small for a TLS session id",
        ),
        (
            Box::new(|r| {
                r.use_cache = Some("s".into());
                r.cache2 = vec!["name=s,blocksize=4096".into()];
            }),
            "cache2 \"s\" needs items=N",
        ),
        (
            Box::new(|r| {
                r.use_cache = Some("s".into());
                r.cache2 = vec!["name=s,items=ten".into()];
            }),
            "cache2 \"s\" items = \"ten\" is not a number",
        ),
    ];
    for (mutate, expected) in cases {
        let mut r = raw();
        mutate(&mut r);
        let e = resolve(&r).unwrap_err();
        assert!(e.0.contains(expected), "{:?} does not contain {expected:?}", e.0);
    }
}

#[test]
fn replication_addresses_and_multicast() {
    let mut r = raw();
    r.cache_udp_server = vec!["225.1.1.1:7171".into()];
    r.cache_udp_node = vec!["225.1.1.1:7171".into(), "127.0.0.2:7171".into()];
    r.https_session_context = Some("foobar".into());
    r.multicast_if = Some("127.0.0.1".into());
    r.multicast_ttl = Some("3".into());
    r.multicast_loop = Some("0".into());
    let s = resolve(&r).unwrap().unwrap();
    let rep = s.replication;
    assert_eq!(rep.servers, vec!["225.1.1.1:7171".parse::<SocketAddr>().unwrap()]);
    assert_eq!(rep.nodes.len(), 2);
    assert_eq!(rep.multicast.interface, Some(Ipv4Addr::LOCALHOST));
    assert_eq!((rep.multicast.ttl, rep.multicast.loopback), (3, false));
    assert!(s.warnings.is_empty());
}

#[test]
fn replication_errors_name_the_option() {
    let mut r = raw();
    r.cache_udp_node = vec!["nowhere".into()];
    assert!(resolve(&r)
        .unwrap_err()
        .0
        .starts_with("cache-udp-node = nowhere: expected host:port"));
    let mut r = raw();
    r.use_cache = Some("s".into());
    r.cache2 = vec!["name=s,items=5,udp=127.0.0.1:99999".into()];
    assert!(resolve(&r)
        .unwrap_err()
        .0
        .starts_with("cache2 \"s\" udp = 127.0.0.1:99999:"));
    let mut r = raw();
    r.multicast_if = Some("eth0".into());
    r.cache_udp_node = vec!["225.1.1.1:7171".into()];
    assert!(resolve(&r).unwrap_err().0.contains("ssl-sessions-multicast-if = eth0"));
}

#[test]
fn key_files_and_policy() {
    let mut r = raw();
    r.cache_udp_key = Some("/etc/keys".into());
    r.accept_plain = Some("true".into());
    r.max_skew = Some("5".into());
    let rep = resolve(&r).unwrap().unwrap().replication;
    assert_eq!(rep.key_file, Some(("cache-udp-key".into(), "/etc/keys".into())));
    assert!(rep.accept_plain);
    assert_eq!(rep.max_skew, 5);
    assert!(rep.peer_sync);
    let mut r = raw();
    r.use_cache = Some("s".into());
    r.cache2 = vec!["name=s,items=5,udp_key=/k".into()];
    let rep = resolve(&r).unwrap().unwrap().replication;
    assert_eq!(rep.key_file, Some(("cache2 \"s\" udp_key".into(), "/k".into())));
    assert!(!rep.accept_plain);
    assert_eq!(rep.max_skew, DEFAULT_MAX_SKEW);
    let mut r = raw();
    r.accept_plain = Some("maybe".into());
    assert!(resolve(&r).unwrap_err().0.contains("ssl-sessions-accept-plain = maybe"));
    let mut r = raw();
    r.peer_sync = Some("off".into());
    assert!(!resolve(&r).unwrap().unwrap().replication.peer_sync);
    r.peer_sync = Some("sometimes".into());
    assert!(resolve(&r)
        .unwrap_err()
        .0
        .contains("ssl-sessions-peer-sync = sometimes"));
}

#[test]
fn quickack_on_unless_turned_off() {
    let mut r = raw();
    assert!(resolve(&r).unwrap().unwrap().quickack);
    r.quickack = Some("no".into());
    assert!(!resolve(&r).unwrap().unwrap().quickack);
    r.quickack = Some("fast".into());
    let e = resolve(&r).unwrap_err().0;
    assert!(
        e.contains("ssl-sessions-quickack = fast: expected true or false"),
        "{e}"
    );
}

#[test]
fn fresh_wait_from_zero_to_the_budget() {
    let mut r = raw();
    assert_eq!(resolve(&r).unwrap().unwrap().fresh_wait_ms, 10);
    r.fresh_wait = Some("0".into());
    assert_eq!(resolve(&r).unwrap().unwrap().fresh_wait_ms, 0);
    r.fresh_wait = Some(" 25 ".into());
    assert_eq!(resolve(&r).unwrap().unwrap().fresh_wait_ms, 25);
    r.fresh_wait = Some("50".into());
    assert_eq!(resolve(&r).unwrap().unwrap().fresh_wait_ms, 50);
    for (value, says) in [
        ("51", "ssl-sessions-fresh-wait = 51 is too large (at most 50)"),
        ("4ms", "ssl-sessions-fresh-wait = \"4ms\" is not a number"),
        ("-1", "ssl-sessions-fresh-wait = \"-1\" is not a number"),
    ] {
        r.fresh_wait = Some(value.into());
        let e = resolve(&r).unwrap_err().0;
        assert!(e.contains(says), "{e}");
    }
}

#[test]
fn tls13_tickets_from_zero_to_eight() {
    let mut r = raw();
    assert_eq!(resolve(&r).unwrap().unwrap().tls13_tickets, DEFAULT_TLS13_TICKETS);
    for (v, n) in [("0", 0), ("1", 1), (" 8 ", 8)] {
        r.tls13_tickets = Some(v.into());
        assert_eq!(resolve(&r).unwrap().unwrap().tls13_tickets, n);
    }
    for v in ["9", "-1", "two", "", "256"] {
        r.tls13_tickets = Some(v.into());
        let e = resolve(&r).unwrap_err().0;
        assert!(e.contains("expected a number from 0 to 8"), "{v}: {e}");
    }
}

#[test]
fn warns_when_nodes_cannot_share_sessions() {
    let mut r = raw();
    r.cache_udp_node = vec!["127.0.0.2:7171".into()];
    let s = resolve(&r).unwrap().unwrap();
    assert!(
        s.warnings[0].contains("https-session-context is not set"),
        "{:?}",
        s.warnings
    );
}

#[test]
fn one_boolean_vocabulary() {
    let words = [
        ("", true),
        ("1", true),
        ("TRUE", true),
        ("yes", true),
        ("On", true),
        ("0", false),
        ("false", false),
        ("NO", false),
        ("off", false),
    ];
    for (word, value) in words {
        let mut r = raw();
        r.accept_plain = Some(word.into());
        r.ssl_verbose = Some(word.into());
        let s = resolve(&r).unwrap().unwrap();
        assert_eq!((s.replication.accept_plain, s.verbose), (value, value), "{word:?}");
    }
    // sslcache's own flags refuse other words; uWSGI's own read them
    // as uWSGI does (true).
    let mut r = raw();
    r.accept_plain = Some("flase".into());
    let e = resolve(&r).unwrap_err().0;
    assert!(
        e.starts_with("ssl-sessions-accept-plain = flase: expected true or false"),
        "{e}"
    );
    let mut r = raw();
    r.ssl_verbose = Some("2".into());
    assert!(resolve(&r).unwrap().unwrap().verbose);
    // multicast-loop is a number to uWSGI.
    for (v, on) in [("0", false), ("1", true), ("2", true)] {
        let mut r = raw();
        r.multicast_loop = Some(v.into());
        assert_eq!(resolve(&r).unwrap().unwrap().replication.multicast.loopback, on);
    }
    let mut r = raw();
    r.multicast_loop = Some("true".into());
    assert!(resolve(&r)
        .unwrap_err()
        .0
        .contains("multicast-loop = true: uWSGI reads a number"));
}

#[test]
fn kvlist_escapes_like_uwsgi() {
    let kv = parse_kvlist(r"name=a\,b,items=3,items=4");
    assert_eq!(kv, vec![("name".into(), "a,b".into()), ("items".into(), "4".into())]);
}

#[test]
fn small_blocksize_warns() {
    let mut r = raw();
    r.cache_blocksize = Some("512".into());
    let s = resolve(&r).unwrap().unwrap();
    assert!(s.warnings[0].contains("blocksize = 512 is small"));
}

#[test]
fn store_sizes_are_bounded_naming_the_setting() {
    let error = |r: &RawOptions| resolve(r).unwrap_err().0;
    // The review's case, and the bound itself.
    let mut r = raw();
    r.cache = Some("1073741823".into());
    assert_eq!(error(&r), "cache = 1073741823 is too large (at most 10000000 sessions)");
    r.cache = Some("10000001".into());
    assert_eq!(error(&r), "cache = 10000001 is too large (at most 10000000 sessions)");
    // Ten million sessions at the default blocksize: accepted.
    r.cache = Some("10000000".into());
    r.cache_blocksize = None;
    assert_eq!(resolve(&r).unwrap().unwrap().cache.items, 10_000_000);
    // More than a terabyte reserved: refused, naming both settings.
    r.cache_blocksize = Some("131072".into());
    let e = error(&r);
    assert!(
        e.starts_with("cache = 10000000 with cache-blocksize = 131072 would reserve ")
            && e.ends_with("GiB for the store (at most 1024 GiB): lower either"),
        "{e}"
    );
    let mut r = raw();
    r.use_cache = Some("ssl".into());
    r.cache2 = vec!["name=ssl,items=20000000".into()];
    assert_eq!(
        error(&r),
        "cache2 \"ssl\" items = 20000000 is too large (at most 10000000 sessions)"
    );
    r.cache2 = vec!["name=ssl,items=100,blocksize=2147483647".into()];
    assert!(
        error(&r).starts_with("cache2 \"ssl\" items = 100 with cache2 \"ssl\" blocksize = 2147483647: "),
        "{}",
        error(&r)
    );
    // Numbers beyond any bound still parse to this one message.
    r.cache2 = vec!["name=ssl,items=99999999999".into()];
    assert!(error(&r).contains("is too large (at most 10000000 sessions)"));
}

#[test]
fn cluster_tickets_need_the_cluster_key() {
    let mut r = raw();
    assert_eq!(resolve(&r).unwrap().unwrap().tickets, None);
    r.tickets = Some("off".into());
    assert_eq!(resolve(&r).unwrap().unwrap().tickets, None);
    // Plain mode: refused with one line naming both options.
    r.tickets = Some("cluster".into());
    let e = resolve(&r).unwrap_err().0;
    assert!(
        e.starts_with("ssl-sessions-tickets = cluster needs a cluster key (cache-udp-key)"),
        "{e}"
    );
    assert!(!e.contains('\n'));
    r.cache_udp_key = Some("/etc/keys".into());
    let s = resolve(&r).unwrap().unwrap();
    assert_eq!(
        s.tickets,
        Some(Tickets {
            rotation: DEFAULT_TICKET_ROTATION,
            lifetime: DEFAULT_TIMEOUT as u64
        })
    );
    r.tickets_rotation = Some("5".into());
    r.timeout = Some("700000".into());
    let s = resolve(&r).unwrap().unwrap();
    assert_eq!(
        s.tickets,
        Some(Tickets {
            rotation: 5,
            lifetime: MAX_TICKET_LIFETIME
        })
    );
    assert!(
        s.warnings.iter().any(|w| w.contains("at most 604800 seconds")),
        "{:?}",
        s.warnings
    );
    for (v, expected) in [
        ("0", "ssl-sessions-tickets-rotation"),
        ("604801", "ssl-sessions-tickets-rotation"),
        ("hourly", "ssl-sessions-tickets-rotation"),
    ] {
        r.tickets_rotation = Some(v.into());
        let e = resolve(&r).unwrap_err().0;
        assert!(e.contains(expected), "{v}: {e}");
    }
    r.tickets_rotation = None;
    r.tickets = Some("on".into());
    assert!(resolve(&r)
        .unwrap_err()
        .0
        .contains("ssl-sessions-tickets = on: expected off or cluster"));
    // A cache2's key counts, and is named in the error.
    let mut r = raw();
    r.use_cache = Some("s".into());
    r.tickets = Some("cluster".into());
    r.cache2 = vec!["name=s,items=5".into()];
    assert!(resolve(&r).unwrap_err().0.contains("(cache2 \"s\" udp_key)"));
    r.cache2 = vec!["name=s,items=5,udp_key=/k".into()];
    assert!(resolve(&r).unwrap().unwrap().tickets.is_some());
    // The rotation alone changes nothing, and says so.
    let mut r = raw();
    r.tickets_rotation = Some("60".into());
    let s = resolve(&r).unwrap().unwrap();
    assert!(s.tickets.is_none());
    assert!(s.warnings.iter().any(|w| w.contains("changes nothing")));
}
