//! `apply`, `remove` and `confirm` beside a running agent. The agent makes the
//! kernel match its policy file: whatever these commands change, it puts back at
//! its next reconcile, while they would have reported success. So they refuse
//! (exit 2), naming the agent and what to do instead, unless `--force`.

use std::{
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use airlock::{agent, loader::PinRoot};
use clap::Parser as _;

/// A command refused because an agent manages the pin root.
#[derive(Debug, thiserror::Error)]
#[error("refusing to {verb}: {agent} manages the filters under {}, {consequence}. {instead}", root.display())]
pub struct AgentManages {
    verb: &'static str,
    agent: String,
    root: PathBuf,
    consequence: &'static str,
    instead: String,
}

#[derive(Clone, Copy)]
pub enum Guarded {
    Apply,
    Remove,
    Confirm,
}

/// Refuses `command` while an agent manages `root`; with `force`, says that it goes
/// ahead anyway.
pub fn check(command: Guarded, root: &PinRoot, force: bool) -> Result<(), AgentManages> {
    // The lock itself answers for an agent /proc does not show (one in another PID
    // namespace: the host's, seen from a container).
    let pid = agent::agent_pid(root.path());
    if pid.is_none() && !agent::agent_holds(root.path()) {
        return Ok(());
    }
    let policy = pid.and_then(agent_policy);
    let agent = match (pid, &policy) {
        (Some(pid), Some(policy)) => {
            format!("an airlock agent (pid {pid}, policy {})", policy.display())
        }
        (Some(pid), None) => format!("an airlock agent (pid {pid})"),
        (None, _) => "an airlock agent (in another PID namespace: its process is not visible here)"
            .to_owned(),
    };
    let file = policy
        .as_ref()
        .map_or_else(|| "its policy file".to_owned(), |p| p.display().to_string());
    let stop = "stop the agent first (e.g. systemctl stop airlock; the filters stay in force)";
    let (verb, consequence, instead) = match command {
        Guarded::Apply => (
            "apply",
            "and would put its own policy back within seconds",
            format!(
                "To change the policy, edit {file} (the agent reloads it; `airlock validate -f {file}` checks it first), or {stop}. --force applies anyway."
            ),
        ),
        Guarded::Remove => (
            "remove",
            "and would put them back within seconds",
            format!(
                "To remove them, {stop} and then remove, or run the agent with --detach-on-exit. --force removes anyway."
            ),
        ),
        Guarded::Confirm => (
            "confirm",
            "whose policy comes from its file, not from `apply --confirm`",
            format!("To change the policy, edit {file}. --force confirms anyway."),
        ),
    };
    if force {
        tracing::warn!(
            "{agent} manages the filters under {} (--force: going ahead; it will restore its own policy)",
            root.path().display()
        );
        return Ok(());
    }
    Err(AgentManages {
        verb,
        agent,
        root: root.path().to_owned(),
        consequence,
        instead,
    })
}

/// The policy file of the agent with process id `pid`: its own command line read
/// with this binary's argument definitions, made absolute against its working
/// directory. `None` if that cannot be read (another airlock version, hidden /proc).
fn agent_policy(pid: u32) -> Option<PathBuf> {
    let proc = Path::new("/proc").join(pid.to_string());
    let cmdline = std::fs::read(proc.join("cmdline")).ok()?;
    let words: Vec<std::ffi::OsString> = cmdline
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| std::ffi::OsStr::from_bytes(w).to_owned())
        .collect();
    let policy = super::Cli::try_parse_from(words).ok()?.agent_policy()?;
    if policy.is_absolute() {
        return Some(policy);
    }
    let cwd = std::fs::read_link(proc.join("cwd")).ok()?;
    Some(cwd.join(policy))
}
