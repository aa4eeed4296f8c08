//! The compiler: a validated [`Policy`] in, the exact contents of the kernel maps
//! out. One longest-prefix lookup per family gives a source's membership in every
//! rule and in management/deny; one array lookup per protocol gives the rules
//! covering a port. The datapath's verdict is then a couple of mask operations.

pub mod flags;
mod ports;
mod prebuilt;
mod prefixes;
pub mod ranges;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use airlock_common::maps::{
    DEFAULT_DROP, DEFAULT_PASS, GenConfig, MAX_CLASSES, MAX_PREFIXES_V4, MAX_PREFIXES_V6,
    MAX_RULES, MODE_ENFORCE, MODE_MONITOR, SourceEntry,
};
use airlock_common::{SourceRangeV4, SourceRangeV6};
use ipnet::IpNet;
use serde::Serialize;

use crate::policy::{AddrSet, DefaultAction, Mode, Policy, Proto, SourceGroup};
pub use ports::PortMap;
#[cfg(test)]
use prebuilt::build_tables;
pub use prebuilt::{Plans, Prebuilt, plan_tables};

/// One compiled prefix: `addr/prefix_len` → `value`, matched longest-first (the
/// loader lowers these into source tables, see [`ranges`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixEntry<const N: usize> {
    /// Network address, network byte order, host bits zero.
    pub addr: [u8; N],
    /// Prefix length in bits.
    pub prefix_len: u8,
    /// What the prefix says about a source.
    pub value: SourceEntry,
}

impl<const N: usize> PrefixEntry<N> {
    /// Whether `addr` (network byte order) falls inside this prefix.
    fn matches(&self, addr: &[u8; N]) -> bool {
        let full = usize::from(self.prefix_len / 8);
        let rest = self.prefix_len % 8;
        if self.addr[..full] != addr[..full] {
            return false;
        }
        if rest == 0 {
            return true;
        }
        let m = 0xffu8 << (8 - rest);
        self.addr[full] & m == addr[full] & m
    }
}

/// A compiled policy: the values of every map of one generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// IPv4 source prefixes, sorted by address then prefix length.
    pub v4: Vec<PrefixEntry<4>>,
    /// IPv6 source prefixes, sorted by address then prefix length.
    pub v6: Vec<PrefixEntry<16>>,
    /// TCP destination port → rule mask.
    pub tcp_ports: PortMap,
    /// UDP destination port → rule mask.
    pub udp_ports: PortMap,
    /// The generation's config (`valid` = 1).
    pub config: GenConfig,
    /// Rule names by bit index.
    pub rule_names: Vec<String>,
    stats: CompileStats,
    /// Whether any IPv4 and any IPv6 entry carries a management or deny flag,
    /// as the fold saw the answers it kept (what `flags::set` would find).
    flagged: (bool, bool),
    /// The source tables, once built ahead of the write (see [`Prebuilt`]).
    prebuilt: Prebuilt,
}

/// Why a policy does not fit the kernel maps.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    /// More rules than bits in the rule mask.
    #[error("too many rules: {count} (the limit is {limit})")]
    TooManyRules {
        /// Rules in the policy.
        count: usize,
        /// [`MAX_RULES`].
        limit: usize,
    },
    /// More trie entries than the map holds.
    #[error("the policy compiles to {count} {family} prefixes, more than the limit of {limit}")]
    TooManyPrefixes {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// Compiled entries.
        count: usize,
        /// Map capacity.
        limit: usize,
    },
    /// More distinct answers in a family than its class table holds (the loader
    /// refuses the same when it builds the tables; checked here so that `validate`
    /// and `--dry-run` refuse it too).
    #[error(transparent)]
    TooManyClasses(#[from] ranges::TooManyClasses),
    /// An IPv6 directory slot cut into more ranges than its run holds (refused
    /// with the plan; `validate` and `--dry-run` plan a family large enough
    /// for it to check).
    #[error(transparent)]
    OverfullSlot(#[from] ranges::OverfullSlot),
}

/// Prefix counts of one source group, per family, as written (before folding).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FamilyCounts {
    /// IPv4 cidrs and excepts.
    pub v4: usize,
    /// IPv6 cidrs and excepts.
    pub v6: usize,
}

impl FamilyCounts {
    /// The cidrs and excepts of `group`'s sets. Each set is counted once however
    /// many groups name it (`counted`, by identity): a large imported list that many
    /// rules name is read once, not once per rule.
    fn of(group: &SourceGroup, counted: &mut HashMap<*const AddrSet, FamilyCounts>) -> Self {
        let mut c = FamilyCounts::default();
        for set in &group.sets {
            let own = counted
                .entry(std::ptr::from_ref(&**set))
                .or_insert_with(|| Self::of_set(set));
            c.v4 += own.v4;
            c.v6 += own.v6;
        }
        c
    }

    /// The cidrs and excepts of one set, per family.
    pub(crate) fn of_set(set: &AddrSet) -> Self {
        let mut own = FamilyCounts::default();
        for net in set.cidrs.iter().chain(&set.except) {
            match net {
                IpNet::V4(_) => own.v4 += 1,
                IpNet::V6(_) => own.v6 += 1,
            }
        }
        own
    }
}

