//! The kernel's source tables at size: twenty thousand prefixes of every
//! length, nested, with `except` holes and a deny set, some packed into a single
//! directory slot so the program's binary search takes its longest paths. Every
//! prefix's first and last address and their neighbours, and random addresses, are
//! run through the real program (BPF_PROG_TEST_RUN) and compared with the reference
//! model, which knows nothing of tables (it loops over the policy's sets). Every
//! place a table can live is covered: the preallocated maps (for IPv4 both of a
//! generation's values) and the chunk maps of larger tables, there also across
//! the boundaries between chunks.
//!
//! Needs root; fails (never skips) without it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use airlock::compile::{
    self,
    ranges::{self, SourceTable},
};
use airlock::loader::{LoaderError, PolicySummary};
use airlock_common::{
    DIRECTORY_BITS_V6, DIRECTORY_SHIFT_V4, INLINE_TABLE_V4, INLINE_TABLE_V6, MAX_CLASSES,
    PREALLOCATED_VALUES_V4, RUN_FIRST_PROBE_SHIFT_V4, RUN_HALVINGS_SHIFT_V4, RUN_INDEX_MASK_V4,
    RUN_INDEX_MASK_V6, SLOT_ANSWER_V4, SLOT_ANSWER_V6, SourceRangeV4, SourceRangeV6,
};
use airlock_integration::kernel::Harness;
use airlock_integration::packet::{FrameSpec, Transport};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PORT: u16 = 5432;

fn v4(addr: u32, len: u8) -> IpNet {
    IpNet::V4(
        Ipv4Net::new(Ipv4Addr::from(addr), len)
            .expect("length")
            .trunc(),
    )
}

fn v6(addr: u128, len: u8) -> IpNet {
    IpNet::V6(
        Ipv6Net::new(Ipv6Addr::from(addr), len)
            .expect("length")
            .trunc(),
    )
}

/// Prefixes spread over the whole space, plus dense clusters: one IPv4 /16 and one
/// IPv6 /48 holding thousands of hosts and small subnets each (one directory slot).
fn prefixes(rng: &mut StdRng, spread: usize, clustered: usize) -> Vec<IpNet> {
    let mut out = Vec::with_capacity(spread + clustered);
    for _ in 0..spread {
        out.push(if rng.random_ratio(2, 3) {
            v4(rng.random(), rng.random_range(8..=32))
        } else {
            v6(
                (rng.random::<u128>() >> 3) | (1 << 125),
                rng.random_range(16..=128),
            )
        });
    }
    for _ in 0..clustered {
        out.push(if rng.random_ratio(1, 2) {
            v4(
                0x0a14_0000 | rng.random_range(0..0x1_0000u32),
                rng.random_range(24..=32),
            )
        } else {
            let host = rng.random_range(0..1u128 << 80);
            v6(
                0x2001_0db8_0001_u128 << 80 | host,
                rng.random_range(100..=128),
            )
        });
    }
    out
}

fn list(nets: &[IpNet]) -> String {
    let items: Vec<String> = nets.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// An address's neighbour (`by` = ±1), wrapping at the ends of the space.
fn step(addr: IpAddr, by: i64) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).wrapping_add_signed(by as i32).into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).wrapping_add_signed(i128::from(by)).into()),
    }
}

#[test]
fn large_nested_policies_agree_with_the_reference_model_at_every_edge() {
    agree_at_every_edge(false);
}

/// The same in chunk maps: what a policy too large for the preallocated tables gets
/// (the clusters make searches of a dozen steps there).
#[test]
fn tables_in_chunk_maps_agree_too() {
    agree_at_every_edge(true);
}

