//! Test and demo harness: real uWSGI processes, real TLS clients, loopback
//! only. Every process started here is stopped by its pid (SIGINT to the
//! master, then SIGKILL to its process group), every wait is bounded.
//!
//! One module a job, everything re-exported here (`use
//! sslcache_testkit::*;`):
//!
//! - `env`: the repository, the uWSGI binary, the plugin, test directories;
//! - `pki`: certificates, a CA and a client certificate, cluster key files;
//! - `ports`: free ports, a cluster's addresses, waiting for them, who holds
//!   a connection;
//! - `process`, `uwsgi`: processes started, signalled and stopped by their
//!   pid, uWSGI instances (one that must refuse to start) and their stats;
//! - `ini`: the seed's setups as ini texts;
//! - `client`: TLS clients, sessions made and offered, reconnect loops,
//!   [`Outcome`] and the one floor check against [`RESUME_FLOOR`];
//! - `backend`, `services`: backends, HAProxy, Redis, the rawrouter;
//! - `wait`, `netns`, `bench`: bounded waits, lossy network namespaces,
//!   benchmark load.

mod backend;
mod bench;
mod client;
mod env;
mod ini;
mod netns;
mod pki;
mod ports;
mod process;
mod services;
mod uwsgi;
mod wait;

pub use backend::*;
pub use bench::*;
pub use client::*;
pub use env::*;
pub use ini::*;
pub use netns::*;
pub use pki::*;
pub use ports::*;
pub use process::*;
pub use services::*;
pub use uwsgi::*;
pub use wait::*;
