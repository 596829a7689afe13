//! The `upnp` profile's router: a real miniupnpd (Debian's `miniupnpd-nftables`) that
//! grants UPnP IGD, NAT-PMP and PCP mappings, in front of a symmetric NAT.
//!
//! Three facts shape it:
//! - miniupnpd refuses to run when its WAN address is private or reserved, and that
//!   includes the lab's 203.0.113.0/24 (TEST-NET-3). So this router's WAN gets an
//!   address in [`UPNP_PUBLIC_NET`], an ordinary unicast /24 that exists only on the
//!   lab's public bridge (every member of the segment has an on-link route to it, and
//!   the router one back to 203.0.113.0/24). No namespace has a route out of the lab,
//!   so nothing is ever sent to the real owner of that range.
//! - miniupnpd adds its rules to three nftables chains that the ruleset must hook in:
//!   `miniupnpd` (forward: let mapped ports in), `prerouting_miniupnpd` (DNAT the
//!   mapped port to the host) and `postrouting_miniupnpd` (SNAT). One `table inet
//!   filter` holds them and the hooks, and miniupnpd.conf names that table for both
//!   its filter and NAT rules. (The package's `nft_init.sh` needs a helper script the
//!   package does not ship, so the lab loads its own ruleset.)
//! - `enable_natpmp=yes` turns on NAT-PMP and PCP (both on UDP 5351).
//!
//! Without a mapping the router behaves like `symmetric`: masquerade `fully-random`
//! and address-and-port-dependent filtering, so only the mapping opens a direct path.

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::error::LabError;
use super::nat::WAN;
use super::netns::Netns;
use super::sys;

/// The `upnp` routers' WAN addresses: a /24 miniupnpd takes for public (not in its
/// list of private and reserved ranges), present only on the lab's public bridge.
pub const UPNP_PUBLIC_NET: [u8; 3] = [192, 0, 31];

/// The router's UPnP HTTP port (description and SOAP control) on its LAN address.
pub const HTTP_PORT: u16 = 5000;

/// Where Debian's package puts the daemon.
const MINIUPNPD: &str = "/usr/sbin/miniupnpd";

/// How long miniupnpd may take to open its sockets.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The router's ruleset: a symmetric NAT with miniupnpd's chains hooked in.
pub(crate) fn ruleset() -> String {
    format!(
        "table inet filter {{
  chain miniupnpd {{
  }}
  chain prerouting_miniupnpd {{
  }}
  chain postrouting_miniupnpd {{
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname != \"{WAN}\" accept
    ct state established,related accept
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    iifname != \"{WAN}\" accept
    ct state established,related accept
    iifname \"{WAN}\" jump miniupnpd
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"{WAN}\" jump prerouting_miniupnpd
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"{WAN}\" jump postrouting_miniupnpd
    oifname \"{WAN}\" masquerade fully-random
  }}
}}
"
    )
}

/// miniupnpd's configuration for a router whose LAN interface is `lan`.
fn config(dir: &Path, uuid_tail: u16) -> String {
    format!(
        "ext_ifname={WAN}
listening_ip=lan
http_port={HTTP_PORT}
enable_upnp=yes
enable_natpmp=yes
secure_mode=yes
system_uptime=yes
notify_interval=60
clean_ruleset_interval=600
lease_file={lease}
uuid=6c616221-7570-4e70-8000-{uuid_tail:012x}
upnp_table_name=filter
upnp_nat_table_name=filter
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 192.168.0.0/16 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
",
        lease = dir.join("leases").display()
    )
}

/// A running miniupnpd; killed (and its files removed) on drop.
#[derive(Debug)]
pub(crate) struct Miniupnpd {
    child: Child,
    dir: PathBuf,
}

