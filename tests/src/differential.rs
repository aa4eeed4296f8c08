//! The randomized differential run: random policies, random frames aimed at them,
//! each frame run through the real XDP program (BPF_PROG_TEST_RUN) and compared
//! with the reference model, the frame builder deciding the frame's class by the
//! kernel's rules (packet.rs). Used by the kernel test (100,000 frames) and by
//! `cargo xtask soak` (as many as asked).
//!
//! Besides the verdict rules' inputs (sources at prefix edges, ports at range
//! edges, tags, options, extension chains, fragments), the frames vary what the
//! kernel trusts over the frame: IP length fields that disagree with the frame
//! (cut at header boundaries, short by a byte, longer than the frame, zero),
//! trailing bytes (padding, or a TCP header an attacker hides there), truncation,
//! and fragments of one datagram in both orders.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use airlock::policy::{Policy, PortRange};
use airlock::reference::PacketClass;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use airlock::link_type::Framing;
use airlock_common::{FLAG_TABLE_V4, FLAG_TABLE_V6, UNFLAGGED_V4, UNFLAGGED_V6};

use crate::kernel::{Harness, answered_flow};
use crate::packet::{
    ETH_P_LLDP, Ext, FrameSpec, IPPROTO_ESP, IPPROTO_GRE, IPPROTO_NONE, IPPROTO_SCTP,
    IPV6_MAX_EXT_HEADERS, L3, Tag, Transport,
};

/// The seed the test suite uses unless `AIRLOCK_TEST_SEED` says otherwise.
pub const DEFAULT_SEED: u64 = 0x0a1b_10c4_5eed;
/// Frames judged under one policy before the next is applied (each apply goes
/// through the generation swap, so swaps are exercised too).
pub const FRAMES_PER_POLICY: usize = 1000;

/// Policies judged by one loaded filter before a fresh one is loaded. The flow
/// table is an LRU of 65,536 entries that the model does not model: the flows a
/// run writes (about 250 a policy) must never fill it, or eviction, not the
/// program, would decide some verdicts.
pub const POLICIES_PER_FILTER: usize = 50;

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub frames: usize,
    pub policies: usize,
    /// Kernel verdicts by reason name.
    pub by_reason: BTreeMap<&'static str, usize>,
    /// Frames whose length fields disagreed with the frame (the variation above).
    pub length_varied: usize,
    /// Fragment pairs judged in both orders.
    pub fragment_pairs: usize,
    /// `(kernel reason vs reference reason, full description)`, in order found.
    pub disagreements: Vec<(String, String)>,
    /// Kernel verdicts by reason name of frames with a source by how the
    /// program finds the source's management and deny flags where no rule
    /// covers the port, as the generation's config (read back) says: none in
    /// the family (no lookup), the family's flag table, or the full lookup (the
    /// family's flags change too often for a flag table).
    pub unflagged_by_reason: BTreeMap<&'static str, usize>,
    pub flag_table_by_reason: BTreeMap<&'static str, usize>,
    pub full_lookup_by_reason: BTreeMap<&'static str, usize>,
    /// Policies with a flag table in some family, and with a family of
    /// management or deny prefixes that overflows it.
    pub flag_table_policies: usize,
    pub full_lookup_policies: usize,
}

/// How the program finds a family's management and deny flags for a packet
/// whose verdict needs only those (see [`Report`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagsFrom {
    /// No source of the family is management or deny.
    Unflagged,
    FlagTable,
    FullLookup,
}

impl Report {
    /// Disagreements counted by kind.
    pub fn kinds(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for (kind, _) in &self.disagreements {
            *kinds.entry(kind.clone()).or_default() += 1;
        }
        kinds
    }
}

/// `AIRLOCK_TEST_SEED` if set (decimal or 0x-hex), else [`DEFAULT_SEED`].
pub fn seed_from_env() -> u64 {
    std::env::var("AIRLOCK_TEST_SEED")
        .ok()
        .map(|s| parse_seed(&s))
        .unwrap_or(DEFAULT_SEED)
}

pub fn parse_seed(s: &str) -> u64 {
    let s = s.trim();
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("seed {s:?} is not a number: {e}"))
}

/// Judges `frames` random frames (at least), `progress` called after each policy.
pub fn run(seed: u64, frames: usize, progress: impl FnMut(&Report)) -> Report {
    run_on(Framing::Ethernet, seed, frames, progress)
}

