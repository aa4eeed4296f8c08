//! Typed handles on one filter's maps, and the generation protocol that makes a
//! policy swap atomic: write the whole policy into the inactive copy, then flip the
//! one-word `ACTIVE_GEN`. The program reads that word once per packet, so every
//! packet is judged by exactly one complete policy.
//!
//! After the flip the old copy is left as it was: it still holds the previous
//! policy, which a rollback can return to with another single flip, and the next
//! apply rewrites it by difference (so a stale or half-written copy left by a crashed
//! apply heals itself: it is never trusted, only compared and corrected).

use std::path::Path;

use airlock_common::{
    Counter, GENERATION_KEY_BITS, GENERATIONS, GenConfig, LAYOUT_VERSION, MAP_ACTIVE_GEN,
    MAP_CONFIG, MAP_META, MAP_PORTS_TCP, MAP_PORTS_UDP, MAP_REASON_STATS, MAP_RECORD,
    MAP_RULE_BASE, MAP_RULE_STATS, MAP_SAMPLE_STATS, MAP_SAMPLING, MAP_SRC_V4, MAP_SRC_V6,
    MAX_RULES, PORT_SLOTS, PolicyMeta, RULE_STAT_SLOTS, Reason, SAMPLE_STAT_SLOTS, SamplingConfig,
    SourceEntry, port_index, reason_stat_index, rule_base_index, rule_stat_index,
};
use aya::{
    Ebpf,
    maps::{
        Array, IterableMap as _, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues,
        lpm_trie::Key,
    },
};

use super::{LoaderError, meta::PolicySummary, record};
use crate::compile::{Compiled, PortMap, PrefixEntry};

/// Where typed map handles come from: a freshly loaded object or a pin directory.
pub(crate) enum MapSource<'a> {
    Object(&'a mut Ebpf),
    Pinned(&'a Path),
}

impl MapSource<'_> {
    fn take<T>(&mut self, name: &'static str) -> Result<T, LoaderError>
    where
        T: TryFrom<Map, Error = MapError>,
    {
        let map = match self {
            MapSource::Object(ebpf) => ebpf.take_map(name).ok_or(LoaderError::MissingMap(name))?,
            MapSource::Pinned(dir) => {
                let data = MapData::from_pin(dir.join(name))
                    .map_err(|source| LoaderError::Map { name, source })?;
                Map::from_map_data(data).map_err(|source| LoaderError::Map { name, source })?
            }
        };
        T::try_from(map).map_err(|source| LoaderError::Map { name, source })
    }
}

/// The layout version recorded in the active META slot of the filter pinned in
/// `dir`, read from the two maps every layout has.
fn pinned_layout(dir: &Path) -> Option<u32> {
    let mut source = MapSource::Pinned(dir);
    let active: Array<MapData, u32> = source.take(MAP_ACTIVE_GEN).ok()?;
    let meta: Array<MapData, PolicyMeta> = source.take(MAP_META).ok()?;
    let generation = active.get(&0, 0).ok()? & 1;
    Some(meta.get(&generation, 0).ok()?.layout_version)
}

/// A source trie; `K` is the key size: the generation byte and the address.
type SrcTrie<const K: usize> = LpmTrie<MapData, [u8; K], SourceEntry>;

/// Per-CPU counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Indexed by `Reason as usize`: every packet, whatever the mode.
    pub reasons: Vec<Counter>,
    /// The part of `reasons` judged in monitor mode (a drop reason there means
    /// "would have dropped"; the packet passed).
    pub reasons_in_monitor: Vec<Counter>,
    /// Drop samples sent, held back by the rate limit, lost to a full ring.
    pub samples: [u64; SAMPLE_STAT_SLOTS as usize],
    /// For the active generation: (allowed, refused) per rule index.
    pub rules: Vec<(Counter, Counter)>,
}

impl Counters {
    pub fn reason(&self, reason: Reason) -> Counter {
        self.reasons
            .get(reason as usize)
            .copied()
            .unwrap_or_default()
    }
}

