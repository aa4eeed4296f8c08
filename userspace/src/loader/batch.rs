//! BPF_MAP_{LOOKUP,UPDATE}_BATCH: thousands of map elements per system call instead
//! of one (aya 0.14 has no batch API), for the rule base and counters, and source
//! table chunks published with one wait for running programs instead of one each;
//! and the one single-element call aya lacks. Arrays support batch operations since Linux 5.6;
//! on an older kernel (`EINVAL`/`ENOTSUPP`) the callers fall back to one element per
//! call.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::MapData;

use super::sys::{
    self, BPF_MAP_DELETE_ELEM, BPF_MAP_LOOKUP_BATCH, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_BATCH,
    BPF_MAP_UPDATE_ELEM,
};

/// Elements per system call: large enough that the call overhead vanishes, small
/// enough that one call's buffers stay in the cache.
const CHUNK: usize = 4096;

/// The `batch` member of union bpf_attr: in_batch, out_batch, keys, values (u64
/// each), count (u32), map_fd (u32), elem_flags (u64), flags (u64).
#[derive(Default)]
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn fd_of(map: &MapData) -> u32 {
    map.fd().as_fd().as_raw_fd() as u32
}

/// One batch call; `Ok(true)` when the kernel said the map has no more elements.
fn call(command: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<bool> {
    // SAFETY: `BatchAttr` is the `batch` member, without padding; every pointer in
    // `attr` points at a buffer the caller keeps alive and sized for `count`
    // elements (and one key for in_batch/out_batch).
    match unsafe { sys::bpf(command, attr) } {
        Ok(_) => Ok(false),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(true),
        Err(error) => Err(error),
    }
}

/// Writes `words`-word values (`values` holds `keys.len() * words` of them) to slots
/// `keys` of an array map.
pub(crate) fn update_u32_keys_u64s(
    map: &MapData,
    keys: &[u32],
    values: &[u64],
    words: usize,
) -> std::io::Result<()> {
    debug_assert_eq!(keys.len() * words, values.len());
    update(map, as_bytes(keys), as_bytes(values), keys.len())
}

/// Whether a batch call failed only because the kernel has no batch operation for
/// this map type (the caller then goes one element at a time).
pub(crate) fn unsupported(error: &std::io::Error) -> bool {
    const ENOTSUPP: i32 = 524; // the kernel's own, not EOPNOTSUPP
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// The bytes of plain values, as batch calls take keys and values. `Pod` (integers,
/// and the `#[repr(C)]` types `airlock_common` declares without padding) is what
/// makes every byte initialized: a type with padding would hand the kernel
/// uninitialized memory.
pub(crate) fn as_bytes<T: aya::Pod>(items: &[T]) -> &[u8] {
    // SAFETY: `T: Pod` has no padding and no invalid bit patterns; the slice covers
    // exactly the items' bytes, borrowed for as long as `items`.
    unsafe { std::slice::from_raw_parts(items.as_ptr().cast(), std::mem::size_of_val(items)) }
}

/// Updates `count` elements: `keys` and `values` are the packed keys and values.
/// On error some elements may have been written (the caller only ever batches writes
/// into a copy no packet reads).
pub(crate) fn update(
    map: &MapData,
    keys: &[u8],
    values: &[u8],
    count: usize,
) -> std::io::Result<()> {
    chunked(map, BPF_MAP_UPDATE_BATCH, keys, Some(values), count)
}

fn chunked(
    map: &MapData,
    command: libc::c_long,
    keys: &[u8],
    values: Option<&[u8]>,
    count: usize,
) -> std::io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let key_size = keys.len() / count;
    let value_size = values.map_or(0, |v| v.len() / count);
    let mut done = 0;
    while done < count {
        let n = (count - done).min(CHUNK);
        let mut attr = BatchAttr {
            keys: keys[done * key_size..].as_ptr() as u64,
            values: values.map_or(0, |v| v[done * value_size..].as_ptr() as u64),
            count: n as u32,
            map_fd: fd_of(map),
            ..Default::default()
        };
        let end = call(command, &mut attr)?;
        let written = attr.count as usize;
        if end || written != n {
            return Err(std::io::Error::other(format!(
                "batch operation did {written} of {n} elements"
            )));
        }
        done += n;
    }
    Ok(())
}

/// Calls `each(key, value)` for every element of a map (`key_size`, `value_size`
/// bytes each), in the map's own order, reading thousands per system call.
pub(crate) fn lookup_each(
    map: &MapData,
    key_size: usize,
    value_size: usize,
    mut each: impl FnMut(&[u8], &[u8]),
) -> std::io::Result<()> {
    let mut keys = vec![0u8; CHUNK * key_size];
    let mut values = vec![0u8; CHUNK * value_size];
    // The position: the kernel's generic batch code resumes after the key it wrote
    // to out_batch last time.
    let mut position = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { position.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd_of(map),
            ..Default::default()
        };
        let end = call(BPF_MAP_LOOKUP_BATCH, &mut attr)?;
        let n = (attr.count as usize).min(CHUNK);
        for i in 0..n {
            each(
                &keys[i * key_size..(i + 1) * key_size],
                &values[i * value_size..(i + 1) * value_size],
            );
        }
        if end || n == 0 {
            return Ok(());
        }
        position.copy_from_slice(&next);
        first = false;
    }
}

