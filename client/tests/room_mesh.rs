//! A 16-member room on loopback with the real server, clients, link pool and room
//! host: the creator's invitations reach members who had nothing stored, everyone
//! links with everyone, and every member gets every other member's messages exactly
//! once, in order. It also prints what the mesh costs (links and bytes per message,
//! beside a two-party chat message of the same text over the same kind of link); see
//! BENCHMARKS.md "Room mesh cost".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod session_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatr_client::Client;
use chatr_client::identity::Identity;
use chatr_client::link::StreamKind;
use chatr_client::peers::{KeyPolicy, Peers};
use chatr_client::room::host::{AcceptInvites, HostOptions};
use chatr_client::room::record::{Record, RecordBody};
use chatr_client::room::store::RoomStore;
use chatr_client::room::{RoomConfig, RoomEvent, RoomHost, RoomHostEvent, RoomId};
use ed25519_dalek::VerifyingKey;
use session_support::{TestServer, client_options};
use uuid::Uuid;

const MEMBERS: usize = 16;
const MESSAGES: usize = 5;
/// Everything below must happen within this (a liveness bound, not a speed check).
const PATIENCE: Duration = Duration::from_secs(120);

/// Everyone knows everyone's key (they are all contacts of each other).
struct AllKnown(HashMap<Uuid, VerifyingKey>);

impl KeyPolicy for AllKnown {
    fn key_for(&self, peer: &Uuid) -> Option<VerifyingKey> {
        self.0.get(peer).copied()
    }
}

struct Running {
    uuid: Uuid,
    client: Client,
    peers: Peers,
    host: RoomHost,
    events: Arc<Mutex<Vec<RoomHostEvent>>>,
    _home: tempfile::TempDir,
}

