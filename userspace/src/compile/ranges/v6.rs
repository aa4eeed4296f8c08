//! The IPv6 table's layout (layout 13, `airlock_common::SourceRangeV6`): a
//! directory of 4-byte slots over the table's window, then runs of ranges that
//! hold only the bits below their slot's prefix (one word where the run's
//! boundaries are /64 ones, two otherwise), each run searched in `k` halvings.

use airlock_common::{
    DIRECTORY_BITS_V6, DIRECTORY_WORDS_V6, INLINE_TABLE_V6, MAX_CLASSES, MAX_WINDOW_V6,
    RANGE_CLASS_BITS_V6, RUN_HALVINGS_SHIFT_V6, RUN_INDEX_MASK_V6, RUN_WIDE_V6, SLOT_ANSWER_V6,
    SourceRangeV6,
};

use super::{Directory, Out, RangeItem};

pub(super) const SLOTS: usize = 1 << DIRECTORY_BITS_V6;
/// Words per chunk (and in the preallocated value).
const CHUNK: usize = INLINE_TABLE_V6 as usize;
const MASK: u64 = INLINE_TABLE_V6 as u64 - 1;
/// A range's class bits.
const CLASS_MASK: u64 = (1 << RANGE_CLASS_BITS_V6) - 1;

/// A range while the table is made: first address and class. Aligned to 2,
/// not to the address's 16: 18 bytes, not 32 (a plan at a million prefixes
/// holds half a million of them, each new memory on every apply). A class fits
/// in 16 bits (`MAX_CLASSES`); a plan with more classes is refused whatever its
/// pieces hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed(2))]
pub struct Piece {
    start: u128,
    class: u16,
}

const _: () = assert!(size_of::<Piece>() == 18 && MAX_CLASSES <= 1 << 16);

impl Piece {
    fn class(&self) -> u32 {
        u32::from(self.class)
    }
}

impl RangeItem for Piece {
    type Answer = u32;

    fn range(start: u128, class: u32) -> Self {
        Piece {
            start,
            class: u16::try_from(class).unwrap_or(u16::MAX),
        }
    }

    fn start(&self) -> u128 {
        self.start
    }

    fn answer(&self) -> u32 {
        self.class()
    }
}

/// The window over `pieces`: its first address and the leading bits every
/// boundary shares (at most `MAX_WINDOW_V6`).
fn window(pieces: &[Piece]) -> (u128, u32) {
    let (Some(first), Some(last)) = (pieces.get(1), pieces.last()) else {
        return (0, 0);
    };
    let shared = (first.start ^ last.start)
        .leading_zeros()
        .min(MAX_WINDOW_V6);
    (first.start & keep(shared), shared)
}

/// A run of `ranges` ranges (at least 2), `wide` or compact: its halvings `k`
/// (padded to 2^k ranges; compared, the ranges after the first) and its words.
fn run_shape(ranges: usize, wide: bool) -> (u32, usize) {
    let k = usize::BITS - (ranges - 1).leading_zeros();
    (k, (if wide { 2 } else { 1 }) << k)
}

/// Whether a table of `entries` prefixes can have an [`overfull_slot`]: each
/// prefix adds at most two pieces (its start and the address after it).
pub(super) fn may_overfill(entries: usize) -> bool {
    entries.saturating_mul(2).saturating_add(1) > CHUNK / 2
}

/// The first slot whose run (the range holding the slot's first address, then
/// one for each piece starting inside it, padded as [`lay_out`] pads it) would
/// be longer than a chunk: [`lay_out`] would lay it across the chunk's end,
/// where the program's search, which stays inside one chunk, wraps.
pub(super) fn overfull_slot(pieces: &[Piece]) -> Option<super::OverfullSlot> {
    // No run takes more ranges than there are pieces (a wide run of `CHUNK / 2`
    // fills a chunk).
    if pieces.len() <= CHUNK / 2 {
        return None;
    }
    let (start, shared) = window(pieces);
    let prefix = shared + DIRECTORY_BITS_V6;
    let span = 128 - prefix;
    let end = start | !keep(shared);
    // The slot being counted, its ranges so far, and whether a range after its
    // first is wide (as `lay_out` decides it).
    let mut current: Option<(u128, usize, bool)> = None;
    let overfull = |(slot, ranges, wide): (u128, usize, bool)| {
        (run_shape(ranges, wide).1 > CHUNK).then(|| super::OverfullSlot {
            slot: ipnet::Ipv6Net::new((start + (slot << span)).into(), prefix as u8)
                .unwrap_or_default(),
            ranges,
            max: if wide { CHUNK / 2 } else { CHUNK },
        })
    };
    for piece in pieces {
        if piece.start < start || piece.start > end {
            continue;
        }
        let offset = piece.start - start;
        if offset & ((1u128 << span) - 1) == 0 {
            // Starts its slot: the first range of that slot's run.
            continue;
        }
        let slot = offset >> span;
        let wide = piece.start as u64 != 0;
        match &mut current {
            Some((at, ranges, any_wide)) if *at == slot => {
                *ranges += 1;
                *any_wide |= wide;
            }
            _ => {
                if let Some(found) = current.and_then(overfull) {
                    return Some(found);
                }
                current = Some((slot, 2, wide));
            }
        }
    }
    current.and_then(overfull)
}

