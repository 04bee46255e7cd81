//! Tests of the Redis settings: URLs checked (passwords never shown), the
//! `rediss://` CA and client certificate files read and refused in one line
//! naming the option, and `#insecure` warned about at startup.

use super::*;

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