impl Miniupnpd {
    /// Installs the package if needed, then starts miniupnpd in `router` (whose LAN
    /// address is `lan_ip`) and waits until it answers on its HTTP port.
    pub(crate) fn start(router: &Netns, lan_ip: Ipv4Addr, site: u16) -> Result<Self, LabError> {
        ensure_installed()?;
        let dir = std::env::temp_dir().join(format!("{}-miniupnpd", router.name()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let conf = dir.join("miniupnpd.conf");
        std::fs::write(&conf, config(&dir, site))
            .map_err(|e| LabError::io(format!("writing {}", conf.display()), e))?;
        let log = std::fs::File::create(dir.join("log"))
            .map_err(|e| LabError::io("creating miniupnpd's log", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| LabError::io("duplicating miniupnpd's log", e))?;
        let mut cmd = router.command(MINIUPNPD);
        cmd.arg("-d")
            .arg("-f")
            .arg(&conf)
            .arg("-P")
            .arg(dir.join("pid"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = cmd
            .spawn()
            .map_err(|e| LabError::io(format!("spawning `{}`", sys::describe(&cmd)), e))?;
        let mut daemon = Miniupnpd { child, dir };
        daemon.wait_ready(router, lan_ip)?;
        Ok(daemon)
    }

    fn wait_ready(&mut self, router: &Netns, lan_ip: Ipv4Addr) -> Result<(), LabError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let http = SocketAddrV4::new(lan_ip, HTTP_PORT);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(LabError::Daemon {
                    daemon: "miniupnpd",
                    detail: format!("exited ({status}): {}", self.log()),
                });
            }
            let up = router.run_in(|| {
                TcpStream::connect_timeout(&http.into(), Duration::from_millis(200)).is_ok()
            })?;
            // The HTTP socket opens after the NAT-PMP/PCP one, so both are up now.
            if up {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Daemon {
                    daemon: "miniupnpd",
                    detail: format!(
                        "did not listen on {http} within {READY_TIMEOUT:?}: {}",
                        self.log()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the daemon logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Miniupnpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Installs `miniupnpd-nftables` with apt-get when the daemon is missing.
fn ensure_installed() -> Result<(), LabError> {
    if Path::new(MINIUPNPD).is_file() {
        return Ok(());
    }
    eprintln!("natlab: installing miniupnpd-nftables");
    sys::apt_install(&["miniupnpd-nftables"]).map_err(|detail| LabError::MissingTool {
        tool: "miniupnpd",
        detail,
    })?;
    if Path::new(MINIUPNPD).is_file() {
        Ok(())
    } else {
        Err(LabError::MissingTool {
            tool: "miniupnpd",
            detail: format!("{MINIUPNPD} still missing after apt-get install miniupnpd-nftables"),
        })
    }
}

/// The WAN address of a `upnp` router whose uplink octet is `octet`.
pub(crate) fn wan_ip(octet: u8) -> Ipv4Addr {
    Ipv4Addr::new(
        UPNP_PUBLIC_NET[0],
        UPNP_PUBLIC_NET[1],
        UPNP_PUBLIC_NET[2],
        octet,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_hooks_in_every_miniupnpd_chain_before_the_symmetric_nat() {
        let rules = ruleset();
        for chain in ["miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd"] {
            assert!(rules.contains(&format!("jump {chain}\n")), "{chain}");
        }
        let snat = rules.find("jump postrouting_miniupnpd").unwrap();
        let masq = rules.find("masquerade fully-random").unwrap();
        assert!(
            snat < masq,
            "mapped ports must be translated before the symmetric NAT"
        );
    }

    #[test]
    fn the_config_names_the_lab_table_for_filter_and_nat() {
        let conf = config(Path::new("/tmp/x"), 7);
        assert!(conf.contains("upnp_table_name=filter\n"));
        assert!(conf.contains("upnp_nat_table_name=filter\n"));
        assert!(conf.contains("enable_natpmp=yes\n"));
        assert!(conf.contains("lease_file=/tmp/x/leases\n"));
        assert!(conf.contains("uuid=6c616221-7570-4e70-8000-000000000007\n"));
    }
}
