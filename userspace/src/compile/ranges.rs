//! Lowers the compiled prefixes into the kernel's source tables: the address space
//! cut into ranges that share one longest-prefix answer, behind a directory of the
//! addresses' bits (layouts in `airlock_common::SourceRangeV4` and
//! `SourceRangeV6`), a table's answers numbered as classes. Also the inverse, for
//! reading a table back as prefixes (`airlock diff`, tests).

use std::collections::HashMap;

use airlock_common::{MAX_CLASSES, SourceEntry, SourceRangeV4, SourceRangeV6};

use super::PrefixEntry;

mod v4;
mod v6;

/// One generation's source table for one family, as written into its map.
///
/// IPv4's directory has a fixed stride (`airlock_common::SourceRangeV4`). IPv6's
/// indexes 19 bits of the address, not its top ones but those after the prefix
/// all the table's boundaries share (its window): IPv6 lists all sit in 2000::/3
/// and often in far less, and a directory of the top bits would spend most of
/// its slots on addresses no prefix is near (`airlock_common::SourceRangeV6`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceTable<R> {
    pub directory: Directory,
    pub elements: Vec<R>,
    /// The answers of the classes the elements name, class 0 first (the empty
    /// answer): `GenPolicy::classes_v4` of an IPv4 table, `classes_v6` of an
    /// IPv6 one.
    pub classes: Vec<SourceEntry>,
}

/// A policy whose sources of one family have more distinct answers than a
/// generation's class table for the family holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the policy's {family} sources fall into {found} distinct combinations of rules and \
     management/deny sets, more than the {max} the datapath holds: list sources in \
     fewer distinct combinations of rules"
)]
pub struct TooManyClasses {
    /// "IPv4" or "IPv6".
    pub family: &'static str,
    pub found: usize,
    pub max: u32,
}

/// A directory slot of the IPv6 table whose addresses the policy cuts into more
/// ranges than one run holds: the program searches a run inside the chunk its
/// first word is in, so a longer one would wrap and answer wrongly. (An IPv4
/// slot spans 2^13 addresses: its run always fits.)
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the policy's IPv6 sources cut {slot} into {ranges} separate ranges, more than the \
     {max} one slot of the datapath's IPv6 table holds: aggregate the prefixes listed \
     inside it into fewer, larger ones"
)]
pub struct OverfullSlot {
    /// The slot's addresses, as a prefix.
    pub slot: ipnet::Ipv6Net,
    pub ranges: usize,
    pub max: usize,
}

/// Whether an IPv6 table of `entries` prefixes could hold a slot too dense for
/// its run ([`OverfullSlot`]): only a plan tells, and below this size none can.
pub fn ipv6_slot_may_overfill(entries: usize) -> bool {
    v6::may_overfill(entries)
}

/// What a table's plan can be refused for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    TooManyClasses(#[from] TooManyClasses),
    #[error(transparent)]
    OverfullSlot(#[from] OverfullSlot),
}

/// A table's distinct answers, numbered in order of first appearance (class 0:
/// the empty answer).
struct Classes {
    entries: Vec<SourceEntry>,
    numbers: HashMap<SourceEntry, u32>,
    /// The last answer interned and its class: the prefixes of one list share an
    /// answer, so most lookups end here without hashing.
    last: (SourceEntry, u32),
}

impl Default for Classes {
    fn default() -> Self {
        Classes {
            entries: vec![SourceEntry::default()],
            numbers: HashMap::from([(SourceEntry::default(), 0)]),
            last: (SourceEntry::default(), 0),
        }
    }
}

impl Classes {
    /// The class of `value`, numbered now if it is new.
    fn intern(&mut self, value: SourceEntry) -> u32 {
        if value == self.last.0 {
            return self.last.1;
        }
        let next = self.entries.len() as u32;
        let class = *self.numbers.entry(value).or_insert(next);
        if class == next {
            self.entries.push(value);
        }
        self.last = (value, class);
        class
    }

