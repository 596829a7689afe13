//! One link, several paths, with the real binaries in the NAT lab:
//!
//! - a direct path blackholed in the middle of a transfer: the link moves to the
//!   server's relay within 5 s and the transfer completes, SHA-256 checked;
//! - a network that drops all UDP: the link comes up over the TLS relay.
//!
//! Needs root and the `chatr`/`chatr-server` binaries (see `nat_matrix.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use chatr_client::AttemptReport;
use chatr_client::path::PathClass;
use chatr_tests::lab::cli_runner::{ChatrRunner, wait};
use chatr_tests::lab::lab_server::LabServer;
use chatr_tests::lab::matrix::Binaries;
use chatr_tests::lab::{self, Host, Lab, LinkCondition, NatProfile, Site};
use chatr_tests::pattern::{pattern, sha256};

const PIPE_LIMIT: Duration = Duration::from_secs(90);

fn binaries() -> Binaries {
    Binaries::for_tests().unwrap_or_else(|e| panic!("{e}"))
}

fn site(lab: &mut Lab, name: &str, profile: NatProfile) -> (Site, Host) {
    let mut site = lab
        .add_site(name, profile, LinkCondition::delay_ms(5))
        .unwrap();
    let host = lab.add_host(&mut site, "h").unwrap();
    (site, host)
}

