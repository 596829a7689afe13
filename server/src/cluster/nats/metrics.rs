//! This node's cluster counters, appended to `/metrics` (Prometheus text format).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// How a cross-node forward ended (`chatr_cluster_forwards_total{result}`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum ForwardResult {
    Delivered,
    Busy,
    Offline,
    Timeout,
    Error,
}

/// What a claim came to (`chatr_cluster_claims_total{result}`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum ClaimResult {
    Claimed,
    Held,
    TakenOver,
    Unavailable,
}

/// What a reconciliation did with one claim (`chatr_cluster_reconciled_total{result}`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReconcileResult {
    Kept,
    Created,
    TakenOver,
    Kicked,
}

/// Messages this node received from others (`chatr_cluster_received_total{kind}`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Received {
    Peer,
    Probe,
    Kick,
    Bind,
    Relay,
    Invalid,
}

const FORWARDS: [&str; 5] = ["delivered", "busy", "offline", "timeout", "error"];
const CLAIMS: [&str; 4] = ["claimed", "held", "taken_over", "unavailable"];
const RECONCILED: [&str; 4] = ["kept", "created", "taken_over", "kicked"];
const RECEIVED: [&str; 6] = ["peer", "probe", "kick", "bind", "relay", "invalid"];

/// The counters.
#[derive(Debug, Default)]
pub(crate) struct ClusterMetrics {
    forwards: [AtomicU64; 5],
    claims: [AtomicU64; 4],
    reconciled: [AtomicU64; 4],
    received: [AtomicU64; 6],
    udp_routed: AtomicU64,
    reconnects: AtomicU64,
}

impl ClusterMetrics {
    pub(crate) fn forward(&self, result: ForwardResult) {
        self.forwards[result as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn claim(&self, result: ClaimResult) {
        self.claims[result as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn reconciled(&self, result: ReconcileResult) {
        self.reconciled[result as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn received(&self, kind: Received) {
        self.received[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn udp_routed(&self) {
        self.udp_routed.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends every counter, and the gauges given.
    pub(crate) fn render(
        &self,
        out: &mut String,
        node: &str,
        node_id: &str,
        connected: bool,
        peers: usize,
        claims: usize,
    ) {
        let labelled = |out: &mut String,
                        name: &str,
                        help: &str,
                        label: &str,
                        names: &[&str],
                        values: &[AtomicU64]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (n, v) in names.iter().zip(values) {
                let _ = writeln!(
                    out,
                    "{name}{{{label}=\"{n}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        };
        let _ = writeln!(
            out,
            "# HELP chatr_cluster_node_info This node of the cluster.\n# TYPE chatr_cluster_node_info gauge\n\
             chatr_cluster_node_info{{node=\"{node}\",id=\"{node_id}\"}} 1\n\
             # HELP chatr_cluster_nats_connected Whether this node is connected to NATS.\n# TYPE chatr_cluster_nats_connected gauge\n\
             chatr_cluster_nats_connected {}\n\
             # HELP chatr_cluster_peers Other nodes heard from recently.\n# TYPE chatr_cluster_peers gauge\n\
             chatr_cluster_peers {peers}\n\
             # HELP chatr_cluster_claims Sessions of this node with a cluster-wide claim (or one to confirm).\n# TYPE chatr_cluster_claims gauge\n\
             chatr_cluster_claims {claims}\n\
             # HELP chatr_cluster_nats_reconnects_total Times this node reconnected to NATS.\n# TYPE chatr_cluster_nats_reconnects_total counter\n\
             chatr_cluster_nats_reconnects_total {}\n\
             # HELP chatr_cluster_udp_routed_total UDP binding requests routed to the node that issued their token.\n# TYPE chatr_cluster_udp_routed_total counter\n\
             chatr_cluster_udp_routed_total {}",
            u8::from(connected),
            self.reconnects.load(Ordering::Relaxed),
            self.udp_routed.load(Ordering::Relaxed),
        );
        labelled(
            out,
            "chatr_cluster_forwards_total",
            "Brokering messages sent to another node, by outcome.",
            "result",
            &FORWARDS,
            &self.forwards,
        );
        labelled(
            out,
            "chatr_cluster_claims_total",
            "Cluster-wide claims of logins on this node, by outcome.",
            "result",
            &CLAIMS,
            &self.claims,
        );
        labelled(
            out,
            "chatr_cluster_reconciled_total",
            "Claims re-checked after NATS came back (or on refresh), by outcome.",
            "result",
            &RECONCILED,
            &self.reconciled,
        );
        labelled(
            out,
            "chatr_cluster_received_total",
            "Messages from other nodes, by kind.",
            "kind",
            &RECEIVED,
            &self.received,
        );
    }
}