/// The top `bits` bits of an address.
fn keep(bits: u32) -> u128 {
    u128::MAX.checked_shl(128 - bits).unwrap_or(0)
}

/// The class of the piece `address` falls in.
fn class_at(pieces: &[Piece], address: u128) -> u32 {
    let at = pieces.partition_point(|p| p.start <= address);
    pieces[at.saturating_sub(1)].class()
}

/// A range of a compact run: its first address's top 64 bits after the slot's
/// prefix (`prefix` bits), shifted right once (the sign bit stays clear for the
/// program's subtraction), its class below.
fn compact(piece: Piece, prefix: u32) -> u64 {
    ((((piece.start >> 64) as u64) << prefix) >> 1) | u64::from(piece.class())
}

/// A range of a wide run: its first address after the slot's prefix, as 128
/// bits, its class in the low bits (which `prefix >= 19` leaves zero).
fn wide(piece: Piece, prefix: u32) -> [u64; 2] {
    let shifted = piece.start << prefix;
    [
        (shifted >> 64) as u64,
        shifted as u64 | u64::from(piece.class()),
    ]
}

/// Slot `slot` of the directory, from the words it is packed in (two a word,
/// the first in the low half, as a little-endian machine reads it).
fn slot_value(elements: &[SourceRangeV6], slot: usize) -> Option<u32> {
    elements
        .get(slot / 2)
        .map(|word| (word.0 >> (32 * (slot % 2))) as u32)
}

fn set_slot(elements: &mut [SourceRangeV6], slot: usize, value: u32) {
    let shift = 32 * (slot % 2);
    let word = &mut elements[slot / 2].0;
    *word = (*word & !(0xffff_ffff << shift)) | (u64::from(value) << shift);
}

