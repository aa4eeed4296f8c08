//! `airlock diff`: what a new policy changes against the one in force.
//!
//! Names (mode, default, rules, their ports and `from` sets, `management` and `deny`
//! set names) come from the summaries. Addresses come from the source tables: the
//! policy in force is read back from the kernel, the new one compiled, and the two
//! compared by what they *mean*, not entry by entry (the compiler folds every set
//! into one trie, so one new rule can split entries of rules it does not change).
//!
//! The comparison: every prefix in either trie marks a region (the prefix minus the
//! more specific prefixes of either trie) where both tries' longest matches are
//! constant, so membership of a source in a rule (or management, or deny) is constant
//! there under each policy. A prefix is reported as added or removed for a rule when
//! membership differs between the two policies in its region and differs from the
//! region around it (so a /16 inside an added /8 is not listed again).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use airlock_common::{SRC_DENY, SRC_MANAGEMENT, SourceEntry};
use serde::Serialize;

use crate::{compile::PrefixEntry, loader::PolicySummary};

/// One side of the comparison: a summary and the trie entries it describes.
#[derive(Clone, Debug, Default)]
pub struct Side {
    pub summary: PolicySummary,
    pub v4: Vec<PrefixEntry<4>>,
    pub v6: Vec<PrefixEntry<16>>,
}

/// A value that changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub from: String,
    pub to: String,
}

/// Prefixes of one family gained or lost, at most `limit` of them listed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PrefixList {
    pub count: usize,
    pub shown: Vec<String>,
}

/// Sources gained and lost, per family.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PrefixChanges {
    pub added_v4: PrefixList,
    pub added_v6: PrefixList,
    pub removed_v4: PrefixList,
    pub removed_v6: PrefixList,
}

impl PrefixChanges {
    pub fn is_empty(&self) -> bool {
        self.added_v4.count + self.added_v6.count + self.removed_v4.count + self.removed_v6.count
            == 0
    }
}

/// A rule added, removed or changed (matched by name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleDiff {
    pub name: String,
    pub ports_added: Vec<String>,
    pub ports_removed: Vec<String>,
    pub from_added: Vec<String>,
    pub from_removed: Vec<String>,
    pub prefixes: PrefixChanges,
}

/// `management` or `deny`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GroupDiff {
    pub sets_added: Vec<String>,
    pub sets_removed: Vec<String>,
    pub prefixes: PrefixChanges,
}

impl GroupDiff {
    pub fn is_empty(&self) -> bool {
        self.sets_added.is_empty() && self.sets_removed.is_empty() && self.prefixes.is_empty()
    }
}

/// Everything a new policy changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    pub changed: bool,
    pub mode: Option<Change>,
    pub default: Option<Change>,
    pub management: GroupDiff,
    pub deny: GroupDiff,
    pub rules_added: Vec<RuleDiff>,
    pub rules_removed: Vec<RuleDiff>,
    pub rules_changed: Vec<RuleDiff>,
}

fn change(old: &str, new: &str) -> Option<Change> {
    (old != new).then(|| Change {
        from: old.to_owned(),
        to: new.to_owned(),
    })
}

fn added_removed(old: &[String], new: &[String]) -> (Vec<String>, Vec<String>) {
    let o: BTreeSet<&String> = old.iter().collect();
    let n: BTreeSet<&String> = new.iter().collect();
    (
        n.difference(&o).map(|s| (*s).clone()).collect(),
        o.difference(&n).map(|s| (*s).clone()).collect(),
    )
}

/// Which sources a membership test picks out of a trie value.
type Member<'a> = &'a dyn Fn(&SourceEntry) -> bool;

