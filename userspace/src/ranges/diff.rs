//! What a refresh changes: the ranges each (region, service) list gains and loses
//! between two snapshots of one provider, and the share of the old ranges removed,
//! for the shrink guard (a truncated or hijacked download must not empty an
//! allowlist).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde::Serialize;

use super::Entry;

/// One (region, service) list's changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupDiff {
    pub region: String,
    pub service: String,
    #[serde(serialize_with = "nets")]
    pub added: Vec<IpNet>,
    #[serde(serialize_with = "nets")]
    pub removed: Vec<IpNet>,
}

fn nets<S: serde::Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(ToString::to_string))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// Lists that changed, by region then service.
    pub groups: Vec<GroupDiff>,
    /// Distinct ranges before and after, and how many came and went.
    pub old_ranges: usize,
    pub new_ranges: usize,
    pub added: usize,
    pub removed: usize,
}

impl Diff {
    /// The share (0..=1) of the old distinct ranges the new document lacks.
    pub fn removed_share(&self) -> f64 {
        if self.old_ranges == 0 {
            0.0
        } else {
            self.removed as f64 / self.old_ranges as f64
        }
    }
}

type Groups = BTreeMap<(String, String), BTreeSet<IpNet>>;

fn groups(entries: &[Entry]) -> Groups {
    let mut out = Groups::new();
    for e in entries {
        out.entry((e.region.clone(), e.service.clone()))
            .or_default()
            .insert(e.net);
    }
    out
}

pub fn diff(old: &[Entry], new: &[Entry]) -> Diff {
    let (old_groups, new_groups) = (groups(old), groups(new));
    let empty = BTreeSet::new();
    let keys: BTreeSet<&(String, String)> = old_groups.keys().chain(new_groups.keys()).collect();
    let mut out = Diff::default();
    for key in keys {
        let before = old_groups.get(key).unwrap_or(&empty);
        let after = new_groups.get(key).unwrap_or(&empty);
        let added: Vec<IpNet> = after.difference(before).copied().collect();
        let removed: Vec<IpNet> = before.difference(after).copied().collect();
        if !added.is_empty() || !removed.is_empty() {
            out.groups.push(GroupDiff {
                region: key.0.clone(),
                service: key.1.clone(),
                added,
                removed,
            });
        }
    }
    let all = |entries: &[Entry]| entries.iter().map(|e| e.net).collect::<BTreeSet<_>>();
    let (before, after) = (all(old), all(new));
    out.old_ranges = before.len();
    out.new_ranges = after.len();
    out.added = after.difference(&before).count();
    out.removed = before.difference(&after).count();
    out
}

/// What a refresh changes for one policy set: the ranges its filter selects
/// before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SetDiff {
    pub set: String,
    #[serde(serialize_with = "nets")]
    pub added: Vec<IpNet>,
    #[serde(serialize_with = "nets")]
    pub removed: Vec<IpNet>,
    /// Ranges the set selects before and after.
    pub old_ranges: usize,
    pub new_ranges: usize,
}

impl SetDiff {
    /// The share (0..=1) of the set's old ranges the new list lacks.
    pub fn removed_share(&self) -> f64 {
        if self.old_ranges == 0 {
            0.0
        } else {
            self.removed.len() as f64 / self.old_ranges as f64
        }
    }
}

/// Each set's change, in the order given.
pub fn set_diffs<'a>(
    sets: impl IntoIterator<Item = (&'a str, &'a super::Selection)>,
    old: &[Entry],
    new: &[Entry],
) -> Vec<SetDiff> {
    sets.into_iter()
        .map(|(name, selection)| {
            let before: BTreeSet<IpNet> = selection.select(old).into_iter().collect();
            let after: BTreeSet<IpNet> = selection.select(new).into_iter().collect();
            SetDiff {
                set: name.to_owned(),
                added: after.difference(&before).copied().collect(),
                removed: before.difference(&after).copied().collect(),
                old_ranges: before.len(),
                new_ranges: after.len(),
            }
        })
        .collect()
}
