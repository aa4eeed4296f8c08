//! A copy's IPv4 source table patched where a change falls, not laid out anew
//! (prototype, session 23 part O; not wired into the apply).
//!
//! The table is a directory of 2^19 slots, each a /19, answering alone or
//! pointing at a run of ranges. A slot's ranges depend only on the networks
//! that overlap it: its ancestors (networks of at most 19 bits containing it)
//! and the networks inside it. So the slots a change can alter are those its
//! changed networks overlap (one for a network of 19 bits or more, 2^(19 - len)
//! for a shorter one), and each of those is refolded from the new policy's keys
//! that overlap it: the fold's own code over that handful of keys, then the
//! ranges, then the slot laid out as the full layout lays out a slot. A new run
//! goes into the copy's free space after its last element (the old run is left
//! where it was, unread); a run that would straddle a chunk moves to the next,
//! as in the full layout. Answers keep their class numbers and a new answer
//! takes the next free one, so no untouched run is rewritten.
//!
//! The patched table is the same function of the address as the full build of
//! the new policy (the tests hold it to that), not the same elements: its runs
//! sit elsewhere and its classes are numbered in another order.
//!
//! Declined (the caller builds the table whole): more changed slots than
//! `MAX_DIRTY_SLOTS`, a table that would pass `room` elements, more classes
//! than the kernel holds. Nothing is written when it declines.

use airlock_common::{
    DIRECTORY_BITS_V6, RUN_HALVINGS_SHIFT_V6, RUN_INDEX_MASK_V6, RUN_WIDE_V6, SLOT_ANSWER_V6,
    SourceRangeV6,
};
use airlock_common::{
    DIRECTORY_SHIFT_V4, MAX_CLASSES, RUN_FIRST_PROBE_SHIFT_V4, RUN_HALVINGS_SHIFT_V4,
    RUN_INDEX_MASK_V4, SLOT_ANSWER_V4, SourceRangeV4,
};

use super::v4::{self, CHUNK, Piece, SLOTS, SPAN};
use super::v6;
use super::{Classes, PrefixEntry, RangeItem, SourceTable, ranges};
use crate::compile::prefixes::{Key as _, Wide, fold_sorted};

/// Beyond this many slots to refold, laying the whole table out is about as
/// fast (a slot refolded costs some microseconds, the whole layout some tens
/// of milliseconds).
pub(crate) const MAX_DIRTY_SLOTS: usize = SLOTS / 16;

/// Why a table was not patched: the caller builds it whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Declined {
    TooManySlots(usize),
    NoRoom {
        needed: usize,
        room: usize,
    },
    TooManyClasses(usize),
    /// An IPv6 change outside the table's directory window.
    OutsideWindow,
}

/// What a patch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Patched {
    pub slots: usize,
    pub runs: usize,
    /// Elements appended (runs, and the filler where a run moved to the next chunk).
    pub appended: usize,
    pub new_classes: usize,
}

/// An IPv4 key as the fold packs it (`prefixes::v4_key`): address << 32 |
/// length << 24 | set << 1 | except.
fn key_addr(key: u64) -> u32 {
    (key >> 32) as u32
}
fn key_len(key: u64) -> u8 {
    (key >> 24) as u8
}

/// Whether the network of `key` contains the address `addr`.
fn covers(key: u64, addr: u32) -> bool {
    let len = key_len(key);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    addr & mask == key_addr(key)
}

/// The directory slots the networks `changed` (address, length) overlap,
/// sorted, each once. None past `MAX_DIRTY_SLOTS`.
pub(crate) fn dirty_slots(changed: &[(u32, u8)]) -> Result<Vec<u32>, Declined> {
    let mut slots = Vec::with_capacity(changed.len());
    for &(addr, len) in changed {
        let host = if len >= 32 { 0 } else { u32::MAX >> len };
        let first = addr >> DIRECTORY_SHIFT_V4;
        let last = (addr | host) >> DIRECTORY_SHIFT_V4;
        if slots.len() + (last - first) as usize >= 2 * MAX_DIRTY_SLOTS {
            return Err(Declined::TooManySlots(
                slots.len() + (last - first) as usize,
            ));
        }
        slots.extend(first..=last);
    }
    slots.sort_unstable();
    slots.dedup();
    if slots.len() > MAX_DIRTY_SLOTS {
        return Err(Declined::TooManySlots(slots.len()));
    }
    Ok(slots)
}

