//! Port mapping against a real miniupnpd (the lab's `upnp` profile), with the real
//! binaries:
//!
//! - `chatr status` behind the `upnp` router gets a mapping by PCP, NAT-PMP and UPnP
//!   IGD each (and by PCP in `auto`), names the router's public address, and the
//!   mapping is gone from the router's ruleset once the client has exited; behind a
//!   router without a mapping service it says in plain words that no router answered;
//! - a client behind the `upnp` router links direct with a peer behind a symmetric NAT
//!   through its port-mapped candidate, and with port mapping turned off the same
//!   pair is relayed (so the mapping is what made it direct).
//!
//! The time from the client's start to the grant is printed (the client's own
//! `took_ms`), beside the time it takes to give up on a router that has no mapping
//! service. Needs root and the `chatr`/`chatr-server` binaries (see `nat_matrix.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use chatr_client::AttemptReport;
use chatr_client::path::PathClass;
use chatr_client::punch::CandidateKind;
use chatr_tests::lab::cli_runner::ChatrRunner;
use chatr_tests::lab::lab_server::LabServer;
use chatr_tests::lab::matrix::Binaries;
use chatr_tests::lab::{self, Host, Lab, LinkCondition, NatProfile, Site};

const PIPE_LIMIT: Duration = Duration::from_secs(60);

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

/// The `router:` line of `chatr status` and the client's `took_ms` for the answer.
fn status(runner: &ChatrRunner<'_>, host: &Host, who: &str, mode: &str) -> (String, Option<u64>) {
    let step = format!("status-{mode}");
    let done = runner
        .chatr(
            host,
            who,
            &step,
            &["-v", "--port-mapping", mode, "status", "--timeout", "5"],
            None,
            Duration::from_secs(30),
        )
        .unwrap();
    let out = std::fs::read_to_string(&done.stdout).unwrap();
    let err = std::fs::read_to_string(&done.stderr).unwrap();
    assert!(
        done.status.is_some_and(|s| s.success()),
        "chatr status ({mode}) failed: {out}\n{err}"
    );
    let router = out
        .lines()
        .find_map(|l| l.strip_prefix("router:"))
        .unwrap_or_else(|| panic!("no router line in `chatr status`: {out}"))
        .trim()
        .to_owned();
    let took = err
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains("the router granted a port mapping"))
        .find_map(|l| {
            let rest = l.split("took_ms=").nth(1)?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        });
    (router, took)
}

