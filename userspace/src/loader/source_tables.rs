//! Writes and reads the kernel's source tables. A table of either family always
//! begins in its preallocated map (`SRC_V4_INLINE`, `SRC_V6_INLINE`: values of
//! 4 MiB, two a generation for IPv4 and one for IPv6, the directory and the first
//! runs), and what does not fit there goes into the next chunk maps of the same
//! size in the generation's slots of an array of maps (`SRC_V4`, `SRC_V6`; the
//! program finds element `i` in chunk `i >> 20`, IPv6 word `i` in chunk `i >>
//! 19`, chunk `k` in the generation's preallocated value `k` while there is
//! one). The verifier inlines reads of both. Every map is filled
//! through a memory mapping (one copy, no system call per entry) while its
//! generation is inactive and no packet still reads it; a new chunk is put in its
//! slot only once full, and chunks a smaller table no longer needs are released.

use std::os::fd::{AsFd as _, AsRawFd as _};

use airlock_common::{
    CHUNK_BYTES_V4, CHUNK_BYTES_V6, CHUNKS_PER_GENERATION, GENERATIONS, SOURCE_CHUNK_FLAGS,
    SourceRangeV4, SourceRangeV6,
};
use aya::{
    Pod,
    maps::{Array, ArrayOfMaps, IterableMap as _, Map, MapData, MapError},
    sys::SyscallError,
};

use super::{
    LoaderError, batch,
    mapping::{Fixed, read_elements, with_range, write_elements},
};
use crate::compile::ranges::{self, Directory, Plan, SourceTable};

/// An IPv4 chunk map's one value, as bytes (the program sees
/// `[SourceRangeV4; INLINE_TABLE_V4]`); a family's is its [`Element::Chunk`].
type Chunk = [u8; CHUNK_BYTES_V4];
/// An array of chunk maps whose values are `C`.
type ChunkSlots<T, C = Chunk> = ArrayOfMaps<T, Array<MapData, C>>;

/// One family's tables: the preallocated map (`values` values per generation,
/// each a chunk's worth of elements `R`) and the array of chunk maps.
pub(crate) struct Tables<R: Pod> {
    pub preallocated: MapData,
    /// The array of chunk maps (`aya::maps::Map::ArrayOfMaps`).
    pub chunks: Map,
    /// What the table builder is told the first preallocated value holds (its
    /// size; 0 for tests, which puts the runs in chunk maps).
    pub capacity: u32,
    /// Values of `preallocated` per generation: chunks 0 to `values - 1` of a
    /// generation's table. Read from the map (its entries over the
    /// generations), so the loader writes what the object it loaded reads.
    pub values: usize,
    pub names: (&'static str, &'static str),
    pub element: std::marker::PhantomData<R>,
}

/// Where a generation's table went, and what its config says of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Laid {
    pub placement: Placement,
    pub directory: Directory,
    /// Elements written.
    pub len: usize,
}

/// Where a generation's table was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    Preallocated,
    Chunked,
}

impl Placement {
    /// Where a generation's config (`inline_tables`) says the table of the family
    /// `flag` (`TABLE_INLINE_V4`, `TABLE_INLINE_V6`) is.
    pub(crate) fn recorded(inline_tables: u32, flag: u32) -> Self {
        if inline_tables & flag != 0 {
            Placement::Preallocated
        } else {
            Placement::Chunked
        }
    }
}

/// A table as the kernel holds it, for `status`: how large a policy became and
/// where its memory went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TableShape {
    /// Elements after the directory: ranges of addresses sharing one answer
    /// (what a lookup searches; for IPv4 with a copy of a run's first range
    /// where it begins a run and padding).
    pub ranges: u32,
    /// Directory slots in front of them.
    pub directory_slots: u32,
    /// `preallocated` (the fixed per-generation map) or `chunks`.
    pub placement: &'static str,
    /// Chunk maps holding what the preallocated value has no room for (0 when
    /// it holds the whole table).
    pub chunk_maps: u32,
    /// Bytes of directory and ranges.
    pub bytes: u64,
}

