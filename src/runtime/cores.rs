//! One executor per core, connected by bounded channels, started and stopped together.
//!
//! `CoreRuntime::start` checks the environment first (locked-memory limit, io_uring), then
//! starts `cores` glommio executors — pinned to consecutive CPUs on bare metal, unbound in
//! tests that run several nodes in one process. Core 0 is the node's coordinator core. Every
//! core gets a [`CoreContext`]: its id, a sender to every core's inbox (itself included) and
//! its own inbox, all created before any core starts, so no message can be sent to a core
//! that does not exist yet. Shutdown is a broadcast every core observes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_channel::{Receiver, Sender, TrySendError};
use thiserror::Error;

use crate::constants::{CORE_INBOX_CAPACITY, CORES_PER_NODE_MAX, RUNTIME_MEMLOCK_MIN_BYTES};
use crate::ids::CoreId;
use crate::runtime::executor::{CorePlacement, ExecutorHandle, RuntimeError, spawn_executor};

/// Why the machine cannot run the runtime. Each message says how to fix it.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PreflightError {
    /// `RLIMIT_MEMLOCK` is below what io_uring needs.
    #[error(
        "the locked-memory limit (RLIMIT_MEMLOCK) is {current_kib} KiB, but io_uring needs at least {required_kib} KiB. \
         Raise it: `ulimit -l 8192` in the shell that starts the node, `LimitMEMLOCK=infinity` in its systemd unit, \
         `--ulimit memlock=-1:-1` for docker, or a `memlock` line in /etc/security/limits.conf"
    )]
    MemlockTooLow { current_kib: u64, required_kib: u64 },
    /// The kernel refuses io_uring.
    #[error(
        "io_uring is unavailable ({reason}). It needs Linux 5.8 or newer and must not be disabled: check \
         `sysctl kernel.io_uring_disabled` (must be 0), and in a container allow the io_uring_* syscalls \
         (docker's default seccomp profile blocks them: `--security-opt seccomp=unconfined` or a custom profile)"
    )]
    IoUringUnavailable { reason: String },
}

/// Checks the locked-memory limit and io_uring before any executor starts.
pub fn preflight() -> Result<(), PreflightError> {
    // SAFETY: getrlimit only writes the struct we pass.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0
        && limit.rlim_cur != libc::RLIM_INFINITY
        && limit.rlim_cur < RUNTIME_MEMLOCK_MIN_BYTES
    {
        return Err(PreflightError::MemlockTooLow {
            current_kib: limit.rlim_cur / 1024,
            required_kib: RUNTIME_MEMLOCK_MIN_BYTES / 1024,
        });
    }
    // A two-entry ring is the cheapest way to ask the kernel whether io_uring works here.
    // SAFETY: io_uring_setup writes only into `params`; the returned fd is closed at once.
    let mut params = [0u8; 120];
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return Err(PreflightError::IoUringUnavailable {
            reason: err.to_string(),
        });
    }
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Where the cores of a node run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreLayout {
    /// Core `i` pinned to CPU `first_cpu + i` (bare metal, one node per machine).
    Pinned { first_cpu: usize },
    /// Cores scheduled by the OS (tests running several nodes in one process).
    Unbound,
}

/// Configuration of a node's cores.
#[derive(Clone, Debug)]
pub struct CoreRuntimeConfig {
    /// Prefix of the executor thread names (`<name>-core-<i>`).
    pub name: String,
    pub cores: u16,
    pub layout: CoreLayout,
}

/// A core's view of its node: who it is and how to reach the other cores.
pub struct CoreContext<M: Send + 'static> {
    core: CoreId,
    senders: Arc<[Sender<M>]>,
    inbox: Receiver<M>,
    stop: Arc<AtomicBool>,
}

/// A message could not be delivered to another core.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SendError {
    #[error("core {0} does not exist")]
    NoSuchCore(CoreId),
    /// The target's inbox is full: back-pressure, try again later.
    #[error("the inbox of core {0} is full")]
    Full(CoreId),
    /// The runtime is shutting down.
    #[error("core {0} is shut down")]
    Closed(CoreId),
}

