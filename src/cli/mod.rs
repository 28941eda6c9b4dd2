//! The subcommands of the `nodedb-cluster` binary, one file each: what each parses and how
//! it reports. The library does the work; these print and choose exit codes (0 success, 1
//! failure, 2 bad arguments or configuration).

pub mod certs;
pub mod demo;
pub mod kv;
pub mod rebalance_sim;
pub mod sim;
pub mod start;
