//! Tunnel devices that hand the stack decapsulated packets the filter never sees.
//!
//! A VXLAN, Geneve, GRE, IPIP, SIT, ip6tnl, VTI/XFRM (IPsec) or WireGuard device
//! receives its outer packets on a filtered interface, and delivers the inner packet
//! on itself. Unless that device is filtered too, the inner packet meets no rule:
//! only the outer one is judged, and only a rule (or `default: drop`) on the outer
//! port or protocol keeps strangers from sending through the tunnel. `uncovered`
//! lists the devices that are up in this network namespace and for which neither
//! holds, so `apply` and the agent can say so.

use std::fmt;

use netlink_packet_route::IpProtocol;
use netlink_packet_route::link::{
    GreEncapType, InfoData, InfoGre, InfoGre6, InfoIpTunnel, InfoKind, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage, TunnelEncapType,
};
use serde::Serialize;

use crate::policy::{DefaultAction, Policy, Proto};

/// What carries a tunnel's packets to this host before decapsulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outer {
    /// UDP to this port; `None` when the device does not say (WireGuard's listen
    /// port is set over generic netlink).
    Udp(Option<u16>),
    /// An IP protocol: GRE 47, IPIP 4, IPv6-in-IPv4 41, ESP 50. Rules match TCP
    /// and UDP ports only, so only `default: drop` restricts these.
    Protocol(u8),
    /// IPv4 or IPv6 inside IP (ip6tnl or sit in "any" mode): protocols 4 and 41.
    IpInIp,
}

impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outer::Udp(Some(port)) => write!(f, "{port}/udp"),
            Outer::Udp(None) => f.write_str("its UDP listen port"),
            Outer::Protocol(number) => {
                let name = match number {
                    4 => " (IPIP)",
                    41 => " (IPv6 in IP)",
                    47 => " (GRE)",
                    50 => " (ESP)",
                    _ => "",
                };
                write!(f, "IP protocol {number}{name}")
            }
            Outer::IpInIp => f.write_str("IP protocols 4 and 41 (IP in IP)"),
        }
    }
}

/// A tunnel device that is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// Interface name.
    pub name: String,
    /// Link kind as `ip -d link` shows it: vxlan, geneve, gre, sit, ...
    pub kind: String,
    /// How its packets arrive.
    pub outer: Outer,
}

/// A tunnel device whose decapsulated packets pass no filter, and whose outer
/// packets the policy does not restrict either.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TunnelWarning {
    /// Interface name.
    pub device: String,
    /// Link kind.
    pub kind: String,
    /// How its packets arrive.
    pub outer: Outer,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for TunnelWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} device {} delivers decapsulated packets that no filter sees, and the policy lets anyone send them ({} under default: pass); {}",
            self.kind, self.device, self.outer, self.fix
        )
    }
}

/// Why the devices could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("listing network devices (rtnetlink): {0}")]
    Io(#[from] std::io::Error),
}

/// The tunnel devices of this network namespace that would carry decapsulated
/// traffic past the filters on `filtered` under `policy`.
pub fn uncovered(policy: &Policy, filtered: &[String]) -> Result<Vec<TunnelWarning>, TunnelError> {
    // Under `default: drop` every tunnel's outer packets are restricted
    // (`outer_restricted`), so no device can be uncovered: the link dump, a
    // netlink round trip on the apply's main thread, would find nothing to say.
    if policy.default == DefaultAction::Drop {
        return Ok(Vec::new());
    }
    Ok(uncovered_among(policy, filtered, &tunnels()?))
}

/// [`uncovered`], each logged as a warning; an error listing the devices is logged
/// too and gives none. For `apply`.
pub fn warn_uncovered(policy: &Policy, filtered: &[String]) -> Vec<TunnelWarning> {
    match uncovered(policy, filtered) {
        Ok(warnings) => {
            for warning in &warnings {
                log(warning);
            }
            warnings
        }
        Err(error) => {
            tracing::warn!(%error, "cannot check for tunnel devices that bypass the filter");
            Vec::new()
        }
    }
}

/// Logs one warning (with its fields, for JSON logs).
pub fn log(warning: &TunnelWarning) {
    tracing::warn!(
        device = warning.device,
        kind = warning.kind,
        outer = %warning.outer,
        "{warning}"
    );
}

/// Of `tunnels`, those neither filtered themselves nor restricted by the policy's
/// handling of their outer packets.
pub fn uncovered_among(
    policy: &Policy,
    filtered: &[String],
    tunnels: &[Tunnel],
) -> Vec<TunnelWarning> {
    tunnels
        .iter()
        .filter(|t| !filtered.contains(&t.name) && !outer_restricted(policy, t.outer))
        .map(|t| TunnelWarning {
            device: t.name.clone(),
            kind: t.kind.clone(),
            outer: t.outer,
            fix: fix(t),
        })
        .collect()
}

