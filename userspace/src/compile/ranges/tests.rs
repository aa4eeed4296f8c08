use airlock_common::{
    DIRECTORY_BITS_V4, DIRECTORY_BITS_V6, DIRECTORY_SHIFT_V4, DIRECTORY_WORDS_V6, INLINE_TABLE_V4,
    INLINE_TABLE_V6, PREALLOCATED_VALUES_V4, RUN_FIRST_PROBE_SHIFT_V4, RUN_HALVINGS_SHIFT_V4,
    RUN_HALVINGS_SHIFT_V6, RUN_INDEX_MASK_V4, RUN_INDEX_MASK_V6, RUN_WIDE_V6, SLOT_ANSWER_V4,
    SLOT_ANSWER_V6, SRC_DENY, SourceEntry, SourceRangeV4, SourceRangeV6,
};

use proptest::prelude::*;

use super::*;

/// A prefix of `len` bits at `addr` (host bits cleared) answering `rules` and
/// `flags` (the flag tables' tests use it too).
pub(in crate::compile) fn entry<const N: usize>(
    addr: u128,
    len: u8,
    rules: u64,
    flags: u32,
) -> PrefixEntry<N> {
    let width = 8 * N as u32;
    let addr = addr & !host_mask(width, len) & max_address(width);
    let mut bytes = [0u8; N];
    bytes.copy_from_slice(&addr.to_be_bytes()[16 - N..]);
    PrefixEntry {
        addr: bytes,
        prefix_len: len,
        value: SourceEntry {
            rules,
            flags,
            _pad: 0,
        },
    }
}

/// The longest match by brute force, as an LPM trie answers.
fn longest<const N: usize>(entries: &[PrefixEntry<N>], key: u128) -> SourceEntry {
    let width = 8 * N as u32;
    entries
        .iter()
        .filter(|e| {
            let first = address(&e.addr);
            key >= first && key <= first | host_mask(width, e.prefix_len)
        })
        .max_by_key(|e| e.prefix_len)
        .map(|e| e.value)
        .unwrap_or_default()
}

fn sorted<const N: usize>(mut entries: Vec<PrefixEntry<N>>) -> Vec<PrefixEntry<N>> {
    entries.sort_by_key(|e| (e.addr, e.prefix_len));
    entries.dedup_by_key(|e| (e.addr, e.prefix_len));
    entries
}

fn found<R: Element>(table: &SourceTable<R>, key: u128) -> SourceEntry {
    lookup(table, key).expect("every address has a range")
}

fn table_v4(entries: &[PrefixEntry<4>], capacity: usize) -> SourceTable<SourceRangeV4> {
    table(entries, capacity).expect("classes fit")
}

fn table_v6(entries: &[PrefixEntry<16>], capacity: usize) -> SourceTable<SourceRangeV6> {
    table(entries, capacity).expect("classes fit")
}

/// Addresses worth probing: each prefix's edges and their neighbours, plus `extra`.
fn probes<const N: usize>(entries: &[PrefixEntry<N>], extra: &[u128]) -> Vec<u128> {
    let width = 8 * N as u32;
    let mut out = vec![0, max_address(width)];
    for e in entries {
        let first = address(&e.addr);
        let last = first | host_mask(width, e.prefix_len);
        out.extend([first, last, first.wrapping_sub(1), last.wrapping_add(1)]);
    }
    out.extend(extra.iter().map(|k| k & max_address(width)));
    out.retain(|&k| k <= max_address(width));
    out
}

/// Prefixes clustered in a few regions so that they nest and touch.
fn v4_entries() -> impl Strategy<Value = Vec<PrefixEntry<4>>> {
    prop::collection::vec((0u32..4, any::<u32>(), 0u8..=32, 0u64..4, 0u32..4), 0..60).prop_map(
        |raw| {
            sorted(
                raw.into_iter()
                    .map(|(region, low, len, rules, flags)| {
                        let addr = (u128::from(region) << 30) | u128::from(low >> 6);
                        entry::<4>(addr, len, rules, flags)
                    })
                    .collect(),
            )
        },
    )
}

fn v6_entries() -> impl Strategy<Value = Vec<PrefixEntry<16>>> {
    prop::collection::vec(
        (0u128..4, any::<u128>(), 0u8..=128, 0u64..4, 0u32..4),
        0..60,
    )
    .prop_map(|raw| {
        sorted(
            raw.into_iter()
                .map(|(region, low, len, rules, flags)| {
                    entry::<16>((region << 126) | (low >> 100), len, rules, flags)
                })
                .collect(),
        )
    })
}

