//! The fault rates of one run, drawn from its seed (VOPR style): each seed explores its own
//! mix of loss, duplication, delay, slow fsyncs, crashes, partitions, clock jumps, pauses,
//! leader transfers, replica moves and disk corruption.

use serde::Serialize;

use crate::ids::NodeId;
use crate::rng::Rng;
use crate::sim::STEP;

/// Fault rates drawn from the seed.
#[derive(Clone, Debug, Serialize)]
pub struct Faults {
    pub loss: f64,
    pub duplicate: f64,
    pub max_delay_steps: u64,
    pub max_fsync_steps: u64,
    pub crash_per_step: f64,
    pub partition_per_step: f64,
    /// Chance per step that a node's clock jumps ahead, or its process pauses.
    pub clock_jump_per_step: f64,
    pub pause_per_step: f64,
    /// Chance per step that a group's leader is asked to hand leadership to another voter.
    pub transfer_per_step: f64,
    /// Chance per step that a replica starts moving to another node or core.
    pub move_per_step: f64,
    /// Chance per step that a node's synced log is damaged (then it crashes; at most once
    /// per run, so a quorum of every group survives).
    pub corrupt_per_step: f64,
    /// Chance per step that the operator decommissions a healthy node (at most once per
    /// run, only in runs without disk damage and with the rebalancer on, which drains it):
    /// a cluster of four keeps three nodes for groups of three replicas.
    pub retire_per_step: f64,
}

impl Faults {
    pub fn draw(rng: &mut Rng) -> Faults {
        Faults {
            loss: rng.next_f64() * 0.15,
            duplicate: rng.next_f64() * 0.05,
            max_delay_steps: 1 + rng.below(15),
            max_fsync_steps: rng.below(20),
            crash_per_step: rng.next_f64() * 0.006,
            partition_per_step: rng.next_f64() * 0.004,
            clock_jump_per_step: rng.next_f64() * 0.002,
            pause_per_step: rng.next_f64() * 0.002,
            transfer_per_step: rng.next_f64() * 0.004,
            move_per_step: rng.next_f64() * 0.004,
            corrupt_per_step: if rng.below(4) == 0 {
                rng.next_f64() * 0.002
            } else {
                0.0
            },
            retire_per_step: 0.0,
        }
        .with_retirement(rng)
    }

    /// One run in three without disk damage also retires a node.
    fn with_retirement(mut self, rng: &mut Rng) -> Faults {
        if self.corrupt_per_step == 0.0 && rng.below(3) == 0 {
            self.retire_per_step = rng.next_f64() * 0.002;
        }
        self
    }

    /// No faults at all (scripted scenarios).
    pub fn none() -> Faults {
        Faults {
            loss: 0.0,
            duplicate: 0.0,
            max_delay_steps: 1,
            max_fsync_steps: 0,
            crash_per_step: 0.0,
            partition_per_step: 0.0,
            clock_jump_per_step: 0.0,
            pause_per_step: 0.0,
            transfer_per_step: 0.0,
            move_per_step: 0.0,
            corrupt_per_step: 0.0,
            retire_per_step: 0.0,
        }
    }
}

impl crate::sim::Sim {
    /// Counts a fault of `kind` (crash, clock jump, pause, partition) that strikes while
    /// some replica sleeps (is quiesced): the run exercised quiescence under it.
    fn note_fault_kind(&mut self, kind: usize) {
        let asleep = self.nodes.values().any(|n| {
            n.cores
                .iter()
                .filter_map(|c| c.node.as_ref())
                .any(|core| core.quiesced_groups() > 0)
        });
        if asleep {
            self.report.faults_while_quiesced[kind] += 1;
        }
    }

    /// This step's faults of the process, the disk and the network (the operator's
    /// transfers and moves are drawn in `operate`).
    pub(super) fn inject_faults(&mut self) {
        self.restart_due();
        // Founders and, once it asked, a node that joins: faults strike it too.
        let members = self.nodes.len() as u64;
        if self.rng.next_f64() < self.faults.crash_per_step {
            let n = NodeId(1 + self.rng.below(members));
            if self.nodes.get(&n).is_some_and(|node| node.up) {
                // Sometimes back at once (mid-election), sometimes after seconds.
                let down = if self.rng.below(2) == 0 {
                    1 + self.rng.below(20)
                } else {
                    50 + self.rng.below(300)
                };
                self.note_fault_kind(0);
                self.crash(n, Some(down));
            }
        }
        if self.rng.next_f64() < self.faults.corrupt_per_step
            && self.o.nodes > u64::from(self.o.replicas)
            && self.nodes.values().all(|n| !n.failed && !n.corrupted)
        {
            // A disk returns damaged data: the node notices on its next start.
            let n = NodeId(1 + self.rng.below(members));
            let c = self.rng.below(u64::from(self.o.cores)) as usize;
            let node = self.nodes.get_mut(&n).expect("known node");
            if node.up && node.cores[c].disk.corrupt(&mut self.rng) {
                node.corrupted = true;
                self.report.corruptions += 1;
                self.record(15, n.0);
                self.crash(n, Some(1));
            }
        }
        if self.rng.next_f64() < self.faults.clock_jump_per_step {
            // A node's clock jumps ahead by up to 3 s: its timers fire early, all at once.
            let n = NodeId(1 + self.rng.below(members));
            let jump = STEP * (1 + self.rng.below(300)) as u32;
            if let Some(node) = self.nodes.get_mut(&n) {
                node.clock_ahead += jump;
            }
            self.note_fault_kind(1);
            self.record(11, n.0);
        }
        if self.rng.next_f64() < self.faults.pause_per_step {
            // A process pause (GC, swap, SIGSTOP): nothing runs on the node for up to 2 s.
            let n = NodeId(1 + self.rng.below(members));
            let until = self.step + 1 + self.rng.below(200);
            if let Some(node) = self.nodes.get_mut(&n) {
                node.paused_until = until;
            }
            self.note_fault_kind(2);
            self.record(12, n.0);
        }
        if self.rng.next_f64() < self.faults.partition_per_step {
            self.note_fault_kind(3);
            self.network.heal();
            let a = 1 + self.rng.below(members);
            let symmetric = self.rng.below(2) == 0;
            for b in (1..=members).filter(|b| *b != a) {
                self.network.cut(NodeId(a), NodeId(b));
                if symmetric {
                    self.network.cut(NodeId(b), NodeId(a));
                }
            }
            self.report.partitions += 1;
            self.record(6, a);
        } else if self.network.partitioned() && self.rng.next_f64() < 0.01 {
            self.network.heal();
        }
    }
}
