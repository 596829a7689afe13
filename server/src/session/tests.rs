//! Deterministic tests of the session machine: injected instants, a seeded
//! RNG, no sockets, no sleeping.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatr_proto::{
    DisconnectReason, Endpoint, Packet, PacketClientInfo, PacketConnect, PacketConnected,
    PacketConnectionRequest, PacketConnectionRequestAccept, PacketConnectionRequestDenied,
    PacketDisconnect, PacketPing, PacketPong, channel_binding_message,
};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand::SeedableRng;
use rand::rngs::StdRng;
use uuid::Uuid;

use super::machine::Session;
use super::*;
use crate::metrics::Metrics;

const EXPORTER: [u8; 32] = [0x42; 32];
const SEC: Duration = Duration::from_secs(1);

struct MapKeys(HashMap<Uuid, VerifyingKey>);

impl KeyLookup for MapKeys {
    fn lookup(&self, uuid: &Uuid) -> Option<VerifyingKey> {
        self.0.get(uuid).copied()
    }
}

fn me() -> Uuid {
    Uuid::from_bytes([0xA; 16])
}
fn peer() -> Uuid {
    Uuid::from_bytes([0xB; 16])
}
fn other() -> Uuid {
    Uuid::from_bytes([0xC; 16])
}
fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}

fn config() -> SessionConfig {
    SessionConfig {
        timings: crate::config::Timings::default(),
        require_channel_binding: false,
        requests_per_second: 1,
        request_burst: 2,
        max_pending_requests: 3,
        incoming_requests_per_second: 2,
        incoming_request_burst: 4,
        nat_probe_ports: Vec::new(),
        udp_token_prefix: None,
        presence: false,
        presence_rate: 1,
        presence_burst: 3,
    }
}

fn session_with(t0: Instant, config: SessionConfig) -> Session {
    let mut keys = HashMap::new();
    keys.insert(me(), signing_key().verifying_key());
    Session::new(
        t0,
        Some(EXPORTER),
        config,
        Arc::new(MapKeys(keys)),
        Arc::new(Metrics::default()),
        StdRng::seed_from_u64(7),
    )
}

fn session(t0: Instant) -> Session {
    session_with(t0, config())
}

fn drain(s: &mut Session) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn disconnect(reason: DisconnectReason) -> Vec<Action> {
    vec![
        Action::Send(Packet::Disconnect(PacketDisconnect {
            message: reason.as_str().into(),
        })),
        Action::Close,
    ]
}

fn connect_v2(uuid: Uuid) -> Packet {
    let sig = signing_key().sign(&channel_binding_message(&uuid, &EXPORTER));
    Packet::Connect(PacketConnect {
        version: 2,
        uuid,
        signature: sig.to_bytes().to_vec(),
    })
}

fn connect_v1(uuid: Uuid) -> Packet {
    let sig = signing_key().sign(uuid.as_bytes());
    Packet::Connect(PacketConnect {
        version: 1,
        uuid,
        signature: sig.to_bytes().to_vec(),
    })
}

fn ep(s: &str) -> Endpoint {
    Endpoint::new(s.parse::<SocketAddr>().unwrap())
}

/// Logs in with `connect` at `t`, the hub admitting; returns the Connected packet.
fn login(s: &mut Session, t: Instant, connect: Packet) -> PacketConnected {
    s.handle_packet(t, connect);
    let actions = drain(s);
    let [Action::Claim(claim)] = actions.as_slice() else {
        panic!("expected a claim, got {actions:?}");
    };
    assert_eq!(claim.uuid, me());
    s.handle_claim(t, ClaimOutcome::Admitted);
    match drain(s).as_slice() {
        [Action::Send(Packet::Connected(c))] => c.clone(),
        other => panic!("expected Connected, got {other:?}"),
    }
}

fn logged_in(t0: Instant) -> Session {
    let mut s = session(t0);
    login(&mut s, t0, connect_v2(me()));
    s
}

fn peer_event(from: Uuid, event: PeerEvent) -> HubEvent {
    HubEvent::Peer {
        from,
        endpoints: PeerEndpoints {
            tcp: "198.51.100.2:443".parse().unwrap(),
            udp: Some("198.51.100.2:50000".parse().unwrap()),
            v3: false,
        },
        event,
    }
}

fn request(target: Uuid) -> Packet {
    Packet::ConnectionRequest(PacketConnectionRequest {
        uuid: target,
        private_endpoint: ep("10.0.0.5:7000"),
        hints: None,
    })
}

// ----- login -----

#[test]
fn first_packet_must_be_connect() {
    let t0 = Instant::now();
    for first in [
        Packet::Pong(PacketPong { ping_id: 1 }),
        request(peer()),
        Packet::Connected(PacketConnected::default()),
    ] {
        let mut s = session(t0);
        s.handle_packet(t0, first);
        assert_eq!(drain(&mut s), disconnect(DisconnectReason::InvalidPacket));
        assert!(s.is_closed());
        // Nothing after close.
        s.handle_packet(t0, connect_v2(me()));
        assert!(drain(&mut s).is_empty());
    }
}

#[test]
fn unknown_uuid_and_bad_signature_fail_to_verify() {
    let t0 = Instant::now();
    let mut s = session(t0);
    s.handle_packet(t0, connect_v2(other()));
    assert_eq!(drain(&mut s), disconnect(DisconnectReason::FailedToVerify));

    let mut s = session(t0);
    let Packet::Connect(mut c) = connect_v2(me()) else {
        unreachable!()
    };
    c.signature[0] ^= 1;
    s.handle_packet(t0, Packet::Connect(c));
    assert_eq!(drain(&mut s), disconnect(DisconnectReason::FailedToVerify));

    let mut s = session(t0);
    s.handle_packet(
        t0,
        Packet::Connect(PacketConnect {
            version: 2,
            uuid: me(),
            signature: vec![1, 2, 3],
        }),
    );
    assert_eq!(drain(&mut s), disconnect(DisconnectReason::FailedToVerify));
}