/// The keys of networks shorter than a slot (the only ones that can be an
/// ancestor of a slot other than their first), in key order.
pub(crate) fn short_keys(keys: &[u64]) -> Vec<u64> {
    keys.iter()
        .copied()
        .filter(|&k| u32::from(key_len(k)) < v4::DIRECTORY.bits)
        .collect()
}

/// Patches `table` (the copy's elements, in use up to its length, and its
/// classes) to answer as the full build of `keys` (the new policy's IPv4 keys,
/// sorted; `short`: its [`short_keys`]) with the sets' `masks`, refolding the
/// `slots` ([`dirty_slots`] of every network changed since the policy the
/// table answers for). Never past `room` elements.
pub(crate) fn patch(
    table: &mut SourceTable<SourceRangeV4>,
    room: usize,
    keys: &[u64],
    short: &[u64],
    masks: &[u128],
    slots: &[u32],
) -> Result<Patched, Declined> {
    let old_classes = table.classes.len();
    let mut classes = Classes::from_entries(std::mem::take(&mut table.classes));
    let staged = stage(
        table.elements.len(),
        keys,
        short,
        masks,
        slots,
        &mut classes,
    );
    let classes = classes.entries;
    let needed = table.elements.len() + staged.elements.len();
    let declined = if needed > room || needed > RUN_INDEX_MASK_V4 as usize {
        Some(Declined::NoRoom { needed, room })
    } else if classes.len() > MAX_CLASSES as usize {
        Some(Declined::TooManyClasses(classes.len()))
    } else {
        None
    };
    if let Some(declined) = declined {
        // The classes the table had come first, unchanged.
        table.classes = classes;
        table.classes.truncate(old_classes);
        return Err(declined);
    }
    table.elements.extend_from_slice(&staged.elements);
    for &(slot, value) in &staged.directory {
        table.elements[slot as usize] = SourceRangeV4(value);
    }
    table.classes = classes;
    Ok(Patched {
        slots: slots.len(),
        runs: staged.runs,
        appended: staged.elements.len(),
        new_classes: table.classes.len() - old_classes,
    })
}

/// The refolded slots, before anything is written: the elements to append
/// (from element `free` on) and the directory words.
struct Staged {
    elements: Vec<SourceRangeV4>,
    directory: Vec<(u32, u32)>,
    runs: usize,
}

