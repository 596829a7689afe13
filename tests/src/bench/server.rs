//! The parent's handle on a server-under-test child process (see [`serve`]).
//!
//! [`serve`]: crate::bench::serve

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::bench::BenchError;
use crate::bench::serve::ServerKind;
use crate::bench::sys::ProcSample;
use crate::bench::tls::BenchCert;

/// How to start a server child.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// Which server.
    pub kind: ServerKind,
    /// Certificate both kinds use.
    pub cert: BenchCert,
    /// Scratch directory (data dir of the chatr kind lives below it).
    pub dir: PathBuf,
    /// Identities file for the chatr kind.
    pub identities: Option<PathBuf>,
    /// Ping interval override, ms.
    pub ping_interval_ms: Option<u64>,
    /// Ping timeout override, ms.
    pub ping_timeout_ms: Option<u64>,
    /// Server log filter.
    pub log: String,
    /// Listen backlog override (chatr kind).
    pub listen_backlog: Option<u32>,
    /// REST API connection cap override (chatr kind).
    pub api_max_connections: Option<usize>,
    /// glibc `malloc_trim` period, ms.
    pub malloc_trim_ms: Option<u64>,
    /// Cluster mode (chatr kind; the binary needs the `cluster` feature).
    pub cluster: Option<ClusterSpec>,
}

/// A chatr child as a cluster node.
#[derive(Debug, Clone, Default)]
pub struct ClusterSpec {
    /// NATS URL.
    pub nats_url: Option<String>,
    /// Node name.
    pub node_name: String,
    /// PostgreSQL registry URL (else the in-memory registry with the identities file).
    pub postgres_url: Option<String>,
    /// Takeover probe override, ms.
    pub takeover_probe_ms: Option<u64>,
}

/// What the server reports about itself.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
pub struct ServerStats {
    /// Logged-in sessions (chatr) or open connections (bare).
    pub online: u64,
    /// Sessions dropped with "Time out" so far.
    pub ping_timeouts: f64,
}

/// A running server child. Killed on drop if not stopped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    pid: u32,
    addr: SocketAddr,
    api_addr: Option<SocketAddr>,
    kind: ServerKind,
}

impl ServerProcess {
    /// Starts the child and waits until it listens.
    pub async fn start(spec: &ServerSpec) -> Result<Self, BenchError> {
        let exe = std::env::current_exe().map_err(|e| BenchError::io("current_exe", e))?;
        let data_dir = spec.dir.join(match spec.kind {
            ServerKind::Chatr => "chatr-data",
            ServerKind::Bare => "bare-data",
        });
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--kind")
            .arg(match spec.kind {
                ServerKind::Chatr => "chatr",
                ServerKind::Bare => "bare",
            })
            .arg("--cert")
            .arg(&spec.cert.cert)
            .arg("--key")
            .arg(&spec.cert.key)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--log")
            .arg(&spec.log);
        if let Some(path) = &spec.identities {
            cmd.arg("--identities").arg(path);
        }
        if let Some(ms) = spec.ping_interval_ms {
            cmd.arg("--ping-interval-ms").arg(ms.to_string());
        }
        if let Some(ms) = spec.ping_timeout_ms {
            cmd.arg("--ping-timeout-ms").arg(ms.to_string());
        }
        if let Some(backlog) = spec.listen_backlog {
            cmd.arg("--listen-backlog").arg(backlog.to_string());
        }
        if let Some(cap) = spec.api_max_connections {
            cmd.arg("--api-max-connections").arg(cap.to_string());
        }
        if let Some(ms) = spec.malloc_trim_ms {
            cmd.arg("--malloc-trim-ms").arg(ms.to_string());
        }
        if let Some(cluster) = &spec.cluster {
            if let Some(url) = &cluster.nats_url {
                cmd.arg("--cluster-nats-url").arg(url);
            }
            cmd.arg("--node-name").arg(&cluster.node_name);
            if let Some(url) = &cluster.postgres_url {
                cmd.arg("--registry-postgres-url").arg(url);
            }
            if let Some(ms) = cluster.takeover_probe_ms {
                cmd.arg("--takeover-probe-ms").arg(ms.to_string());
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| BenchError::io("spawn the server child", e))?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Server("child exited at once".into()))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Server("no stdout".into()))?;
        let mut stdout = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(120), stdout.next_line())
            .await
            .map_err(|_| BenchError::Timeout("server child did not get ready in 120 s".into()))?
            .map_err(|e| BenchError::io("read the server child's stdout", e))?
            .ok_or_else(|| BenchError::Server("server child exited before READY".into()))?;
        let mut words = ready
            .strip_prefix("READY ")
            .unwrap_or_default()
            .split_whitespace();
        let addr = words
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| BenchError::Server(format!("unexpected line from child: {ready:?}")))?;
        let api_addr = words.next().and_then(|a| a.parse().ok());
        Ok(Self {
            child,
            stdin,
            stdout,
            pid,
            addr,
            api_addr,
            kind: spec.kind,
        })
    }

    /// Where the REST API listens (chatr kind).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Which server this is.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// Process id (for `/proc`, `perf -p`).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// RSS and CPU counters now.
    pub fn sample(&self) -> Result<ProcSample, BenchError> {
        ProcSample::read(self.pid)
    }

    /// Asks the server for its own counters.
    pub async fn stats(&mut self) -> Result<ServerStats, BenchError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| BenchError::Server("stdin closed".into()))?;
        stdin
            .write_all(b"stats\n")
            .await
            .map_err(|e| BenchError::io("write to the server child", e))?;
        let line = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
            .await
            .map_err(|_| BenchError::Timeout("server child stats".into()))?
            .map_err(|e| BenchError::io("read the server child's stdout", e))?
            .ok_or_else(|| BenchError::Server("server child exited".into()))?;
        serde_json::from_str(&line)
            .map_err(|e| BenchError::Server(format!("bad stats line {line:?}: {e}")))
    }

    /// Stops the server gracefully (closes its stdin), killing it after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        drop(self.stdin.take());
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// A scratch directory for one benchmark: certificate, identities, data dirs.
#[derive(Debug)]
pub struct Workspace {
    dir: tempfile::TempDir,
    /// The shared certificate.
    pub cert: BenchCert,
}

impl Workspace {
    /// Creates the directory and the certificate.
    pub fn new() -> Result<Self, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix("chatr-bench-")
            .tempdir()
            .map_err(|e| BenchError::io("create a temp dir", e))?;
        let cert = BenchCert::create(dir.path())?;
        Ok(Self { dir, cert })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A server spec of `kind` in this workspace with default settings.
    pub fn spec(&self, kind: ServerKind, identities: Option<PathBuf>) -> ServerSpec {
        ServerSpec {
            kind,
            cert: self.cert.clone(),
            dir: self.path().to_path_buf(),
            identities: match kind {
                ServerKind::Chatr => identities,
                ServerKind::Bare => None,
            },
            ping_interval_ms: None,
            ping_timeout_ms: None,
            log: "warn".into(),
            listen_backlog: None,
            api_max_connections: None,
            malloc_trim_ms: None,
            cluster: None,
        }
    }
}