proptest! {
    #[test]
    fn v4_table_answers_the_longest_match(
        entries in v4_entries(),
        extra in prop::collection::vec(any::<u32>(), 32),
    ) {
        let table = table_v4(&entries, usize::MAX);
        let extra: Vec<u128> = extra.into_iter().map(u128::from).collect();
        for key in probes(&entries, &extra) {
            prop_assert_eq!(found(&table, key), longest(&entries, key), "address {:#x}", key);
        }
        let back = prefixes::<_, 4>(&table).expect("well-formed");
        prop_assert_eq!(&back, &canonical(&entries));
        for key in probes(&entries, &extra) {
            prop_assert_eq!(longest(&back, key), longest(&entries, key));
        }
    }

    #[test]
    fn v6_table_answers_the_longest_match(
        entries in v6_entries(),
        extra in prop::collection::vec(any::<u128>(), 32),
    ) {
        let table = table_v6(&entries, usize::MAX);
        for key in probes(&entries, &extra) {
            prop_assert_eq!(found(&table, key), longest(&entries, key), "address {:#x}", key);
        }
        let back = prefixes::<_, 16>(&table).expect("well-formed");
        for key in probes(&entries, &extra) {
            prop_assert_eq!(longest(&back, key), longest(&entries, key));
        }
    }
}

#[test]
fn empty_policy_is_one_range_and_no_prefixes() {
    // IPv4: every slot answers the empty class; no range.
    let table = table_v4(&[], usize::MAX);
    assert_eq!(table.elements.len(), 1 << DIRECTORY_BITS_V4);
    assert!(table.elements.iter().all(|s| s.0 == SLOT_ANSWER_V4));
    assert_eq!(table.classes, vec![SourceEntry::default()]);
    assert_eq!(prefixes::<_, 4>(&table), Some(Vec::new()));
    // IPv6 likewise, and its two slots outside the window.
    let table = table_v6(&[], usize::MAX);
    assert_eq!(table.elements.len(), DIRECTORY_WORDS_V6 as usize + 1);
    let both = u64::from(SLOT_ANSWER_V6) << 32 | u64::from(SLOT_ANSWER_V6);
    assert!(table.elements.iter().all(|w| w.0 == both));
    assert_eq!(prefixes::<_, 16>(&table), Some(Vec::new()));
}

#[test]
fn whole_space_and_host_routes() {
    let all = entry::<4>(0, 0, 1, 0);
    let host = entry::<4>(0xffff_ffff, 32, 2, 0);
    let zero = entry::<4>(0, 32, 4, 0);
    let entries = sorted(vec![all, host, zero]);
    let table = table_v4(&entries, usize::MAX);
    for key in [0u128, 1, 0xffff_fffe, 0xffff_ffff, 0x8000_0000] {
        assert_eq!(found(&table, key), longest(&entries, key), "{key:#x}");
    }
    let v6 = sorted(vec![
        entry::<16>(0, 0, 1, 0),
        entry::<16>(u128::MAX, 128, 2, 0),
    ]);
    let table = table_v6(&v6, usize::MAX);
    for key in [0, 1, u128::MAX - 1, u128::MAX] {
        assert_eq!(found(&table, key), longest(&v6, key), "{key:#x}");
    }
}

/// Directory slot `slot` of an IPv6 table.
fn slot_v6(table: &SourceTable<SourceRangeV6>, slot: usize) -> u32 {
    (table.elements[slot / 2].0 >> (32 * (slot % 2))) as u32
}

/// The slot of the IPv6 address `key`, as the program computes it.
fn slot_of_v6(table: &SourceTable<SourceRangeV6>, key: u128) -> usize {
    let high = (key >> 64) as u64;
    let slot = high.wrapping_sub(table.directory.base) >> table.directory.shift;
    let slots = 1u64 << DIRECTORY_BITS_V6;
    (if slot >= slots {
        slots + u64::from(high >= table.directory.base)
    } else {
        slot
    }) as usize
}

