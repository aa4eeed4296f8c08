//! The IPv4 table's layout (layout 12, `airlock_common::SourceRangeV4`): a
//! directory of 4-byte slots at a fixed stride, then runs of 4-byte ranges, each
//! run searched by Shar's method (one probe, then halvings of a power of two).

use airlock_common::{
    DIRECTORY_BITS_V4, DIRECTORY_SHIFT_V4, INLINE_TABLE_V4, MAX_CLASSES, PREALLOCATED_VALUES_V4,
    RANGE_OFFSET_SHIFT_V4, RUN_FIRST_PROBE_SHIFT_V4, RUN_HALVINGS_SHIFT_V4, RUN_INDEX_MASK_V4,
    SLOT_ANSWER_V4, SourceRangeV4,
};

use super::{Directory, Out, RangeItem};

pub(super) const SLOTS: usize = 1 << DIRECTORY_BITS_V4;
/// Addresses per slot.
const SPAN: u32 = 1 << DIRECTORY_SHIFT_V4;
/// Elements per chunk (and in the preallocated value).
const CHUNK: usize = INLINE_TABLE_V4 as usize;
const MASK: u32 = INLINE_TABLE_V4 - 1;
/// A slot's run, of at most `SPAN + 1` ranges padded to at most twice that and
/// one, always fits a chunk: no IPv4 policy is refused for a dense slot.
const _: () = assert!(2 * (SPAN as usize + 1) < CHUNK);
/// Largest first probe a slot can name.
const MOST_FIRST_PROBE: usize = 8;

/// The directory as `GenConfig` records it (the program does not read it).
pub(super) const DIRECTORY: Directory = Directory {
    bits: DIRECTORY_BITS_V4,
    base: 0,
    shift: 64 - DIRECTORY_BITS_V4,
};

/// A range while the table is made: first address and class. Six bytes, not
/// eight: a plan at a million prefixes holds over a million of them, each new
/// memory on every apply (fresh pages are most of a re-apply's variance,
/// docs/performance.md). A class fits in 16 bits (`MAX_CLASSES`); a plan with
/// more classes is refused whatever its pieces hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed(2))]
pub struct Piece {
    start: u32,
    class: u16,
}

const _: () = assert!(size_of::<Piece>() == 6 && MAX_CLASSES <= 1 << 16);

impl Piece {
    fn class(&self) -> u32 {
        u32::from(self.class)
    }
}

impl RangeItem for Piece {
    type Answer = u32;

    fn range(start: u128, class: u32) -> Self {
        Piece {
            start: start as u32,
            class: u16::try_from(class).unwrap_or(u16::MAX),
        }
    }

    fn start(&self) -> u128 {
        u128::from(self.start)
    }

    fn answer(&self) -> u32 {
        self.class()
    }
}

/// The search of a run of `n` (at least 2) ranges: `(k, d, length)`, a first
/// probe `d` elements in then `k` halvings, over `length = 2^k + d` elements (`n`,
/// or more when `n` is not a length a slot can name: the run is then padded).
pub(super) fn shape(n: usize) -> (u32, usize, usize) {
    debug_assert!(n >= 2);
    let (k, d) = super::shape(n);
    if d <= MOST_FIRST_PROBE {
        (k, d, n)
    } else {
        (k + 1, 1, (2 << k) + 1)
    }
}

/// A range as a run holds it: its first address's offset in its slot, its class.
fn element(piece: Piece) -> SourceRangeV4 {
    SourceRangeV4(((piece.start & (SPAN - 1)) << RANGE_OFFSET_SHIFT_V4) | piece.class())
}

/// The IPv4 table of `pieces` laid out into `elements`: the directory, then the
/// runs from element 2^19 (right after it, in the first preallocated value), or,
/// with `capacity` below the preallocated value's elements (tests of chunk maps),
/// from the first element past the generation's preallocated values (element
/// 2^21, chunk 2: the first chunk map).
pub(super) fn lay_out(
    pieces: &[Piece],
    capacity: usize,
    elements: &mut impl Out<SourceRangeV4>,
) -> Directory {
    let first_run = if capacity >= CHUNK {
        SLOTS
    } else {
        PREALLOCATED_VALUES_V4 as usize * CHUNK
    };
    elements.reserve(first_run + pieces.len() + pieces.len() / 2);
    elements.resize(first_run, SourceRangeV4::default());
    // `at`: the piece holding the slot's first address; `next`: the first piece
    // starting after the slot before (so at or after this slot's first address);
    // `last`: the piece whose element ends `elements`, if any (a run may begin
    // with it).
    let mut next = 0;
    let mut last = None;
    let mut slot = 0;
    while slot < SLOTS {
        if elements.full() {
            break;
        }
        let first = (slot as u32) << DIRECTORY_SHIFT_V4;
        // Starts strictly increase, and the piece before `next` starts in an
        // earlier slot: the slot's first address is in `next` if it starts
        // there, else in the one before. No piece is read twice to find it.
        let at = match pieces.get(next) {
            Some(piece) if piece.start == first => next,
            _ => next.saturating_sub(1),
        };
        let mut end = at + 1;
        while end < pieces.len() && pieces[end].start <= first | (SPAN - 1) {
            end += 1;
        }
        if end - at == 1 {
            // Every slot before the one the next piece starts in lies inside
            // this piece too: filled as one stretch, without a search of the
            // pieces for each.
            let stretch = pieces
                .get(end)
                .map_or(SLOTS, |p| (p.start >> DIRECTORY_SHIFT_V4) as usize);
            let answer = SourceRangeV4(SLOT_ANSWER_V4 | pieces[at].class());
            elements[slot..stretch.max(slot + 1)].fill(answer);
            slot = stretch.max(slot + 1);
            next = end;
            continue;
        }
        let (k, d, length) = shape(end - at);
        let mut start = elements.len() - 1;
        if last != Some(at) || start / CHUNK != (start + length - 1) / CHUNK {
            start = elements.len();
            if start / CHUNK != (start + length - 1) / CHUNK {
                // Never read: the run moves to the next chunk, searched from one pointer.
                start = (start / CHUNK + 1) * CHUNK;
                elements.resize(start, element(pieces[at]));
            }
            elements.push(element(pieces[at]));
        }
        elements.push_all(pieces[at + 1..end].iter().map(|&p| element(p)));
        let padding = element(pieces[end - 1]);
        elements.resize(start + length, padding);
        last = Some(end - 1);
        debug_assert!(start as u32 <= RUN_INDEX_MASK_V4);
        elements[slot] = SourceRangeV4(
            start as u32
                | (k << RUN_HALVINGS_SHIFT_V4)
                | (((d - 1) as u32) << RUN_FIRST_PROBE_SHIFT_V4),
        );
        slot += 1;
        next = end;
    }
    DIRECTORY
}