/// Compares `old` (`None`: no filter in force) with `new`, listing at most `limit`
/// prefixes per list.
pub fn diff(old: Option<&Side>, new: &Side, limit: usize) -> PolicyDiff {
    let empty = Side::default();
    let old_side = old.unwrap_or(&empty);
    let (o, n) = (&old_side.summary, &new.summary);
    let mut out = PolicyDiff {
        mode: old.and_then(|_| change(&o.mode, &n.mode)),
        default: old.and_then(|_| change(&o.default, &n.default)),
        ..PolicyDiff::default()
    };
    let prefixes =
        |m_old: Member<'_>, m_new: Member<'_>| regions(old_side, new, m_old, m_new, limit);
    let flag = |f: u32| move |e: &SourceEntry| e.flags & f != 0;
    for (group, names, bit) in [
        (
            &mut out.management,
            (&o.management, &n.management),
            SRC_MANAGEMENT,
        ),
        (&mut out.deny, (&o.deny, &n.deny), SRC_DENY),
    ] {
        let (added, removed) = added_removed(names.0, names.1);
        group.sets_added = added;
        group.sets_removed = removed;
        group.prefixes = prefixes(&flag(bit), &flag(bit));
    }
    let index = |s: &PolicySummary| -> BTreeMap<String, usize> {
        s.rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), i))
            .collect()
    };
    let (old_index, new_index) = (index(o), index(n));
    let bit = |i: Option<usize>| {
        move |e: &SourceEntry| i.is_some_and(|i| i < 64 && e.rules & (1u64 << i) != 0)
    };
    let nothing = |_: &SourceEntry| false;
    for rule in &n.rules {
        let Some(&oi) = old_index.get(&rule.name) else {
            out.rules_added.push(RuleDiff {
                name: rule.name.clone(),
                ports_added: rule.ports.clone(),
                from_added: rule.from.clone(),
                prefixes: prefixes(&nothing, &bit(new_index.get(&rule.name).copied())),
                ..RuleDiff::default()
            });
            continue;
        };
        let before = &o.rules[oi];
        let (ports_added, ports_removed) = added_removed(&before.ports, &rule.ports);
        let (from_added, from_removed) = added_removed(&before.from, &rule.from);
        let d = RuleDiff {
            name: rule.name.clone(),
            ports_added,
            ports_removed,
            from_added,
            from_removed,
            prefixes: prefixes(&bit(Some(oi)), &bit(new_index.get(&rule.name).copied())),
        };
        if !(d.ports_added.is_empty()
            && d.ports_removed.is_empty()
            && d.from_added.is_empty()
            && d.from_removed.is_empty()
            && d.prefixes.is_empty())
        {
            out.rules_changed.push(d);
        }
    }
    for rule in &o.rules {
        if !new_index.contains_key(&rule.name) {
            out.rules_removed.push(RuleDiff {
                name: rule.name.clone(),
                ports_removed: rule.ports.clone(),
                from_removed: rule.from.clone(),
                prefixes: prefixes(&bit(old_index.get(&rule.name).copied()), &nothing),
                ..RuleDiff::default()
            });
        }
    }
    out.changed = old.is_none()
        || out.mode.is_some()
        || out.default.is_some()
        || !out.management.is_empty()
        || !out.deny.is_empty()
        || !out.rules_added.is_empty()
        || !out.rules_removed.is_empty()
        || !out.rules_changed.is_empty();
    out
}

fn regions(
    old: &Side,
    new: &Side,
    m_old: Member<'_>,
    m_new: Member<'_>,
    limit: usize,
) -> PrefixChanges {
    let (added_v4, removed_v4) = family(&old.v4, &new.v4, m_old, m_new);
    let (added_v6, removed_v6) = family(&old.v6, &new.v6, m_old, m_new);
    let list = |nets: Vec<String>| PrefixList {
        count: nets.len(),
        shown: nets.into_iter().take(limit).collect(),
    };
    PrefixChanges {
        added_v4: list(added_v4),
        added_v6: list(added_v6),
        removed_v4: list(removed_v4),
        removed_v6: list(removed_v6),
    }
}

fn masked<const N: usize>(addr: &[u8; N], len: u8) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, byte) in addr.iter().enumerate() {
        let bits = (usize::from(len)).saturating_sub(i * 8).min(8);
        out[i] = if bits == 0 {
            0
        } else {
            byte & (0xffu8 << (8 - bits))
        };
    }
    out
}

type Trie<const N: usize> = HashMap<([u8; N], u8), SourceEntry>;

/// The value of the longest prefix of `trie` containing `addr/len` (itself included).
fn longest<const N: usize>(trie: &Trie<N>, addr: &[u8; N], len: u8) -> Option<SourceEntry> {
    (0..=len)
        .rev()
        .find_map(|l| trie.get(&(masked(addr, l), l)).copied())
}

fn show<const N: usize>(addr: [u8; N], len: u8) -> String {
    if N == 4 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&addr[..4]);
        format!("{}/{len}", Ipv4Addr::from(a))
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&addr[..16]);
        format!("{}/{len}", Ipv6Addr::from(a))
    }
}

/// Whether `inner` lies inside `outer`.
fn contains<const N: usize>(outer: &([u8; N], u8), inner: &([u8; N], u8)) -> bool {
    inner.1 >= outer.1 && masked(&inner.0, outer.1) == outer.0
}