/// [`run`] through the program for `framing`. For [`Framing::Ip`] (tun, WireGuard:
/// the frame starts at the IP header) the frames are the untagged IP ones with
/// their Ethernet header taken off; their class is the same, except where the
/// ethertype and the version nibble disagree (without a link layer only the
/// nibble speaks), so those are left out.
pub fn run_on(
    framing: Framing,
    seed: u64,
    frames: usize,
    mut progress: impl FnMut(&Report),
) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = Harness::for_framing(framing);
    let mut report = Report {
        seed,
        ..Report::default()
    };
    while report.frames < frames {
        if report.policies > 0 && report.policies.is_multiple_of(POLICIES_PER_FILTER) {
            h = Harness::for_framing(framing);
        }
        let yaml = random_policy(&mut rng);
        let policy = h.apply(&yaml);
        report.policies += 1;
        let nets = policy_nets(&policy);
        let ranges = policy_ports(&policy);
        let flagged = flags_from(&h);
        if flagged.contains(&FlagsFrom::FlagTable) {
            report.flag_table_policies += 1;
        }
        if flagged.contains(&FlagsFrom::FullLookup) {
            report.full_lookup_policies += 1;
        }
        for _ in 0..FRAMES_PER_POLICY.min(frames - report.frames) {
            let base = random_base_frame(&mut rng, &nets, &ranges);
            let spec = vary_lengths(&mut rng, base.clone());
            if spec != base {
                report.length_varied += 1;
            }
            let mut specs = vec![spec];
            if let Some(other) = other_fragment(&mut rng, &specs[0]) {
                report.fragment_pairs += 1;
                specs.push(other);
                if rng.random_bool(0.5) {
                    specs.reverse();
                }
            }
            for spec in specs {
                if framing == Framing::Ip && !has_ip_framing(&spec) {
                    continue;
                }
                judge(&mut rng, &mut h, &mut report, spec, &yaml, framing, flagged);
            }
        }
        progress(&report);
    }
    report
}

/// Whether the frame, without its Ethernet header, is one an IP-first device
/// delivers with the same meaning: untagged IP whose version nibble is its family's.
fn has_ip_framing(spec: &FrameSpec) -> bool {
    spec.tags.is_empty()
        && match &spec.l3 {
            L3::V4(v4) => v4.version == 4,
            L3::V6(v6) => v6.version == 6,
            _ => false,
        }
}

