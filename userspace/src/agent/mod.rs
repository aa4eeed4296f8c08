//! `airlock agent`: keeps the kernel matching the policy file, for as long as it runs.
//!
//! It adopts whatever is pinned (an earlier agent's or a CLI apply's filter keeps
//! enforcing until the new policy is swapped in: no gap), reloads on every change of
//! the policy file or a file it imports and on SIGHUP (each reload one atomic swap
//! through the apply pipeline; a bad policy is rejected and what is enforced stays),
//! repairs drift on interface events and on a timer, serves metrics and health, and
//! logs sampled drops. The kernel work runs on a thread of its own (worker.rs), so
//! health and metrics answer whatever it does. On SIGTERM/SIGINT it exits leaving
//! the filter pinned and enforcing (fail-closed), unless told to detach.

mod check_census;
mod flow_census;
mod links;
mod lock;
mod metrics;
mod ranges;
mod reconcile;
mod reload;
pub mod report;
mod root_lock;
mod state;
mod watch;
mod worker;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

pub use ranges::RefreshConfig;
pub use report::AgentReport;
pub use state::{AgentState, FleetHealth, FleetRejection, Rejection, RejectionKind};

use crate::{
    loader::{LoaderError, PinRoot},
    policy::XdpMode,
};

/// Where the agent keeps its single-instance lock and its drop-sample socket
/// unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/airlock";

