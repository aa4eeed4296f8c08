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
//!
//! A generation's config, port tables and source classes are one `POLICY`
//! value (3 MiB), written and read through a mapping of the map: ports and
//! classes first, the config last (it is what says the copy is complete).

use std::{marker::PhantomData, os::fd::AsFd as _, path::Path};

use airlock_common::{
    Counter, GenConfig, INLINE_TABLE_V4, INLINE_TABLE_V6, LAYOUT_VERSION, MAP_ACTIVE_GEN,
    MAP_GRACE_DONE, MAP_META, MAP_POLICY, MAP_REASON_STATS, MAP_RULE_BASE, MAP_RULE_STATS,
    MAP_SAMPLE_STATE, MAP_SAMPLE_STATS, MAP_SAMPLING, MAP_SRC_V4, MAP_SRC_V4_INLINE, MAP_SRC_V6,
    MAP_SRC_V6_INLINE, MODE_MONITOR, POLICY_BYTES, POLICY_CLASSES_V4_OFFSET,
    POLICY_CLASSES_V6_OFFSET, POLICY_CONFIG_OFFSET, POLICY_TCP_OFFSET, PORT_SLOTS, PolicyMeta,
    PortSlot, SRC_DENY, SRC_MANAGEMENT, SampleWindow, SamplingConfig, SourceEntry, SourceRangeV4,
    SourceRangeV6, TABLE_INLINE_V4, TABLE_INLINE_V6, UNFLAGGED_V4, UNFLAGGED_V6,
};
use aya::{
    Ebpf,
    maps::{Array, Map, MapData, MapError, PerCpuArray},
};

use super::{
    LoaderError, grace, grace_record,
    mapping::{read_at, with_range, write_at},
    meta::PolicySummary,
    source_tables::{Placement, Tables},
};
use crate::compile::{Compiled, Prebuilt, ranges};

mod counters;
mod read_back;

pub use counters::Counters;
pub use read_back::SourcePrefixes;

