//! Reloads: the policy file read, checked and put in force through the one apply
//! pipeline (`crate::pipeline`), or rejected. A rejection is logged and counted
//! once per distinct content and error (a file rejected once and seen again, by a
//! SIGHUP or a retry, is not news), says what stays enforced, and marks the file
//! and the kernel out of sync until a version of the file is applied.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use airlock_common::Counter;

use super::{
    reconcile::{Applied, Reconciler, unix_now},
    state::{FleetRejection, Rejection, RejectionKind},
};
use crate::{
    fleet::cache::Meta,
    loader::{PolicyMaps, PolicySummary},
    pipeline::{self, GraceRecord, Missing},
    policy::{self, PolicyError},
    safety::lockout::LockoutError,
};

/// Why a reload put nothing in force.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReloadError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Invalid, or more than the kernel maps hold.
    #[error(transparent)]
    Invalid(PolicyError),
    /// The anti-lockout check refused it (the agent was not started with --force).
    #[error(
        "the policy would lock you out: {} (start the agent with --force to apply such a policy)",
        .0.reasons()
    )]
    Lockout(LockoutError),
    /// The host or the kernel failed it: an interface, a map, a pending confirmation.
    #[error(transparent)]
    Apply(pipeline::Error),
    /// The fleet's local policy cache could not be read consistently (it changes
    /// under the reader while a new revision arrives): read again at the next check.
    #[error("{0}")]
    FleetCache(String),
}

impl From<pipeline::Error> for ReloadError {
    fn from(error: pipeline::Error) -> Self {
        match error {
            pipeline::Error::Capacity(error) => ReloadError::Invalid(error),
            pipeline::Error::Lockout(error) => ReloadError::Lockout(error),
            other => ReloadError::Apply(other),
        }
    }
}

impl ReloadError {
    /// Worth trying again without a change of the file: the kernel or the host
    /// failed it (a pending confirmation, an interface error), not the policy.
    fn transient(&self) -> bool {
        matches!(
            self,
            ReloadError::Read { .. } | ReloadError::Apply(_) | ReloadError::FleetCache(_)
        )
    }

    /// Its label in metrics and in `status`.
    pub(super) fn kind(&self) -> RejectionKind {
        match self {
            ReloadError::Read { .. } | ReloadError::FleetCache(_) => RejectionKind::Unreadable,
            ReloadError::Invalid(error) => error
                .kind()
                .map_or(RejectionKind::Unreadable, RejectionKind::Policy),
            ReloadError::Lockout(_) => RejectionKind::Lockout,
            ReloadError::Apply(_) => RejectionKind::Apply,
        }
    }
}

/// What a reload read: the policy text and the identity of every file it imports
/// (device, inode, size, modification time), so an edited import is a change even
/// when the policy text is not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Fingerprint {
    text: String,
    imports: Vec<(PathBuf, Option<FileId>)>,
    /// With the fleet source: the cache's record of the revision whose text this
    /// is (its monitor stage is a mode override: the same text staged and then
    /// enforced is a change). `None` without it, or, once applied, when the cache
    /// changed while the pipeline read it (what the kernel holds is then not known
    /// to be one revision, and the next reload must apply again).
    revision: Option<Meta>,
}

/// A file's device, inode, size and modification time (seconds, nanoseconds).
type FileId = (u64, u64, u64, i64, i64);

impl Fingerprint {
    fn of(text: String, imports: &[PathBuf]) -> Self {
        let imports = imports
            .iter()
            .map(|path| {
                let id = std::fs::metadata(path)
                    .ok()
                    .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()));
                (path.clone(), id)
            })
            .collect();
        Self {
            text,
            imports,
            revision: None,
        }
    }

    /// The mode the fleet source asks for, over the policy's own.
    fn mode(&self) -> Option<policy::Mode> {
        self.revision
            .as_ref()
            .and_then(|m| m.monitor.then_some(policy::Mode::Monitor))
    }
}

