//! Typed handles on one filter's maps, and the generation protocol that makes a
//! policy swap atomic: write the whole policy into the inactive copy, then flip the
//! one-word `ACTIVE_GEN`. The program reads that word once per packet, so every
//! packet is judged by exactly one complete policy.
//!
//! After the flip the old copy is left as it was: it still holds the previous
//! policy, which a rollback can return to with another single flip, and the next
//! apply rewrites it by difference (so a stale or half-written copy left by a crashed
//! apply heals itself: it is never trusted, only compared and corrected).

use std::{collections::HashMap, path::Path};

use airlock_common::{
    Counter, GENERATION_KEY_BITS, GenConfig, MAP_ACTIVE_GEN, MAP_CONFIG, MAP_META, MAP_PORTS_TCP,
    MAP_PORTS_UDP, MAP_REASON_STATS, MAP_RULE_STATS, MAP_SAMPLE_STATS, MAP_SAMPLING, MAP_SRC_V4,
    MAP_SRC_V6, MAX_RULES, PORT_SLOTS, PolicyMeta, Reason, SAMPLE_STAT_SLOTS, SamplingConfig,
    SourceEntry, port_index, reason_stat_index, rule_stat_index,
};
use aya::{
    Ebpf,
    maps::{
        Array, IterableMap as _, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues,
        lpm_trie::Key,
    },
};

use super::{LoaderError, meta::PolicySummary};
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
    meta: Array<MapData, PolicyMeta>,
    sampling: Array<MapData, SamplingConfig>,
    sample_stats: PerCpuArray<MapData, u64>,
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
            meta: source.take(MAP_META)?,
            sampling: source.take(MAP_SAMPLING)?,
            sample_stats: source.take(MAP_SAMPLE_STATS)?,
        })
    }

    /// Opens the maps pinned in `dir` (an interface's pin directory).
    pub fn open_pinned(dir: &Path) -> Result<Self, LoaderError> {
        Self::take(MapSource::Pinned(dir))
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
        sync_trie(&mut self.src_v4, generation, &compiled.v4, MAP_SRC_V4)?;
        sync_trie(&mut self.src_v6, generation, &compiled.v6, MAP_SRC_V6)?;
        write_ports(
            &mut self.ports_tcp,
            generation,
            &compiled.tcp_ports,
            MAP_PORTS_TCP,
        )?;
        write_ports(
            &mut self.ports_udp,
            generation,
            &compiled.udp_ports,
            MAP_PORTS_UDP,
        )?;
        self.reset_rule_counters(generation)?;
        self.meta
            .set(generation, meta, 0)
            .map_err(map_err(MAP_META))?;
        // Last: the copy only claims to be valid once everything else is in place.
        self.config
            .set(generation, compiled.config, 0)
            .map_err(map_err(MAP_CONFIG))
    }

    /// Rule counters are per generation, so the counters of the policy in force belong
    /// to its rules; a generation about to be reused starts from zero.
    fn reset_rule_counters(&mut self, generation: u32) -> Result<(), LoaderError> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| LoaderError::io("reading", "/sys/devices/system/cpu/possible", e))?;
        for allowed in [true, false] {
            for rule in 0..MAX_RULES as u32 {
                let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus])
                    .map_err(|e| LoaderError::io("sizing per-CPU values", "", e))?;
                self.rule_stats
                    .set(rule_stat_index(generation, allowed, rule), zeros, 0)
                    .map_err(map_err(MAP_RULE_STATS))?;
            }
        }
        Ok(())
    }

    /// Counters summed over CPUs; rule counters are those of the active generation.
    pub fn counters(&self) -> Result<Counters, LoaderError> {
        let sum = |values: PerCpuValues<Counter>| {
            values.iter().fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            })
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
            reasons.push(Counter {
                packets: enforced.packets + monitored.packets,
                bytes: enforced.bytes + monitored.bytes,
            });
            reasons_in_monitor.push(monitored);
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
                let index = rule_stat_index(generation, allowed, rule);
                let values = self
                    .rule_stats
                    .get(&index, 0)
                    .map_err(map_err(MAP_RULE_STATS))?;
                *slot = sum(values);
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

/// Makes `generation`'s part of `trie` hold exactly `entries`: removes its keys that
/// are not wanted, writes the rest. Only ever called on the inactive generation.
fn sync_trie<const N: usize, const K: usize>(
    trie: &mut SrcTrie<K>,
    generation: u32,
    entries: &[PrefixEntry<N>],
    name: &'static str,
) -> Result<(), LoaderError> {
    let wanted: HashMap<(u32, [u8; K]), SourceEntry> = entries
        .iter()
        .map(|e| {
            let key = generation_key::<N, K>(generation, e);
            ((key.prefix_len(), key.data()), e.value)
        })
        .collect();
    let existing: Vec<Key<[u8; K]>> = trie
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    for key in existing {
        let data = key.data();
        if u32::from(data[0]) == generation && !wanted.contains_key(&(key.prefix_len(), data)) {
            trie.remove(&key).map_err(map_err(name))?;
        }
    }
    for entry in entries {
        let key = generation_key::<N, K>(generation, entry);
        trie.insert(&key, entry.value, 0).map_err(map_err(name))?;
    }
    Ok(())
}

/// Writes the rule mask of every port of `generation` (zero where no rule covers it).
fn write_ports(
    array: &mut Array<MapData, u64>,
    generation: u32,
    ports: &PortMap,
    name: &'static str,
) -> Result<(), LoaderError> {
    let dense = ports.dense();
    let first = port_index(generation, 0);
    match super::batch::update_u64_array(array.map(), first, &dense) {
        Ok(()) => Ok(()),
        Err(error) => {
            tracing::debug!(map = name, %error, "batch update unavailable; writing slot by slot");
            for (index, mask) in (first..first + PORT_SLOTS).zip(dense) {
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
    pub fn active_prefixes(
        &self,
    ) -> Result<(Vec<PrefixEntry<4>>, Vec<PrefixEntry<16>>), LoaderError> {
        let generation = self.active_generation()?;
        Ok((
            read_trie(&self.src_v4, generation, MAP_SRC_V4)?,
            read_trie(&self.src_v6, generation, MAP_SRC_V6)?,
        ))
    }
}

fn read_trie<const N: usize, const K: usize>(
    trie: &SrcTrie<K>,
    generation: u32,
    name: &'static str,
) -> Result<Vec<PrefixEntry<N>>, LoaderError> {
    let mut entries = Vec::new();
    for item in trie.iter() {
        let (key, value) = item.map_err(map_err(name))?;
        let data = key.data();
        if u32::from(data[0]) != generation {
            continue;
        }
        let mut addr = [0u8; N];
        addr.copy_from_slice(&data[1..]);
        entries.push(PrefixEntry {
            addr,
            prefix_len: (key.prefix_len() - GENERATION_KEY_BITS) as u8,
            value,
        });
    }
    entries.sort_by_key(|e| (e.addr, e.prefix_len));
    Ok(entries)
}
