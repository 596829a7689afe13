//! The NAT matrix with the real binaries: every pair of NAT profiles (and two peers
//! on one LAN) links with `chatr pipe` through `chatr-server`, inside the lab.
//!
//! Asserts: every pair links, with data verified end to end in both directions and
//! a `--report` from both clients; every pair that must be direct (UDP passes and at
//! least one side maps endpoint-independently, except symmetric against
//! port-dependent filtering; plus same-lan, which stays on the LAN) comes out direct;
//! the rest come out relayed by the server, a UDP-blocked side over TLS.
//!
//! Needs root and the `chatr`/`chatr-server` binaries (built by `cargo test
//! --workspace`, or `cargo build -p chatr-server -p chatr-cli`; or set
//! CHATR_BIN_DIR). The rendered table is printed and written to
//! `$CARGO_TARGET_TMPDIR/NAT-MATRIX.md`; `chatr-natlab` rewrites `docs/NAT-MATRIX.md`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use chatr_client::path::PathClass;
use chatr_tests::lab;
use chatr_tests::lab::matrix::{self, Binaries, Expectation, MatrixConfig};

#[test]
fn every_pair_of_nat_profiles_links_with_the_real_binaries() {
    let _serial = lab::exclusive();
    let binaries = Binaries::for_tests().unwrap_or_else(|e| panic!("{e}"));
    let mut config = MatrixConfig::new(binaries);
    config.delay_ms = 20;
    config.concurrency = 4;
    config.pipe_timeout = Duration::from_secs(45);
    let mut run =
        matrix::run(&config).unwrap_or_else(|e| panic!("could not run the NAT matrix: {e}"));
    // Port prediction and the birthday technique are probabilistic (PROTOCOL.md §10.7:
    // about 98 % per try for random ports): a hard pair that missed gets one more try,
    // as a user's next attempt would. Its statistics are `chatr-natlab --repeat`'s job.
    let retry: Vec<matrix::Pair> = run
        .unexpected()
        .iter()
        .filter(|r| r.linked && r.pair.is_hard())
        .map(|r| r.pair)
        .collect();
    if !retry.is_empty() {
        eprintln!("hard pairs not direct on the first try, trying once more: {retry:?}");
        let mut again = config.clone();
        again.pairs = retry;
        let second =
            matrix::run(&again).unwrap_or_else(|e| panic!("could not rerun the hard pairs: {e}"));
        for result in second.results {
            if let Some(slot) = run.results.iter_mut().find(|r| r.pair == result.pair) {
                *slot = result;
            }
        }
    }

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
        "pairs that did not link, or not on the path they must take:\n{}",
        missed.join("\n")
    );
    assert!(
        unreported.is_empty(),
        "pairs without a report from both clients:\n{}",
        unreported.join("\n")
    );
    for r in &run.results {
        // Linked means data went through intact both ways; same-lan must stay on the LAN.
        assert!(
            r.linked && r.listener.data_ok && r.initiator.data_ok,
            "{}",
            r.pair.label()
        );
        if r.pair == matrix::Pair::SameLan {
            // Where the link was when the pipe ended (it may come up on the relay copy
            // of the handshake and move over: PROTOCOL.md §15 set-up).
            let class = r.initiator.report.as_ref().and_then(|rep| {
                rep.transfer
                    .as_ref()
                    .and_then(|t| t.path_class)
                    .or(rep.path_class)
            });
            assert_eq!(
                class,
                Some(PathClass::DirectLan),
                "same-lan peers must end on the LAN path"
            );
        }
        if r.expectation == Expectation::Relayed && !r.direct {
            // A relayed side says so, and why.
            for side in [&r.listener, &r.initiator] {
                let report = side.report.as_ref().unwrap();
                assert!(
                    report.path_class.is_some_and(PathClass::is_relayed)
                        && report.relay_reason.is_some(),
                    "{}: {report:?}",
                    r.pair.label()
                );
            }
        }
    }
    assert!(
        run.results
            .iter()
            .any(|r| r.expectation == Expectation::Relayed && !r.direct),
        "the matrix has pairs that can only be relayed"
    );
}
