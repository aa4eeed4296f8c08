//! The policies measured: the built-in Airbyte sets (11 addresses), and sets of
//! 1,000 / 100,000 / 1,000,000 prefixes of mixed lengths in both families,
//! generated from a fixed seed so every run measures the same policy; each with
//! rules covering 1, 10 or 60 port ranges.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

/// The seed every generated set comes from.
pub const SEED: u64 = 0xA1A0_C0DE;

/// Destination port of every TCP test frame; rule 0 covers it.
pub const PORT: u16 = 5432;

/// The host's own port of a TCP connection it opened to [`DROP_V4`] (the egress
/// program records it): the peer's segments to it are replies. No rule covers it.
pub const FLOW_PORT: u16 = 41000;

/// A port no rule covers, with no flow open to it: under `default: drop`, traffic
/// to it is refused after a flow-table miss.
pub const UNCOVERED_PORT: u16 = 41999;

/// A source in no set (documentation range): its frames are refused.
pub const DROP_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const DROP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 0x10);

/// One of Airbyte's us-west3 addresses (built-in set `airbyte-us`).
pub const AIRBYTE_V4: Ipv4Addr = Ipv4Addr::new(34, 106, 109, 131);

/// One measured policy.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Short label, e.g. `100k/1`.
    pub label: String,
    /// Source prefixes in the policy (the Airbyte 11 plus the generated set).
    pub prefixes: usize,
    /// Port ranges covered by rules.
    pub port_ranges: usize,
    /// The generated set (empty for the Airbyte-only policy).
    pub bulk: Vec<IpNet>,
    /// A source inside the policy, per family (`None`: the policy has none).
    pub allowed_v4: Ipv4Addr,
    pub allowed_v6: Option<Ipv6Addr>,
    /// Whether the policy names a management prefix in each family: then every
    /// packet of the family needs its source looked up, even to a port no rule
    /// covers (management passes anywhere), so the uncovered-port rows pay it.
    pub management: bool,
}

/// Management prefixes of the [`Workload::with_management`] policies, one per
/// family: documentation addresses none of the test frames comes from.
pub const MANAGEMENT: [&str; 2] = ["198.51.100.7/32", "2001:db8:1::7/128"];

/// Label suffix of the policies with a management set.
pub const MANAGEMENT_LABEL: &str = "+mgmt";

impl Workload {
    pub fn new(generated: usize, port_ranges: usize) -> Self {
        Self::with_bulk(generate(generated, SEED), port_ranges)
    }

    /// The same generated set with another number of port ranges.
    pub fn with_bulk(bulk: Vec<IpNet>, port_ranges: usize) -> Self {
        let generated = bulk.len();
        let allowed_v4 = bulk
            .iter()
            .rev()
            .find_map(|n| match n {
                IpNet::V4(n) if n.prefix_len() >= 20 => Some(inside_v4(n)),
                _ => None,
            })
            .unwrap_or(AIRBYTE_V4);
        let allowed_v6 = bulk.iter().rev().find_map(|n| match n {
            IpNet::V6(n) if n.prefix_len() >= 48 => Some(inside_v6(n)),
            _ => None,
        });
        Self {
            label: format!(
                "{}/{port_ranges}",
                size_label(if generated == 0 { 11 } else { generated })
            ),
            prefixes: generated + 11,
            port_ranges,
            bulk,
            allowed_v4,
            allowed_v6,
            management: false,
        }
    }

    /// The same policy with a management prefix in each family (an anti-lockout
    /// entry, as most production policies carry).
    pub fn with_management(mut self) -> Self {
        self.management = true;
        self.label.push_str(MANAGEMENT_LABEL);
        self
    }

    pub fn json(&self) -> serde_json::Value {
        let v4 = self
            .bulk
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)))
            .count();
        serde_json::json!({
            "label": self.label,
            "prefixes": self.prefixes,
            "generated_v4": v4,
            "generated_v6": self.bulk.len() - v4,
            "port_ranges": self.port_ranges,
            "allowed_v4": self.allowed_v4.to_string(),
            "allowed_v6": self.allowed_v6.map(|a| a.to_string()),
            "management": self.management.then_some(MANAGEMENT),
            "seed": SEED,
        })
    }

    /// The imported list (`file:`), one prefix per line.
    pub fn list_text(&self) -> String {
        let mut text = String::with_capacity(self.bulk.len() * 20);
        for net in &self.bulk {
            let _ = writeln!(text, "{net}");
        }
        text
    }

    /// The policy for `iface`, importing the generated set from `list` (a path
    /// relative to the policy file) when there is one. `default: drop`, as a host
    /// that only the rules may reach runs it: the return-traffic egress program is
    /// in place, and traffic no rule covers consults its flow table.
    pub fn policy_yaml(&self, iface: &str, list: &Path) -> String {
        let mut from = String::from("[airbyte-us, airbyte-eu");
        let mut sets = String::new();
        if !self.bulk.is_empty() {
            from.push_str(", bulk");
            let _ = write!(sets, "sets:\n  bulk:\n    file: {}\n", list.display());
        }
        from.push(']');
        let mut rules =
            format!("rules:\n  - name: r0\n    ports: [{PORT}/tcp]\n    from: {from}\n");
        for i in 1..self.port_ranges {
            let first = 10_000 + i * 10;
            let _ = write!(
                rules,
                "  - name: r{i}\n    ports: [{first}-{}/tcp]\n    from: {from}\n",
                first + 4
            );
        }
        let management = if self.management {
            format!("management: [{}]\n", MANAGEMENT.join(", "))
        } else {
            String::new()
        };
        format!(
            "version: 1\ninterfaces: [{iface}]\nmode: enforce\ndefault: drop\n{management}{sets}{rules}"
        )
    }
}

