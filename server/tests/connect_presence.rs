//! Presence (version 3, packets 0x0B–0x0D) from raw bytes: mutual contacts see each
//! other come and go on login, logout, ping time-out and takeover; a one-sided contact
//! and a stranger learn nothing; sessions below version 3 never get a presence packet.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod connect_support;

use std::time::Duration;

use connect_support::*;
use tokio::sync::mpsc;
use uuid::Uuid;

const OP_PRESENCE_CONTACTS: u8 = 0x0B;
const OP_PRESENCE_STATUS: u8 = 0x0C;
const OP_PRESENCE: u8 = 0x0D;
const FEATURE_PRESENCE: u8 = 0x04;

/// Long enough to be sure nothing more is coming on loopback.
const QUIET: Duration = Duration::from_millis(400);

/// A presence packet: (uuid, status, message).
type Seen = (Uuid, u8, String);

fn contacts_payload(op: u8, uuids: &[Uuid]) -> Vec<u8> {
    let mut p = vec![op, u8::try_from(uuids.len()).unwrap()];
    for u in uuids {
        p.extend_from_slice(u.as_bytes());
    }
    p
}

fn status_payload(status: u8, message: &str) -> Vec<u8> {
    let mut p = vec![status, u8::try_from(message.len()).unwrap()];
    p.extend_from_slice(message.as_bytes());
    p
}

fn parse_presence(f: &Frame) -> Seen {
    assert_eq!(f.opcode, OP_PRESENCE, "expected PacketPresence, got {f:?}");
    let mut c = Cursor(&f.payload);
    let uuid = c.uuid();
    let status = c.take(1)[0];
    let len = usize::from(c.take(1)[0]);
    let message = String::from_utf8(c.take(len).to_vec()).unwrap();
    assert!(c.is_empty());
    (uuid, status, message)
}

enum Cmd {
    Send(u8, Vec<u8>),
    /// Stop reading (and so answering pings): a client whose path died.
    Mute,
    Disconnect,
}

/// A raw client kept alive by a task that answers pings and hands over other frames.
struct Live {
    uuid: Uuid,
    cmds: mpsc::Sender<Cmd>,
    frames: mpsc::Receiver<Option<Frame>>,
}

impl Live {
    async fn v3(server: &TestServer, id: &Identity) -> Self {
        let (client, login) = Client::login_v3(server, id).await;
        assert_eq!(login.features & FEATURE_PRESENCE, FEATURE_PRESENCE);
        Self::run(client, id.uuid)
    }

    fn run(mut client: Client, uuid: Uuid) -> Self {
        let (cmd_tx, mut cmd_rx) = mpsc::channel(16);
        let (frame_tx, frame_rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    cmd = cmd_rx.recv() => match cmd {
                        Some(Cmd::Send(op, payload)) => client.send(op, &payload).await,
                        Some(Cmd::Mute) => {
                            // Hold the connection open without reading until dropped.
                            let _ = cmd_rx.recv().await;
                            return;
                        }
                        Some(Cmd::Disconnect) => {
                            client.send(OP_DISCONNECT, &[0]).await;
                            return;
                        }
                        None => return,
                    },
                    f = client.next_answering_pings() => {
                        let closed = f.is_none();
                        let _ = frame_tx.send(f).await;
                        if closed {
                            return;
                        }
                    }
                }
            }
        });
        Self {
            uuid,
            cmds: cmd_tx,
            frames: frame_rx,
        }
    }

    async fn contacts(&self, op: u8, uuids: &[Uuid]) {
        let payload = contacts_payload(op, uuids);
        self.cmds
            .send(Cmd::Send(OP_PRESENCE_CONTACTS, payload))
            .await
            .unwrap();
    }

    async fn status(&self, status: u8, message: &str) {
        let payload = status_payload(status, message);
        self.cmds
            .send(Cmd::Send(OP_PRESENCE_STATUS, payload))
            .await
            .unwrap();
    }

    /// The next frame (pings aside), which must be a presence packet.
    async fn next(&mut self) -> Seen {
        let f = tokio::time::timeout(PATIENCE, self.frames.recv())
            .await
            .expect("no presence packet came")
            .unwrap()
            .expect("the server closed the connection");
        parse_presence(&f)
    }

    /// The acknowledgement of our own latest presence packet (our own UUID).
    async fn ack(&mut self) -> Seen {
        let seen = self.next().await;
        assert_eq!(
            seen.0, self.uuid,
            "expected our own acknowledgement, got {seen:?}"
        );
        seen
    }

    /// Nothing but pings arrives for a while.
    async fn quiet(&mut self) {
        if let Ok(f) = tokio::time::timeout(QUIET, self.frames.recv()).await {
            panic!("expected nothing, got {f:?}");
        }
    }
}

