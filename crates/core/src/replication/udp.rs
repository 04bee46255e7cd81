//! UDP sockets of replication: one sending socket per address family,
//! shared by all router processes (made before fork, non-blocking), and
//! the receiving sockets of the master.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use super::counters::ReplicationCounters;
use super::transport::{Inbound, Links, Received, Replier, Transport};
use crate::config::{Multicast, Replication};
use crate::shm::scrub;
use std::os::fd::AsRawFd;

/// The UDP transports and inbounds the settings ask for: one sender for
/// every peer and group (if any), a bound socket per receiving address.
/// `cache` names the cache in errors.
pub fn links(settings: &Replication, cache: &str) -> Result<Links, String> {
    let mc = &settings.multicast;
    let mut links = Links::default();
    for addr in &settings.servers {
        let socket = bind_receiver(*addr, mc)
            .map_err(|e| format!("cannot receive session updates of cache \"{cache}\" on {addr}: {e}"))?;
        links.inbounds.push(Box::new(UdpInbound::new(socket)));
    }
    if !settings.nodes.is_empty() {
        let source = source_ip(&settings.servers, &settings.nodes);
        let peers = UdpPeers::new(settings.nodes.clone(), mc, source)
            .map_err(|e| format!("cannot make the socket that sends session updates: {e}"))?;
        links.transports.push(Box::new(peers));
    }
    Ok(links)
}

/// The IP sessions leave from: the node's receiving IP (the first specific
/// unicast one), so that a udprepeater tells the node by it; `None` (the
/// kernel chooses) when there is none, or it is loopback and a peer is not.
fn source_ip(servers: &[SocketAddr], peers: &[SocketAddr]) -> Option<IpAddr> {
    let ip = servers
        .iter()
        .map(SocketAddr::ip)
        .find(|ip| !ip.is_unspecified() && !ip.is_multicast())?;
    let unicast = || peers.iter().filter(|p| !p.ip().is_multicast());
    (!ip.is_loopback() || unicast().all(|p| p.ip().is_loopback())).then_some(ip)
}

/// The UDP transport: sends each datagram to every peer (unicast or a
/// multicast group), never waiting.
pub struct UdpPeers {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    peers: Vec<SocketAddr>,
}

fn udp(domain: Domain) -> io::Result<Socket> {
    Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
}

impl UdpPeers {
    /// `source`: the IP to send from (of its family), if any.
    pub fn new(peers: Vec<SocketAddr>, mc: &Multicast, source: Option<IpAddr>) -> io::Result<UdpPeers> {
        let bind_source = |s: &Socket, v4: bool| match source {
            Some(ip) if ip.is_ipv4() == v4 => s.bind(&SocketAddr::new(ip, 0).into()),
            _ => Ok(()),
        };
        let v4 = if peers.iter().any(SocketAddr::is_ipv4) {
            let s = udp(Domain::IPV4)?;
            bind_source(&s, true)?;
            if peers.iter().any(|p| p.ip().is_multicast()) {
                if let Some(interface) = mc.interface {
                    s.set_multicast_if_v4(&interface)?;
                }
                s.set_multicast_ttl_v4(mc.ttl)?;
                s.set_multicast_loop_v4(mc.loopback)?;
            }
            s.set_nonblocking(true)?;
            Some(s.into())
        } else {
            None
        };
        let v6 = if peers.iter().any(SocketAddr::is_ipv6) {
            let s = udp(Domain::IPV6)?;
            bind_source(&s, false)?;
            if peers.iter().any(|p| p.ip().is_multicast()) {
                s.set_multicast_hops_v6(mc.ttl)?;
                s.set_multicast_loop_v6(mc.loopback)?;
            }
            s.set_nonblocking(true)?;
            Some(s.into())
        } else {
            None
        };
        Ok(UdpPeers { v4, v6, peers })
    }
}

impl Transport for UdpPeers {
    fn describe(&self) -> String {
        self.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
    }

    /// Hands `datagram` to the kernel for every peer; a full socket buffer
    /// drops it (counted), it never blocks.
    fn send(&self, datagram: &[u8], counters: &ReplicationCounters) {
        for peer in &self.peers {
            let socket = if peer.is_ipv4() { &self.v4 } else { &self.v6 };
            let Some(socket) = socket else { continue };
            match socket.send_to(datagram, peer) {
                Ok(_) => {
                    ReplicationCounters::bump(&counters.sent);
                    ReplicationCounters::add(&counters.sent_bytes, datagram.len() as u64);
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock) || e.raw_os_error() == Some(libc::ENOBUFS) => {
                    ReplicationCounters::bump(&counters.send_dropped)
                }
                Err(_) => ReplicationCounters::bump(&counters.send_errors),
            }
        }
    }
}

/// A bound receiving socket as the engine's [`Inbound`].
pub struct UdpInbound {
    socket: UdpSocket,
}

/// How long a receive waits before the receiver looks up (`keep_running`).
const IDLE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl UdpInbound {
    pub fn new(socket: UdpSocket) -> UdpInbound {
        let _ = socket.set_read_timeout(Some(IDLE_WAIT));
        // Plain datagrams carry sessions: not for application processes.
        scrub::register_fd(socket.as_raw_fd());
        UdpInbound { socket }
    }
}

