//! Shared helpers of the registry/ops integration tests: an in-process server
//! on loopback port 0, a tiny HTTPS client pinned to the server's certificate,
//! identities that sign exact bytes, a Connect-protocol login, and a handle on
//! the real `chatr-server` binary.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chatr_proto::codec::ConnectCodec;
use chatr_proto::{Packet, PacketConnect, PacketPong};
use chatr_server::{ServerConfig, ServerHandle};
use ed25519_dalek::{Signer as _, SigningKey};
use futures_util::{SinkExt as _, StreamExt as _};
use hyper::header::HeaderMap;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[path = "../tls_support/mod.rs"]
mod tls_support;
pub use tls_support::client_config;

/// An in-process server with its own data dir.
pub struct TestServer {
    pub handle: Option<ServerHandle>,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
}

/// Starts a server on loopback port 0 with a generous API rate limit;
/// `tweak` adjusts the config first.
pub async fn start_server(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests(dir.path());
    config.limits.api_requests_per_second = 1000;
    config.limits.api_burst = 1000;
    tweak(&mut config);
    let shutdown = CancellationToken::new();
    let handle = chatr_server::start(config, shutdown.clone()).await.unwrap();
    TestServer {
        handle: Some(handle),
        shutdown,
        dir,
    }
}

impl TestServer {
    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().unwrap()
    }
    pub fn api(&self) -> Api {
        Api {
            addr: self.handle().api_addr(),
            cert_pem: self.handle().cert_pem(),
        }
    }
    pub fn connect_addr(&self) -> SocketAddr {
        self.handle().connect_addr()
    }
    pub fn cert_pem(&self) -> String {
        self.handle().cert_pem()
    }
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), handle.join())
                .await
                .expect("server did not stop");
        }
    }
}

pub async fn tls_connect(addr: SocketAddr, cert_pem: &str) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(client_config(cert_pem));
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// The answer to one HTTPS request.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
    /// Asserts an error answer: status and `{"error": name, "message": non-empty}`.
    pub fn assert_error(&self, status: u16, name: &str) {
        assert_eq!(self.status, status, "{self:?} {}", self.text());
        let json = self.json();
        assert_eq!(json["error"], name, "{json}");
        assert!(
            json["message"].as_str().is_some_and(|m| m.len() > 10),
            "{json}"
        );
        assert_eq!(json.as_object().unwrap().len(), 2, "{json}");
    }
}

/// The registry API of one server.
#[derive(Debug, Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub cert_pem: String,
}

impl Api {
    /// One request on a fresh TLS connection.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let tls = tls_connect(self.addr, &self.cert_pem).await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        let driver = tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Body::from(body.to_vec())).unwrap();
        let response = sender.send_request(req).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20)
            .await
            .unwrap()
            .to_vec();
        drop(sender);
        driver.abort();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"").await
    }

    /// PUT with `body` signed by `signer`.
    pub async fn put_signed(&self, uuid: &str, body: &[u8], signer: &SigningKey) -> Reply {
        let sig = sign(signer, body);
        self.request(
            "PUT",
            &format!("/api/1/clients/{uuid}"),
            &[("Chatr-PublicKey-Signature", &sig)],
            body,
        )
        .await
    }

    /// POST with `body` signed by `signer`.
    pub async fn post_signed(&self, uuid: &str, body: &[u8], signer: &SigningKey) -> Reply {
        let sig = sign(signer, body);
        self.request(
            "POST",
            &format!("/api/1/clients/{uuid}"),
            &[("Chatr-PublicKey-Signature", &sig)],
            body,
        )
        .await
    }

    /// Registers `id` properly (PUT, body signed by its own key).
    pub async fn register(&self, id: &Identity) -> Reply {
        self.put_signed(&id.uuid.to_string(), &id.body(), &id.key)
            .await
    }
}

/// A client identity: UUID and ed25519 key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub uuid: Uuid,
    pub key: SigningKey,
}

impl Identity {
    pub fn new() -> Self {
        Self {
            uuid: Uuid::new_v4(),
            key: new_key(),
        }
    }
    pub fn public_b64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().as_bytes())
    }
    /// The registration body, byte for byte as a client would send it.
    pub fn body(&self) -> Vec<u8> {
        key_body(&self.key)
    }
}

pub fn new_key() -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    SigningKey::from_bytes(&seed)
}

pub fn key_body(key: &SigningKey) -> Vec<u8> {
    format!(
        r#"{{"key":"{}"}}"#,
        STANDARD.encode(key.verifying_key().as_bytes())
    )
    .into_bytes()
}

