//! The flag tables (`airlock_common::GenConfig::flag_tables`): per family, where
//! the management and deny flags change over the address space, small enough to
//! live in the generation's config, so the program reads a source's flags there
//! when they are all a packet's verdict needs. Made from the compiled prefixes
//! by the same longest-match cut as the source tables ([`super::ranges`]), each
//! answer projected onto its flags: except holes, nesting and longest match
//! come out as they do in the full table.

use airlock_common::{
    FLAG_INTERVALS, FLAG_TABLE_V4, FLAG_TABLE_V6, GenConfig, SRC_DENY, SRC_MANAGEMENT, SourceEntry,
};

use super::{PrefixEntry, ranges};

/// The flags a flag table holds.
pub(crate) const FLAGS: u32 = SRC_MANAGEMENT | SRC_DENY;

/// Where the flags of `entries`' longest matches change: (first address,
/// flags), ascending, the first at 0, no two adjacent alike.
pub fn intervals<const N: usize>(entries: &[PrefixEntry<N>]) -> Vec<(u128, u32)> {
    cut(&flag_relevant(entries))
}

/// [`intervals`] of entries [`flag_relevant`] kept.
fn cut<const N: usize>(relevant: &[PrefixEntry<N>]) -> Vec<(u128, u32)> {
    let mut cut: Vec<(u128, SourceEntry)> = Vec::new();
    ranges::ranges(relevant, &mut cut, |value| SourceEntry {
        flags: value.flags & FLAGS,
        ..SourceEntry::default()
    });
    let mut out: Vec<(u128, u32)> = Vec::new();
    for (start, entry) in cut {
        if out.last().is_none_or(|last| last.1 != entry.flags) {
            out.push((start, entry.flags));
        }
    }
    out
}

/// The entries that decide a flag: the flagged ones and those inside them (a
/// hole, a nested prefix). Outside every flagged prefix the longest match is an
/// unflagged prefix or none, flags 0 either way, so the cut of this subset
/// gives the same flags as the cut of all, over a handful of entries rather
/// than a million (every apply of a large list with a management entry).
fn flag_relevant<const N: usize>(entries: &[PrefixEntry<N>]) -> Vec<PrefixEntry<N>> {
    let width = 8 * N as u32;
    let mut out = Vec::new();
    // The last address of the flagged prefixes seen: sorted by address then
    // length, a prefix starting at or before it lies inside one of them.
    let mut flagged_until: Option<u128> = None;
    for entry in entries {
        // Most entries of a large list carry no flag and follow none: they cost
        // one test, not an address conversion.
        if entry.value.flags & FLAGS != 0 {
            let first = ranges::address(&entry.addr);
            let last = first | ranges::host_mask(width, entry.prefix_len);
            flagged_until = Some(flagged_until.map_or(last, |until| until.max(last)));
            out.push(*entry);
        } else if let Some(until) = flagged_until
            && ranges::address(&entry.addr) <= until
        {
            out.push(*entry);
        }
    }
    out
}

/// Sets `config`'s flag tables from the compiled prefixes of both families:
/// a family whose flags change too often to fit gets none (the program then
/// looks its sources up in full), as does one with no flag at all (the program
/// skips those sources' lookups on `unflagged` alone).
pub fn set(config: &mut GenConfig, v4: &[PrefixEntry<4>], v6: &[PrefixEntry<16>]) {
    set_known(config, v4, v6, (flagged(v4), flagged(v6)));
}

/// [`set`], told which families hold a flagged entry at all (`flagged`: IPv4,
/// IPv6; the fold knows it from the answers it counted, `Compiled::flagged`):
/// a family without one has no flag-relevant entry, so its pass over a large
/// list is skipped. The same config as [`set`] whenever `flagged` is true of
/// every family that holds a flagged entry.
pub fn set_known(
    config: &mut GenConfig,
    v4: &[PrefixEntry<4>],
    v6: &[PrefixEntry<16>],
    flagged: (bool, bool),
) {
    let (v4, v6) = (
        if flagged.0 { v4 } else { &[] },
        if flagged.1 { v6 } else { &[] },
    );
    config.flag_tables = 0;
    config.flag_bits_v4 = 0;
    config.flag_bits_v6 = 0;
    config.flag_starts_v4 = [0; FLAG_INTERVALS];
    config.flag_starts_v6 = [[0; 2]; FLAG_INTERVALS];
    // No flagged prefix (none kept): no table, the program skips on `unflagged`.
    let relevant = flag_relevant(v4);
    if !relevant.is_empty()
        && let Some((starts, bits)) = table(&cut(&relevant))
    {
        config.flag_starts_v4 = starts.map(|start| start as u32);
        config.flag_bits_v4 = bits;
        config.flag_tables |= FLAG_TABLE_V4;
    }
    // No flagged prefix (none kept): no table, the program skips on `unflagged`.
    let relevant = flag_relevant(v6);
    if !relevant.is_empty()
        && let Some((starts, bits)) = table(&cut(&relevant))
    {
        config.flag_starts_v6 = starts.map(|start| [(start >> 64) as u64, start as u64]);
        config.flag_bits_v6 = bits;
        config.flag_tables |= FLAG_TABLE_V6;
    }
}

/// Whether any prefix carries a flag (else the family needs no table).
pub(crate) fn flagged<const N: usize>(entries: &[PrefixEntry<N>]) -> bool {
    entries.iter().any(|entry| entry.value.flags & FLAGS != 0)
}

/// The table of `intervals` as the config holds it (starts, two flag bits
/// each), its unused slots repeating the last interval; None if they do not
/// fit.
fn table(intervals: &[(u128, u32)]) -> Option<([u128; FLAG_INTERVALS], u32)> {
    if intervals.is_empty() || intervals.len() > FLAG_INTERVALS {
        return None;
    }
    let last = intervals[intervals.len() - 1];
    let mut starts = [0; FLAG_INTERVALS];
    let mut bits = 0;
    for (i, start) in starts.iter_mut().enumerate() {
        let (first, flags) = intervals.get(i).copied().unwrap_or(last);
        *start = first;
        bits |= flags << (2 * i);
    }
    Some((starts, bits))
}

/// The flags the program reads for the IPv4 address `addr` from `config`, step
/// for step as ebpf-programs/src/flags.rs does; None where it has no table.
pub fn lookup_v4(config: &GenConfig, addr: u32) -> Option<u32> {
    (config.flag_tables & FLAG_TABLE_V4 != 0).then(|| {
        search(config.flag_bits_v4, |at| {
            u128::from(config.flag_starts_v4[at]) <= u128::from(addr)
        })
    })
}

/// As [`lookup_v4`], for an IPv6 address.
pub fn lookup_v6(config: &GenConfig, addr: u128) -> Option<u32> {
    (config.flag_tables & FLAG_TABLE_V6 != 0).then(|| {
        search(config.flag_bits_v6, |at| {
            let [high, low] = config.flag_starts_v6[at];
            (u128::from(high) << 64 | u128::from(low)) <= addr
        })
    })
}

/// The program's search: three halving steps over the starts, `at_or_before(i)`
/// saying whether interval `i` starts at or before the address.
fn search(bits: u32, at_or_before: impl Fn(usize) -> bool) -> u32 {
    let last = FLAG_INTERVALS - 1;
    let mut at = 0;
    let mut step = FLAG_INTERVALS / 2;
    while step != 0 {
        if at_or_before((at + step) & last) {
            at += step;
        }
        step /= 2;
    }
    (bits >> ((2 * at) & 31)) & 3
}

#[cfg(test)]
mod tests;
