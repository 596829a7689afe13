//! Whether and how the client asks its router for a port mapping.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Which port-mapping protocols to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PortMapMode {
    /// PCP (falling back to NAT-PMP), then UPnP IGD: whatever the router speaks.
    #[default]
    Auto,
    /// Never ask the router.
    Off,
    /// PCP only.
    Pcp,
    /// NAT-PMP only.
    NatPmp,
    /// UPnP IGD only.
    Upnp,
}

impl PortMapMode {
    /// The mode's name on the command line (`--port-mapping`).
    pub fn name(self) -> &'static str {
        match self {
            PortMapMode::Auto => "auto",
            PortMapMode::Off => "off",
            PortMapMode::Pcp => "pcp",
            PortMapMode::NatPmp => "nat-pmp",
            PortMapMode::Upnp => "upnp",
        }
    }

    const ALL: [PortMapMode; 5] = [
        PortMapMode::Auto,
        PortMapMode::Off,
        PortMapMode::Pcp,
        PortMapMode::NatPmp,
        PortMapMode::Upnp,
    ];
}

impl fmt::Display for PortMapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--port-mapping` value that names no mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown port-mapping mode `{0}` (expected auto, off, pcp, nat-pmp or upnp)")]
pub struct UnknownPortMapMode(pub String);

impl FromStr for PortMapMode {
    type Err = UnknownPortMapMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        let wanted = match wanted.as_str() {
            "on" | "true" | "1" => "auto",
            "false" | "0" | "no" | "none" => "off",
            "natpmp" | "nat_pmp" | "pmp" => "nat-pmp",
            other => other,
        };
        PortMapMode::ALL
            .into_iter()
            .find(|m| m.name() == wanted)
            .ok_or_else(|| UnknownPortMapMode(s.to_owned()))
    }
}

/// Port-mapping settings ([`ClientOptions::port_mapping`](crate::ClientOptions::port_mapping)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PortMapConfig {
    /// Which protocols to try (default: all of them).
    pub mode: PortMapMode,
    /// The lease we ask for; routers may grant less (default 2 h, RFC 6886's advice).
    pub lease: Duration,
    /// First wait for a PCP/NAT-PMP answer; doubled for each of the two retries
    /// (default 250 ms: 1.75 s in all when the router stays silent).
    pub pcp_timeout: Duration,
    /// How long the UPnP SSDP search waits for a router's answer (default 1 s).
    pub ssdp_timeout: Duration,
    /// Budget for each UPnP SOAP call to the router (default 2 s).
    pub soap_timeout: Duration,
    /// How long to wait before asking again after no router answered or it refused,
    /// or after a mapping was lost (default 5 min).
    pub retry_interval: Duration,
    /// Budget for removing the mapping when the client shuts down (default 1 s).
    pub release_timeout: Duration,
}

impl Default for PortMapConfig {
    fn default() -> Self {
        Self {
            mode: PortMapMode::Auto,
            lease: Duration::from_secs(2 * 60 * 60),
            pcp_timeout: Duration::from_millis(250),
            ssdp_timeout: Duration::from_secs(1),
            soap_timeout: Duration::from_secs(2),
            retry_interval: Duration::from_secs(5 * 60),
            release_timeout: Duration::from_secs(1),
        }
    }
}

impl PortMapConfig {
    /// The default settings with port mapping turned off.
    pub fn off() -> Self {
        Self {
            mode: PortMapMode::Off,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_by_name_and_by_common_spellings() {
        for mode in PortMapMode::ALL {
            assert_eq!(mode.name().parse::<PortMapMode>(), Ok(mode));
        }
        assert_eq!("NATPMP".parse::<PortMapMode>(), Ok(PortMapMode::NatPmp));
        assert_eq!("false".parse::<PortMapMode>(), Ok(PortMapMode::Off));
        assert_eq!("1".parse::<PortMapMode>(), Ok(PortMapMode::Auto));
        assert!("igd3".parse::<PortMapMode>().is_err());
    }
}
