//! What the agent knows about itself, shared with the HTTP server: readiness and the
//! figures `/metrics` reports besides the kernel's own counters.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use airlock_common::Counter;

use crate::policy::{DiagnosticKind, Policy};

#[derive(Debug, Default)]
pub struct AgentState {
    inner: Mutex<StateInner>,
}

#[derive(Debug, Default, Clone)]
pub struct StateInner {
    /// A valid policy is enforced on every selected interface.
    pub ready: bool,
    /// The policy in force is the policy file as it is now (false once the file
    /// was rejected, until a version of it is applied).
    pub in_sync: bool,
    /// The last time the policy file was rejected, and why.
    pub last_rejection: Option<Rejection>,
    pub reloads: u64,
    /// Rejections of the policy file, by kind.
    pub reload_failures: BTreeMap<RejectionKind, u64>,
    pub repairs: u64,
    /// Unix seconds of the last successful reload (0: none yet).
    pub last_reload: f64,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    pub mode: String,
    /// The policy last applied, for the self-check's findings in `/metrics`.
    pub policy: Option<Arc<Policy>>,
    /// Interfaces the policy selects, with the apply serial in force on each.
    pub interfaces: BTreeMap<String, u64>,
    /// Rule counters of generations already replaced, by (interface, rule, allowed),
    /// so the exported counters stay monotonic across reloads.
    pub carried: BTreeMap<(String, String, bool), Counter>,
    /// The scheduled refresh of each provider snapshot the policy uses
    /// (`--refresh-ranges`), by path.
    pub ranges: BTreeMap<std::path::PathBuf, RangesStatus>,
    /// The Kubernetes policy source's health (`None` with a policy file).
    pub fleet: Option<FleetHealth>,
    /// With the Kubernetes source: the cached revision this agent put in force, set
    /// with the figures above once its swap succeeded (`None` before its first
    /// apply, or when the cache changed while it was read). The node status names
    /// this as in force, never what the cache holds.
    pub fleet_applied: Option<crate::fleet::cache::Meta>,
    /// The cached revision the agent last failed to put in force, and why (cleared
    /// once a revision is in force again).
    pub fleet_rejected: Option<FleetRejection>,
    /// Set with `fleet_applied`, cleared once the reload after that swap has also
    /// removed unselected interfaces and checked every selected one: until then
    /// `ready` still describes the revision before, and InSync must not be True.
    pub fleet_settling: bool,
}

/// A cached revision the agent did not put in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetRejection {
    pub revision: crate::fleet::cache::Meta,
    pub kind: RejectionKind,
    pub error: String,
}

/// What the Kubernetes source tells the metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct FleetHealth {
    /// No watch has failed since the API server last answered.
    pub api_reachable: bool,
    /// The policy in force was not (yet) confirmed from the API server by this run.
    pub from_cache: bool,
    /// The node status' InSync condition.
    pub in_sync: bool,
}

/// The refreshes of one provider snapshot.
#[derive(Debug, Default, Clone)]
pub struct RangesStatus {
    pub provider: &'static str,
    /// Unix seconds of the last attempt, and of the last that found the list
    /// current (updated or unchanged); 0: none yet.
    pub last_attempt: f64,
    pub last_success: f64,
    /// `updated`, `unchanged`, `refused_shrink`, `invalid_document`,
    /// `fetch_failed`, `policy_rejected`, `snapshot_unreadable`, `superseded`.
    pub last_result: &'static str,
    pub last_error: Option<String>,
    /// Attempts by result.
    pub results: BTreeMap<&'static str, u64>,
    /// Distinct ranges of the list last put in force by a refresh (0: none yet).
    pub ranges: usize,
    pub version: Option<String>,
}

/// A rejected policy file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rejection {
    /// Seconds since the Unix epoch.
    pub at_unix: u64,
    /// What sort of failure (`None` in a report of an agent from before kinds).
    #[serde(default)]
    pub kind: Option<RejectionKind>,
    pub error: String,
}

/// Why the policy file was rejected, as a label: the `kind` of
/// `airlock_policy_reload_failures_total` and of `status`'s `last_rejection`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectionKind {
    /// The file could not be read.
    Unreadable,
    /// The policy is invalid (the kind of its first diagnostic) or more than the
    /// kernel maps hold (`capacity`).
    Policy(DiagnosticKind),
    /// The anti-lockout check refused it.
    Lockout,
    /// The host or the kernel failed the apply (an interface, a map, a pending
    /// confirmation); retried on the next check.
    Apply,
}

impl RejectionKind {
    /// Every kind, for counters that start at zero.
    pub fn all() -> impl Iterator<Item = RejectionKind> {
        [RejectionKind::Unreadable]
            .into_iter()
            .chain(DiagnosticKind::ALL.map(RejectionKind::Policy))
            .chain([RejectionKind::Lockout, RejectionKind::Apply])
    }

    pub fn name(self) -> &'static str {
        match self {
            RejectionKind::Unreadable => "unreadable",
            RejectionKind::Policy(kind) => kind.name(),
            RejectionKind::Lockout => "lockout",
            RejectionKind::Apply => "apply",
        }
    }
}

impl serde::Serialize for RejectionKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for RejectionKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        RejectionKind::all()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown rejection kind {name:?}")))
    }
}

impl AgentState {
    pub fn lock(&self) -> MutexGuard<'_, StateInner> {
        // A panic while holding the lock leaves plain numbers behind: still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_kinds_have_distinct_names_and_read_back() {
        let names: std::collections::BTreeSet<&str> =
            RejectionKind::all().map(RejectionKind::name).collect();
        assert_eq!(names.len(), RejectionKind::all().count());
        for kind in RejectionKind::all() {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("{:?}", kind.name()));
            assert_eq!(serde_json::from_str::<RejectionKind>(&json).unwrap(), kind);
        }
        // A report from an agent before kinds still reads.
        let old: Rejection = serde_json::from_str(r#"{"at_unix":1,"error":"e"}"#).unwrap();
        assert_eq!(old.kind, None);
    }
}