    /// The answers by class, if they fit in the kernel's class table of `family`.
    fn into_entries(self, family: &'static str) -> Result<Vec<SourceEntry>, TooManyClasses> {
        if self.entries.len() > MAX_CLASSES as usize {
            return Err(TooManyClasses {
                family,
                found: self.entries.len(),
                max: MAX_CLASSES,
            });
        }
        Ok(self.entries)
    }
}

/// How a table's directory is indexed (see [`SourceTable`]): on an address's
/// top 64 bits `high`, its slot is `(high - base) >> shift`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    /// Address bits the directory is indexed by (`2^bits` slots).
    pub bits: u32,
    /// The window's first address, as top 64 bits.
    pub base: u64,
    /// Where the slot's bits sit in the top 64 bits: `64 - shared - bits`.
    pub shift: u32,
}

/// A range: its first address (the top `WIDTH` bits of a `u128`) and its answer.
type Range = (u128, SourceEntry);

/// A range as some table holds it.
pub trait RangeItem: Copy {
    /// What it holds of its answer: the entry itself, or its class.
    type Answer: Copy + Eq + Default;
    /// A range from its first address (the low `WIDTH` bits) and its answer.
    fn range(start: u128, answer: Self::Answer) -> Self;
    /// Of a range: first address and answer.
    fn start(&self) -> u128;
    fn answer(&self) -> Self::Answer;
}

impl RangeItem for Range {
    type Answer = SourceEntry;

    fn range(start: u128, answer: SourceEntry) -> Self {
        (start, answer)
    }

    fn start(&self) -> u128 {
        self.0
    }

    fn answer(&self) -> SourceEntry {
        self.1
    }
}

/// Appends the ranges of `entries` (prefixes sorted by address then length, as the
/// compiler makes them) to `out`: the address space from 0 to its end, split
/// wherever the longest match changes, adjacent ranges with equal answers merged.
/// Addresses with no matching prefix get the all-zero entry, as from an LPM trie
/// miss. Made in the table's own element type, so a large table is written once,
/// each prefix's answer as `answer` makes it (once per prefix, not per range).
pub(super) fn ranges<T: RangeItem, const N: usize>(
    entries: &[PrefixEntry<N>],
    out: &mut Vec<T>,
    mut answer: impl FnMut(SourceEntry) -> T::Answer,
) {
    let width = 8 * N as u32;
    // A prefix starts at most one range and ends at most one.
    out.reserve(2 * entries.len() + 1);
    let mut ranges = Ranges {
        first: out.len(),
        out,
    };
    ranges.out.push(T::range(0, T::Answer::default()));
    // Open prefixes, outermost first: (last address, answer). Prefixes nest or are
    // disjoint, and sorted by address then length each one's parents come first.
    let mut open: Vec<(u128, T::Answer)> = Vec::new();
    for entry in entries {
        let first = address(&entry.addr);
        let last = first | host_mask(width, entry.prefix_len);
        let value = answer(entry.value);
        ranges.close(&mut open, Some(first), width);
        ranges.set(first, value);
        open.push((last, value));
    }
    ranges.close(&mut open, None, width);
}

/// The ranges being made: `out[first..]`.
struct Ranges<'a, T> {
    out: &'a mut Vec<T>,
    first: usize,
}

