//! The program's maps. Names are the ABI with the loader: they come from
//! `airlock_common::maps` and the tests check the loader finds every one.

use airlock_common::{
    CHUNKS_PER_GENERATION, Counter, DROP_SAMPLE_RING_BYTES, EGRESS_RECENT_SLOTS,
    FALLBACK_WINDOW_JIFFIES, FLOW_EPOCH_SLOTS, FLOW_PORT_BLOCK_BYTES, FLOW_PORT_BLOCKS,
    FLOW_TABLE_ENTRIES, FlowKey, FlowState, GENERATIONS, GRACE_DONE_SLOTS, GenPolicy,
    INLINE_TABLE_V4, INLINE_TABLE_V6, PREALLOCATED_VALUES_V4, PolicyMeta, PortSlot,
    REASON_STAT_SLOTS, REPLY_RECENT_SLOTS, RULE_BASE_SLOTS, RULE_STAT_SLOTS, RecentFlow,
    RecentReply, SAMPLE_STAT_SLOTS, SOURCE_CHUNK_FLAGS, SampleWindow, SamplingConfig,
    SourceRangeV4, SourceRangeV6,
};
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    btf_maps::{self, ArrayOfMaps},
    macros::{btf_map, map},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};

/// The generation word: global data in a section of its own, which aya makes a
/// one-element array map (the loader pins it as `ACTIVE_GEN`: same type, key and
/// value as the `#[map]` it was). The program reads it at an address the kernel
/// fixes at load, one load, where a map lookup is a dozen instructions with the
/// key through the stack. User space writes it with a map update as before; the
/// load reads the same word, so the swap stays one word written (see `active_generation`).
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.ACTIVE_GEN")]
static mut ACTIVE_GEN: u32 = 0;

/// The generation in force, read once per packet.
#[inline(always)]
pub fn active_generation() -> u32 {
    // SAFETY: a 4-byte aligned word that only user space writes; volatile, as it
    // changes behind the program's back.
    unsafe { core::ptr::read_volatile(&raw const ACTIVE_GEN) & 1 }
}
/// Each generation's settings and port tables, one value per generation (see
/// `airlock_common::GenPolicy`); mmapable so the loader writes a generation with
/// plain copies.
#[map]
pub static POLICY: Array<GenPolicy> = Array::with_max_entries(GENERATIONS, BPF_F_MMAPABLE);

/// A chunk of a large source table: the inner maps' template, which every chunk
/// matches exactly (see `airlock_common::CHUNKS_PER_GENERATION`).
pub type ChunkV4 =
    btf_maps::Array<[SourceRangeV4; INLINE_TABLE_V4 as usize], 1, { SOURCE_CHUNK_FLAGS as usize }>;
pub type ChunkV6 =
    btf_maps::Array<[SourceRangeV6; INLINE_TABLE_V6 as usize], 1, { SOURCE_CHUNK_FLAGS as usize }>;

/// Preallocated source tables: map values holding a generation's directory and
/// first runs (IPv4: two values, chunks 0 and 1, see
/// `airlock_common::PREALLOCATED_VALUES_V4`), so a search reads elements by
/// offset from one pointer, the verifier checking each offset against the
/// value's size (see `airlock_common::INLINE_TABLE_V4`).
#[map]
pub static SRC_V4_INLINE: Array<[SourceRangeV4; INLINE_TABLE_V4 as usize]> =
    Array::with_max_entries(GENERATIONS * PREALLOCATED_VALUES_V4, BPF_F_MMAPABLE);
#[map]
pub static SRC_V6_INLINE: Array<[SourceRangeV6; INLINE_TABLE_V6 as usize]> =
    Array::with_max_entries(GENERATIONS, BPF_F_MMAPABLE);

/// The chunks of source tables too large for the preallocated maps.
#[btf_map]
pub static SRC_V4: ArrayOfMaps<ChunkV4, { CHUNK_SLOTS }> = ArrayOfMaps::new();
#[btf_map]
pub static SRC_V6: ArrayOfMaps<ChunkV6, { CHUNK_SLOTS }> = ArrayOfMaps::new();
const CHUNK_SLOTS: usize = (GENERATIONS * CHUNKS_PER_GENERATION) as usize;

#[map]
pub static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_STAT_SLOTS, 0);
#[map]
pub static RULE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(RULE_STAT_SLOTS, 0);
/// User space only: see `airlock_common::maps::rule_base_index`.
#[map]
pub static RULE_BASE: Array<Counter> = Array::with_max_entries(RULE_BASE_SLOTS, 0);

