//! Lowers the compiled prefixes into the kernel's source tables: the address space
//! cut into ranges that share one longest-prefix answer, behind a directory of the
//! addresses' bits (layouts in `airlock_common::SourceRangeV4` and
//! `SourceRangeV6`), a table's answers numbered as classes. Also the inverse, for
//! reading a table back as prefixes (`airlock diff`, tests).

use std::collections::HashMap;

use airlock_common::{
    INLINE_TABLE_V6, MAX_CLASSES, MAX_DIRECTORY_BITS_V6, SHAPE_FIRST_PROBE_SHIFT_V6,
    SLOT_ANSWER_V6, SourceEntry, SourceRangeV4, SourceRangeV6,
};

use super::PrefixEntry;

mod v4;

/// One generation's source table for one family, as written into its map.
///
/// IPv4's directory has a fixed stride (`airlock_common::SourceRangeV4`). IPv6's
/// indexes `directory_bits` bits of the address, not its top ones but
/// those after the prefix all the table's boundaries share (its window): IPv6
/// lists all sit in 2000::/3 and often in far less, and a directory of the top bits
/// would spend most of its slots on addresses no prefix is near. An address below
/// the window takes slot 0 (whose run starts at the first range), one above it the
/// last slot (whose run ends at the last range). In the kernel's terms, on the
/// address's top 64 bits `high` (an IPv4 address in the top 32): the slot is
/// `(high - directory_base) >> directory_shift`, clamped to the directory.
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

/// How a table's directory is indexed (see [`SourceTable`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    /// Address bits the directory is indexed by (its first `2^bits` elements).
    pub bits: u32,
    /// The window's first address, as top 64 bits.
    pub base: u64,
    /// Where the slot's bits sit in the top 64 bits: `64 - shared - bits`.
    pub shift: u32,
}

impl Directory {
    /// The slot of an address whose top 64 bits are `high`.
    pub fn slot(&self, high: u64) -> usize {
        if self.bits == 0 || high < self.base {
            return 0;
        }
        let last = (1u64 << self.bits) - 1;
        ((high - self.base) >> self.shift).min(last) as usize
    }
}

