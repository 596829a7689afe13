//! `chatr status`: can we reach the server, and how does our NAT look from there?
//!
//! The server sees our TCP session and (after the binding message, and again
//! via STUN) our UDP socket. Comparing what it saw with our local port P tells
//! whether there is a NAT and whether it keeps ports. With a single server
//! address we cannot tell an endpoint-independent mapping from a symmetric one,
//! and the report says so instead of guessing.
//!
//! The last line says what the router granted when asked for a port mapping (PCP,
//! NAT-PMP or UPnP IGD: protocol, public endpoint, lease), or that no router answered.

use std::net::SocketAddr;
use std::time::Duration;

use chatr_client::rest::ApiErrorKind;
use chatr_client::{Client, ClientOptions};
use chatr_proto::Endpoint;

use super::{CliError, Globals, setup};

/// Arguments of `chatr status`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// Seconds to wait for the server
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

pub(crate) async fn run(g: &Globals, args: StatusArgs) -> Result<(), CliError> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    let mut options = ClientOptions::from_home(&g.home)?;
    options.port_mapping.mode = g.port_mapping;
    let uuid = options.identity.uuid();
    let config = g.home.config()?;
    println!("identity:    {uuid}");

    // The registry first: it explains a refused login.
    match setup::registry(g)?.lookup(uuid).await {
        Ok(key) if key == options.identity.verifying_key() => {
            println!(
                "registry:    {} reachable; registered with this key",
                config.api
            )
        }
        Ok(_) => println!(
            "registry:    {} reachable; REGISTERED WITH ANOTHER KEY (run `chatr rotate-key` from the home that has it)",
            config.api
        ),
        Err(e) if e.api_kind() == Some(&ApiErrorKind::ClientDoesNotExist) => {
            println!(
                "registry:    {} reachable; not registered (run `chatr register`)",
                config.api
            )
        }
        Err(e) => println!("registry:    {e}"),
    }

    let client = Client::start(options).await?;
    let result = report(&client, &config.server.to_string(), timeout).await;
    client.shutdown().await;
    result
}

async fn report(client: &Client, server: &str, timeout: Duration) -> Result<(), CliError> {
    let online = match client.wait_online(timeout).await {
        Ok(o) => o,
        Err(e) => {
            println!("server:      {server}: NOT CONNECTED");
            return Err(e.into());
        }
    };
    println!(
        "server:      {server} ({}) reachable; logged in",
        online.server
    );
    let port = client.local_port();
    println!(
        "local:       TCP {}, UDP port {port} ({})",
        online.local,
        if online.same_port {
            "same port, as the protocol wants"
        } else {
            "TCP fell back to another port"
        }
    );
    let bound = client.session().wait_udp_bound(timeout).await.ok();
    let tcp_observed = bound.as_ref().and_then(|b| b.tcp_observed);
    let binding = bound.and_then(|b| b.udp_observed);
    match binding {
        Some(ep) => println!(
            "public UDP:  {} (the server's answer to our binding message)",
            show(ep)
        ),
        None => println!(
            "public UDP:  unknown: the server never answered our UDP binding (UDP blocked?)"
        ),
    }
    let stun = client.stun_probe(timeout).await.ok();
    match stun {
        Some(addr) => println!("public UDP:  {addr} (STUN)"),
        None => println!("public UDP:  no STUN answer from the server"),
    }
    match tcp_observed {
        Some(ep) => println!(
            "public TCP:  {} (the server's view of our TCP connection)",
            show(ep)
        ),
        None => println!("public TCP:  not reported by this server (older BindingResponse)"),
    }
    println!("IPv6:        {}", ipv6_line(client));
    let observed = binding.and_then(|e| e.socket_addr()).or(stun);
    println!(
        "NAT:         {}",
        classify(online.local, port, observed, binding, stun)
    );
    println!(
        "NAT mapping: {}",
        mapping_line(client, &online, timeout).await
    );
    println!(
        "relay:       {}",
        relay_line(online.udp_relay, online.tls_relay, binding.is_some())
    );
    // Asked in the background since the start; by now it has usually answered.
    let mapping = client.wait_port_mapping(timeout).await;
    println!("router:      {mapping}");
    Ok(())
}

/// The IPv6 candidates we offer peers, in words.
fn ipv6_line(client: &Client) -> String {
    if !client.is_dual_stack() {
        return "off: this host has no IPv6 sockets, so peers reach us over IPv4 only".into();
    }
    let offered = client.ipv6_candidates();
    if offered.is_empty() {
        return "no global IPv6 address on this host: direct paths use IPv4 only".into();
    }
    let list: Vec<String> = offered.iter().map(ToString::to_string).collect();
    format!(
        "{} offered to peers (global, no NAT on the way: a direct path even when both IPv4 NATs are hard)",
        list.join(", ")
    )
}