fn judge(
    rng: &mut StdRng,
    h: &mut Harness,
    report: &mut Report,
    spec: FrameSpec,
    yaml: &str,
    framing: Framing,
    flagged: [FlagsFrom; 2],
) {
    let mut frame = spec.build();
    if framing == Framing::Ip {
        // The same packet as an IP-first device hands it over.
        frame.bytes.drain(..frame.bytes.len().min(14));
    }
    if frame.bytes.len() < 14 {
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header (for
        // either program).
        return;
    }
    // Some packets answer a flow the host opened (or one that expired): rule 6's
    // return traffic is judged on the same random policies.
    if let Some(flow) = answered_flow(&frame.class) {
        match rng.random_range(0..8) {
            0 | 1 => h.open_flow(&flow),
            2 => h.expired_flow(&flow),
            _ => {}
        }
    }
    report.frames += 1;
    match h.compare(&frame) {
        Ok(outcome) => {
            *report.by_reason.entry(outcome.reason.name()).or_default() += 1;
            let source = match frame.class {
                PacketClass::Ip { src, .. } | PacketClass::Malformed { src: Some(src) } => {
                    Some(src)
                }
                _ => None,
            };
            if let Some(src) = source {
                let side = match flagged[usize::from(src.is_ipv6())] {
                    FlagsFrom::Unflagged => &mut report.unflagged_by_reason,
                    FlagsFrom::FlagTable => &mut report.flag_table_by_reason,
                    FlagsFrom::FullLookup => &mut report.full_lookup_by_reason,
                };
                *side.entry(outcome.reason.name()).or_default() += 1;
            }
        }
        Err(d) => report.disagreements.push((
            format!(
                "{} vs {}",
                d.kernel.reason.name(),
                d.reference.reason.name()
            ),
            format!(
                "policy {} (seed {:#x}):\n{d}\npolicy:\n{yaml}",
                report.policies, report.seed
            ),
        )),
    }
}

/// Sometimes makes the IP length field disagree with the frame, or appends bytes
/// after the packet.
fn vary_lengths(rng: &mut StdRng, mut spec: FrameSpec) -> FrameSpec {
    if rng.random_bool(0.1) {
        spec = spec.trailer(&random_trailer(rng));
    }
    let true_len = match &spec.l3 {
        L3::V4(_) | L3::V6(_) => spec.true_ip_len(),
        _ => return spec,
    };
    if !rng.random_bool(0.15) {
        return spec;
    }
    match &spec.l3 {
        L3::V4(v4) => {
            let header = 20 + 4 * usize::from(v4.option_words);
            let stated = random_length(rng, header, true_len, &[8, 12, 20]);
            spec.total_len(stated as u16)
        }
        L3::V6(v6) => {
            // Boundaries: after each extension header, then inside the transport.
            let mut ends = vec![0];
            for ext in &v6.ext {
                ends.push(ends.last().unwrap() + ext.byte_len());
            }
            let chain = *ends.last().unwrap();
            let end = *ends.choose(rng).unwrap();
            let stated = match rng.random_range(0..3) {
                0 => end,
                1 => end.saturating_sub(rng.random_range(1..=8)),
                _ => random_length(rng, chain, true_len - 40, &[8, 20]),
            };
            spec.payload_len(stated as u16)
        }
        _ => spec,
    }
}

/// A length near `base` (header end) or `true_len`: at the header end, at common
/// transport header sizes past it, a byte short of the truth, past the frame, or 0.
fn random_length(rng: &mut StdRng, base: usize, true_len: usize, steps: &[usize]) -> usize {
    let stated = match rng.random_range(0..6) {
        0 => base,
        1 => base + steps.choose(rng).unwrap(),
        2 => true_len.saturating_sub(1),
        3 => true_len + rng.random_range(1..=64),
        4 => 0,
        _ => rng.random_range(0..=true_len + 8),
    };
    stated.min(0xffff)
}

/// Zero padding, random bytes, or a TCP SYN header to a random port (what an
/// attacker would hide after the packet).
fn random_trailer(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..3) {
        0 => vec![0; rng.random_range(1..=46)],
        1 => (0..rng.random_range(1..=40))
            .map(|_| rng.random())
            .collect(),
        _ => {
            let mut tcp = vec![0u8; 20];
            tcp[0..2].copy_from_slice(&rng.random::<u16>().to_be_bytes());
            tcp[2..4].copy_from_slice(&rng.random::<u16>().to_be_bytes());
            tcp[12] = 5 << 4;
            tcp[13] = 0x02;
            tcp
        }
    }
}

/// For a fragment, another fragment of the same datagram: the first one for a
/// later one, a later one for the first.
fn other_fragment(rng: &mut StdRng, spec: &FrameSpec) -> Option<FrameSpec> {
    let mut other = spec.clone();
    let later_offset = rng.random_range(1..=0x1fff);
    match &mut other.l3 {
        L3::V4(v4) if v4.frag_offset != 0 || v4.more_fragments => {
            v4.frag_offset = if v4.frag_offset == 0 { later_offset } else { 0 };
            v4.more_fragments = v4.frag_offset == 0;
        }
        L3::V6(v6) => {
            let fragment = v6.ext.iter_mut().find_map(|ext| match ext {
                Ext::Fragment { offset, more } => Some((offset, more)),
                _ => None,
            })?;
            *fragment.0 = if *fragment.0 == 0 { later_offset } else { 0 };
            *fragment.1 = *fragment.0 == 0;
        }
        _ => return None,
    }
    Some(other)
}

/// Prefixes for one random policy: a few roots and descendants of them, so sets
/// nest and overlap in both families.
fn random_prefix_pool(rng: &mut StdRng) -> Vec<IpNet> {
    let mut pool: Vec<IpNet> = Vec::new();
    for _ in 0..rng.random_range(2..=4) {
        let len = rng.random_range(8..=28);
        let addr = Ipv4Addr::from(rng.random::<u32>());
        pool.push(IpNet::V4(Ipv4Net::new(addr, len).unwrap().trunc()));
    }
    for _ in 0..rng.random_range(1..=3) {
        let len = rng.random_range(32..=64);
        let low: u128 = rng.random::<u128>() & ((1u128 << 96) - 1);
        let addr = Ipv6Addr::from((0x2001_0db8u128 << 96) | low);
        pool.push(IpNet::V6(Ipv6Net::new(addr, len).unwrap().trunc()));
    }
    for _ in 0..rng.random_range(3..=10) {
        let parent = *pool.choose(rng).unwrap();
        if let Some(child) = random_subnet(rng, parent) {
            pool.push(child);
        }
    }
    pool.sort();
    pool.dedup();
    pool
}

