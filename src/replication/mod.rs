//! Replication of one core's groups: the Raft host over raft-rs (`raft_host`), the vShard
//! state machine (`kv`), the write-ahead log's record format and replay rules (`wal`),
//! out-of-band snapshot transfer (`snapshot_transfer`), the decision procedure of one
//! replica move (`replica_move`) and the screening of peers' messages before raft-rs sees
//! them (`screen`), and the table of one core's groups by id (`group_table`). All sans-IO.

pub mod group_table;
pub mod kv;
pub mod raft_host;
pub mod replica_move;
pub mod screen;
pub mod snapshot_transfer;
pub mod wal;