/// Hosts, /64s and /56s packed into a few slots of a window, answers
/// alternating: compact and wide runs of many lengths, and addresses outside
/// the window on both sides.
fn dense_v6() -> impl Strategy<Value = (Vec<PrefixEntry<16>>, Vec<u128>)> {
    (
        any::<u128>(),
        0u32..=44,
        prop::collection::vec((any::<u128>(), 0u8..4, 1u64..4), 0..300),
        prop::collection::vec(any::<u128>(), 16),
    )
        .prop_map(|(at, window, raw, extra)| {
            // Everything within a few slots' width of one another.
            let keep = u128::MAX.checked_shl(128 - window - 21).unwrap_or(0);
            let lens = [128u8, 64, 56, 100];
            let entries = sorted(
                raw.into_iter()
                    .map(|(low, len, rules)| {
                        let addr = (at & keep) | (low & !keep);
                        entry::<16>(addr, lens[len as usize], rules, 0)
                    })
                    .collect(),
            );
            let extra = extra
                .into_iter()
                .map(|low| (at & keep) | (low & !keep))
                .collect();
            (entries, extra)
        })
}

proptest! {
    #[test]
    fn dense_v6_slots_answer_the_longest_match_and_read_back((entries, extra) in dense_v6()) {
        for capacity in [usize::MAX, 0] {
            let table = table_v6(&entries, capacity);
            for key in probes(&entries, &extra) {
                prop_assert_eq!(found(&table, key), longest(&entries, key), "address {:#x}", key);
            }
            prop_assert_eq!(prefixes::<_, 16>(&table), Some(canonical(&entries)));
        }
    }
}

#[test]
fn ipv6_runs_are_compact_on_64_boundaries_and_wide_below() {
    // Two /48s in one slot: a compact run of five ranges (before, in, between,
    // in, after: padded to eight); a host in another: a wide one of three
    // (padded to four).
    let nets = sorted(vec![
        entry::<16>(0x2a00_0001_0001 << 80, 48, 1, 0),
        entry::<16>(0x2a00_0001_0003 << 80, 48, 2, 0),
        entry::<16>((0x2b00_0000_0000 << 80) | 5, 128, 1, 0),
    ]);
    let table = table_v6(&nets, usize::MAX);
    let compact = slot_v6(&table, slot_of_v6(&table, 0x2a00_0001_0001 << 80));
    let wide = slot_v6(&table, slot_of_v6(&table, 0x2b00_0000_0000 << 80));
    assert_eq!(compact & (SLOT_ANSWER_V6 | RUN_WIDE_V6), 0);
    assert_eq!(compact >> RUN_HALVINGS_SHIFT_V6, 3, "eight ranges");
    assert_eq!(wide & (SLOT_ANSWER_V6 | RUN_WIDE_V6), RUN_WIDE_V6);
    assert_eq!((wide & !RUN_WIDE_V6) >> RUN_HALVINGS_SHIFT_V6, 2);
    for e in &nets {
        let first = address(&e.addr);
        let last = first | host_mask(128, e.prefix_len);
        for key in [first - 1, first, first + 1, last - 1, last, last + 1] {
            assert_eq!(found(&table, key), longest(&nets, key), "{key:#x}");
        }
    }
    assert_eq!(prefixes::<_, 16>(&table), Some(canonical(&nets)));
}

#[test]
fn a_malformed_table_reads_back_as_none() {
    // IPv6: a run's ranges out of order, stray bits in a compact range, a
    // window the program does not read so.
    let nets = [
        entry::<16>(0x2a00_0001_0001 << 80, 48, 1, 0),
        entry::<16>(0x2a00_0001_0003 << 80, 48, 2, 0),
        entry::<16>(0x2b00_0000_0000 << 80, 48, 1, 0),
    ];
    let table = table_v6(&nets, usize::MAX);
    let slot = slot_v6(&table, slot_of_v6(&table, 0x2a00_0001_0001 << 80));
    assert_eq!(slot & (SLOT_ANSWER_V6 | RUN_WIDE_V6), 0);
    let run = (slot & RUN_INDEX_MASK_V6) as usize;
    let mut swapped = table.clone();
    swapped.elements.swap(run + 1, run + 2);
    assert_eq!(prefixes::<_, 16>(&swapped), None);
    let mut stray = table.clone();
    stray.elements[run + 1].0 |= 1 << 16;
    assert_eq!(prefixes::<_, 16>(&stray), None);
    let mut window = table.clone();
    window.directory.shift = 0;
    assert_eq!(prefixes::<_, 16>(&window), None);
    assert_eq!(prefixes::<_, 16>(&table), Some(canonical(&nets)));
    // IPv4: ranges of a run out of order, a run past the table's end, a run
    // across a chunk boundary, a first probe past the halvings' window.
    let two = [
        entry::<4>(0x0a00_0010, 28, 1, 0),
        entry::<4>(0x0a00_0100, 28, 2, 0),
    ];
    let table = table_v4(&two, usize::MAX);
    let slot = table.elements[0x0a00_0000 >> DIRECTORY_SHIFT_V4].0;
    assert_eq!(slot & SLOT_ANSWER_V4, 0);
    let run = (slot & RUN_INDEX_MASK_V4) as usize;
    let mut swapped = table.clone();
    swapped.elements.swap(run + 1, run + 2);
    assert_eq!(prefixes::<_, 4>(&swapped), None);
    let mut short = table.clone();
    short.elements.truncate(run + 2);
    assert_eq!(prefixes::<_, 4>(&short), None);
    let mut across = table.clone();
    across
        .elements
        .resize(INLINE_TABLE_V4 as usize + 8, SourceRangeV4::default());
    across.elements[0x0a00_0000 >> DIRECTORY_SHIFT_V4].0 =
        (slot & !RUN_INDEX_MASK_V4) | (INLINE_TABLE_V4 - 2);
    assert_eq!(prefixes::<_, 4>(&across), None);
    let mut wide_probe = table.clone();
    wide_probe.elements[0x0a00_0000 >> DIRECTORY_SHIFT_V4].0 =
        (slot & RUN_INDEX_MASK_V4) | (7 << RUN_FIRST_PROBE_SHIFT_V4);
    assert_eq!(prefixes::<_, 4>(&wide_probe), None);
    assert_eq!(prefixes::<_, 4>(&table), Some(canonical(&two)));
}

