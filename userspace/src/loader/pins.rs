//! Where a filter lives in bpffs. Every path is named here and nowhere else:
//! `<root>/<ifname>/{prog,link,egress_prog,egress_link,<MAP_NAME>...}`.
//!
//! bpffs refuses names containing a dot, and interface names may have one
//! (`eth0.100`), so directory names escape `%` and `.` as `%25` and `%2e`. Staging
//! directories start with `%staging-`, and the writer lock is `%lock`, which no
//! escaped interface name can be.
//!
//! The pin root is root's alone (see `crate::trust`): made 0700 (a bpffs mounted
//! here is mounted 0700), refused when another user owns it or could write it, and
//! checked with every directory on the way to it before anything under it is
//! opened, removed or renamed; no symlink under it is ever followed. So no other
//! user can plant a link for `remove` to follow, rename a filter out of sight, or
//! hold the lock an apply or a rollback waits on.

use std::{
    fs::{self, File},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use airlock_common::{MAP_ACTIVE_GEN, MAP_META};

use aya::maps::{MapData, MapError};

use super::LoaderError;
use crate::trust;

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/airlock";
pub const PROGRAM_PIN: &str = "prog";
pub const LINK_PIN: &str = "link";
pub const EGRESS_PROGRAM_PIN: &str = "egress_prog";
pub const EGRESS_LINK_PIN: &str = "egress_link";

#[derive(Clone, Debug)]
pub struct PinRoot {
    root: PathBuf,
}

impl PinRoot {
    /// A relative `root` is made absolute against the current directory: the
    /// processes an apply starts (the confirm watchdog, `grace-record`) run from
    /// `/` and must find the same pins.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self {
            root: std::path::absolute(&root).unwrap_or(root),
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn interface_dir(&self, iface: &str) -> PathBuf {
        self.root.join(escape(iface))
    }

    pub(crate) fn staging_dir(&self, iface: &str) -> PathBuf {
        self.root.join(format!(
            "{STAGING_PREFIX}{}-{}",
            escape(iface),
            std::process::id()
        ))
    }

    /// Makes sure the root is on a bpffs (mounting one there, mode 0700, if
    /// needed), exists, and is root's alone; a root an older airlock made 0755 is
    /// made 0700.
    ///
    /// Mounting is refused outside the host's mount namespace (as under
    /// `ip netns exec`): a mount made there disappears with the process, and the
    /// pinned link, and with it the filter, would go too.
    pub fn ensure_mounted(&self) -> Result<(), LoaderError> {
        let root = &self.root;
        if !is_bpffs(root) {
            // The root may sit below an existing bpffs (the default, /sys/fs/bpf/airlock).
            if root.parent().is_some_and(is_bpffs) {
                trust::create_dir(root)?;
            } else {
                if !in_host_mount_namespace() {
                    return Err(LoaderError::BpffsPrivateNamespace { path: root.clone() });
                }
                trust::create_dir_all(root)?;
                // Before mounting: mount(2) follows a symlink.
                trust::check_dir_and_parents(root)?;
                mount(
                    Some("bpf"),
                    root,
                    Some("bpf"),
                    MsFlags::empty(),
                    Some(MOUNT_OPTIONS),
                )
                .map_err(|source| LoaderError::Mount {
                    path: root.clone(),
                    source,
                })?;
                tracing::info!(path = %root.display(), "mounted bpffs (mode 0700)");
            }
        }
        self.check()?;
        self.tighten();
        Ok(())
    }

    /// Whether a bpffs is mounted at the root (or the root is in one).
    pub fn on_bpffs(&self) -> bool {
        is_bpffs(&self.root)
    }

    /// Whether the root exists; an error if it does but another user could change
    /// what is in it (it, or a directory on the way to it, fails `crate::trust`).
    pub fn check(&self) -> Result<bool, LoaderError> {
        match fs::symlink_metadata(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(LoaderError::io("checking", &self.root, e)),
            Ok(_) => {}
        }
        trust::check_dir_and_parents(&self.root)?;
        Ok(true)
    }

    /// Makes a checked root that others may read (as an older airlock made it)
    /// 0700, as a new one is made. Best effort: it is safe as it is (nobody else
    /// can write it, and the lock is not on it).
    fn tighten(&self) {
        let Ok(dir) = trust::open_dir(&self.root) else {
            return;
        };
        let loose = dir.metadata().is_ok_and(|m| m.mode() & 0o077 != 0);
        if loose
            && dir
                .set_permissions(fs::Permissions::from_mode(trust::DIR_MODE))
                .is_ok()
        {
            tracing::info!(path = %self.root.display(), "pin root made 0700 (root's alone)");
        }
    }

    /// The directory the writer lock is taken on, opened (see `WriterLock`): a
    /// 0700 directory in the root, so that no other user can open it and hold the
    /// lock. The caller has run [`ensure_mounted`](Self::ensure_mounted).
    pub(crate) fn lock_dir(&self) -> Result<File, LoaderError> {
        Ok(trust::open_lock_dir(&self.root.join(LOCK_DIR))?)
    }

    /// Staging directories in the root, each with the interface it was for. An
    /// install pins into one and renames it into place when complete; whoever holds
    /// the writer lock knows that every one it finds was left by an apply that died.
    pub(crate) fn staging_dirs(&self) -> Vec<(String, PathBuf)> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let (escaped, pid) = name.strip_prefix(STAGING_PREFIX)?.rsplit_once('-')?;
                pid.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
                Some((unescape(escaped), entry.path()))
            })
            .collect()
    }

    /// Interfaces that have a filter pinned, sorted. A directory counts only if it
    /// holds one of Airlock's pins: the root may be shared with other tools (tc
    /// keeps `tc/globals` in the bpffs it uses), whose pins `remove --all` must leave
    /// alone. A symlink is no directory here. A root another user could change is
    /// an error.
    pub fn interfaces(&self) -> Result<Vec<String>, LoaderError> {
        if !self.check()? {
            return Ok(Vec::new());
        }
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LoaderError::io("listing", &self.root, e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| holds_our_pins(&e.path()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with(STAGING_PREFIX) && name != LOCK_DIR)
            .map(|name| unescape(&name))
            .collect();
        names.sort();
        Ok(names)
    }
}

