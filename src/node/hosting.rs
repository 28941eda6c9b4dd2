//! What a core hosts: exactly the replicas its latest placement table places on it (plus
//! the metadata group on core 0, which is not in the table).
//!
//! Applying a table creates the missing replicas — from their state in the log if the log
//! has one, as a voter of the group's initial configuration if the replica is one, else as
//! a joining learner whose log starts at that initial configuration — and removes the
//! replicas the table no longer places here, from the host and (through a `LogWrite::Drop`
//! the shell carries out) from the log. Groups the log held at start wait, unhosted, until
//! a table claims them or drops them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tracing::info;

use crate::cluster::placement::PlacementTable;
use crate::ids::{CoreAddress, CoreId, GroupId, ReplicaId};
use crate::node::LogWrite;
use crate::node::cell::Cell;
use crate::replication::kv::KvStore;
use crate::replication::raft_host::{HostError, PersistedGroup, RaftHost};

/// The hosting decisions of one core.
pub(crate) struct Hosting {
    local: CoreAddress,
    /// The latest table this core applied; `None` until core 0 hands one over.
    table: Option<Arc<PlacementTable>>,
    /// Groups the log held at start that no table has claimed yet.
    recovered: BTreeMap<GroupId, PersistedGroup>,
}

impl Hosting {
    pub(crate) fn new(local: CoreAddress, recovered: BTreeMap<GroupId, PersistedGroup>) -> Hosting {
        Hosting {
            local,
            table: None,
            recovered,
        }
    }

    /// The latest table applied here.
    pub(crate) fn table(&self) -> Option<&Arc<PlacementTable>> {
        self.table.as_ref()
    }

    /// Hosts exactly what `table` places on this core; the groups to drop from the log are
    /// queued on `log`. A table no newer than the one applied is ignored.
    pub(crate) fn apply(
        &mut self,
        table: Arc<PlacementTable>,
        host: &mut RaftHost<Cell>,
        log: &mut VecDeque<LogWrite>,
    ) -> Result<(), HostError> {
        if self
            .table
            .as_ref()
            .is_some_and(|t| t.epoch() >= table.epoch())
        {
            return Ok(());
        }
        for (_, p) in table.iter() {
            for r in &p.replicas {
                host.set_address(r.id, r.at);
            }
        }
        let want: BTreeMap<GroupId, ReplicaId> = table.hosted_at(self.local).collect();
        let hosted: Vec<GroupId> = host
            .group_ids()
            .filter(|g| *g != GroupId::METADATA)
            .collect();
        for group in hosted {
            if want.get(&group).copied() != host.replica_id(group) {
                host.remove_group(group);
                log.push_back(LogWrite::Drop(group));
                info!(
                    node = self.local.node.0,
                    core = self.local.core.0,
                    group = group.0,
                    "replica dropped: the placement table moved it away"
                );
            }
        }
        let unclaimed: Vec<GroupId> = self
            .recovered
            .keys()
            .copied()
            .filter(|g| !want.contains_key(g))
            .collect();
        for group in unclaimed {
            self.recovered.remove(&group);
            log.push_back(LogWrite::Drop(group));
            info!(
                node = self.local.node.0,
                core = self.local.core.0,
                group = group.0,
                "logged replica dropped: the placement table no longer places it here"
            );
        }
        for (&group, &replica) in &want {
            if host.replica_id(group).is_some() {
                continue;
            }
            let Some(placement) = table.group(group) else {
                continue;
            };
            let initial = &placement.initial;
            let state = Cell::Kv(KvStore::new());
            // The first leader, fresh or after a restart: the placement's hint, if it is
            // an initial voter (fresh) or a replica (rebuilt from the log).
            let hint = placement.replicas[placement.leader].id;
            match self.recovered.remove(&group) {
                Some(persisted) => {
                    host.add_group(group, replica, initial, Some(persisted), state)?;
                    host.start_paced(group, hint)?
                }
                None if initial.contains(&replica) => {
                    host.add_group(group, replica, initial, None, state)?;
                    let first = if initial.contains(&hint) {
                        hint
                    } else {
                        initial[0]
                    };
                    host.start_paced(group, first)?
                }
                None => {
                    info!(
                        node = self.local.node.0,
                        core = self.local.core.0,
                        group = group.0,
                        replica = replica.0,
                        "joining replica created"
                    );
                    host.add_joining_group(group, replica, initial, &[], state)?
                }
            }
        }
        self.table = Some(table);
        Ok(())
    }

    /// The core of this node that hosts a replica of `group` per the table, if any.
    pub(crate) fn home(&self, group: GroupId) -> Option<CoreId> {
        if group == GroupId::METADATA {
            return Some(CoreId(0));
        }
        self.table
            .as_ref()?
            .group(group)?
            .replica_on(self.local.node)
            .map(|a| a.core)
    }
}
