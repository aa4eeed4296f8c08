//! Property tests: random policies (written as YAML, parsed like a user's), compiled,
//! then every packet judged the way the datapath will (one LPM lookup, one port-mask
//! lookup, bit operations) must get the reference model's reason, rule and action.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use airlock::compile::{Compiled, compile, compile_unpruned};
use airlock::policy::{DefaultAction, Mode, Policy, Proto, parse_str};
use airlock::reference::{L4, PacketClass, is_essential_icmp, verdict};
use airlock_common::maps::{SRC_DENY, SRC_MANAGEMENT};
use airlock_common::reason::Reason;
use ipnet::IpNet;
use proptest::prelude::*;

// ---------- random policy, as raw numbers rendered to YAML ----------

/// A prefix in a small universe, so prefixes nest and overlap often.
#[derive(Clone, Debug)]
struct RawPrefix {
    v6: bool,
    parts: [u8; 3],
    len_sel: u8,
    bare: bool,
}

const V4_LENS: [u8; 8] = [0, 8, 16, 20, 24, 25, 31, 32];
const V6_LENS: [u8; 8] = [0, 32, 48, 56, 64, 100, 127, 128];
const PART_POOL: [u8; 4] = [0, 1, 128, 255];

impl RawPrefix {
    fn net(&self) -> IpNet {
        let [a, b, c] = self.parts.map(|p| PART_POOL[usize::from(p) % 4]);
        let sel = usize::from(self.len_sel) % 8;
        let net = if self.v6 {
            let addr = Ipv6Addr::new(
                0x2001,
                0xdb8,
                u16::from(a),
                u16::from(b),
                0,
                0,
                0,
                u16::from(c),
            );
            IpNet::new(IpAddr::V6(addr), V6_LENS[sel]).unwrap()
        } else {
            IpNet::new(IpAddr::V4(Ipv4Addr::new(10, a, b, c)), V4_LENS[sel]).unwrap()
        };
        net.trunc()
    }

    fn text(&self) -> String {
        let net = self.net();
        if self.bare && net.prefix_len() == net.max_prefix_len() {
            format!("\"{}\"", net.addr())
        } else {
            format!("\"{net}\"")
        }
    }
}

fn raw_prefix() -> impl Strategy<Value = RawPrefix> {
    (any::<bool>(), any::<[u8; 3]>(), any::<u8>(), any::<bool>()).prop_map(
        |(v6, parts, len_sel, bare)| RawPrefix {
            v6,
            parts,
            len_sel,
            bare,
        },
    )
}

/// An except derived from cidr `index` of its set: longer by `extra` bits, with
/// random bits inside, so it always lies inside that cidr.
#[derive(Clone, Debug)]
struct RawExcept {
    index: usize,
    extra: u8,
    bits: u128,
}

#[derive(Clone, Debug)]
struct RawSet {
    cidrs: Vec<RawPrefix>,
    except: Vec<RawExcept>,
}

fn raw_set() -> impl Strategy<Value = RawSet> {
    (
        prop::collection::vec(raw_prefix(), 1..4),
        prop::collection::vec((any::<usize>(), 0u8..40, any::<u128>()), 0..3),
    )
        .prop_map(|(cidrs, ex)| RawSet {
            cidrs,
            except: ex
                .into_iter()
                .map(|(index, extra, bits)| RawExcept { index, extra, bits })
                .collect(),
        })
}

fn except_net(set: &RawSet, e: &RawExcept) -> IpNet {
    let c = set.cidrs[e.index % set.cidrs.len()].net();
    let max = c.max_prefix_len();
    let len = (c.prefix_len() + e.extra).min(max);
    match c {
        IpNet::V4(n) => {
            let host = u32::from(n.hostmask()) & (e.bits as u32);
            let a = Ipv4Addr::from(u32::from(n.network()) | host);
            IpNet::new(IpAddr::V4(a), len).unwrap().trunc()
        }
        IpNet::V6(n) => {
            let host = u128::from(n.hostmask()) & e.bits;
            let a = Ipv6Addr::from(u128::from(n.network()) | host);
            IpNet::new(IpAddr::V6(a), len).unwrap().trunc()
        }
    }
}

