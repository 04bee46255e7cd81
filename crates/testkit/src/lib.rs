//! Test and demo harness: real uWSGI processes, real TLS clients, loopback
//! only. Every process started here is stopped by its pid (SIGINT to the
//! master, then SIGKILL to its process group), every wait is bounded.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslOptions, SslSession, SslStream, SslVerifyMode, SslVersion};

/// The workspace: this crate is `crates/testkit` in it.
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The uWSGI binary under test (`UWSGI`, else `uwsgi` on PATH).
pub fn uwsgi_binary() -> PathBuf {
    std::env::var_os("UWSGI")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("uwsgi"))
}

/// Directory holding `sslcache_plugin.so` (`SSLCACHE_PLUGIN_DIR`, else the
/// repository root where `make` puts it).
pub fn plugin_dir() -> PathBuf {
    let dir = std::env::var_os("SSLCACHE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(repo_root);
    let so = dir.join("sslcache_plugin.so");
    assert!(
        so.exists(),
        "{} is missing: build it with `make` (tests run through `make test`)",
        so.display()
    );
    dir
}

/// When set (by `make test`), prerequisites of optional tests must exist.
pub fn require_all() -> bool {
    std::env::var_os("SSLCACHE_REQUIRE_ALL").is_some()
}

/// A fresh directory under target/itest for one test.
pub fn test_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = repo_root().join("target/itest").join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A directory shared by the test processes of one run (`cargo nextest`
/// names its run in `NEXTEST_RUN_ID`; elsewhere, one process is one run),
/// and `make` done in it once, whichever process comes first: the others
/// wait on its lock (flock), then find what it made.
fn made_once(name: &str, done: &str, make: impl FnOnce(&Path)) -> PathBuf {
    let run = std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| std::process::id().to_string());
    let dir = repo_root().join("target/itest/shared").join(run).join(name);
    fs::create_dir_all(&dir).unwrap();
    let lock = fs::File::create(dir.join(".lock")).unwrap();
    // SAFETY: flock on a descriptor this function owns; released when it is
    // closed at the end of the function.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock {}", dir.display());
    if !dir.join(done).exists() {
        make(&dir);
        assert!(dir.join(done).exists(), "{} not made in {}", done, dir.display());
    }
    dir
}

/// Self-signed certificate + key for `cn`, made once per test run (an RSA
/// key costs a tenth of a second of CPU: once, not once per test process).
pub fn cert(cn: &str) -> (PathBuf, PathBuf) {
    let (crt, key) = (format!("{cn}.crt"), format!("{cn}.key"));
    let dir = made_once("certs", &crt, |dir| {
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={cn}"))
            .arg("-keyout")
            .arg(dir.join(&key))
            .arg("-out")
            .arg(dir.join(&crt))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl CLI");
        assert!(status.success(), "openssl req failed");
    });
    (dir.join(crt), dir.join(key))
}

/// Listener certificates (self-signed), a CA that client-certificate
/// listeners trust, and a client certificate it signed.
pub struct Pki {
    pub a: (PathBuf, PathBuf),
    pub b: (PathBuf, PathBuf),
    pub ca_crt: PathBuf,
    pub client_crt: PathBuf,
    pub client_key: PathBuf,
}

/// `openssl` with `args` (split on whitespace) in `dir`.
pub fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Made once per test run.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = made_once("pki", "client.crt", |dir| {
            openssl(
                dir,
                "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.crt",
            );
            openssl(
                dir,
                "req -newkey rsa:2048 -nodes -subj /CN=client -keyout client.key -out client.csr",
            );
            openssl(
                dir,
                "x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out client.crt",
            );
        });
        Pki {
            a: cert("listener-a"),
            b: cert("listener-b"),
            ca_crt: dir.join("ca.crt"),
            client_crt: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    })
}

