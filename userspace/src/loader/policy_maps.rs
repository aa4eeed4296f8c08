//! Typed handles on one filter's maps, and the generation protocol that makes a
//! policy swap atomic: write the whole policy into the inactive copy, then flip the
//! one-word `ACTIVE_GEN`. The program reads that word once per packet, so every
//! packet is judged by exactly one complete policy.
//!
//! After the flip the old copy is left as it was: it still holds the previous
//! policy, which a rollback can return to with another single flip. The next apply
//! waits until no packet still reads it, then rewrites it whole (every element of
//! each source table, every port slot), so a copy left stale or half-written by a
//! crashed apply is never trusted or patched: it is overwritten, and it was marked
//! invalid before its first write.

use std::{marker::PhantomData, os::fd::AsFd as _, path::Path};

use airlock_common::{
    Counter, GENERATIONS, GenConfig, INLINE_TABLE_V4, INLINE_TABLE_V6, LAYOUT_VERSION,
    MAP_ACTIVE_GEN, MAP_CONFIG, MAP_GRACE_DONE, MAP_META, MAP_PORTS_TCP, MAP_PORTS_UDP,
    MAP_REASON_STATS, MAP_RULE_BASE, MAP_RULE_STATS, MAP_SAMPLE_STATS, MAP_SAMPLING, MAP_SRC_V4,
    MAP_SRC_V4_INLINE, MAP_SRC_V6, MAP_SRC_V6_INLINE, MAX_RULES, PORT_SLOTS, PolicyMeta,
    RULE_STAT_SLOTS, Reason, SAMPLE_STAT_SLOTS, SamplingConfig, SourceRangeV4, SourceRangeV6,
    TABLE_INLINE_V4, TABLE_INLINE_V6, port_index, reason_stat_index, rule_base_index,
    rule_stat_index,
};
use aya::{
    Ebpf,
    maps::{Array, IterableMap as _, Map, MapData, MapError, PerCpuArray, PerCpuValues},
};

use super::{
    LoaderError, grace, grace_record,
    mapping::{read_elements, write_elements},
    meta::PolicySummary,
    source_tables::{Placement, TableShape, Tables},
};
use crate::compile::{
    Compiled, PortMap, PrefixEntry,
    ranges::{self, Directory},
};

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
        T::try_from(self.take_map(name)?).map_err(|source| LoaderError::Map { name, source })
    }

    /// A map of any type, as the kernel has it.
    fn take_map(&mut self, name: &'static str) -> Result<Map, LoaderError> {
        match self {
            MapSource::Object(ebpf) => ebpf.take_map(name).ok_or(LoaderError::MissingMap(name)),
            MapSource::Pinned(dir) => {
                let data = MapData::from_pin(dir.join(name))
                    .map_err(|source| LoaderError::Map { name, source })?;
                Map::from_map_data(data).map_err(|source| LoaderError::Map { name, source })
            }
        }
    }

    /// One family's source tables: the preallocated map (`capacity` elements per
    /// generation) and the array of chunk maps.
    fn take_tables<R: aya::Pod>(
        &mut self,
        preallocated: &'static str,
        chunks: &'static str,
        capacity: u32,
    ) -> Result<Tables<R>, LoaderError> {
        Ok(Tables {
            preallocated: self.take_array_data(preallocated)?,
            chunks: self.take_map(chunks)?,
            capacity,
            names: (preallocated, chunks),
            element: PhantomData,
        })
    }

    /// An array map untyped (its values are too large to hold as one).
    fn take_array_data(&mut self, name: &'static str) -> Result<MapData, LoaderError> {
        match self {
            MapSource::Object(ebpf) => match ebpf.take_map(name) {
                Some(Map::Array(data)) => Ok(data),
                _ => Err(LoaderError::MissingMap(name)),
            },
            MapSource::Pinned(dir) => MapData::from_pin(dir.join(name))
                .map_err(|source| LoaderError::Map { name, source }),
        }
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
    /// The generation that was active when `rules` were read: its summary
    /// ([`PolicyMaps::generation_summary`]) names them. Asking for the active one
    /// afterwards could name them after a policy applied in between.
    pub generation: u32,
    /// For `generation`: (allowed, refused) per rule index.
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

/// How a swap makes sure no packet still reads the copy it is about to rewrite,
/// where no grace period since the last flip is on record
/// ([`grace_record::passed_since_flip`]).
pub(crate) enum Grace<'a> {
    /// Waits out a grace period of its own.
    Own,
    /// Joins the one begun when the writer lock was taken
    /// ([`WriterLock::grace_covers`](super::WriterLock::grace_covers) for the
    /// filter pinned at this directory), or waits its own where that does not cover it.
    Early(&'a super::WriterLock, &'a Path),
}

