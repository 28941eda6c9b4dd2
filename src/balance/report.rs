//! A node's load report: what core 0 of every node sends the coordinator each report
//! interval, and its wire form.
//!
//! A report holds one row per core of the node (busy fraction, rates, bytes, replicas,
//! leaders, latency, migration rate) and one per-vShard sample for each group the node
//! leads. Its size is bounded by construction: at most `CORES_PER_NODE_MAX` core rows and at
//! most one sample per vShard of the cluster (`NODE_GROUPS_MAX`), about 30 bytes each, so even a
//! 65 536-vShard cluster's report fits a frame. The decoder enforces both bounds before it
//! allocates, and [`NodeReport::validate`] refuses rates that are not finite and
//! non-negative: a report is input from the network.
//!
//! ```text
//! report = version:u8 node:varint cores:count core* samples:count sample*
//! core   = core:varint busy:f64 reads:f64 writes:f64 bytes:varint replicas:varint
//!          leaders:varint p95_us:f64 p99_us:f64 migration:f64
//! sample = core:varint vshard:varint bytes:varint writes:f64 reads:f64
//! f64    = the IEEE-754 bits as a varint
//! ```
//!
//! A sample names the core leading its vShard (version 2), so that the coordinator, and
//! `placement`, can tell which of two replicas on one node leads while a move between
//! that node's cores is under way. A version-1 report (no core) is still read, with the
//! cores unknown.

use crate::balance::load::{LoadError, LoadMetrics, VShardLoad};
use crate::constants::{CORES_PER_NODE_MAX, NODE_GROUPS_MAX};
use crate::ids::{CoreId, NodeId, VShardId};
use crate::wire::codec::{DecodeError, Reader, put_varint};

const VERSION: u8 = 2;
/// The first version: samples without their core.
const VERSION_NO_CORE: u8 = 1;

/// One core's row of a report.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CoreReport {
    pub core: CoreId,
    /// Fraction of the last load tick the core's loop was busy, `0.0..=1.0`.
    pub busy: f64,
    pub reads_per_sec: f64,
    pub writes_per_sec: f64,
    pub bytes_stored: u64,
    pub replicas: u32,
    pub leaders: u32,
    pub p95_latency_us: f64,
    pub p99_latency_us: f64,
    pub migration_bytes_per_sec: f64,
}

impl CoreReport {
    /// A core with no load.
    pub fn idle(core: CoreId) -> CoreReport {
        CoreReport {
            core,
            busy: 0.0,
            reads_per_sec: 0.0,
            writes_per_sec: 0.0,
            bytes_stored: 0,
            replicas: 0,
            leaders: 0,
            p95_latency_us: 0.0,
            p99_latency_us: 0.0,
            migration_bytes_per_sec: 0.0,
        }
    }
}

/// A node's load, as its core 0 reports it to the coordinator.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeReport {
    pub node: NodeId,
    pub cores: Vec<CoreReport>,
    /// One sample per group the node leads.
    pub vshards: Vec<LedVShard>,
}

/// A vShard a node leads: its load, and which core of the node leads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LedVShard {
    /// `None` in a version-1 report, which did not say.
    pub core: Option<CoreId>,
    pub load: VShardLoad,
}

impl NodeReport {
    /// The node's aggregate, in the planner's terms.
    pub fn node_metrics(&self) -> LoadMetrics {
        let cores: Vec<LoadMetrics> = self
            .cores
            .iter()
            .map(|c| LoadMetrics {
                node_id: self.node,
                core: Some(c.core),
                vshards_led: c.leaders,
                bytes_stored: c.bytes_stored,
                writes_per_sec: c.writes_per_sec,
                reads_per_sec: c.reads_per_sec,
                qps_recent: c.reads_per_sec + c.writes_per_sec,
                p95_latency_us: c.p95_latency_us,
                cpu_utilization: c.busy,
            })
            .collect();
        LoadMetrics::aggregate(self.node, &cores)
    }