pub use crate::samples::socket::Missed;
pub use lock::{holder as agent_holding, samples_socket_path};
pub use root_lock::{agent_holds, agent_pid};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub policy_path: PathBuf,
    pub pin_root: PathBuf,
    pub metrics_addr: SocketAddr,
    /// Interface names or globs overriding the policy's `interfaces`.
    pub iface_overrides: Vec<String>,
    pub detach_on_exit: bool,
    /// Holds the single-instance lock.
    pub state_dir: PathBuf,
    pub reconcile_interval: Duration,
    /// Drop samples per second per CPU (0: none).
    pub sample_rate: u32,
    /// Apply policies the anti-lockout check refuses.
    pub force: bool,
    /// Overrides the policy's `xdp_mode`.
    pub xdp_mode: Option<XdpMode>,
    /// Policies from Kubernetes custom resources: `policy_path` is then the cache's
    /// (crate::fleet::cache), which the fleet source fills.
    pub fleet: Option<crate::fleet::source::FleetConfig>,
    /// `--refresh-ranges`: download the policy's provider lists on a schedule.
    pub refresh_ranges: Option<RefreshConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "another airlock agent already manages {} (lock {}, held by {holder}); stop it first",
        pin_root.display(),
        lock.display()
    )]
    AlreadyRunning {
        pin_root: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching the policy file: {0}")]
    Watch(#[source] notify::Error),
    #[error("serving metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Makes the cache directory (root's alone, checked as the state directory) and starts the
/// fleet source's watches and status writer.
fn start_fleet_source(
    fleet: &crate::fleet::source::FleetConfig,
    state: &Arc<AgentState>,
) -> Result<(), AgentError> {
    // What is in the cache is enforced, and after a restart without the API server
    // trusted as the last good policy: it must be root's alone, as the state
    // directory is (another user's or a group-writable directory is refused).
    crate::trust::create_dir_all(&fleet.cache_dir)
        .and_then(|()| crate::trust::check_dir_and_parents(&fleet.cache_dir))
        .map_err(|e| AgentError::Loader(LoaderError::Trust(e)))?;
    let (fleet, state) = (fleet.clone(), Arc::clone(state));
    tokio::spawn(async move {
        if let Err(error) = crate::fleet::source::run(fleet, state).await {
            tracing::error!(%error, "the Kubernetes policy source stopped; enforcing the cached policy");
        }
    });
    Ok(())
}

/// Why the main loop woke up.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    PolicyFileChanged,
    LinkChanged,
}

/// Editors and ConfigMap updates produce bursts of events; wait for the burst to end.
const DEBOUNCE: Duration = Duration::from_millis(150);

pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    // Locked by the absolute path, so "bpf" and "/run/x/bpf" name the same filters.
    let root = PinRoot::new(&config.pin_root);
    let _lock = lock::acquire(&config.state_dir, root.path())?;
    root.ensure_mounted()?;
    // The state-dir lock alone lets a second agent with another --state-dir in.
    let mut root_lock = root_lock::acquire(&root)?;
    let state = Arc::new(AgentState::default());
    if let Some(fleet) = &config.fleet {
        start_fleet_source(fleet, &state)?;
    }
    let (triggers, mut trigger_rx) = mpsc::channel(4);
    let watch = watch::PolicyWatch::new(&config.policy_path, triggers.clone())?;
    if let Err(error) = links::spawn_link_watcher(triggers.clone()) {
        tracing::warn!(%error, "no netlink link events; relying on the reconcile timer");
    }
    let bound = metrics::serve(config.metrics_addr, root.clone(), Arc::clone(&state))
        .await
        .map_err(|source| AgentError::Metrics {
            addr: config.metrics_addr,
            source,
        })?;
    tracing::info!(metrics = %bound, pin_root = %root.path().display(), "agent started");

    let mut sighup = signal(SignalKind::hangup()).map_err(AgentError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    if let Some(fleet) = &config.fleet {
        // Nothing to enforce before the first complete revision (from the cache, or
        // from the API server once every watch has listed); a filter already pinned
        // goes on enforcing meanwhile.
        let cache = crate::fleet::cache::Cache::new(&fleet.cache_dir);
        let mut said = false;
        while std::fs::symlink_metadata(fleet.cache_dir.join("..data")).is_err() {
            if !said {
                tracing::info!(cache = %cache.dir().display(), "waiting for a first policy revision");
                said = true;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = sigterm.recv() => return Ok(()),
                _ = sigint.recv() => return Ok(()),
            }
        }
    }
    let mut reconciler = reconcile::Reconciler::new(
        root.clone(),
        config.policy_path.clone(),
        config.iface_overrides.clone(),
        config.sample_rate,
        Arc::clone(&state),
    );
    reconciler.set_force(config.force);
    reconciler.set_xdp_mode(config.xdp_mode);
    if let Some(fleet) = &config.fleet {
        reconciler.set_fleet_cache(crate::fleet::cache::Cache::new(&fleet.cache_dir));
    }
    let names = crate::samples::readers::RuleNames::default();
    // Samples come at most a few hundred a second per CPU (the kernel's limit).
    let (feed, _) = tokio::sync::broadcast::channel(1024);
    let socket = lock::samples_socket_path(&config.state_dir, root.path());
    if let Err(error) = crate::samples::socket::serve(socket.clone(), feed.clone()) {
        tracing::warn!(%error, path = %socket.display(), "no drop samples for `airlock watch`");
    }
    let mut samplers = crate::samples::readers::Samplers::new(feed);
    let done = Arc::new(tokio::sync::Notify::new());
    let report = report::path(&config.state_dir, root.path());
    let worker = worker::Worker::spawn(
        reconciler,
        watch,
        worker::Shared {
            state: Arc::clone(&state),
            names: Arc::clone(&names),
            done: Arc::clone(&done),
            report: report.clone(),
        },
    )
    .map_err(|source| AgentError::Io {
        op: "starting the apply thread for",
        path: config.policy_path.clone(),
        source,
    })?;
    let (lists, mut lists_rx) = mpsc::channel(1);
    if let Some(refresh) = config.refresh_ranges.clone() {
        ranges::spawn(refresh, Arc::clone(&state), lists.clone());
    }
    let mut notified = false;
    let mut timer = tokio::time::interval(config.reconcile_interval);
    timer.tick().await; // the first tick is immediate; start-up reconciles anyway
    loop {
        tokio::select! {
            () = done.notified() => {
                samplers.refresh(&root, &names);
                if !notified && state.lock().ready {
                    notified = true;
                    // Readiness only once the policy is enforced on every interface.
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
                }
            }
            Some(trigger) = trigger_rx.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                let mut file_changed = matches!(trigger, Trigger::PolicyFileChanged);
                while let Ok(more) = trigger_rx.try_recv() {
                    file_changed |= matches!(more, Trigger::PolicyFileChanged);
                }
                worker.send(if file_changed {
                    worker::Job::Reload { why: "policy file changed", force: false }
                } else {
                    worker::Job::Reconcile
                });
            }
            Some(found) = lists_rx.recv() => worker.send(worker::Job::Ranges(found)),
            _ = sighup.recv() => worker.send(worker::Job::Reload { why: "SIGHUP", force: true }),
            _ = timer.tick() => {
                root_lock = root_lock.follow(&root);
                worker.send(worker::Job::Tick);
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&report);
    let detach = config.detach_on_exit;
    // The job in progress finishes first: a swap is never cut short.
    let finished = tokio::task::spawn_blocking(move || {
        let reconciler = worker.finish();
        if let Some(reconciler) = reconciler.as_ref().filter(|_| detach) {
            reconciler.detach_all();
        }
    })
    .await;
    if finished.is_err() {
        tracing::error!("the apply thread failed while stopping");
    }
    if !detach {
        tracing::info!("exiting; the filter stays pinned and enforcing");
    }
    Ok(())
}