pub struct PolicyMaps {
    active: Array<MapData, u32>,
    config: Array<MapData, GenConfig>,
    src_v4: Tables<SourceRangeV4>,
    src_v6: Tables<SourceRangeV6>,
    ports_tcp: Array<MapData, u64>,
    ports_udp: Array<MapData, u64>,
    reason_stats: PerCpuArray<MapData, Counter>,
    rule_stats: PerCpuArray<MapData, Counter>,
    rule_base: Array<MapData, Counter>,
    meta: Array<MapData, PolicyMeta>,
    sampling: Array<MapData, SamplingConfig>,
    sample_stats: PerCpuArray<MapData, u64>,
    /// Absent from filters pinned before it existed: their writers always wait.
    grace_done: Option<Array<MapData, u64>>,
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> LoaderError {
    move |source| LoaderError::Map { name, source }
}

impl PolicyMaps {
    pub(crate) fn take(mut source: MapSource<'_>) -> Result<Self, LoaderError> {
        Ok(Self {
            active: source.take(MAP_ACTIVE_GEN)?,
            config: source.take(MAP_CONFIG)?,
            src_v4: source.take_tables(MAP_SRC_V4_INLINE, MAP_SRC_V4, INLINE_TABLE_V4)?,
            src_v6: source.take_tables(MAP_SRC_V6_INLINE, MAP_SRC_V6, INLINE_TABLE_V6)?,
            ports_tcp: source.take(MAP_PORTS_TCP)?,
            ports_udp: source.take(MAP_PORTS_UDP)?,
            reason_stats: source.take(MAP_REASON_STATS)?,
            rule_stats: source.take(MAP_RULE_STATS)?,
            rule_base: source.take(MAP_RULE_BASE)?,
            meta: source.take(MAP_META)?,
            sampling: source.take(MAP_SAMPLING)?,
            sample_stats: source.take(MAP_SAMPLE_STATS)?,
            grace_done: source
                .take(MAP_GRACE_DONE)
                .ok()
                .and_then(grace_record::usable),
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
        self.apply_after(compiled, summary, Grace::Own)
    }

    /// As [`apply`](Self::apply), with the grace period `grace` says to wait for.
    pub(crate) fn apply_after(
        &mut self,
        compiled: &Compiled,
        summary: &PolicySummary,
        grace: Grace<'_>,
    ) -> Result<u32, LoaderError> {
        let next = 1 - self.active_generation()?;
        // Encode first: a summary that does not fit must fail before anything changes.
        let meta = summary.encode()?;
        self.write_generation(next, compiled, &meta, grace)?;
        self.set_active_generation(next)?;
        Ok(next)
    }

    fn write_generation(
        &mut self,
        generation: u32,
        compiled: &Compiled,
        meta: &PolicyMeta,
        grace: Grace<'_>,
    ) -> Result<(), LoaderError> {
        let started = std::time::Instant::now();
        let (v4_capacity, v6_capacity) = (self.src_v4.capacity, self.src_v6.capacity);
        // Packets that read the generation number before the last flip may still be
        // reading this copy (its config too, which the program reads in place): wait
        // them out (one RCU grace period, or the end of one begun under the
        // writer lock, while the tables are built) before changing any of it,
        // unless one since that flip is on record.
        let chunks = &self.src_v4.chunks;
        let names = self.src_v4.names;
        let on_record = self
            .grace_done
            .as_ref()
            .is_some_and(|done| grace_record::passed_since_flip(&self.active, done));
        let word = self.active.get(&0, 0).ok();
        if on_record {
            tracing::debug!("a grace period since the last flip is on record: no wait");
        }
        let ((v4, v6), waited) = crate::parallel::join(
            || {
                crate::parallel::join(
                    || ranges::table(&compiled.v4, v4_capacity as usize),
                    || ranges::table(&compiled.v6, v6_capacity as usize),
                )
            },
            || match grace {
                Grace::Early(writer, dir) if writer.grace_covers(dir, on_record, word) => Ok(()),
                Grace::Own if on_record => Ok(()),
                _ => grace::wait_for_running_programs(chunks, generation, names.1),
            },
        );
        waited?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            v4 = v4.elements.len(),
            v6 = v6.elements.len(),
            "source tables built"
        );
        // First write: from here until the end the copy is not a complete policy, so
        // nothing (a rollback, `status`) may take it for one, even if this process dies.
        self.invalidate(generation)?;
        // Separate maps: the families are written (and new chunks published, each
        // publish waiting out a grace period) side by side.
        let placed = crate::parallel::join(
            || self.src_v4.write(generation, &v4),
            || self.src_v6.write(generation, &v6),
        );
        let placed = (placed.0?, placed.1?);
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "source tables written"
        );
        write_ports(
            &self.ports_tcp,
            generation,
            &compiled.tcp_ports,
            MAP_PORTS_TCP,
        )?;
        write_ports(
            &self.ports_udp,
            generation,
            &compiled.udp_ports,
            MAP_PORTS_UDP,
        )?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "ports written");
        self.snapshot_rule_base(generation)?;
        self.meta
            .set(generation, meta, 0)
            .map_err(map_err(MAP_META))?;
        // Last: the copy only claims to be valid once everything else is in place.
        let inline = |placement, flag| {
            if placement == Placement::Preallocated {
                flag
            } else {
                0
            }
        };
        let config = GenConfig {
            directory_bits_v4: v4.directory.bits,
            directory_bits_v6: v6.directory.bits,
            directory_shift_v4: v4.directory.shift,
            directory_shift_v6: v6.directory.shift,
            directory_base_v4: v4.directory.base,
            directory_base_v6: v6.directory.base,
            inline_tables: inline(placed.0, TABLE_INLINE_V4) | inline(placed.1, TABLE_INLINE_V6),
            table_len_v4: v4.elements.len() as u32,
            table_len_v6: v6.elements.len() as u32,
            ..compiled.config
        };
        self.config
            .set(generation, config, 0)
            .map_err(map_err(MAP_CONFIG))
    }

