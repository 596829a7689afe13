//! Links relayed by a real in-process server on loopback, and one link moved between
//! paths under load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod session_support;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt as _};

use chatr_client::link::pipe::{PipeReport, run_pipe};
use chatr_client::link::{PeerLink, StreamKind};
use chatr_client::path::{PathClass, PathId, PathPolicy, RelayVia};
use chatr_client::{Client, LinkReport};
use session_support::{TestServer, WAIT, client_options, pattern, sha256};

/// Two online clients under `policy` and a link between them (alice initiates).
struct Pair {
    server: TestServer,
    alice: Client,
    bob: Client,
    alice_link: PeerLink,
    bob_link: PeerLink,
    alice_report: LinkReport,
    bob_report: LinkReport,
    _dir: tempfile::TempDir,
}

async fn linked_pair(policy: PathPolicy) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let alice_id = server.registered_identity().await;
    let bob_id = server.registered_identity().await;
    let mut alice_options = client_options(&server, alice_id.clone());
    alice_options.path_policy = policy;
    let mut bob_options = client_options(&server, bob_id.clone());
    bob_options.path_policy = policy;
    let alice = Client::start(alice_options).await.unwrap();
    let bob = Client::start(bob_options).await.unwrap();
    alice.wait_online(WAIT).await.unwrap();
    bob.wait_online(WAIT).await.unwrap();
    let bob2 = bob.clone();
    let responder = tokio::spawn(async move {
        let req = bob2.next_request().await.unwrap();
        req.accept(alice_id.verifying_key()).await.unwrap()
    });
    let (alice_link, alice_report) = tokio::time::timeout(
        WAIT,
        alice.request_link(bob_id.uuid(), bob_id.verifying_key()),
    )
    .await
    .unwrap()
    .unwrap();
    let (bob_link, bob_report) = tokio::time::timeout(WAIT, responder)
        .await
        .unwrap()
        .unwrap();
    Pair {
        server,
        alice,
        bob,
        alice_link,
        bob_link,
        alice_report,
        bob_report,
        _dir: dir,
    }
}

impl Pair {
    async fn stop(self) {
        self.alice.shutdown().await;
        self.bob.shutdown().await;
        self.server.stop().await;
    }

    /// Pipes `len` bytes alice → bob (and a short reply back); checks both SHA-256s.
    async fn pipe(&self, len: usize, limit: Duration) -> PipeReport {
        let data = pattern(len, 7);
        self.pipe_from(&data, std::io::Cursor::new(data.clone()), limit)
            .await
    }

    /// Pipes what `input` yields (which must be `data`) alice → bob, as [`Pair::pipe`].
    async fn pipe_from(
        &self,
        data: &[u8],
        input: impl AsyncRead + Unpin,
        limit: Duration,
    ) -> PipeReport {
        let len = data.len();
        let reply = pattern(999, 9);
        let bob_link = self.bob_link.clone();
        let reply2 = reply.clone();
        let bob_side = tokio::spawn(async move {
            let stream = bob_link.accept_stream().await.unwrap();
            assert_eq!(stream.kind(), StreamKind::Pipe);
            let mut out: Vec<u8> = Vec::new();
            let report = run_pipe(stream, std::io::Cursor::new(reply2), &mut out)
                .await
                .unwrap();
            (report, out)
        });
        let stream = self.alice_link.open(StreamKind::Pipe).await.unwrap();
        let mut back: Vec<u8> = Vec::new();
        let report = tokio::time::timeout(limit, run_pipe(stream, input, &mut back))
            .await
            .expect("pipe timed out")
            .unwrap();
        assert!(report.delivered);
        assert_eq!(report.sent, len as u64);
        assert_eq!(back, reply);
        let (bob_report, received) = tokio::time::timeout(limit, bob_side)
            .await
            .unwrap()
            .unwrap();
        assert!(bob_report.delivered);
        assert_eq!(received.len(), len);
        assert_eq!(sha256(&received), sha256(data));
        report
    }
}