/// The IPv6 table of `pieces` laid out into `elements`: the directory and its
/// two slots outside the window, then the runs (from word 2^18 + 1, right after
/// them in the preallocated value, or, with `capacity` below the preallocated
/// value's words (tests of chunks), from the first chunk).
pub(super) fn lay_out<E: Out<SourceRangeV6>>(
    pieces: &[Piece],
    capacity: usize,
    elements: &mut E,
) -> Directory {
    let (start, shared) = window(pieces);
    let prefix = shared + DIRECTORY_BITS_V6;
    // Address bits below a slot's prefix.
    let span = 128 - prefix;
    let outside = DIRECTORY_WORDS_V6 as usize;
    let first_run = if capacity >= CHUNK {
        outside + 1
    } else {
        CHUNK
    };
    // Room for a run padded to twice its ranges at two words each, so that a
    // vector does not regrow at the sizes measured: regrowing copies the table
    // into fresh memory, about 10 MiB more zeroed and copied at a million
    // prefixes (fresh pages are most of a re-apply's variance,
    // docs/performance.md). Not a bound: runs that repeat a range of the slot
    // before, or skip to a chunk's start, can take more, and the vector then
    // grows as it did. Memory reserved and never written costs nothing.
    elements.reserve(first_run + 4 * pieces.len() + CHUNK);
    elements.resize(first_run, SourceRangeV6::default());
    // Below the window, and above it (when the window is everything, neither
    // slot is read).
    let end = start | !keep(shared);
    let below = class_at(pieces, start.wrapping_sub(1));
    let above = class_at(pieces, end.wrapping_add(1));
    set_slot(elements, SLOTS, SLOT_ANSWER_V6 | below);
    set_slot(elements, SLOTS + 1, SLOT_ANSWER_V6 | above);
    // `at`: the piece holding the slot's first address; `last`: the piece whose
    // range ends `elements`, and whether it is wide, if any (a run may begin
    // with it).
    // `next`: the first piece starting after the slot before (so at or after
    // this slot's first address), or the first inside the window.
    let mut next = pieces.partition_point(|p| p.start <= start);
    let mut last = None;
    let mut slot = 0;
    while slot < SLOTS && !elements.full() {
        let first = start + ((slot as u128) << span);
        let slot_last = first + ((1u128 << span) - 1);
        // Starts strictly increase, and the piece before `next` starts before
        // this slot: the slot's first address is in `next` if it starts there,
        // else in the one before. No piece is read twice to find it.
        let at = match pieces.get(next) {
            Some(piece) if piece.start == first => next,
            _ => next.saturating_sub(1),
        };
        let mut end = at + 1;
        while end < pieces.len() && pieces[end].start <= slot_last {
            end += 1;
        }
        if end - at == 1 {
            // Every slot before the one the next piece starts in lies inside
            // this piece too: most of a directory, filled without its
            // addresses worked out slot by slot.
            let stretch = pieces.get(at + 1).map_or(SLOTS, |p| {
                usize::try_from((p.start - start) >> span).map_or(SLOTS, |s| s.min(SLOTS))
            });
            let answer = SLOT_ANSWER_V6 | pieces[at].class();
            for within in slot..stretch.max(slot + 1) {
                set_slot(elements, within, answer);
            }
            slot = stretch.max(slot + 1);
            next = end;
            continue;
        }
        let is_wide = pieces[at + 1..end].iter().any(|p| p.start as u64 != 0);
        let width = if is_wide { 2 } else { 1 };
        // At most a chunk: a longer run is refused with the plan
        // (`overfull_slot`), as the program's search stays in one chunk.
        let (k, words) = run_shape(end - at, is_wide);
        let push = |elements: &mut E, piece: Piece| {
            if is_wide {
                let [high, low] = wide(piece, prefix);
                elements.push_all([SourceRangeV6(high), SourceRangeV6(low)]);
            } else {
                elements.push(SourceRangeV6(compact(piece, prefix)));
            }
        };
        let mut run = elements.len() - width;
        if last != Some((at, is_wide)) || run / CHUNK != (run + words - 1) / CHUNK {
            run = elements.len();
            if run / CHUNK != (run + words - 1) / CHUNK {
                // Never read: the run moves to the next chunk, searched from one pointer.
                run = (run / CHUNK + 1) * CHUNK;
                elements.resize(run, SourceRangeV6::default());
            }
            push(elements, pieces[at]);
        }
        for &piece in &pieces[at + 1..end] {
            push(elements, piece);
        }
        while elements.len() < run + words {
            push(elements, pieces[end - 1]);
        }
        last = Some((end - 1, is_wide));
        debug_assert!(run as u32 <= RUN_INDEX_MASK_V6);
        let flag = if is_wide { RUN_WIDE_V6 } else { 0 };
        set_slot(
            elements,
            slot,
            run as u32 | (k << RUN_HALVINGS_SHIFT_V6) | flag,
        );
        slot += 1;
        next = end;
    }
    Directory {
        bits: DIRECTORY_BITS_V6,
        base: (start >> 64) as u64,
        shift: 64 - prefix,
    }
}