/// bpffs's own default is 1777: anyone could make the pin root first.
const MOUNT_OPTIONS: &str = "mode=0700";
const LOCK_DIR: &str = "%lock";
const STAGING_PREFIX: &str = "%staging-";

/// Names Airlock pins in an interface's directory: its programs and links, and the
/// maps every layout has had (and `CONFIG`, which layouts 1 to 8 had). `remove_dir`
/// removes them last, so a directory a crash left half removed still shows one.
const OUR_PINS: [&str; 7] = [
    PROGRAM_PIN,
    LINK_PIN,
    EGRESS_PROGRAM_PIN,
    EGRESS_LINK_PIN,
    MAP_ACTIVE_GEN,
    LEGACY_CONFIG_PIN,
    MAP_META,
];

/// Layouts 1 to 8's per-generation config map (its content is in `POLICY` since).
const LEGACY_CONFIG_PIN: &str = "CONFIG";

fn holds_our_pins(dir: &Path) -> bool {
    OUR_PINS.iter().any(|name| present(&dir.join(name)))
}

/// Whether `path` exists, itself (a symlink is not followed).
pub(crate) fn present(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Checks the pin directory `dir` (an interface's or a staging one), everything in
/// it, and the pin root it is in with every directory on the way: see
/// `crate::trust`. Every reader of pins runs it before opening one, so a planted
/// symlink (or anything else root did not put there) stops every command with
/// the same clear error, not only the one that would follow it.
pub(crate) fn check_filter_dir(dir: &Path) -> Result<(), LoaderError> {
    if let Some(root) = dir.parent() {
        trust::check_dir_and_parents(root)?;
    }
    trust::check_dir(dir)?;
    let entries = fs::read_dir(dir).map_err(|e| LoaderError::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LoaderError::io("listing", dir, e))?;
        let path = entry.path();
        // Of the entry itself: DirEntry::metadata does not follow a symlink.
        let meta = entry
            .metadata()
            .map_err(|e| LoaderError::io("checking", &path, e))?;
        trust::check_entry(&path, &meta)?;
    }
    Ok(())
}

/// `dir/name`, once `name` is found not to be a symlink or anything but a pin of
/// root's; for a `dir` [`check_filter_dir`] accepted. What does not exist is left
/// for the opener to report.
pub(crate) fn entry(dir: &Path, name: &str) -> Result<PathBuf, LoaderError> {
    let path = dir.join(name);
    trust::check_entry_at(&path)?;
    Ok(path)
}

/// The pin `name` in the pin directory `dir`, checked ([`check_filter_dir`], then
/// the pin itself): for opening it with aya's `from_pin` and the like, which follow
/// symlinks.
pub fn pinned_path(dir: &Path, name: &str) -> Result<PathBuf, LoaderError> {
    check_filter_dir(dir)?;
    entry(dir, name)
}

/// Opens the map pinned at `path` (checked already, as [`pinned_path`] does),
/// `read_only` or to read and write. Reading only works on a read-only bpffs too,
/// which refuses a read-write open of any pin (EROFS).
pub(crate) fn open_map(path: &Path, read_only: bool) -> Result<MapData, MapError> {
    if !read_only {
        return MapData::from_pin(path);
    }
    let fd = super::sys::obj_get(path, super::sys::BPF_F_RDONLY).map_err(|io_error| {
        MapError::SyscallError(aya::sys::SyscallError {
            call: "BPF_OBJ_GET",
            io_error,
        })
    })?;
    MapData::from_fd(fd)
}

fn escape(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2e")
}

pub(crate) fn unescape(name: &str) -> String {
    name.replace("%2e", ".").replace("%25", "%")
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Whether this process shares init's mount namespace. When that cannot be told
/// (init's namespace link unreadable: a sandbox, a restricted /proc), it does not:
/// a bpffs mounted in a private namespace vanishes with the process, taking the
/// filter it was just told to install with it, while `apply` reported success.
fn in_host_mount_namespace() -> bool {
    match (
        fs::read_link("/proc/self/ns/mnt"),
        fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(own), Ok(init)) => own == init,
        _ => false,
    }
}

/// Unpins everything in `dir` and removes it. Unpinning the link detaches the
/// program once no process holds it any more. Nothing is touched unless `dir`, its
/// root and everything in `dir` pass [`check_filter_dir`]: a symlink planted as
/// `link` would have the detach below act on a filter elsewhere.
pub(crate) fn remove_dir(dir: &Path) -> Result<(), LoaderError> {
    check_filter_dir(dir)?;
    let entries = fs::read_dir(dir)
        .and_then(|entries| entries.collect::<Result<Vec<_>, _>>())
        .map_err(|e| LoaderError::io("listing", dir, e))?;
    // unlink(2) removes a symlink, never what it points to.
    let unpin = |path: &Path| {
        if present(path) {
            fs::remove_file(path).map_err(|e| LoaderError::io("unpinning", path, e))?;
        }
        Ok::<(), LoaderError>(())
    };
    // The links first, so the programs stop before their maps go away; the pins
    // that mark the directory as ours last (see `OUR_PINS`). Each link is detached
    // before it is unpinned, so the filter has stopped when this returns; should
    // the kernel refuse (a link already detached), unpinning still detaches it,
    // only a moment later.
    for link in [LINK_PIN, EGRESS_LINK_PIN] {
        let path = dir.join(link);
        if present(&path)
            && let Err(error) = super::link::detach_pinned(&path)
        {
            tracing::debug!(path = %path.display(), %error, "detaching before unpinning");
        }
        unpin(&path)?;
    }
    for entry in entries {
        if !OUR_PINS.iter().any(|name| entry.file_name() == *name) {
            unpin(&entry.path())?;
        }
    }
    for name in OUR_PINS {
        unpin(&dir.join(name))?;
    }
    fs::remove_dir(dir).map_err(|e| LoaderError::io("removing", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_with_dots_round_trip_without_dots() {
        for name in ["eth0", "eth0.100", "a%2e.b", "%staging-x"] {
            let escaped = escape(name);
            assert!(!escaped.contains('.'), "{escaped}");
            assert!(!escaped.starts_with(STAGING_PREFIX), "{escaped}");
            assert_eq!(unescape(&escaped), name);
        }
    }
}
