//! Shared memory mappings of mmapable array maps (`BPF_F_MMAPABLE`): the loader
//! fills and reads the large per-generation arrays (source tables, port masks)
//! with one copy instead of a system call per element.

use std::{num::NonZeroUsize, os::fd::BorrowedFd, ptr::NonNull};

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use crate::compile::ranges::Out;

/// Runs `f` on a shared mapping of the first `bytes` bytes of an mmapable array map.
pub(crate) fn with_mapping(
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

/// Copies `values` into the array's elements from `first` on (an array of `T`
/// whose element size is `size_of::<T>()`, a multiple of 8, so the kernel's
/// stride), mapping only as far as the last one written.
pub(crate) fn write_elements<T: Copy>(
    fd: BorrowedFd<'_>,
    first: usize,
    values: &[T],
) -> std::io::Result<()> {
    write_at(fd, first * size_of::<T>(), values)
}

/// Copies `values` to byte `offset` of the map's memory (the values of an array
/// map lie end to end at its stride, from offset 0).
pub(crate) fn write_at<T: Copy>(
    fd: BorrowedFd<'_>,
    offset: usize,
    values: &[T],
) -> std::io::Result<()> {
    let bytes = size_of_val(values);
    with_range(fd, offset, bytes, true, |memory| {
        // SAFETY: the mapping holds `bytes` bytes from `memory`; the caller names
        // elements of the map, which no program reads while they are written (an
        // inactive generation or a map not yet published).
        unsafe {
            std::ptr::copy_nonoverlapping(values.as_ptr().cast::<u8>(), memory, bytes);
        }
    })
}

/// Runs `f` on a shared mapping of bytes `offset..offset + bytes` of an
/// mmapable array map, given the address of byte `offset`. Only the pages
/// holding them are mapped: the kernel fills in every page of a mapping of a map
/// when it is made (a generation's 3 MiB value from offset 0 would be 1,536 page
/// entries for a config of a few bytes at its end).
pub(crate) fn with_range(
    fd: BorrowedFd<'_>,
    offset: usize,
    bytes: usize,
    writable: bool,
    f: impl FnOnce(*mut u8),
) -> std::io::Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    let first_page = offset - offset % page_size();
    let Some(length) = NonZeroUsize::new(offset + bytes - first_page) else {
        return Ok(());
    };
    let prot = if writable {
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
    } else {
        ProtFlags::PROT_READ
    };
    let file_offset = libc::off_t::try_from(first_page)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a fresh mapping of the map's memory, unmapped before returning; no
    // reference to it outlives `f`.
    let memory = unsafe { mmap(None, length, prot, MapFlags::MAP_SHARED, fd, file_offset) }?;
    // SAFETY: `offset - first_page` is within the mapping just made.
    f(unsafe { memory.as_ptr().cast::<u8>().add(offset - first_page) });
    // SAFETY: `memory` was mapped above with this length and is no longer used.
    unsafe { munmap(memory, length.get()) }?;
    Ok(())
}

/// The system's page size: what a mapping's offset must be a multiple of.
fn page_size() -> usize {
    // SAFETY: sysconf takes a plain integer.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        size if size > 0 => size as usize,
        _ => 4096,
    }
}

/// The array's `count` elements from `first` on (`T` as in `write_elements`; any
/// byte pattern must be a valid `T`).
pub(crate) fn read_elements<T: Copy + Default>(
    fd: BorrowedFd<'_>,
    first: usize,
    count: usize,
) -> std::io::Result<Vec<T>> {
    read_at(fd, first * size_of::<T>(), count)
}

/// `count` values of `T` from byte `offset` of the map's memory (any byte
/// pattern must be a valid `T`).
pub(crate) fn read_at<T: Copy + Default>(
    fd: BorrowedFd<'_>,
    offset: usize,
    count: usize,
) -> std::io::Result<Vec<T>> {
    let mut values = vec![T::default(); count];
    let bytes = count * size_of::<T>();
    with_range(fd, offset, bytes, false, |memory| {
        // SAFETY: as in `write_at`; the caller's `T` accepts any bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(memory, values.as_mut_ptr().cast::<u8>(), bytes);
        }
    })?;
    Ok(values)
}

/// A table's elements laid out straight into fixed memory (a mapping of the map
/// that holds them, `compile::ranges::Plan::lay_out`), no copy built first.
/// What does not fit is counted, not written, and makes it `full`: the memory
/// then holds no table.
pub(crate) struct Fixed<'a, R> {
    memory: &'a mut [R],
    /// Elements put in, written or not.
    len: usize,
}

impl<'a, R> Fixed<'a, R> {
    /// Nothing laid out yet into `memory`.
    pub(crate) fn new(memory: &'a mut [R]) -> Self {
        Fixed { memory, len: 0 }
    }
}

impl<R> std::ops::Deref for Fixed<'_, R> {
    type Target = [R];
    fn deref(&self) -> &[R] {
        &self.memory[..self.len.min(self.memory.len())]
    }
}

impl<R> std::ops::DerefMut for Fixed<'_, R> {
    fn deref_mut(&mut self) -> &mut [R] {
        let held = self.len.min(self.memory.len());
        &mut self.memory[..held]
    }
}

impl<R: Copy> Out<R> for Fixed<'_, R> {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, value: R) {
        if let Some(slot) = self.memory.get_mut(self.len) {
            *slot = value;
        }
        self.len += 1;
    }

    fn resize(&mut self, len: usize, value: R) {
        if len > self.len {
            let held = self.memory.len();
            if let Some(gap) = self.memory.get_mut(self.len.min(held)..len.min(held)) {
                gap.fill(value);
            }
            self.len = len;
        }
    }

    fn full(&self) -> bool {
        self.len > self.memory.len()
    }
}