#[derive(Clone, Debug)]
enum RawRef {
    Set(usize),
    Inline(RawPrefix),
    Region(bool),
}

fn raw_ref() -> impl Strategy<Value = RawRef> {
    prop_oneof![
        4 => any::<usize>().prop_map(RawRef::Set),
        3 => raw_prefix().prop_map(RawRef::Inline),
        1 => any::<bool>().prop_map(RawRef::Region),
    ]
}

const PORT_POOL: [u16; 7] = [1, 22, 80, 443, 5432, 8000, 65530];

#[derive(Clone, Debug)]
struct RawRule {
    ports: Vec<(bool, usize, u16, u16)>,
    from: Vec<RawRef>,
}

fn raw_rule() -> impl Strategy<Value = RawRule> {
    (
        prop::collection::vec(
            (
                any::<bool>(),
                any::<usize>(),
                0u16..3,
                prop_oneof![3 => Just(0u16), 1 => 0u16..5],
            ),
            1..4,
        ),
        prop::collection::vec(raw_ref(), 1..4),
    )
        .prop_map(|(ports, from)| RawRule { ports, from })
}

#[derive(Clone, Debug)]
struct RawPolicy {
    sets: Vec<RawSet>,
    rules: Vec<RawRule>,
    management: Vec<RawRef>,
    deny: Vec<RawRef>,
    default_drop: bool,
    monitor: bool,
}

fn raw_policy() -> impl Strategy<Value = RawPolicy> {
    (
        prop::collection::vec(raw_set(), 0..5),
        prop::collection::vec(raw_rule(), 0..8),
        prop::collection::vec(raw_ref(), 0..2),
        prop::collection::vec(raw_ref(), 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(sets, rules, management, deny, default_drop, monitor)| RawPolicy {
                sets,
                rules,
                management,
                deny,
                default_drop,
                monitor,
            },
        )
}

impl RawPolicy {
    fn ref_text(&self, r: &RawRef) -> String {
        match r {
            RawRef::Set(i) if !self.sets.is_empty() => format!("s{}", i % self.sets.len()),
            RawRef::Set(_) => "airbyte-us".to_string(),
            RawRef::Inline(p) => p.text(),
            RawRef::Region(us) => if *us { "airbyte-us" } else { "airbyte-eu" }.to_string(),
        }
    }

    fn refs(&self, refs: &[RawRef]) -> String {
        let items: Vec<String> = refs.iter().map(|r| self.ref_text(r)).collect();
        format!("[{}]", items.join(", "))
    }

    fn yaml(&self) -> String {
        let mut y = String::from("version: 1\ninterfaces: [eth0]\n");
        let _ = writeln!(
            y,
            "mode: {}",
            if self.monitor { "monitor" } else { "enforce" }
        );
        let _ = writeln!(
            y,
            "default: {}",
            if self.default_drop { "drop" } else { "pass" }
        );
        if !self.sets.is_empty() {
            y.push_str("sets:\n");
            for (i, s) in self.sets.iter().enumerate() {
                let cidrs: Vec<String> = s.cidrs.iter().map(RawPrefix::text).collect();
                if s.except.is_empty() && i % 2 == 0 {
                    let _ = writeln!(y, "  s{i}: [{}]", cidrs.join(", "));
                } else {
                    let ex: Vec<String> = s
                        .except
                        .iter()
                        .map(|e| format!("\"{}\"", except_net(s, e)))
                        .collect();
                    let _ = writeln!(
                        y,
                        "  s{i}:\n    cidrs: [{}]\n    except: [{}]",
                        cidrs.join(", "),
                        ex.join(", ")
                    );
                }
            }
        }
        let _ = writeln!(y, "management: {}", self.refs(&self.management));
        let _ = writeln!(y, "deny: {}", self.refs(&self.deny));
        y.push_str("rules:\n");
        for (i, r) in self.rules.iter().enumerate() {
            let ports: Vec<String> = r
                .ports
                .iter()
                .map(|&(udp, base, off, span)| {
                    let first = PORT_POOL[base % PORT_POOL.len()].saturating_add(off);
                    let last = first.saturating_add(span);
                    let proto = if udp { "udp" } else { "tcp" };
                    if first == last {
                        format!("{first}/{proto}")
                    } else {
                        format!("{first}-{last}/{proto}")
                    }
                })
                .collect();
            let _ = writeln!(
                y,
                "  - name: r{i}\n    ports: [{}]\n    from: {}",
                ports.join(", "),
                self.refs(&r.from)
            );
        }
        y
    }
}

// ---------- addresses and packets biased toward the policy's prefixes ----------

/// All prefixes the policy mentions, in groups and named sets.
fn policy_prefixes(p: &Policy) -> Vec<IpNet> {
    let groups = p
        .rules
        .iter()
        .map(|r| &r.from)
        .chain([&p.management, &p.deny]);
    let mut nets: BTreeSet<IpNet> = BTreeSet::new();
    for g in groups {
        for s in &g.sets {
            nets.extend(s.cidrs.iter().chain(&s.except));
        }
    }
    for s in p.sets.values() {
        nets.extend(s.cidrs.iter().chain(&s.except));
    }
    nets.into_iter().collect()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: plenty for picking addresses.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn wide(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }
}

/// Edges of every prefix (first, last, just outside both) and random points inside.
fn addresses(p: &Policy, rng: &mut Rng) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for net in policy_prefixes(p) {
        match net {
            IpNet::V4(n) => {
                let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
                let inside = lo | (rng.next() as u32 & u32::from(n.hostmask()));
                for a in [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1), inside] {
                    out.push(IpAddr::V4(a.into()));
                }
            }
            IpNet::V6(n) => {
                let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                let inside = lo | (rng.wide() & u128::from(n.hostmask()));
                for a in [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1), inside] {
                    out.push(IpAddr::V6(a.into()));
                }
            }
        }
    }
    out.push(IpAddr::V4((rng.next() as u32).into()));
    out.push(IpAddr::V6(rng.wide().into()));
    out.push("13.37.4.46".parse().unwrap());
    out.push("34.106.60.246".parse().unwrap());
    out
}

