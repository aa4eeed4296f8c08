//! Folding every set's prefixes and `except` holes into one LPM table per family,
//! so a single longest-prefix lookup answers membership in every set at once.
//!
//! Let U be the union of all prefixes (cidrs and excepts of every set in use). For a
//! prefix P in U, the addresses whose longest match in U is P all have the same
//! membership in every set: any other prefix of U either contains P or is disjoint
//! from that region. So value(P) follows from P's ancestors in U (P included): set S
//! contains the region iff some ancestor is a cidr of S and none is an except of S.
//! One sorted pass with an ancestor stack computes that incrementally, O(|U| · 66).

use std::collections::HashMap;

use airlock_common::maps::{SRC_DENY, SRC_MANAGEMENT, SourceEntry};
use ipnet::IpNet;

use crate::policy::{AddrSet, Policy};

/// Bits of a set's membership mask: 0..64 are rules, then management and deny.
const BIT_MANAGEMENT: u32 = 64;
const BIT_DENY: u32 = 65;
const BITS: usize = 66;

/// One prefix occurrence: `set` lists it as a cidr or as an except.
#[derive(Clone, Copy)]
struct Tag {
    addr: u128,
    len: u8,
    set: u32,
    except: bool,
}

/// The folded tables; addresses are right-aligned integers (a v4 address in the
/// low 32 bits).
pub(crate) struct Folded {
    pub v4: Vec<(u128, u8, SourceEntry)>,
    pub v6: Vec<(u128, u8, SourceEntry)>,
    /// Distinct prefixes before pruning, per family.
    pub distinct_v4: usize,
    pub distinct_v6: usize,
}

/// The distinct sets in use, each with the mask of groups that reference it.
/// Sets are identified by name: names are unique per policy (set names may not
/// shadow regions or look like addresses).
fn sets_in_use(policy: &Policy) -> Vec<(&AddrSet, u128)> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<(&AddrSet, u128)> = Vec::new();
    let groups = policy
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| (i as u32, &r.from))
        .chain([
            (BIT_MANAGEMENT, &policy.management),
            (BIT_DENY, &policy.deny),
        ]);
    for (bit, group) in groups {
        for set in &group.sets {
            let id = *index.entry(set.name.as_str()).or_insert_with(|| {
                out.push((set, 0));
                out.len() - 1
            });
            out[id].1 |= 1u128 << bit;
        }
    }
    out
}

/// Sum of prefix counts per family over the sets in use: an upper bound of the
/// folded table sizes, computed without sorting.
pub(crate) fn upper_bound(policy: &Policy) -> (usize, usize) {
    let mut v4 = 0;
    let mut v6 = 0;
    for (set, _) in sets_in_use(policy) {
        for net in set.cidrs.iter().chain(&set.except) {
            match net {
                IpNet::V4(_) => v4 += 1,
                IpNet::V6(_) => v6 += 1,
            }
        }
    }
    (v4, v6)
}

/// Folds the policy's sets into per-family LPM entries. `prune` drops entries that
/// repeat their nearest ancestor's answer (always on outside tests, which compare
/// both forms).
pub(crate) fn fold(policy: &Policy, prune: bool) -> Folded {
    let sets = sets_in_use(policy);
    let masks: Vec<u128> = sets.iter().map(|(_, m)| *m).collect();
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (id, (set, _)) in sets.iter().enumerate() {
        let tagged = set
            .cidrs
            .iter()
            .map(|n| (n, false))
            .chain(set.except.iter().map(|n| (n, true)));
        for (net, except) in tagged {
            let set = id as u32;
            match net {
                IpNet::V4(n) => v4.push(Tag {
                    addr: u128::from(u32::from(n.network())),
                    len: n.prefix_len(),
                    set,
                    except,
                }),
                IpNet::V6(n) => v6.push(Tag {
                    addr: u128::from(n.network()),
                    len: n.prefix_len(),
                    set,
                    except,
                }),
            }
        }
    }
    // The families are independent: fold a large IPv6 table on a second thread.
    let ((v4, distinct_v4), (v6, distinct_v6)) = if v6.len() < 10_000 {
        (
            fold_family(v4, 32, &masks, prune),
            fold_family(v6, 128, &masks, prune),
        )
    } else {
        let masks = &masks;
        crate::parallel::join(
            || fold_family(v4, 32, masks, prune),
            || fold_family(v6, 128, masks, prune),
        )
    };
    Folded {
        v4,
        v6,
        distinct_v4,
        distinct_v6,
    }
}

