//! A reconnect storm (issue 16): after a restart or a network blip every client
//! reconnects at once. With std's listen backlog of 128 the kernel's accept
//! queue overflowed on bursts of 2 000, dropped SYNs (`TcpExt ListenOverflows`)
//! and those clients waited a second for the retransmission. The listeners now
//! have a real backlog (`listen_backlog`, default 4096).
//!
//! `ListenOverflows` counts per network namespace, and the test machine is
//! shared, so the test re-runs itself inside a network namespace of its own
//! (`unshare --net`, root) where only its own listener counts. The namespace
//! goes away with the process. Loopback only, 2 000 connections, a few seconds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use chatr_server::ServerConfig;
use tokio::net::TcpSocket;
use tokio_util::sync::CancellationToken;

/// Set in the re-run inside the private namespace.
const IN_NETNS: &str = "CHATR_TEST_IN_PRIVATE_NETNS";
/// Simultaneous connects, as in the report.
const STORM: usize = 2000;
/// Source addresses (127.0.2.1 …): 50 connections each, under the per-source cap.
const SOURCES: usize = 40;

/// `TcpExt ListenOverflows` and `ListenDrops` of this process's namespace.
fn listen_counters() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let values: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let get = |name: &str| -> u64 {
        let at = names.iter().position(|n| *n == name).unwrap();
        values[at].parse().unwrap()
    };
    (get("ListenOverflows"), get("ListenDrops"))
}

#[derive(Debug)]
struct Storm {
    overflows: u64,
    drops: u64,
    failed: usize,
    /// Printed, never asserted: speed is measured in `chatr-bench hostile`.
    #[allow(dead_code)]
    slowest: Duration,
}

/// Starts a server with `backlog`, fires `STORM` connects at its Connect port
/// in one go and counts what the kernel dropped.
fn storm(backlog: u32) -> Storm {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::for_tests(dir.path());
        config.limits.listen_backlog = backlog;
        let shutdown = CancellationToken::new();
        let handle = chatr_server::start(config, shutdown.clone()).await.unwrap();
        let addr = handle.connect_addr();
        let sockets: Vec<TcpSocket> = (0..STORM)
            .map(|i| {
                let socket = TcpSocket::new_v4().unwrap();
                let source = Ipv4Addr::new(127, 0, 2, 1 + (i % SOURCES) as u8);
                socket.bind(SocketAddr::from((source, 0))).unwrap();
                socket
            })
            .collect();
        let (overflows_before, drops_before) = listen_counters();
        let started = Instant::now();
        // join_all polls every connect once before waiting on any: all SYNs leave at once.
        let results =
            futures_util::future::join_all(sockets.into_iter().map(|socket| async move {
                let connected =
                    tokio::time::timeout(Duration::from_secs(10), socket.connect(addr)).await;
                (connected, started.elapsed())
            }))
            .await;
        // Let the accept loop drain whatever is queued.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (overflows_after, drops_after) = listen_counters();
        let failed = results
            .iter()
            .filter(|(r, _)| !matches!(r, Ok(Ok(_))))
            .count();
        let slowest = results.iter().map(|(_, t)| *t).max().unwrap_or_default();
        drop(results);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), handle.join())
            .await
            .unwrap();
        Storm {
            overflows: overflows_after - overflows_before,
            drops: drops_after - drops_before,
            failed,
            slowest,
        }
    })
}

/// Re-runs the test named `name` in this binary inside a fresh network
/// namespace with loopback up, and asserts it passed there.
fn rerun_in_private_netns(name: &str) {
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .status()
        .expect("cannot run unshare (util-linux); this test needs it and root");
    assert!(
        status.success(),
        "{name} failed inside its private network namespace (see its output above; \
         `unshare --net` needs root)"
    );
}

#[test]
fn reconnect_storm_of_2000_does_not_overflow_the_accept_queue() {
    if std::env::var_os(IN_NETNS).is_none() {
        rerun_in_private_netns("reconnect_storm_of_2000_does_not_overflow_the_accept_queue");
        return;
    }
    // Control: with a short queue the same storm overflows, so the counter
    // does see this listener (std's 128 dropped 1 800–3 400 SYNs here).
    let short = storm(16);
    eprintln!("storm of {STORM} with backlog 16: {short:?}");
    assert!(
        short.overflows > 0,
        "the control storm did not overflow: {short:?}"
    );
    let defaults = chatr_server::Limits::default();
    assert!(
        defaults.listen_backlog >= 2048,
        "{}",
        defaults.listen_backlog
    );
    let result = storm(defaults.listen_backlog);
    eprintln!(
        "storm of {STORM} with backlog {}: {result:?}",
        defaults.listen_backlog
    );
    assert_eq!(result.failed, 0, "{result:?}");
    assert_eq!(result.overflows, 0, "accept queue overflowed: {result:?}");
    assert_eq!(result.drops, 0, "SYNs dropped: {result:?}");
}
