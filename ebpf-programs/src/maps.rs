//! The program's maps. Names are the ABI with the loader: they come from
//! `airlock_common::maps` and the tests check the loader finds every one.

use airlock_common::{
    Counter, DROP_SAMPLE_RING_BYTES, FLOW_TABLE_ENTRIES, FlowKey, FlowState, GENERATIONS,
    GenConfig, INLINE_TABLE_V4, INLINE_TABLE_V6, PORT_SLOTS, PolicyMeta, RANGE_SEARCH_STEPS,
    REASON_STAT_SLOTS, RULE_BASE_SLOTS, RULE_STAT_SLOTS, SAMPLE_STAT_SLOTS, SOURCE_TABLE_FLAGS,
    SampleWindow, SamplingConfig, SourceEntry, SourceRangeV4, SourceRangeV6, TABLE_INLINE_V4,
    TABLE_INLINE_V6, port_index,
};
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    btf_maps::{self, ArrayOfMaps},
    macros::{btf_map, map},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};

#[map]
pub static ACTIVE_GEN: Array<u32> = Array::with_max_entries(1, 0);
#[map]
pub static CONFIG: Array<GenConfig> = Array::with_max_entries(GENERATIONS, 0);

/// The inner maps' template: the loader swaps in tables of any size with these flags.
type TableV4 = btf_maps::Array<SourceRangeV4, 1, { SOURCE_TABLE_FLAGS as usize }>;
type TableV6 = btf_maps::Array<SourceRangeV6, 1, { SOURCE_TABLE_FLAGS as usize }>;

/// Preallocated source tables: one map value per generation holding its whole
/// table, so a search reads elements by offset from one pointer, the verifier
/// checking each offset against the value's size (see
/// `airlock_common::INLINE_TABLE_V4`).
#[map]
pub static SRC_V4_INLINE: Array<[SourceRangeV4; INLINE_TABLE_V4 as usize]> =
    Array::with_max_entries(GENERATIONS, BPF_F_MMAPABLE);
#[map]
pub static SRC_V6_INLINE: Array<[SourceRangeV6; INLINE_TABLE_V6 as usize]> =
    Array::with_max_entries(GENERATIONS, BPF_F_MMAPABLE);

/// One source table per generation for policies too large for the preallocated
/// ones (see `airlock_common::SourceRangeV4`).
#[btf_map]
pub static SRC_V4: ArrayOfMaps<TableV4, { GENERATIONS as usize }> = ArrayOfMaps::new();
#[btf_map]
pub static SRC_V6: ArrayOfMaps<TableV6, { GENERATIONS as usize }> = ArrayOfMaps::new();

#[map]
pub static PORTS_TCP: Array<u64> = Array::with_max_entries(GENERATIONS * PORT_SLOTS, 0);
#[map]
pub static PORTS_UDP: Array<u64> = Array::with_max_entries(GENERATIONS * PORT_SLOTS, 0);

#[map]
pub static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_STAT_SLOTS, 0);
#[map]
pub static RULE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(RULE_STAT_SLOTS, 0);
/// User space only: see `airlock_common::maps::rule_base_index`.
#[map]
pub static RULE_BASE: Array<Counter> = Array::with_max_entries(RULE_BASE_SLOTS, 0);

#[map]
pub static DROP_SAMPLES: RingBuf = RingBuf::with_byte_size(DROP_SAMPLE_RING_BYTES, 0);
#[map]
pub static SAMPLING: Array<SamplingConfig> = Array::with_max_entries(1, 0);
#[map]
pub static SAMPLE_STATE: PerCpuArray<SampleWindow> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static SAMPLE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SAMPLE_STAT_SLOTS, 0);

/// Flows the host opened: written by the egress program, read by XDP (flows.rs).
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(FLOW_TABLE_ENTRIES, 0);

/// Written and read only by user space; lives here so it is created, pinned and
/// removed together with the rest of the filter.
#[map]
pub static META: Array<PolicyMeta> = Array::with_max_entries(GENERATIONS, 0);

/// Source entry for an IPv4 address in generation `generation`: the directory
/// slot of its top bits, then a binary search of the slot's ranges.
#[inline(always)]
pub fn source_v4(generation: u32, addr: [u8; 4]) -> SourceEntry {
    let Some(config) = CONFIG.get(generation) else {
        return SourceEntry::default();
    };
    let key = u32::from_be_bytes(addr);
    let slot = directory_slot(u64::from(key) << 32, config.directory_bits_v4);
    // The two places a table can be are searched by separate code: LLVM would
    // otherwise merge their map reads into one call site reading either map, which
    // the verifier can neither inline nor call directly.
    if config.inline_tables & TABLE_INLINE_V4 != 0 {
        let Some(table) = SRC_V4_INLINE.get(generation) else {
            return SourceEntry::default();
        };
        // Masked, the index is in bounds by construction: no check, no branch.
        match search_v4(
            |i| Some(&table[(i & (INLINE_TABLE_V4 - 1)) as usize]),
            slot,
            key,
        ) {
            Some(range) => SourceEntry {
                rules: range.rules,
                flags: range.flags,
                _pad: 0,
            },
            None => SourceEntry::default(),
        }
    } else {
        let mut flags = 0;
        let rules = sized_v4(generation, slot, key, &mut flags);
        SourceEntry {
            rules,
            flags,
            _pad: 0,
        }
    }
}

