//! Helpers shared by the client's session and end-to-end tests: an in-process
//! `chatr-server` on loopback with fast timings, and ready-made client pieces.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unreachable_pub,
    missing_docs
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chatr_client::config::{ApiUrl, Fingerprint, HostPort, Trust};
use chatr_client::home::Home;
use chatr_client::identity::Identity;
use chatr_client::rest::RegistryClient;
use chatr_client::session::{BackoffConfig, SessionConfig, SessionTimings};
use chatr_server::{ServerConfig, ServerHandle};
use tokio_util::sync::CancellationToken;

/// Shows the logs of a test run with `RUST_LOG` set (e.g. `RUST_LOG=chatr_client=debug`);
/// silent otherwise. Safe to call from every test.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A running in-process server.
pub struct TestServer {
    pub handle: ServerHandle,
    pub shutdown: CancellationToken,
}

impl TestServer {
    /// Starts a server keeping its state in `dir`, on `listen` (port 0 when None).
    pub async fn start(dir: &Path, listen: Option<SocketAddr>) -> Self {
        init_logs();
        let mut config = ServerConfig::for_tests(dir);
        if let Some(addr) = listen {
            config.listen = addr;
        }
        config.timings.ping_interval = Duration::from_millis(200);
        config.timings.ping_timeout = Duration::from_millis(600);
        config.timings.takeover_probe = Duration::from_millis(300);
        config.limits.api_requests_per_second = 1000;
        config.limits.api_burst = 1000;
        let shutdown = CancellationToken::new();
        let handle = chatr_server::start(config, shutdown.clone()).await.unwrap();
        Self { handle, shutdown }
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) -> SocketAddr {
        let addr = self.handle.connect_addr();
        self.shutdown.cancel();
        self.handle.join().await;
        addr
    }

    pub fn connect(&self) -> HostPort {
        let addr = self.handle.connect_addr();
        HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    pub fn api(&self) -> ApiUrl {
        format!("https://{}", self.handle.api_addr())
            .parse()
            .unwrap()
    }

    pub fn trust(&self) -> Trust {
        let fp: Fingerprint = self.handle.cert_fingerprint().parse().unwrap();
        Trust::Fingerprint(fp)
    }

    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        chatr_client::trust::client_config(&self.trust(), &Home::new("/nonexistent")).unwrap()
    }

    pub fn registry_client(&self) -> RegistryClient {
        RegistryClient::new(self.api(), self.tls())
    }

    /// A new identity, registered through the REST API.
    pub async fn registered_identity(&self) -> Identity {
        let id = Identity::generate();
        self.registry_client().register(&id, None).await.unwrap();
        id
    }

    /// Session config with short timers for `identity` from port `local_port`.
    pub fn session_config(&self, identity: Identity, local_port: u16) -> SessionConfig {
        let mut cfg = SessionConfig::new(identity, self.connect(), self.tls(), local_port);
        cfg.timings = fast_timings();
        cfg.backoff = fast_backoff();
        cfg.connect_timeout = Duration::from_secs(5);
        cfg
    }
}

pub fn fast_timings() -> SessionTimings {
    SessionTimings {
        login_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(2),
        binding_interval: Duration::from_millis(100),
        binding_attempts: 20,
        binding_refresh: Duration::from_secs(25),
    }
}

pub fn fast_backoff() -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        multiplier: 2.0,
        jitter: 0.5,
    }
}

/// Library client options with short timers.
pub fn client_options(server: &TestServer, identity: Identity) -> chatr_client::ClientOptions {
    let mut o = chatr_client::ClientOptions::new(identity, server.connect(), server.tls());
    o.session = fast_timings();
    o.backoff = fast_backoff();
    o.punch.give_up_after = Duration::from_secs(5);
    o.request_timeout = Duration::from_secs(10);
    o.link.handshake_timeout = Duration::from_secs(3);
    o
}

/// Loopback tests wait at most this long for anything.
pub const WAIT: Duration = Duration::from_secs(15);
