//! Map names, sizes and value layouts.
//!
//! Every policy map holds two generations of the policy. The program reads
//! `ACTIVE_GEN` once per packet and looks only at that generation's entries, so a
//! loader that fills the inactive generation and then flips the word never exposes
//! half a policy. A generation's settings, port tables and source classes
//! are one value of `POLICY` (see [`GenPolicy`]): one lookup answers all. A
//! source table is held by a preallocated map (one value per generation, two
//! for IPv4), and for a policy too large for it continues in chunk maps in an
//! array of maps (see [`SourceRangeV4`]).

/// Number of policy copies: the one in force and the one being written.
pub const GENERATIONS: u32 = 2;

/// Rules are bits in a `u64` mask: one lookup per map answers for every rule at once.
pub const MAX_RULES: usize = 64;

/// Largest number of compiled source prefixes per family per generation. A source
/// table holds at most two ranges per prefix plus one, and its directory.
pub const MAX_PREFIXES_V4: u32 = 1 << 21;
pub const MAX_PREFIXES_V6: u32 = 1 << 21;

/// The IPv4 directory (layout 12): `2^DIRECTORY_BITS_V4` slots of 4 bytes at a
/// fixed stride, the slot of an address its top 19 bits (`addr >>
/// DIRECTORY_SHIFT_V4`), read with no setting from the config. It is the first
/// 2 MiB of the generation's `SRC_V4_INLINE` value, whatever the policy's size
/// (see [`SourceRangeV4`]).
pub const DIRECTORY_BITS_V4: u32 = 19;
pub const DIRECTORY_SHIFT_V4: u32 = 32 - DIRECTORY_BITS_V4;

/// Source classes per generation and family: every distinct answer
/// (`SourceEntry`) of a generation's IPv4 (IPv6) table is one class, a slot of
/// `GenPolicy::classes_v4` (`classes_v6`); a table element holds a class number,
/// not the answer. Class 0 is the empty answer (no prefix matches). A policy with
/// more distinct answers in a family is refused. 2^15 per family: both class
/// tables fit in the `POLICY` value beside the port tables (two of 2^16 would not),
/// and each family's table is made on its own, in parallel.
pub const MAX_CLASSES: u32 = 1 << 15;

/// Elements of a value of the preallocated source tables (`SRC_V4_INLINE`,
/// `SRC_V6_INLINE`), and of a chunk: 2^20 elements of 4 bytes for IPv4, 2^19
/// words of 8 bytes for IPv6, 4 MiB each (the largest map value the kernel
/// allows with 4 KiB pages: KMALLOC_MAX_SIZE); the program masks indices with
/// the element count, so it is a power of two. Each value holds its family's
/// directory and the first runs of ranges (IPv4: about 250,000 prefixes' worth;
/// IPv6: about 60,000), a larger table's further runs are chunks 1, 2, ... of the
/// same size (see [`CHUNKS_PER_GENERATION`]; IPv4's chunk 1 is a second
/// preallocated value, [`PREALLOCATED_VALUES_V4`]). Every read of either is inlined by
/// the verifier.
pub const INLINE_TABLE_V4: u32 = 1 << 20;
pub const INLINE_TABLE_V6: u32 = 1 << 19;

/// Values of `SRC_V4_INLINE` per generation (layout 15): generation `g`'s IPv4
/// elements `0 .. 2^20` (the directory and the first runs) are value `2g`, elements
/// `2^20 .. 2^21` (chunk 1) value `2g + 1`, so a table of up to 2^21 elements
/// (about 700,000 IPv4 prefixes) has every run in a plain array whose lookup the verifier inlines
/// and whose key does not wait on the directory slot: no array of maps on its
/// path. It costs 4 MiB of map memory per generation whatever the policy's size.
/// Chunks 2 and up are in `SRC_V4`. IPv6 keeps one value per generation.
pub const PREALLOCATED_VALUES_V4: u32 = 2;

/// `GenConfig::inline_tables`: the generation's IPv4 / IPv6 table is all in the
/// preallocated map (else it continues in chunks; the program does not read it).
pub const TABLE_INLINE_V4: u32 = 1 << 0;
pub const TABLE_INLINE_V6: u32 = 1 << 1;

