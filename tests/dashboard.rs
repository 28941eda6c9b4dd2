//! The Grafana dashboard in `examples/grafana/` queries only series a node exports: every
//! `nodedb_*` name in its expressions (less a histogram's `_bucket`, `_sum` or `_count`) has
//! a `# TYPE` line in a node's exposition, with the labels it groups by.

use nodedb_cluster::ids::NodeId;
use nodedb_cluster::metrics::cores::NodeMetrics;

#[test]
fn every_series_the_dashboard_queries_is_exported() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/grafana/nodedb-cluster.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    let mut panels = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        panels += 1;
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(panels >= 10, "{panels} panels");
    let (metrics, _) = NodeMetrics::new(NodeId(1), 2);
    let exposition = metrics.render_prometheus();
    let mut names = Vec::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("nodedb_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.push(name);
        }
    }
    assert!(names.len() >= exprs.len(), "{exprs:?}");
    for name in names {
        let kind = |n: &str| {
            exposition
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# TYPE {n} ")))
                .map(str::to_owned)
        };
        let histogram = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| kind(base).as_deref() == Some("histogram"));
        assert!(
            histogram.is_some() || kind(&name).is_some(),
            "the dashboard queries {name}, which no node exports"
        );
    }
    // The labels it groups and filters by exist on the core series.
    for label in ["node=\"1\"", "core=\"1\"", "op=\"write\""] {
        assert!(exposition.contains(label), "no series labelled {label}");
    }
}