/// What the program finds for `key` in `elements` (a table's words end to end,
/// chunk `c` from word `c * 2^19`) with the directory `directory`, step for step
/// as ebpf-programs/src/source.rs does: the word whose low 16 bits are the
/// class. None where the program would read outside the table. (The program
/// writes the two halvings of a 4-range run out, from its first word; it reads
/// the same words in the same order as the loop here.)
pub(super) fn find(elements: &[SourceRangeV6], directory: &Directory, key: u128) -> Option<u32> {
    let (high, low) = ((key >> 64) as u64, key as u64);
    let shift = directory.shift & 63;
    let mut slot = high.wrapping_sub(directory.base) >> shift;
    if slot >= SLOTS as u64 {
        slot = SLOTS as u64 + u64::from(high >= directory.base);
    }
    let value = slot_value(elements, slot as usize)?;
    if value & SLOT_ANSWER_V6 != 0 {
        return Some(value);
    }
    let index = u64::from(value & RUN_INDEX_MASK_V6);
    let chunk = (index & !MASK) as usize;
    let get = |i: u64| elements.get(chunk + (i & MASK) as usize).map(|e| e.0);
    let prefix = (64 - shift) & 63;
    let k = (value >> RUN_HALVINGS_SHIFT_V6) & 31;
    let mut base = index & MASK;
    if value & RUN_WIDE_V6 == 0 {
        let bound = (((high << prefix) >> 1) | CLASS_MASK) + 1;
        let mut step = (1u64 << k) >> 1;
        while step != 0 {
            if get(base + step)? < bound {
                base += step;
            }
            step >>= 1;
        }
        get(base).map(|word| word as u32)
    } else {
        let key = (u128::from((high << prefix) | (low >> shift)) << 64)
            | u128::from((low << prefix) | CLASS_MASK);
        let mut step = 1u64 << k;
        while step > 1 {
            let start = (u128::from(get(base + step)?) << 64) | u128::from(get(base + step + 1)?);
            if start <= key {
                base += step;
            }
            step >>= 1;
        }
        get(base + 1).map(|word| word as u32)
    }
}

/// The class a word names, masked as the program masks it.
fn class(word: u64) -> u32 {
    word as u32 & (MAX_CLASSES - 1)
}

/// The table read back as its ranges (first address, class), adjacent equal
/// classes merged: the function of the address the program computes. None if
/// the program's search would not compute one: a directory or window the
/// program does not read so, a run out of the table or across a chunk boundary,
/// or with its ranges out of order or bits where the program ignores them.
pub(super) fn pieces(
    elements: &[SourceRangeV6],
    directory: &Directory,
) -> Option<Vec<(u128, u32)>> {
    let shift = directory.shift;
    if directory.bits != DIRECTORY_BITS_V6 || shift == 0 || shift > 64 - DIRECTORY_BITS_V6 {
        return None;
    }
    let prefix = 64 - shift;
    let span = 128 - prefix;
    let shared = prefix - DIRECTORY_BITS_V6;
    let start = u128::from(directory.base) << 64;
    if start & !keep(shared) != 0 {
        return None;
    }
    let end = start | !keep(shared);
    // Bits between a range's offset and its class, which the program compares
    // and a range made from an address leaves zero.
    let stray = |word: u64, bits: u32| word & ((1u64 << bits) - 1) & !CLASS_MASK != 0;
    let mut out: Vec<(u128, u32)> = Vec::new();
    let mut push = |start: u128, class: u32| match out.last_mut() {
        Some(last) if last.0 == start => last.1 = class,
        Some(last) if last.1 == class => {}
        _ => out.push((start, class)),
    };
    let (below, above) = (
        slot_value(elements, SLOTS)?,
        slot_value(elements, SLOTS + 1)?,
    );
    if (below & above) & SLOT_ANSWER_V6 == 0 {
        return None;
    }
    push(0, class(below.into()));
    for slot in 0..SLOTS {
        let first = start + ((slot as u128) << span);
        let value = slot_value(elements, slot)?;
        if value & SLOT_ANSWER_V6 != 0 {
            push(first, class(value.into()));
            continue;
        }
        let index = (value & RUN_INDEX_MASK_V6) as usize;
        let k = (value >> RUN_HALVINGS_SHIFT_V6) & 31;
        let is_wide = value & RUN_WIDE_V6 != 0;
        let width = if is_wide { 2 } else { 1 };
        let words = width << k;
        if index / CHUNK != (index + words - 1) / CHUNK {
            return None;
        }
        let run = elements.get(index..index + words)?;
        let mut offset = 0;
        for (i, range) in run.chunks(width).enumerate() {
            let (at, last) = if is_wide {
                (
                    ((u128::from(range[0].0) << 64) | u128::from(range[1].0 & !CLASS_MASK))
                        >> prefix,
                    range[1].0,
                )
            } else {
                (
                    (u128::from((range[0].0 & !CLASS_MASK) << 1) << 64) >> prefix,
                    range[0].0,
                )
            };
            if i == 0 {
                push(first, class(last));
                continue;
            }
            let bits = if is_wide { prefix } else { prefix - 1 };
            if at < offset.max(1) || stray(last, bits) {
                return None;
            }
            offset = at;
            push(first + at, class(last));
        }
    }
    if end != u128::MAX {
        push(end + 1, class(above.into()));
    }
    out.dedup_by(|next, prev| next.1 == prev.1);
    Some(out)
}
