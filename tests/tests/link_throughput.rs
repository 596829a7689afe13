//! The link throughput benchmark (`chatr-bench throughput`) in its smoke form, and the
//! end-of-transfer bound on a lossy lab path (issue 12).
//!
//! - **Smoke:** one clean kernel-only path, 4 MiB, one run of each tool the machine has
//!   (iperf3 if installed, iroh-probe if built, `chatr pipe` always). Asserts only that
//!   every tool that ran delivered its bytes and Chatr's two processes exited 0 over a
//!   direct link; no speed is asserted.
//! - **Exit after the last byte:** on the lossy path (CGNAT with 2 % loss ↔ port-restricted
//!   NAT with 1 % loss), with the sender's first QUIC Initial lost on purpose (the set-up
//!   loss that made issue 12's hang likely there), several `chatr pipe` transfers, each of
//!   whose two processes must exit within [`EXIT_BOUND`] of the last byte reaching the
//!   listener's output. That is a correctness bound (a user's pipe must not hang for the
//!   45 s idle timeout, or a 3 s drain, after the data is through), not a speed figure.
//!
//! Needs root (network namespaces) and the `chatr`/`chatr-server` binaries, like the NAT
//! matrix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use chatr_tests::bench::throughput::{self, LinkPath, ThroughputArgs};
use chatr_tests::lab::matrix::Binaries;

/// Both processes must be gone this soon after the last byte arrived.
const EXIT_BOUND: Duration = Duration::from_secs(2);

/// The directory of the binaries under test (the debug build `cargo test` made).
fn bin_dir() -> Option<PathBuf> {
    let binaries = Binaries::for_tests().unwrap_or_else(|e| panic!("{e}"));
    binaries.chatr.parent().map(PathBuf::from)
}

#[test]
fn throughput_bench_smoke_moves_the_bytes_with_every_tool() {
    let args = ThroughputArgs::smoke(bin_dir());
    let report = throughput::run(&args).unwrap_or_else(|e| panic!("bench failed: {e}"));
    eprintln!("{}", report.render());
    assert_eq!(report.runs.len(), 1);
    let run = &report.runs[0];
    assert!(
        run.chatr.error.is_none() && run.chatr.clean_exit == Some(true),
        "chatr: {:?}",
        run.chatr
    );
    assert!(
        run.chatr.mib_s.is_some(),
        "no chatr figure: {:?}",
        run.chatr
    );
    for (tool, sample) in [("tcp", &run.tcp), ("iroh", &run.iroh)] {
        if let Some(s) = sample {
            assert!(s.error.is_none() && s.mib_s.is_some(), "{tool}: {s:?}");
        }
    }
}

#[test]
fn both_sides_exit_soon_after_the_last_byte_on_a_lossy_path() {
    let args = ThroughputArgs {
        paths: vec![LinkPath::Restricted1Cgnat2],
        sizes: vec![2],
        small_runs: 3,
        no_iroh: true,
        no_tcp: true,
        // What made the hang likely on this path made certain: the optimistic QUIC
        // attempt's Initial is lost, the second attempt links, and the first one's
        // CONNECTION_CLOSE is the first packet of it the listener sees.
        lose_first_initial: true,
        exit_wait_s: 15,
        ..ThroughputArgs::smoke(bin_dir())
    };
    let report = throughput::run(&args).unwrap_or_else(|e| panic!("bench failed: {e}"));
    eprintln!("{}", report.render());
    let bound = EXIT_BOUND.as_secs_f64();
    for (i, run) in report.runs.iter().enumerate() {
        let c = &run.chatr;
        assert!(
            c.error.is_none() && c.clean_exit == Some(true),
            "run {}: {c:?}",
            i + 1
        );
        let (send, recv) = (c.send_exit_s.unwrap(), c.recv_exit_s.unwrap());
        assert!(
            send <= bound && recv <= bound,
            "run {}: the sender exited {send:.2} s and the listener {recv:.2} s after the \
             last byte (bound {bound} s)",
            i + 1
        );
    }
}
