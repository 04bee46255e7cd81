//! Tests of [`resolve`](super::resolve): each option's values, defaults,
//! warnings and one-line errors, from [`RawOptions`](super::RawOptions) as
//! the host gathers them; the boolean words and `cache2` lists as uWSGI
//! reads them.

use std::net::{Ipv4Addr, SocketAddr};

use super::*;

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
fn redis_urls() {
    let mut r = raw();
    r.redis = vec![
        "redis://127.0.0.1:6379".into(),
        "rediss://u:secret@[::1]:7000/2".into(),
        "rediss://h:7001/#insecure".into(),
    ];
    let rep = resolve(&r).unwrap().unwrap().replication;
    assert!(rep.is_enabled());
    assert_eq!(rep.redis[0].shown, "redis://127.0.0.1:6379");
    assert_eq!(rep.redis[1].shown, "rediss://[::1]:7000");
    for (bad, why) in [
        ("http://127.0.0.1:6379", "not a redis:// or rediss:// URL"),
        ("redis://:6379", "no host"),
        ("redis://h:99999", "the port is not a number"),
        ("redis://u:secret@h:1/x", "the database is not a number"),
    ] {
        r.redis = vec![bad.into()];
        let e = resolve(&r).unwrap_err().0;
        assert!(e.starts_with("ssl-sessions-redis = ") && e.contains(why), "{bad}: {e}");
        assert!(!e.contains("secret"), "{e}");
    }
    let mut r = raw();
    r.use_cache = Some("s".into());
    r.cache2 = vec!["name=s,items=5,redis=redis://127.0.0.1:7000,redis_cluster=redis://h:1;redis://h:2".into()];
    let rep = resolve(&r).unwrap().unwrap().replication;
    assert_eq!(rep.redis[0].url, "redis://127.0.0.1:7000");
    assert_eq!(rep.redis_cluster.len(), 2);
    r.cache2 = vec!["name=s,items=5,redis_cluster=redis://h:0".into()];
    assert!(resolve(&r)
        .unwrap_err()
        .0
        .starts_with("cache2 \"s\" redis_cluster = redis://h:0"));
}

/// A directory of TLS files for the Redis TLS tests: a CA, a client
/// certificate it signed and that certificate's key (mode 0600), and
/// another key.
struct TlsFiles {
    dir: std::path::PathBuf,
}