#[test]
fn v2_signature_from_another_connection_is_refused() {
    let t0 = Instant::now();
    let mut keys = HashMap::new();
    keys.insert(me(), signing_key().verifying_key());
    let mut s = Session::new(
        t0,
        Some([0x43; 32]), // a different TLS connection
        config(),
        Arc::new(MapKeys(keys)),
        Arc::new(Metrics::default()),
        StdRng::seed_from_u64(1),
    );
    s.handle_packet(t0, connect_v2(me()));
    assert_eq!(drain(&mut s), disconnect(DisconnectReason::FailedToVerify));
}

#[test]
fn v2_login_gets_a_udp_token_and_v1_gets_the_spec_layout() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let connected = login(&mut s, t0, connect_v2(me()));
    assert!(connected.udp_token.is_some());
    assert_eq!(s.layout(), Some(Layout::Extended));
    assert_eq!(s.uuid(), Some(me()));

    let mut s = session(t0);
    let connected = login(&mut s, t0, connect_v1(me()));
    assert_eq!(connected.udp_token, None);
    assert_eq!(s.layout(), Some(Layout::Spec));
}

#[test]
fn udp_tokens_differ_between_sessions() {
    let t0 = Instant::now();
    let mut a = session_with(t0, config());
    let mut b = Session::new(
        t0,
        Some(EXPORTER),
        config(),
        Arc::new(MapKeys(HashMap::from([(
            me(),
            signing_key().verifying_key(),
        )]))),
        Arc::new(Metrics::default()),
        StdRng::seed_from_u64(8),
    );
    let ta = login(&mut a, t0, connect_v2(me())).udp_token;
    let tb = login(&mut b, t0, connect_v2(me())).udp_token;
    assert_ne!(ta, tb);
}

#[test]
fn channel_binding_can_be_required() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.require_channel_binding = true;
    let mut s = session_with(t0, cfg.clone());
    s.handle_packet(t0, connect_v1(me()));
    assert_eq!(drain(&mut s), disconnect(DisconnectReason::FailedToVerify));
    let mut s = session_with(t0, cfg);
    assert!(login(&mut s, t0, connect_v2(me())).udp_token.is_some());
}

#[test]
fn connect_after_login_is_invalid() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_packet(t0 + SEC, connect_v2(me()));
    assert_eq!(drain(&mut s), disconnect(DisconnectReason::InvalidPacket));
}

#[test]
fn server_side_packets_from_the_client_are_invalid() {
    let t0 = Instant::now();
    for packet in [
        Packet::Ping(PacketPing { ping_id: 1 }),
        Packet::Connected(PacketConnected::default()),
        Packet::ClientInfo(PacketClientInfo {
            uuid: peer(),
            public_endpoint: ep("1.2.3.4:5"),
            tcp_endpoint: None,
            link_secret: None,
            relay_id: None,
        }),
    ] {
        let mut s = logged_in(t0);
        s.handle_packet(t0, packet);
        assert_eq!(drain(&mut s), disconnect(DisconnectReason::InvalidPacket));
    }
}

#[test]
fn malformed_frame_is_invalid_packet() {
    let t0 = Instant::now();
    let mut s = session(t0);
    s.handle_malformed(t0);
    assert_eq!(drain(&mut s), disconnect(DisconnectReason::InvalidPacket));
}

#[test]
fn client_disconnect_closes_silently() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_packet(
        t0,
        Packet::Disconnect(PacketDisconnect {
            message: "bye".into(),
        }),
    );
    assert_eq!(drain(&mut s), vec![Action::Close]);
}

#[test]
fn login_timeout_drops_without_a_word() {
    let t0 = Instant::now();
    let mut s = session(t0);
    assert_eq!(s.poll_timeout(), Some(t0 + 10 * SEC));
    s.handle_timeout(t0 + 9 * SEC);
    assert!(drain(&mut s).is_empty());
    s.handle_timeout(t0 + 10 * SEC);
    assert_eq!(drain(&mut s), vec![Action::Close]);
}

#[test]
fn login_deadline_no_longer_applies_after_login() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    // First ping is due at t0 + 5 s; nothing closes the session at t0 + 10 s
    // as long as pongs come back.
    s.handle_timeout(t0 + 5 * SEC);
    let ping = match drain(&mut s).as_slice() {
        [Action::Send(Packet::Ping(p))] => p.ping_id,
        other => panic!("{other:?}"),
    };
    s.handle_packet(t0 + 6 * SEC, Packet::Pong(PacketPong { ping_id: ping }));
    s.handle_timeout(t0 + 10 * SEC);
    assert!(drain(&mut s).is_empty());
    assert!(!s.is_closed());
}

// ----- duplicate UUID -----

#[test]
fn duplicate_uuid_probes_then_refuses_a_live_session() {
    let t0 = Instant::now();
    let mut s = session(t0);
    s.handle_packet(t0, connect_v2(me()));
    assert!(matches!(drain(&mut s).as_slice(), [Action::Claim(_)]));
    s.handle_claim(t0, ClaimOutcome::Occupied);
    assert_eq!(drain(&mut s), vec![Action::Probe { uuid: me() }]);
    assert!(!s.wants_packets());
    assert_eq!(s.poll_timeout(), Some(t0 + 2 * SEC));
    s.handle_probe_result(t0 + SEC, true);
    assert_eq!(
        drain(&mut s),
        disconnect(DisconnectReason::AlreadyConnected)
    );
}

