//! Checks that each NAT profile of the lab behaves as RFC 4787 says it should,
//! using the lab's own UDP probe (no Chatr code involved): mapping behaviour,
//! filtering behaviour, silent dropping of unsolicited inbound traffic, hole
//! punching between every pair of profiles, same-LAN without hairpinning, CGNAT,
//! the delay wire and loss, and cleanup of namespaces (also after SIGKILL).
//!
//! Needs root (network namespaces); fails loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use chatr_tests::lab::probe::{
    self, Observer, observe, punch, recv_within, udp_socket, udp_socket_in,
};
use chatr_tests::lab::{self, Host, Lab, LinkCondition, Mapping, NatProfile, Site};

const OBSERVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait for a datagram that should arrive (or, if filtered, to be sure it doesn't).
const LISTEN: Duration = Duration::from_millis(400);

/// The public side every test uses: two observer hosts, three reflectors.
struct PublicSide {
    obs1: Host,
    obs2: Host,
    o1a: Observer,
    o1b: Observer,
    o2: Observer,
}

fn public_side(lab: &mut Lab) -> PublicSide {
    let obs1 = lab.add_public_host("obs1").unwrap();
    let obs2 = lab.add_public_host("obs2").unwrap();
    PublicSide {
        o1a: Observer::start(&obs1, 3478).unwrap(),
        o1b: Observer::start(&obs1, 3479).unwrap(),
        o2: Observer::start(&obs2, 3478).unwrap(),
        obs1,
        obs2,
    }
}

fn site_with_host(
    lab: &mut Lab,
    name: &str,
    profile: NatProfile,
    link: LinkCondition,
) -> (Site, Host) {
    let mut site = lab.add_site(name, profile, link).unwrap();
    let host = lab.add_host(&mut site, "h").unwrap();
    (site, host)
}

fn public_ip(site: &Site, host: &Host) -> std::net::Ipv4Addr {
    site.public_ip().unwrap_or(host.ip())
}

fn lab_namespaces() -> BTreeSet<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(lab::NAMESPACE_PREFIX))
        .map(str::to_owned)
        .collect()
}

