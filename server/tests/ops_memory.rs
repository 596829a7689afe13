//! Memory after load (issue 16): the `chatr-server` binary gives memory back.
//!
//! With glibc's malloc, RSS stayed at its peak after 10 000 connections came and
//! went (149 MiB against a 10 MiB baseline): freed pages stay in the arenas.
//! The binary now runs on jemalloc with background purging, so RSS falls back
//! within about ten seconds. This test puts a CI-sized load on the real binary
//! (3 000 TLS connections from 60 loopback addresses), closes it, and requires
//! RSS to come back within a bound: at most a third of what the load added,
//! within 30 s (glibc kept all of it). The full-size figures are `chatr-bench hostile --scenario memory`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use api_support::*;
use futures_util::StreamExt as _;
use rustls_pki_types::ServerName;
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

const CONNECTIONS: usize = 3000;
/// 50 connections per address, under the per-source cap of 64.
const SOURCES: usize = 60;
/// How long RSS may take to come back.
const GIVE_BACK_WITHIN: Duration = Duration::from_secs(30);

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// `CONNECTIONS` TLS connections to `addr`, 64 handshakes at a time.
async fn load(
    addr: SocketAddr,
    cert_pem: &str,
) -> Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let connector = TlsConnector::from(client_config(cert_pem));
    futures_util::stream::iter(0..CONNECTIONS)
        .map(|i| {
            let connector = connector.clone();
            async move {
                let socket = TcpSocket::new_v4().unwrap();
                let source = Ipv4Addr::new(127, 0, 3, 1 + (i % SOURCES) as u8);
                socket.bind(SocketAddr::from((source, 0))).unwrap();
                let tcp = socket.connect(addr).await.unwrap();
                connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(64)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_comes_back_after_3000_connections_close() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = spawn_binary(&data, &[]);
    let pid = server.child.id();
    let cert_pem = std::fs::read_to_string(data.join("cert.pem")).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_kib(pid);

    // Twice: the second wave must come back as well (and not add to the first).
    for wave in 1..=2 {
        let conns = load(server.connect_addr(), &cert_pem).await;
        assert_eq!(conns.len(), CONNECTIONS);
        let peak = rss_kib(pid);
        drop(conns);
        let closed = Instant::now();
        let added = peak.saturating_sub(base);
        // The load must have been real for the test to mean anything.
        assert!(
            added >= 16 * 1024,
            "wave {wave}: {CONNECTIONS} connections added only {added} KiB (base {base} KiB)"
        );
        let bound = base + added / 3;
        let mut now_kib = peak;
        while closed.elapsed() < GIVE_BACK_WITHIN {
            tokio::time::sleep(Duration::from_millis(500)).await;
            now_kib = rss_kib(pid);
            if now_kib <= bound {
                break;
            }
        }
        eprintln!(
            "wave {wave}: RSS base {base} KiB, peak {peak} KiB, {now_kib} KiB after {:.1} s",
            closed.elapsed().as_secs_f64()
        );
        assert!(
            now_kib <= bound,
            "wave {wave}: RSS still {now_kib} KiB {GIVE_BACK_WITHIN:?} after the load closed \
             (base {base} KiB, peak {peak} KiB, bound {bound} KiB)"
        );
    }
    drop(server);
}
