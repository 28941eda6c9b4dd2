//! The runtime shell: cores start together with their inboxes connected, talk through
//! bounded channels, and stop together; start-up failures explain their fix.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use nodedb_cluster::ids::CoreId;
use nodedb_cluster::runtime::cores::{CoreLayout, CoreRuntime, CoreRuntimeConfig};

#[test]
fn every_core_reaches_every_other_core_and_all_stop_on_shutdown() {
    let config = CoreRuntimeConfig {
        name: "node-test".into(),
        cores: 3,
        layout: CoreLayout::Unbound,
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel::<u16>();
    let runtime = CoreRuntime::start(&config, move |ctx| {
        let done = done_tx.clone();
        async move {
            let me = ctx.core();
            for other in 0..ctx.cores() {
                ctx.send(CoreId(other), (me, other)).await.unwrap();
            }
            let mut received = Vec::new();
            while received.len() < usize::from(ctx.cores()) {
                let (from, to) = ctx.recv().await.expect("inboxes stay open until shutdown");
                assert_eq!(to, me.0, "delivered to the core it was sent to");
                received.push(from.0);
            }
            done.send(me.0).unwrap();
            // Then wait for shutdown: the inbox closes.
            assert!(ctx.recv().await.is_none());
            assert!(ctx.stopping());
            received.sort_unstable();
            (me.0, ctx.is_coordinator(), received)
        }
    })
    .unwrap();
    for _ in 0..3 {
        done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("every core finishes its exchange");
    }
    let results = runtime.shutdown().unwrap();
    assert_eq!(results.len(), 3);
    for (i, (core, coordinator, received)) in results.into_iter().enumerate() {
        assert_eq!(core as usize, i);
        assert_eq!(coordinator, i == 0, "core 0 is the coordinator");
        assert_eq!(received, vec![0, 1, 2], "core {i} heard from every core");
    }
}

#[test]
fn a_too_small_memlock_limit_gives_the_fix_not_a_raw_error() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"));
    child.arg("preflight");
    // SAFETY: setrlimit is async-signal-safe; it only lowers the child's own limit.
    unsafe {
        child.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: 64 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = child.output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("(RLIMIT_MEMLOCK) is 64 KiB"), "{stderr}");
    assert!(
        stderr.contains("ulimit -l") && stderr.contains("LimitMEMLOCK="),
        "{stderr}"
    );
    assert!(
        !stderr.contains("MemLockLimit("),
        "no raw glommio error: {stderr}"
    );
}

#[test]
fn preflight_passes_on_this_machine() {
    let out = Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"))
        .arg("preflight")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