#[test]
fn every_run_length_has_a_search_that_covers_it() {
    for n in 2..20_000usize {
        let (k, d, length) = v4::shape(n);
        assert!(length >= n && length < 2 * n, "{n}: {length}");
        assert_eq!(length, (1 << k) + d, "{n}");
        assert!(
            (1..=8).contains(&d) && d <= 1 << k && k < 16,
            "{n}: k {k}, d {d}"
        );
        if n <= 16 {
            assert_eq!(length, n, "short runs are not padded");
        }
    }
}

/// Hosts and small subnets packed into one or two slots (8,192 addresses each),
/// answers alternating: runs of every length, padded ones among them.
fn dense_v4() -> impl Strategy<Value = (Vec<PrefixEntry<4>>, Vec<u128>)> {
    (
        any::<u32>(),
        prop::collection::vec((0u32..16_384, 26u8..=32, 1u64..4), 0..400),
        prop::collection::vec(0u32..16_384, 16),
    )
        .prop_map(|(at, raw, extra)| {
            let base = at & !0x1fff;
            let entries = sorted(
                raw.into_iter()
                    .map(|(low, len, rules)| {
                        entry::<4>(u128::from(base.wrapping_add(low)), len, rules, 0)
                    })
                    .collect(),
            );
            let extra = extra
                .into_iter()
                .map(|low| u128::from(base.wrapping_add(low)))
                .collect();
            (entries, extra)
        })
}

proptest! {
    #[test]
    fn dense_slots_answer_the_longest_match_and_read_back((entries, extra) in dense_v4()) {
        for capacity in [usize::MAX, 0] {
            let table = table_v4(&entries, capacity);
            for key in probes(&entries, &extra) {
                prop_assert_eq!(found(&table, key), longest(&entries, key), "address {:#x}", key);
            }
            prop_assert_eq!(prefixes::<_, 4>(&table), Some(canonical(&entries)));
        }
    }
}

#[test]
fn a_slot_of_alternating_hosts_is_searched_whole() {
    // Every address of one slot a host of its own, answers alternating: the
    // longest run a slot has (8,193 ranges with the one before it); and runs of
    // lengths that are padded.
    for hosts in [8192u32, 8000, 24, 100] {
        let entries: Vec<PrefixEntry<4>> = (0..hosts)
            .map(|i| entry::<4>(u128::from(0x0a00_2000 + i), 32, u64::from(i % 2) + 1, 0))
            .collect();
        let table = table_v4(&entries, usize::MAX);
        for key in (0x0a00_1fffu128..0x0a00_4001)
            .step_by(7)
            .chain([0x0a00_3fff])
        {
            assert_eq!(
                found(&table, key),
                longest(&entries, key),
                "{hosts}: {key:#x}"
            );
        }
        assert_eq!(
            prefixes::<_, 4>(&table),
            Some(canonical(&entries)),
            "{hosts}"
        );
    }
}

