//! The per-core write-ahead log file: O_DIRECT appends through glommio, group commit.
//!
//! `WalFile::append` writes one record (a whole persist batch: every group's entries and
//! hard states of one loop turn; several records if it is too large for one) to the log,
//! which is open with `O_DIRECT | O_DSYNC`: a write completes only once it is durable (the
//! disk's cache flushed, or the write sent with FUA), so no `fdatasync` follows it; the
//! Raft host is told the batch is durable only after the write returned. `WalFile::open` replays the log (see
//! `wal::scan`): a torn tail is cut off and never applied; damage before valid records is
//! refused with an error rather than guessed around.
//!
//! A snapshot of at least `SNAPSHOT_FILE_BYTES` is written to a file of its own
//! (`<log>.snap-<group>-<index>-<term>`, made durable before the record that names it) and
//! the record holds only its metadata, length and checksum: a vShard's size is then not
//! bounded by the record size, and a checkpoint does not rewrite it. Recovery reads the
//! file of each group's latest snapshot and refuses one that is missing or does not match
//! its checksum; files no record needs any more are deleted.
//!
//! A log that lost acknowledged records is refused, even when it was cut at a record
//! boundary and looks whole: after every durable write the log's last durable record number is
//! written to `<log>.mark` (a 20-byte file, page cache only: it survives the process being
//! killed, and after a power loss it can only be older than the log, never ahead of it). At
//! open, a log whose last record is below the mark forgot what its replicas acknowledged
//! (the leader counted those acknowledgements towards commits) and must not rejoin as the
//! same voters. A torn final record was never durable, so the mark never names it and it
//! is still cut off as before.
//!
//! The file is kept written with zeros `WAL_ZERO_AHEAD_BYTES` past its last record, by
//! glommio's blocking thread (`WalFile::start_fill`): an append then overwrites blocks the
//! file has instead of growing it, which would make every commit write the file's size too.
//! Zeros after the last record are the end of the log, kept at open.
//!
//! The record format and the replay rules are sans-IO (`crate::replication::wal`); this module only
//! moves blocks to and from the disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};
use thiserror::Error;
use tracing::warn;

use raft::eraftpb::Snapshot;

use crate::constants::{
    SNAPSHOT_FILE_BYTES, SNAPSHOT_FILE_WRITE_BYTES, WAL_BACKGROUND_WRITE_BYTES_PER_SEC,
    WAL_BLOCK_BYTES, WAL_BLOCKING_WRITE_BYTES, WAL_CHECKPOINT_FLUSH_BYTES, WAL_REWRITE_BYTES,
    WAL_ZERO_AHEAD_BYTES,
};
use crate::ids::GroupId;
use crate::replication::group_table::GroupTable;
use crate::replication::kv::StateMachine;
use crate::replication::raft_host::{
    Compaction, GroupWrite, PersistBatch, PersistedGroup, RaftHost,
};
use crate::replication::wal::{SnapshotFile, WalError, encode_records, renumber_records, scan};
use crate::runtime::discard::{self, discard};
use crate::runtime::threads::{self, thread_cpu};

/// A write-ahead log that cannot be used.
#[derive(Debug, Error)]
pub enum WalIoError {
    /// The disk refused an operation.
    #[error("{path}: {operation} failed: {message}")]
    Io {
        path: PathBuf,
        operation: &'static str,
        message: String,
    },
    /// The log's contents cannot be trusted or encoded.
    #[error("{path}: {source}")]
    Log { path: PathBuf, source: WalError },
    /// A snapshot file the log names is missing or damaged: the group's state is lost here.
    #[error("snapshot file {path}: {reason}")]
    SnapshotFile { path: PathBuf, reason: String },
    /// The log ends before a record it had made durable: acknowledged data is gone.
    #[error(
        "{path}: the log ends at record {found}, but record {durable} was durable before (per {mark}): \
         acknowledged writes were lost, and its replicas must not rejoin as the voters they were. \
         Restore the lost file, or retire this node (decommission it) and start a new one with an empty data directory"
    )]
    Shortened {
        path: PathBuf,
        mark: PathBuf,
        durable: u64,
        found: u64,
    },
}

const MARK_MAGIC: u64 = u64::from_le_bytes(*b"NDBMARK1");

/// The file holding the log's last durable record number.
pub fn mark_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".mark");
    PathBuf::from(name)
}

