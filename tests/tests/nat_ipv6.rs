//! IPv6 in the NAT lab (issue 11, part 5):
//!
//! - the lab's dual-stack routers route global IPv6 without NAT66 behind a stateful
//!   firewall: replies come in, unsolicited datagrams do not, IPv4 stays NATed;
//! - two dual-stack peers behind symmetric IPv4 NATs (which leave no direct IPv4 path:
//!   `symmetric ↔ symmetric` is relayed in the matrix) link **directly over IPv6**, with the
//!   real `chatr` and `chatr-server` binaries, and the link's final path is the peer's
//!   global IPv6 address.
//!
//! Needs root and the binaries (see `nat_matrix.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use chatr_client::AttemptReport;
use chatr_client::path::PathClass;
use chatr_client::punch::CandidateKind;
use chatr_tests::lab::cli_runner::ChatrRunner;
use chatr_tests::lab::lab_server::LabServer;
use chatr_tests::lab::matrix::Binaries;
use chatr_tests::lab::{self, Host, Lab, LinkCondition, NatProfile};

const PIPE_LIMIT: Duration = Duration::from_secs(60);

fn binaries() -> Binaries {
    Binaries::for_tests().unwrap_or_else(|e| panic!("{e}"))
}

fn dual_stack_host(lab: &mut Lab, name: &str, profile: NatProfile) -> Host {
    let mut site = lab
        .add_dual_stack_site(name, profile, LinkCondition::delay_ms(5))
        .unwrap();
    assert!(site.is_dual_stack());
    lab.add_host(&mut site, "h").unwrap()
}

fn udp6(host: &Host, port: u16) -> UdpSocket {
    host.netns()
        .run_in(move || {
            let socket = UdpSocket::bind(("::", port)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            socket
        })
        .unwrap()
}

fn recv(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 64];
    let (n, from) = socket.recv_from(&mut buf).ok()?;
    Some((
        buf[..n].to_vec(),
        SocketAddr::new(from.ip().to_canonical(), from.port()),
    ))
}

