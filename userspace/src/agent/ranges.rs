//! `agent --refresh-ranges INTERVAL`: the provider lists the policy in force uses,
//! downloaded again on a schedule (crate::ranges::refresh checks each: format,
//! shrink guard per list and per set). A list that passes is put in force like any
//! reload, on the apply thread: the policy is validated with the new list in
//! memory, the snapshot written atomically, the policy swapped in through the
//! pipeline; if that swap is rejected the previous snapshot is written back. So the
//! file on disk is always the last good snapshot, and a refused refresh changes
//! nothing at all.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::mpsc;

use super::{
    reconcile::Reconciler,
    state::{AgentState, RangesStatus},
};
use crate::{
    policy,
    ranges::{
        Provider,
        refresh::{self, Candidate, Target},
        snapshot,
    },
};

/// The agent's refresh settings.
#[derive(Clone, Debug)]
pub struct RefreshConfig {
    pub interval: Duration,
    pub options: refresh::Options,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Records one attempt's outcome for `/metrics`.
fn record(
    state: &AgentState,
    path: &std::path::Path,
    provider: Provider,
    result: &'static str,
    error: Option<String>,
    ranges: Option<(usize, Option<String>)>,
) {
    let mut state = state.lock();
    let status = state
        .ranges
        .entry(path.to_path_buf())
        .or_insert_with(|| RangesStatus {
            provider: provider.name(),
            ..RangesStatus::default()
        });
    let at = now();
    status.last_attempt = at;
    if matches!(result, "updated" | "unchanged") {
        status.last_success = at;
    }
    status.last_result = result;
    status.last_error = error;
    *status.results.entry(result).or_default() += 1;
    if let Some((count, version)) = ranges {
        status.ranges = count;
        status.version = version;
    }
}

/// Starts the schedule: the first refresh one interval after start, then every
/// interval; lists that pass the checks go to the apply thread through `out`.
pub fn spawn(config: RefreshConfig, state: Arc<AgentState>, out: mpsc::Sender<Vec<Candidate>>) {
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(config.interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer.tick().await;
        loop {
            timer.tick().await;
            let Some(policy) = state.lock().policy.clone() else {
                continue;
            };
            let targets = refresh::targets(&policy);
            if targets.is_empty() {
                continue;
            }
            let (options, shared) = (config.options.clone(), Arc::clone(&state));
            let found = tokio::task::spawn_blocking(move || check_all(&targets, &options, &shared))
                .await
                .unwrap_or_default();
            if !found.is_empty() && out.send(found).await.is_err() {
                return;
            }
        }
    });
}

/// Downloads and checks every target (one at a time: a few documents a day).
fn check_all(targets: &[Target], options: &refresh::Options, state: &AgentState) -> Vec<Candidate> {
    let mut found = Vec::new();
    for target in targets {
        let path = target.path.display().to_string();
        match refresh::refresh(target, options) {
            Ok(None) => {
                tracing::debug!(snapshot = %path, provider = %target.provider, "provider list unchanged");
                record(
                    state,
                    &target.path,
                    target.provider,
                    "unchanged",
                    None,
                    None,
                );
            }
            Ok(Some(candidate)) => found.push(candidate),
            Err(refusal) => {
                let error = refusal.to_string();
                if matches!(refusal, refresh::Refusal::Fetch(_)) {
                    tracing::warn!(snapshot = %path, provider = %target.provider, %error, "provider list not refreshed; the snapshot in use stays in force");
                } else {
                    tracing::error!(snapshot = %path, provider = %target.provider, %error, "provider list refresh refused; the snapshot in use stays in force");
                }
                record(
                    state,
                    &target.path,
                    target.provider,
                    refusal.result(),
                    Some(error),
                    None,
                );
            }
        }
    }
    found
}