#[tokio::test]
async fn mutual_contacts_see_login_logout_and_timeout() {
    let server = start_server(|_| {}).await;
    let (alice, bob) = (Identity::registered(&server), Identity::registered(&server));

    let mut a = Live::v3(&server, &alice).await;
    a.status(2, "lunch").await;
    assert_eq!(a.ack().await, (alice.uuid, 2, "lunch".into()));
    a.contacts(0, &[bob.uuid]).await;
    a.ack().await;
    a.quiet().await;

    // Login: Bob names Alice back, so each sees the other.
    let mut b = Live::v3(&server, &bob).await;
    b.contacts(0, &[alice.uuid]).await;
    assert_eq!(b.next().await, (alice.uuid, 2, "lunch".into()));
    b.ack().await;
    assert_eq!(a.next().await, (bob.uuid, 1, String::new()));
    // A status change reaches the other side.
    b.status(3, "call").await;
    b.ack().await;
    assert_eq!(a.next().await, (bob.uuid, 3, "call".into()));

    // Logout.
    b.cmds.send(Cmd::Disconnect).await.unwrap();
    assert_eq!(a.next().await, (bob.uuid, 0, String::new()));

    // Ping time-out: Bob's client stops answering.
    let mut b = Live::v3(&server, &bob).await;
    b.contacts(0, &[alice.uuid]).await;
    b.next().await;
    b.ack().await;
    assert_eq!(a.next().await.1, 1);
    b.cmds.send(Cmd::Mute).await.unwrap();
    assert_eq!(a.next().await, (bob.uuid, 0, String::new()));
    drop(b);

    a.quiet().await;
    server.stop().await;
}

#[tokio::test]
async fn a_takeover_shows_the_dead_session_go_and_the_new_one_come() {
    // Pings rare enough that only the takeover can end Bob's silent first session.
    let server = start_server(|c| {
        c.timings.ping_interval = Duration::from_secs(5);
        c.timings.ping_timeout = Duration::from_secs(30);
    })
    .await;
    let (alice, bob) = (Identity::registered(&server), Identity::registered(&server));
    let mut a = Live::v3(&server, &alice).await;
    a.contacts(0, &[bob.uuid]).await;
    a.ack().await;
    let mut b1 = Live::v3(&server, &bob).await;
    b1.contacts(0, &[alice.uuid]).await;
    b1.next().await;
    b1.ack().await;
    assert_eq!(a.next().await, (bob.uuid, 1, String::new()));
    // Bob's path dies silently; his new login probes the old session, which does not
    // answer within the takeover probe (1 s), and replaces it.
    b1.cmds.send(Cmd::Mute).await.unwrap();
    let mut b2 = Live::v3(&server, &bob).await;
    assert_eq!(a.next().await, (bob.uuid, 0, String::new()));
    b2.contacts(0, &[alice.uuid]).await;
    assert_eq!(b2.next().await.0, alice.uuid);
    b2.ack().await;
    assert_eq!(a.next().await, (bob.uuid, 1, String::new()));
    a.quiet().await;
    drop(b1);
    server.stop().await;
}