/// Chunk maps per generation and family for tables too large for the preallocated
/// map (`SRC_V4`/`SRC_V6`, arrays of maps with `GENERATIONS *
/// CHUNKS_PER_GENERATION` slots, generation `g`'s chunk `k` at `g *
/// CHUNKS_PER_GENERATION + k`; IPv4's chunk 1 is in the preallocated map, see
/// [`PREALLOCATED_VALUES_V4`], and its slot stays empty). Each chunk is a one-element array whose value holds
/// `INLINE_TABLE_V4` (or `_V6`) elements, 4 MiB (3 MiB): every chunk has the template's
/// exact shape, so the verifier inlines reads of it as it does the preallocated
/// map's (an inner map that may differ in size, `BPF_F_INNER_MAP`, makes every read
/// a call, 15 ns on return-thunk machines). 64 chunks hold the largest table:
/// `MAX_PREFIXES_*` prefixes make at most 2^22 + 1 ranges plus a directory of one
/// chunk.
pub const CHUNKS_PER_GENERATION: u32 = 64;

/// Bytes of one chunk's value (and of a preallocated map's value), per family.
pub const CHUNK_BYTES_V4: usize = 4 << 20;
pub const CHUNK_BYTES_V6: usize = 4 << 20;

/// Flags of the chunk maps and their template: filled through a memory mapping
/// (`BPF_F_MMAPABLE`, 1 << 10) instead of one system call per element.
pub const SOURCE_CHUNK_FLAGS: u32 = 1 << 10;

/// Every 16-bit port, indexed directly: a port table of [`GenPolicy`] has a slot
/// per port.
pub const PORT_SLOTS: u32 = 1 << 16;

/// Size of the serialized policy summary kept beside the maps (see [`PolicyMeta`]).
pub const META_BYTES: usize = 64 * 1024 - 8;

/// Bumped whenever a map layout changes, so a loader never writes maps it does not
/// understand into an older pinned program.
pub const LAYOUT_VERSION: u32 = 15;

// Map names (the kernel keeps at most 15 bytes of a map name).
pub const MAP_ACTIVE_GEN: &str = "ACTIVE_GEN";
pub const MAP_POLICY: &str = "POLICY";
pub const MAP_SRC_V4: &str = "SRC_V4";
pub const MAP_SRC_V6: &str = "SRC_V6";
pub const MAP_SRC_V4_INLINE: &str = "SRC_V4_INLINE";
pub const MAP_SRC_V6_INLINE: &str = "SRC_V6_INLINE";
pub const MAP_REASON_STATS: &str = "REASON_STATS";
pub const MAP_RULE_STATS: &str = "RULE_STATS";
pub const MAP_RULE_BASE: &str = "RULE_BASE";
pub const MAP_META: &str = "META";
pub const MAP_DROP_SAMPLES: &str = "DROP_SAMPLES";
pub const MAP_SAMPLE_STATE: &str = "SAMPLE_STATE";
pub const MAP_SAMPLE_STATS: &str = "SAMPLE_STATS";
pub const MAP_SAMPLING: &str = "SAMPLING";
/// Maps the object holds as global data, each in a section of its own so the
/// program reads it at an address fixed at load (one load, not a map lookup):
/// aya names such a map after its section (bpffs refuses the dot), and the
/// loader pins it under the name it had as a `#[map]`, with the same type, key
/// and value. `(section, pin name)`.
pub const GLOBAL_DATA_MAPS: [(&str, &str); 2] = [
    (".data.ACTIVE_GEN", MAP_ACTIVE_GEN),
    (".data.SAMPLING", MAP_SAMPLING),
];

/// The name a map of the object is pinned under: its own, or for global data
/// its `GLOBAL_DATA_MAPS` name; `None` for global data that is not pinned
/// (`.rodata`: aya-log's level, frozen in the loaded program).
pub fn pin_name(object_name: &str) -> Option<&str> {
    if !object_name.contains('.') {
        return Some(object_name);
    }
    GLOBAL_DATA_MAPS
        .iter()
        .find(|(section, _)| *section == object_name)
        .map(|(_, pin)| *pin)
}