/// Whether only chosen sources can send `outer` (outer packets arriving on a
/// filtered interface): a rule covers the port, or `default: drop` applies.
fn outer_restricted(policy: &Policy, outer: Outer) -> bool {
    if policy.default == DefaultAction::Drop {
        return true;
    }
    match outer {
        Outer::Udp(Some(port)) => policy.rules.iter().any(|r| r.covers(Proto::Udp, port)),
        Outer::Udp(None) | Outer::Protocol(_) | Outer::IpInIp => false,
    }
}

fn fix(tunnel: &Tunnel) -> String {
    let name = &tunnel.name;
    match tunnel.outer {
        Outer::Udp(Some(port)) => format!(
            "add {name} to interfaces, or cover {port}/udp with a rule listing the tunnel's peers"
        ),
        Outer::Udp(None) => format!(
            "add {name} to interfaces, or cover its UDP listen port (e.g. `wg show {name} listen-port`) with a rule listing its peers"
        ),
        Outer::Protocol(_) | Outer::IpInIp => format!(
            "add {name} to interfaces, or set default: drop (rules match TCP/UDP ports, not IP protocols; {} then passes only from management sources)",
            tunnel.outer
        ),
    }
}

/// The tunnel devices that are up in this network namespace (a device that is down
/// delivers nothing; bringing it up is a link event the agent reconciles on).
pub fn tunnels() -> Result<Vec<Tunnel>, TunnelError> {
    Ok(dump_links()?.iter().filter_map(tunnel_of).collect())
}

fn tunnel_of(link: &LinkMessage) -> Option<Tunnel> {
    if !link.header.flags.contains(LinkFlags::Up) {
        return None;
    }
    let mut name = None;
    let mut kind = None;
    let mut data = None;
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => kind = Some(k.clone()),
                        LinkInfo::Data(d) => data = Some(d),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let kind = kind?;
    let outer = outer_of(&kind, data)?;
    Some(Tunnel {
        name: name?,
        kind: kind.to_string(),
        outer,
    })
}

/// How packets of a device of `kind` arrive; `None` if it is no tunnel.
fn outer_of(kind: &InfoKind, data: Option<&InfoData>) -> Option<Outer> {
    Some(match (kind, data) {
        (InfoKind::Vxlan, Some(InfoData::Vxlan(attrs))) => Outer::Udp(
            attrs
                .iter()
                .find_map(|a| match a {
                    netlink_packet_route::link::InfoVxlan::Port(p) => Some(*p),
                    _ => None,
                })
                // The kernel's default when none was given (IANA's is 4789).
                .or(Some(8472)),
        ),
        (InfoKind::Vxlan, _) => Outer::Udp(Some(8472)),
        (InfoKind::Geneve, Some(InfoData::Geneve(attrs))) => Outer::Udp(
            attrs
                .iter()
                .find_map(|a| match a {
                    netlink_packet_route::link::InfoGeneve::Port(p) => Some(*p),
                    _ => None,
                })
                .or(Some(6081)),
        ),
        (InfoKind::Geneve, _) => Outer::Udp(Some(6081)),
        (InfoKind::BareUdp, Some(InfoData::BareUdp(attrs))) => {
            Outer::Udp(attrs.iter().find_map(|a| match a {
                netlink_packet_route::link::InfoBareUdp::Port(p) => Some(*p),
                _ => None,
            }))
        }
        (InfoKind::BareUdp | InfoKind::Wireguard | InfoKind::Amt, _) => Outer::Udp(None),
        // GTP-U.
        (InfoKind::Gtp, _) => Outer::Udp(Some(2152)),
        (
            InfoKind::GreTun | InfoKind::GreTap | InfoKind::ErSpan,
            Some(InfoData::GreTun(a) | InfoData::GreTap(a) | InfoData::ErSpan(a)),
        ) => gre_outer(a),
        (
            InfoKind::GreTun6 | InfoKind::GreTap6 | InfoKind::Ip6ErSpan,
            Some(InfoData::GreTun6(a) | InfoData::GreTap6(a) | InfoData::Ip6ErSpan(a)),
        ) => gre6_outer(a),
        (
            InfoKind::GreTun
            | InfoKind::GreTap
            | InfoKind::ErSpan
            | InfoKind::GreTun6
            | InfoKind::GreTap6
            | InfoKind::Ip6ErSpan,
            _,
        ) => Outer::Protocol(47),
        (InfoKind::IpIp, Some(InfoData::IpTunnel(a))) => ip_tunnel_outer(a, Outer::Protocol(4)),
        (InfoKind::IpIp, _) => Outer::Protocol(4),
        (InfoKind::SitTun, Some(InfoData::IpTunnel(a))) => ip_tunnel_outer(a, Outer::Protocol(41)),
        (InfoKind::SitTun, _) => Outer::Protocol(41),
        (InfoKind::Ip6Tnl, Some(InfoData::IpTunnel(a))) => ip_tunnel_outer(a, Outer::IpInIp),
        (InfoKind::Ip6Tnl, _) => Outer::IpInIp,
        (InfoKind::Vti | InfoKind::Vti6 | InfoKind::Xfrm, _) => Outer::Protocol(50),
        _ => return None,
    })
}

