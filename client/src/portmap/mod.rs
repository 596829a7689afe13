//! Port mapping: ask the user's router to forward a public port to our UDP socket.
//!
//! A router that speaks PCP (RFC 6887), NAT-PMP (RFC 6886) or UPnP IGD (v1 or v2)
//! can be asked for a mapping `external ip:port → our socket`. Once granted, that
//! public endpoint accepts packets from anyone, whatever the NAT's own behaviour, so
//! a peer behind even a symmetric NAT can reach us directly. We advertise it to peers
//! as a port-mapped candidate in the version-3 link hints (`LocalHints`).
//!
//! Where it sits in the flow: [`Client::start`](crate::Client::start) spawns one
//! background task (`driver`) that asks the default gateway, in order, for a PCP
//! mapping (falling back to NAT-PMP when the router says it only speaks that), then
//! for a UPnP IGD mapping. Every request has a short timeout, and nothing waits for
//! the task: login and links go ahead at once, and a router that never answers only
//! means no port-mapped candidate. The task renews the lease at half its lifetime
//! ([`schedule`]), drops the candidate when a renewal fails past the lease's end, and
//! removes the mapping when the client shuts down (its cancellation token).
//! [`Client::port_mapping`](crate::Client::port_mapping) reports what the router
//! granted ([`PortMapStatus`]); `chatr status` prints it.
//!
//! The protocols themselves come from two crates: `crab_nat` (PCP and NAT-PMP) and
//! `igd-next` (UPnP IGD's SSDP discovery and SOAP calls). This module adds the
//! order, the timeouts, the renewal and the release.

mod config;
mod driver;
mod error;
mod gateway;
mod pcp;
pub mod schedule;
mod status;
mod upnp;

pub use config::{PortMapConfig, PortMapMode, UnknownPortMapMode};
pub(crate) use driver::spawn;
pub use error::PortMapError;
pub use status::{Grant, MapProtocol, PortMapStatus};