/// Two befriended users, alice behind `alice_nat` and bob behind `bob_nat`, with a
/// Connect server on the public segment; runs `test` with them, then tears it all down.
fn with_friends(
    alice_nat: NatProfile,
    bob_nat: NatProfile,
    test: impl FnOnce(&ChatrRunner<'_>, (&Site, &Host), (&Site, &Host)),
) {
    let _serial = lab::exclusive();
    let binaries = binaries();
    let mut lab = Lab::new().unwrap();
    let server_host = lab.add_public_host("srv").unwrap();
    let (alice_site, alice) = site(&mut lab, "a", alice_nat);
    let (bob_site, bob) = site(&mut lab, "b", bob_nat);
    let work = tempfile::tempdir().unwrap();
    let server = LabServer::start(&binaries, &server_host, &work.path().join("server")).unwrap();
    let runner = ChatrRunner {
        chatr: binaries.chatr.clone(),
        server: &server,
        dir: work.path().join("users"),
    };
    befriend(&runner, &alice, &bob);
    test(&runner, (&alice_site, &alice), (&bob_site, &bob));
}

/// Enrols alice and bob and makes them each other's contacts.
fn befriend(runner: &ChatrRunner<'_>, alice: &Host, bob: &Host) {
    std::fs::create_dir_all(&runner.dir).unwrap();
    let alice_id = runner.enrol(alice, "alice").unwrap();
    let bob_id = runner.enrol(bob, "bob").unwrap();
    runner
        .step(
            alice,
            "alice",
            "contacts",
            &["contacts", "add", &bob_id, "bob"],
        )
        .unwrap();
    runner
        .step(
            bob,
            "bob",
            "contacts",
            &["contacts", "add", &alice_id, "alice"],
        )
        .unwrap();
}

fn report(path: &Path) -> AttemptReport {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// Waits until `file` has a line containing `needle`; returns when it was seen.
fn wait_for_line(file: &Path, needle: &str, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::fs::read_to_string(file).is_ok_and(|t| t.lines().any(|l| l.contains(needle))) {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Bob pipes `data` to alice at a steady pace (so the transfer lasts), alice pipes
/// nothing back; `during` runs once bob's link is up. Returns what alice wrote out.
fn paced_pipe(
    runner: &ChatrRunner<'_>,
    alice: &Host,
    bob: &Host,
    data: &[u8],
    chunk_every: Duration,
    during: impl FnOnce(),
) -> Vec<u8> {
    let empty = runner.dir.join("empty.in");
    std::fs::write(&empty, b"").unwrap();
    std::thread::scope(|scope| {
        let listener = scope.spawn(|| {
            runner.chatr(
                alice,
                "alice",
                "pipe",
                &["pipe", "--listen", "--from", "bob"],
                Some(&empty),
                PIPE_LIMIT,
            )
        });
        // The listener logs in first (a few round trips through the wires).
        std::thread::sleep(Duration::from_millis(1500));
        let (mut child, files) = runner
            .spawn(bob, "bob", "pipe", &["pipe", "alice"])
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stderr = files.stderr.clone();
        let writer = scope.spawn(move || {
            // Nothing is lost by writing before the link is up: the pipe reads stdin only
            // once linked, and the OS buffers the rest.
            for chunk in data.chunks(64 * 1024) {
                if stdin.write_all(chunk).is_err() {
                    return false;
                }
                std::thread::sleep(chunk_every);
            }
            true
        });
        assert!(
            wait_for_line(&stderr, "linked with alice", Duration::from_secs(30)).is_some(),
            "bob never linked: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        during();
        assert!(
            writer.join().unwrap(),
            "bob's pipe stopped reading its input"
        );
        let bob_done = wait(child, files, "pipe", PIPE_LIMIT).unwrap();
        let alice_done = listener.join().unwrap().unwrap();
        for (who, done) in [("alice", &alice_done), ("bob", &bob_done)] {
            assert!(
                done.status.is_some_and(|s| s.success()),
                "{who}'s pipe failed ({:?}): {}",
                done.status,
                std::fs::read_to_string(&done.stderr).unwrap_or_default()
            );
        }
        std::fs::read(&alice_done.stdout).unwrap()
    })
}

#[test]
fn a_blackholed_direct_path_moves_the_transfer_to_the_relay_within_five_seconds() {
    with_friends(
        NatProfile::PortRestricted,
        NatProfile::PortRestricted,
        |runner, (alice_site, alice), (bob_site, bob)| {
            // 12 MiB at about 1.5 MiB/s: some 8 s of transfer, the blackhole after 2 s of it.
            let data = pattern(12 * 1024 * 1024, 11);
            let bob_ip = bob_site.public_ip().unwrap();
            let router = alice_site.routers().last().unwrap().clone();
            let bob_err = runner.dir.join("bob.pipe.err");
            let alice_err = runner.dir.join("alice.pipe.err");
            let received = paced_pipe(runner, alice, bob, &data, Duration::from_millis(40), || {
                let linked = std::fs::read_to_string(&bob_err).unwrap();
                assert!(
                    linked.contains("direct (internet)"),
                    "port-restricted peers link directly: {linked}"
                );
                std::thread::sleep(Duration::from_secs(2));
                // Alice's router now drops all UDP between the peers; the server stays reachable.
                router
                    .nft(&format!(
                        "table inet chatr_blackhole {{
  chain forward {{
    type filter hook forward priority -10; policy accept;
    meta l4proto udp ip saddr {bob_ip} drop
    meta l4proto udp ip daddr {bob_ip} drop
  }}
}}
"
                    ))
                    .unwrap();
                let holed = Instant::now();
                for (who, stderr) in [("bob", &bob_err), ("alice", &alice_err)] {
                    let moved = wait_for_line(stderr, "now relayed", Duration::from_secs(10))
                        .unwrap_or_else(|| {
                            panic!(
                                "{who} never moved to the relay: {}",
                                std::fs::read_to_string(stderr).unwrap_or_default()
                            )
                        });
                    let after = moved.duration_since(holed);
                    eprintln!("{who} on the relay {after:?} after the blackhole");
                    assert!(
                        after <= Duration::from_secs(5),
                        "{who} took {after:?} to move to the relay"
                    );
                }
            });
            assert_eq!(received.len(), data.len());
            assert_eq!(sha256(&received), sha256(&data));
            let bob_report = report(&runner.report_path("bob"));
            let transfer = bob_report
                .transfer
                .expect("bob's pipe reports its transfer");
            assert_eq!(transfer.path_class, Some(PathClass::RelayUdp));
            assert!(transfer.switches >= 1);
            assert!(
                transfer
                    .relay_reason
                    .as_deref()
                    .is_some_and(|r| r.contains("stopped answering")),
                "{transfer:?}"
            );
        },
    );
}

#[test]
fn a_network_that_blocks_udp_links_over_the_tls_relay() {
    with_friends(
        NatProfile::PortRestricted,
        NatProfile::UdpBlocked,
        |runner, (_, alice), (_, bob)| {
            let data = pattern(2 * 1024 * 1024, 5);
            let received = paced_pipe(runner, alice, bob, &data, Duration::ZERO, || {});
            assert_eq!(sha256(&received), sha256(&data));
            let bob_report = report(&runner.report_path("bob"));
            let alice_report = report(&runner.report_path("alice"));
            assert_eq!(
                bob_report.path_class,
                Some(PathClass::RelayTls),
                "{bob_report:?}"
            );
            assert!(
                bob_report
                    .relay_reason
                    .as_deref()
                    .is_some_and(|r| r.contains("UDP to the Connect server does not get through")),
                "{bob_report:?}"
            );
            // Alice's network passes UDP: her side of the same relay uses it.
            assert_eq!(
                alice_report.path_class,
                Some(PathClass::RelayUdp),
                "{alice_report:?}"
            );
            let status = runner
                .step(bob, "bob", "status", &["status", "--timeout", "3"])
                .unwrap_or_else(|e| e);
            assert!(
                status.contains("inside the TLS connection"),
                "chatr status explains the relay: {status}"
            );
        },
    );
}