/// Where typed map handles come from: a freshly loaded object or a pin directory
/// (opened to write, or only to read: `status` and the like, which work on a
/// read-only bpffs).
pub(crate) enum MapSource<'a> {
    Object(&'a mut Ebpf),
    Pinned(&'a Path),
    PinnedReadOnly(&'a Path),
}

/// The map pinned at `dir`/`name`, read-only or not.
fn from_pin(dir: &Path, name: &'static str, read_only: bool) -> Result<MapData, LoaderError> {
    super::pins::open_map(&super::pins::entry(dir, name)?, read_only)
        .map_err(|source| LoaderError::Map { name, source })
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
            MapSource::Object(ebpf) => take_object_map(ebpf, name),
            MapSource::Pinned(dir) => Map::from_map_data(from_pin(dir, name, false)?)
                .map_err(|source| LoaderError::Map { name, source }),
            MapSource::PinnedReadOnly(dir) => Map::from_map_data(from_pin(dir, name, true)?)
                .map_err(|source| LoaderError::Map { name, source }),
        }
    }

    /// One family's source tables: the preallocated map (`capacity`: what the
    /// table builder is told its first value holds) and the array of chunk maps.
    fn take_tables<R: aya::Pod>(
        &mut self,
        preallocated: &'static str,
        chunks: &'static str,
        capacity: u32,
    ) -> Result<Tables<R>, LoaderError> {
        let map = self.take_array_data(preallocated)?;
        Ok(Tables {
            values: super::source_tables::values_per_generation(&map, preallocated)?,
            preallocated: map,
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
            MapSource::Pinned(dir) => from_pin(dir, name, false),
            MapSource::PinnedReadOnly(dir) => from_pin(dir, name, true),
        }
    }
}

/// The object's map pinned as `name`: itself, or the global data pinned under
/// that name (`airlock_common::GLOBAL_DATA_MAPS`; an older object has a
/// `#[map]` of that name instead).
fn take_object_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, LoaderError> {
    if let Some(map) = ebpf.take_map(name) {
        return Ok(map);
    }
    let section = airlock_common::GLOBAL_DATA_MAPS
        .iter()
        .find(|(_, pin)| *pin == name)
        .map(|(section, _)| *section);
    section
        .and_then(|section| ebpf.take_map(section))
        .ok_or(LoaderError::MissingMap(name))
}

/// The layout version recorded in the active META slot of the filter pinned in
/// `dir`, read from the two maps every layout has.
fn pinned_layout(dir: &Path) -> Option<u32> {
    let mut source = MapSource::PinnedReadOnly(dir);
    let active: Array<MapData, u32> = source.take(MAP_ACTIVE_GEN).ok()?;
    let meta: Array<MapData, PolicyMeta> = source.take(MAP_META).ok()?;
    let generation = active.get(&0, 0).ok()? & 1;
    Some(meta.get(&generation, 0).ok()?.layout_version)
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
    /// `POLICY`: each generation's config and port tables (values too large to
    /// hold as one: read and written through a mapping).
    policy: MapData,
    src_v4: Tables<SourceRangeV4>,
    src_v6: Tables<SourceRangeV6>,
    reason_stats: PerCpuArray<MapData, Counter>,
    rule_stats: PerCpuArray<MapData, Counter>,
    rule_base: Array<MapData, Counter>,
    meta: Array<MapData, PolicyMeta>,
    sampling: Array<MapData, SamplingConfig>,
    sample_stats: PerCpuArray<MapData, u64>,
    /// The rate limit's window, which also counts what the limit held back.
    sample_state: PerCpuArray<MapData, SampleWindow>,
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
            policy: policy_map(source.take_array_data(MAP_POLICY)?)?,
            src_v4: source.take_tables(MAP_SRC_V4_INLINE, MAP_SRC_V4, INLINE_TABLE_V4)?,
            src_v6: source.take_tables(MAP_SRC_V6_INLINE, MAP_SRC_V6, INLINE_TABLE_V6)?,
            reason_stats: source.take(MAP_REASON_STATS)?,
            rule_stats: source.take(MAP_RULE_STATS)?,
            rule_base: source.take(MAP_RULE_BASE)?,
            meta: source.take(MAP_META)?,
            sampling: source.take(MAP_SAMPLING)?,
            sample_stats: source.take(MAP_SAMPLE_STATS)?,
            sample_state: source.take(MAP_SAMPLE_STATE)?,
            grace_done: source
                .take(MAP_GRACE_DONE)
                .ok()
                .and_then(grace_record::usable),
        })
    }

    /// Opens the maps pinned in `dir` (an interface's pin directory).
    pub fn open_pinned(dir: &Path) -> Result<Self, LoaderError> {
        Self::open(dir, MapSource::Pinned(dir))
    }

    /// [`open_pinned`](Self::open_pinned) for reading only: works on a read-only
    /// bpffs; every write through these handles fails (EPERM).
    pub fn open_pinned_read_only(dir: &Path) -> Result<Self, LoaderError> {
        Self::open(dir, MapSource::PinnedReadOnly(dir))
    }

    fn open(dir: &Path, source: MapSource<'_>) -> Result<Self, LoaderError> {
        super::pins::check_filter_dir(dir)?;
        Self::take(source).map_err(|error| {
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
        crate::test_hook::stop_at("before-flip");
        self.set_active_generation(next)?;
        crate::test_hook::stop_at("after-flip");
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
        // The tables' plans, made here or ahead, beside the steps before this
        // one (`Prebuilt`).
        let (plans, waited) = crate::parallel::join(
            || Prebuilt::take_or_plan(compiled),
            || match grace {
                Grace::Early(writer, dir) if writer.grace_covers(dir, on_record, word) => Ok(()),
                Grace::Own if on_record => Ok(()),
                _ => grace::wait_for_running_programs(chunks, generation, names.1),
            },
        );
        waited?;
        // Before the first write: a policy the kernel cannot hold changes
        // nothing. The plan is all a table's build can fail on: laying it out
        // cannot.
        let (v4, v6) = plans?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            classes_v4 = v4.classes().len(),
            classes_v6 = v6.classes().len(),
            "source tables planned"
        );
        // A family the policy in force had to put in chunks is laid out in a
        // vector, not tried in the preallocated map first (a table that size
        // rarely shrinks below it in one apply). Only a shortcut: a config that
        // cannot be read costs a try that overflows and falls back the same way.
        let in_force = self
            .config(1 - generation)
            .ok()
            .filter(|config| config.valid != 0);
        let direct = |flag| in_force.is_none_or(|config| config.inline_tables & flag != 0);
        let direct = (direct(TABLE_INLINE_V4), direct(TABLE_INLINE_V6));
        // First write: from here until the end the copy is not a complete policy, so
        // nothing (a rollback, `status`) may take it for one, even if this process dies.
        self.invalidate(generation)?;
        // Separate maps: the families are laid out (and new chunks published,
        // each publish waiting out a grace period) side by side.
        let laid = crate::parallel::join(
            || self.src_v4.write_plan(generation, &v4, direct.0),
            || self.src_v6.write_plan(generation, &v6, direct.1),
        );
        let laid = (laid.0?, laid.1?);
        crate::test_hook::stop_at("tables-written");
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            v4 = laid.0.len,
            v6 = laid.1.len,
            "source tables written"
        );
        write_ports(&self.policy, generation, compiled)?;
        for (offset, classes) in [
            (POLICY_CLASSES_V4_OFFSET, v4.classes()),
            (POLICY_CLASSES_V6_OFFSET, v6.classes()),
        ] {
            write_at(
                self.policy.fd().as_fd(),
                policy_offset(generation) + offset,
                classes,
            )
            .map_err(|e| LoaderError::io("writing the source classes in", MAP_POLICY, e))?;
        }
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "ports and classes written"
        );
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
        // From the classes written: what the program reads is what says whether
        // a family's sources can be management or deny.
        let unflagged = |classes: &[SourceEntry], bit| {
            if classes
                .iter()
                .all(|c| c.flags & (SRC_MANAGEMENT | SRC_DENY) == 0)
            {
                bit
            } else {
                0
            }
        };
        let mut config = GenConfig {
            unflagged: unflagged(v4.classes(), UNFLAGGED_V4)
                | unflagged(v6.classes(), UNFLAGGED_V6),
            directory_bits_v4: laid.0.directory.bits,
            directory_bits_v6: laid.1.directory.bits,
            directory_shift_v4: laid.0.directory.shift,
            directory_shift_v6: laid.1.directory.shift,
            directory_base_v4: laid.0.directory.base,
            directory_base_v6: laid.1.directory.base,
            inline_tables: inline(laid.0.placement, TABLE_INLINE_V4)
                | inline(laid.1.placement, TABLE_INLINE_V6),
            table_len_v4: laid.0.len as u32,
            table_len_v6: laid.1.len as u32,
            classes_v4: v4.classes().len() as u32,
            classes_v6: v6.classes().len() as u32,
            ..compiled.config
        };
        // From the prefixes the tables were made of, by the same cut.
        compiled.set_flag_tables(&mut config);
        self.write_config(generation, &config)
    }

    /// Marks `generation` as not holding a complete policy.
    fn invalidate(&mut self, generation: u32) -> Result<(), LoaderError> {
        let mut config = self.config(generation)?;
        if config.valid != 0 {
            config.valid = 0;
            self.write_config(generation, &config)?;
        }
        Ok(())
    }

    /// `generation`'s config as the program reads it (valid or not).
    pub(super) fn config(&self, generation: u32) -> Result<GenConfig, LoaderError> {
        let config = self
            .read_policy::<GenConfig>(generation, POLICY_CONFIG_OFFSET, 1)
            .map_err(|e| LoaderError::io("reading the config in", MAP_POLICY, e))?;
        Ok(config[0])
    }

    /// `count` values of `T` from byte `offset` of `generation`'s `POLICY` value
    /// (any byte pattern must be a valid `T`): through a mapping, or where the
    /// maps were opened only to read (`status` on a read-only bpffs), by copying
    /// the whole value (the kernel maps a map only shared, which a descriptor
    /// that may only read cannot: EINVAL).
    pub(super) fn read_policy<T: Copy + Default>(
        &self,
        generation: u32,
        offset: usize,
        count: usize,
    ) -> std::io::Result<Vec<T>> {
        let fd = self.policy.fd().as_fd();
        match read_at::<T>(fd, policy_offset(generation) + offset, count) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EACCES)) => {
                let mut value = vec![0u8; POLICY_BYTES];
                super::batch::lookup_u32_key_bytes(&self.policy, generation & 1, &mut value)?;
                let bytes = value
                    .get(offset..offset + count * size_of::<T>())
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
                let mut out = vec![T::default(); count];
                // SAFETY: `bytes` holds exactly `count` values of `T`, which
                // accepts any bytes; copied byte for byte (no alignment needed).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        out.as_mut_ptr().cast::<u8>(),
                        bytes.len(),
                    );
                }
                Ok(out)
            }
            read => read,
        }
    }

    fn write_config(&self, generation: u32, config: &GenConfig) -> Result<(), LoaderError> {
        let offset = policy_offset(generation) + POLICY_CONFIG_OFFSET;
        write_at(
            self.policy.fd().as_fd(),
            offset,
            std::slice::from_ref(config),
        )
        .map_err(|e| LoaderError::io("writing the config in", MAP_POLICY, e))
    }
}