impl TlsFiles {
    fn new(name: &str) -> TlsFiles {
        use openssl::asn1::Asn1Time;
        use openssl::hash::MessageDigest;
        use openssl::pkey::PKey;
        use openssl::rsa::Rsa;
        use openssl::x509::{X509Builder, X509NameBuilder};
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sslcache-redis-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cert = |cn: &str, key: &PKey<openssl::pkey::Private>, issuer: Option<&PKey<openssl::pkey::Private>>| {
            let mut name = X509NameBuilder::new().unwrap();
            name.append_entry_by_text("CN", cn).unwrap();
            let name = name.build();
            let mut b = X509Builder::new().unwrap();
            b.set_version(2).unwrap();
            b.set_subject_name(&name).unwrap();
            b.set_issuer_name(&name).unwrap();
            b.set_pubkey(key).unwrap();
            b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
            b.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
            b.sign(issuer.unwrap_or(key), MessageDigest::sha256()).unwrap();
            b.build().to_pem().unwrap()
        };
        let ca_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let client_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let other_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), cert("test CA", &ca_key, None)).unwrap();
        std::fs::write(dir.join("client.pem"), cert("client", &client_key, Some(&ca_key))).unwrap();
        // The traditional (PKCS#1) form: re-encoded as PKCS#8.
        std::fs::write(
            dir.join("client.key"),
            client_key.rsa().unwrap().private_key_to_pem().unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join("other.key"), other_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        std::fs::write(dir.join("garbage.pem"), "not a certificate\n").unwrap();
        for key in ["client.key", "other.key"] {
            std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        TlsFiles { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn redis_tls_files_are_read_and_checked() {
    let f = TlsFiles::new("ok");
    let mut r = raw();
    r.redis = vec!["rediss://127.0.0.1:6380".into()];
    r.redis_ca = Some(f.path("ca.pem"));
    let rep = resolve(&r).unwrap().unwrap().replication;
    let ca = rep.redis_tls.ca.as_ref().unwrap();
    assert_eq!(ca.shown(), format!("ssl-sessions-redis-ca = {}", f.path("ca.pem")));
    assert!(ca.pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
    assert!(rep.redis_tls.client.is_none());
    r.redis_cert = Some(f.path("client.pem"));
    r.redis_key = Some(f.path("client.key"));
    let rep = resolve(&r).unwrap().unwrap().replication;
    let (cert, key) = rep.redis_tls.client.as_ref().unwrap();
    assert_eq!(cert.option, "ssl-sessions-redis-cert");
    assert!(key.pem.starts_with(b"-----BEGIN PRIVATE KEY-----"));
    // The key never shows in the settings' Debug.
    assert!(!format!("{rep:?}").contains("PRIVATE"));
    // cache2 names its keys.
    let mut r = raw();
    r.use_cache = Some("s".into());
    r.cache2 = vec![format!(
        "name=s,items=5,redis=rediss://h:1,redis_ca={},redis_cert={},redis_key={}",
        f.path("ca.pem"),
        f.path("client.pem"),
        f.path("client.key")
    )];
    let s = resolve(&r).unwrap().unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let tls = s.replication.redis_tls;
    assert_eq!(tls.ca.unwrap().option, "cache2 \"s\" redis_ca");
    assert_eq!(tls.client.unwrap().1.option, "cache2 \"s\" redis_key");
}

#[test]
fn redis_tls_errors_are_one_line_naming_the_option() {
    use std::os::unix::fs::PermissionsExt;
    let f = TlsFiles::new("errors");
    let missing = f.path("missing.pem");
    std::fs::set_permissions(f.path("other.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(f.path("client.key"), f.path("link.key")).unwrap();
    type Mutation<'a> = Box<dyn Fn(&mut RawOptions) + 'a>;
    let cases: Vec<(Mutation, String)> = vec![
        (
            Box::new(|r| r.redis_ca = Some(f.path("missing.pem"))),
            format!("ssl-sessions-redis-ca = {missing}: cannot read the CA file: No such file or directory"),
        ),
        (
            Box::new(|r| r.redis_ca = Some(f.path("garbage.pem"))),
            format!(
                "ssl-sessions-redis-ca = {}: the CA file holds no PEM certificate",
                f.path("garbage.pem")
            ),
        ),
        (
            Box::new(|r| r.redis_ca = Some(f.path(""))),
            format!("ssl-sessions-redis-ca = {}: not a regular file", f.path("")),
        ),
        (
            Box::new(|r| r.redis_cert = Some(f.path("client.pem"))),
            "ssl-sessions-redis-cert needs ssl-sessions-redis-key".into(),
        ),
        (
            Box::new(|r| r.redis_key = Some(f.path("client.key"))),
            "ssl-sessions-redis-key needs ssl-sessions-redis-cert".into(),
        ),
        (
            Box::new(|r| {
                r.redis_cert = Some(f.path("client.pem"));
                r.redis_key = Some(f.path("ca.pem"));
            }),
            format!(
                "ssl-sessions-redis-key = {}: the key file is readable or writable by group or others",
                f.path("ca.pem")
            ),
        ),
        (
            Box::new(|r| {
                r.redis_cert = Some(f.path("client.pem"));
                r.redis_key = Some(f.path("other.key"));
            }),
            format!(
                "ssl-sessions-redis-key = {}: the key file is readable or writable by group or others \
                 (mode 0644): chmod 600 it",
                f.path("other.key")
            ),
        ),
        (
            Box::new(|r| {
                r.redis_cert = Some(f.path("client.pem"));
                r.redis_key = Some(f.path("link.key"));
            }),
            format!(
                "ssl-sessions-redis-key = {}: the key file is a symbolic link",
                f.path("link.key")
            ),
        ),
        (
            Box::new(|r| {
                r.redis_cert = Some(f.path("garbage.pem"));
                r.redis_key = Some(f.path("client.key"));
            }),
            format!(
                "ssl-sessions-redis-cert = {}: the certificate file holds no PEM certificate",
                f.path("garbage.pem")
            ),
        ),
        (
            Box::new(|r| r.redis = vec!["redis://127.0.0.1:6379".into()]),
            "ssl-sessions-redis-ca is given, but no ssl-sessions-redis is a rediss:// URL".into(),
        ),
        (
            Box::new(|r| r.redis = vec!["rediss://127.0.0.1:6379/#insecure".into()]),
            "ssl-sessions-redis-ca is given, but ssl-sessions-redis = rediss://127.0.0.1:6379/#insecure \
             turns certificate verification off"
                .into(),
        ),
        (
            Box::new(|r| {
                r.redis = vec![];
                r.redis_cluster = vec!["rediss://127.0.0.1:7000".into()];
            }),
            "ssl-sessions-redis-ca cannot apply to ssl-sessions-redis-cluster = rediss://127.0.0.1:7000: the \
             Redis Cluster client takes no CA or client certificate"
                .into(),
        ),
    ];
    for (mutate, expected) in cases {
        let mut r = raw();
        r.redis = vec!["rediss://127.0.0.1:6379".into()];
        r.redis_ca = Some(f.path("ca.pem"));
        mutate(&mut r);
        let e = resolve(&r).unwrap_err().0;
        assert!(e.starts_with(&expected), "{e:?} does not start with {expected:?}");
        assert!(!e.contains('\n'), "{e:?}");
    }
    // The key of another certificate.
    let mut r = raw();
    r.redis = vec!["rediss://127.0.0.1:6379".into()];
    r.redis_cert = Some(f.path("client.pem"));
    std::fs::set_permissions(f.path("other.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    r.redis_key = Some(f.path("other.key"));
    let e = resolve(&r).unwrap_err().0;
    assert_eq!(
        e,
        format!(
            "ssl-sessions-redis-key = {}: this key is not the key of the certificate in \
             ssl-sessions-redis-cert = {}",
            f.path("other.key"),
            f.path("client.pem")
        )
    );
    // A cache2 names its keys; a bad path there too.
    let mut r = raw();
    r.use_cache = Some("s".into());
    r.cache2 = vec![format!("name=s,items=5,redis=rediss://h:1,redis_ca={missing}")];
    let e = resolve(&r).unwrap_err().0;
    assert!(
        e.starts_with(&format!("cache2 \"s\" redis_ca = {missing}: cannot read the CA file")),
        "{e}"
    );
}

#[test]
fn insecure_rediss_warns_at_startup() {
    let mut r = raw();
    r.redis = vec![
        "rediss://127.0.0.1:6380/#insecure".into(),
        "rediss://127.0.0.1:6381".into(),
    ];
    let s = resolve(&r).unwrap().unwrap();
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(
        s.warnings[0].starts_with(
            "ssl-sessions-redis = rediss://127.0.0.1:6380/#insecure: the Redis server's certificate is not \
             verified"
        ) && s.warnings[0].ends_with("with ssl-sessions-redis-ca instead"),
        "{}",
        s.warnings[0]
    );
    let mut r = raw();
    r.use_cache = Some("s".into());
    r.cache2 = vec!["name=s,items=5,redis_cluster=rediss://h:1/#insecure".into()];
    let s = resolve(&r).unwrap().unwrap();
    assert!(
        s.warnings[0].starts_with("cache2 \"s\" redis_cluster = rediss://h:1/#insecure: "),
        "{:?}",
        s.warnings
    );
    // Not for a plain URL that happens to end so.
    let mut r = raw();
    r.redis = vec!["redis://127.0.0.1:6380/#insecure".into()];
    assert!(resolve(&r).unwrap().unwrap().warnings.is_empty());
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
