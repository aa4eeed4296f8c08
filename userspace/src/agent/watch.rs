//! Reload triggers: the policy file and the files it imports, nothing else.
//!
//! Their directories are watched, not the files: editors replace a file by writing
//! a temporary one and renaming it over, and a Kubernetes ConfigMap volume swaps a
//! `..data` symlink; both leave a watch on the old inode deaf. Only events that
//! name one of those files (or a `..data` beside one) count: anything else written
//! in the directory, the agent's own log included, is none of our business (it
//! used to make every log line a reload).

use std::{
    collections::{BTreeSet, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::{AgentError, Trigger};

pub struct PolicyWatch {
    watcher: RecommendedWatcher,
    /// Paths (as the events spell them: watched directory joined with the name)
    /// whose changes trigger a reload.
    wanted: Arc<RwLock<HashSet<PathBuf>>>,
    dirs: BTreeSet<PathBuf>,
    policy: PathBuf,
    imports: Vec<PathBuf>,
}

/// The directory to watch for `file`, and the paths in it that matter.
fn watched(file: &Path) -> Option<(PathBuf, [PathBuf; 2])> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let name = file.file_name()?;
    let paths = [dir.join(name), dir.join("..data")];
    Some((dir, paths))
}

impl PolicyWatch {
    pub fn new(policy: &Path, triggers: mpsc::Sender<Trigger>) -> Result<Self, AgentError> {
        let wanted: Arc<RwLock<HashSet<PathBuf>>> = Arc::default();
        let filter = Arc::clone(&wanted);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = match event {
                // An overflowed queue may have hidden a change: check.
                Ok(event) if event.need_rescan() => true,
                Ok(event) => {
                    !matches!(event.kind, EventKind::Access(_)) && {
                        let wanted = filter.read().unwrap_or_else(PoisonError::into_inner);
                        event.paths.iter().any(|path| wanted.contains(path))
                    }
                }
                Err(_) => true,
            };
            if relevant {
                // A full channel already holds a pending reload.
                let _ = triggers.try_send(Trigger::PolicyFileChanged);
            }
        })
        .map_err(AgentError::Watch)?;
        let mut watch = Self {
            watcher,
            wanted,
            dirs: BTreeSet::new(),
            policy: policy.to_owned(),
            imports: Vec::new(),
        };
        // The policy's own directory must be watchable: start-up fails otherwise.
        let (dir, _) = watched(policy).ok_or_else(|| {
            AgentError::Watch(notify::Error::generic("the policy path names no file"))
        })?;
        watch
            .watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(AgentError::Watch)?;
        watch.dirs.insert(dir);
        watch.update(&[]);
        Ok(watch)
    }

    /// Watches `imports` (as well as the policy) from now on, and no other import.
    pub fn set_imports(&mut self, imports: &[PathBuf]) {
        if self.imports != imports {
            self.update(imports);
        }
    }

    fn update(&mut self, imports: &[PathBuf]) {
        self.imports = imports.to_vec();
        let mut dirs = BTreeSet::new();
        let mut wanted = HashSet::new();
        for file in std::iter::once(&self.policy).chain(imports) {
            if let Some((dir, paths)) = watched(file) {
                dirs.insert(dir);
                wanted.extend(paths);
            }
        }
        *self.wanted.write().unwrap_or_else(PoisonError::into_inner) = wanted;
        for gone in self.dirs.difference(&dirs).cloned().collect::<Vec<_>>() {
            let _ = self.watcher.unwatch(&gone);
            self.dirs.remove(&gone);
        }
        for dir in dirs {
            if self.dirs.contains(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(dir);
                }
                Err(error) => tracing::warn!(
                    dir = %dir.display(),
                    %error,
                    "cannot watch an imported file's directory; a change there is seen at the next SIGHUP or policy change"
                ),
            }
        }
    }
}