/// The `map_elem` member of union bpf_attr: map_fd, key, value, flags.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// One single-element command on a map with `u32` keys and values: `value` is
/// read (update), written (lookup) or ignored (delete).
fn elem_call(
    command: libc::c_long,
    map: &MapData,
    key: u32,
    value: Option<&mut u32>,
) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd_of(map),
        key: std::ptr::from_ref(&key) as u64,
        value: value.map_or(0, |v| std::ptr::from_mut(v) as u64),
        ..Default::default()
    };
    // SAFETY: `ElemAttr` is the `map_elem` member, its padding an explicit zero
    // field; `attr.key` and `attr.value` point at `key` and the caller's `value`
    // (or are null), alive for the call and of the map's key and value size.
    unsafe { sys::bpf(command, &mut attr) }.map(drop)
}

/// Copies the value at `key` of a map with `u32` keys into `value`, which must be
/// exactly the map's value size (the kernel writes that many bytes).
pub(crate) fn lookup_u32_key_bytes(
    map: &MapData,
    key: u32,
    value: &mut [u8],
) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd_of(map),
        key: std::ptr::from_ref(&key) as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: as in `elem_call`; `value` is the caller's buffer of the map's
    // value size, alive for the call.
    unsafe { sys::bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) }.map(drop)
}

/// Deletes slot `key` of a map with `u32` keys (aya has no delete for arrays of
/// maps, where it empties the slot).
pub(crate) fn delete_u32_key(map: &MapData, key: u32) -> std::io::Result<()> {
    elem_call(BPF_MAP_DELETE_ELEM, map, key, None)
}

/// The `u32` value at `key` of a map with `u32` keys and values (None: no element).
/// For an array of maps that is the inner map's id: this tells whether a slot holds
/// a map without opening it, which (BPF_MAP_GET_FD_BY_ID) takes CAP_SYS_ADMIN.
pub(crate) fn lookup_u32_key(map: &MapData, key: u32) -> std::io::Result<Option<u32>> {
    let mut value = 0u32;
    match elem_call(BPF_MAP_LOOKUP_ELEM, map, key, Some(&mut value)) {
        Ok(()) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets slot `key` of a map with `u32` keys and values (for an array of maps, the
/// value is the inner map's file descriptor).
pub(crate) fn update_u32_key(map: &MapData, key: u32, value: u32) -> std::io::Result<()> {
    let mut value = value;
    elem_call(BPF_MAP_UPDATE_ELEM, map, key, Some(&mut value))
}