/// The last rejection, to tell a new one from the same one seen again.
pub(super) struct Rejected {
    fingerprint: Fingerprint,
    /// The error as said (errors are compared by what they say).
    pub(super) message: String,
    /// Worth trying again without a change of the file: the kernel or the host
    /// failed it (a pending confirmation, an interface error), not the policy.
    pub(super) transient: bool,
}

impl Reconciler {
    /// Reads the policy file and applies it if it changed (or if `force`).
    /// Returns whether it reconciled too (after a successful apply).
    pub(super) fn load_and_enforce(&mut self, why: &str, force: bool) -> bool {
        let text = match policy::read_file(&self.policy_path) {
            Ok(text) => text,
            Err(source) => {
                let error = ReloadError::Read {
                    path: self.policy_path.clone(),
                    source,
                };
                self.reject(why, Fingerprint::of(String::new(), &[]), &error);
                return false;
            }
        };
        // An invalid policy's imports are watched too: fixing one is a change.
        if let Some(files) = policy::imported_files(&text, &self.policy_path) {
            self.imports = files;
        }
        let mut fingerprint = Fingerprint::of(text, &self.imports);
        match self.fleet_revision(&fingerprint.text) {
            Ok(revision) => fingerprint.revision = revision,
            Err(error) => {
                self.reject(why, fingerprint, &ReloadError::FleetCache(error));
                return false;
            }
        }
        if !force {
            if self
                .applied
                .as_ref()
                .is_some_and(|a| a.fingerprint == fingerprint)
            {
                tracing::debug!(why, "policy file unchanged");
                self.mark_in_sync();
                return false;
            }
            if self
                .rejected
                .as_ref()
                .is_some_and(|r| r.fingerprint == fingerprint)
            {
                tracing::debug!(why, "policy file unchanged since it was rejected");
                return false;
            }
        }
        let policy = match policy::parse_str(&fingerprint.text, &self.policy_path) {
            Ok(policy) => policy,
            Err(error) => {
                self.reject(why, fingerprint, &ReloadError::Invalid(error));
                return false;
            }
        };
        let options = pipeline::Options {
            iface_overrides: self.overrides.clone(),
            missing: Missing::Skip,
            force: self.force,
            grace_record: GraceRecord::Thread,
            xdp_mode: self.xdp_mode,
            mode: fingerprint.mode(),
            ..pipeline::Options::default()
        };
        // Under the writer lock from here to the swap: the counters read are the
        // last the outgoing policy counts.
        let prepared = pipeline::prepare(&self.root, policy, &options);
        let result = prepared.and_then(|prepared| {
            let outgoing = self.rule_counters(&prepared.plan.ifaces);
            prepared.commit().map(|applied| (applied, outgoing))
        });
        let (applied, outgoing) = match result {
            Ok(done) => done,
            Err(error) => {
                self.reject(why, fingerprint, &ReloadError::from(error));
                return false;
            }
        };
        let plan = applied.plan;
        if let Some(revision) = fingerprint.revision.take() {
            // The imports were read after the record: if the cache changed
            // meanwhile, the kernel may hold parts of two revisions. The change's own
            // reload applies again (this fingerprint then differs from its).
            fingerprint.revision = self.fleet_unchanged(revision);
        }
        let was_in_sync = self.state.lock().in_sync;
        {
            let mut state = self.state.lock();
            // Folded in only once the swap succeeded: a failed (and undone) apply
            // leaves the old counters running, and carrying them as well would
            // count them twice.
            for (key, counter) in outgoing {
                let total = state.carried.entry(key).or_default();
                *total = Counter {
                    packets: total.packets + counter.packets,
                    bytes: total.bytes + counter.bytes,
                };
            }
            for outcome in applied.outcomes {
                state.interfaces.insert(outcome.iface, outcome.serial);
            }
            state.reloads += 1;
            state.last_reload = unix_now();
            state.prefixes_v4 = plan.summary.prefixes_v4;
            state.prefixes_v6 = plan.summary.prefixes_v6;
            state.mode = plan.summary.mode.clone();
            // Sets are shared (Arc) inside the policy: this copies no prefix list.
            state.policy = Some(std::sync::Arc::new(plan.policy.clone()));
            state.in_sync = true;
            if self.fleet_cache.is_some() {
                state.fleet_applied = fingerprint.revision.clone();
                state.fleet_rejected = None;
                state.fleet_settling = true;
            }
        }
        tracing::info!(
            why,
            policy = %self.policy_path.display(),
            rules = plan.compiled.rule_names.len(),
            prefixes_v4 = plan.summary.prefixes_v4,
            prefixes_v6 = plan.summary.prefixes_v6,
            "policy in force"
        );
        if !was_in_sync && self.rejected.is_some() {
            tracing::info!(policy = %self.policy_path.display(), "the policy file and the kernel are in sync again");
        }
        self.rejected = None;
        self.applied = Some(Applied {
            fingerprint,
            compiled: plan.compiled,
            summary: plan.summary,
            policy: plan.policy,
        });
        self.remove_unselected();
        self.reconcile();
        // `ready` now describes this revision (reconcile set it).
        self.state.lock().fleet_settling = false;
        true
    }

