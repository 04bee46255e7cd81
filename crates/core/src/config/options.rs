//! The option table: every option sslcache reads, in one place.
//!
//! From this one table follow: the options the plugin registers with uWSGI
//! (`Owner::Plugin`; the host builds uWSGI's `uwsgi_option` array from it),
//! the gathering of values from uWSGI's exported options into
//! [`RawOptions`], and the README's option table (a test fails when they
//! disagree). Adding an option: one entry here, then its meaning in
//! [`resolve`](super::resolve).

use std::ffi::CStr;

/// How uWSGI takes an option's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    Required,
    /// May be given as a bare flag (the value is then empty).
    Optional,
}

/// Who defines an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Registered by the plugin, under every one of its names.
    Plugin(Arg),
    /// uWSGI's own; the plugin reads its value.
    Uwsgi,
}

/// One option, under all of its names.
#[derive(Debug)]
pub struct OptionSpec {
    /// The [`RawOptions`] field that receives it.
    pub field: &'static str,
    /// The documented name first, then aliases.
    pub names: &'static [&'static CStr],
    pub owner: Owner,
    /// uWSGI's `--help` line (plugin options).
    pub help: &'static CStr,
    /// The README's description.
    pub readme: &'static str,
}

macro_rules! options {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $kind:ident, $owner:expr, [$($name:literal),+ $(,)?],
        help: $help:literal,
        readme: $readme:literal;
    )*) => {
        /// The option strings as uWSGI holds them: `one` options keep the
        /// last value given (as uWSGI's own string options), `list` options
        /// every value in order; `None` (or empty) = not given. A flag given
        /// without a value is `Some("")`.
        #[derive(Debug, Default, Clone)]
        pub struct RawOptions {
            $( $(#[doc = $doc])* pub $field: options!(@type $kind), )*
        }

        /// Every option sslcache reads.
        pub const OPTIONS: &[OptionSpec] = &[$(
            OptionSpec {
                field: stringify!($field),
                names: &[$($name),+],
                owner: $owner,
                help: $help,
                readme: $readme,
            },
        )*];

        impl RawOptions {
            fn store(&mut self, field: &str, value: String) {
                match field {
                    $( stringify!($field) => options!(@store self.$field, $kind, value), )*
                    _ => unreachable!("a field of the table"),
                }
            }
        }
    };
    (@type one) => { Option<String> };
    (@type list) => { Vec<String> };
    (@store $slot:expr, one, $value:expr) => { $slot = Some($value) };
    (@store $slot:expr, list, $value:expr) => { $slot.push($value) };
}

use Arg::{Optional, Required};
use Owner::{Plugin, Uwsgi};

options! {
    /// `ssl-sessions-use-cache`: the cache that stores sessions.
    use_cache: one, Plugin(Optional), [c"ssl-sessions-use-cache", c"ssl-session-use-cache"],
        help: c"store TLS sessions of the HTTPS/SSL routers in this cache, shared by all router processes \
            (true or empty: the default cache made by --cache; a name: that --cache2) [sslcache]",
        readme: "`true` (or empty, `1`, `yes`, `on`): the default cache made by `cache` + `cache-blocksize` \
            (without `cache`, the first `cache2`, as uWSGI 1.9 did); a name: the `cache2` of that name. \
            Not set: the plugin stays inactive.";
    /// `ssl-sessions-timeout`: session lifetime, seconds.
    timeout: one, Plugin(Required), [c"ssl-sessions-timeout", c"ssl-session-timeout"],
        help: c"set the TLS session timeout in seconds (default 300) [sslcache]",
        readme: "session lifetime in seconds (default 300)";
    /// `cache`: items of the default cache.
    cache: one, Uwsgi, [c"cache"],
        help: c"",
        readme: "capacity of the default cache, in sessions: at most 10,000,000, and at most 1 TiB reserved \
            with `cache-blocksize` (10 M sessions at the default blocksize reserve 812 GiB, resident only as \
            used)";
    /// `cache-blocksize`.
    cache_blocksize: one, Uwsgi, [c"cache-blocksize"],
        help: c"",
        readme: "largest session stored, in bytes (default 65535)";
    /// Every `cache2` value, in order.
    cache2: list, Uwsgi, [c"cache2"],
        help: c"",
        readme: "`name=`, `items=` (`max_items`, `maxitems`; the bounds of `cache`), `blocksize=`, `keysize=` (`key_size`, default \
            2048, at least 32), `udp=`, `node=`, `udp_key=`, `store=`, `store_sync=`";
    /// `cache-store`: file of the default cache.
    cache_store: one, Uwsgi, [c"cache-store"],
        help: c"",
        readme: "file the default cache lives in, so that it survives a stop and start (mode 0600; it holds \
            session secrets; no symbolic link anywhere on its path; an existing file must be empty or a store \
            file); cache2: `store=`";
    /// `cache-store-sync`: seconds between write-backs of that file.
    cache_store_sync: one, Uwsgi, [c"cache-store-sync"],
        help: c"",
        readme: "seconds between write-backs of the store file (default: at each reload and stop); cache2: \
            `store_sync=`";
    /// `https-session-context`.
    https_session_context: one, Uwsgi, [c"https-session-context"],
        help: c"",
        readme: "session id context of the `https`/`https2` and `https-socket`/`ssl-socket` contexts (at \
            most 32 bytes)";
    /// `sslrouter-session-context`.
    sslrouter_session_context: one, Uwsgi, [c"sslrouter-session-context"],
        help: c"",
        readme: "session id context of the `sslrouter` contexts";
    /// `cache-udp-server` values (default cache).
    cache_udp_server: list, Uwsgi, [c"cache-udp-server"],
        help: c"",
        readme: "addresses receiving the default cache's replication (see Replication)";
    /// `cache-udp-node` values (default cache).
    cache_udp_node: list, Uwsgi, [c"cache-udp-node"],
        help: c"",
        readme: "peers the default cache replicates to (see Replication)";
    /// `ssl-sessions-multicast-if`: interface address for multicast.
    multicast_if: one, Plugin(Required), [c"ssl-sessions-multicast-if", c"ssl-session-multicast-if"],
        help: c"send and receive multicast session updates on the interface with this IPv4 address \
            (TTL and loop: --multicast-ttl, --multicast-loop) [sslcache]",
        readme: "IPv4 address of the interface for multicast replication";
    /// uWSGI's `multicast-ttl`.
    multicast_ttl: one, Uwsgi, [c"multicast-ttl"],
        help: c"",
        readme: "uWSGI's option, used for multicast replication (default 1)";
    /// uWSGI's `multicast-loop`.
    multicast_loop: one, Uwsgi, [c"multicast-loop"],
        help: c"",
        readme: "uWSGI's option, used for multicast replication (default 1)";
    /// `cache-udp-key`: key file of the default cache's replication.
    cache_udp_key: one, Plugin(Required), [c"cache-udp-key"],
        help: c"seal the default cache's session replication with the keys in this file (one per line, \
            64 hex digits; the first seals, all open; mode 0600) [sslcache]",
        readme: "key file sealing the default cache's replication; cache2: `udp_key=` (`udpkey`) (see \
            Secure mode)";
    /// `ssl-sessions-redis`: Redis servers carrying the default cache's replication.
    redis: list, Plugin(Required), [c"ssl-sessions-redis"],
        help: c"replicate the default cache's sessions through this Redis (redis://[user:password@]host:port[/db] \
            or rediss:// for TLS; the master writes and subscribes, handshakes never wait for it) [sslcache]",
        readme: "Redis carrying the default cache's replication and holding its sessions of record: \
            `redis://[user:password@]host:port[/db]`, `rediss://` for TLS; alone or beside UDP peers; cache2: \
            `redis=` (see Replication through Redis)";
    /// `ssl-sessions-redis-cluster`: seed nodes of a Redis Cluster carrying the default cache's replication.
    redis_cluster: list, Plugin(Required), [c"ssl-sessions-redis-cluster"],
        help: c"replicate the default cache's sessions through this Redis Cluster (a seed node, repeatable: \
            redis://[user:password@]host:port or rediss://) [sslcache]",
        readme: "a seed node of a Redis Cluster (sharded) carrying the default cache's replication, repeatable: \
            `redis://[user:password@]host:port`, `rediss://` for TLS; cache2: `redis_cluster=` (see Replication \
            through Redis)";
    /// `ssl-sessions-redis-ca`: CA file verifying the default cache's `rediss://` servers.
    redis_ca: one, Plugin(Required), [c"ssl-sessions-redis-ca"],
        help: c"verify the default cache's rediss:// servers with the CA certificates (PEM) in this file instead \
            of the system's trust store (read at startup) [sslcache]",
        readme: "CA certificates (PEM) verifying the default cache's `rediss://` servers instead of the \
            system's trust store (a private CA); read at startup, before uWSGI drops privileges; not with \
            `#insecure` nor with a `rediss://` Redis Cluster; cache2: `redis_ca=` (see Replication through Redis)";
    /// `ssl-sessions-redis-cert`: client certificate for the default cache's `rediss://` servers.
    redis_cert: one, Plugin(Required), [c"ssl-sessions-redis-cert"],
        help: c"present this client certificate (PEM, with its chain) to the default cache's rediss:// servers; \
            needs --ssl-sessions-redis-key [sslcache]",
        readme: "client certificate (PEM, chain after it) the default cache shows `rediss://` servers that \
            verify clients (`tls-auth-clients yes`); with `ssl-sessions-redis-key`; cache2: `redis_cert=`";
    /// `ssl-sessions-redis-key`: the private key of that certificate.
    redis_key: one, Plugin(Required), [c"ssl-sessions-redis-key"],
        help: c"private key (PEM, unencrypted, mode 0600) of --ssl-sessions-redis-cert [sslcache]",
        readme: "private key (PEM, unencrypted; mode 0600, owned by root or the user uWSGI starts as) of \
            `ssl-sessions-redis-cert`; cache2: `redis_key=`";
    /// `ssl-sessions-max-skew`: seconds of clock skew tolerated.
    max_skew: one, Plugin(Required), [c"ssl-sessions-max-skew"],
        help: c"seconds of clock skew tolerated on sealed replication datagrams (default 30) [sslcache]",
        readme: "seconds of clock skew tolerated on sealed datagrams (default 30)";
    /// `ssl-sessions-accept-plain`: also accept plain datagrams with a key.
    accept_plain: one, Plugin(Optional), [c"ssl-sessions-accept-plain"],
        help: c"with a replication key, still accept plain datagrams (while migrating a cluster) [sslcache]",
        readme: "with a key, also accept plain datagrams (migration)";
    /// `ssl-sessions-peer-sync`: warm start and repair with the peers.
    peer_sync: one, Plugin(Optional), [c"ssl-sessions-peer-sync"],
        help: c"pull the unicast peers' sessions at start and repair what replication lost (default true) \
            [sslcache]",
        readme: "warm start (a node that starts without its sessions pulls its unicast peers') and repair of \
            lost replication datagrams (default true; see Warm start and repair)";
    /// `ssl-sessions-quickack`: acknowledge a resumed TLS 1.2 handshake's last flight at once.
    quickack: one, Plugin(Optional), [c"ssl-sessions-quickack"],
        help: c"acknowledge the client's last handshake flight at once on resumed TLS 1.2 connections, so a \
            balancer's Nagle does not hold the request behind the delayed ACK (default true) [sslcache]",
        readme: "on a resumed TLS 1.2 handshake, acknowledge the client's Finished at once (TCP_QUICKACK): \
            a balancer that does not set TCP_NODELAY, like uWSGI's rawrouter, otherwise holds the request \
            that follows about 40 ms behind this node's delayed ACK (default true; see Behind uWSGI's \
            rawrouter)";
    /// `ssl-sessions-fresh-wait`: longest wait for a session a peer made an instant ago.
    fresh_wait: one, Plugin(Required), [c"ssl-sessions-fresh-wait"],
        help: c"milliseconds a router process waits, at most, for a session another node made an instant ago \
            and has not replicated here yet, 0 to 50 (default 10, 0: never wait) [sslcache]",
        readme: "on a miss for a session made in the last 250 ms (elsewhere: replication may bring it any \
            moment), look again for this many milliseconds at most, 0 to 50 (default 10; 0: never wait); a \
            router process never waits more than 50 ms in a second (see docs/SECURITY.md)";
    /// `ssl-sessions-tls13-tickets`: TLS 1.3 tickets per full handshake.
    tls13_tickets: one, Plugin(Required), [c"ssl-sessions-tls13-tickets"],
        help: c"TLS 1.3 session tickets issued per full handshake, 0 to 8 (default 2): each is a stored \
            session [sslcache]",
        readme: "TLS 1.3 tickets issued per full handshake, 0 to 8 (default 2, OpenSSL's): each is a stored \
            and replicated session; 1 halves both per full handshake, but a client that uses each ticket \
            once (RFC 8446) then resumes only one of two parallel connections (see Benchmarks)";
    /// `ssl-sessions-tickets`: cluster tickets.
    tickets: one, Plugin(Required), [c"ssl-sessions-tickets"],
        help: c"session tickets: off (default: resumption through the store only) or cluster (ticket keys every \
            node derives from the cluster key: TLS 1.2 ticket clients and TLS 1.3 resume statelessly on any \
            node; needs a cluster key) [sslcache]",
        readme: "`off` (default) or `cluster`: TLS session tickets whose keys every node derives from the \
            cluster key (`cache-udp-key`, or `udp_key=` in cache2; refused without one), rotated every \
            `ssl-sessions-tickets-rotation`: TLS 1.2 clients that send tickets and TLS 1.3 clients resume on \
            any node with nothing stored or replicated, session-id clients through the store as before; \
            tickets live `ssl-sessions-timeout`, at most 7 days (see docs/TICKETS.md)";
    /// `ssl-sessions-tickets-rotation`: seconds between ticket key rotations.
    tickets_rotation: one, Plugin(Required), [c"ssl-sessions-tickets-rotation"],
        help: c"seconds between rotations of the cluster ticket keys (default 3600; the same on every node) \
            [sslcache]",
        readme: "seconds between rotations of the cluster ticket keys (default 3600, at most 604800; the same \
            on every node): a key decrypts for at most this + the ticket lifetime + `ssl-sessions-max-skew`";
    /// uWSGI's `ssl-verbose`.
    ssl_verbose: one, Uwsgi, [c"ssl-verbose"],
        help: c"",
        readme: "also logs every session stored, found, missed, refused, removed, received";
    /// `udprepeater`: where the repeater receives cache datagrams.
    udprepeater: one, Plugin(Required), [c"udprepeater"],
        help: c"run a udprepeater gateway receiving cache datagrams on this address and forwarding them to the \
            nodes subscribed to the sender's cluster [sslcache]",
        readme: "`IP:PORT`: run a udprepeater gateway (see udprepeater) receiving the cache datagrams of its \
            clusters' nodes there and forwarding each to the other subscribers of the sender's cluster";
    /// `udprepeater-subscription-server`: where subscriptions arrive.
    udprepeater_subscription_server: one, Plugin(Required), [c"udprepeater-subscription-server"],
        help: c"receive the udprepeater's subscriptions (uWSGI's subscribe2 packets) on this address [sslcache]",
        readme: "`IP:PORT` receiving uWSGI subscription packets (`subscribe2 = server=...,key=CLUSTER,addr=...` on \
            the nodes): `key` names the cluster, `addr` where the node receives; required with `udprepeater`";
    /// `udprepeater-stats`: the repeater's own stats server.
    udprepeater_stats: one, Plugin(Required), [c"udprepeater-stats"],
        help: c"serve the udprepeater's stats (clusters, subscribers, counters) as JSON on this TCP address \
            [sslcache]",
        readme: "`IP:PORT`: a TCP stats server of the repeater's own, as a router's `*-stats`: one JSON \
            document per connection (clusters, each subscriber's address and last announce, counters)";
    /// `udprepeater-max-subscribers`: members per cluster.
    udprepeater_max_subscribers: one, Plugin(Required), [c"udprepeater-max-subscribers"],
        help: c"subscribers of one cluster the udprepeater keeps, at most (default 64) [sslcache]",
        readme: "subscribers of one cluster, at most (default 64, at most 4096): a datagram is forwarded to \
            each, so this bounds what one datagram becomes";
    /// `udprepeater-max-clusters`.
    udprepeater_max_clusters: one, Plugin(Required), [c"udprepeater-max-clusters"],
        help: c"clusters (subscription keys) the udprepeater keeps, at most (default 64) [sslcache]",
        readme: "clusters (subscription keys), at most (default 64, at most 4096)";
    /// `udprepeater-rate`: datagrams forwarded a second per source.
    udprepeater_rate: one, Plugin(Required), [c"udprepeater-rate"],
        help: c"datagrams a second the udprepeater forwards from one source IP, at most (default 100000) \
            [sslcache]",
        readme: "datagrams a second forwarded from one source IP, at most (default 100000; beyond, dropped and \
            counted in `over_rate`)";
    /// uWSGI's `subscription-tolerance`: seconds a subscriber lasts.
    subscription_tolerance: one, Uwsgi, [c"subscription-tolerance"],
        help: c"",
        readme: "udprepeater: seconds a subscriber lasts without an announce (default 17, as uWSGI's routers), \
            and how far a signed subscription's timestamp may be off the repeater's clock";
    /// uWSGI's `subscriptions-sign-check`.
    subscriptions_sign_check: one, Uwsgi, [c"subscriptions-sign-check"],
        help: c"",
        readme: "udprepeater: `ALGO:DIR`, only subscriptions signed (`sign=` in `subscribe2`) with the private \
            key of `DIR/CLUSTER.pem` count";
}

/// The spec an option name belongs to.
pub fn find(name: &str) -> Option<&'static OptionSpec> {
    OPTIONS
        .iter()
        .find(|spec| spec.names.iter().any(|n| n.to_bytes() == name.as_bytes()))
}