impl TableShape {
    /// The shape of a table of `elements` elements `R`, `directory_bits` of them a
    /// directory, placed as `placement` says, its first `values` chunks' worth in
    /// the preallocated map.
    pub(crate) fn of<R: Element>(
        elements: u32,
        directory_bits: u32,
        placement: Placement,
        values: usize,
    ) -> Self {
        let directory_slots = 1u32.checked_shl(directory_bits).unwrap_or(0);
        let chunked = placement == Placement::Chunked;
        TableShape {
            ranges: elements.saturating_sub(R::directory_elements(directory_slots)),
            directory_slots,
            placement: if chunked { "chunks" } else { "preallocated" },
            chunk_maps: if chunked {
                // The first `values` chunks' worth are the preallocated values.
                let held = (elements as usize).div_ceil(chunk_elements::<R>());
                held.saturating_sub(values) as u32
            } else {
                0
            },
            bytes: u64::from(elements) * size_of::<R>() as u64,
        }
    }
}

impl<R: Element> Tables<R> {
    /// Writes `table` as `generation`'s (inactive, no longer read) table: its
    /// first `values` chunks' worth into the preallocated map, the rest into
    /// chunk maps `values`, `values + 1`, ...
    pub(crate) fn write(
        &mut self,
        generation: u32,
        table: &SourceTable<R>,
    ) -> Result<Placement, LoaderError> {
        let preallocated = self.values * chunk_elements::<R>();
        let (first, rest) = table
            .elements
            .split_at(table.elements.len().min(preallocated));
        write_elements_preallocated(
            &self.preallocated,
            generation,
            self.values,
            first,
            self.names.0,
        )?;
        if rest.is_empty() {
            // Chunks left from an earlier, larger policy would hold their memory
            // until this generation next needed them: give them back now.
            release(&self.chunks, generation, self.values, self.names.1)?;
            return Ok(Placement::Preallocated);
        }
        write_chunks(
            &mut self.chunks,
            generation,
            self.values,
            rest,
            self.names.1,
        )?;
        Ok(Placement::Chunked)
    }

    /// Lays `plan`'s table out as `generation`'s (inactive, no longer read):
    /// where it fits in the preallocated map (and `direct`), straight into the
    /// map's memory, with no copy built first and no chunk; otherwise built,
    /// then written as [`write`](Self::write) writes it. Either way the
    /// elements written are those [`ranges::table`] makes. A layout that finds
    /// it does not fit leaves a half-written table in a generation its caller
    /// marked invalid, and the built one overwrites it.
    pub(crate) fn write_plan(
        &mut self,
        generation: u32,
        plan: &Plan<R>,
        direct: bool,
    ) -> Result<Laid, LoaderError> {
        let capacity = self.capacity as usize;
        // The generation's preallocated values, end to end in the map's memory
        // as a table's first chunks are in its elements.
        let part = self.values * stride::<R>(&self.preallocated);
        let room = part.min(self.values * chunk_elements::<R>());
        // The first run follows the directory only for a table given the room
        // of a whole chunk (a smaller capacity is a test's: chunks only).
        let may_fit = capacity >= chunk_elements::<R>()
            && R::directory_elements(R::SLOTS as u32) as usize + plan.least_ranges() <= room;
        if direct && may_fit {
            let mut laid = None;
            let offset = generation as usize * part * size_of::<R>();
            with_range(
                self.preallocated.fd().as_fd(),
                offset,
                room * size_of::<R>(),
                true,
                |memory| {
                    // SAFETY: the mapping holds `room` elements from `memory`,
                    // aligned for `R` (a generation's part starts at a multiple of
                    // the value size, a multiple of 8, from a page), and no
                    // program reads this generation while it is written.
                    let memory =
                        unsafe { std::slice::from_raw_parts_mut(memory.cast::<R>(), room) };
                    let mut out = Fixed::new(memory);
                    let directory = plan.lay_out(capacity, &mut out);
                    if !ranges::Out::full(&out) {
                        laid = Some((directory, ranges::Out::len(&out)));
                    }
                },
            )
            .map_err(|e| LoaderError::io("filling a source table of", self.names.0, e))?;
            if let Some((directory, len)) = laid {
                // As `write` does when the table fits here.
                release(&self.chunks, generation, self.values, self.names.1)?;
                return Ok(Laid {
                    placement: Placement::Preallocated,
                    directory,
                    len,
                });
            }
            tracing::debug!(
                family = R::FAMILY,
                "source table past the preallocated map: built"
            );
        }
        let mut elements = Vec::new();
        let directory = plan.lay_out(capacity, &mut elements);
        let len = elements.len();
        let table = SourceTable {
            directory,
            elements,
            classes: Vec::new(),
        };
        Ok(Laid {
            placement: self.write(generation, &table)?,
            directory,
            len,
        })
    }