#[test]
fn duplicate_uuid_takes_over_a_dead_session() {
    let t0 = Instant::now();
    let mut s = session(t0);
    s.handle_packet(t0, connect_v2(me()));
    let claim = match drain(&mut s).as_slice() {
        [Action::Claim(c)] => c.clone(),
        other => panic!("{other:?}"),
    };
    s.handle_claim(t0, ClaimOutcome::Occupied);
    drain(&mut s);
    // No answer within the probe window.
    s.handle_timeout(t0 + SEC);
    assert!(drain(&mut s).is_empty());
    s.handle_timeout(t0 + 2 * SEC);
    assert_eq!(drain(&mut s), vec![Action::TakeOver(claim.clone())]);
    s.handle_claim(t0 + 2 * SEC, ClaimOutcome::Admitted);
    assert_eq!(
        drain(&mut s),
        vec![Action::Send(Packet::Connected(PacketConnected {
            udp_token: claim.udp_token,
            session: None,
        }))]
    );
}

#[test]
fn takeover_losing_the_race_is_already_connected() {
    let t0 = Instant::now();
    let mut s = session(t0);
    s.handle_packet(t0, connect_v2(me()));
    drain(&mut s);
    s.handle_claim(t0, ClaimOutcome::Occupied);
    drain(&mut s);
    s.handle_probe_result(t0, false);
    assert!(matches!(drain(&mut s).as_slice(), [Action::TakeOver(_)]));
    s.handle_claim(t0, ClaimOutcome::Occupied);
    assert_eq!(
        drain(&mut s),
        disconnect(DisconnectReason::AlreadyConnected)
    );
}

#[test]
fn probe_event_pings_at_once_and_pong_answers_it() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_hub_event(t0 + SEC, HubEvent::Probe);
    let id = match drain(&mut s).as_slice() {
        [Action::Send(Packet::Ping(p))] => p.ping_id,
        other => panic!("{other:?}"),
    };
    s.handle_packet(t0 + SEC, Packet::Pong(PacketPong { ping_id: id ^ 1 }));
    assert!(drain(&mut s).is_empty());
    s.handle_packet(t0 + SEC, Packet::Pong(PacketPong { ping_id: id }));
    assert_eq!(drain(&mut s), vec![Action::ProbeAnswered]);
}

// ----- ping / pong -----

#[test]
fn ping_every_interval_after_pong() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    assert_eq!(s.poll_timeout(), Some(t0 + 5 * SEC));
    s.handle_timeout(t0 + 5 * SEC);
    let first = match drain(&mut s).as_slice() {
        [Action::Send(Packet::Ping(p))] => p.ping_id,
        other => panic!("{other:?}"),
    };
    s.handle_packet(t0 + 7 * SEC, Packet::Pong(PacketPong { ping_id: first }));
    assert_eq!(s.poll_timeout(), Some(t0 + 12 * SEC));
    s.handle_timeout(t0 + 12 * SEC);
    let second = match drain(&mut s).as_slice() {
        [Action::Send(Packet::Ping(p))] => p.ping_id,
        other => panic!("{other:?}"),
    };
    assert_ne!(first, second, "ping ids are random");
}

#[test]
fn no_matching_pong_times_out_and_other_ids_are_ignored() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_timeout(t0 + 5 * SEC);
    let id = match drain(&mut s).as_slice() {
        [Action::Send(Packet::Ping(p))] => p.ping_id,
        other => panic!("{other:?}"),
    };
    s.handle_packet(
        t0 + 6 * SEC,
        Packet::Pong(PacketPong {
            ping_id: id.wrapping_add(1),
        }),
    );
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.poll_timeout(), Some(t0 + 20 * SEC));
    s.handle_timeout(t0 + 19 * SEC);
    assert!(drain(&mut s).is_empty());
    s.handle_timeout(t0 + 20 * SEC);
    assert_eq!(drain(&mut s), disconnect(DisconnectReason::TimeOut));
}

// ----- brokering: requester side -----

#[test]
fn request_is_forwarded_with_the_private_endpoint() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_packet(t0, request(peer()));
    assert_eq!(
        drain(&mut s),
        vec![Action::Forward {
            to: peer(),
            event: PeerEvent::Request {
                private_endpoint: ep("10.0.0.5:7000"),
                hints: None
            }
        }]
    );
}

#[test]
fn offline_target_is_denied() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_packet(t0, request(peer()));
    let Some(Action::Forward { event, .. }) = drain(&mut s).pop() else {
        panic!()
    };
    s.handle_hub_event(t0, HubEvent::Undeliverable { to: peer(), event });
    assert_eq!(
        drain(&mut s),
        vec![Action::Send(Packet::ConnectionRequestDenied(
            PacketConnectionRequestDenied { uuid: peer() }
        ))]
    );
}

#[test]
fn request_to_self_is_denied() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_packet(t0, request(me()));
    assert_eq!(
        drain(&mut s),
        vec![Action::Send(Packet::ConnectionRequestDenied(
            PacketConnectionRequestDenied { uuid: me() }
        ))]
    );
}

#[test]
fn requests_are_rate_limited() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    // Burst of 2, then 1 per second.
    for target in [peer(), other()] {
        s.handle_packet(t0, request(target));
        assert!(matches!(drain(&mut s).as_slice(), [Action::Forward { .. }]));
    }
    let third = Uuid::from_bytes([0xD; 16]);
    s.handle_packet(t0, request(third));
    assert_eq!(
        drain(&mut s),
        vec![Action::Send(Packet::ConnectionRequestDenied(
            PacketConnectionRequestDenied { uuid: third }
        ))]
    );
    s.handle_packet(t0 + SEC, request(third));
    assert!(matches!(drain(&mut s).as_slice(), [Action::Forward { .. }]));
    // A repeat still costs a token (it is refused when the bucket is empty)…
    s.handle_packet(t0 + SEC, request(peer()));
    assert_eq!(
        drain(&mut s),
        vec![Action::Send(Packet::ConnectionRequestDenied(
            PacketConnectionRequestDenied { uuid: peer() }
        ))]
    );
}