fn agree_at_every_edge(chunked_only: bool) {
    let mut rng = StdRng::seed_from_u64(0x5eed_7ab1e);
    let allowed = prefixes(&mut rng, 12_000, 4_000);
    let others = prefixes(&mut rng, 2_000, 1_000);
    let denied = prefixes(&mut rng, 500, 200);
    let holes: Vec<IpNet> = allowed
        .iter()
        .filter(|n| n.prefix_len() < n.max_prefix_len())
        .step_by(50)
        .map(|n| match n {
            IpNet::V4(n) => v4(u32::from(n.network()), n.prefix_len() + 1),
            IpNet::V6(n) => v6(u128::from(n.network()), n.prefix_len() + 1),
        })
        .collect();
    let yaml = format!(
        "version: 1\ninterfaces: [eth0]\nmode: enforce\ndefault: drop\n\
         sets:\n  allowed:\n    cidrs: {}\n    except: {}\n  others: {}\n  blocked: {}\n\
         deny: [blocked]\n\
         rules:\n  - name: wide\n    ports: [{PORT}/tcp]\n    from: [allowed]\n\
         \x20 - name: narrow\n    ports: [{PORT}/tcp, 8000/tcp]\n    from: [others]\n",
        list(&allowed),
        list(&holes),
        list(&others),
        list(&denied),
    );
    let mut h = Harness::new();
    if chunked_only {
        h.filter.maps.use_chunked_tables_only();
    }
    h.apply(&yaml);

    // The reference model loops over every set per source: probe the edges of one
    // prefix in four (every kind of prefix is among them) to stay within seconds.
    let mut probes: Vec<IpAddr> = Vec::new();
    for net in allowed
        .iter()
        .chain(&others)
        .chain(&denied)
        .chain(&holes)
        .step_by(4)
    {
        let (first, last) = (net.network(), net.broadcast());
        probes.extend([first, last, step(first, -1), step(last, 1)]);
    }
    for _ in 0..2_000 {
        probes.push(IpAddr::V4(rng.random::<u32>().into()));
        probes.push(IpAddr::V6(
            ((rng.random::<u128>() >> 3) | (1 << 125)).into(),
        ));
    }
    check_probes(&mut h, &probes);
}

/// An IPv4 table that fills both preallocated values of its generation and
/// goes on in a chunk map, and an IPv6 table that fills its preallocated value
/// and a chunk: the addresses of the ranges on either side of every chunk
/// boundary, and their neighbours, are judged as the reference model says, and
/// the tables read back as the policy's prefixes.
#[test]
fn tables_spanning_several_chunks_agree_across_chunk_boundaries() {
    let mut rng = StdRng::seed_from_u64(0x0c40_f7ab_1e00);
    // Disjoint hosts make two ranges each (a slot's run may begin with the last
    // range of the slot before): 950k IPv4 hosts behind the directory's 2^19
    // slots fill more than two chunks of 2^20 elements; 75k IPv6 hosts (a wide
    // run of four ranges, eight words, each) more than the preallocated value's
    // 2^19 words.
    let mut allowed: Vec<IpNet> = (0..950_000)
        .map(|_| v4(rng.random_range(0x0b00_0000..0xdf00_0000), 32))
        .collect();
    allowed.extend((0..75_000).map(|_| v6((rng.random::<u128>() >> 3) | (1 << 125), 128)));
    let yaml = allowing(&allowed);
    let policy = airlock_integration::kernel::parse_policy(&yaml);
    let compiled = compile::compile(&policy).expect("compiles");
    let table_v4: SourceTable<SourceRangeV4> =
        ranges::table(&compiled.v4, INLINE_TABLE_V4 as usize).expect("classes");
    let table_v6: SourceTable<SourceRangeV6> =
        ranges::table(&compiled.v6, INLINE_TABLE_V6 as usize).expect("classes");
    let chunk_v4 = INLINE_TABLE_V4 as usize;
    let chunk_v6 = INLINE_TABLE_V6 as usize;
    assert!(
        table_v4.elements.len() > PREALLOCATED_VALUES_V4 as usize * chunk_v4,
        "IPv4 table spans both preallocated values and a chunk map"
    );
    assert!(
        table_v6.elements.len() > chunk_v6,
        "IPv6 table spans the preallocated value and a chunk"
    );

    let mut h = Harness::new();
    h.apply(&yaml);

    // IPv4: the hosts whose slot's run begins next to a boundary.
    let starts: Vec<IpAddr> = allowed
        .iter()
        .filter_map(|net| match net {
            IpNet::V4(n) => {
                let slot =
                    table_v4.elements[(u32::from(n.network()) >> DIRECTORY_SHIFT_V4) as usize].0;
                let run = (slot & RUN_INDEX_MASK_V4) as usize;
                let near = [chunk_v4, 2 * chunk_v4]
                    .iter()
                    .any(|b| run.abs_diff(*b) < 8);
                (slot & SLOT_ANSWER_V4 == 0 && near).then_some(net.network())
            }
            IpNet::V6(n) => {
                // The slot as the program finds it (the hosts are inside the window).
                let high = (u128::from(n.network()) >> 64) as u64;
                let dir = table_v6.directory;
                let slot = (high.wrapping_sub(dir.base) >> dir.shift) as usize;
                assert!(slot < 1 << DIRECTORY_BITS_V6);
                let slot = (table_v6.elements[slot / 2].0 >> (32 * (slot % 2))) as u32;
                let run = (slot & RUN_INDEX_MASK_V6) as usize;
                (slot & SLOT_ANSWER_V6 == 0 && run.abs_diff(chunk_v6) < 16).then_some(net.network())
            }
        })
        .collect();
    let at_v4 = starts.iter().filter(|a| a.is_ipv4()).count();
    assert!(at_v4 >= 2, "hosts at both boundaries: {at_v4}");
    assert!(
        starts.iter().any(|a| a.is_ipv6()),
        "IPv6 hosts at the boundary"
    );
    let mut probes: Vec<IpAddr> = starts
        .iter()
        .flat_map(|&start| [start, step(start, -1), step(start, 1)])
        .collect();
    // And a sample of hosts and their neighbours everywhere else.
    for net in allowed.iter().step_by(2_000) {
        probes.extend([
            net.network(),
            step(net.network(), -1),
            step(net.network(), 1),
        ]);
    }
    check_probes(&mut h, &probes);

    assert_tables_read_back(&h, &compiled, "the policy");
}

