//! A source address's answer from its generation's source table (layouts in
//! `airlock_common::SourceRangeV4` and `SourceRangeV6`): its directory slot, which
//! most often holds the answer, else a branch-free search of the slot's ranges, in
//! the preallocated table or in the generation's chunks. An answer is a class,
//! whose entry is read from the `POLICY` value the caller holds.

use airlock_common::{
    CHUNKS_PER_GENERATION, DIRECTORY_SHIFT_V4, GenPolicy, INLINE_TABLE_V4, MAX_CLASSES,
    RANGE_OFFSET_SHIFT_V4, RUN_FIRST_PROBE_SHIFT_V4, RUN_HALVINGS_SHIFT_V4, RUN_INDEX_MASK_V4,
    SHAPE_FIRST_PROBE_SHIFT_V6, SLOT_ANSWER_V4, SLOT_ANSWER_V6, SourceEntry, SourceRangeV4,
    SourceRangeV6, TABLE_INLINE_V6,
};

use crate::maps::{SRC_V4, SRC_V4_INLINE, SRC_V6, SRC_V6_INLINE};

/// What the search needs of a table element, per family.
trait Range {
    /// The address, as compared with a range's first address.
    type Key: Copy;
    /// Of a directory slot: whether it holds its answer itself (`entry`).
    fn is_answer(&self) -> bool;
    /// A directory slot's first range and search shape `(k, d)`: a first probe
    /// `d` ranges in, then `k` halvings of `2^k` ranges.
    fn run(&self) -> (u32, u32, u32);
    /// `step` if this range starts at or before `key`, else 0, with no branch.
    fn step_if_at_or_before(&self, key: Self::Key, step: u32) -> u32;
    /// The class of a range's (or answer slot's) answer.
    fn answer(&self) -> u32;
}

impl Range for SourceRangeV6 {
    /// The address's high and low 64 bits.
    type Key = (u64, u64);

    #[inline(always)]
    fn is_answer(&self) -> bool {
        self.start[0] == SLOT_ANSWER_V6
    }

    #[inline(always)]
    fn run(&self) -> (u32, u32, u32) {
        (
            self.start[0] as u32,
            (self.start[1] & 63) as u32,
            (self.start[1] >> SHAPE_FIRST_PROBE_SHIFT_V6) as u32,
        )
    }

    /// The borrow out of `key - start` as a 128-bit subtraction, made a mask.
    /// LLVM turns it into compares and branches: the verifier walks more paths,
    /// but a predicted branch lets the next probe's load start at once, where
    /// the borrow's arithmetic would delay it a dozen instructions.
    #[inline(always)]
    fn step_if_at_or_before(&self, (high, low): (u64, u64), step: u32) -> u32 {
        let low_borrow = subtract_borrow(low, self.start[1], low.wrapping_sub(self.start[1]));
        let high_diff = high.wrapping_sub(self.start[0]).wrapping_sub(low_borrow);
        let borrow = subtract_borrow(high, self.start[0], high_diff) as u32;
        step & borrow.wrapping_sub(1)
    }

    #[inline(always)]
    fn answer(&self) -> u32 {
        self.class
    }
}

/// Source entry for an IPv4 address in generation `generation` (`policy` is its
/// `POLICY` value, read once per packet by the caller): its class's entry, 0
/// (the empty entry) if the table cannot be read.
#[inline(always)]
pub fn source_v4(generation: u32, policy: &GenPolicy, addr: [u8; 4]) -> SourceEntry {
    let class = class_v4(generation, u32::from_be_bytes(addr)).unwrap_or_default();
    // Masked, the index is in bounds by construction: a load at an offset the
    // verifier bounds, no lookup.
    policy.classes_v4[(class & (MAX_CLASSES - 1)) as usize]
}

/// An IPv4 table value (preallocated or a chunk), as the program reads it.
type TableV4 = [SourceRangeV4; INLINE_TABLE_V4 as usize];