/// Per-rule figures for `apply --dry-run`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleStats {
    /// Rule name.
    pub name: String,
    /// Ports, as written in the policy syntax.
    pub ports: Vec<String>,
    /// Source prefixes of the rule's `from` (before folding).
    pub prefixes: FamilyCounts,
}

/// What the compiler produced, for `apply --dry-run` and `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompileStats {
    /// Number of rules.
    pub rules: usize,
    /// Trie entries actually written, per family.
    pub entries: FamilyCounts,
    /// Distinct prefixes before redundant entries were pruned, per family.
    pub distinct_prefixes: FamilyCounts,
    /// Prefixes of `management` (before folding).
    pub management: FamilyCounts,
    /// Prefixes of `deny` (before folding).
    pub deny: FamilyCounts,
    /// Per-rule figures, in rule order.
    pub per_rule: Vec<RuleStats>,
    /// Port map segments per protocol.
    pub tcp_segments: usize,
    /// Port map segments per protocol.
    pub udp_segments: usize,
}

/// Compiles a validated policy into map contents.
pub fn compile(policy: &Policy) -> Result<Compiled, CompileError> {
    compile_with(policy, true)
}

/// Like [`compile`], but keeps one trie entry per distinct prefix instead of
/// pruning entries that repeat their nearest ancestor's value. Lookups give the
/// same answers; tests use it to check exactly that.
pub fn compile_unpruned(policy: &Policy) -> Result<Compiled, CompileError> {
    compile_with(policy, false)
}

/// [`compile`] for an apply about to write the policy: each family's source
/// table is planned (its ranges and classes, what [`plan_tables`] would make) on
/// the thread that folded the family, as soon as it is folded, and kept in the
/// result for the loader to take and lay out ([`Prebuilt`]). The smaller
/// family's plan is then made while the larger one still folds, instead of both
/// after both folds.
pub fn compile_for_apply(policy: &Policy) -> Result<Compiled, CompileError> {
    compile_with_tables(policy, true, true)
}

fn compile_with(policy: &Policy, prune: bool) -> Result<Compiled, CompileError> {
    compile_with_tables(policy, prune, false)
}

fn compile_with_tables(policy: &Policy, prune: bool, plan: bool) -> Result<Compiled, CompileError> {
    if policy.rules.len() > MAX_RULES {
        return Err(CompileError::TooManyRules {
            count: policy.rules.len(),
            limit: MAX_RULES,
        });
    }
    // A family over its prefix limit is refused below: no table is made of it.
    let (folded, table_v4, table_v6) = prefixes::fold_then(
        policy,
        prune,
        |v4| {
            (plan && v4.len() <= MAX_PREFIXES_V4 as usize)
                .then(|| ranges::plan::<SourceRangeV4, 4>(v4))
        },
        |v6| {
            (plan && v6.len() <= MAX_PREFIXES_V6 as usize)
                .then(|| ranges::plan::<SourceRangeV6, 16>(v6))
        },
    );
    check_limit("IPv4", folded.v4.len(), MAX_PREFIXES_V4)?;
    check_limit("IPv6", folded.v6.len(), MAX_PREFIXES_V6)?;
    let (v4, v6) = (folded.v4, folded.v6);
    check_classes("IPv4", folded.classes_v4)?;
    check_classes("IPv6", folded.classes_v6)?;
    // An IPv6 slot denser than its run holds: found by the plan, made here
    // without one (`validate`, `--dry-run`) when the family is large enough.
    let overfull = match &table_v6 {
        Some(Err(ranges::PlanError::OverfullSlot(overfull))) => Some(overfull.clone()),
        None if ranges::ipv6_slot_may_overfill(v6.len()) => {
            match ranges::plan::<SourceRangeV6, 16>(&v6) {
                Err(ranges::PlanError::OverfullSlot(overfull)) => Some(overfull),
                _ => None,
            }
        }
        _ => None,
    };
    if let Some(overfull) = overfull {
        return Err(overfull.into());
    }
    let ports_of = |proto: Proto| {
        PortMap::build(policy.rules.iter().enumerate().flat_map(move |(i, r)| {
            r.ports
                .iter()
                .filter(move |p| p.proto == proto)
                .map(move |p| (p.first, p.last, i as u32))
        }))
    };
    let tcp_ports = ports_of(Proto::Tcp);
    let udp_ports = ports_of(Proto::Udp);
    let config = GenConfig {
        default_action: match policy.default {
            DefaultAction::Pass => DEFAULT_PASS,
            DefaultAction::Drop => DEFAULT_DROP,
        },
        mode: match policy.mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Monitor => MODE_MONITOR,
        },
        rule_count: policy.rules.len() as u32,
        valid: 1,
        // Set by the loader from the tables it builds (compile::ranges).
        ..GenConfig::default()
    };
    // The fold counted each set it folded: the figures take those counts
    // instead of a second pass over a large list.
    let mut counted = folded.set_counts;
    let stats = CompileStats {
        rules: policy.rules.len(),
        entries: FamilyCounts {
            v4: v4.len(),
            v6: v6.len(),
        },
        distinct_prefixes: FamilyCounts {
            v4: folded.distinct_v4,
            v6: folded.distinct_v6,
        },
        management: FamilyCounts::of(&policy.management, &mut counted),
        deny: FamilyCounts::of(&policy.deny, &mut counted),
        per_rule: policy
            .rules
            .iter()
            .map(|r| RuleStats {
                name: r.name.clone(),
                ports: r.ports.iter().map(ToString::to_string).collect(),
                prefixes: FamilyCounts::of(&r.from, &mut counted),
            })
            .collect(),
        tcp_segments: tcp_ports.segments().len(),
        udp_segments: udp_ports.segments().len(),
    };
    Ok(Compiled {
        v4,
        v6,
        tcp_ports,
        udp_ports,
        config,
        rule_names: policy.rules.iter().map(|r| r.name.clone()).collect(),
        stats,
        flagged: (folded.flagged_v4, folded.flagged_v6),
        prebuilt: match (table_v4, table_v6) {
            (Some(v4), Some(v6)) => Prebuilt::ready(v4, v6),
            _ => Prebuilt::default(),
        },
    })
}