pub struct PolicyMaps {
    active: Array<MapData, u32>,
    config: Array<MapData, GenConfig>,
    src_v4: SrcTrie<5>,
    src_v6: SrcTrie<17>,
    ports_tcp: Array<MapData, u64>,
    ports_udp: Array<MapData, u64>,
    reason_stats: PerCpuArray<MapData, Counter>,
    rule_stats: PerCpuArray<MapData, Counter>,
    rule_base: Array<MapData, Counter>,
    meta: Array<MapData, PolicyMeta>,
    sampling: Array<MapData, SamplingConfig>,
    sample_stats: PerCpuArray<MapData, u64>,
    record: record::RecordMap,
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> LoaderError {
    move |source| LoaderError::Map { name, source }
}

impl PolicyMaps {
    pub(crate) fn take(mut source: MapSource<'_>) -> Result<Self, LoaderError> {
        Ok(Self {
            active: source.take(MAP_ACTIVE_GEN)?,
            config: source.take(MAP_CONFIG)?,
            src_v4: source.take(MAP_SRC_V4)?,
            src_v6: source.take(MAP_SRC_V6)?,
            ports_tcp: source.take(MAP_PORTS_TCP)?,
            ports_udp: source.take(MAP_PORTS_UDP)?,
            reason_stats: source.take(MAP_REASON_STATS)?,
            rule_stats: source.take(MAP_RULE_STATS)?,
            rule_base: source.take(MAP_RULE_BASE)?,
            meta: source.take(MAP_META)?,
            sampling: source.take(MAP_SAMPLING)?,
            sample_stats: source.take(MAP_SAMPLE_STATS)?,
            record: source.take(MAP_RECORD)?,
        })
    }

    /// Opens the maps pinned in `dir` (an interface's pin directory).
    pub fn open_pinned(dir: &Path) -> Result<Self, LoaderError> {
        Self::take(MapSource::Pinned(dir)).map_err(|error| {
            // A filter pinned by an airlock with another map layout may lack maps
            // this one has: say that, rather than which map is missing.
            match pinned_layout(dir) {
                Some(found) if found != 0 && found != LAYOUT_VERSION => {
                    LoaderError::LayoutMismatch {
                        path: dir.to_owned(),
                        iface: dir
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        found,
                        expected: LAYOUT_VERSION,
                    }
                }
                _ => error,
            }
        })
    }

    pub fn active_generation(&self) -> Result<u32, LoaderError> {
        Ok(self.active.get(&0, 0).map_err(map_err(MAP_ACTIVE_GEN))? & 1)
    }

    /// The summary of the policy in force, if one was ever applied.
    pub fn active_summary(&self) -> Result<Option<PolicySummary>, LoaderError> {
        self.generation_summary(self.active_generation()?)
    }

    /// Writes `compiled` into the inactive copy, then makes it the active one in a
    /// single word write. Returns the new active generation.
    pub fn apply(
        &mut self,
        compiled: &Compiled,
        summary: &PolicySummary,
    ) -> Result<u32, LoaderError> {
        let next = 1 - self.active_generation()?;
        // Encode first: a summary that does not fit must fail before anything changes.
        let meta = summary.encode()?;
        self.write_generation(next, compiled, &meta)?;
        self.active
            .set(0, next, 0)
            .map_err(map_err(MAP_ACTIVE_GEN))?;
        Ok(next)
    }

