//! Making the kernel match the policy, and keeping it so.
//!
//! `reload` reads, validates and compiles the policy file and applies it to every
//! selected interface as one atomic swap each (all or none). `reconcile` checks,
//! on a timer and on interface events, that every interface still runs our program
//! with our current policy, and repairs what is not: an interface deleted and
//! recreated, a link removed by someone else, maps overwritten by another apply.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use airlock_common::Counter;

use super::state::AgentState;
use crate::{
    compile::{self, Compiled},
    interfaces,
    loader::{self, PinRoot, PolicyMaps, PolicySummary},
    policy,
};

/// The policy in force, as last applied by this agent.
struct Applied {
    text: String,
    compiled: Compiled,
    summary: PolicySummary,
    policy: policy::Policy,
}

pub struct Reconciler {
    root: PinRoot,
    policy_path: PathBuf,
    overrides: Vec<String>,
    sample_rate: u32,
    state: std::sync::Arc<AgentState>,
    applied: Option<Applied>,
    /// Apply policies the anti-lockout check refuses (`agent --force`).
    force: bool,
    /// `agent --xdp-mode`, over the policy's.
    xdp_mode: Option<policy::XdpMode>,
    /// Tunnel devices that bypass the filter, as last warned about (each is
    /// logged when it first appears, not at every reconcile).
    tunnels: Vec<crate::tunnels::TunnelWarning>,
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
            force: false,
            xdp_mode: None,
            tunnels: Vec::new(),
        }
    }

    /// `agent --xdp-mode`: overrides the policy's `xdp_mode`.
    pub fn set_xdp_mode(&mut self, xdp_mode: Option<policy::XdpMode>) {
        self.xdp_mode = xdp_mode;
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

    /// Reads the policy file and applies it if it changed (or if `force`).
    pub fn reload(&mut self, why: &str, force: bool) {
        self.load_and_enforce(why, force);
        release_memory();
    }

    fn load_and_enforce(&mut self, why: &str, force: bool) {
        let text = match std::fs::read_to_string(&self.policy_path) {
            Ok(text) => text,
            Err(error) => {
                self.fail(
                    why,
                    &format!("cannot read {}: {error}", self.policy_path.display()),
                );
                return;
            }
        };
        if !force && self.applied.as_ref().is_some_and(|a| a.text == text) {
            tracing::debug!(why, "policy file unchanged");
            return;
        }
        let mut policy = match policy::parse_str(&text, &self.policy_path) {
            Ok(policy) => policy,
            Err(error) => {
                self.fail(why, &error.to_string());
                return;
            }
        };
        if let Some(xdp_mode) = self.xdp_mode {
            policy.xdp_mode = xdp_mode;
        }
        let compiled = match compile::compile(&policy) {
            Ok(compiled) => compiled,
            Err(error) => {
                self.fail(why, &error.to_string());
                return;
            }
        };
        let ifaces = self.selected(&policy).unwrap_or_default();
        if let Err(error) = crate::safety::lockout::check_for_agent(&policy, &ifaces, self.force) {
            self.fail(why, &error);
            return;
        }
        let summary = PolicySummary::describe(&policy, &compiled, &self.policy_path);
        let applied = Applied {
            text,
            compiled,
            summary,
            policy,
        };
        match self.enforce(&applied) {
            Ok(()) => {
                let mut state = self.state.lock();
                state.reloads += 1;
                state.last_reload = unix_now();
                state.prefixes_v4 = applied.summary.prefixes_v4;
                state.prefixes_v6 = applied.summary.prefixes_v6;
                state.mode = applied.summary.mode.clone();
                drop(state);
                tracing::info!(
                    why,
                    policy = %self.policy_path.display(),
                    rules = applied.compiled.rule_names.len(),
                    prefixes_v4 = applied.summary.prefixes_v4,
                    prefixes_v6 = applied.summary.prefixes_v6,
                    "policy in force"
                );
                self.applied = Some(applied);
                self.remove_unselected();
                self.reconcile();
            }
            Err(error) => self.fail(why, &error),
        }
    }

    fn fail(&self, why: &str, error: &str) {
        self.state.lock().reload_failures += 1;
        tracing::error!(
            why,
            policy = %self.policy_path.display(),
            error,
            "policy rejected; the policy in force stays in force"
        );
    }

    /// Applies to every selected interface that exists (all or none of them).
    fn enforce(&self, applied: &Applied) -> Result<(), String> {
        let selected = self.selected(&applied.policy).map_err(|e| e.to_string())?;
        let present: Vec<String> = selected
            .into_iter()
            .filter(|iface| loader::interface_index(iface).is_some())
            .collect();
        let writer = loader::WriterLock::acquire(&self.root).map_err(|e| e.to_string())?;
        // Read before the swap, folded in only once it succeeded: a failed (and
        // undone) apply leaves the old counters running, and carrying them as well
        // would count them twice.
        let outgoing = self.rule_counters(&present);
        let outcomes = loader::apply_all(
            &writer,
            &self.root,
            &present,
            &applied.compiled,
            &applied.summary,
        )
        .map_err(|e| e.to_string())?;
        // The grace period after these flips, on record for the next apply (which
        // then need not wait for one; see `loader::record_grace_periods`).
        let root = self.root.clone();
        let _ = std::thread::Builder::new()
            .name("grace-record".into())
            .spawn(move || loader::record_grace_periods(&root));
        let mut state = self.state.lock();
        for (key, counter) in outgoing {
            let total = state.carried.entry(key).or_default();
            *total = Counter {
                packets: total.packets + counter.packets,
                bytes: total.bytes + counter.bytes,
            };
        }
        for outcome in outcomes {
            state.interfaces.insert(outcome.iface, outcome.serial);
        }
        Ok(())
    }

    fn selected(&self, policy: &policy::Policy) -> Result<Vec<String>, interfaces::InterfaceError> {
        interfaces::resolve(policy, &self.overrides)
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

    /// Filters on interfaces the policy no longer selects are removed: the agent
    /// owns its pin root, and the kernel must match the policy.
    fn remove_unselected(&self) {
        let Some(applied) = &self.applied else { return };
        let Ok(selected) = self.selected(&applied.policy) else {
            return;
        };
        let selected: BTreeSet<String> = selected.into_iter().collect();
        for iface in self.root.interfaces().unwrap_or_default() {
            if !selected.contains(&iface) {
                match loader::remove(&self.root, &iface) {
                    Ok(()) => tracing::info!(iface, "interface no longer selected; filter removed"),
                    Err(error) => tracing::error!(iface, %error, "removing filter"),
                }
                self.state.lock().interfaces.remove(&iface);
            }
        }
    }

    /// Checks every selected interface and repairs what drifted. Sets readiness.
    pub fn reconcile(&mut self) {
        // An expired `apply --confirm` of the CLI whose watchdog died: finish it.
        crate::safety::confirm::expire_due(&self.root);
        let Some(applied) = &self.applied else {
            self.state.lock().ready = false;
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
            match self.check(iface, index, expected) {
                Ok(()) => {}
                Err(drift) => {
                    tracing::warn!(iface, drift, "filter drifted from the policy; repairing");
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

    /// `Err(what drifted)` unless our program is attached to the interface as it is
    /// now and its maps hold the policy this agent last put there.
    fn check(&self, iface: &str, index: u32, expected: Option<u64>) -> Result<(), &'static str> {
        let dir = self.root.interface_dir(iface);
        loader::pinned_filter_fits(&dir, iface)?;
        let egress = loader::pinned_link_state(
            &dir.join(loader::EGRESS_LINK_PIN),
            loader::LinkKind::TcxEgress,
        );
        if loader::egress_supported() && !egress.is_ok_and(|egress| egress.ifindex == index) {
            return Err("egress program detached (replies to the host's flows would drop)");
        }
        let maps = PolicyMaps::open_pinned(&dir).map_err(|_| "maps unreadable")?;
        let serial = maps.active_summary().ok().flatten().map(|s| s.serial);
        match expected {
            Some(expected) if serial == Some(expected) => Ok(()),
            Some(_) => Err("maps hold another policy (applied by someone else?)"),
            None => Err("not applied by this agent yet"),
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
        for iface in self.root.interfaces().unwrap_or_default() {
            match loader::remove(&self.root, &iface) {
                Ok(()) => tracing::info!(iface, "detached on exit"),
                Err(error) => tracing::error!(iface, %error, "detaching on exit"),
            }
        }
    }

    pub fn root(&self) -> &PinRoot {
        &self.root
    }
}

fn unix_now() -> f64 {
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
