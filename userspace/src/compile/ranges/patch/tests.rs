use std::time::{Duration, Instant};

use airlock_common::{
    INLINE_TABLE_V6, RUN_FIRST_PROBE_SHIFT_V4, RUN_HALVINGS_SHIFT_V4, SLOT_ANSWER_V4, SourceEntry,
    SourceRangeV4, SourceRangeV6,
};

use super::*;
use crate::compile::prefixes::{Wide, fold_family, mask, v4_key};
use crate::compile::ranges::{lookup, prefixes, table};
use crate::test_rng::xorshift;

/// Bits of the fold's membership mask for management and deny (`prefixes`).
const MANAGEMENT: u128 = 1 << 64;
const DENY: u128 = 1 << 65;

/// The full build: what the apply writes today (fold, plan, layout after the
/// directory).
fn full(keys: &[u64], masks: &[u128]) -> SourceTable<SourceRangeV4> {
    table::<SourceRangeV4, 4>(&fold(keys, masks), CHUNK).expect("classes fit")
}

fn fold(keys: &[u64], masks: &[u128]) -> Vec<PrefixEntry<4>> {
    let entry = |a: u128, len, value| PrefixEntry {
        addr: (a as u32).to_be_bytes(),
        prefix_len: len,
        value,
    };
    fold_family(keys.to_vec(), 32, masks, true, entry).0
}

/// The networks whose keys differ between two sorted key lists (a network
/// gone, added, or listed by other sets or as an except now).
fn changed(old: &[u64], new: &[u64]) -> Vec<(u32, u8)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => (i, j) = (i + 1, j + 1),
            (Some(&a), Some(&b)) if a < b => (out.push((key_addr(a), key_len(a))), i += 1).1,
            (Some(&a), None) => (out.push((key_addr(a), key_len(a))), i += 1).1,
            (_, Some(&b)) => (out.push((key_addr(b), key_len(b))), j += 1).1,
            (None, None) => unreachable!(),
        }
    }
    out
}

/// Addresses where either table's answer may change: every range boundary of
/// the full build and the address before it, and some random ones.
fn probes(full: &SourceTable<SourceRangeV4>, next: &mut impl FnMut() -> u64) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for entry in prefixes::<SourceRangeV4, 4>(full).expect("well formed") {
        let first = u32::from_be_bytes(entry.addr);
        let last = first
            | (u32::MAX
                .checked_shr(u32::from(entry.prefix_len))
                .unwrap_or(0));
        out.extend([first, first.wrapping_sub(1), last, last.wrapping_add(1)]);
    }
    out.extend((0..200).map(|_| (next() >> 32) as u32));
    out
}

/// Holds `patched` to `full`'s semantics: the same prefixes read back (the
/// whole function of the address, canonical; the read-back also checks every
/// run's shape, order, chunk and classes) and, at `probes`, the same answer
/// from the program's own search step for step.
fn assert_same_answers(
    patched: &SourceTable<SourceRangeV4>,
    full: &SourceTable<SourceRangeV4>,
    probes: &[u32],
) {
    let read = prefixes::<SourceRangeV4, 4>(patched).expect("the patched table is well formed");
    assert!(
        read == prefixes::<SourceRangeV4, 4>(full).expect("well formed"),
        "the patched table answers otherwise than the full build"
    );
    for &addr in probes {
        assert_eq!(
            lookup(patched, u128::from(addr)),
            lookup(full, u128::from(addr)),
            "address {addr:#x}"
        );
    }
}

/// A random network near one of a few centres (so slots hold many nested
/// networks) or anywhere, of a length from /11 (over 256 slots) to /32.
fn network(next: &mut impl FnMut() -> u64, centres: &[u32]) -> (u32, u8) {
    let r = next();
    let len = [11, 14, 16, 18, 19, 20, 22, 24, 26, 28, 30, 31, 32, 32, 32][(r % 15) as usize];
    let mut addr = if r >> 60 == 0 {
        (next() >> 32) as u32
    } else {
        centres[((r >> 8) as usize) % centres.len()] ^ ((next() >> 40) as u32 & 0x0003_ffff)
    };
    // Now and then at a slot's first or last address, where a slot's keys
    // and ranges end.
    match (r >> 56) & 7 {
        0 => addr |= SPAN - 1,
        1 => addr &= !(SPAN - 1),
        _ => {}
    }
    (addr & mask(len, 32) as u32, len)
}