/// A loopback port free for both TCP and UDP right now, and reserved for
/// this process until it exits: test processes run side by side (`make
/// test` runs every test in a process of its own, several at once), so a
/// port is claimed with a lock file in a directory of the machine's (flock,
/// released by the kernel when the process ends, even by a crash) before it
/// is tried. Below Linux's ephemeral range (32768-60999), where a client's
/// connection could take it between this check and the bind of the process
/// under test.
pub fn free_port() -> u16 {
    const FIRST: u16 = 10_000;
    const LAST: u16 = 32_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    static CLAIMED: Mutex<Vec<fs::File>> = Mutex::new(Vec::new());
    // Machine-wide: suites of two checkouts may run at once.
    let claims = std::env::temp_dir().join("sslcache-test-ports");
    fs::create_dir_all(&claims).unwrap();
    let start = FIRST + (std::process::id() % 2_000) as u16 * 10;
    let _ = NEXT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in FIRST..=LAST {
        let mut p = NEXT.fetch_add(1, Ordering::Relaxed);
        if p > LAST {
            NEXT.store(FIRST, Ordering::Relaxed);
            p = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(claim) = fs::File::create(claims.join(p.to_string())) else {
            continue;
        };
        // SAFETY: flock on a descriptor this function owns (close-on-exec:
        // the processes a test starts do not inherit the claim).
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&claim), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        let tcp = TcpListener::bind(("127.0.0.1", p));
        let udp = UdpSocket::bind(("127.0.0.1", p));
        if tcp.is_ok() && udp.is_ok() {
            CLAIMED.lock().unwrap_or_else(|e| e.into_inner()).push(claim);
            return p;
        }
    }
    panic!("no free port left between {FIRST} and {LAST}");
}

/// Starts `cmd` in `dir`, in its own process group (so that it can be
/// stopped with its children), stdout and stderr to `log_path`.
fn spawn_logged(mut cmd: Command, dir: &Path, log_path: &Path) -> Child {
    let log = fs::File::create(log_path).unwrap();
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()))
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: sends a signal to a process (group) this harness started.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// One uWSGI instance started from an ini text.
pub struct Uwsgi {
    pub name: String,
    child: Child,
    pub pid: i32,
    pub log_path: PathBuf,
    pub ini_path: PathBuf,
}

impl Uwsgi {
    /// Writes `<dir>/<name>.ini` and starts `binary --ini` on it.
    pub fn spawn_with(binary: &Path, dir: &Path, name: &str, ini: &str) -> Uwsgi {
        let ini_path = dir.join(format!("{name}.ini"));
        fs::write(&ini_path, ini).unwrap();
        Self::spawn_file(binary, dir, name, &ini_path, &[])
    }

    /// `binary <before_ini...> --ini <ini_path>` on a file as it is, with
    /// `dir` as its current directory, its output to `<dir>/<name>.log`.
    pub fn spawn_file(binary: &Path, dir: &Path, name: &str, ini_path: &Path, before_ini: &[&OsStr]) -> Uwsgi {
        Self::spawn_file_env(binary, dir, name, ini_path, before_ini, &[])
    }

    /// As `spawn_with`, with these variables added to its environment
    /// (`LD_PRELOAD` of libfaketime, say).
    pub fn spawn_env(dir: &Path, name: &str, ini: &str, env: &[(String, String)]) -> Uwsgi {
        let ini_path = dir.join(format!("{name}.ini"));
        fs::write(&ini_path, ini).unwrap();
        Self::spawn_file_env(&uwsgi_binary(), dir, name, &ini_path, &[], env)
    }

    fn spawn_file_env(
        binary: &Path,
        dir: &Path,
        name: &str,
        ini_path: &Path,
        before_ini: &[&OsStr],
        env: &[(String, String)],
    ) -> Uwsgi {
        let ini_path = dir.join(ini_path);
        let log_path = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(binary);
        cmd.args(before_ini).arg("--ini").arg(&ini_path);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let child = spawn_logged(cmd, dir, &log_path);
        let pid = child.id() as i32;
        Uwsgi {
            name: name.into(),
            child,
            pid,
            log_path,
            ini_path,
        }
    }

    pub fn spawn(dir: &Path, name: &str, ini: &str) -> Uwsgi {
        Self::spawn_with(&uwsgi_binary(), dir, name, ini)
    }

