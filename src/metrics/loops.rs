//! Loop metrics and their Prometheus text exposition.
//!
//! Every long-running loop (the rebalancer today; failure detection and migration later)
//! owns a `LoopMetrics` and registers it in a `MetricsRegistry`. Updates are single atomic
//! operations so a loop never blocks on a scraper; the registry's lock is taken only to
//! register a loop or render the text. Durations are passed in, so this module reads no clock.
//!
//! Exposed per loop `L`: `L_iterations_total`, `L_last_iteration_duration_seconds`, `L_up`,
//! `L_errors_total{kind=...}` and `L_skipped_total{reason=...}`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::constants::METRICS_LOOPS_MAX;

/// Counters and gauges of one loop.
#[derive(Debug)]
pub struct LoopMetrics {
    name: &'static str,
    iterations: AtomicU64,
    last_duration_ns: AtomicU64,
    up: AtomicBool,
    errors: Vec<(&'static str, AtomicU64)>,
    skips: Vec<(&'static str, AtomicU64)>,
}

impl LoopMetrics {
    /// A loop called `name` (a Prometheus metric prefix: `[a-z_]+`) with fixed sets of error
    /// kinds and skip reasons, so the exposition always lists every series, zeros included.
    pub fn new(
        name: &'static str,
        error_kinds: &[&'static str],
        skip_reasons: &[&'static str],
    ) -> LoopMetrics {
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "loop name {name:?} is not a valid metric prefix"
        );
        LoopMetrics {
            name,
            iterations: AtomicU64::new(0),
            last_duration_ns: AtomicU64::new(0),
            up: AtomicBool::new(false),
            errors: error_kinds
                .iter()
                .map(|k| (*k, AtomicU64::new(0)))
                .collect(),
            skips: skip_reasons
                .iter()
                .map(|k| (*k, AtomicU64::new(0)))
                .collect(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records one finished iteration and how long it took.
    pub fn record_iteration(&self, duration: Duration) {
        self.iterations.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.last_duration_ns.store(nanos, Ordering::Relaxed);
    }

    /// Counts an iteration whose duration is measured elsewhere (a sans-IO loop has no
    /// clock: its shell reports the duration with `set_last_duration`).
    pub fn count_iteration(&self) {
        self.iterations.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_last_duration(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.last_duration_ns.store(nanos, Ordering::Relaxed);
    }

    pub fn iterations(&self) -> u64 {
        self.iterations.load(Ordering::Relaxed)
    }

    /// Counts an error of `kind`, which must be one of the kinds given to `new`.
    pub fn record_error(&self, kind: &'static str) {
        Self::bump(&self.errors, kind);
    }

    /// Counts a skipped iteration for `reason`, one of the reasons given to `new`.
    pub fn record_skip(&self, reason: &'static str) {
        Self::bump(&self.skips, reason);
    }

    pub fn errors(&self, kind: &str) -> u64 {
        Self::read(&self.errors, kind)
    }

    pub fn skips(&self, reason: &str) -> u64 {
        Self::read(&self.skips, reason)
    }

    fn bump(series: &[(&'static str, AtomicU64)], label: &'static str) {
        match series.iter().find(|(k, _)| *k == label) {
            Some((_, counter)) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            None => debug_assert!(false, "unregistered metric label {label}"),
        }
    }

    fn read(series: &[(&'static str, AtomicU64)], label: &str) -> u64 {
        series
            .iter()
            .find(|(k, _)| *k == label)
            .map_or(0, |(_, c)| c.load(Ordering::Relaxed))
    }

    fn render(&self, out: &mut String) {
        self.render_with("", None, out);
    }

    /// The loop's series named `<prefix><loop>_*`, labelled `node` (a node's `/metrics`).
    pub fn render_prefixed(&self, prefix: &str, node: u64, out: &mut String) {
        self.render_with(prefix, Some(node), out);
    }

    fn render_with(&self, prefix: &str, node: Option<u64>, out: &mut String) {
        let n = format!("{prefix}{}", self.name);
        let name = self.name;
        // `{node="1"}`, or `{node="1",kind="x"}` with an extra label.
        let labels = |extra: Option<(&str, &str)>| {
            let mut parts = Vec::new();
            if let Some(node) = node {
                parts.push(format!("node=\"{node}\""));
            }
            if let Some((k, v)) = extra {
                parts.push(format!("{k}=\"{v}\""));
            }
            if parts.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", parts.join(","))
            }
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP {n}_iterations_total Completed iterations of the {name} loop."
        );
        let _ = writeln!(out, "# TYPE {n}_iterations_total counter");
        let _ = writeln!(
            out,
            "{n}_iterations_total{} {}",
            labels(None),
            self.iterations()
        );
        let _ = writeln!(
            out,
            "# HELP {n}_last_iteration_duration_seconds Duration of the last iteration."
        );
        let _ = writeln!(out, "# TYPE {n}_last_iteration_duration_seconds gauge");
        let secs = self.last_duration_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "{n}_last_iteration_duration_seconds{} {secs}",
            labels(None)
        );
        let _ = writeln!(out, "# HELP {n}_up Whether the {name} loop is running.");
        let _ = writeln!(out, "# TYPE {n}_up gauge");
        let _ = writeln!(out, "{n}_up{} {}", labels(None), u8::from(self.is_up()));
        let _ = writeln!(
            out,
            "# HELP {n}_errors_total Errors of the {name} loop by kind."
        );
        let _ = writeln!(out, "# TYPE {n}_errors_total counter");
        for (kind, c) in &self.errors {
            let _ = writeln!(
                out,
                "{n}_errors_total{} {}",
                labels(Some(("kind", kind))),
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {n}_skipped_total Iterations of the {name} loop skipped, by reason."
        );
        let _ = writeln!(out, "# TYPE {n}_skipped_total counter");
        for (reason, c) in &self.skips {
            let _ = writeln!(
                out,
                "{n}_skipped_total{} {}",
                labels(Some(("reason", reason))),
                c.load(Ordering::Relaxed)
            );
        }
    }
}

/// A registration the registry refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// A loop with this name is already registered.
    #[error("a loop named {0} is already registered")]
    DuplicateLoop(&'static str),
    /// The registry is full.
    #[error("the metrics registry already holds {max} loops")]
    Full { max: usize },
}

/// All loops of a process, rendered together.
#[derive(Debug, Default)]
pub struct MetricsRegistry {
    loops: Mutex<Vec<Arc<LoopMetrics>>>,
}

impl MetricsRegistry {
    pub fn new() -> MetricsRegistry {
        MetricsRegistry::default()
    }

    pub fn register(&self, metrics: Arc<LoopMetrics>) -> Result<(), RegistryError> {
        let mut loops = self
            .loops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if loops.iter().any(|l| l.name == metrics.name) {
            return Err(RegistryError::DuplicateLoop(metrics.name));
        }
        if loops.len() >= METRICS_LOOPS_MAX {
            return Err(RegistryError::Full {
                max: METRICS_LOOPS_MAX,
            });
        }
        loops.push(metrics);
        Ok(())
    }

    /// The Prometheus text exposition (format 0.0.4) of every registered loop.
    pub fn render_prometheus(&self) -> String {
        let loops = self
            .loops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = String::new();
        for l in loops.iter() {
            l.render(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lists_every_series_with_current_values() {
        let registry = MetricsRegistry::new();
        let m = Arc::new(LoopMetrics::new(
            "rebalancer",
            &["dispatch", "plan"],
            &["election"],
        ));
        registry.register(m.clone()).unwrap();
        assert_eq!(
            registry.register(m.clone()),
            Err(RegistryError::DuplicateLoop("rebalancer"))
        );
        m.set_up(true);
        m.record_iteration(Duration::from_millis(250));
        m.record_iteration(Duration::from_millis(500));
        m.record_error("dispatch");
        m.record_skip("election");
        let text = registry.render_prometheus();
        for line in [
            "rebalancer_iterations_total 2",
            "rebalancer_last_iteration_duration_seconds 0.5",
            "rebalancer_up 1",
            "rebalancer_errors_total{kind=\"dispatch\"} 1",
            "rebalancer_errors_total{kind=\"plan\"} 0",
            "rebalancer_skipped_total{reason=\"election\"} 1",
            "# TYPE rebalancer_iterations_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
