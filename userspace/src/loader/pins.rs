//! Where a filter lives in bpffs. Every path is named here and nowhere else:
//! `<root>/<ifname>/{prog,link,egress_prog,egress_link,<MAP_NAME>...}`.
//!
//! bpffs refuses names containing a dot, and interface names may have one
//! (`eth0.100`), so directory names escape `%` and `.` as `%25` and `%2e`. Staging
//! directories start with `%staging-`, which no escaped interface name can.

use std::{
    fs,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use airlock_common::{MAP_ACTIVE_GEN, MAP_CONFIG, MAP_META};

use super::LoaderError;

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

    /// Makes sure the root is on a bpffs, mounting one there if needed.
    ///
    /// Mounting is refused outside the host's mount namespace (as under
    /// `ip netns exec`): a mount made there disappears with the process, and the
    /// pinned link, and with it the filter, would go too.
    pub fn ensure_mounted(&self) -> Result<(), LoaderError> {
        let root = &self.root;
        if is_bpffs(root) {
            return Ok(());
        }
        // The root may sit below an existing bpffs (the default, /sys/fs/bpf/airlock).
        if let Some(parent) = root.parent()
            && is_bpffs(parent)
        {
            fs::create_dir_all(root).map_err(|e| LoaderError::io("creating", root, e))?;
            return Ok(());
        }
        if !in_host_mount_namespace() {
            return Err(LoaderError::BpffsPrivateNamespace { path: root.clone() });
        }
        fs::create_dir_all(root).map_err(|e| LoaderError::io("creating", root, e))?;
        mount(
            Some("bpf"),
            root,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| LoaderError::Mount {
            path: root.clone(),
            source,
        })?;
        tracing::info!(path = %root.display(), "mounted bpffs");
        Ok(())
    }

    /// Interfaces that have a filter pinned, sorted. A directory counts only if it
    /// holds one of Airlock's pins: the root may be shared with other tools (tc
    /// keeps `tc/globals` in the bpffs it uses), whose pins `remove --all` must leave
    /// alone.
    pub fn interfaces(&self) -> Result<Vec<String>, LoaderError> {
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
            .filter(|name| !name.starts_with(STAGING_PREFIX))
            .map(|name| unescape(&name))
            .collect();
        names.sort();
        Ok(names)
    }
}

const STAGING_PREFIX: &str = "%staging-";

/// Names Airlock pins in an interface's directory: its programs and links, and the
/// maps every layout has had. `remove_dir` removes them last, so a directory a crash
/// left half removed still shows one.
const OUR_PINS: [&str; 7] = [
    PROGRAM_PIN,
    LINK_PIN,
    EGRESS_PROGRAM_PIN,
    EGRESS_LINK_PIN,
    MAP_ACTIVE_GEN,
    MAP_CONFIG,
    MAP_META,
];

fn holds_our_pins(dir: &Path) -> bool {
    OUR_PINS.iter().any(|name| dir.join(name).exists())
}

fn escape(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2e")
}

fn unescape(name: &str) -> String {
    name.replace("%2e", ".").replace("%25", "%")
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

fn in_host_mount_namespace() -> bool {
    match (
        fs::read_link("/proc/self/ns/mnt"),
        fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(own), Ok(init)) => own == init,
        // Without /proc we cannot tell; assume the common case.
        _ => true,
    }
}

/// Unpins everything in `dir` and removes it. Unpinning the link detaches the
/// program once no process holds it any more.
pub(crate) fn remove_dir(dir: &Path) -> Result<(), LoaderError> {
    let entries = fs::read_dir(dir).map_err(|e| LoaderError::io("listing", dir, e))?;
    let unpin = |path: &Path| {
        if path.exists() {
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
        if path.exists()
            && let Err(error) = super::link::detach_pinned(&path)
        {
            tracing::debug!(path = %path.display(), %error, "detaching before unpinning");
        }
        unpin(&path)?;
    }
    for entry in entries.filter_map(Result::ok) {
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