/// User space only: a grace period on record (see `userspace/src/loader/grace.rs`).
/// Added within layout 6: a filter pinned without it is still written, always
/// after a grace period of the writer's own.
pub const MAP_GRACE_DONE: &str = "GRACE_DONE";
/// `GRACE_DONE`'s slots: the record, and the highest word flipped to.
pub const GRACE_DONE_SLOTS: u32 = 2;

/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "airlock_xdp";

/// The source is in the `management` set: pass, whatever else says.
pub const SRC_MANAGEMENT: u32 = 1 << 0;
/// The source is in the `deny` set: drop unless management.
pub const SRC_DENY: u32 = 1 << 1;

/// What the longest matching prefix says about a source, with covering prefixes
/// and `except` holes already folded in by the compiler.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceEntry {
    /// Bit `i` set: rule `i` lists this source in its `from`.
    pub rules: u64,
    /// `SRC_MANAGEMENT` | `SRC_DENY`.
    pub flags: u32,
    pub _pad: u32,
}

/// What a port no rule covers gets.
pub const DEFAULT_PASS: u32 = 0;
pub const DEFAULT_DROP: u32 = 1;

pub const MODE_ENFORCE: u32 = 0;
/// Compute and count the verdict, then pass the packet anyway.
pub const MODE_MONITOR: u32 = 1;

/// Per-generation settings, `POLICY[gen].config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    /// `DEFAULT_PASS` or `DEFAULT_DROP`.
    pub default_action: u32,
    /// `MODE_ENFORCE` or `MODE_MONITOR`.
    pub mode: u32,
    /// Number of rules in this generation (bits above it are never set).
    pub rule_count: u32,
    /// Nonzero once the generation has been completely written.
    pub valid: u32,
    /// Directory size of this generation's IPv4 and IPv6 source tables, in address
    /// bits: both fixed ([`DIRECTORY_BITS_V4`], [`DIRECTORY_BITS_V6`]), recorded
    /// here for user space; the program does not read them.
    pub directory_bits_v4: u32,
    pub directory_bits_v6: u32,
    /// `TABLE_INLINE_V4` | `TABLE_INLINE_V6`: where the tables are (IPv4: all in
    /// the generation's preallocated values or not; the program does not read it
    /// for IPv4).
    pub inline_tables: u32,
    /// Elements of the IPv4 and IPv6 tables (directory and ranges).
    pub table_len_v4: u32,
    pub table_len_v6: u32,
    /// The directory's window, on an address's top 64 bits `high`: its slot is
    /// `(high - base) >> shift` (see [`SourceRangeV6`]). The window is what every
    /// boundary of the table shares, so a directory of IPv6 lists (all in
    /// 2000::/3) uses all its slots. The IPv4 fields record the fixed stride (base
    /// 0, shift `64 - DIRECTORY_BITS_V4`); only IPv6's are read.
    pub directory_shift_v4: u32,
    pub directory_shift_v6: u32,
    /// Classes of the IPv4 and IPv6 tables in use
    /// (`GenPolicy::classes_v4[..classes_v4]`, likewise for IPv6).
    pub classes_v4: u32,
    pub classes_v6: u32,
    pub directory_base_v4: u64,
    pub directory_base_v6: u64,
    /// `UNFLAGGED_V4` | `UNFLAGGED_V6`: no class of the family's table carries
    /// `SRC_MANAGEMENT` or `SRC_DENY`, so a source's answer matters only to a
    /// packet some rule covers (or a non-first fragment), and the program skips
    /// the lookup for the rest. 0 (never skip) is always correct.
    pub unflagged: u32,
    /// `FLAG_TABLE_V4` | `FLAG_TABLE_V6`: the family's flag table below holds
    /// exactly what its source table says of management and deny at every
    /// address, so a packet that needs only those flags (a port no rule covers,
    /// essential ICMP, a malformed packet's source) reads them here instead of
    /// looking the source up. 0 (never) is always correct: a family whose flags
    /// change more than [`FLAG_INTERVALS`] times has no flag table.
    pub flag_tables: u32,
    /// The flags of the family's flag intervals: interval `i`'s
    /// `SRC_MANAGEMENT | SRC_DENY` in bits `2i` and `2i + 1`.
    pub flag_bits_v4: u32,
    pub flag_bits_v6: u32,
    pub _pad: u32,
    /// The first addresses of the IPv4 flag intervals, ascending, the first 0;
    /// an address is in the last interval starting at or before it. Unused
    /// slots repeat the last interval (its start and its flags), so the
    /// program always searches all [`FLAG_INTERVALS`].
    pub flag_starts_v4: [u32; FLAG_INTERVALS],
    /// Likewise for IPv6, as (top 64 bits, low 64 bits).
    pub flag_starts_v6: [[u64; 2]; FLAG_INTERVALS],
}

