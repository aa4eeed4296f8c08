//! The raw bpf(2) system call, for what aya 0.14 has no API for: batch and
//! single-element map commands (batch.rs), pinned objects, and link and program
//! queries (link.rs). Every such call goes through [`bpf`].

use std::{
    ffi::CString,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

use libc::c_long;

pub(crate) const BPF_MAP_LOOKUP_ELEM: c_long = 1;
pub(crate) const BPF_MAP_UPDATE_ELEM: c_long = 2;
pub(crate) const BPF_MAP_DELETE_ELEM: c_long = 3;
pub(crate) const BPF_OBJ_PIN: c_long = 6;
pub(crate) const BPF_OBJ_GET: c_long = 7;
pub(crate) const BPF_PROG_GET_FD_BY_ID: c_long = 13;
pub(crate) const BPF_OBJ_GET_INFO_BY_FD: c_long = 15;
pub(crate) const BPF_MAP_LOOKUP_BATCH: c_long = 24;
pub(crate) const BPF_MAP_UPDATE_BATCH: c_long = 26;
pub(crate) const BPF_LINK_UPDATE: c_long = 29;
pub(crate) const BPF_LINK_GET_FD_BY_ID: c_long = 30;
pub(crate) const BPF_LINK_GET_NEXT_ID: c_long = 31;
pub(crate) const BPF_LINK_DETACH: c_long = 34;
/// `BPF_LINK_UPDATE` flag: only if the link still runs `old_prog_fd`.
pub(crate) const BPF_F_REPLACE: u64 = 1 << 2;
/// `BPF_OBJ_GET` file flag: a descriptor that may only read (a map's elements, a
/// program's info). Opening for reading and writing needs write permission on the
/// pin, which a read-only bpffs refuses (EROFS).
pub(crate) const BPF_F_RDONLY: u32 = 1 << 3;

/// bpf(2) with `attr` as its `union bpf_attr`: the kernel reads (and for some
/// commands writes back) `size_of::<A>()` bytes, and refuses a command if any byte
/// past the fields it knows for that command is not zero. Returns what the call
/// returned (a new descriptor, for the commands that make one).
///
/// # Safety
/// `A` is `#[repr(C)]`, every byte of it initialized (padding as explicit fields),
/// laid out as `command`'s member of `union bpf_attr`; every pointer in it is valid
/// for what `command` does with it (the kernel reads or writes through it) for the
/// duration of the call.
pub(crate) unsafe fn bpf<A>(command: c_long, attr: &mut A) -> std::io::Result<c_long> {
    // SAFETY: the caller vouches for the layout of `attr` and the pointers in it;
    // the kernel accesses no more than `size_of::<A>()` bytes of it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            size_of::<A>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// Opens the BPF object pinned at `path` (BPF_OBJ_GET) with `file_flags` (0, or
/// [`BPF_F_RDONLY`]). Follows a symlink: callers check the path first.
pub(crate) fn obj_get(path: &Path, file_flags: u32) -> std::io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u64; 16];
    attr[0] = c_path.as_ptr() as u64;
    attr[1] = u64::from(file_flags) << 32;
    // SAFETY: the path is a NUL-terminated string that outlives the call.
    let fd = unsafe { bpf(BPF_OBJ_GET, &mut attr) }?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