/// What the NAT probes against the server's extra ports found (`docs/PROTOCOL.md` §10.7).
async fn mapping_line(
    client: &Client,
    online: &chatr_client::session::OnlineInfo,
    timeout: Duration,
) -> String {
    if online.nat_probe_ports.is_empty() {
        return chatr_client::nat::describe(&chatr_proto::NatHint::default());
    }
    match client.nat_behaviour(timeout).await {
        Some(hint) => {
            let ports: Vec<String> = online.nat_probe_ports.iter().map(u16::to_string).collect();
            format!(
                "{} (measured against the server's ports {} and {})",
                chatr_client::nat::describe(&hint),
                online.server.port(),
                ports.join(", ")
            )
        }
        None => "not measured yet (no answer from the server's NAT probe ports)".to_owned(),
    }
}

/// What a link from here does when no direct path works.
fn relay_line(udp_relay: bool, tls_relay: bool, udp_bound: bool) -> String {
    let text = match (udp_relay && udp_bound, tls_relay) {
        (true, _) => {
            "the server relays links that cannot go direct; from here over UDP (links start \
             direct when the peer's NAT allows, and move between the two)"
        }
        (false, true) => {
            "the server relays links that cannot go direct; from here inside the TLS \
             connection, because UDP to the server does not get through"
        }
        (false, false) if udp_relay => {
            "the server relays over UDP only, and UDP to it does not get through from here: \
             links need a direct path"
        }
        (false, false) => {
            "this server does not relay (an older server, or relaying turned off): links need \
             a direct path"
        }
    };
    text.to_owned()
}

fn show(ep: Endpoint) -> String {
    ep.socket_addr()
        .map_or_else(|| format!("{} (port unknown)", ep.ip), |a| a.to_string())
}

/// Describes the NAT from our local address/port and what the server observed.
fn classify(
    local: SocketAddr,
    port: u16,
    observed: Option<SocketAddr>,
    binding: Option<Endpoint>,
    stun: Option<SocketAddr>,
) -> String {
    let Some(observed) = observed else {
        return "unknown (no UDP observation)".into();
    };
    let unstable =
        matches!((binding.and_then(|b| b.socket_addr()), stun), (Some(b), Some(s)) if b != s);
    if observed.ip() == local.ip().to_canonical() && observed.port() == port && !unstable {
        return "none: the server sees our own address and port".to_string();
    }
    let mut text = if observed.port() == port {
        format!(
            "present, keeps the port (UDP {port} maps to {observed}); hole punching usually works"
        )
    } else {
        format!(
            "present, changes the port (UDP {port} maps to {observed}); if it picks a new port per \
             destination (symmetric NAT), punching needs a friendlier NAT on the peer's side"
        )
    };
    if unstable {
        text.push_str("; the mapping changed between two requests: symmetric or unstable NAT");
    } else {
        text.push_str(
            "; endpoint-independent vs. symmetric mapping cannot be told with one server address",
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn relay_line_says_which_relay_a_link_would_use() {
        assert!(relay_line(true, true, true).contains("over UDP"));
        assert!(relay_line(true, true, false).contains("inside the TLS"));
        assert!(relay_line(true, false, false).contains("need a direct path"));
        assert!(relay_line(false, false, true).contains("does not relay"));
    }

    #[test]
    fn no_nat() {
        let t = classify(
            sa("1.2.3.4:5000"),
            5000,
            Some(sa("1.2.3.4:5000")),
            None,
            None,
        );
        assert!(t.starts_with("none"), "{t}");
    }

    #[test]
    fn port_preserving_and_translating() {
        let t = classify(
            sa("10.0.0.2:5000"),
            5000,
            Some(sa("1.2.3.4:5000")),
            None,
            None,
        );
        assert!(t.contains("keeps the port"), "{t}");
        let t = classify(
            sa("10.0.0.2:5000"),
            5000,
            Some(sa("1.2.3.4:6000")),
            None,
            None,
        );
        assert!(t.contains("changes the port"), "{t}");
    }

    #[test]
    fn unstable_mapping_is_flagged() {
        let b = Endpoint::new(sa("1.2.3.4:6000"));
        let t = classify(
            sa("10.0.0.2:5000"),
            5000,
            Some(sa("1.2.3.4:6000")),
            Some(b),
            Some(sa("1.2.3.4:6001")),
        );
        assert!(t.contains("symmetric or unstable"), "{t}");
        assert_eq!(
            classify(sa("10.0.0.2:5000"), 5000, None, None, None),
            "unknown (no UDP observation)"
        );
    }
}