/// Intervals of a family's flag table (see [`GenConfig::flag_tables`]): a
/// power of two, searched in `log2` fixed steps.
pub const FLAG_INTERVALS: usize = 8;

/// `GenConfig::flag_tables`: the generation's IPv4 / IPv6 flag table is in use.
pub const FLAG_TABLE_V4: u32 = 1 << 0;
pub const FLAG_TABLE_V6: u32 = 1 << 1;

/// `GenConfig::unflagged`: the generation's IPv4 / IPv6 classes carry no
/// management or deny flag.
pub const UNFLAGGED_V4: u32 = 1 << 0;
pub const UNFLAGGED_V6: u32 = 1 << 1;

/// What a port's slot in a generation's port table says: the rules covering
/// the port, and what the verdict needs of them precomputed, so a packet the
/// lowest of them decides (the common case) costs no bit counting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSlot {
    /// Bit `i` set: rule `i` covers the port.
    pub rules: u64,
    /// Index of the lowest bit of `rules` (0 when `rules` is 0): the rule that
    /// counts a refused packet, and an allowed one whose source it lists.
    pub lowest_rule: u32,
    /// `RULE_STATS` index of a packet `lowest_rule` allows, with the slot's
    /// generation and mode: [`rule_stat_index`]`(generation, monitor, true,
    /// lowest_rule)`; a packet it refuses is [`REFUSED_STAT_OFFSET`] further.
    pub allowed_stat: u32,
}

// User space only: the program never counts bits of a mask it need not.
#[cfg(feature = "user")]
impl PortSlot {
    /// The slot of a port `rules` cover, in a generation `generation` whose mode
    /// is `monitor` or not.
    pub const fn new(rules: u64, generation: u32, monitor: bool) -> Self {
        if rules == 0 {
            return PortSlot {
                rules: 0,
                lowest_rule: 0,
                allowed_stat: 0,
            };
        }
        let lowest_rule = rules.trailing_zeros();
        PortSlot {
            rules,
            lowest_rule,
            allowed_stat: rule_stat_index(generation, monitor, true, lowest_rule),
        }
    }
}

/// A generation's policy as the program reads it, `POLICY[gen]`: its settings and
/// its TCP and UDP port tables in one map value, so one lookup by generation
/// answers both and a port's slot is a load at an offset the verifier bounds (a
/// port is 16 bits), and the answers of its source classes: the program
/// reads a source's answer from the value it already holds. 3 MiB: within the 4
/// MiB a map value may have.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GenPolicy {
    pub config: GenConfig,
    pub tcp: [PortSlot; PORT_SLOTS as usize],
    pub udp: [PortSlot; PORT_SLOTS as usize],
    /// IPv4 class `c`'s answer (see [`MAX_CLASSES`]); slots past
    /// `config.classes_v4` are never read.
    pub classes_v4: [SourceEntry; MAX_CLASSES as usize],
    /// Likewise for IPv6.
    pub classes_v6: [SourceEntry; MAX_CLASSES as usize],
}

