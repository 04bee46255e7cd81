//! TLS clients (OpenSSL through the `openssl` crate): handshakes,
//! connections, reconnect loops and their outcome against the resumption
//! floor.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslOptions, SslSession, SslStream, SslVerifyMode, SslVersion};

use crate::ports::socket_owner;

/// What a TLS client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TLS 1.2 without session tickets: resumes by session id only.
    Tls12NoTickets,
    /// TLS 1.2 with tickets (what stock uWSGI resumes).
    Tls12Tickets,
    /// TLS 1.3 (session tickets, stateful with the plugin).
    Tls13,
}

/// One finished TLS connection.
pub struct Conn {
    pub resumed: bool,
    pub session: Option<SslSession>,
    /// Router process that held the server side, if asked for.
    pub owner: Option<i32>,
    pub peer_cn: String,
}

pub struct Client {
    connector: SslConnector,
    pub proto: Proto,
    pub sni: Option<String>,
}

impl Client {
    pub fn new(proto: Proto) -> Client {
        Client::build(proto, None)
    }

    /// A client that presents a client certificate.
    pub fn with_identity(proto: Proto, crt: &Path, key: &Path) -> Client {
        Client::build(proto, Some((crt, key)))
    }

    fn build(proto: Proto, identity: Option<(&Path, &Path)>) -> Client {
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        if let Some((crt, key)) = identity {
            b.set_certificate_file(crt, openssl::ssl::SslFiletype::PEM).unwrap();
            b.set_private_key_file(key, openssl::ssl::SslFiletype::PEM).unwrap();
        }
        match proto {
            Proto::Tls12NoTickets => {
                b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
                b.set_options(SslOptions::NO_TICKET);
            }
            Proto::Tls12Tickets => {
                b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
            }
            Proto::Tls13 => {
                b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
            }
        }
        Client {
            connector: b.build(),
            proto,
            sni: None,
        }
    }

    pub fn with_sni(mut self, host: &str) -> Client {
        self.sni = Some(host.into());
        self
    }

    /// A handshake (resuming `session` if given); the caller decides what
    /// follows. Returns the stream and the client's local port.
    pub fn handshake(&self, port: u16, session: Option<&SslSession>) -> std::io::Result<(SslStream<TcpStream>, u16)> {
        self.handshake_to(SocketAddr::from(([127, 0, 0, 1], port)), session)
    }

    /// As `handshake`, to any address.
    pub fn handshake_to(
        &self,
        addr: SocketAddr,
        session: Option<&SslSession>,
    ) -> std::io::Result<(SslStream<TcpStream>, u16)> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        let local_port = tcp.local_addr()?.port();
        Ok((self.handshake_on(tcp, session)?, local_port))
    }

    /// A handshake over an already connected socket.
    pub fn handshake_on(&self, tcp: TcpStream, session: Option<&SslSession>) -> std::io::Result<SslStream<TcpStream>> {
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut config = self.connector.configure().map_err(std::io::Error::other)?;
        config.set_verify_hostname(false);
        config.set_use_server_name_indication(self.sni.is_some());
        let mut ssl = config
            .into_ssl(self.sni.as_deref().unwrap_or("localhost"))
            .map_err(std::io::Error::other)?;
        if let Some(s) = session {
            // SAFETY: the session comes from a connection made with this
            // client's own context.
            unsafe { ssl.set_session(s).map_err(std::io::Error::other)? };
        }
        let mut stream = SslStream::new(ssl, tcp).map_err(std::io::Error::other)?;
        stream.connect().map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(stream)
    }

    /// One connection: handshake (resuming `session` if given), a request,
    /// read until the router closes. `routers` asks to find which of those
    /// processes served it.
    pub fn connect(&self, port: u16, session: Option<&SslSession>, routers: &[i32]) -> std::io::Result<Conn> {
        self.connect_to(SocketAddr::from(([127, 0, 0, 1], port)), session, routers)
    }

    /// As `connect`, to any address (`routers` only for 127.0.0.1).
    pub fn connect_to(&self, addr: SocketAddr, session: Option<&SslSession>, routers: &[i32]) -> std::io::Result<Conn> {
        let port = addr.port();
        let (mut stream, local_port) = self.handshake_to(addr, session)?;
        let resumed = stream.ssl().session_reused();
        let peer_cn = stream
            .ssl()
            .peer_certificate()
            .and_then(|c| {
                c.subject_name()
                    .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                    .next()
                    .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
            })
            .unwrap_or_default();
        let owner = if routers.is_empty() {
            None
        } else {
            socket_owner(port, local_port, routers)
        };
        let _ = stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let session = stream.ssl().session().map(|s| s.to_owned());
        let _ = stream.shutdown();
        Ok(Conn {
            resumed,
            session,
            owner,
            peer_cn,
        })
    }

    /// `n` reconnects, each resuming the previous connection's session.
    pub fn reconnects(&self, port: u16, n: usize, routers: &[i32]) -> Outcome {
        let mut out = Outcome::default();
        let mut session: Option<SslSession> = None;
        for _ in 0..n {
            match self.connect(port, session.as_ref(), routers) {
                Ok(c) => {
                    out.attempts += 1;
                    if c.resumed {
                        out.resumed += 1;
                    }
                    if let Some(pid) = c.owner {
                        if !out.owners.contains(&pid) {
                            out.owners.push(pid);
                        }
                    }
                    if c.session.is_some() {
                        session = c.session;
                    }
                }
                Err(e) => {
                    out.attempts += 1;
                    out.errors.push(e.to_string());
                }
            }
        }
        out
    }

    /// `n` full handshakes on `addr`; their sessions (a failed handshake
    /// fails the test).
    pub fn sessions(&self, addr: SocketAddr, n: usize) -> Vec<SslSession> {
        (0..n)
            .map(|i| {
                let conn = self
                    .connect_to(addr, None, &[])
                    .unwrap_or_else(|e| panic!("handshake {i}: {e}"));
                conn.session.unwrap_or_else(|| panic!("handshake {i}: no session"))
            })
            .collect()
    }

    /// Offers each of `sessions` once at `addr`; how many resumed (a
    /// connection that fails resumed nothing). Each is replaced by its
    /// connection's (a TLS 1.3 ticket is used once).
    pub fn resume_all(&self, addr: SocketAddr, sessions: &mut [SslSession]) -> usize {
        let mut resumed = 0;
        for (i, session) in sessions.iter_mut().enumerate() {
            if let Ok(conn) = self.connect_to(addr, Some(session), &[]) {
                resumed += usize::from(conn.resumed);
                *session = conn
                    .session
                    .unwrap_or_else(|| panic!("session {i}: a connection without a session"));
            }
        }
        resumed
    }
}

