//! Reload triggers from the policy file. The directory is watched, not the file:
//! editors replace files by write-to-temp-and-rename, and a Kubernetes ConfigMap
//! volume swaps a `..data` symlink; both leave a watch on the old inode deaf.

use std::path::{Path, PathBuf};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::{AgentError, Trigger};

pub fn watch_policy(
    policy: &Path,
    triggers: mpsc::Sender<Trigger>,
) -> Result<RecommendedWatcher, AgentError> {
    let dir = policy
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            Ok(event) => !matches!(event.kind, EventKind::Access(_)),
            // An overflowed queue may have hidden a change: check.
            Err(_) => true,
        };
        if relevant {
            // A full channel already holds a pending reload.
            let _ = triggers.try_send(Trigger::PolicyFileChanged);
        }
    })
    .map_err(AgentError::Watch)?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(AgentError::Watch)?;
    Ok(watcher)
}