/// Byte offsets in a `POLICY` value (user space writes it through a mapping).
pub const POLICY_CONFIG_OFFSET: usize = core::mem::offset_of!(GenPolicy, config);
pub const POLICY_TCP_OFFSET: usize = core::mem::offset_of!(GenPolicy, tcp);
pub const POLICY_UDP_OFFSET: usize = core::mem::offset_of!(GenPolicy, udp);
pub const POLICY_CLASSES_V4_OFFSET: usize = core::mem::offset_of!(GenPolicy, classes_v4);
pub const POLICY_CLASSES_V6_OFFSET: usize = core::mem::offset_of!(GenPolicy, classes_v6);
/// Bytes of a `POLICY` value, and its stride in the map (a multiple of 8).
pub const POLICY_BYTES: usize = core::mem::size_of::<GenPolicy>();

/// A per-CPU packet and byte counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// `REASON_STATS` is indexed by reason, and again by reason + `REASON_COUNT` for
/// packets judged in monitor mode, so "would drop" is told apart from "dropped".
#[inline(always)]
pub const fn reason_stat_index(reason: u32, monitor: bool) -> u32 {
    if monitor {
        reason + crate::reason::REASON_COUNT
    } else {
        reason
    }
}

pub const REASON_STAT_SLOTS: u32 = 2 * crate::reason::REASON_COUNT;

/// Bytes of the drop-sample ring buffer shared by all CPUs.
pub const DROP_SAMPLE_RING_BYTES: u32 = 256 * 1024;

/// Default cap on drop samples per second per CPU; the rest are counted, not sent.
pub const DEFAULT_SAMPLE_RATE: u32 = 200;

/// `SAMPLING[0]`: how many drop samples each CPU may send per second (0: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplingConfig {
    pub per_cpu_per_second: u32,
    /// One second in jiffies (the kernel's HZ). The window is timed in jiffies
    /// because `bpf_jiffies64` is one inlined load where a clock helper is a call
    /// on every refused packet. 0 (written by an older loader, in what was padding):
    /// [`FALLBACK_WINDOW_JIFFIES`].
    pub window_jiffies: u32,
}

/// The window when user space did not say HZ: the largest HZ in use, so a window
/// lasts at least a second and the rate is never exceeded.
pub const FALLBACK_WINDOW_JIFFIES: u32 = 1000;

/// `SAMPLE_STATE[0]`, per CPU: the current one-second window of the rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleWindow {
    /// `bpf_jiffies64()` when the window began.
    pub started_jiffies: u64,
    pub sent: u64,
    /// Dropped packets this CPU did not sample, over the rate (ever, not per
    /// window): counted here, in the value the rate check already holds, so a
    /// flood pays no second map lookup.
    pub rate_limited: u64,
}

/// Slots of `SAMPLE_STATS` (per-CPU `u64`).
pub const SAMPLES_SENT: u32 = 0;
/// Not sent: over the per-CPU rate. The program counts these in
/// `SampleWindow::rate_limited` (the value its rate check already holds); user
/// space reports them in this slot of `Counters::samples`, and the map's slot
/// stays 0.
pub const SAMPLES_RATE_LIMITED: u32 = 1;
/// Not sent: the ring buffer was full (nobody reading, or reading too slowly).
pub const SAMPLES_RING_FULL: u32 = 2;
pub const SAMPLE_STAT_SLOTS: u32 = 3;

pub const NO_RULE: u32 = u32::MAX;

/// One dropped (or, in monitor mode, would-be dropped) packet, as sent to user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropSample {
    /// `bpf_ktime_get_ns()`: monotonic, since boot.
    pub timestamp_ns: u64,
    /// IPv4 in the first 4 bytes, or IPv6; zero when the source was unreadable.
    pub source: [u8; 16],
    pub ifindex: u32,
    /// Deciding rule, or [`NO_RULE`].
    pub rule: u32,
    pub dst_port: u16,
    pub protocol: u8,
    /// 4, 6, or 0 when the IP header was unreadable.
    pub family: u8,
    /// A [`crate::Reason`] number.
    pub reason: u8,
    /// 1 when judged in monitor mode (the packet passed).
    pub monitor: u8,
    pub _pad: [u8; 2],
}

