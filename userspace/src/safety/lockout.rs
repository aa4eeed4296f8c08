//! Computed anti-lockout: would this policy cut the SSH session we run in, the
//! default gateway, or neighbour discovery? Every answer comes from
//! [`reference::verdict`], the same model `explain` reports and the kernel is tested
//! against, so a refusal names the rule or set that would do it.
//!
//! What is looked at ([`Facts`], read in `host_facts`; injectable so tests cover
//! every case):
//! - SSH sessions: the peer of `SSH_CONNECTION` (`client_ip client_port server_ip
//!   server_port`) and every ESTABLISHED TCP connection in `/proc/net/tcp{,6}` whose
//!   local port is 22 or the `SSH_CONNECTION` server port. A session counts when its
//!   local address is on a filtered interface (or when we cannot tell); one whose
//!   local address is not on this host at all is an inherited, stale variable.
//! - default gateways (`/proc/net/route`, `/proc/net/ipv6_route`) on filtered
//!   interfaces. Traffic *through* a gateway carries remote sources, so what comes
//!   *from* the gateway is ARP/ND (always pass, rule 1 and 4) and essential ICMP
//!   (unreachable/fragmentation-needed, packet-too-big, router advertisements): those
//!   only drop when the gateway is in `deny`, which would break path-MTU discovery
//!   and IPv6 routing, so it blocks. `default: drop` refusing the gateway's
//!   unsolicited traffic (e.g. its pings) is reported as a warning.
//! - neighbour discovery from link-local addresses (a `deny` covering fe80::/10).
//! - `management`: an empty one under `default: drop` is a warning (nothing
//!   guarantees a way back in); its prefixes always pass by rule 2.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use serde::Serialize;

pub use super::host_facts::{Facts, Gateway, PeerOrigin, SshPeer};
use crate::{
    policy::{DefaultAction, Mode, Policy},
    reference::{self, L4, PacketClass, Verdict},
};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Said for the record.
    Info,
    /// Worth knowing; does not stop the apply.
    Warn,
    /// Would lock you out: the apply is refused without `--force`.
    Block,
}

/// One conclusion of the check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

/// Everything the check concluded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Assessment {
    pub findings: Vec<Finding>,
}

impl Assessment {
    pub fn blocks(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Block)
    }

    pub fn is_lockout(&self) -> bool {
        self.blocks().next().is_some()
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warn)
    }

    fn push(&mut self, severity: Severity, message: String) {
        self.findings.push(Finding { severity, message });
    }
}

/// A policy refused because it would lock the operator out.
#[derive(Debug, thiserror::Error)]
pub struct LockoutError {
    pub assessment: Assessment,
}

impl fmt::Display for LockoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "refusing to apply: the policy would lock you out")?;
        for finding in self.assessment.blocks() {
            writeln!(f, "  - {}", finding.message)?;
        }
        write!(
            f,
            "fix the policy (add the source to `management` or to a rule's `from`), or apply anyway with --force"
        )
    }
}

impl LockoutError {
    /// The blocking findings on one line, `; ` between them (for a log line; the
    /// error itself says them one per line).
    pub fn reasons(&self) -> Reasons<'_> {
        Reasons(self)
    }
}

/// See [`LockoutError::reasons`].
pub struct Reasons<'a>(&'a LockoutError);

impl fmt::Display for Reasons<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, finding) in self.0.assessment.blocks().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&finding.message)?;
        }
        Ok(())
    }
}

/// "rule db refuses", "deny set blocklist refuses", "`default: drop` refuses".
fn who_refuses(policy: &Policy, verdict: &Verdict) -> String {
    use airlock_common::Reason;
    match verdict.reason {
        Reason::RuleRefused => match verdict.rule.and_then(|i| policy.rules.get(i)) {
            Some(rule) => format!("rule {} refuses", rule.name),
            None => "a rule refuses".to_owned(),
        },
        Reason::Deny => format!("deny set {} refuses", verdict.set.as_deref().unwrap_or("?")),
        Reason::DefaultDrop => "`default: drop` refuses".to_owned(),
        other => format!("the verdict {} refuses", other.name()),
    }
}

/// Who lets it in, for the record: "rule ssh (set office)", "management set ...".
fn who_passes(policy: &Policy, verdict: &Verdict) -> String {
    let mut text = verdict.reason.name().to_owned();
    if let Some(rule) = verdict.rule.and_then(|i| policy.rules.get(i)) {
        text = format!("rule {}", rule.name);
    }
    if let Some(set) = &verdict.set {
        text.push_str(&format!(", set {set}"));
    }
    text
}