    /// Starts and waits until every TCP port in `ports` accepts.
    pub fn start(dir: &Path, name: &str, ini: &str, ports: &[u16]) -> Uwsgi {
        Self::start_with(&uwsgi_binary(), dir, name, ini, ports)
    }

    pub fn start_with(binary: &Path, dir: &Path, name: &str, ini: &str, ports: &[u16]) -> Uwsgi {
        let mut u = Self::spawn_with(binary, dir, name, ini);
        u.wait_ready(ports);
        u
    }

    pub fn wait_ready(&mut self, ports: &[u16]) {
        let addrs: Vec<SocketAddr> = ports.iter().map(|&p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
        self.wait_ready_on(&addrs);
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits for the process to exit on its own (bounded).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The router (gateway) processes: children of the master.
    pub fn children(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command name (which may hold spaces).
            let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
                continue;
            };
            let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(self.pid) {
                out.push(pid);
            }
        }
        out.sort_unstable();
        out
    }

    /// The router processes, once at least `n` of them run (the master
    /// forks them after the ports accept; bounded wait).
    pub fn routers(&self, n: usize) -> Vec<i32> {
        eventually(Duration::from_secs(20), || self.children().len() >= n);
        self.children()
    }

    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGINT: uWSGI's immediate shutdown (SIGTERM would reload it).
        signal(self.pid, libc::SIGINT);
        if self.wait_exit(Duration::from_secs(8)).is_none() {
            signal(-self.pid, libc::SIGKILL);
            let _ = self.child.wait();
        }
        // Children that outlived the master, if any.
        signal(-self.pid, libc::SIGKILL);
    }
}

impl Drop for Uwsgi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs an instance expected to exit by itself; returns its status and log.
pub fn run_to_exit(dir: &Path, name: &str, ini: &str) -> (Option<ExitStatus>, String) {
    run_to_exit_with(&uwsgi_binary(), dir, name, ini)
}

pub fn run_to_exit_with(binary: &Path, dir: &Path, name: &str, ini: &str) -> (Option<ExitStatus>, String) {
    let mut u = Uwsgi::spawn_with(binary, dir, name, ini);
    let status = u.wait_exit(Duration::from_secs(15));
    let log = u.log();
    u.stop();
    (status, log)
}

/// The JSON of a stats server.
pub fn stats(port: u16) -> serde_json::Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("stats server");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).expect("stats read");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("stats JSON: {e}: {body}"))
}

/// The `caches` entry called `name`.
pub fn cache_stats(port: u16, name: &str) -> serde_json::Value {
    let all = stats(port);
    all["caches"]
        .as_array()
        .and_then(|caches| caches.iter().find(|c| c["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no cache {name:?} in stats: {}", all["caches"]))
}

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
        assert!(
            self.resumption_rate() >= RESUME_FLOOR,
            "{what}: resumed {}/{} (floor {RESUME_FLOOR}): {self:?}\n{log}",
            self.resumed,
            self.attempts.saturating_sub(1)
        );
    }
}