#[test]
fn runs_never_straddle_a_chunk_and_answer_on_either_side_of_its_boundary() {
    // Enough hosts, one in every few slots, that the runs cross the end of the
    // first preallocated value (and, with the runs starting at the first chunk
    // map, the end of that chunk).
    let entries: Vec<PrefixEntry<4>> = (0..600_000u128)
        .map(|i| entry::<4>(i * 7001, 32, (i % 3) as u64 + 1, 0))
        .collect();
    for capacity in [usize::MAX, 0] {
        let table = table_v4(&entries, capacity);
        let chunk = INLINE_TABLE_V4 as usize;
        let boundary = if capacity == 0 {
            (PREALLOCATED_VALUES_V4 as usize + 1) * chunk
        } else {
            chunk
        };
        assert!(
            table.elements.len() > boundary,
            "{capacity}: the table crosses"
        );
        let mut near = 0;
        for e in &entries {
            let key = address(&e.addr);
            let slot = table.elements[(key >> DIRECTORY_SHIFT_V4) as usize].0;
            let index = (slot & RUN_INDEX_MASK_V4) as usize;
            if slot & SLOT_ANSWER_V4 == 0 && index.abs_diff(boundary) < 64 {
                near += 1;
                for probe in [key.wrapping_sub(1), key, key + 1] {
                    assert_eq!(found(&table, probe), longest(&entries, probe), "{probe:#x}");
                }
            }
        }
        assert!(near > 0, "some runs lie at the boundary");
        assert_eq!(prefixes::<_, 4>(&table), Some(canonical(&entries)));
    }
}

/// Prefixes that all lie in one random window (`window` leading bits of `at`), as
/// IPv6 lists all lie in 2000::/3: the directory indexes the bits after the window,
/// and addresses outside it still find their range.
fn windowed_v6() -> impl Strategy<Value = Vec<PrefixEntry<16>>> {
    (
        any::<u128>(),
        0u32..=80,
        prop::collection::vec((any::<u128>(), 0u8..=128, 1u64..4), 2..60),
    )
        .prop_map(|(at, window, raw)| {
            let keep = u128::MAX.checked_shl(128 - window).unwrap_or(0);
            sorted(
                raw.into_iter()
                    .map(|(low, len, rules)| {
                        let addr = (at & keep) | (low & !keep);
                        entry::<16>(addr, len.max(window as u8), rules, 0)
                    })
                    .collect(),
            )
        })
}

fn windowed_v4() -> impl Strategy<Value = Vec<PrefixEntry<4>>> {
    (
        any::<u32>(),
        0u32..=30,
        prop::collection::vec((any::<u32>(), 0u8..=32, 1u64..4), 2..60),
    )
        .prop_map(|(at, window, raw)| {
            let keep = u32::MAX.checked_shl(32 - window).unwrap_or(0);
            sorted(
                raw.into_iter()
                    .map(|(low, len, rules)| {
                        let addr = (at & keep) | (low & !keep);
                        entry::<4>(u128::from(addr), len.max(window as u8), rules, 0)
                    })
                    .collect(),
            )
        })
}

proptest! {
    #[test]
    fn a_directory_over_the_shared_window_answers_inside_and_outside_it(
        v6 in windowed_v6(),
        v4 in windowed_v4(),
        extra in prop::collection::vec(any::<u128>(), 32),
    ) {
        let table = table_v6(&v6, usize::MAX);
        for key in probes(&v6, &extra) {
            prop_assert_eq!(found(&table, key), longest(&v6, key), "address {:#x}", key);
        }
        let table = table_v4(&v4, usize::MAX);
        for key in probes(&v4, &extra) {
            prop_assert_eq!(found(&table, key), longest(&v4, key), "address {:#x}", key);
        }
    }
}

#[test]
fn ipv6_lists_in_2000_slash_3_get_the_directory_of_the_bits_after_it() {
    let entries: Vec<PrefixEntry<16>> = sorted(
        (0..4096u128)
            .map(|i| {
                // A /64 in 2000::/3: the top three bits fixed, the rest spread.
                let high = (1u64 << 61) | ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 3);
                entry::<16>(u128::from(high) << 64, 64, 1, 0)
            })
            .collect(),
    );
    let table = table_v6(&entries, usize::MAX);
    // The slot's bits follow the three every address shares.
    assert_eq!(table.directory.shift, 64 - 3 - table.directory.bits);
    assert_eq!(table.directory.base, 1 << 61);
    let busiest = (0..1 << DIRECTORY_BITS_V6)
        .map(|slot| slot_v6(&table, slot))
        .filter(|slot| slot & SLOT_ANSWER_V6 == 0)
        .map(|slot| {
            assert_eq!(slot & RUN_WIDE_V6, 0, "/64 boundaries: compact");
            1 << (slot >> RUN_HALVINGS_SHIFT_V6)
        })
        .max()
        .unwrap_or(0);
    assert!(busiest <= 4, "a slot holds {busiest} ranges");
}

