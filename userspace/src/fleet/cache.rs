//! The fleet source's local cache: the revision in force, assembled and checked, on
//! the host's disk (a hostPath that outlives the pod).
//!
//! Laid out as the kubelet lays out a ConfigMap volume, so the agent's file watch
//! (which already follows `..data` swaps) picks up a change, and the policy's
//! `file: sets/NAME.txt` imports resolve beside it:
//!
//! ```text
//! DIR/policy.yaml -> ..data/policy.yaml
//! DIR/sets        -> ..data/sets
//! DIR/..data      -> revisions/<digest hex>[-monitor]     (swapped by one rename)
//! DIR/revisions/<..>/{policy.yaml, sets/NAME.txt, meta.json}
//! ```
//!
//! `meta.json` names the policy, revision and digest, and the digest of every file;
//! `load` checks them, so a cache truncated or edited on the host is refused (and
//! reported), never enforced as if the API server had said so.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{DirBuilderExt as _, symlink},
    path::{Path, PathBuf},
};

use airlock_crds::{digest, resolve::Selected, shards::Assembled};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// What `meta.json` records about the revision in the cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub policy: String,
    pub revision: String,
    /// `airlock_crds::digest::of_revision`.
    pub digest: String,
    pub canary: bool,
    /// Apply in monitor mode, whatever the policy text says (a canary's first
    /// stage): the agent passes it to the apply pipeline as a mode override, and
    /// the text stays the revision's, byte for byte.
    pub monitor: bool,
    /// Relative path → digest of its bytes.
    pub files: BTreeMap<String, String>,
}