fn key(next: &mut impl FnMut() -> u64, centres: &[u32], sets: usize) -> u64 {
    let (addr, len) = network(next, centres);
    let r = next();
    v4_key(
        addr,
        len,
        (r % sets as u64) as usize,
        (r >> 32).is_multiple_of(6),
    )
}

/// Random policies, each changed three times in a row, the table patched
/// each time from the last patch (its runs piling up in the free space): the
/// patched table answers as the full build of the new keys, its untouched
/// slots are the words they were, and a patch that declines leaves it as it
/// was.
#[test]
fn a_patched_table_answers_as_the_full_build() {
    let mut next = xorshift(0x5eed_0023_0f0f_0001);
    let mut patched_runs = 0;
    for round in 0..40 {
        let sets = 1 + (next() % 5) as usize;
        let masks: Vec<u128> = (0..sets)
            .map(|_| {
                let r = next();
                u128::from(r & 0xf | 1)
                    | if r >> 62 == 1 { MANAGEMENT } else { 0 }
                    | if r >> 62 == 2 { DENY } else { 0 }
            })
            .collect();
        let centres: Vec<u32> = (0..3).map(|_| (next() >> 32) as u32).collect();
        let size = 20 + (next() % 3000) as usize;
        let mut keys: Vec<u64> = (0..size).map(|_| key(&mut next, &centres, sets)).collect();
        keys.sort_unstable();
        let mut copy = full(&keys, &masks);
        for change in 0..3 {
            let mut new: Vec<u64> = keys
                .iter()
                .copied()
                .filter(|_| !next().is_multiple_of(10))
                .collect();
            let added = 1 + (next() % (size as u64 / 5 + 2)) as usize;
            new.extend((0..added).map(|_| key(&mut next, &centres, sets)));
            // Now and then a network already listed, by another set or as an except.
            if let Some(&k) = keys.get((next() % size as u64) as usize) {
                new.push(k ^ 1);
            }
            new.sort_unstable();
            let expected = full(&new, &masks);
            let slots = dirty_slots(&changed(&keys, &new)).expect("few slots");
            let before = copy.clone();
            let short = short_keys(&new);
            let result = patch(&mut copy, 4 * CHUNK, &new, &short, &masks, &slots);
            let patched = result.unwrap_or_else(|e| panic!("round {round}.{change}: {e:?}"));
            patched_runs += patched.runs;
            assert_same_answers(&copy, &expected, &probes(&expected, &mut next));
            for slot in 0..SLOTS {
                if slots.binary_search(&(slot as u32)).is_err() {
                    assert_eq!(copy.elements[slot], before.elements[slot], "slot {slot}");
                }
            }
            assert_eq!(
                copy.elements[..before.elements.len()][SLOTS..],
                before.elements[SLOTS..]
            );
            // Refused for want of room: nothing changes.
            let mut refused = copy.clone();
            let room = refused.elements.len();
            let every_17th: Vec<u32> = (0..SLOTS as u32).step_by(17).collect();
            match patch(&mut refused, room, &new, &short, &masks, &every_17th) {
                Err(Declined::NoRoom { .. }) => assert!(refused == copy),
                Ok(done) => assert_eq!(done.appended, 0),
                Err(other) => panic!("{other:?}"),
            }
            keys = new;
        }
    }
    assert!(
        patched_runs > 1000,
        "the rounds laid out runs: {patched_runs}"
    );
}

#[test]
fn a_change_over_too_many_slots_is_declined() {
    assert_eq!(
        dirty_slots(&[(0, 0)]),
        Err(Declined::TooManySlots(SLOTS - 1))
    );
    let slots = dirty_slots(&[(0x0a00_0000, 8), (0x0a01_0000, 32)]).expect("2048 slots");
    assert_eq!(slots.len(), 2048);
    assert_eq!(slots[0], 0x0a00_0000 >> DIRECTORY_SHIFT_V4);
    assert_eq!(
        dirty_slots(&[(0xffff_ffff, 32)]),
        Ok(vec![SLOTS as u32 - 1])
    );
}

