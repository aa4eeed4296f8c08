//! Attaching the XDP program in the mode asked for, and never beside another one.
//!
//! `auto` tries native (driver) mode and falls back to generic only when the driver
//! has no native XDP, which the kernel reports as EOPNOTSUPP (`dev_xdp_attach`:
//! "Underlying driver does not support XDP in native mode"; a driver may say
//! ENOTSUPP from its own `ndo_bpf`). Every other failure is an error: EBUSY and
//! EEXIST mean another XDP program is there (same mode, the other mode, or on an
//! upper device), and generic mode would then run after it, seeing only what it
//! passes on.

use aya::programs::{ProgramError, Xdp, XdpMode as AyaMode, links::FdLink, xdp::XdpLinkId};

use super::{AttachMode, LoaderError, link};
use crate::{link_type, policy::XdpMode};

/// The kernel's internal ENOTSUPP, which some drivers let out.
const ENOTSUPP: i32 = 524;

/// Attaches `program` to `iface` as `request` says. The link is returned as an
/// `FdLink` so the caller can pin it; until pinned, dropping it detaches.
pub(crate) fn attach(
    program: &mut Xdp,
    name: &'static str,
    iface: &str,
    request: XdpMode,
) -> Result<(FdLink, AttachMode), LoaderError> {
    refuse_occupied(iface)?;
    let generic = |program: &mut Xdp| {
        attach_in(program, iface, AttachMode::Skb).map_err(|f| f.into_error(name, iface, false))
    };
    let link_id = match request {
        XdpMode::Generic => generic(program)?,
        XdpMode::Native => match attach_in(program, iface, AttachMode::Driver) {
            Ok(id) => id,
            Err(Failure::NotSupported(source)) => {
                return Err(LoaderError::NativeUnsupported {
                    iface: iface.to_owned(),
                    source,
                });
            }
            Err(other) => return Err(other.into_error(name, iface, true)),
        },
        XdpMode::Auto => match attach_in(program, iface, AttachMode::Driver) {
            Ok(id) => id,
            Err(Failure::NotSupported(error)) => {
                tracing::warn!(
                    iface,
                    %error,
                    "the driver has no native XDP; attaching in generic (skb) mode, which filters later and slower"
                );
                generic(program)?
            }
            Err(other) => return Err(other.into_error(name, iface, true)),
        },
    };
    let (link_id, mode) = link_id;
    let program_err = |source| LoaderError::Program {
        name,
        source: Box::new(source),
    };
    let link = program.take_link(link_id).map_err(program_err)?;
    let link = FdLink::try_from(link).map_err(|e| LoaderError::Link {
        iface: iface.to_owned(),
        source: e,
    })?;
    Ok((link, mode))
}

/// Why an attach failed.
enum Failure {
    /// The driver has no native XDP.
    NotSupported(Box<ProgramError>),
    /// Another XDP program is in the way (described).
    Occupied(String),
    Other(Box<ProgramError>),
}

impl Failure {
    fn into_error(self, name: &'static str, iface: &str, native: bool) -> LoaderError {
        match self {
            Failure::Occupied(programs) => LoaderError::XdpOccupied {
                iface: iface.to_owned(),
                programs,
            },
            Failure::NotSupported(source) | Failure::Other(source) if native => {
                LoaderError::NativeFailed {
                    iface: iface.to_owned(),
                    source,
                }
            }
            Failure::NotSupported(source) | Failure::Other(source) => {
                LoaderError::Program { name, source }
            }
        }
    }
}

fn attach_in(
    program: &mut Xdp,
    iface: &str,
    mode: AttachMode,
) -> Result<(XdpLinkId, AttachMode), Failure> {
    let flags = match mode {
        AttachMode::Driver => AyaMode::Driver,
        AttachMode::Skb => AyaMode::Skb,
    };
    program
        .attach(iface, flags)
        .map(|id| (id, mode))
        .map_err(|error| {
            match errno(&error) {
                Some(libc::EOPNOTSUPP | ENOTSUPP) if mode == AttachMode::Driver => {
                    Failure::NotSupported(Box::new(error))
                }
                // Someone attached between our look and our attach.
                Some(libc::EBUSY | libc::EEXIST) => match occupants(iface) {
                    Some(programs) => Failure::Occupied(programs),
                    None => Failure::Other(Box::new(error)),
                },
                _ => Failure::Other(Box::new(error)),
            }
        })
}

/// Fails, naming them, if XDP programs are attached to `iface` (or to its upper
/// device, which the kernel also refuses to attach under).
fn refuse_occupied(iface: &str) -> Result<(), LoaderError> {
    match occupants(iface) {
        Some(programs) => Err(LoaderError::XdpOccupied {
            iface: iface.to_owned(),
            programs,
        }),
        None => Ok(()),
    }
}

/// The XDP programs on `iface` and its upper device, described, or `None`.
fn occupants(iface: &str) -> Option<String> {
    let facts = link_type::query(iface).ok()??;
    let mut found = describe(&facts.xdp, None);
    if let Some(master) = facts.master
        && let Some((name, xdp)) = link_type::xdp_programs_of_index(master)
    {
        found.extend(describe(&xdp, Some(&name)));
    }
    (!found.is_empty()).then(|| found.join(", "))
}

fn describe(xdp: &link_type::XdpPrograms, upper: Option<&str>) -> Vec<String> {
    xdp.attached()
        .into_iter()
        .map(|(id, mode)| {
            // Naming a program by id needs CAP_SYS_ADMIN; the id alone still finds it
            // (`bpftool prog show id N`).
            let name = link::program_name(id).map_or_else(
                || "(name not readable without CAP_SYS_ADMIN)".to_owned(),
                |name| format!("{name:?}"),
            );
            match upper {
                Some(upper) => format!("id {id} {name} ({mode}, on its upper device {upper})"),
                None => format!("id {id} {name} ({mode})"),
            }
        })
        .collect()
}

/// The errno behind an attach failure (bpf_link_create, or aya's netlink fallback).
fn errno(error: &ProgramError) -> Option<i32> {
    if let ProgramError::SyscallError(syscall) = error {
        return syscall.io_error.raw_os_error();
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        if let Some(netlink) = error.downcast_ref::<aya::sys::NetlinkError>() {
            return netlink.raw_os_error();
        }
        cause = error.source();
    }
    None
}