#[test]
fn mapping_and_filtering_match_each_profile() {
    let _serial = lab::exclusive();
    let mut lab = Lab::new().unwrap();
    let public = public_side(&mut lab);
    let sites: Vec<(NatProfile, Site, Host)> = NatProfile::ALL
        .into_iter()
        .map(|p| {
            let (site, host) = site_with_host(&mut lab, &format!("m-{p}"), p, LinkCondition::IDEAL);
            (p, site, host)
        })
        .collect();

    for (profile, site, host) in &sites {
        let public_ip = public_ip(site, host);
        // Mapping: the same local socket towards three destinations.
        let sock = udp_socket(host, 40000).unwrap();
        let seen: Vec<SocketAddrV4> = [public.o1a.addr(), public.o1b.addr(), public.o2.addr()]
            .into_iter()
            .map(|o| {
                observe(&sock, o, OBSERVE_TIMEOUT).unwrap_or_else(|e| panic!("{profile}: {e}"))
            })
            .collect();
        for s in &seen {
            assert_eq!(
                *s.ip(),
                public_ip,
                "{profile}: traffic must leave from the site's public address"
            );
        }
        match profile.mapping() {
            Mapping::NoTranslation => {
                assert!(
                    seen.iter()
                        .all(|s| *s == SocketAddrV4::new(host.ip(), 40000)),
                    "{profile}: {seen:?}"
                );
            }
            Mapping::EndpointIndependent => {
                assert!(
                    seen.iter().all(|s| *s == seen[0]),
                    "{profile}: EIM expected, saw {seen:?}"
                );
                // Linux NAT keeps the source port when it is free: a mapping a peer can guess.
                assert_eq!(seen[0].port(), 40000, "{profile}: port preserved");
            }
            Mapping::AddressAndPortDependent => {
                let ports: BTreeSet<u16> = seen.iter().map(SocketAddrV4::port).collect();
                assert!(
                    ports.len() >= 2,
                    "{profile}: APDM expected a port per destination, saw {seen:?}"
                );
                if *profile == NatProfile::SymmetricSequential {
                    // One counter, step 1, in the order the flows began.
                    let steps: Vec<i32> = seen
                        .windows(2)
                        .map(|w| i32::from(w[1].port()) - i32::from(w[0].port()))
                        .collect();
                    assert_eq!(
                        steps,
                        vec![1, 1],
                        "{profile}: sequential ports, saw {seen:?}"
                    );
                }
            }
        }

        // Filtering: after talking to obs1:3478 only, who may send to the mapping?
        let sock = udp_socket(host, 40001).unwrap();
        let mapped = observe(&sock, public.o1a.addr(), OBSERVE_TIMEOUT).unwrap();
        let same_ip_other_port = udp_socket(&public.obs1, 5000).unwrap();
        let other_ip = udp_socket(&public.obs2, 5000).unwrap();
        same_ip_other_port.send_to(b"same-ip", mapped).unwrap();
        other_ip.send_to(b"other-ip", mapped).unwrap();
        // Unsolicited: a port that has sent nothing yet.
        let silent = udp_socket(host, 40002).unwrap();
        let unsolicited = udp_socket(&public.obs1, 5001).unwrap();
        unsolicited
            .send_to(b"unsolicited", SocketAddrV4::new(public_ip, 40002))
            .unwrap();

        let mut got = BTreeSet::new();
        while let Some((datagram, _)) = recv_within(&sock, LISTEN).unwrap() {
            got.insert(String::from_utf8_lossy(&datagram).into_owned());
        }
        let silent_got = recv_within(&silent, Duration::from_millis(50))
            .unwrap()
            .is_some();
        let expect: &[&str] = match profile.filtering() {
            lab::Filtering::Open | lab::Filtering::EndpointIndependent => &["other-ip", "same-ip"],
            lab::Filtering::AddressDependent => &["same-ip"],
            lab::Filtering::AddressAndPortDependent => &[],
        };
        let expect: BTreeSet<String> = expect.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, expect, "{profile}: inbound to the mapping {mapped}");
        assert_eq!(
            silent_got,
            *profile == NatProfile::None,
            "{profile}: unsolicited inbound to an unused port"
        );
    }

    // CGNAT really is two layers: the host's traffic crosses a home NAT (100.64/10 side)
    // and a carrier NAT; the observer sees only the carrier's address.
    let (_, cg_site, _) = sites
        .iter()
        .find(|(p, _, _)| *p == NatProfile::Cgnat)
        .unwrap();
    assert_eq!(cg_site.routers().len(), 2);
    let home_wan = cg_site.routers()[0]
        .ip(&["-4", "-o", "addr", "show", "dev", "wan"])
        .unwrap();
    assert!(
        home_wan.contains("100.64."),
        "home router WAN should be in the carrier range: {home_wan}"
    );
}