/// A random prefix strictly inside `parent` (None for a host route).
fn random_subnet(rng: &mut StdRng, parent: IpNet) -> Option<IpNet> {
    if parent.prefix_len() == parent.max_prefix_len() {
        return None;
    }
    let max = parent.max_prefix_len();
    let len = rng.random_range(parent.prefix_len() + 1..=max.min(parent.prefix_len() + 12));
    let addr = random_addr_in(rng, parent);
    Some(IpNet::new(addr, len).unwrap().trunc())
}

fn random_addr_in(rng: &mut StdRng, net: IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let host = u32::MAX.checked_shr(n.prefix_len().into()).unwrap_or(0);
            let base = u32::from(n.network());
            IpAddr::V4(Ipv4Addr::from(base | (rng.random::<u32>() & host)))
        }
        IpNet::V6(n) => {
            let host = u128::MAX.checked_shr(n.prefix_len().into()).unwrap_or(0);
            let base = u128::from(n.network());
            IpAddr::V6(Ipv6Addr::from(base | (rng.random::<u128>() & host)))
        }
    }
}

fn quoted(net: &IpNet) -> String {
    format!("\"{net}\"")
}

fn random_policy(rng: &mut StdRng) -> String {
    let pool = random_prefix_pool(rng);
    let mut yaml = String::from("version: 1\ninterfaces: [eth0]\n");
    yaml += &format!(
        "default: {}\nmode: {}\n",
        if rng.random_bool(0.5) { "drop" } else { "pass" },
        if rng.random_bool(0.2) {
            "monitor"
        } else {
            "enforce"
        },
    );
    // Sets: cidrs from the pool, sometimes with except holes, which may in turn
    // contain a cidr of the same or another set.
    let mut set_names = Vec::new();
    let mut sets_yaml = String::new();
    for i in 0..rng.random_range(0..=4) {
        let name = format!("s{i}");
        let mut cidrs: Vec<IpNet> = (0..rng.random_range(1..=3))
            .map(|_| *pool.choose(rng).unwrap())
            .collect();
        cidrs.sort();
        cidrs.dedup();
        let mut except: Vec<IpNet> = Vec::new();
        if rng.random_bool(0.4) {
            for _ in 0..rng.random_range(1..=2) {
                let outer = *cidrs.choose(rng).unwrap();
                if let Some(hole) = random_subnet(rng, outer) {
                    except.push(hole);
                    // Sometimes the same set lists a cidr inside its own hole.
                    if rng.random_bool(0.2)
                        && let Some(inner) = random_subnet(rng, hole)
                    {
                        cidrs.push(inner);
                    }
                }
            }
        }
        except.sort();
        except.dedup();
        cidrs.sort();
        cidrs.dedup();
        let list = |nets: &[IpNet]| nets.iter().map(quoted).collect::<Vec<_>>().join(", ");
        if except.is_empty() && rng.random_bool(0.5) {
            sets_yaml += &format!("  {name}: [{}]\n", list(&cidrs));
        } else {
            sets_yaml += &format!("  {name}:\n    cidrs: [{}]\n", list(&cidrs));
            if !except.is_empty() {
                sets_yaml += &format!("    except: [{}]\n", list(&except));
            }
        }
        // Holes become interesting prefixes for sources too.
        set_names.push(name);
    }
    if !sets_yaml.is_empty() {
        yaml += "sets:\n";
        yaml += &sets_yaml;
    }
    let group = |rng: &mut StdRng, max: usize| -> String {
        let count = rng.random_range(1..=max);
        let mut refs: Vec<String> = Vec::new();
        for _ in 0..count {
            let pick = rng.random_range(0..10);
            let r = if pick < 4 && !set_names.is_empty() {
                set_names.choose(rng).unwrap().clone()
            } else if pick == 4 {
                ["airbyte-us", "airbyte-eu"]
                    .choose(rng)
                    .unwrap()
                    .to_string()
            } else {
                quoted(pool.choose(rng).unwrap())
            };
            if !refs.contains(&r) {
                refs.push(r);
            }
        }
        format!("[{}]", refs.join(", "))
    };
    if rng.random_bool(0.3) {
        yaml += &format!("management: {}\n", group(rng, 2));
    }
    if rng.random_bool(0.4) {
        yaml += &format!("deny: {}\n", group(rng, 2));
    }
    // Ports from a small per-policy pool, so rules overlap.
    let port_pool: Vec<u16> = (0..6)
        .map(|_| {
            *[
                22,
                53,
                80,
                443,
                5432,
                8000,
                60000,
                1,
                65535,
                rng.random_range(1..=65535),
            ]
            .choose(rng)
            .unwrap()
        })
        .collect();
    yaml += "rules:\n";
    for i in 0..rng.random_range(1..=10) {
        let mut ports = Vec::new();
        for _ in 0..rng.random_range(1..=3) {
            let first = *port_pool.choose(rng).unwrap();
            let proto = *["/tcp", "/udp", ""].choose(rng).unwrap();
            let spec = if rng.random_bool(0.3) {
                let last = first.saturating_add(rng.random_range(0..=300));
                format!("{first}-{last}{proto}")
            } else {
                format!("{first}{proto}")
            };
            if !ports.contains(&spec) {
                ports.push(spec);
            }
        }
        yaml += &format!(
            "  - name: r{i}\n    ports: [{}]\n    from: {}\n",
            ports.join(", "),
            group(rng, 3)
        );
    }
    yaml
}

