//! The agent's word on itself for `airlock status`: a small JSON file beside its
//! lock, rewritten whenever it changes. The kernel knows what is enforced; only
//! the agent knows whether the policy file says the same, and why not.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{lock, state::Rejection};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    pub pid: u32,
    /// The policy file it enforces.
    pub policy_file: String,
    /// A valid policy is enforced on every selected interface.
    pub ready: bool,
    /// The policy in force is the policy file as it is now.
    pub in_sync: bool,
    /// Seconds since the Unix epoch of the last successful reload (none yet: null).
    pub last_reload_unix: Option<u64>,
    /// The last time the policy file was rejected, and why.
    pub last_rejection: Option<Rejection>,
}

/// Writes `report` whole (a temporary file renamed over the old one, so a reader
/// never sees half of it), readable by root only like the rest of the state
/// directory's files. Never follows a symlink planted in its place.
pub(super) fn write(path: &Path, report: &AgentReport) -> io::Result<()> {
    let temp = path.with_extension("status.tmp");
    let _ = fs::remove_file(&temp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)?;
    file.write_all(&serde_json::to_vec(report).map_err(io::Error::other)?)?;
    drop(file);
    fs::rename(&temp, path)
}

/// The report of the agent that manages `pin_root`, if one runs (a report left by
/// an agent that is gone says nothing about now).
pub fn read(state_dir: &Path, pin_root: &Path) -> Option<AgentReport> {
    lock::holder(state_dir, pin_root)?;
    let text = fs::read(lock::report_path(state_dir, pin_root)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Where the report of the agent for `pin_root` is kept.
pub fn path(state_dir: &Path, pin_root: &Path) -> PathBuf {
    lock::report_path(state_dir, pin_root)
}