    /// `generation`'s table, `len` elements indexed by `directory` (None: chunks
    /// never written), without its classes.
    pub(crate) fn read(
        &self,
        generation: u32,
        directory: Directory,
        len: u32,
    ) -> Result<Option<SourceTable<R>>, LoaderError> {
        if len == 0 {
            return Ok(None);
        }
        let preallocated = self.values * chunk_elements::<R>();
        let first = (len as usize).min(preallocated);
        let mut elements = read_elements(
            self.preallocated.fd().as_fd(),
            generation as usize * preallocated,
            first,
        )
        .map_err(|e| LoaderError::io("reading a source table of", self.names.0, e))?;
        if len as usize > first {
            let Some(rest) = read_chunks::<R>(
                &self.chunks,
                generation,
                self.values,
                len - first as u32,
                self.names.1,
            )?
            else {
                return Ok(None);
            };
            elements.extend(rest);
        }
        Ok(Some(SourceTable {
            directory,
            elements,
            classes: Vec::new(),
        }))
    }
}

/// Copies `elements` to the start of `generation`'s part of the preallocated map,
/// its `values` values end to end (as the map's memory holds them).
fn write_elements_preallocated<R: Element>(
    map: &MapData,
    generation: u32,
    values: usize,
    elements: &[R],
    name: &'static str,
) -> Result<(), LoaderError> {
    let part = values * stride::<R>(map);
    if elements.len() > part {
        return Err(LoaderError::Map {
            name,
            source: MapError::OutOfBounds {
                index: elements.len() as u32,
                max_entries: part as u32,
            },
        });
    }
    // Only the inactive generation's part is written, which no packet reads.
    write_elements(map.fd().as_fd(), generation as usize * part, elements)
        .map_err(|e| LoaderError::io("filling a source table of", name, e))
}

/// Values of a preallocated table map per generation. An error, not a guess,
/// when the kernel cannot say: a wrong count would put one generation's table
/// in the other's values.
pub(crate) fn values_per_generation(
    map: &MapData,
    name: &'static str,
) -> Result<usize, LoaderError> {
    let entries = map
        .info()
        .map_err(|source| LoaderError::Map { name, source })?
        .max_entries();
    if entries == 0 || entries % GENERATIONS != 0 {
        return Err(LoaderError::Map {
            name,
            source: MapError::OutOfBounds {
                index: GENERATIONS,
                max_entries: entries,
            },
        });
    }
    Ok((entries / GENERATIONS) as usize)
}

/// Elements `R` per generation of a preallocated table map (its value size).
fn stride<R>(map: &MapData) -> usize {
    map.info()
        .map(|info| info.value_size() as usize / size_of::<R>())
        .unwrap_or(0)
}

/// Elements `R` per chunk.
const fn chunk_elements<R: Element>() -> usize {
    size_of::<R::Chunk>() / size_of::<R>()
}

/// Slot of `generation`'s chunk `chunk` in the array of maps.
fn slot(generation: u32, chunk: usize) -> u32 {
    generation * CHUNKS_PER_GENERATION + chunk as u32
}