pub fn sign(key: &SigningKey, bytes: &[u8]) -> String {
    STANDARD.encode(key.sign(bytes).to_bytes())
}

/// A logged-in (or refused) Connect session.
pub type Session = Framed<TlsStream<TcpStream>, ConnectCodec>;

/// Sends a version-2 (channel-bound) PacketConnect signed by `key` and
/// returns the session and the first packet the server answers with.
pub async fn login(
    addr: SocketAddr,
    cert_pem: &str,
    uuid: Uuid,
    key: &SigningKey,
) -> (Session, Packet) {
    login_version(addr, cert_pem, uuid, key, chatr_proto::VERSION_CURRENT).await
}

/// [`login`] speaking protocol `version`.
pub async fn login_version(
    addr: SocketAddr,
    cert_pem: &str,
    uuid: Uuid,
    key: &SigningKey,
    version: u32,
) -> (Session, Packet) {
    let tls = tls_connect(addr, cert_pem).await;
    let mut exporter = [0u8; 32];
    tls.get_ref()
        .1
        .export_keying_material(
            &mut exporter,
            chatr_proto::CHANNEL_BINDING_EXPORTER_LABEL,
            None,
        )
        .unwrap();
    let message = chatr_proto::channel_binding_message(&uuid, &exporter);
    let mut session = Framed::new(tls, ConnectCodec::new());
    session
        .send(Packet::Connect(PacketConnect {
            version,
            uuid,
            signature: key.sign(&message).to_bytes().to_vec(),
        }))
        .await
        .unwrap();
    let first = next_packet(&mut session).await;
    (session, first)
}

/// The next packet other than a ping (pings are answered), within 10 s.
pub async fn next_packet(session: &mut Session) -> Packet {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let packet = tokio::time::timeout(left, session.next())
            .await
            .expect("no packet within 10 s")
            .expect("connection closed")
            .expect("undecodable packet");
        match packet {
            Packet::Ping(ping) => {
                session
                    .send(Packet::Pong(PacketPong {
                        ping_id: ping.ping_id,
                    }))
                    .await
                    .unwrap();
            }
            other => return other,
        }
    }
}

pub fn disconnect_message(packet: &Packet) -> Option<&str> {
    match packet {
        Packet::Disconnect(d) => Some(d.message.as_str()),
        _ => None,
    }
}

/// The real `chatr-server` binary, killed when dropped.
pub struct Binary {
    pub child: Child,
    pub data_dir: PathBuf,
    pub ready: serde_json::Value,
    pub stderr_path: PathBuf,
}

pub const BIN: &str = env!("CARGO_BIN_EXE_chatr-server");

/// Starts `chatr-server serve` on loopback port 0 with `data_dir`, plus
/// `extra` arguments, and waits for its ready file.
pub fn spawn_binary(data_dir: &Path, extra: &[&str]) -> Binary {
    spawn_binary_with_env(data_dir, extra, &[])
}

pub fn spawn_binary_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Binary {
    let ready_file = data_dir.with_extension("ready.json");
    let _ = std::fs::remove_file(&ready_file);
    let stderr_path = data_dir.with_extension("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .arg("--ready-file")
        .arg(&ready_file)
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        if let Ok(text) = std::fs::read_to_string(&ready_file) {
            break serde_json::from_str(&text).unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "chatr-server exited early with {status}: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "chatr-server did not get ready");
        std::thread::sleep(Duration::from_millis(20));
    };
    Binary {
        child,
        data_dir: data_dir.to_path_buf(),
        ready,
        stderr_path,
    }
}

impl Binary {
    pub fn api_addr(&self) -> SocketAddr {
        self.ready["api"].as_str().unwrap().parse().unwrap()
    }
    /// The API, trusting the self-signed certificate in the data dir.
    pub fn api(&self) -> Api {
        Api {
            addr: self.api_addr(),
            cert_pem: std::fs::read_to_string(self.data_dir.join("cert.pem")).unwrap(),
        }
    }
    pub fn connect_addr(&self) -> SocketAddr {
        self.ready["connect"].as_str().unwrap().parse().unwrap()
    }
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
    /// Sends a signal by name (`TERM`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
    /// Waits for the process to exit (at most `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "chatr-server did not exit: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an admin subcommand of the binary against `data_dir`.
pub fn admin(data_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("CHATR_DATA_DIR")
        .env_remove("CHATR_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}
