//! The NAT matrix: every pair of profiles, linked with the real binaries.
//!
//! For each pair the lab builds two fresh sites (or one site with two hosts for
//! `same-lan`) around one shared `chatr-server` on the public segment, then runs
//! the `chatr` CLI inside the host namespaces exactly as a user would: `init`
//! (pinning the server's self-signed certificate), `register`, `whoami`,
//! `contacts add`, and finally `pipe --listen --from bob` against `pipe alice`
//! with random data in both directions. A pair is *linked* when both clients
//! report a link (`--report` JSON), both exit 0, and each side's output has the
//! SHA-256 of what the other side read in; *direct* when both reports also say
//! direct, else *relayed* by the server. The result is a [`MatrixRun`], which
//! renders itself as `docs/NAT-MATRIX.md`.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use chatr_client::path::PathClass;
use chatr_client::punch::CandidateKind;
use chatr_client::{AttemptReport, TransferReport};

use super::cli_runner::{ChatrRunner, Finished};
use super::error::LabError;
use super::lab_server::LabServer;
use super::nat::NatProfile;
use super::site_profile::SiteProfile;
use super::topology::{Host, Lab, LinkCondition, Site};

/// An initiator failing faster than this with "offline" asked before the listener logged in.
const OFFLINE_RETRY_WINDOW: Duration = Duration::from_secs(5);

/// Why the matrix could not run at all (a pair failing is a result, not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MatrixError {
    /// The lab could not be built.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// A binary is missing.
    #[error(
        "`{name}` not found (looked in: {searched}); build it with `cargo build -p chatr-server -p chatr-cli` or point CHATR_BIN_DIR at the directory holding `chatr` and `chatr-server`"
    )]
    MissingBinary {
        /// Which binary.
        name: &'static str,
        /// Directories searched.
        searched: String,
    },
    /// A binary is older than the sources it is built from.
    #[error(
        "{} is older than its source {}; rebuild with `cargo build -p chatr-server -p chatr-cli` (or run `cargo test --workspace`, which builds them)",
        binary.display(),
        changed.display()
    )]
    Stale {
        /// The stale binary.
        binary: PathBuf,
        /// A source file changed after it was built.
        changed: PathBuf,
    },
    /// The server did not come up.
    #[error("chatr-server did not start: {0}")]
    Server(String),
    /// Local file trouble (work directory, data files).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> MatrixError {
    let what = what.into();
    move |source| MatrixError::Io { what, source }
}

/// Paths of the two real binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `chatr` client CLI.
    pub chatr: PathBuf,
    /// The `chatr-server` binary.
    pub server: PathBuf,
}

impl Binaries {
    /// Finds `chatr` and `chatr-server`: in `explicit` if given, else `$CHATR_BIN_DIR`,
    /// else `$CARGO_TARGET_DIR/{debug,release}`, else the workspace's `target/{debug,release}`.
    pub fn locate(explicit: Option<&Path>) -> Result<Binaries, MatrixError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(dir) = explicit {
            dirs.push(dir.to_owned());
        } else if let Some(dir) = std::env::var_os("CHATR_BIN_DIR") {
            dirs.push(dir.into());
        } else {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .map(|t| {
                    if t.is_relative() {
                        workspace.join(t)
                    } else {
                        t
                    }
                })
                .unwrap_or_else(|| workspace.join("target"));
            dirs.push(target.join("debug"));
            dirs.push(target.join("release"));
        }
        let find = |name: &'static str| {
            dirs.iter()
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| MatrixError::MissingBinary {
                    name,
                    searched: dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        };
        Ok(Binaries {
            chatr: find("chatr")?,
            server: find("chatr-server")?,
        })
    }
}

impl Binaries {
    /// The binaries a lab test runs: [`Binaries::locate`] with no explicit directory,
    /// checked to be fresh ([`Binaries::check_fresh`]) unless `CHATR_BIN_DIR` names them.
    pub fn for_tests() -> Result<Binaries, MatrixError> {
        let binaries = Self::locate(None)?;
        if std::env::var_os("CHATR_BIN_DIR").is_none() {
            binaries.check_fresh()?;
        }
        Ok(binaries)
    }

