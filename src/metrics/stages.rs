//! Where sampled writes spent their time: one HdrHistogram per stage, filled by a client
//! from the `ServerTiming` its traced writes come back with (`KvClient::sample_stages`).
//!
//! The stages of the critical path add up to the client's end-to-end time, so a tail can
//! be attributed to the stage that holds it. `network` is what the server did not see:
//! both loopback or network legs, QUIC on both sides, and the client's own handling.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::wire::kv_rpc::ServerTiming;

/// A stage's name and what it covers, in the order they happen.
pub const STAGES: [(&str, &str); 9] = [
    (
        "network",
        "client ↔ leader, both ways (client time − server time)",
    ),
    ("queue", "connection task → taken by the core loop"),
    ("batch_wait", "proposed → handed to the log in a batch"),
    (
        "leader_fsync",
        "batch → durable on the leader (its O_DSYNC write)",
    ),
    ("commit_wait", "durable here → committed (the quorum's ack)"),
    ("apply", "committed → answered"),
    ("reply", "answered → response written"),
    (
        "end_to_end",
        "the client's time (the stages above add up to it)",
    ),
    (
        "follower",
        "batch → quorum follower's ack, fsync included (parallel to leader_fsync)",
    ),
];

const HIGHEST_US: u64 = 60_000_000;

/// Per-stage latency histograms of sampled writes, in microseconds.
#[derive(Clone, Debug)]
pub struct StageHistograms {
    stages: Vec<Histogram<u64>>,
}

impl Default for StageHistograms {
    fn default() -> StageHistograms {
        StageHistograms::new()
    }
}

/// One stage's percentiles, in microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSummary {
    pub name: &'static str,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// As `to_json`.
impl serde::Serialize for StageHistograms {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl StageHistograms {
    pub fn new() -> StageHistograms {
        StageHistograms {
            stages: STAGES
                .iter()
                .map(|_| Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid bounds"))
                .collect(),
        }
    }

    /// One sampled write: the client's time for it and the server's account.
    pub fn record(&mut self, client: Duration, t: &ServerTiming) {
        let end_to_end = u64::try_from(client.as_micros()).unwrap_or(u64::MAX);
        let values = [
            end_to_end.saturating_sub(u64::from(t.total_us)),
            u64::from(t.queue_us),
            u64::from(t.batch_wait_us),
            u64::from(t.leader_fsync_us),
            u64::from(t.commit_wait_us),
            u64::from(t.apply_us),
            u64::from(t.reply_us),
            end_to_end,
            u64::from(t.follower_us),
        ];
        for (h, v) in self.stages.iter_mut().zip(values) {
            h.saturating_record(v.clamp(1, HIGHEST_US));
        }
    }

    /// How many writes were sampled.
    pub fn samples(&self) -> u64 {
        self.stages[0].len()
    }

    pub fn summary(&self) -> Vec<StageSummary> {
        STAGES
            .iter()
            .zip(&self.stages)
            .map(|(&(name, _), h)| StageSummary {
                name,
                p50_us: h.value_at_quantile(0.5),
                p99_us: h.value_at_quantile(0.99),
                p999_us: h.value_at_quantile(0.999),
                max_us: h.max(),
                mean_us: h.mean(),
            })
            .collect()
    }

    /// A table of the stages' percentiles in milliseconds.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<13} {:>8} {:>8} {:>8} {:>8} {:>8}  ({} sampled writes)\n",
            "stage",
            "mean",
            "p50",
            "p99",
            "p99.9",
            "max",
            self.samples()
        );
        let ms = |us: u64| us as f64 / 1000.0;
        for (s, (_, what)) in self.summary().iter().zip(STAGES) {
            out.push_str(&format!(
                "{:<13} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}  {what}\n",
                s.name,
                s.mean_us / 1000.0,
                ms(s.p50_us),
                ms(s.p99_us),
                ms(s.p999_us),
                ms(s.max_us),
            ));
        }
        out
    }

    /// `{"samples": n, "stage": {"p50_us": …, "p99_us": …, "p999_us": …, "max_us": …,
    /// "mean_us": …}, …}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut stages = serde_json::Map::new();
        for s in self.summary() {
            stages.insert(
                s.name.to_owned(),
                json!({
                    "p50_us": s.p50_us, "p99_us": s.p99_us, "p999_us": s.p999_us,
                    "max_us": s.max_us, "mean_us": s.mean_us,
                }),
            );
        }
        json!({ "samples": self.samples(), "stages": stages })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_stage_is_what_the_server_did_not_see() {
        let mut h = StageHistograms::new();
        let t = ServerTiming {
            queue_us: 10,
            batch_wait_us: 20,
            leader_fsync_us: 700,
            commit_wait_us: 30,
            apply_us: 5,
            reply_us: 35,
            total_us: 800,
            follower_us: 650,
        };
        h.record(Duration::from_micros(1000), &t);
        let s = h.summary();
        let value = |name: &str| s.iter().find(|s| s.name == name).unwrap().p50_us;
        assert_eq!(value("network"), 200);
        assert_eq!(value("leader_fsync"), 700);
        assert_eq!(value("end_to_end"), 1000);
        assert_eq!(value("follower"), 650);
        // A server that claims more time than the client measured leaves no network time.
        h.record(Duration::from_micros(100), &t);
        assert_eq!(value("network"), 200);
        assert_eq!(h.samples(), 2);
        assert_eq!(h.summary()[0].max_us, 200);
        assert!(h.table().contains("leader_fsync"));
        assert_eq!(h.to_json()["samples"], 2);
    }
}