/// Index into `RULE_STATS`: counters per generation, mode, outcome and rule. A packet
/// a rule decided is counted here and only here (one counter update per packet): the
/// `RuleAllowed`/`RuleRefused` totals of `REASON_STATS` are these summed by user space
/// (those two `REASON_STATS` slots are never written). The kernel never has these
/// reset, so the sums only grow; the counters of the policy in force are the growth
/// since its apply, against the `RULE_BASE` snapshot the loader takes of its
/// generation then.
#[inline(always)]
pub const fn rule_stat_index(generation: u32, monitor: bool, allowed: bool, rule: u32) -> u32 {
    let outcome = if allowed { 0 } else { 1 };
    let mode = if monitor { 1 } else { 0 };
    ((generation * 2 + mode) * 2 + outcome) * MAX_RULES as u32 + rule
}

pub const RULE_STAT_SLOTS: u32 = GENERATIONS * 2 * 2 * MAX_RULES as u32;

/// `rule_stat_index(g, m, false, r) - rule_stat_index(g, m, true, r)`.
pub const REFUSED_STAT_OFFSET: u32 = MAX_RULES as u32;

// The layout the program and the loader rely on.
const _: () = {
    assert!(POLICY_CONFIG_OFFSET == 0);
    // Two flag bits an interval fit a `flag_bits_*` word.
    assert!(FLAG_INTERVALS.is_power_of_two() && 2 * FLAG_INTERVALS <= 32);
    assert!(core::mem::size_of::<GenConfig>() == 256);
    assert!(POLICY_UDP_OFFSET == POLICY_TCP_OFFSET + PORT_SLOTS as usize * 16);
    assert!(POLICY_BYTES.is_multiple_of(8) && POLICY_BYTES <= 4 << 20);
    assert!(POLICY_CLASSES_V4_OFFSET == POLICY_UDP_OFFSET + PORT_SLOTS as usize * 16);
    assert!(POLICY_CLASSES_V6_OFFSET == POLICY_CLASSES_V4_OFFSET + MAX_CLASSES as usize * 16);
    assert!(MAX_CLASSES.is_power_of_two());
    assert!(INLINE_TABLE_V4.is_power_of_two() && INLINE_TABLE_V6.is_power_of_two());
    // The program reads value `2g + 1` as chunk 1: exactly two values a generation.
    assert!(PREALLOCATED_VALUES_V4 == 2);
    assert!(core::mem::size_of::<SourceRangeV4>() * INLINE_TABLE_V4 as usize == CHUNK_BYTES_V4);
    assert!(core::mem::size_of::<SourceRangeV6>() * INLINE_TABLE_V6 as usize == CHUNK_BYTES_V6);
    assert!(CHUNK_BYTES_V4 <= 4 << 20 && CHUNK_BYTES_V6 <= 4 << 20);
    assert!((1 << DIRECTORY_BITS_V4) < INLINE_TABLE_V4);
    // A range's offset in its slot fits above its class, the class table
    // below the range format's 16 class bits.
    assert!(DIRECTORY_SHIFT_V4 <= 16 && MAX_CLASSES <= 1 << 16);
    // Every element index a table of `MAX_PREFIXES_V4` prefixes can need fits a
    // slot's index field, and its chunks the generation's slots: the directory,
    // the ranges with a copy of a run's first per slot, all at most doubled by
    // padding, and a chunk's worth lost to runs moved past chunk boundaries.
    assert!(
        (1 << DIRECTORY_BITS_V4)
            + 2 * ((2 * MAX_PREFIXES_V4 + 1) + (1 << DIRECTORY_BITS_V4))
            + INLINE_TABLE_V4
            < RUN_INDEX_MASK_V4
    );
    assert!(RUN_INDEX_MASK_V4 / INLINE_TABLE_V4 < CHUNKS_PER_GENERATION);
    // The IPv6 directory's slots, two a word, and the two outside its window fit
    // the preallocated value with room for runs; a range's class fits below its
    // offset; the slot's bits after the window lie in the top 64, with at least
    // one bit below them (a shift of 1 to 45).
    assert!(DIRECTORY_WORDS_V6 + 1 < INLINE_TABLE_V6);
    assert!(MAX_CLASSES <= 1 << RANGE_CLASS_BITS_V6);
    assert!(MAX_WINDOW_V6 + DIRECTORY_BITS_V6 < 64 && RANGE_CLASS_BITS_V6 < DIRECTORY_BITS_V6);
    // As for IPv4: every word a table of `MAX_PREFIXES_V6` prefixes can need
    // (ranges two words wide, a copy of a run's first per slot, padded to a
    // power of two) fits a slot's index field and its chunks the generation's.
    assert!(
        (DIRECTORY_WORDS_V6 + 1)
            + 2 * 2 * ((2 * MAX_PREFIXES_V6 + 1) + (1 << DIRECTORY_BITS_V6))
            + INLINE_TABLE_V6
            < RUN_INDEX_MASK_V6
    );
    assert!(RUN_INDEX_MASK_V6 / INLINE_TABLE_V6 < CHUNKS_PER_GENERATION);
    assert!(
        rule_stat_index(1, true, false, 5)
            == rule_stat_index(1, true, true, 5) + REFUSED_STAT_OFFSET
    );
};