fn judge(policy: &Policy, src: IpAddr, l4: L4) -> Verdict {
    reference::verdict(policy, &PacketClass::Ip { src, l4 })
}

/// Does `policy`, applied to `ifaces`, cut any of `facts`?
pub fn assess(policy: &Policy, facts: &Facts, ifaces: &[String]) -> Assessment {
    let mut out = Assessment::default();
    let filtered = |iface: &str| ifaces.iter().any(|i| i == iface);
    // Sessions: one check per (peer, port), the environment's first.
    let mut seen = BTreeSet::new();
    for peer in &facts.ssh {
        if !seen.insert((peer.peer, peer.port)) {
            continue;
        }
        let what = match peer.origin {
            PeerOrigin::SshConnection => "your SSH session (SSH_CONNECTION)".to_owned(),
            PeerOrigin::SocketTable => format!(
                "an established SSH session ({} port {} → {} port {}, socket table)",
                peer.peer, peer.peer_port, peer.local, peer.port
            ),
        };
        if let Some(addrs) = &facts.local_addrs {
            let holders: Vec<&str> = addrs
                .iter()
                .filter(|(ip, _)| *ip == peer.local)
                .map(|(_, iface)| iface.as_str())
                .collect();
            if holders.is_empty() {
                out.push(
                    Severity::Info,
                    format!(
                        "{what}: {} is not an address of this host (variable inherited from elsewhere?); not checked",
                        peer.local
                    ),
                );
                continue;
            }
            if !holders.iter().any(|i| filtered(i)) {
                out.push(
                    Severity::Info,
                    format!(
                        "{what} arrives on {} (not filtered by this apply)",
                        holders.join(",")
                    ),
                );
                continue;
            }
        }
        let verdict = judge(
            policy,
            peer.peer,
            // A reconnect's first segment: the session must survive its next SYN.
            L4::tcp_syn(peer.port),
        );
        if verdict.pass {
            out.push(
                Severity::Info,
                format!(
                    "{what}: {} → port {}/tcp passes ({})",
                    peer.peer,
                    peer.port,
                    who_passes(policy, &verdict)
                ),
            );
        } else {
            out.push(
                Severity::Block,
                format!(
                    "{} {} → port {}/tcp: {what}",
                    who_refuses(policy, &verdict),
                    peer.peer,
                    peer.port
                ),
            );
        }
    }
    // ARP and other non-IP frames pass by rule 1 whatever the policy says.
    debug_assert!(reference::verdict(policy, &PacketClass::NonIp).pass);
    // Gateways: their essential ICMP (and, for IPv6, router advertisements and
    // neighbour discovery) must pass; only `deny` can drop it.
    for gateway in facts.gateways.iter().filter(|g| filtered(&g.iface)) {
        let essentials: &[(L4, &str)] = match gateway.addr {
            IpAddr::V4(_) => &[
                (
                    L4::Icmp { icmp_type: 3 },
                    "destination unreachable / fragmentation needed",
                ),
                (L4::Icmp { icmp_type: 11 }, "time exceeded"),
            ],
            IpAddr::V6(_) => &[
                (L4::Icmpv6 { icmp_type: 2 }, "packet too big"),
                (L4::Icmpv6 { icmp_type: 134 }, "router advertisement"),
                (L4::Icmpv6 { icmp_type: 136 }, "neighbour advertisement"),
            ],
        };
        let mut cut = Vec::new();
        for (l4, name) in essentials {
            let verdict = judge(policy, gateway.addr, *l4);
            if !verdict.pass {
                cut.push((name, verdict));
            }
        }
        if let Some((_, verdict)) = cut.first() {
            let names: Vec<&str> = cut.iter().map(|(n, _)| **n).collect();
            out.push(
                Severity::Block,
                format!(
                    "{} the default gateway {} on {}: its {} would be dropped (path MTU discovery{} breaks)",
                    who_refuses(policy, verdict),
                    gateway.addr,
                    gateway.iface,
                    names.join(", "),
                    if gateway.addr.is_ipv6() {
                        ", routing and neighbour discovery"
                    } else {
                        ""
                    }
                ),
            );
            continue;
        }
        let echo = match gateway.addr {
            IpAddr::V4(_) => L4::Icmp { icmp_type: 8 },
            IpAddr::V6(_) => L4::Icmpv6 { icmp_type: 128 },
        };
        let verdict = judge(policy, gateway.addr, echo);
        if !verdict.pass {
            out.push(
                Severity::Warn,
                format!(
                    "{} unsolicited traffic from the default gateway {} on {} (e.g. its echo requests); its ARP/ND and essential ICMP still pass",
                    who_refuses(policy, &verdict),
                    gateway.addr,
                    gateway.iface
                ),
            );
        }
    }
    // Neighbour discovery from link-local neighbours and duplicate address detection.
    let mut nd_cut = BTreeSet::new();
    for src in [
        Ipv6Addr::UNSPECIFIED,
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
    ] {
        for icmp_type in [135, 136] {
            let verdict = judge(policy, IpAddr::V6(src), L4::Icmpv6 { icmp_type });
            if !verdict.pass {
                nd_cut.insert((src, who_refuses(policy, &verdict)));
            }
        }
    }
    for (src, who) in nd_cut {
        out.push(
            Severity::Block,
            format!(
                "{who} neighbour discovery from {src}: IPv6 stops working on {}",
                ifaces.join(", ")
            ),
        );
    }
    if policy.management.sets.is_empty()
        && policy.default == DefaultAction::Drop
        && policy.mode == Mode::Enforce
    {
        out.push(
            Severity::Warn,
            "`management` is empty under `default: drop`: no source is guaranteed a way back in"
                .to_owned(),
        );
    }
    out
}