/// Network mask of a `len`-bit prefix in a `width`-bit family, right-aligned.
fn mask(len: u8, width: u32) -> u128 {
    let full = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    if len == 0 {
        0
    } else {
        (u128::MAX << (width - u32::from(len))) & full
    }
}

/// Running membership state along the current ancestor chain.
struct State<'a> {
    masks: &'a [u128],
    cidr_count: Vec<u32>,
    except_count: Vec<u32>,
    /// For each bit, how many active sets carry it.
    bit_count: [u32; BITS],
}

impl State<'_> {
    fn active(&self, set: usize) -> bool {
        self.cidr_count[set] > 0 && self.except_count[set] == 0
    }

    /// Enters (`add`) or leaves a prefix carrying `tags`.
    fn apply(&mut self, tags: &[Tag], add: bool) {
        for t in tags {
            let s = t.set as usize;
            let before = self.active(s);
            let counter = if t.except {
                &mut self.except_count[s]
            } else {
                &mut self.cidr_count[s]
            };
            if add {
                *counter += 1;
            } else {
                *counter -= 1;
            }
            if before != self.active(s) {
                let mut bits = self.masks[s];
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    // The set just became active (a cidr entered or an except
                    // left) or just stopped being active.
                    if !before {
                        self.bit_count[b] += 1;
                    } else {
                        self.bit_count[b] -= 1;
                    }
                }
            }
        }
    }

    fn value(&self) -> SourceEntry {
        let mut rules = 0u64;
        for (b, &c) in self.bit_count[..64].iter().enumerate() {
            if c > 0 {
                rules |= 1 << b;
            }
        }
        let mut flags = 0;
        if self.bit_count[BIT_MANAGEMENT as usize] > 0 {
            flags |= SRC_MANAGEMENT;
        }
        if self.bit_count[BIT_DENY as usize] > 0 {
            flags |= SRC_DENY;
        }
        SourceEntry {
            rules,
            flags,
            _pad: 0,
        }
    }
}

struct Frame {
    addr: u128,
    len: u8,
    tags: std::ops::Range<usize>,
    value: SourceEntry,
}

/// Folds one family; returns the pruned entries (sorted by address, then length)
/// and the number of distinct prefixes.
fn fold_family(
    mut tags: Vec<Tag>,
    width: u32,
    masks: &[u128],
    prune: bool,
) -> (Vec<(u128, u8, SourceEntry)>, usize) {
    // Sorting by (address, length) puts every ancestor before its descendants.
    if width <= 32 {
        // One integer key: much cheaper to compare than the pair.
        tags.sort_unstable_by_key(|t| ((t.addr as u64) << 8) | u64::from(t.len));
    } else {
        tags.sort_unstable_by_key(|t| (t.addr, t.len));
    }
    let mut state = State {
        masks,
        cidr_count: vec![0; masks.len()],
        except_count: vec![0; masks.len()],
        bit_count: [0; BITS],
    };
    let mut stack: Vec<Frame> = Vec::new();
    let mut out = Vec::new();
    let mut distinct = 0;
    let mut i = 0;
    while i < tags.len() {
        let (addr, len) = (tags[i].addr, tags[i].len);
        let mut j = i + 1;
        while j < tags.len() && tags[j].addr == addr && tags[j].len == len {
            j += 1;
        }
        while let Some(top) = stack.last() {
            if top.len <= len && addr & mask(top.len, width) == top.addr {
                break;
            }
            let range = top.tags.clone();
            stack.pop();
            state.apply(&tags[range], false);
        }
        state.apply(&tags[i..j], true);
        let value = state.value();
        // An entry equal to what its nearest ancestor already answers is redundant:
        // the LPM lookup falls through to that ancestor (or to "no match" = zero).
        let inherited = stack.last().map(|f| f.value).unwrap_or_default();
        if value != inherited || !prune {
            out.push((addr, len, value));
        }
        stack.push(Frame {
            addr,
            len,
            tags: i..j,
            value,
        });
        distinct += 1;
        i = j;
    }
    (out, distinct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask(0, 32), 0);
        assert_eq!(mask(8, 32), 0xff00_0000);
        assert_eq!(mask(32, 32), 0xffff_ffff);
        assert_eq!(mask(128, 128), u128::MAX);
        assert_eq!(mask(1, 128), 1 << 127);
    }
}
