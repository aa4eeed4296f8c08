//! Making the kernel match the policy, and keeping it so.
//!
//! `reload` (reload.rs) puts the policy file in force through the apply pipeline,
//! one atomic swap per selected interface (all or none). `reconcile` checks, on a
//! timer and on interface events, that every interface still runs our program with
//! our current policy, and repairs what is not: an interface deleted and recreated,
//! a link removed by someone else, maps overwritten by another apply. It also sets
//! readiness: a valid policy enforced on every selected interface.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use super::{reload::Fingerprint, state::AgentState};
use crate::{
    compile::Compiled,
    interfaces,
    loader::{self, PinRoot, PolicyMaps, PolicySummary},
    policy,
};

/// How a filter drifted from what the agent put there.
#[derive(Debug, thiserror::Error)]
pub(super) enum Drift {
    #[error(transparent)]
    Filter(#[from] loader::Misfit),
    #[error("egress program detached (replies to the host's flows would drop)")]
    EgressDetached,
    #[error("maps unreadable")]
    MapsUnreadable,
    #[error("maps hold another policy (applied by someone else?)")]
    OtherPolicy,
    #[error("no complete policy in its maps")]
    NoPolicy,
    #[error("not applied by this agent yet")]
    NotApplied,
}

/// The policy in force, as last applied by this agent.
pub(super) struct Applied {
    /// What it was applied from.
    pub(super) fingerprint: Fingerprint,
    pub(super) compiled: Compiled,
    pub(super) summary: PolicySummary,
    pub(super) policy: policy::Policy,
}

pub struct Reconciler {
    pub(super) root: PinRoot,
    pub(super) policy_path: PathBuf,
    pub(super) overrides: Vec<String>,
    sample_rate: u32,
    pub(super) state: std::sync::Arc<AgentState>,
    pub(super) applied: Option<Applied>,
    /// The last rejection of the policy file, while it is not applied.
    pub(super) rejected: Option<super::reload::Rejected>,
    /// The files the policy imports (as last read), for the watcher.
    pub(super) imports: Vec<PathBuf>,
    /// Apply policies the anti-lockout check refuses (`agent --force`).
    pub(super) force: bool,
    /// `agent --xdp-mode`, over the policy's.
    pub(super) xdp_mode: Option<policy::XdpMode>,
    /// The fleet source's cache, whose record of the revision in force says
    /// whether to apply it in monitor mode (`None` with a policy file).
    pub(super) fleet_cache: Option<crate::fleet::cache::Cache>,
    /// Tunnel devices that bypass the filter, as last warned about (each is
    /// logged when it first appears, not at every reconcile).
    tunnels: Vec<crate::tunnels::TunnelWarning>,
    /// Why the filters adopted at start are not ready, as last logged.
    adopted_problem: Option<String>,
}

impl Reconciler {
    pub fn new(
        root: PinRoot,
        policy_path: PathBuf,
        overrides: Vec<String>,
        sample_rate: u32,
        state: std::sync::Arc<AgentState>,
    ) -> Self {
        Self {
            root,
            policy_path,
            overrides,
            sample_rate,
            state,
            applied: None,
            rejected: None,
            imports: Vec::new(),
            force: false,
            xdp_mode: None,
            fleet_cache: None,
            tunnels: Vec::new(),
            adopted_problem: None,
        }
    }

    /// `agent --xdp-mode`: overrides the policy's `xdp_mode`.
    pub fn set_xdp_mode(&mut self, xdp_mode: Option<policy::XdpMode>) {
        self.xdp_mode = xdp_mode;
    }

    /// The policy file is the fleet cache's (`agent --kubernetes-node`).
    pub fn set_fleet_cache(&mut self, cache: crate::fleet::cache::Cache) {
        self.fleet_cache = Some(cache);
    }

    /// `agent --force`: apply policies that the anti-lockout check refuses.
    pub fn set_force(&mut self, force: bool) {
        self.force = force;
    }

    /// Rule names of the policy in force on an interface, for drop samples.
    pub fn rule_names(&self) -> Vec<String> {
        self.applied
            .as_ref()
            .map(|a| a.compiled.rule_names.clone())
            .unwrap_or_default()
    }

    /// The files the policy imports, as last read.
    pub fn imports(&self) -> &[PathBuf] {
        &self.imports
    }

    /// Reads the policy file and applies it if it changed (or if `force`).
    /// Returns whether it reconciled as well (it does after an apply).
    pub fn reload(&mut self, why: &str, force: bool) -> bool {
        let reconciled = self.load_and_enforce(why, force);
        release_memory();
        reconciled
    }

    pub fn policy_path(&self) -> &std::path::Path {
        &self.policy_path
    }

