//! uWSGI instances: started from an ini text or file, waited for, their
//! router processes found, stopped; their stats server and metrics read.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::env::uwsgi_binary;
use crate::process::{signal, spawn_logged};
use crate::wait::eventually;

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

    /// Sends `sig` to the master (SIGHUP: a reload; SIGKILL: `kill -9`);
    /// fails the test when it cannot be sent.
    #[track_caller]
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of the master this harness started
        // (kept until `Drop`: not reused while `self` lives).
        let sent = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(
            sent,
            0,
            "{}: signal {sig}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
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

/// Runs an instance that must refuse to start: uWSGI exits with status 1
/// and its log holds one `[sslcache]` line, which contains `expected`;
/// that line.
#[track_caller]
pub fn assert_refused(dir: &Path, name: &str, ini: &str, expected: &str) -> String {
    let (status, log) = run_to_exit(dir, name, ini);
    let status = status.unwrap_or_else(|| panic!("{name}: uWSGI did not exit:\n{log}"));
    assert_eq!(status.code(), Some(1), "{name}: {status}\n{log}");
    let ours: Vec<&str> = log.lines().filter(|l| l.starts_with("[sslcache]")).collect();
    assert_eq!(ours.len(), 1, "{name}: expected one [sslcache] line:\n{log}");
    assert!(
        ours[0].contains(expected),
        "{name}: {:?} does not contain {expected:?}",
        ours[0]
    );
    ours[0].to_string()
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

/// A uWSGI metric from the stats server (0 when absent).
pub fn metric(stats_port: u16, name: &str) -> u64 {
    stats(stats_port)["metrics"][name]["value"].as_u64().unwrap_or(0)
}