fn l4s(p: &Policy, rng: &mut Rng) -> Vec<L4> {
    let mut ports: BTreeSet<u16> = [1, 53, 65535].into();
    for r in &p.rules {
        for pr in &r.ports {
            ports.extend([
                pr.first,
                pr.last,
                pr.first.saturating_sub(1),
                pr.last.saturating_add(1),
            ]);
        }
    }
    ports.insert(rng.next() as u16);
    let mut out = vec![
        L4::Icmp { icmp_type: 3 },
        L4::Icmp { icmp_type: 8 },
        L4::Icmpv6 { icmp_type: 135 },
        L4::Icmpv6 { icmp_type: 128 },
        L4::Other { protocol: 47 },
        L4::NonFirstFragment,
    ];
    for port in ports {
        out.push(L4::tcp_syn(port));
        out.push(L4::Udp { dst_port: port });
    }
    out
}

// ---------- the datapath's evaluation order, over compiled maps only ----------

fn kernel_style_verdict(c: &Compiled, packet: &PacketClass) -> (Reason, Option<usize>, bool) {
    let default_drop = c.config.default_action == airlock_common::maps::DEFAULT_DROP;
    let (reason, rule) = match *packet {
        PacketClass::NonIp => (Reason::NonIp, None),
        PacketClass::Malformed { src } => match src {
            Some(ip) if c.lookup(ip).flags & SRC_MANAGEMENT != 0 => (Reason::Management, None),
            _ => (Reason::Malformed, None),
        },
        PacketClass::Ip { src, l4 } => {
            let e = c.lookup(src);
            let default = if default_drop {
                Reason::DefaultDrop
            } else {
                Reason::DefaultPass
            };
            if e.flags & SRC_MANAGEMENT != 0 {
                (Reason::Management, None)
            } else if e.flags & SRC_DENY != 0 {
                (Reason::Deny, None)
            } else if is_essential_icmp(&l4) {
                (Reason::EssentialIcmp, None)
            } else {
                let port_mask = match l4 {
                    L4::Tcp { dst_port, .. } => c.port_mask(Proto::Tcp, dst_port),
                    L4::Udp { dst_port } => c.port_mask(Proto::Udp, dst_port),
                    _ => 0,
                };
                if l4 == L4::NonFirstFragment {
                    if e.rules != 0 || !default_drop {
                        (Reason::FragmentPass, None)
                    } else {
                        (Reason::FragmentDrop, None)
                    }
                } else if port_mask != 0 {
                    let hit = e.rules & port_mask;
                    if hit != 0 {
                        (Reason::RuleAllowed, Some(hit.trailing_zeros() as usize))
                    } else {
                        (
                            Reason::RuleRefused,
                            Some(port_mask.trailing_zeros() as usize),
                        )
                    }
                } else {
                    (default, None)
                }
            }
        }
    };
    let monitor = c.config.mode == airlock_common::maps::MODE_MONITOR;
    (reason, rule, monitor || reason.passes())
}

