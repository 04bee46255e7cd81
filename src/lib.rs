//! sslcache: a uWSGI plugin that keeps the TLS sessions of uWSGI's HTTPS
//! router in a shared-memory store used by every router process of a node,
//! and replicates them between nodes.
//!
//! This crate is the host layer: everything that touches uWSGI or OpenSSL's
//! objects. Layers, outermost first — a module imports only from those
//! below it:
//!
//! 1. [`host`]: uWSGI's bindings, the plugin's hooks, the stats entry,
//!    metrics, uWSGI's SNI table and log.
//! 2. [`tls`]: the OpenSSL session callbacks and context fingerprints.
//! 3. [`ffi`]: C declarations neither the bindings nor openssl-sys have.
//!
//! Below them all, [`sslcache_core`]: store, formats, keys, configuration,
//! the replication engine — no uWSGI in it.

// Its documentation is for the engineers who work on it: links to private
// modules are meant (`cargo doc --document-private-items`).
#![allow(rustdoc::private_intra_doc_links)]

pub mod ffi;
pub mod host;
pub mod tls;