#[test]
fn pending_requests_are_capped() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.request_burst = 10;
    cfg.max_pending_requests = 2;
    let mut s = session_with(t0, cfg);
    login(&mut s, t0, connect_v2(me()));
    for target in [peer(), other()] {
        s.handle_packet(t0, request(target));
        assert!(matches!(drain(&mut s).as_slice(), [Action::Forward { .. }]));
    }
    let third = Uuid::from_bytes([0xD; 16]);
    s.handle_packet(t0, request(third));
    assert_eq!(
        drain(&mut s),
        vec![Action::Send(Packet::ConnectionRequestDenied(
            PacketConnectionRequestDenied { uuid: third }
        ))]
    );
    // Repeating a pending request is not a new one: it is collapsed into it (its
    // clock restarts, nothing is forwarded again).
    s.handle_packet(t0, request(peer()));
    assert!(drain(&mut s).is_empty());
}

#[test]
fn a_repeated_request_reaches_the_target_once_and_restarts_its_clock() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.request_burst = 100;
    let mut s = session_with(t0, cfg);
    login(&mut s, t0, connect_v2(me()));
    s.handle_packet(t0, request(peer()));
    assert!(matches!(drain(&mut s).as_slice(), [Action::Forward { .. }]));
    for i in 1..50 {
        s.handle_packet(t0 + SEC * i / 10, request(peer()));
        assert!(drain(&mut s).is_empty());
    }
    // The expiry counts from the last repeat (t0 + 4.9 s), not from the first.
    s.handle_timeout(t0 + 30 * SEC + SEC / 2);
    assert!(
        !drain(&mut s).contains(&Action::Send(Packet::ConnectionRequestDenied(
            PacketConnectionRequestDenied { uuid: peer() }
        )))
    );
}

#[test]
fn requests_to_one_client_are_shown_once_per_sender_and_rate_limited_for_all() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    // The same sender again: shown once.
    for _ in 0..3 {
        s.handle_hub_event(
            t0,
            peer_event(
                peer(),
                PeerEvent::Request {
                    private_endpoint: ep("10.0.0.9:1"),
                    hints: None,
                },
            ),
        );
    }
    let shown = drain(&mut s);
    assert_eq!(shown.len(), 1, "{shown:?}");
    // Many senders at once: the target's own budget (burst 4, here one used) caps
    // what reaches its client; the rest are denied on its behalf.
    let mut forwarded_denials = 0;
    let mut shown = 1;
    for n in 0..20u8 {
        s.handle_hub_event(
            t0,
            peer_event(
                Uuid::from_bytes([0x40 + n; 16]),
                PeerEvent::Request {
                    private_endpoint: ep("10.0.0.9:1"),
                    hints: None,
                },
            ),
        );
        for action in drain(&mut s) {
            match action {
                Action::Send(Packet::ConnectionRequest(_)) => shown += 1,
                Action::Forward {
                    event: PeerEvent::Denied,
                    ..
                } => forwarded_denials += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    // max_pending_requests (3) is the tighter cap here.
    assert_eq!(shown, 3);
    assert_eq!(forwarded_denials, 18);
}

#[test]
fn unanswered_request_expires_as_denied_and_late_accept_is_dropped() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_packet(t0 + SEC, request(peer()));
    drain(&mut s);
    // Keep pings answered so only the request matters.
    assert_eq!(s.poll_timeout(), Some(t0 + 5 * SEC));
    s.handle_timeout(t0 + 5 * SEC);
    let id = match drain(&mut s).as_slice() {
        [Action::Send(Packet::Ping(p))] => p.ping_id,
        other => panic!("{other:?}"),
    };
    s.handle_packet(t0 + 5 * SEC, Packet::Pong(PacketPong { ping_id: id }));
    s.handle_timeout(t0 + 30 * SEC);
    // 30 s request timeout from t0 + 1 s: not yet (the ping is due, though).
    let actions = drain(&mut s);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Send(Packet::ConnectionRequestDenied(_))))
    );
    s.handle_timeout(t0 + 31 * SEC);
    assert!(
        drain(&mut s).contains(&Action::Send(Packet::ConnectionRequestDenied(
            PacketConnectionRequestDenied { uuid: peer() }
        )))
    );
    s.handle_hub_event(
        t0 + 32 * SEC,
        peer_event(
            peer(),
            PeerEvent::Accepted {
                private_endpoint: ep("10.0.0.9:1"),
                hints: None,
            },
        ),
    );
    assert!(drain(&mut s).is_empty());
}

#[test]
fn accept_reaches_requester_with_client_info_and_shared_secret() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_packet(t0, request(peer()));
    drain(&mut s);
    s.handle_hub_event(
        t0 + SEC,
        peer_event(
            peer(),
            PeerEvent::Accepted {
                private_endpoint: ep("10.0.0.9:9000"),
                hints: None,
            },
        ),
    );
    let actions = drain(&mut s);
    let [
        Action::Send(Packet::ConnectionRequestAccept(accept)),
        Action::Send(Packet::ClientInfo(info)),
        Action::Forward {
            to,
            event:
                PeerEvent::ClientInfo {
                    link_secret,
                    relay_id: None,
                },
        },
    ] = actions.as_slice()
    else {
        panic!("{actions:?}");
    };
    assert_eq!(
        accept,
        &PacketConnectionRequestAccept {
            uuid: peer(),
            private_endpoint: ep("10.0.0.9:9000"),
            hints: None
        }
    );
    assert_eq!(info.uuid, peer());
    // UDP-observed endpoint preferred, TCP one as the extension.
    assert_eq!(info.public_endpoint, ep("198.51.100.2:50000"));
    assert_eq!(info.tcp_endpoint, Some(ep("198.51.100.2:443")));
    assert_eq!(info.link_secret, Some(*link_secret));
    assert_eq!(*to, peer());
    // A second accept for the same request is dropped.
    s.handle_hub_event(
        t0 + SEC,
        peer_event(
            peer(),
            PeerEvent::Accepted {
                private_endpoint: ep("10.0.0.9:9000"),
                hints: None,
            },
        ),
    );
    assert!(drain(&mut s).is_empty());
}

