//! The agent's kernel work (reloads, reconciles, repairs) on a thread of its own,
//! one job at a time, so the async side (health, metrics, drop samples, signals)
//! never waits behind a reload of a million prefixes or a reconcile.

use std::{
    path::PathBuf,
    sync::{Arc, mpsc},
    thread::JoinHandle,
};

use tokio::sync::Notify;

use crate::samples::readers::RuleNames;

use super::{
    reconcile::Reconciler,
    report::{self, AgentReport},
    state::AgentState,
    watch::PolicyWatch,
};

/// What the worker is asked to do.
#[derive(Debug)]
pub enum Job {
    /// Put refreshed provider lists in force (ranges.rs).
    Ranges(Vec<crate::ranges::refresh::Candidate>),
    /// Read the policy file; apply it if it changed (or always, if `force`).
    Reload { why: &'static str, force: bool },
    /// Check every interface and repair what drifted (an interface event).
    Reconcile,
    /// The reconcile timer: also retries an apply that failed for a reason other
    /// than the policy.
    Tick,
}

pub struct Worker {
    jobs: mpsc::Sender<Job>,
    thread: JoinHandle<Reconciler>,
}

/// What the worker shares with the rest of the agent.
pub struct Shared {
    pub state: Arc<AgentState>,
    pub names: RuleNames,
    /// Woken after every job (samplers to refresh, readiness to announce).
    pub done: Arc<Notify>,
    pub report: PathBuf,
}

impl Worker {
    /// Starts the worker; its first job, the start-up reload, is already under way.
    pub fn spawn(
        reconciler: Reconciler,
        watch: PolicyWatch,
        shared: Shared,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("airlock-apply".into())
            .spawn(move || run(reconciler, watch, &shared, &queue))?;
        Ok(Self { jobs, thread })
    }

    /// Queues `job` (jobs queued while one runs are merged into one).
    pub fn send(&self, job: Job) {
        let _ = self.jobs.send(job);
    }

    /// Lets the job in progress finish and returns the reconciler (blocking: call
    /// it off the async runtime).
    pub fn finish(self) -> Option<Reconciler> {
        drop(self.jobs);
        self.thread.join().ok()
    }
}

fn run(
    mut reconciler: Reconciler,
    mut watch: PolicyWatch,
    shared: &Shared,
    queue: &mpsc::Receiver<Job>,
) -> Reconciler {
    let (mut last_report, mut report_failed) = (None, false);
    reconciler.reload("start", true);
    after_job(
        &reconciler,
        &mut watch,
        shared,
        (&mut last_report, &mut report_failed),
    );
    while let Ok(first) = queue.recv() {
        // Editors and ConfigMap updates come in bursts; so do link events.
        let mut reload: Option<(&'static str, bool)> = None;
        let (mut reconcile, mut tick) = (false, false);
        let mut lists = Vec::new();
        for job in std::iter::once(first).chain(queue.try_iter()) {
            match job {
                Job::Ranges(candidates) => lists.extend(candidates),
                Job::Reload { why, force } => {
                    let (why, was_forced) = reload.unwrap_or((why, false));
                    reload = Some((why, was_forced || force));
                }
                Job::Reconcile => reconcile = true,
                Job::Tick => tick = true,
            }
        }
        let mut reconciled = false;
        if !lists.is_empty() {
            reconciled = super::ranges::apply(&mut reconciler, lists, &shared.state);
        }
        if let Some((why, force)) = reload {
            reconciled = reconciler.reload(why, force);
        }
        if tick && !reconciled {
            reconciler.tick();
        } else if reconcile && !reconciled {
            reconciler.reconcile();
        }
        after_job(
            &reconciler,
            &mut watch,
            shared,
            (&mut last_report, &mut report_failed),
        );
    }
    reconciler
}

fn after_job(
    reconciler: &Reconciler,
    watch: &mut PolicyWatch,
    shared: &Shared,
    (last_report, report_failed): (&mut Option<AgentReport>, &mut bool),
) {
    watch.set_imports(reconciler.imports());
    if let Ok(mut names) = shared.names.write() {
        names.clear();
        let rules = reconciler.rule_names();
        for iface in reconciler.root().interfaces().unwrap_or_default() {
            names.insert(iface, rules.clone());
        }
    }
    let state = shared.state.lock().clone();
    let report = AgentReport {
        pid: std::process::id(),
        policy_file: reconciler.policy_path().display().to_string(),
        ready: state.ready,
        in_sync: state.in_sync,
        last_reload_unix: (state.last_reload > 0.0).then_some(state.last_reload as u64),
        last_rejection: state.last_rejection,
    };
    if last_report.as_ref() != Some(&report) {
        match report::write(&shared.report, &report) {
            Ok(()) => *last_report = Some(report),
            // Said once, not at every tick.
            Err(error) if last_report.is_some() || !*report_failed => {
                tracing::warn!(
                    path = %shared.report.display(),
                    %error,
                    "writing the agent's report for `airlock status`"
                );
                *last_report = None;
                *report_failed = true;
            }
            Err(_) => {}
        }
    }
    shared.done.notify_one();
}