/// Index into `RULE_BASE` (user space only, summed over CPUs and modes): what
/// `RULE_STATS` held for this generation, outcome and rule when the loader last
/// wrote a policy into the generation.
#[inline(always)]
pub const fn rule_base_index(generation: u32, allowed: bool, rule: u32) -> u32 {
    let outcome = if allowed { 0 } else { 1 };
    (generation * 2 + outcome) * MAX_RULES as u32 + rule
}

pub const RULE_BASE_SLOTS: u32 = GENERATIONS * 2 * MAX_RULES as u32;

/// One element of a generation's IPv4 source table (layout 12), 4 bytes: a
/// directory slot or a range. The table is an array of them: the directory's
/// `2^DIRECTORY_BITS_V4` slots first (the slot of an address is its top 19
/// bits, a fixed stride: no window, no setting read per packet), then runs of
/// ranges. The ranges split the address space into pieces with one longest-prefix
/// answer (the compiler's prefixes, covering prefixes and `except` holes become at
/// most two boundaries each), and a range names its answer's class (see
/// [`MAX_CLASSES`]), not the answer.
///
/// A slot that one range covers whole holds that range's class with
/// [`SLOT_ANSWER_V4`] set: most addresses, and every refused one in a sparse
/// table, cost one directory read (the DXR idea: Zec, Rizzo, Mikuc, CCR 2012).
/// Any other slot names its run: bits 0-23 the index of its first element (the
/// range its first address falls in), bits 24-27 `k`, bits 28-30 `d - 1`; the
/// run has `2^k + d` elements (`d <= 2^k`, `d <= 8`). A range in a run is
/// `offset << 16 | class`, `offset` its first address's place in the slot (its
/// low 13 bits): the run's first element, which the search never compares, may
/// be the previous slot's last. The program probes element `d` once, then halves
/// `2^k` elements `k` times (the fixed steps of Shar's search), for the last range
/// starting at or before the address. A run of another length is padded with
/// copies of its last range to the next length the slot can say (at most twice
/// as long; only a slot with more than 16 ranges is). A run never straddles two
/// 2^20-element chunks (padding moves it), so it is searched from one pointer:
/// element `i` in chunk `i >> 20`, chunks 0 and 1 the generation's two
/// preallocated values (see [`PREALLOCATED_VALUES_V4`]), chunks 2 and up in
/// `SRC_V4`.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceRangeV4(pub u32);

/// Of an IPv4 directory slot: it holds its answer's class (in its low 16 bits).
pub const SLOT_ANSWER_V4: u32 = 1 << 31;
/// Of an IPv4 directory slot naming a run: its first element's index, and where
/// its search's shape lies (see [`SourceRangeV4`]).
pub const RUN_INDEX_MASK_V4: u32 = (1 << 24) - 1;
pub const RUN_HALVINGS_SHIFT_V4: u32 = 24;
pub const RUN_FIRST_PROBE_SHIFT_V4: u32 = 28;
/// Where an IPv4 range holds its first address's offset in its slot.
pub const RANGE_OFFSET_SHIFT_V4: u32 = 16;