#[test]
fn denial_reaches_requester_naming_the_target() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_packet(t0, request(peer()));
    drain(&mut s);
    s.handle_hub_event(t0, peer_event(peer(), PeerEvent::Denied));
    assert_eq!(
        drain(&mut s),
        vec![Action::Send(Packet::ConnectionRequestDenied(
            PacketConnectionRequestDenied { uuid: peer() }
        ))]
    );
    // A denial for nothing pending is dropped.
    s.handle_hub_event(t0, peer_event(other(), PeerEvent::Denied));
    assert!(drain(&mut s).is_empty());
}

// ----- brokering: target side -----

#[test]
fn incoming_request_is_shown_and_only_pending_ones_can_be_answered() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_hub_event(
        t0,
        peer_event(
            peer(),
            PeerEvent::Request {
                private_endpoint: ep("10.1.1.1:7000"),
                hints: None,
            },
        ),
    );
    assert_eq!(
        drain(&mut s),
        vec![Action::Send(Packet::ConnectionRequest(
            PacketConnectionRequest {
                uuid: peer(),
                private_endpoint: ep("10.1.1.1:7000"),
                hints: None
            }
        ))]
    );
    // Answering someone who did not ask: dropped, nobody learns anything.
    s.handle_packet(
        t0,
        Packet::ConnectionRequestAccept(PacketConnectionRequestAccept {
            uuid: other(),
            private_endpoint: ep("10.2.2.2:1"),
            hints: None,
        }),
    );
    s.handle_packet(
        t0,
        Packet::ConnectionRequestDenied(PacketConnectionRequestDenied { uuid: other() }),
    );
    assert!(drain(&mut s).is_empty());
    s.handle_packet(
        t0,
        Packet::ConnectionRequestAccept(PacketConnectionRequestAccept {
            uuid: peer(),
            private_endpoint: ep("10.2.2.2:7001"),
            hints: None,
        }),
    );
    assert_eq!(
        drain(&mut s),
        vec![Action::Forward {
            to: peer(),
            event: PeerEvent::Accepted {
                private_endpoint: ep("10.2.2.2:7001"),
                hints: None
            }
        }]
    );
    // Already answered.
    s.handle_packet(
        t0,
        Packet::ConnectionRequestDenied(PacketConnectionRequestDenied { uuid: peer() }),
    );
    assert!(drain(&mut s).is_empty());
}

#[test]
fn target_denial_is_forwarded() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_hub_event(
        t0,
        peer_event(
            peer(),
            PeerEvent::Request {
                private_endpoint: ep("10.1.1.1:7000"),
                hints: None,
            },
        ),
    );
    drain(&mut s);
    s.handle_packet(
        t0,
        Packet::ConnectionRequestDenied(PacketConnectionRequestDenied { uuid: peer() }),
    );
    assert_eq!(
        drain(&mut s),
        vec![Action::Forward {
            to: peer(),
            event: PeerEvent::Denied
        }]
    );
}

#[test]
fn incoming_request_expires() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_hub_event(
        t0,
        peer_event(
            peer(),
            PeerEvent::Request {
                private_endpoint: ep("10.1.1.1:7000"),
                hints: None,
            },
        ),
    );
    drain(&mut s);
    s.handle_timeout(t0 + 30 * SEC);
    drain(&mut s);
    s.handle_packet(
        t0 + 30 * SEC,
        Packet::ConnectionRequestAccept(PacketConnectionRequestAccept {
            uuid: peer(),
            private_endpoint: ep("10.2.2.2:7001"),
            hints: None,
        }),
    );
    assert!(drain(&mut s).is_empty());
}

#[test]
fn too_many_incoming_requests_are_denied_on_behalf_of_the_target() {
    let t0 = Instant::now();
    let mut s = logged_in(t0); // max_pending_requests = 3
    for n in 0..3u8 {
        s.handle_hub_event(
            t0,
            peer_event(
                Uuid::from_bytes([0x50 + n; 16]),
                PeerEvent::Request {
                    private_endpoint: ep("10.1.1.1:7000"),
                    hints: None,
                },
            ),
        );
        assert!(matches!(
            drain(&mut s).as_slice(),
            [Action::Send(Packet::ConnectionRequest(_))]
        ));
    }
    s.handle_hub_event(
        t0,
        peer_event(
            peer(),
            PeerEvent::Request {
                private_endpoint: ep("10.1.1.1:7000"),
                hints: None,
            },
        ),
    );
    assert_eq!(
        drain(&mut s),
        vec![Action::Forward {
            to: peer(),
            event: PeerEvent::Denied
        }]
    );
}

