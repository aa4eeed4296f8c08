//! Writes and reads the kernel's source tables. A generation's table goes into the
//! preallocated map (`SRC_V4_INLINE`, `SRC_V6_INLINE`: reads inlined by the
//! verifier) when it fits there, else into an inner map of the array of maps
//! (`SRC_V4`, `SRC_V6`) built at exactly its size. Either is filled through a memory
//! mapping (one copy, no system call per entry) while its generation is inactive;
//! an inner map is put in its generation's slot only once full, and the one it
//! replaces is freed by the kernel once no program holds it.

use std::os::fd::AsFd as _;

use super::{
    LoaderError,
    mapping::{read_elements, write_elements},
};
use crate::compile::ranges::{self, SourceTable};
use airlock_common::SOURCE_TABLE_FLAGS;
use aya::{
    Pod,
    maps::{Array, ArrayOfMaps, IterableMap as _, MapData, MapError},
};

pub(crate) type TableMap<R> = ArrayOfMaps<MapData, Array<MapData, R>>;

/// One family's tables: the preallocated map (one value per generation, holding
/// `capacity` elements `R`) and the array of exactly sized maps.
pub(crate) struct Tables<R: Pod> {
    pub preallocated: MapData,
    pub sized: TableMap<R>,
    /// Elements per generation of `preallocated` used (its size, but for tests).
    pub capacity: u32,
    pub names: (&'static str, &'static str),
}

/// Where a generation's table was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    Preallocated,
    Sized,
}

impl<R: Element> Tables<R> {
    /// Writes `table` as `generation`'s (inactive) table: into the preallocated map
    /// if it fits, else into a new inner map.
    pub(crate) fn write(
        &mut self,
        generation: u32,
        table: &SourceTable<R>,
    ) -> Result<Placement, LoaderError> {
        if table.elements.len() <= self.capacity as usize {
            write_preallocated(&self.preallocated, generation, table, self.names.0)?;
            // A large inner table left from an earlier policy would hold its memory
            // until this generation next needed one: give it back now.
            release(&mut self.sized, generation, self.names.1)?;
            Ok(Placement::Preallocated)
        } else {
            write(&mut self.sized, generation, table, self.names.1)?;
            Ok(Placement::Sized)
        }
    }

    /// `generation`'s table, `len` elements with `directory_bits`, from where it was
    /// placed (None: an inner slot never written).
    pub(crate) fn read(
        &self,
        generation: u32,
        placement: Placement,
        directory_bits: u32,
        len: u32,
    ) -> Result<Option<SourceTable<R>>, LoaderError> {
        match placement {
            Placement::Sized => read(&self.sized, generation, directory_bits, self.names.1),
            Placement::Preallocated => {
                let stride = stride::<R>(&self.preallocated);
                let len = (len as usize).min(stride);
                let elements = read_elements(
                    self.preallocated.fd().as_fd(),
                    generation as usize * stride,
                    len,
                )
                .map_err(|e| LoaderError::io("reading a source table of", self.names.0, e))?;
                Ok(Some(SourceTable {
                    directory_bits,
                    elements,
                }))
            }
        }
    }
}

/// Copies `table` into `generation`'s part of the preallocated map.
fn write_preallocated<R: Element>(
    map: &MapData,
    generation: u32,
    table: &SourceTable<R>,
    name: &'static str,
) -> Result<(), LoaderError> {
    let stride = stride::<R>(map);
    if table.elements.len() > stride {
        return Err(LoaderError::Map {
            name,
            source: MapError::OutOfBounds {
                index: table.elements.len() as u32,
                max_entries: stride as u32,
            },
        });
    }
    // Only the inactive generation's part is written, which no packet reads.
    write_elements(
        map.fd().as_fd(),
        generation as usize * stride,
        &table.elements,
    )
    .map_err(|e| LoaderError::io("filling a source table of", name, e))
}

/// Elements `R` per generation of a preallocated table map (its value size).
fn stride<R>(map: &MapData) -> usize {
    map.info()
        .map(|info| info.value_size() as usize / size_of::<R>())
        .unwrap_or(0)
}

/// Replaces a large inner table in `generation`'s slot by an empty one-element map.
fn release<R: Element>(
    tables: &mut TableMap<R>,
    generation: u32,
    name: &'static str,
) -> Result<(), LoaderError> {
    match tables.get(&generation, 0) {
        Ok(inner) if inner.len() > 1 => {}
        Ok(_) | Err(MapError::KeyNotFound) => return Ok(()),
        Err(source) => return Err(LoaderError::Map { name, source }),
    }
    let empty = Array::<MapData, R>::create(1, SOURCE_TABLE_FLAGS)
        .map_err(|source| LoaderError::Map { name, source })?;
    tables
        .set(generation, &empty, 0)
        .map_err(|source| LoaderError::Map { name, source })
}

/// A table's elements: the layouts the program reads, copied as bytes.
pub(crate) trait Element: ranges::Element + Pod {}
impl<T: ranges::Element + Pod> Element for T {}

/// Builds a table map holding `table` and puts it in `generation`'s slot.
fn write<R: Element>(
    tables: &mut TableMap<R>,
    generation: u32,
    table: &SourceTable<R>,
    name: &'static str,
) -> Result<(), LoaderError> {
    let map_err = |source| LoaderError::Map { name, source };
    let len = u32::try_from(table.elements.len()).map_err(|_| {
        map_err(MapError::OutOfBounds {
            index: u32::MAX,
            max_entries: u32::MAX,
        })
    })?;
    let inner = Array::<MapData, R>::create(len, SOURCE_TABLE_FLAGS).map_err(map_err)?;
    // Nothing reads the new map before it is published below.
    write_elements(inner.map().fd().as_fd(), 0, &table.elements)
        .map_err(|e| LoaderError::io("filling a source table of", name, e))?;
    tables.set(generation, &inner, 0).map_err(map_err)
}

/// The table in `generation`'s slot (None: the slot is empty), with `directory_bits`
/// from the generation's config.
fn read<R: Element>(
    tables: &TableMap<R>,
    generation: u32,
    directory_bits: u32,
    name: &'static str,
) -> Result<Option<SourceTable<R>>, LoaderError> {
    let inner = match tables.get(&generation, 0) {
        Ok(inner) => inner,
        Err(MapError::KeyNotFound) => return Ok(None),
        Err(source) => return Err(LoaderError::Map { name, source }),
    };
    let elements = read_elements(inner.map().fd().as_fd(), 0, inner.len() as usize)
        .map_err(|e| LoaderError::io("reading a source table of", name, e))?;
    Ok(Some(SourceTable {
        directory_bits,
        elements,
    }))
}