#[test]
fn unsolicited_inbound_is_dropped_silently_and_leaves_no_state() {
    let _serial = lab::exclusive();
    let mut lab = Lab::new().unwrap();
    let public = public_side(&mut lab);
    for profile in NatProfile::ALL
        .into_iter()
        .filter(|p| *p != NatProfile::None)
    {
        let (site, host) = site_with_host(
            &mut lab,
            &format!("u-{profile}"),
            profile,
            LinkCondition::IDEAL,
        );
        let wan_ip = site.public_ip().unwrap();
        let outer = site.routers().last().unwrap();

        // A socket on the router itself must not see unsolicited WAN traffic.
        let router_sock = udp_socket_in(outer, 7000).unwrap();
        let prober = udp_socket(&public.obs1, 0).unwrap();
        prober
            .send_to(b"hello router", SocketAddrV4::new(wan_ip, 7000))
            .unwrap();
        assert!(
            recv_within(&router_sock, LISTEN).unwrap().is_none(),
            "{profile}: router socket got WAN traffic"
        );

        // Unsolicited datagrams to the port the host will use: silently dropped (no ICMP
        // error comes back to a connected socket), and no conntrack state is left behind
        // to steal the port from the host's later outgoing flow.
        let early = udp_socket(&public.obs1, 5002).unwrap();
        early.connect(SocketAddrV4::new(wan_ip, 41000)).unwrap();
        for _ in 0..3 {
            early.send(b"too early").unwrap();
        }
        match recv_within(&early, LISTEN) {
            Ok(None) => {}
            other => panic!("{profile}: expected silence after unsolicited inbound, got {other:?}"),
        }
        // Unconnected from here on: a symmetric NAT answers from a port of its choosing.
        drop(early);
        let peer = udp_socket(&public.obs1, 5002).unwrap();
        let sock = udp_socket(&host, 41000).unwrap();
        sock.send_to(b"now outbound", SocketAddrV4::new(public.obs1.ip(), 5002))
            .unwrap();
        let (datagram, from) = recv_within(&peer, LISTEN)
            .unwrap()
            .unwrap_or_else(|| panic!("{profile}: outbound datagram never arrived"));
        assert_eq!(datagram, b"now outbound");
        if profile.mapping() == Mapping::EndpointIndependent {
            assert_eq!(
                from,
                SocketAddr::from((wan_ip, 41000)),
                "{profile}: mapping displaced by a stray entry"
            );
        }
    }
}

/// Is a direct UDP path expected between these two profiles with the probe's
/// strategy (simultaneous sends + answering peer-reflexive sources)?
fn punch_expected(a: NatProfile, b: NatProfile) -> bool {
    let symmetric = |p: NatProfile| p.mapping() == Mapping::AddressAndPortDependent;
    let port_filtered =
        |p: NatProfile| symmetric(p) || matches!(p, NatProfile::PortRestricted | NatProfile::Cgnat);
    // A symmetric NAT's fresh port only gets through a NAT that does not filter on ports
    // (without prediction or the birthday technique, which this plain punch lacks).
    !((symmetric(a) && port_filtered(b)) || (symmetric(b) && port_filtered(a)))
}