/// The directory's window over `ranges`: its first address (full width) and the
/// number of leading bits every boundary shares, at most `width.min(64) - bits` so
/// that the slot's bits lie in the address's top 64.
fn window<T: RangeItem>(ranges: &[T], width: u32, bits: u32) -> (u128, u32) {
    let (Some(first), Some(last)) = (ranges.get(1), ranges.last()) else {
        return (0, 0);
    };
    if bits == 0 {
        return (0, 0);
    }
    let (first, last) = (first.start(), last.start());
    let shared = ((first ^ last).leading_zeros() - (128 - width)).min(width.min(64) - bits);
    let low_bits = max_address(width).checked_shr(shared).unwrap_or(0);
    (first & !low_bits & max_address(width), shared)
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
fn ranges<T: RangeItem, const N: usize>(
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

fn address<const N: usize>(bytes: &[u8; N]) -> u128 {
    bytes.iter().fold(0u128, |a, &b| (a << 8) | u128::from(b))
}

fn max_address(width: u32) -> u128 {
    u128::MAX >> (128 - width)
}

fn host_mask(width: u32, prefix_len: u8) -> u128 {
    // `checked_shr`: a /128 shifts by the whole width, which `>>` may not.
    max_address(width)
        .checked_shr(u32::from(prefix_len).min(width))
        .unwrap_or(0)
}

/// Directory bits for `ranges` ranges. The full directory when it fits in
/// `capacity` elements with the ranges: the preallocated table's memory is paid for
/// whatever the policy, and every slot bit shortens the searches of clustered
/// addresses (Airbyte's US egress addresses share one /16). Otherwise about one
/// range per slot, so a lookup's binary search is short however large the policy,
/// fewer if that lets directory and ranges fit in `capacity` (a longer search there
/// still beats a table in chunks); a table that cannot fit keeps that directory, up
/// to `chunked_bits` (as many slots as its first chunk holds). `full_bits`: the
/// full directory.
fn directory_bits(ranges: usize, capacity: usize, full_bits: u32, chunked_bits: u32) -> u32 {
    let fits = |bits: u32| (1usize << bits) + ranges <= capacity;
    if fits(full_bits) {
        return full_bits;
    }
    let limit = if fits(0) { full_bits } else { chunked_bits };
    let mut bits = 0;
    while bits < limit && (1usize << bits) < ranges {
        bits += 1;
    }
    if fits(0) {
        while !fits(bits) {
            bits -= 1;
        }
    }
    bits
}

/// For each directory slot: the index (among `ranges`) of the range its first
/// address falls in, and how many ranges overlap it. The slots split the window
/// (`start`, `shared` leading bits) evenly; the first also covers everything below
/// it, the last everything above.
fn directory<T: RangeItem>(
    ranges: &[T],
    width: u32,
    bits: u32,
    (start, shared): (u128, u32),
) -> Vec<(usize, usize)> {
    let slots = 1usize << bits;
    let slot_shift = width - shared - bits;
    let mut out = Vec::with_capacity(slots);
    let mut first = 0;
    for slot in 0..slots {
        let slot_first = if slot == 0 {
            0
        } else {
            start + ((slot as u128) << slot_shift)
        };
        let slot_last = if slot + 1 == slots {
            max_address(width)
        } else {
            start + (((slot as u128 + 1) << slot_shift) - 1)
        };
        while first + 1 < ranges.len() && ranges[first + 1].start() <= slot_first {
            first += 1;
        }
        let mut end = first + 1;
        while end < ranges.len() && ranges[end].start() <= slot_last {
            end += 1;
        }
        out.push((first, end - first));
    }
    out
}

/// A source table element of one family, as the program reads it: a directory
/// slot or a range.
pub trait Element: Copy + Default {
    /// Address bits of the family.
    const WIDTH: u32;
    /// The table of `entries` (`N`: the family's address bytes), made to fit in
    /// `capacity` elements if it can.
    fn build<const N: usize>(
        entries: &[PrefixEntry<N>],
        capacity: usize,
    ) -> Result<SourceTable<Self>, TooManyClasses>;
    /// The class the program finds for `key` (in the low bits; masked where it
    /// is read), None where it would read outside the table.
    fn find(table: &SourceTable<Self>, key: u128) -> Option<u32>;
    /// The table's ranges (first address, class), sorted, the first at 0; None if
    /// the table is not well formed.
    fn pieces(table: &SourceTable<Self>) -> Option<Vec<(u128, u32)>>;
}

impl Element for SourceRangeV4 {
    const WIDTH: u32 = 32;

    fn build<const N: usize>(
        entries: &[PrefixEntry<N>],
        capacity: usize,
    ) -> Result<SourceTable<Self>, TooManyClasses> {
        v4::build(entries, capacity)
    }

    fn find(table: &SourceTable<Self>, key: u128) -> Option<u32> {
        v4::find(&table.elements, u32::try_from(key).ok()?)
    }

    fn pieces(table: &SourceTable<Self>) -> Option<Vec<(u128, u32)>> {
        v4::pieces(&table.elements)
    }
}

impl Element for SourceRangeV6 {
    const WIDTH: u32 = 128;

    fn build<const N: usize>(
        entries: &[PrefixEntry<N>],
        capacity: usize,
    ) -> Result<SourceTable<Self>, TooManyClasses> {
        windowed_table(entries, capacity)
    }

    fn find(table: &SourceTable<Self>, key: u128) -> Option<u32> {
        lookup_element(table, key).map(RangeItem::answer)
    }

    fn pieces(table: &SourceTable<Self>) -> Option<Vec<(u128, u32)>> {
        table
            .elements
            .get(1usize.checked_shl(table.directory.bits)?..)
            .map(|ranges| ranges.iter().map(|r| (r.start(), r.answer())).collect())
    }
}

/// An element of a table with a windowed directory (IPv6): slots and ranges of
/// one type, the ranges after the directory, sorted.
trait Windowed: RangeItem<Answer = u32> + Default {
    /// Address bits of the family.
    const WIDTH: u32;
    /// The family's name, for errors.
    const FAMILY: &'static str;
    /// The directory of a table that fits in the preallocated map.
    const FULL_DIRECTORY_BITS: u32;
    /// Largest directory of a table in chunks: the elements of one chunk, where the
    /// program reads it.
    const CHUNKED_DIRECTORY_BITS: u32;
    /// A directory slot over `count` ranges from index `first`: for one range, its
    /// answer itself (`RangeItem::answer` of the slot), else the run.
    fn slot(first: usize, count: usize, answer: Self::Answer) -> Self;
    /// Of a slot: first range and the search's shape `(k, d)` (a first probe `d`
    /// ranges in, then `k` halvings of `2^k`; `2^k + d` ranges), or None when
    /// the slot holds its answer.
    fn run(&self) -> Option<(usize, u32, usize)>;
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

impl RangeItem for SourceRangeV6 {
    /// A class.
    type Answer = u32;

    fn range(start: u128, class: u32) -> Self {
        Self {
            start: [(start >> 64) as u64, start as u64],
            class,
            _pad: 0,
        }
    }

    fn start(&self) -> u128 {
        (u128::from(self.start[0]) << 64) | u128::from(self.start[1])
    }

    fn answer(&self) -> u32 {
        self.class
    }
}

impl Windowed for SourceRangeV6 {
    const WIDTH: u32 = 128;
    const FAMILY: &'static str = "IPv6";
    const FULL_DIRECTORY_BITS: u32 = MAX_DIRECTORY_BITS_V6;
    const CHUNKED_DIRECTORY_BITS: u32 = INLINE_TABLE_V6.trailing_zeros();

    fn slot(first: usize, count: usize, class: u32) -> Self {
        if count == 1 {
            Self {
                start: [SLOT_ANSWER_V6, 0],
                class,
                _pad: 0,
            }
        } else {
            let (k, d) = shape(count);
            Self {
                start: [
                    first as u64,
                    u64::from(k) | (d as u64) << SHAPE_FIRST_PROBE_SHIFT_V6,
                ],
                ..Self::default()
            }
        }
    }

    fn run(&self) -> Option<(usize, u32, usize)> {
        (self.start[0] != SLOT_ANSWER_V6).then_some((
            self.start[0] as usize,
            (self.start[1] & 63) as u32,
            (self.start[1] >> SHAPE_FIRST_PROBE_SHIFT_V6) as usize,
        ))
    }
}

/// The source table of `entries` (`N`: address bytes, matching `R`'s family),
/// made to fit in `capacity` elements if it can; an error if its answers are
/// more classes than the kernel holds.
pub fn table<R: Element, const N: usize>(
    entries: &[PrefixEntry<N>],
    capacity: usize,
) -> Result<SourceTable<R>, TooManyClasses> {
    debug_assert_eq!(8 * N as u32, R::WIDTH);
    R::build(entries, capacity)
}

/// [`table`] for a family with a windowed directory.
fn windowed_table<R: Windowed, const N: usize>(
    entries: &[PrefixEntry<N>],
    capacity: usize,
) -> Result<SourceTable<R>, TooManyClasses> {
    debug_assert_eq!(8 * N as u32, R::WIDTH);
    // The ranges go in after room for the largest directory they can get, which
    // a smaller one then shrinks: the table is made in one vector, in its final form.
    let most_ranges = 2 * entries.len() + 1;
    let room_bits = R::FULL_DIRECTORY_BITS
        .max(most_ranges.next_power_of_two().trailing_zeros())
        .min(R::CHUNKED_DIRECTORY_BITS);
    let room = 1usize << room_bits;
    let mut elements: Vec<R> = Vec::with_capacity(room + most_ranges);
    elements.resize(room, R::default());
    let mut classes = Classes::default();
    ranges(entries, &mut elements, |value| classes.intern(value));
    let classes = classes.into_entries(R::FAMILY)?;
    let count = elements.len() - room;
    let bits = directory_bits(
        count,
        capacity,
        R::FULL_DIRECTORY_BITS,
        R::CHUNKED_DIRECTORY_BITS,
    );
    let base = 1usize << bits;
    if base < room {
        elements.copy_within(room.., base);
        elements.truncate(base + count);
    }
    let (start, shared) = window(&elements[base..], R::WIDTH, bits);
    let slots = directory(&elements[base..], R::WIDTH, bits, (start, shared));
    for (slot, (first, count)) in (0..base).zip(slots) {
        let answer = elements[base + first].answer();
        elements[slot] = R::slot(base + first, count, answer);
    }
    Ok(SourceTable {
        directory: Directory {
            bits,
            base: top64(start, R::WIDTH),
            shift: 64 - shared - bits,
        },
        elements,
        classes,
    })
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

/// An address's top 64 bits, as the program keys the directory.
fn top64(address: u128, width: u32) -> u64 {
    ((address << (128 - width)) >> 64) as u64
}

/// What the program finds in `table` for the address `key`, step for step as
/// ebpf-programs/src/source.rs does: for tests of the layout. None where the
/// program would read outside the table, or would find a class the table does
/// not have.
pub fn lookup<R: Element>(table: &SourceTable<R>, key: u128) -> Option<SourceEntry> {
    entry(R::find(table, key)?, &table.classes)
}

/// The element (directory slot or range) whose answer [`lookup`] reads, in a
/// table with a windowed directory.
fn lookup_element<R: Windowed>(table: &SourceTable<R>, key: u128) -> Option<&R> {
    let slot = table
        .elements
        .get(table.directory.slot(top64(key, R::WIDTH)))?;
    let Some((mut base, k, d)) = slot.run() else {
        return Some(slot);
    };
    // A first probe `d` in, then halvings of `2^k`, as the program steps.
    let mut step = d;
    let mut next = 1usize.checked_shl(k)? >> 1;
    loop {
        if table.elements.get(base + step)?.start() <= key {
            base += step;
        }
        if next == 0 {
            break;
        }
        step = next;
        next >>= 1;
    }
    table.elements.get(base)
}

#[cfg(test)]
mod tests;