#[test]
fn client_info_from_peer_uses_tcp_when_no_udp_binding() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_hub_event(
        t0,
        HubEvent::Peer {
            from: peer(),
            endpoints: PeerEndpoints {
                tcp: "198.51.100.2:443".parse().unwrap(),
                udp: None,
                v3: false,
            },
            event: PeerEvent::ClientInfo {
                link_secret: [9; 32],
                relay_id: None,
            },
        },
    );
    assert_eq!(
        drain(&mut s),
        vec![Action::Send(Packet::ClientInfo(PacketClientInfo {
            uuid: peer(),
            public_endpoint: ep("198.51.100.2:443"),
            tcp_endpoint: Some(ep("198.51.100.2:443")),
            link_secret: Some([9; 32]),
            relay_id: None,
        }))]
    );
}

// ----- spec layout -----

#[test]
fn spec_client_never_gets_extension_fields() {
    let t0 = Instant::now();
    let mut s = session(t0);
    login(&mut s, t0, connect_v1(me()));
    s.handle_hub_event(
        t0,
        peer_event(
            peer(),
            PeerEvent::Request {
                private_endpoint: ep("10.1.1.1:7000"),
                hints: None,
            },
        ),
    );
    assert_eq!(
        drain(&mut s),
        vec![Action::Send(Packet::ConnectionRequest(
            PacketConnectionRequest {
                uuid: peer(),
                private_endpoint: Endpoint {
                    ip: "10.1.1.1".parse().unwrap(),
                    port: None
                },
                hints: None,
            }
        ))]
    );
    s.handle_packet(t0, request(other()));
    drain(&mut s);
    s.handle_hub_event(
        t0,
        peer_event(
            other(),
            PeerEvent::Accepted {
                private_endpoint: ep("10.3.3.3:7000"),
                hints: None,
            },
        ),
    );
    let actions = drain(&mut s);
    assert_eq!(
        actions.get(..2).unwrap(),
        &[
            Action::Send(Packet::ConnectionRequestAccept(
                PacketConnectionRequestAccept {
                    uuid: other(),
                    private_endpoint: Endpoint {
                        ip: "10.3.3.3".parse().unwrap(),
                        port: None
                    },
                    hints: None,
                }
            )),
            Action::Send(Packet::ClientInfo(PacketClientInfo {
                uuid: other(),
                public_endpoint: Endpoint {
                    ip: "198.51.100.2".parse().unwrap(),
                    port: None
                },
                tcp_endpoint: None,
                link_secret: None,
                relay_id: None,
            })),
        ]
    );
}

// ----- kicks -----

#[test]
fn kick_with_and_without_message() {
    let t0 = Instant::now();
    let mut s = logged_in(t0);
    s.handle_kick(t0, Some(DisconnectReason::ServerShuttingDown.as_str()));
    assert_eq!(
        drain(&mut s),
        disconnect(DisconnectReason::ServerShuttingDown)
    );
    s.handle_kick(t0, Some("again"));
    assert!(drain(&mut s).is_empty());

    let mut s = logged_in(t0);
    s.handle_kick(t0, None);
    assert_eq!(drain(&mut s), vec![Action::Close]);
}

// ----- version 3: session parameters and the relay -----

/// A relay broker that records what it was asked and opens what it is told to.
#[derive(Default)]
struct FakeRelays {
    allow: bool,
    opened: std::sync::Mutex<Vec<([Uuid; 2], chatr_proto::RelayId)>>,
    closed: std::sync::Mutex<Vec<(chatr_proto::RelayId, Uuid)>>,
}

impl crate::relay::RelayBroker for FakeRelays {
    fn features(&self) -> chatr_proto::SessionFeatures {
        chatr_proto::SessionFeatures::RELAY_UDP.with(chatr_proto::SessionFeatures::RELAY_TLS)
    }
    fn open(&self, parties: [Uuid; 2], id: chatr_proto::RelayId, _now: Instant) -> bool {
        self.opened.lock().unwrap().push((parties, id));
        self.allow
    }
    fn close(&self, id: chatr_proto::RelayId, by: Uuid) {
        self.closed.lock().unwrap().push((id, by));
    }
}

fn connect_v3(uuid: Uuid) -> Packet {
    let Packet::Connect(c) = connect_v2(uuid) else {
        unreachable!()
    };
    Packet::Connect(PacketConnect { version: 3, ..c })
}

fn v3_session(t0: Instant, relays: &Arc<FakeRelays>) -> Session {
    let mut cfg = config();
    cfg.nat_probe_ports = vec![7778, 7779];
    let relays: Arc<dyn crate::relay::RelayBroker> = relays.clone();
    session_with(t0, cfg).with_relays(relays)
}

fn v3_peer_event(from: Uuid, event: PeerEvent) -> HubEvent {
    let HubEvent::Peer {
        from, endpoints, ..
    } = peer_event(from, PeerEvent::Denied)
    else {
        unreachable!()
    };
    HubEvent::Peer {
        from,
        endpoints: PeerEndpoints {
            v3: true,
            ..endpoints
        },
        event,
    }
}

#[test]
fn v3_login_gets_the_session_parameters() {
    let t0 = Instant::now();
    let relays = Arc::new(FakeRelays::default());
    let mut s = v3_session(t0, &relays);
    let connected = login(&mut s, t0, connect_v3(me()));
    assert!(connected.udp_token.is_some());
    assert_eq!(
        connected.session,
        Some(chatr_proto::SessionParams {
            version: 3,
            features: crate::relay::RelayBroker::features(&*relays),
            nat_probe_ports: vec![7778, 7779],
        })
    );
    assert_eq!(s.layout(), Some(Layout::Version3));
    // A version-2 login on the same server gets none of it.
    let mut s = v3_session(t0, &relays);
    let connected = login(&mut s, t0, connect_v2(me()));
    assert_eq!(connected.session, None);
}