    /// Marks `generation` as not holding a complete policy.
    fn invalidate(&mut self, generation: u32) -> Result<(), LoaderError> {
        let mut config = self
            .config
            .get(&generation, 0)
            .map_err(map_err(MAP_CONFIG))?;
        if config.valid != 0 {
            config.valid = 0;
            self.config
                .set(generation, config, 0)
                .map_err(map_err(MAP_CONFIG))?;
        }
        Ok(())
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
            generation,
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

/// Writes the rule mask of every port of `generation` (zero where no rule covers it),
/// through a mapping of the array: one copy of 512 KiB instead of a batch update
/// that copies each element in the kernel (a third of a re-apply's time at 100,000
/// prefixes).
fn write_ports(
    array: &Array<MapData, u64>,
    generation: u32,
    ports: &PortMap,
    name: &'static str,
) -> Result<(), LoaderError> {
    let first = port_index(generation, 0) as usize;
    write_elements(array.map().fd().as_fd(), first, &ports.dense())
        .map_err(|e| LoaderError::io("writing the port masks of", name, e))
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
        self.rewrite_summary(generation, summary)
    }

    /// Replaces `generation`'s summary (the policy itself is untouched).
    pub(crate) fn rewrite_summary(
        &mut self,
        generation: u32,
        summary: &PolicySummary,
    ) -> Result<(), LoaderError> {
        let meta = summary.encode()?;
        self.meta
            .set(generation & 1, meta, 0)
            .map_err(map_err(MAP_META))
    }
}

impl PolicyMaps {
    /// Makes `generation` the one in force (one word write, which also counts the
    /// flip: see `grace_record`).
    pub(crate) fn set_active_generation(&mut self, generation: u32) -> Result<(), LoaderError> {
        grace_record::flip(&mut self.active, self.grace_done.as_mut(), generation)
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
        if self.complete_config(generation)?.is_none() {
            return Ok(None);
        }
        let meta = self.meta.get(&generation, 0).map_err(map_err(MAP_META))?;
        Ok(PolicySummary::decode(&meta))
    }

    /// `generation`'s config if that copy holds a complete policy.
    fn complete_config(&self, generation: u32) -> Result<Option<GenConfig>, LoaderError> {
        let config = self
            .config
            .get(&generation, 0)
            .map_err(map_err(MAP_CONFIG))?;
        Ok((config.valid != 0).then_some(config))
    }

