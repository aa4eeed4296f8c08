//! Attaching the programs and asking the kernel about their pinned links.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink, tc::TcAttachOptions,
};

use super::LoaderError;

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
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Driver => "driver",
            AttachMode::Skb => "skb",
        }
    }
}

/// Attaches in native mode, falling back to generic with a warning. The link is
/// returned as an `FdLink` so the caller can pin it; until pinned, dropping it detaches.
pub(crate) fn attach(program: &mut Xdp, iface: &str) -> Result<(FdLink, AttachMode), LoaderError> {
    let program_err = |source| LoaderError::Program {
        name: airlock_common::PROGRAM_NAME,
        source: Box::new(source),
    };
    let (link_id, mode) = match program.attach(iface, XdpMode::Driver) {
        Ok(id) => (id, AttachMode::Driver),
        Err(native) => {
            tracing::warn!(
                iface,
                error = %native,
                "native XDP attach failed; falling back to generic (skb) mode, which filters later and slower"
            );
            let id = program.attach(iface, XdpMode::Skb).map_err(program_err)?;
            (id, AttachMode::Skb)
        }
    };
    let link = program.take_link(link_id).map_err(program_err)?;
    let link = FdLink::try_from(link).map_err(|e| LoaderError::Link {
        iface: iface.to_owned(),
        source: e,
    })?;
    Ok((link, mode))
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

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_LINK_TYPE_XDP: u32 = 6;
const BPF_LINK_TYPE_TCX: u32 = 11;

/// bpf(2) with `attr` as its `union bpf_attr`, zero past the fields the caller set.
///
/// # Safety
/// Any pointer the caller put in `attr` is valid for what `command` does with it.
unsafe fn bpf(command: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is larger than what any command used here reads; the caller
    // vouches for the pointers in it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// A descriptor the kernel just returned from `bpf`.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Opens a pinned BPF object (BPF_OBJ_GET), once it and its directory pass
/// `crate::trust`: BPF_OBJ_GET follows a symlink, and one planted as `link` would
/// have `remove` detach a filter elsewhere.
fn open_pinned(path: &Path) -> std::io::Result<OwnedFd> {
    if let Some(dir) = path.parent() {
        super::pins::check_filter_dir(dir).map_err(std::io::Error::other)?;
    }
    crate::trust::check_entry_at(path).map_err(std::io::Error::other)?;
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u64; 16];
    attr[0] = c_path.as_ptr() as u64;
    // SAFETY: the path is a NUL-terminated string that outlives the call.
    unsafe { bpf(BPF_OBJ_GET, &mut attr) }.map(owned)
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

/// Reads a pinned link's id, program and interface.
pub fn pinned_link_state(path: &Path, kind: LinkKind) -> Result<LinkState, LoaderError> {
    let io = |e| LoaderError::io("reading link", path, e);
    state_of(&open_pinned(path).map_err(io)?, kind).map_err(io)
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

/// The interface's index in this network namespace, or `None` if it does not exist.
pub fn interface_index(iface: &str) -> Option<u32> {
    let name = CString::new(iface).ok()?;
    // SAFETY: name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}