/// IPv4 runs of every length from 2 to 26 ranges, each alone in its directory
/// slot: the lengths the program's written-out search takes (up to 16
/// elements, `k <= 3`, every first probe `d`), the loop's (17 to 24), and the
/// padded ones past them. Each run's ranges are contiguous /30 blocks, block
/// `j` in set `j` (its own rule on the one port), so every range has its own
/// outcome and a search that lands one, two, four or eight ranges off is seen.
/// The first address of every block, the address before it and the one after,
/// and the slot's first and last addresses and their neighbours are run
/// through the program, from each place a run can lie: the generation's first
/// preallocated value (with the directory), its second (chunk 1, where a large
/// policy's runs go next), and a chunk map.
#[test]
fn ipv4_runs_of_every_length_answer_at_every_boundary_inline() {
    ipv4_runs_of_every_length(RunsIn::FirstValue);
}

#[test]
fn ipv4_runs_of_every_length_answer_at_every_boundary_in_the_second_value() {
    ipv4_runs_of_every_length(RunsIn::SecondValue);
}

#[test]
fn ipv4_runs_of_every_length_answer_at_every_boundary_in_a_chunk() {
    ipv4_runs_of_every_length(RunsIn::ChunkMap);
}

/// Where [`ipv4_runs_of_every_length`] puts its runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunsIn {
    /// Chunk 0: the preallocated value `2g`, after the directory.
    FirstValue,
    /// Chunk 1: the preallocated value `2g + 1`. A production table, with
    /// hosts in the slots before the runs' (below 10/8) filling the first.
    SecondValue,
    /// Chunk 2: the first chunk map (the tables of chunk maps only).
    ChunkMap,
}

impl RunsIn {
    fn chunk(self) -> u32 {
        match self {
            RunsIn::FirstValue => 0,
            RunsIn::SecondValue => 1,
            RunsIn::ChunkMap => PREALLOCATED_VALUES_V4,
        }
    }
}

/// Most ranges a run of [`ipv4_runs_of_every_length`] holds.
const LONGEST_RUN: u32 = 26;

/// Hosts in 1/8 to 9/8, 15 a directory slot (a run of 33 elements each, 31
/// ranges padded), in a set of their own for another port: about 608,000
/// elements, which push the runs of the slots after them (10/8) past the
/// first preallocated value's 2^20.
fn filler_hosts() -> Vec<IpNet> {
    let (first, end) = (0x0100_0000u32, 0x0a00_0000u32);
    let spacing = (1u32 << DIRECTORY_SHIFT_V4) / 15 + 1;
    (first..end)
        .step_by(spacing as usize)
        .map(|a| v4(a, 32))
        .collect()
}

