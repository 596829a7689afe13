//! The NAT matrix with the real binaries: every pair of NAT profiles (and two peers
//! on one LAN) links with `chatr pipe` through `chatr-server`, inside the lab.
//!
//! Asserts: every pair that must be direct (at least one side with endpoint-
//! independent mapping, except symmetric against port-dependent filtering; plus
//! same-lan and cgnat) comes out direct with data verified end to end in both
//! directions; every pair finishes with a `--report` from both clients.
//!
//! Needs root and the `chatr`/`chatr-server` binaries (built by `cargo test
//! --workspace`, or `cargo build -p chatr-server -p chatr-cli`; or set
//! CHATR_BIN_DIR). The rendered table is printed and written to
//! `$CARGO_TARGET_TMPDIR/NAT-MATRIX.md`; `chatr-natlab` rewrites `docs/NAT-MATRIX.md`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use chatr_client::punch::PathKind;
use chatr_tests::lab;
use chatr_tests::lab::matrix::{self, Binaries, Expectation, MatrixConfig};

#[test]
fn every_pair_of_nat_profiles_links_with_the_real_binaries() {
    let _serial = lab::exclusive();
    let binaries = Binaries::locate(None).unwrap_or_else(|e| panic!("{e}"));
    if std::env::var_os("CHATR_BIN_DIR").is_none() {
        binaries.check_fresh().unwrap_or_else(|e| panic!("{e}"));
    }
    let mut config = MatrixConfig::new(binaries);
    config.delay_ms = 20;
    config.concurrency = 4;
    config.pipe_timeout = Duration::from_secs(45);
    let run = matrix::run(&config).unwrap_or_else(|e| panic!("could not run the NAT matrix: {e}"));

    let markdown = run.to_markdown("cargo test -p chatr-tests --test nat_matrix");
    eprintln!("{markdown}");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("NAT-MATRIX.md");
    std::fs::write(&out, &markdown).unwrap();

    assert_eq!(run.results.len(), matrix::Pair::all().len());
    let unreported: Vec<String> = run
        .results
        .iter()
        .filter(|r| !r.reported())
        .map(|r| format!("{}: {}", r.pair.label(), r.why))
        .collect();
    let missed: Vec<String> = run
        .unexpected()
        .iter()
        .map(|r| format!("{}: {}", r.pair.label(), r.why))
        .collect();
    assert!(
        missed.is_empty(),
        "pairs that must be direct were not:\n{}",
        missed.join("\n")
    );
    assert!(
        unreported.is_empty(),
        "pairs without a report from both clients:\n{}",
        unreported.join("\n")
    );
    for r in run.results.iter().filter(|r| r.direct) {
        // Direct means data went through intact both ways; same-lan must stay on the LAN.
        assert!(
            r.listener.data_ok && r.initiator.data_ok,
            "{}",
            r.pair.label()
        );
        if r.pair == matrix::Pair::SameLan {
            let path = r.initiator.report.as_ref().and_then(|rep| rep.path);
            assert_eq!(
                path.map(PathKind::as_str),
                Some("lan"),
                "same-lan peers must use the LAN path"
            );
        }
    }
    assert!(
        run.results
            .iter()
            .any(|r| r.expectation == Expectation::Recorded)
    );
}
