//! Errors raised while building or driving the NAT lab.
//!
//! The lab never skips silently: every way it can fail to build a topology
//! ends up here with the command that failed and what the system said, so a
//! CI log tells the operator what to fix (run as root, install nftables, …).

use std::io;

/// Why the lab could not be built or a step inside it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// Network namespaces, veth and nftables need root (CAP_NET_ADMIN + CAP_SYS_ADMIN).
    #[error(
        "the NAT lab must run as root (effective uid is {euid}); run the tests with sudo or as root"
    )]
    NotRoot {
        /// The effective uid we ran with.
        euid: u32,
    },
    /// A tool (`ip`, `nft`) is missing and could not be installed.
    #[error("required tool `{tool}` is missing and installing it failed: {detail}")]
    MissingTool {
        /// The program that is missing.
        tool: &'static str,
        /// What the install attempt said.
        detail: String,
    },
    /// An external command (`ip …`, `nft …`) exited unsuccessfully.
    #[error("lab command `{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line that ran.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the lab was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The topology request does not make sense (too many sites, two hosts on a public site, …).
    #[error("invalid lab topology: {0}")]
    Topology(String),
    /// A daemon the lab runs (miniupnpd) did not start or died.
    #[error("{daemon} failed: {detail}")]
    Daemon {
        /// Which daemon.
        daemon: &'static str,
        /// What went wrong, with its log.
        detail: String,
    },
    /// The delay wire could not be started.
    #[error("delay wire `{wire}` failed to start: {detail}")]
    Wire {
        /// Which wire.
        wire: String,
        /// Why.
        detail: String,
    },
}

impl LabError {
    /// Wraps an I/O error with a description of what was being done.
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}