/// `line` without terminal colour sequences (`ESC [ … letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The DNAT rules miniupnpd holds in the router (one per live mapping).
fn mapped_rules(site: &Site) -> Vec<String> {
    let router = site.routers().last().unwrap();
    let out = router
        .command("nft")
        .args(["list", "chain", "inet", "filter", "prerouting_miniupnpd"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("dnat"))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn a_client_behind_miniupnpd_gets_a_mapping_by_each_protocol_and_removes_it_on_exit() {
    let _serial = lab::exclusive();
    let binaries = binaries();
    let mut lab = Lab::new().unwrap();
    let server_host = lab.add_public_host("srv").unwrap();
    let (upnp_site, alice) = site(&mut lab, "u", NatProfile::Upnp);
    let (_plain_site, carol) = site(&mut lab, "s", NatProfile::Symmetric);
    let work = tempfile::tempdir().unwrap();
    let server = LabServer::start(&binaries, &server_host, &work.path().join("server")).unwrap();
    let runner = ChatrRunner {
        chatr: binaries.chatr.clone(),
        server: &server,
        dir: work.path().join("users"),
    };
    std::fs::create_dir_all(&runner.dir).unwrap();
    runner.enrol(&alice, "alice").unwrap();
    runner.enrol(&carol, "carol").unwrap();
    let public_ip = upnp_site.public_ip().unwrap().to_string();

    let mut figures = Vec::new();
    for (mode, protocol) in [
        ("auto", "PCP from"),
        ("pcp", "PCP from"),
        ("nat-pmp", "NAT-PMP from"),
        ("upnp", "UPnP IGD v"),
    ] {
        let (router, took) = status(&runner, &alice, "alice", mode);
        assert!(
            router.starts_with(protocol),
            "{mode}: the router line names the protocol: {router}"
        );
        assert!(
            router.contains(&format!("maps {public_ip}:")),
            "{mode}: the router line names the router's public address {public_ip}: {router}"
        );
        assert!(
            router.contains("lease ") || router.contains("permanent"),
            "{mode}: {router}"
        );
        let took = took.unwrap_or_else(|| panic!("{mode}: the client logged no took_ms"));
        figures.push(format!("{mode}: {took} ms ({router})"));
        // The client removed its mapping when it exited.
        let left = mapped_rules(&upnp_site);
        assert!(
            left.is_empty(),
            "{mode}: mappings left at the router after exit: {left:?}"
        );
    }

    // Baseline: a router with no mapping service (the symmetric profile).
    let (router, _) = status(&runner, &carol, "carol", "auto");
    assert!(
        router.starts_with("no router answered"),
        "without a mapping service the line says so: {router}"
    );
    let (router, _) = status(&runner, &carol, "carol", "off");
    assert!(router.contains("turned off"), "{router}");
    for f in &figures {
        eprintln!("time to a mapping: {f}");
    }
}

fn report(path: &Path) -> AttemptReport {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// Alice (behind `upnp`) listens, bob (behind `symmetric`) pipes to her; returns both
/// reports. `alice_mapping` is alice's `--port-mapping`; `while_listening` runs once
/// alice has been listening for 2 s, before bob starts.
fn pipe_pair(
    runner: &ChatrRunner<'_>,
    alice: &Host,
    bob: &Host,
    alice_mapping: &str,
    while_listening: impl FnOnce(),
) -> (AttemptReport, AttemptReport) {
    let data = runner.dir.join(format!("data-{alice_mapping}"));
    std::fs::write(&data, vec![7u8; 64 * 1024]).unwrap();
    let empty = runner.dir.join("empty");
    std::fs::write(&empty, b"").unwrap();
    std::thread::scope(|scope| {
        let listener = scope.spawn(|| {
            runner.chatr(
                alice,
                "alice",
                "pipe",
                &[
                    "--port-mapping",
                    alice_mapping,
                    "pipe",
                    "--listen",
                    "--from",
                    "bob",
                ],
                Some(&empty),
                PIPE_LIMIT,
            )
        });
        // The listener logs in and gets its mapping first.
        std::thread::sleep(Duration::from_millis(2000));
        while_listening();
        let bob_done = runner
            .chatr(
                bob,
                "bob",
                "pipe",
                &["pipe", "alice"],
                Some(&data),
                PIPE_LIMIT,
            )
            .unwrap();
        let alice_done = listener.join().unwrap().unwrap();
        for (who, done) in [("alice", &alice_done), ("bob", &bob_done)] {
            assert!(
                done.status.is_some_and(|s| s.success()),
                "{who}'s pipe failed ({:?}): {}",
                done.status,
                std::fs::read_to_string(&done.stderr).unwrap_or_default()
            );
        }
        let received = std::fs::read(&alice_done.stdout).unwrap();
        assert_eq!(received.len(), 64 * 1024, "alice got bob's bytes");
    });
    (
        report(&runner.report_path("alice")),
        report(&runner.report_path("bob")),
    )
}

#[test]
fn a_port_mapping_makes_a_symmetric_peer_link_direct() {
    let _serial = lab::exclusive();
    let binaries = binaries();
    let mut lab = Lab::new().unwrap();
    let server_host = lab.add_public_host("srv").unwrap();
    let (upnp_site, alice) = site(&mut lab, "u", NatProfile::Upnp);
    let (_bob_site, bob) = site(&mut lab, "s", NatProfile::Symmetric);
    let work = tempfile::tempdir().unwrap();
    let server = LabServer::start(&binaries, &server_host, &work.path().join("server")).unwrap();
    let runner = ChatrRunner {
        chatr: binaries.chatr.clone(),
        server: &server,
        dir: work.path().join("users"),
    };
    std::fs::create_dir_all(&runner.dir).unwrap();
    let alice_id = runner.enrol(&alice, "alice").unwrap();
    let bob_id = runner.enrol(&bob, "bob").unwrap();
    runner
        .step(
            &alice,
            "alice",
            "contacts",
            &["contacts", "add", &bob_id, "bob"],
        )
        .unwrap();
    runner
        .step(
            &bob,
            "bob",
            "contacts",
            &["contacts", "add", &alice_id, "alice"],
        )
        .unwrap();
    let public_ip = upnp_site.public_ip().unwrap();

    let (alice_report, bob_report) = pipe_pair(&runner, &alice, &bob, "auto", || {
        let rules = mapped_rules(&upnp_site);
        assert_eq!(
            rules.len(),
            1,
            "alice holds one mapping at the router while she listens: {rules:?}"
        );
    });
    eprintln!("with the mapping: alice {alice_report:?}\nbob {bob_report:?}");
    assert_eq!(
        bob_report.path_class,
        Some(PathClass::DirectPublic),
        "bob links direct: {bob_report:?}"
    );
    assert_eq!(
        alice_report.path_class,
        Some(PathClass::DirectPublic),
        "alice links direct: {alice_report:?}"
    );
    assert_eq!(
        bob_report.candidate,
        Some(CandidateKind::PortMapped),
        "bob reached alice through her mapped endpoint: {bob_report:?}"
    );
    assert_eq!(
        bob_report.remote.map(|r| r.ip()),
        Some(std::net::IpAddr::V4(public_ip))
    );
    assert!(
        mapped_rules(&upnp_site).is_empty(),
        "alice removed her mapping on exit"
    );

    // The same pair without the mapping: the symmetric NATs leave no direct path.
    let (alice_report, bob_report) = pipe_pair(&runner, &alice, &bob, "off", || {
        assert!(
            mapped_rules(&upnp_site).is_empty(),
            "no mapping when turned off"
        );
    });
    eprintln!("without the mapping: alice {alice_report:?}\nbob {bob_report:?}");
    for (who, r) in [("alice", &alice_report), ("bob", &bob_report)] {
        assert_eq!(
            r.path_class,
            Some(PathClass::RelayUdp),
            "{who}: without a mapping the pair is relayed: {r:?}"
        );
    }
}