pub struct Cache {
    dir: PathBuf,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file the agent enforces.
    pub fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.yaml")
    }

    fn mkdir(path: &Path) -> Result<(), CacheError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io("creating", path))
    }

    /// Puts `assembled` in force in the cache. Returns false when it already was.
    /// Nothing is visible to the agent until the final rename of `..data`.
    pub fn store(&self, assembled: &Assembled, selected: &Selected) -> Result<bool, CacheError> {
        let hex = assembled.digest.trim_start_matches("sha256:");
        let name = if selected.monitor {
            format!("{hex}-monitor")
        } else {
            hex.to_string()
        };
        let target = format!("revisions/{name}");
        let data = self.dir.join("..data");
        if fs::read_link(&data).is_ok_and(|t| t == Path::new(&target)) && self.load().is_ok() {
            return Ok(false);
        }
        let revisions = self.dir.join("revisions");
        Self::mkdir(&revisions)?;
        let staging = revisions.join(format!(".staging-{name}"));
        let _ = fs::remove_dir_all(&staging);
        Self::mkdir(&staging.join("sets"))?;
        let mut files = BTreeMap::new();
        let mut write = |rel: String, text: &str| -> Result<(), CacheError> {
            let path = staging.join(&rel);
            fs::write(&path, text).map_err(io("writing", &path))?;
            files.insert(rel, digest::of(text.as_bytes()));
            Ok(())
        };
        write("policy.yaml".into(), &assembled.policy)?;
        for (set, text) in &assembled.sets {
            write(format!("sets/{set}.txt"), text)?;
        }
        let meta = Meta {
            policy: selected.policy.clone(),
            revision: selected.revision.clone(),
            digest: assembled.digest.clone(),
            canary: selected.canary,
            monitor: selected.monitor,
            files,
        };
        let meta_path = staging.join("meta.json");
        let json = serde_json::to_vec_pretty(&meta).expect("plain data serialises");
        fs::write(&meta_path, json).map_err(io("writing", &meta_path))?;
        let final_dir = revisions.join(&name);
        let _ = fs::remove_dir_all(&final_dir);
        fs::rename(&staging, &final_dir).map_err(io("renaming", &staging))?;
        for (link, to) in [
            ("policy.yaml", "..data/policy.yaml"),
            ("sets", "..data/sets"),
        ] {
            let path = self.dir.join(link);
            if fs::read_link(&path).is_err() {
                let _ = fs::remove_file(&path);
                symlink(to, &path).map_err(io("linking", &path))?;
            }
        }
        // The swap: one rename of a symlink, as the kubelet does.
        let tmp = self.dir.join("..data_tmp");
        let _ = fs::remove_file(&tmp);
        symlink(&target, &tmp).map_err(io("linking", &tmp))?;
        fs::rename(&tmp, &data).map_err(io("renaming", &tmp))?;
        self.prune(&name);
        Ok(true)
    }

    /// Keeps the revision in force and the one before it (a quick way back); the rest go.
    fn prune(&self, current: &str) {
        let Ok(entries) = fs::read_dir(self.dir.join("revisions")) else {
            return;
        };
        let mut others: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name() != current)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        others.sort();
        others.pop();
        for (_, path) in others {
            let _ = fs::remove_dir_all(path);
        }
    }

    /// The revision in the cache, checked against its recorded digests; `None` when
    /// the cache holds none yet.
    pub fn load(&self) -> Result<Option<Meta>, CacheError> {
        let data = self.dir.join("..data");
        if fs::symlink_metadata(&data).is_err() {
            return Ok(None);
        }
        let meta_path = data.join("meta.json");
        let bytes = fs::read(&meta_path).map_err(io("reading", &meta_path))?;
        let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| CacheError::Corrupt {
            path: meta_path.clone(),
            reason: e.to_string(),
        })?;
        if !meta.files.contains_key("policy.yaml") {
            return Err(CacheError::Corrupt {
                path: meta_path,
                reason: "names no policy.yaml".into(),
            });
        }
        for (rel, expected) in &meta.files {
            let path = data.join(rel);
            let bytes = fs::read(&path).map_err(io("reading", &path))?;
            let actual = digest::of(&bytes);
            if &actual != expected {
                return Err(CacheError::Corrupt {
                    path,
                    reason: format!("digest {actual}, recorded {expected}"),
                });
            }
        }
        Ok(Some(meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assembled(policy: &str, set: &str) -> Assembled {
        Assembled {
            policy: policy.into(),
            sets: [("blocklist".to_string(), set.to_string())].into(),
            digest: digest::of(format!("{policy}{set}").as_bytes()),
        }
    }

    fn selected(revision: &str, monitor: bool) -> Selected {
        Selected {
            policy: "fleet".into(),
            revision: revision.into(),
            canary: monitor,
            monitor,
        }
    }

    const POLICY: &str =
        "version: 1\nmode: enforce\nsets:\n  block:\n    file: sets/blocklist.txt\n";

    #[test]
    fn empty_cache_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Cache::new(dir.path()).load().unwrap(), None);
    }

    #[test]
    fn stored_revision_loads_back_through_the_policy_path() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let a = assembled(POLICY, "192.0.2.0/24\n");
        assert!(cache.store(&a, &selected("r1", false)).unwrap());
        assert!(
            !cache.store(&a, &selected("r1", false)).unwrap(),
            "unchanged"
        );
        let meta = cache.load().unwrap().unwrap();
        assert_eq!(
            (meta.revision.as_str(), meta.digest.as_str()),
            ("r1", a.digest.as_str())
        );
        assert_eq!(fs::read_to_string(cache.policy_path()).unwrap(), POLICY);
        assert_eq!(
            fs::read_to_string(dir.path().join("sets/blocklist.txt")).unwrap(),
            "192.0.2.0/24\n"
        );
        // A new revision swaps ..data; the old one stays for a quick way back.
        let b = assembled(POLICY, "198.51.100.0/24\n");
        assert!(cache.store(&b, &selected("r2", false)).unwrap());
        assert_eq!(cache.load().unwrap().unwrap().revision, "r2");
        assert_eq!(
            fs::read_to_string(dir.path().join("sets/blocklist.txt")).unwrap(),
            "198.51.100.0/24\n"
        );
        let c = assembled(POLICY, "203.0.113.0/24\n");
        cache.store(&c, &selected("r3", false)).unwrap();
        assert_eq!(
            fs::read_dir(dir.path().join("revisions")).unwrap().count(),
            2
        );
    }

    #[test]
    fn a_tampered_cache_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        cache
            .store(&assembled(POLICY, "192.0.2.0/24\n"), &selected("r1", false))
            .unwrap();
        fs::write(dir.path().join("..data/sets/blocklist.txt"), "").unwrap();
        let error = cache.load().unwrap_err().to_string();
        assert!(
            error.contains("blocklist.txt") && error.contains("digest"),
            "{error}"
        );
        fs::remove_file(dir.path().join("..data/meta.json")).unwrap();
        assert!(cache.load().is_err());
    }

    #[test]
    fn monitor_stage_keeps_the_text_and_records_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let a = assembled(POLICY, "192.0.2.0/24\n");
        assert!(cache.store(&a, &selected("r1", true)).unwrap());
        // The revision's text, byte for byte (its `mode: enforce` included): the
        // mode is the agent's override, from the record.
        assert_eq!(fs::read_to_string(cache.policy_path()).unwrap(), POLICY);
        let meta = cache.load().unwrap().unwrap();
        assert!(meta.monitor && meta.canary);
        assert_eq!(meta.files["policy.yaml"], digest::of(POLICY.as_bytes()));
        // Promoted from the monitor stage to enforcing: the same text, a change.
        assert!(cache.store(&a, &selected("r1", false)).unwrap());
        assert!(!cache.load().unwrap().unwrap().monitor);
        assert_eq!(fs::read_to_string(cache.policy_path()).unwrap(), POLICY);
    }
}
