//! The NAT lab: real NATs in Linux network namespaces, for proving direct links.
//!
//! A [`Lab`] is a small internet built from network namespaces joined by veth
//! pairs: a public segment (a bridge holding the `chatr-server` host and any
//! other public hosts) and *sites*, each a NAT router (or two, for CGNAT) of a
//! given [`NatProfile`] with hosts on its LAN. With [`Lab::enable_ipv6`] the public
//! segment carries IPv6 too and [`Lab::add_dual_stack_site`] builds sites that also
//! route global IPv6 behind a stateful firewall (no NAT66), named `PROFILE+v6`
//! ([`SiteProfile`]). Each site's uplink can carry a
//! [`LinkCondition`]: latency from a userspace delay wire, `wire.rs` (this kernel
//! has no `netem`) and loss from nftables `numgen`. Processes run inside a
//! host with [`Netns::command`]; Rust code with [`Netns::run_in`].
//!
//! Safety rails: the lab needs root and refuses to run without it (it never
//! skips silently); it installs `nftables`/`iproute2` itself when missing;
//! every namespace carries a per-run prefix and is deleted on drop (also when a
//! test panics); the next lab sweeps away whatever a killed run left behind; and
//! no namespace has a route out of the lab, so traffic stays inside it.
//!
//! On top sit [`probe`] (a tiny UDP reflector and hole-punch probe used to check
//! the NAT profiles themselves) and [`matrix`] (every pair of profiles with the
//! real `chatr` and `chatr-server` binaries, rendered to `docs/NAT-MATRIX.md`).

pub mod background;
pub mod cli_runner;
mod error;
pub mod lab_server;
pub mod matrix;
mod nat;
mod netns;
pub mod probe;
mod run_id;
mod site_profile;
pub mod stats;
mod sys;
mod topology;
pub mod upnp;
mod wire;

pub use error::LabError;
pub use nat::{Filtering, Mapping, NatProfile, UnknownProfile};
pub use netns::Netns;
pub use run_id::{NAMESPACE_PREFIX, sweep_leftovers};
pub use site_profile::SiteProfile;
pub use sys::ensure_prerequisites;
pub use topology::{Host, Lab, LinkCondition, Site};
pub use wire::WireStats;

/// Serializes lab users within one process: labs are isolated from each other, but
/// the machine has two cores, and timing-sensitive checks should not share them
/// with another lab's build. Tests take this for their whole duration.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A panicking test poisons the mutex; the lab state it guards is per test, so go on.
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
