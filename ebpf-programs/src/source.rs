//! A source address's answer from its generation's source table (layouts in
//! `airlock_common::SourceRangeV4` and `SourceRangeV6`): its directory slot, which
//! most often holds the answer, else a search of the slot's run of ranges, in
//! the preallocated value or in one of the generation's chunks. An answer is a class,
//! whose entry is read from the `POLICY` value the caller holds.

use airlock_common::{
    CHUNKS_PER_GENERATION, DIRECTORY_BITS_V6, DIRECTORY_SHIFT_V4, GenConfig, GenPolicy,
    INLINE_TABLE_V4, INLINE_TABLE_V6, MAX_CLASSES, PREALLOCATED_VALUES_V4, RANGE_CLASS_BITS_V6,
    RANGE_OFFSET_SHIFT_V4, RUN_FIRST_PROBE_SHIFT_V4, RUN_HALVINGS_SHIFT_V4, RUN_HALVINGS_SHIFT_V6,
    RUN_INDEX_MASK_V4, RUN_INDEX_MASK_V6, RUN_WIDE_V6, SLOT_ANSWER_V4, SLOT_ANSWER_V6, SourceEntry,
    SourceRangeV4, SourceRangeV6,
};

use crate::maps::{SRC_V4, SRC_V4_INLINE, SRC_V6, SRC_V6_INLINE};

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
/// bits). The directory is the start of the preallocated value `2g`, read at a
/// fixed stride; a run lies there too, in the generation's second value `2g + 1`
/// (chunk 1), or in a chunk map.
///
/// The second value's lookup is a plain array lookup the verifier inlines,
/// its key the generation's alone: behind the predicted branch on the slot's
/// chunk the processor runs it without waiting for the slot, so the runs of a
/// table of up to 2^21 elements (about 700,000 IPv4 prefixes) never wait on
/// a lookup (nor on an array of maps). Looked up before the directory read
/// instead, it cost a table whose runs are all in the first value (100k
/// prefixes) 0.2-1 ns on refused packets and gained nothing over this at 1M
/// (measured, session 21). Further chunks are looked up from the slot.
#[inline(always)]
fn class_v4(generation: u32, key: u32) -> Option<u32> {
    let first = SRC_V4_INLINE.get(generation * PREALLOCATED_VALUES_V4)?;
    // Below 2^19 by the shift: in bounds, no mask.
    let slot = first[(key >> DIRECTORY_SHIFT_V4) as usize].0;
    if slot & SLOT_ANSWER_V4 != 0 {
        return Some(slot);
    }
    let chunk = (slot & RUN_INDEX_MASK_V4) / INLINE_TABLE_V4;
    // Chunk maps are read through their own call site, so the verifier
    // inlines it (check the xlated dump for `call` after a change).
    let table: &TableV4 = if chunk == 0 {
        first
    } else if chunk == 1 {
        SRC_V4_INLINE.get(generation * PREALLOCATED_VALUES_V4 + 1)?
    } else {
        SRC_V4.get(chunk_slot(generation, chunk))?.get(0)?
    };
    Some(search_v4(table, u64::from(slot), key))
}