/// What the program finds for `key` in `elements` (a table's elements end to end,
/// chunk `c` from element `c * 2^20`), step for step as
/// ebpf-programs/src/source.rs does: the element whose low 16 bits are the
/// class. None where the program would read outside the table. (The program
/// writes out the search of a run of up to 16 elements, its last step choosing
/// between two elements it loads together rather than loading the one chosen,
/// and finds chunk 1 in its generation's second preallocated value: it compares
/// the same elements in the same order.)
pub(super) fn find(elements: &[SourceRangeV4], key: u32) -> Option<u32> {
    let slot = elements.get((key >> DIRECTORY_SHIFT_V4) as usize)?.0;
    if slot & SLOT_ANSWER_V4 != 0 {
        return Some(slot);
    }
    let index = slot & RUN_INDEX_MASK_V4;
    let chunk = (index & !MASK) as usize;
    let get = |i: u32| elements.get(chunk + (i & MASK) as usize).map(|e| e.0);
    let bound = i64::from(((key & (SPAN - 1)) + 1) << RANGE_OFFSET_SHIFT_V4);
    // All ones if the element is below `bound`: the sign of the difference.
    let at_or_before = |element: u32| ((i64::from(element) - bound) >> 63) as u32;
    let mut base = index & MASK;
    let first_probe = ((slot >> RUN_FIRST_PROBE_SHIFT_V4) & 7) + 1;
    base += first_probe & at_or_before(get(base + first_probe)?);
    let mut step = (1u32 << ((slot >> RUN_HALVINGS_SHIFT_V4) & 15)) >> 1;
    while step != 0 {
        base += step & at_or_before(get(base + step)?);
        step >>= 1;
    }
    get(base)
}

/// The class an element names, masked as the program masks it.
fn class(element: u32) -> u32 {
    element & (MAX_CLASSES - 1)
}

/// The table read back as its ranges (first address, class), adjacent equal
/// classes merged: the function of the address the program computes. None if the
/// program's search would not compute one: a run out of the table, across a
/// chunk boundary, of a shape the search does not cover, or with its ranges out
/// of order or outside its slot.
pub(super) fn pieces(elements: &[SourceRangeV4]) -> Option<Vec<(u128, u32)>> {
    let mut out: Vec<(u128, u32)> = Vec::new();
    let mut push = |start: u32, class: u32| match out.last_mut() {
        Some(last) if last.0 == u128::from(start) => last.1 = class,
        Some(last) if last.1 == class => {}
        _ => out.push((u128::from(start), class)),
    };
    for slot in 0..SLOTS {
        let first = (slot as u32) << DIRECTORY_SHIFT_V4;
        let value = elements.get(slot)?.0;
        if value & SLOT_ANSWER_V4 != 0 {
            push(first, class(value));
            continue;
        }
        let index = (value & RUN_INDEX_MASK_V4) as usize;
        let k = (value >> RUN_HALVINGS_SHIFT_V4) & 15;
        let d = ((value >> RUN_FIRST_PROBE_SHIFT_V4) & 7) as usize + 1;
        let length = (1usize << k) + d;
        if d > 1 << k || index / CHUNK != (index + length - 1) / CHUNK {
            return None;
        }
        let run = elements.get(index..index + length)?;
        push(first, class(run[0].0));
        let mut offset = 0;
        for range in &run[1..] {
            let at = range.0 >> RANGE_OFFSET_SHIFT_V4;
            if at < offset.max(1) || at >= SPAN {
                return None;
            }
            offset = at;
            push(first + at, class(range.0));
        }
    }
    // A slot's answer can merge into the range before it only once the whole
    // space is read: merge what is left adjacent and equal.
    out.dedup_by(|next, prev| next.1 == prev.1);
    Some(out)
}