    fn write_generation(
        &mut self,
        generation: u32,
        compiled: &Compiled,
        meta: &PolicyMeta,
    ) -> Result<(), LoaderError> {
        let started = std::time::Instant::now();
        // First: from here until the end the copy is not a complete policy, so nothing
        // (a rollback, `status`) may take it for one, even if this process dies.
        let mut invalid = self
            .config
            .get(&generation, 0)
            .map_err(map_err(MAP_CONFIG))?;
        if invalid.valid != 0 {
            invalid.valid = 0;
            self.config
                .set(generation, invalid, 0)
                .map_err(map_err(MAP_CONFIG))?;
        }
        // What the copy holds now, from its record if it has a valid one (else the
        // tries are read back). Then the record is made invalid, before the first
        // write into the copy.
        let held = record::read(&self.record, generation).unwrap_or_else(|error| {
            tracing::debug!(%error, generation, "policy record unreadable");
            None
        });
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            generation,
            from_record = held.is_some(),
            "what the copy holds"
        );
        let old_chunks =
            record::invalidate(&mut self.record, generation).map_err(map_err(MAP_RECORD))?;
        sync_trie(
            &mut self.src_v4,
            generation,
            &compiled.v4,
            held.as_ref().map(|h| &h.v4[..]),
            MAP_SRC_V4,
        )?;
        sync_trie(
            &mut self.src_v6,
            generation,
            &compiled.v6,
            held.as_ref().map(|h| &h.v6[..]),
            MAP_SRC_V6,
        )?;
        write_ports(
            &mut self.ports_tcp,
            generation,
            &compiled.tcp_ports,
            held.as_ref().map(|h| &h.tcp[..]),
            MAP_PORTS_TCP,
        )?;
        write_ports(
            &mut self.ports_udp,
            generation,
            &compiled.udp_ports,
            held.as_ref().map(|h| &h.udp[..]),
            MAP_PORTS_UDP,
        )?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "ports written");
        self.snapshot_rule_base(generation)?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "rule counters reset"
        );
        self.meta
            .set(generation, meta, 0)
            .map_err(map_err(MAP_META))?;
        // Every write into the copy succeeded: record what it holds. A failure here
        // costs the next apply a read of the tries, nothing else.
        if let Err(error) = record::write(
            &mut self.record,
            generation,
            &record::Content::of(compiled),
            old_chunks,
        ) {
            tracing::warn!(%error, generation, "could not record the policy written");
        }
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "recorded");
        // Last: the copy only claims to be valid once everything else is in place.
        self.config
            .set(generation, compiled.config, 0)
            .map_err(map_err(MAP_CONFIG))
    }

    /// Rule counters are per generation, so the counters of the policy in force belong
    /// to its rules. They are never reset (their sums are the `RuleAllowed` and
    /// `RuleRefused` totals, which must only grow): a generation about to be reused
    /// gets a snapshot of its counters instead, and the policy's counters are the
    /// growth since.
    fn snapshot_rule_base(&mut self, generation: u32) -> Result<(), LoaderError> {
        let stats = self.rule_stats_summed()?;
        let mut keys = Vec::with_capacity(2 * MAX_RULES);
        let mut values = Vec::with_capacity(2 * MAX_RULES);
        for allowed in [true, false] {
            for rule in 0..MAX_RULES as u32 {
                let at =
                    |monitor| stats[rule_stat_index(generation, monitor, allowed, rule) as usize];
                keys.push(rule_base_index(generation, allowed, rule));
                values.push(add(at(false), at(true)));
            }
        }
        let raw: Vec<u64> = values.iter().flat_map(|c| [c.packets, c.bytes]).collect();
        if super::batch::update_u32_keys_u64s(self.rule_base.map(), &keys, &raw, 2).is_err() {
            for (&index, &value) in keys.iter().zip(&values) {
                self.rule_base
                    .set(index, value, 0)
                    .map_err(map_err(MAP_RULE_BASE))?;
            }
        }
        Ok(())
    }

    /// Every `RULE_STATS` slot, summed over CPUs.
    fn rule_stats_summed(&self) -> Result<Vec<Counter>, LoaderError> {
        let mut out = vec![Counter::default(); RULE_STAT_SLOTS as usize];
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| LoaderError::io("reading", "/sys/devices/system/cpu/possible", e))?;
        let per_cpu = size_of::<Counter>();
        let batch = super::batch::lookup_each(
            self.rule_stats.map(),
            size_of::<u32>(),
            per_cpu * cpus,
            |key, values| {
                let index = u32::from_ne_bytes(key.try_into().unwrap_or_default()) as usize;
                let word = |at: usize| {
                    u64::from_ne_bytes(values[at..at + 8].try_into().unwrap_or_default())
                };
                if let Some(slot) = out.get_mut(index) {
                    for cpu in 0..cpus {
                        slot.packets += word(cpu * per_cpu);
                        slot.bytes += word(cpu * per_cpu + 8);
                    }
                }
            },
        );
        if batch.is_err() {
            for (index, slot) in (0..RULE_STAT_SLOTS).zip(out.iter_mut()) {
                let values = self
                    .rule_stats
                    .get(&index, 0)
                    .map_err(map_err(MAP_RULE_STATS))?;
                *slot = values
                    .iter()
                    .fold(Counter::default(), |acc, c| add(acc, *c));
            }
        }
        Ok(out)
    }

    /// Counters summed over CPUs; rule counters are those of the active generation.
    pub fn counters(&self) -> Result<Counters, LoaderError> {
        let sum = |values: PerCpuValues<Counter>| {
            values
                .iter()
                .fold(Counter::default(), |acc, c| add(acc, *c))
        };
        let mut reasons = Vec::with_capacity(Reason::ALL.len());
        let mut reasons_in_monitor = Vec::with_capacity(Reason::ALL.len());
        for reason in Reason::ALL {
            let read = |monitor| {
                self.reason_stats
                    .get(&reason_stat_index(reason as u32, monitor), 0)
                    .map(sum)
                    .map_err(map_err(MAP_REASON_STATS))
            };
            let (enforced, monitored) = (read(false)?, read(true)?);
            reasons.push(add(enforced, monitored));
            reasons_in_monitor.push(monitored);
        }
        // Packets a rule decided are counted only per rule (one counter update per
        // packet in the kernel): their reason totals are the sums over every rule,
        // outcome and generation, so they only grow, across any number of applies.
        let stats = self.rule_stats_summed()?;
        for generation in 0..GENERATIONS {
            for monitor in [false, true] {
                for (allowed, reason) in [(true, Reason::RuleAllowed), (false, Reason::RuleRefused)]
                {
                    for rule in 0..MAX_RULES as u32 {
                        let c = stats[rule_stat_index(generation, monitor, allowed, rule) as usize];
                        let at = reason as usize;
                        reasons[at] = add(reasons[at], c);
                        if monitor {
                            reasons_in_monitor[at] = add(reasons_in_monitor[at], c);
                        }
                    }
                }
            }
        }
        let mut samples = [0u64; SAMPLE_STAT_SLOTS as usize];
        for (slot, total) in (0..SAMPLE_STAT_SLOTS).zip(samples.iter_mut()) {
            let values = self
                .sample_stats
                .get(&slot, 0)
                .map_err(map_err(MAP_SAMPLE_STATS))?;
            *total = values.iter().sum();
        }
        let generation = self.active_generation()?;
        let rule_count = self
            .config
            .get(&generation, 0)
            .map_err(map_err(MAP_CONFIG))?
            .rule_count;
        let mut rules = Vec::with_capacity(rule_count as usize);
        for rule in 0..rule_count.min(MAX_RULES as u32) {
            let mut pair = [Counter::default(); 2];
            for (slot, allowed) in pair.iter_mut().zip([true, false]) {
                let at =
                    |monitor| stats[rule_stat_index(generation, monitor, allowed, rule) as usize];
                let base = self
                    .rule_base
                    .get(&rule_base_index(generation, allowed, rule), 0)
                    .map_err(map_err(MAP_RULE_BASE))?;
                let now = add(at(false), at(true));
                *slot = Counter {
                    packets: now.packets.saturating_sub(base.packets),
                    bytes: now.bytes.saturating_sub(base.bytes),
                };
            }
            rules.push((pair[0], pair[1]));
        }
        Ok(Counters {
            reasons,
            reasons_in_monitor,
            samples,
            rules,
        })
    }
}

