//! One named network namespace: create, enter, run commands inside, delete.
//!
//! Namespaces are created with `ip netns add`, so they are bind-mounted under
//! `/run/netns/NAME` and visible to `ip netns list` — that is what lets the
//! startup sweep find and remove the leftovers of a killed run. Code enters a
//! namespace in two ways, both without `ip netns exec`:
//! - child processes call `setns(2)` between fork and exec ([`Netns::command`]);
//! - Rust code runs on a thread that called `setns(2)` ([`Netns::run_in`],
//!   [`Netns::spawn`]). Sockets keep the namespace they were created in, so a
//!   socket made by `run_in` can be used from any thread afterwards.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use super::error::LabError;
use super::sys;

/// Moves the calling thread into the network namespace behind `fd`.
pub(crate) fn enter(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns only reads the fd; a bad fd yields EBADF, not UB.
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A network namespace owned by the lab; deleted (and its processes killed) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    handle: File,
    deleted: AtomicBool,
}

impl Netns {
    /// Creates `name` with `ip netns add` and opens a handle to it.
    pub(crate) fn create(name: String) -> Result<Netns, LabError> {
        sys::ip(&["netns", "add", &name])?;
        let handle = match File::open(format!("/run/netns/{name}")) {
            Ok(handle) => handle,
            Err(e) => {
                let _ = sys::ip(&["netns", "del", &name]);
                return Err(LabError::io(format!("opening /run/netns/{name}"), e));
            }
        };
        let ns = Netns {
            name,
            handle,
            deleted: AtomicBool::new(false),
        };
        // Loopback up; IPv6 off so no autoconfiguration chatter (RS, MLD, DAD) crosses the
        // wires and every address in the lab is one we assigned.
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
        ns.sysctl("net/ipv6/conf/default/disable_ipv6", "1")?;
        Ok(ns)
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A [`Command`] whose child runs inside this namespace.
    ///
    /// The child also gets `PR_SET_PDEATHSIG = SIGKILL`: if the lab process dies, so
    /// do its children, and no stray process keeps a namespace alive. The signal is
    /// tied to the *thread* that spawned the child, so spawn from a thread that
    /// outlives the child (the usual "spawn, then wait on the same thread").
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.handle.as_raw_fd();
        // SAFETY: getpid is async-signal-safe; taken before fork for the orphan check below.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (setns, prctl, getppid); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                enter(fd)?;
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then nobody would signal us.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `ip ARGS…` against this namespace (`ip -n NAME …`).
    pub fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        let mut cmd = sys::ip_command();
        cmd.arg("-n").arg(&self.name).args(args);
        sys::run(&mut cmd)
    }

    /// Loads an nftables ruleset (`nft -f -`) inside this namespace.
    pub fn nft(&self, ruleset: &str) -> Result<(), LabError> {
        let mut cmd = self.command(sys::nft_path());
        cmd.args(["-f", "-"]);
        sys::run_with_input(&mut cmd, Some(ruleset)).map(drop)
    }

    /// Writes a namespaced sysctl, e.g. `net/ipv4/ip_forward`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), LabError> {
        let path = format!("/proc/sys/{key}");
        // /proc/sys/net resolves against the namespace of the thread that opens it.
        self.run_in(|| std::fs::write(&path, value))?
            .map_err(|e| LabError::io(format!("writing {path} in {}", self.name), e))
    }

    /// Runs `f` on a thread inside this namespace and returns its result.
    ///
    /// Sockets created by `f` stay in this namespace when returned.
    pub fn run_in<T, F>(&self, f: F) -> Result<T, LabError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let fd = self.handle.as_raw_fd();
        std::thread::scope(|scope| {
            let worker = scope.spawn(move || enter(fd).map(|()| f()));
            match worker.join() {
                Ok(result) => {
                    result.map_err(|e| LabError::io(format!("entering namespace {}", self.name), e))
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Spawns a long-lived named thread inside this namespace.
    ///
    /// The thread returns an error (and never runs `f`) if it cannot enter the
    /// namespace: running `f` elsewhere could send traffic outside the lab.
    pub fn spawn<T, F>(
        &self,
        thread_name: &str,
        f: F,
    ) -> Result<JoinHandle<io::Result<T>>, LabError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let handle = self
            .handle
            .try_clone()
            .map_err(|e| LabError::io("duplicating a namespace handle", e))?;
        std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || {
                enter(handle.as_raw_fd())?;
                drop(handle);
                Ok(f())
            })
            .map_err(|e| LabError::io("spawning a lab thread", e))
    }
}

impl Netns {
    /// Kills the processes inside and deletes the namespace (idempotent). Handles that
    /// are still around keep working on the now unnamed, unreachable namespace.
    pub(crate) fn delete(&self) {
        if !self.deleted.swap(true, Ordering::SeqCst) {
            delete_namespace(&self.name);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Kills every process inside namespace `name`, then deletes it. Best effort: used by
/// `Drop` and by the startup sweep, where there is nobody to report an error to.
pub(crate) fn delete_namespace(name: &str) {
    kill_processes_in(name);
    if let Err(e) = sys::ip(&["netns", "del", name]) {
        eprintln!("natlab: could not delete namespace {name}: {e}");
    }
}

/// SIGKILLs the processes whose network namespace is `name` (`ip netns pids`).
fn kill_processes_in(name: &str) {
    let Ok(pids) = sys::ip(&["netns", "pids", name]) else {
        return;
    };
    // SAFETY: getpid has no preconditions.
    let own = unsafe { libc::getpid() };
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
    {
        if pid > 1 && pid != own {
            // SAFETY: kill with a concrete positive pid only signals that process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
