//! The rebalancer's periodic driver on a glommio executor (the coordinator core).
//!
//! Semantics, kept from the original `RebalancerLoop`:
//! - the first sweep runs one full interval after start, not at start (metrics are still
//!   warming up then);
//! - a kick (membership change) runs a sweep at once; kicks coalesce, and the next periodic
//!   sweep is one interval after the kicked one;
//! - dispatch is fire-and-forget (see `balance::rebalancer`);
//! - `shutdown` stops the loop promptly, even in the middle of its wait, and `up` goes to 0.
//!
//! Only the waiting and the clock live here; each sweep is `Rebalancer::sweep`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender, TrySendError};
use futures_lite::future;
use tracing::info;

use crate::balance::rebalancer::{
    ElectionGate, LoadMetricsProvider, MigrationDispatcher, Rebalancer,
};
use crate::constants::REBALANCE_KICK_CHANNEL_CAPACITY;
use crate::runtime::clock::MonotonicClock;

/// Control of a running rebalancer loop, usable from any thread.
#[derive(Clone, Debug)]
pub struct RebalancerHandle {
    kicks: Sender<()>,
    stop: Arc<AtomicBool>,
}

impl RebalancerHandle {
    /// Asks for a sweep now (e.g. on a membership change). Never blocks; coalesces.
    pub fn kick(&self) {
        match self.kicks.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Closed(())) => {}
        }
    }

    /// Stops the loop; it exits at its next wake-up, which this call triggers.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.kicks.close();
    }
}

/// The loop's side of the handle.
#[derive(Debug)]
pub struct RebalancerSignals {
    kicks: Receiver<()>,
    stop: Arc<AtomicBool>,
}

/// A connected handle and signals pair.
pub fn rebalancer_control() -> (RebalancerHandle, RebalancerSignals) {
    let (tx, rx) = async_channel::bounded(REBALANCE_KICK_CHANNEL_CAPACITY);
    let stop = Arc::new(AtomicBool::new(false));
    (
        RebalancerHandle {
            kicks: tx,
            stop: stop.clone(),
        },
        RebalancerSignals { kicks: rx, stop },
    )
}

/// Why the wait before a sweep ended.
enum Wake {
    Interval,
    Kick,
    Closed,
}

/// Runs sweeps every `interval` until shut down; returns the rebalancer for inspection.
/// Must be spawned on a glommio executor (it uses glommio's timers).
pub async fn run_rebalancer(
    mut rebalancer: Rebalancer,
    interval: Duration,
    signals: RebalancerSignals,
    gate: &dyn ElectionGate,
    provider: &dyn LoadMetricsProvider,
    dispatcher: &dyn MigrationDispatcher,
) -> Rebalancer {
    let clock = MonotonicClock::new();
    let metrics = rebalancer.metrics().clone();
    metrics.set_up(true);
    info!(
        interval_ms = interval.as_millis() as u64,
        "rebalancer loop started"
    );
    loop {
        let wake = future::or(
            async {
                glommio::timer::sleep(interval).await;
                Wake::Interval
            },
            async {
                match signals.kicks.recv().await {
                    Ok(()) => Wake::Kick,
                    Err(_) => Wake::Closed,
                }
            },
        )
        .await;
        if signals.stop.load(Ordering::Acquire) || matches!(wake, Wake::Closed) {
            break;
        }
        let started = Instant::now();
        let outcome = rebalancer.sweep(clock.now(), gate, provider, dispatcher);
        metrics.record_iteration(started.elapsed());
        tracing::debug!(
            ?outcome,
            kicked = matches!(wake, Wake::Kick),
            "rebalancer sweep"
        );
    }
    metrics.set_up(false);
    info!("rebalancer loop stopped");
    rebalancer
}