#[test]
fn hole_punching_between_every_pair_of_profiles() {
    let _serial = lab::exclusive();
    let mut lab = Lab::new().unwrap();
    let public = public_side(&mut lab);
    let mut sides = Vec::new();
    for (side, tag) in [(0, "a"), (1, "b")] {
        let v: Vec<(NatProfile, Site, Host)> = NatProfile::ALL
            .into_iter()
            .map(|p| {
                let (site, host) =
                    site_with_host(&mut lab, &format!("{tag}-{p}"), p, LinkCondition::IDEAL);
                (p, site, host)
            })
            .collect();
        assert_eq!(sides.len(), side);
        sides.push(v);
    }
    let mut pairs = Vec::new();
    for i in 0..NatProfile::ALL.len() {
        for j in i..NatProfile::ALL.len() {
            pairs.push((&sides[0][i], &sides[1][j]));
        }
    }
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = pairs
            .iter()
            .enumerate()
            .map(|(k, ((pa, sa, ha), (pb, sb, hb)))| {
                let o = public.o1a.addr();
                scope.spawn(move || {
                    let port = 42000 + k as u16;
                    let a = udp_socket(ha, port).unwrap();
                    let b = udp_socket(hb, port).unwrap();
                    let ma = observe(&a, o, OBSERVE_TIMEOUT).unwrap();
                    let mb = observe(&b, o, OBSERVE_TIMEOUT).unwrap();
                    let outcome = punch(&a, mb.into(), &b, ma.into(), Duration::from_secs(3));
                    (*pa, *pb, public_ip(sa, ha), public_ip(sb, hb), outcome)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut wrong = Vec::new();
    for (pa, pb, ip_a, ip_b, outcome) in &results {
        let expected = punch_expected(*pa, *pb);
        if outcome.is_direct() != expected {
            wrong.push(format!(
                "{pa} <-> {pb}: expected direct={expected}, got {outcome:?}"
            ));
            continue;
        }
        if outcome.is_direct() {
            // Each side hears the other from its public address, never a private one.
            assert_eq!(
                outcome.a_heard.map(|s| s.ip()),
                Some((*ip_b).into()),
                "{pa} <-> {pb}"
            );
            assert_eq!(
                outcome.b_heard.map(|s| s.ip()),
                Some((*ip_a).into()),
                "{pa} <-> {pb}"
            );
        }
    }
    assert!(
        wrong.is_empty(),
        "unexpected punch outcomes:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn same_lan_peers_need_private_endpoints_because_there_is_no_hairpin() {
    let _serial = lab::exclusive();
    let mut lab = Lab::new().unwrap();
    let public = public_side(&mut lab);
    let mut site = lab
        .add_site("lan", NatProfile::PortRestricted, LinkCondition::IDEAL)
        .unwrap();
    let h1 = lab.add_host(&mut site, "h1").unwrap();
    let h2 = lab.add_host(&mut site, "h2").unwrap();

    let a = udp_socket(&h1, 43000).unwrap();
    let b = udp_socket(&h2, 43000).unwrap();
    let ma = observe(&a, public.o1a.addr(), OBSERVE_TIMEOUT).unwrap();
    let mb = observe(&b, public.o1a.addr(), OBSERVE_TIMEOUT).unwrap();
    assert_eq!(
        ma.ip(),
        mb.ip(),
        "both peers share the NAT's public address"
    );
    assert_ne!(
        ma.port(),
        mb.port(),
        "same local port on two hosts needs two public ports"
    );
    let via_public = punch(&a, mb.into(), &b, ma.into(), Duration::from_secs(1));
    assert!(
        !via_public.is_direct(),
        "plain masquerade must not hairpin: {via_public:?}"
    );

    let a = udp_socket(&h1, 43001).unwrap();
    let b = udp_socket(&h2, 43001).unwrap();
    let via_lan = punch(
        &a,
        SocketAddr::from((h2.ip(), 43001)),
        &b,
        SocketAddr::from((h1.ip(), 43001)),
        Duration::from_secs(2),
    );
    assert!(via_lan.is_direct(), "{via_lan:?}");
    assert_eq!(via_lan.a_heard, Some(SocketAddr::from((h2.ip(), 43001))));
    assert_eq!(via_lan.b_heard, Some(SocketAddr::from((h1.ip(), 43001))));
}

#[test]
fn delay_wire_adds_latency_and_carries_tcp_and_fragments_intact() {
    let _serial = lab::exclusive();
    let mut lab = Lab::new().unwrap();
    let public = public_side(&mut lab);
    let delay = Duration::from_millis(40);
    let (_, host) = site_with_host(
        &mut lab,
        "slow",
        NatProfile::PortRestricted,
        LinkCondition {
            delay,
            loss_percent: 0,
        },
    );

    // The wire sits between the router and the public segment: a round trip to a public
    // host crosses it twice. (A lower bound only: it is what the wire guarantees.)
    let sock = udp_socket(&host, 0).unwrap();
    let rtts: Vec<Duration> = (0..3)
        .map(|_| probe::round_trip(&sock, public.o1a.addr(), Duration::from_secs(2)).unwrap())
        .collect();
    for rtt in &rtts {
        assert!(
            *rtt >= 2 * delay,
            "round trip {rtt:?} shorter than twice the wire delay {delay:?}"
        );
    }

    // Large datagrams are fragmented by the host and must be reassembled correctly.
    let big: Vec<u8> = (0..6000u32).map(|i| (i * 7 % 251) as u8).collect();
    sock.send_to(&big, public.o1a.addr()).unwrap();
    let (echo, _) = recv_within(&sock, Duration::from_secs(2))
        .unwrap()
        .expect("fragmented echo");
    let (_, payload) = probe::parse_observation(&echo).unwrap();
    assert_eq!(payload, &big[..]);

    // TCP with offloads (partial checksums, GSO) through NAT and wire: bytes intact.
    let listener = public
        .obs1
        .netns()
        .run_in(|| TcpListener::bind("0.0.0.0:6000"))
        .unwrap()
        .unwrap();
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = data.clone();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        got
    });
    let obs_ip = public.obs1.ip();
    let mut client = host
        .netns()
        .run_in(move || TcpStream::connect((obs_ip, 6000)))
        .unwrap()
        .unwrap();
    client.write_all(&data).unwrap();
    drop(client);
    let got = server.join().unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "TCP payload corrupted across the wire");
    // The frames really went through the wire (GSO frames carry up to 64 KiB each).
    let forwarded: u64 = lab
        .wire_stats()
        .iter()
        .map(|s| s.forwarded.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert!(forwarded >= 64, "only {forwarded} frames crossed the wire");
}

/// Sends `n` numbered datagrams to the reflector and counts distinct echoes. Echoes are
/// read while sending, so the socket's receive buffer never overflows.
fn echo_count(sock: &std::net::UdpSocket, observer: SocketAddrV4, n: u32) -> usize {
    // Warm up first: ARP resolution across a lossy link can take a retransmit (1 s), and
    // the kernel queues only a few packets meanwhile.
    observe(sock, observer, Duration::from_secs(10)).unwrap();
    while recv_within(sock, Duration::from_millis(100))
        .unwrap()
        .is_some()
    {}
    let reader = sock.try_clone().unwrap();
    let collector = std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        while let Some((datagram, _)) = recv_within(&reader, Duration::from_millis(500)).unwrap() {
            if let Some((_, payload)) = probe::parse_observation(&datagram) {
                seen.insert(payload.to_vec());
            }
        }
        seen.len()
    });
    for i in 0..n {
        sock.send_to(format!("seq {i}").as_bytes(), observer)
            .unwrap();
        std::thread::sleep(Duration::from_micros(500));
    }
    collector.join().unwrap()
}

#[test]
fn loss_drops_a_share_of_packets_in_each_direction() {
    let _serial = lab::exclusive();
    let mut lab = Lab::new().unwrap();
    let public = public_side(&mut lab);
    let (_, lossy) = site_with_host(
        &mut lab,
        "lossy",
        NatProfile::PortRestricted,
        LinkCondition::IDEAL.with_loss(30),
    );
    let (_, clean) = site_with_host(
        &mut lab,
        "clean",
        NatProfile::PortRestricted,
        LinkCondition::IDEAL,
    );
    let (_, both) = site_with_host(
        &mut lab,
        "both",
        NatProfile::None,
        LinkCondition::delay_ms(5).with_loss(30),
    );
    let n = 400;

    let clean_echoes = echo_count(&udp_socket(&clean, 0).unwrap(), public.o1a.addr(), n);
    assert!(
        clean_echoes as u32 >= n - 5,
        "no loss configured, yet only {clean_echoes}/{n} echoes"
    );

    // 30 % each way: about 49 % of round trips survive. Bounds are > 8 standard deviations wide.
    for (name, host) in [("loss only", &lossy), ("loss + delay", &both)] {
        let echoes = echo_count(&udp_socket(host, 0).unwrap(), public.o1a.addr(), n);
        let share = echoes as f64 / f64::from(n);
        eprintln!("{name}: {echoes}/{n} round trips survived");
        assert!(
            (0.25..=0.75).contains(&share),
            "{name}: {echoes}/{n} echoes with 30 % loss each way"
        );
    }
}

#[test]
fn lab_cleans_up_on_drop_and_sweeps_a_killed_run() {
    let _serial = lab::exclusive();
    // Drop: namespaces gone and processes inside them killed.
    let mut lab = Lab::new().unwrap();
    let (_, host) = site_with_host(&mut lab, "c", NatProfile::Cgnat, LinkCondition::delay_ms(5));
    let names = lab.namespace_names();
    assert!(names.len() >= 5, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with(&lab.prefix())));
    let mut sleeper = host.netns().command("sleep").arg("600").spawn().unwrap();
    drop(lab);
    let left = lab_namespaces();
    assert!(
        names.iter().all(|n| !left.contains(n)),
        "left behind: {left:?}"
    );
    let status = sleeper.wait().unwrap();
    assert!(
        !status.success(),
        "process inside the lab should have been killed"
    );

    // A live lab's namespaces survive another lab's startup sweep.
    let live = Lab::new().unwrap();
    let other = Lab::new().unwrap();
    assert!(lab_namespaces().contains(&live.namespace_names()[0]));
    drop(other);
    drop(live);

    // SIGKILL: a separate process builds a lab and is killed; the next lab sweeps it.
    let mut held = Command::new(env!("CARGO_BIN_EXE_chatr-natlab"))
        .arg("--hold")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(held.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let prefix = line
        .trim()
        .strip_prefix("HOLDING ")
        .unwrap_or_else(|| panic!("unexpected: {line:?}"))
        .to_owned();
    assert!(
        lab_namespaces().iter().any(|n| n.starts_with(&prefix)),
        "held lab not built"
    );
    held.kill().unwrap();
    held.wait().unwrap();
    let next = Lab::new().unwrap();
    let left = lab_namespaces();
    assert!(
        left.iter().all(|n| !n.starts_with(&prefix)),
        "killed run's namespaces survived the sweep: {left:?}"
    );
    drop(next);
}

#[test]
fn public_segment_neighbours_are_resolved_from_the_start() {
    let _serial = lab::exclusive();
    let mut lab = Lab::new().unwrap();
    let server = lab.add_public_host("srv").unwrap();
    let link = LinkCondition::delay_ms(5);
    let (site_a, _) = site_with_host(&mut lab, "a", NatProfile::PortRestricted, link);
    let (site_b, host_b) = site_with_host(&mut lab, "b", NatProfile::Cgnat, link);
    let (site_c, host_c) = site_with_host(&mut lab, "c", NatProfile::None, link);
    let outer = |site: &Site| site.routers().last().unwrap().clone();

    // Like routers on a real internet segment: every next hop on the public segment is
    // already resolved (no ARP across the delay wires before the first datagram), in
    // both directions and for members added later too.
    let public: Vec<(String, std::net::Ipv4Addr)> = vec![
        ("srv".into(), server.ip()),
        ("a".into(), site_a.public_ip().unwrap()),
        ("b".into(), site_b.public_ip().unwrap()),
        ("c".into(), public_ip(&site_c, &host_c)),
    ];
    let tables = [
        ("srv", server.netns().ip(&["neigh", "show"]).unwrap()),
        ("a", outer(&site_a).ip(&["neigh", "show"]).unwrap()),
        ("b", outer(&site_b).ip(&["neigh", "show"]).unwrap()),
        ("c", host_c.netns().ip(&["neigh", "show"]).unwrap()),
    ];
    for (name, table) in &tables {
        for (other, ip) in public.iter().filter(|(n, _)| n != name) {
            let entry = format!("{ip} ");
            assert!(
                table
                    .lines()
                    .any(|l| l.starts_with(&entry) && l.trim_end().ends_with("PERMANENT")),
                "{name} has no permanent neighbour entry for {other} ({ip}):\n{table}"
            );
        }
    }
    // The entries point at the right interfaces: a probe crosses on the first try.
    let sock = udp_socket(&host_b, 0).unwrap();
    let observer = Observer::start(&server, 3478).unwrap();
    probe::round_trip(&sock, observer.addr(), Duration::from_secs(2)).unwrap();
}