#[test]
fn a_slot_one_range_covers_holds_its_answer() {
    // Two prefixes far apart: only their two slots hold more than one range
    // (before, the prefix, after).
    let entries = vec![
        entry::<4>(0x0a01_0200, 24, 5, SRC_DENY),
        entry::<4>(0xc800_0001, 32, 2, 0),
    ];
    let table = table_v4(&entries, usize::MAX);
    let slots = &table.elements[..1 << DIRECTORY_BITS_V4];
    let searched: Vec<u32> = slots
        .iter()
        .map(|s| s.0)
        .filter(|s| s & SLOT_ANSWER_V4 == 0)
        .collect();
    assert_eq!(searched.len(), 2, "only the prefixes' slots are searched");
    // Three ranges: one probe, one halving.
    assert!(
        searched
            .iter()
            .all(|s| v4::shape(3) == (1, 1, 3) && s >> RUN_HALVINGS_SHIFT_V4 == 1)
    );
    assert!(
        slots
            .iter()
            .filter(|s| s.0 & SLOT_ANSWER_V4 != 0)
            .all(|s| s.0 == SLOT_ANSWER_V4)
    );
    assert_eq!(found(&table, 0x0a01_0203), entries[0].value);
    assert_eq!(found(&table, 0x0a01_0303), SourceEntry::default());
    assert_eq!(found(&table, 0xc800_0001), entries[1].value);
    // A prefix that covers slots whole: they answer for it without a search.
    let wide = vec![
        entry::<4>(0x0a00_0000, 8, 1, 0),
        entry::<4>(0xc800_0001, 32, 2, 0),
    ];
    let table = table_v4(&wide, usize::MAX);
    let slot = table.elements[0x0a05_0000 >> DIRECTORY_SHIFT_V4].0;
    assert_eq!(slot, SLOT_ANSWER_V4 | 1);
    assert_eq!(table.classes[1], wide[0].value);
}

#[test]
fn equal_answers_share_a_class_and_class_0_is_the_empty_answer() {
    // Three prefixes, two answers: two classes beside the empty one, in order of
    // first appearance.
    let entries = sorted(vec![
        entry::<4>(0x0a00_0000, 8, 1, 0),
        entry::<4>(0x0b00_0000, 8, 2, SRC_DENY),
        entry::<4>(0x0c00_0000, 8, 1, 0),
    ]);
    let table = table_v4(&entries, usize::MAX);
    assert_eq!(
        table.classes,
        vec![SourceEntry::default(), entries[0].value, entries[1].value]
    );
    let classes: Vec<u32> = [
        0x0900_0000u32,
        0x0a00_0000,
        0x0b00_0000,
        0x0c00_0000,
        0x0d00_0000,
    ]
    .iter()
    .map(|a| table.elements[(a >> DIRECTORY_SHIFT_V4) as usize].0 & !SLOT_ANSWER_V4)
    .collect();
    assert_eq!(classes, vec![0, 1, 2, 1, 0]);
}

#[test]
fn more_answers_than_the_class_table_holds_are_refused() {
    let v4: Vec<PrefixEntry<4>> = (0..MAX_CLASSES as u128)
        .map(|i| entry::<4>(i << 8, 24, i as u64 + 1, 0))
        .collect();
    let v6: Vec<PrefixEntry<16>> = (0..MAX_CLASSES as u128)
        .map(|i| entry::<16>(i << 64, 64, i as u64 + 1, 0))
        .collect();
    // One class per prefix, plus the empty one: one too many, in either family.
    let error = table::<SourceRangeV4, 4>(&v4, usize::MAX).expect_err("too many");
    assert_eq!(
        error,
        PlanError::TooManyClasses(TooManyClasses {
            family: "IPv4",
            found: MAX_CLASSES as usize + 1,
            max: MAX_CLASSES
        })
    );
    assert!(
        error
            .to_string()
            .contains("IPv4 sources fall into 32769 distinct"),
        "{error}"
    );
    let PlanError::TooManyClasses(error) =
        table::<SourceRangeV6, 16>(&v6, usize::MAX).expect_err("too many")
    else {
        panic!("refused for something else");
    };
    assert_eq!(error.family, "IPv6");
    assert_eq!(error.found, MAX_CLASSES as usize + 1);
    // One fewer prefix fits exactly.
    let fits = table::<SourceRangeV4, 4>(&v4[1..], usize::MAX).expect("fits");
    assert_eq!(fits.classes.len(), MAX_CLASSES as usize);
    for (i, e) in v4[1..].iter().enumerate().step_by(997) {
        assert_eq!(found(&fits, address(&e.addr)), e.value, "prefix {i}");
    }
    let fits = table::<SourceRangeV6, 16>(&v6[1..], usize::MAX).expect("fits");
    assert_eq!(fits.classes.len(), MAX_CLASSES as usize);
    for (i, e) in v6[1..].iter().enumerate().step_by(997) {
        assert_eq!(found(&fits, address(&e.addr)), e.value, "prefix {i}");
    }
}