    /// Refuses a report whose figures are not finite and non-negative (busy within `0..=1`)
    /// or that names a vShard twice.
    pub fn validate(&self, vshards: u32) -> Result<(), LoadError> {
        self.node_metrics().validate()?;
        for c in &self.cores {
            let fields = [
                ("busy", c.busy),
                ("reads_per_sec", c.reads_per_sec),
                ("writes_per_sec", c.writes_per_sec),
                ("p95_latency_us", c.p95_latency_us),
                ("p99_latency_us", c.p99_latency_us),
                ("migration_bytes_per_sec", c.migration_bytes_per_sec),
            ];
            for (field, value) in fields {
                if !value.is_finite() || value < 0.0 || (field == "busy" && value > 1.0) {
                    return Err(LoadError::InvalidNodeMetric {
                        node: self.node,
                        field,
                        value,
                    });
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for LedVShard { core, load: s } in &self.vshards {
            s.validate()?;
            if let Some(core) = core
                && !self.cores.iter().any(|c| c.core == *core)
            {
                return Err(LoadError::UnknownLeaderCore {
                    vshard: s.vshard,
                    core: core.0,
                });
            }
            if s.vshard.0 >= vshards {
                return Err(LoadError::UnknownVShard(s.vshard));
            }
            if !seen.insert(s.vshard) {
                return Err(LoadError::DuplicateVShardLoad(s.vshard));
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.cores.len() * 64 + self.vshards.len() * 32);
        out.push(VERSION);
        put_varint(&mut out, self.node.0);
        put_varint(&mut out, self.cores.len() as u64);
        for c in &self.cores {
            put_varint(&mut out, u64::from(c.core.0));
            put_f64(&mut out, c.busy);
            put_f64(&mut out, c.reads_per_sec);
            put_f64(&mut out, c.writes_per_sec);
            put_varint(&mut out, c.bytes_stored);
            put_varint(&mut out, u64::from(c.replicas));
            put_varint(&mut out, u64::from(c.leaders));
            put_f64(&mut out, c.p95_latency_us);
            put_f64(&mut out, c.p99_latency_us);
            put_f64(&mut out, c.migration_bytes_per_sec);
        }
        put_varint(&mut out, self.vshards.len() as u64);
        for LedVShard { core, load: s } in &self.vshards {
            // A report built here always knows its cores; 0 if one did not.
            put_varint(&mut out, core.map_or(0, |c| u64::from(c.0)));
            put_varint(&mut out, u64::from(s.vshard.0));
            put_varint(&mut out, s.bytes);
            put_f64(&mut out, s.writes_per_sec);
            put_f64(&mut out, s.reads_per_sec);
        }
        out
    }

    /// Decodes untrusted bytes; never panics, allocates within the documented bounds.
    pub fn decode(bytes: &[u8]) -> Result<NodeReport, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("report version")?;
        if version != VERSION && version != VERSION_NO_CORE {
            return Err(DecodeError::BadEnum {
                what: "report version",
                value: u64::from(version),
            });
        }
        let node = NodeId(r.varint("node")?);
        let count = r.count("cores", usize::from(CORES_PER_NODE_MAX))?;
        let mut cores = Vec::with_capacity(count);
        for _ in 0..count {
            cores.push(CoreReport {
                core: CoreId(r.count("core", usize::from(CORES_PER_NODE_MAX))? as u16),
                busy: f64_of(&mut r, "busy")?,
                reads_per_sec: f64_of(&mut r, "reads")?,
                writes_per_sec: f64_of(&mut r, "writes")?,
                bytes_stored: r.varint("bytes")?,
                replicas: u32_of(&mut r, "replicas")?,
                leaders: u32_of(&mut r, "leaders")?,
                p95_latency_us: f64_of(&mut r, "p95")?,
                p99_latency_us: f64_of(&mut r, "p99")?,
                migration_bytes_per_sec: f64_of(&mut r, "migration")?,
            });
        }
        let count = r.count("vshard samples", NODE_GROUPS_MAX as usize)?;
        let mut vshards = Vec::with_capacity(count);
        for _ in 0..count {
            let core = if version == VERSION_NO_CORE {
                None
            } else {
                Some(CoreId(
                    r.count("vshard core", usize::from(CORES_PER_NODE_MAX))? as u16,
                ))
            };
            let load = VShardLoad {
                vshard: VShardId(u32_of(&mut r, "vshard")?),
                bytes: r.varint("vshard bytes")?,
                writes_per_sec: f64_of(&mut r, "vshard writes")?,
                reads_per_sec: f64_of(&mut r, "vshard reads")?,
            };
            vshards.push(LedVShard { core, load });
        }
        r.finish()?;
        Ok(NodeReport {
            node,
            cores,
            vshards,
        })
    }
}

fn put_f64(out: &mut Vec<u8>, value: f64) {
    put_varint(out, value.to_bits());
}

fn f64_of(r: &mut Reader<'_>, what: &'static str) -> Result<f64, DecodeError> {
    Ok(f64::from_bits(r.varint(what)?))
}

fn u32_of(r: &mut Reader<'_>, what: &'static str) -> Result<u32, DecodeError> {
    let v = r.varint(what)?;
    u32::try_from(v).map_err(|_| DecodeError::TooLarge {
        what,
        value: v,
        max: u64::from(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> NodeReport {
        NodeReport {
            node: NodeId(3),
            cores: vec![
                CoreReport {
                    core: CoreId(0),
                    busy: 0.25,
                    reads_per_sec: 10.0,
                    writes_per_sec: 5.5,
                    bytes_stored: 1 << 20,
                    replicas: 4,
                    leaders: 2,
                    p95_latency_us: 900.0,
                    p99_latency_us: 1500.0,
                    migration_bytes_per_sec: 0.0,
                },
                CoreReport {
                    busy: 0.5,
                    ..CoreReport::idle(CoreId(1))
                },
            ],
            vshards: vec![LedVShard {
                core: Some(CoreId(1)),
                load: VShardLoad {
                    vshard: VShardId(7),
                    bytes: 4096,
                    writes_per_sec: 3.0,
                    reads_per_sec: 1.0,
                },
            }],
        }
    }

    #[test]
    fn a_report_round_trips_and_its_node_aggregate_adds_the_cores() {
        let r = report();
        assert_eq!(NodeReport::decode(&r.encode()).unwrap(), r);
        let m = r.node_metrics();
        assert_eq!(m.vshards_led, 2);
        assert_eq!(m.reads_per_sec, 10.0);
        assert!((m.cpu_utilization - 0.375).abs() < 1e-12);
        assert!(r.validate(8).is_ok());
    }

    #[test]
    fn a_first_version_report_is_read_with_its_leaders_cores_unknown() {
        let mut r = report();
        let mut v1 = r.encode();
        v1[0] = VERSION_NO_CORE;
        // The only sample ends the report; version 1 wrote it without its core (its first
        // byte here).
        let empty = NodeReport {
            vshards: Vec::new(),
            ..r.clone()
        };
        let sample_at = empty.encode().len();
        assert_eq!(v1[sample_at], 1, "the sample's core");
        v1.remove(sample_at);
        r.vshards[0].core = None;
        assert_eq!(NodeReport::decode(&v1).unwrap(), r);
        assert!(r.validate(8).is_ok());
    }

    #[test]
    fn hostile_reports_are_refused_without_panicking() {
        let good = report().encode();
        for cut in 0..good.len() {
            assert!(NodeReport::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        // A count far above its bound is refused before anything is allocated.
        let mut huge = vec![VERSION];
        put_varint(&mut huge, 1);
        put_varint(&mut huge, u64::MAX);
        assert!(matches!(
            NodeReport::decode(&huge),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut r = report();
        r.cores[1].busy = f64::NAN;
        assert!(r.validate(8).is_err());
        let mut r = report();
        r.cores[1].busy = 1.5;
        assert!(r.validate(8).is_err());
        let mut r = report();
        r.vshards.push(r.vshards[0]);
        assert!(r.validate(8).is_err(), "a vShard named twice");
        let mut r = report();
        r.vshards[0].core = Some(CoreId(5));
        assert!(
            matches!(
                r.validate(8),
                Err(LoadError::UnknownLeaderCore { core: 5, .. })
            ),
            "a sample led by a core the report does not list"
        );
        assert!(
            report().validate(4).is_err(),
            "a vShard outside the cluster"
        );
    }
}
