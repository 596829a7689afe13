//! A real `chatr-server` inside the lab, for tests that run the real binaries.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::matrix::{Binaries, MatrixError, io_err, tail};
use super::topology::Host;

/// Port of the server's TLS rendezvous (TCP) and UDP endpoint discovery.
pub const CONNECT_PORT: u16 = 7777;
/// Port of the server's HTTPS registry API.
pub const API_PORT: u16 = 7778;
/// Limit for the server to write its ready file.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `chatr-server` running inside a lab host; killed on drop.
#[derive(Debug)]
pub struct LabServer {
    ip: Ipv4Addr,
    cert: PathBuf,
    child: std::process::Child,
}

impl LabServer {
    /// Starts the server on `host` with its state in `data_dir`, and waits until it is ready.
    pub fn start(
        binaries: &Binaries,
        host: &Host,
        data_dir: &Path,
    ) -> Result<LabServer, MatrixError> {
        Self::start_with(binaries, host, data_dir, &[])
    }

    /// As [`LabServer::start`], with `extra` appended to `chatr-server serve`'s arguments.
    pub fn start_with(
        binaries: &Binaries,
        host: &Host,
        data_dir: &Path,
        extra: &[&str],
    ) -> Result<LabServer, MatrixError> {
        std::fs::create_dir_all(data_dir)
            .map_err(io_err(format!("creating {}", data_dir.display())))?;
        let ready = data_dir.join("ready.json");
        let log_path = data_dir.join("server.log");
        let log = File::create(&log_path).map_err(io_err("creating the server log"))?;
        let log_err = log
            .try_clone()
            .map_err(io_err("duplicating the server log"))?;
        let ip = host.ip();
        let mut child = host
            .netns()
            .command(&binaries.server)
            .arg("serve")
            // Dual-stack, as by default: IPv4 clients see exactly an IPv4 server, and the
            // lab's IPv6 hosts (when it has them) can reach it over IPv6.
            .args(["--listen", &format!("[::]:{CONNECT_PORT}")])
            .args(["--api-listen", &format!("[::]:{API_PORT}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--san", &ip.to_string()])
            .arg("--ready-file")
            .arg(&ready)
            // Every pair registers and looks up keys; same-lan peers share one public IP.
            .args(["--api-rate", "1000", "--api-burst", "1000"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| {
                MatrixError::Server(format!("spawning {}: {e}", binaries.server.display()))
            })?;
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            if ready.is_file() && data_dir.join("cert.pem").is_file() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(MatrixError::Server(format!(
                    "exited with {status}; log:\n{}",
                    tail(&log_path, 20)
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(MatrixError::Server(format!(
                    "no ready file after {SERVER_START_TIMEOUT:?}; log:\n{}",
                    tail(&log_path, 20)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(LabServer {
            ip,
            cert: data_dir.join("cert.pem"),
            child,
        })
    }
}

impl LabServer {
    /// The server's address on the public segment.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Its self-signed certificate (PEM), which clients pin at `chatr init`.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// `ip:port` of the Connect port (TLS and UDP).
    pub fn connect_addr(&self) -> String {
        format!("{}:{CONNECT_PORT}", self.ip)
    }

    /// The server process (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The registry API's URL.
    pub fn api_url(&self) -> String {
        format!("https://{}:{API_PORT}", self.ip)
    }
}

impl Drop for LabServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
