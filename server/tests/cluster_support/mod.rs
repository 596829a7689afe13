//! Real servers for the cluster tests: Debian's `nats-server` (JetStream) and
//! PostgreSQL, each started here on a random loopback port with its own temporary
//! directory, and Chatr nodes (in-process, or as `chatr-server` processes for the
//! tests that kill or freeze one).
//!
//! `tests/run-all.sh` installs `nats-server` and `postgresql` when they are missing;
//! a test that cannot find them fails and says what to install.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatr_server::{PostgresConfig, ServerConfig, ServerHandle};
use tokio_util::sync::CancellationToken;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP on `addr`.
pub fn wait_listening(addr: SocketAddr, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited ({status}) before listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} is not listening on {addr} after 30 s");
}

// ---------------------------------------------------------------- NATS

/// A `nats-server` with JetStream, on loopback.
pub struct Nats {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Nats {
    /// Starts one. Its ping interval is short (1 s, 2 missed pings), as
    /// `deploy/nats-server.conf` recommends, so a hung node loses its subscriptions
    /// within seconds.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\n\
                 server_name: chatr-test\n\
                 ping_interval: \"1s\"\n\
                 ping_max: 2\n\
                 jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 256MB\n}}\n",
                dir.path().join("js").display()
            ),
        )
        .unwrap();
        let mut nats = Self {
            port,
            dir,
            child: None,
        };
        nats.spawn();
        nats
    }

    fn spawn(&mut self) {
        let mut child = Command::new("nats-server")
            .arg("-c")
            .arg(self.dir.path().join("nats.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run nats-server: install it (apt-get install nats-server)");
        wait_listening(self.addr(), "nats-server", &mut child);
        self.child = Some(child);
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same JetStream store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- PostgreSQL

/// A PostgreSQL cluster in a temporary directory, run as the `postgres` user when
/// we are root (it refuses to run as root).
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
    _base: tempfile::TempDir,
}

fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: apt-get install postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/initdb: apt-get install postgresql")
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.arg("-u").arg("postgres").arg("--").arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

impl Postgres {
    pub fn start() -> Self {
        let bin = pg_bin();
        let base = tempfile::Builder::new()
            .prefix("chatr-pg")
            .tempdir()
            .unwrap();
        let dir = base.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        if is_root() {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown of the PostgreSQL data dir failed");
        }
        let out = pg_command(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Self {
            port: free_port(),
            bin,
            dir,
            _base: base,
        };
        pg.spawn();
        pg
    }

    fn spawn(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=on -c synchronous_commit=on",
            self.port,
            self.dir.display()
        );
        let out = pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.dir)
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "30", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&self, mode: &str) {
        let _ = pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", mode, "-w", "-t", "30", "stop"])
            .output();
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn config(&self) -> PostgresConfig {
        PostgresConfig {
            url: self.url(),
            ca_file: None,
            pool_size: 4,
        }
    }

    /// Stops it the hard way (as a crash would: no checkpoint) and starts it again.
    pub fn crash_restart(&self) {
        self.stop("immediate");
        self.spawn();
    }

    /// Stops it the hard way; [`Postgres::start_again`] brings it back.
    pub fn crash(&self) {
        self.stop("immediate");
    }

    pub fn start_again(&self) {
        self.spawn();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop("immediate");
    }
}

// ---------------------------------------------------------------- nodes

/// Timings short enough for tests (liveness bounds, not speed).
pub fn node_config(dir: &Path, nats: &Nats, name: &str) -> ServerConfig {
    let mut config = ServerConfig::for_tests(dir);
    config.timings.ping_interval = Duration::from_millis(300);
    config.timings.ping_timeout = Duration::from_secs(2);
    config.timings.login_timeout = Duration::from_secs(5);
    config.timings.request_timeout = Duration::from_secs(5);
    config.timings.takeover_probe = Duration::from_secs(1);
    config.timings.write_timeout = Duration::from_secs(3);
    config.cluster.nats_url = Some(nats.url());
    config.cluster.node_name = Some(name.to_owned());
    config.cluster.request_timeout = Duration::from_secs(1);
    config.cluster.heartbeat = Duration::from_millis(300);
    // Tests register and request much faster than a client may.
    config.limits.api_requests_per_second = 100_000;
    config.limits.api_burst = 100_000;
    config
}

/// A node running in this process.
pub struct Node {
    pub handle: ServerHandle,
    pub shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Node {
    pub async fn start(nats: &Nats, name: &str, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = node_config(dir.path(), nats, name);
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let handle = chatr_server::start(config, shutdown.clone()).await.unwrap();
        Self {
            handle,
            shutdown,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.connect_addr()
    }

    pub fn cert_pem(&self) -> String {
        self.handle.cert_pem()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle.join())
            .await
            .expect("node did not stop");
    }
}

/// Held by each cluster test for its whole run, so that one cluster runs at a time even when
/// the harness runs tests in parallel: three nodes beside NATS and PostgreSQL per test, two
/// tests at once on two cores, starved the nodes' 300 ms heartbeats (meshing not seen in 30 s).
/// A tokio mutex: it is meant to be held across `.await` and does not poison when a test fails.
pub async fn one_cluster_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE_AT_A_TIME.lock().await
}

/// Waits until `check` holds, polling; panics with `what` after `patience`.
pub async fn eventually(patience: Duration, what: &str, mut check: impl FnMut() -> bool) {
    eventually_explained(patience, || {
        if check() {
            Ok(())
        } else {
            Err(format!("{what} did not happen"))
        }
    })
    .await;
}

/// Waits until `check` returns `Ok`, polling; after `patience`, panics with the last
/// reason it gave (what the state was, so a failure says which part was missing).
pub async fn eventually_explained(
    patience: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let deadline = tokio::time::Instant::now() + patience;
    while let Err(why) = check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{why} within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node hears from `peers` others.
pub async fn wait_meshed(nodes: &[&Node]) {
    let want = nodes.len() - 1;
    for node in nodes {
        eventually_explained(Duration::from_secs(30), || {
            let health = node.handle.cluster_health();
            if health
                .as_ref()
                .is_some_and(|h| h.connected && h.claims_ok && h.peers.len() >= want)
            {
                Ok(())
            } else {
                Err(format!(
                    "nodes hearing each other ({want} peers each) did not happen: {health:?}"
                ))
            }
        })
        .await;
    }
}
