//! Who can reach a port under a policy, by the reference model: everyone, the named
//! sets (and management), management only, or nobody.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serialize;

use crate::{
    policy::{AddrSet, DefaultAction, Mode, Policy, Proto},
    reference::{self, L4, PacketClass, Verdict},
};

/// The address family of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    fn holds(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::Ipv4, IpNet::V4(_)) | (Family::Ipv6, IpNet::V6(_))
        )
    }
}

/// Who can open a connection to (or send a datagram to) a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Who {
    /// Any source address at all.
    Everyone,
    /// The sources of the named sets (and management).
    Sets,
    /// Management sources only.
    Management,
    /// No source.
    Nobody,
}

impl Who {
    pub const fn name(self) -> &'static str {
        match self {
            Who::Everyone => "everyone",
            Who::Sets => "sets",
            Who::Management => "management",
            Who::Nobody => "nobody",
        }
    }
}

/// The answer for one (protocol, port, family).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reach {
    pub who: Who,
    /// With `Sets`: the sets (and built-in regions) of the rules covering the port
    /// that hold addresses of this family, in policy order.
    pub sets: Vec<String>,
    /// The rules covering the port.
    pub rules: Vec<String>,
    /// Why, in words.
    pub why: String,
    /// Open only because no rule covers the port and `default` is `pass`.
    pub default_pass: bool,
}

/// An address named by no set of the policy (unless a set holds every address):
/// what "anyone" looks like. Documentation addresses first, then addresses far
/// apart, so that a policy naming the documentation ranges still leaves one.
pub fn outsider(policy: &Policy, family: Family) -> IpAddr {
    let candidates: Vec<IpAddr> = match family {
        Family::Ipv4 => [
            [203, 0, 113, 254],
            [198, 51, 100, 254],
            [192, 0, 2, 254],
            [198, 18, 0, 254],
            [100, 64, 0, 254],
            [1, 0, 0, 254],
            [240, 0, 0, 254],
        ]
        .into_iter()
        .map(|o| IpAddr::V4(Ipv4Addr::from(o)))
        .collect(),
        Family::Ipv6 => [
            0x2001_0db8_ffff_u64,
            0x3fff_0fff_ffff,
            0x2a0f_ffff_ffff,
            0xfc00_ffff_ffff,
        ]
        .into_iter()
        .map(|high| IpAddr::V6(Ipv6Addr::from((u128::from(high) << 80) | 0xfe)))
        .collect(),
    };
    let named = |ip: IpAddr| {
        all_sets(policy).any(|set| {
            set.cidrs
                .iter()
                .any(|net| net.prefix_len() > 0 && net.contains(&ip))
        })
    };
    candidates
        .iter()
        .copied()
        .find(|ip| !named(*ip))
        .unwrap_or(candidates[0])
}

fn all_sets(policy: &Policy) -> impl Iterator<Item = &AddrSet> {
    policy
        .management
        .sets
        .iter()
        .chain(policy.deny.sets.iter())
        .chain(policy.rules.iter().flat_map(|r| r.from.sets.iter()))
        .map(AsRef::as_ref)
}

/// The first layer-4 header of a new connection to `port`.
pub fn l4(proto: Proto, port: u16) -> L4 {
    match proto {
        Proto::Tcp => L4::tcp_syn(port),
        Proto::Udp => L4::Udp { dst_port: port },
    }
}

/// The model's verdict for a new connection from `src`.
pub fn verdict(policy: &Policy, src: IpAddr, proto: Proto, port: u16) -> Verdict {
    reference::verdict(
        policy,
        &PacketClass::Ip {
            src,
            l4: l4(proto, port),
        },
    )
}

