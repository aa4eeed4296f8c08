//! One agent per pin root: an advisory lock on a file in the state directory. The
//! kernel drops the lock when the process dies (even by SIGKILL), so a crashed agent
//! never blocks its successor.
//!
//! The state directory and the lock file are root's alone (`crate::trust`: made
//! 0700 and 0600 whatever the umask, refused if another user could write them,
//! never opened through a symlink): a user who could open the lock file could hold
//! its lock and keep every agent from starting.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use super::AgentError;
use crate::{loader::LoaderError, trust};

pub struct InstanceLock {
    _lock: Flock<File>,
}

/// The agent's file `<kind>` for `pin_root`, keyed by the pin root's path with `/`
/// spelled `_`, so two agents with different pin roots (tests, several namespaces)
/// don't exclude each other.
fn state_file(state_dir: &Path, pin_root: &Path, kind: &str) -> PathBuf {
    // By components: "/a/b/" and "/a/b" are one pin root.
    let key: String = pin_root
        .components()
        .collect::<PathBuf>()
        .display()
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join(format!("agent{key}.{kind}"))
}

fn lock_path(state_dir: &Path, pin_root: &Path) -> PathBuf {
    state_file(state_dir, pin_root, "lock")
}

/// Where the agent keeps its report for `airlock status`.
pub fn report_path(state_dir: &Path, pin_root: &Path) -> PathBuf {
    state_file(state_dir, pin_root, "status")
}

/// Where the agent serves its drop samples to `airlock watch`.
pub fn samples_socket_path(state_dir: &Path, pin_root: &Path) -> PathBuf {
    state_file(state_dir, pin_root, "samples")
}

/// Makes the state directory (0700) if it is missing, and checks that only root
/// can change it.
fn prepare_state_dir(state_dir: &Path) -> Result<(), AgentError> {
    let trusted =
        trust::create_dir_all(state_dir).and_then(|()| trust::check_dir_and_parents(state_dir));
    trusted.map_err(|e| AgentError::Loader(LoaderError::Trust(e)))
}

pub fn acquire(state_dir: &Path, pin_root: &Path) -> Result<InstanceLock, AgentError> {
    let path = lock_path(state_dir, pin_root);
    prepare_state_dir(state_dir)?;
    let file =
        trust::open_private_file(&path).map_err(|e| AgentError::Loader(LoaderError::Trust(e)))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, _)) => {
            let holder = read_holder(&path);
            drop(file);
            return Err(AgentError::AlreadyRunning {
                pin_root: pin_root.to_owned(),
                lock: path,
                holder: holder.trim().to_owned(),
            });
        }
    };
    // Record who holds it, for the message a second agent prints.
    let _ = lock.set_len(0);
    let _ = writeln!(lock, "pid {}", std::process::id());
    Ok(InstanceLock { _lock: lock })
}

/// Who holds the agent lock of `pin_root` ("pid N"), if an agent does. Looked up in
/// /proc/locks rather than by trying the lock: taking it even for a moment could
/// make an agent starting at that moment refuse to run.
pub fn holder(state_dir: &Path, pin_root: &Path) -> Option<String> {
    let path = lock_path(state_dir, pin_root);
    let meta = fs::symlink_metadata(&path).ok()?;
    // As the kernel prints a lock's file: device major:minor in hex, then inode.
    let file = format!(
        "{:02x}:{:02x}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    let locks = fs::read_to_string("/proc/locks").ok()?;
    let held = locks.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.nth(1) == Some("FLOCK") && words.any(|word| word == file)
    });
    held.then(|| read_holder(&path))
}

/// What the lock file says about its holder ("pid N"), read without following a
/// symlink, and only as much as that takes.
fn read_holder(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        let _ = file.take(64).read_to_string(&mut text);
    }
    text.trim().to_owned()
}