/// Which of `pids` holds the accepted socket of the connection from
/// 127.0.0.1:`client_port` to 127.0.0.1:`server_port`.
pub fn socket_owner(server_port: u16, client_port: u16, pids: &[i32]) -> Option<i32> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{server_port:04X}");
    let remote = format!("0100007F:{client_port:04X}");
    let inode = table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() > 9 && cols[1] == local && cols[2] == remote).then(|| cols[9].to_string())
    })?;
    let needle = format!("socket:[{inode}]");
    pids.iter().copied().find(|pid| {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| {
                dir.flatten().any(|fd| {
                    fs::read_link(fd.path())
                        .map(|l| l.to_string_lossy() == needle)
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    })
}

/// A seed node's ini on loopback: the plugin, `cache_lines`, the seed's
/// session settings, an HTTPS router on `ip`:`https` with `processes`
/// router processes (its backend a dead port), stats on 127.0.0.1.
fn seed_node_ini(
    plugin_dir: &Path,
    ip: &str,
    https: u16,
    stats_port: u16,
    processes: usize,
    cache_lines: &str,
) -> String {
    let (crt, key) = cert("localhost");
    format!(
        "[uwsgi]\n\
         plugin-dir = {plugins}\n\
         plugins = sslcache\n\
         master = true\n\
         {cache_lines}\n\
         ssl-sessions-timeout = 300\n\
         https-session-context = foobar\n\
         https = {ip}:{https},{crt},{key}\n\
         http-processes = {processes}\n\
         http-to = 127.0.0.1:{dead}\n\
         stats = 127.0.0.1:{stats_port}\n",
        plugins = plugin_dir.display(),
        crt = crt.display(),
        key = key.display(),
        dead = free_port(),
    )
}

/// Seed "Setup 1" on loopback, plus the lines a test needs.
pub fn seed_setup1(plugin_dir: &Path, https_port: u16, stats_port: u16, processes: usize, cache_lines: &str) -> String {
    seed_node_ini(plugin_dir, "127.0.0.1", https_port, stats_port, processes, cache_lines)
}

pub const DEFAULT_CACHE: &str = "cache = 20000\ncache-blocksize = 4096\nssl-sessions-use-cache = true";
pub const NAMED_CACHE: &str = "cache2 = name=ssl,items=20000,keysize=128,blocksize=4096\nssl-sessions-use-cache = ssl";

/// A lock shared by the tests of one test binary that start many router
/// processes (or use the example configurations' fixed ports), when the
/// binary runs its tests on threads (`cargo test`). `make test` runs each
/// test in a process of its own (cargo nextest), where this lock holds
/// nothing: `.config/nextest.toml` weighs those tests instead (how many run
/// at once), keeps the fixed-port ones apart and runs the loopback flood
/// alone.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: OnceLock<Mutex<()>> = OnceLock::new();
    HEAVY
        .get_or_init(|| Mutex::new(()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The response every test backend sends.
const HELLO: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello";

/// A backend on 127.0.0.1 that reads one request per connection with
/// `read_request` and answers `HELLO`, each connection on its own thread,
/// until dropped.
pub struct Backend {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// Listens on 127.0.0.1:`port` (0: any free port).
    fn serve(port: u16, read_request: fn(&mut TcpStream) -> bool) -> Backend {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("backend port {port}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // Blocking accepts (a benchmark's connections must not wait for a
        // polling tick); dropping the backend wakes the last one.
        let thread = std::thread::spawn(move || {
            for s in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    if read_request(&mut s) {
                        let _ = s.write_all(HELLO);
                    }
                });
            }
        });
        Backend {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// A uwsgi-protocol backend (see [`uwsgi_backend`]) on a given port.
    pub fn uwsgi_on(port: u16) -> Backend {
        Backend::serve(port, read_uwsgi_request)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], self.port)), Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A backend on any free port, stopped after `lifetime`; its port.
fn backend(lifetime: Duration, read_request: fn(&mut TcpStream) -> bool) -> u16 {
    let backend = Backend::serve(0, read_request);
    let port = backend.port;
    std::thread::spawn(move || {
        std::thread::sleep(lifetime);
        drop(backend);
    });
    port
}

/// A plain TCP backend answering every HTTP request with a tiny response,
/// for routers that pass the decrypted stream through (sslrouter).
pub fn http_backend(lifetime: Duration) -> u16 {
    backend(lifetime, |s| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    })
}

/// A backend speaking the uwsgi protocol, which the HTTP router (`http-to`)
/// uses: every request (one uwsgi packet) gets the tiny HTTP response with
/// the body `hello`.
pub fn uwsgi_backend(lifetime: Duration) -> u16 {
    backend(lifetime, read_uwsgi_request)
}

/// Reads one uwsgi packet: modifier1, vars size (u16 little endian),
/// modifier2, the vars.
fn read_uwsgi_request(s: &mut TcpStream) -> bool {
    let mut header = [0u8; 4];
    if s.read_exact(&mut header).is_err() {
        return false;
    }
    let mut vars = vec![0u8; u16::from_le_bytes([header[1], header[2]]) as usize];
    s.read_exact(&mut vars).is_ok()
}

/// A process other than uWSGI (HAProxy), stopped by its pid on drop.
pub struct Process {
    child: Child,
    pub log_path: PathBuf,
}

impl Process {
    pub fn spawn(dir: &Path, name: &str, program: &str, args: &[&str]) -> Process {
        let log_path = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(program);
        cmd.args(args);
        let child = spawn_logged(cmd, dir, &log_path);
        Process { child, log_path }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal(-pid, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Waits until 127.0.0.1:`port` accepts TCP connections.
pub fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{what} not listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// HAProxy in TCP round-robin mode on 127.0.0.1:`port` in front of `backends`.
pub fn haproxy(dir: &Path, port: u16, backends: &[SocketAddr]) -> Process {
    haproxy_with(dir, port, backends, "    timeout connect 2s\n", "")
}

/// As `haproxy`, with `defaults` lines (each indented and ending in a
/// newline; they must set `timeout connect`) and `server_options` after
/// each server's address (health checks, say).
pub fn haproxy_with(dir: &Path, port: u16, backends: &[SocketAddr], defaults: &str, server_options: &str) -> Process {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    server n{i} {b} {server_options}\n"))
        .collect();
    let cfg = format!(
        "global\n    maxconn 2000\ndefaults\n    mode tcp\n{defaults}    timeout client 10s\n    \
         timeout server 10s\nfrontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\nbackend be\n    \
         balance roundrobin\n{servers}"
    );
    let path = dir.join("haproxy.cfg");
    fs::write(&path, cfg).unwrap();
    let p = Process::spawn(dir, "haproxy", "haproxy", &["-db", "-f", path.to_str().unwrap()]);
    wait_port(port, "haproxy");
    p
}

/// A Redis server (Debian's redis-server) on 127.0.0.1:`port`, in memory
/// only, stopped by its pid on drop.
pub fn redis_server(dir: &Path, name: &str, port: u16) -> Process {
    let port_arg = port.to_string();
    let p = Process::spawn(
        dir,
        name,
        "redis-server",
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            &port_arg,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ],
    );
    wait_port(port, "redis-server");
    p
}

/// uWSGI's rawrouter on 127.0.0.1:`port` in front of `backends` (seed Setup 2).
pub fn rawrouter(dir: &Path, port: u16, backends: &[SocketAddr]) -> Uwsgi {
    let to: String = backends.iter().map(|b| format!("rawrouter-to = {b}\n")).collect();
    let ini = format!("[uwsgi]\nplugins = rawrouter\nmaster = true\nrawrouter = 127.0.0.1:{port}\n{to}");
    Uwsgi::start(dir, "rawrouter", &ini, &[port])
}

/// Seed "Setup 2" node `i` (1-based) on 127.0.0.`i`: HTTPS on `https`,
/// stats on 127.0.0.1:`stats_port`, then the `replication` lines.
pub fn seed_setup2_node(plugin_dir: &Path, i: usize, https: u16, stats_port: u16, replication: &str) -> String {
    seed_node_ini(plugin_dir, &format!("127.0.0.{i}"), https, stats_port, 2, DEFAULT_CACHE) + replication
}

/// `ini` with its `http-to` lines replaced by one to 127.0.0.1:`port`.
pub fn with_http_to(ini: &str, port: u16) -> String {
    let mut out = String::new();
    let mut replaced = false;
    for line in ini.lines() {
        if line.starts_with("http-to") {
            if !replaced {
                out += &format!("http-to = 127.0.0.1:{port}\n");
                replaced = true;
            }
        } else {
            out += line;
            out.push('\n');
        }
    }
    out
}

/// Setup 2's replication lines for node `i` of `n`: receive on
/// 127.0.0.`i`:`udp`, send to every other node.
pub fn setup2_replication(i: usize, n: usize, udp: u16) -> String {
    let peers: String = (1..=n)
        .filter(|&j| j != i)
        .map(|j| format!("cache-udp-node = 127.0.0.{j}:{udp}\n"))
        .collect();
    format!("cache-udp-server = 127.0.0.{i}:{udp}\n{peers}")
}

/// A uWSGI metric from the stats server (0 when absent).
pub fn metric(stats_port: u16, name: &str) -> u64 {
    stats(stats_port)["metrics"][name]["value"].as_u64().unwrap_or(0)
}

/// Polls until `f` holds (bounded), returning whether it did.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `openssl s_time -reuse -www /` for `seconds` against 127.0.0.1:`port`.
/// Returns (connections per wall-clock second, share of them resumed).
/// s_time prints `r` for a resumed connection and `*` for a full one; its
/// own "real seconds" are whole seconds, hence the wall clock here.
pub fn s_time(port: u16, version: &str, seconds: u32) -> (f64, f64) {
    let started = Instant::now();
    let out = Command::new("openssl")
        .args(["s_time", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-reuse", "-www", "/", "-time", &seconds.to_string(), version])
        .output()
        .expect("openssl s_time");
    let wall = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let marks: String = text
        .lines()
        .filter(|l| !l.is_empty() && l.chars().all(|c| "r*".contains(c)))
        .collect();
    let total = marks.len().max(1);
    let resumed = marks.chars().filter(|&c| c == 'r').count();
    (total as f64 / wall, resumed as f64 / total as f64)
}

/// Resumes `session` (made first if `None`) over and over for `seconds`
/// through 127.0.0.1:`port`: handshake, `GET /`, the response read to the
/// end and checked, close_notify. Returns (resumed and answered
/// connections per second, failed handshakes). TCP_NODELAY, as curl,
/// browsers and s_time set it: without it, the request waits behind any
/// balancer's delayed ACK of the Finished (about 40 ms).
pub fn resuming_client(port: u16, seconds: u32, session: &mut Option<SslSession>) -> (f64, u32) {
    let client = Client::new(Proto::Tls12NoTickets);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    let (mut answered, mut failed) = (0u32, 0u32);
    while started.elapsed() < Duration::from_secs(seconds.into()) {
        let Ok(tcp) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            failed += 1;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let Ok(mut stream) = client.handshake_on(tcp, session.as_ref()) else {
            failed += 1;
            continue;
        };
        let resumed = stream.ssl().session_reused();
        let _ = stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
        // Up to the known body, then a clean close: OpenSSL drops a session
        // whose connection ends in an error (an EOF without close_notify).
        let mut response = Vec::new();
        let mut chunk = [0u8; 1024];
        while !response.ends_with(b"hello") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
            }
        }
        if resumed && response.ends_with(b"hello") {
            answered += 1;
        }
        let _ = stream.shutdown();
        if session.is_none() {
            *session = stream.ssl().session().map(|s| s.to_owned());
        }
    }
    (f64::from(answered) / started.elapsed().as_secs_f64(), failed)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

impl Uwsgi {
    /// Like `wait_ready`, for listeners on any address (IPv6 ones).
    pub fn wait_ready_on(&mut self, addrs: &[SocketAddr]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in addrs {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("{} exited early ({status}):\n{}", self.name, self.log());
                }
                if TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} not listening on {addr}:\n{}",
                    self.name,
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Runs `f` in a network namespace of its own (this thread and what it
/// starts), loopback up, where `iptables` drops `loss` of the UDP datagrams
/// to each of `ports`.
pub fn in_lossy_namespace<T: Send>(ports: &[u16], loss: f64, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare(2) moves this thread alone (spawned for it)
                // into a new network namespace; processes it starts inherit
                // it, and it ends with the thread.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare (needs root)");
                let run = |args: &[&str]| {
                    let out = Command::new(args[0]).args(&args[1..]).output().expect(args[0]);
                    assert!(
                        out.status.success(),
                        "{args:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                };
                run(&["ip", "link", "set", "lo", "up"]);
                for port in ports.iter().filter(|_| loss > 0.0) {
                    run(&[
                        "iptables",
                        "-A",
                        "INPUT",
                        "-p",
                        "udp",
                        "--dport",
                        &port.to_string(),
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &loss.to_string(),
                        "-j",
                        "DROP",
                    ]);
                }
                f()
            })
            .join()
            .unwrap()
    })
}
