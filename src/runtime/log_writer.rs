//! A core's write-ahead log, served by a task of its own beside the core loop.
//!
//! The loop hands every log write to the task ([`LogWriter::submit`]) and goes on: it
//! never waits for a write or an fdatasync. While a batch becomes durable the loop keeps
//! taking Raft messages, client requests and snapshot chunks, and the leader's appends
//! leave in the same turn as its own write (Raft allows a leader to replicate before its
//! own copy is durable; only the messages raft-rs marks as needing persistence wait, and
//! the node core holds those until `handle_persisted`). What the task finishes comes back
//! to the loop as a [`LogDone`], through the loop's inbox.
//!
//! The task runs the jobs one at a time, in the order they were submitted, so the log sees
//! the node core's writes in the core's order: a group dropped before a later replica of
//! it is recorded, a file adopted before the batch that names it. Snapshot files
//! (compactions, and received snapshots written ahead of their install) are written by
//! tasks of their own, which report back the same way; the log task only records them.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};

use raft::eraftpb::Snapshot;
use tracing::debug;

use crate::constants::{SNAPSHOT_CHUNK_BYTES, SNAPSHOT_FILE_WRITES_IN_FLIGHT};
use crate::ids::GroupId;
use crate::node::SnapshotFileWrite;
use crate::replication::raft_host::{Compaction, PersistBatch};
use crate::replication::wal::SnapshotFile;
use crate::runtime::wal::{WalFile, WalIoError, write_snapshot_file};

/// Work for the log task.
pub enum LogJob {
    /// Make the batch durable (its large compactions go to files in the background), then
    /// report [`LogDone::Persisted`].
    Persist(PersistBatch),
    /// Forget a group (its replica left the core): `WalFile::drop_group`.
    Drop(GroupId),
    /// Write a received snapshot's file in the background, then report
    /// [`LogDone::WrittenAhead`].
    WriteAhead(SnapshotFileWrite),
    /// A compaction's file is durable: record it (`WalFile::append_written_snapshot`).
    RecordCompaction {
        group: GroupId,
        snapshot: Snapshot,
        file: SnapshotFile,
    },
    /// A file written ahead is durable: the batch that installs its snapshot names it.
    Adopt {
        group: GroupId,
        index: u64,
        term: u64,
        file: SnapshotFile,
    },
    /// A file written ahead will not be used.
    Abandon {
        group: GroupId,
        index: u64,
        term: u64,
    },
    /// A streamed snapshot's file: begun, given its pieces in order, then ended (made
    /// durable, then [`LogDone::WrittenAhead`]) or abandoned (stopped and deleted, then
    /// [`LogDone::WriteAheadAbandoned`]). Its writer runs beside the log task; the log task
    /// waits for an abandoned one to stop, so a later file of the same snapshot never
    /// shares its path with it.
    StreamBegin {
        group: GroupId,
        index: u64,
        term: u64,
        /// The snapshot's size (the file's room is reserved up front).
        bytes: u64,
    },
    StreamPiece {
        group: GroupId,
        index: u64,
        piece: bytes::Bytes,
    },
    StreamEnd {
        group: GroupId,
        index: u64,
    },
    StreamAbandon {
        group: GroupId,
        index: u64,
        term: u64,
    },
}

/// What the log task, or a file writer it started, reports to the loop.
pub enum LogDone {
    /// The batch `id` is durable; writing it blocked the core for `blocked`
    /// (`WalFile::take_blocked`); `checkpoints` were put in place since the last report
    /// (`WalFile::take_checkpoints`).
    Persisted {
        id: u64,
        blocked: std::time::Duration,
        checkpoints: u64,
        /// How long its writes took to become durable (None when it had none).
        durable: Option<std::time::Duration>,
    },
    /// A compaction's file is written (or failed); submit `RecordCompaction` to record it.
    CompactionWritten {
        group: GroupId,
        snapshot: Snapshot,
        result: Result<SnapshotFile, WalIoError>,
    },
    /// A received snapshot's file is written (or failed).
    WrittenAhead {
        group: GroupId,
        index: u64,
        term: u64,
        result: Result<SnapshotFile, WalIoError>,
    },
    /// A streamed snapshot's file was abandoned (and deleted) as asked.
    WriteAheadAbandoned { group: GroupId, index: u64 },
    /// The log could not be written: the core must stop.
    Failed(WalIoError),
}

/// Where reports go (the loop's inbox).
pub type Report = Rc<dyn Fn(LogDone)>;

/// The loop's handle on its log task.
pub struct LogWriter {
    queue: Rc<Queue<LogJob>>,
    task: glommio::task::JoinHandle<WalFile>,
}