    /// With the fleet source: the cache's record of the revision whose policy
    /// `text` is (which names it, and says whether to apply it in monitor mode, a
    /// canary's first stage), checked against its files. The record is read after
    /// the text, so it is never older: a text that does not match it was read in
    /// the middle of a swap, and the reload the swap triggers reads both again.
    fn fleet_revision(&self, text: &str) -> Result<Option<Meta>, String> {
        let Some(cache) = &self.fleet_cache else {
            return Ok(None);
        };
        let meta = cache
            .load()
            .map_err(|e| format!("the policy cache is unusable: {e}"))?
            .ok_or_else(|| "the policy cache holds no revision".to_string())?;
        if meta.files.get("policy.yaml") != Some(&airlock_crds::digest::of(text.as_bytes())) {
            return Err(format!(
                "the policy cache changed while it was read (now revision {}); reading it again",
                meta.revision
            ));
        }
        Ok(Some(meta))
    }

    /// `revision` if the cache still records it after an apply read it, so that
    /// everything the apply read was that revision's.
    fn fleet_unchanged(&self, revision: Meta) -> Option<Meta> {
        let now = self.fleet_cache.as_ref()?.load().ok().flatten();
        if now.as_ref() == Some(&revision) {
            return Some(revision);
        }
        tracing::info!(
            revision = %revision.revision,
            "the policy cache changed while it was applied; applying it again"
        );
        None
    }

    fn mark_in_sync(&mut self) {
        let mut state = self.state.lock();
        state.fleet_rejected = None;
        if !state.in_sync {
            state.in_sync = true;
            drop(state);
            tracing::info!(policy = %self.policy_path.display(), "the policy file and the kernel are in sync again");
        }
        self.rejected = None;
    }

    fn reject(&mut self, why: &str, fingerprint: Fingerprint, error: &ReloadError) {
        let message = error.to_string();
        let seen = self
            .rejected
            .as_ref()
            .is_some_and(|r| r.fingerprint == fingerprint && r.message == message);
        // A forced re-apply of the content already in force that failed leaves
        // file and kernel in sync: the kernel still holds that content.
        let in_sync = self
            .applied
            .as_ref()
            .is_some_and(|a| a.fingerprint == fingerprint);
        // The fleet's status names the revision that was not put in force.
        let fleet_rejected = fingerprint.revision.clone().map(|revision| FleetRejection {
            revision,
            kind: error.kind(),
            error: message.clone(),
        });
        self.rejected = Some(Rejected {
            fingerprint,
            message: message.clone(),
            transient: error.transient(),
        });
        let mut state = self.state.lock();
        state.in_sync = in_sync;
        if fleet_rejected.is_some() {
            state.fleet_rejected = fleet_rejected;
        }
        if seen {
            drop(state);
            tracing::debug!(why, error = %message, "policy file still rejected (same content, same error)");
            return;
        }
        let kind = error.kind();
        *state.reload_failures.entry(kind).or_default() += 1;
        state.last_rejection = Some(Rejection {
            at_unix: unix_now() as u64,
            kind: Some(kind),
            error: message.clone(),
        });
        drop(state);
        let enforced = self.what_stays_enforced(in_sync);
        tracing::error!(
            why,
            policy = %self.policy_path.display(),
            kind = kind.name(),
            error = %message,
            "policy rejected; {enforced}"
        );
    }

