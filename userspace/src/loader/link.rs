//! Attaching the programs and asking the kernel about their pinned links.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, links::FdLink, tc::TcAttachOptions};

use super::{
    LoaderError,
    sys::{
        BPF_F_RDONLY, BPF_F_REPLACE, BPF_LINK_DETACH, BPF_LINK_GET_FD_BY_ID, BPF_LINK_GET_NEXT_ID,
        BPF_LINK_UPDATE, BPF_OBJ_GET_INFO_BY_FD, BPF_OBJ_PIN, BPF_PROG_GET_FD_BY_ID, bpf, obj_get,
    },
};

/// How the program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native XDP in the driver: before any socket buffer is allocated.
    Driver,
    /// Generic XDP, for drivers without native support: still before the stack's
    /// protocol handlers, but after the skb is built.
    Skb,
}

impl AttachMode {
    /// The kernel's name, as `status` and `apply` show it (and as the policy summary
    /// pinned beside the maps records it).
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Driver => "driver",
            AttachMode::Skb => "skb",
        }
    }

    /// The inverse of [`AttachMode::as_str`].
    pub fn from_name(name: &str) -> Option<AttachMode> {
        [AttachMode::Driver, AttachMode::Skb]
            .into_iter()
            .find(|mode| mode.as_str() == name)
    }

    /// The name of the `xdp_mode` that asks for it: `native` or `generic`.
    pub fn xdp_mode_name(self) -> &'static str {
        match self {
            AttachMode::Driver => "native",
            AttachMode::Skb => "generic",
        }
    }

    /// The mode `program_id` runs in on a link with the XDP programs `xdp`, if it
    /// is attached there.
    pub fn of(xdp: &crate::link_type::XdpPrograms, program_id: u32) -> Option<AttachMode> {
        if program_id == 0 {
            None
        } else if xdp.driver == program_id {
            Some(AttachMode::Driver)
        } else if xdp.generic == program_id {
            Some(AttachMode::Skb)
        } else {
            None
        }
    }
}

/// Attaches the egress program with tcx, first in the interface's egress chain:
/// it only records flows and passes the packet on (TCX_NEXT), and going first means
/// no other tcx program can end the chain before the host's packet is seen.
/// tcx links need Linux 6.6; they are what makes the attachment pinnable and
/// owned (nobody's `tc filter del` removes it by accident).
pub(crate) fn attach_egress(
    program: &mut SchedClassifier,
    iface: &str,
) -> Result<FdLink, LoaderError> {
    let program_err = |source| LoaderError::Program {
        name: airlock_common::EGRESS_PROGRAM_NAME,
        source: Box::new(source),
    };
    let link_id = program
        .attach_with_options(
            iface,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .map_err(program_err)?;
    let link = program.take_link(link_id).map_err(program_err)?;
    FdLink::try_from(link).map_err(|e| LoaderError::Link {
        iface: iface.to_owned(),
        source: e,
    })
}

/// Whether this kernel has tcx (Linux 6.6), which the egress program needs. Without
/// it Airlock still filters; only return traffic under `default: drop` is missing.
pub fn egress_supported() -> bool {
    aya::util::KernelVersion::current().map_or(true, |version| {
        version >= aya::util::KernelVersion::new(6, 6, 0)
    })
}

/// The kinds of link Airlock pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// The XDP program on ingress.
    Xdp,
    /// The flow-recording program on tcx egress.
    TcxEgress,
}

impl LinkKind {
    /// `enum bpf_link_type` value.
    fn kernel_type(self) -> u32 {
        match self {
            LinkKind::Xdp => BPF_LINK_TYPE_XDP,
            LinkKind::TcxEgress => BPF_LINK_TYPE_TCX,
        }
    }
}

/// What the kernel says about a pinned link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub link_id: u32,
    pub program_id: u32,
    /// 0 once the interface it was attached to is gone.
    pub ifindex: u32,
}

// The bpf(2) commands here pass a zeroed `[u64; 16]` as their `union bpf_attr`
// (128 bytes, no padding, more than any of them reads), its first words set as the
// command's member lays them out.
const BPF_LINK_TYPE_XDP: u32 = 6;
const BPF_LINK_TYPE_TCX: u32 = 11;

/// A descriptor the kernel just returned from `bpf`.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Opens a pinned BPF object (BPF_OBJ_GET), once it and its directory pass
/// `crate::trust`: BPF_OBJ_GET follows a symlink, and one planted as `link` would
/// have `remove` detach a filter elsewhere.
fn open_pinned(path: &Path) -> std::io::Result<OwnedFd> {
    open_pinned_with(path, 0)
}