/// Runs straddling a chunk boundary move to the next chunk, as the full
/// layout moves them: a copy filled to just below element 2^20.
#[test]
fn runs_appended_near_a_chunk_boundary_move_past_it() {
    let mut next = xorshift(0x5eed_0023_0f0f_0002);
    let masks = [1u128, 2];
    let centres = [0x0b00_0000u32];
    for gap in 1..=4 {
        let mut keys: Vec<u64> = (0..400).map(|_| key(&mut next, &centres, 2)).collect();
        keys.sort_unstable();
        let mut copy = full(&keys, &masks);
        let pad = copy.elements[SLOTS];
        copy.elements.resize(CHUNK - gap, pad);
        let mut new = keys.clone();
        new.extend((0..200).map(|_| key(&mut next, &centres, 2)));
        new.sort_unstable();
        let slots = dirty_slots(&changed(&keys, &new)).expect("few slots");
        let patched = patch(
            &mut copy,
            4 * CHUNK,
            &new,
            &short_keys(&new),
            &masks,
            &slots,
        )
        .expect("room enough");
        assert!(patched.runs > 0 && copy.elements.len() > CHUNK);
        let expected = full(&new, &masks);
        assert_same_answers(&copy, &expected, &probes(&expected, &mut next));
    }
}

/// Slots of every run length up to 2^7 + 1 ranges, padded or not (a run
/// whose length the slot cannot name is padded with its last range), each
/// changed by one host: alternate hosts in one slot, under a /18 of another
/// set reaching in from the slot before.
#[test]
fn slots_of_every_run_shape_are_refolded() {
    let mut next = xorshift(0x5eed_0023_0f0f_0004);
    let masks = [1u128, 2];
    let slot_first = 0xc633_6000u32; // 198.51.96.0/19
    for hosts in 1..64u32 {
        let mut keys: Vec<u64> = (0..hosts)
            .map(|h| v4_key(slot_first + 8 + 2 * h, 32, 0, false))
            .chain([v4_key(slot_first - SPAN, 18, 1, false)])
            .collect();
        keys.sort_unstable();
        let mut copy = full(&keys, &masks);
        let mut new = keys.clone();
        new.push(v4_key(slot_first + 3, 32, 0, false));
        new.sort_unstable();
        let slots = dirty_slots(&changed(&keys, &new)).expect("one slot");
        assert_eq!(slots, [slot_first >> DIRECTORY_SHIFT_V4]);
        patch(
            &mut copy,
            4 * CHUNK,
            &new,
            &short_keys(&new),
            &masks,
            &slots,
        )
        .expect("patched");
        let expected = full(&new, &masks);
        assert_same_answers(&copy, &expected, &probes(&expected, &mut next));
    }
}