impl RawOptions {
    /// Gathers the values of every option in the table from uWSGI's
    /// options as configured, in order (`None`: a flag without a value).
    pub fn from_exported(options: impl IntoIterator<Item = (String, Option<String>)>) -> RawOptions {
        let mut raw = RawOptions::default();
        for (name, value) in options {
            if let Some(spec) = find(&name) {
                raw.store(spec.field, value.unwrap_or_default());
            }
        }
        raw
    }
}

fn shown(name: &CStr) -> String {
    format!("`{}`", name.to_string_lossy())
}

/// The README's option table, in markdown.
pub fn readme_table() -> String {
    let mut out = String::from("| option | value |\n|---|---|\n");
    for spec in OPTIONS {
        let names: Vec<String> = spec.names.iter().map(|n| shown(n)).collect();
        out.push_str(&format!("| {} | {} |\n", names.join(", "), spec.readme));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_table_is_the_code_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md at the top of the workspace");
        let start = readme
            .find("| option | value |")
            .expect("the README has an option table");
        let end = readme[start..].find("\n\n").map_or(readme.len(), |n| start + n + 1);
        let expected = readme_table();
        assert!(
            readme[start..end] == expected,
            "README.md's option table differs from config::options::OPTIONS; it should read:\n\n{expected}"
        );
    }

    #[test]
    fn every_name_is_unique_and_plugin_options_have_help() {
        let mut seen = std::collections::HashSet::new();
        for spec in OPTIONS {
            for name in spec.names {
                assert!(seen.insert(name.to_bytes()), "{name:?} twice");
            }
            assert_eq!(
                matches!(spec.owner, Owner::Plugin(_)),
                !spec.help.is_empty(),
                "{}",
                spec.field
            );
        }
    }

    #[test]
    fn gathers_values_by_any_name_last_one_winning() {
        let pairs = [
            ("ssl-session-use-cache", Some("ssl")),
            ("ssl-sessions-use-cache", None),
            ("cache2", Some("name=a,items=1")),
            ("cache2", Some("name=b,items=2")),
            ("socket", Some("ignored")),
            ("ssl-session-timeout", Some("60")),
        ];
        let raw = RawOptions::from_exported(pairs.map(|(k, v)| (k.to_string(), v.map(str::to_string))));
        assert_eq!(raw.use_cache.as_deref(), Some(""));
        assert_eq!(raw.cache2, ["name=a,items=1", "name=b,items=2"]);
        assert_eq!(raw.timeout.as_deref(), Some("60"));
        assert_eq!(raw.ssl_verbose, None);
    }
}