fn stage(
    free: usize,
    keys: &[u64],
    short: &[u64],
    masks: &[u128],
    slots: &[u32],
    classes: &mut Classes,
) -> Staged {
    let mut staged = Staged {
        elements: Vec::new(),
        directory: Vec::with_capacity(slots.len()),
        runs: 0,
    };
    // Short networks before the current slot, nested: each contains the next.
    let mut chain: Vec<u64> = Vec::new();
    let mut next_short = 0;
    let mut local: Vec<u64> = Vec::new();
    let mut entries: Vec<PrefixEntry<4>> = Vec::new();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut from = 0;
    for &slot in slots {
        let first = slot << DIRECTORY_SHIFT_V4;
        let last = first | (SPAN - 1);
        while let Some(&key) = short.get(next_short)
            && key_addr(key) < first
        {
            while chain.last().is_some_and(|&top| !covers(top, key_addr(key))) {
                chain.pop();
            }
            chain.push(key);
            next_short += 1;
        }
        // The slot's ancestors that start before it (the chain's outer part:
        // an inner network containing the slot puts its outer ones around it
        // too), then every key starting inside it (the ancestors starting at
        // its first address among them), in key order.
        local.clear();
        local.extend(chain.iter().take_while(|&&k| covers(k, first)));
        let start = from + gallop(&keys[from..], |&k| key_addr(k) < first);
        let end = start + gallop(&keys[start..], |&k| key_addr(k) <= last);
        from = end;
        local.extend_from_slice(&keys[start..end]);
        let entry = |a: u128, len, value| PrefixEntry {
            addr: (a as u32).to_be_bytes(),
            prefix_len: len,
            value,
        };
        entries.clear();
        fold_sorted(&local, 32, masks, true, entry, &mut entries, |_| {});
        pieces.clear();
        ranges(&entries, &mut pieces, |value| classes.intern(value));
        let at = pieces.partition_point(|p| p.start() <= u128::from(first)) - 1;
        let mut stop = at + 1;
        while stop < pieces.len() && pieces[stop].start() <= u128::from(last) {
            stop += 1;
        }
        if stop - at == 1 {
            staged
                .directory
                .push((slot, SLOT_ANSWER_V4 | pieces[at].answer()));
            continue;
        }
        let (k, d, length) = v4::shape(stop - at);
        let mut start = free + staged.elements.len();
        if start / CHUNK != (start + length - 1) / CHUNK {
            // Never read: the run moves to the next chunk, searched from one pointer.
            let next = (start / CHUNK + 1) * CHUNK;
            let filler = v4::element(pieces[at]);
            staged
                .elements
                .extend(std::iter::repeat_n(filler, next - start));
            start = next;
        }
        staged
            .elements
            .extend(pieces[at..stop].iter().map(|&p| v4::element(p)));
        let padding = v4::element(pieces[stop - 1]);
        staged.elements.resize(start + length - free, padding);
        staged.runs += 1;
        staged.directory.push((
            slot,
            start as u32
                | (k << RUN_HALVINGS_SHIFT_V4)
                | (((d - 1) as u32) << RUN_FIRST_PROBE_SHIFT_V4),
        ));
    }
    staged
}