/// `POLICY` if its values have this layout's size: every read and write of it
/// is by offset, and a lookup copies a whole value into a buffer of that size.
fn policy_map(map: MapData) -> Result<MapData, LoaderError> {
    let size = map.info().map_err(map_err(MAP_POLICY))?.value_size() as usize;
    if size != POLICY_BYTES {
        return Err(LoaderError::Map {
            name: MAP_POLICY,
            source: MapError::InvalidValueSize {
                size,
                expected: POLICY_BYTES,
            },
        });
    }
    Ok(map)
}

/// Byte offset of `generation`'s value in `POLICY`.
pub(super) fn policy_offset(generation: u32) -> usize {
    (generation & 1) as usize * POLICY_BYTES
}

/// Writes every port slot of `generation` (zero where no rule covers the port)
/// straight into a mapping of its part of `POLICY` (the TCP and UDP tables lie
/// end to end, 2 MiB): each covered port's rule mask with its lowest rule and
/// that rule's counter worked out (`PortSlot::new`), with no copy built first.
fn write_ports(policy: &MapData, generation: u32, compiled: &Compiled) -> Result<(), LoaderError> {
    let monitor = compiled.config.mode == MODE_MONITOR;
    let slots = PORT_SLOTS as usize;
    let offset = policy_offset(generation) + POLICY_TCP_OFFSET;
    with_range(
        policy.fd().as_fd(),
        offset,
        2 * slots * size_of::<PortSlot>(),
        true,
        |memory| {
            // SAFETY: the mapping holds the two tables from `memory`, aligned for
            // `PortSlot` (a value's offsets are multiples of 8 from a page), and no
            // program reads this generation while it is written.
            let table =
                unsafe { std::slice::from_raw_parts_mut(memory.cast::<PortSlot>(), 2 * slots) };
            let (tcp, udp) = table.split_at_mut(slots);
            for (table, ports) in [(tcp, &compiled.tcp_ports), (udp, &compiled.udp_ports)] {
                ports.fill_dense(table, |rules| PortSlot::new(rules, generation, monitor));
            }
        },
    )
    .map_err(|e| LoaderError::io("writing the port tables in", MAP_POLICY, e))
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
            window_jiffies: crate::kernel_hz::kernel_hz(),
        };
        self.sampling
            .set(0, config, 0)
            .map_err(map_err(MAP_SAMPLING))
    }
}

impl PolicyMaps {
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
            &ranges::table(&junk.v4, INLINE_TABLE_V4 as usize)?,
        )?;
        self.src_v6.write(
            generation,
            &ranges::table(&junk.v6, INLINE_TABLE_V6 as usize)?,
        )?;
        Ok(())
    }
}
