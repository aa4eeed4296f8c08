//! The reference model: the verdict rules of the design, written as plainly as
//! possible (loops over the [`Policy`], no tries, no masks). It is the oracle the
//! compiler's property tests and the kernel tests compare against, and what
//! `airlock explain` reports.

use std::net::IpAddr;

use airlock_common::reason::Reason;

use crate::policy::{DefaultAction, Mode, Policy, Proto};

/// The layer-4 view of a packet, as far as the verdict cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4 {
    /// TCP to `dst_port`.
    Tcp {
        /// Destination port.
        dst_port: u16,
        /// The flags byte (offset 13 of the TCP header): only whether SYN comes
        /// without ACK matters to the verdict (see [`can_answer_flow`]).
        flags: u8,
    },
    /// UDP to `dst_port`.
    Udp {
        /// Destination port.
        dst_port: u16,
    },
    /// ICMP (over IPv4).
    Icmp {
        /// ICMP type.
        icmp_type: u8,
    },
    /// ICMPv6.
    Icmpv6 {
        /// ICMPv6 type.
        icmp_type: u8,
    },
    /// Any other IP protocol.
    Other {
        /// IP protocol number.
        protocol: u8,
    },
    /// A fragment other than the first: it carries no L4 header.
    NonFirstFragment,
}

/// What the parser made of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketClass {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NonIp,
    /// Truncated or malformed headers; `src` if the IP source could be read.
    Malformed {
        /// Source address, if the IP header was intact enough to read it.
        src: Option<IpAddr>,
    },
    /// A parsed IP packet.
    Ip {
        /// Source address.
        src: IpAddr,
        /// Layer 4.
        l4: L4,
    },
}

/// TCP's SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP's ACK flag.
pub const TCP_ACK: u8 = 0x10;

impl L4 {
    /// A connection's first segment to `dst_port`: SYN without ACK. What a client
    /// sends first, so what `explain`, `check` and the lockout probe ask about.
    pub fn tcp_syn(dst_port: u16) -> Self {
        L4::Tcp {
            dst_port,
            flags: TCP_SYN,
        }
    }

    /// A TCP segment that opens a connection (SYN without ACK), which therefore
    /// cannot answer one the host opened.
    pub fn opens_connection(&self) -> bool {
        matches!(*self, L4::Tcp { flags, .. } if flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
    }
}

/// The verdict and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Why.
    pub reason: Reason,
    /// Index of the deciding rule (for `RuleAllowed`/`RuleRefused`).
    pub rule: Option<usize>,
    /// Name of the set that decided (management, deny, or the allowing rule's set).
    pub set: Option<String>,
    /// Final action, after monitor mode.
    pub pass: bool,
}

/// ICMP the network needs to work whatever the policy: errors (unreachable and
/// fragmentation-needed, time exceeded, parameter problem, packet too big),
/// multicast listener discovery and neighbour discovery. Echo is not essential.
pub fn is_essential_icmp(l4: &L4) -> bool {
    match *l4 {
        L4::Icmp { icmp_type } => matches!(icmp_type, 3 | 11 | 12),
        L4::Icmpv6 { icmp_type } => matches!(
            icmp_type,
            1..=4 | 130..=132 | 143 | 133..=137
        ),
        _ => false,
    }
}

/// The verdict for `packet` under `policy`, by the rules of the design, in order,
/// for a packet that answers no flow the host opened.
pub fn verdict(policy: &Policy, packet: &PacketClass) -> Verdict {
    verdict_for(policy, packet, false)
}

/// The verdict when whether the packet answers a flow the host itself opened is
/// known (`answers_host_flow`: its source, protocol and ports, or echo identifier,
/// match a live entry of the flow table). That only matters in rule 6, under
/// `default: drop`, and only for TCP, UDP and echo replies.
pub fn verdict_for(policy: &Policy, packet: &PacketClass, answers_host_flow: bool) -> Verdict {
    let (mut reason, rule, set) = decide(policy, packet);
    if reason == Reason::DefaultDrop && answers_host_flow && can_answer_flow(packet) {
        reason = Reason::ReturnTraffic;
    }
    let pass = policy.mode == Mode::Monitor || reason.passes();
    Verdict {
        reason,
        rule,
        set,
        pass,
    }
}

