//! What a command that touches the kernel checks before it does: the privileges it
//! needs, and that the pin root is visible from here. Each is said once and
//! plainly; without these checks a missing privilege surfaces as a raw EACCES, or
//! worse, as a wrong answer ("nothing pinned", "no confirmation pending").

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use airlock::loader::PinRoot;
use caps::{CapSet, Capability};
use nix::sys::statfs::{SYSFS_MAGIC, statfs};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "airlock {command} needs root, or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: {why}"
    )]
    Privileges { command: &'static str, why: String },
    #[error(
        "airlock {command}: the filters under {} are pinned by uid {owner}, and only their owner \
         (or root) may open them, whatever the capabilities; this process runs as uid {uid}: run it as root",
        root.display()
    )]
    NotOwner {
        command: &'static str,
        root: PathBuf,
        owner: u32,
        uid: u32,
    },
    #[error(
        "{} is out of sight here: this command runs under `ip netns exec {netns}`, which remounts /sys \
         for the namespace and so hides the host's bpffs and the filters pinned in it. Enter only the \
         network namespace instead: nsenter --net=/run/netns/{netns} airlock {command} ...; or name a \
         bpffs mounted outside /sys with --pin-root",
        root.display()
    )]
    BpffsHidden {
        command: &'static str,
        root: PathBuf,
        netns: String,
    },
}

/// For every command that reads or changes pinned filters: privileges, then the
/// pin root's visibility.
pub fn kernel_access(command: &'static str, root: &PinRoot) -> Result<(), PreflightError> {
    privileges(command)?;
    bpffs_visible(command, root.path())?;
    owner(command, root.path())
}

/// The pins are made 0600 by their owner (root): a process of another user, even
/// with every capability the command needs, is refused them (EACCES).
fn owner(command: &'static str, root: &Path) -> Result<(), PreflightError> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return Ok(());
    }
    match fs::symlink_metadata(root) {
        Ok(meta) if meta.uid() != uid.as_raw() => Err(PreflightError::NotOwner {
            command,
            root: root.to_owned(),
            owner: meta.uid(),
            uid: uid.as_raw(),
        }),
        _ => Ok(()),
    }
}

/// Root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON in the effective set (the unit's
/// set: load, attach, and the verifier's pointer rules). CAP_SYS_ADMIN stands in for
/// CAP_BPF and CAP_PERFMON, as the kernel lets it.
pub fn privileges(command: &'static str) -> Result<(), PreflightError> {
    // If the set cannot be read, the kernel will say what is missing.
    let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(true);
    let admin = has(Capability::CAP_SYS_ADMIN);
    let missing: Vec<&'static str> = [
        ("CAP_BPF", has(Capability::CAP_BPF) || admin),
        ("CAP_NET_ADMIN", has(Capability::CAP_NET_ADMIN)),
        ("CAP_PERFMON", has(Capability::CAP_PERFMON) || admin),
    ]
    .into_iter()
    .filter_map(|(name, held)| (!held).then_some(name))
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let lacks = if missing.len() == 3 {
        "none of them".to_owned()
    } else {
        format!("no {}", missing.join(" and "))
    };
    let uid = nix::unistd::geteuid();
    let why = if uid.is_root() {
        format!(
            "this process runs as root with {lacks} (its capability set was reduced: grant them, \
             e.g. AmbientCapabilities= in a systemd unit or securityContext.capabilities in a pod)"
        )
    } else {
        format!("this process (uid {uid}) has {lacks}; run it as root, e.g. with sudo")
    };
    Err(PreflightError::Privileges { command, why })
}

/// Refuses when `ip netns exec` hid bpffs: it mounts a sysfs of its own on /sys
/// (named after the network namespace), so under /sys/fs/bpf there is only an empty
/// sysfs directory; "nothing pinned" would be false, and a pin cannot be made.
fn bpffs_visible(command: &'static str, root: &Path) -> Result<(), PreflightError> {
    let Some(existing) = root.ancestors().find(|p| fs::symlink_metadata(p).is_ok()) else {
        return Ok(());
    };
    let on_sysfs = statfs(existing).is_ok_and(|s| s.filesystem_type() == SYSFS_MAGIC);
    if !on_sysfs {
        return Ok(());
    }
    match netns_exec_sysfs() {
        Some(netns) => Err(PreflightError::BpffsHidden {
            command,
            root: root.to_owned(),
            netns,
        }),
        None => Ok(()),
    }
}

/// The network namespace whose sysfs `ip netns exec NAME` mounted on /sys, if that
/// is what /sys is: iproute2 mounts it with NAME as its source, and NAME is then the
/// namespace this process is in (/run/netns/NAME is the same namespace).
fn netns_exec_sysfs() -> Option<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    // "... mount-point options [optional fields] - fstype source super-options";
    // the last mount on /sys is the one in sight.
    let source = mountinfo.lines().rev().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mount_point = before.split_whitespace().nth(4)?;
        let mut fields = after.split_whitespace();
        let fstype = fields.next()?;
        let source = fields.next()?;
        (mount_point == "/sys" && fstype == "sysfs").then(|| source.to_owned())
    })?;
    if source == "sysfs" || source == "none" {
        return None;
    }
    let named = fs::metadata(Path::new("/run/netns").join(&source)).ok()?;
    let own = fs::metadata("/proc/self/ns/net").ok()?;
    (named.ino() == own.ino() && named.dev() == own.dev()).then_some(source)
}