#[test]
fn an_accepted_exchange_between_v3_parties_is_relayed() {
    let t0 = Instant::now();
    let relays = Arc::new(FakeRelays {
        allow: true,
        ..FakeRelays::default()
    });
    let mut s = v3_session(t0, &relays);
    login(&mut s, t0, connect_v3(me()));
    s.handle_packet(t0, request(peer()));
    drain(&mut s);
    s.handle_hub_event(
        t0,
        v3_peer_event(
            peer(),
            PeerEvent::Accepted {
                private_endpoint: ep("10.0.0.9:9000"),
                hints: None,
            },
        ),
    );
    let opened = relays.opened.lock().unwrap().clone();
    let [([initiator, responder], id)] = opened.as_slice() else {
        panic!("{opened:?}");
    };
    assert_eq!((*initiator, *responder), (me(), peer()));
    let actions = drain(&mut s);
    let [
        Action::Send(Packet::ConnectionRequestAccept(_)),
        Action::Send(Packet::ClientInfo(info)),
        Action::Forward {
            to,
            event: PeerEvent::ClientInfo { relay_id, .. },
        },
    ] = actions.as_slice()
    else {
        panic!("{actions:?}");
    };
    assert_eq!(info.relay_id, Some(*id));
    assert_eq!(*relay_id, Some(*id));
    assert_eq!(*to, peer());
}

#[test]
fn no_relay_for_a_v2_peer_or_when_the_broker_refuses() {
    let t0 = Instant::now();
    for (peer_v3, allow) in [(false, true), (true, false)] {
        let relays = Arc::new(FakeRelays {
            allow,
            ..FakeRelays::default()
        });
        let mut s = v3_session(t0, &relays);
        login(&mut s, t0, connect_v3(me()));
        s.handle_packet(t0, request(peer()));
        drain(&mut s);
        let accepted = PeerEvent::Accepted {
            private_endpoint: ep("10.0.0.9:9000"),
            hints: None,
        };
        let event = if peer_v3 {
            v3_peer_event(peer(), accepted)
        } else {
            peer_event(peer(), accepted)
        };
        s.handle_hub_event(t0, event);
        assert_eq!(relays.opened.lock().unwrap().len(), usize::from(peer_v3));
        let actions = drain(&mut s);
        assert!(
            actions.iter().any(|a| matches!(
                a,
                Action::Send(Packet::ClientInfo(PacketClientInfo { relay_id: None, .. }))
            )),
            "{actions:?}"
        );
    }
}

#[test]
fn a_v2_client_never_sees_a_relay_id() {
    let t0 = Instant::now();
    let relays = Arc::new(FakeRelays::default());
    let mut s = v3_session(t0, &relays);
    login(&mut s, t0, connect_v2(me()));
    s.handle_hub_event(
        t0,
        v3_peer_event(
            peer(),
            PeerEvent::ClientInfo {
                link_secret: [9; 32],
                relay_id: Some(chatr_proto::RelayId([5; 8])),
            },
        ),
    );
    let actions = drain(&mut s);
    let [Action::Send(Packet::ClientInfo(info))] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert_eq!(info.relay_id, None);
    assert_eq!(info.link_secret, Some([9; 32]));
}

#[test]
fn relay_packets_are_for_v3_sessions_only() {
    let t0 = Instant::now();
    let relays = Arc::new(FakeRelays::default());
    let data = chatr_proto::PacketRelayData {
        relay_id: chatr_proto::RelayId([5; 8]),
        datagram: vec![0x41, 1].into(),
    };
    let close = chatr_proto::PacketRelayClose {
        relay_id: chatr_proto::RelayId([5; 8]),
        reason: String::new(),
    };
    // Version 3: data is forwarded, a close goes to the broker.
    let mut s = v3_session(t0, &relays);
    login(&mut s, t0, connect_v3(me()));
    s.handle_packet(t0, Packet::RelayData(data.clone()));
    assert_eq!(drain(&mut s), vec![Action::Relay(data.clone())]);
    s.handle_packet(t0, Packet::RelayClose(close.clone()));
    assert!(drain(&mut s).is_empty());
    assert_eq!(
        *relays.closed.lock().unwrap(),
        vec![(chatr_proto::RelayId([5; 8]), me())]
    );
    // Version 2 and spec: the packets do not exist.
    for connect in [connect_v2(me()), connect_v1(me())] {
        for packet in [
            Packet::RelayData(data.clone()),
            Packet::RelayClose(close.clone()),
        ] {
            let mut s = v3_session(t0, &relays);
            login(&mut s, t0, connect.clone());
            s.handle_packet(t0, packet);
            assert_eq!(drain(&mut s), disconnect(DisconnectReason::InvalidPacket));
        }
    }
}

// ----- presence -----

fn presence_session(t0: Instant) -> Session {
    let mut cfg = config();
    cfg.presence = true;
    session_with(t0, cfg)
}

fn contacts(op: chatr_proto::ContactsOp, list: Vec<Uuid>) -> Packet {
    Packet::PresenceContacts(chatr_proto::PacketPresenceContacts { op, contacts: list })
}