#[test]
fn ipv6_runs_never_straddle_a_chunk_and_answer_on_either_side_of_its_boundary() {
    // Hosts in slots of their own (wide runs of four ranges, eight words) and
    // /48s (compact ones), enough that the runs cross the end of the
    // preallocated value (and, with the runs starting at the first chunk, the
    // end of that chunk).
    let entries: Vec<PrefixEntry<16>> = sorted(
        (0..120_000u128)
            .map(|i| {
                let at =
                    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) >> 3) | (1 << 125);
                let len = if i % 2 == 0 { 128 } else { 48 };
                entry::<16>(at | 7, len, (i % 3) as u64 + 1, 0)
            })
            .collect(),
    );
    for capacity in [usize::MAX, 0] {
        let table = table_v6(&entries, capacity);
        let chunk = INLINE_TABLE_V6 as usize;
        let boundary = if capacity == 0 { 2 * chunk } else { chunk };
        assert!(
            table.elements.len() > boundary,
            "{capacity}: the table crosses"
        );
        let mut near = 0;
        for e in &entries {
            let key = address(&e.addr);
            let slot = slot_v6(&table, slot_of_v6(&table, key));
            let index = (slot & RUN_INDEX_MASK_V6) as usize;
            if slot & SLOT_ANSWER_V6 == 0 && index.abs_diff(boundary) < 64 {
                near += 1;
                for probe in [key.wrapping_sub(1), key, key + 1] {
                    assert_eq!(found(&table, probe), longest(&entries, probe), "{probe:#x}");
                }
            }
        }
        assert!(near > 0, "some runs lie at the boundary");
        assert_eq!(prefixes::<_, 16>(&table), Some(canonical(&entries)));
    }
}

/// `cargo test --release -p airlock --lib -- --ignored layout_timing --nocapture`:
/// the large tables below laid out, best of 15 each, into memory already
/// touched (as the map's is).
#[test]
#[ignore]
fn layout_timing() {
    let (v4, v6) = large_entries();
    fn best<R: Copy>(mut lay: impl FnMut(&mut Vec<R>)) -> std::time::Duration {
        let mut out = Vec::new();
        (0..15)
            .map(|_| {
                out.clear();
                let t = std::time::Instant::now();
                lay(&mut out);
                t.elapsed()
            })
            .min()
            .unwrap()
    }
    let p4 = plan::<SourceRangeV4, 4>(&v4).unwrap();
    let p6 = plan::<SourceRangeV6, 16>(&v6).unwrap();
    println!(
        "v4: {:?}; v6: {:?}",
        best(|out| {
            p4.lay_out(usize::MAX, out);
        }),
        best(|out| {
            p6.lay_out(usize::MAX, out);
        }),
    );
}