fn messages_from(events: &[RoomHostEvent], sender: Uuid) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            RoomHostEvent::Room {
                event: RoomEvent::Message(d),
                ..
            } if d.id.sender == sender => Some(d.text.clone()),
            _ => None,
        })
        .collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn udp_tx_bytes(peers: &Peers) -> u64 {
    peers
        .links()
        .iter()
        .map(|(_, l)| l.connection().stats().udp_tx.bytes)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_members_get_every_message_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let mut ids: Vec<Identity> = Vec::new();
    for _ in 0..MEMBERS {
        ids.push(server.registered_identity().await);
    }
    let keys: HashMap<Uuid, VerifyingKey> =
        ids.iter().map(|i| (i.uuid(), i.verifying_key())).collect();
    let policy = Arc::new(AllKnown(keys));

    // The creator's room: a genesis and an invitation for each of the 15 others. Only
    // the creator stores it; the others learn of it when the creator reaches them.
    let creator = &ids[0];
    let genesis = Record::genesis(
        "mesh",
        rand::random(),
        creator.uuid(),
        creator.signing_key(),
    );
    let room: RoomId = genesis.room;
    let mut records = vec![genesis];
    for (n, id) in ids.iter().enumerate().skip(1) {
        records.push(Record::sign(
            room,
            RecordBody::Invite {
                id: rand::random(),
                invitee: id.uuid(),
                key: id.verifying_key().to_bytes(),
                alias: format!("m{n}"),
                time_ms: 1,
            },
            creator.uuid(),
            creator.signing_key(),
        ));
    }

    let mut running = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let home = tempfile::tempdir().unwrap();
        let store = RoomStore::new(home.path());
        if n == 0 {
            store.append(&room, &records).unwrap();
        }
        let client = Client::start(client_options(&server, id.clone()))
            .await
            .unwrap();
        client.wait_online(PATIENCE).await.unwrap();
        let (peers, streams) = Peers::start(client.clone(), policy.clone());
        let (host, mut rx) = RoomHost::start(
            peers.clone(),
            streams.rooms,
            id.clone(),
            store,
            HostOptions {
                alias: format!("member{n}"),
                rooms: None,
                accept_invites: AcceptInvites::All,
                config: RoomConfig::default(),
            },
        )
        .unwrap();
        // Other streams (the baseline's chat) are read to their end and dropped.
        let mut others = streams.others;
        tokio::spawn(async move {
            while let Some((_, stream)) = others.recv().await {
                tokio::spawn(async move {
                    let (_send, mut recv) = stream.into_split();
                    let mut buf = vec![0u8; 4096];
                    while let Ok(Some(_)) = recv.read(&mut buf).await {}
                });
            }
        });
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                sink.lock().unwrap().push(e);
            }
        });
        running.push(Running {
            uuid: id.uuid(),
            client,
            peers,
            host,
            events,
            _home: home,
        });
    }

    // The mesh: every member has a session with all 15 others.
    let mesh_started = std::time::Instant::now();
    for r in &running {
        let host = r.host.clone();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let here = host
                .info(room)
                .await
                .unwrap()
                .map_or(0, |i| i.members.iter().filter(|m| m.here).count());
            if here == MEMBERS - 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "member {} has sessions with only {here} of {}",
                r.uuid,
                MEMBERS - 1
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mesh_time = mesh_started.elapsed();
    for r in running.iter().skip(1) {
        let added = r.events.lock().unwrap().iter().any(
            |e| matches!(e, RoomHostEvent::Added { room: got, from: Some(_), .. } if *got == room),
        );
        assert!(added, "{} never got the invitation", r.uuid);
    }
    let links: Vec<usize> = running.iter().map(|r| r.peers.links().len()).collect();
    assert!(
        links.iter().all(|n| *n == MEMBERS - 1),
        "one link per pair: {links:?}"
    );

    // Everyone talks at once.
    let tx_before: u64 = running.iter().map(|r| udp_tx_bytes(&r.peers)).sum();
    let text = "x".repeat(100);
    let mut tasks = Vec::new();
    for r in &running {
        let host = r.host.clone();
        let text = text.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..MESSAGES {
                host.send(room, format!("{k}:{text}")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let want: Vec<String> = (0..MESSAGES).map(|k| format!("{k}:{text}")).collect();
    for r in &running {
        let events = r.events.clone();
        let total = (MEMBERS - 1) * MESSAGES;
        eventually("every message at every member", || {
            let ev = events.lock().unwrap();
            let got = ev
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        RoomHostEvent::Room {
                            event: RoomEvent::Message(_),
                            ..
                        }
                    )
                })
                .count();
            assert!(got <= total, "more messages than were sent: {got}");
            got == total
        })
        .await;
        let ev = events.lock().unwrap();
        for sender in running.iter().filter(|s| s.uuid != r.uuid) {
            assert_eq!(
                messages_from(&ev, sender.uuid),
                want,
                "{} from {}",
                r.uuid,
                sender.uuid
            );
        }
    }
    // Let acknowledgements and keep-alives of the burst settle before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tx_after: u64 = running.iter().map(|r| udp_tx_bytes(&r.peers)).sum();

    // Baseline in the same run: the same text as one Enclave chat message to one peer.
    let (a, b) = (&running[0], &running[1]);
    let link = a.peers.link(b.uuid, ids[1].verifying_key()).await.unwrap();
    let stream = link.open(StreamKind::Chat).await.unwrap();
    // The peer only reads the stream: count the bytes QUIC sends for the framed packets.
    let before = link.connection().stats().udp_tx.bytes;
    let (mut send, _recv) = stream.into_split();
    let mut packet = Vec::new();
    for k in 0..MESSAGES {
        chatr_client::link::chat::encode_packet(
            &chatr_client::link::chat::ChatPacket::message(format!("{k}:{text}")),
            &mut packet,
        )
        .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut send, &packet)
            .await
            .unwrap();
        packet.clear();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let chat_bytes = link.connection().stats().udp_tx.bytes - before;

    let sent = u64::try_from(MEMBERS * MESSAGES).unwrap();
    let per_message = (tx_after - tx_before) / sent;
    let per_recipient = per_message / u64::try_from(MEMBERS - 1).unwrap();
    eprintln!(
        "room mesh: {MEMBERS} members, mesh formed in {:.1} s, {} links per member, \
         {} links in all; {sent} messages of {} bytes: {per_message} UDP bytes sent per \
         message ({per_recipient} per recipient, acknowledgements and sync included); \
         baseline two-party chat message: {} bytes",
        mesh_time.as_secs_f64(),
        MEMBERS - 1,
        MEMBERS * (MEMBERS - 1) / 2,
        text.len() + 2,
        chat_bytes / u64::try_from(MESSAGES).unwrap(),
    );

    // A member leaving is told to everyone.
    running[5].host.leave(room).await.unwrap();
    let leaver = running[5].uuid;
    for r in running.iter().filter(|r| r.uuid != leaver) {
        let events = r.events.clone();
        eventually("the leave to reach everyone", || {
            events.lock().unwrap().iter().any(|e| {
                matches!(e, RoomHostEvent::Room { event: RoomEvent::Left { member }, .. } if *member == leaver)
            })
        })
        .await;
    }
    for r in &running {
        r.host.stop().await;
    }
    for r in running {
        r.client.shutdown().await;
    }
    server.stop().await;
}