#[test]
fn presence_is_offered_to_version3_only_and_its_packets_exist_only_then() {
    let t0 = Instant::now();
    let mut s = presence_session(t0);
    let connected = login(&mut s, t0, connect_v3(me()));
    let features = connected.session.unwrap().features;
    assert!(features.contains(chatr_proto::SessionFeatures::PRESENCE));
    s.handle_packet(t0, contacts(chatr_proto::ContactsOp::Add, vec![peer()]));
    assert_eq!(
        drain(&mut s),
        vec![Action::Presence(crate::session::PresenceAction::Contacts(
            chatr_proto::ContactsOp::Add,
            vec![peer()]
        ))]
    );
    // A version-2 session on the same server: the packet does not exist for it.
    let mut s = presence_session(t0);
    login(&mut s, t0, connect_v2(me()));
    s.handle_packet(t0, contacts(chatr_proto::ContactsOp::Add, vec![peer()]));
    assert_eq!(drain(&mut s), disconnect(DisconnectReason::InvalidPacket));
    // A version-3 session of a server with presence off: neither.
    let mut s = session(t0);
    let connected = login(&mut s, t0, connect_v3(me()));
    assert!(
        !connected
            .session
            .unwrap()
            .features
            .contains(chatr_proto::SessionFeatures::PRESENCE)
    );
    s.handle_packet(
        t0,
        Packet::PresenceStatus(chatr_proto::PacketPresenceStatus {
            status: chatr_proto::PresenceStatus::Away,
            message: String::new(),
        }),
    );
    assert_eq!(drain(&mut s), disconnect(DisconnectReason::InvalidPacket));
    // And PacketPresence is the server's to send.
    let mut s = presence_session(t0);
    login(&mut s, t0, connect_v3(me()));
    s.handle_packet(
        t0,
        Packet::Presence(chatr_proto::PacketPresence {
            uuid: peer(),
            status: chatr_proto::PresenceStatus::Available,
            message: String::new(),
        }),
    );
    assert_eq!(drain(&mut s), disconnect(DisconnectReason::InvalidPacket));
}

#[test]
fn a_presence_flood_ends_the_session_with_a_reason() {
    let t0 = Instant::now();
    let mut s = presence_session(t0);
    login(&mut s, t0, connect_v3(me()));
    // Burst 3, then 1 per second.
    for _ in 0..3 {
        s.handle_packet(t0, contacts(chatr_proto::ContactsOp::Add, vec![]));
        assert!(matches!(drain(&mut s).as_slice(), [Action::Presence(_)]));
    }
    s.handle_packet(
        t0 + Duration::from_secs(1),
        contacts(chatr_proto::ContactsOp::Add, vec![]),
    );
    assert!(matches!(drain(&mut s).as_slice(), [Action::Presence(_)]));
    s.handle_packet(
        t0 + Duration::from_secs(1),
        contacts(chatr_proto::ContactsOp::Add, vec![]),
    );
    assert_eq!(
        drain(&mut s),
        disconnect(DisconnectReason::TooManyPresenceUpdates)
    );
}

#[test]
fn presence_news_is_sent_then_acknowledged_with_our_own_uuid() {
    let t0 = Instant::now();
    let mut s = presence_session(t0);
    login(&mut s, t0, connect_v3(me()));
    let mut pending = crate::presence::PendingPresence::default();
    pending.updates.insert(
        peer(),
        crate::presence::PresenceState {
            status: chatr_proto::PresenceStatus::Busy,
            message: "call".into(),
        },
    );
    pending.ack = Some(crate::presence::PresenceState {
        status: chatr_proto::PresenceStatus::Available,
        message: String::new(),
    });
    s.handle_presence(t0, pending);
    assert_eq!(
        drain(&mut s),
        vec![
            Action::Send(Packet::Presence(chatr_proto::PacketPresence {
                uuid: peer(),
                status: chatr_proto::PresenceStatus::Busy,
                message: "call".into(),
            })),
            Action::Send(Packet::Presence(chatr_proto::PacketPresence {
                uuid: me(),
                status: chatr_proto::PresenceStatus::Available,
                message: String::new(),
            })),
        ]
    );
}

fn some_hints() -> chatr_proto::LinkHints {
    chatr_proto::LinkHints {
        nat: chatr_proto::NatHint {
            mapping: chatr_proto::NatMapping::DependentRandom,
            step: 0,
            last_port: Some(40_000),
        },
        candidates: vec![],
    }
}

#[test]
fn link_hints_travel_only_between_version_3_sessions() {
    let t0 = Instant::now();
    let relays = Arc::new(FakeRelays::default());
    let with_hints = |target: Uuid| {
        Packet::ConnectionRequest(PacketConnectionRequest {
            uuid: target,
            private_endpoint: ep("10.0.0.5:7000"),
            hints: Some(some_hints()),
        })
    };
    let forwarded_hints = |s: &mut Session| {
        drain(s).into_iter().find_map(|a| match a {
            Action::Forward {
                event: PeerEvent::Request { hints, .. },
                ..
            } => Some(hints),
            _ => None,
        })
    };
    // From a version-3 client: passed on.
    let mut v3 = v3_session(t0, &relays);
    login(&mut v3, t0, connect_v3(me()));
    v3.handle_packet(t0, with_hints(peer()));
    assert_eq!(forwarded_hints(&mut v3), Some(Some(some_hints())));
    // From a version-2 client (however it got them onto the wire): dropped.
    let mut v2 = session(t0);
    login(&mut v2, t0, connect_v2(me()));
    v2.handle_packet(t0, with_hints(peer()));
    assert_eq!(forwarded_hints(&mut v2), Some(None));

    // To a version-2 client: never sent.
    let event = |hints| PeerEvent::Request {
        private_endpoint: ep("10.0.0.9:1"),
        hints,
    };
    v2.handle_hub_event(t0, peer_event(other(), event(Some(some_hints()))));
    let sent = drain(&mut v2);
    assert!(
        sent.iter().any(|a| matches!(
            a,
            Action::Send(Packet::ConnectionRequest(PacketConnectionRequest {
                hints: None,
                ..
            }))
        )),
        "{sent:?}"
    );
    // To a version-3 client: sent.
    v3.handle_hub_event(t0, v3_peer_event(other(), event(Some(some_hints()))));
    let sent = drain(&mut v3);
    assert!(
        sent.iter().any(|a| matches!(
            a,
            Action::Send(Packet::ConnectionRequest(PacketConnectionRequest { hints: Some(h), .. })) if *h == some_hints()
        )),
        "{sent:?}"
    );
}
