//! The cluster's shape and its record of it: the static spec a new cluster starts from
//! (`spec`), nodes and their states (`topology`), the stable
//! `key → vShard` hash (`vshard`), where every vShard's replicas live (`placement`), and the
//! metadata group's state machine that changes all of it through one Raft log (`metadata`).

pub mod metadata;
pub mod placement;
pub mod spec;
pub mod topology;
pub mod vshard;