/// Every prefix the policy mentions (cidrs and excepts), to aim sources at.
fn policy_nets(policy: &Policy) -> Vec<IpNet> {
    let groups = std::iter::once(&policy.management)
        .chain(std::iter::once(&policy.deny))
        .chain(policy.rules.iter().map(|r| &r.from));
    let mut nets: Vec<IpNet> = groups
        .flat_map(|g| g.sets.iter())
        .flat_map(|s| s.cidrs.iter().chain(&s.except))
        .copied()
        .collect();
    nets.sort();
    nets.dedup();
    nets
}

/// How the program finds each family's flags (IPv4 at index 0, IPv6 at 1)
/// under the policy in force, from its config as the kernel holds it.
fn flags_from(h: &Harness) -> [FlagsFrom; 2] {
    let config = h.config_in_force();
    [(UNFLAGGED_V4, FLAG_TABLE_V4), (UNFLAGGED_V6, FLAG_TABLE_V6)].map(|(unflagged, table)| {
        if config.unflagged & unflagged != 0 {
            FlagsFrom::Unflagged
        } else if config.flag_tables & table != 0 {
            FlagsFrom::FlagTable
        } else {
            FlagsFrom::FullLookup
        }
    })
}

fn policy_ports(policy: &Policy) -> Vec<PortRange> {
    policy
        .rules
        .iter()
        .flat_map(|r| r.ports.iter().copied())
        .collect()
}

/// A source aimed at the policy's prefixes: their first and last addresses, the
/// addresses just outside them, or anywhere inside; sometimes anywhere at all.
fn random_source(rng: &mut StdRng, nets: &[IpNet]) -> IpAddr {
    if nets.is_empty() || rng.random_bool(0.2) {
        return if rng.random_bool(0.5) {
            IpAddr::V4(Ipv4Addr::from(rng.random::<u32>()))
        } else {
            random_addr_in(rng, "2001:db8::/32".parse().unwrap())
        };
    }
    let net = *nets.choose(rng).unwrap();
    match rng.random_range(0..6) {
        0 => net.network(),
        1 => net.broadcast(),
        2 => step(net.network(), -1),
        3 => step(net.broadcast(), 1),
        _ => random_addr_in(rng, net),
    }
}

fn step(addr: IpAddr, by: i8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
            u32::from(a).wrapping_add_signed(i32::from(by)),
        )),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(
            u128::from(a).wrapping_add_signed(i128::from(by)),
        )),
    }
}

fn random_port(rng: &mut StdRng, ranges: &[PortRange]) -> u16 {
    if ranges.is_empty() || rng.random_bool(0.3) {
        return rng.random();
    }
    let range = ranges.choose(rng).unwrap();
    match rng.random_range(0..5) {
        0 => range.first,
        1 => range.last,
        2 => range.first.wrapping_sub(1),
        3 => range.last.wrapping_add(1),
        _ => rng.random_range(range.first..=range.last),
    }
}