impl LogWriter {
    /// Starts the task that serves `wal`.
    pub fn start(wal: WalFile, report: Report) -> LogWriter {
        let queue = Rc::new(Queue::default());
        let task = glommio::spawn_local(serve(wal, queue.clone(), report)).detach();
        LogWriter { queue, task }
    }

    /// Queues a job; the task runs it after every job submitted before it.
    pub fn submit(&self, job: LogJob) {
        self.queue.push(job);
    }

    /// Runs what was submitted, then closes the log.
    pub async fn close(self) -> Result<(), WalIoError> {
        self.queue.close();
        match self.task.await {
            Some(wal) => wal.close().await,
            None => Ok(()),
        }
    }
}

/// Items for one task on the same executor (the log task's jobs, a streamed file
/// writer's pieces), in order.
struct Queue<T> {
    items: RefCell<VecDeque<T>>,
    waker: RefCell<Option<Waker>>,
    closed: Cell<bool>,
}

impl<T> Default for Queue<T> {
    fn default() -> Queue<T> {
        Queue {
            items: RefCell::default(),
            waker: RefCell::default(),
            closed: Cell::default(),
        }
    }
}

impl<T> Queue<T> {
    fn push(&self, item: T) {
        self.items.borrow_mut().push_back(item);
        self.wake();
    }

