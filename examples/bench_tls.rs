//! Resumed handshakes per second on one node, sslcache against stock
//! uWSGI's own (ticket) resumption, side by side (`make bench`).
//!
//! Method: two uWSGI nodes with the seed's Setup 1 on 127.0.0.1 (HTTPS
//! router, `http-processes = 4`), one with `plugins = sslcache` (sessions by
//! id, tickets off), one stock (it resumes with session tickets). The
//! client is `openssl s_time -reuse -www /` for a fixed time, against one
//! node then the other, alternating, ROUNDS times per TLS version. The rate
//! is connections / wall-clock seconds of the s_time run (s_time's own
//! "real seconds" are whole seconds). s_time prints `r` for each resumed
//! connection: every run is checked to have resumed all but the first.
//! Reported: the median of each node's rates and the median of the
//! per-round ratios (the machine is shared and noisy; rounds alternate).

use sslcache_testkit::*;

const ROUNDS: usize = 5;
const SECONDS: u32 = 4;

fn main() {
    let dir = test_dir("bench-tls");
    let (https, stats_port) = (free_port(), free_port());
    let _node = Uwsgi::start(
        &dir,
        "sslcache",
        &seed_setup1(&plugin_dir(), https, stats_port, 4, DEFAULT_CACHE),
        &[https],
    );
    let (stock_https, stock_stats) = (free_port(), free_port());
    let stock_ini =
        seed_setup1(&plugin_dir(), stock_https, stock_stats, 4, "").replace("plugins = sslcache\n", "plugins = http\n");
    let _stock = Uwsgi::start(&dir, "stock", &stock_ini, &[stock_https]);

    println!("Resumed TLS handshakes per second, one node, {ROUNDS} alternating rounds of {SECONDS} s each\n");
    println!("| TLS | stock uWSGI (tickets) | sslcache (session ids / stateful tickets) | ratio (median of rounds) |");
    println!("|---|---|---|---|");
    for version in ["-tls1_2", "-tls1_3"] {
        let (mut stock_rates, mut ours_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (stock, stock_resumed) = s_time(stock_https, version, SECONDS);
            let (ours, ours_resumed) = s_time(https, version, SECONDS);
            assert!(
                stock_resumed > 0.99 && ours_resumed > 0.99,
                "not resumed: {stock_resumed} {ours_resumed}"
            );
            stock_rates.push(stock);
            ours_rates.push(ours);
            ratios.push(ours / stock);
        }
        println!(
            "| {} | {:.0}/s | {:.0}/s | {:.3} |",
            &version[4..].replace('_', "."),
            median(stock_rates),
            median(ours_rates),
            median(ratios)
        );
    }
}
