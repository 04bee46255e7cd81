//! sslcache's core: everything that does not touch uWSGI.
//!
//! The plugin crate (the host layer) builds on this one; nothing here knows
//! uWSGI's structs, so it builds and tests with plain `cargo test -p
//! sslcache-core`. Modules form layers, lowest first; a module imports only
//! from layers below it, and sits right above the highest layer it imports
//! from (the tests in `layering.rs` check both):
//!
//! 1. [`os`]: every system call of the core outside the shared-memory
//!    primitives, and the C declaration the `libc` crate lacks;
//!    [`boundary`]: the one panic boundary of every `extern "C"` entry point
//!    and thread body; [`record`], [`client_hello`], [`fresh`]: what a
//!    stored value holds, the server name of a raw ClientHello, session ids
//!    that tell their age. None of them names another module.
//! 2. [`clock`]: the one clock; [`trace`]: a timing trace of replication
//!    for the replication-window benchmark (`SSLCACHE_TRACE`).
//! 3. [`shm`]: shared mappings, locked secret pages, robust mutexes.
//! 4. [`store`]: the shared-memory session store.
//! 5. [`config`]: the option table and typed settings (it checks cache
//!    sizes against the store's bounds).
//! 6. [`replication`]: the engine that spreads sessions between nodes
//!    (wire and sealed formats, keys, transports, receiver loop).
//! 7. [`repeater`]: the udprepeater gateway, which forwards the datagrams
//!    of a cluster to its subscribers; [`tickets`]: TLS ticket keys every
//!    node derives from the cluster key.
//!
//! Inner code logs through the `log` crate's macros; the host installs the
//! logger (uWSGI's log), so no layer reaches up to print.

pub mod boundary;
pub mod client_hello;
pub mod clock;
pub mod config;
pub mod fresh;
pub mod os;
pub mod record;
pub mod repeater;
pub mod replication;
pub mod shm;
pub mod store;
pub mod tickets;
pub mod trace;

#[cfg(test)]
mod layering;