impl<T: RangeItem> Ranges<'_, T> {
    /// From `start` on (never before the last range's start), the answer is `value`.
    fn set(&mut self, start: u128, value: T::Answer) {
        let len = self.out.len();
        let last = self.out[len - 1];
        if last.start() == start {
            // The range's new answer can equal the one before: merge.
            if len - self.first >= 2 && self.out[len - 2].answer() == value {
                self.out.pop();
            } else {
                self.out[len - 1] = T::range(start, value);
            }
        } else if last.answer() != value {
            self.out.push(T::range(start, value));
        }
    }

    /// Closes the open prefixes that end before `before` (all of them if `None`):
    /// after each, the prefix around it answers again.
    fn close(&mut self, open: &mut Vec<(u128, T::Answer)>, before: Option<u128>, width: u32) {
        while let Some(&(last, _)) = open.last() {
            if before.is_some_and(|first| last >= first) {
                break;
            }
            open.pop();
            if last < max_address(width) {
                let outer = open.last().map(|o| o.1).unwrap_or_default();
                self.set(last + 1, outer);
            }
        }
    }
}

pub(super) fn address<const N: usize>(bytes: &[u8; N]) -> u128 {
    bytes.iter().fold(0u128, |a, &b| (a << 8) | u128::from(b))
}

fn max_address(width: u32) -> u128 {
    u128::MAX >> (128 - width)
}

pub(super) fn host_mask(width: u32, prefix_len: u8) -> u128 {
    // `checked_shr`: a /128 shifts by the whole width, which `>>` may not.
    max_address(width)
        .checked_shr(u32::from(prefix_len).min(width))
        .unwrap_or(0)
}

/// A source table element of one family, as the program reads it: a directory
/// slot or a range.
pub trait Element: Copy + Default {
    /// Address bits of the family.
    const WIDTH: u32;
    /// "IPv4" or "IPv6".
    const FAMILY: &'static str;
    /// Directory slots.
    const SLOTS: usize;
    /// A range while the table is made: first address and class.
    type Piece: RangeItem<Answer = u32> + std::fmt::Debug + Eq;
    /// Lays the table of `pieces` out into `out` (see [`Plan::lay_out`]).
    fn lay_out(pieces: &[Self::Piece], capacity: usize, out: &mut impl Out<Self>) -> Directory;
    /// The class the program finds for `key` (in the low bits; masked where it
    /// is read), None where it would read outside the table.
    fn find(table: &SourceTable<Self>, key: u128) -> Option<u32>;
    /// The table's ranges (first address, class), sorted, the first at 0; None if
    /// the table is not well formed.
    fn pieces(table: &SourceTable<Self>) -> Option<Vec<(u128, u32)>>;
    /// The first directory slot whose run `pieces` would make longer than a
    /// chunk, if any.
    fn overfull_slot(pieces: &[Self::Piece]) -> Option<OverfullSlot>;
}

impl Element for SourceRangeV4 {
    const WIDTH: u32 = 32;
    const FAMILY: &'static str = "IPv4";
    const SLOTS: usize = v4::SLOTS;
    type Piece = v4::Piece;

    fn lay_out(pieces: &[v4::Piece], capacity: usize, out: &mut impl Out<Self>) -> Directory {
        v4::lay_out(pieces, capacity, out)
    }

    fn find(table: &SourceTable<Self>, key: u128) -> Option<u32> {
        v4::find(&table.elements, u32::try_from(key).ok()?)
    }

    fn pieces(table: &SourceTable<Self>) -> Option<Vec<(u128, u32)>> {
        v4::pieces(&table.elements)
    }

    fn overfull_slot(_: &[v4::Piece]) -> Option<OverfullSlot> {
        // A slot's run fits a chunk whatever the pieces (asserted in `v4`).
        None
    }
}

impl Element for SourceRangeV6 {
    const WIDTH: u32 = 128;
    const FAMILY: &'static str = "IPv6";
    const SLOTS: usize = v6::SLOTS;
    type Piece = v6::Piece;

    fn lay_out(pieces: &[v6::Piece], capacity: usize, out: &mut impl Out<Self>) -> Directory {
        v6::lay_out(pieces, capacity, out)
    }

    fn find(table: &SourceTable<Self>, key: u128) -> Option<u32> {
        v6::find(&table.elements, &table.directory, key)
    }

    fn pieces(table: &SourceTable<Self>) -> Option<Vec<(u128, u32)>> {
        v6::pieces(&table.elements, &table.directory)
    }