/// [`open_pinned`] with BPF_OBJ_GET's `file_flags`.
fn open_pinned_with(path: &Path, file_flags: u32) -> std::io::Result<OwnedFd> {
    if let Some(dir) = path.parent() {
        super::pins::check_filter_dir(dir).map_err(std::io::Error::other)?;
    }
    crate::trust::check_entry_at(path).map_err(std::io::Error::other)?;
    obj_get(path, file_flags)
}

/// Detaches a pinned link from its hook now (BPF_LINK_DETACH). Unpinning alone
/// also detaches it, but only once nothing else holds the link and the kernel has
/// freed the pin's inode (after an RCU grace period and a workqueue run): a
/// `remove` would return while the filter still decides packets.
pub(crate) fn detach_pinned(path: &Path) -> std::io::Result<()> {
    let fd = open_pinned(path)?;
    // BPF_LINK_DETACH: link_fd (u32).
    let mut attr = [0u64; 16];
    attr[0] = u64::from(fd.as_raw_fd() as u32);
    // SAFETY: no pointers in attr.
    unsafe { bpf(BPF_LINK_DETACH, &mut attr) }.map(drop)
}

/// Pins the link pinned at `from` a second time, at `to` (BPF_OBJ_PIN): both pins
/// hold the same link, and unlinking one of them leaves it attached.
pub(crate) fn pin_again(from: &Path, to: &Path) -> std::io::Result<()> {
    let fd = open_pinned(from)?;
    let c_path = CString::new(to.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // BPF_OBJ_PIN: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u64; 16];
    attr[0] = c_path.as_ptr() as u64;
    attr[1] = u64::from(fd.as_raw_fd() as u32);
    // SAFETY: the path is a NUL-terminated string that outlives the call.
    unsafe { bpf(BPF_OBJ_PIN, &mut attr) }.map(drop)
}

/// Makes the link pinned at `link` run the program pinned at `program` from now
/// on (BPF_LINK_UPDATE): one pointer swap in the kernel, so every packet meets
/// either the old program or the new one, never none. With `expected`, only if the
/// link still runs the program pinned there (else EPERM, and nothing changes).
pub(crate) fn update_pinned(
    link: &Path,
    program: &Path,
    expected: Option<&Path>,
) -> std::io::Result<()> {
    let link = open_pinned(link)?;
    let program = open_pinned(program)?;
    let expected = expected.map(open_pinned).transpose()?;
    // BPF_LINK_UPDATE: link_fd (u32), new_prog_fd (u32), flags (u32), old_prog_fd (u32).
    let mut attr = [0u64; 16];
    attr[0] = u64::from(link.as_raw_fd() as u32) | (u64::from(program.as_raw_fd() as u32) << 32);
    if let Some(old) = &expected {
        attr[1] = BPF_F_REPLACE | (u64::from(old.as_raw_fd() as u32) << 32);
    }
    // SAFETY: no pointers in attr.
    unsafe { bpf(BPF_LINK_UPDATE, &mut attr) }.map(drop)
}

/// Reads a pinned link's id, program and interface.
///
/// The kernel opens a pinned link only for reading and writing, which a read-only
/// bpffs refuses (EROFS): there the link is found by the program pinned beside it
/// (opened read-only), which the link runs (an apply switches both together).
pub fn pinned_link_state(path: &Path, kind: LinkKind) -> Result<LinkState, LoaderError> {
    let io = |e| LoaderError::io("reading link", path, e);
    match open_pinned(path) {
        Ok(fd) => state_of(&fd, kind).map_err(io),
        Err(error) if error.raw_os_error() == Some(libc::EROFS) => {
            link_running_pinned_program(path, kind).map_err(|_| io(error))
        }
        Err(error) => Err(io(error)),
    }
}

/// The link of `kind` that runs the program pinned beside the link pin `path`
/// (preferring one on the interface whose directory holds the pins). Walking the
/// kernel's links needs CAP_SYS_ADMIN.
fn link_running_pinned_program(path: &Path, kind: LinkKind) -> std::io::Result<LinkState> {
    let not_found = || std::io::Error::from(std::io::ErrorKind::NotFound);
    let program = path.with_file_name(match kind {
        LinkKind::Xdp => super::PROGRAM_PIN,
        LinkKind::TcxEgress => super::EGRESS_PROGRAM_PIN,
    });
    let (program_id, _) = pinned_program(&program)?;
    let ifindex = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|name| interface_index(&super::pins::unescape(&name.to_string_lossy())));
    let mut found = None;
    let mut id = 0u32;
    loop {
        // BPF_LINK_GET_NEXT_ID: start_id (u32), next_id (u32).
        let mut attr = [0u64; 16];
        attr[0] = u64::from(id);
        // SAFETY: no pointers in attr; the kernel writes next_id into it.
        match unsafe { bpf(BPF_LINK_GET_NEXT_ID, &mut attr) } {
            Ok(_) => id = (attr[0] >> 32) as u32,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => break,
            Err(error) => return Err(error),
        }
        // Links of other types, or freed meanwhile, are not it.
        let Ok(Some(state)) = link_state(id, kind) else {
            continue;
        };
        if state.program_id != program_id {
            continue;
        }
        if Some(state.ifindex) == ifindex {
            return Ok(state);
        }
        found.get_or_insert(state);
    }
    found.ok_or_else(not_found)
}