/// Lines shaped like the bench's generated IPv4 prefixes (bench/src/bench/
/// policies.rs: /32 55%, /24 25%, /25-/31 15%, /18-/23 5%, in 11/8 to 223/8).
fn bench_like(count: usize, next: &mut impl FnMut() -> u64) -> Vec<(u32, u8)> {
    (0..count)
        .map(|_| {
            let r = next();
            let len = match r % 100 {
                0..55 => 32,
                55..80 => 24,
                80..95 => 25 + ((r >> 8) % 7) as u8,
                _ => 18 + ((r >> 8) % 6) as u8,
            };
            let addr = 0x0b00_0000 + ((next() >> 32) as u32 % (0xdf00_0000 - 0x0b00_0000));
            (addr & mask(len, 32) as u32, len)
        })
        .collect()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Time the pieces of a patch at 1M bench-shaped lines (750,000 IPv4 in one
/// set, the bench's IPv4 share), the copy holding the policy before last and
/// the same 1% of the lines replaced twice (steady state: 7,500 out, 7,500
/// in), against the full fold, plan and layout. By hand:
/// `cargo test -p airlock --release --lib patch_timing_at_a_million -- --ignored --nocapture`
#[test]
#[ignore = "timing, by hand"]
fn patch_timing_at_a_million() {
    const RUNS: usize = 9;
    let mut next = xorshift(0x5eed_0023_0f0f_0003);
    let lines = bench_like(750_000, &mut next);
    let masks = [1u128];
    let as_keys = |lines: &[(u32, u8)]| -> Vec<u64> {
        lines.iter().map(|&(a, l)| v4_key(a, l, 0, false)).collect()
    };
    let stride = 100;
    let mutate = |lines: &[(u32, u8)], next: &mut dyn FnMut() -> u64| {
        let mut out = lines.to_vec();
        let fresh = bench_like(lines.len() / stride, &mut || next());
        for (i, net) in fresh.into_iter().enumerate() {
            out[i * stride] = net;
        }
        out
    };
    let before_last = mutate(&lines, &mut next);
    let mut old_keys = as_keys(&before_last);
    old_keys.sort_unstable();
    let copy = full(&old_keys, &masks);
    let (mut t_full, mut t_keys, mut t_merge, mut t_short, mut t_dirty) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut t_locate, mut t_stage, mut t_commit, mut t_patch) = (vec![], vec![], vec![], vec![]);
    let mut figures;
    let mut scratch = resident(&copy);
    for run in 0..RUNS {
        let now = mutate(&lines, &mut next);
        // Full path: keys from the lines, sorted, folded, planned, laid out.
        let started = Instant::now();
        let unsorted = as_keys(&now);
        let mut sorted = unsorted.clone();
        sorted.sort_unstable();
        t_keys.push(started.elapsed());
        let started = Instant::now();
        let expected = full(&sorted, &masks);
        t_full.push(started.elapsed());
        // The change as the import cache's diffs give it: the lines gone and
        // added since the policy before last, sorted.
        let mut gone: Vec<u64> = (0..lines.len())
            .step_by(stride)
            .map(|i| v4_key(before_last[i].0, before_last[i].1, 0, false))
            .collect();
        let mut added: Vec<u64> = (0..lines.len())
            .step_by(stride)
            .map(|i| v4_key(now[i].0, now[i].1, 0, false))
            .collect();
        gone.sort_unstable();
        added.sort_unstable();
        // Kept sorted keys patched with the change: one merge pass.
        let started = Instant::now();
        let merged = merge(&old_keys, &gone, &added);
        t_merge.push(started.elapsed());
        assert!(merged == sorted, "the kept keys patched are the new keys");
        let started = Instant::now();
        let short = short_keys(&merged);
        t_short.push(started.elapsed());
        let started = Instant::now();
        let changed: Vec<(u32, u8)> = gone
            .iter()
            .chain(&added)
            .map(|&k| (key_addr(k), key_len(k)))
            .collect();
        let slots = dirty_slots(&changed).expect("few slots");
        t_dirty.push(started.elapsed());
        // Finding each slot's keys alone (the binary searches, the chain).
        let started = Instant::now();
        let mut found = 0;
        let mut from = 0;
        for &slot in &slots {
            let first = slot << DIRECTORY_SHIFT_V4;
            let start = from + gallop(&merged[from..], |&k| key_addr(k) < first);
            let end = start + gallop(&merged[start..], |&k| key_addr(k) <= first | (SPAN - 1));
            from = end;
            found += end - start;
        }
        t_locate.push(started.elapsed());
        reset(&mut scratch, &copy);
        let started = Instant::now();
        figures = patch(&mut scratch, 2 * CHUNK, &merged, &short, &masks, &slots).expect("patched");
        t_patch.push(started.elapsed());
        let kept = if run == RUNS - 1 {
            Some(scratch.clone())
        } else {
            None
        };
        reset(&mut scratch, &copy);
        let staged_copy = &mut scratch;
        let started = Instant::now();
        let mut classes = Classes::from_entries(staged_copy.classes.clone());
        let staged = stage(
            staged_copy.elements.len(),
            &merged,
            &short,
            &masks,
            &slots,
            &mut classes,
        );
        t_stage.push(started.elapsed());
        let started = Instant::now();
        staged_copy.elements.extend_from_slice(&staged.elements);
        for &(slot, value) in &staged.directory {
            staged_copy.elements[slot as usize] = SourceRangeV4(value);
        }
        t_commit.push(started.elapsed());
        if let Some(patched) = kept {
            // How many new runs would fit where the slot's old run was.
            let run_length = |value: u32| {
                (value & SLOT_ANSWER_V4 == 0).then(|| {
                    (1usize << ((value >> RUN_HALVINGS_SHIFT_V4) & 15))
                        + ((value >> RUN_FIRST_PROBE_SHIFT_V4) & 7) as usize
                        + 1
                })
            };
            let (mut fit, mut runs, mut were_runs) = (0, 0, 0);
            for &(slot, value) in &staged.directory {
                let old = run_length(copy.elements[slot as usize].0);
                were_runs += usize::from(old.is_some());
                if let Some(new) = run_length(value) {
                    runs += 1;
                    fit += usize::from(old.is_some_and(|old| old >= new));
                }
            }
            println!(
                "runs {runs}, slots that were runs {were_runs}, new runs no longer than the \
                 slot's old run {fit}, free room before the patch {}",
                2 * CHUNK - copy.elements.len()
            );
            assert_same_answers(&patched, &expected, &[]);
            println!(
                "keys {} (short {}), changed {}, slots {}, keys in them {found}, {figures:?}, \
                 full table {} elements, copy {} -> {}",
                merged.len(),
                short.len(),
                changed.len(),
                slots.len(),
                expected.elements.len(),
                copy.elements.len(),
                patched.elements.len(),
            );
        }
    }
    println!(
        "medians of {RUNS}, ms: keys+sort {:.2}, full fold+plan+layout {:.2} | patch: kept keys \
         merged {:.2}, short keys {:.2}, dirty slots {:.2}, locate {:.2}, refold+stage {:.2}, \
         commit {:.2}, patch whole {:.2}",
        ms(median(t_keys)),
        ms(median(t_full)),
        ms(median(t_merge)),
        ms(median(t_short)),
        ms(median(t_dirty)),
        ms(median(t_locate)),
        ms(median(t_stage)),
        ms(median(t_commit)),
        ms(median(t_patch)),
    );
    let _ = SourceEntry::default();
}

/// A copy of `table` whose room up to the preallocated values' is memory
/// already touched, as the map's is: what a patch writes costs no fresh page.
fn resident(table: &SourceTable<SourceRangeV4>) -> SourceTable<SourceRangeV4> {
    let mut copy = table.clone();
    let len = copy.elements.len();
    copy.elements.resize(2 * CHUNK, SourceRangeV4::default());
    copy.elements.truncate(len);
    copy
}

/// `scratch` holding `table` again, in the same memory.
fn reset(scratch: &mut SourceTable<SourceRangeV4>, table: &SourceTable<SourceRangeV4>) {
    scratch.elements.clear();
    scratch.elements.extend_from_slice(&table.elements);
    scratch.classes.clone_from(&table.classes);
}

/// `old` less `gone` plus `added` (all sorted; `gone` a sub-multiset of `old`).
fn merge(old: &[u64], gone: &[u64], added: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(old.len() + added.len());
    let (mut g, mut a) = (0, 0);
    for &k in old {
        if gone.get(g) == Some(&k) {
            g += 1;
            continue;
        }
        while let Some(&n) = added.get(a)
            && n < k
        {
            out.push(n);
            a += 1;
        }
        out.push(k);
    }
    out.extend_from_slice(&added[a..]);
    out
}

fn full_v6(keys: &[Wide], masks: &[u128]) -> SourceTable<SourceRangeV6> {
    let entry = |a: u128, len, value| PrefixEntry {
        addr: a.to_be_bytes(),
        prefix_len: len,
        value,
    };
    let entries = fold_family(keys.to_vec(), 128, masks, true, entry).0;
    table::<SourceRangeV6, 16>(&entries, INLINE_TABLE_V6 as usize).expect("classes fit")
}

fn changed_v6(old: &[Wide], new: &[Wide]) -> Vec<(u128, u8)> {
    let mut out: Vec<(u128, u8)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => (i, j) = (i + 1, j + 1),
            (Some(a), Some(b)) if a < b => (out.push(a.prefix()), i += 1).1,
            (Some(a), None) => (out.push(a.prefix()), i += 1).1,
            (_, Some(b)) => (out.push(b.prefix()), j += 1).1,
            (None, None) => unreachable!(),
        }
    }
    out
}