/// Puts checked lists in force (on the apply thread). Returns whether it
/// reconciled (a reload that applied does).
pub(super) fn apply(
    reconciler: &mut Reconciler,
    candidates: Vec<Candidate>,
    state: &AgentState,
) -> bool {
    let mut fresh = Vec::new();
    for c in candidates {
        if refresh::current_sha256(&c.path).as_deref() == Some(c.replaces.as_str()) {
            fresh.push(c);
        } else {
            tracing::info!(snapshot = %c.path.display(), "the snapshot changed while its refresh was checked; the refresh is dropped");
            record(state, &c.path, c.provider, "superseded", None, None);
        }
    }
    if fresh.is_empty() {
        return false;
    }
    let refuse_all = |error: String| {
        for c in &fresh {
            tracing::error!(snapshot = %c.path.display(), %error, "provider list refresh refused; the snapshot in use stays in force");
            record(
                state,
                &c.path,
                c.provider,
                "policy_rejected",
                Some(error.clone()),
                None,
            );
        }
    };
    let policy_path = reconciler.policy_path().to_path_buf();
    let text = match crate::policy::read_file(&policy_path) {
        Ok(text) => text,
        Err(e) => {
            refuse_all(format!("cannot read {}: {e}", policy_path.display()));
            return false;
        }
    };
    // The policy with the new lists, validated before any file is touched: a list
    // whose filters no longer select anything, or too many prefixes, stops here.
    let overlay = fresh
        .iter()
        .map(|c| (c.path.clone(), c.text.clone()))
        .collect();
    if let Err(e) = policy::parse_str_with_snapshots(&text, &policy_path, overlay) {
        refuse_all(format!("the policy is invalid with the new list: {e}"));
        return false;
    }
    // Kept to write back should the swap be refused. A snapshot in use that cannot
    // be read now could not be restored: refuse before touching any file, never
    // treat it as nothing to restore.
    let mut previous: Vec<(PathBuf, String)> = Vec::with_capacity(fresh.len());
    for c in &fresh {
        match std::fs::read_to_string(&c.path) {
            Ok(text) => previous.push((c.path.clone(), text)),
            Err(e) => {
                refuse_all(format!(
                    "cannot read the snapshot in use {} to keep it: {e}",
                    c.path.display()
                ));
                return false;
            }
        }
    }
    let restore = || {
        for (path, text) in &previous {
            if let Err(error) = snapshot::write_text(path, text) {
                tracing::error!(snapshot = %path.display(), %error, "writing back the previous snapshot");
            }
        }
    };
    for c in &fresh {
        if let Err(e) = snapshot::write_text(&c.path, &c.text) {
            restore();
            refuse_all(e.to_string());
            return false;
        }
    }
    let reconciled = reconciler.reload("provider lists refreshed", false);
    if let Some(rejected) = reconciler.rejected.as_ref().filter(|r| !r.transient) {
        let error = format!("the swap was rejected: {}", rejected.message);
        restore();
        reconciler.reload("provider lists restored", false);
        refuse_all(error);
        return true;
    }
    let pending = reconciler.rejected.is_some();
    for c in &fresh {
        let sets: Vec<String> = c
            .sets
            .iter()
            .filter(|s| !s.added.is_empty() || !s.removed.is_empty())
            .map(|s| format!("{} +{} -{}", s.set, s.added.len(), s.removed.len()))
            .collect();
        tracing::info!(
            snapshot = %c.path.display(),
            provider = %c.provider,
            version = c.snapshot.version.as_deref().unwrap_or("unknown"),
            added = c.diff.added,
            removed = c.diff.removed,
            sets = %sets.join(", "),
            "{}",
            if pending {
                "provider list refreshed; its apply failed for a reason other than the policy and is retried"
            } else {
                "provider list refreshed and in force"
            }
        );
        record(
            state,
            &c.path,
            c.provider,
            "updated",
            None,
            Some((c.ranges, c.snapshot.version.clone())),
        );
    }
    reconciled
}
