//! Application processes hold no secrets (issue 18, item 4): the workers,
//! mules and spoolers uWSGI forks for a Python application, running as
//! `nobody`, find neither the session store in their `/proc/self/maps` nor
//! a session's master key, the cluster key or a key derived from it
//! anywhere in their own memory, first-spawned or respawned after the
//! sessions exist. The same scan of the master and of a router process
//! (which need them) finds them: the scan can fail.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openssl::pkey::PKey;
use openssl::sign::Signer;
use serde_json::Value;
use sslcache_testkit::*;

const CLUSTER_KEY: &str = "5c0ffee15badc0de0123456789abcdeffedcba9876543210a5a5a5a55a5a5a5a";

/// Scans a process's memory (itself, or a pid when run as a program by
/// the test) for needles, each given as the hex of its two halves: the
/// scanner never holds a needle's bytes in one piece, so it never finds
/// its own copy.
const SCAN_PY: &str = r#"
import ctypes, json, os, sys

STORE_MARKS = ("sslcache-store",)

def scan(pid, needles):
    if pid == "self":
        # uWSGI's processes are not dumpable after setuid: /proc/self/mem
        # is root's until the process says otherwise (any code can).
        try:
            ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)
        except Exception:
            pass
    halves = [(n["name"], bytes.fromhex(n["a"]), bytes.fromhex(n["b"])) for n in needles]
    maps = open("/proc/%s/maps" % pid).read().splitlines()
    store = [l for l in maps if any(m in l for m in STORE_MARKS)]
    for fd in os.listdir("/proc/%s/fd" % pid):
        try:
            target = os.readlink("/proc/%s/fd/%s" % (pid, fd))
        except OSError:
            continue
        if any(m in target for m in STORE_MARKS):
            store.append("fd %s -> %s" % (fd, target))
    found = set()
    scanned = 0
    with open("/proc/%s/mem" % pid, "rb", buffering=0) as mem:
        for line in maps:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            perms, path = parts[1], (parts[5] if len(parts) > 5 else "")
            if perms[0] != "r" or path in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            if "w" not in perms and path.startswith("/") and "sslcache" not in path:
                continue  # code and read-only data of files
            off, tail = lo, b""
            while off < hi:
                n = min(1 << 20, hi - off)
                try:
                    mem.seek(off)
                    chunk = mem.read(n)
                except OSError:
                    break
                scanned += len(chunk)
                data = tail + chunk
                for name, a, b in halves:
                    if name in found:
                        continue
                    i = data.find(a)
                    while i >= 0:
                        if data[i + len(a):i + len(a) + len(b)] == b:
                            found.add(name)
                            break
                        i = data.find(a, i + 1)
                tail = data[-96:]
                off += n
    return {"pid": os.getpid() if pid == "self" else int(pid), "store": store,
            "found": sorted(found), "scanned": scanned}

def write(dirname, kind, result):
    path = os.path.join(dirname, "%s-%d.json" % (kind, result["pid"]))
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.rename(path + ".tmp", path)

if __name__ == "__main__":
    print(json.dumps(scan(sys.argv[1], json.load(sys.stdin))))
"#;

/// The application: `/scan` scans this worker, `/mule` and `/spool` hand
/// the needles to the mule and the spooler, which write their results.
const APP_PY: &str = r#"
import json, os, uwsgi, scan

def application(env, start_response):
    path = env.get("PATH_INFO", "")
    body = env["wsgi.input"].read(int(env.get("CONTENT_LENGTH") or 0))
    if path == "/scan":
        result = scan.scan("self", json.loads(body))
        # uWSGI's cache API on the session cache's entry: empty, harmless.
        result["cache"] = "get=%r default=%r exists=%r set=%r" % (
            uwsgi.cache_get("k"), uwsgi.cache_get("k", "default"),
            uwsgi.cache_exists("k", "default"), uwsgi.cache_set("k", b"v", 0, "default"))
        out = json.dumps(result).encode()
    elif path == "/mule":
        uwsgi.mule_msg(body, 1)
        out = b"sent"
    elif path == "/spool":
        uwsgi.spool({b"needles": body})
        out = b"spooled"
    else:
        out = b"hello"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
    return [out]