/// A network in 2001:db8::/32 near one of a few centres, /46 (over many
/// slots) to /128.
fn key_v6(next: &mut impl FnMut() -> u64, centres: &[u128], sets: usize) -> Wide {
    let r = next();
    let len = [
        46u8, 48, 48, 50, 51, 52, 56, 60, 64, 64, 80, 96, 112, 127, 128, 128,
    ][(r % 16) as usize];
    let noise = (u128::from(next() >> 44) << 76) | u128::from(next());
    let addr = centres[((r >> 8) as usize) % centres.len()] ^ noise;
    let addr = addr & !(u128::MAX.checked_shr(u32::from(len)).unwrap_or(0));
    Wide::new(
        addr,
        len,
        (r >> 20) as usize % sets,
        (r >> 40).is_multiple_of(6),
    )
}

/// The IPv6 table patched as the IPv4 one, its window kept: the same answers
/// as the full build, or declined (a change outside the window) with the
/// table as it was.
#[test]
fn a_patched_ipv6_table_answers_as_the_full_build() {
    let mut next = xorshift(0x5eed_0023_0f0f_0006);
    let (mut patched, mut declined) = (0, 0);
    for _ in 0..30 {
        let sets = 1 + (next() % 4) as usize;
        let masks: Vec<u128> = (0..sets)
            .map(|_| u128::from(next() & 0xf | 1) | if next().is_multiple_of(4) { DENY } else { 0 })
            .collect();
        let doc = 0x2001_0db8u128 << 96;
        let centres: Vec<u128> = (0..3)
            .map(|_| doc | (u128::from(next() >> 40) << 72))
            .collect();
        let size = 20 + (next() % 1500) as usize;
        let mut keys: Vec<Wide> = (0..size)
            .map(|_| key_v6(&mut next, &centres, sets))
            .collect();
        keys.sort_unstable();
        let mut copy = full_v6(&keys, &masks);
        for _ in 0..3 {
            let mut new: Vec<Wide> = keys
                .iter()
                .copied()
                .filter(|_| !next().is_multiple_of(10))
                .collect();
            let added = 1 + (next() % (size as u64 / 5 + 2)) as usize;
            new.extend((0..added).map(|_| key_v6(&mut next, &centres, sets)));
            new.sort_unstable();
            let expected = full_v6(&new, &masks);
            let before = copy.clone();
            match patch_v6(&mut copy, 8 * CHUNK, &new, &masks, &changed_v6(&keys, &new)) {
                Ok(_) => {
                    patched += 1;
                    let read = prefixes::<SourceRangeV6, 16>(&copy).expect("well formed");
                    assert!(read == prefixes::<SourceRangeV6, 16>(&expected).expect("ok"));
                    for entry in &read {
                        let first = u128::from_be_bytes(entry.addr);
                        let last = first
                            | u128::MAX
                                .checked_shr(u32::from(entry.prefix_len))
                                .unwrap_or(0);
                        for key in [first, first.wrapping_sub(1), last, last.wrapping_add(1)] {
                            assert_eq!(lookup(&copy, key), lookup(&expected, key));
                        }
                    }
                }
                Err(Declined::OutsideWindow | Declined::TooManySlots(_)) => {
                    declined += 1;
                    assert!(copy == before);
                    copy = expected;
                }
                Err(other) => panic!("{other:?}"),
            }
            keys = new;
        }
        // A network outside the window (2001:db9::/48): declined, nothing written.
        let mut outside = keys.clone();
        outside.push(Wide::new(0x2001_0db9u128 << 96, 48, 0, false));
        let before = copy.clone();
        let result = patch_v6(
            &mut copy,
            8 * CHUNK,
            &outside,
            &masks,
            &changed_v6(&keys, &outside),
        );
        assert_eq!(result, Err(Declined::OutsideWindow));
        assert!(copy == before);
    }
    assert!(patched > 40, "patched {patched}, declined {declined}");
    println!("patched {patched}, declined {declined}");
}

