//! Host-side plumbing: running `ip`/`nft`, checking for root, installing missing tools.
//!
//! The lab drives the kernel through the ordinary iproute2 and nftables command
//! line tools rather than netlink bindings: every step is then one readable
//! command line that shows up verbatim in an error, and can be replayed by hand.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use super::error::LabError;

/// Renders a command line for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, optionally feeding `stdin`, and returns its stdout.
///
/// A non-zero exit becomes [`LabError::Command`] carrying stderr.
pub(crate) fn run_with_input(cmd: &mut Command, stdin: Option<&str>) -> Result<String, LabError> {
    let line = describe(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .map_err(|e| LabError::io(format!("spawning `{line}`"), e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| LabError::io(format!("writing stdin of `{line}`"), e))?;
    }
    let out: Output = child
        .wait_with_output()
        .map_err(|e| LabError::io(format!("waiting for `{line}`"), e))?;
    if !out.status.success() {
        let shown = match stdin {
            // nft rulesets are the usual stdin: show them, they are the likely culprit.
            Some(input) => format!("{line} <<EOF\n{input}EOF"),
            None => line,
        };
        return Err(LabError::Command {
            command: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` to completion and returns its stdout.
pub(crate) fn run(cmd: &mut Command) -> Result<String, LabError> {
    run_with_input(cmd, None)
}

/// Runs `ip ARGS…` in the root namespace.
pub(crate) fn ip(args: &[&str]) -> Result<String, LabError> {
    run(ip_command().args(args))
}

/// Finds `tool` on PATH (plus the sbin directories, which a non-login root shell may lack).
fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Absolute paths of the tools, resolved once by [`ensure_prerequisites`].
static TOOLS: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();

/// A `Command` for `ip` (absolute path when known, so a minimal PATH still works).
pub(crate) fn ip_command() -> Command {
    match TOOLS.get() {
        Some(Ok((ip, _))) => Command::new(ip),
        _ => Command::new("ip"),
    }
}

/// Path of a tool for use with a namespaced [`Command`].
pub(crate) fn nft_path() -> PathBuf {
    match TOOLS.get() {
        Some(Ok((_, nft))) => nft.clone(),
        _ => PathBuf::from("nft"),
    }
}

/// Installs Debian packages with apt-get (the CI machine is Debian and we run as root).
///
/// A failing `apt-get update` (a mirror hiccup) is not fatal by itself: the install may
/// still succeed from the lists already on the machine. Only the install's outcome counts.
pub(crate) fn apt_install(packages: &[&str]) -> Result<(), String> {
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| format!("could not run apt-get: {e}"))?;
    let install = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| format!("could not run apt-get: {e}"))?;
    if !install.status.success() {
        return Err(format!(
            "apt-get install {} failed: {} (apt-get update said: {})",
            packages.join(" "),
            String::from_utf8_lossy(&install.stderr).trim(),
            String::from_utf8_lossy(&update.stderr).trim()
        ));
    }
    Ok(())
}

/// The effective uid of this process.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Checks that we are root and that `ip` and `nft` exist, installing `iproute2` /
/// `nftables` with apt-get when they are missing. The outcome is cached per process.
pub fn ensure_prerequisites() -> Result<(), LabError> {
    let uid = euid();
    if uid != 0 {
        return Err(LabError::NotRoot { euid: uid });
    }
    let outcome = TOOLS.get_or_init(|| {
        let missing: Vec<&str> = [("ip", "iproute2"), ("nft", "nftables")]
            .into_iter()
            .filter(|(tool, _)| find_tool(tool).is_none())
            .map(|(_, package)| package)
            .collect();
        if !missing.is_empty() {
            eprintln!("natlab: installing missing packages: {}", missing.join(" "));
            apt_install(&missing)?;
        }
        match (find_tool("ip"), find_tool("nft")) {
            (Some(ip), Some(nft)) => Ok((ip, nft)),
            _ => {
                Err("`ip` or `nft` still not found after apt-get install iproute2 nftables".into())
            }
        }
    });
    match outcome {
        Ok(_) => Ok(()),
        Err(detail) => Err(LabError::MissingTool {
            tool: "ip/nft",
            detail: detail.clone(),
        }),
    }
}
