//! Hostile senders against one user: a flood of connection requests must not knock a
//! victim who reads normally off the server, nor keep it from its own brokering.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod connect_support;

use std::time::{Duration, Instant};

use connect_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_does_not_disconnect_a_reading_victim() {
    let server = start_server(|_| {}).await;
    let victim_id = Identity::registered(&server);
    let friend_id = Identity::registered(&server);
    let (mut victim, _) = Client::login_v2(&server, &victim_id).await;
    let (mut friend, _) = Client::login_v2(&server, &friend_id).await;

    // Ten registered users each write 300 requests for the victim in one burst.
    let mut flooders = Vec::new();
    for _ in 0..10 {
        let id = Identity::registered(&server);
        let (c, _) = Client::login_v2(&server, &id).await;
        flooders.push(c);
    }
    let mut burst = Vec::new();
    for n in 0..300u16 {
        burst.extend(frame(
            OP_REQUEST,
            &uuid_endpoint(
                &victim_id.uuid,
                std::net::IpAddr::from([10, 0, (n >> 8) as u8, n as u8]),
                Some(4000),
            ),
        ));
    }
    let mut flood = Vec::new();
    for mut c in flooders {
        let burst = burst.clone();
        flood.push(tokio::spawn(async move {
            c.send_raw(&burst).await;
            // Every flooder hears back: one pending request (collapsed repeats), the
            // rest refused by its own rate limit. It stays connected too.
            let mut denied = 0;
            while let Ok(Some(f)) =
                tokio::time::timeout(Duration::from_millis(500), c.next_answering_pings()).await
            {
                if f.opcode == OP_DENIED {
                    denied += 1;
                }
                assert_ne!(f.opcode, OP_DISCONNECT, "a flooder was disconnected: {f:?}");
            }
            denied
        }));
    }

    // The victim reads normally: it sees at most one request per flooder, and can
    // still broker its own link to a friend in the middle of the flood.
    let started = Instant::now();
    let mut requests = 0;
    let friend_local = friend.local;
    let friend_task = tokio::spawn(async move {
        let req = friend.next_answering_pings().await.unwrap();
        assert_eq!(req.opcode, OP_REQUEST, "{req:?}");
        let from = Cursor(&req.payload).uuid();
        friend
            .send(
                OP_ACCEPT,
                &uuid_endpoint(&from, friend_local.ip(), Some(friend_local.port())),
            )
            .await;
        let info = friend.next_answering_pings().await.unwrap();
        assert_eq!(info.opcode, OP_CLIENT_INFO);
        friend
    });
    let victim_local = victim.local;
    victim
        .send(
            OP_REQUEST,
            &uuid_endpoint(
                &friend_id.uuid,
                victim_local.ip(),
                Some(victim_local.port()),
            ),
        )
        .await;
    let mut got_accept = false;
    let mut got_info = false;
    while started.elapsed() < Duration::from_secs(3) {
        match tokio::time::timeout(Duration::from_millis(200), victim.next_answering_pings()).await
        {
            Ok(Some(f)) => match f.opcode {
                OP_REQUEST => requests += 1,
                OP_ACCEPT => got_accept = true,
                OP_CLIENT_INFO => got_info = true,
                OP_DISCONNECT => panic!("the victim was disconnected: {}", f.disconnect_message()),
                other => panic!("unexpected opcode {other}"),
            },
            Ok(None) => panic!("the victim's connection closed"),
            Err(_) => {}
        }
    }
    assert!(
        got_accept && got_info,
        "the victim's own brokering was starved"
    );
    assert!(requests <= 10, "the victim was shown {requests} requests");
    assert!(requests >= 1, "no request reached the victim");
    assert!(server.handle.hub().is_connected(&victim_id.uuid));
    for task in flood {
        let denied = task.await.unwrap();
        assert!(denied >= 280, "only {denied} of the repeats were refused");
    }
    let _friend = friend_task.await.unwrap();
    let metrics = server.handle.metrics().render();
    assert!(
        metrics.contains("chatr_brokered_requests_total{result=\"rate_limited\"} 2800"),
        "{metrics}"
    );
    server.stop().await;
}
