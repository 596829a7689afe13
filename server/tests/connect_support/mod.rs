//! A Connect client written from the spec (and `docs/PROTOCOL.md` for the
//! extensions), with raw bytes and no project code, plus an in-process server
//! on loopback with short timings.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chatr_server::{ServerConfig, ServerHandle};
use ed25519_dalek::{Signer, SigningKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[path = "../tls_support/mod.rs"]
mod tls_support;

/// Longest a test waits for something that must happen (a liveness bound,
/// not a speed assertion).
pub const PATIENCE: Duration = Duration::from_secs(10);

pub const OP_CONNECT: u8 = 0x0;
pub const OP_DISCONNECT: u8 = 0x1;
pub const OP_CONNECTED: u8 = 0x2;
pub const OP_PING: u8 = 0x3;
pub const OP_PONG: u8 = 0x4;
pub const OP_REQUEST: u8 = 0x5;
pub const OP_ACCEPT: u8 = 0x6;
pub const OP_DENIED: u8 = 0x7;
pub const OP_CLIENT_INFO: u8 = 0x8;

// ---------------------------------------------------------------- server

pub struct TestServer {
    pub handle: ServerHandle,
    pub shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub fn addr(&self) -> SocketAddr {
        self.handle.connect_addr()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.handle.join())
            .await
            .expect("server did not stop");
    }
}

/// Short spec timings so tests run fast.
pub fn fast_config(dir: &std::path::Path) -> ServerConfig {
    let mut config = ServerConfig::for_tests(dir);
    config.timings.ping_interval = Duration::from_millis(200);
    config.timings.ping_timeout = Duration::from_millis(600);
    config.timings.login_timeout = Duration::from_secs(3);
    config.timings.request_timeout = Duration::from_secs(3);
    config.timings.takeover_probe = Duration::from_secs(1);
    config.timings.write_timeout = Duration::from_secs(3);
    config
}

pub async fn start_server(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(dir.path());
    tweak(&mut config);
    let shutdown = CancellationToken::new();
    let handle = chatr_server::start(config, shutdown.clone()).await.unwrap();
    TestServer {
        handle,
        shutdown,
        _dir: dir,
    }
}

// ---------------------------------------------------------------- identity

pub struct Identity {
    pub uuid: Uuid,
    pub key: SigningKey,
}

impl Identity {
    pub fn new() -> Self {
        Self {
            uuid: Uuid::new_v4(),
            key: SigningKey::from_bytes(&rand::random()),
        }
    }

    /// A fresh identity registered on `server`.
    pub fn registered(server: &TestServer) -> Self {
        let id = Self::new();
        server
            .handle
            .registry()
            .insert_unchecked(id.uuid, id.key.verifying_key());
        id
    }

    /// The spec's signature: over the 16 UUID bytes.
    pub fn sign_v1(&self) -> Vec<u8> {
        self.key.sign(self.uuid.as_bytes()).to_bytes().to_vec()
    }

    /// The v2 signature: over "chatr connect v2\0" ‖ UUID ‖ exporter.
    pub fn sign_v2(&self, exporter: &[u8; 32]) -> Vec<u8> {
        let mut msg = b"chatr connect v2\0".to_vec();
        msg.extend_from_slice(self.uuid.as_bytes());
        msg.extend_from_slice(exporter);
        self.key.sign(&msg).to_bytes().to_vec()
    }
}

// ---------------------------------------------------------------- bytes

pub fn varint(mut value: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// `VarInt length ‖ opcode ‖ payload`.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = varint(payload.len() as u32 + 1);
    out.push(opcode);
    out.extend_from_slice(payload);
    out
}

pub fn connect_payload(version: u32, uuid: &Uuid, signature: &[u8]) -> Vec<u8> {
    let mut p = version.to_be_bytes().to_vec();
    p.extend_from_slice(uuid.as_bytes());
    p.extend_from_slice(&(signature.len() as i32).to_be_bytes());
    p.extend_from_slice(signature);
    p
}

pub fn address(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = vec![4];
            a.extend_from_slice(&v4.octets());
            a
        }
        IpAddr::V6(v6) => {
            let mut a = vec![6];
            a.extend_from_slice(&v6.octets());
            a
        }
    }
}

/// UUID ‖ Address (‖ port, extension).
pub fn uuid_endpoint(uuid: &Uuid, ip: IpAddr, port: Option<u16>) -> Vec<u8> {
    let mut p = uuid.as_bytes().to_vec();
    p.extend_from_slice(&address(ip));
    if let Some(port) = port {
        p.extend_from_slice(&port.to_be_bytes());
    }
    p
}

/// A payload cursor for the test's own parsing.
pub struct Cursor<'a>(pub &'a [u8]);