/// IPv6 lines shaped like the bench's (/128 30%, /64 30%, /48 28%, /36-/47 7%,
/// /49-/63 5%, in 2000::/3).
fn bench_like_v6(count: usize, next: &mut impl FnMut() -> u64) -> Vec<(u128, u8)> {
    (0..count)
        .map(|_| {
            let r = next();
            let len = match r % 100 {
                0..30 => 128,
                30..60 => 64,
                60..88 => 48,
                88..95 => 36 + ((r >> 8) % 12) as u8,
                _ => 49 + ((r >> 8) % 15) as u8,
            };
            let addr = ((u128::from(next()) << 64 | u128::from(next())) >> 3) | (1u128 << 125);
            (
                addr & !(u128::MAX.checked_shr(u32::from(len)).unwrap_or(0)),
                len,
            )
        })
        .collect()
}

/// `patch_timing_at_a_million`'s IPv6 share: 250,000 lines, the same 1%
/// replaced twice. By hand:
/// `cargo test -p airlock --release --lib patch_timing_v6 -- --ignored --nocapture`
#[test]
#[ignore = "timing, by hand"]
fn patch_timing_v6_at_a_million() {
    const RUNS: usize = 9;
    let mut next = xorshift(0x5eed_0023_0f0f_0007);
    let lines = bench_like_v6(250_000, &mut next);
    let masks = [1u128];
    let as_keys = |lines: &[(u128, u8)]| -> Vec<Wide> {
        let mut keys: Vec<Wide> = lines
            .iter()
            .map(|&(a, l)| Wide::new(a, l, 0, false))
            .collect();
        keys.sort_unstable();
        keys
    };
    let stride = 100;
    let mutate = |lines: &[(u128, u8)], next: &mut dyn FnMut() -> u64| {
        let mut out = lines.to_vec();
        for (i, net) in bench_like_v6(lines.len() / stride, &mut || next())
            .into_iter()
            .enumerate()
        {
            out[i * stride] = net;
        }
        out
    };
    let before_last = mutate(&lines, &mut next);
    let copy = full_v6(&as_keys(&before_last), &masks);
    let mut scratch = copy.clone();
    scratch.elements.reserve(2 * v6::CHUNK);
    let (mut t_full, mut t_patch) = (vec![], vec![]);
    for run in 0..RUNS {
        let now = mutate(&lines, &mut next);
        let keys = as_keys(&now);
        let started = Instant::now();
        let expected = full_v6(&keys, &masks);
        t_full.push(started.elapsed());
        let changed: Vec<(u128, u8)> = (0..lines.len())
            .step_by(stride)
            .flat_map(|i| [before_last[i], now[i]])
            .collect();
        scratch.elements.clear();
        scratch.elements.extend_from_slice(&copy.elements);
        scratch.classes.clone_from(&copy.classes);
        let started = Instant::now();
        let figures = patch_v6(&mut scratch, 4 * v6::CHUNK, &keys, &masks, &changed);
        t_patch.push(started.elapsed());
        let figures = figures.expect("patched");
        if run == RUNS - 1 {
            assert!(
                prefixes::<SourceRangeV6, 16>(&scratch) == prefixes::<SourceRangeV6, 16>(&expected)
            );
            println!(
                "keys {}, changed {}, {figures:?}, full table {} words, copy {} -> {}, window /{}",
                keys.len(),
                changed.len(),
                expected.elements.len(),
                copy.elements.len(),
                scratch.elements.len(),
                64 - copy.directory.shift - airlock_common::DIRECTORY_BITS_V6,
            );
        }
    }
    println!(
        "IPv6 medians of {RUNS}, ms: full fold+plan+layout {:.2} | patch_v6 whole (slots, \
         short keys, refold, layout, commit) {:.2}",
        ms(median(t_full)),
        ms(median(t_patch)),
    );
}