fn parse(raw: &RawPolicy) -> Policy {
    let yaml = raw.yaml();
    match parse_str(&yaml, Path::new("random.yaml")) {
        Ok(p) => p,
        Err(e) => panic!("generated policy invalid:\n{yaml}\n{e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn compiled_maps_agree_with_reference(raw in raw_policy(), seed in any::<u64>()) {
        let policy = parse(&raw);
        prop_assert_eq!(policy.mode == Mode::Monitor, raw.monitor);
        prop_assert_eq!(policy.default == DefaultAction::Drop, raw.default_drop);
        let compiled = compile(&policy).unwrap();
        let mut rng = Rng(seed | 1);
        let l4s = l4s(&policy, &mut rng);
        let addrs = addresses(&policy, &mut rng);
        for &src in &addrs {
            // Membership straight from the policy: the folded trie must agree exactly.
            let e = compiled.lookup(src);
            for (i, r) in policy.rules.iter().enumerate() {
                prop_assert_eq!(e.rules >> i & 1 == 1, r.from.contains(src), "rule {} src {}", i, src);
            }
            prop_assert_eq!(e.flags & SRC_MANAGEMENT != 0, policy.management.contains(src));
            prop_assert_eq!(e.flags & SRC_DENY != 0, policy.deny.contains(src));
            let packets = l4s.iter().map(|&l4| PacketClass::Ip { src, l4 })
                .chain([PacketClass::Malformed { src: Some(src) }]);
            for packet in packets {
                let want = verdict(&policy, &packet);
                let got = kernel_style_verdict(&compiled, &packet);
                prop_assert_eq!(got, (want.reason, want.rule, want.pass), "packet {:?}\n{}", packet, raw.yaml());
            }
        }
        for packet in [PacketClass::NonIp, PacketClass::Malformed { src: None }] {
            let want = verdict(&policy, &packet);
            prop_assert_eq!(kernel_style_verdict(&compiled, &packet), (want.reason, want.rule, want.pass));
        }
    }

    #[test]
    fn pruning_changes_no_lookup(raw in raw_policy(), seed in any::<u64>()) {
        let policy = parse(&raw);
        let pruned = compile(&policy).unwrap();
        let full = compile_unpruned(&policy).unwrap();
        prop_assert!(pruned.v4.len() <= full.v4.len() && pruned.v6.len() <= full.v6.len());
        prop_assert_eq!(full.stats().distinct_prefixes, pruned.stats().distinct_prefixes);
        prop_assert_eq!(full.v4.len(), pruned.stats().distinct_prefixes.v4);
        let mut rng = Rng(seed | 1);
        for src in addresses(&policy, &mut rng) {
            prop_assert_eq!(pruned.lookup(src), full.lookup(src), "src {}", src);
        }
        // No entry is redundant: each differs from what its nearest ancestor answers.
        for e in &pruned.v4 {
            let parent = pruned.v4.iter()
                .filter(|a| a.prefix_len < e.prefix_len && contains4(a.addr, a.prefix_len, e.addr))
                .max_by_key(|a| a.prefix_len)
                .map(|a| a.value)
                .unwrap_or_default();
            prop_assert_ne!(parent, e.value);
        }
    }
}

fn contains4(net: [u8; 4], len: u8, addr: [u8; 4]) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from_be_bytes(net) == u32::from_be_bytes(addr) & mask
}