#[tokio::test]
async fn nothing_leaks_to_a_one_sided_contact_or_a_stranger() {
    let server = start_server(|_| {}).await;
    let alice = Identity::registered(&server);
    let nina = Identity::registered(&server); // Alice names Nina; Nina does not name Alice.
    let sam = Identity::registered(&server); // A stranger who names Alice.

    let mut a = Live::v3(&server, &alice).await;
    a.contacts(0, &[nina.uuid]).await;
    a.ack().await;
    let mut n = Live::v3(&server, &nina).await;
    n.contacts(0, &[]).await;
    n.ack().await;
    let mut s = Live::v3(&server, &sam).await;
    s.contacts(0, &[alice.uuid, nina.uuid]).await;
    // Sam learns nothing but his own acknowledgement: not whether Alice exists, is
    // online, or what her status is.
    s.ack().await;
    s.quiet().await;
    a.status(3, "secret").await;
    a.ack().await;
    n.status(2, "also secret").await;
    n.ack().await;
    a.quiet().await;
    n.quiet().await;
    s.quiet().await;
    // Alice going offline tells nobody either.
    a.cmds.send(Cmd::Disconnect).await.unwrap();
    n.quiet().await;
    s.quiet().await;
    // Once Nina names Alice (and Alice is back), both see each other; Sam still nothing.
    let mut a = Live::v3(&server, &alice).await;
    a.contacts(0, &[nina.uuid]).await;
    a.ack().await;
    n.contacts(0, &[alice.uuid]).await;
    assert_eq!(n.next().await.0, alice.uuid);
    n.ack().await;
    assert_eq!(a.next().await, (nina.uuid, 2, "also secret".into()));
    // Nina withdraws consent (`contacts presence alice off`): both see the other offline.
    n.contacts(1, &[alice.uuid]).await;
    assert_eq!(n.next().await, (alice.uuid, 0, String::new()));
    n.ack().await;
    assert_eq!(a.next().await, (nina.uuid, 0, String::new()));
    s.quiet().await;
    server.stop().await;
}

#[tokio::test]
async fn sessions_below_version3_never_get_or_send_presence() {
    let server = start_server(|_| {}).await;
    let (alice, bob) = (Identity::registered(&server), Identity::registered(&server));
    let mut a = Live::v3(&server, &alice).await;
    a.contacts(0, &[bob.uuid]).await;
    a.ack().await;
    // A version-2 Bob is not a presence member: Alice sees nothing.
    let (mut b, _token) = Client::login_v2(&server, &bob).await;
    a.quiet().await;
    // And the packets do not exist for him.
    b.send(OP_PRESENCE_CONTACTS, &contacts_payload(0, &[alice.uuid]))
        .await;
    b.expect_disconnect("Invalid Packet").await;
    // A spec client neither.
    let mut b = Client::login_v1(&server, &bob).await;
    b.send(OP_PRESENCE_STATUS, &status_payload(1, "")).await;
    b.expect_disconnect("Invalid Packet").await;
    a.quiet().await;
    server.stop().await;
}

#[tokio::test]
async fn a_server_without_presence_offers_none() {
    let server = start_server(|c| c.presence.enabled = false).await;
    let alice = Identity::registered(&server);
    let (mut a, login) = Client::login_v3(&server, &alice).await;
    assert_eq!(login.features & FEATURE_PRESENCE, 0);
    a.send(OP_PRESENCE_CONTACTS, &contacts_payload(0, &[]))
        .await;
    a.expect_disconnect("Invalid Packet").await;
    server.stop().await;
}

#[tokio::test]
async fn a_presence_flood_is_cut_off_with_a_reason() {
    let server = start_server(|c| {
        c.presence.update_burst = 5;
        c.presence.updates_per_second = 1;
    })
    .await;
    let alice = Identity::registered(&server);
    let (mut a, _) = Client::login_v3(&server, &alice).await;
    for _ in 0..6 {
        a.send(OP_PRESENCE_STATUS, &status_payload(1, "x")).await;
    }
    for _ in 0..5 {
        let f = a.next_answering_pings().await.unwrap();
        assert_eq!(parse_presence(&f).0, alice.uuid);
    }
    a.expect_disconnect("Too many presence updates").await;
    server.stop().await;
}