    /// What the kernel enforces after a rejection, said as it is.
    fn what_stays_enforced(&self, in_sync: bool) -> String {
        if in_sync {
            return "the policy in force (this content, applied before) stays in force".into();
        }
        if let Some(applied) = &self.applied {
            return format!(
                "the last good policy (applied {}) stays in force: the policy file and the kernel differ",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(applied.summary.applied_at)
                )
            );
        }
        let pinned: Vec<(String, PolicySummary)> = self
            .root
            .interfaces()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|iface| {
                let summary = pinned_summary(&self.root.interface_dir(&iface))?;
                Some((iface, summary))
            })
            .collect();
        if pinned.is_empty() {
            return "nothing is enforced: no valid policy has been applied (no filter is pinned)"
                .into();
        }
        let filters: Vec<String> = pinned
            .iter()
            .map(|(iface, s)| format!("{iface}: apply #{} of {}", s.serial, s.policy_path))
            .collect();
        format!(
            "the filter pinned before this agent started keeps enforcing ({}): the policy file and the kernel differ",
            filters.join(", ")
        )
    }

    /// The per-rule counters of the policy in force on `ifaces`, which a swap is
    /// about to replace: carried into the totals so `/metrics` counters never go
    /// backwards on a reload.
    fn rule_counters(&self, ifaces: &[String]) -> Vec<((String, String, bool), Counter)> {
        let mut counters = Vec::new();
        for iface in ifaces {
            let Ok(maps) = PolicyMaps::open_pinned(&self.root.interface_dir(iface)) else {
                continue;
            };
            let Ok(now) = maps.counters() else { continue };
            let Ok(Some(summary)) = maps.generation_summary(now.generation) else {
                continue;
            };
            for (rule, (allowed, refused)) in summary.rules.iter().zip(now.rules) {
                counters.push(((iface.clone(), rule.name.clone(), true), allowed));
                counters.push(((iface.clone(), rule.name.clone(), false), refused));
            }
        }
        counters
    }
}

/// The summary of the complete policy in force in the filter pinned at `dir`.
pub(super) fn pinned_summary(dir: &Path) -> Option<PolicySummary> {
    PolicyMaps::open_pinned(dir).ok()?.active_summary().ok()?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        policy::DiagnosticKind,
        safety::lockout::{Assessment, Finding, Severity},
    };

    #[test]
    fn each_rejection_has_its_kind_and_only_the_host_s_failures_are_retried() {
        let read = ReloadError::Read {
            path: "/etc/airlock/policy.yaml".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(read.kind(), RejectionKind::Unreadable);
        assert!(read.transient());

        let invalid = policy::parse_str("version: 1\nrules: [x]\n", Path::new("p.yaml"))
            .expect_err("invalid");
        let invalid = ReloadError::Invalid(invalid);
        assert_eq!(
            invalid.kind(),
            RejectionKind::Policy(DiagnosticKind::Structure)
        );
        assert!(!invalid.transient());

        let assessment = Assessment {
            findings: vec![
                Finding {
                    severity: Severity::Block,
                    message: "cuts your SSH session".into(),
                },
                Finding {
                    severity: Severity::Block,
                    message: "cuts the gateway".into(),
                },
            ],
        };
        let lockout = ReloadError::from(pipeline::Error::Lockout(LockoutError { assessment }));
        assert_eq!(lockout.kind(), RejectionKind::Lockout);
        assert!(!lockout.transient());
        assert_eq!(
            lockout.to_string(),
            "the policy would lock you out: cuts your SSH session; cuts the gateway (start the agent with --force to apply such a policy)"
        );

        let apply = ReloadError::from(pipeline::Error::DryRun);
        assert_eq!(apply.kind(), RejectionKind::Apply);
        assert!(apply.transient());
    }
}