fn add(a: Counter, b: Counter) -> Counter {
    Counter {
        packets: a.packets.wrapping_add(b.packets),
        bytes: a.bytes.wrapping_add(b.bytes),
    }
}

/// The trie key of `entry` in `generation`: the generation byte, then the address.
fn generation_key<const N: usize, const K: usize>(
    generation: u32,
    entry: &PrefixEntry<N>,
) -> Key<[u8; K]> {
    let mut data = [0u8; K];
    data[0] = generation as u8;
    data[1..].copy_from_slice(&entry.addr);
    Key::new(GENERATION_KEY_BITS + u32::from(entry.prefix_len), data)
}

/// What a sync did to one generation of a trie.
#[derive(Clone, Copy, Debug, Default)]
struct SyncCount {
    held: usize,
    removed: usize,
    written: usize,
}

/// Makes `generation`'s part of `trie` hold exactly `entries` (sorted by address,
/// then length, as the compiler makes them): takes what it holds now from
/// `recorded` (the generation's valid record) or else reads it back from the kernel,
/// then removes the keys that are not wanted and writes the entries that are
/// missing or hold another value; nothing else. The copy is never trusted, only
/// compared, so one left stale or half-written by a crashed apply (which leaves no
/// valid record) heals here. Only
/// ever called on the inactive generation.
fn sync_trie<const N: usize, const K: usize>(
    trie: &mut SrcTrie<K>,
    generation: u32,
    entries: &[PrefixEntry<N>],
    recorded: Option<&[PrefixEntry<N>]>,
    name: &'static str,
) -> Result<SyncCount, LoaderError> {
    let started = std::time::Instant::now();
    let sorted;
    let entries = if entries.is_sorted_by_key(|e| (e.addr, e.prefix_len)) {
        entries
    } else {
        let mut copy = entries.to_vec();
        copy.sort_unstable_by_key(|e| (e.addr, e.prefix_len));
        sorted = copy;
        &sorted
    };
    let (held, mut stray) = match recorded {
        Some(held) if held.is_sorted_by_key(|e| (e.addr, e.prefix_len)) => {
            (std::borrow::Cow::Borrowed(held), Vec::new())
        }
        _ => {
            let (held, stray) = read_generation::<N, K>(trie, generation, name)?;
            (std::borrow::Cow::Owned(held), stray)
        }
    };
    let read_ms = started.elapsed().as_millis() as u64;
    // Merge the two sorted lists.
    let mut remove: Vec<Key<[u8; K]>> = std::mem::take(&mut stray);
    let mut write: Vec<&PrefixEntry<N>> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < held.len() || j < entries.len() {
        let order = match (held.get(i), entries.get(j)) {
            (Some(h), Some(e)) => (h.addr, h.prefix_len).cmp(&(e.addr, e.prefix_len)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                remove.push(generation_key::<N, K>(generation, &held[i]));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                write.push(&entries[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if held[i].value != entries[j].value {
                    write.push(&entries[j]);
                }
                i += 1;
                j += 1;
            }
        }
    }
    remove_keys(trie, &remove, name)?;
    write_entries(trie, generation, &write, name)?;
    let count = SyncCount {
        held: held.len(),
        removed: remove.len(),
        written: write.len(),
    };
    tracing::debug!(
        map = name,
        generation,
        held = count.held,
        removed = count.removed,
        written = count.written,
        read_ms,
        ms = started.elapsed().as_millis() as u64,
        "trie synced"
    );
    Ok(count)
}

/// Size of a trie key in the kernel: the prefix length (u32), then the data.
const fn raw_key_size<const K: usize>() -> usize {
    4 + K
}

fn raw_key<const K: usize>(key: &Key<[u8; K]>, out: &mut Vec<u8>) {
    out.extend_from_slice(&key.prefix_len().to_ne_bytes());
    out.extend_from_slice(&key.data());
}

fn raw_value(value: &SourceEntry, out: &mut Vec<u8>) {
    out.extend_from_slice(&value.rules.to_ne_bytes());
    out.extend_from_slice(&value.flags.to_ne_bytes());
    out.extend_from_slice(&value._pad.to_ne_bytes());
}

fn remove_keys<const K: usize>(
    trie: &mut SrcTrie<K>,
    keys: &[Key<[u8; K]>],
    name: &'static str,
) -> Result<(), LoaderError> {
    let mut raw = Vec::with_capacity(keys.len() * raw_key_size::<K>());
    for key in keys {
        raw_key(key, &mut raw);
    }
    match super::batch::delete(trie.map(), &raw, keys.len()) {
        Ok(()) => return Ok(()),
        Err(error) if super::batch::unsupported(&error) => {
            tracing::debug!(map = name, %error, "batch delete unavailable; one by one");
        }
        // A batch may stop part way (e.g. at a key already gone); finish one by one.
        Err(error) => tracing::debug!(map = name, %error, "batch delete stopped; one by one"),
    }
    for key in keys {
        match trie.remove(key) {
            Ok(()) => {}
            Err(e) if record::not_found(&e) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(())
}

fn write_entries<const N: usize, const K: usize>(
    trie: &mut SrcTrie<K>,
    generation: u32,
    entries: &[&PrefixEntry<N>],
    name: &'static str,
) -> Result<(), LoaderError> {
    let mut keys = Vec::with_capacity(entries.len() * raw_key_size::<K>());
    let mut values = Vec::with_capacity(entries.len() * size_of::<SourceEntry>());
    for entry in entries {
        raw_key(&generation_key::<N, K>(generation, entry), &mut keys);
        raw_value(&entry.value, &mut values);
    }
    match super::batch::update(trie.map(), &keys, &values, entries.len()) {
        Ok(()) => return Ok(()),
        Err(error) if super::batch::unsupported(&error) => {
            tracing::debug!(map = name, %error, "batch update unavailable; one by one");
        }
        Err(error) => tracing::debug!(map = name, %error, "batch update stopped; one by one"),
    }
    for entry in entries {
        let key = generation_key::<N, K>(generation, entry);
        trie.insert(&key, entry.value, 0).map_err(map_err(name))?;
    }
    Ok(())
}

/// A generation read back from a trie: its entries and its stray keys.
type ReadBack<const N: usize, const K: usize> = (Vec<PrefixEntry<N>>, Vec<Key<[u8; K]>>);

/// The entries `trie` holds for `generation`, sorted by address then length, and
/// the keys of that generation that no compiled policy would write (a prefix length
/// outside the family's range), which a sync removes.
fn read_generation<const N: usize, const K: usize>(
    trie: &SrcTrie<K>,
    generation: u32,
    name: &'static str,
) -> Result<ReadBack<N, K>, LoaderError> {
    let mut entries = Vec::new();
    let mut stray = Vec::new();
    let mut take = |prefix_len: u32, data: [u8; K], value: SourceEntry| {
        if u32::from(data[0]) != generation {
            return;
        }
        let bits = prefix_len.wrapping_sub(GENERATION_KEY_BITS);
        if prefix_len < GENERATION_KEY_BITS || bits > 8 * N as u32 {
            stray.push(Key::new(prefix_len, data));
            return;
        }
        let mut addr = [0u8; N];
        addr.copy_from_slice(&data[1..]);
        entries.push(PrefixEntry {
            addr,
            prefix_len: bits as u8,
            value,
        });
    };
    let batch = super::batch::lookup_each(
        trie.map(),
        raw_key_size::<K>(),
        size_of::<SourceEntry>(),
        |key, value| {
            let prefix_len = u32::from_ne_bytes(key[..4].try_into().unwrap_or_default());
            let mut data = [0u8; K];
            data.copy_from_slice(&key[4..]);
            let word =
                |at: usize| u32::from_ne_bytes(value[at..at + 4].try_into().unwrap_or_default());
            let entry = SourceEntry {
                rules: u64::from_ne_bytes(value[..8].try_into().unwrap_or_default()),
                flags: word(8),
                _pad: word(12),
            };
            take(prefix_len, data, entry);
        },
    );
    match batch {
        Ok(()) => {}
        Err(error) if super::batch::unsupported(&error) => {
            tracing::debug!(map = name, %error, "batch lookup unavailable; one by one");
            for item in trie.iter() {
                let (key, value) = item.map_err(map_err(name))?;
                take(key.prefix_len(), key.data(), value);
            }
        }
        Err(error) => return Err(LoaderError::io("reading", name, error)),
    }
    // The kernel walks the trie in its own order. A walk can see a key twice (a
    // one-by-one fallback after some batches, or a walk restarted because its
    // position key vanished): a key is one entry, whatever the walk saw.
    entries.sort_unstable_by_key(|e| (e.addr, e.prefix_len));
    entries.dedup_by_key(|e| (e.addr, e.prefix_len));
    let mut seen = std::collections::HashSet::new();
    stray.retain(|key| seen.insert((key.prefix_len(), key.data())));
    Ok((entries, stray))
}

/// Writes the rule mask of every port of `generation` (zero where no rule covers it):
/// only the ports whose mask differs from `recorded` (the segments the copy holds,
/// from its valid record), or every port when the copy's content is not known.
fn write_ports(
    array: &mut Array<MapData, u64>,
    generation: u32,
    ports: &PortMap,
    recorded: Option<&[(u16, u16, u64)]>,
    name: &'static str,
) -> Result<(), LoaderError> {
    let dense = ports.dense();
    let first = port_index(generation, 0);
    let (keys, values): (Vec<u32>, Vec<u64>) = match recorded {
        Some(segments) => {
            let mut old = vec![0u64; PORT_SLOTS as usize];
            for &(from, to, mask) in segments {
                old[usize::from(from)..=usize::from(to)].fill(mask);
            }
            (first..)
                .zip(dense.iter().zip(&old))
                .filter(|(_, (new, old))| new != old)
                .map(|(index, (new, _))| (index, *new))
                .unzip()
        }
        None => ((first..first + PORT_SLOTS).collect(), dense),
    };
    match super::batch::update_u32_keys(array.map(), &keys, &values) {
        Ok(()) => Ok(()),
        Err(error) => {
            tracing::debug!(map = name, %error, "batch update unavailable; writing slot by slot");
            for (&index, &mask) in keys.iter().zip(&values) {
                array.set(index, mask, 0).map_err(map_err(name))?;
            }
            Ok(())
        }
    }
}

impl PolicyMaps {
    /// The layout version recorded in the active META slot (0 if never written).
    pub(crate) fn layout_version(&self) -> Result<u32, MapError> {
        let generation = self.active.get(&0, 0)? & 1;
        Ok(self.meta.get(&generation, 0)?.layout_version)
    }

    /// Replaces the summary of the generation in force (it describes the policy; the
    /// policy itself is untouched).
    pub(crate) fn rewrite_active_summary(
        &mut self,
        summary: &PolicySummary,
    ) -> Result<(), LoaderError> {
        let generation = self.active_generation()?;
        let meta = summary.encode()?;
        self.meta
            .set(generation, meta, 0)
            .map_err(map_err(MAP_META))
    }
}

impl PolicyMaps {
    /// Records that both generations are empty: only for maps just created.
    pub(crate) fn record_fresh(&mut self) -> Result<(), LoaderError> {
        for generation in 0..GENERATIONS {
            record::write(
                &mut self.record,
                generation,
                &record::Content::EMPTY,
                Some(0),
            )
            .map_err(map_err(MAP_RECORD))?;
        }
        Ok(())
    }

    /// Makes `generation` the one in force (one word write).
    pub(crate) fn set_active_generation(&mut self, generation: u32) -> Result<(), LoaderError> {
        self.active
            .set(0, generation & 1, 0)
            .map_err(map_err(MAP_ACTIVE_GEN))
    }
}

impl PolicyMaps {
    /// Caps drop samples per second per CPU (0 turns sampling off).
    pub fn set_sample_rate(&mut self, per_cpu_per_second: u32) -> Result<(), LoaderError> {
        let config = SamplingConfig {
            per_cpu_per_second,
            _pad: 0,
        };
        self.sampling
            .set(0, config, 0)
            .map_err(map_err(MAP_SAMPLING))
    }
}

impl PolicyMaps {
    /// The summary recorded with `generation`, if that copy holds a complete policy
    /// (for a rollback to it, and to say what it would return to).
    pub fn generation_summary(
        &self,
        generation: u32,
    ) -> Result<Option<PolicySummary>, LoaderError> {
        let generation = generation & 1;
        let config = self
            .config
            .get(&generation, 0)
            .map_err(map_err(MAP_CONFIG))?;
        if config.valid == 0 {
            return Ok(None);
        }
        let meta = self.meta.get(&generation, 0).map_err(map_err(MAP_META))?;
        Ok(PolicySummary::decode(&meta))
    }

    /// The source trie entries of the generation in force, read back from the kernel
    /// (for `airlock diff`), sorted by address then prefix length.
    pub fn active_prefixes(&self) -> Result<TrieEntries, LoaderError> {
        self.generation_prefixes(self.active_generation()?)
    }

    /// The source trie entries of `generation`, read back from the kernel, sorted by
    /// address then prefix length.
    pub fn generation_prefixes(&self, generation: u32) -> Result<TrieEntries, LoaderError> {
        let generation = generation & 1;
        Ok((
            read_trie(&self.src_v4, generation, MAP_SRC_V4)?,
            read_trie(&self.src_v6, generation, MAP_SRC_V6)?,
        ))
    }

    /// The TCP and UDP port arrays of `generation`, read back from the kernel (one
    /// rule mask per port).
    pub fn generation_ports(&self, generation: u32) -> Result<(Vec<u64>, Vec<u64>), LoaderError> {
        let first = port_index(generation & 1, 0);
        let read = |array: &Array<MapData, u64>, name| {
            (first..first + PORT_SLOTS)
                .map(|index| array.get(&index, 0).map_err(map_err(name)))
                .collect::<Result<Vec<u64>, _>>()
        };
        Ok((
            read(&self.ports_tcp, MAP_PORTS_TCP)?,
            read(&self.ports_udp, MAP_PORTS_UDP)?,
        ))
    }

    /// For tests: what an apply that died after writing the tries and port arrays of
    /// the inactive copy leaves behind (no record, no valid config, no flip).
    #[doc(hidden)]
    pub fn interrupted_apply(&mut self, compiled: &Compiled) -> Result<(), LoaderError> {
        let generation = 1 - self.active_generation()?;
        let mut config = self
            .config
            .get(&generation, 0)
            .map_err(map_err(MAP_CONFIG))?;
        config.valid = 0;
        self.config
            .set(generation, config, 0)
            .map_err(map_err(MAP_CONFIG))?;
        record::invalidate(&mut self.record, generation).map_err(map_err(MAP_RECORD))?;
        sync_trie(&mut self.src_v4, generation, &compiled.v4, None, MAP_SRC_V4)?;
        sync_trie(&mut self.src_v6, generation, &compiled.v6, None, MAP_SRC_V6)?;
        write_ports(
            &mut self.ports_tcp,
            generation,
            &compiled.tcp_ports,
            None,
            MAP_PORTS_TCP,
        )?;
        write_ports(
            &mut self.ports_udp,
            generation,
            &compiled.udp_ports,
            None,
            MAP_PORTS_UDP,
        )
    }
}

/// IPv4 and IPv6 source trie entries.
pub type TrieEntries = (Vec<PrefixEntry<4>>, Vec<PrefixEntry<16>>);

fn read_trie<const N: usize, const K: usize>(
    trie: &SrcTrie<K>,
    generation: u32,
    name: &'static str,
) -> Result<Vec<PrefixEntry<N>>, LoaderError> {
    Ok(read_generation::<N, K>(trie, generation, name)?.0)
}