/// The class of `key` in generation `generation`'s IPv4 table (in its low 16
/// bits). The directory is the start of the preallocated value, read at a fixed
/// stride; a run lies there too, or in one chunk.
#[inline(always)]
fn class_v4(generation: u32, key: u32) -> Option<u32> {
    let first = SRC_V4_INLINE.get(generation)?;
    // Below 2^19 by the shift: in bounds, no mask.
    let slot = first[(key >> DIRECTORY_SHIFT_V4) as usize].0;
    if slot & SLOT_ANSWER_V4 != 0 {
        return Some(slot);
    }
    let chunk = (slot & RUN_INDEX_MASK_V4) / INLINE_TABLE_V4;
    // Separate reads of separate maps, each call site with its own map, so the
    // verifier inlines both (check the xlated dump for `call` after a change).
    let table: &TableV4 = if chunk == 0 {
        first
    } else {
        SRC_V4.get(chunk_slot(generation, chunk))?.get(0)?
    };
    Some(search_v4(table, u64::from(slot), key))
}

/// Shar's search of the run `slot` names: one probe `d` elements past its first,
/// then `k` halvings of `2^k` elements, each step a load, a subtraction and a
/// mask (see `airlock_common::SourceRangeV4`). In 64 bits throughout: no
/// instruction spent clearing upper halves.
#[inline(always)]
fn search_v4(table: &TableV4, slot: u64, key: u32) -> u32 {
    let mask = u64::from(INLINE_TABLE_V4 - 1);
    // A range is `offset << 16 | class`: it starts at or before the address
    // when it is below `bound`.
    let offset = key & ((1 << DIRECTORY_SHIFT_V4) - 1);
    let bound = u64::from((offset + 1) << RANGE_OFFSET_SHIFT_V4);
    // The run's first element in its chunk.
    let mut base = slot & mask;
    let first_probe = ((slot >> RUN_FIRST_PROBE_SHIFT_V4) & 7) + 1;
    base += step_if_before(
        table[((base + first_probe) & mask) as usize],
        bound,
        first_probe,
    );
    let mut step = (1u64 << ((slot >> RUN_HALVINGS_SHIFT_V4) & 15)) >> 1;
    while step != 0 {
        base += step_if_before(table[((base + step) & mask) as usize], bound, step);
        step >>= 1;
    }
    table[(base & mask) as usize].0
}

/// As `source_v4`, for IPv6.
#[inline(always)]
pub fn source_v6(generation: u32, policy: &GenPolicy, addr: [u8; 16]) -> SourceEntry {
    let config = &policy.config;
    let high = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let low = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let slot = directory_slot(
        high,
        config.directory_base_v6,
        config.directory_shift_v6,
        config.directory_bits_v6,
    );
    let class = find(
        config.inline_tables & TABLE_INLINE_V6 != 0,
        || SRC_V6_INLINE.get(generation),
        |index| SRC_V6.get(chunk_slot(generation, index))?.get(0),
        slot,
        (high, low),
    );
    policy.classes_v6[(class & (MAX_CLASSES - 1)) as usize]
}

/// The answer for `key` (in directory slot `slot`) in the table wherever it is: the
/// preallocated map's value (`preallocated`, from `table`) or chunks of the same
/// size (`chunk(k)`: chunk `k`, for policies too large for it).
///
/// The two places are searched by separate code, each reading its own maps. Should
/// LLVM ever merge their reads into one call site reading either map, the verifier
/// could no longer inline it (every read a helper call): check the xlated dump for
/// `call` after changing this.
#[inline(always)]
fn find<'a, R: Range + 'a, const N: usize>(
    preallocated: bool,
    table: impl FnOnce() -> Option<&'a [R; N]>,
    chunk: impl Fn(u32) -> Option<&'a [R; N]>,
    slot: u32,
    key: R::Key,
) -> u32 {
    let found = if preallocated {
        let mask = N as u32 - 1;
        // Masked, the index is in bounds by construction: no check, no branch.
        table().and_then(|table| search(|i| Some(&table[(i & mask) as usize]), slot, key))
    } else {
        search_chunks(chunk, slot, key)
    };
    found.map(Range::answer).unwrap_or_default()
}