impl Drop for UdpInbound {
    fn drop(&mut self) {
        scrub::unregister_fd(self.socket.as_raw_fd());
    }
}

impl Inbound for UdpInbound {
    fn next(&mut self, buf: &mut [u8], _counters: &ReplicationCounters) -> io::Result<Option<Received>> {
        match self.socket.recv_from(buf) {
            Ok((n, from)) => Ok(Some(Received::datagram(n, Some(from)))),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn local(&self) -> String {
        match self.socket.local_addr() {
            Ok(addr) => addr.to_string(),
            Err(_) => "an unbound socket".to_string(),
        }
    }

    /// A clone of the socket (the same address): peers answer here. A
    /// multicast group's socket has no address of its own to answer to.
    fn replier(&self) -> Option<Box<dyn Replier>> {
        let local = self.socket.local_addr().ok()?;
        if local.ip().is_multicast() {
            return None;
        }
        let socket = Socket::from(self.socket.try_clone().ok()?);
        // The same socket: what arrives could be read through it too.
        scrub::register_fd(socket.as_raw_fd());
        Some(Box::new(UdpReplier { socket, local }))
    }
}

/// Sends from a receiving socket's address.
struct UdpReplier {
    socket: Socket,
    local: SocketAddr,
}

impl Drop for UdpReplier {
    fn drop(&mut self) {
        scrub::unregister_fd(self.socket.as_raw_fd());
    }
}

impl Replier for UdpReplier {
    fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        let sent = self.socket.send_to_with_flags(datagram, &to.into(), libc::MSG_DONTWAIT);
        match sent {
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Err(io::ErrorKind::WouldBlock.into()),
            other => other.map(|_| ()),
        }
    }

    fn reaches(&self, to: &SocketAddr) -> bool {
        to.is_ipv4() == self.local.is_ipv4()
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Binds a receiving socket. A multicast group is bound with SO_REUSEADDR
/// (several nodes of one host may join it) and joined on the interface.
pub fn bind_receiver(addr: SocketAddr, mc: &Multicast) -> io::Result<UdpSocket> {
    let s = udp(Domain::for_address(addr))?;
    if addr.ip().is_multicast() {
        s.set_reuse_address(true)?;
    }
    s.bind(&addr.into())?;
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_multicast() => {
            s.join_multicast_v4(v4.ip(), &mc.interface.unwrap_or(Ipv4Addr::UNSPECIFIED))?;
        }
        SocketAddr::V6(v6) if v6.ip().is_multicast() => s.join_multicast_v6(v6.ip(), 0)?,
        _ => {}
    }
    // Big enough for bursts of sessions (a warm-start answer: hundreds of
    // datagrams at once) while the receiver waits for a CPU.
    crate::os::big_receive_buffer(std::os::fd::AsFd::as_fd(&s), 4 << 20);
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::counters::SharedCounters;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    fn roundtrip(bind: &str) {
        let receiver = bind_receiver(bind.parse().unwrap(), &Multicast::default()).unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let target = receiver.local_addr().unwrap();
        let counters = SharedCounters::create().unwrap();
        let sender = UdpPeers::new(vec![target], &Multicast::default(), None).unwrap();
        sender.send(b"datagram", counters.get());
        let mut buf = [0u8; 64];
        let (n, _) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"datagram");
        assert_eq!(counters.get().sent.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn sessions_leave_from_the_receiving_ip() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let receiver = bind_receiver(a("127.0.0.1:0"), &Multicast::default()).unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let target = receiver.local_addr().unwrap();
        let source = source_ip(&[a("127.0.0.3:4000")], &[target]);
        assert_eq!(source, Some("127.0.0.3".parse().unwrap()));
        let sender = UdpPeers::new(vec![target], &Multicast::default(), source).unwrap();
        sender.send(b"datagram", SharedCounters::create().unwrap().get());
        let mut buf = [0u8; 64];
        let (_, from) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!(from.ip(), source.unwrap());
        // Any address, or loopback with a peer elsewhere: the kernel chooses.
        assert_eq!(source_ip(&[a("0.0.0.0:4000")], &[target]), None);
        assert_eq!(source_ip(&[a("127.0.0.3:4000")], &[a("192.0.2.1:4000")]), None);
        assert_eq!(
            source_ip(&[a("192.0.2.7:4000")], &[a("192.0.2.1:4000")]),
            Some("192.0.2.7".parse().unwrap())
        );
    }

    #[test]
    fn sends_and_receives_over_ipv4_and_ipv6() {
        roundtrip("127.0.0.1:0");
        roundtrip("[::1]:0");
    }

    #[test]
    fn multicast_stays_on_the_chosen_interface() {
        let mc = Multicast {
            interface: Some(Ipv4Addr::LOCALHOST),
            ttl: 1,
            loopback: true,
        };
        let group: SocketAddr = "239.255.77.77:0".parse().unwrap();
        let receiver = bind_receiver(group, &mc).unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let port = receiver.local_addr().unwrap().port();
        let counters = SharedCounters::create().unwrap();
        let sender = UdpPeers::new(vec![SocketAddr::new(group.ip(), port)], &mc, None).unwrap();
        sender.send(b"to the group", counters.get());
        let mut buf = [0u8; 64];
        let (n, from) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"to the group");
        // Sent from the loopback interface's address.
        assert_eq!(from.ip(), std::net::IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}