    fn overfull_slot(pieces: &[v6::Piece]) -> Option<OverfullSlot> {
        v6::overfull_slot(pieces)
    }
}

/// The search of a run of `n` ranges (at least 2): `(k, d)` with `n = 2^k + d`,
/// `1 <= d <= 2^k` (Shar's: a first probe `d` in, then halvings of `2^k`).
fn shape(n: usize) -> (u32, usize) {
    let k = usize::BITS - 1 - (n - 1).leading_zeros();
    (k, n - (1 << k))
}

/// The entry class `class` stands for, read as the program reads it (`classes`:
/// the table's), None where the program would read past the classes written.
fn entry(class: u32, classes: &[SourceEntry]) -> Option<SourceEntry> {
    // Masked as the program masks it.
    classes.get((class & (MAX_CLASSES - 1)) as usize).copied()
}

/// The source table of `entries` (`N`: address bytes, matching `R`'s family),
/// made to fit in `capacity` elements if it can; an error if the kernel's
/// table cannot hold it ([`PlanError`]).
pub fn table<R: Element, const N: usize>(
    entries: &[PrefixEntry<N>],
    capacity: usize,
) -> Result<SourceTable<R>, PlanError> {
    Ok(plan::<R, N>(entries)?.into_table(capacity))
}

/// A table's ranges and classes, made before any element is laid out: all a
/// build can fail on, so a write that lays the elements out straight into the
/// map ([`Plan::lay_out`]) has nothing left to fail on once it has begun.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<R: Element> {
    pieces: Vec<R::Piece>,
    classes: Vec<SourceEntry>,
}

/// The plan of `entries`' table (`N`: address bytes, matching `R`'s family);
/// an error if its answers are more classes than the kernel holds, or a slot's
/// run would not fit a chunk.
pub fn plan<R: Element, const N: usize>(entries: &[PrefixEntry<N>]) -> Result<Plan<R>, PlanError> {
    debug_assert_eq!(8 * N as u32, R::WIDTH);
    let mut classes = Classes::default();
    let mut pieces = Vec::new();
    ranges(entries, &mut pieces, |value| classes.intern(value));
    if let Some(overfull) = R::overfull_slot(&pieces) {
        return Err(overfull.into());
    }
    Ok(Plan {
        pieces,
        classes: classes.into_entries(R::FAMILY)?,
    })
}

impl<R: Element> Plan<R> {
    /// The answers by class, class 0 first (`SourceTable::classes`).
    pub fn classes(&self) -> &[SourceEntry] {
        &self.classes
    }

    /// Ranges after the directory a table of this plan holds at least (a range
    /// that does not begin its slot takes an element of a run): more than
    /// `room` says the table cannot fit in `room` elements.
    pub fn least_ranges(&self) -> usize {
        self.pieces.len().saturating_sub(R::SLOTS + 1)
    }

    /// Lays the table out into `out` (empty), made to fit in `capacity`
    /// elements if it can, as [`table`] makes it; its directory. Stops early
    /// where `out` is full (`Out::full`): what it holds is then no table.
    pub fn lay_out(&self, capacity: usize, out: &mut impl Out<R>) -> Directory {
        R::lay_out(&self.pieces, capacity, out)
    }

    /// The table, its elements in a vector.
    pub fn into_table(self, capacity: usize) -> SourceTable<R> {
        let mut elements = Vec::new();
        let directory = self.lay_out(capacity, &mut elements);
        SourceTable {
            directory,
            elements,
            classes: self.classes,
        }
    }
}

