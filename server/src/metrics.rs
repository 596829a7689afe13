//! Operational metrics, rendered in the Prometheus text format on `GET /metrics`.
//!
//! Named for what operators ask: who is online, how logins and brokering fare,
//! how registrations fare, and how long logins and brokering take. Counters are
//! plain atomics so the hot paths never lock; the text format is written by
//! hand (it is small and stable), which keeps metrics crates and their
//! transitive TLS defaults out of the tree.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// How a login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    /// PacketConnected sent.
    Ok,
    /// "Failed to verify!" (bad signature or unknown UUID).
    FailedToVerify,
    /// "Already connected!".
    AlreadyConnected,
    /// "Invalid Packet" or undecodable frame before login.
    InvalidPacket,
    /// TLS handshake plus PacketConnect took too long.
    Timeout,
}

impl LoginResult {
    const ALL: [Self; 5] = [
        Self::Ok,
        Self::FailedToVerify,
        Self::AlreadyConnected,
        Self::InvalidPacket,
        Self::Timeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::FailedToVerify => "failed_to_verify",
            Self::AlreadyConnected => "already_connected",
            Self::InvalidPacket => "invalid_packet",
            Self::Timeout => "timeout",
        }
    }
}

/// How a connection request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerResult {
    /// Accepted; ClientInfo sent to both sides.
    Accepted,
    /// Denied by the target.
    Denied,
    /// Target not connected.
    Offline,
    /// Nobody answered in time.
    Expired,
    /// Refused by the per-session rate limit.
    RateLimited,
    /// Refused because the target already has as many requests waiting as it may
    /// (from everyone, or a flood at it).
    Busy,
}

impl BrokerResult {
    const ALL: [Self; 6] = [
        Self::Accepted,
        Self::Denied,
        Self::Offline,
        Self::Expired,
        Self::RateLimited,
        Self::Busy,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Denied => "denied",
            Self::Offline => "offline",
            Self::Expired => "expired",
            Self::RateLimited => "rate_limited",
            Self::Busy => "busy",
        }
    }
}

/// How a REST registration, rotation or admin change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationResult {
    /// A new identity was stored (201).
    Created,
    /// The same key was registered again (200).
    Unchanged,
    /// A key was rotated (POST).
    Rotated,
    /// The UUID is taken by another key.
    AlreadyRegistered,
    /// The UUID is not registered (rotation).
    DoesNotExist,
    /// Malformed UUID, body, key or signature header.
    InvalidRequest,
    /// The signature did not verify.
    InvalidSignature,
    /// Missing, unknown or used registration token.
    InvalidToken,
    /// Registration is closed to clients.
    Closed,
    /// Refused by the per-IP rate limit.
    RateLimited,
    /// Storage failure or shutdown; nothing acknowledged.
    Error,
}

impl RegistrationResult {
    const ALL: [Self; 11] = [
        Self::Created,
        Self::Unchanged,
        Self::Rotated,
        Self::AlreadyRegistered,
        Self::DoesNotExist,
        Self::InvalidRequest,
        Self::InvalidSignature,
        Self::InvalidToken,
        Self::Closed,
        Self::RateLimited,
        Self::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Unchanged => "unchanged",
            Self::Rotated => "rotated",
            Self::AlreadyRegistered => "already_registered",
            Self::DoesNotExist => "does_not_exist",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidSignature => "invalid_signature",
            Self::InvalidToken => "invalid_token",
            Self::Closed => "closed",
            Self::RateLimited => "rate_limited",
            Self::Error => "error",
        }
    }
}

/// How a request to open a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOpenResult {
    /// The relay was opened; both parties got its id.
    Opened,
    /// Relaying is switched off.
    Disabled,
    /// The server already keeps `relay.max_links` relays.
    ServerCap,
    /// A party already is in `relay.max_links_per_client` relays.
    ClientCap,
}

impl RelayOpenResult {
    const ALL: [Self; 4] = [
        Self::Opened,
        Self::Disabled,
        Self::ServerCap,
        Self::ClientCap,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Disabled => "disabled",
            Self::ServerCap => "server_cap",
            Self::ClientCap => "client_cap",
        }
    }
}

/// Why a relay was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayCloseReason {
    /// It carried nothing for `relay.idle_timeout`.
    Idle,
    /// One party said it no longer needs it (`PacketRelayClose`).
    ClosedByPeer,
}

impl RelayCloseReason {
    const ALL: [Self; 2] = [Self::Idle, Self::ClosedByPeer];

    fn label(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::ClosedByPeer => "closed_by_peer",
        }
    }

    /// The reason sent in `PacketRelayClose`.
    pub fn message(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::ClosedByPeer => "closed by peer",
        }
    }
}

