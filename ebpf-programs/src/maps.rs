//! The program's maps. Names are the ABI with the loader: they come from
//! `airlock_common::maps` and the tests check the loader finds every one.

use airlock_common::{
    Counter, DROP_SAMPLE_RING_BYTES, FLOW_TABLE_ENTRIES, FlowKey, FlowState, GENERATION_KEY_BITS,
    GENERATIONS, GenConfig, MAX_PREFIXES_V4, MAX_PREFIXES_V6, PORT_SLOTS, PolicyMeta,
    REASON_STAT_SLOTS, RECORD_CHUNK_BYTES, RECORD_SLOTS, RULE_BASE_SLOTS, RULE_STAT_SLOTS,
    SAMPLE_STAT_SLOTS, SampleWindow, SamplingConfig, SourceEntry, port_index,
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
};

#[map]
pub static ACTIVE_GEN: Array<u32> = Array::with_max_entries(1, 0);
#[map]
pub static CONFIG: Array<GenConfig> = Array::with_max_entries(GENERATIONS, 0);

// Keys: the generation byte, then the address (see airlock_common::maps).
#[map]
pub static SRC_V4: LpmTrie<[u8; 5], SourceEntry> =
    LpmTrie::with_max_entries(GENERATIONS * MAX_PREFIXES_V4, 0);
#[map]
pub static SRC_V6: LpmTrie<[u8; 17], SourceEntry> =
    LpmTrie::with_max_entries(GENERATIONS * MAX_PREFIXES_V6, 0);

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

/// User space only, like META: each generation's record of what it holds (see
/// `airlock_common::maps::RECORD_CHUNK_BYTES`).
#[map]
pub static RECORD: HashMap<u32, [u8; RECORD_CHUNK_BYTES]> =
    HashMap::with_max_entries(RECORD_SLOTS, BPF_F_NO_PREALLOC);

/// Source entry for an IPv4 address in generation `generation`.
#[inline(always)]
pub fn source_v4(generation: u32, addr: [u8; 4]) -> SourceEntry {
    let key = Key::new(
        GENERATION_KEY_BITS + 32,
        [generation as u8, addr[0], addr[1], addr[2], addr[3]],
    );
    SRC_V4.get(&key).copied().unwrap_or_default()
}

#[inline(always)]
pub fn source_v6(generation: u32, addr: [u8; 16]) -> SourceEntry {
    let mut data = [0u8; 17];
    data[0] = generation as u8;
    let mut i = 0;
    while i < 16 {
        data[i + 1] = addr[i];
        i += 1;
    }
    SRC_V6
        .get(Key::new(GENERATION_KEY_BITS + 128, data))
        .copied()
        .unwrap_or_default()
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
