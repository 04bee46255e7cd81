//! Ini texts of the seed's setups on loopback (Setup 1, Setup 2's nodes and
//! replication lines) and the cache lines tests use.

use std::path::Path;

use crate::pki::cert;
use crate::ports::free_port;

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
