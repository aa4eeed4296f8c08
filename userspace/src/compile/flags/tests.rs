use airlock_common::{INLINE_TABLE_V4, INLINE_TABLE_V6, SourceRangeV4, SourceRangeV6};
use proptest::prelude::*;

use super::*;
use crate::compile::ranges::tests::entry;

fn sorted<const N: usize>(mut entries: Vec<PrefixEntry<N>>) -> Vec<PrefixEntry<N>> {
    entries.sort_by_key(|e| (e.addr, e.prefix_len));
    entries.dedup_by_key(|e| (e.addr, e.prefix_len));
    entries
}

/// Each prefix's edges and their neighbours, 0, the last address, and `extra`.
fn probes<const N: usize>(entries: &[PrefixEntry<N>], extra: &[u128]) -> Vec<u128> {
    let max = u128::MAX >> (128 - 8 * N as u32);
    let mut out = vec![0, max];
    for e in entries {
        let first = e.addr.iter().fold(0u128, |a, &b| (a << 8) | u128::from(b));
        let last = first | max.checked_shr(u32::from(e.prefix_len)).unwrap_or(0);
        out.extend([first, last, first.wrapping_sub(1), last.wrapping_add(1)]);
    }
    out.extend(extra.iter().map(|k| k & max));
    out.retain(|&k| k <= max);
    out
}

/// Flags in 1 of 3 prefixes: a few flagged prefixes fit a flag table, more
/// (or holes in them) overflow it.
fn raw() -> impl Strategy<Value = Vec<(u32, u128, u8, u64, u32)>> {
    prop::collection::vec(
        (
            0u32..3,
            any::<u128>(),
            0u8..=128,
            0u64..4,
            prop_oneof![2 => Just(0u32), 1 => 1u32..4],
        ),
        0..14,
    )
}

/// Whether the flag table of `entries` answers as their full table does at
/// every probe, and whether it was in use.
fn check<const N: usize>(
    entries: &[PrefixEntry<N>],
    full: impl Fn(u128) -> u32,
    small: impl Fn(u128) -> Option<u32>,
    extra: &[u128],
) -> Result<bool, TestCaseError> {
    let fits = intervals(entries).len() <= FLAG_INTERVALS;
    let used = small(0).is_some();
    prop_assert_eq!(used, fits && flagged(entries));
    if used {
        for key in probes(entries, extra) {
            prop_assert_eq!(small(key), Some(full(key)), "at {:#x}", key);
        }
    }
    Ok(used)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn the_flag_tables_answer_as_the_full_tables_do(
        v4 in raw(),
        v6 in raw(),
        extra in prop::collection::vec(any::<u128>(), 8),
    ) {
        let v4: Vec<PrefixEntry<4>> = sorted(v4.into_iter().map(|(region, low, len, rules, flags)| {
            entry((u128::from(region) << 30) | (low >> 102), len % 33, rules, flags)
        }).collect());
        let v6: Vec<PrefixEntry<16>> = sorted(v6.into_iter().map(|(region, low, len, rules, flags)| {
            entry((u128::from(region) << 126) | (low >> 70), len, rules, flags)
        }).collect());
        let mut config = GenConfig::default();
        set(&mut config, &v4, &v6);
        let table_v4 = ranges::table::<SourceRangeV4, 4>(&v4, INLINE_TABLE_V4 as usize).unwrap();
        let table_v6 = ranges::table::<SourceRangeV6, 16>(&v6, INLINE_TABLE_V6 as usize).unwrap();
        let flags_of = |entry: Option<SourceEntry>| entry.expect("every address has a range").flags & FLAGS;
        check(
            &v4,
            |key| flags_of(ranges::lookup(&table_v4, key)),
            |key| lookup_v4(&config, key as u32),
            &extra,
        )?;
        check(
            &v6,
            |key| flags_of(ranges::lookup(&table_v6, key)),
            |key| lookup_v6(&config, key),
            &extra,
        )?;
    }
}

#[test]
fn a_management_host_with_a_denied_hole_around_it_fits_and_answers_at_its_edges() {
    // 198.51.100.0/24 denied, except 198.51.100.0/28, inside which .7 is management.
    let base = 0xc633_6400u128;
    let v4 = sorted(vec![
        entry::<4>(base, 24, 0, SRC_DENY),
        entry::<4>(base, 28, 0b1, 0),
        entry::<4>(base | 7, 32, 0b1, SRC_MANAGEMENT),
    ]);
    let mut config = GenConfig::default();
    set(&mut config, &v4, &[]);
    assert_eq!(config.flag_tables, FLAG_TABLE_V4);
    let at = |offset: u128| lookup_v4(&config, (base + offset) as u32);
    assert_eq!(lookup_v4(&config, base as u32 - 1), Some(0));
    assert_eq!(at(0), Some(0));
    assert_eq!(at(6), Some(0));
    assert_eq!(at(7), Some(SRC_MANAGEMENT));
    assert_eq!(at(8), Some(0));
    assert_eq!(at(15), Some(0));
    assert_eq!(at(16), Some(SRC_DENY));
    assert_eq!(at(255), Some(SRC_DENY));
    assert_eq!(at(256), Some(0));
    assert_eq!(lookup_v4(&config, u32::MAX), Some(0));
    // No IPv6 flags: no table (the program skips those lookups as unflagged).
    assert_eq!(lookup_v6(&config, 0), None);
}

#[test]
fn eight_intervals_fit_and_nine_do_not() {
    // Hosts alternately flagged: n hosts make 2n + 1 intervals, a host at the
    // top of the space 2n.
    let hosts = |n: u128, top: bool| -> Vec<PrefixEntry<16>> {
        (0..n)
            .map(|i| {
                let addr = if top && i == n - 1 {
                    u128::MAX
                } else {
                    (i + 1) << 80 | 1
                };
                entry::<16>(addr, 128, 0, SRC_MANAGEMENT)
            })
            .collect()
    };
    for (n, top, fits) in [
        (3, false, true),
        (4, true, true),
        (4, false, false),
        (5, true, false),
    ] {
        let v6 = sorted(hosts(n, top));
        let mut config = GenConfig::default();
        set(&mut config, &[], &v6);
        assert_eq!(
            config.flag_tables == FLAG_TABLE_V6,
            fits,
            "{n} hosts, top {top}"
        );
        if fits {
            for e in &v6 {
                let addr = u128::from_be_bytes(e.addr);
                assert_eq!(lookup_v6(&config, addr), Some(SRC_MANAGEMENT));
                assert_eq!(lookup_v6(&config, addr - 1), Some(0));
                if addr != u128::MAX {
                    assert_eq!(lookup_v6(&config, addr + 1), Some(0));
                }
            }
            assert_eq!(lookup_v6(&config, u128::MAX), Some(u32::from(top)));
        }
    }
}
