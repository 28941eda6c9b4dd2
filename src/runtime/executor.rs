//! Starting glommio executors: one per core, pinned on bare metal, unbound in tests.
//!
//! This is the only place that builds a glommio executor, so the settings every executor
//! needs (small `io_memory`, a name, the placement) are decided once.

use std::time::Duration;

use thiserror::Error;

use crate::constants::{RUNTIME_IO_MEMORY_BYTES, RUNTIME_MEMLOCK_MIN_BYTES};

/// Where an executor's thread runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorePlacement {
    /// Pinned to this CPU: one executor per core, the thread-per-core layout.
    Pinned(usize),
    /// Let the OS schedule the thread: for tests that run more executors than CPUs.
    Unbound,
}

/// An executor could not start or its task could not be joined.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// glommio refused to start; the message says why and how to fix it where we know.
    #[error("cannot start executor {name}: {message}")]
    Start { name: String, message: String },
    /// The executor's thread panicked or glommio reported an error while joining.
    #[error("executor {name} failed: {message}")]
    Join { name: String, message: String },
}

/// A running executor whose top-level task returns `T`.
pub struct ExecutorHandle<T: Send + 'static> {
    name: String,
    inner: glommio::ExecutorJoinHandle<T>,
}

impl<T: Send + 'static> ExecutorHandle<T> {
    /// Waits for the executor's task to finish and returns its result.
    pub fn join(self) -> Result<T, RuntimeError> {
        self.inner.join().map_err(|e| RuntimeError::Join {
            name: self.name,
            message: e.to_string(),
        })
    }
}

/// Starts an executor thread named `name` running the future `make()` builds.
pub fn spawn_executor<G, F, T>(
    name: &str,
    placement: CorePlacement,
    make: G,
) -> Result<ExecutorHandle<T>, RuntimeError>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let glommio_placement = match placement {
        CorePlacement::Pinned(cpu) => glommio::Placement::Fixed(cpu),
        CorePlacement::Unbound => glommio::Placement::Unbound,
    };
    let inner = glommio::LocalExecutorBuilder::new(glommio_placement)
        .name(name)
        .io_memory(RUNTIME_IO_MEMORY_BYTES)
        // Yield to other tasks at least this often; keeps timers and kicks responsive.
        .preempt_timer(Duration::from_millis(10))
        .spawn(make)
        .map_err(|e| RuntimeError::Start {
            name: name.to_owned(),
            message: explain(&e.to_string()),
        })?;
    Ok(ExecutorHandle {
        name: name.to_owned(),
        inner,
    })
}

/// Adds the fix to glommio's terser start-up errors.
fn explain(message: &str) -> String {
    if message.contains("MemLockLimit") || message.contains("memlock") {
        format!(
            "{message}: the locked-memory limit (RLIMIT_MEMLOCK) is below the {} KiB io_uring needs; \
             raise it with `ulimit -l {}` in the shell, `LimitMEMLOCK=infinity` in the systemd unit, \
             or `--ulimit memlock=-1` for a container",
            RUNTIME_MEMLOCK_MIN_BYTES / 1024,
            RUNTIME_MEMLOCK_MIN_BYTES / 1024 * 16,
        )
    } else {
        message.to_owned()
    }
}