    /// The periodic check: a reload that failed for a reason other than the policy
    /// (an interface, the kernel, a pending confirmation) is tried again, then
    /// every interface is checked and repaired.
    pub fn tick(&mut self) {
        if self.rejected.as_ref().is_some_and(|r| r.transient) {
            let reconciled = self.load_and_enforce("retrying a failed apply", true);
            release_memory();
            if reconciled {
                return;
            }
        }
        self.reconcile();
    }

    fn selected(&self, policy: &policy::Policy) -> Result<Vec<String>, interfaces::InterfaceError> {
        interfaces::resolve(policy, &self.overrides)
    }

    /// Filters on interfaces the policy no longer selects are removed: the agent
    /// owns its pin root, and the kernel must match the policy.
    pub(super) fn remove_unselected(&self) {
        let Some(applied) = &self.applied else { return };
        let Ok(selected) = self.selected(&applied.policy) else {
            return;
        };
        let selected: BTreeSet<String> = selected.into_iter().collect();
        let unselected: Vec<String> = self
            .root
            .interfaces()
            .unwrap_or_default()
            .into_iter()
            .filter(|iface| !selected.contains(iface))
            .collect();
        if unselected.is_empty() {
            return;
        }
        let writer = match loader::WriterLock::acquire(&self.root) {
            Ok(writer) => writer,
            Err(error) => {
                tracing::error!(%error, "removing filters no longer selected");
                return;
            }
        };
        for iface in unselected {
            match loader::remove(&writer, &self.root, &iface) {
                Ok(()) => tracing::info!(iface, "interface no longer selected; filter removed"),
                Err(error) => tracing::error!(iface, %error, "removing filter"),
            }
            self.state.lock().interfaces.remove(&iface);
        }
    }

    /// Checks every selected interface and repairs what drifted. Sets readiness.
    pub fn reconcile(&mut self) {
        // An expired `apply --confirm` of the CLI whose watchdog died: finish it.
        crate::safety::confirm::expire_due(&self.root);
        let Some(applied) = &self.applied else {
            let ready = self.check_adopted();
            self.state.lock().ready = ready;
            return;
        };
        let selected = match self.selected(&applied.policy) {
            Ok(selected) => selected,
            Err(error) => {
                tracing::warn!(%error, "cannot tell which interfaces to filter");
                self.state.lock().ready = false;
                return;
            }
        };
        let tunnels = crate::tunnels::uncovered(&applied.policy, &selected);
        let mut ready = !selected.is_empty();
        for iface in &selected {
            let Some(index) = loader::interface_index(iface) else {
                tracing::warn!(iface, "selected interface does not exist (yet); not ready");
                ready = false;
                continue;
            };
            let expected = self.state.lock().interfaces.get(iface).copied();
            // Not applied by this agent yet (an interface that appeared since).
            let checked = match expected {
                Some(_) => self.check(iface, index, expected),
                None => Err(Drift::NotApplied),
            };
            match checked {
                Ok(()) => {}
                Err(drift) => {
                    tracing::warn!(iface, %drift, "filter drifted from the policy; repairing");
                    let repaired = loader::WriterLock::acquire(&self.root).and_then(|writer| {
                        loader::apply(
                            &writer,
                            &self.root,
                            iface,
                            &applied.compiled,
                            applied.summary.clone(),
                        )
                    });
                    match repaired {
                        Ok(outcome) => {
                            let mut state = self.state.lock();
                            state.repairs += 1;
                            state.interfaces.insert(iface.clone(), outcome.serial);
                            tracing::info!(iface, attached = outcome.attached, "repaired");
                            release_memory();
                        }
                        Err(error) => {
                            tracing::error!(iface, %error, "repair failed");
                            ready = false;
                        }
                    }
                }
            }
            self.set_sample_rate(iface);
            // A TCP flow is only created by the host's SYN, so one the table lost
            // (evicted when full) would stay lost; the socket table still knows it.
            loader::seed_from_socket_table(&self.root.interface_dir(iface));
        }
        self.state.lock().ready = ready;
        self.warn_tunnels(tunnels);
    }

    /// Logs the tunnel devices that bypass the filter and were not warned about yet.
    fn warn_tunnels(
        &mut self,
        found: Result<Vec<crate::tunnels::TunnelWarning>, crate::tunnels::TunnelError>,
    ) {
        match found {
            Ok(found) => {
                for warning in found.iter().filter(|w| !self.tunnels.contains(w)) {
                    crate::tunnels::log(warning);
                }
                self.tunnels = found;
            }
            Err(error) => {
                tracing::debug!(%error, "cannot check for tunnel devices that bypass the filter");
            }
        }
    }