fn check_limit(family: &'static str, count: usize, limit: u32) -> Result<(), CompileError> {
    if count > limit as usize {
        return Err(CompileError::TooManyPrefixes {
            family,
            count,
            limit: limit as usize,
        });
    }
    Ok(())
}

/// The classes the loader's source table of `entries` numbers: the empty answer
/// (class 0, for the gaps) and every distinct value of a prefix, as
/// `ranges::table` interns them. Counted without building the table.
#[cfg(test)]
fn class_count<const N: usize>(entries: &[PrefixEntry<N>]) -> usize {
    let mut classes = ClassCount::default();
    for entry in entries {
        classes.see(entry.value);
    }
    classes.count()
}

/// The distinct answers among values seen one by one, and the empty one: what
/// [`class_count`] finds in a family's entries, counted by the fold as it
/// makes them (the entries are then in cache, and the families are counted on
/// their folds' threads, not in a pass of their own after both).
pub(crate) struct ClassCount {
    seen: HashSet<SourceEntry>,
    /// Most policies have a handful of answers, interleaved in address order: a
    /// small table of answers already seen spares the hash (a 2M-prefix family
    /// takes ~50 ms hashed every time, a few ms this way).
    recent: [SourceEntry; 256],
}

impl Default for ClassCount {
    fn default() -> Self {
        ClassCount {
            seen: HashSet::from([SourceEntry::default()]),
            recent: [SourceEntry::default(); 256],
        }
    }
}

impl ClassCount {
    pub(crate) fn see(&mut self, v: SourceEntry) {
        let slot = (v.rules ^ (v.rules >> 29) ^ (v.rules >> 47) ^ u64::from(v.flags)) as u8;
        if self.recent[usize::from(slot)] != v {
            self.recent[usize::from(slot)] = v;
            self.seen.insert(v);
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.seen.len()
    }

    /// Whether an answer seen carries a management or deny flag.
    pub(crate) fn flagged(&self) -> bool {
        self.seen.iter().any(|v| v.flags & flags::FLAGS != 0)
    }
}

fn check_classes(family: &'static str, found: usize) -> Result<(), ranges::TooManyClasses> {
    if found > MAX_CLASSES as usize {
        return Err(ranges::TooManyClasses {
            family,
            found,
            max: MAX_CLASSES,
        });
    }
    Ok(())
}

impl Compiled {
    /// The source entry the kernel's source table gives `ip`: the value of the
    /// longest matching prefix, or all-zero when nothing matches. A linear scan,
    /// obviously a longest match; fine for `explain` and tests.
    pub fn lookup(&self, ip: IpAddr) -> SourceEntry {
        fn longest<const N: usize>(entries: &[PrefixEntry<N>], addr: [u8; N]) -> SourceEntry {
            entries
                .iter()
                .filter(|e| e.matches(&addr))
                .max_by_key(|e| e.prefix_len)
                .map(|e| e.value)
                .unwrap_or_default()
        }
        match ip {
            IpAddr::V4(a) => longest(&self.v4, a.octets()),
            IpAddr::V6(a) => longest(&self.v6, a.octets()),
        }
    }

    /// The mask of rules covering destination `port` of `proto`.
    pub fn port_mask(&self, proto: Proto, port: u16) -> u64 {
        match proto {
            Proto::Tcp => self.tcp_ports.mask_at(port),
            Proto::Udp => self.udp_ports.mask_at(port),
        }
    }

    /// The generation's flag tables written into `config`, from the entries
    /// (`flags::set`), skipping a family the fold found no flag in.
    pub fn set_flag_tables(&self, config: &mut GenConfig) {
        flags::set_known(config, &self.v4, &self.v6, self.flagged);
    }

    /// Figures about the compiled policy.
    pub fn stats(&self) -> CompileStats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests;