/// Why a relayed datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayDrop {
    /// From an address or session that is not a party of the relay.
    Stranger,
    /// No relay has this id (never opened, expired or closed).
    UnknownRelay,
    /// Over the sender's or the server's byte rate.
    RateLimited,
    /// The receiving session's TLS queue is full.
    QueueFull,
    /// The other party is not online (or has no way to be reached).
    PeerOffline,
    /// The UDP socket refused the datagram.
    SendFailed,
    /// Not a well-formed relayed datagram.
    Malformed,
    /// That kind of relaying is switched off.
    Disabled,
}

impl RelayDrop {
    const ALL: [Self; 8] = [
        Self::Stranger,
        Self::UnknownRelay,
        Self::RateLimited,
        Self::QueueFull,
        Self::PeerOffline,
        Self::SendFailed,
        Self::Malformed,
        Self::Disabled,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Stranger => "stranger",
            Self::UnknownRelay => "unknown_relay",
            Self::RateLimited => "rate_limited",
            Self::QueueFull => "queue_full",
            Self::PeerOffline => "peer_offline",
            Self::SendFailed => "send_failed",
            Self::Malformed => "malformed",
            Self::Disabled => "disabled",
        }
    }
}

/// Upper bounds (seconds) of the latency histogram buckets: 1 ms … 10 s.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram with fixed buckets; lock-free.
#[derive(Debug, Default)]
struct Histogram {
    /// Per-bucket (non-cumulative) counts; the last slot is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        if let Some(c) = self.counts.get(slot) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (le, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        if let Some(inf) = self.counts.last() {
            cumulative += inf.load(Ordering::Relaxed);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

/// All server metrics. One instance per server, shared by `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    connected_clients: AtomicI64,
    logins: [AtomicU64; LoginResult::ALL.len()],
    brokered: [AtomicU64; BrokerResult::ALL.len()],
    registrations: [AtomicU64; RegistrationResult::ALL.len()],
    ping_timeouts: AtomicU64,
    udp_bindings: AtomicU64,
    presence_sessions: AtomicI64,
    presence_updates: AtomicU64,
    login_latency: Histogram,
    broker_latency: Histogram,
    relay_links: AtomicI64,
    relay_opens: [AtomicU64; RelayOpenResult::ALL.len()],
    relay_closes: [AtomicU64; RelayCloseReason::ALL.len()],
    /// Forwarded datagrams and bytes, by the transport they left on (udp, tls).
    relay_datagrams: [AtomicU64; 2],
    relay_bytes: [AtomicU64; 2],
    relay_drops: [AtomicU64; RelayDrop::ALL.len()],
}

/// What the relay forwarded, by the transport each datagram left on
/// ([`Metrics::relay_totals`]; bytes count what was relayed, without relay headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayTotals {
    /// Datagrams sent on the Connect UDP port.
    pub udp_datagrams: u64,
    /// Their bytes.
    pub udp_bytes: u64,
    /// Datagrams sent as `PacketRelayData` in a TLS session.
    pub tls_datagrams: u64,
    /// Their bytes.
    pub tls_bytes: u64,
}

fn transport_slot(transport: crate::relay::Transport) -> usize {
    match transport {
        crate::relay::Transport::Udp => 0,
        crate::relay::Transport::Tls => 1,
    }
}