fn ipv4_runs_of_every_length(place: RunsIn) {
    let chunked_only = place == RunsIn::ChunkMap;
    let slot_span = 1u32 << DIRECTORY_SHIFT_V4;
    // Block `j` of every run is in set `j`: LONGEST_RUN - 1 sets at most.
    let mut sets: Vec<Vec<IpNet>> = vec![Vec::new(); LONGEST_RUN as usize - 1];
    // (slot's first address, ranges in its run, the blocks' first addresses).
    let mut runs: Vec<(u32, u32, Vec<u32>)> = Vec::new();
    for count in 2..=LONGEST_RUN {
        // Two slots per length: blocks from the slot's first address (the
        // run is the blocks and the gap after them), and blocks inside it
        // (a gap on either side), where a run has that many ranges.
        let at_start = 0x0a00_0000 | (count << 16);
        let inside = at_start + slot_span;
        for (slot, blocks, first) in [
            (at_start, count - 1, at_start),
            (inside, count.saturating_sub(2), inside + 0x0b00),
        ] {
            if blocks == 0 {
                continue;
            }
            let starts: Vec<u32> = (0..blocks).map(|j| first + 4 * j).collect();
            for (j, &start) in starts.iter().enumerate() {
                sets[j].push(v4(start, 30));
            }
            runs.push((slot, count, starts));
        }
    }
    let mut yaml =
        String::from("version: 1\ninterfaces: [eth0]\nmode: enforce\ndefault: drop\nsets:\n");
    for (j, set) in sets.iter().enumerate() {
        yaml.push_str(&format!("  s{j}: {}\n", list(set)));
    }
    if place == RunsIn::SecondValue {
        yaml.push_str(&format!("  filler: {}\n", list(&filler_hosts())));
    }
    yaml.push_str("rules:\n");
    if place == RunsIn::SecondValue {
        yaml.push_str("  - name: filler\n    ports: [8000/tcp]\n    from: [filler]\n");
    }
    for j in 0..sets.len() {
        yaml.push_str(&format!(
            "  - name: r{j}\n    ports: [{PORT}/tcp]\n    from: [s{j}]\n"
        ));
    }

    // The table holds what the test means to exercise: every run a run of its
    // length (the written-out lengths exactly; longer ones possibly padded),
    // in the chunk asked for.
    let compiled =
        compile::compile(&airlock_integration::kernel::parse_policy(&yaml)).expect("compiles");
    let capacity = if chunked_only {
        0
    } else {
        INLINE_TABLE_V4 as usize
    };
    let table: SourceTable<SourceRangeV4> = ranges::table(&compiled.v4, capacity).expect("classes");
    let mut lengths_seen = std::collections::BTreeSet::new();
    for (slot, count, _) in &runs {
        let value = table.elements[(slot >> DIRECTORY_SHIFT_V4) as usize].0;
        assert_eq!(value & SLOT_ANSWER_V4, 0, "slot {slot:#x} holds a run");
        let k = (value >> RUN_HALVINGS_SHIFT_V4) & 15;
        let d = ((value >> RUN_FIRST_PROBE_SHIFT_V4) & 7) + 1;
        let length = (1 << k) + d;
        assert!(
            length >= *count,
            "slot {slot:#x}: run of {length} for {count} ranges"
        );
        if *count <= 16 {
            assert_eq!(
                length, *count,
                "slot {slot:#x}: a written-out run is not padded"
            );
        }
        let chunk = (value & RUN_INDEX_MASK_V4) / INLINE_TABLE_V4;
        assert_eq!(chunk, place.chunk(), "slot {slot:#x}: where its run lies");
        lengths_seen.insert((k, d));
    }
    for k in 0..=3 {
        for d in 1..=(1 << k).min(8) {
            assert!(lengths_seen.contains(&(k, d)), "a run with k {k}, d {d}");
        }
    }

    let mut h = Harness::new();
    if chunked_only {
        h.filter.maps.use_chunked_tables_only();
    }
    h.apply(&yaml);
    let mut probes: Vec<IpAddr> = Vec::new();
    for (slot, _, starts) in &runs {
        let last = slot + slot_span - 1;
        let after_blocks = starts.last().expect("blocks") + 4;
        for address in starts.iter().copied().chain([*slot, last, after_blocks]) {
            let address = IpAddr::V4(address.into());
            probes.extend([address, step(address, -1), step(address, 1)]);
        }
    }
    check_probes(&mut h, &probes);
}

