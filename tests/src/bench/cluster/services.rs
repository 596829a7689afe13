//! The cluster benchmark's engines: Debian's `nats-server` (JetStream) and a
//! PostgreSQL in a temporary directory, both on random loopback ports (as in
//! `server/tests/cluster_support`, which the server's tests use).

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::BenchError;

fn free_port() -> Result<u16, BenchError> {
    let listener =
        StdListener::bind("127.0.0.1:0").map_err(|e| BenchError::io("pick a free port", e))?;
    Ok(listener
        .local_addr()
        .map_err(|e| BenchError::io("local_addr", e))?
        .port())
}

fn wait_listening(addr: SocketAddr, what: &str, child: &mut Child) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(BenchError::Server(format!(
                "{what} exited ({status}) before listening"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(BenchError::Timeout(format!(
        "{what} not listening on {addr}"
    )))
}

/// `nats-server` with JetStream; ping 1 s × 2 (deploy/cluster/nats-server.conf).
#[derive(Debug)]
pub struct Nats {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Nats {
    /// Starts it.
    pub fn start() -> Result<Self, BenchError> {
        let dir = tempfile::tempdir().map_err(|e| BenchError::io("temp dir", e))?;
        let port = free_port()?;
        let conf = format!(
            "listen: 127.0.0.1:{port}\nserver_name: chatr-bench\nping_interval: \"1s\"\nping_max: 2\n\
             jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 256MB\n}}\n",
            dir.path().join("js").display()
        );
        std::fs::write(dir.path().join("nats.conf"), conf)
            .map_err(|e| BenchError::io("write nats.conf", e))?;
        let mut nats = Self {
            port,
            dir,
            child: None,
        };
        nats.spawn()?;
        Ok(nats)
    }

    fn spawn(&mut self) -> Result<(), BenchError> {
        let mut child = Command::new("nats-server")
            .arg("-c")
            .arg(self.dir.path().join("nats.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::io("run nats-server (apt-get install nats-server)", e))?;
        wait_listening(
            SocketAddr::from(([127, 0, 0, 1], self.port)),
            "nats-server",
            &mut child,
        )?;
        self.child = Some(child);
        Ok(())
    }

    /// Its URL.
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

    /// Starts it again, same port, same store.
    pub fn restart(&mut self) -> Result<(), BenchError> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// PostgreSQL in a temporary directory (as the `postgres` user when root).
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    bin: PathBuf,
    data: PathBuf,
    _base: tempfile::TempDir,
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
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

fn run(cmd: &mut Command, what: &str) -> Result<(), BenchError> {
    let out = cmd
        .output()
        .map_err(|e| BenchError::io(what.to_owned(), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BenchError::Server(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl Postgres {
    /// initdb + start.
    pub fn start() -> Result<Self, BenchError> {
        let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| BenchError::io("find PostgreSQL (apt-get install postgresql)", e))?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .collect();
        bins.sort();
        let bin = bins
            .pop()
            .ok_or_else(|| BenchError::Server("no /usr/lib/postgresql/*/bin/initdb".into()))?;
        let base = tempfile::Builder::new()
            .prefix("chatr-bench-pg")
            .tempdir()
            .map_err(|e| BenchError::io("temp dir", e))?;
        let data = base.path().join("data");
        std::fs::create_dir(&data).map_err(|e| BenchError::io("mkdir", e))?;
        if is_root() {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| BenchError::io("chmod", e))?;
            run(
                Command::new("chown").arg("postgres:postgres").arg(&data),
                "chown",
            )?;
        }
        run(
            pg_command(&bin.join("initdb"))
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
                .arg(&data),
            "initdb",
        )?;
        let pg = Self {
            port: free_port()?,
            bin,
            data,
            _base: base,
        };
        pg.start_again()?;
        Ok(pg)
    }

    /// `pg_ctl start`.
    pub fn start_again(&self) -> Result<(), BenchError> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.data.display()
        );
        run(
            pg_command(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-o", &options, "-l"])
                .arg(self.data.join("log"))
                .args(["-w", "-t", "30", "start"]),
            "pg_ctl start",
        )
    }

    /// `pg_ctl stop -m immediate` (as a crash: no checkpoint).
    pub fn crash(&self) {
        let _ = pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.crash();
    }
}
