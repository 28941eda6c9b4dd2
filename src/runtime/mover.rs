//! The migration executor: carries out the replica moves recorded in the placement table.
//!
//! It runs on core 0 of every node and acts only while that core leads the metadata
//! group, so a new metadata leader resumes every unfinished move from the table. Every
//! `MOVE_STEP_INTERVAL` it takes each move one step: it asks the group's leader for its
//! view (`KvOp::View`), lets the sans-IO [`ReplicaMove`] decide, and performs the actions
//! with admin requests over the client protocol (`ChangeMembership`, `TransferLeader`),
//! authenticated with the node's certificate. The new replica exists because the table
//! placed it (`start_move`); the old one is retired by `end_move`, which this executor
//! proposes through its own core only — network clients cannot end a move.
//!
//! What the runtime cannot know, it does not guess: a voter that does not answer its
//! `DurableCommit` counts as not knowing (the old replica then stays until it answers), and
//! no target is declared failed by the executor (a move to a node that is down waits for
//! it, until an operator abandons the move with `abandon_move`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use tracing::{debug, info};

use crate::cluster::metadata::MetadataCommand;
use crate::cluster::placement::{PendingMove, PlacementTable};
use crate::constants::MOVE_STEP_INTERVAL;
use crate::ids::{GroupId, ReplicaId};
use crate::metrics::cores::{CoreCounter, NodeMetrics};
use crate::replication::replica_move::{MoveAction, MoveContext, MoveOutcome, ReplicaMove};
use crate::runtime::client::{ClientError, KvClient};
use crate::runtime::node::{METADATA_GROUP, NodeConfig};
use crate::wire::kv_rpc::{KvOp, KvReply, KvRequest, KvResponseFrame};

/// What the core loop shares with the executor.
#[derive(Default)]
pub(crate) struct MoverShared {
    /// Whether this core leads the metadata group (only the leader's executor acts).
    pub leader: Cell<bool>,
    /// The latest placement table this node applied.
    pub table: RefCell<Option<Arc<PlacementTable>>>,
}

/// Hands a request to this core's loop as a trusted one; the receiver gets its answer.
pub(crate) type Submit = Rc<dyn Fn(KvRequest) -> async_channel::Receiver<KvResponseFrame>>;

/// Runs until its task is dropped (the core stops).
pub(crate) async fn run(
    shared: Rc<MoverShared>,
    config: Arc<NodeConfig>,
    metrics: Arc<NodeMetrics>,
    submit: Submit,
) {
    let metrics = metrics.core(0);
    let mut client: Option<KvClient> = None;
    let mut moves: HashMap<GroupId, ReplicaMove> = HashMap::new();
    loop {
        glommio::timer::sleep(MOVE_STEP_INTERVAL).await;
        let table = shared.table.borrow().clone();
        let Some(table) = table.filter(|_| shared.leader.get()) else {
            moves.clear();
            continue;
        };
        let recorded: BTreeMap<GroupId, PendingMove> = table
            .groups()
            .filter_map(|(g, p)| p.moving.map(|m| (g, m)))
            .collect();
        moves.retain(|g, m| recorded.get(g).is_some_and(|r| r.new == m.new));
        if recorded.is_empty() {
            continue;
        }
        if client.is_none() {
            match KvClient::new(config.spec.clone(), config.tls.clone(), config.mtu) {
                Ok(c) => client = Some(c),
                Err(e) => {
                    debug!(error = %e, "migration executor has no client yet");
                    continue;
                }
            }
        }
        let client = client.as_ref().expect("just made");
        for (group, recorded) in recorded {
            let m = moves.entry(group).or_insert_with(|| {
                ReplicaMove::new(group, recorded.from, recorded.to, recorded.new)
            });
            match step(client, &submit, &table, m, recorded.abandon).await {
                Ok(ended) => {
                    metrics.add(CoreCounter::MoveSteps, 1);
                    if ended {
                        metrics.add(CoreCounter::MovesEnded, 1);
                    }
                }
                Err(e) => debug!(group = group.0, error = %e, "replica move step failed; retrying"),
            }
        }
    }
}

/// What the executor knows beyond the leader's view.
struct Known {
    /// The voters' durable commit indexes, as far as they answered.
    durable: BTreeMap<ReplicaId, u64>,
    /// An operator asked to give the move up (`abandon_move`).
    abandon: bool,
}

impl MoveContext for Known {
    /// The runtime declares no target failed by itself; an operator's `abandon_move` does.
    fn target_failed(&self) -> bool {
        self.abandon
    }

    fn voters_durably_know(&self, voters: &[ReplicaId], index: u64) -> bool {
        voters
            .iter()
            .all(|v| self.durable.get(v).is_some_and(|known| *known >= index))
    }
}

/// One step of one move; `Ok(true)` when it ended the move.
async fn step(
    client: &KvClient,
    submit: &Submit,
    table: &PlacementTable,
    m: &mut ReplicaMove,
    abandon: bool,
) -> Result<bool, ClientError> {
    let group = m.group;
    let view = match client.admin(group, KvOp::View { new: m.new }).await? {
        KvReply::View(view) => view,
        other => return Err(ClientError::Protocol(format!("{other:?}"))),
    };
    // Durable knowledge matters once the old replica is out of the configuration.
    let mut known = BTreeMap::new();
    if !view.membership.joint && !view.membership.contains(m.from) {
        let placement = table.group(group);
        for voter in &view.membership.voters {
            let Some(at) = placement.and_then(|p| p.address_of(*voter)) else {
                continue;
            };
            if let Ok(KvReply::Index(index)) = client.call_at(at, group, KvOp::DurableCommit).await
            {
                known.insert(*voter, index);
            }
        }
    }
    let (actions, outcome) = m.next(
        &view,
        &Known {
            durable: known,
            abandon,
        },
    );
    for action in actions {
        let op = match action {
            // The table placed the new replica (its core created it) and `end_move` retires
            // whichever replica leaves.
            MoveAction::CreateReplica { .. } | MoveAction::DestroyReplica(_) => continue,
            MoveAction::Propose(changes) => KvOp::ChangeMembership { changes },
            MoveAction::TransferLeader(to) => KvOp::TransferLeader { to },
        };
        debug!(group = group.0, ?op, "replica move step");
        client.admin(group, op).await?;
    }
    if let Some(outcome) = outcome {
        let moved = outcome == MoveOutcome::Moved;
        let command = MetadataCommand::EndMove {
            group,
            new: m.new,
            moved,
        };
        let reply = submit(KvRequest {
            id: 0,
            group: METADATA_GROUP,
            op: KvOp::Write {
                command: command.encode(),
            },
        })
        .recv()
        .await
        .map_err(|_| ClientError::Server("the core stopped".into()))?;
        match reply.reply {
            KvReply::Written(response) if response.first() == Some(&1) => {
                info!(
                    group = group.0,
                    from = m.from.0,
                    new = m.new.0,
                    moved,
                    "replica move ended"
                );
            }
            other => return Err(ClientError::Protocol(format!("end_move: {other:?}"))),
        }
        return Ok(true);
    }
    Ok(false)
}