/// `step` if `element` is below `bound`, else 0: the sign of `element - bound`
/// as a mask, in three instructions and no branch. Written in assembly because
/// LLVM turns the same arithmetic into a compare and a branch, which doubles the
/// verifier's paths at every step of the search.
#[inline(always)]
fn step_if_before(element: SourceRangeV4, bound: u64, step: u64) -> u64 {
    let mut value = u64::from(element.0);
    // SAFETY: register arithmetic only.
    unsafe {
        core::arch::asm!(
            "{v} -= {b}",
            "{v} s>>= 63",
            "{v} &= {s}",
            v = inout(reg) value,
            b = in(reg) bound,
            s = in(reg) step,
            options(pure, nomem, nostack),
        );
    }
    value
}

/// Slot of generation `generation`'s chunk `index` in `SRC_V4`/`SRC_V6`.
#[inline(always)]
fn chunk_slot(generation: u32, index: u32) -> u32 {
    generation * CHUNKS_PER_GENERATION + (index & (CHUNKS_PER_GENERATION - 1))
}

/// The search in a table cut into chunks of `N` elements (`chunk(k)` is chunk `k`).
/// The directory lies in chunk 0 (it has at most a chunk's elements). A slot's run almost
/// always lies in one chunk: it is then searched from that chunk's pointer, as the
/// preallocated table is; a run that straddles a boundary resolves the chunk of
/// every element it reads.
#[inline(always)]
fn search_chunks<'a, R: Range + 'a, const N: usize>(
    chunk: impl Fn(u32) -> Option<&'a [R; N]>,
    slot: u32,
    key: R::Key,
) -> Option<&'a R> {
    // A power of two: `i / n` is the chunk of element `i`, `i & mask` its place.
    let n = N as u32;
    let mask = n - 1;
    let directory = &chunk(0)?[(slot & mask) as usize];
    if directory.is_answer() {
        return Some(directory);
    }
    let (first, k, d) = directory.run();
    let last = first
        .wrapping_add(1 << (k & 31))
        .wrapping_add(d)
        .wrapping_sub(1);
    if first / n == last / n {
        let table = chunk(first / n)?;
        search_run(|i| Some(&table[(i & mask) as usize]), first, k, d, key)
    } else {
        let get = |i: u32| Some(&chunk(i / n)?[(i & mask) as usize]);
        search_run(get, first, k, d, key)
    }
}

/// The last range of `slot`'s run that starts at or before `key`, or the slot
/// itself when it holds the answer.
#[inline(always)]
fn search<'a, R: Range + 'a>(
    get: impl Fn(u32) -> Option<&'a R>,
    slot: u32,
    key: R::Key,
) -> Option<&'a R> {
    let directory = get(slot)?;
    if directory.is_answer() {
        return Some(directory);
    }
    let (base, k, d) = directory.run();
    search_run(get, base, k, d, key)
}

/// The last of the `2^k + d` ranges from `base` on that starts at or before
/// `key`: a probe `d` in, then `k` halvings (Shar's search), branch-free (a
/// branch would double the verifier's paths at every step).
#[inline(always)]
fn search_run<'a, R: Range + 'a>(
    get: impl Fn(u32) -> Option<&'a R>,
    mut base: u32,
    k: u32,
    d: u32,
    key: R::Key,
) -> Option<&'a R> {
    base += get(base + d)?.step_if_at_or_before(key, d);
    // At most 22 halvings (a table has fewer than 2^23 ranges); masked so the
    // verifier sees the loop end.
    let mut step = (1u32 << (k & 31)) >> 1;
    while step != 0 {
        base += get(base + step)?.step_if_at_or_before(key, step);
        step >>= 1;
    }
    get(base)
}

/// The directory slot of an address whose top 64 bits are `high`: its place in the
/// table's window (`base`, `shift`; see `airlock_common::GenConfig`), clamped to
/// the `2^bits` slots.
#[inline(always)]
fn directory_slot(high: u64, base: u64, shift: u32, bits: u32) -> u32 {
    if bits == 0 || high < base {
        return 0;
    }
    let slot = (high - base) >> (shift & 63);
    let last = (1u64 << (bits & 63)) - 1;
    (if slot > last { last } else { slot }) as u32
}

/// Borrow out of `a - b (- borrow in) = difference`, from the operands' top bits.
#[inline(always)]
fn subtract_borrow(a: u64, b: u64, difference: u64) -> u64 {
    ((!a & b) | (!(a ^ b) & difference)) >> 63
}
