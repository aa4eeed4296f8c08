//! BPF_MAP_UPDATE_BATCH for the port arrays: 65,536 slots in one system call instead
//! of 65,536 (aya 0.14 has no batch API). Arrays support batch updates since Linux
//! 5.6; on an older kernel the caller falls back to one update per slot.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::MapData;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Writes `values[i]` to slot `first + i` of an array map of `u64`, in one call.
pub(crate) fn update_u64_array(map: &MapData, first: u32, values: &[u64]) -> std::io::Result<()> {
    let keys: Vec<u32> = (first..first + values.len() as u32).collect();
    let fd = map.fd().as_fd().as_raw_fd();
    // The `batch` member of union bpf_attr: in_batch, out_batch, keys, values (u64 each),
    // count (u32), map_fd (u32), elem_flags (u64), flags (u64).
    let mut attr = [0u64; 8];
    attr[2] = keys.as_ptr() as u64;
    attr[3] = values.as_ptr() as u64;
    attr[4] = u64::from(values.len() as u32) | (u64::from(fd as u32) << 32);
    // SAFETY: keys and values outlive the call and hold `count` elements each.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let written = attr[4] as u32 as usize;
    if written != values.len() {
        return Err(std::io::Error::other(format!(
            "batch update wrote {written} of {} slots",
            values.len()
        )));
    }
    Ok(())
}
