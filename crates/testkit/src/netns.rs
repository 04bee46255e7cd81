//! Network namespaces of a test's own, with UDP loss (iptables).

use std::process::Command;

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
