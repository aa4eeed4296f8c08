//! Faults from outside (issue 20, part 4): what the host does to Airlock rather
//! than what Airlock does. Each fault must end in a clear error or a repair, with
//! the filter enforcing throughout where it was enforcing before, checked with
//! real TCP connections between the test namespaces (an allowed source gets in, a
//! refused one is kept out).
//!
//! - [`churn`]: the filtered interface deleted and recreated under the agent;
//! - [`bpffs`]: the pin root not on a bpffs, the bpffs unmounted under a running
//!   filter, the bpffs read-only, the agent's state directory on a full filesystem;
//! - [`memory`]: map creation refused by a memory cgroup's limit (this kernel
//!   charges BPF maps to the memory cgroup; RLIMIT_MEMLOCK plays no part);
//! - [`ifaces`]: the filtered interface renamed, the default route moved under
//!   `interfaces: [auto]`;
//! - [`clock`]: the wall clock set back and forth during a confirm window;
//! - [`reloads`]: the agent reloading valid and invalid policies in a row.

pub mod bpffs;
pub mod churn;
pub mod clock;
pub mod ifaces;
pub mod memory;
pub mod reloads;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

pub use churn::{Report, interface_churn};

use crate::{
    agent::{self, Agent},
    cli::airlock_bin,
    fixture::Fixture,
    netns::{Namespace, addr, wait_until},
};

/// What one kind of fault came to.
#[derive(Debug, Default)]
pub struct Tally {
    pub name: &'static str,
    /// Faults made.
    pub faults: u64,
    /// Real-packet checks made, and those that came out wrong.
    pub checks: u64,
    pub wrong_verdicts: u64,
    /// Time an interface that had a filter went without one.
    pub unfiltered: Duration,
    /// What each fault ended in (the error, the repair), for the figures.
    pub outcomes: Vec<String>,
    pub failures: Vec<String>,
}

impl Tally {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    pub fn ok(&self) -> bool {
        self.faults > 0 && self.wrong_verdicts == 0 && self.failures.is_empty()
    }

    pub fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    pub fn outcome(&mut self, what: String) {
        self.outcomes.push(what);
    }

    /// Checks with real connections that `allowed` gets in and `refused` is kept
    /// out (the office or the partners policy is in force).
    pub fn enforces(&mut self, f: &Fixture, allowed: &str, refused: &str, when: &str) {
        self.checks += 2;
        let gets_in = f.gets_in(allowed);
        let kept_out = f.kept_out(refused);
        if !gets_in || !kept_out {
            self.wrong_verdicts += u64::from(!gets_in) + u64::from(!kept_out);
            self.fail(format!(
                "{when}: {allowed} got in: {gets_in}, {refused} kept out: {kept_out}"
            ));
        }
    }

    /// [`enforces`](Self::enforces) for the office policy.
    pub fn office(&mut self, f: &Fixture, when: &str) {
        self.enforces(f, addr::OFFICE_V4, addr::PARTNER_V4, when);
    }

    /// [`enforces`](Self::enforces) for the partners policy.
    pub fn partners(&mut self, f: &Fixture, when: &str) {
        self.enforces(f, addr::PARTNER_V4, addr::OFFICE_V4, when);
    }

    pub fn summary(&self) -> String {
        format!(
            "{}: {} faults, {} packet checks, {} wrong verdicts, {:.1?} without a filter; {}",
            self.name,
            self.faults,
            self.checks,
            self.wrong_verdicts,
            self.unfiltered,
            self.outcomes.join("; ")
        )
    }
}

/// The policy file letting `from` (a set, or `partners`) reach the database port.
pub fn policy(f: &Fixture, from: &str) -> PathBuf {
    let text = agent::policy_text(f, from).replace(
        "sets:\n",
        "sets:\n  partners: [192.0.2.0/24, \"2001:db8:1::/48\"]\n",
    );
    f.write(&format!("{from}.yaml"), &text)
}

pub fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Whether an XDP program is attached to `iface` in `ns`, as the kernel says.
pub fn xdp_attached(ns: &Namespace, iface: &str) -> bool {
    let output = ns
        .command("ip")
        .args(["-j", "link", "show", "dev", iface])
        .output()
        .expect("ip link show");
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    links[0]["xdp"]["prog"]["id"].as_u64().is_some()
}

/// Runs a command to its end; panics if it cannot be started or fails.
pub fn run(program: &str, args: &[&str]) {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The agent on `policy` in the server namespace, with `state_dir`. `entered`: it
/// joins the namespace with setns alone and shares the test's mount namespace (so
/// it sees what the test mounts and unmounts); otherwise it runs under `ip netns
/// exec` as elsewhere. Returns once its HTTP endpoint answers, or `None` if it
/// exited first (its log says why).
pub fn spawn_agent(
    f: &Fixture,
    policy: &Path,
    state_dir: &Path,
    entered: bool,
) -> Result<Agent, String> {
    let log = f
        .dir
        .path()
        .join(format!("agent-{}.log", crate::netns::unique_name("fault")));
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut command = if entered {
        f.bed.server.entered_command(airlock_bin())
    } else {
        f.bed.server.command(airlock_bin())
    };
    let child = command
        .args(["agent", "-f"])
        .arg(policy)
        .arg("--pin-root")
        .arg(f.bed.bpffs.path())
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--metrics-addr", &format!("127.0.0.1:{}", agent::METRICS)])
        .args(["--log-format", "json", "--reconcile-interval", "1"])
        .env_remove("SSH_CONNECTION")
        .env_remove("AIRLOCK_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("start agent");
    let mut agent = Agent { child, log };
    let serving = wait_until(Duration::from_secs(10), || {
        matches!(agent.child.try_wait(), Ok(Some(_)))
            || f.bed.http_get(agent::METRICS, "/healthz").is_some()
    });
    match agent.child.try_wait() {
        Ok(Some(status)) => Err(format!("agent exited ({status}): {}", agent.log())),
        _ if !serving => Err(format!("agent not serving within 10 s: {}", agent.log())),
        _ => Ok(agent),
    }
}

/// Waits for the agent to be ready.
pub fn ready_within(f: &Fixture, timeout: Duration) -> bool {
    wait_until(timeout, || agent::ready(f))
}
