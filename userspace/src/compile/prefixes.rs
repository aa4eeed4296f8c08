//! Folding every set's prefixes and `except` holes into one LPM table per family,
//! so a single longest-prefix lookup answers membership in every set at once.
//!
//! Let U be the union of all prefixes (cidrs and excepts of every set in use). For a
//! prefix P in U, the addresses whose longest match in U is P all have the same
//! membership in every set: any other prefix of U either contains P or is disjoint
//! from that region. So value(P) follows from P's ancestors in U (P included): set S
//! contains the region iff some ancestor is a cidr of S and none is an except of S.
//! One sorted pass with an ancestor stack computes that incrementally, O(|U|) after
//! the sort (times the sets active at once, when one enters or leaves), however
//! many rules name a set.

use std::collections::HashMap;

use airlock_common::maps::{SRC_DENY, SRC_MANAGEMENT, SourceEntry};
use ipnet::IpNet;

use super::{ClassCount, FamilyCounts, PrefixEntry};
use crate::policy::{AddrSet, Policy};

/// Bits of a set's membership mask: 0..64 are rules, then management and deny.
const BIT_MANAGEMENT: u32 = 64;
const BIT_DENY: u32 = 65;

/// One prefix occurrence (`set` lists it as a cidr or as an except), packed for
/// sorting: keys order by (address, length) first, so a sort puts every ancestor
/// before its descendants. The order among one prefix's occurrences is irrelevant.
trait Key: Copy + Ord + Send {
    /// Right-aligned network address and prefix length.
    fn prefix(self) -> (u128, u8);
    /// The set's index and whether this is one of its excepts.
    fn tag(self) -> (usize, bool);
    /// A 64-bit digest that never decreases in key order (for bucketing).
    fn high(self) -> u64;
}

/// IPv4 in one integer: address << 32 | length << 24 | set << 1 | except. Half the
/// size of [`Wide`] and one comparison; used when set indices fit its 23 bits.
impl Key for u64 {
    fn prefix(self) -> (u128, u8) {
        (u128::from((self >> 32) as u32), (self >> 24) as u8)
    }
    fn tag(self) -> (usize, bool) {
        (((self >> 1) & V4_SET_MAX) as usize, self & 1 == 1)
    }
    fn high(self) -> u64 {
        self
    }
}

/// Largest set index a packed IPv4 key holds.
const V4_SET_MAX: u64 = (1 << 23) - 1;

fn v4_key(addr: u32, len: u8, set: usize, except: bool) -> u64 {
    u64::from(addr) << 32 | u64::from(len) << 24 | (set as u64) << 1 | u64::from(except)
}

/// Any family, any set: the address in two words, then length << 56 | set << 1 |
/// except. Derived ordering compares the fields in this order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Wide {
    hi: u64,
    lo: u64,
    meta: u64,
}

impl Wide {
    fn new(addr: u128, len: u8, set: usize, except: bool) -> Wide {
        Wide {
            hi: (addr >> 64) as u64,
            lo: addr as u64,
            meta: u64::from(len) << 56 | (set as u64) << 1 | u64::from(except),
        }
    }
}

impl Key for Wide {
    fn prefix(self) -> (u128, u8) {
        (
            u128::from(self.hi) << 64 | u128::from(self.lo),
            (self.meta >> 56) as u8,
        )
    }
    fn tag(self) -> (usize, bool) {
        (
            ((self.meta >> 1) & u64::from(u32::MAX)) as usize,
            self.meta & 1 == 1,
        )
    }
    fn high(self) -> u64 {
        self.hi
    }
}

