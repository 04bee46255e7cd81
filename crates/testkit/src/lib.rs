//! Test and demo harness: real uWSGI processes, real TLS clients, loopback
//! only. Every process started here is stopped by its pid (SIGINT to the
//! master, then SIGKILL to its process group), every wait is bounded.
//!
//! One module a job, everything re-exported here (`use
//! sslcache_testkit::*;`):
//!
//! - `env`: the repository, the uWSGI binary, the plugin, test directories;
//! - `pki`: certificates, a CA and a client certificate;
//! - `ports`: free ports, waiting for one, who holds a connection;
//! - `process`, `uwsgi`: processes started and stopped by their pid, uWSGI
//!   instances and their stats;
//! - `ini`: the seed's setups as ini texts;
//! - `client`: TLS clients, reconnect loops, [`Outcome`] and [`RESUME_FLOOR`];
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