/// Shar's search of the run `slot` names: one probe `d` elements past its first,
/// then `k` halvings of `2^k` elements, each step a load, a subtraction and a
/// mask (see `airlock_common::SourceRangeV4`). In 64 bits throughout: no
/// instruction spent clearing upper halves.
///
/// A run of up to 16 elements (`k <= 3`: all but a few hundred of a 1M-prefix
/// table's runs) is searched by the same steps written out, from its first
/// element checked once to leave room for the run in the value: each load is
/// then at an offset from that one pointer, not masked and scaled on its own,
/// and no loop counter is kept (as IPv6's runs of four, session 18). Its last
/// step loads the element it stands on beside the one it compares and keeps
/// one of the two by a mask (`last_step`): the answer is not one more load
/// waiting on that comparison, `k + 1` dependent loads from the slot, not
/// `k + 2`. Longer runs, and the rare run too close to the end of its value
/// for the check, take the loop; both find the same element.
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
    let halvings = (slot >> RUN_HALVINGS_SHIFT_V4) & 15;
    if halvings <= 3 && base <= mask - (WRITTEN_OUT_V4 - 1) {
        // Each step moves a pointer by its step's bytes or not at all and
        // loads at a constant offset from it: an add, a load, a subtraction,
        // a shift and a mask a step (BPF has no scaled index). The verifier
        // bounds the pointer by the check above and the masks' ranges.
        // SAFETY: every element read is at most 8 + 4 + 2 + 1 = 15 past the
        // run's first, `base`, which leaves `WRITTEN_OUT_V4` elements in the
        // value (checked just above).
        unsafe {
            let mut at: *const u32 = table.as_ptr().add(base as usize).cast();
            let probe_bytes = first_probe * 4;
            if halvings == 0 {
                return last_step(*at, *at.byte_add(probe_bytes as usize), bound);
            }
            at = at.byte_add(
                (before_mask(u64::from(*at.byte_add(probe_bytes as usize)), bound) & probe_bytes)
                    as usize,
            );
            if halvings >= 3 {
                at = at.byte_add((before_mask(u64::from(*at.add(4)), bound) & 16) as usize);
            }
            if halvings >= 2 {
                at = at.byte_add((before_mask(u64::from(*at.add(2)), bound) & 8) as usize);
            }
            return last_step(*at, *at.add(1), bound);
        }
    }
    base += step_if_before(
        table[((base + first_probe) & mask) as usize].0,
        bound,
        first_probe,
    );
    let mut step = (1u64 << halvings) >> 1;
    while step != 0 {
        base += step_if_before(table[((base + step) & mask) as usize].0, bound, step);
        step >>= 1;
    }
    table[(base & mask) as usize].0
}

/// The last step of a written-out search: `after` if it starts at or before
/// the address (below `bound`), else `at`. Both are loaded together and one
/// chosen by a mask, so the answer is not a further load that waits on the
/// step's comparison.
#[inline(always)]
fn last_step(at: u32, after: u32, bound: u64) -> u32 {
    let at = u64::from(at);
    let after = u64::from(after);
    (at ^ ((at ^ after) & before_mask(after, bound))) as u32
}

/// Elements the written-out IPv4 search may read from a run's first: the
/// longest run it searches (`k = 3`, `d = 8`).
const WRITTEN_OUT_V4: u64 = 16;

/// As `source_v4`, for IPv6.
#[inline(always)]
pub fn source_v6(generation: u32, policy: &GenPolicy, addr: [u8; 16]) -> SourceEntry {
    let high = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let low = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let class = class_v6(generation, &policy.config, high, low).unwrap_or_default();
    policy.classes_v6[(class & (MAX_CLASSES - 1)) as usize]
}

/// An IPv6 table value (preallocated or a chunk), as the program reads it.
type TableV6 = [SourceRangeV6; INLINE_TABLE_V6 as usize];
/// The preallocated value seen as directory slots (4 bytes each).
type SlotsV6 = [u32; 2 * INLINE_TABLE_V6 as usize];

/// The class of the address `high`, `low` in generation `generation`'s IPv6
/// table (in its low 16 bits; see `airlock_common::SourceRangeV6`). The
/// directory is the start of the preallocated value, its window read from the
/// config; a run lies there too, or in one chunk.
#[inline(always)]
fn class_v6(generation: u32, config: &GenConfig, high: u64, low: u64) -> Option<u32> {
    let first: &TableV6 = SRC_V6_INLINE.get(generation)?;
    // SAFETY: the same value read as 4-byte slots: same size, weaker alignment.
    let slots: &SlotsV6 = unsafe { &*(first as *const TableV6).cast::<SlotsV6>() };
    let base = config.directory_base_v6;
    let shift = config.directory_shift_v6 & 63;
    let mut slot = high.wrapping_sub(base) >> shift;
    if slot >= 1 << DIRECTORY_BITS_V6 {
        // Outside the window: the slot for below it or the one for above.
        slot = (1 << DIRECTORY_BITS_V6) + u64::from(high >= base);
    }
    let slot = slots[(slot & (2 * INLINE_TABLE_V6 as u64 - 1)) as usize];
    if slot & SLOT_ANSWER_V6 != 0 {
        return Some(slot);
    }
    let chunk = (slot & RUN_INDEX_MASK_V6) / INLINE_TABLE_V6;
    // As for IPv4: separate reads of separate maps, so both are inlined.
    let table: &TableV6 = if chunk == 0 {
        first
    } else {
        SRC_V6.get(chunk_slot(generation, chunk))?.get(0)?
    };
    // The slot's prefix: 19 to 63 bits.
    let prefix = (64 - shift) & 63;
    let halvings = (slot >> RUN_HALVINGS_SHIFT_V6) & 31;
    let index = u64::from(slot & RUN_INDEX_MASK_V6);
    if slot & RUN_WIDE_V6 == 0 {
        let bound = (((high << prefix) >> 1) | ((1 << RANGE_CLASS_BITS_V6) - 1)) + 1;
        Some(search_v6(table, index, halvings, bound))
    } else {
        let key = ((high << prefix) | (low >> shift), (low << prefix) | 0xffff);
        Some(search_v6_wide(table, index, halvings, key))
    }
}