#[test]
fn the_ipv6_firewall_passes_replies_and_drops_unsolicited_datagrams() {
    let _serial = lab::exclusive();
    let mut lab = Lab::new().unwrap();
    lab.enable_ipv6().unwrap();
    let srv = lab.add_public_host("srv").unwrap();
    let alice = dual_stack_host(&mut lab, "a", NatProfile::Symmetric);
    let bob = dual_stack_host(&mut lab, "b", NatProfile::PortRestricted);
    let (srv6, alice6, bob6) = (
        srv.ipv6().unwrap(),
        alice.ipv6().unwrap(),
        bob.ipv6().unwrap(),
    );
    assert!(chatr_client::global_ipv6::is_global_unicast(&alice6));
    let s = udp6(&srv, 9000);
    let a = udp6(&alice, 9001);
    let b = udp6(&bob, 9002);
    let b_other = udp6(&bob, 9004);
    let to = |ip, port| SocketAddr::new(IpAddr::V6(ip), port);

    // Unsolicited: from the public segment and from another site, nothing gets in.
    s.send_to(b"hello?", to(alice6, 9001)).unwrap();
    b_other.send_to(b"hello?", to(alice6, 9001)).unwrap();
    assert_eq!(recv(&a), None, "alice's firewall let a new inbound flow in");

    // Out, then the reply in; no NAT66: the server sees alice's own address and port.
    a.send_to(b"out", to(srv6, 9000)).unwrap();
    let (data, from) = recv(&s).expect("alice's datagram reaches the server");
    assert_eq!((data.as_slice(), from), (&b"out"[..], to(alice6, 9001)));
    s.send_to(b"reply", from).unwrap();
    assert_eq!(recv(&a), Some((b"reply".to_vec(), to(srv6, 9000))));

    // The hole is per remote address and port: a punch opens it both ways.
    a.send_to(b"punch", to(bob6, 9002)).unwrap();
    assert_eq!(
        recv(&b),
        None,
        "bob's firewall let alice's first datagram in"
    );
    b.send_to(b"punch", to(alice6, 9001)).unwrap();
    assert_eq!(
        recv(&a),
        Some((b"punch".to_vec(), to(bob6, 9002))),
        "bob's datagram matches alice's outbound flow"
    );
    a.send_to(b"again", to(bob6, 9002)).unwrap();
    assert_eq!(recv(&b), Some((b"again".to_vec(), to(alice6, 9001))));

    // IPv4 is still translated by the site's NAT.
    let s4 = srv
        .netns()
        .run_in(|| {
            let socket = UdpSocket::bind(("0.0.0.0", 9003)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            socket
        })
        .unwrap();
    let srv4 = SocketAddr::new(IpAddr::V6(srv.ip().to_ipv6_mapped()), 9003);
    a.send_to(b"v4", srv4).unwrap();
    let (_, from) = recv(&s4).expect("alice's IPv4 datagram reaches the server");
    assert_ne!(
        from.ip(),
        IpAddr::V4(alice.ip()),
        "IPv4 leaves alice's site NATed"
    );
}

fn report(path: &std::path::Path) -> AttemptReport {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

#[test]
fn dual_stack_peers_behind_symmetric_nats_link_directly_over_ipv6() {
    let _serial = lab::exclusive();
    let binaries = binaries();
    let mut lab = Lab::new().unwrap();
    lab.enable_ipv6().unwrap();
    let server_host = lab.add_public_host("srv").unwrap();
    let alice = dual_stack_host(&mut lab, "a", NatProfile::Symmetric);
    let bob = dual_stack_host(&mut lab, "b", NatProfile::Symmetric);
    let work = tempfile::tempdir().unwrap();
    let server = LabServer::start(&binaries, &server_host, &work.path().join("server")).unwrap();
    // The clients reach the server over IPv4 only: their IPv6 candidates come from their
    // own interfaces.
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

    let data: Vec<u8> = (0..512 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let input = runner.dir.join("bob.in");
    std::fs::write(&input, &data).unwrap();
    let empty = runner.dir.join("empty.in");
    std::fs::write(&empty, b"").unwrap();
    let (alice_done, bob_done) = std::thread::scope(|scope| {
        let listener = scope.spawn(|| {
            runner.chatr(
                &alice,
                "alice",
                "pipe",
                &["pipe", "--listen", "--from", "bob"],
                Some(&empty),
                PIPE_LIMIT,
            )
        });
        std::thread::sleep(Duration::from_millis(1500));
        let initiator = runner.chatr(
            &bob,
            "bob",
            "pipe",
            &["pipe", "alice"],
            Some(&input),
            PIPE_LIMIT,
        );
        (listener.join().unwrap(), initiator)
    });
    let (alice_done, bob_done) = (alice_done.unwrap(), bob_done.unwrap());
    for (who, done) in [("alice", &alice_done), ("bob", &bob_done)] {
        assert!(
            done.status.is_some_and(|s| s.success()),
            "{who}'s pipe failed ({:?}): {}",
            done.status,
            std::fs::read_to_string(&done.stderr).unwrap_or_default()
        );
    }
    assert_eq!(std::fs::read(&alice_done.stdout).unwrap(), data);

    for (who, peer) in [("alice", &bob), ("bob", &alice)] {
        let rep = report(&runner.report_path(who));
        let peer6 = peer.ipv6().unwrap();
        let transfer = rep.transfer.clone().expect("the pipe reports its transfer");
        assert_eq!(
            transfer.path_class,
            Some(PathClass::DirectPublic),
            "{who} must end direct: {rep:?}"
        );
        let remote = transfer.remote.expect("a direct path has an address");
        assert_eq!(
            remote.ip(),
            IpAddr::V6(peer6),
            "{who} must end on {}'s IPv6 address: {rep:?}",
            peer.name()
        );
        // A link that came up direct came up on the peer's announced IPv6 candidate.
        if rep.path_class == Some(PathClass::DirectPublic) {
            assert_eq!(
                rep.candidate,
                Some(CandidateKind::Ipv6Global),
                "{who}: {rep:?}"
            );
        }
    }
}
