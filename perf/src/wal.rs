//! `wal`: write-ahead log appends per second with group commit against one fsync per group.
//!
//! Each round every one of `groups` Raft groups has one entry (and hard state) to persist,
//! as after one loop turn of a busy core. Group commit writes the whole round as one record
//! with one `fdatasync`; the baseline writes each group's part as its own record with its
//! own `fdatasync`. Both run on one glommio core against a log in `--dir`, in the same run.

use std::path::PathBuf;
use std::time::Instant;

use nodedb_cluster::replication::raft_host::GroupWrite;

use nodedb_cluster::ids::GroupId;
use nodedb_cluster::runtime::executor::{CorePlacement, spawn_executor};
use nodedb_cluster::runtime::wal::WalFile;
use raft::eraftpb::{Entry, HardState};

pub struct WalResult {
    pub group_commit_writes_per_sec: f64,
    pub per_group_writes_per_sec: f64,
    pub group_commit_fsyncs: u64,
    pub per_group_fsyncs: u64,
}

fn write(group: u64, index: u64, payload: usize) -> GroupWrite {
    let entry = Entry {
        index,
        term: 1,
        data: vec![7u8; payload].into(),
        ..Default::default()
    };
    let hard_state = HardState {
        term: 1,
        vote: 1,
        commit: index.saturating_sub(1),
        ..Default::default()
    };
    GroupWrite {
        group: GroupId(group),
        hard_state: Some(hard_state),
        entries: vec![entry],
        snapshot: None,
    }
}

/// Removes a log and its mark (a log removed alone is refused as shortened).
fn remove_log(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(nodedb_cluster::runtime::wal::mark_path(path));
}

pub fn run(dir: PathBuf, groups: u64, rounds: u64, payload: usize) -> Result<WalResult, String> {
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    spawn_executor("wal-bench", CorePlacement::Unbound, move || async move {
        let path = dir.join(format!("bench-{}.wal", std::process::id()));
        remove_log(&path);
        let (mut wal, _) = WalFile::open(&path).await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        for round in 1..=rounds {
            let batch: Vec<GroupWrite> = (0..groups).map(|g| write(g, round, payload)).collect();
            wal.append(&batch).await.map_err(|e| e.to_string())?;
        }
        let grouped = (groups * rounds) as f64 / started.elapsed().as_secs_f64();
        let grouped_fsyncs = wal.stats().fsyncs;
        wal.close().await.map_err(|e| e.to_string())?;
        remove_log(&path);

        let (mut wal, _) = WalFile::open(&path).await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        for round in 1..=rounds {
            for g in 0..groups {
                wal.append(&[write(g, round, payload)])
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        let single = (groups * rounds) as f64 / started.elapsed().as_secs_f64();
        let single_fsyncs = wal.stats().fsyncs;
        wal.close().await.map_err(|e| e.to_string())?;
        remove_log(&path);
        Ok(WalResult {
            group_commit_writes_per_sec: grouped,
            per_group_writes_per_sec: single,
            group_commit_fsyncs: grouped_fsyncs,
            per_group_fsyncs: single_fsyncs,
        })
    })
    .map_err(|e| e.to_string())?
    .join()
    .map_err(|e| e.to_string())?
}