const ICMP_TYPES: [u8; 9] = [0, 3, 4, 5, 8, 11, 12, 13, 255];
const ICMPV6_TYPES: [u8; 22] = [
    0, 1, 2, 3, 4, 5, 127, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 142, 143, 144,
    255,
];

fn random_ext(rng: &mut StdRng) -> Ext {
    match rng.random_range(0..5) {
        0 => Ext::HopByHop {
            len: rng.random_range(0..=3),
        },
        1 => Ext::Routing {
            len: rng.random_range(0..=4),
        },
        2 => Ext::DestOpts {
            len: rng.random_range(0..=3),
        },
        3 => Ext::Fragment {
            offset: if rng.random_bool(0.5) {
                0
            } else {
                rng.random_range(1..=0x1fff)
            },
            more: rng.random_bool(0.5),
        },
        _ => Ext::Ah {
            len: 2 * rng.random_range(1..=4),
        },
    }
}

/// TCP flag bytes: a connection's SYN (most), the segments that can answer one
/// (SYN-ACK, ACK, data, FIN, RST with and without ACK), SYN with other flags but
/// no ACK, none at all, and all of them.
const TCP_FLAGS: [u8; 12] = [
    0x02, 0x02, 0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x03, 0x00, 0xff,
];

/// A random frame aimed at the policy, before any length-field variation.
fn random_base_frame(rng: &mut StdRng, nets: &[IpNet], ranges: &[PortRange]) -> FrameSpec {
    if rng.random_bool(0.02) {
        return if rng.random_bool(0.5) {
            FrameSpec::arp()
        } else {
            FrameSpec::raw(ETH_P_LLDP, rng.random_range(0..64))
        };
    }
    let src = random_source(rng, nets);
    let v6 = src.is_ipv6();
    let port = random_port(rng, ranges);
    let transport = match rng.random_range(0..100) {
        0..45 => Transport::Tcp {
            dst_port: port,
            flags: *TCP_FLAGS.choose(rng).unwrap(),
        },
        45..75 => Transport::Udp { dst_port: port },
        75..90 if v6 => Transport::Icmpv6 {
            icmp_type: *ICMPV6_TYPES.choose(rng).unwrap(),
        },
        75..90 => Transport::Icmp {
            icmp_type: *ICMP_TYPES.choose(rng).unwrap(),
        },
        90..92 if v6 => Transport::Icmp { icmp_type: 3 },
        90..92 => Transport::Icmpv6 { icmp_type: 135 },
        _ => Transport::Other {
            protocol: *[IPPROTO_GRE, IPPROTO_ESP, IPPROTO_SCTP, IPPROTO_NONE, 255]
                .choose(rng)
                .unwrap(),
            payload: rng.random_range(0..32),
        },
    };
    let mut spec = FrameSpec::ip(src, transport);
    spec.tags = match rng.random_range(0..100) {
        0..10 => vec![
            *[Tag::Dot1Q, Tag::Dot1Ad, Tag::QinQLegacy]
                .choose(rng)
                .unwrap(),
        ],
        10..15 => vec![Tag::Dot1Ad, Tag::Dot1Q],
        15 => vec![Tag::Dot1Q; 3],
        _ => Vec::new(),
    };
    if v6 {
        if rng.random_bool(0.25) {
            let count = if rng.random_bool(0.9) {
                rng.random_range(1..=4)
            } else {
                rng.random_range(5..=IPV6_MAX_EXT_HEADERS + 2)
            };
            for _ in 0..count {
                spec = spec.ext(random_ext(rng));
            }
        }
        if rng.random_bool(0.01) {
            spec = spec.version(4);
        }
    } else {
        if rng.random_bool(0.15) {
            spec = spec.options(rng.random_range(1..=10));
        }
        if rng.random_bool(0.1) {
            let offset = match rng.random_range(0..4) {
                0 => 0,
                1 => 1,
                _ => rng.random_range(2..=0x1fff),
            };
            spec = spec.fragment(offset, rng.random_bool(0.5));
        }
        match rng.random_range(0..100) {
            0 => spec = spec.ihl(rng.random_range(0..5)),
            1 => spec = spec.version(6),
            2 => spec = spec.total_len(rng.random_range(0..20)),
            _ => {}
        }
    }
    if rng.random_bool(0.06) {
        let full = spec.full_len();
        spec = spec.truncate(rng.random_range(14..full));
    }
    spec
}