/// Re-applies overwrite the chunks their generation already holds: a generation's
/// IPv4 table goes from two chunks to two others in place, from one to two
/// (one kept, one new) and from two to one (one released). After every apply the
/// program's verdicts agree with the reference model and the tables read back as
/// exactly the new policy's prefixes, with nothing left of the one before.
#[test]
fn chunks_rewritten_in_place_by_later_applies_hold_exactly_the_new_policy() {
    // Tables in chunks only: the IPv4 ranges begin in chunk 2, the first chunk
    // map (the preallocated values hold the directory alone). Disjoint hosts
    // make two ranges each: 650k hosts fill two chunks, 20k fit in one.
    let sizes: [(u64, usize); 5] = [
        (1, 650_000),
        (2, 20_000),
        (3, 650_000),
        (4, 650_000),
        (5, 20_000),
    ];
    let mut h = Harness::new();
    h.filter.maps.use_chunked_tables_only();
    let mut previous: Vec<IpNet> = Vec::new();
    for (seed, hosts) in sizes {
        let mut rng = StdRng::seed_from_u64(0xc4a1_0000 + seed);
        let mut allowed: Vec<IpNet> = (0..hosts)
            .map(|_| v4(rng.random_range(0x0b00_0000..0xdf00_0000), 32))
            .collect();
        allowed.extend((0..hosts / 20).map(|_| v6((rng.random::<u128>() >> 3) | (1 << 125), 128)));
        let yaml = allowing(&allowed);
        let policy = h.apply(&yaml);
        let compiled = compile::compile(&policy).expect("compiles");
        let table_v4: SourceTable<SourceRangeV4> = ranges::table(&compiled.v4, 0).expect("classes");
        // The first chunks' worth of elements are the preallocated values.
        let chunks = table_v4.elements.len().div_ceil(INLINE_TABLE_V4 as usize)
            - PREALLOCATED_VALUES_V4 as usize;
        assert_eq!(chunks, if hosts > 100_000 { 2 } else { 1 }, "policy {seed}");
        let maps = &h.filter.maps;
        let (shape_v4, _) = maps
            .table_shapes(maps.active_generation().expect("readable"))
            .expect("config readable")
            .expect("a policy in force");
        assert_eq!(
            (shape_v4.placement, shape_v4.chunk_maps as usize),
            ("chunks", chunks),
            "policy {seed}: status reports the chunks"
        );

        let mut probes: Vec<IpAddr> = Vec::new();
        for net in allowed.iter().step_by(hosts / 300) {
            probes.extend([
                net.network(),
                step(net.network(), -1),
                step(net.network(), 1),
            ]);
        }
        // The hosts of the policy before too: only those in this one may pass.
        for net in previous.iter().step_by(previous.len().max(300) / 300) {
            probes.push(net.network());
        }
        check_probes(&mut h, &probes);
        assert_tables_read_back(&h, &compiled, &format!("policy {seed}"));
        previous = allowed;
    }
}

/// The wait for running programs used where `membarrier` does not wait (one CPU,
/// `nohz_full`, seccomp) goes through the inactive generation's last chunk slot and
/// leaves nothing behind: the tables of applies around it, in chunks, are judged as
/// the reference model says and read back whole.
#[test]
fn the_wait_through_the_array_of_maps_leaves_the_tables_as_they_were() {
    let mut rng = StdRng::seed_from_u64(0x9a1c_e000);
    let mut h = Harness::new();
    h.filter.maps.use_chunked_tables_only();
    for round in 0..3 {
        let allowed: Vec<IpNet> = (0..2_000)
            .map(|_| v4(rng.random_range(0x0b00_0000..0xdf00_0000), 32))
            .collect();
        let yaml = allowing(&allowed);
        let policy = h.apply(&yaml);
        h.filter
            .maps
            .wait_through_chunks()
            .unwrap_or_else(|e| panic!("round {round}: waiting through the chunks: {e:?}"));
        let compiled = compile::compile(&policy).expect("compiles");
        let probes: Vec<IpAddr> = allowed
            .iter()
            .step_by(20)
            .flat_map(|net| [net.network(), step(net.network(), 1)])
            .collect();
        check_probes(&mut h, &probes);
        assert_tables_read_back(&h, &compiled, &format!("round {round}"));
    }
}