    /// Fails when a binary is older than any source file it was built from, as listed in
    /// cargo's dep-info file next to it (`target/debug/chatr.d`): `cargo test -p
    /// chatr-tests` alone does not rebuild other packages' binaries, and a stale `chatr`
    /// would make the matrix report on old code. Binaries without dep-info pass.
    pub fn check_fresh(&self) -> Result<(), MatrixError> {
        for binary in [&self.chatr, &self.server] {
            let Ok(dep_info) = std::fs::read_to_string(binary.with_extension("d")) else {
                continue;
            };
            let built = std::fs::metadata(binary)
                .and_then(|m| m.modified())
                .map_err(io_err(format!("reading {}", binary.display())))?;
            let newer = dep_info
                .split_once(": ")
                .map(|(_, deps)| deps)
                .unwrap_or_default()
                .split_whitespace()
                .map(Path::new)
                .find(|source| {
                    std::fs::metadata(source)
                        .and_then(|m| m.modified())
                        .is_ok_and(|modified| modified > built)
                });
            if let Some(source) = newer {
                return Err(MatrixError::Stale {
                    binary: binary.clone(),
                    changed: source.to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pair {
    /// Peer A (listener, "alice") behind the first profile, peer B (initiator, "bob")
    /// behind the second, each at its own site.
    Profiles(NatProfile, NatProfile),
    /// Like [`Pair::Profiles`], in a lab with a public IPv6 segment, where either side may
    /// be dual-stack (`symmetric+v6`: global IPv6 behind a stateful firewall besides its
    /// IPv4 NAT).
    DualStack(SiteProfile, SiteProfile),
    /// Both peers on the LAN of one port-restricted NAT (which does not hairpin).
    SameLan,
}

/// What the matrix asserts about a pair. Every pair must link, with data checked end
/// to end in both directions; the expectation says on which path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expectation {
    /// Must come out direct.
    Direct,
    /// No direct path exists in the lab: must come out relayed by the server (a side
    /// behind `udp-blocked` over TLS), unless a punch gets lucky.
    Relayed,
}

/// The peers the `upnp` profile meets in [`Pair::all`] (each pair costs a whole link
/// set-up in CI, and against the easier profiles a mapping proves nothing new).
pub const UPNP_PARTNERS: [NatProfile; 2] = [NatProfile::Symmetric, NatProfile::Cgnat];

impl Pair {
    /// Every unordered pair of profiles (including a profile with itself), the `upnp`
    /// profile against [`UPNP_PARTNERS`], then `same-lan`.
    pub fn all() -> Vec<Pair> {
        let mut pairs = Vec::new();
        let profiles = NatProfile::WITH_FIREWALLS;
        for (i, a) in profiles.into_iter().enumerate() {
            for b in profiles.into_iter().skip(i) {
                pairs.push(Pair::Profiles(a, b));
            }
        }
        pairs.extend(Pair::dual_stack());
        // The `upnp` router (symmetric, but it grants port mappings) only against the
        // peers that no other profile gets a direct path with: the mapping must do it.
        for partner in UPNP_PARTNERS {
            pairs.push(Pair::Profiles(NatProfile::Upnp, partner));
        }
        pairs.push(Pair::SameLan);
        pairs
    }

    /// The dual-stack variants the matrix runs: pairs that IPv4 alone leaves relayed,
    /// with IPv6 on both sides (must go direct, over IPv6) and on one side only (still
    /// relayed: the IPv6 candidates the dual-stack side offers cannot be reached from
    /// an IPv4-only peer, and must not get in the way).
    pub fn dual_stack() -> Vec<Pair> {
        let v6 = SiteProfile::dual_stack;
        vec![
            Pair::DualStack(v6(NatProfile::Symmetric), v6(NatProfile::Symmetric)),
            Pair::DualStack(v6(NatProfile::Cgnat), v6(NatProfile::Symmetric)),
            Pair::DualStack(
                v6(NatProfile::Symmetric),
                SiteProfile::v4(NatProfile::Symmetric),
            ),
        ]
    }

    /// Whether the pair needs the lab's public IPv6 segment.
    pub fn needs_ipv6(&self) -> bool {
        matches!(self, Pair::DualStack(a, b) if a.ipv6 || b.ipv6)
    }

    /// A pair whose only direct path is over IPv6: both sides dual-stack, and their IPv4
    /// NATs leave no direct IPv4 path. Its direct link must run over IPv6.
    pub fn direct_only_over_ipv6(&self) -> bool {
        match *self {
            Pair::DualStack(a, b) => {
                a.ipv6
                    && b.ipv6
                    && Pair::Profiles(a.nat, b.nat).expectation() == Expectation::Relayed
                    && self.expectation() == Expectation::Direct
            }
            _ => false,
        }
    }

    /// `a↔b` or `same-lan`.
    pub fn label(&self) -> String {
        match self {
            Pair::Profiles(a, b) => format!("{a} ↔ {b}"),
            Pair::DualStack(a, b) => format!("{a} ↔ {b}"),
            Pair::SameLan => "same-lan".into(),
        }
    }

    /// Parses `a:b` or `same-lan`; a profile name ending in `+v6` makes a dual-stack pair.
    pub fn parse(s: &str) -> Result<Pair, String> {
        if s == "same-lan" {
            return Ok(Pair::SameLan);
        }
        let (a, b) = s
            .split_once(':')
            .ok_or_else(|| format!("pair `{s}` must be PROFILE:PROFILE or same-lan"))?;
        let a: SiteProfile = a.parse().map_err(|e| format!("{e}"))?;
        let b: SiteProfile = b.parse().map_err(|e| format!("{e}"))?;
        Ok(if a.ipv6 || b.ipv6 {
            Pair::DualStack(a, b)
        } else {
            Pair::Profiles(a.nat, b.nat)
        })
    }

    /// A direct link is required when UDP passes and at least one side maps
    /// endpoint-independently — except where a symmetric NAT's fresh port meets
    /// port-dependent filtering (symmetric, port-restricted, and CGNAT, whose carrier
    /// filters like port-restricted): those, and every pair with a side that blocks UDP,
    /// must be relayed. A `upnp` side's router maps our port for anyone, so it must be
    /// direct with every peer UDP reaches.
    ///
    /// Against a peer whose NAT maps endpoint-independently, a symmetric NAT is beaten
    /// by port prediction (sequential ports) or the birthday technique (random ports),
    /// so those pairs must be direct too; two symmetric NATs stay relayed.
    pub fn expectation(&self) -> Expectation {
        let symmetric =
            |p: NatProfile| matches!(p, NatProfile::Symmetric | NatProfile::SymmetricSequential);
        match *self {
            Pair::SameLan => Expectation::Direct,
            Pair::Profiles(a, b) if !a.passes_udp() || !b.passes_udp() => Expectation::Relayed,
            Pair::Profiles(a, b) if symmetric(a) && symmetric(b) => Expectation::Relayed,
            Pair::Profiles(..) => Expectation::Direct,
            // Global IPv6 on both sides behind stateful firewalls: punching opens them.
            Pair::DualStack(a, b)
                if a.ipv6 && b.ipv6 && a.nat.passes_udp() && b.nat.passes_udp() =>
            {
                Expectation::Direct
            }
            Pair::DualStack(a, b) => Pair::Profiles(a.nat, b.nat).expectation(),
        }
    }

    /// Whether the pair needs prediction or the birthday technique (a symmetric NAT
    /// against port-dependent filtering): direct only after a few seconds on the relay.
    pub fn is_hard(&self) -> bool {
        let symmetric =
            |p: NatProfile| matches!(p, NatProfile::Symmetric | NatProfile::SymmetricSequential);
        let port_filtered =
            |p: NatProfile| matches!(p, NatProfile::PortRestricted | NatProfile::Cgnat);
        match *self {
            Pair::Profiles(a, b) => {
                (symmetric(a) && port_filtered(b)) || (symmetric(b) && port_filtered(a))
            }
            // Both sides on global IPv6: the plain punch opens the firewalls.
            Pair::DualStack(a, b) if a.ipv6 && b.ipv6 => false,
            Pair::DualStack(a, b) => Pair::Profiles(a.nat, b.nat).is_hard(),
            Pair::SameLan => false,
        }
    }

    /// The path a side's report must name, when the lab leaves only one: the TLS relay
    /// for a side whose network blocks UDP. `listener` picks peer A (else B).
    pub fn required_class(&self, listener: bool) -> Option<PathClass> {
        match *self {
            Pair::Profiles(a, b) => {
                let side = if listener { a } else { b };
                (!side.passes_udp()).then_some(PathClass::RelayTls)
            }
            Pair::DualStack(a, b) => Pair::Profiles(a.nat, b.nat).required_class(listener),
            Pair::SameLan => None,
        }
    }
}

/// How the matrix runs.
#[derive(Debug, Clone)]
pub struct MatrixConfig {
    /// The binaries under test.
    pub binaries: Binaries,
    /// One-way delay between the two peers' routers, in ms; each uplink gets half.
    pub delay_ms: u64,
    /// Loss on each uplink, per direction, in percent.
    pub loss_percent: u8,
    /// The pairs to run, in table order.
    pub pairs: Vec<Pair>,
    /// Bytes piped in each direction.
    pub bytes: usize,
    /// Pairs run at the same time.
    pub concurrency: usize,
    /// Limit for the whole `pipe` exchange of one pair.
    pub pipe_timeout: Duration,
    /// Keep homes, data and logs here instead of a temporary directory.
    pub keep_dir: Option<PathBuf>,
    /// New UDP flows per second that another host on each NAT site opens while the pair
    /// runs (0 = none): background traffic through the same NAT.
    pub background_flows: u32,
    /// How long a pair that must be direct may take, after its transfer over the relay,
    /// to move to the direct path (prediction and the birthday technique take seconds).
    pub wait_direct: Duration,
}

impl MatrixConfig {
    /// The whole matrix with default settings (20 ms between routers, no loss, 256 KiB each way).
    pub fn new(binaries: Binaries) -> MatrixConfig {
        MatrixConfig {
            binaries,
            delay_ms: 20,
            loss_percent: 0,
            pairs: Pair::all(),
            bytes: 256 * 1024,
            concurrency: 4,
            pipe_timeout: Duration::from_secs(60),
            keep_dir: None,
            background_flows: 0,
            wait_direct: Duration::from_secs(15),
        }
    }

    fn uplink(&self) -> LinkCondition {
        LinkCondition {
            delay: Duration::from_millis(self.delay_ms) / 2,
            loss_percent: self.loss_percent,
        }
    }
}

/// What one side of the pipe did.
#[derive(Debug, Clone, Default)]
pub struct PeerOutcome {
    /// Its `--report`, if it wrote one.
    pub report: Option<AttemptReport>,
    /// How the process ended (`None`: killed at the time limit or never started).
    pub exit: Option<String>,
    /// Its output matched the SHA-256 of what the other side read in.
    pub data_ok: bool,
    /// The last lines of its stderr.
    pub stderr_tail: String,
}

/// The result of one pair.
#[derive(Debug, Clone)]
pub struct PairResult {
    /// Which pair.
    pub pair: Pair,
    /// What was expected.
    pub expectation: Expectation,
    /// A link (direct or relayed), both exits 0, data verified both ways.
    pub linked: bool,
    /// Linked, and both sides report a direct path.
    pub direct: bool,
    /// The listener ("alice", peer A).
    pub listener: PeerOutcome,
    /// The initiator ("bob", peer B).
    pub initiator: PeerOutcome,
    /// Why it did not link, or why it is not direct (empty when direct).
    pub why: String,
    /// Wall time of the `pipe` exchange.
    pub wall: Duration,
}

impl PeerOutcome {
    /// The path when the pipe ended (else when the link came up).
    pub fn final_class(&self) -> Option<PathClass> {
        let report = self.report.as_ref()?;
        report
            .transfer
            .as_ref()
            .and_then(|t| t.path_class)
            .or(report.path_class)
    }

    /// Why the link was relayed at the end of the pipe (else when it came up).
    pub fn final_relay_reason(&self) -> Option<&str> {
        let report = self.report.as_ref()?;
        match &report.transfer {
            Some(t) if t.path_class.is_some() => t.relay_reason.as_deref(),
            _ => report.relay_reason.as_deref(),
        }
    }

    /// The peer address the link used at the end of the pipe (else when it came up):
    /// the server's for the UDP relay, unspecified for the TLS relay.
    pub fn final_remote(&self) -> Option<std::net::SocketAddr> {
        let report = self.report.as_ref()?;
        match &report.transfer {
            Some(t) if t.path_class.is_some() => t.remote.or(report.remote),
            _ => report.remote,
        }
    }

    /// `relay-udp` or, when the link moved during the pipe, `relay-udp→direct-lan`; a
    /// direct path over IPv6 ends in ` (v6)`.
    fn path_cell(&self) -> String {
        let first = self.report.as_ref().and_then(|r| r.path_class);
        let last = self.final_class();
        let v6 = if last.is_some_and(|c| !c.is_relayed())
            && self
                .final_remote()
                .is_some_and(|a| a.ip().to_canonical().is_ipv6())
        {
            " (v6)"
        } else {
            ""
        };
        match (first, last) {
            (Some(a), Some(b)) if a != b => format!("{a}→{b}{v6}"),
            (Some(a), _) => format!("{a}{v6}"),
            (None, _) => "–".into(),
        }
    }
}

impl PairResult {
    /// True when the pair did not link, or not on the path it had to take.
    pub fn is_unexpected(&self) -> bool {
        !self.linked
            || (self.expectation == Expectation::Direct && !self.direct)
            || self.wrong_class().is_some()
            || self.wrong_family().is_some()
    }

    /// A side of a pair that can only be direct over IPv6 whose final path is direct but
    /// not over IPv6 (it cannot be: a sign the report is wrong).
    pub fn wrong_family(&self) -> Option<String> {
        if !self.pair.direct_only_over_ipv6() || !self.direct {
            return None;
        }
        [("listener", &self.listener), ("initiator", &self.initiator)]
            .into_iter()
            .find_map(|(who, side)| {
                let remote = side.final_remote();
                (!remote.is_some_and(|a| a.ip().to_canonical().is_ipv6())).then(|| {
                    format!(
                        "{who} must be direct over IPv6, ended on {}",
                        remote.map_or_else(|| "no address".to_owned(), |a| a.to_string())
                    )
                })
            })
    }

    /// A side whose report names another path than the one the lab leaves it.
    pub fn wrong_class(&self) -> Option<String> {
        [
            ("listener", true, &self.listener),
            ("initiator", false, &self.initiator),
        ]
        .into_iter()
        .find_map(|(who, listener, side)| {
            let required = self.pair.required_class(listener)?;
            let got = side.final_class();
            (got != Some(required)).then(|| {
                format!(
                    "{who} must be on {required}, reported {}",
                    got.map_or("nothing", PathClass::as_str)
                )
            })
        })
    }

    /// The initiator's pipe rate, both directions together (MiB/s).
    pub fn pipe_rate(&self) -> Option<f64> {
        self.initiator
            .report
            .as_ref()
            .and_then(|r| r.transfer.as_ref())
            .and_then(TransferReport::mib_per_s)
    }

    /// True when both sides wrote a report (the minimum asserted of every pair).
    pub fn reported(&self) -> bool {
        self.listener.report.is_some() && self.initiator.report.is_some()
    }
}

/// A whole run.
#[derive(Debug, Clone)]
pub struct MatrixRun {
    /// One-way delay between routers (ms).
    pub delay_ms: u64,
    /// Loss per uplink per direction (%).
    pub loss_percent: u8,
    /// Bytes piped each way.
    pub bytes: usize,
    /// Results in table order.
    pub results: Vec<PairResult>,
    /// When the run started.
    pub started: SystemTime,
    /// How long it took.
    pub elapsed: Duration,
}

/// Runs the matrix. Pair failures are results; only a lab or server failure is an error.
pub fn run(config: &MatrixConfig) -> Result<MatrixRun, MatrixError> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let temp;
    let work: PathBuf = match &config.keep_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir().map_err(io_err("creating a work directory"))?;
            temp.path().to_owned()
        }
    };

    let mut lab = Lab::new()?;
    if config.pairs.iter().any(Pair::needs_ipv6) {
        lab.enable_ipv6()?;
    }
    let server_host = lab.add_public_host("srv")?;
    let link = config.uplink();
    let mut peers: Vec<(Host, Host)> = Vec::new();
    let mut background_hosts: Vec<Host> = Vec::new();
    for (k, pair) in config.pairs.iter().enumerate() {
        match *pair {
            Pair::Profiles(a, b) => {
                let mut site_a = lab.add_site(&format!("p{k}a"), a, link)?;
                let mut site_b = lab.add_site(&format!("p{k}b"), b, link)?;
                peers.push((
                    lab.add_host(&mut site_a, "alice")?,
                    lab.add_host(&mut site_b, "bob")?,
                ));
                if config.background_flows > 0 {
                    for (site, profile) in [(&mut site_a, a), (&mut site_b, b)] {
                        if profile != NatProfile::None {
                            background_hosts.push(lab.add_host(site, "bg")?);
                        }
                    }
                }
            }
            Pair::DualStack(a, b) => {
                let mut site_a = add_site(&mut lab, &format!("p{k}a"), a, link)?;
                let mut site_b = add_site(&mut lab, &format!("p{k}b"), b, link)?;
                peers.push((
                    lab.add_host(&mut site_a, "alice")?,
                    lab.add_host(&mut site_b, "bob")?,
                ));
            }
            Pair::SameLan => {
                let mut site = lab.add_site(&format!("p{k}"), NatProfile::PortRestricted, link)?;
                peers.push((
                    lab.add_host(&mut site, "alice")?,
                    lab.add_host(&mut site, "bob")?,
                ));
            }
        }
    }

    let server = LabServer::start(&config.binaries, &server_host, &work.join("server"))?;
    let _background = if background_hosts.is_empty() {
        None
    } else {
        let hosts: Vec<&Host> = background_hosts.iter().collect();
        // The discard port of the server host: nothing answers, as for most flows.
        let sink = std::net::SocketAddr::from((server_host.ip(), 9));
        Some(
            crate::lab::background::BackgroundFlows::start(&hosts, sink, config.background_flows)
                .map_err(MatrixError::from)?,
        )
    };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<PairResult>>> = Mutex::new(vec![None; config.pairs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..config.concurrency.max(1) {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let (Some(pair), Some((alice, bob))) = (config.pairs.get(k), peers.get(k))
                    else {
                        break;
                    };
                    let ctx = PairContext {
                        config,
                        runner: ChatrRunner {
                            chatr: config.binaries.chatr.clone(),
                            server: &server,
                            dir: work.join(format!("pair{k:02}")),
                        },
                        seed: k as u64,
                    };
                    let result = ctx.run(*pair, alice, bob);
                    if let Ok(mut slots) = results.lock()
                        && let Some(slot) = slots.get_mut(k)
                    {
                        *slot = Some(result);
                    }
                }
            });
        }
    });
    drop(server);
    drop(lab);
    let results = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_iter()
        .zip(&config.pairs)
        .map(|(slot, pair)| {
            slot.unwrap_or_else(|| PairResult {
                pair: *pair,
                expectation: pair.expectation(),
                linked: false,
                direct: false,
                listener: PeerOutcome::default(),
                initiator: PeerOutcome::default(),
                why: "pair did not run (worker thread died)".into(),
                wall: Duration::ZERO,
            })
        })
        .collect();
    Ok(MatrixRun {
        delay_ms: config.delay_ms,
        loss_percent: config.loss_percent,
        bytes: config.bytes,
        results,
        started,
        elapsed: clock.elapsed(),
    })
}