    /// Without a policy of its own (the file was invalid since the agent started),
    /// the agent is ready if the filters pinned before keep enforcing a valid
    /// policy on every interface: those pinned, and those `--iface` names. It has
    /// nothing to repair them with.
    fn check_adopted(&mut self) -> bool {
        // A pin root that cannot be read (refused as untrusted, say) is not "no
        // filter pinned": say why.
        let mut selected: BTreeSet<String> = match self.root.interfaces() {
            Ok(pinned) => pinned.into_iter().collect(),
            Err(error) => return self.adopted_not_ready(error.to_string()),
        };
        match interfaces::expand_overrides(&self.overrides) {
            Ok(names) => selected.extend(names),
            Err(error) => return self.adopted_not_ready(error.to_string()),
        }
        if selected.is_empty() {
            return self.adopted_not_ready("no filter is pinned".into());
        }
        for iface in &selected {
            let Some(index) = loader::interface_index(iface) else {
                return self.adopted_not_ready(format!("{iface} does not exist"));
            };
            if let Err(drift) = self.check(iface, index, None) {
                return self.adopted_not_ready(format!(
                    "{iface}: {drift}, and there is no valid policy to put there until the policy file is fixed"
                ));
            }
            self.set_sample_rate(iface);
            loader::seed_from_socket_table(&self.root.interface_dir(iface));
        }
        if self.adopted_problem.take().is_some() {
            tracing::info!("the filters pinned before keep enforcing on every interface");
        }
        true
    }

    fn adopted_not_ready(&mut self, problem: String) -> bool {
        if self.adopted_problem.as_ref() != Some(&problem) {
            tracing::warn!(problem, "not ready: no valid policy is enforced everywhere");
            self.adopted_problem = Some(problem);
        }
        false
    }

    /// `Err(what drifted)` unless our program is attached to the interface as it is
    /// now and its maps hold the policy this agent last put there (`expected`), or
    /// any complete policy (`None`, for filters adopted without a policy).
    fn check(&self, iface: &str, index: u32, expected: Option<u64>) -> Result<(), Drift> {
        let dir = self.root.interface_dir(iface);
        loader::pinned_filter_fits(&dir, iface)?;
        let egress = loader::pinned_link_state(
            &dir.join(loader::EGRESS_LINK_PIN),
            loader::LinkKind::TcxEgress,
        );
        if loader::egress_supported() && !egress.is_ok_and(|egress| egress.ifindex == index) {
            return Err(Drift::EgressDetached);
        }
        let maps = PolicyMaps::open_pinned(&dir).map_err(|_| Drift::MapsUnreadable)?;
        let serial = maps.active_summary().ok().flatten().map(|s| s.serial);
        match (expected, serial) {
            (Some(expected), Some(serial)) if serial == expected => Ok(()),
            (Some(_), _) => Err(Drift::OtherPolicy),
            (None, Some(_)) => Ok(()),
            (None, None) => Err(Drift::NoPolicy),
        }
    }

    fn set_sample_rate(&self, iface: &str) {
        if let Ok(mut maps) = PolicyMaps::open_pinned(&self.root.interface_dir(iface))
            && let Err(error) = maps.set_sample_rate(self.sample_rate)
        {
            tracing::warn!(iface, %error, "setting the drop-sample rate");
        }
    }

    /// Removes every filter (for `--detach-on-exit`).
    pub fn detach_all(&self) {
        let writer = match loader::WriterLock::acquire(&self.root) {
            Ok(writer) => writer,
            Err(error) => {
                tracing::error!(%error, "detaching on exit");
                return;
            }
        };
        for iface in self.root.interfaces().unwrap_or_default() {
            match loader::remove(&writer, &self.root, &iface) {
                Ok(()) => tracing::info!(iface, "detached on exit"),
                Err(error) => tracing::error!(iface, %error, "detaching on exit"),
            }
        }
    }

    pub fn root(&self) -> &PinRoot {
        &self.root
    }
}

pub(super) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Gives the heap's free memory back to the system. An apply's large, short-lived
/// buffers (the policy text, the compiled tables, batch and record buffers) push
/// glibc's adaptive mmap threshold up, after which its heap keeps such memory
/// resident; the agent lives for months and should not (measured at 100,000 prefixes:
/// 28 MiB resident without this, 16 MiB with it).
///
/// The binary allocates with mimalloc (see main.rs), which likewise keeps the
/// freed pages of an apply for reuse: collected here too (57 MiB resident at
/// 100,000 prefixes without it). Harmless where mimalloc is not the allocator: its
/// heaps are then empty.
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
    // SAFETY: mi_collect only returns memory mimalloc holds free.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}