/// Empties `generation`'s chunk slots from `from` on. Only slots holding a map are
/// touched: each change to an array of maps waits for running programs (an RCU
/// grace period).
fn release(
    chunks: &Map,
    generation: u32,
    from: usize,
    name: &'static str,
) -> Result<(), LoaderError> {
    ChunkSlots::<&MapData>::try_from(chunks).map_err(|source| LoaderError::Map { name, source })?;
    let Map::ArrayOfMaps(outer) = chunks else {
        return Ok(()); // try_from above accepts nothing else
    };
    let release_err = |e| LoaderError::io("releasing a source table chunk of", name, e);
    for chunk in from..CHUNKS_PER_GENERATION as usize {
        let index = slot(generation, chunk);
        if batch::lookup_u32_key(outer, index)
            .map_err(release_err)?
            .is_some()
        {
            batch::delete_u32_key(outer, index).map_err(release_err)?;
        }
    }
    Ok(())
}

/// Returns once programs that started before the call have finished, by the array
/// of maps' own guarantee: an update of one returns only after running programs are
/// done (the kernel's `maybe_wait_bpf_programs`). A new, empty chunk goes into
/// `generation`'s last slot, which no table reaches (the largest takes 34 chunks),
/// and out again.
pub(crate) fn wait_through(
    chunks: &Map,
    generation: u32,
    name: &'static str,
) -> Result<(), LoaderError> {
    const { assert!(CHUNKS_PER_GENERATION >= 35) };
    let Map::ArrayOfMaps(outer) = chunks else {
        return ChunkSlots::<&MapData>::try_from(chunks)
            .map(drop)
            .map_err(|source| LoaderError::Map { name, source });
    };
    let chunk = Array::<MapData, Chunk>::create(1, SOURCE_CHUNK_FLAGS)
        .map_err(|source| LoaderError::Map { name, source })?;
    let index = slot(generation, CHUNKS_PER_GENERATION as usize - 1);
    let fd = chunk.map().fd().as_fd().as_raw_fd() as u32;
    let wait_err = |e| LoaderError::io("waiting for running programs through", name, e);
    batch::update_u32_key(outer, index, fd).map_err(wait_err)?;
    batch::delete_u32_key(outer, index).map_err(wait_err)
}

/// Whether `get` on a chunk slot failed because the slot is empty, or because the map
/// in it may not be opened by id (EPERM without CAP_SYS_ADMIN).
fn empty_or_unopenable(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(SyscallError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::EPERM)
        }
        _ => false,
    }
}

/// A table's elements: the layouts the program reads, copied as bytes.
pub(crate) trait Element: ranges::Element + Pod {
    /// A chunk map's one value, as bytes: the family's template's exact size
    /// (the kernel refuses an inner map of another).
    type Chunk: Pod;
    /// Elements a directory of `slots` slots takes (IPv6: two slots a word,
    /// and the word of the two outside its window).
    fn directory_elements(slots: u32) -> u32;
}
impl Element for SourceRangeV4 {
    type Chunk = [u8; CHUNK_BYTES_V4];
    fn directory_elements(slots: u32) -> u32 {
        slots
    }
}
impl Element for SourceRangeV6 {
    type Chunk = [u8; CHUNK_BYTES_V6];
    fn directory_elements(slots: u32) -> u32 {
        slots / 2 + 1
    }
}

