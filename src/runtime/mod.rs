//! The runtime shell: the only part of the crate that touches glommio, clocks and the OS.
//!
//! Everything that decides lives in the sans-IO modules; this module moves time (and, in
//! later issues, bytes) in and out of them. glommio is unmaintained since 2024, so it is
//! named nowhere else: replacing it means rewriting this module only.

pub mod bench;
pub mod client;
pub mod clock;
pub mod config;
pub mod cores;
pub mod datadir;
pub mod demo;
pub mod discard;
pub mod executor;
pub mod join;
pub mod log_writer;
pub mod metrics_http;
pub mod node;
pub mod peers;
pub mod quic;
pub mod rebalancer;
pub mod threads;
pub mod tls;
pub mod wal;