/// A site of `profile`: dual-stack when it asks for IPv6.
fn add_site(
    lab: &mut Lab,
    name: &str,
    profile: SiteProfile,
    link: LinkCondition,
) -> Result<Site, LabError> {
    if profile.ipv6 {
        lab.add_dual_stack_site(name, profile.nat, link)
    } else {
        lab.add_site(name, profile.nat, link)
    }
}

/// Everything one pair's run needs.
struct PairContext<'a> {
    config: &'a MatrixConfig,
    runner: ChatrRunner<'a>,
    seed: u64,
}

impl PairContext<'_> {
    fn run(&self, pair: Pair, alice: &Host, bob: &Host) -> PairResult {
        let mut result = PairResult {
            pair,
            expectation: pair.expectation(),
            linked: false,
            direct: false,
            listener: PeerOutcome::default(),
            initiator: PeerOutcome::default(),
            why: String::new(),
            wall: Duration::ZERO,
        };
        if let Err(why) = self.exchange(&mut result, alice, bob) {
            result.why = why;
        }
        result
    }

    fn exchange(&self, result: &mut PairResult, alice: &Host, bob: &Host) -> Result<(), String> {
        std::fs::create_dir_all(&self.runner.dir)
            .map_err(|e| format!("creating {}: {e}", self.runner.dir.display()))?;
        let alice_id = self.runner.enrol(alice, "alice")?;
        let bob_id = self.runner.enrol(bob, "bob")?;
        self.runner.step(
            alice,
            "alice",
            "contacts",
            &["contacts", "add", &bob_id, "bob"],
        )?;
        self.runner.step(
            bob,
            "bob",
            "contacts",
            &["contacts", "add", &alice_id, "alice"],
        )?;

        let alice_in = self.runner.dir.join("alice.in");
        let bob_in = self.runner.dir.join("bob.in");
        let alice_sum = write_random(&alice_in, self.config.bytes, self.seed * 2 + 1)?;
        let bob_sum = write_random(&bob_in, self.config.bytes, self.seed * 2 + 2)?;

        let clock = Instant::now();
        let wait = match result.expectation {
            Expectation::Direct => self.config.wait_direct.as_secs().to_string(),
            Expectation::Relayed => "0".to_owned(),
        };
        let (alice_done, bob_done) = std::thread::scope(|scope| {
            let listener = scope.spawn(|| {
                self.runner.chatr(
                    alice,
                    "alice",
                    "pipe",
                    &["pipe", "--listen", "--from", "bob", "--wait-direct", &wait],
                    Some(&alice_in),
                    self.config.pipe_timeout,
                )
            });
            // Give the listener time to log in (a few round trips across the wires) before
            // asking for it. On a busy machine that may not be enough: a quick "offline"
            // failure is retried, since nothing happened on the wire yet.
            let mut initiator;
            let mut attempt = 0;
            loop {
                std::thread::sleep(Duration::from_millis(1000 + 4 * self.config.delay_ms));
                attempt += 1;
                let _ = std::fs::remove_file(self.runner.report_path("bob"));
                let began = Instant::now();
                initiator = self.runner.chatr(
                    bob,
                    "bob",
                    "pipe",
                    &["pipe", "alice", "--wait-direct", &wait],
                    Some(&bob_in),
                    self.config.pipe_timeout,
                );
                let quick = began.elapsed() < OFFLINE_RETRY_WINDOW;
                let offline = initiator.as_ref().is_ok_and(|done| {
                    done.status.is_some_and(|s| !s.success()) && self.mentions_offline("bob", done)
                });
                if !(quick && offline && attempt < 4) {
                    break;
                }
            }
            (
                listener
                    .join()
                    .unwrap_or_else(|_| Err("listener thread panicked".into())),
                initiator,
            )
        });
        result.wall = clock.elapsed();
        let alice_done = alice_done?;
        let bob_done = bob_done?;
        result.listener = self.outcome("alice", &alice_done, &bob_sum);
        result.initiator = self.outcome("bob", &bob_done, &alice_sum);
        let sides = [&result.listener, &result.initiator];
        result.linked = sides.iter().all(|side| {
            side.report.as_ref().is_some_and(AttemptReport::is_linked)
                && side.exit.as_deref() == Some("0")
                && side.data_ok
        });
        // Direct is where the link settled: one that came up on the relay copy of the
        // handshake moves to the direct path a moment later.
        result.direct = result.linked
            && sides
                .iter()
                .all(|side| side.final_class().is_some_and(|c| !c.is_relayed()));
        if !result.linked {
            result.why = why_not_linked(&result.listener, &result.initiator);
        } else if !result.direct {
            result.why = why_relayed(&result.listener, &result.initiator);
        }
        if let Some(wrong) = result.wrong_class().or_else(|| result.wrong_family()) {
            result.why = format!("{wrong}; {}", result.why);
        }
        Ok(())
    }

    /// Did this failed attempt fail because the peer was not online (yet)?
    fn mentions_offline(&self, who: &str, done: &Finished) -> bool {
        let report = std::fs::read_to_string(self.runner.report_path(who)).unwrap_or_default();
        let stderr = std::fs::read_to_string(&done.stderr).unwrap_or_default();
        [report, stderr].iter().any(|text| {
            text.to_ascii_lowercase().contains("offline")
                || text.to_ascii_lowercase().contains("not online")
        })
    }

    fn outcome(&self, who: &str, done: &Finished, expected_sum: &str) -> PeerOutcome {
        let report = std::fs::read_to_string(self.runner.report_path(who))
            .ok()
            .and_then(|text| serde_json::from_str::<AttemptReport>(&text).ok());
        let data_ok = sha256_file(&done.stdout).is_ok_and(|sum| sum == expected_sum);
        PeerOutcome {
            report,
            exit: done.status.map(|s| match s.code() {
                Some(code) => code.to_string(),
                None => s.to_string(),
            }),
            data_ok,
            stderr_tail: tail(&done.stderr, 3),
        }
    }
}