/// Puts `elements` in `generation`'s chunks from chunk `first` on, then releases
/// the slots after them. A
/// chunk the generation already holds (the policy before last) is overwritten in
/// place: the caller has waited out the programs that read it, and publishing a
/// fresh map instead waits out an RCU grace period. A slot left empty, or holding a
/// map this process may not open, gets a new map, filled before it is published.
fn write_chunks<R: Element>(
    chunks: &mut Map,
    generation: u32,
    first: usize,
    elements: &[R],
    name: &'static str,
) -> Result<(), LoaderError> {
    let map_err = |source| LoaderError::Map { name, source };
    let fill_err = |e| LoaderError::io("filling a source table chunk of", name, e);
    let parts: Vec<&[R]> = elements.chunks(chunk_elements::<R>()).collect();
    // The last slot is `wait_through`'s.
    if first + parts.len() >= CHUNKS_PER_GENERATION as usize {
        return Err(map_err(MapError::OutOfBounds {
            index: (first + parts.len()) as u32,
            max_entries: CHUNKS_PER_GENERATION - 1,
        }));
    }
    let mut fresh = Vec::new();
    {
        let slots = ChunkSlots::<&MapData, R::Chunk>::try_from(&*chunks).map_err(map_err)?;
        for (index, part) in (first..).zip(&parts) {
            match slots.get(&slot(generation, index), 0) {
                Ok(held) => write_elements(held.map().fd().as_fd(), 0, part).map_err(fill_err)?,
                // A slot that holds a map which cannot be opened (by id, which takes
                // CAP_SYS_ADMIN; the agent's unit grants CAP_BPF) gets a new one,
                // published below in its place.
                Err(error) if empty_or_unopenable(&error) => {
                    let chunk = Array::<MapData, R::Chunk>::create(1, SOURCE_CHUNK_FLAGS)
                        .map_err(map_err)?;
                    write_elements(chunk.map().fd().as_fd(), 0, part).map_err(fill_err)?;
                    fresh.push((index, chunk));
                }
                Err(source) => return Err(map_err(source)),
            }
        }
    }
    publish(chunks, generation, &fresh, name)?;
    release(chunks, generation, first + parts.len(), name)
}

/// Puts the new chunks `fresh` (index, map) in `generation`'s slots. One batch call:
/// the kernel waits for running programs once per call to an array of maps, so
/// slot by slot would wait once per chunk.
fn publish<C: Pod>(
    chunks: &mut Map,
    generation: u32,
    fresh: &[(usize, Array<MapData, C>)],
    name: &'static str,
) -> Result<(), LoaderError> {
    let map_err = |source| LoaderError::Map { name, source };
    if let Map::ArrayOfMaps(outer) = &*chunks {
        let keys: Vec<u32> = fresh.iter().map(|(i, _)| slot(generation, *i)).collect();
        let fds: Vec<u32> = fresh
            .iter()
            .map(|(_, chunk)| chunk.map().fd().as_fd().as_raw_fd() as u32)
            .collect();
        match super::batch::update(
            outer,
            batch::as_bytes(&keys),
            batch::as_bytes(&fds),
            keys.len(),
        ) {
            Ok(()) => return Ok(()),
            // Older kernels have no batch update for arrays of maps.
            Err(e) if batch::unsupported(&e) => {}
            Err(e) => return Err(LoaderError::io("publishing the chunks of", name, e)),
        }
    }
    let mut slots = ChunkSlots::<&mut MapData, C>::try_from(&mut *chunks).map_err(map_err)?;
    for (index, chunk) in fresh {
        slots
            .set(slot(generation, *index), chunk, 0)
            .map_err(map_err)?;
    }
    Ok(())
}

/// The first `len` elements of `generation`'s chunks from chunk `first` on
/// (None: that chunk was never written).
fn read_chunks<R: Element>(
    chunks: &Map,
    generation: u32,
    first: usize,
    len: u32,
    name: &'static str,
) -> Result<Option<Vec<R>>, LoaderError> {
    let slots = ChunkSlots::<&MapData, R::Chunk>::try_from(chunks)
        .map_err(|source| LoaderError::Map { name, source })?;
    let per_chunk = chunk_elements::<R>();
    let len = len as usize;
    let mut elements = Vec::with_capacity(len);
    for chunk in first..first + len.div_ceil(per_chunk).max(1) {
        let map = match slots.get(&slot(generation, chunk), 0) {
            Ok(map) => map,
            Err(MapError::KeyNotFound) if chunk == first => return Ok(None),
            Err(source) => return Err(LoaderError::Map { name, source }),
        };
        let count = (len - elements.len()).min(per_chunk);
        elements.extend(
            read_elements::<R>(map.map().fd().as_fd(), 0, count)
                .map_err(|e| LoaderError::io("reading a source table chunk of", name, e))?,
        );
    }
    Ok(Some(elements))
}