/// The search in a sized inner table (policies too large for the preallocated
/// one), kept out of line: see `source_v4`.
#[inline(never)]
fn sized_v4(generation: u32, slot: u32, key: u32, flags: &mut u32) -> u64 {
    let Some(table) = SRC_V4.get(generation) else {
        return 0;
    };
    match search_v4(|i| table.get(i), slot, key) {
        Some(range) => {
            *flags = range.flags;
            range.rules
        }
        None => 0,
    }
}

#[inline(always)]
fn search_v4<'a>(
    get: impl Fn(u32) -> Option<&'a SourceRangeV4>,
    slot: u32,
    key: u32,
) -> Option<&'a SourceRangeV4> {
    let directory = get(slot)?;
    let (mut base, mut len) = (directory.start, directory.flags);
    let mut step = 0;
    while step < RANGE_SEARCH_STEPS && len > 1 {
        let half = len / 2;
        let range = get(base + half)?;
        // Branch-free (`key >= range.start` as a borrow): a branch here would double
        // the verifier's paths at every step.
        let borrow = (u64::from(key).wrapping_sub(u64::from(range.start)) >> 63) as u32;
        base += half & borrow.wrapping_sub(1);
        len -= half;
        step += 1;
    }
    get(base)
}

#[inline(always)]
pub fn source_v6(generation: u32, addr: [u8; 16]) -> SourceEntry {
    let Some(config) = CONFIG.get(generation) else {
        return SourceEntry::default();
    };
    let high = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let low = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let slot = directory_slot(high, config.directory_bits_v6);
    if config.inline_tables & TABLE_INLINE_V6 != 0 {
        let Some(table) = SRC_V6_INLINE.get(generation) else {
            return SourceEntry::default();
        };
        match search_v6(
            |i| Some(&table[(i & (INLINE_TABLE_V6 - 1)) as usize]),
            slot,
            high,
            low,
        ) {
            Some(range) => SourceEntry {
                rules: range.rules,
                flags: range.flags,
                _pad: 0,
            },
            None => SourceEntry::default(),
        }
    } else {
        let mut flags = 0;
        let rules = sized_v6(generation, slot, high, low, &mut flags);
        SourceEntry {
            rules,
            flags,
            _pad: 0,
        }
    }
}

/// As `sized_v4`.
#[inline(never)]
fn sized_v6(generation: u32, slot: u32, high: u64, low: u64, flags: &mut u32) -> u64 {
    let Some(table) = SRC_V6.get(generation) else {
        return 0;
    };
    match search_v6(|i| table.get(i), slot, high, low) {
        Some(range) => {
            *flags = range.flags;
            range.rules
        }
        None => 0,
    }
}

#[inline(always)]
fn search_v6<'a>(
    get: impl Fn(u32) -> Option<&'a SourceRangeV6>,
    slot: u32,
    high: u64,
    low: u64,
) -> Option<&'a SourceRangeV6> {
    let directory = get(slot)?;
    let (mut base, mut len) = (directory.start[0] as u32, directory.start[1] as u32);
    let mut step = 0;
    while step < RANGE_SEARCH_STEPS && len > 1 {
        let half = len / 2;
        let range = get(base + half)?;
        // (high, low) - range.start as a 128-bit subtraction; its borrow out says
        // the address lies before the range. Branch-free, as in `search_v4`.
        let low_borrow = subtract_borrow(low, range.start[1], low.wrapping_sub(range.start[1]));
        let high_diff = high.wrapping_sub(range.start[0]).wrapping_sub(low_borrow);
        let borrow = subtract_borrow(high, range.start[0], high_diff) as u32;
        base += half & borrow.wrapping_sub(1);
        len -= half;
        step += 1;
    }
    get(base)
}

/// The directory slot of an address whose top 64 bits are `high`.
#[inline(always)]
fn directory_slot(high: u64, bits: u32) -> u32 {
    if bits == 0 {
        0
    } else {
        (high >> (64 - (bits & 63))) as u32
    }
}

/// Borrow out of `a - b (- borrow in) = difference`, from the operands' top bits.
#[inline(always)]
fn subtract_borrow(a: u64, b: u64, difference: u64) -> u64 {
    ((!a & b) | (!(a ^ b) & difference)) >> 63
}

/// Mask of rules covering `port` for TCP (`tcp == true`) or UDP.
#[inline(always)]
pub fn port_rules(generation: u32, tcp: bool, port: u16) -> u64 {
    let index = port_index(generation, port);
    let hit = if tcp {
        PORTS_TCP.get(index)
    } else {
        PORTS_UDP.get(index)
    };
    hit.copied().unwrap_or(0)
}

#[inline(always)]
pub fn count(map: &PerCpuArray<Counter>, index: u32, bytes: u64) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}
