//! Running the real `chatr` CLI inside lab hosts, as a user would.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::lab_server::LabServer;
use super::matrix::tail;
use super::topology::Host;

/// Limit for each short CLI step (init, register, whoami, contacts add).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `chatr` for the users of one test (or one matrix pair): each user `who` has its
/// home in `dir/who`, and each step's stdout/stderr go to `dir/who.step.out|err`.
#[derive(Debug)]
pub struct ChatrRunner<'a> {
    /// The `chatr` binary.
    pub chatr: PathBuf,
    /// The server every user enrols with.
    pub server: &'a LabServer,
    /// Homes and logs.
    pub dir: PathBuf,
}

/// A finished process: its exit (None = killed at the deadline) and files.
#[derive(Debug)]
pub struct Finished {
    /// How it ended (`None`: killed at the deadline).
    pub status: Option<ExitStatus>,
    /// Its stdout, in a file.
    pub stdout: PathBuf,
    /// Its stderr, in a file.
    pub stderr: PathBuf,
}

impl ChatrRunner<'_> {
    /// Runs `chatr ARGS…` as `who` inside `host`, with a deadline; stdin from `stdin` if given.
    pub fn chatr(
        &self,
        host: &Host,
        who: &str,
        step: &str,
        args: &[&str],
        stdin: Option<&Path>,
        timeout: Duration,
    ) -> Result<Finished, String> {
        let input = match stdin {
            Some(path) => Stdio::from(
                File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?,
            ),
            None => Stdio::null(),
        };
        let (mut cmd, files) = self.command(host, who, step, args)?;
        let child = cmd
            .stdin(input)
            .spawn()
            .map_err(|e| format!("spawning chatr {step}: {e}"))?;
        wait(child, files, step, timeout)
    }

    /// A setup step that must succeed; returns its stdout.
    pub fn step(
        &self,
        host: &Host,
        who: &str,
        step: &str,
        args: &[&str],
    ) -> Result<String, String> {
        let done = self.chatr(host, who, step, args, None, STEP_TIMEOUT)?;
        match done.status {
            Some(status) if status.success() => std::fs::read_to_string(&done.stdout)
                .map_err(|e| format!("reading output of {step}: {e}")),
            Some(status) => Err(format!(
                "`chatr {}` as {who} failed ({status}): {}",
                args.join(" "),
                tail(&done.stderr, 3)
            )),
            None => Err(format!(
                "`chatr {}` as {who} timed out after {STEP_TIMEOUT:?}",
                args.join(" ")
            )),
        }
    }

    /// init + register + whoami; returns the UUID.
    pub fn enrol(&self, host: &Host, who: &str) -> Result<String, String> {
        let server = self.server.connect_addr();
        let api = self.server.api_url();
        let cert = self.server.cert().to_string_lossy().into_owned();
        self.step(
            host,
            who,
            "init",
            &[
                "init",
                "--server",
                &server,
                "--api",
                &api,
                "--server-cert",
                &cert,
            ],
        )?;
        self.step(host, who, "register", &["register"])?;
        let whoami = self.step(host, who, "whoami", &["whoami"])?;
        let uuid = whoami
            .split_whitespace()
            .next()
            .filter(|u| u.len() == 36)
            .ok_or_else(|| {
                format!(
                    "`chatr whoami` as {who} printed `{}`, expected `<uuid> <key>`",
                    whoami.trim()
                )
            })?;
        Ok(uuid.to_owned())
    }

    /// `chatr ARGS…` as `who` inside `host`, started with a pipe for stdin (and a
    /// `--report` file for `pipe`); the caller writes the input and waits.
    pub fn spawn(
        &self,
        host: &Host,
        who: &str,
        step: &str,
        args: &[&str],
    ) -> Result<(Child, Finished), String> {
        let (mut cmd, files) = self.command(host, who, step, args)?;
        let child = cmd
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning chatr {step}: {e}"))?;
        Ok((child, files))
    }

    /// The home directory of `who`.
    pub fn home(&self, who: &str) -> PathBuf {
        self.dir.join(who)
    }

    /// Where `who`'s `--report` of a pipe goes.
    pub fn report_path(&self, who: &str) -> PathBuf {
        self.dir.join(format!("{who}.report.json"))
    }

    /// The command of a step, with its output files (status not known yet).
    fn command(
        &self,
        host: &Host,
        who: &str,
        step: &str,
        args: &[&str],
    ) -> Result<(Command, Finished), String> {
        let home = self.home(who);
        let stdout = self.dir.join(format!("{who}.{step}.out"));
        let stderr = self.dir.join(format!("{who}.{step}.err"));
        let open = |p: &Path| File::create(p).map_err(|e| format!("creating {}: {e}", p.display()));
        let mut cmd: Command = host.netns().command(&self.chatr);
        cmd.arg("--home").arg(&home);
        if step == "pipe" {
            cmd.arg("--report").arg(self.report_path(who));
        }
        cmd.args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(open(&stdout)?))
            .stderr(Stdio::from(open(&stderr)?));
        Ok((
            cmd,
            Finished {
                status: None,
                stdout,
                stderr,
            },
        ))
    }
}

/// Waits for `child` until `timeout`, killing it then (status `None`).
pub fn wait(
    mut child: Child,
    files: Finished,
    step: &str,
    timeout: Duration,
) -> Result<Finished, String> {
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for chatr {step}: {e}")),
        }
    };
    Ok(Finished { status, ..files })
}