/// The folded tables, sorted by address then prefix length.
pub(crate) struct Folded {
    pub v4: Vec<PrefixEntry<4>>,
    pub v6: Vec<PrefixEntry<16>>,
    /// Distinct prefixes before pruning, per family.
    pub distinct_v4: usize,
    pub distinct_v6: usize,
    /// Classes the loader's table of each family numbers (its entries' distinct
    /// answers and the empty one), counted as the entries were made.
    pub classes_v4: usize,
    pub classes_v6: usize,
    /// Whether an entry of each family carries a management or deny flag.
    pub flagged_v4: bool,
    pub flagged_v6: bool,
    /// Each set folded, by identity, with its cidrs and excepts per family (what
    /// `FamilyCounts::of` would count again).
    pub set_counts: HashMap<*const AddrSet, FamilyCounts>,
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

/// Every (cidr or except) occurrence of the sets in one family, as keys, and
/// how many of them each set has: `key` makes one from a network of that
/// family, and answers None for the other's. The counts are those of the pass
/// that makes the keys (a pass of their own over a large list cost 2-3 ms
/// before both folds could start).
fn keys<K: Key>(
    sets: &[(&AddrSet, u128)],
    key: impl Fn(&IpNet, usize, bool) -> Option<K>,
) -> (Vec<K>, Vec<usize>) {
    // Room for every network of every set: the other family's share is
    // reserved but never written, so it never becomes resident.
    let capacity = sets
        .iter()
        .map(|(set, _)| set.cidrs.len() + set.except.len())
        .sum();
    let mut out = Vec::with_capacity(capacity);
    let mut counts = Vec::with_capacity(sets.len());
    for (id, (set, _)) in sets.iter().enumerate() {
        let before = out.len();
        let tagged = set
            .cidrs
            .iter()
            .map(|n| (n, false))
            .chain(set.except.iter().map(|n| (n, true)));
        out.extend(tagged.filter_map(|(net, except)| key(net, id, except)));
        counts.push(out.len() - before);
    }
    (out, counts)
}

fn packed_v4(net: &IpNet, set: usize, except: bool) -> Option<u64> {
    match net {
        IpNet::V4(n) => Some(v4_key(u32::from(n.network()), n.prefix_len(), set, except)),
        IpNet::V6(_) => None,
    }
}

fn wide_v4(net: &IpNet, set: usize, except: bool) -> Option<Wide> {
    match net {
        IpNet::V4(n) => Some(Wide::new(
            u128::from(u32::from(n.network())),
            n.prefix_len(),
            set,
            except,
        )),
        IpNet::V6(_) => None,
    }
}

fn wide_v6(net: &IpNet, set: usize, except: bool) -> Option<Wide> {
    match net {
        IpNet::V6(n) => Some(Wide::new(
            u128::from(n.network()),
            n.prefix_len(),
            set,
            except,
        )),
        IpNet::V4(_) => None,
    }
}

/// Folds the policy's sets into per-family LPM entries. `prune` drops entries that
/// repeat their nearest ancestor's answer (always on outside tests, which compare
/// both forms). Then `then_v4` and `then_v6` run each on its family's entries,
/// on the thread that folded them, as soon as that family is folded (an apply's
/// source tables: the smaller family's is built while the larger still folds).
pub(crate) fn fold_then<A: Send, B: Send>(
    policy: &Policy,
    prune: bool,
    then_v4: impl FnOnce(&[PrefixEntry<4>]) -> A + Send,
    then_v6: impl FnOnce(&[PrefixEntry<16>]) -> B + Send,
) -> (Folded, A, B) {
    let sets = sets_in_use(policy);
    let masks: Vec<u128> = sets.iter().map(|(_, m)| *m).collect();
    let networks: usize = sets
        .iter()
        .map(|(set, _)| set.cidrs.len() + set.except.len())
        .sum();
    let (sets, masks) = (&sets, &masks);
    // Each family's keys are made on the thread that folds them: one pass over the
    // lists per family, but none ahead of both folds.
    let fold_v4 = || {
        let entry = |a: u128, len, value| PrefixEntry {
            addr: (a as u32).to_be_bytes(),
            prefix_len: len,
            value,
        };
        let (folded, counts) = if sets.len() as u64 <= V4_SET_MAX {
            let (keys, counts) = keys(sets, packed_v4);
            (fold_family(keys, 32, masks, prune, entry), counts)
        } else {
            // Millions of sets: never in practice, but still correct.
            let (keys, counts) = keys(sets, wide_v4);
            (fold_family(keys, 32, masks, prune, entry), counts)
        };
        let after = then_v4(&folded.0);
        (folded, after, counts)
    };
    let fold_v6 = || {
        let entry = |a: u128, len, value| PrefixEntry {
            addr: a.to_be_bytes(),
            prefix_len: len,
            value,
        };
        let (keys, counts) = keys(sets, wide_v6);
        let folded = fold_family(keys, 128, masks, prune, entry);
        let after = then_v6(&folded.0);
        (folded, after, counts)
    };
    // The families are independent: fold a large policy's on two threads (each
    // reads every list for its family's networks, so a policy of one family
    // still has its pass over the lists shared out).
    let (
        ((v4, distinct_v4, classes_v4, flagged_v4), after_v4, counts_v4),
        ((v6, distinct_v6, classes_v6, flagged_v6), after_v6, counts_v6),
    ) = if networks < 10_000 {
        (fold_v4(), fold_v6())
    } else {
        crate::parallel::join(fold_v4, fold_v6)
    };
    let set_counts = sets
        .iter()
        .zip(counts_v4.iter().zip(&counts_v6))
        .map(|((set, _), (&v4, &v6))| (std::ptr::from_ref(*set), FamilyCounts { v4, v6 }))
        .collect();
    let folded = Folded {
        v4,
        v6,
        distinct_v4,
        distinct_v6,
        classes_v4,
        classes_v6,
        flagged_v4,
        flagged_v6,
        set_counts,
    };
    (folded, after_v4, after_v6)
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

/// Below this many keys a plain comparison sort is as fast as bucketing.
const BUCKET_FROM: usize = 1 << 12;

/// Sorts `keys`. Large inputs are first distributed by one counting pass into
/// 2^13 buckets on the 13 bits of [`Key::high`] just below those all keys share,
/// then each bucket (a handful of keys for a large random list) is sorted by
/// comparison: a third of the time of sorting the whole at a million keys.
fn sort_keys<K: Key>(mut keys: Vec<K>, bucket_from: usize) -> Vec<K> {
    const DIGIT: u32 = 13;
    let Some(first) = keys.first().map(|k| k.high()) else {
        return keys;
    };
    // Provider lists are often published sorted, and a list's order survives the
    // parse: the keys are then a few sorted runs (one per set and its exceptions),
    // which a merge sort joins in a pass or two. Counting them stops early, at once
    // for a shuffled list.
    let mut descents = 0;
    for pair in keys.windows(2) {
        if pair[1] < pair[0] {
            descents += 1;
            if descents > MAX_RUNS {
                break;
            }
        }
    }
    if descents <= MAX_RUNS {
        // The standard stable sort finds the runs and merges them.
        keys.sort();
        return keys;
    }
    let differ = keys.iter().fold(0, |acc, k| acc | (k.high() ^ first));
    if keys.len() < bucket_from || differ == 0 {
        keys.sort_unstable();
        return keys;
    }
    // Bits above `top` are the same in every key, so the digit below them orders
    // the buckets the way `high`, and hence the keys, are ordered.
    let top = 64 - differ.leading_zeros();
    let shift = top.saturating_sub(DIGIT);
    let digit = |k: &K| ((k.high() >> shift) & ((1 << DIGIT) - 1)) as usize;
    // u32 counts (a table holds far fewer than 2^32 keys): the counters, bumped
    // once per key in no order, take half the cache.
    let mut starts = vec![0u32; (1 << DIGIT) + 1];
    for k in &keys {
        starts[digit(k) + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut next = starts.clone();
    // Filler, every slot is overwritten.
    let mut out = vec![keys[0]; keys.len()];
    for k in keys {
        let d = digit(&k);
        out[next[d] as usize] = k;
        next[d] += 1;
    }
    // The buckets are independent: sort a large table's halves on two threads (the
    // other family's fold may hold a core too; the scheduler shares them out).
    let sort_buckets = |part: &mut [K], starts: &[u32]| {
        let offset = starts[0] as usize;
        for bucket in starts.windows(2) {
            part[bucket[0] as usize - offset..bucket[1] as usize - offset].sort_unstable();
        }
    };
    if out.len() < PARALLEL_SORT_FROM {
        sort_buckets(&mut out, &starts);
    } else {
        let half = starts.partition_point(|&start| (start as usize) < out.len() / 2);
        let (low, high) = out.split_at_mut(starts[half] as usize);
        crate::parallel::join(
            || sort_buckets(low, &starts[..=half]),
            || sort_buckets(high, &starts[half..]),
        );
    }
    out
}

/// Keys in at most this many more sorted runs than one are merged, not bucketed.
const MAX_RUNS: usize = 64;

/// From this many keys a bucketed sort sorts its buckets on two threads.
const PARALLEL_SORT_FROM: usize = 1 << 16;

/// Running membership state along the current ancestor chain.
struct State<'a> {
    masks: &'a [u128],
    cidr_count: Vec<u32>,
    except_count: Vec<u32>,
    /// The active sets, in no order, and each set's place among them (`NOT_ACTIVE`
    /// if it is not): entering or leaving a set is O(1).
    active_sets: Vec<usize>,
    place: Vec<usize>,
    /// The union of the active sets' masks. Recomputed from the few active sets
    /// when one comes or goes, so the cost per prefix does not grow with the number
    /// of rules that name a set.
    live: u128,
}

const NOT_ACTIVE: usize = usize::MAX;

impl<'a> State<'a> {
    fn new(masks: &'a [u128]) -> Self {
        State {
            masks,
            cidr_count: vec![0; masks.len()],
            except_count: vec![0; masks.len()],
            active_sets: Vec::new(),
            place: vec![NOT_ACTIVE; masks.len()],
            live: 0,
        }
    }

    fn active(&self, set: usize) -> bool {
        self.cidr_count[set] > 0 && self.except_count[set] == 0
    }

    /// Enters (`add`) or leaves a prefix carrying `tags`.
    fn apply<K: Key>(&mut self, tags: &[K], add: bool) {
        let mut changed = false;
        for t in tags {
            let (s, except) = t.tag();
            let before = self.active(s);
            let counter = if except {
                &mut self.except_count[s]
            } else {
                &mut self.cidr_count[s]
            };
            if add {
                *counter += 1;
            } else {
                *counter -= 1;
            }
            let after = self.active(s);
            if before != after {
                changed = true;
                if after {
                    self.place[s] = self.active_sets.len();
                    self.active_sets.push(s);
                } else {
                    let at = std::mem::replace(&mut self.place[s], NOT_ACTIVE);
                    self.active_sets.swap_remove(at);
                    if let Some(&moved) = self.active_sets.get(at) {
                        self.place[moved] = at;
                    }
                }
            }
        }
        if changed {
            self.live = self
                .active_sets
                .iter()
                .fold(0, |live, &set| live | self.masks[set]);
        }
    }

    fn value(&self) -> SourceEntry {
        entry_of(self.live)
    }
}

/// The table value of addresses in exactly the groups of `live`.
fn entry_of(live: u128) -> SourceEntry {
    let mut flags = 0;
    if live & (1 << BIT_MANAGEMENT) != 0 {
        flags |= SRC_MANAGEMENT;
    }
    if live & (1 << BIT_DENY) != 0 {
        flags |= SRC_DENY;
    }
    SourceEntry {
        rules: live as u64,
        flags,
        _pad: 0,
    }
}

struct Frame {
    addr: u128,
    len: u8,
    tags: std::ops::Range<usize>,
    value: SourceEntry,
    /// Whether `tags` are counted in the state. Only the top frame may not be: a
    /// lone prefix with no ancestor gets its value without the state, and is
    /// counted only if a descendant follows. Most of a large list is such prefixes,
    /// which then never touch the state.
    counted: bool,
}

/// Folds one family; returns the pruned entries (sorted by address, then length,
/// each made by `entry`), the number of distinct prefixes, the classes the
/// entries' table numbers (`ClassCount`) and whether one of them is flagged.
fn fold_family<K: Key, E>(
    keys: Vec<K>,
    width: u32,
    masks: &[u128],
    prune: bool,
    entry: impl Fn(u128, u8, SourceEntry) -> E,
) -> (Vec<E>, usize, usize, bool) {
    let started = std::time::Instant::now();
    let tags = sort_keys(keys, BUCKET_FROM);
    let sorted = started.elapsed();
    let mut state = State::new(masks);
    let mut stack: Vec<Frame> = Vec::new();
    // At most one entry per key: reserving that avoids regrowing a large table.
    let mut out = Vec::with_capacity(tags.len());
    let mut distinct = 0;
    let mut classes = ClassCount::default();
    let mut i = 0;
    while i < tags.len() {
        let (addr, len) = tags[i].prefix();
        let mut j = i + 1;
        while j < tags.len() && tags[j].prefix() == (addr, len) {
            j += 1;
        }
        while let Some(top) = stack.last() {
            if top.len <= len && addr & mask(top.len, width) == top.addr {
                break;
            }
            let (range, counted) = (top.tags.clone(), top.counted);
            stack.pop();
            if counted {
                state.apply(&tags[range], false);
            }
        }
        if let Some(top) = stack.last_mut()
            && !top.counted
        {
            state.apply(&tags[top.tags.clone()], true);
            top.counted = true;
        }
        // With nothing above it the state is empty (every counted frame has been
        // popped), so a prefix listed once answers its own set's mask.
        let (value, counted) = if stack.is_empty() && j == i + 1 {
            match tags[i].tag() {
                (set, false) => (entry_of(masks[set]), false),
                (_, true) => (SourceEntry::default(), false),
            }
        } else {
            state.apply(&tags[i..j], true);
            (state.value(), true)
        };
        // An entry equal to what its nearest ancestor already answers is redundant:
        // the LPM lookup falls through to that ancestor (or to "no match" = zero).
        let inherited = stack.last().map(|f| f.value).unwrap_or_default();
        if value != inherited || !prune {
            classes.see(value);
            out.push(entry(addr, len, value));
        }
        stack.push(Frame {
            addr,
            len,
            tags: i..j,
            value,
            counted,
        });
        distinct += 1;
        i = j;
    }
    // Where a re-apply's compile goes, per family (`AIRLOCK_LOG=airlock=debug`).
    tracing::debug!(
        width,
        keys = tags.len(),
        sort_us = sorted.as_micros() as u64,
        fold_us = (started.elapsed() - sorted).as_micros() as u64,
        "family folded"
    );
    (out, distinct, classes.count(), classes.flagged())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::xorshift;

    #[test]
    fn bucketed_sort_sorts() {
        let mut next = xorshift(0x5eed_1234_abcd_0001);
        // Random, clustered (few varying bits), all-equal high bits, tiny.
        // From PARALLEL_SORT_FROM keys on, the buckets are sorted in two halves.
        let parallel = PARALLEL_SORT_FROM + 1000;
        for (n, spread) in [
            (20_000, 64),
            (20_000, 20),
            (5_000, 3),
            (10_000, 0),
            (3, 64),
            (parallel, 64),
            (parallel, 10),
        ] {
            let high = |r: u64| if spread == 0 { 0 } else { r >> (64 - spread) };
            let v4: Vec<u64> = (0..n).map(|_| high(next()) << 32 | next() >> 32).collect();
            let wide: Vec<Wide> = (0..n)
                .map(|_| Wide {
                    hi: high(next()),
                    lo: next() % 4,
                    meta: next() % 8,
                })
                .collect();
            let mut expected = v4.clone();
            expected.sort_unstable();
            assert_eq!(sort_keys(v4, 0), expected);
            let mut expected = wide.clone();
            expected.sort_unstable();
            assert!(sort_keys(wide, 0) == expected);
        }
    }

    /// Keys in sorted runs (a sorted list, several sets) take the merge; more runs
    /// than [`MAX_RUNS`] the buckets. Either way they come out sorted.
    #[test]
    fn sorted_runs_sort() {
        let mut next = xorshift(0x5eed_1234_abcd_0002);
        for runs in [1, 2, 3, MAX_RUNS, MAX_RUNS + 1, MAX_RUNS + 2, 500] {
            let v4: Vec<u64> = (0..runs)
                .flat_map(|_| {
                    let mut run: Vec<u64> = (0..40).map(|_| next()).collect();
                    run.sort_unstable();
                    run
                })
                .collect();
            let wide: Vec<Wide> = v4
                .iter()
                .map(|&k| Wide {
                    hi: k,
                    lo: k % 3,
                    meta: k % 5,
                })
                .collect();
            let mut expected = v4.clone();
            expected.sort_unstable();
            assert_eq!(sort_keys(v4, 0), expected, "{runs} runs");
            let mut expected = wide.clone();
            expected.sort_unstable();
            assert!(sort_keys(wide, 0) == expected, "{runs} runs");
        }
    }

    /// Large random tables (past the bucketing threshold), both key forms, against
    /// a direct evaluation of every distinct prefix's ancestors.
    #[test]
    fn large_folds_agree_with_a_direct_evaluation() {
        // Few varying bits under 10/8, so prefixes nest and repeat often; and
        // addresses anywhere, so most prefixes stand alone (no ancestor, no
        // descendant), with the odd short one over many.
        let nested = |r: u64| 0x0a00_0000 | ((r >> 8) as u32 & 0x00f3_0c0f);
        let anywhere = |r: u64| (r >> 8) as u32;
        fold_agrees_with_a_direct_evaluation(&nested, [0, 8, 12, 16, 20, 24, 28, 30, 32, 32]);
        fold_agrees_with_a_direct_evaluation(&anywhere, [12, 20, 24, 24, 28, 30, 31, 32, 32, 32]);
    }

    fn fold_agrees_with_a_direct_evaluation(address: &dyn Fn(u64) -> u32, lens: [u8; 10]) {
        let mut next = xorshift(0x0123_4567_89ab_cdef);
        let masks: Vec<u128> = vec![1, 2 | 1 << BIT_DENY, 1 << BIT_MANAGEMENT, 5, 1 << 63];
        let mut tags: Vec<(u32, u8, usize, bool)> = Vec::new();
        for _ in 0..30_000 {
            let r = next();
            let len = lens[(r % 10) as usize];
            let addr = address(r) & (mask(len, 32) as u32);
            tags.push((
                addr,
                len,
                (r >> 40) as usize % masks.len(),
                (r >> 50).is_multiple_of(5),
            ));
        }
        let mut by_prefix: HashMap<(u32, u8), Vec<(usize, bool)>> = HashMap::new();
        for &(a, l, s, e) in &tags {
            by_prefix.entry((a, l)).or_default().push((s, e));
        }
        let mut expected: Vec<(u128, u8, SourceEntry)> = by_prefix
            .keys()
            .map(|&(addr, len)| {
                let (mut cidr, mut except) = (vec![false; masks.len()], vec![false; masks.len()]);
                for l in 0..=len {
                    let up = (addr as u128 & mask(l, 32), l);
                    for &(s, e) in by_prefix.get(&(up.0 as u32, l)).into_iter().flatten() {
                        if e {
                            except[s] = true;
                        } else {
                            cidr[s] = true;
                        }
                    }
                }
                let live = (0..masks.len())
                    .filter(|&s| cidr[s] && !except[s])
                    .fold(0, |acc, s| acc | masks[s]);
                let state = State {
                    live,
                    ..State::new(&masks)
                };
                (u128::from(addr), len, state.value())
            })
            .collect();
        expected.sort_unstable_by_key(|&(a, l, _)| (a, l));
        let entry = |a: u128, l: u8, v: SourceEntry| (a, l, v);
        let packed: Vec<u64> = tags
            .iter()
            .map(|&(a, l, s, e)| v4_key(a, l, s, e))
            .collect();
        let wide: Vec<Wide> = tags
            .iter()
            .map(|&(a, l, s, e)| Wide::new(u128::from(a), l, s, e))
            .collect();
        let (unpruned, distinct, classes, flagged) =
            fold_family(packed.clone(), 32, &masks, false, entry);
        assert_eq!(flagged, expected.iter().any(|e| e.2.flags != 0));
        let distinct_answers = |entries: &[(u128, u8, SourceEntry)]| {
            let mut answers: std::collections::HashSet<_> =
                entries.iter().map(|&(_, _, v)| v).collect();
            answers.insert(SourceEntry::default());
            answers.len()
        };
        assert_eq!(classes, distinct_answers(&expected));
        assert_eq!(distinct, expected.len());
        assert!(unpruned == expected);
        assert!(fold_family(wide.clone(), 32, &masks, false, entry).0 == expected);
        // Pruned: exactly the entries whose nearest listed ancestor answers otherwise.
        let kept: Vec<_> = expected
            .iter()
            .filter(|&&(a, l, v)| {
                let parent = expected
                    .iter()
                    .filter(|&&(pa, pl, _)| pl < l && a & mask(pl, 32) == pa)
                    .max_by_key(|&&(_, pl, _)| pl)
                    .map(|&(_, _, pv)| pv)
                    .unwrap_or_default();
                parent != v
            })
            .copied()
            .collect();
        let pruned = fold_family(packed, 32, &masks, true, entry);
        assert!(pruned.0 == kept);
        assert_eq!(pruned.2, distinct_answers(&kept));
        assert!(fold_family(wide, 32, &masks, true, entry).0 == kept);
    }

    #[test]
    fn masks() {
        assert_eq!(mask(0, 32), 0);
        assert_eq!(mask(8, 32), 0xff00_0000);
        assert_eq!(mask(32, 32), 0xffff_ffff);
        assert_eq!(mask(128, 128), u128::MAX);
        assert_eq!(mask(1, 128), 1 << 127);
    }
}
