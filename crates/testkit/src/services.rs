//! The other servers of a cluster: HAProxy, Redis, uWSGI's rawrouter.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use crate::ports::wait_port;
use crate::process::Process;
use crate::uwsgi::Uwsgi;

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