    /// The shapes of `generation`'s IPv4 and IPv6 source tables, if that copy holds
    /// a complete policy.
    pub fn table_shapes(
        &self,
        generation: u32,
    ) -> Result<Option<(TableShape, TableShape)>, LoaderError> {
        let Some(config) = self.complete_config(generation & 1)? else {
            return Ok(None);
        };
        let placement = |flag| Placement::recorded(config.inline_tables, flag);
        Ok(Some((
            TableShape::of::<SourceRangeV4>(
                config.table_len_v4,
                config.directory_bits_v4,
                placement(TABLE_INLINE_V4),
            ),
            TableShape::of::<SourceRangeV6>(
                config.table_len_v6,
                config.directory_bits_v6,
                placement(TABLE_INLINE_V6),
            ),
        )))
    }

    /// The source prefixes of the generation in force, read back from the kernel
    /// (for `airlock diff`) in canonical form (`compile::ranges::canonical`).
    pub fn active_prefixes(&self) -> Result<SourcePrefixes, LoaderError> {
        self.generation_prefixes(self.active_generation()?)
    }

    /// The source prefixes of `generation`, read back from its tables in canonical
    /// form, sorted by address: empty for a table never written.
    pub fn generation_prefixes(&self, generation: u32) -> Result<SourcePrefixes, LoaderError> {
        let generation = generation & 1;
        let config = self
            .config
            .get(&generation, 0)
            .map_err(map_err(MAP_CONFIG))?;
        let placement = |flag| Placement::recorded(config.inline_tables, flag);
        let v4 = match self.src_v4.read(
            generation,
            placement(TABLE_INLINE_V4),
            Directory {
                bits: config.directory_bits_v4,
                base: config.directory_base_v4,
                shift: config.directory_shift_v4,
            },
            config.table_len_v4,
        )? {
            Some(table) => {
                ranges::prefixes(&table).ok_or(LoaderError::MalformedSourceTable(MAP_SRC_V4))?
            }
            None => Vec::new(),
        };
        let v6 = match self.src_v6.read(
            generation,
            placement(TABLE_INLINE_V6),
            Directory {
                bits: config.directory_bits_v6,
                base: config.directory_base_v6,
                shift: config.directory_shift_v6,
            },
            config.table_len_v6,
        )? {
            Some(table) => {
                ranges::prefixes(&table).ok_or(LoaderError::MalformedSourceTable(MAP_SRC_V6))?
            }
            None => Vec::new(),
        };
        Ok((v4, v6))
    }

    /// The TCP and UDP port arrays of `generation`, read back from the kernel (one
    /// rule mask per port).
    pub fn generation_ports(&self, generation: u32) -> Result<(Vec<u64>, Vec<u64>), LoaderError> {
        let first = port_index(generation & 1, 0) as usize;
        let read = |array: &Array<MapData, u64>, name| {
            read_elements(array.map().fd().as_fd(), first, PORT_SLOTS as usize)
                .map_err(|e| LoaderError::io("reading the port masks of", name, e))
        };
        Ok((
            read(&self.ports_tcp, MAP_PORTS_TCP)?,
            read(&self.ports_udp, MAP_PORTS_UDP)?,
        ))
    }

    /// For tests: every later apply puts its source tables in chunk maps, as only
    /// policies larger than the preallocated tables otherwise would.
    #[doc(hidden)]
    pub fn use_chunked_tables_only(&mut self) {
        self.src_v4.capacity = 0;
        self.src_v6.capacity = 0;
    }

    /// For tests: the wait for running programs used where `membarrier` does not
    /// wait (through the inactive generation's last chunk slot).
    #[doc(hidden)]
    pub fn wait_through_chunks(&self) -> Result<(), LoaderError> {
        let generation = 1 - self.active_generation()?;
        super::source_tables::wait_through(&self.src_v4.chunks, generation, self.src_v4.names.1)
    }

    /// For tests: what an apply that died half way through writing the inactive copy
    /// leaves behind: the copy marked invalid, `junk`'s source tables in place, its
    /// ports not yet written, no flip.
    #[doc(hidden)]
    pub fn interrupted_apply(&mut self, junk: &Compiled) -> Result<(), LoaderError> {
        let generation = 1 - self.active_generation()?;
        self.invalidate(generation)?;
        self.src_v4.write(
            generation,
            &ranges::table(&junk.v4, INLINE_TABLE_V4 as usize),
        )?;
        self.src_v6.write(
            generation,
            &ranges::table(&junk.v6, INLINE_TABLE_V6 as usize),
        )?;
        Ok(())
    }
}

/// IPv4 and IPv6 source prefixes.
pub type SourcePrefixes = (Vec<PrefixEntry<4>>, Vec<PrefixEntry<16>>);