    /// No item follows those queued.
    fn close(&self) {
        self.closed.set(true);
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// The next item; `None` once closed and empty.
    async fn next(&self) -> Option<T> {
        std::future::poll_fn(|cx| {
            if let Some(item) = self.items.borrow_mut().pop_front() {
                return Poll::Ready(Some(item));
            }
            if self.closed.get() {
                return Poll::Ready(None);
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// The log task: jobs in order until the log is closed, or until a write fails (reported;
/// the loop then stops the core, and later jobs are not run).
async fn serve(mut wal: WalFile, queue: Rc<Queue<LogJob>>, report: Report) -> WalFile {
    let mut streams = Streams::new();
    while let Some(job) = queue.next().await {
        if let Err(e) = run(&mut wal, &mut streams, job, &report).await {
            report(LogDone::Failed(e));
            break;
        }
    }
    wal
}

/// The writers of streamed snapshots' files under way, by (group, index).
type Streams = std::collections::HashMap<(GroupId, u64), Stream>;

/// One streamed file's writer: its input, and the task.
struct Stream {
    pipe: Rc<Queue<StreamItem>>,
    task: glommio::task::JoinHandle<()>,
}

/// What a streamed file's writer is given.
enum StreamItem {
    Piece(bytes::Bytes),
    End,
    Abandon,
}

/// Writes a streamed snapshot's file as its pieces come: reports `WrittenAhead` once it
/// is ended and durable, or failed; `WriteAheadAbandoned` when told to stop (the file is
/// left for the log task to delete).
async fn write_stream(
    (group, index, term): (GroupId, u64, u64),
    size: u64,
    path: std::path::PathBuf,
    pipe: Rc<Queue<StreamItem>>,
    report: Report,
) {
    let started = std::time::Instant::now();
    let mut bytes = 0u64;
    let result = async {
        let mut writer = crate::runtime::wal::SnapshotFileWriter::create(&path).await?;
        writer.reserve(size).await;
        writer.set_writes_in_flight(SNAPSHOT_FILE_WRITES_IN_FLIGHT);
        loop {
            match pipe.next().await {
                Some(StreamItem::Piece(piece)) => {
                    bytes += piece.len() as u64;
                    writer.write(&piece).await?;
                }
                Some(StreamItem::End) => return writer.finish().await.map(Some),
                Some(StreamItem::Abandon) | None => return Ok(None),
            }
        }
    }
    .await;
    match result {
        Ok(None) => report(LogDone::WriteAheadAbandoned { group, index }),
        result => {
            debug!(
                group = group.0,
                bytes,
                took_us = started.elapsed().as_micros() as u64,
                "streamed snapshot written as it arrived"
            );
            // A failed writer still drains what it is given (the log task may still
            // push pieces or an abandon to it).
            let result = result.map(|file| file.expect("ended"));
            let failed = result.is_err();
            report(LogDone::WrittenAhead {
                group,
                index,
                term,
                result,
            });
            if failed {
                while matches!(pipe.next().await, Some(StreamItem::Piece(_))) {}
            }
        }
    }
}

async fn run(
    wal: &mut WalFile,
    streams: &mut Streams,
    job: LogJob,
    report: &Report,
) -> Result<(), WalIoError> {
    match job {
        LogJob::StreamBegin {
            group,
            index,
            term,
            bytes,
        } => {
            let path = wal.begin_snapshot_file(group, index, term);
            let pipe = Rc::new(Queue::default());
            let task = glommio::spawn_local(write_stream(
                (group, index, term),
                bytes,
                path,
                pipe.clone(),
                report.clone(),
            ))
            .detach();
            streams.insert((group, index), Stream { pipe, task });
        }
        LogJob::StreamPiece {
            group,
            index,
            piece,
        } => {
            if let Some(stream) = streams.get(&(group, index)) {
                stream.pipe.push(StreamItem::Piece(piece));
            }
        }
        LogJob::StreamEnd { group, index } => {
            if let Some(stream) = streams.remove(&(group, index)) {
                stream.pipe.push(StreamItem::End);
            }
        }
        LogJob::StreamAbandon { group, index, term } => {
            if let Some(stream) = streams.remove(&(group, index)) {
                stream.pipe.push(StreamItem::Abandon);
                // Stopped before the file goes, and before any later job (a new file of
                // the same snapshot) runs.
                stream.task.await;
            }
            wal.abandon_snapshot_file(group, index, term);
        }
        LogJob::Persist(mut batch) => {
            write_compactions(&mut batch, wal, report);
            let mut durable = None;
            if !batch.writes.is_empty() {
                let snapshot_bytes: usize = batch
                    .writes
                    .iter()
                    .filter_map(|w| w.snapshot.as_ref())
                    .map(|s| s.data.len())
                    .sum();
                // Two clock reads per batch (tens of ns) against a synced write (tens of µs
                // or more): the `wal_write_seconds` histogram.
                let started = std::time::Instant::now();
                wal.append(&batch.writes).await?;
                let took = started.elapsed();
                if snapshot_bytes > 0 {
                    debug!(
                        snapshot_bytes,
                        took_us = took.as_micros() as u64,
                        "log batch with a snapshot made durable"
                    );
                }
                durable = Some(took);
            }
            report(LogDone::Persisted {
                id: batch.id,
                blocked: wal.take_blocked(),
                checkpoints: wal.take_checkpoints(),
                durable,
            });
        }
        LogJob::Drop(group) => {
            wal.drop_group(group).await?;
        }
        LogJob::WriteAhead(received) => write_ahead(received, wal, report),
        LogJob::RecordCompaction {
            group,
            snapshot,
            file,
        } => wal.append_written_snapshot(group, snapshot, file).await?,
        LogJob::Adopt {
            group,
            index,
            term,
            file,
        } => wal.adopt_snapshot_file(group, index, term, file),
        LogJob::Abandon { group, index, term } => wal.abandon_snapshot_file(group, index, term),
    }
    Ok(())
}

/// Writes each large compaction of `batch` (kept as a view of its state) to a file of
/// its own in a task of its own, encoding it from its view a chunk at a time: nothing waits
/// for a compaction (the log keeps the entries it covers). (Encoding and writing a 128 MiB
/// one on the loop held it for 100–200 ms.) The task reports `CompactionWritten`.
fn write_compactions(batch: &mut PersistBatch, wal: &mut WalFile, report: &Report) {
    for Compaction {
        group,
        snapshot,
        view,
    } in batch.compactions.drain(..)
    {
        let meta = snapshot.get_metadata();
        let path = wal.begin_snapshot_file(group, meta.index, meta.term);
        let report = report.clone();
        glommio::spawn_local(async move {
            let started = std::time::Instant::now();
            let mut reader = view.reader();
            let pieces = std::iter::from_fn(move || {
                let piece = reader.read(SNAPSHOT_CHUNK_BYTES);
                (!piece.is_empty()).then_some(piece)
            });
            let result = write_snapshot_file(&path, pieces).await;
            debug!(
                group = group.0,
                bytes = view.encoded_len(),
                took_us = started.elapsed().as_micros() as u64,
                "compaction snapshot written in the background"
            );
            report(LogDone::CompactionWritten {
                group,
                snapshot,
                result,
            });
        })
        .detach();
    }
}

/// Writes a received snapshot's file in a task of its own; it reports `WrittenAhead`.
fn write_ahead(received: SnapshotFileWrite, wal: &mut WalFile, report: &Report) {
    let SnapshotFileWrite {
        group,
        index,
        term,
        data,
    } = received;
    let path = wal.begin_snapshot_file(group, index, term);
    let report = report.clone();
    glommio::spawn_local(async move {
        let started = std::time::Instant::now();
        let result = write_snapshot_file(&path, std::iter::once(&data)).await;
        debug!(
            group = group.0,
            bytes = data.len(),
            took_us = started.elapsed().as_micros() as u64,
            "received snapshot written ahead of its install"
        );
        report(LogDone::WrittenAhead {
            group,
            index,
            term,
            result,
        });
    })
    .detach();
}