/// Appends `net` minus `holes` (prefixes inside it) as CIDRs.
fn carve<const N: usize>(net: ([u8; N], u8), holes: &[([u8; N], u8)], out: &mut Vec<String>) {
    let inside: Vec<([u8; N], u8)> = holes
        .iter()
        .filter(|h| contains(&net, h))
        .copied()
        .collect();
    if inside.iter().any(|h| h.1 == net.1) {
        return;
    }
    if inside.is_empty() || usize::from(net.1) >= N * 8 {
        out.push(show(net.0, net.1));
        return;
    }
    let len = net.1 + 1;
    let mut right = net.0;
    right[usize::from(net.1 / 8)] |= 0x80 >> (net.1 % 8);
    carve((net.0, len), &inside, out);
    carve((right, len), &inside, out);
}

/// (added, removed) prefixes of one family.
fn family<const N: usize>(
    old: &[PrefixEntry<N>],
    new: &[PrefixEntry<N>],
    m_old: Member<'_>,
    m_new: Member<'_>,
) -> (Vec<String>, Vec<String>) {
    let index = |entries: &[PrefixEntry<N>]| -> Trie<N> {
        entries
            .iter()
            .map(|e| ((e.addr, e.prefix_len), e.value))
            .collect()
    };
    let (o, n) = (index(old), index(new));
    let keys: BTreeSet<([u8; N], u8)> = o.keys().chain(n.keys()).copied().collect();
    let state = |addr: &[u8; N], len: u8| {
        (
            longest(&o, addr, len).is_some_and(|v| m_old(&v)),
            longest(&n, addr, len).is_some_and(|v| m_new(&v)),
        )
    };
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for &(addr, len) in &keys {
        let here = state(&addr, len);
        if here.0 == here.1 {
            continue;
        }
        // The region around this prefix: the longest prefix of either trie
        // strictly containing it. Same state: this prefix is part of that change.
        let around = (0..len)
            .rev()
            .find(|&l| {
                let key = (masked(&addr, l), l);
                o.contains_key(&key) || n.contains_key(&key)
            })
            .map_or((false, false), |l| state(&masked(&addr, l), l));
        if around == here {
            continue;
        }
        // Holes: the outermost prefixes inside this one whose state differs (they
        // are reported on their own if they changed the other way).
        let mut last = addr;
        for (i, byte) in last.iter_mut().enumerate() {
            let bits = usize::from(len).saturating_sub(i * 8).min(8);
            *byte |= if bits >= 8 { 0 } else { 0xffu8 >> bits };
        }
        let mut holes: Vec<([u8; N], u8)> = Vec::new();
        for &inner in keys.range((addr, len + 1)..=(last, u8::MAX)) {
            if !contains(&(addr, len), &inner) || holes.iter().any(|h| contains(h, &inner)) {
                continue;
            }
            if state(&inner.0, inner.1) != here {
                holes.push(inner);
            }
        }
        let out = if here.1 { &mut added } else { &mut removed };
        carve((addr, len), &holes, out);
    }
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile, policy::parse_str};
    use std::path::Path;

    fn side(yaml: &str) -> Side {
        let policy = parse_str(yaml, Path::new("p.yaml")).unwrap();
        let compiled = compile::compile(&policy).unwrap();
        Side {
            summary: PolicySummary::describe(&policy, &compiled, Path::new("p.yaml")),
            v4: compiled.v4.clone(),
            v6: compiled.v6.clone(),
        }
    }

    const OLD: &str = r#"
version: 1
interfaces: [eth0]
management: [203.0.113.7]
sets:
  office: [198.51.100.0/24, "2001:db8:100::/48"]
  partners: [192.0.2.0/24]
rules:
  - name: db
    ports: [5432/tcp]
    from: [office]
  - name: web
    ports: [8000/tcp]
    from: [10.0.0.0/8]
