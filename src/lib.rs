//! sslcache: a uWSGI plugin that keeps the TLS sessions of uWSGI's HTTPS
//! router in a shared-memory store used by every router process of a node.
//!
//! Layers, outermost first: [`host`] (the only code that touches uWSGI's
//! structs), [`tls`] (OpenSSL session callbacks), [`config`] (typed
//! settings), [`store`] (the shared-memory store) and [`stats`].

#![deny(unsafe_op_in_unsafe_fn)]

pub mod config;
pub mod host;
pub mod record;
pub mod stats;
pub mod store;
pub mod sync;
pub mod tls;