/// Who can reach `port`/`proto` over `family` through a filter enforcing `policy`.
pub fn reach(policy: &Policy, proto: Proto, port: u16, family: Family) -> Reach {
    let covering: Vec<_> = policy
        .rules
        .iter()
        .filter(|r| r.covers(proto, port))
        .collect();
    let rules: Vec<String> = covering.iter().map(|r| r.name.clone()).collect();
    let management = policy
        .management
        .sets
        .iter()
        .any(|s| s.cidrs.iter().any(|n| family.holds(n)));
    let outsider_passes = verdict(policy, outsider(policy, family), proto, port).pass;
    let everyone = |why: String, default_pass: bool| Reach {
        who: Who::Everyone,
        sets: Vec::new(),
        rules: rules.clone(),
        why,
        default_pass,
    };
    if policy.mode == Mode::Monitor {
        let uncovered = covering.is_empty() && policy.default == DefaultAction::Pass;
        return everyone("mode: monitor drops nothing".into(), uncovered);
    }
    if covering.is_empty() {
        return match policy.default {
            DefaultAction::Pass => everyone("no rule covers it and default is pass".into(), true),
            DefaultAction::Drop => Reach {
                who: if management {
                    Who::Management
                } else {
                    Who::Nobody
                },
                sets: Vec::new(),
                rules,
                why: "no rule covers it and default is drop".into(),
                default_pass: false,
            },
        };
    }
    if outsider_passes {
        return everyone(
            format!(
                "rule {} allows every address (a set holding {})",
                rules.join(", "),
                match family {
                    Family::Ipv4 => "0.0.0.0/0",
                    Family::Ipv6 => "::/0",
                }
            ),
            false,
        );
    }
    let mut sets: Vec<String> = Vec::new();
    for rule in &covering {
        for set in &rule.from.sets {
            if set.cidrs.iter().any(|n| family.holds(n)) && !sets.contains(&set.name) {
                sets.push(set.name.clone());
            }
        }
    }
    let who = match (sets.is_empty(), management) {
        (false, _) => Who::Sets,
        (true, true) => Who::Management,
        (true, false) => Who::Nobody,
    };
    Reach {
        who,
        sets,
        why: format!("rule {}", rules.join(", ")),
        rules,
        default_pass: false,
    }
}

/// `management` holds every address of a family.
pub fn management_is_everyone(policy: &Policy) -> Vec<String> {
    policy
        .management
        .sets
        .iter()
        .flat_map(|s| s.cidrs.iter())
        .filter(|n| n.prefix_len() == 0)
        .map(ToString::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn policy(text: &str) -> Policy {
        crate::policy::parse_str(text, Path::new("p.yaml")).expect("valid policy")
    }

    #[test]
    fn who_follows_the_rules_the_default_and_the_mode() {
        let p = policy(
            "version: 1\ndefault: pass\nmanagement: [203.0.113.7/32]\nsets:\n  office: [198.51.100.0/24]\n  all: [0.0.0.0/0]\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [office]\n  - name: web\n    ports: [443/tcp]\n    from: [all]\n",
        );
        let db = reach(&p, Proto::Tcp, 5432, Family::Ipv4);
        assert_eq!(
            (db.who, db.sets.clone()),
            (Who::Sets, vec!["office".into()])
        );
        // office has no IPv6 prefix: over IPv6 only management gets in.
        assert_eq!(reach(&p, Proto::Tcp, 5432, Family::Ipv6).who, Who::Nobody);
        assert_eq!(reach(&p, Proto::Tcp, 443, Family::Ipv4).who, Who::Everyone);
        let open = reach(&p, Proto::Udp, 5432, Family::Ipv4);
        assert!(open.who == Who::Everyone && open.default_pass, "{open:?}");
        let closed = policy("version: 1\ndefault: drop\nmanagement: [203.0.113.7/32]\nrules: []\n");
        assert_eq!(
            reach(&closed, Proto::Tcp, 22, Family::Ipv4).who,
            Who::Management
        );
        assert_eq!(
            reach(&closed, Proto::Tcp, 22, Family::Ipv6).who,
            Who::Nobody
        );
        let monitor = policy(
            "version: 1\nmode: monitor\ndefault: drop\nsets:\n  office: [198.51.100.0/24]\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [office]\n",
        );
        assert_eq!(
            reach(&monitor, Proto::Tcp, 5432, Family::Ipv4).who,
            Who::Everyone
        );
    }

    #[test]
    fn the_outsider_is_named_by_no_set() {
        let p = policy(
            "version: 1\nsets:\n  docs: [203.0.113.0/24, 198.51.100.0/24, \"2001:db8::/32\"]\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [docs]\n",
        );
        assert_eq!(
            outsider(&p, Family::Ipv4),
            "192.0.2.254".parse::<IpAddr>().unwrap()
        );
        let v6 = outsider(&p, Family::Ipv6);
        assert!(v6.is_ipv6() && !"2001:db8::/32".parse::<IpNet>().unwrap().contains(&v6));
    }
}