/// GRE, or GRE in UDP (FOU/GUE) to a port.
fn gre_outer(attrs: &[InfoGre]) -> Outer {
    let udp = attrs
        .iter()
        .any(|a| matches!(a, InfoGre::EncapType(GreEncapType::Fou | GreEncapType::Gue)));
    let port = attrs.iter().find_map(|a| match a {
        InfoGre::DestinationPort(p) => Some(*p),
        _ => None,
    });
    if udp {
        Outer::Udp(port)
    } else {
        Outer::Protocol(47)
    }
}

fn gre6_outer(attrs: &[InfoGre6]) -> Outer {
    let udp = attrs.iter().any(|a| {
        matches!(
            a,
            InfoGre6::EncapType(GreEncapType::Fou | GreEncapType::Gue)
        )
    });
    let port = attrs.iter().find_map(|a| match a {
        InfoGre6::DestinationPort(p) => Some(*p),
        _ => None,
    });
    if udp {
        Outer::Udp(port)
    } else {
        Outer::Protocol(47)
    }
}

/// IPIP, SIT and ip6tnl: the protocol they carry (ip6tnl and sit can carry both),
/// or UDP when encapsulated in FOU/GUE.
fn ip_tunnel_outer(attrs: &[InfoIpTunnel], default: Outer) -> Outer {
    let mut outer = default;
    let mut udp = false;
    let mut port = None;
    for a in attrs {
        match a {
            InfoIpTunnel::Protocol(IpProtocol::Ipip) => outer = Outer::Protocol(4),
            InfoIpTunnel::Protocol(IpProtocol::Ipv6) => outer = Outer::Protocol(41),
            // 0: any ("ip6tnl mode any", "sit mode any").
            InfoIpTunnel::Protocol(IpProtocol::Hopopts) => outer = Outer::IpInIp,
            InfoIpTunnel::EncapType(TunnelEncapType::Fou | TunnelEncapType::Gue) => udp = true,
            InfoIpTunnel::EncapDPort(p) => port = Some(*p),
            _ => {}
        }
    }
    if udp { Outer::Udp(port) } else { outer }
}

/// Every link of this network namespace (RTM_GETLINK dump).
fn dump_links() -> Result<Vec<LinkMessage>, TunnelError> {
    Ok(crate::rtnetlink::get_links(LinkMessage::default(), true)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn policy(default: &str, rules: &str) -> Policy {
        let text = format!("version: 1\ninterfaces: [eth0]\ndefault: {default}\nrules:\n{rules}");
        crate::policy::parse_str(&text, Path::new("p.yaml")).expect("valid")
    }

    fn tunnel(name: &str, kind: &str, outer: Outer) -> Tunnel {
        Tunnel {
            name: name.into(),
            kind: kind.into(),
            outer,
        }
    }

    #[test]
    fn warns_only_where_neither_the_device_nor_its_outer_packets_are_restricted() {
        let tunnels = [
            tunnel("vx0", "vxlan", Outer::Udp(Some(4789))),
            tunnel("gnv0", "geneve", Outer::Udp(Some(6081))),
            tunnel("gre1", "gre", Outer::Protocol(47)),
            tunnel("wg0", "wireguard", Outer::Udp(None)),
            tunnel("eth1", "vxlan", Outer::Udp(Some(4790))),
        ];
        let filtered = ["eth0".to_string(), "eth1".to_string()];
        let covering = "  - {name: overlay, ports: [4789/udp], from: [192.0.2.0/24]}\n";
        let p = policy("pass", covering);
        let names: Vec<String> = uncovered_among(&p, &filtered, &tunnels)
            .into_iter()
            .map(|w| w.device)
            .collect();
        // vx0's port is covered; eth1 is filtered itself.
        assert_eq!(names, ["gnv0", "gre1", "wg0"]);
        // Under default: drop every outer packet is restricted.
        let p = policy("drop", covering);
        assert!(uncovered_among(&p, &filtered, &tunnels).is_empty());
        // Without the rule, vx0 too.
        let p = policy(
            "pass",
            "  - {name: db, ports: [5432/tcp], from: [192.0.2.0/24]}\n",
        );
        let warnings = uncovered_among(&p, &[], &tunnels[..1]);
        assert_eq!(
            warnings[0].to_string(),
            "vxlan device vx0 delivers decapsulated packets that no filter sees, and the policy lets anyone send them (4789/udp under default: pass); add vx0 to interfaces, or cover 4789/udp with a rule listing the tunnel's peers"
        );
        assert!(warnings[0].fix.contains("4789/udp"));
        let gre = uncovered_among(&p, &[], &tunnels[2..3]);
        assert!(gre[0].fix.contains("set default: drop"), "{}", gre[0]);
        assert!(gre[0].to_string().contains("IP protocol 47 (GRE)"));
    }
}
