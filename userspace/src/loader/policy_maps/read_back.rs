//! What a generation holds, read back from the kernel: its summary, the shape of
//! its source tables, its prefixes and port masks (for `status`, `airlock diff`
//! and rollbacks).

use airlock_common::{
    GenConfig, MAP_META, MAP_POLICY, MAP_SRC_V4, MAP_SRC_V6, MAX_CLASSES, POLICY_CLASSES_V4_OFFSET,
    POLICY_CLASSES_V6_OFFSET, POLICY_TCP_OFFSET, POLICY_UDP_OFFSET, PORT_SLOTS, PortSlot,
    SourceEntry, SourceRangeV4, SourceRangeV6, TABLE_INLINE_V4, TABLE_INLINE_V6,
};

use super::{LoaderError, PolicyMaps, map_err};
use crate::{
    compile::{
        PrefixEntry,
        ranges::{self, Directory, SourceTable},
    },
    loader::{
        meta::PolicySummary,
        source_tables::{Placement, TableShape},
    },
};

/// IPv4 and IPv6 source prefixes.
pub type SourcePrefixes = (Vec<PrefixEntry<4>>, Vec<PrefixEntry<16>>);

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
    pub(super) fn complete_config(
        &self,
        generation: u32,
    ) -> Result<Option<GenConfig>, LoaderError> {
        let config = self.config(generation)?;
        Ok((config.valid != 0).then_some(config))
    }

    /// `generation`'s config as the program reads it, if that copy holds a
    /// complete policy (tests read its flag tables back).
    pub fn generation_config(&self, generation: u32) -> Result<Option<GenConfig>, LoaderError> {
        self.complete_config(generation & 1)
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
                self.src_v4.values,
            ),
            TableShape::of::<SourceRangeV6>(
                config.table_len_v6,
                config.directory_bits_v6,
                placement(TABLE_INLINE_V6),
                self.src_v6.values,
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
        let (v4, v6) = self.generation_tables(generation)?;
        let v4 = match v4 {
            Some(table) => {
                ranges::prefixes(&table).ok_or(LoaderError::MalformedSourceTable(MAP_SRC_V4))?
            }
            None => Vec::new(),
        };
        let v6 = match v6 {
            Some(table) => {
                ranges::prefixes(&table).ok_or(LoaderError::MalformedSourceTable(MAP_SRC_V6))?
            }
            None => Vec::new(),
        };
        Ok((v4, v6))
    }

    /// `generation`'s IPv4 and IPv6 source tables as the kernel holds them: the
    /// elements its config counts, its directory and its classes (None for a
    /// table never written).
    #[allow(clippy::type_complexity)]
    pub fn generation_tables(
        &self,
        generation: u32,
    ) -> Result<
        (
            Option<SourceTable<SourceRangeV4>>,
            Option<SourceTable<SourceRangeV6>>,
        ),
        LoaderError,
    > {
        let generation = generation & 1;
        let config = self.config(generation)?;
        let classes = |offset, count: u32| {
            let count = (count as usize).min(MAX_CLASSES as usize);
            self.read_policy::<SourceEntry>(generation, offset, count)
                .map_err(|e| LoaderError::io("reading the source classes in", MAP_POLICY, e))
        };
        let v4 = match self.src_v4.read(
            generation,
            Directory {
                bits: config.directory_bits_v4,
                base: config.directory_base_v4,
                shift: config.directory_shift_v4,
            },
            config.table_len_v4,
        )? {
            Some(mut table) => {
                table.classes = classes(POLICY_CLASSES_V4_OFFSET, config.classes_v4)?;
                Some(table)
            }
            None => None,
        };
        let v6 = match self.src_v6.read(
            generation,
            Directory {
                bits: config.directory_bits_v6,
                base: config.directory_base_v6,
                shift: config.directory_shift_v6,
            },
            config.table_len_v6,
        )? {
            Some(mut table) => {
                table.classes = classes(POLICY_CLASSES_V6_OFFSET, config.classes_v6)?;
                Some(table)
            }
            None => None,
        };
        Ok((v4, v6))
    }

    /// The TCP and UDP port tables of `generation`, read back from the kernel (one
    /// slot per port).
    pub fn generation_port_slots(
        &self,
        generation: u32,
    ) -> Result<(Vec<PortSlot>, Vec<PortSlot>), LoaderError> {
        let read = |offset| {
            self.read_policy::<PortSlot>(generation, offset, PORT_SLOTS as usize)
                .map_err(|e| LoaderError::io("reading the port tables in", MAP_POLICY, e))
        };
        Ok((read(POLICY_TCP_OFFSET)?, read(POLICY_UDP_OFFSET)?))
    }

    /// The TCP and UDP port tables of `generation`, read back from the kernel (one
    /// rule mask per port).
    pub fn generation_ports(&self, generation: u32) -> Result<(Vec<u64>, Vec<u64>), LoaderError> {
        let (tcp, udp) = self.generation_port_slots(generation)?;
        let masks = |slots: Vec<PortSlot>| slots.iter().map(|slot| slot.rules).collect();
        Ok((masks(tcp), masks(udp)))
    }
}