/// The IPv6 directory (layout 13): `2^DIRECTORY_BITS_V6` slots of 4 bytes, two
/// to a word, at the start of the generation's `SRC_V6_INLINE` value, over the
/// table's window (see [`GenConfig`]): on an address's top 64 bits `high`, its
/// slot is `(high - directory_base_v6) >> directory_shift_v6`, the shift `64 -
/// P` where `P`, the slot's prefix, is the window's shared bits (at most
/// [`MAX_WINDOW_V6`]) plus 19. An address outside the window (a slot past the
/// directory's end) takes slot `2^19` if below it, `2^19 + 1` if above: both
/// hold their answer.
pub const DIRECTORY_BITS_V6: u32 = 19;
/// Words of the IPv6 directory; the two slots outside the window are the next.
pub const DIRECTORY_WORDS_V6: u32 = 1 << (DIRECTORY_BITS_V6 - 1);
/// Leading bits the IPv6 window may share: the slot's prefix stays below 64.
pub const MAX_WINDOW_V6: u32 = 44;

/// Of an IPv6 directory slot: it holds its answer's class (in its low 16 bits).
pub const SLOT_ANSWER_V6: u32 = 1 << 31;
/// Of an IPv6 directory slot naming a run: its ranges are wide (two words each).
pub const RUN_WIDE_V6: u32 = 1 << 30;
/// Of an IPv6 run slot: its first word's index, and where `k` lies (the run
/// has `2^k` ranges, `k >= 1`).
pub const RUN_INDEX_MASK_V6: u32 = (1 << 25) - 1;
pub const RUN_HALVINGS_SHIFT_V6: u32 = 25;
/// Bits of an IPv6 range below its offset: its class.
pub const RANGE_CLASS_BITS_V6: u32 = 16;

/// A word of a generation's IPv6 source table (layout 13): the directory's
/// slots, two to a word (see [`DIRECTORY_BITS_V6`]), then runs of ranges. A slot
/// that one range covers whole holds its class with [`SLOT_ANSWER_V6`] set; any
/// other names its run: bits 0-24 its first word's index, bits 25-29 `k` (the run
/// is `2^k` ranges, padded with copies of its last; the program halves `2^k`
/// `k` times), bit 30 [`RUN_WIDE_V6`]. A run's first range, which the search
/// never compares, may be the previous run's last.
///
/// A range holds only the bits of its first address below the slot's prefix
/// `P`. Compact (one word), where every range the run compares starts on a
/// /64 boundary (the low 64 bits zero): `((high << P) >> 1)` with its class in
/// the low 16 bits (which that leaves zero, `P >= 19`); the address is at or
/// after the range when its own `(high << P) >> 1 | 0xffff` is not below it.
/// Wide (two words) otherwise: the address shifted left by `P` as 128 bits,
/// high word first, the class in the low 16 bits of the second. A run never
/// straddles two 2^19-word chunks: word `i` past the preallocated value is in
/// chunk `i >> 19`, searched from one pointer.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceRangeV6(pub u64);

/// Opaque summary of the policy a generation holds (JSON written by the loader, read
/// by `status`, `diff` and the agent). Kept in a pinned map so the state lives and
/// dies with the filter itself, not in a file that could disagree with it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PolicyMeta {
    pub layout_version: u32,
    pub len: u32,
    pub bytes: [u8; META_BYTES],
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;

    #[test]
    fn a_port_slot_names_its_lowest_rule_and_that_rules_counters() {
        for (generation, monitor) in [(0, false), (1, false), (0, true), (1, true)] {
            let slot = PortSlot::new(0b1010_0000, generation, monitor);
            assert_eq!(slot.rules, 0b1010_0000);
            assert_eq!(slot.lowest_rule, 5);
            assert_eq!(
                slot.allowed_stat,
                rule_stat_index(generation, monitor, true, 5)
            );
            assert_eq!(
                slot.allowed_stat + REFUSED_STAT_OFFSET,
                rule_stat_index(generation, monitor, false, 5)
            );
        }
        let top = PortSlot::new(1 << 63, 1, true);
        assert_eq!(top.lowest_rule, 63);
        assert!(top.allowed_stat + REFUSED_STAT_OFFSET < RULE_STAT_SLOTS);
        assert_eq!(PortSlot::new(0, 1, true), PortSlot::default());
    }
}