/// Why a linked pair is relayed: the reason each relayed side gave (once if both agree).
fn why_relayed(listener: &PeerOutcome, initiator: &PeerOutcome) -> String {
    let mut reasons: Vec<String> = Vec::new();
    for side in [initiator, listener] {
        if let Some(reason) = side
            .final_class()
            .filter(|c| c.is_relayed())
            .and_then(|_| side.final_relay_reason())
        {
            let reason = reason.to_owned();
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        }
    }
    reasons.join("; ")
}

/// A one-line reason, from the most specific evidence available.
fn why_not_linked(listener: &PeerOutcome, initiator: &PeerOutcome) -> String {
    let mut reasons = Vec::new();
    for (who, side) in [("initiator", initiator), ("listener", listener)] {
        match (&side.report, &side.exit) {
            (_, None) => reasons.push(format!("{who} killed at the time limit")),
            (Some(report), _) if !report.is_linked() => reasons.push(format!(
                "{who}: {}",
                report
                    .error
                    .as_deref()
                    .map(first_sentence)
                    .unwrap_or_else(|| format!("result {:?}", report.result))
            )),
            (None, Some(code)) => reasons.push(format!(
                "{who} wrote no report (exit {code}): {}",
                side.stderr_tail
            )),
            (Some(_), Some(code)) if code != "0" => {
                reasons.push(format!("{who} exited {code}: {}", side.stderr_tail));
            }
            (Some(_), Some(_)) if !side.data_ok => {
                reasons.push(format!("{who}: received data does not match"))
            }
            _ => {}
        }
    }
    if reasons.is_empty() {
        "unknown".into()
    } else {
        reasons.join("; ")
    }
}

