//! Deleting large files (old snapshot files, a log a checkpoint replaced) without stalling
//! the log's durable writes.
//!
//! Freeing a file's blocks is cheap for the call that frees them and expensive for the
//! disk's other users: when the filesystem is mounted with `discard` (the development VM's
//! and CI's ext4 is, and runs without a journal) the freed blocks are trimmed, and an
//! `O_DSYNC` log append (which writes the inode and flushes the device's cache) waits
//! behind the trims at the device: a 512 MiB snapshot file unlinked at once held appends
//! on every log of the disk for 30–60 ms (`perf trace` of `migrate --mib 512`: the unlink
//! on glommio's blocking thread, 40–130 ms, and the core threads' `pwrite`s, 30–60 ms,
//! started within the same milliseconds). With a journal, the trims come in the commit
//! that follows the freeing, which every such append needs: the same wait.
//!
//! So a file is freed in steps: renamed at once to a name no live file takes
//! (`<name>.discarded`), then shrunk by `DISCARD_STEP_BYTES` at a time, each step made
//! durable by an `fdatasync` of its own (its trims are done before the next step, and with
//! a journal they are a commit of their own) with a pause between steps, and unlinked when
//! empty. One queue per
//! executor, so deletions do not add up. A file that still has another name (a checkpoint
//! links the old log before replacing it; a crash between the link and the rename leaves
//! both names on one inode) is never shrunk: only its trash name is removed. A trash file
//! a crash left behind is found by the log's next open and discarded the same way.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use glommio::io::OpenOptions;
use tracing::warn;

use crate::constants::{DISCARD_STEP_BYTES, DISCARD_STEP_PAUSE};

/// What a file waiting to be freed is renamed to.
pub const DISCARDED_SUFFIX: &str = ".discarded";

thread_local! {
    /// This executor's files waiting to be freed, and whether a task is freeing them.
    static QUEUE: RefCell<(VecDeque<PathBuf>, bool)> = const { RefCell::new((VecDeque::new(), false)) };
}

/// `path` with the trash suffix.
pub fn trash_name(path: &Path) -> PathBuf {
    let mut trash = path.as_os_str().to_owned();
    trash.push(DISCARDED_SUFFIX);
    PathBuf::from(trash)
}

/// Whether `path` is a trash name.
pub fn is_trash(path: &Path) -> bool {
    path.as_os_str()
        .to_string_lossy()
        .ends_with(DISCARDED_SUFFIX)
}

/// Deletes `path` in the background: renamed at once (so a new file of the same name is
/// never the one deleted), then freed in steps. Must run on a glommio executor.
pub fn discard(path: &Path) {
    let trash = trash_name(path);
    if let Err(e) = std::fs::rename(path, &trash) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(path = %path.display(), error = %e, "could not delete an unneeded file");
        }
        return;
    }
    free_in_background(trash);
}

/// Frees `trash` (a name already out of use) in steps and removes it. Queued once: asking
/// again for a file already queued does nothing. Must run on a glommio executor.
pub fn free_in_background(trash: PathBuf) {
    let start = QUEUE.with(|q| {
        let (queue, running) = &mut *q.borrow_mut();
        if !queue.contains(&trash) {
            queue.push_back(trash);
        }
        !std::mem::replace(running, true)
    });
    if start {
        glommio::spawn_local(async {
            while let Some(trash) = QUEUE.with(|q| q.borrow().0.front().cloned()) {
                if let Err(e) = free_in_steps(&trash).await
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    warn!(path = %trash.display(), error = %e, "could not delete an unneeded file");
                }
                QUEUE.with(|q| q.borrow_mut().0.pop_front());
            }
            QUEUE.with(|q| q.borrow_mut().1 = false);
        })
        .detach();
    }
}

/// Whether every queued file has been freed (tests).
pub fn idle() -> bool {
    QUEUE.with(|q| !q.borrow().1)
}

async fn free_in_steps(trash: &Path) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(trash)
        .await
        .map_err(std::io::Error::from)?;
    let shrink = async {
        let mut size = file.file_size().await?;
        while size > 0 {
            // Another name keeps the blocks: shrinking would empty that file too.
            if links(trash)? > 1 {
                break;
            }
            size = size.saturating_sub(DISCARD_STEP_BYTES);
            file.truncate(size).await?;
            file.fdatasync().await?;
            glommio::timer::sleep(DISCARD_STEP_PAUSE).await;
        }
        Ok::<_, glommio::GlommioError<()>>(())
    }
    .await;
    let _ = file.close().await;
    shrink.map_err(std::io::Error::from)?;
    glommio::io::remove(trash)
        .await
        .map_err(std::io::Error::from)
}

fn links(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::symlink_metadata(path)?.nlink())
}
