//! One agent per pin root: an advisory lock on a file in the state directory. The
//! kernel drops the lock when the process dies (even by SIGKILL), so a crashed agent
//! never blocks its successor.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use super::AgentError;

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

pub fn acquire(state_dir: &Path, pin_root: &Path) -> Result<InstanceLock, AgentError> {
    let path = lock_path(state_dir, pin_root);
    fs::create_dir_all(state_dir).map_err(|source| AgentError::Io {
        op: "creating",
        path: state_dir.to_owned(),
        source,
    })?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| AgentError::Io {
            op: "opening",
            path: path.clone(),
            source,
        })?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, _)) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
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
    let meta = fs::metadata(&path).ok()?;
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
    held.then(|| {
        fs::read_to_string(&path)
            .unwrap_or_default()
            .trim()
            .to_owned()
    })
}