#[tokio::test]
async fn a_link_pinned_to_the_udp_relay_carries_a_pipe() {
    let pair = linked_pair(PathPolicy::Relay).await;
    for report in [&pair.alice_report, &pair.bob_report] {
        assert_eq!(report.class, PathClass::RelayUdp, "{report:?}");
        assert!(report.relay_reason.is_some());
    }
    pair.pipe(4 * 1024 * 1024, Duration::from_secs(60)).await;
    let status = pair.alice_link.paths().unwrap().current();
    assert_eq!(status.path, Some(PathId::Relay(RelayVia::Udp)));
    pair.stop().await;
}

#[tokio::test]
async fn a_link_pinned_to_the_tls_relay_carries_a_pipe() {
    let pair = linked_pair(PathPolicy::RelayTls).await;
    for report in [&pair.alice_report, &pair.bob_report] {
        assert_eq!(report.class, PathClass::RelayTls, "{report:?}");
    }
    pair.pipe(2 * 1024 * 1024, Duration::from_secs(60)).await;
    pair.stop().await;
}

/// The "path changes under load": while 50 MiB go through a pipe, both sides'
/// paths are forced round direct → UDP relay → TLS relay → direct … at least 100 times;
/// the pipe must finish with its SHA-256 intact and no stream error.
#[tokio::test]
async fn a_pipe_survives_a_hundred_forced_path_switches() {
    let pair = linked_pair(PathPolicy::Auto).await;
    let alice_paths = pair.alice_link.paths().unwrap().clone();
    let bob_paths = pair.bob_link.paths().unwrap().clone();
    let direct_of = |status: chatr_client::path::PathStatus| match status.path {
        Some(p @ PathId::Direct(_)) => p,
        other => panic!("loopback links start direct, got {other:?}"),
    };
    let alice_direct = direct_of(alice_paths.current());
    let bob_direct = direct_of(bob_paths.current());
    let cycle = |direct: PathId| {
        [
            PathId::Relay(RelayVia::Udp),
            direct,
            PathId::Relay(RelayVia::Tls),
            direct,
        ]
    };

    let before = pair.server.handle.metrics().relay_totals();
    let done = tokio_util::sync::CancellationToken::new();
    let stop = done.clone();
    let (switched, mut switches) = tokio::sync::watch::channel(0usize);
    let switcher = tokio::spawn(async move {
        let (a, b) = (cycle(alice_direct), cycle(bob_direct));
        let mut forced = 0usize;
        while !stop.is_cancelled() {
            // Alice and Bob out of phase, so the two directions differ most of the time.
            assert!(alice_paths.pin(Some(a[forced % 4])).await);
            assert!(bob_paths.pin(Some(b[(forced + 1) % 4])).await);
            forced += 1;
            switched.send_replace(forced);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        (forced, alice_paths, bob_paths)
    });
    // The input is released a slice per forced switch, so the pipe spans 200 switches
    // however fast the link moves the data (a fast link once finished within 81).
    const LEN: usize = 50 * 1024 * 1024;
    const SLICE: usize = LEN / 200;
    let data = pattern(LEN, 7);
    let (mut feed, input) = tokio::io::duplex(SLICE);
    let slices = data.clone();
    let feeder = tokio::spawn(async move {
        for slice in slices.chunks(SLICE) {
            feed.write_all(slice).await.unwrap();
            switches
                .changed()
                .await
                .expect("the switcher runs until the pipe ends");
        }
        feed.shutdown().await.unwrap();
    });
    pair.pipe_from(&data, input, Duration::from_secs(240)).await;
    feeder.await.unwrap();
    done.cancel();
    let (forced, alice_paths, bob_paths) = switcher.await.unwrap();
    let (a, b) = (alice_paths.current(), bob_paths.current());
    assert!(
        forced >= 100,
        "only {forced} switches were forced while the pipe ran"
    );
    assert!(
        a.switches >= 100 && b.switches >= 100,
        "the links did not follow: alice {} switches, bob {}",
        a.switches,
        b.switches
    );
    // The relay really carried part of the pipe, over both transports.
    let after = pair.server.handle.metrics().relay_totals();
    assert!(
        after.udp_bytes - before.udp_bytes > 1024 * 1024
            && after.tls_bytes - before.tls_bytes > 1024 * 1024,
        "relayed while switching: {before:?} → {after:?}"
    );
    // Back to automatic choice: the link returns to the direct path.
    assert!(alice_paths.pin(None).await);
    pair.stop().await;
}