pub fn size_label(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 < 1000 => format!("{}M", n / 1_000_000),
        n if n >= 1000 && n % 1000 < 100 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

fn inside_v4(net: &Ipv4Net) -> Ipv4Addr {
    let host = (!u32::from(net.netmask())) & 0x0000_0a0a;
    Ipv4Addr::from(u32::from(net.network()) | host)
}

fn inside_v6(net: &Ipv6Net) -> Ipv6Addr {
    let host = (!u128::from(net.netmask())) & 0x0a0a;
    Ipv6Addr::from(u128::from(net.network()) | host)
}

/// `count` distinct prefixes, three in four IPv4, with a spread of lengths like a
/// provider's range list: many exact addresses, /24s and /48s, some shorter
/// aggregates. None covers the refused test sources, nor any documentation range.
pub fn generate(count: usize, seed: u64) -> Vec<IpNet> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    let doc_v4: [Ipv4Net; 3] = [
        "192.0.2.0/24".parse().expect("net"),
        "198.51.100.0/24".parse().expect("net"),
        "203.0.113.0/24".parse().expect("net"),
    ];
    let doc_v6: Ipv6Net = "2001:db8::/32".parse().expect("net");
    // Bounded: each try either adds a prefix or is one of a few rejected ones.
    let mut tries = 0usize;
    while out.len() < count && tries < count * 4 + 1000 {
        tries += 1;
        let net = if rng.random_ratio(3, 4) {
            // No aggregates shorter than /18: random short prefixes would cover
            // most of the others, which the compiler then prunes, and the trie
            // measured would be far smaller than the policy.
            let len = match rng.random_range(0..100u32) {
                0..55 => 32,
                55..80 => 24,
                80..95 => rng.random_range(25..=31),
                _ => rng.random_range(18..=23),
            };
            // Unicast space outside 0/8, 10/8, 127/8 and multicast.
            let addr = rng.random_range(0x0b00_0000u32..0xdf00_0000);
            if addr >> 24 == 127 {
                continue;
            }
            let net = Ipv4Net::new(Ipv4Addr::from(addr), len)
                .expect("length")
                .trunc();
            if doc_v4.iter().any(|d| net.contains(d) || d.contains(&net)) {
                continue;
            }
            IpNet::V4(net)
        } else {
            let len = match rng.random_range(0..100u32) {
                0..30 => 128,
                30..60 => 64,
                60..88 => 48,
                88..95 => rng.random_range(36..=47),
                _ => rng.random_range(49..=63),
            };
            // Global unicast, 2000::/3.
            let addr: u128 = (rng.random::<u128>() >> 3) | (1u128 << 125);
            let net = Ipv6Net::new(Ipv6Addr::from(addr), len)
                .expect("length")
                .trunc();
            if net.contains(&doc_v6) || doc_v6.contains(&net) {
                continue;
            }
            IpNet::V6(net)
        };
        if !covers(&net, DROP_V4.into()) && !covers(&net, DROP_V6.into()) && seen.insert(net) {
            out.push(net);
        }
    }
    out
}

fn covers(net: &IpNet, addr: IpAddr) -> bool {
    net.contains(&addr)
}

/// `net` with `percent`% of its prefixes replaced by new ones (same seed
/// scheme, so the change is reproducible): the "re-apply a small change" case.
pub fn mutate(bulk: &[IpNet], percent: usize, seed: u64) -> Vec<IpNet> {
    let changes = bulk.len() * percent / 100;
    let fresh = generate(changes, seed);
    let mut out = bulk.to_vec();
    let stride = (bulk.len() / changes.max(1)).max(1);
    for (i, net) in fresh.into_iter().enumerate() {
        let at = i * stride;
        if at < out.len() {
            out[at] = net;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_avoids_test_sources() {
        let a = generate(2000, SEED);
        assert_eq!(a, generate(2000, SEED));
        assert_eq!(a.len(), 2000);
        assert!(a.iter().all(|n| !n.contains(&IpAddr::from(DROP_V4))));
        assert!(a.iter().all(|n| !n.contains(&IpAddr::from(DROP_V6))));
        assert!(a.iter().any(|n| matches!(n, IpNet::V6(_))));
    }

    #[test]
    fn policy_validates() {
        let w = Workload::new(50, 10);
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("bulk.txt"), w.list_text()).expect("write");
        let yaml = w.policy_yaml("eth0", Path::new("bulk.txt"));
        let policy = airlock::policy::parse_str(&yaml, &dir.path().join("p.yaml"))
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(policy.rules.len(), 10);
        let compiled = airlock::compile::compile(&policy).expect("compile");
        assert!(compiled.lookup(w.allowed_v4.into()).rules & 1 == 1);
        assert_eq!(compiled.lookup(DROP_V4.into()).rules, 0);
    }
}