/// Packets that can be a reply to a flow: TCP, UDP, ICMP echo replies. Not a TCP
/// segment with SYN and without ACK: every segment answering the host's own SYN
/// carries ACK, so such a segment opens a connection. (TCP simultaneous open, two
/// SYNs crossing, is the one exception; it is not passed as return traffic.)
pub fn can_answer_flow(packet: &PacketClass) -> bool {
    if let PacketClass::Ip { l4, .. } = packet
        && l4.opens_connection()
    {
        return false;
    }
    matches!(
        packet,
        PacketClass::Ip {
            l4: L4::Tcp { .. }
                | L4::Udp { .. }
                | L4::Icmp { icmp_type: 0 }
                | L4::Icmpv6 { icmp_type: 129 },
            ..
        }
    )
}

fn decide(policy: &Policy, packet: &PacketClass) -> (Reason, Option<usize>, Option<String>) {
    let management = |src: IpAddr| {
        policy
            .management
            .first_containing(src)
            .map(|s| (Reason::Management, None, Some(s.name.clone())))
    };
    let (src, l4) = match *packet {
        PacketClass::NonIp => return (Reason::NonIp, None, None),
        PacketClass::Malformed { src } => {
            return src
                .and_then(management)
                .unwrap_or((Reason::Malformed, None, None));
        }
        PacketClass::Ip { src, l4 } => (src, l4),
    };
    if let Some(v) = management(src) {
        return v;
    }
    if let Some(s) = policy.deny.first_containing(src) {
        return (Reason::Deny, None, Some(s.name.clone()));
    }
    if is_essential_icmp(&l4) {
        return (Reason::EssentialIcmp, None, None);
    }
    let (proto, port) = match l4 {
        L4::Tcp { dst_port, .. } => (Proto::Tcp, dst_port),
        L4::Udp { dst_port } => (Proto::Udp, dst_port),
        L4::NonFirstFragment => {
            // No ports to match: pass what some rule would accept from this source
            // (the first fragment was judged on its ports) or what default passes.
            let listed = policy.rules.iter().any(|r| r.from.contains(src));
            return if listed || policy.default == DefaultAction::Pass {
                (Reason::FragmentPass, None, None)
            } else {
                (Reason::FragmentDrop, None, None)
            };
        }
        L4::Icmp { .. } | L4::Icmpv6 { .. } | L4::Other { .. } => return default(policy),
    };
    let mut first_covering = None;
    for (i, rule) in policy.rules.iter().enumerate() {
        if !rule.covers(proto, port) {
            continue;
        }
        first_covering.get_or_insert(i);
        if let Some(s) = rule.from.first_containing(src) {
            return (Reason::RuleAllowed, Some(i), Some(s.name.clone()));
        }
    }
    match first_covering {
        Some(i) => (Reason::RuleRefused, Some(i), None),
        None => default(policy),
    }
}