/// A policy whose IPv4 or IPv6 sources have more distinct answers than the
/// family's class table holds is refused before anything is written: the policy in force and the
/// copy before it stay as they were, and the program judges as before.
#[test]
fn a_policy_with_more_source_classes_than_fit_changes_nothing() {
    let mut rng = StdRng::seed_from_u64(0x0c1a_55e5);
    let mut h = Harness::new();
    let mut applied = Vec::new();
    for _ in 0..2 {
        let allowed: Vec<IpNet> = (0..2_000)
            .map(|_| v4(rng.random_range(0x0b00_0000..0xdf00_0000), 32))
            .collect();
        h.apply(&allowing(&allowed));
        applied.push(allowed);
    }
    let maps = &h.filter.maps;
    let active = maps.active_generation().expect("readable");
    let before = (
        maps.generation_summary(1 - active).expect("readable"),
        maps.active_prefixes().expect("read back"),
        maps.generation_prefixes(1 - active).expect("read back"),
    );
    assert!(
        before.0.is_some(),
        "the copy before holds a complete policy"
    );

    // Disjoint hosts, each with an answer of its own: one more class than fit
    // beside the empty answer.
    // In either family: each has a class table of its own.
    for (family, hosts) in [
        (
            "IPv4",
            (0..MAX_CLASSES)
                .map(|i| v4(0x0b00_0000 + 4 * i, 32))
                .collect::<Vec<IpNet>>(),
        ),
        (
            "IPv6",
            (0..MAX_CLASSES)
                .map(|i| {
                    v6(
                        0x2001_0db8_0000_0000_0000_0000_0000_0000 | (u128::from(i) << 64),
                        64,
                    )
                })
                .collect(),
        ),
    ] {
        let policy = airlock_integration::kernel::parse_policy(&allowing(&hosts));
        let mut compiled = compile::compile(&policy).expect("compiles");
        for (i, entry) in compiled.v4.iter_mut().enumerate() {
            entry.value.rules = i as u64 + 1;
        }
        for (i, entry) in compiled.v6.iter_mut().enumerate() {
            entry.value.rules = i as u64 + 1;
        }
        let error = h
            .filter
            .maps
            .apply(&compiled, &PolicySummary::default())
            .expect_err("more classes than fit");
        match &error {
            LoaderError::Plan(compile::ranges::PlanError::TooManyClasses(e)) => {
                assert_eq!(e.family, family, "{error}")
            }
            _ => panic!("{family}: refused for its classes: {error:?}"),
        }
    }

    let maps = &h.filter.maps;
    assert_eq!(maps.active_generation().expect("readable"), active);
    let after = (
        maps.generation_summary(1 - active).expect("readable"),
        maps.active_prefixes().expect("read back"),
        maps.generation_prefixes(1 - active).expect("read back"),
    );
    assert!(after == before, "both copies are as they were");
    let probes: Vec<IpAddr> = applied
        .iter()
        .flatten()
        .step_by(10)
        .flat_map(|net| [net.network(), step(net.network(), 1)])
        .collect();
    check_probes(&mut h, &probes);
}

/// A `default: drop` policy whose one rule lets `allowed` reach PORT/tcp.
fn allowing(allowed: &[IpNet]) -> String {
    format!(
        "version: 1\ninterfaces: [eth0]\nmode: enforce\ndefault: drop\n\
         sets:\n  allowed: {}\n\
         rules:\n  - name: wide\n    ports: [{PORT}/tcp]\n    from: [allowed]\n",
        list(allowed),
    )
}

/// The tables in force read back as exactly `compiled`'s prefixes (`policy` names
/// it in the failure).
fn assert_tables_read_back(h: &Harness, compiled: &compile::Compiled, policy: &str) {
    let (v4, v6) = h.filter.maps.active_prefixes().expect("read back");
    assert!(
        v4 == ranges::canonical(&compiled.v4),
        "{policy}: the IPv4 table reads back as its prefixes"
    );
    assert!(
        v6 == ranges::canonical(&compiled.v6),
        "{policy}: the IPv6 table reads back as its prefixes"
    );
}