impl<M: Send + 'static> CoreContext<M> {
    pub fn core(&self) -> CoreId {
        self.core
    }

    pub fn cores(&self) -> u16 {
        self.senders.len() as u16
    }

    /// Core 0 coordinates the node (metadata, rebalancer).
    pub fn is_coordinator(&self) -> bool {
        self.core == CoreId(0)
    }

    /// Sends `message` to `core`, waiting while its inbox is full.
    pub async fn send(&self, core: CoreId, message: M) -> Result<(), SendError> {
        let sender = self
            .senders
            .get(usize::from(core.0))
            .ok_or(SendError::NoSuchCore(core))?;
        sender
            .send(message)
            .await
            .map_err(|_| SendError::Closed(core))
    }

    /// Sends without waiting; a full inbox is reported, not waited on, and the message
    /// handed back.
    pub fn try_send(&self, core: CoreId, message: M) -> Result<(), (SendError, M)> {
        let Some(sender) = self.senders.get(usize::from(core.0)) else {
            return Err((SendError::NoSuchCore(core), message));
        };
        sender.try_send(message).map_err(|e| match e {
            TrySendError::Full(m) => (SendError::Full(core), m),
            TrySendError::Closed(m) => (SendError::Closed(core), m),
        })
    }

    /// The next message for this core; `None` once the runtime shuts down.
    pub async fn recv(&self) -> Option<M> {
        self.inbox.recv().await.ok()
    }

    /// Whether shutdown has been requested.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// The running cores of one node.
pub struct CoreRuntime<T: Send + 'static> {
    handles: Vec<ExecutorHandle<T>>,
    stop: Arc<AtomicBool>,
    close_inboxes: Box<dyn Fn() + Send>,
}

impl<T: Send + 'static> CoreRuntime<T> {
    /// Checks the environment, connects the inboxes, and starts one executor per core
    /// running `body(context)`.
    pub fn start<M, F, Fut>(
        config: &CoreRuntimeConfig,
        body: F,
    ) -> Result<CoreRuntime<T>, RuntimeError>
    where
        M: Send + 'static,
        F: Fn(CoreContext<M>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = T> + 'static,
    {
        preflight().map_err(|e| RuntimeError::Start {
            name: config.name.clone(),
            message: e.to_string(),
        })?;
        if config.cores == 0 || config.cores > CORES_PER_NODE_MAX {
            return Err(RuntimeError::Start {
                name: config.name.clone(),
                message: format!(
                    "a node runs 1..={CORES_PER_NODE_MAX} cores, not {}",
                    config.cores
                ),
            });
        }
        let (senders, inboxes): (Vec<Sender<M>>, Vec<Receiver<M>>) = (0..config.cores)
            .map(|_| async_channel::bounded(CORE_INBOX_CAPACITY))
            .unzip();
        let senders: Arc<[Sender<M>]> = senders.into();
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::with_capacity(inboxes.len());
        for (i, inbox) in inboxes.into_iter().enumerate() {
            let placement = match config.layout {
                CoreLayout::Pinned { first_cpu } => CorePlacement::Pinned(first_cpu + i),
                CoreLayout::Unbound => CorePlacement::Unbound,
            };
            let context = CoreContext {
                core: CoreId(i as u16),
                senders: senders.clone(),
                inbox,
                stop: stop.clone(),
            };
            let body = body.clone();
            let name = format!("{}-core-{i}", config.name);
            match spawn_executor(&name, placement, move || body(context)) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    // Stop what already started before reporting.
                    stop.store(true, Ordering::Release);
                    senders.iter().for_each(|s| {
                        s.close();
                    });
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        let closers = senders.clone();
        Ok(CoreRuntime {
            handles,
            stop,
            close_inboxes: Box::new(move || {
                closers.iter().for_each(|s| {
                    s.close();
                });
            }),
        })
    }

    /// Asks every core to stop (inboxes close; `stopping()` turns true) and waits for all of
    /// them, returning each core's result in core order.
    pub fn shutdown(self) -> Result<Vec<T>, RuntimeError> {
        self.stop.store(true, Ordering::Release);
        (self.close_inboxes)();
        self.handles.into_iter().map(|h| h.join()).collect()
    }
}