fn default(policy: &Policy) -> (Reason, Option<usize>, Option<String>) {
    match policy.default {
        DefaultAction::Pass => (Reason::DefaultPass, None, None),
        DefaultAction::Drop => (Reason::DefaultDrop, None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_str;
    use std::path::Path;

    const POLICY: &str = r#"
version: 1
interfaces: [eth0]
default: drop
management: [203.0.113.7]
sets:
  office: [198.51.100.0/24, "2001:db8:100::/48"]
  partners:
    cidrs: [192.0.2.0/24]
    except: [192.0.2.128/25]
deny: [198.51.100.66]
rules:
  - name: pg
    ports: [5432/tcp]
    from: [airbyte-us, airbyte-eu, office]
  - name: web
    ports: [8000/tcp, 5432, 60000-60100/udp]
    from: [10.0.0.0/8, partners]
"#;

    fn v(p: &Policy, src: &str, l4: L4) -> Verdict {
        verdict(
            p,
            &PacketClass::Ip {
                src: src.parse().unwrap(),
                l4,
            },
        )
    }

    #[test]
    fn order_of_rules() {
        let p = parse_str(POLICY, Path::new("p.yaml")).unwrap();
        let tcp = L4::tcp_syn;
        assert_eq!(verdict(&p, &PacketClass::NonIp).reason, Reason::NonIp);
        assert_eq!(
            verdict(&p, &PacketClass::Malformed { src: None }).reason,
            Reason::Malformed
        );
        let m = verdict(
            &p,
            &PacketClass::Malformed {
                src: Some("203.0.113.7".parse().unwrap()),
            },
        );
        assert_eq!(
            (m.reason, m.set.as_deref(), m.pass),
            (Reason::Management, Some("203.0.113.7"), true)
        );
        assert_eq!(v(&p, "203.0.113.7", tcp(22)).reason, Reason::Management);
        let d = v(&p, "198.51.100.66", tcp(5432));
        assert_eq!((d.reason, d.pass), (Reason::Deny, false));
        assert_eq!(
            v(&p, "198.51.100.66", L4::Icmp { icmp_type: 3 }).reason,
            Reason::Deny
        );
        assert_eq!(
            v(&p, "8.8.8.8", L4::Icmp { icmp_type: 3 }).reason,
            Reason::EssentialIcmp
        );
        assert_eq!(
            v(&p, "8.8.8.8", L4::Icmpv6 { icmp_type: 135 }).reason,
            Reason::EssentialIcmp
        );
        assert_eq!(
            v(&p, "8.8.8.8", L4::Icmp { icmp_type: 8 }).reason,
            Reason::DefaultDrop
        );
        let a = v(&p, "34.106.60.246", tcp(5432));
        assert_eq!(
            (a.reason, a.rule, a.set.as_deref()),
            (Reason::RuleAllowed, Some(0), Some("airbyte-us"))
        );
        let a = v(&p, "10.1.2.3", tcp(5432));
        assert_eq!(
            (a.reason, a.rule, a.set.as_deref()),
            (Reason::RuleAllowed, Some(1), Some("10.0.0.0/8"))
        );
        let r = v(&p, "192.0.2.200", tcp(5432));
        assert_eq!(
            (r.reason, r.rule, r.pass),
            (Reason::RuleRefused, Some(0), false)
        );
        assert_eq!(
            v(&p, "192.0.2.100", L4::Udp { dst_port: 60050 }).reason,
            Reason::RuleAllowed
        );
        assert_eq!(
            v(&p, "2001:db8:100::9", tcp(5432)).reason,
            Reason::RuleAllowed
        );
        assert_eq!(v(&p, "192.0.2.100", tcp(22)).reason, Reason::DefaultDrop);
        assert_eq!(
            v(&p, "192.0.2.100", L4::NonFirstFragment).reason,
            Reason::FragmentPass
        );
        assert_eq!(
            v(&p, "192.0.2.200", L4::NonFirstFragment).reason,
            Reason::FragmentDrop
        );
        assert_eq!(
            v(&p, "192.0.2.200", L4::Other { protocol: 47 }).reason,
            Reason::DefaultDrop
        );
    }

    #[test]
    fn monitor_passes_with_same_reason() {
        let text = POLICY.replace("default: drop", "default: drop\nmode: monitor");
        let p = parse_str(&text, Path::new("p.yaml")).unwrap();
        let r = v(&p, "192.0.2.200", L4::tcp_syn(5432));
        assert_eq!(
            (r.reason, r.rule, r.pass),
            (Reason::RuleRefused, Some(0), true)
        );
    }

    #[test]
    fn a_segment_opening_a_connection_never_answers_one() {
        let p = parse_str(POLICY, Path::new("p.yaml")).unwrap();
        let packet = |flags| PacketClass::Ip {
            src: "192.0.2.100".parse().unwrap(),
            l4: L4::Tcp {
                dst_port: 22,
                flags,
            },
        };
        // SYN, and SYN with FIN or RST but no ACK: the flow table is not asked.
        for flags in [TCP_SYN, TCP_SYN | 0x01, TCP_SYN | 0x04] {
            assert_eq!(
                verdict_for(&p, &packet(flags), true).reason,
                Reason::DefaultDrop
            );
        }
        // SYN-ACK, ACK, RST alone (a reset answering a segment with ACK), FIN-ACK.
        for flags in [TCP_SYN | TCP_ACK, TCP_ACK, 0x04, 0x11] {
            assert_eq!(
                verdict_for(&p, &packet(flags), true).reason,
                Reason::ReturnTraffic
            );
        }
    }

    #[test]
    fn essential_icmp_types() {
        for t in [3, 11, 12] {
            assert!(is_essential_icmp(&L4::Icmp { icmp_type: t }));
        }
        for t in [0, 8, 5, 13] {
            assert!(!is_essential_icmp(&L4::Icmp { icmp_type: t }));
        }
        for t in [1, 2, 3, 4, 130, 131, 132, 143, 133, 134, 135, 136, 137] {
            assert!(is_essential_icmp(&L4::Icmpv6 { icmp_type: t }));
        }
        for t in [128, 129, 0, 5, 138, 142] {
            assert!(!is_essential_icmp(&L4::Icmpv6 { icmp_type: t }));
        }
        assert!(!is_essential_icmp(&L4::tcp_syn(3)));
    }
}