impl Metrics {
    /// A session logged in.
    pub fn client_connected(&self) {
        self.connected_clients.fetch_add(1, Ordering::Relaxed);
    }
    /// A logged-in session ended.
    pub fn client_disconnected(&self) {
        self.connected_clients.fetch_sub(1, Ordering::Relaxed);
    }
    /// A session started (`+1`) or stopped (`-1`) sharing presence.
    pub fn presence_sessions_add(&self, delta: i64) {
        self.presence_sessions.fetch_add(delta, Ordering::Relaxed);
    }
    /// Sessions that share presence now (sent a contact list or a status).
    pub fn presence_sessions(&self) -> i64 {
        self.presence_sessions.load(Ordering::Relaxed)
    }
    /// `n` presence packets (`PacketPresence`) went to clients.
    pub fn presence_updates_sent(&self, n: u64) {
        self.presence_updates.fetch_add(n, Ordering::Relaxed);
    }
    /// Presence packets sent to clients so far.
    pub fn presence_updates(&self) -> u64 {
        self.presence_updates.load(Ordering::Relaxed)
    }
    /// Currently logged-in sessions.
    pub fn connected_clients(&self) -> i64 {
        self.connected_clients.load(Ordering::Relaxed)
    }
    /// A login attempt ended with `result`.
    pub fn login(&self, result: LoginResult) {
        if let Some(c) = self.logins.get(result as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// Login attempts that ended with `result` so far.
    pub fn logins(&self, result: LoginResult) -> u64 {
        self.logins
            .get(result as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
    /// A connection request ended with `result`.
    pub fn brokered(&self, result: BrokerResult) {
        if let Some(c) = self.brokered.get(result as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// A registration, rotation or admin change ended with `result`.
    pub fn registration(&self, result: RegistrationResult) {
        if let Some(c) = self.registrations.get(result as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// Registrations that ended with `result` so far.
    pub fn registrations(&self, result: RegistrationResult) -> u64 {
        self.registrations
            .get(result as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
    /// A session was dropped with "Time out".
    pub fn ping_timeout(&self) {
        self.ping_timeouts.fetch_add(1, Ordering::Relaxed);
    }
    /// A UDP binding message was accepted.
    pub fn udp_binding(&self) {
        self.udp_bindings.fetch_add(1, Ordering::Relaxed);
    }
    /// A request to open a relay ended with `result`.
    pub fn relay_open(&self, result: RelayOpenResult) {
        if let Some(c) = self.relay_opens.get(result as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if result == RelayOpenResult::Opened {
            self.relay_links.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// A relay was closed.
    pub fn relay_closed(&self, reason: RelayCloseReason) {
        if let Some(c) = self.relay_closes.get(reason as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.relay_links.fetch_sub(1, Ordering::Relaxed);
    }
    /// Relays open right now.
    pub fn relay_links(&self) -> i64 {
        self.relay_links.load(Ordering::Relaxed)
    }
    /// Datagrams and bytes relayed so far, by the transport they left on.
    pub fn relay_totals(&self) -> RelayTotals {
        let load = |a: &[AtomicU64; 2], i: usize| a.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
        RelayTotals {
            udp_datagrams: load(&self.relay_datagrams, 0),
            udp_bytes: load(&self.relay_bytes, 0),
            tls_datagrams: load(&self.relay_datagrams, 1),
            tls_bytes: load(&self.relay_bytes, 1),
        }
    }
    /// One datagram of `bytes` (without relay header) was forwarded over `transport`.
    pub(crate) fn relay_forwarded(&self, transport: crate::relay::Transport, bytes: usize) {
        self.relay_forwarded_many(transport, bytes, 1);
    }
    /// `count` datagrams of `bytes` in all were forwarded over `transport`.
    pub(crate) fn relay_forwarded_many(
        &self,
        transport: crate::relay::Transport,
        bytes: usize,
        count: usize,
    ) {
        let slot = transport_slot(transport);
        if let (Some(d), Some(b)) = (self.relay_datagrams.get(slot), self.relay_bytes.get(slot)) {
            d.fetch_add(count as u64, Ordering::Relaxed);
            b.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }
    /// A relayed datagram was dropped.
    pub fn relay_dropped(&self, cause: RelayDrop) {
        tracing::trace!(?cause, "relayed datagram dropped");
        if let Some(c) = self.relay_drops.get(cause as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// Relayed datagrams dropped for `cause` so far.
    pub fn relay_drops(&self, cause: RelayDrop) -> u64 {
        self.relay_drops
            .get(cause as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
    /// Time from TCP accept to PacketConnected.
    pub fn observe_login_latency(&self, d: Duration) {
        self.login_latency.observe(d);
    }
    /// Time from ConnectionRequest to ClientInfo.
    pub fn observe_broker_latency(&self, d: Duration) {
        self.broker_latency.observe(d);
    }

    /// Everything in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP chatr_connected_clients Sessions currently logged in.\n\
             # TYPE chatr_connected_clients gauge\n\
             chatr_connected_clients {}",
            self.connected_clients()
        );
        render_counters(
            &mut out,
            "chatr_logins_total",
            "Login attempts by result.",
            LoginResult::ALL.iter().map(|r| r.label()),
            &self.logins,
        );
        render_counters(
            &mut out,
            "chatr_brokered_requests_total",
            "Connection requests by result.",
            BrokerResult::ALL.iter().map(|r| r.label()),
            &self.brokered,
        );
        render_counters(
            &mut out,
            "chatr_registrations_total",
            "Registry REST/admin writes by result.",
            RegistrationResult::ALL.iter().map(|r| r.label()),
            &self.registrations,
        );
        let _ = writeln!(
            out,
            "# HELP chatr_presence_sessions Sessions sharing presence with their mutual contacts.\n\
             # TYPE chatr_presence_sessions gauge\n\
             chatr_presence_sessions {}\n\
             # HELP chatr_presence_updates_total Presence packets sent to clients.\n\
             # TYPE chatr_presence_updates_total counter\n\
             chatr_presence_updates_total {}",
            self.presence_sessions(),
            self.presence_updates()
        );
        let _ = writeln!(
            out,
            "# HELP chatr_ping_timeouts_total Sessions dropped with \"Time out\".\n\
             # TYPE chatr_ping_timeouts_total counter\n\
             chatr_ping_timeouts_total {}",
            self.ping_timeouts.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP chatr_udp_bindings_total UDP binding messages accepted.\n\
             # TYPE chatr_udp_bindings_total counter\n\
             chatr_udp_bindings_total {}",
            self.udp_bindings.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP chatr_relay_links Relayed exchanges open right now.\n\
             # TYPE chatr_relay_links gauge\n\
             chatr_relay_links {}",
            self.relay_links()
        );
        render_labelled(
            &mut out,
            "chatr_relay_opens_total",
            "Requests to relay an accepted exchange, by result.",
            "result",
            RelayOpenResult::ALL.iter().map(|r| r.label()),
            &self.relay_opens,
        );
        render_labelled(
            &mut out,
            "chatr_relay_closes_total",
            "Relays closed, by reason.",
            "reason",
            RelayCloseReason::ALL.iter().map(|r| r.label()),
            &self.relay_closes,
        );
        render_labelled(
            &mut out,
            "chatr_relay_datagrams_total",
            "Relayed datagrams forwarded, by the transport they left on.",
            "transport",
            ["udp", "tls"].into_iter(),
            &self.relay_datagrams,
        );
        render_labelled(
            &mut out,
            "chatr_relay_bytes_total",
            "Relayed bytes forwarded (without relay headers), by the transport they left on.",
            "transport",
            ["udp", "tls"].into_iter(),
            &self.relay_bytes,
        );
        render_labelled(
            &mut out,
            "chatr_relay_drops_total",
            "Relayed datagrams dropped, by cause.",
            "cause",
            RelayDrop::ALL.iter().map(|r| r.label()),
            &self.relay_drops,
        );
        self.login_latency.render(
            &mut out,
            "chatr_login_duration_seconds",
            "Time from TCP accept to PacketConnected.",
        );
        self.broker_latency.render(
            &mut out,
            "chatr_broker_duration_seconds",
            "Time from ConnectionRequest to ClientInfo.",
        );
        out
    }
}

fn render_counters<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    labels: impl Iterator<Item = &'a str>,
    values: &[AtomicU64],
) {
    render_labelled(out, name, help, "result", labels, values);
}

fn render_labelled<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label_name: &str,
    labels: impl Iterator<Item = &'a str>,
    values: &[AtomicU64],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (label, value) in labels.zip(values) {
        let _ = writeln!(
            out,
            "{name}{{{label_name}=\"{label}\"}} {}",
            value.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        m.client_connected();
        m.client_connected();
        m.client_disconnected();
        m.login(LoginResult::Ok);
        m.login(LoginResult::FailedToVerify);
        m.login(LoginResult::FailedToVerify);
        m.brokered(BrokerResult::Expired);
        m.registration(RegistrationResult::Created);
        m.ping_timeout();
        m.udp_binding();
        m.observe_login_latency(Duration::from_millis(3));
        m.observe_login_latency(Duration::from_millis(30));
        m.observe_login_latency(Duration::from_secs(60));
        let text = m.render();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has("chatr_connected_clients 1"), "{text}");
        assert!(has("chatr_logins_total{result=\"ok\"} 1"));
        assert!(has("chatr_logins_total{result=\"failed_to_verify\"} 2"));
        assert!(has("chatr_logins_total{result=\"timeout\"} 0"));
        assert!(has("chatr_brokered_requests_total{result=\"expired\"} 1"));
        assert!(has("chatr_registrations_total{result=\"created\"} 1"));
        assert!(has("chatr_ping_timeouts_total 1"));
        assert!(has("chatr_udp_bindings_total 1"));
        assert!(has("chatr_login_duration_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(has("chatr_login_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(has("chatr_login_duration_seconds_bucket{le=\"0.05\"} 2"));
        assert!(has("chatr_login_duration_seconds_bucket{le=\"10\"} 2"));
        assert!(has("chatr_login_duration_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(has("chatr_login_duration_seconds_count 3"));
        assert!(has("chatr_login_duration_seconds_sum 60.033"));
        assert!(has("chatr_broker_duration_seconds_count 0"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line}");
        }
    }
}