#[map]
pub static DROP_SAMPLES: RingBuf = RingBuf::with_byte_size(DROP_SAMPLE_RING_BYTES, 0);
/// The drop samples' rate limit: global data, as `ACTIVE_GEN` (pinned as
/// `SAMPLING`), so a refused packet reads it with one load instead of a lookup.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.SAMPLING")]
static mut SAMPLING: SamplingConfig = SamplingConfig {
    per_cpu_per_second: 0,
    window_jiffies: 0,
};

/// `SAMPLING`'s samples per second per CPU (0: none), as user space last wrote it.
#[inline(always)]
pub fn sample_rate() -> u32 {
    // SAFETY: as `active_generation`: an aligned word only user space writes.
    unsafe { core::ptr::read_volatile(&raw const SAMPLING.per_cpu_per_second) }
}

/// `SAMPLING`'s second in jiffies, or `FALLBACK_WINDOW_JIFFIES` where user
/// space did not say.
#[inline(always)]
pub fn sample_window_jiffies() -> u32 {
    // SAFETY: as `sample_rate`.
    match unsafe { core::ptr::read_volatile(&raw const SAMPLING.window_jiffies) } {
        0 => FALLBACK_WINDOW_JIFFIES,
        hz => hz,
    }
}

#[map]
pub static SAMPLE_STATE: PerCpuArray<SampleWindow> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static SAMPLE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SAMPLE_STAT_SLOTS, 0);

/// Flows the host opened: written by the egress program, read by XDP (flows.rs).
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(FLOW_TABLE_ENTRIES, 0);

/// The egress program's per-CPU memory of flows it refreshed lately (flows.rs).
#[map]
pub static EGRESS_RECENT: PerCpuArray<RecentFlow> =
    PerCpuArray::with_max_entries(EGRESS_RECENT_SLOTS, 0);

/// The XDP program's per-CPU memory of replies it passed lately (flows.rs).
#[map]
pub static REPLY_RECENT: PerCpuArray<RecentReply> =
    PerCpuArray::with_max_entries(REPLY_RECENT_SLOTS, 0);

/// Bumped whenever a flow's entry goes or its deadline comes nearer, so that
/// memory never outlives it (see `airlock_common::FLOW_EPOCH_SLOTS`); mmapable
/// so user space bumps it atomically too.
#[map]
pub static FLOW_EPOCHS: Array<u64> = Array::with_max_entries(FLOW_EPOCH_SLOTS, BPF_F_MMAPABLE);

/// The local ports any flow was recorded on (see `airlock_common::FLOW_PORT_BLOCKS`);
/// mmapable so user space marks a port with a plain store too.
#[map]
pub static FLOW_PORTS: Array<[u8; FLOW_PORT_BLOCK_BYTES]> =
    Array::with_max_entries(FLOW_PORT_BLOCKS, BPF_F_MMAPABLE);

/// Written and read only by user space; lives here so it is created, pinned and
/// removed together with the rest of the filter.
#[map]
pub static META: Array<PolicyMeta> = Array::with_max_entries(GENERATIONS, 0);
/// User space only, as `META` (see `airlock_common::MAP_GRACE_DONE`): the grace
/// period on record, and the highest `ACTIVE_GEN` word flipped to.
#[map]
pub static GRACE_DONE: Array<u64> = Array::with_max_entries(GRACE_DONE_SLOTS, 0);

/// `port`'s slot in `policy`'s TCP (`tcp == true`) or UDP table: a load at an
/// offset the verifier bounds, no lookup (a `u16` indexes the 65,536 slots, so
/// no bounds check is left either).
#[inline(always)]
pub fn port_slot(policy: &GenPolicy, tcp: bool, port: u16) -> &PortSlot {
    if tcp {
        &policy.tcp[usize::from(port)]
    } else {
        &policy.udp[usize::from(port)]
    }
}

/// Counts the frame in `ctx` in `map[index]`. Its length is read from the
/// context past the lookup: worked out before, it was two values (the frame's
/// bounds) kept across the lookup, which LLVM takes for a call, in registers
/// that pushed the verdict's own values to the stack.
#[inline(always)]
pub fn count(map: &PerCpuArray<Counter>, index: u32, ctx: &XdpContext) {
    if let Some(counter) = map.get_ptr_mut(index) {
        let bytes = (ctx.data_end() - ctx.data()) as u64;
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
