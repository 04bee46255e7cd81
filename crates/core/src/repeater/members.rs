//! Who is subscribed to which cluster, and where a datagram goes.
//!
//! A datagram belongs to the clusters its source is a member of: by its
//! exact address (sslcache nodes send sync messages from their receiving
//! address) or else by IP (a node's sessions leave from an ephemeral port;
//! sslcache nodes bind it to their receiving IP, stock uWSGI lets the
//! kernel choose). It goes to every other member of those clusters: never
//! back to its sender (the member at its address or, matched by IP, every
//! member at that IP), never to a source no cluster knows.

use std::net::SocketAddr;

/// Bounds of the table.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Members per cluster.
    pub per_cluster: usize,
    pub clusters: usize,
    /// A member not heard from for this long is dropped.
    pub tolerance_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub addr: SocketAddr,
    /// Monotonic milliseconds of its last announce.
    pub announced_ms: u64,
    /// Unix time of its last announce (for the stats).
    pub announced_unix: u64,
    /// The largest signed timestamp accepted from it (0: unsigned).
    pub unix: u64,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub key: Vec<u8>,
    pub members: Vec<Member>,
}

/// What a subscription did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    New,
    Refreshed,
    /// Its signed timestamp is older than the last one accepted from it.
    Replayed,
    /// The cluster has its maximum of members.
    Full,
    /// The repeater has its maximum of clusters.
    TooManyClusters,
}

pub struct Members {
    pub clusters: Vec<Cluster>,
    limits: Limits,
}