/// Logs the findings: blocks as warnings when `force` overrides them, warnings as
/// warnings, the rest at debug level.
pub fn log_findings(assessment: &Assessment, force: bool) {
    for finding in &assessment.findings {
        match finding.severity {
            Severity::Info => tracing::debug!("anti-lockout: {}", finding.message),
            Severity::Warn => tracing::warn!("{}", finding.message),
            Severity::Block if force => {
                tracing::warn!("--force: applying although {}", finding.message)
            }
            Severity::Block => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{policy::parse_str, safety::host_facts::parse_ssh_connection};
    use std::path::Path;

    fn policy(extra: &str) -> Policy {
        let text = format!(
            "version: 1\ninterfaces: [eth0]\ndefault: drop\nsets:\n  office: [198.51.100.0/24, \"2001:db8:100::/48\"]\n{extra}rules:\n  - name: db\n    ports: [5432/tcp, 22/tcp]\n    from: [office]\n"
        );
        parse_str(&text, Path::new("p.yaml")).unwrap()
    }

    fn eth0() -> Vec<String> {
        vec!["eth0".to_owned()]
    }

    fn local(addrs: &[(&str, &str)]) -> Option<Vec<(IpAddr, String)>> {
        Some(
            addrs
                .iter()
                .map(|(a, i)| (a.parse().unwrap(), (*i).to_owned()))
                .collect(),
        )
    }

    fn env_peer(text: &str) -> SshPeer {
        parse_ssh_connection(text).unwrap()
    }

    #[test]
    fn ssh_peer_refused_by_default_drop_blocks_and_names_the_rule() {
        let p = policy("");
        let facts = Facts {
            ssh: vec![env_peer("203.0.113.10 50000 192.0.2.1 22")],
            gateways: vec![],
            local_addrs: local(&[("192.0.2.1", "eth0")]),
        };
        let a = assess(&p, &facts, &eth0());
        let blocks: Vec<_> = a.blocks().collect();
        assert_eq!(blocks.len(), 1, "{a:?}");
        assert_eq!(
            blocks[0].message,
            "rule db refuses 203.0.113.10 → port 22/tcp: your SSH session (SSH_CONNECTION)"
        );
        // The same peer from the office passes.
        let facts = Facts {
            ssh: vec![env_peer("198.51.100.7 50000 192.0.2.1 22")],
            ..facts
        };
        let a = assess(&p, &facts, &eth0());
        assert!(!a.is_lockout(), "{a:?}");
        assert!(
            a.findings
                .iter()
                .any(|f| f.message.contains("passes (rule db, set office)"))
        );
    }

    #[test]
    fn ssh_on_an_uncovered_port_is_refused_by_default_and_by_deny() {
        let p = policy("deny: [203.0.113.0/24]\n");
        let facts = Facts {
            ssh: vec![
                env_peer("198.51.100.7 50000 192.0.2.1 2222"),
                env_peer("203.0.113.9 50000 192.0.2.1 22"),
            ],
            gateways: vec![],
            local_addrs: None,
        };
        let a = assess(&p, &facts, &eth0());
        let messages: Vec<&str> = a.blocks().map(|f| f.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "`default: drop` refuses 198.51.100.7 → port 2222/tcp: your SSH session (SSH_CONNECTION)",
                "deny set 203.0.113.0/24 refuses 203.0.113.9 → port 22/tcp: your SSH session (SSH_CONNECTION)",
            ]
        );
    }

    #[test]
    fn management_rescues_and_monitor_never_blocks() {
        let facts = Facts {
            ssh: vec![env_peer("203.0.113.10 50000 192.0.2.1 22")],
            ..Facts::default()
        };
        assert!(!assess(&policy("management: [203.0.113.10]\n"), &facts, &eth0()).is_lockout());
        assert!(!assess(&policy("mode: monitor\n"), &facts, &eth0()).is_lockout());
    }

    #[test]
    fn sessions_on_other_interfaces_or_stale_env_are_not_checked() {
        let p = policy("");
        let mut facts = Facts {
            ssh: vec![env_peer("203.0.113.10 50000 192.0.2.1 22")],
            gateways: vec![],
            local_addrs: local(&[("192.0.2.1", "eth1")]),
        };
        assert!(!assess(&p, &facts, &eth0()).is_lockout());
        facts.local_addrs = local(&[("10.0.0.1", "eth0")]);
        let a = assess(&p, &facts, &eth0());
        assert!(!a.is_lockout());
        assert!(
            a.findings[0]
                .message
                .contains("not an address of this host")
        );
    }

    #[test]
    fn socket_table_peers_are_checked_and_deduplicated() {
        let p = policy("");
        let mut socket = env_peer("203.0.113.10 50000 192.0.2.1 22");
        socket.origin = PeerOrigin::SocketTable;
        let facts = Facts {
            ssh: vec![socket.clone(), socket],
            ..Facts::default()
        };
        let a = assess(&p, &facts, &eth0());
        let blocks: Vec<_> = a.blocks().collect();
        assert_eq!(blocks.len(), 1);
        assert!(
            blocks[0].message.contains("socket table"),
            "{}",
            blocks[0].message
        );
    }

    #[test]
    fn gateway_in_deny_blocks_default_drop_only_warns() {
        let gw = |a: &str| Gateway {
            addr: a.parse().unwrap(),
            iface: "eth0".into(),
        };
        let facts = Facts {
            gateways: vec![gw("192.0.2.254"), gw("fe80::1")],
            ..Facts::default()
        };
        let a = assess(&policy("management: [198.51.100.1]\n"), &facts, &eth0());
        assert!(!a.is_lockout(), "{a:?}");
        assert_eq!(a.warnings().count(), 2, "{a:?}");
        let a = assess(&policy("deny: [192.0.2.254]\n"), &facts, &eth0());
        let blocks: Vec<_> = a.blocks().collect();
        assert_eq!(blocks.len(), 1, "{a:?}");
        assert!(
            blocks[0].message.starts_with(
                "deny set 192.0.2.254 refuses the default gateway 192.0.2.254 on eth0"
            )
        );
        // A gateway on an interface this apply does not filter is not affected.
        let a = assess(&policy("deny: [192.0.2.254]\n"), &facts, &["eth1".into()]);
        assert!(!a.is_lockout());
        // Default pass: nothing to say about the gateway.
        let p = parse_str(
            "version: 1\ninterfaces: [eth0]\nrules:\n  - name: db\n    ports: [5432]\n    from: [10.0.0.0/8]\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        assert!(assess(&p, &facts, &eth0()).findings.is_empty());
    }

    #[test]
    fn denying_link_local_cuts_neighbour_discovery() {
        let a = assess(
            &policy("deny: [\"fe80::/10\"]\n"),
            &Facts::default(),
            &eth0(),
        );
        let blocks: Vec<_> = a.blocks().collect();
        assert_eq!(blocks.len(), 1, "{a:?}");
        assert!(
            blocks[0]
                .message
                .contains("neighbour discovery from fe80::1")
        );
    }

    #[test]
    fn empty_management_under_default_drop_warns() {
        let a = assess(&policy(""), &Facts::default(), &eth0());
        assert_eq!(a.warnings().count(), 1);
        assert!(!a.is_lockout());
        let a = assess(
            &policy("management: [198.51.100.1]\n"),
            &Facts::default(),
            &eth0(),
        );
        assert_eq!(a.warnings().count(), 0);
    }
}