/// The state of the link with id `link_id`, or `None` once the kernel has freed it.
pub fn link_state(link_id: u32, kind: LinkKind) -> std::io::Result<Option<LinkState>> {
    // BPF_LINK_GET_FD_BY_ID: link_id (u32).
    let mut attr = [0u64; 16];
    attr[0] = u64::from(link_id);
    // SAFETY: no pointers in attr.
    match unsafe { bpf(BPF_LINK_GET_FD_BY_ID, &mut attr) } {
        Ok(fd) => state_of(&owned(fd), kind).map(Some),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(error) => Err(error),
    }
}

/// A link's id, program and interface. aya's `LinkInfo` does not expose the
/// interface index, so this asks the kernel directly (BPF_OBJ_GET_INFO_BY_FD;
/// `struct bpf_link_info` keeps `xdp.ifindex` and `tcx.ifindex` at byte 16).
fn state_of(fd: &OwnedFd, kind: LinkKind) -> std::io::Result<LinkState> {
    let mut info = [0u8; 64];
    // BPF_OBJ_GET_INFO_BY_FD: bpf_fd (u32), info_len (u32), info (u64).
    let mut attr = [0u64; 16];
    attr[0] = u64::from(fd.as_raw_fd() as u32) | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: info is writable for info_len bytes and outlives the call.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    let word = |at: usize| u32::from_ne_bytes([info[at], info[at + 1], info[at + 2], info[at + 3]]);
    if word(0) != kind.kernel_type() {
        return Err(std::io::Error::other(format!(
            "link is of type {}, not {kind:?}",
            word(0)
        )));
    }
    Ok(LinkState {
        link_id: word(4),
        program_id: word(8),
        ifindex: word(16),
    })
}

/// The name of the loaded program with id `program_id` (the kernel keeps the first
/// 15 bytes), or `None` if there is no such program any more or we may not look
/// (BPF_PROG_GET_FD_BY_ID needs CAP_SYS_ADMIN, which the systemd unit does not grant).
pub fn program_name(program_id: u32) -> Option<String> {
    // BPF_PROG_GET_FD_BY_ID: prog_id (u32).
    let mut attr = [0u64; 16];
    attr[0] = u64::from(program_id);
    // SAFETY: no pointers in attr.
    let fd = owned(unsafe { bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) }.ok()?);
    program_identity(&fd).ok().map(|(_, name)| name)
}

/// The id and name of the program pinned at `path` (needs no capability beyond
/// access to the pin).
pub fn pinned_program(path: &Path) -> std::io::Result<(u32, String)> {
    // Read-only: all it asks is the program's info, and a read-only bpffs allows it.
    program_identity(&open_pinned_with(path, BPF_F_RDONLY)?)
}

/// A program's id and name (BPF_OBJ_GET_INFO_BY_FD; `struct bpf_prog_info` keeps
/// `id` at byte 4 and `name[16]` at byte 64).
fn program_identity(fd: &OwnedFd) -> std::io::Result<(u32, String)> {
    let mut info = [0u8; 80];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(fd.as_raw_fd() as u32) | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: info is writable for info_len bytes and outlives the call.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    let id = u32::from_ne_bytes([info[4], info[5], info[6], info[7]]);
    let name = &info[64..80];
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok((id, String::from_utf8_lossy(&name[..len]).into_owned()))
}

/// The interface's index in this network namespace, or `None` if it does not exist.
pub fn interface_index(iface: &str) -> Option<u32> {
    let name = CString::new(iface).ok()?;
    // SAFETY: name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}
