//! A live view of a link's path, for banners, `chatr status` and tests.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::id::{PathClass, PathId};
use super::reason::RelayReason;

/// Where a link goes now and why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathStatus {
    /// The path carrying the link.
    pub path: Option<PathId>,
    /// What a user is told about it.
    pub class: Option<PathClass>,
    /// When relayed: why.
    pub reason: Option<RelayReason>,
    /// How often the path changed.
    pub switches: u32,
    /// Measured round trip of the path in use, if known.
    pub rtt: Option<Duration>,
    /// Punch probes this side sent for the link so far (prediction and birthday probes
    /// included).
    pub probes_sent: u32,
}

/// The handle of the task that keeps one link's paths. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LinkPaths {
    status: watch::Receiver<PathStatus>,
    pin: mpsc::Sender<Option<PathId>>,
}

impl LinkPaths {
    /// A handle from the task's channels.
    pub(crate) fn new(
        status: watch::Receiver<PathStatus>,
        pin: mpsc::Sender<Option<PathId>>,
    ) -> Self {
        Self { status, pin }
    }

    /// The status now.
    pub fn current(&self) -> PathStatus {
        self.status.borrow().clone()
    }

    /// Waits for the next change; `false` once the link's path task has ended.
    pub async fn changed(&mut self) -> bool {
        self.status.changed().await.is_ok()
    }

    /// Forces the link onto `path` (`None`: back to automatic choice). Meant for tests,
    /// benchmarks and `--path`; the relay must exist for a relay path to carry anything.
    pub async fn pin(&self, path: Option<PathId>) -> bool {
        self.pin.send(path).await.is_ok()
    }
}