"#;

    #[test]
    fn identical_policies_have_no_changes() {
        let d = diff(Some(&side(OLD)), &side(OLD), 10);
        assert!(!d.changed, "{d:#?}");
    }

    #[test]
    fn rules_ports_sets_and_prefixes() {
        let new = OLD
            .replace("from: [office]", "from: [partners]")
            .replace("ports: [5432/tcp]", "ports: [5432/tcp, 5433/tcp]")
            .replace("management: [203.0.113.7]", "default: drop\ndeny: [192.0.2.66]")
            .replace(
                "  - name: web\n    ports: [8000/tcp]\n    from: [10.0.0.0/8]\n",
                "  - name: api\n    ports: [9000/tcp]\n    from: [\"2001:db8:1::/48\", 10.0.0.0/8]\n",
            );
        let d = diff(Some(&side(OLD)), &side(&new), 10);
        assert!(d.changed);
        assert_eq!(
            d.default,
            Some(Change {
                from: "pass".into(),
                to: "drop".into()
            })
        );
        assert_eq!(d.management.sets_removed, ["203.0.113.7"]);
        assert_eq!(d.management.prefixes.removed_v4.shown, ["203.0.113.7/32"]);
        assert_eq!(d.deny.sets_added, ["192.0.2.66"]);
        assert_eq!(d.deny.prefixes.added_v4.shown, ["192.0.2.66/32"]);
        assert_eq!(d.rules_changed.len(), 1);
        let db = &d.rules_changed[0];
        assert_eq!(db.name, "db");
        assert_eq!(db.ports_added, ["5433/tcp"]);
        assert!(db.ports_removed.is_empty());
        assert_eq!(
            (db.from_added.as_slice(), db.from_removed.as_slice()),
            (&["partners".to_owned()][..], &["office".to_owned()][..])
        );
        // The deny hole inside partners is not a source of rule db any more... but
        // deny wins anyway; membership in `from` is what is compared.
        assert_eq!(db.prefixes.added_v4.shown, ["192.0.2.0/24"]);
        assert_eq!(db.prefixes.removed_v4.shown, ["198.51.100.0/24"]);
        assert_eq!(db.prefixes.removed_v6.shown, ["2001:db8:100::/48"]);
        assert_eq!(d.rules_added.len(), 1);
        assert_eq!(d.rules_added[0].name, "api");
        assert_eq!(d.rules_added[0].prefixes.added_v4.shown, ["10.0.0.0/8"]);
        assert_eq!(
            d.rules_added[0].prefixes.added_v6.shown,
            ["2001:db8:1::/48"]
        );
        assert_eq!(d.rules_removed.len(), 1);
        assert_eq!(d.rules_removed[0].name, "web");
        assert_eq!(d.rules_removed[0].prefixes.removed_v4.shown, ["10.0.0.0/8"]);
    }

    #[test]
    fn a_new_rule_does_not_show_as_a_change_of_rules_it_overlaps() {
        // 10.1.0.0/16 splits the trie entry of web's 10.0.0.0/8; web is unchanged.
        let new = format!("{OLD}  - name: extra\n    ports: [9000/tcp]\n    from: [10.1.0.0/16]\n");
        let d = diff(Some(&side(OLD)), &side(&new), 10);
        assert!(d.rules_changed.is_empty(), "{:#?}", d.rules_changed);
        assert_eq!(d.rules_added[0].prefixes.added_v4.shown, ["10.1.0.0/16"]);
    }

    #[test]
    fn widening_and_narrowing_with_except() {
        let new = OLD.replace(
            "from: [10.0.0.0/8]",
            "from: [wide]",
        )
        .replace(
            "  partners: [192.0.2.0/24]\n",
            "  partners: [192.0.2.0/24]\n  wide:\n    cidrs: [10.0.0.0/7]\n    except: [10.9.0.0/16]\n",
        );
        let d = diff(Some(&side(OLD)), &side(&new), 10);
        let web = &d.rules_changed[0];
        assert_eq!(web.prefixes.added_v4.shown, ["11.0.0.0/8"]);
        assert_eq!(web.prefixes.removed_v4.shown, ["10.9.0.0/16"]);
    }

    #[test]
    fn against_no_filter_everything_is_added_and_lists_are_capped() {
        let new = OLD.replace(
            "from: [10.0.0.0/8]",
            "from: [10.0.0.0/8, 10.1.0.0/16, 11.0.0.0/8, 12.0.0.0/8, 14.0.0.0/8]",
        );
        let d = diff(None, &side(&new), 2);
        assert!(d.changed);
        assert_eq!(d.rules_added.len(), 2);
        let web = &d.rules_added[1];
        assert_eq!(web.prefixes.added_v4.count, 4);
        assert_eq!(web.prefixes.added_v4.shown, ["10.0.0.0/8", "11.0.0.0/8"]);
    }

    #[test]
    fn masking() {
        assert_eq!(masked(&[10, 255, 255, 255], 9), [10, 128, 0, 0]);
        assert_eq!(masked(&[10, 255, 255, 255], 0), [0, 0, 0, 0]);
        assert_eq!(masked(&[10, 255, 255, 255], 32), [10, 255, 255, 255]);
    }
}