/// At a million-line list's shape (mostly hosts and small subnets anywhere,
/// some nesting, a few wide prefixes): IPv4 reads back as the program computes
/// it (slots with no piece, one, and long padded runs, runs across chunk
/// boundaries, the stretches of one answer between them), in the
/// preallocated values and in chunk maps. The IPv6 list sits in
/// 2001:db8::/32 beside prefixes as short as /8, which widen the directory's
/// window until the whole /32 is one slot of 250,000 hosts: more ranges than
/// a run holds, refused rather than laid across a chunk's end.
#[test]
fn large_tables_read_back_as_their_entries_or_are_refused() {
    let (v4, v6) = large_entries();
    for capacity in [usize::MAX, 0] {
        assert!(
            prefixes::<_, 4>(&table_v4(&v4, capacity)) == Some(canonical(&v4)),
            "IPv4, capacity {capacity}"
        );
    }
    match plan::<SourceRangeV6, 16>(&v6) {
        Err(PlanError::OverfullSlot(overfull)) => {
            assert!(overfull.ranges > overfull.max, "{overfull:?}");
            assert!(
                overfull
                    .slot
                    .contains(&"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap())
            );
        }
        other => panic!(
            "IPv6 not refused: {:?}",
            other.map(|plan| plan.pieces.len())
        ),
    }
}

/// `m` hosts at every other address of 2001:db8::/64 from its third (wide
/// ranges, all in the directory's first slot, a /63: `2m + 1` of them), the
/// last `adjacent` to the one before it with another answer (`2m`); and ten
/// hosts in the slot after, so that the table has more pieces than the first
/// slot's run (no shortcut on the count of pieces decides it).
fn hosts_in_one_slot(m: u128, adjacent: bool) -> Vec<PrefixEntry<16>> {
    let base = 0x2001_0db8u128 << 96;
    let mut entries: Vec<_> = (1..=m)
        .map(|i| entry::<16>(base + 2 * i, 128, 1, 0))
        .collect();
    if adjacent {
        entries.pop();
        entries.push(entry::<16>(base + 2 * (m - 1) + 1, 128, 2, 0));
    }
    entries.extend((1..=10).map(|i| entry::<16>(base + (1 << 65) + 2 * i, 128, 1, 0)));
    sorted(entries)
}

/// A slot is refused exactly when its run would not fit a chunk: one range
/// under the most a wide run holds, the most, and one more. Those that fit
/// read back as their entries; the one refused, laid out anyway, does not
/// (its run crosses a chunk's end, where the program's search wraps).
#[test]
fn a_slot_is_refused_exactly_when_its_run_would_not_fit_a_chunk() {
    let most = INLINE_TABLE_V6 as usize / 2;
    for (m, adjacent, expected) in [
        ((most as u128 - 2) / 2, false, most - 1),
        (most as u128 / 2, true, most),
        (most as u128 / 2, false, most + 1),
    ] {
        let entries = hosts_in_one_slot(m, adjacent);
        match plan::<SourceRangeV6, 16>(&entries) {
            Ok(_) => {
                assert!(expected <= most, "{expected} ranges planned");
                assert!(
                    prefixes::<_, 16>(&table_v6(&entries, usize::MAX)) == Some(canonical(&entries)),
                    "{expected} ranges"
                );
            }
            Err(PlanError::OverfullSlot(overfull)) => {
                assert_eq!((overfull.ranges, overfull.max), (expected, most));
                let mut classes = Classes::default();
                let mut pieces = Vec::new();
                ranges::<v6::Piece, 16>(&entries, &mut pieces, |value| classes.intern(value));
                let mut elements = Vec::new();
                let directory = v6::lay_out(&pieces, usize::MAX, &mut elements);
                let table = SourceTable {
                    directory,
                    elements,
                    classes: classes.into_entries("IPv6").unwrap(),
                };
                assert!(
                    prefixes::<_, 16>(&table).is_none(),
                    "{expected} ranges laid out"
                );
            }
            Err(other) => panic!("{other}"),
        }
    }
}

fn large_entries() -> (Vec<PrefixEntry<4>>, Vec<PrefixEntry<16>>) {
    let mut next = crate::test_rng::xorshift(0x5eed_2300_0000_0001);
    let mut draw = |count: usize, width: u32| {
        (0..count)
            .map(|_| {
                let r = next();
                let len = match r % 16 {
                    0 => 8 + (r >> 8) as u32 % 16,
                    1..=3 => width - 8 + (r >> 8) as u32 % 8,
                    _ => width,
                };
                let addr = if width == 32 {
                    u128::from((next() >> 32) as u32)
                } else {
                    // Inside 2001:db8::/32's neighbours, as lists sit in 2000::/3.
                    (0x2001_0db8u128 << 96) | (u128::from(next()) << 32) | u128::from(next())
                };
                (addr, len as u8, (r >> 40) % 3 + 1)
            })
            .collect::<Vec<_>>()
    };
    let v4 = sorted(
        draw(700_000, 32)
            .into_iter()
            .map(|(a, l, rules)| entry::<4>(a, l, rules, 0))
            .collect(),
    );
    let v6 = sorted(
        draw(250_000, 128)
            .into_iter()
            .map(|(a, l, rules)| entry::<16>(a, l.min(128), rules, 0))
            .collect(),
    );
    (v4, v6)
}
