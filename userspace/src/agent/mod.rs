//! `airlock agent`: keeps the kernel matching the policy file, for as long as it runs.
//!
//! It adopts whatever is pinned (an earlier agent's or a CLI apply's filter keeps
//! enforcing until the new policy is swapped in: no gap), reloads on every change of
//! the policy file and on SIGHUP (each reload one atomic swap; a bad policy is
//! rejected and the one in force stays), repairs drift on interface events and on a
//! timer, serves metrics and health, and logs sampled drops. On SIGTERM/SIGINT it
//! exits leaving the filter pinned and enforcing (fail-closed), unless told to detach.

mod links;
mod lock;
mod metrics;
mod reconcile;
mod root_lock;
mod sample_socket;
mod samples;
mod state;
mod watch;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

pub use state::AgentState;

use crate::loader::{LoaderError, PinRoot};

/// Where the agent keeps its single-instance lock and its drop-sample socket
/// unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/airlock";

pub use lock::{holder as agent_holding, samples_socket_path};
pub use root_lock::agent_pid;
pub use sample_socket::Missed;

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
    let _root_lock = root_lock::acquire(&root)?;
    let state = Arc::new(AgentState::default());
    let (triggers, mut trigger_rx) = mpsc::channel(4);
    let _watcher = watch::watch_policy(&config.policy_path, triggers.clone())?;
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
    let mut reconciler = reconcile::Reconciler::new(
        root.clone(),
        config.policy_path.clone(),
        config.iface_overrides.clone(),
        config.sample_rate,
        Arc::clone(&state),
    );
    reconciler.set_force(config.force);
    let names = samples::RuleNames::default();
    // Samples come at most a few hundred a second per CPU (the kernel's limit).
    let (feed, _) = tokio::sync::broadcast::channel(1024);
    let socket = lock::samples_socket_path(&config.state_dir, root.path());
    if let Err(error) = sample_socket::serve(socket.clone(), feed.clone()) {
        tracing::warn!(%error, path = %socket.display(), "no drop samples for `airlock watch`");
    }
    let mut samplers = samples::Samplers::new(feed);
    let mut notified = false;
    reconciler.reload("start", true);
    let mut timer = tokio::time::interval(config.reconcile_interval);
    timer.tick().await; // the first tick is immediate; start-up just reconciled
    loop {
        refresh_names(&reconciler, &names);
        samplers.refresh(reconciler.root(), &names);
        if !notified && state.lock().ready {
            notified = true;
            // Readiness only once the policy is enforced on every interface.
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        }
        tokio::select! {
            Some(trigger) = trigger_rx.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                let mut file_changed = matches!(trigger, Trigger::PolicyFileChanged);
                while let Ok(more) = trigger_rx.try_recv() {
                    file_changed |= matches!(more, Trigger::PolicyFileChanged);
                }
                if file_changed {
                    reconciler.reload("policy file changed", false);
                } else {
                    reconciler.reconcile();
                }
            }
            _ = sighup.recv() => reconciler.reload("SIGHUP", true),
            _ = timer.tick() => reconciler.reconcile(),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&socket);
    if config.detach_on_exit {
        reconciler.detach_all();
    } else {
        tracing::info!("exiting; the filter stays pinned and enforcing");
    }
    Ok(())
}

fn refresh_names(reconciler: &reconcile::Reconciler, names: &samples::RuleNames) {
    if let Ok(mut names) = names.write() {
        names.clear();
        let rules = reconciler.rule_names();
        for iface in reconciler.root().interfaces().unwrap_or_default() {
            names.insert(iface, rules.clone());
        }
    }
}