/// Where a table's elements are laid out, one after the other: a vector, or
/// memory of a fixed size (the map's own, through a mapping), which is `full`
/// once more was put in than it holds. Indexing reaches what it holds.
pub trait Out<R>: std::ops::DerefMut<Target = [R]> {
    /// Elements put in so far (past what fixed memory holds, counted all the same).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn push(&mut self, value: R);
    /// Puts in copies of `value` up to `len` elements (never fewer).
    fn resize(&mut self, len: usize, value: R);
    /// Makes room for `more` elements, where that is a thing.
    fn reserve(&mut self, _more: usize) {}
    /// Whether more was put in than it holds (a vector never is).
    fn full(&self) -> bool {
        false
    }
    /// Pushes each of `values` (not `extend`: a vector's own would be
    /// ambiguous wherever this trait is in scope).
    fn push_all(&mut self, values: impl IntoIterator<Item = R>) {
        for value in values {
            self.push(value);
        }
    }
}

impl<R: Copy> Out<R> for Vec<R> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn push(&mut self, value: R) {
        Vec::push(self, value);
    }
    fn resize(&mut self, len: usize, value: R) {
        if len > Vec::len(self) {
            Vec::resize(self, len, value);
        }
    }
    fn reserve(&mut self, more: usize) {
        Vec::reserve(self, more);
    }
    fn push_all(&mut self, values: impl IntoIterator<Item = R>) {
        Extend::extend(self, values);
    }
}

/// The prefixes of a table read back: each range with a nonzero answer as the
/// fewest prefixes that cover it exactly, sorted by address. The same function
/// of the address as the prefixes the table was made from, in canonical form.
fn prefixes_of<const N: usize>(ranges: &[Range]) -> Vec<PrefixEntry<N>> {
    let width = 8 * N as u32;
    let mut out = Vec::new();
    for (i, &(start, value)) in ranges.iter().enumerate() {
        if value == SourceEntry::default() {
            continue;
        }
        let last = ranges
            .get(i + 1)
            .map(|next| next.0 - 1)
            .unwrap_or(max_address(width));
        let mut at = start;
        loop {
            // The largest aligned block starting at `at` that stays within the range.
            let mut len = width;
            while len > 0 {
                let mask = host_mask(width, (len - 1) as u8);
                if at & mask != 0 || at | mask > last {
                    break;
                }
                len -= 1;
            }
            let bytes = at.to_be_bytes();
            let mut addr = [0u8; N];
            addr.copy_from_slice(&bytes[16 - N..]);
            out.push(PrefixEntry {
                addr,
                prefix_len: len as u8,
                value,
            });
            let block_last = at | host_mask(width, len as u8);
            if block_last >= last {
                break;
            }
            at = block_last + 1;
        }
    }
    out
}

/// The prefixes a table holds (None: not a well-formed table: its ranges must be
/// sorted and start at address 0, and name only classes it has).
pub fn prefixes<R: Element, const N: usize>(table: &SourceTable<R>) -> Option<Vec<PrefixEntry<N>>> {
    let ranges: Vec<Range> = R::pieces(table)?
        .into_iter()
        .map(|(start, class)| Some((start, entry(class, &table.classes)?)))
        .collect::<Option<_>>()?;
    let sorted = ranges.windows(2).all(|w| w[0].0 < w[1].0);
    (sorted && ranges.first().is_some_and(|r| r.0 == 0)).then(|| prefixes_of(&ranges))
}

/// The canonical form of `entries`: what [`prefixes`] reads back from their table.
pub fn canonical<const N: usize>(entries: &[PrefixEntry<N>]) -> Vec<PrefixEntry<N>> {
    let mut out: Vec<Range> = Vec::new();
    ranges(entries, &mut out, |value| value);
    prefixes_of(&out)
}

/// What the program finds in `table` for the address `key`, step for step as
/// ebpf-programs/src/source.rs does: for tests of the layout. None where the
/// program would read outside the table, or would find a class the table does
/// not have.
pub fn lookup<R: Element>(table: &SourceTable<R>, key: u128) -> Option<SourceEntry> {
    entry(R::find(table, key)?, &table.classes)
}

#[cfg(test)]
pub(super) mod tests;