impl Cursor<'_> {
    pub fn take(&mut self, n: usize) -> &[u8] {
        assert!(self.0.len() >= n, "payload too short");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    pub fn uuid(&mut self) -> Uuid {
        Uuid::from_slice(self.take(16)).unwrap()
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    pub fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    pub fn address(&mut self) -> IpAddr {
        match self.take(1)[0] {
            4 => IpAddr::from(<[u8; 4]>::try_from(self.take(4)).unwrap()),
            6 => IpAddr::from(<[u8; 16]>::try_from(self.take(16)).unwrap()),
            v => panic!("bad address version {v}"),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn disconnect_message(&self) -> String {
        assert_eq!(
            self.opcode, OP_DISCONNECT,
            "expected PacketDisconnect, got {self:?}"
        );
        let mut len = 0u32;
        let mut shift = 0;
        let mut i = 0;
        loop {
            let b = self.payload[i];
            len |= u32::from(b & 0x7f) << shift;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        String::from_utf8(self.payload[i..i + len as usize].to_vec()).unwrap()
    }
}

/// ClientInfo with the extensions parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub uuid: Uuid,
    pub public_ip: IpAddr,
    pub public_port: Option<u16>,
    pub tcp: Option<(IpAddr, u16)>,
    pub link_secret: Option<[u8; 32]>,
}

pub fn parse_client_info(frame: &Frame) -> ClientInfo {
    assert_eq!(
        frame.opcode, OP_CLIENT_INFO,
        "expected ClientInfo, got {frame:?}"
    );
    let mut c = Cursor(&frame.payload);
    let uuid = c.uuid();
    let public_ip = c.address();
    if c.is_empty() {
        return ClientInfo {
            uuid,
            public_ip,
            public_port: None,
            tcp: None,
            link_secret: None,
        };
    }
    let port = c.u16();
    let tcp_ip = c.address();
    let tcp_port = c.u16();
    let secret: [u8; 32] = c.take(32).try_into().unwrap();
    assert!(c.is_empty());
    ClientInfo {
        uuid,
        public_ip,
        public_port: Some(port),
        tcp: Some((tcp_ip, tcp_port)),
        link_secret: Some(secret),
    }
}

// ---------------------------------------------------------------- client

pub struct Client {
    pub stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
    pub local: SocketAddr,
}

pub fn connector(server: &TestServer) -> TlsConnector {
    TlsConnector::from(tls_support::client_config(&server.handle.cert_pem()))
}

impl Client {
    /// TCP + TLS, no login.
    pub async fn connect(server: &TestServer) -> Self {
        let tcp = TcpStream::connect(server.addr()).await.unwrap();
        let local = tcp.local_addr().unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let stream = connector(server).connect(name, tcp).await.unwrap();
        Self {
            stream,
            buf: Vec::new(),
            local,
        }
    }

    pub fn exporter(&self) -> [u8; 32] {
        self.stream
            .get_ref()
            .1
            .export_keying_material([0u8; 32], b"EXPORTER-chatr-connect-v2", None)
            .unwrap()
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Like `send_raw`, but the server may already have closed.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.send_raw(&frame(opcode, payload)).await;
    }

    /// Logs in with a v2 (channel-bound) signature; returns the UDP token.
    pub async fn login_v2(server: &TestServer, id: &Identity) -> (Self, [u8; 16]) {
        let mut c = Self::connect(server).await;
        let sig = id.sign_v2(&c.exporter());
        c.send(OP_CONNECT, &connect_payload(2, &id.uuid, &sig))
            .await;
        let f = c
            .next_frame()
            .await
            .expect("closed instead of PacketConnected");
        assert_eq!(
            f.opcode, OP_CONNECTED,
            "expected PacketConnected, got {f:?}"
        );
        let token: [u8; 16] = f.payload.as_slice().try_into().expect("udp_token");
        (c, token)
    }

    /// Logs in exactly as the spec says (version 1, UUID signature).
    pub async fn login_v1(server: &TestServer, id: &Identity) -> Self {
        let mut c = Self::connect(server).await;
        c.send(OP_CONNECT, &connect_payload(1, &id.uuid, &id.sign_v1()))
            .await;
        let f = c
            .next_frame()
            .await
            .expect("closed instead of PacketConnected");
        assert_eq!(f.opcode, OP_CONNECTED);
        assert!(
            f.payload.is_empty(),
            "a spec client gets an empty PacketConnected"
        );
        c
    }

    fn parse_buffered(&mut self) -> Option<Frame> {
        let mut len = 0u32;
        let mut shift = 0;
        let mut i = 0;
        loop {
            let b = *self.buf.get(i)?;
            len |= u32::from(b & 0x7f) << shift;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let end = i + len as usize;
        if self.buf.len() < end {
            return None;
        }
        let opcode = self.buf[i];
        let payload = self.buf[i + 1..end].to_vec();
        self.buf.drain(..end);
        Some(Frame { opcode, payload })
    }

    /// The next frame, or `None` once the server closed the connection.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(PATIENCE, self.next_frame_inner())
            .await
            .expect("server sent nothing and did not close")
    }

    async fn next_frame_inner(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.parse_buffered() {
                return Some(f);
            }
            let mut tmp = [0u8; 4096];
            match self.stream.read(&mut tmp).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// The next frame that is not a ping, answering pings (a live client).
    pub async fn next_answering_pings(&mut self) -> Option<Frame> {
        loop {
            let f = self.next_frame().await?;
            if f.opcode == OP_PING {
                self.send(OP_PONG, &f.payload).await;
                continue;
            }
            return Some(f);
        }
    }

    /// The next frame that is not a ping, without answering (a dead client).
    pub async fn next_ignoring_pings(&mut self) -> Option<Frame> {
        loop {
            let f = self.next_frame().await?;
            if f.opcode != OP_PING {
                return Some(f);
            }
        }
    }

    /// Answers pings for `time`; fails if anything else arrives.
    pub async fn stay_alive_quietly(&mut self, time: Duration) {
        let until = tokio::time::Instant::now() + time;
        loop {
            match tokio::time::timeout_at(until, self.next_frame_inner()).await {
                Err(_) => return,
                Ok(Some(f)) if f.opcode == OP_PING => self.send(OP_PONG, &f.payload).await,
                Ok(other) => panic!("expected only pings, got {other:?}"),
            }
        }
    }

    /// The server must send PacketDisconnect(`message`) and then close.
    pub async fn expect_disconnect(&mut self, message: &str) {
        let f = self
            .next_ignoring_pings()
            .await
            .unwrap_or_else(|| panic!("closed without PacketDisconnect({message:?})"));
        assert_eq!(f.disconnect_message(), message);
        self.expect_closed().await;
    }

    /// The server must close without sending anything (pings aside).
    pub async fn expect_closed(&mut self) {
        let f = self.next_ignoring_pings().await;
        assert_eq!(f, None, "expected the connection to close");
    }
}

// ---------------------------------------------------------------- UDP

/// Sends the UDP binding message with `token` from `socket` and returns the
/// observed endpoint from the server's answer.
pub async fn udp_bind(socket: &UdpSocket, server: &TestServer, token: &[u8; 16]) -> SocketAddr {
    udp_bind_both(socket, server, token).await.0
}

/// Like [`udp_bind`], also returning the TCP endpoint the answer carries
/// after the UDP one (`None` when the answer has the short form).
pub async fn udp_bind_both(
    socket: &UdpSocket,
    server: &TestServer,
    token: &[u8; 16],
) -> (SocketAddr, Option<SocketAddr>) {
    let mut msg = vec![0x00, b'C', b'H', b'R', 0x01];
    msg.extend_from_slice(token);
    let mut buf = [0u8; 256];
    // UDP may drop: retry a few times.
    for _ in 0..5 {
        socket.send_to(&msg, server.addr()).await.unwrap();
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await
        {
            assert_eq!(from, server.addr());
            let reply = &buf[..n];
            assert_eq!(&reply[..5], &[0x00, b'C', b'H', b'R', 0x02]);
            let mut c = Cursor(&reply[5..]);
            let ip = c.address();
            let port = c.u16();
            let tcp = if c.is_empty() {
                None
            } else {
                let tcp_ip = c.address();
                Some(SocketAddr::new(tcp_ip, c.u16()))
            };
            return (SocketAddr::new(ip, port), tcp);
        }
    }
    panic!("no BindingResponse");
}

// ---------------------------------------------------------------- version 3

pub const OP_RELAY_DATA: u8 = 0x9;
pub const OP_RELAY_CLOSE: u8 = 0xA;

/// What a version-3 login returns.
#[derive(Debug, Clone)]
pub struct V3Login {
    pub token: [u8; 16],
    /// The key both ends export for authenticated bindings.
    pub binding_key: [u8; 32],
    /// `PacketConnected` session parameters: version, features, NAT probe ports.
    pub version: u32,
    pub features: u8,
    pub probe_ports: Vec<u16>,
}

impl Client {
    /// The exporter value that keys authenticated UDP bindings.
    pub fn binding_key(&self) -> [u8; 32] {
        self.stream
            .get_ref()
            .1
            .export_keying_material([0u8; 32], b"EXPORTER-chatr-udp-binding-v3", None)
            .unwrap()
    }

    /// Logs in announcing version 3 with the channel-bound signature.
    pub async fn login_v3(server: &TestServer, id: &Identity) -> (Self, V3Login) {
        let mut c = Self::connect(server).await;
        let sig = id.sign_v2(&c.exporter());
        c.send(OP_CONNECT, &connect_payload(3, &id.uuid, &sig))
            .await;
        let f = c
            .next_frame()
            .await
            .expect("closed instead of PacketConnected");
        assert_eq!(
            f.opcode, OP_CONNECTED,
            "expected PacketConnected, got {f:?}"
        );
        let mut cur = Cursor(&f.payload);
        let token: [u8; 16] = cur.take(16).try_into().unwrap();
        let version = u32::from_be_bytes(cur.take(4).try_into().unwrap());
        let features = cur.take(1)[0];
        let count = cur.take(1)[0];
        let probe_ports = (0..count).map(|_| cur.u16()).collect();
        assert!(cur.is_empty(), "trailing bytes in PacketConnected: {f:?}");
        let binding_key = c.binding_key();
        (
            c,
            V3Login {
                token,
                binding_key,
                version,
                features,
                probe_ports,
            },
        )
    }
}

/// `00 'C' 'H' 'R' 03 ‖ token ‖ counter ‖ HMAC-SHA256(key, all before)`.
pub fn auth_binding(token: &[u8; 16], key: &[u8; 32], counter: u64) -> Vec<u8> {
    let mut msg = vec![0x00, b'C', b'H', b'R', 0x03];
    msg.extend_from_slice(token);
    msg.extend_from_slice(&counter.to_be_bytes());
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), &msg);
    msg.extend_from_slice(tag.as_ref());
    msg
}

/// Sends `datagram` (a binding request) and returns the observed endpoint of the
/// answer, or `None` when the server stays silent for `wait`.
pub async fn try_bind(
    socket: &UdpSocket,
    server: &TestServer,
    datagram: &[u8],
    wait: Duration,
) -> Option<SocketAddr> {
    socket.send_to(datagram, server.addr()).await.unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    let reply = &buf[..n];
    assert_eq!(&reply[..5], &[0x00, b'C', b'H', b'R', 0x02], "{reply:?}");
    let mut c = Cursor(&reply[5..]);
    let ip = c.address();
    Some(SocketAddr::new(ip, c.u16()))
}

/// An authenticated binding with retries (UDP may drop); panics without an answer.
pub async fn udp_bind_v3(
    socket: &UdpSocket,
    server: &TestServer,
    login: &V3Login,
    counter: u64,
) -> SocketAddr {
    let msg = auth_binding(&login.token, &login.binding_key, counter);
    for _ in 0..5 {
        if let Some(observed) = try_bind(socket, server, &msg, Duration::from_secs(1)).await {
            return observed;
        }
    }
    panic!("no BindingResponse to an authenticated binding");
}

/// The relay id at the end of a version-3 ClientInfo, if it has one.
pub fn relay_id_of(frame: &Frame) -> Option<[u8; 8]> {
    assert_eq!(
        frame.opcode, OP_CLIENT_INFO,
        "expected ClientInfo, got {frame:?}"
    );
    let mut c = Cursor(&frame.payload);
    c.uuid();
    c.address();
    if c.is_empty() {
        return None;
    }
    c.u16();
    c.address();
    c.u16();
    c.take(32);
    if c.is_empty() {
        return None;
    }
    let id: [u8; 8] = c.take(8).try_into().unwrap();
    assert!(c.is_empty());
    (id != [0; 8]).then_some(id)
}

/// A brokers an exchange with B (request, accept); returns each one's ClientInfo.
pub async fn broker(a: &mut Client, b: &mut Client, b_id: &Identity) -> (Frame, Frame) {
    let a_local = a.local;
    a.send(
        OP_REQUEST,
        &uuid_endpoint(&b_id.uuid, a_local.ip(), Some(a_local.port())),
    )
    .await;
    let req = b.next_answering_pings().await.unwrap();
    assert_eq!(req.opcode, OP_REQUEST, "{req:?}");
    let requester = Cursor(&req.payload).uuid();
    let b_local = b.local;
    b.send(
        OP_ACCEPT,
        &uuid_endpoint(&requester, b_local.ip(), Some(b_local.port())),
    )
    .await;
    let accept = a.next_answering_pings().await.unwrap();
    assert_eq!(accept.opcode, OP_ACCEPT, "{accept:?}");
    let info_a = a.next_answering_pings().await.unwrap();
    let info_b = b.next_answering_pings().await.unwrap();
    (info_a, info_b)
}

/// `00 'C' 'H' 'R' ‖ kind ‖ relay id ‖ inner`.
pub fn relayed(kind: u8, relay: &[u8; 8], inner: &[u8]) -> Vec<u8> {
    let mut d = vec![0x00, b'C', b'H', b'R', kind];
    d.extend_from_slice(relay);
    d.extend_from_slice(inner);
    d
}

/// The next datagram on `socket` within `wait`, if any.
pub async fn recv_within(socket: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    buf.truncate(n);
    Some((buf, from))
}