/// The search of a compact IPv6 run from word `base`: `k` halvings of `2^k`
/// ranges, each step as IPv4's (see `step_if_before`).
///
/// A run of 4 ranges (one prefix inside the slot, the commonest run) is
/// searched by the same two halvings written out, from the run's first word
/// checked once to leave room for the run in the value: each load is then at a
/// constant offset from it, not masked and scaled on its own, which at about
/// three instructions a load and the loop's own made most of such a search's
/// cost.
#[inline(always)]
fn search_v6(table: &TableV6, mut base: u64, k: u32, bound: u64) -> u32 {
    let mask = u64::from(INLINE_TABLE_V6 - 1);
    let first = base & mask;
    if k == 2 && first <= mask - 3 {
        // SAFETY: words `first` to `first + 3` are in the value (checked just above).
        let run: &[SourceRangeV6; 4] = unsafe { &*table.as_ptr().add(first as usize).cast() };
        let at = (before_mask(run[2].0, bound) & 2) as usize;
        let at = at + (before_mask(run[at + 1].0, bound) & 1) as usize;
        return run[at].0 as u32;
    }
    let mut step = (1u64 << k) >> 1;
    while step != 0 {
        base += step_if_before(table[((base + step) & mask) as usize].0, bound, step);
        step >>= 1;
    }
    table[(base & mask) as usize].0 as u32
}

/// The search of a wide IPv6 run (two words a range) from word `base`; of 4
/// ranges, written out as a compact run's.
#[inline(always)]
fn search_v6_wide(table: &TableV6, mut base: u64, k: u32, key: (u64, u64)) -> u32 {
    let mask = u64::from(INLINE_TABLE_V6 - 1);
    let first = base & mask;
    if k == 2 && first <= mask - 7 {
        // SAFETY: words `first` to `first + 7` are in the value (checked just above).
        let run: &[SourceRangeV6; 8] = unsafe { &*table.as_ptr().add(first as usize).cast() };
        let before = |at: usize| {
            let start = (run[at].0, run[at + 1].0);
            start.0 < key.0 || (start.0 == key.0 && start.1 <= key.1)
        };
        let last = if before(4) {
            if before(6) { 6 } else { 4 }
        } else if before(2) {
            2
        } else {
            0
        };
        return run[last + 1].0 as u32;
    }
    // In words: two a range.
    let mut step = 1u64 << k;
    while step > 1 {
        let at = base + step;
        let start = (
            table[(at & mask) as usize].0,
            table[((at + 1) & mask) as usize].0,
        );
        // Compared as two words, high first: in branches, which the
        // verifier walks in about three quarters of the instructions the
        // borrow of a 128-bit subtraction took it (127,102 against 169,905
        // for the program), and a predicted branch lets the next load start.
        if start.0 < key.0 || (start.0 == key.0 && start.1 <= key.1) {
            base += step;
        }
        step >>= 1;
    }
    table[((base + 1) & mask) as usize].0 as u32
}

/// All ones if `element` is below `bound`, else 0: `step_if_before` without
/// its mask, which the caller applies where the compiler must see the result's
/// range (an index it then need not check).
#[inline(always)]
fn before_mask(element: u64, bound: u64) -> u64 {
    let mut value = element;
    // SAFETY: register arithmetic only.
    unsafe {
        core::arch::asm!(
            "{v} -= {b}",
            "{v} s>>= 63",
            v = inout(reg) value,
            b = in(reg) bound,
            options(pure, nomem, nostack),
        );
    }
    value
}

/// `step` if `element` is below `bound`, else 0: the sign of `element - bound`
/// as a mask, in three instructions and no branch. Written in assembly because
/// LLVM turns the same arithmetic into a compare and a branch, which doubles the
/// verifier's paths at every step of the search.
#[inline(always)]
pub(crate) fn step_if_before(element: impl Into<u64>, bound: u64, step: u64) -> u64 {
    let mut value: u64 = element.into();
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
