//! Writes and reads the kernel's source tables (`SRC_V4`, `SRC_V6`): per generation,
//! one inner array map built at exactly the size of the policy's table. A new table
//! is filled through a memory mapping (one copy, no system call per entry) and only
//! then put in its generation's slot, so the program never sees a partial table;
//! the table it replaces is freed by the kernel once no program holds it.

use std::{
    num::NonZeroUsize,
    os::fd::{AsFd as _, BorrowedFd},
    ptr::NonNull,
};

use airlock_common::{SOURCE_TABLE_FLAGS, SourceRangeV4, SourceRangeV6};
use aya::{
    Pod,
    maps::{Array, ArrayOfMaps, IterableMap as _, MapData, MapError},
};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use super::LoaderError;
use crate::compile::ranges::SourceTable;

pub(crate) type TableMap<R> = ArrayOfMaps<MapData, Array<MapData, R>>;
pub(crate) type TablesV4 = TableMap<SourceRangeV4>;
pub(crate) type TablesV6 = TableMap<SourceRangeV6>;

/// A table's elements are the layouts the program reads.
pub(crate) trait Element: Pod + Default {}
impl Element for SourceRangeV4 {}
impl Element for SourceRangeV6 {}

/// Builds a table map holding `table` and puts it in `generation`'s slot.
pub(crate) fn write<R: Element>(
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
    let bytes = table.elements.len() * size_of::<R>();
    with_mapping(inner.map().fd().as_fd(), bytes, true, |memory| {
        // SAFETY: `memory` maps the array's `bytes` bytes, laid out as `[R]` (element
        // sizes are multiples of 8, the kernel's element stride); nothing else
        // writes the new map before it is published below.
        unsafe {
            std::ptr::copy_nonoverlapping(
                table.elements.as_ptr().cast::<u8>(),
                memory.as_ptr().cast::<u8>(),
                bytes,
            );
        }
    })
    .map_err(|e| LoaderError::io("filling a source table of", name, e))?;
    tables.set(generation, &inner, 0).map_err(map_err)
}

/// The table in `generation`'s slot (None: the slot is empty), with `directory_bits`
/// from the generation's config.
pub(crate) fn read<R: Element>(
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
    let len = inner.len() as usize;
    let mut elements = vec![R::default(); len];
    let bytes = len * size_of::<R>();
    with_mapping(inner.map().fd().as_fd(), bytes, false, |memory| {
        // SAFETY: as in `write`; any byte pattern is a valid `R` (`Pod`).
        unsafe {
            std::ptr::copy_nonoverlapping(
                memory.as_ptr().cast::<u8>(),
                elements.as_mut_ptr().cast::<u8>(),
                bytes,
            );
        }
    })
    .map_err(|e| LoaderError::io("reading a source table of", name, e))?;
    Ok(Some(SourceTable {
        directory_bits,
        elements,
    }))
}

/// Runs `f` on a shared mapping of the first `bytes` bytes of an mmapable array map.
fn with_mapping(
    fd: BorrowedFd<'_>,
    bytes: usize,
    writable: bool,
    f: impl FnOnce(NonNull<std::ffi::c_void>),
) -> std::io::Result<()> {
    let Some(length) = NonZeroUsize::new(bytes) else {
        return Ok(());
    };
    let prot = if writable {
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
    } else {
        ProtFlags::PROT_READ
    };
    // SAFETY: a fresh mapping of the map's memory, unmapped before returning; no
    // reference to it outlives `f`.
    let memory = unsafe { mmap(None, length, prot, MapFlags::MAP_SHARED, fd, 0) }?;
    f(memory);
    // SAFETY: `memory` was mapped above with this length and is no longer used.
    unsafe { munmap(memory, bytes) }?;
    Ok(())
}
