//! The command line as a user meets it: `rebalance-sim` prints a table or one JSON object,
//! and bad arguments get a clear message and a non-zero exit.

use std::process::{Command, Output};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"))
        .args(args)
        .output()
        .expect("run the binary")
}

/// Runs the binary with `input` on its stdin.
fn cli_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the binary");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs a command that must succeed and print one JSON object.
fn cli_json(args: &[&str]) -> serde_json::Value {
    let out = cli(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn rebalance_sim_json_has_every_documented_field() {
    let out = cli(&[
        "rebalance-sim",
        "--nodes",
        "4",
        "--cores",
        "2",
        "--vshards",
        "512",
        "--scenario",
        "new-node",
        "--seed",
        "3",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON object on one line");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for key in [
        "sweeps_to_converge",
        "final_max_over_mean",
        "final_core_max_over_mean",
        "bound_max_over_mean",
        "moves",
        "leader_transfers",
        "bytes_moved",
        "bytes_must_move",
        "max_replica_moves_of_one_vshard",
        "reversed_moves",
        "plan_us_max",
        "targets_met",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {stdout}");
    }
    assert_eq!(v["scenario"], "new-node");
    assert_eq!(v["targets_met"], true, "{stdout}");
    assert!(v["bytes_must_move"].as_u64().unwrap() > 0);
}

#[test]
fn rebalance_sim_table_prints_one_row_per_sweep_and_a_summary() {
    let out = cli(&[
        "rebalance-sim",
        "--nodes",
        "3",
        "--cores",
        "1",
        "--vshards",
        "256",
        "--scenario",
        "hot-node",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("converged            true"), "{stdout}");
    assert!(stdout.contains("targets              met"), "{stdout}");
    let rows = stdout.lines().filter(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|w| w.parse::<u32>().is_ok())
    });
    assert!(
        rows.count() >= 11,
        "a row per sweep, including the settle sweeps:\n{stdout}"
    );
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let cases: [(&[&str], &str); 8] = [
        (
            &["kv", "--endpoints", "127.0.0.1:1", "get", "k"],
            "--endpoints needs --ca, --cert and --key",
        ),
        (&["kv", "get", "k"], "--config <CONFIG>|--endpoints"),
        (
            &["kv", "--endpoints", "no-port", "--insecure", "get", "k"],
            "--endpoints: no-port",
        ),
        (
            &["rebalance-sim", "--scenario", "hot-disk"],
            "unknown scenario",
        ),
        (
            &["rebalance-sim", "--scenario", "zipf", "--nodes", "0"],
            "--nodes must be within",
        ),
        (
            &["rebalance-sim", "--scenario", "drain", "--nodes", "1"],
            "--nodes must be within 2",
        ),
        (
            &["rebalance-sim", "--scenario", "zipf", "--vshards", "0"],
            "--vshards must be within",
        ),
        (
            &["rebalance-sim", "--scenario", "zipf", "--cores", "many"],
            "invalid value",
        ),
    ];
    for (args, message) in cases {
        let out = cli(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in {stderr}"
        );
    }
}

#[test]
fn certs_init_node_and_client_write_pem_files_with_private_keys() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("nodedb-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let out = cli(&["certs", "node", "--dir", d, "--id", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certs init"),
        "the error says how to fix it"
    );
    assert!(cli(&["certs", "init", "--dir", d]).status.success());
    let again = cli(&["certs", "init", "--dir", d]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(
        cli(&[
            "certs",
            "node",
            "--dir",
            d,
            "--id",
            "1",
            "--san",
            "127.0.0.1",
            "--san",
            "db1.local"
        ])
        .status
        .success()
    );
    assert!(
        cli(&["certs", "client", "--dir", d, "--name", "app"])
            .status
            .success()
    );
    assert!(
        !cli(&[
            "certs", "node", "--dir", d, "--id", "2", "--san", "bad name"
        ])
        .status
        .success()
    );
    for key in ["ca.key", "node-1.key", "client-app.key"] {
        let mode = std::fs::metadata(dir.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let pem = std::fs::read_to_string(dir.join("node-1.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn demo_runs_a_cluster_and_reports_json() {
    let dir = scratch_dir("demo-plot");
    let svg_path = dir.join("demo.svg");
    let svg_arg = svg_path.to_str().unwrap();
    let v = cli_json(&[
        "demo",
        "--seconds",
        "2",
        "--concurrency",
        "4",
        "--json",
        "--plot",
        svg_arg,
    ]);
    for key in [
        "writes",
        "reads",
        "errors",
        "write_p50_us",
        "write_p99_us",
        "write_p999_us",
        "read_p99_us",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert!(
        v["writes"].as_u64().unwrap() > 0 && v["reads"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(v["errors"], 0, "{v}");
    // The plot: both panels, a curve for writes and one for reads, and their p50 and p99
    // lines second by second (two seconds of load), nothing drawn at infinity.
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for text in [
        "Latency by percentile",
        "second by second",
        "writes p99",
        "reads p50",
    ] {
        assert!(svg.contains(text), "no {text:?} in the plot");
    }
    assert_eq!(svg.matches("<polyline").count(), 6, "{svg}");
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
    // A plot that cannot be written fails before the run.
    let missing = dir.join("no-such-dir").join("demo.svg");
    let bad = cli(&["demo", "--plot", missing.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--plot"));
    std::fs::remove_dir_all(&dir).unwrap();
    let bad = cli(&["demo", "--groups", "6"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("power of two"));
}

#[test]
fn the_open_loop_demo_sends_every_scheduled_operation() {
    // 200 operations per second for one second: operations 0..200 are due, and each one is
    // sent and answered, however late (latency counts from when it was due).
    let v = cli_json(&["demo", "--seconds", "1", "--rate", "200", "--json"]);
    assert_eq!(v["mode"], "open", "{v}");
    assert_eq!(v["offered_per_sec"], 200.0, "{v}");
    let done = v["writes"].as_u64().unwrap() + v["reads"].as_u64().unwrap();
    assert_eq!(done + v["errors"].as_u64().unwrap(), 200, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    let bad = cli(&["demo", "--rate", "0"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("offered rate"));
}

/// An empty directory for one test's files.
fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A node (with `id`) or client configuration file of one core and four groups, with the
/// certificate pair `cert` and the `[[nodes]]` tables `nodes`.
fn config_toml(id: Option<u64>, cert: &str, nodes: &str) -> String {
    let node = id.map_or(String::new(), |id| {
        format!("node_id = {id}\ndata_dir = \"data-{id}\"\n")
    });
    format!(
        "{node}cores = 1\ngroups = 4\nlayout = \"unbound\"\n\n[tls]\nca_cert = \"ca.pem\"\ncert = \"{cert}.pem\"\nkey = \"{cert}.key\"\n\n{nodes}"
    )
}

/// A scratch directory `name` with the cluster CA and node 1's certificate, and a
/// `[[nodes]]` table placing node 1 on a free loopback port: (directory, port, table).
fn one_node(name: &str) -> (std::path::PathBuf, u16, String) {
    let dir = scratch_dir(name);
    let d = dir.to_str().unwrap();
    assert!(cli(&["certs", "init", "--dir", d]).status.success());
    let node = [
        "certs",
        "node",
        "--dir",
        d,
        "--id",
        "1",
        "--san",
        "127.0.0.1",
    ];
    assert!(cli(&node).status.success());
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nodes = format!("[[nodes]]\nid = 1\naddr = \"127.0.0.1:{port}\"\n");
    (dir, port, nodes)
}

/// `[[nodes]]` tables for ids `1..=count`, each on a free loopback UDP port.
fn nodes_table(count: u64) -> String {
    (1..=count)
        .map(|n| {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            format!("[[nodes]]\nid = {n}\naddr = \"127.0.0.1:{port}\"\n")
        })
        .collect()
}

/// A scratch directory `name` with the cluster CA, node certificates for ids
/// `1..=nodes` (SAN 127.0.0.1) and `client-cli` and `admin-cli` certificates.
fn certified_dir(name: &str, nodes: u64) -> std::path::PathBuf {
    let dir = scratch_dir(name);
    let d = dir.to_str().unwrap();
    assert!(cli(&["certs", "init", "--dir", d]).status.success());
    for n in 1..=nodes {
        let id = n.to_string();
        let args = [
            "certs",
            "node",
            "--dir",
            d,
            "--id",
            &id,
            "--san",
            "127.0.0.1",
        ];
        assert!(cli(&args).status.success());
    }
    for role in ["client", "admin"] {
        let args = ["certs", role, "--dir", d, "--name", "cli"];
        assert!(cli(&args).status.success());
    }
    dir
}

/// Three `start` processes from configuration files (two replicas per group), then `kv
/// put/get/del` against them, the placement table, and a replica moved to the third node.
#[test]
fn nodes_started_from_config_files_serve_the_kv_cli() {
    use std::process::{Child, Stdio};
    let dir = scratch_dir("cli-cluster");
    let d = dir.to_str().unwrap();
    assert!(cli(&["certs", "init", "--dir", d]).status.success());
    for n in 1..=3 {
        assert!(
            cli(&[
                "certs",
                "node",
                "--dir",
                d,
                "--id",
                &n.to_string(),
                "--san",
                "127.0.0.1"
            ])
            .status
            .success()
        );
    }
    for role in ["client", "admin"] {
        assert!(
            cli(&["certs", role, "--dir", d, "--name", "cli"])
                .status
                .success()
        );
    }
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        })
        .collect();
    let nodes: String = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("[[nodes]]\nid = {}\naddr = \"127.0.0.1:{p}\"\n", i + 1))
        .collect();
    let config = |id: Option<u64>, cert: &str| {
        config_toml(id, cert, &nodes).replace("cores = 1", "cores = 1\nreplicas = 2")
    };
    for n in 1..=3 {
        std::fs::write(
            dir.join(format!("node-{n}.toml")),
            config(Some(n), &format!("node-{n}")),
        )
        .unwrap();
    }
    std::fs::write(dir.join("client.toml"), config(None, "client-cli")).unwrap();
    std::fs::write(dir.join("admin.toml"), config(None, "admin-cli")).unwrap();
    let admin = dir.join("admin.toml");
    let a = admin.to_str().unwrap();
    let mut children: Vec<Child> = (1..=3)
        .map(|n| {
            Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"))
                .args([
                    "start",
                    "--config",
                    dir.join(format!("node-{n}.toml")).to_str().unwrap(),
                    "--run-for",
                    "60",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let client = dir.join("client.toml");
    let c = client.to_str().unwrap();
    let put = cli(&["kv", "--config", c, "put", "greeting", "hello"]);
    let get = cli(&["kv", "--config", c, "get", "greeting"]);
    let del = cli(&["kv", "--config", c, "del", "greeting"]);
    let gone = cli(&["kv", "--config", c, "get", "greeting"]);
    let gone_json = cli(&["kv", "--config", c, "get", "greeting", "--json"]);
    let del_gone = cli(&["kv", "--config", c, "del", "greeting"]);
    // A 1 MiB binary value (every byte value, no valid UTF-8) from stdin, read back raw.
    let binary: Vec<u8> = (0..1usize << 20)
        .map(|i| (i * 7 + i / 256) as u8 | 0x80)
        .collect();
    let put_binary = cli_stdin(&["kv", "--config", c, "put", "blob", "-"], &binary);
    let get_raw = cli(&["kv", "--config", c, "get", "blob", "--raw"]);
    let get_json = cli(&["kv", "--config", c, "get", "blob", "--json"]);
    // A reader that closes the pipe early is no error.
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} kv --config {c} get blob --hex | head -c 10",
            env!("CARGO_BIN_EXE_nodedb-cluster")
        ))
        .output()
        .unwrap();
    let too_big = cli_stdin(
        &["kv", "--config", c, "put", "huge", "-"],
        &vec![1u8; (1 << 20) + 1],
    );
    // Group 1 starts on two of the three nodes; one of its replicas moves to the third.
    let placement = || {
        let out = cli(&["kv", "--config", c, "placement"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let group_1 = |table: &str| {
        table
            .lines()
            .find(|l| l.starts_with("group 1:"))
            .map(str::to_owned)
    };
    let before = placement();
    // "group 1: nNODE/cCORE nNODE/cCORE" (the leader's marked *): the nodes holding it, and
    // the spare.
    let holders: Vec<u64> = group_1(&before)
        .unwrap_or_default()
        .split_whitespace()
        .skip(2)
        .filter_map(|r| r.strip_prefix('n')?.split_once('/')?.0.parse().ok())
        .collect();
    assert_eq!(holders.len(), 2, "{before}");
    let (from, other) = (holders[0].to_string(), holders[1].to_string());
    let spare = (1..=3u64)
        .find(|n| !holders.contains(n))
        .unwrap()
        .to_string();
    let move_to = |config: &str, to: String| {
        let args = [
            "kv", "--config", config, "move", "--group", "1", "--from", &from, "--to", &to,
        ];
        cli(&args)
    };
    // A client certificate may not move replicas; an admin certificate may.
    let forbidden = move_to(c, format!("{spare}:0"));
    let refused = move_to(a, format!("{other}:0"));
    let moved = move_to(a, format!("{spare}:0"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let after = loop {
        let line = group_1(&placement()).unwrap_or_default();
        let done =
            line.contains(&format!(" n{spare}/c0")) && !line.contains(&format!(" n{from}/c0"));
        if done || std::time::Instant::now() > deadline {
            break line;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let after_json = cli_json(&["kv", "--config", c, "--json", "placement"]);
    let bad_to = cli(&[
        "kv", "--config", c, "move", "--group", "1", "--from", "1", "--to", "3",
    ]);
    // A client that counts groups otherwise would write keys into the wrong groups.
    std::fs::write(
        dir.join("client-8.toml"),
        config(None, "client-cli").replace("groups = 4", "groups = 8"),
    )
    .unwrap();
    let eight = dir.join("client-8.toml");
    let wrong_groups = cli(&["kv", "--config", eight.to_str().unwrap(), "put", "k", "v"]);
    // A second process on a running node's data directory.
    let node_1 = dir.join("node-1.toml");
    let n1 = node_1.to_str().unwrap();
    let second = cli(&["start", "--config", n1, "--run-for", "5"]);
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    // Node 1 restarted from edited files: each edit contradicts its data directory.
    let restart_with = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        cli(&[
            "start",
            "--config",
            path.to_str().unwrap(),
            "--run-for",
            "5",
        ])
    };
    let own_line = nodes.lines().take(3).collect::<Vec<_>>().join("\n");
    let edits = [
        (
            restart_with(
                "groups.toml",
                config(Some(1), "node-1").replace("groups = 4", "groups = 8"),
            ),
            "groups = 4",
        ),
        (
            restart_with(
                "cores.toml",
                config(Some(1), "node-1").replace("cores = 1", "cores = 2"),
            ),
            "cores = 1",
        ),
        (
            restart_with(
                "alone.toml",
                config_toml(Some(1), "node-1", &format!("{own_line}\n")),
            ),
            "[[nodes]] ids = [1, 2, 3]",
        ),
    ];
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "hello");
    assert_eq!(String::from_utf8_lossy(&del.stdout).trim(), "deleted");
    assert_eq!(gone.status.code(), Some(3), "a missing key exits 3");
    assert!(gone.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("key \"greeting\" not found"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    assert_eq!(gone_json.status.code(), Some(3));
    let gone_json: serde_json::Value = serde_json::from_slice(&gone_json.stdout).unwrap();
    assert_eq!(gone_json["found"], false);
    assert_eq!(del_gone.status.code(), Some(3));
    assert!(
        put_binary.status.success(),
        "{}",
        String::from_utf8_lossy(&put_binary.stderr)
    );
    assert!(get_raw.status.success());
    assert!(get_raw.stdout == binary, "the value read back differs");
    let get_json: serde_json::Value = serde_json::from_slice(&get_json.stdout).unwrap();
    assert_eq!(get_json["bytes"], 1 << 20);
    assert_eq!(get_json["value_hex"].as_str().map(str::len), Some(2 << 20));
    assert!(
        piped.status.success() && piped.stdout.len() == 10,
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&piped.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(!too_big.status.success());
    assert!(
        String::from_utf8_lossy(&too_big.stderr).contains("exceeds the 1048576-byte limit"),
        "{}",
        String::from_utf8_lossy(&too_big.stderr)
    );
    assert!(before.starts_with("placement epoch "), "{before}");
    assert!(before.contains("\nnodes: n1 Active"), "{before}");
    assert_eq!(
        group_1(&before).map(|l| l.replace('*', "")).as_deref(),
        Some(format!("group 1: n{from}/c0 n{other}/c0").as_str()),
        "{before}"
    );
    assert!(!forbidden.status.success());
    assert!(
        String::from_utf8_lossy(&forbidden.stderr)
            .contains("forbidden: start_move needs an admin or node certificate"),
        "{}",
        String::from_utf8_lossy(&forbidden.stderr)
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("already holds"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&moved.stdout).trim(),
        "move recorded",
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    assert_eq!(
        after.replace('*', ""),
        format!("group 1: n{other}/c0 n{spare}/c0"),
    );
    // Raft replica ids are in the JSON form: initial ones (1 << 16) | (k + 1), the first
    // moved replica's 2^48.
    let ids: Vec<u64> = after_json["groups"][0]["replicas"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["replica"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(ids, [65538, 1 << 48], "{after_json}");
    assert_eq!(after_json["groups"][0]["group"], 1, "{after_json}");
    assert_eq!(
        bad_to.status.code(),
        Some(2),
        "a malformed --to is a usage error"
    );
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!wrong_groups.status.success());
    assert!(
        stderr(&wrong_groups)
            .contains("the cluster has 4 groups, but this client's configuration says groups = 8"),
        "{}",
        stderr(&wrong_groups)
    );
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("in use by another process"),
        "{}",
        stderr(&second)
    );
    for (out, recorded) in &edits {
        assert!(!out.status.success(), "{}", stderr(out));
        assert!(
            stderr(out).contains(&format!("belongs to a node with {recorded}")),
            "{}",
            stderr(out)
        );
    }
    // A configuration with an unknown field is refused with its name.
    std::fs::write(
        dir.join("bad.toml"),
        config(Some(1), "node-1").replace("cores = 1", "cores = 1\nshards = 9"),
    )
    .unwrap();
    let bad = cli(&["start", "--config", dir.join("bad.toml").to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("shards"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client pointed at a cluster that is not running gives up within its `--timeout`,
/// with exit status 4 and a message that says so.
#[test]
fn kv_against_a_dead_cluster_fails_within_its_timeout() {
    let (dir, port, nodes) = one_node("cli-dead");
    let client = dir.join("client.toml");
    std::fs::write(&client, config_toml(None, "node-1", &nodes)).unwrap();
    let c = client.to_str().unwrap();
    let out = cli(&["kv", "--config", c, "--timeout", "1.5", "get", "k"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With the last reason the client met: the metadata group, which routes every call,
    // has no leader (here: nothing answers at all).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no answer from the cluster within 1.5 s (--timeout): no leader for group 0 (the metadata group"),
        "{stderr}"
    );
    let bad = cli(&["kv", "--config", c, "--timeout", "0", "get", "k"]);
    assert_eq!(bad.status.code(), Some(2));
    // Without a client file: no endpoint answers the question what the cluster is. The
    // connection attempt ends before a long --timeout, with the addresses tried (exit 1).
    let endpoint = format!("127.0.0.1:{port}");
    let args = [
        "kv",
        "--endpoints",
        &endpoint,
        "--insecure",
        "--timeout",
        "60",
    ];
    let out = cli(&[&args[..], &["get", "k"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no node at --endpoints described the cluster")
            && stderr.contains(&format!("connecting to {endpoint}")),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A certificate the cluster does not trust is reported as such at once, both ways: the
/// node refusing the client's certificate (issued by another CA), and the client refusing
/// the node's (its file names another CA). Exit 1, not a timeout; the node logs the refusal.
#[test]
fn a_certificate_from_another_ca_is_refused_at_once_with_the_reason() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let dir = certified_dir("cli-badcert", 1);
    let rogue = dir.join("rogue");
    std::fs::create_dir_all(&rogue).unwrap();
    let r = rogue.to_str().unwrap();
    assert!(cli(&["certs", "init", "--dir", r]).status.success());
    assert!(
        cli(&["certs", "client", "--dir", r, "--name", "evil"])
            .status
            .success()
    );
    let nodes = nodes_table(1);
    std::fs::write(
        dir.join("node-1.toml"),
        config_toml(Some(1), "node-1", &nodes),
    )
    .unwrap();
    let client_file = |name: &str, ca: &std::path::Path, cert: &std::path::Path| {
        let text = format!(
            "cores = 1\ngroups = 4\nlayout = \"unbound\"\n\n[tls]\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\n\n{nodes}",
            ca.join("ca.pem"),
            cert.with_extension("pem"),
            cert.with_extension("key"),
        );
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let good = client_file("good.toml", &dir, &dir.join("client-cli"));
    let foreign_cert = client_file("foreign-cert.toml", &dir, &rogue.join("client-evil"));
    let foreign_ca = client_file("foreign-ca.toml", &rogue, &dir.join("client-cli"));
    let log = std::fs::File::create(dir.join("node-1.log")).unwrap();
    let mut node = Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"))
        .args(["start", "--config"])
        .arg(dir.join("node-1.toml"))
        .args(["--run-for", "120"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let get = |file: &std::path::Path, timeout: &str| {
        let file = file.to_str().unwrap();
        let out = cli(&["kv", "--config", file, "--timeout", timeout, "get", "k"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The node serves once a get of a missing key says so (exit 3).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, stderr) = get(&good, "5");
        if code == Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "the node never served: {stderr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = |file: &std::path::Path| get(file, "30");
    let (by_node, by_client) = (run(&foreign_cert), run(&foreign_ca));
    let _ = node.kill();
    let _ = node.wait();
    let log = std::fs::read_to_string(dir.join("node-1.log")).unwrap();
    assert_eq!(by_node.0, Some(1), "{}", by_node.1);
    assert!(
        by_node.1.contains("refused this client's certificate"),
        "{}",
        by_node.1
    );
    assert_eq!(by_client.0, Some(1), "{}", by_client.1);
    assert!(
        by_client
            .1
            .contains("this client refused the certificate of the node"),
        "{}",
        by_client.1
    );
    assert!(log.contains("refused a TLS handshake"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's quick start: `examples/local-cluster/cluster.sh up` starts three nodes and
/// waits until they are ready; a 1 MiB binary value from stdin reads back byte for byte;
/// `status` shows them ready; `down` stops them all (a copy of the example, so that its
/// `run/` directory stays out of the source tree; it uses the example's fixed ports).
#[test]
fn the_quick_start_cluster_comes_up_serves_binary_values_and_goes_down() {
    let dir = scratch_dir("cli-quickstart");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/local-cluster");
    for entry in std::fs::read_dir(&example).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let script = |command: &str| {
        Command::new("bash")
            .arg(dir.join("cluster.sh"))
            .arg(command)
            .env("NODEDB", env!("CARGO_BIN_EXE_nodedb-cluster"))
            .output()
            .unwrap()
    };
    let up = script("up");
    let client = dir.join("client.toml");
    let c = client.to_str().unwrap();
    let value: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let put = cli_stdin(&["kv", "--config", c, "put", "blob", "-"], &value);
    let get = cli(&["kv", "--config", c, "get", "blob", "--raw"]);
    // Without a client file: a node's address and the three PEM files.
    let certs = dir.join("run/certs");
    let pem = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let (ca, cert, key) = (
        pem("ca.pem"),
        pem("client-quickstart.pem"),
        pem("client-quickstart.key"),
    );
    let endpoints = [
        "kv",
        "--endpoints",
        "127.0.0.1:7512",
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ];
    let get_by_endpoint = cli(&[&endpoints[..], &["get", "blob", "--raw"]].concat());
    let status = script("status");
    let down = script("down");
    let after = script("status");
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(up.status.success(), "{}", text(&up));
    assert!(text(&up).contains("cluster ready"), "{}", text(&up));
    assert!(put.status.success(), "{}", text(&put));
    assert!(get.status.success(), "{}", text(&get));
    assert!(get.stdout == value, "the value read back differs");
    assert!(
        get_by_endpoint.status.success(),
        "{}",
        text(&get_by_endpoint)
    );
    assert!(
        get_by_endpoint.stdout == value,
        "the value read back through --endpoints differs"
    );
    assert_eq!(
        text(&status).matches("/ready: HTTP/1.1 200 OK").count(),
        3,
        "{}",
        text(&status)
    );
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(
        text(&after).matches(": stopped;").count(),
        3,
        "{}",
        text(&after)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The response to `GET path` from a node's metrics endpoint, if it answered.
fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    Some(response)
}

/// `/ready` on a node answers 503 while its groups cannot elect (one node of three up),
/// and 200 once the cluster can serve: a write then succeeds at once.
#[test]
fn ready_turns_true_only_once_the_cluster_can_serve() {
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};
    let dir = certified_dir("cli-ready", 3);
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let nodes = nodes_table(3);
    let metrics: Vec<std::net::SocketAddr> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
        .collect();
    for n in 1..=3u64 {
        let text = config_toml(Some(n), &format!("node-{n}"), &nodes).replace(
            "cores = 1",
            &format!("cores = 1\nmetrics_addr = \"{}\"", metrics[n as usize - 1]),
        );
        std::fs::write(dir.join(format!("node-{n}.toml")), text).unwrap();
    }
    std::fs::write(
        dir.join("client.toml"),
        config_toml(None, "client-cli", &nodes),
    )
    .unwrap();
    let spawn = |n: u64| -> Child {
        Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"))
            .args(["start", "--config"])
            .arg(dir.join(format!("node-{n}.toml")))
            .args(["--run-for", "120"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let wait_for = |addr, path: &str, status: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = http_get(addr, path).unwrap_or_default();
            if answer.starts_with(status) {
                return answer;
            }
            assert!(Instant::now() < deadline, "{path} never {status}: {answer}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut children = vec![spawn(1)];
    wait_for(metrics[0], "/health", "HTTP/1.1 200");
    let alone = http_get(metrics[0], "/ready").unwrap_or_default();
    children.push(spawn(2));
    children.push(spawn(3));
    let ready = wait_for(metrics[0], "/ready", "HTTP/1.1 200");
    let client = dir.join("client.toml");
    let put = cli(&[
        "kv",
        "--config",
        client.to_str().unwrap(),
        "--timeout",
        "5",
        "put",
        "k",
        "v",
    ]);
    let others: Vec<String> = metrics[1..]
        .iter()
        .map(|&m| wait_for(m, "/ready", "HTTP/1.1 200"))
        .collect();
    let scrape = http_get(metrics[0], "/metrics").unwrap_or_default();
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(alone.starts_with("HTTP/1.1 503"), "{alone}");
    assert!(alone.contains("know no leader yet"), "{alone}");
    assert!(ready.contains("ready"), "{ready}");
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    assert_eq!(others.len(), 2);
    let (head, exposition) = scrape.split_once("\r\n\r\n").unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    promtool_check(exposition);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `promtool check metrics` (Debian's `prometheus` package) on an exposition. Where
/// promtool is not installed the check is skipped with a note, unless
/// `NODEDB_REQUIRE_PROMTOOL` is set (`.ci/run` installs it and sets it).
fn promtool_check(exposition: &str) {
    use std::io::Write;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var_os("NODEDB_REQUIRE_PROMTOOL").is_none(),
                "promtool is required here but cannot run: {e}"
            );
            eprintln!("note: promtool not installed ({e}); the exposition was not checked");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node whose data directory cannot be used (here: it is a file) stops at once with the
/// reason and a failure exit, instead of leaving a process that serves nothing.
#[test]
fn a_node_whose_data_directory_is_unusable_exits_with_the_reason() {
    let (dir, _, nodes) = one_node("cli-core-fails");
    std::fs::write(dir.join("data-1"), "not a directory").unwrap();
    std::fs::write(
        dir.join("node-1.toml"),
        config_toml(Some(1), "node-1", &nodes),
    )
    .unwrap();
    let config = dir.join("node-1.toml");
    let out = cli(&[
        "start",
        "--config",
        config.to_str().unwrap(),
        "--run-for",
        "120",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("data directory") && stderr.contains("data-1"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A panic on a core (injected through `NODEDB_INJECT_PANIC`) stops the whole node: the
/// process exits non-zero and says which core panicked and why.
#[test]
fn a_panic_on_a_core_exits_the_process_non_zero() {
    let (dir, _, nodes) = one_node("cli-core-panics");
    let toml = config_toml(Some(1), "node-1", &nodes).replace("cores = 1", "cores = 2");
    std::fs::write(dir.join("node-1.toml"), toml).unwrap();
    let config = dir.join("node-1.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"))
        .args([
            "start",
            "--config",
            config.to_str().unwrap(),
            "--run-for",
            "120",
        ])
        .env("NODEDB_INJECT_PANIC", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("core 1 panicked") && stderr.contains("injected by NODEDB_INJECT_PANIC"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The resident memory of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// One counter's value (summed over cores) from a node's metrics endpoint.
fn scrape_counter(addr: std::net::SocketAddr, name: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let values: Vec<u64> = body
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A flood of QUIC Initials (each a new connection attempt that never completes) is met
/// with stateless Retries: the node's memory stays within 64 MiB of where it started, and
/// it serves clients afterwards.
#[test]
fn twenty_thousand_quic_initials_leave_the_node_s_memory_bounded() {
    use nodedb_cluster::runtime::tls::{self, ALPN_CLIENT, TlsMode};
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};
    let (dir, port, nodes) = one_node("cli-initials");
    let d = dir.to_str().unwrap();
    let client = ["certs", "client", "--dir", d, "--name", "flood"];
    assert!(cli(&client).status.success());
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let toml = config_toml(Some(1), "node-1", &nodes).replace(
        "cores = 1",
        &format!("cores = 1\nmetrics_addr = \"{metrics}\""),
    );
    std::fs::write(dir.join("node-1.toml"), toml).unwrap();
    std::fs::write(
        dir.join("client.toml"),
        config_toml(None, "client-flood", &nodes),
    )
    .unwrap();
    let client_file = dir.join("client.toml");
    let c = client_file.to_str().unwrap();
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"))
        .args([
            "start",
            "--config",
            dir.join("node-1.toml").to_str().unwrap(),
            "--run-for",
            "120",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let serves = |key: &str| {
        cli(&["kv", "--config", c, "put", key, "v"])
            .status
            .success()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serves("before") {
        assert!(Instant::now() < deadline, "the node never served");
    }
    let received = || scrape_counter(metrics, "nodedb_core_quic_datagrams_received_total");
    let start = received().unwrap();
    let before = rss_bytes(child.id());

    let pems =
        tls::read_pem_pair(&dir.join("client-flood.pem"), &dir.join("client-flood.key")).unwrap();
    let mode = TlsMode::Mutual {
        ca_cert_pem: std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        identity: pems,
    };
    let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(
        tls::client_config(&mode, ALPN_CLIENT).unwrap(),
    )
    .unwrap();
    let config = quinn_proto::ClientConfig::new(std::sync::Arc::new(crypto));
    let server: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let name = tls::node_server_name(nodedb_cluster::ids::NodeId(1));
    let mut sent = 0u64;
    let mut buf = Vec::new();
    for _ in 0..40 {
        // A fresh client endpoint per batch: the attempts are abandoned, never completed.
        let mut endpoint = quinn_proto::Endpoint::new(
            std::sync::Arc::new(quinn_proto::EndpointConfig::default()),
            None,
            false,
            None,
        );
        for _ in 0..500 {
            let now = Instant::now();
            let (_, mut conn) = endpoint
                .connect(now, config.clone(), server, &name)
                .unwrap();
            buf.clear();
            if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                socket.send_to(&buf[..t.size], server).unwrap();
                sent += 1;
            }
        }
        // Paced: wait (bounded) until the node has taken most of what was sent.
        let deadline = Instant::now() + Duration::from_secs(20);
        while received().is_some_and(|r| r - start < sent * 9 / 10) {
            assert!(
                Instant::now() < deadline,
                "the node stopped taking datagrams"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let after = rss_bytes(child.id());
    let still_serves = serves("after");
    eprintln!("rss before {} KiB after {} KiB", before >> 10, after >> 10);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(sent, 20_000);
    assert!(
        after < before + (64 << 20),
        "RSS grew from {} MiB to {} MiB",
        before >> 20,
        after >> 20
    );
    assert!(still_serves);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Four `start` processes (groups of three replicas). An admin decommissions node 4 while
/// a client writes: its replicas move away, `kv status` reports it Decommissioned and safe
/// to stop, it is killed, and every acknowledged write is still readable. Drains the
/// cluster could not afford, and a client certificate, are refused.
/// Four `start` processes of one core each (eight groups of three replicas, a sweep a
/// second, `extra` lines in every file), with client and admin files, in scratch directory
/// `name`.
struct FourNodes {
    dir: std::path::PathBuf,
    children: Vec<std::process::Child>,
    client: String,
    admin: String,
}

impl FourNodes {
    fn start(name: &str, extra: &str) -> FourNodes {
        FourNodes::start_with(name, 8, extra)
    }

    /// Like `start`, with `groups` groups.
    fn start_with(name: &str, groups: u32, extra: &str) -> FourNodes {
        let dir = certified_dir(name, 4);
        let nodes = nodes_table(4);
        let config = |id: Option<u64>, cert: &str| {
            config_toml(id, cert, &nodes).replace(
                "groups = 4",
                &format!("groups = {groups}\nreplicas = 3\nrebalance_interval_secs = 1\n{extra}"),
            )
        };
        for n in 1..=4 {
            let text = config(Some(n), &format!("node-{n}"));
            std::fs::write(dir.join(format!("node-{n}.toml")), text).unwrap();
        }
        std::fs::write(dir.join("client.toml"), config(None, "client-cli")).unwrap();
        std::fs::write(dir.join("admin.toml"), config(None, "admin-cli")).unwrap();
        let path = |f: &str| dir.join(f).to_str().unwrap().to_owned();
        let (client, admin) = (path("client.toml"), path("admin.toml"));
        let mut cluster = FourNodes {
            dir,
            children: Vec::new(),
            client,
            admin,
        };
        cluster.children = (1..=4).map(|n| cluster.spawn(n)).collect();
        cluster
    }

    /// Starts node `n`'s process from its file.
    fn spawn(&self, n: u64) -> std::process::Child {
        let config = self.dir.join(format!("node-{n}.toml"));
        Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"))
            .args(["start", "--config", config.to_str().unwrap()])
            // A bound on orphans should a test die: well past every test's own deadlines.
            .args(["--run-for", "300"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(format!("node-{n}.log"))).unwrap())
            .spawn()
            .unwrap()
    }

    /// The leaderships node `id` reported in its last load report (0 before one).
    fn leaders_on(&self, id: u64) -> u64 {
        self.node_status(id)["cores"].as_array().map_or(0, |cores| {
            cores.iter().filter_map(|c| c["leaders"].as_u64()).sum()
        })
    }

    /// Node `id` in `kv status --json` (null before the coordinator answers).
    fn node_status(&self, id: u64) -> serde_json::Value {
        let out = cli(&["kv", "--config", &self.admin, "status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        status["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["id"] == id))
            .cloned()
            .unwrap_or_default()
    }

    fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::fs::remove_dir_all(&self.dir).unwrap();
    }
}

/// A client writing numbered keys through the CLI: what was acknowledged, what failed.
struct Writes {
    client: String,
    acked: Vec<(String, String)>,
    failed: Vec<String>,
}

impl Writes {
    fn new(client: &str) -> Writes {
        Writes {
            client: client.to_owned(),
            acked: Vec::new(),
            failed: Vec::new(),
        }
    }

    fn put(&mut self, i: usize) {
        let (key, value) = (format!("key-{i}"), format!("value-{i}"));
        let out = cli(&["kv", "--config", &self.client, "put", &key, &value]);
        if out.status.success() {
            self.acked.push((key, value));
        } else {
            self.failed
                .push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }

    /// The acknowledged writes that do not read back.
    fn lost(&self) -> Vec<&(String, String)> {
        self.acked
            .iter()
            .filter(|(k, v)| {
                let out = cli(&["kv", "--config", &self.client, "get", k]);
                String::from_utf8_lossy(&out.stdout).trim() != v
            })
            .collect()
    }
}

/// SIGTERM on a node that leads groups: it hands their leadership to other replicas,
/// says so, and exits 0, while a client writing throughout sees no error and loses nothing.
#[test]
fn sigterm_hands_leadership_away_before_the_node_exits() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let mut cluster = FourNodes::start("cli-sigterm", "");
    let mut writes = Writes::new(&cluster.client);
    (0..8).for_each(|i| writes.put(i));
    assert!(writes.failed.is_empty(), "{:?}", writes.failed);
    // A node other than the coordinator (which `kv status` asks) that leads groups.
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        let coordinator = {
            let out = cli(&["kv", "--config", &cluster.admin, "status", "--json"]);
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            status["coordinator"].as_u64()
        };
        let found = (1..=4u64).find(|&n| Some(n) != coordinator && cluster.leaders_on(n) > 0);
        if let Some(n) = found {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "no node but the coordinator leads"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Writes go on while the node stops.
    let stop = AtomicBool::new(false);
    let attempted = std::sync::atomic::AtomicUsize::new(0);
    // Until the writer has made `n` more attempts (each a `kv put` process), bounded.
    let writes_past = |n: usize| {
        let target = attempted.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while attempted.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the writer stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let (writes, exit) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut i = 100;
            while !stop.load(Ordering::Relaxed) {
                writes.put(i);
                attempted.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            writes
        });
        writes_past(2);
        let child = &mut cluster.children[victim as usize - 1];
        let term = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let exit = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "node {victim} did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        // A few more writes after it left.
        writes_past(3);
        stop.store(true, Ordering::Relaxed);
        (writer.join().unwrap(), exit)
    });
    let log = std::fs::read_to_string(cluster.dir.join(format!("node-{victim}.log"))).unwrap();
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    // Its first line said who it is and where it keeps its data.
    let identity = log.lines().find(|l| l.contains("node starting"));
    assert!(
        identity.is_some_and(|l| l.contains(&format!("node=n{victim} "))
            && l.contains(&format!(
                "data_dir={}",
                cluster.dir.join(format!("data-{victim}")).display()
            ))),
        "{log}"
    );
    assert!(
        log.contains("stopping: handing leadership to other replicas")
            && log.contains("0 still led here"),
        "{log}"
    );
    assert!(writes.failed.is_empty(), "{:?}", writes.failed);
    assert!(writes.acked.len() > 8, "no write during the stop");
    assert!(writes.lost().is_empty(), "{:?}", writes.lost());
    cluster.stop();
}

#[test]
fn a_node_decommissioned_from_the_cli_drains_under_writes_and_may_then_be_stopped() {
    use std::time::{Duration, Instant};
    let mut cluster = FourNodes::start("cli-decommission", "");
    let (c, a) = (cluster.client.clone(), cluster.admin.clone());
    let (c, a) = (c.as_str(), a.as_str());
    let mut writes = Writes::new(c);
    (0..16).for_each(|i| writes.put(i));
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let by_client = cli(&["kv", "--config", c, "decommission", "--node", "4"]);
    let unknown = cli(&["kv", "--config", a, "decommission", "--node", "9"]);
    let drain = cli(&["kv", "--config", a, "decommission", "--node", "4"]);
    // Three active nodes would be left for groups of three replicas.
    let too_few = cli(&["kv", "--config", a, "decommission", "--node", "3"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 16;
    let drained = loop {
        writes.put(i);
        i += 1;
        let n4 = cluster.node_status(4);
        if n4["safe_to_stop"] == true || Instant::now() > deadline {
            break n4;
        }
    };
    let placement_before_stop = cli(&["kv", "--config", c, "placement"]);
    let _ = cluster.children[3].kill();
    let _ = cluster.children[3].wait();
    (i..i + 8).for_each(|i| writes.put(i));
    let lost = writes.lost();
    let recommission = cli(&["kv", "--config", a, "recommission", "--node", "4"]);
    cluster.stop();
    assert!(!by_client.status.success());
    assert!(
        stderr(&by_client).contains("needs an admin"),
        "{}",
        stderr(&by_client)
    );
    assert!(
        stderr(&unknown).contains("not a member"),
        "{}",
        stderr(&unknown)
    );
    assert!(drain.status.success(), "{}", stderr(&drain));
    assert!(
        stderr(&too_few).contains("cannot drain"),
        "{}",
        stderr(&too_few)
    );
    assert_eq!(drained["state"], "Decommissioned", "{drained}");
    assert_eq!(drained["replicas_placed"], 0, "{drained}");
    let table = String::from_utf8_lossy(&placement_before_stop.stdout);
    assert!(
        table
            .lines()
            .all(|l| !l.starts_with("group") || !l.contains(" n4/")),
        "a replica is left on node 4:\n{table}"
    );
    assert!(
        writes.failed.is_empty(),
        "writes failed: {:?}",
        writes.failed
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes not read back: {lost:?}"
    );
    assert!(
        stderr(&recommission).contains("Decommissioned to Active"),
        "{}",
        stderr(&recommission)
    );
}

/// A fifth node joins four running ones with `start --join`: it is not in their files and
/// its own names only itself. Under writes it becomes `Active` and ends up holding its
/// share of the replicas within ±15 % (the cluster is idle, so replica counts decide),
/// with no failed write and none lost. Started again without `--join`, it comes back from
/// what its data directory recorded. A second process claiming its id at another address,
/// and a founding node started with `--join`, are refused with the reason.
#[test]
fn a_fifth_node_joins_with_join_takes_its_share_of_replicas_and_restarts_without_it() {
    use std::time::{Duration, Instant};
    let mut cluster = FourNodes::start_with("cli-join", 32, "");
    let c = cluster.client.clone();
    let mut writes = Writes::new(&c);
    (0..16).for_each(|i| writes.put(i));
    let d = cluster.dir.to_str().unwrap().to_owned();
    let cert = [
        "certs",
        "node",
        "--dir",
        &d,
        "--id",
        "5",
        "--san",
        "127.0.0.1",
    ];
    assert!(cli(&cert).status.success());
    let free_port = || {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let own = |port: u16| {
        config_toml(
            Some(5),
            "node-5",
            &format!("[[nodes]]\nid = 5\naddr = \"127.0.0.1:{port}\"\n"),
        )
        .replace("groups = 4\n", "rebalance_interval_secs = 1\n")
    };
    std::fs::write(cluster.dir.join("node-5.toml"), own(free_port())).unwrap();
    // The seed: node 2's core 0, as its file gives it.
    let node2 = std::fs::read_to_string(cluster.dir.join("node-2.toml")).unwrap();
    let seed = node2
        .split("[[nodes]]")
        .find(|s| s.starts_with("\nid = 2\n"))
        .and_then(|s| s.split('"').nth(1))
        .unwrap()
        .to_owned();
    let join = |file: &str, run_for: &str| {
        Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"))
            .args([
                "start",
                "--config",
                cluster.dir.join(file).to_str().unwrap(),
            ])
            .args(["--join", &seed, "--run-for", run_for])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    cluster.children.push(join("node-5.toml", "300"));
    // 96 replicas over five nodes: 19.2 each, ±15 %.
    let share = |n: &serde_json::Value| n["replicas_placed"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut i = 16;
    let joined = loop {
        writes.put(i);
        i += 1;
        if let Ok(Some(status)) = cluster.children[4].try_wait() {
            let mut said = String::new();
            use std::io::Read;
            let _ = cluster.children[4]
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut said);
            cluster.stop();
            panic!("the joining node exited ({status}): {said}");
        }
        let node = cluster.node_status(5);
        if (node["state"] == "Active" && (17..=22).contains(&share(&node)))
            || Instant::now() > deadline
        {
            break node;
        }
    };
    // Another process claiming node 5 at another address; a founder asking to join.
    std::fs::write(
        cluster.dir.join("node-5b.toml"),
        own(free_port()).replace("data-5", "data-5b"),
    )
    .unwrap();
    let impostor = join("node-5b.toml", "5").wait_with_output().unwrap();
    let founder = join("node-3.toml", "5").wait_with_output().unwrap();
    // Restarted without --join: from its data directory's record.
    let _ = cluster.children[4].kill();
    let _ = cluster.children[4].wait();
    cluster.children[4] = cluster.spawn(5);
    let deadline = Instant::now() + Duration::from_secs(30);
    let back = loop {
        writes.put(i);
        i += 1;
        let node = cluster.node_status(5);
        if (node["state"] == "Active" && node["fresh"] == true) || Instant::now() > deadline {
            break node;
        }
    };
    (i..i + 8).for_each(|i| writes.put(i));
    let lost = writes.lost();
    let others: Vec<u64> = (1..=4).map(|n| share(&cluster.node_status(n))).collect();
    cluster.stop();
    assert_eq!(joined["state"], "Active", "{joined}");
    assert!((17..=22).contains(&share(&joined)), "{joined}");
    assert!(others.iter().all(|n| (17..=22).contains(n)), "{others:?}");
    let said = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!impostor.status.success());
    assert!(
        said(&impostor).contains("already a member"),
        "{}",
        said(&impostor)
    );
    assert!(!founder.status.success());
    assert!(
        said(&founder).contains("without --join"),
        "{}",
        said(&founder)
    );
    assert_eq!(back["state"], "Active", "{back}");
    assert!(
        writes.failed.is_empty(),
        "writes failed: {:?}",
        writes.failed
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes not read back: {lost:?}"
    );
}

/// The failure detector in separate processes: a node stopped with SIGSTOP for longer than
/// `dead_after_secs` but less than the suspicion timeout is not recorded `Down`; a node
/// killed with kill -9 is recorded `Down` after `dead_after_secs`, its replicas are replaced on the other nodes while
/// writes go on, and, started again from the same file, it returns to `Active`. No
/// acknowledged write is lost.
#[test]
fn a_killed_node_is_recorded_down_its_replicas_are_replaced_and_it_returns_active() {
    use std::time::{Duration, Instant};
    let mut cluster = FourNodes::start("cli-repair", "dead_after_secs = 2");
    let c = cluster.client.clone();
    let mut writes = Writes::new(&c);
    (0..16).for_each(|i| writes.put(i));
    // The victim: a node that does not coordinate (`kv status` goes through the
    // coordinator), once every node reports.
    let deadline = Instant::now() + Duration::from_secs(30);
    let coordinator = loop {
        let out = cli(&["kv", "--config", &cluster.admin, "status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let all_fresh = status["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 4 && n.iter().all(|n| n["fresh"] == true));
        if all_fresh || Instant::now() > deadline {
            break status["coordinator"].as_u64().unwrap_or(1);
        }
    };
    let victim = if coordinator == 4 { 3 } else { 4 };
    let pid = cluster.children[victim as usize - 1].id().to_string();
    // Paused for longer than `dead_after_secs` but shorter than the suspicion timeout (4 s):
    // suspected at most, never dead, so never recorded Down.
    let signal = |s: &str| Command::new("kill").args([s, &pid]).status().unwrap();
    assert!(signal("-STOP").success());
    let paused_until = Instant::now() + Duration::from_millis(2500);
    let mut states_while_paused = Vec::new();
    let mut i = 16;
    while Instant::now() < paused_until {
        states_while_paused.push(cluster.node_status(victim)["state"].clone());
        writes.put(i);
        i += 1;
    }
    assert!(signal("-CONT").success());
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        states_while_paused.push(cluster.node_status(victim)["state"].clone());
        writes.put(i);
        i += 1;
    }
    // Killed: Down after detection, suspicion and `dead_after_secs`, then repaired.
    let _ = cluster.children[victim as usize - 1].kill();
    let _ = cluster.children[victim as usize - 1].wait();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(60);
    let mut down_after = None;
    let repaired = loop {
        writes.put(i);
        i += 1;
        let node = cluster.node_status(victim);
        if node["state"] == "Down" && down_after.is_none() {
            down_after = Some(killed.elapsed());
        }
        if (node["state"] == "Down" && node["replicas_placed"] == 0) || Instant::now() > deadline {
            break node;
        }
    };
    let placement = cli(&["kv", "--config", &c, "placement"]);
    // Started again from the same file: heard alive, recorded Active.
    cluster.children[victim as usize - 1] = cluster.spawn(victim);
    let deadline = Instant::now() + Duration::from_secs(30);
    let back = loop {
        writes.put(i);
        i += 1;
        let node = cluster.node_status(victim);
        if node["state"] == "Active" || Instant::now() > deadline {
            break node;
        }
    };
    let lost = writes.lost();
    let written = writes.acked.len();
    cluster.stop();
    assert!(
        states_while_paused.iter().all(|s| s == "Active"),
        "a node paused for 2.5 s was recorded {states_while_paused:?}"
    );
    assert!(down_after.is_some(), "never recorded Down: {repaired}");
    assert_eq!(repaired["replicas_placed"], 0, "not repaired: {repaired}");
    let table = String::from_utf8_lossy(&placement.stdout);
    let on_victim = format!(" n{victim}/");
    assert!(
        table
            .lines()
            .all(|l| !l.starts_with("group") || !l.contains(&on_victim)),
        "a replica is left on node {victim}:\n{table}"
    );
    assert_eq!(back["state"], "Active", "{back}");
    assert!(
        writes.failed.is_empty(),
        "writes failed: {:?}",
        writes.failed
    );
    assert!(written > 40, "only {written} writes");
    assert!(
        lost.is_empty(),
        "acknowledged writes not read back: {lost:?}"
    );
}