/// Runs every probe as a TCP SYN to the rule's port; all must agree with the
/// reference model, with plenty of both verdicts.
fn check_probes(h: &mut Harness, probes: &[IpAddr]) {
    let mut disagreements = Vec::new();
    let mut passed = 0usize;
    for source in probes {
        let frame = FrameSpec::ip(*source, Transport::tcp_syn(PORT)).build();
        match h.compare(&frame) {
            Ok(outcome) => passed += usize::from(outcome.reason.passes()),
            Err(d) => disagreements.push(format!("{source}: {d}")),
        }
    }
    for d in disagreements.iter().take(10) {
        println!("---- disagreement ----\n{d}");
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} sources disagree with the reference model; first ones printed above",
        disagreements.len(),
        probes.len()
    );
    // Not a vacuous agreement: plenty of both verdicts.
    assert!(
        passed > probes.len() / 10 && passed < probes.len() * 9 / 10,
        "{passed} of {} probes passed",
        probes.len()
    );
}

/// The source tables an apply lays out straight into the inactive copy's
/// preallocated maps are, element for element, the tables built from scratch
/// (`ranges::table`), with the directory and classes its config records; so
/// are the tables of a policy too large for those maps (laid out there first,
/// then built and written to chunks) and of one applied after it (built, as
/// the policy in force is in chunks). The copy the apply did not write keeps
/// the policy before, element for element.
#[test]
fn tables_laid_out_in_the_map_are_those_built_from_scratch() {
    let mut rng = StdRng::seed_from_u64(0x1a1d_0000);
    let mut h = Harness::new();
    // Disjoint hosts make two ranges each: 20k fit the preallocated values;
    // 950k look as if they might (their ranges past the directory are fewer
    // than IPv4's two values per generation hold, 2^21 elements) until the
    // runs are laid out.
    let mut before: Option<(SourceTable<SourceRangeV4>, SourceTable<SourceRangeV6>)> = None;
    for (round, hosts, placement) in [
        (0, 20_000, "preallocated"),
        (1, 15_000, "preallocated"),
        (2, 950_000, "chunks"),
        (3, 20_000, "preallocated"),
        (4, 18_000, "preallocated"),
    ] {
        let mut allowed: Vec<IpNet> = (0..hosts)
            .map(|_| v4(rng.random_range(0x0b00_0000..0xdf00_0000), 32))
            .collect();
        allowed.extend(prefixes(&mut rng, 300, 200));
        allowed.extend((0..hosts / 10).map(|_| v6((rng.random::<u128>() >> 3) | (1 << 125), 128)));
        let policy = h.apply(&allowing(&allowed));
        let compiled = compile::compile(&policy).expect("compiles");
        let want_v4: SourceTable<SourceRangeV4> =
            ranges::table(&compiled.v4, INLINE_TABLE_V4 as usize).expect("classes");
        let want_v6: SourceTable<SourceRangeV6> =
            ranges::table(&compiled.v6, INLINE_TABLE_V6 as usize).expect("classes");
        let maps = &h.filter.maps;
        let generation = maps.active_generation().expect("readable");
        let (v4, v6) = maps.generation_tables(generation).expect("read back");
        let v4 = v4.unwrap_or_else(|| panic!("round {round}: no IPv4 table read back"));
        let v6 = v6.unwrap_or_else(|| panic!("round {round}: no IPv6 table read back"));
        assert_eq!(
            v4.elements.len(),
            want_v4.elements.len(),
            "round {round}: IPv4 length"
        );
        assert!(
            v4 == want_v4,
            "round {round}: the IPv4 table is the one built from scratch"
        );
        assert_eq!(
            v6.elements.len(),
            want_v6.elements.len(),
            "round {round}: IPv6 length"
        );
        assert!(
            v6 == want_v6,
            "round {round}: the IPv6 table is the one built from scratch"
        );
        let (shape_v4, _) = maps
            .table_shapes(generation)
            .expect("config readable")
            .expect("a policy in force");
        assert_eq!(
            shape_v4.placement, placement,
            "round {round}: IPv4 placement"
        );
        if let Some((before_v4, before_v6)) = &before {
            let (v4, v6) = maps.generation_tables(1 - generation).expect("read back");
            assert!(
                v4.as_ref() == Some(before_v4) && v6.as_ref() == Some(before_v6),
                "round {round}: the copy not written still holds the policy before"
            );
        }
        let probes: Vec<IpAddr> = allowed
            .iter()
            .step_by(hosts / 400)
            .flat_map(|net| {
                [
                    net.network(),
                    step(net.network(), -1),
                    step(net.broadcast(), 1),
                ]
            })
            .collect();
        check_probes(&mut h, &probes);
        before = Some((want_v4, want_v6));
    }
}
