//! Hostile REST clients (issue 16): body-less PUTs from many addresses must not
//! take the registry API away from everyone else; slow bodies get 408; idle
//! kept-alive connections close; HTTP/1.1 without `Host` is refused.
//!
//! Every address is on loopback: 127.0.0.0/8 gives a test as many source
//! addresses as it wants (bind the client socket to 127.0.x.y before
//! connecting). The /64 grouping of IPv6 sources is covered by the unit tests
//! of `conn_limit.rs`, as ::1 is the only IPv6 loopback address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use api_support::*;
use futures_util::StreamExt as _;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Attacking source addresses, and requests each: the numbers of the report
/// (18 stays below the default burst of 20 of the per-address rate limit).
const ATTACK_SOURCES: u8 = 60;
const ATTACK_PER_SOURCE: usize = 18;

/// A TLS connection to `addr` from `source`.
async fn tls_from(
    source: Ipv4Addr,
    addr: SocketAddr,
    cert_pem: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let tcp = socket.connect(addr).await?;
    let connector = TlsConnector::from(client_config(cert_pem));
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The request head of a PUT announcing a 1 KiB body that never comes.
fn body_less_put() -> Vec<u8> {
    format!(
        "PUT /api/1/clients/{} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Chatr-PublicKey-Signature: AAAA\r\nContent-Length: 1024\r\n\r\n",
        uuid::Uuid::new_v4()
    )
    .into_bytes()
}

/// Opens one attack connection and sends the body-less PUT; `None` if the
/// server refused it (closed before or during TLS, or the write failed).
async fn attack_connection(
    source: Ipv4Addr,
    addr: SocketAddr,
    cert_pem: &str,
) -> Option<TlsStream<TcpStream>> {
    let mut tls = tokio::time::timeout(Duration::from_secs(10), tls_from(source, addr, cert_pem))
        .await
        .ok()?
        .ok()?;
    tls.write_all(&body_less_put()).await.ok()?;
    tls.flush().await.ok()?;
    Some(tls)
}

/// Opens `per_source` attack connections from each of `sources` addresses
/// (127.0.1.1, 127.0.1.2, …), 64 at a time; returns those the server kept.
async fn attack(
    addr: SocketAddr,
    cert_pem: &str,
    sources: u8,
    per_source: usize,
) -> Vec<(Ipv4Addr, TlsStream<TcpStream>)> {
    let jobs =
        (1..=sources).flat_map(|s| (0..per_source).map(move |_| Ipv4Addr::new(127, 0, 1, s)));
    futures_util::stream::iter(jobs)
        .map(|source| async move {
            attack_connection(source, addr, cert_pem)
                .await
                .map(|tls| (source, tls))
        })
        .buffer_unordered(64)
        .filter_map(|held| async move { held })
        .collect()
        .await
}

/// One complete answer: status, head, body (by Content-Length).
#[derive(Debug)]
struct RawReply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 answer from `stream`, or `None` at EOF/error before a head.
async fn read_reply(stream: &mut TlsStream<TcpStream>) -> Option<RawReply> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.get(9..12)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(RawReply { status, head, body })
}