fn encode_mark(sequence: u64) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..8].copy_from_slice(&MARK_MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&sequence.to_le_bytes());
    let crc = crc32c::crc32c(&out[..16]);
    out[16..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The record number a mark holds; `None` for a damaged one (a torn write at power loss:
/// then nothing can be checked, and the log is trusted as before marks existed).
fn decode_mark(bytes: &[u8]) -> Option<u64> {
    let bytes: &[u8; 20] = bytes.try_into().ok()?;
    let magic = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    let crc = u32::from_le_bytes(bytes[16..].try_into().ok()?);
    (magic == MARK_MAGIC && crc == crc32c::crc32c(&bytes[..16]))
        .then(|| u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")))
}

/// What the log held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every group's persisted state, ready for `RaftHost::add_group`.
    pub groups: BTreeMap<GroupId, PersistedGroup>,
    pub records: usize,
    /// Bytes of torn tail that were cut off.
    pub truncated_bytes: u64,
}

/// Counters of one log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    pub records: u64,
    /// Times the log was made durable: a batch's O_DSYNC write, or a checkpoint's
    /// fdatasync.
    pub fsyncs: u64,
    pub bytes: u64,
}

/// One core's write-ahead log.
pub struct WalFile {
    file: DmaFile,
    path: PathBuf,
    end: u64,
    next_sequence: u64,
    stats: WalStats,
    /// What the log holds, folded: the content of the next checkpoint (a snapshot kept in
    /// a file appears here with its metadata only).
    mirror: GroupTable<PersistedGroup>,
    /// The group snapshots kept in files: (index, term, length and checksum).
    files: BTreeMap<GroupId, (u64, u64, SnapshotFile)>,
    /// Rewrite the log once it exceeds this and twice its last checkpoint.
    rewrite_threshold: u64,
    /// The pace of the background writes (`WAL_BACKGROUND_WRITE_BYTES_PER_SEC`; `None`:
    /// as fast as the disk takes them).
    background_pace: Option<u64>,
    last_checkpoint: u64,
    /// Checkpoints put in place since `take_checkpoints`.
    checkpoints: u64,
    /// The longest blocking write since `take_blocked` (the core did nothing else).
    blocked: std::time::Duration,
    /// Where the last durable record number is written after each durable write.
    mark: std::fs::File,
    /// Snapshot files being written in the background (`begin_snapshot_file`): not
    /// deleted as unneeded meanwhile.
    /// (Counted: one file may be begun twice, by a compaction and a received snapshot of
    /// the same index and term.)
    writing: BTreeMap<PathBuf, usize>,
    /// Snapshot files written ahead (`adopt_snapshot_file`) that an `append` of their
    /// snapshot names instead of writing them; kept until then, or until their group
    /// records a newer snapshot or leaves.
    written: BTreeMap<(GroupId, u64, u64), SnapshotFile>,
    /// A checkpoint being written in the background (`start_checkpoint`).
    checkpointing: Option<Checkpointing>,
    /// The file holds records or zeros up to here: an append that ends below it overwrites
    /// blocks the file has (`WAL_ZERO_AHEAD_BYTES`).
    zeroed: u64,
    /// Zeros being written past `zeroed` in the background (`start_fill`).
    filling: Option<Filling>,
    /// A zero-fill failed (a full disk, most likely): appends extend the file from then on.
    fill_failed: bool,
}

/// Zeros being written over `from..to` of the log by glommio's blocking thread.
struct Filling {
    to: u64,
    /// The outcome, set by the blocking thread when it is done: read without waiting.
    outcome: std::sync::Arc<std::sync::Mutex<Option<Result<(), WalIoError>>>>,
    /// Asked to stop early (dropped unfinished).
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Asked to stop pacing its writes: an append waits for it (`Pace`).
    hurry: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: glommio::task::JoinHandle<()>,
}

impl Drop for Filling {
    /// A log dropped without `close` (a killed core, a test) stops its fill early.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// The logs with background work under way (a zero-fill, a checkpoint being written), once
/// per piece of work. A log reopened in the same process (a test, a core restarted) waits
/// for what its previous life left running: a fill would write zeros over the new life's
/// records, and a checkpoint's file would be removed as a stray under its feet.
static BUSY: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// One piece of background work on a log, registered in `BUSY` for as long as it lives.
struct Busy(PathBuf);

impl Busy {
    fn new(log: &Path) -> Busy {
        Busy::all().push(log.to_owned());
        Busy(log.to_owned())
    }

    fn all() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
        BUSY.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn any(log: &Path) -> bool {
        Busy::all().iter().any(|p| p == log)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut all = Busy::all();
        if let Some(i) = all.iter().position(|p| *p == self.0) {
            all.swap_remove(i);
        }
    }
}

/// A checkpoint of the log as it was when it began, written to a file of its own by
/// glommio's blocking thread while appends go on; the records appended meanwhile are
/// written after it at the swap (`WalFile::finish_checkpoint`).
struct Checkpointing {
    /// The records appended since the checkpoint began, kept to be written after it (a
    /// copy of what went to the log: reading them back would cost the core a read).
    tail: Vec<Vec<u8>>,
    /// Set by the blocking thread once the file is written and durable (the task that
    /// waits for it learns so only when the executor next looks at its rings).
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Asked to stop pacing its writes (`Pace`): the appends made meanwhile reached half
    /// the rewrite threshold (disk use first), or the log waits for it.
    hurry: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Where the log ended when it began.
    began_at: u64,
    task: glommio::task::JoinHandle<Result<CheckpointFile, WalIoError>>,
}

/// A checkpoint file written, not yet durable nor in place.
struct CheckpointFile {
    path: PathBuf,
    file: DmaFile,
    end: u64,
    next_sequence: u64,
    /// Records and zeros up to here (`WAL_ZERO_AHEAD_BYTES`).
    zeroed: u64,
    /// When it began to be written, and the CPU time writing it took (logged).
    began: std::time::Instant,
    cpu: std::time::Duration,
}

impl WalFile {
    /// Opens (or creates) the log at `path` and replays it.
    pub async fn open(path: &Path) -> Result<(WalFile, Recovered), WalIoError> {
        // Absolute from here on: glommio's io_uring directory open fails (EBADF) on a
        // relative path, which made every snapshot file written under a relative data_dir
        // stop its core.
        let absolute = std::path::absolute(path).map_err(|e| WalIoError::Io {
            path: path.to_owned(),
            operation: "resolve path",
            message: e.to_string(),
        })?;
        let path = absolute.as_path();
        let std_io = |operation| std_error(path, operation);
        while Busy::any(path) {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        // Replay happens once, before the core serves anything: plain buffered reads are
        // simplest here (glommio's O_DIRECT reads are for the hot path, which only appends).
        let image = match std::fs::read(path) {
            Ok(image) => image,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(std_io("read")(e)),
        };
        let replay = scan(&image).map_err(|source| WalIoError::Log {
            path: path.to_owned(),
            source,
        })?;
        // Zeros after the last record are the room kept ahead of the appends: kept. Anything
        // else there (a torn record) is cut off.
        let tail = &image[replay.valid_bytes as usize..];
        let zeroed = if tail.iter().all(|b| *b == 0) {
            replay.valid_bytes + tail.len() as u64 / WAL_BLOCK_BYTES as u64 * WAL_BLOCK_BYTES as u64
        } else {
            replay.valid_bytes
        };
        if zeroed == replay.valid_bytes && !tail.is_empty() {
            warn!(path = %path.display(), valid = replay.valid_bytes, torn = replay.torn_bytes, "cutting off the log's tail");
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(std_io("open"))?;
            file.set_len(replay.valid_bytes)
                .map_err(std_io("truncate"))?;
            file.sync_all().map_err(std_io("fsync"))?;
        }
        let file = open_log(path).await.map_err(|e| {
                let mut message = e.to_string();
                if message.contains("Invalid argument") || message.contains("os error 22") {
                    // O_DIRECT is refused by tmpfs and some overlay filesystems.
                    message.push_str(
                        " (the write-ahead log needs O_DIRECT: put data_dir on ext4, xfs or btrfs, not tmpfs)",
                    );
                }
                WalIoError::Io { path: path.to_owned(), operation: "open", message }
            })?;
        let mut recovered = Recovered {
            records: replay.records.len(),
            truncated_bytes: replay.torn_bytes,
            ..Recovered::default()
        };
        let next_sequence = replay.records.last().map_or(1, |(s, _)| s + 1);
        let mark_file = mark_path(path);
        match std::fs::read(&mark_file) {
            Ok(bytes) => match decode_mark(&bytes) {
                Some(durable) if durable >= next_sequence => {
                    return Err(WalIoError::Shortened {
                        path: path.to_owned(),
                        mark: mark_file,
                        durable,
                        found: next_sequence - 1,
                    });
                }
                Some(_) => {}
                None => warn!(path = %mark_file.display(), "damaged log mark ignored"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(std_io("read mark")(e)),
        }
        let mark = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&mark_file)
            .map_err(|e| WalIoError::Io {
                path: mark_file.clone(),
                operation: "open mark",
                message: e.to_string(),
            })?;
        for (_, writes) in &replay.records {
            for w in writes {
                recovered.groups.entry(w.group).or_default().apply(w);
            }
        }
        // Each group's latest snapshot, when kept in a file, is read back and checked.
        let mut files = BTreeMap::new();
        let mut mirror = GroupTable::new();
        for (group, state) in &recovered.groups {
            mirror.insert(*group, state.clone());
        }
        for (group, state) in &mut recovered.groups {
            let Some(snapshot) = state.snapshot.as_mut() else {
                continue;
            };
            let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
            if let Some(file) = replay.snapshot_files.get(&(*group, index, term)) {
                snapshot.data =
                    read_snapshot_file(&snapshot_path(path, *group, index, term), *file)?.into();
                files.insert(*group, (index, term, *file));
            }
        }
        for (group, state) in mirror.iter_mut() {
            if files.contains_key(group)
                && let Some(snapshot) = state.snapshot.as_mut()
            {
                snapshot.data = Default::default();
            }
        }
        // What a checkpoint would write now, not the log's length: a log reopened long
        // past its last checkpoint (mostly entries its snapshots made unnecessary) is
        // rewritten at its next append. With the length, a log reopened at N bytes was
        // not rewritten before 2N, whatever it held, and each restart moved the mark.
        let last_checkpoint = checkpoint_estimate(&mirror);
        let wal = WalFile {
            file,
            path: path.to_owned(),
            end: replay.valid_bytes,
            next_sequence,
            stats: WalStats::default(),
            mirror,
            files,
            rewrite_threshold: WAL_REWRITE_BYTES,
            background_pace: Some(WAL_BACKGROUND_WRITE_BYTES_PER_SEC),
            blocked: std::time::Duration::ZERO,
            checkpoints: 0,
            last_checkpoint,
            mark,
            writing: BTreeMap::new(),
            written: BTreeMap::new(),
            checkpointing: None,
            zeroed,
            filling: None,
            fill_failed: false,
        };
        wal.remove_unneeded_snapshot_files();
        remove_stray_checkpoints(path);
        Ok((wal, recovered))
    }

    /// Closes the file (waits for the close to complete).
    pub async fn close(mut self) -> Result<(), WalIoError> {
        self.finish_checkpoint(true).await?;
        self.settle_fill(true).await;
        let io = glommio_error(&self.path, "close");
        self.file.close().await.map_err(io)
    }

    pub fn stats(&self) -> WalStats {
        self.stats
    }

    /// The longest blocking write (`WAL_BLOCKING_WRITE_BYTES`) since the last call: a
    /// stall of the core like a long loop turn.
    pub fn take_blocked(&mut self) -> std::time::Duration {
        std::mem::take(&mut self.blocked)
    }

    /// Checkpoints put in place since the last call (a metric).
    pub fn take_checkpoints(&mut self) -> u64 {
        std::mem::take(&mut self.checkpoints)
    }

    /// Appends `writes` as one record and makes it durable (one O_DSYNC write).
    pub async fn append(&mut self, writes: &[GroupWrite]) -> Result<(), WalIoError> {
        // A checkpoint written meanwhile takes the log's place first.
        self.finish_checkpoint(false).await?;
        let log = |source| WalIoError::Log {
            path: self.path.clone(),
            source,
        };
        // Large snapshots go to files of their own first, durable before the record that
        // names them, unless one was written ahead.
        let mut new_files = BTreeMap::new();
        for w in writes {
            let Some(s) = &w.snapshot else { continue };
            let key = (w.group, s.get_metadata().index, s.get_metadata().term);
            if let Some(file) = self.written.remove(&key) {
                new_files.insert(key, file);
            } else if s.data.len() >= SNAPSHOT_FILE_BYTES && !new_files.contains_key(&key) {
                let path = snapshot_path(&self.path, key.0, key.1, key.2);
                let file = write_snapshot_file(&path, std::iter::once(&s.data)).await?;
                new_files.insert(key, file);
            }
        }
        let in_file = |group: GroupId, s: &Snapshot| {
            let meta = s.get_metadata();
            new_files.get(&(group, meta.index, meta.term)).copied()
        };
        // Almost always one record; a batch too large for one is cut into several, written
        // in order and made durable together.
        let records = encode_records(self.next_sequence, writes, &in_file).map_err(log)?;
        // Zeros still being written where these records go are waited for (they would
        // land over them).
        let ends_at = self.end + records.iter().map(|r| r.len() as u64).sum::<u64>();
        self.settle_fill(ends_at > self.zeroed).await;
        // Durable when written: the log is open with O_DSYNC. A small record's write blocks
        // the thread (`WAL_BLOCKING_WRITE_BYTES`): first let the tasks already woken run,
        // above all the transport's, which sends the appends this batch's messages queued
        // (the followers' writes then run in parallel with this one).
        // (A batch cut into several records may mix both kinds: the yield comes before any
        // blocking write; the stall is timed only when nothing in between waited on io_uring.)
        let small = |r: &Vec<u8>| r.len() <= WAL_BLOCKING_WRITE_BYTES;
        if records.iter().any(small) {
            futures_lite::future::yield_now().await;
        }
        let started = records.iter().all(small).then(std::time::Instant::now);
        let end = write_records(
            &self.file,
            &self.path,
            self.end,
            &records,
            ("write", WAL_BLOCKING_WRITE_BYTES),
        )
        .await?;
        if let Some(started) = started {
            self.blocked = self.blocked.max(started.elapsed());
        }
        self.stats.bytes += end - self.end;
        self.end = end;
        self.zeroed = self.zeroed.max(end);
        self.next_sequence += records.len() as u64;
        self.stats.records += records.len() as u64;
        self.stats.fsyncs += 1;
        self.write_mark()?;
        if let Some(c) = &mut self.checkpointing {
            c.tail.extend(records);
            if self.end - c.began_at >= self.rewrite_threshold / 2 {
                c.hurry.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        let mut superseded = false;
        for w in writes {
            let state = self.mirror.get_or_insert_default(w.group);
            state.apply(w);
            let Some(s) = &w.snapshot else { continue };
            let (index, term) = (s.get_metadata().index, s.get_metadata().term);
            superseded |= self.files.contains_key(&w.group);
            // Files written ahead for older snapshots of the group will never be named.
            let before = self.written.len();
            self.written
                .retain(|(g, i, _), _| *g != w.group || *i > index);
            superseded |= self.written.len() != before;
            match new_files.get(&(w.group, index, term)) {
                Some(file) => {
                    // The mirror keeps the metadata; the data is in the file.
                    if let Some(kept) = state.snapshot.as_mut() {
                        kept.data = Default::default();
                    }
                    self.files.insert(w.group, (index, term, *file));
                }
                None => {
                    self.files.remove(&w.group);
                }
            }
        }
        if superseded {
            // The records naming older snapshot files are superseded by durable ones.
            self.remove_unneeded_snapshot_files();
        }
        if self.checkpointing.is_none()
            && self.end >= self.rewrite_threshold
            && self.end >= 2 * self.last_checkpoint
        {
            self.start_checkpoint();
        }
        self.start_fill();
        Ok(())
    }

    /// Starts writing the next `WAL_ZERO_AHEAD_BYTES` of zeros past `zeroed` in the
    /// background once the appends come within half of that of it (not while a checkpoint,
    /// which brings its own zeros, is being written).
    fn start_fill(&mut self) {
        if self.filling.is_some()
            || self.fill_failed
            || self.checkpointing.is_some()
            || self.end + WAL_ZERO_AHEAD_BYTES / 2 < self.zeroed
        {
            return;
        }
        let (from, to) = (self.zeroed, self.zeroed + WAL_ZERO_AHEAD_BYTES);
        let outcome = std::sync::Arc::new(std::sync::Mutex::new(None));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hurry = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let work = {
            let (path, outcome) = (self.path.clone(), outcome.clone());
            let (stop, hurry, rate) = (stop.clone(), hurry.clone(), self.background_pace);
            let busy = Busy::new(&self.path);
            move || {
                let written = write_zeros(&path, (from, to), rate, (&stop, &hurry));
                *outcome
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(written);
                drop(busy);
            }
        };
        let task =
            glommio::spawn_local(async move { glommio::executor().spawn_blocking(work).await })
                .detach();
        self.filling = Some(Filling {
            to,
            outcome,
            stop,
            hurry,
            task,
        });
    }

    /// Takes the outcome of a zero-fill that has ended (with `wait`, waits for it first).
    /// A failed one is logged, and no other is started: appends extend the file as they
    /// would without (the next one then most likely fails too, with its own error).
    async fn settle_fill(&mut self, wait: bool) {
        let Some(filling) = &mut self.filling else {
            return;
        };
        if wait {
            filling
                .hurry
                .store(true, std::sync::atomic::Ordering::Release);
            (&mut filling.task).await;
        }
        let outcome = filling
            .outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(outcome) = outcome else {
            return;
        };
        let to = filling.to;
        self.filling = None;
        match outcome {
            Ok(()) => self.zeroed = self.zeroed.max(to),
            Err(e) => {
                warn!(error = %e, "the log's room ahead was not zero-filled; appends extend the file");
                self.fill_failed = true;
            }
        }
    }

    /// A snapshot of `group` at `index` and `term` is about to be written in the
    /// background: the path of its file, which is kept (not deleted as unneeded) until
    /// `append_written_snapshot` or `adopt_snapshot_file` takes it, or
    /// `abandon_snapshot_file` gives it up.
    pub fn begin_snapshot_file(&mut self, group: GroupId, index: u64, term: u64) -> PathBuf {
        let path = snapshot_path(&self.path, group, index, term);
        *self.writing.entry(path.clone()).or_default() += 1;
        path
    }

    /// A snapshot file written ahead (`begin_snapshot_file`, `write_snapshot_file`) is
    /// durable: the `append` that records its snapshot names it rather than writing the
    /// data again. (A replica writes a received snapshot so before Raft installs it, so
    /// the batch that makes the install durable carries no snapshot bytes.)
    pub fn adopt_snapshot_file(
        &mut self,
        group: GroupId,
        index: u64,
        term: u64,
        file: SnapshotFile,
    ) {
        self.done_writing(&snapshot_path(&self.path, group, index, term));
        self.written.insert((group, index, term), file);
    }

    /// One writer of the file at `path` is done with it; returns whether none is left.
    fn done_writing(&mut self, path: &Path) -> bool {
        match self.writing.get_mut(path) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.writing.remove(path);
                true
            }
        }
    }

    /// A snapshot file begun with `begin_snapshot_file` will not be used (its write failed,
    /// or its snapshot was dropped): it is deleted.
    pub fn abandon_snapshot_file(&mut self, group: GroupId, index: u64, term: u64) {
        let path = snapshot_path(&self.path, group, index, term);
        if self.done_writing(&path) {
            self.written.remove(&(group, index, term));
            self.remove_unneeded_snapshot_files();
        }
    }

    /// A compaction snapshot written in the background (`write_snapshot_file` to the path
    /// `begin_snapshot_file` gave) is durable: one record names it, and the group's log
    /// before it may go at the next checkpoint. Declined, and its file deleted, when the
    /// group left this core meanwhile or a newer snapshot of it is already recorded.
    pub async fn append_written_snapshot(
        &mut self,
        group: GroupId,
        snapshot: Snapshot,
        file: SnapshotFile,
    ) -> Result<(), WalIoError> {
        let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        let path = snapshot_path(&self.path, group, index, term);
        self.done_writing(&path);
        let current = self
            .mirror
            .get(&group)
            .map(|g| g.snapshot.as_ref().map_or(0, |s| s.get_metadata().index));
        if current.is_none_or(|c| c >= index) {
            discard(&path);
            return Ok(());
        }
        self.written.insert((group, index, term), file);
        let write = GroupWrite {
            group,
            snapshot: Some(snapshot),
            ..GroupWrite::default()
        };
        self.append(std::slice::from_ref(&write)).await
    }

    /// Forgets `group` (its replica left this core): the log is rewritten without it, so a
    /// restart does not bring it back and a later replica of the same group here starts
    /// empty. The caller stops hosting the group first, so no batch in flight holds it.
    /// Returns whether the log held the group.
    pub async fn drop_group(&mut self, group: GroupId) -> Result<bool, WalIoError> {
        if !self.mirror.contains_key(&group) {
            return Ok(false);
        }
        // A checkpoint begun before holds the group: in place first, then rewritten.
        self.finish_checkpoint(true).await?;
        self.mirror.remove(&group);
        self.checkpoint().await?;
        self.files.remove(&group);
        self.written.retain(|(g, ..), _| *g != group);
        self.remove_unneeded_snapshot_files();
        Ok(true)
    }

    /// Whether a checkpoint is being written in the background.
    pub fn is_checkpointing(&self) -> bool {
        self.checkpointing.is_some()
    }

    /// Whether a checkpoint's background writing has ended (the next append swaps it in).
    pub fn checkpoint_written(&self) -> bool {
        self.checkpointing
            .as_ref()
            .is_some_and(|c| c.ended.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Overrides the size at which the log is rewritten (tests use a small one).
    pub fn set_rewrite_threshold(&mut self, bytes: u64) {
        self.rewrite_threshold = bytes;
    }

    /// Sets the pace of the log's background writes, a checkpoint's and the zeros ahead of
    /// the appends (`None`: unpaced); the benchmark compares both in one run.
    pub fn set_background_pace(&mut self, bytes_per_sec: Option<u64>) {
        self.background_pace = bytes_per_sec;
    }

    /// Bytes the log file holds.
    pub fn len_bytes(&self) -> u64 {
        self.end
    }

    /// Rewrites the log as one record per group holding only what a restart needs (its
    /// snapshot, the entries after it, its hard state), then swaps it in atomically. Entries
    /// a snapshot made unnecessary are gone, so disk use follows the live state, not the
    /// history. A crash midway leaves the old log in place.
    async fn checkpoint(&mut self) -> Result<(), WalIoError> {
        // The log waits for it: not paced.
        let hurry = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let written =
            write_checkpoint(self.checkpoint_content(), Default::default(), hurry).await?;
        self.put_in_place(written).await
    }

    /// Starts writing a checkpoint of the log as it is now in the background: appends go
    /// on meanwhile, and the next one after it ends swaps it in (`finish_checkpoint`).
    /// Written in line, a checkpoint held every append behind it: 44–500 ms each on the
    /// development VM, every few seconds, with a 512 MiB vShard's 64 MiB of log.
    fn start_checkpoint(&mut self) {
        let began = std::time::Instant::now();
        let cpu = thread_cpu();
        let content = self.checkpoint_content();
        tracing::debug!(
            log = %self.path.display(),
            entries = content.groups.iter().map(|(_, g)| g.entries.len()).sum::<usize>(),
            us = began.elapsed().as_micros() as u64,
            cpu_us = thread_cpu().saturating_sub(cpu).as_micros() as u64,
            "checkpoint begun"
        );
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hurry = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy = Busy::new(&self.path);
        let written = write_checkpoint(content, ended.clone(), hurry.clone());
        let task = glommio::spawn_local(async move {
            let written = written.await;
            drop(busy);
            written
        })
        .detach();
        self.checkpointing = Some(Checkpointing {
            tail: Vec::new(),
            ended,
            hurry,
            began_at: self.end,
            task,
        });
    }

    /// Swaps in a checkpoint written in the background, once it has ended (or, with
    /// `wait`, after waiting for it): the records appended since it began are copied after
    /// it, renumbered to follow its own, and the file replaces the log.
    async fn finish_checkpoint(&mut self, wait: bool) -> Result<(), WalIoError> {
        match &self.checkpointing {
            Some(c) if c.ended.load(std::sync::atomic::Ordering::Acquire) => {}
            Some(c) if wait => c.hurry.store(true, std::sync::atomic::Ordering::Release),
            _ => return Ok(()),
        }
        let Some(Checkpointing { tail, task, .. }) = self.checkpointing.take() else {
            return Ok(());
        };
        let mut written = task.await.ok_or_else(|| WalIoError::Io {
            path: self.path.clone(),
            operation: "write checkpoint",
            message: "the task writing it was cancelled".into(),
        })??;
        let log = |source| WalIoError::Log {
            path: self.path.clone(),
            source,
        };
        // Renumbered, then written in one piece: one by one, the few hundred records a
        // paced checkpoint's half second gathers held the log for 16–19 ms.
        let mut records = Vec::with_capacity(tail.iter().map(Vec::len).sum());
        for mut record in tail {
            let (used, count) =
                renumber_records(&mut record, written.next_sequence).map_err(log)?;
            debug_assert_eq!(used, record.len(), "a kept record is whole");
            written.next_sequence += count;
            records.extend_from_slice(&record);
        }
        if !records.is_empty() {
            written.end = write_records(
                &written.file,
                &self.path,
                written.end,
                std::slice::from_ref(&records),
                ("write checkpoint", 0),
            )
            .await?;
            written.zeroed = written.zeroed.max(written.end);
        }
        self.put_in_place(written).await
    }

    /// What a checkpoint of the log as it is now holds, and where to write it.
    fn checkpoint_content(&self) -> CheckpointContent {
        CheckpointContent {
            path: self.path.clone(),
            // Shared, not copied: each group's entries are a persistent vector.
            groups: self
                .mirror
                .iter()
                .map(|(group, state)| (*group, state.clone()))
                .collect(),
            files: self.files.clone(),
            first_sequence: self.next_sequence,
            pace: self.background_pace,
        }
    }

    /// Makes a written checkpoint the log: durable, renamed over it, reopened for appends.
    async fn put_in_place(&mut self, written: CheckpointFile) -> Result<(), WalIoError> {
        // Zeros still being written to the old log are not written to the new one.
        self.settle_fill(true).await;
        let io = |operation| glommio_error(&self.path, operation);
        let CheckpointFile {
            path,
            file,
            end,
            next_sequence,
            zeroed,
            began,
            cpu,
        } = written;
        file.fdatasync().await.map_err(io("fdatasync checkpoint"))?;
        let _ = file.close().await;
        // The old log keeps a name until its blocks are freed in steps (`discard`): the
        // rename would otherwise free them all at once when it is closed.
        let old_log =
            discard::trash_name(&self.path.with_extension(format!("wal.{next_sequence}")));
        let linked = std::fs::hard_link(&self.path, &old_log).is_ok();
        replace_durably(&path, &self.path).await?;
        // Written without O_DSYNC (one flush for the whole rewrite), appended to with it.
        let file = open_log(&self.path)
            .await
            .map_err(io("reopen checkpoint"))?;
        let old = std::mem::replace(&mut self.file, file);
        let _ = old.close().await;
        if linked {
            discard::free_in_background(old_log);
        }
        tracing::debug!(
            log = %self.path.display(),
            before_bytes = self.end,
            after_bytes = end,
            ms = began.elapsed().as_secs_f64() * 1e3,
            cpu_ms = cpu.as_secs_f64() * 1e3,
            "log rewritten as a checkpoint"
        );
        self.end = end;
        self.zeroed = zeroed.max(end);
        self.last_checkpoint = end;
        self.checkpoints += 1;
        self.next_sequence = next_sequence;
        self.stats.fsyncs += 1;
        self.write_mark()
    }

    /// Records that every record before `next_sequence` is durable (after a durable write).
    /// A 20-byte positioned write into the page cache: no fsync of its own.
    fn write_mark(&self) -> Result<(), WalIoError> {
        use std::os::unix::fs::FileExt;
        let durable = self.next_sequence - 1;
        self.mark
            .write_all_at(&encode_mark(durable), 0)
            .map_err(|e| WalIoError::Io {
                path: mark_path(&self.path),
                operation: "write mark",
                message: e.to_string(),
            })
    }

    /// Makes every batch the host has ready durable, one record per batch, and tells the
    /// host. Returns the number of batches written.
    pub async fn persist<S: StateMachine>(
        &mut self,
        host: &mut RaftHost<S>,
    ) -> Result<usize, WalIoError> {
        let mut batches = 0;
        while let Some(PersistBatch {
            id,
            mut writes,
            compactions,
        }) = host.poll_persist()
        {
            // Large compactions too, encoded whole: this path serves tests and benchmarks;
            // the node's loop writes them in the background.
            writes.extend(compactions.iter().map(Compaction::to_write));
            if !writes.is_empty() {
                self.append(&writes).await?;
            }
            host.handle_persisted(id);
            batches += 1;
        }
        Ok(batches)
    }
}

/// About how many bytes a checkpoint of `mirror` writes: each group's entries and inline
/// snapshot data, plus a block per group for its record's header, metadata and padding.
fn checkpoint_estimate(mirror: &GroupTable<PersistedGroup>) -> u64 {
    mirror
        .values()
        .map(|g| {
            let entries: usize = g
                .entries
                .iter()
                .map(|e| e.data.len() + e.context.len() + 32)
                .sum();
            let snapshot = g.snapshot.as_ref().map_or(0, |s| s.data.len());
            (entries + snapshot + WAL_BLOCK_BYTES) as u64
        })
        .sum()
}

/// What a checkpoint holds: one write per group, numbered from `first_sequence`.
struct CheckpointContent {
    path: PathBuf,
    /// Each group's state as the checkpoint began (made into writes off the core).
    groups: Vec<(GroupId, PersistedGroup)>,
    files: BTreeMap<GroupId, (u64, u64, SnapshotFile)>,
    first_sequence: u64,
    /// `WalFile::background_pace`.
    pace: Option<u64>,
}

/// Where a checkpoint of the log at `log` is written before it replaces the log: a name of
/// its own (a count kept by the process), so that a checkpoint task left running by a log
/// dropped midway never writes into a later checkpoint's file. What a crash leaves of one
/// is removed at the next open, before any new one is begun.
fn checkpoint_path(log: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    log.with_extension(format!("wal.checkpoint-{n}"))
}

/// Removes the checkpoint files a crash left beside the log at `log` (`checkpoint_path`).
fn remove_stray_checkpoints(log: &Path) {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else {
        return;
    };
    let mut prefix = name.to_owned();
    prefix.push(".checkpoint");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(prefix.as_encoded_bytes())
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            warn!(path = %entry.path().display(), error = %e, "could not remove an unfinished checkpoint");
        }
    }
}

/// Writes a checkpoint file, one record per group (not durable yet: `put_in_place`).
async fn write_checkpoint(
    content: CheckpointContent,
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
    hurry: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<CheckpointFile, WalIoError> {
    let began = std::time::Instant::now();
    let log = content.path.clone();
    let checkpoint = checkpoint_path(&log);
    // Encoded and written off the core, by a thread at the background priority started from
    // glommio's blocking thread (`threads::in_background`): neither the encoding (tens of
    // MiB for a large vShard's log) nor the writes hold the core, and the file's progress does
    // not wait for the executor to look at its rings (a busy one looks once per preemption
    // period: through io_uring, a checkpoint under a tight append loop ended only after
    // hundreds of appends, and the log grew past its bound meanwhile).
    let ((end, next_sequence, zeroed), cpu) = glommio::executor()
        .spawn_blocking({
            let checkpoint = checkpoint.clone();
            move || {
                let written = threads::in_background("wal-checkpoint", || {
                    let cpu = thread_cpu();
                    write_checkpoint_file(&checkpoint, content, &hurry)
                        .map(|written| (written, thread_cpu().saturating_sub(cpu)))
                });
                ended.store(true, std::sync::atomic::Ordering::Release);
                written
            }
        })
        .await?;
    // The records appended meanwhile follow through io_uring (`finish_checkpoint`).
    let file = OpenOptions::new()
        .write(true)
        .dma_open(&checkpoint)
        .await
        .map_err(glommio_error(&log, "open checkpoint"))?;
    Ok(CheckpointFile {
        path: checkpoint,
        file,
        end,
        next_sequence,
        zeroed,
        began,
        cpu,
    })
}

/// Writes a checkpoint file (one record per group, numbered from the content's first
/// sequence, then `WAL_ZERO_AHEAD_BYTES` of zeros) with plain blocking writes and
/// `fdatasync`, and drops its pages from the cache (the log is read only at start).
/// Returns its end, the next sequence, and where its zeros end.
fn write_checkpoint_file(
    checkpoint: &Path,
    content: CheckpointContent,
    hurry: &std::sync::atomic::AtomicBool,
) -> Result<(u64, u64, u64), WalIoError> {
    use std::io::Write as _;
    use std::os::fd::AsRawFd;
    let CheckpointContent {
        path,
        groups,
        files,
        first_sequence,
        pace: rate,
    } = content;
    let failed = |operation| std_error(&path, operation);
    let mut file = std::fs::File::create(checkpoint).map_err(failed("create checkpoint"))?;
    let in_file = |group: GroupId, s: &Snapshot| {
        let meta = s.get_metadata();
        files
            .get(&group)
            .filter(|(index, term, _)| (meta.index, meta.term) == (*index, *term))
            .map(|(.., file)| *file)
    };
    // Written in pieces, each range of `WAL_CHECKPOINT_FLUSH_BYTES` pushed to the disk, at
    // the background pace.
    let (mut written, mut flushed) = (0u64, 0u64);
    let mut pace = Pace::new(rate, hurry);
    let mut put = |piece: &[u8]| {
        file.write_all(piece).map_err(failed("write checkpoint"))?;
        written += piece.len() as u64;
        if written - flushed >= WAL_CHECKPOINT_FLUSH_BYTES as u64 {
            flush_range(&file, flushed, written).map_err(failed("flush checkpoint"))?;
            pace.wrote(written - flushed);
            flushed = written;
        }
        Ok::<_, WalIoError>(written)
    };
    let (mut end, mut next_sequence) = (0u64, first_sequence);
    for (group, state) in &groups {
        let write = state.as_write(*group);
        let records = encode_records(next_sequence, std::slice::from_ref(&write), &in_file)
            .map_err(|source| WalIoError::Log {
                path: path.clone(),
                source,
            })?;
        for piece in records
            .iter()
            .flat_map(|r| r.chunks(WAL_CHECKPOINT_FLUSH_BYTES))
        {
            end = put(piece)?;
        }
        next_sequence += records.len() as u64;
    }
    // The room ahead of the appends that follow, made durable with the records.
    let zeros = vec![0u8; WAL_CHECKPOINT_FLUSH_BYTES];
    let zeroed = end + WAL_ZERO_AHEAD_BYTES;
    let mut at = end;
    while at < zeroed {
        at = put(&zeros[..(zeroed - at).min(zeros.len() as u64) as usize])?;
    }
    file.sync_data().map_err(failed("fdatasync checkpoint"))?;
    // SAFETY: a plain advice call on a descriptor `file` owns; it touches no memory.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok((end, next_sequence, zeroed))
}

/// Writes zeros over `from..to` of the log at `path` (block-aligned; in pieces checked
/// against `stop`), durable as they are written, the file's new size included: O_DIRECT,
/// so no page cache, and O_DSYNC like every other descriptor that writes the log.
fn write_zeros(
    path: &Path,
    (from, to): (u64, u64),
    rate: Option<u64>,
    (stop, hurry): (
        &std::sync::atomic::AtomicBool,
        &std::sync::atomic::AtomicBool,
    ),
) -> Result<(), WalIoError> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const PIECE: usize = WAL_CHECKPOINT_FLUSH_BYTES;
    let failed = |operation| std_error(path, operation);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(path)
        .map_err(failed("open to zero-fill"))?;
    // O_DIRECT wants the buffer aligned too.
    let room = vec![0u8; PIECE + WAL_BLOCK_BYTES];
    let start = room.as_ptr().align_offset(WAL_BLOCK_BYTES);
    let zeros = &room[start..start + PIECE];
    let (mut at, mut pace) = (from, Pace::new(rate, hurry));
    while at < to {
        if stop.load(std::sync::atomic::Ordering::Acquire) {
            // Its log was dropped: nobody reads this outcome.
            return Ok(());
        }
        let n = (to - at).min(PIECE as u64) as usize;
        file.write_all_at(&zeros[..n], at)
            .map_err(failed("zero-fill"))?;
        pace.wrote(n as u64);
        at += n as u64;
    }
    Ok(())
}

/// Holds a thread's stream of background writes to `rate` bytes a second
/// (`WAL_BACKGROUND_WRITE_BYTES_PER_SEC`) by sleeping after a write that got ahead of it
/// (never on a core: on glommio's blocking thread or a background one), until asked to
/// hurry: the log waits for the writes, or appends outrun them and disk use comes first.
struct Pace<'a> {
    began: std::time::Instant,
    bytes: u64,
    rate: Option<u64>,
    hurry: &'a std::sync::atomic::AtomicBool,
}

impl Pace<'_> {
    fn new(rate: Option<u64>, hurry: &std::sync::atomic::AtomicBool) -> Pace<'_> {
        Pace {
            began: std::time::Instant::now(),
            bytes: 0,
            rate: rate.filter(|r| *r > 0),
            hurry,
        }
    }

    /// Counts `bytes` written, and sleeps until the stream is back at its pace.
    fn wrote(&mut self, bytes: u64) {
        self.bytes += bytes;
        let Some(rate) = self.rate else { return };
        if self.hurry.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let due = std::time::Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        if let Some(ahead) = due.checked_sub(self.began.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

/// Writes the file's cached bytes from `from` to `to` to the disk and waits for them: the
/// disk's queue then holds at most one such range of a checkpoint at a time, and a log
/// append queued meanwhile waits for that much, not for the whole checkpoint (flushed at
/// its end, tens of MiB at once made appends wait 100–250 ms on the development VM).
fn flush_range(file: &std::fs::File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a plain system call on a descriptor `file` owns; it touches no memory.
    let r =
        unsafe { libc::sync_file_range(file.as_raw_fd(), from as i64, (to - from) as i64, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes block-aligned `records` one after the other from offset `at` (no fsync); returns
/// where they end. A record of at most `blocking` bytes is written with a blocking
/// `pwrite` (`WAL_BLOCKING_WRITE_BYTES`), a larger one through io_uring.
async fn write_records(
    file: &DmaFile,
    path: &Path,
    mut at: u64,
    records: &[Vec<u8>],
    (operation, blocking): (&'static str, usize),
) -> Result<u64, WalIoError> {
    let failed = |message: String| WalIoError::Io {
        path: path.to_owned(),
        operation,
        message,
    };
    for record in records {
        debug_assert_eq!(record.len() % WAL_BLOCK_BYTES, 0);
        let mut buffer = file.alloc_dma_buffer(record.len());
        buffer.as_bytes_mut().copy_from_slice(record);
        let written = if record.len() <= blocking {
            pwrite_all(file, buffer.as_bytes(), at).map_err(|e| failed(e.to_string()))?
        } else {
            file.write_at(buffer, at)
                .await
                .map_err(glommio_error(path, operation))?
        };
        if written != record.len() {
            return Err(failed(format!(
                "short write: {written} of {} bytes",
                record.len()
            )));
        }
        at += record.len() as u64;
    }
    Ok(at)
}

/// A blocking positioned write of `bytes` (aligned for `O_DIRECT`: a DMA buffer) at `at`,
/// retried when interrupted. Returns how much was written: short only at the end of the
/// device's space.
fn pwrite_all(file: &DmaFile, bytes: &[u8], at: u64) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let offset = libc::off_t::try_from(at)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "offset too large"))?;
    loop {
        // SAFETY: `bytes` is valid for reads of its length for the whole call, and the
        // descriptor belongs to `file`, which is borrowed (so open) for the call.
        let n = unsafe {
            libc::pwrite(
                file.as_raw_fd(),
                bytes.as_ptr().cast::<libc::c_void>(),
                bytes.len(),
                offset,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The file holding a snapshot's data: beside the log, named after the log, group, index
/// and term.
fn snapshot_path(log: &Path, group: GroupId, index: u64, term: u64) -> PathBuf {
    log.with_extension(format!("snap-{}-{index}-{term}", group.0))
}

/// Writes a snapshot's data, given as consecutive pieces, to `path` durably (temporary
/// file, fdatasync, rename, directory fsync) and returns its length and checksum. Every
/// step is an io_uring operation and the next piece is made only once the last is written:
/// a large snapshot neither stalls the core's other tasks nor is held whole in memory.
pub async fn write_snapshot_file<P: AsRef<[u8]>>(
    path: &Path,
    pieces: impl Iterator<Item = P>,
) -> Result<SnapshotFile, WalIoError> {
    let mut writer = SnapshotFileWriter::create(path).await?;
    for piece in pieces {
        writer.write(piece.as_ref()).await?;
    }
    writer.finish().await
}

/// A snapshot file being written in order, piece by piece, to its temporary name; durable
/// under its own name once `finish`ed. Written with O_DIRECT, in aligned blocks of
/// `SNAPSHOT_FILE_WRITE_BYTES`: buffered writes left the whole file dirty in the page
/// cache, and its fdatasync then flushed it all at once while the log's own fdatasyncs
/// queued behind it (core-loop turns of 50–150 ms during a move).
pub struct SnapshotFileWriter {
    file: std::rc::Rc<DmaFile>,
    /// Writes under way, oldest first, each with its size: up to `depth`.
    in_flight:
        std::collections::VecDeque<(glommio::task::JoinHandle<glommio::Result<usize, ()>>, usize)>,
    path: PathBuf,
    tmp: PathBuf,
    /// Bytes given so far, and their checksum.
    len: u64,
    crc: u32,
    /// Bytes on disk (a multiple of the alignment until `finish`).
    on_disk: u64,
    /// Given, not yet written: less than one write's worth.
    staged: Vec<u8>,
    /// The file's size as `reserve` set it (0: not reserved).
    reserved: u64,
    /// Writes under way at most (`set_writes_in_flight`; one unless told).
    depth: usize,
}

impl SnapshotFileWriter {
    /// Creates (or truncates) the temporary file (`<path>.tmp`) of the snapshot file at
    /// `path`.
    pub async fn create(path: &Path) -> Result<SnapshotFileWriter, WalIoError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = DmaFile::create(&tmp)
            .await
            .map_err(glommio_error(&tmp, "create snapshot file"))?;
        Ok(SnapshotFileWriter {
            file: std::rc::Rc::new(file),
            in_flight: std::collections::VecDeque::new(),
            path: path.to_owned(),
            tmp,
            len: 0,
            crc: 0,
            on_disk: 0,
            staged: Vec::with_capacity(SNAPSHOT_FILE_WRITE_BYTES),
            reserved: 0,
            depth: 1,
        })
    }

    /// Reserves the file's room for `bytes` (`fallocate`), so that its writes do not
    /// extend it: an extending O_DIRECT write on ext4 is done by an io_uring worker thread
    /// under the inode's lock, one at a time. Best effort: a file system without
    /// `fallocate` writes as before.
    pub async fn reserve(&mut self, bytes: u64) {
        let size = self.file.align_up(bytes);
        if size > 0 && self.file.pre_allocate(size, false).await.is_ok() {
            self.reserved = size;
        }
    }

    /// Lets up to `writes` writes be under way at once (at least one). A received
    /// snapshot's file uses `SNAPSHOT_FILE_WRITES_IN_FLIGHT`; a compaction's stays at one,
    /// since it is written beside the log's own appends at whatever pace the disk allows,
    /// and each write in flight is another megabyte an append may queue behind.
    pub fn set_writes_in_flight(&mut self, writes: usize) {
        self.depth = writes.max(1);
    }

    /// Bytes given so far, and their checksum.
    fn written(&self) -> SnapshotFile {
        SnapshotFile {
            len: self.len,
            crc: self.crc,
        }
    }

    /// Appends `piece`. Whole writes' worth go straight from it to the aligned buffer; the
    /// rest waits in `staged`.
    pub async fn write(&mut self, piece: &[u8]) -> Result<(), WalIoError> {
        self.crc = crc32c::crc32c_append(self.crc, piece);
        self.len += piece.len() as u64;
        let mut rest = piece;
        while !rest.is_empty() {
            if self.staged.is_empty() && rest.len() >= SNAPSHOT_FILE_WRITE_BYTES {
                let (whole, after) = rest.split_at(SNAPSHOT_FILE_WRITE_BYTES);
                self.write_block(whole).await?;
                rest = after;
                continue;
            }
            let take = (SNAPSHOT_FILE_WRITE_BYTES - self.staged.len()).min(rest.len());
            self.staged.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.staged.len() == SNAPSHOT_FILE_WRITE_BYTES {
                self.write_staged().await?;
            }
        }
        Ok(())
    }

    /// Writes the staged bytes (see `write_block`).
    async fn write_staged(&mut self) -> Result<(), WalIoError> {
        let staged = std::mem::take(&mut self.staged);
        let written = self.write_block(&staged).await;
        self.staged = staged;
        self.staged.clear();
        written
    }

    /// Starts writing `block` at `on_disk`, padded with zeros to the alignment (only the
    /// last write is ever padded; `finish` cuts the file back to its length), once fewer
    /// than `depth` writes are under way.
    async fn write_block(&mut self, block: &[u8]) -> Result<(), WalIoError> {
        if block.is_empty() {
            return Ok(());
        }
        if self.in_flight.len() >= self.depth {
            self.wait_oldest().await?;
        }
        let size = self.file.align_up(block.len() as u64) as usize;
        let mut buffer = self.file.alloc_dma_buffer(size);
        let bytes = buffer.as_bytes_mut();
        bytes[..block.len()].copy_from_slice(block);
        bytes[block.len()..].fill(0);
        let (file, at) = (self.file.clone(), self.on_disk);
        let write = glommio::spawn_local(async move { file.write_at(buffer, at).await }).detach();
        self.in_flight.push_back((write, size));
        self.on_disk += size as u64;
        Ok(())
    }

    /// Waits for the oldest write under way.
    async fn wait_oldest(&mut self) -> Result<(), WalIoError> {
        let Some((write, size)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let written = write
            .await
            .ok_or_else(|| WalIoError::Io {
                path: self.tmp.clone(),
                operation: "write snapshot file",
                message: "the write's task was cancelled".into(),
            })?
            .map_err(glommio_error(&self.tmp, "write snapshot file"))?;
        // A regular file writes short only when the disk is full; the snapshot is then
        // given up.
        if written != size {
            return Err(WalIoError::Io {
                path: self.tmp.clone(),
                operation: "write snapshot file",
                message: format!("wrote {written} of {size} bytes (is the disk full?)"),
            });
        }
        Ok(())
    }

    /// Makes the file durable under its own name: the last bytes, its length, fdatasync,
    /// close, rename, directory fsync. Returns its length and checksum.
    pub async fn finish(mut self) -> Result<SnapshotFile, WalIoError> {
        self.write_staged().await?;
        while !self.in_flight.is_empty() {
            self.wait_oldest().await?;
        }
        let written = self.written();
        if self.on_disk != written.len || self.reserved != written.len {
            self.file
                .truncate(written.len)
                .await
                .map_err(glommio_error(&self.tmp, "truncate snapshot file"))?;
        }
        self.file
            .fdatasync()
            .await
            .map_err(glommio_error(&self.tmp, "fdatasync snapshot file"))?;
        // Every write task has finished and dropped its handle.
        if let Ok(file) = std::rc::Rc::try_unwrap(self.file) {
            file.close()
                .await
                .map_err(glommio_error(&self.tmp, "close snapshot file"))?;
        }
        replace_durably(&self.tmp, &self.path).await?;
        Ok(written)
    }
}

/// Opens (or creates) the log at `path` for appends that are durable when they complete:
/// `O_DIRECT | O_DSYNC`. One write per batch instead of a write and an `fdatasync`: the
/// core's executor goes round once less per batch, and the disk gets one flush (or a FUA
/// write) with the data. Measured in interleaved pairs on the development VM: one writer
/// 516–542 → 666–746 commits/s, p99 8.2–8.4 → 5.9–7.7 ms; 32 writers +21–23 %.
async fn open_log(path: &Path) -> glommio::Result<DmaFile, ()> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(path)
        .await
}

/// The `WalIoError` of a standard-library operation on `path`.
fn std_error(path: &Path, operation: &'static str) -> impl FnOnce(std::io::Error) -> WalIoError {
    let path = path.to_owned();
    move |e| WalIoError::Io {
        path,
        operation,
        message: e.to_string(),
    }
}

/// The `WalIoError` of a glommio operation on `path`.
fn glommio_error(
    path: &Path,
    operation: &'static str,
) -> impl FnOnce(glommio::GlommioError<()>) -> WalIoError {
    let path = path.to_owned();
    move |e| WalIoError::Io {
        path,
        operation,
        message: e.to_string(),
    }
}

/// Renames `tmp` over `path` and makes the rename durable (fsync of the directory). `path`
/// is absolute (every log path is made so at open).
async fn replace_durably(tmp: &Path, path: &Path) -> Result<(), WalIoError> {
    let io = |operation| glommio_error(path, operation);
    glommio::io::rename(tmp, path).await.map_err(io("rename"))?;
    if let Some(dir) = path.parent() {
        let d = glommio::io::Directory::open(dir)
            .await
            .map_err(io("open directory"))?;
        d.sync().await.map_err(io("fsync directory"))?;
        let _ = d.close().await;
    }
    Ok(())
}

/// Reads a snapshot's data back, refusing a file that is missing or does not match the
/// length and checksum its record gives.
fn read_snapshot_file(path: &Path, expected: SnapshotFile) -> Result<Vec<u8>, WalIoError> {
    let refuse = |reason: String| WalIoError::SnapshotFile {
        path: path.to_owned(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| refuse(format!("cannot be read: {e}")))?;
    if data.len() as u64 != expected.len {
        return Err(refuse(format!(
            "holds {} bytes, the log says {}",
            data.len(),
            expected.len
        )));
    }
    if crc32c::crc32c(&data) != expected.crc {
        return Err(refuse("checksum mismatch".into()));
    }
    Ok(data)
}

impl WalFile {
    /// Deletes snapshot files (and leftover temporary ones) of this log that no group's
    /// current snapshot is: older snapshots, those of dropped groups, and one written just
    /// before a crash whose record never landed.
    fn remove_unneeded_snapshot_files(&self) {
        let (Some(dir), Some(stem)) = (self.path.parent(), self.path.file_stem()) else {
            return;
        };
        let prefix = format!("{}.snap-", stem.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut keep: Vec<PathBuf> = self
            .files
            .iter()
            .map(|(g, (index, term, _))| snapshot_path(&self.path, *g, *index, *term))
            .collect();
        keep.extend(
            self.written
                .keys()
                .map(|(g, index, term)| snapshot_path(&self.path, *g, *index, *term)),
        );
        for path in self.writing.keys() {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            keep.extend([path.clone(), PathBuf::from(tmp)]);
        }
        // A log a checkpoint replaced, left behind by a crash before it was freed.
        let old_logs = format!(
            "{}.",
            self.path.file_name().unwrap_or_default().to_string_lossy()
        );
        for entry in entries.flatten() {
            let (name, path) = (entry.file_name(), entry.path());
            let name = name.to_string_lossy();
            if discard::is_trash(&path)
                && (name.starts_with(&prefix) || name.starts_with(&old_logs))
            {
                discard::free_in_background(path);
            } else if name.starts_with(&prefix) && !keep.contains(&path) {
                discard(&path);
            }
        }
    }
}
