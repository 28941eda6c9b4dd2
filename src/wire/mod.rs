//! Wire formats: what crosses the network between nodes and clients, and how it is checked.
//!
//! Sans-IO: these modules turn bytes into typed values and back; sockets live in
//! `runtime`. Every decoder treats its input as hostile: bounded allocation, a typed error
//! for anything malformed, never a panic.

pub mod codec;
pub mod frame;
pub mod kv_rpc;
pub mod raft;
