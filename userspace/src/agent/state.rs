//! What the agent knows about itself, shared with the HTTP server: readiness and the
//! figures `/metrics` reports besides the kernel's own counters.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use airlock_common::Counter;

use crate::policy::Policy;

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
    pub reload_failures: u64,
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
    pub error: String,
}

impl AgentState {
    pub fn lock(&self) -> MutexGuard<'_, StateInner> {
        // A panic while holding the lock leaves plain numbers behind: still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
