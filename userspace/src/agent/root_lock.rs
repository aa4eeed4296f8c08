//! An agent's claim on its pin root: an exclusive `flock` on `%agent`, a 0700
//! directory in the pin root itself (bpffs holds no regular files; no escaped
//! interface name starts with `%`). It follows the pin root, not `--state-dir`, so
//! two agents on one pin root exclude each other whatever their state directories
//! say, and the CLI finds the agent from the pin root alone, even one in a container
//! with a bpffs shared from the host. The kernel drops the lock when the agent dies.

use std::{fs::File, os::unix::fs::MetadataExt as _, path::Path};

use nix::fcntl::{Flock, FlockArg};

use super::AgentError;
use crate::{
    loader::{LoaderError, PinRoot},
    trust,
};

const AGENT_LOCK_DIR: &str = "%agent";

pub struct RootLock {
    _lock: Flock<File>,
    /// The lock directory's device and inode.
    id: (u64, u64),
}

impl RootLock {
    /// Follows the pin root to the bpffs mounted there now. A bpffs unmounted
    /// (`umount -l`) while this lock holds a directory of it open lives on,
    /// detached, and so do the filters pinned in it: they keep enforcing, but no
    /// apply can replace them (their interfaces are taken). Once another bpffs is
    /// at the pin root, the lock moves there and lets the old one go, and the old
    /// filters with it: the next reconcile installs the policy in the new one.
    pub fn follow(self, root: &PinRoot) -> Self {
        let path = root.path().join(AGENT_LOCK_DIR);
        let now = std::fs::symlink_metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now == Some(self.id) || !root.on_bpffs() {
            return self;
        }
        match acquire(root) {
            Ok(moved) => {
                tracing::warn!(
                    pin_root = %root.path().display(),
                    "another bpffs is mounted at the pin root: the filters pinned in the one unmounted go, and are installed in this one"
                );
                moved
            }
            Err(error) => {
                tracing::warn!(%error, "another bpffs is mounted at the pin root, but its agent lock cannot be taken");
                self
            }
        }
    }
}

/// Takes the pin root's agent lock; the pin root must be mounted (and so checked).
/// Like the writer lock's `%lock`: 0700 and root's, so no other user can hold it.
pub fn acquire(root: &PinRoot) -> Result<RootLock, AgentError> {
    let path = root.path().join(AGENT_LOCK_DIR);
    let dir = trust::open_lock_dir(&path).map_err(|e| AgentError::Loader(LoaderError::Trust(e)))?;
    let meta = dir
        .metadata()
        .map_err(|e| AgentError::Loader(LoaderError::io("checking", &path, e)))?;
    let id = (meta.dev(), meta.ino());
    let mut dir = dir;
    // A CLI checking for an agent ([`agent_holds`]) holds a shared lock for an
    // instant: tried again for a while, an agent starting then still starts.
    for _ in 0..PROBE_RETRIES {
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(RootLock { _lock: lock, id }),
            Err((back, nix::errno::Errno::EWOULDBLOCK)) => {
                dir = back;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(_) => break,
        }
    }
    Err(AgentError::AlreadyRunning {
        pin_root: root.path().to_owned(),
        holder: agent_pid(root.path())
            .map_or_else(|| "another process".into(), |pid| format!("pid {pid}")),
        lock: path.clone(),
    })
}

/// How often [`acquire`] tries the lock, 10 ms apart.
const PROBE_RETRIES: u32 = 50;

/// Whether an agent holds `pin_root`'s lock, asked of the lock itself: every
/// process that shares the bpffs sees it, whatever its PID namespace, while
/// /proc/locks ([`agent_pid`]) leaves out a holder that is not in the PID namespace
/// of the /proc it is read from (the agent on the host, seen from a container). A
/// shared lock, held for no longer than this call, taken and let go; an agent
/// starting at that instant tries its own again ([`acquire`]).
pub fn agent_holds(pin_root: &Path) -> bool {
    let Ok(dir) = trust::open_dir(&pin_root.join(AGENT_LOCK_DIR)) else {
        return false;
    };
    matches!(
        Flock::lock(dir, FlockArg::LockSharedNonblock),
        Err((_, nix::errno::Errno::EWOULDBLOCK))
    )
}

/// The process id of the agent that manages `pin_root`, if one runs. Read from
/// /proc/locks without trying the lock ([`agent_holds`] probes it where this finds
/// nothing). Only an exclusive (WRITE) lock is the agent's: a shared one is another
/// airlock's brief probe, and must not be taken for an agent.
pub fn agent_pid(pin_root: &Path) -> Option<u32> {
    let meta = std::fs::symlink_metadata(pin_root.join(AGENT_LOCK_DIR)).ok()?;
    // As the kernel prints a lock's file: device major:minor in hex, then inode.
    let file = format!(
        "{:02x}:{:02x}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    // "1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF"; a waiter's line has "->"
    // after the number.
    locks.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        (words.get(1) == Some(&"FLOCK")
            && words.get(3) == Some(&"WRITE")
            && words.get(5) == Some(&file.as_str()))
        .then(|| words.get(4)?.parse().ok())
        .flatten()
    })
}