/// Whether the server closed `stream` within `wait` (EOF or reset, no data).
async fn closed_within(stream: &mut TlsStream<TcpStream>, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A legitimate user's request on a fresh connection from `source`: the status,
/// or what went wrong.
async fn legit_get(
    source: Ipv4Addr,
    addr: SocketAddr,
    cert_pem: &str,
    path: &str,
) -> Result<u16, String> {
    let attempt = async {
        let mut tls = tls_from(source, addr, cert_pem)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        read_reply(&mut tls)
            .await
            .map(|r| r.status)
            .ok_or_else(|| "closed without an answer".to_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
}

/// Ten legitimate requests from `source`; how many were answered 200.
async fn legit_round(source: Ipv4Addr, addr: SocketAddr, cert_pem: &str) -> (usize, Vec<String>) {
    let mut ok = 0;
    let mut errors = Vec::new();
    for path in ["/healthz", "/certificate"].iter().cycle().take(10) {
        match legit_get(source, addr, cert_pem, path).await {
            Ok(200) => ok += 1,
            Ok(status) => errors.push(format!("{path}: status {status}")),
            Err(e) => errors.push(format!("{path}: {e}")),
        }
    }
    (ok, errors)
}

/// Server with the default API limits (the harness raises the rate limit).
async fn default_limits_server(tweak: impl FnOnce(&mut chatr_server::ServerConfig)) -> TestServer {
    start_server(|config| {
        let defaults = chatr_server::Limits::default();
        config.limits.api_requests_per_second = defaults.api_requests_per_second;
        config.limits.api_burst = defaults.api_burst;
        tweak(config);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_less_puts_from_60_addresses_do_not_block_the_api() {
    let server = default_limits_server(|_| {}).await;
    let api = server.api();
    let held = attack(api.addr, &api.cert_pem, ATTACK_SOURCES, ATTACK_PER_SOURCE).await;
    // No source holds more than its share, so 60 sources hold at most 60 × 8.
    let cap = chatr_server::Limits::default().api_max_connections_per_ip;
    for s in 1..=ATTACK_SOURCES {
        let from = held
            .iter()
            .filter(|(ip, _)| *ip == Ipv4Addr::new(127, 0, 1, s))
            .count();
        assert!(
            from <= cap,
            "127.0.1.{s} holds {from} connections (cap {cap})"
        );
    }
    // While every attack connection still waits for its body, the API answers.
    let (ok, errors) = legit_round(Ipv4Addr::new(127, 0, 0, 1), api.addr, &api.cert_pem).await;
    assert_eq!(
        ok,
        10,
        "{} attack connections held; legitimate requests failed: {errors:?}",
        held.len()
    );
    // And a real registration goes through.
    let id = Identity::new();
    let reply = api
        .put_signed(&id.uuid.to_string(), &id.body(), &id.key)
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    drop(held);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_many_addresses_cannot_fill_the_total_cap() {
    // More attacking addresses than total cap ÷ per-source cap: the cap fills
    // with idle connections, and newcomers evict the longest-idle ones.
    let server = default_limits_server(|config| config.limits.api_max_connections = 100).await;
    let api = server.api();
    let mut held = attack(api.addr, &api.cert_pem, ATTACK_SOURCES, 8).await;
    let (ok, errors) = legit_round(Ipv4Addr::new(127, 0, 0, 1), api.addr, &api.cert_pem).await;
    assert_eq!(ok, 10, "legitimate requests failed: {errors:?}");
    // At most the cap survives; the rest was evicted (closed by the server).
    let mut open = 0;
    for (_, tls) in &mut held {
        if !closed_within(tls, Duration::from_millis(20)).await {
            open += 1;
        }
    }
    assert!(
        open <= 100,
        "{open} attack connections still open (cap 100)"
    );
    assert!(
        held.len() > 100,
        "the attack should have been admitted first: {}",
        held.len()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_gets_408_and_the_connection_closes() {
    let server = start_server(|c| c.timings.api_timeout = Duration::from_millis(500)).await;
    let api = server.api();
    let started = Instant::now();
    let mut tls = attack_connection(Ipv4Addr::LOCALHOST, api.addr, &api.cert_pem)
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), read_reply(&mut tls))
        .await
        .expect("no answer to a body-less PUT within 10 s")
        .expect("closed without an answer");
    assert_eq!(reply.status, 408, "{reply:?}");
    assert!(
        reply
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{reply:?}"
    );
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(json["error"], "RequestTimeout");
    assert!(closed_within(&mut tls, Duration::from_secs(5)).await);
    // Not before the time-out.
    assert!(started.elapsed() >= Duration::from_millis(500));

    // Half a body is as late as none.
    let mut tls = tls_from(Ipv4Addr::LOCALHOST, api.addr, &api.cert_pem)
        .await
        .unwrap();
    let mut request = body_less_put();
    request.extend_from_slice(b"{\"key\":");
    tls.write_all(&request).await.unwrap();
    let reply = read_reply(&mut tls).await.unwrap();
    assert_eq!(reply.status, 408, "{reply:?}");
    server.stop().await;
}

#[tokio::test]
async fn idle_kept_alive_connections_are_closed() {
    let server = start_server(|c| c.timings.api_timeout = Duration::from_millis(500)).await;
    let api = server.api();
    // One request, then nothing: the wait for the next request is bounded.
    let mut tls = tls_from(Ipv4Addr::LOCALHOST, api.addr, &api.cert_pem)
        .await
        .unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let reply = read_reply(&mut tls).await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(
        !reply
            .head
            .to_ascii_lowercase()
            .contains("connection: close")
    );
    // Still usable right away (kept alive)…
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut tls).await.unwrap().status, 200);
    // …and closed once idle past the time-out.
    assert!(closed_within(&mut tls, Duration::from_secs(5)).await);

    // A connection that never sends a request closes too.
    let mut tls = tls_from(Ipv4Addr::LOCALHOST, api.addr, &api.cert_pem)
        .await
        .unwrap();
    assert!(closed_within(&mut tls, Duration::from_secs(5)).await);
    server.stop().await;
}

#[tokio::test]
async fn http_1_1_needs_exactly_one_host() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let ask = |request: &'static [u8]| {
        let api = api.clone();
        async move {
            let mut tls = tls_from(Ipv4Addr::LOCALHOST, api.addr, &api.cert_pem)
                .await
                .unwrap();
            tls.write_all(request).await.unwrap();
            read_reply(&mut tls).await.unwrap()
        }
    };
    let reply = ask(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(reply.status, 400, "{reply:?}");
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(json["error"], "MissingHost");
    let reply =
        ask(b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n").await;
    assert_eq!(reply.status, 400, "{reply:?}");
    // HTTP/1.0 has no such rule.
    let reply = ask(b"GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = ask(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    server.stop().await;
}
