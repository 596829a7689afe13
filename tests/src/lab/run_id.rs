//! Per-run name prefixes, the liveness lock, and the startup sweep of leftovers.
//!
//! Every namespace a lab creates is named `chl-<run id>-<node>`. While the lab
//! lives, it holds an exclusive `flock` on `/run/chatr-natlab/<run id>.lock`.
//! The kernel drops that lock when the process dies, however it dies (panic,
//! SIGKILL, OOM), so any later lab can tell a dead run's namespaces from a live
//! concurrent run's: the lock file is gone or can be locked. The sweep kills the
//! processes still inside a dead run's namespaces and deletes the namespaces.
//! Interfaces need no sweep: the lab never creates one in the root namespace, and
//! deleting a namespace destroys the veths inside it together with their peers.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use super::error::LabError;
use super::netns;

/// Prefix shared by every namespace any lab creates.
pub const NAMESPACE_PREFIX: &str = "chl-";
/// Directory of the per-run lock files (on tmpfs, cleared at boot like `/run/netns`).
const LOCK_DIR: &str = "/run/chatr-natlab";
/// Where named namespaces are bind-mounted by `ip netns add`.
const NETNS_DIR: &str = "/run/netns";

/// Tries to take an exclusive, non-blocking flock on `file`.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock only operates on the open descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Six random hex digits from the kernel's CSPRNG.
fn random_id() -> io::Result<String> {
    let mut bytes = [0u8; 3];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The held liveness lock of one lab run; releasing it (drop) removes the lock file.
#[derive(Debug)]
pub(crate) struct RunLock {
    id: String,
    path: PathBuf,
    _file: File,
}

impl RunLock {
    /// Picks a fresh run id and locks its file.
    pub(crate) fn acquire() -> Result<RunLock, LabError> {
        std::fs::create_dir_all(LOCK_DIR)
            .map_err(|e| LabError::io(format!("creating {LOCK_DIR}"), e))?;
        for _ in 0..32 {
            let id = random_id().map_err(|e| LabError::io("reading /dev/urandom", e))?;
            let path = PathBuf::from(format!("{LOCK_DIR}/{id}.lock"));
            let file = match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(LabError::io(format!("creating {}", path.display()), e)),
            };
            // A sweeper may have opened and locked the brand-new file in between; then it
            // will unlink it, so pick another id. A sweeper only unlinks while holding the
            // lock, so once we hold it the file is ours until we drop it.
            if try_lock(&file).map_err(|e| LabError::io("locking the run file", e))? {
                return Ok(RunLock {
                    id,
                    path,
                    _file: file,
                });
            }
        }
        Err(LabError::Topology(
            "could not allocate a unique lab run id".into(),
        ))
    }

    /// The run id (six hex digits).
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock, so nobody can mistake the file for a dead run's.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Outcome of checking one run id during a sweep.
enum Liveness {
    /// Another process holds the lock: leave its namespaces alone.
    Alive,
    /// Nobody holds it; `Some(file)` keeps it locked by us until the sweep is done.
    Dead(Option<File>),
}

fn liveness(id: &str) -> Liveness {
    let path = format!("{LOCK_DIR}/{id}.lock");
    match OpenOptions::new().write(true).open(&path) {
        Ok(file) => match try_lock(&file) {
            Ok(true) => Liveness::Dead(Some(file)),
            // Locked by a live process, or we cannot tell: never delete on doubt.
            Ok(false) | Err(_) => Liveness::Alive,
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Liveness::Dead(None),
        Err(_) => Liveness::Alive,
    }
}

/// Removes the namespaces (and processes in them) of every lab run that is no longer alive.
/// Returns the names of the namespaces it deleted.
pub fn sweep_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut by_id: Vec<(String, String)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(NAMESPACE_PREFIX) else {
                continue;
            };
            let id = rest.split('-').next().unwrap_or_default().to_owned();
            if !ids.contains(&id) {
                ids.push(id.clone());
            }
            by_id.push((id, name));
        }
    }
    // Lock files whose run left no namespace (killed before creating any) go too.
    if let Ok(entries) = std::fs::read_dir(LOCK_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".lock")
                && !ids.iter().any(|known| known == id)
            {
                ids.push(id.to_owned());
            }
        }
    }
    for id in ids {
        let Liveness::Dead(lock) = liveness(&id) else {
            continue;
        };
        for (_, name) in by_id.iter().filter(|(owner, _)| *owner == id) {
            netns::delete_namespace(name);
            removed.push(name.clone());
        }
        if lock.is_some() {
            let _ = std::fs::remove_file(format!("{LOCK_DIR}/{id}.lock"));
        }
    }
    if !removed.is_empty() {
        eprintln!(
            "natlab: swept {} namespace(s) left by killed runs",
            removed.len()
        );
    }
    removed
}
