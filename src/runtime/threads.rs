//! Threads of a node other than its cores: their CPU clock, and bulk work kept out of the
//! cores' way.
//!
//! A core's executor pins glommio's blocking thread to the core's own CPU (glommio's
//! default), so a checkpoint it writes (hundreds of milliseconds of encoding and copying
//! for a large vShard's log) shares that CPU with the core at equal weight: the scheduler
//! takes the core off its CPU for a time slice at a time, and every request the core has
//! waits. Work that nothing waits for runs at the lowest priority (`BACKGROUND_NICE`)
//! instead: it gets the CPU the cores leave, and a core that wakes takes the CPU from it.

use std::time::Duration;

use tracing::debug;

use crate::constants::BACKGROUND_NICE;

/// CPU time the calling thread has used.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Lowers the calling thread's scheduling priority to `BACKGROUND_NICE`, for good: an
/// unprivileged thread cannot raise it again. On Linux the nice value belongs to the
/// thread, not the process. Best effort: a failure is logged and changes nothing else.
pub fn lower_this_thread() {
    // SAFETY: setpriority changes a scheduling attribute of the calling thread (who = 0)
    // and touches no memory.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE) };
    if r != 0 {
        debug!(error = %std::io::Error::last_os_error(), "background thread keeps its priority");
    }
}

/// Runs `work` on a thread of its own at the background priority and waits for it. Meant
/// for bulk work on glommio's blocking thread, whose priority must stay as it is (it also
/// renames and opens the files the log waits for). Where no thread can be started, `work`
/// runs on the calling thread.
pub fn in_background<R: Send>(name: &str, work: impl FnOnce() -> R + Send) -> R {
    let mut work = Some(work);
    let outcome = std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn_scoped(scope, || {
                lower_this_thread();
                (work.take().expect("taken once"))()
            });
        spawned.map(|handle| handle.join())
    });
    match outcome {
        Ok(Ok(r)) => r,
        // The work panicked on its thread: the same panic, here.
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => {
            debug!(error = %e, "no background thread: the work runs on the caller's");
            (work.take().expect("not taken: the thread never started"))()
        }
    }
}
