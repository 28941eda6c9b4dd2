//! `wal`: write-ahead log appends per second with group commit against one fsync per group.
//!
//! Each round every one of `groups` Raft groups has one entry (and hard state) to persist,
//! as after one loop turn of a busy core. Group commit writes the whole round as one record
//! with one `fdatasync`; the baseline writes each group's part as its own record with its
//! own `fdatasync`. Both run on one glommio core against a log in `--dir`, in the same run.
//!
//! With `--checkpoint`: small appends while a large log is rewritten as a checkpoint in the
//! background, its writes paced and unpaced (`checkpoint_appends`).

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

/// Small appends while the log is rewritten as a checkpoint, with the checkpoint's writes
/// paced (`WAL_BACKGROUND_WRITE_BYTES_PER_SEC`) and unpaced, in alternating rounds of one
/// run, each against the same appends with no checkpoint under way.
pub struct CheckpointRow {
    pub paced: bool,
    /// Append latency (µs) while a checkpoint was being written, and with none.
    pub during: hdrhistogram::Histogram<u64>,
    pub quiet: hdrhistogram::Histogram<u64>,
    /// How long each checkpoint took, seconds.
    pub checkpoint_seconds: Vec<f64>,
}

/// Between two small appends: about a commit's pace at 500 writes a second.
const APPEND_EVERY: std::time::Duration = std::time::Duration::from_millis(2);

/// Runs `rounds` rounds of each kind. Each: a fresh log gets `live_mib` MiB of one group's
/// entries (the live log of a large vShard between two of its snapshots, which every
/// checkpoint rewrites), then a checkpoint is begun and a second group gets one small
/// entry every `APPEND_EVERY` until it is in place, then as many again with none.
pub fn checkpoint_appends(
    dir: PathBuf,
    live_mib: u64,
    rounds: u32,
) -> Result<Vec<CheckpointRow>, String> {
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    spawn_executor("wal-bench", CorePlacement::Unbound, move || async move {
        let new_histogram =
            || hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let mut rows: Vec<CheckpointRow> = [true, false]
            .into_iter()
            .map(|paced| CheckpointRow {
                paced,
                during: new_histogram(),
                quiet: new_histogram(),
                checkpoint_seconds: Vec::new(),
            })
            .collect();
        let path = dir.join(format!("checkpoint-{}.wal", std::process::id()));
        for _ in 0..rounds {
            for row in &mut rows {
                remove_log(&path);
                let (mut wal, _) = WalFile::open(&path).await.map_err(|e| e.to_string())?;
                wal.set_background_pace(
                    row.paced
                        .then_some(nodedb_cluster::constants::WAL_BACKGROUND_WRITE_BYTES_PER_SEC),
                );
                // No checkpoint while the live log is written...
                wal.set_rewrite_threshold(u64::MAX);
                const ENTRY: usize = 64 << 10;
                let per_append = (1 << 20) / ENTRY as u64;
                for mib in 0..live_mib {
                    // One MiB of entries per append.
                    let first = mib * per_append + 1;
                    let mut batch = write(1, first, ENTRY);
                    batch.entries.extend(
                        (first + 1..first + per_append).flat_map(|i| write(1, i, ENTRY).entries),
                    );
                    wal.append(&[batch]).await.map_err(|e| e.to_string())?;
                }
                // ... and one begun by the next append (at the size the log has; the
                // threshold also lets a checkpoint stay paced until the appends made
                // meanwhile reach half of it).
                wal.set_rewrite_threshold(live_mib << 20);
                let began = Instant::now();
                let mut index = 0;
                let mut during = 0u64;
                loop {
                    index += 1;
                    let checkpointing = wal.is_checkpointing();
                    let t = Instant::now();
                    wal.append(&[write(2, index, 128)])
                        .await
                        .map_err(|e| e.to_string())?;
                    let us = t.elapsed().as_micros() as u64;
                    // The append that puts it in place (fdatasync, rename, reopen) counts.
                    if checkpointing {
                        row.during.saturating_record(us);
                        during += 1;
                    }
                    if index > 1 && !wal.is_checkpointing() {
                        break;
                    }
                    glommio::timer::sleep(APPEND_EVERY).await;
                }
                row.checkpoint_seconds.push(began.elapsed().as_secs_f64());
                wal.set_rewrite_threshold(u64::MAX);
                for _ in 0..during.max(100) {
                    index += 1;
                    let t = Instant::now();
                    wal.append(&[write(2, index, 128)])
                        .await
                        .map_err(|e| e.to_string())?;
                    row.quiet.saturating_record(t.elapsed().as_micros() as u64);
                    glommio::timer::sleep(APPEND_EVERY).await;
                }
                wal.close().await.map_err(|e| e.to_string())?;
                remove_log(&path);
            }
        }
        Ok(rows)
    })
    .map_err(|e| e.to_string())?
    .join()
    .map_err(|e| e.to_string())?
}