/// The IPv6 table patched as [`patch`] patches an IPv4 one: `keys` the new
/// policy's IPv6 keys, sorted; `changed` every network changed since the
/// table's policy. The directory's window stays: a change outside it (or over
/// it whole) is declined, so the two slots outside the window keep their
/// answers, and every slot is the table's own (`table.directory`).
pub(crate) fn patch_v6(
    table: &mut SourceTable<SourceRangeV6>,
    room: usize,
    keys: &[Wide],
    masks: &[u128],
    changed: &[(u128, u8)],
) -> Result<Patched, Declined> {
    let directory = table.directory;
    let prefix = 64 - directory.shift;
    let shared = prefix - DIRECTORY_BITS_V6;
    let span = 128 - prefix;
    let start = u128::from(directory.base) << 64;
    let mut slots: Vec<u32> = Vec::with_capacity(changed.len());
    for &(addr, len) in changed {
        if u32::from(len) < shared || addr & v6::keep(shared) != start {
            return Err(Declined::OutsideWindow);
        }
        let last = addr | (u128::MAX.checked_shr(u32::from(len)).unwrap_or(0));
        let (first, last) = ((addr - start) >> span, (last - start) >> span);
        if slots.len() + (last - first) as usize >= 2 * MAX_DIRTY_SLOTS {
            return Err(Declined::TooManySlots(slots.len()));
        }
        slots.extend(first as u32..=last as u32);
    }
    slots.sort_unstable();
    slots.dedup();
    if slots.len() > MAX_DIRTY_SLOTS {
        return Err(Declined::TooManySlots(slots.len()));
    }
    let short: Vec<Wide> = keys
        .iter()
        .copied()
        .filter(|k| u32::from(k.prefix().1) < prefix)
        .collect();
    let covers = |key: &Wide, addr: u128| {
        let (at, len) = key.prefix();
        addr & !(u128::MAX.checked_shr(u32::from(len)).unwrap_or(0)) == at
    };
    let old_classes = table.classes.len();
    let mut classes = Classes::from_entries(std::mem::take(&mut table.classes));
    let free = table.elements.len();
    let mut staged: Vec<SourceRangeV6> = Vec::new();
    let mut directory_words: Vec<(u32, u32)> = Vec::with_capacity(slots.len());
    let (mut chain, mut local): (Vec<Wide>, Vec<Wide>) = (Vec::new(), Vec::new());
    let mut entries: Vec<PrefixEntry<16>> = Vec::new();
    let mut pieces: Vec<v6::Piece> = Vec::new();
    let (mut next_short, mut from, mut runs) = (0, 0, 0);
    for &slot in &slots {
        let first = start + (u128::from(slot) << span);
        let last = first + ((1u128 << span) - 1);
        while let Some(key) = short.get(next_short)
            && key.prefix().0 < first
        {
            while chain.last().is_some_and(|top| !covers(top, key.prefix().0)) {
                chain.pop();
            }
            chain.push(*key);
            next_short += 1;
        }
        local.clear();
        local.extend(chain.iter().take_while(|k| covers(k, first)));
        let begin = from + gallop(&keys[from..], |k| k.prefix().0 < first);
        let end = begin + gallop(&keys[begin..], |k| k.prefix().0 <= last);
        from = end;
        local.extend_from_slice(&keys[begin..end]);
        let entry = |a: u128, len, value| PrefixEntry {
            addr: a.to_be_bytes(),
            prefix_len: len,
            value,
        };
        entries.clear();
        fold_sorted(&local, 128, masks, true, entry, &mut entries, |_| {});
        pieces.clear();
        ranges(&entries, &mut pieces, |value| classes.intern(value));
        let at = pieces.partition_point(|p| p.start() <= first) - 1;
        let mut stop = at + 1;
        while stop < pieces.len() && pieces[stop].start() <= last {
            stop += 1;
        }
        if stop - at == 1 {
            directory_words.push((slot, SLOT_ANSWER_V6 | pieces[at].answer()));
            continue;
        }
        let k = usize::BITS - (stop - at - 1).leading_zeros();
        let is_wide = pieces[at + 1..stop].iter().any(|p| p.start() as u64 != 0);
        let width = if is_wide { 2 } else { 1 };
        let words = width << k;
        let mut run = free + staged.len();
        if run / v6::CHUNK != (run + words - 1) / v6::CHUNK {
            // Never read: the run moves to the next chunk, searched from one pointer.
            let next = (run / v6::CHUNK + 1) * v6::CHUNK;
            staged.resize(next - free, SourceRangeV6::default());
            run = next;
        }
        let push = |staged: &mut Vec<SourceRangeV6>, piece: v6::Piece| {
            if is_wide {
                let [high, low] = v6::wide(piece, prefix);
                staged.extend([SourceRangeV6(high), SourceRangeV6(low)]);
            } else {
                staged.push(SourceRangeV6(v6::compact(piece, prefix)));
            }
        };
        for &piece in &pieces[at..stop] {
            push(&mut staged, piece);
        }
        while free + staged.len() < run + words {
            push(&mut staged, pieces[stop - 1]);
        }
        runs += 1;
        let flag = if is_wide { RUN_WIDE_V6 } else { 0 };
        directory_words.push((slot, run as u32 | (k << RUN_HALVINGS_SHIFT_V6) | flag));
    }
    let classes = classes.entries;
    let needed = free + staged.len();
    let declined = if needed > room || needed > RUN_INDEX_MASK_V6 as usize {
        Some(Declined::NoRoom { needed, room })
    } else if classes.len() > MAX_CLASSES as usize {
        Some(Declined::TooManyClasses(classes.len()))
    } else {
        None
    };
    table.classes = classes;
    if let Some(declined) = declined {
        table.classes.truncate(old_classes);
        return Err(declined);
    }
    table.elements.extend_from_slice(&staged);
    for &(slot, value) in &directory_words {
        v6::set_slot(&mut table.elements, slot as usize, value);
    }
    Ok(Patched {
        slots: slots.len(),
        runs,
        appended: staged.len(),
        new_classes: table.classes.len() - old_classes,
    })
}

/// How many of `items` (partitioned by `before`: true, then false) come
/// before the first false, searched from the start doubling the step: the
/// slots come in address order, so the keys of the next are usually near.
pub(crate) fn gallop<T>(items: &[T], before: impl Fn(&T) -> bool) -> usize {
    let mut bound = 1;
    while bound < items.len() && before(&items[bound - 1]) {
        bound *= 2;
    }
    let low = bound / 2;
    let high = bound.min(items.len());
    low + items[low..high].partition_point(before)
}

#[cfg(test)]
mod tests;