"#;

/// The spooler's task (`spooler-import`: loaded in the spooler, with or
/// without `lazy-apps`).
const SPOOLTASK_PY: &str = r#"
import json, os, uwsgi, scan

RESULTS = os.path.join(os.getcwd(), "results")

def spooler(env):
    scan.write(RESULTS, "spooler", scan.scan("self", json.loads(env[b"needles"])))
    return uwsgi.SPOOL_OK

uwsgi.spooler = spooler
"#;

const MULE_PY: &str = r#"
import json, os, uwsgi, scan

RESULTS = os.path.join(os.getcwd(), "results")
while True:
    msg = uwsgi.mule_get_msg()
    scan.write(RESULTS, "mule", scan.scan("self", json.loads(msg)))
"#;

fn python_plugin_available() -> bool {
    let found = Path::new("/usr/lib/uwsgi/plugins/python3_plugin.so").exists();
    assert!(
        found || !require_all(),
        "python3 plugin missing: apt-get install uwsgi-plugin-python3"
    );
    found
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The needles' JSON: name and the hex of each half.
fn needles_json(needles: &[(String, Vec<u8>)]) -> String {
    let list: Vec<Value> = needles
        .iter()
        .map(|(name, bytes)| {
            let (a, b) = bytes.split_at(bytes.len() / 2);
            serde_json::json!({"name": name, "a": hex(a), "b": hex(b)})
        })
        .collect();
    Value::Array(list).to_string()
}

/// The key a sealing node with `sender` id seals with (seal.rs's
/// derivation): its AES key schedule starts with these bytes.
fn sender_key(key: &[u8], sender: u64) -> Vec<u8> {
    let pkey = PKey::hmac(key).unwrap();
    let mut signer = Signer::new(openssl::hash::MessageDigest::sha256(), &pkey).unwrap();
    signer.update(b"sslcache v1 sender key\0").unwrap();
    signer.update(&sender.to_be_bytes()).unwrap();
    signer.sign_to_vec().unwrap()
}

/// The sender id a node's startup line shows.
fn sender_of(log: &str) -> u64 {
    let at = log.find("(sender ").expect("a sealed startup line") + "(sender ".len();
    u64::from_str_radix(&log[at..at + 16], 16).unwrap()
}

fn http(port: u16, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("http-socket");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn json_body(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// Scans every worker through `/scan` (concurrent requests until each of
/// the `workers` pids answered).
fn scan_workers(web: u16, needles: &str, workers: usize) -> Vec<Value> {
    let mut seen: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < workers && Instant::now() < deadline {
        let answers: Vec<Value> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| s.spawn(|| json_body(&http(web, "/scan", needles))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for a in answers {
            if !seen.iter().any(|s| s["pid"] == a["pid"]) {
                seen.push(a);
            }
        }
    }
    assert_eq!(seen.len(), workers, "not every worker answered: {seen:?}");
    seen
}

/// Waits for the result file a mule or spooler wrote (`kind-<pid>.json`)
/// that is not in `known`.
fn await_result(results: &Path, kind: &str, known: &mut BTreeSet<PathBuf>) -> Value {
    let mut found = None;
    assert!(
        eventually(Duration::from_secs(90), || {
            for e in std::fs::read_dir(results).unwrap().flatten() {
                let p = e.path();
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                if name.starts_with(&format!("{kind}-")) && name.ends_with(".json") && !known.contains(&p) {
                    known.insert(p.clone());
                    found = Some(std::fs::read_to_string(&p).unwrap());
                    return true;
                }
            }
            false
        }),
        "no {kind} result"
    );
    serde_json::from_str(&found.unwrap()).unwrap()
}

/// The same scan, by the test (root) over another process.
fn scan_pid(dir: &Path, pid: i32, needles: &str) -> Value {
    let mut child = Command::new("python3")
        .arg(dir.join("scan.py"))
        .arg(pid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(needles.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "scan of {pid} failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn found(v: &Value) -> Vec<String> {
    v["found"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn kill(pid: i32) {
    // SAFETY: sends SIGKILL to an application process of an instance this
    // test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Node B (under test) runs a Python application (2 workers, a mule, a
/// spooler) as `nobody` behind its HTTPS router; node A replicates to it,
/// sealed, so B's master receives sessions too.
fn run(name: &str, extra: &str) {
    if !python_plugin_available() {
        eprintln!("skipped: no uwsgi-plugin-python3");
        return;
    }
    let _heavy = heavy();
    let dir = test_dir(name);
    let results = dir.join("results");
    let spool = dir.join("spool");
    for d in [&results, &spool] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::write(dir.join("scan.py"), SCAN_PY).unwrap();
    std::fs::write(dir.join("app.py"), APP_PY).unwrap();
    std::fs::write(dir.join("mule.py"), MULE_PY).unwrap();
    std::fs::write(dir.join("spooltask.py"), SPOOLTASK_PY).unwrap();
    let key_path = key_file(&dir, "cluster.key", &[CLUSTER_KEY]);

    let cache = "cache = 2000\ncache-blocksize = 4096\nssl-sessions-use-cache = true";
    let (udp_a, udp_b) = (free_port(), free_port());
    let (https_a, stats_a) = (free_port(), free_port());
    let (https_b, stats_b, socket_b, web_b) = (free_port(), free_port(), free_port(), free_port());
    let ini_a = seed_setup1(&plugin_dir(), https_a, stats_a, 2, cache)
        + &format!(
            "cache-udp-server = 127.0.0.1:{udp_a}\ncache-udp-node = 127.0.0.1:{udp_b}\ncache-udp-key = {}\n",
            key_path.display()
        );
    let ini_b = with_http_to(&seed_setup1(&plugin_dir(), https_b, stats_b, 2, cache), socket_b)
        + &format!(
            "cache-udp-server = 127.0.0.1:{udp_b}\ncache-udp-node = 127.0.0.1:{udp_a}\ncache-udp-key = {key}\n\
             plugins = python3\npythonpath = {dir}\nsocket = 127.0.0.1:{socket_b}\nhttp-socket = 127.0.0.1:{web_b}\n\
             wsgi-file = app.py\nprocesses = 2\nmule = mule.py\nspooler = {spool}\nspooler-frequency = 1\nspooler-import = spooltask\n\
             uid = nobody\ngid = nogroup\n{extra}",
            key = key_path.display(),
            dir = dir.display(),
            spool = spool.display(),
        );
    let a = Uwsgi::start(&dir, "node-a", &ini_a, &[https_a, stats_a]);
    let b = Uwsgi::start(&dir, "node-b", &ini_b, &[https_b, stats_b, web_b]);
    let log_b = b.log();
    assert!(log_b.contains("sealed with AES-256-GCM"), "{log_b}");

    // Sessions made through both routers, their master keys learnt here.
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for (node, port) in [("b", https_b), ("a", https_a)] {
        for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
            for i in 0..3 {
                let conn = Client::new(proto).connect(port, None, &[]).expect("a TLS connection");
                let session = conn.session.expect("a session");
                let mut mk = vec![0u8; 64];
                let n = session.master_key(&mut mk);
                mk.truncate(n);
                assert!(n >= 32, "master key of {n} bytes");
                needles.push((format!("master key {node} {proto:?} {i}"), mk));
            }
        }
    }
    // A's sessions reached B's master, and B's reached A's.
    assert!(
        eventually(Duration::from_secs(20), || metric(stats_b, "sslcache.default.applied")
            >= 6
            && metric(stats_a, "sslcache.default.applied") >= 6),
        "replication: B applied {}, A applied {}",
        metric(stats_b, "sslcache.default.applied"),
        metric(stats_a, "sslcache.default.applied")
    );
    let cluster_key = unhex(CLUSTER_KEY);
    needles.push(("cluster key".into(), cluster_key.clone()));
    needles.push(("B's sender key".into(), sender_key(&cluster_key, sender_of(&log_b))));
    needles.push(("A's sender key".into(), sender_key(&cluster_key, sender_of(&a.log()))));
    let needles = needles_json(&needles);

    let mut known = BTreeSet::new();
    let mut app_pids = BTreeSet::new();
    let mut failures = Vec::new();
    for round in ["first spawned", "respawned after the sessions"] {
        let mut scans: Vec<(String, Value)> = scan_workers(web_b, &needles, 2)
            .into_iter()
            .map(|v| (format!("worker {}", v["pid"]), v))
            .collect();
        assert!(http(web_b, "/mule", &needles).contains("sent"));
        scans.push(("mule".into(), await_result(&results, "mule", &mut known)));
        assert!(http(web_b, "/spool", &needles).contains("spooled"));
        scans.push(("spooler".into(), await_result(&results, "spooler", &mut known)));
        for (what, scan) in &scans {
            let pid = scan["pid"].as_i64().unwrap() as i32;
            assert!(app_pids.insert(pid), "{what} {pid} scanned twice");
            println!(
                "{round} {what} (pid {pid}): {} MB scanned, store mappings {}, found {:?}{}",
                scan["scanned"].as_u64().unwrap() >> 20,
                scan["store"],
                found(scan),
                scan.get("cache")
                    .map(|c| format!(", cache API: {c}"))
                    .unwrap_or_default()
            );
            assert!(scan["scanned"].as_u64().unwrap() > 1 << 20, "{what}: scanned nothing");
            if !scan["store"].as_array().unwrap().is_empty() || !found(scan).is_empty() {
                failures.push(format!(
                    "{round} {what} (pid {pid}): store {} found {:?}",
                    scan["store"],
                    found(scan)
                ));
            }
            if let Some(cache) = scan.get("cache") {
                assert_eq!(
                    cache.as_str().unwrap(),
                    "get=None default=None exists=None set=None",
                    "{what}"
                );
            }
        }
        if round == "first spawned" {
            // Respawn every application process: the new ones are forked
            // from a master whose memory held the sessions.
            let pids: Vec<i32> = scans.iter().map(|(_, s)| s["pid"].as_i64().unwrap() as i32).collect();
            for &pid in &pids {
                kill(pid);
            }
            assert!(
                eventually(Duration::from_secs(30), || {
                    let children = b.children();
                    // 2 routers, 2 workers, the mule, the spooler.
                    pids.iter().all(|p| !children.contains(p)) && children.len() >= 6
                }),
                "the application processes did not come back: {:?}\n{}",
                b.children(),
                b.log()
            );
            assert!(eventually(Duration::from_secs(20), || http(web_b, "/", "").contains("hello")));
        }
    }

    // The control: the master and a router process hold the store (and
    // the master the cluster key), and the same scan sees them.
    let master = scan_pid(&dir, b.pid, &needles);
    println!(
        "master (pid {}): store {}, found {:?}",
        b.pid,
        master["store"],
        found(&master)
    );
    assert!(!master["store"].as_array().unwrap().is_empty(), "{master}");
    assert!(found(&master).contains(&"cluster key".to_string()), "{master}");
    let routers: Vec<i32> = b.children().into_iter().filter(|p| !app_pids.contains(p)).collect();
    let mut router_found = false;
    for pid in routers {
        let scan = scan_pid(&dir, pid, &needles);
        if scan["store"].as_array().unwrap().is_empty() {
            continue; // an application process respawned since
        }
        println!("router (pid {pid}): store {}, found {:?}", scan["store"], found(&scan));
        router_found |= found(&scan).iter().any(|f| f.starts_with("master key b"));
    }
    assert!(router_found, "no router process shows the store and its sessions");

    // Sessions still resume across B's router processes.
    let routers = b.routers(2);
    for proto in [Proto::Tls12NoTickets, Proto::Tls13] {
        let out = Client::new(proto).reconnects(https_b, 30, &routers);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert!(out.resumption_rate() >= 0.95, "{proto:?}: {out:?}");
    }
    assert!(
        failures.is_empty(),
        "application processes hold secrets:\n{}",
        failures.join("\n")
    );
}

#[test]
fn application_processes_hold_no_secrets() {
    run("app-secrets", "");
}

/// The same with `lazy-apps`: the application is loaded in each worker,
/// never in the master.
#[test]
fn lazy_apps_hold_no_secrets() {
    run("app-secrets-lazy", "lazy-apps = true\n");
}