/// The diagnosis without the advice that follows it (`"… failed: why. Try …"` → `"… failed: why"`).
fn first_sentence(text: &str) -> String {
    match text.find(". ") {
        Some(end) => text[..end].to_owned(),
        None => text.trim_end_matches('.').to_owned(),
    }
}

/// Writes `len` pseudo-random bytes (xorshift64*, seeded) and returns their SHA-256 (hex).
fn write_random(path: &Path, len: usize, seed: u64) -> Result<String, String> {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut state = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nanos) | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        data.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, &data).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(hex(
        ring::digest::digest(&ring::digest::SHA256, &data).as_ref()
    ))
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last `lines` non-empty lines of a file, joined with " / " (for tables and errors).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    kept[kept.len().saturating_sub(lines)..].join(" / ")
}

/// Makes text safe inside a Markdown table cell.
fn cell(text: &str) -> String {
    let flat: String = text.replace('|', "\\|").replace(['\n', '\r'], " ");
    if flat.chars().count() > 400 {
        let cut: String = flat.chars().take(397).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

/// `YYYY-MM-DD HH:MM UTC` for a time after the epoch (civil-from-days, proleptic Gregorian).
fn utc_timestamp(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn fmt_ms(v: Option<u64>) -> String {
    v.map_or_else(|| "–".into(), |ms| ms.to_string())
}

fn fmt_count(v: Option<u32>) -> String {
    v.map_or_else(|| "–".into(), |n| n.to_string())
}

impl MatrixRun {
    /// Pairs that had to be direct and were not.
    pub fn unexpected(&self) -> Vec<&PairResult> {
        self.results.iter().filter(|r| r.is_unexpected()).collect()
    }

    /// The report as Markdown (the content of `docs/NAT-MATRIX.md`).
    pub fn to_markdown(&self, command: &str) -> String {
        let linked = self.results.iter().filter(|r| r.linked).count();
        let direct = self.results.iter().filter(|r| r.direct).count();
        let must_direct: Vec<&PairResult> = self
            .results
            .iter()
            .filter(|r| r.expectation == Expectation::Direct)
            .collect();
        let kept_direct = must_direct.iter().filter(|r| r.direct).count();
        let missed = self.unexpected().len();
        let rtt = 2 * self.delay_ms;
        let mut md = String::new();
        let _ = writeln!(md, "# NAT matrix\n");
        let _ = writeln!(
            md,
            "Generated by `{command}` on {} in {:.0} s. Real `chatr-server` and `chatr` binaries run inside Linux network \
             namespaces built by the NAT lab (`tests/src/lab/`); each pair gets its own NAT sites around one server.\n",
            utc_timestamp(self.started),
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            md,
            "Link conditions: {} ms one-way between the two peers' routers (RTT {rtt} ms; each uplink's delay wire adds {} ms, \
             so a peer is {} ms from the server), {} % loss per uplink and direction. Data: {} KiB piped each way, SHA-256 \
             checked on the other side.\n",
            self.delay_ms,
            self.delay_ms / 2,
            self.delay_ms / 2,
            self.loss_percent,
            self.bytes / 1024
        );
        let _ = writeln!(
            md,
            "**{linked}/{} pairs linked ({direct} direct, {} relayed by the server); {kept_direct}/{} pairs that must be \
             direct were direct{}.**\n",
            self.results.len(),
            linked - direct,
            must_direct.len(),
            if missed == 0 {
                ""
            } else {
                " — see the failures below"
            }
        );
        md.push_str(
            "Peer A is the listener (`pipe --listen --from bob`, QUIC server), peer B the initiator (`pipe alice`, QUIC \
             client). *Path* is what each side's `--report` names (`direct-lan`, `direct-public`, `relay-udp`, \
             `relay-tls`) when the link came up, and `→` where it was when the pipe ended if it moved; a pair is \
             direct when both sides ended direct. A UDP-blocked side reaches the relay inside its TLS connection while its peer uses UDP. *Link \
             ms* is the time from ClientInfo to the authenticated QUIC link as each client reports it; *probes* counts \
             the hole-punching probes each side sent. *Pipe MiB/s* is B's pipe, both directions together, from opening \
             the stream to the last byte confirmed: through the lab's userspace delay wire, which caps any flow near \
             90 MiB/s and is dominated by slow start for small transfers, so it compares paths within this table only \
             (kernel-only figures are in `BENCHMARKS.md`).\n\n",
        );
        md.push_str("| Peer A | Peer B | Must be | Result | Path A / B | Winning candidate (B) | Link ms A / B | Probes A / B | Pipe MiB/s | Data | Why relayed / why not linked |\n");
        md.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.results {
            let (a, b) = match r.pair {
                Pair::Profiles(a, b) => (a.name().to_owned(), b.name().to_owned()),
                Pair::DualStack(a, b) => (a.to_string(), b.to_string()),
                Pair::SameLan => (
                    "same-lan (port-restricted)".to_owned(),
                    "same LAN".to_owned(),
                ),
            };
            let la = r.listener.report.clone().unwrap_or_default();
            let lb = r.initiator.report.clone().unwrap_or_default();
            let result = match (r.is_unexpected(), r.direct, r.linked) {
                (false, true, _) => "✅ direct",
                (false, false, _) => "✅ relayed",
                (true, _, true) => "❌ wrong path",
                (true, _, false) => "❌ failed",
            };
            let data = if r.listener.data_ok && r.initiator.data_ok {
                "✔"
            } else {
                "✘"
            };
            let _ = writeln!(
                md,
                "| {a} | {b} | {} | {result} | {} / {} | {} | {} / {} | {} / {} | {} | {data} | {} |",
                match r.expectation {
                    Expectation::Direct => "direct",
                    Expectation::Relayed => "linked",
                },
                r.listener.path_cell(),
                r.initiator.path_cell(),
                cell(lb.candidate.map_or("–", CandidateKind::as_str)),
                fmt_ms(la.punch_ms.filter(|_| la.is_linked())),
                fmt_ms(lb.punch_ms.filter(|_| lb.is_linked())),
                fmt_count(la.probes_sent),
                fmt_count(lb.probes_sent),
                r.pipe_rate()
                    .map_or_else(|| "–".into(), |v| format!("{v:.1}")),
                cell(&r.why),
            );
        }
        md.push_str(PROFILE_LEGEND);
        md
    }
}

const PROFILE_LEGEND: &str = "
## Profiles

RFC 4787 terms: EIM = endpoint-independent mapping, APDM = address-and-port-dependent mapping; EIF / ADF / APDF =
endpoint-independent / address-dependent / address-and-port-dependent filtering. Every NAT router drops unsolicited
inbound packets in its `input`/`forward` hooks, so they reach no socket and leave no conntrack entry.

| Profile | Mapping | Filtering | How the lab builds it |
|---|---|---|---|
| none | – | – | host directly on the public segment, no firewall |
| full-cone | EIM | EIF (UDP) | masquerade + a dynamic nftables map (public port → LAN ip:port) learned from outgoing UDP, DNATing inbound UDP from anyone |
| address-restricted | EIM | ADF (UDP) | as full-cone, but DNAT only from addresses the mapping has sent to (dynamic set) |
| port-restricted | EIM | APDF | plain Linux masquerade + conntrack |
| symmetric | APDM | APDF | masquerade `fully-random` (a fresh random port per destination) |
| symmetric-sequential | APDM (ports in sequence, step 1) | APDF | `snat to ADDR : numgen inc mod 4096 map { 0 : 20000, … }` for UDP: one counter for every new flow of the site (a map, because `numgen` used directly as a port comes out byte-swapped) |
| cgnat | EIM | APDF | a port-restricted home router (WAN in 100.64.0.0/10) behind a port-restricted carrier NAT |
| udp-blocked | EIM (TCP) | all UDP dropped | a port-restricted router whose firewall drops every UDP packet, both ways: only TCP (and so the TLS relay) gets through |
| upnp | APDM (EIM + EIF for a mapped port) | APDF | a symmetric router running Debian's miniupnpd (UPnP IGD, NAT-PMP, PCP), WAN in 192.0.31.0/24 (miniupnpd refuses reserved ranges); the client asks it for a mapping of its UDP port; against symmetric and cgnat only |
| same-lan | EIM | APDF | two peers on one port-restricted NAT, which does not hairpin: only private endpoints work |
| *profile*+v6 | as *profile* (IPv4) | IPv6: stateful (APDF) | dual-stack: the IPv4 side as *profile*; IPv6 routed without NAT66 (`2001:2::/48` plays the internet) behind the router's `inet` filter: out allowed, established/related in, new inbound dropped |

A symmetric NAT meeting port-dependent filtering (port-restricted, cgnat) needs more than the plain punch: port
prediction when its ports come in sequence, the birthday technique when they are random (`docs/PROTOCOL.md` §10.7).
Those pairs come up on the relay and move to the direct path within seconds. Two symmetric NATs leave no direct path
(neither side can guess the other's port; the relay reason says so), and a UDP-blocked network none at all: those pairs
must link through the server's relay (UDP, or TLS for the blocked side). With global IPv6 on both
sides even two symmetric NATs have a direct path over IPv6 (*path* ends in `(v6)`), which the matrix requires; a
dual-stack side meeting an IPv4-only one stays relayed.
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_once_plus_same_lan() {
        let pairs = Pair::all();
        assert_eq!(pairs.len(), 36 + 3 + UPNP_PARTNERS.len() + 1);
        assert_eq!(pairs.last(), Some(&Pair::SameLan));
        // The upnp router's mapping must make it direct even with the hardest partners.
        for partner in UPNP_PARTNERS {
            let pair = Pair::Profiles(NatProfile::Upnp, partner);
            assert!(pairs.contains(&pair));
            assert_eq!(pair.expectation(), Expectation::Direct);
        }
        let relayed: Vec<String> = pairs
            .iter()
            .filter(|p| p.expectation() == Expectation::Relayed)
            .map(Pair::label)
            .collect();
        let mut expected = vec![
            "none ↔ udp-blocked".to_owned(),
            "full-cone ↔ udp-blocked".to_owned(),
            "address-restricted ↔ udp-blocked".to_owned(),
            "port-restricted ↔ udp-blocked".to_owned(),
            "symmetric ↔ symmetric".to_owned(),
            "symmetric ↔ symmetric-sequential".to_owned(),
            "symmetric-sequential ↔ symmetric-sequential".to_owned(),
            "symmetric ↔ udp-blocked".to_owned(),
            "symmetric-sequential ↔ udp-blocked".to_owned(),
            "cgnat ↔ udp-blocked".to_owned(),
            "udp-blocked ↔ udp-blocked".to_owned(),
            "symmetric+v6 ↔ symmetric".to_owned(),
        ];
        expected.sort();
        let mut relayed_sorted = relayed;
        relayed_sorted.sort();
        assert_eq!(relayed_sorted, expected);
        let hard: Vec<String> = pairs
            .iter()
            .filter(|p| p.is_hard())
            .map(Pair::label)
            .collect();
        assert_eq!(
            hard,
            [
                "port-restricted ↔ symmetric",
                "port-restricted ↔ symmetric-sequential",
                "symmetric ↔ cgnat",
                "symmetric-sequential ↔ cgnat",
            ]
        );
        let blocked = Pair::Profiles(NatProfile::None, NatProfile::UdpBlocked);
        assert_eq!(blocked.required_class(true), None);
        assert_eq!(blocked.required_class(false), Some(PathClass::RelayTls));
    }

    #[test]
    fn pair_parse() {
        assert_eq!(Pair::parse("same-lan"), Ok(Pair::SameLan));
        assert_eq!(
            Pair::parse("none:symmetric"),
            Ok(Pair::Profiles(NatProfile::None, NatProfile::Symmetric))
        );
        assert!(Pair::parse("none").is_err());
        let both = Pair::parse("cgnat+v6:symmetric+v6").unwrap();
        assert_eq!(
            both,
            Pair::DualStack(
                SiteProfile::dual_stack(NatProfile::Cgnat),
                SiteProfile::dual_stack(NatProfile::Symmetric)
            )
        );
        assert_eq!(both.label(), "cgnat+v6 ↔ symmetric+v6");
        // Birthday punching gets this pair direct over IPv4 as well.
        assert!(both.needs_ipv6() && !both.direct_only_over_ipv6());
        let hard = Pair::parse("symmetric+v6:symmetric+v6").unwrap();
        assert!(hard.needs_ipv6() && hard.direct_only_over_ipv6());
        assert_eq!(hard.expectation(), Expectation::Direct);
        assert_eq!(both.expectation(), Expectation::Direct);
        let one = Pair::parse("symmetric+v6:symmetric").unwrap();
        assert_eq!(one.expectation(), Expectation::Relayed);
        assert!(one.needs_ipv6() && !one.direct_only_over_ipv6());
        // IPv4 alone goes direct here: the link may use either family.
        let easy = Pair::parse("full-cone+v6:symmetric+v6").unwrap();
        assert_eq!(easy.expectation(), Expectation::Direct);
        assert!(!easy.direct_only_over_ipv6());
        let blocked = Pair::parse("udp-blocked+v6:none+v6").unwrap();
        assert_eq!(blocked.expectation(), Expectation::Relayed);
        assert_eq!(blocked.required_class(true), Some(PathClass::RelayTls));
        assert!(Pair::parse("none:bogus").is_err());
    }

    #[test]
    fn report_json_contract() {
        let r: AttemptReport = serde_json::from_str(
            r#"{"peer":"9b2f6d3e-0c4a-4f0e-8a53-2d4f7a1c9e10","result":"direct","path":"lan","candidate":"private","remote":"192.168.1.3:5000","punch_ms":12,"probes_sent":4}"#,
        )
        .unwrap();
        assert!(r.is_direct() && r.is_linked());
        assert_eq!(r.punch_ms, Some(12));
        assert_eq!(r.probes_sent, Some(4));
        let failed: AttemptReport =
            serde_json::from_str(r#"{"result":"failed","error":"punch timed out"}"#).unwrap();
        assert!(!failed.is_direct());
    }

    #[test]
    fn timestamp_is_civil_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_600 + 120); // 2000-02-29 01:02
        assert_eq!(utc_timestamp(t), "2000-02-29 01:02 UTC");
    }

    #[test]
    fn cells_are_escaped() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }

    #[test]
    fn reasons_drop_the_advice() {
        assert_eq!(
            first_sentence("punch failed: x (1.2.3.4:5). Try again. Or not"),
            "punch failed: x (1.2.3.4:5)"
        );
        assert_eq!(first_sentence("peer offline."), "peer offline");
    }
}