impl Members {
    pub fn new(limits: Limits) -> Members {
        Members {
            clusters: Vec::new(),
            limits,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Members of all clusters.
    pub fn len(&self) -> usize {
        self.clusters.iter().map(|c| c.members.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// Adds or refreshes `addr` in cluster `key`; `unix` is its signed
    /// timestamp (0 when unsigned).
    pub fn subscribe(&mut self, key: &[u8], addr: SocketAddr, unix: u64, now_ms: u64, unix_now: u64) -> Subscribed {
        let index = match self.clusters.iter().position(|c| c.key == key) {
            Some(i) => i,
            None if self.clusters.len() >= self.limits.clusters => return Subscribed::TooManyClusters,
            None => {
                self.clusters.push(Cluster {
                    key: key.to_vec(),
                    members: Vec::new(),
                });
                self.clusters.len() - 1
            }
        };
        let per_cluster = self.limits.per_cluster;
        let cluster = &mut self.clusters[index];
        if let Some(m) = cluster.members.iter_mut().find(|m| m.addr == addr) {
            if unix < m.unix {
                return Subscribed::Replayed;
            }
            m.unix = unix;
            m.announced_ms = now_ms;
            m.announced_unix = unix_now;
            return Subscribed::Refreshed;
        }
        if cluster.members.len() >= per_cluster {
            // A cluster made for this subscription stays empty: gone again.
            if cluster.members.is_empty() {
                self.clusters.remove(index);
            }
            return Subscribed::Full;
        }
        cluster.members.push(Member {
            addr,
            announced_ms: now_ms,
            announced_unix: unix_now,
            unix,
        });
        Subscribed::New
    }

    /// The member `addr` of cluster `key`, if subscribed.
    pub fn member(&self, key: &[u8], addr: SocketAddr) -> Option<&Member> {
        self.clusters
            .iter()
            .find(|c| c.key == key)
            .and_then(|c| c.members.iter().find(|m| m.addr == addr))
    }

    /// Removes `addr` from cluster `key`; whether it was there.
    pub fn unsubscribe(&mut self, key: &[u8], addr: SocketAddr) -> bool {
        let Some(i) = self.clusters.iter().position(|c| c.key == key) else {
            return false;
        };
        let before = self.clusters[i].members.len();
        self.clusters[i].members.retain(|m| m.addr != addr);
        let removed = self.clusters[i].members.len() < before;
        if self.clusters[i].members.is_empty() {
            self.clusters.remove(i);
        }
        removed
    }

    /// Drops the members silent for longer than the tolerance; returns them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(Vec<u8>, SocketAddr)> {
        let tolerance = self.limits.tolerance_ms;
        let mut gone = Vec::new();
        for c in &mut self.clusters {
            c.members.retain(|m| {
                let alive = now_ms.saturating_sub(m.announced_ms) <= tolerance;
                if !alive {
                    gone.push((c.key.clone(), m.addr));
                }
                alive
            });
        }
        self.clusters.retain(|c| !c.members.is_empty());
        gone
    }

    /// Where a datagram from `from` goes (into `out`, cleared first);
    /// false when no cluster knows its source.
    pub fn route(&self, from: SocketAddr, out: &mut Vec<SocketAddr>) -> bool {
        out.clear();
        let exact = self.clusters.iter().any(|c| c.members.iter().any(|m| m.addr == from));
        let is_sender = |m: &Member| {
            if exact {
                m.addr == from
            } else {
                m.addr.ip() == from.ip()
            }
        };
        let mut known = false;
        for c in &self.clusters {
            if !c.members.iter().any(is_sender) {
                continue;
            }
            known = true;
            for m in c.members.iter().filter(|m| !is_sender(m)) {
                if !out.contains(&m.addr) {
                    out.push(m.addr);
                }
            }
        }
        known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(per_cluster: usize) -> Members {
        Members::new(Limits {
            per_cluster,
            clusters: 3,
            tolerance_ms: 17_000,
        })
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn datagrams_go_to_every_other_member_of_the_senders_clusters() {
        let mut m = members(10);
        for n in ["127.0.0.1:7000", "127.0.0.2:7000", "127.0.0.3:7000"] {
            assert_eq!(m.subscribe(b"one", a(n), 0, 0, 0), Subscribed::New);
        }
        assert_eq!(m.subscribe(b"two", a("127.0.0.9:7000"), 0, 0, 0), Subscribed::New);
        assert_eq!(m.subscribe(b"two", a("127.0.0.3:7000"), 0, 0, 0), Subscribed::New);
        let mut out = Vec::new();
        // From its receiving address: all the others of both its clusters.
        assert!(m.route(a("127.0.0.3:7000"), &mut out));
        assert_eq!(out, [a("127.0.0.1:7000"), a("127.0.0.2:7000"), a("127.0.0.9:7000")]);
        // From an ephemeral port of a member's IP: the same, never itself.
        assert!(m.route(a("127.0.0.1:41234"), &mut out));
        assert_eq!(out, [a("127.0.0.2:7000"), a("127.0.0.3:7000")]);
        // A stranger: nowhere.
        assert!(!m.route(a("127.0.0.5:7000"), &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn members_refresh_expire_and_leave() {
        let mut m = members(2);
        assert_eq!(m.subscribe(b"c", a("127.0.0.1:1"), 100, 0, 5), Subscribed::New);
        assert_eq!(
            m.subscribe(b"c", a("127.0.0.1:1"), 110, 10_000, 15),
            Subscribed::Refreshed
        );
        // A signed announce older than the last: a replay.
        assert_eq!(
            m.subscribe(b"c", a("127.0.0.1:1"), 105, 11_000, 16),
            Subscribed::Replayed
        );
        assert_eq!(m.member(b"c", a("127.0.0.1:1")).unwrap().announced_ms, 10_000);
        assert_eq!(m.subscribe(b"c", a("127.0.0.2:1"), 0, 1_000, 6), Subscribed::New);
        assert_eq!(m.subscribe(b"c", a("127.0.0.3:1"), 0, 1_000, 6), Subscribed::Full);
        assert_eq!(m.subscribe(b"d", a("127.0.0.3:1"), 0, 1_000, 6), Subscribed::New);
        assert_eq!(m.subscribe(b"e", a("127.0.0.3:1"), 0, 1_000, 6), Subscribed::New);
        assert_eq!(
            m.subscribe(b"f", a("127.0.0.3:1"), 0, 1_000, 6),
            Subscribed::TooManyClusters
        );
        assert_eq!(m.len(), 4);
        // 18.001 s after its last announce, 127.0.0.2 is gone; 127.0.0.1
        // announced at 10 s and stays.
        let gone = m.expire(19_001);
        assert!(gone.contains(&(b"c".to_vec(), a("127.0.0.2:1"))), "{gone:?}");
        assert!(m.member(b"c", a("127.0.0.1:1")).is_some());
        assert!(m.unsubscribe(b"c", a("127.0.0.1:1")));
        assert!(!m.unsubscribe(b"c", a("127.0.0.1:1")));
        assert!(m.clusters.iter().all(|c| c.key != b"c"), "an empty cluster is dropped");
    }
}