/// Result of a reconnect loop. The first connection is a full handshake by
/// definition; `resumption_rate` counts the others.
#[derive(Debug, Default)]
pub struct Outcome {
    pub attempts: usize,
    pub resumed: usize,
    pub errors: Vec<String>,
    pub owners: Vec<i32>,
}

/// The share of reconnects that must resume, in every test that counts
/// them: never lowered to make a test pass.
pub const RESUME_FLOOR: f64 = 0.99;

impl Outcome {
    pub fn resumption_rate(&self) -> f64 {
        if self.attempts <= 1 {
            return 0.0;
        }
        self.resumed as f64 / (self.attempts - 1) as f64
    }

    /// Asserts that [`RESUME_FLOOR`] of the reconnects resumed; else fails
    /// with `what`, the outcome and `log` (the log of the node concerned,
    /// or "").
    #[track_caller]
    pub fn assert_resumed(&self, what: impl std::fmt::Display, log: &str) {
        assert_share_resumed(
            format_args!("{what}: {self:?}"),
            self.resumed,
            self.attempts.saturating_sub(1),
            log,
        );
    }

    /// Asserts that no connection failed; else fails with `what` and the
    /// errors.
    #[track_caller]
    pub fn assert_no_errors(&self, what: impl std::fmt::Display) {
        assert!(self.errors.is_empty(), "{what}: connection errors {:?}", self.errors);
    }
}

/// Asserts that [`RESUME_FLOOR`] of `offered` sessions resumed (`resumed`
/// of them); else fails with `what`, the figures and `log` (the log of the
/// node concerned, or ""). The one floor check: [`Outcome::assert_resumed`]
/// is this for a reconnect loop.
#[track_caller]
pub fn assert_share_resumed(what: impl std::fmt::Display, resumed: usize, offered: usize, log: &str) {
    let share = if offered == 0 {
        0.0
    } else {
        resumed as f64 / offered as f64
    };
    assert!(
        share >= RESUME_FLOOR,
        "{what}: resumed {resumed}/{offered} (floor {RESUME_FLOOR})\n{log}"
    );
}

/// `n` reconnects of a TLS 1.2 client without tickets, then of a TLS 1.3
/// client, to 127.0.0.1:`port` (a balancer in front of a cluster, say):
/// their outcomes, each without a connection error, their rates printed
/// after `what`. The floor is the caller's to assert (a stock baseline
/// holds to none).
pub fn reconnects_both(port: u16, n: usize, what: &str) -> [Outcome; 2] {
    let outcomes = [Proto::Tls12NoTickets, Proto::Tls13].map(|proto| {
        let out = Client::new(proto).reconnects(port, n, &[]);
        out.assert_no_errors(format_args!("{what}: {proto:?}"));
        out
    });
    println!(
        "{what}: TLS 1.2 without tickets {:.1}%, TLS 1.3 {:.1}%",
        outcomes[0].resumption_rate() * 100.0,
        outcomes[1].resumption_rate() * 100.0
    );
    outcomes
}

/// Asserts that each of [`reconnects_both`]'s outcomes resumed to the floor
/// ([`Outcome::assert_resumed`]).
#[track_caller]
pub fn assert_both_resumed(outcomes: &[Outcome; 2], what: &str, log: &str) {
    for (out, proto) in outcomes.iter().zip(["TLS 1.2", "TLS 1.3"]) {
        out.assert_resumed(format_args!("{what}, {proto}"), log);
    }
}

/// [`reconnects_both`], each held to the floor.
#[track_caller]
pub fn resumed_both(port: u16, n: usize, what: &str) -> [Outcome; 2] {
    let outcomes = reconnects_both(port, n, what);
    assert_both_resumed(&outcomes, what, "");
    outcomes
}
