//! `airlock apply` (and the agent) killed with SIGKILL at each step of their work,
//! and after random delays: afterwards the filter in force must be exactly the old
//! policy or the new one (by the verdict and counter of a frame run through it, and
//! by which program the interface runs), `status` must say so, and the next apply
//! must finish the job.
//!
//! A step is reached with the binary's test hook (`AIRLOCK_TEST_STOP_AT`, see
//! `airlock::test_hook`): the process stops itself there, the test sees it
//! stopped and kills it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use crate::{
    cli::airlock_bin,
    fixture::Fixture,
    swaps::{self, Which},
};

/// What the kills found.
#[derive(Debug, Default)]
pub struct Report {
    /// Processes killed while they ran.
    pub kills: u64,
    /// Applies that had finished before the kill came (random delays only).
    pub finished_first: u64,
    /// States after a kill that were neither the old policy nor the new one.
    pub wrong_states: u64,
    /// `status` disagreeing with the filter in force.
    pub status_lies: u64,
    /// Applies after a kill that did not put their policy in force.
    pub failed_repairs: u64,
    pub examples: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.wrong_states == 0 && self.status_lies == 0 && self.failed_repairs == 0
    }

    fn note(&mut self, what: String) {
        if self.examples.len() < 20 {
            self.examples.push(what);
        }
    }
}

/// A test bed with the two policies of [`swaps`] written out.
pub struct Bed {
    pub f: Fixture,
    pub dir: PathBuf,
    paths: [PathBuf; 2],
}

impl Bed {
    pub fn new(prefix: &str) -> Self {
        let f = Fixture::new(prefix);
        let iface = f.bed.server_if.clone();
        let paths = [Which::A, Which::B].map(|which| {
            f.write(
                &format!("policy-{which:?}.yaml").to_lowercase(),
                &swaps::policy_text(which, &iface),
            )
        });
        let dir = swaps::filter_dir(f.bed.bpffs.path(), &iface);
        Self { f, dir, paths }
    }

    pub fn path(&self, which: Which) -> &str {
        self.paths[which as usize].to_str().expect("utf-8")
    }

    /// `airlock <args>` started in the server namespace, stopping at `stop_at`.
    pub fn spawn(&self, args: &[&str], stop_at: Option<&str>) -> Child {
        let mut command = self.f.bed.server.command(airlock_bin());
        command
            .args(args)
            .env("AIRLOCK_PIN_ROOT", self.f.bed.bpffs.path())
            .env("NO_COLOR", "1")
            .env_remove("SSH_CONNECTION")
            .env_remove("AIRLOCK_LOG")
            .env_remove(airlock::test_hook::STOP_AT)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(step) = stop_at {
            command.env(airlock::test_hook::STOP_AT, step);
        }
        command.spawn().expect("starting airlock")
    }

    /// `apply -f <which>` run to its end; an error unless it succeeded.
    pub fn apply(&self, which: Which, extra: &[&str]) -> Result<(), String> {
        let mut args = vec!["apply", "-f", self.path(which)];
        args.extend_from_slice(extra);
        let run = self.f.airlock(&args);
        if run.code == 0 {
            Ok(())
        } else {
            Err(format!(
                "apply {which:?} {extra:?}: exit {}: {}",
                run.code, run.stderr
            ))
        }
    }

    /// The id of the XDP program attached to the interface, as the kernel says.
    pub fn attached_program(&self) -> Option<u32> {
        let output = self
            .f
            .bed
            .server
            .command("ip")
            .args(["-j", "link", "show", "dev", &self.f.bed.server_if])
            .output()
            .expect("ip link show");
        let links: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ip -j");
        links[0]["xdp"]["prog"]["id"].as_u64().map(|id| id as u32)
    }

    /// The policy the interface is filtered by, from the kernel: no program
    /// attached is `None`; a program attached must be one pinned (in place, or in
    /// the staging directory of an install killed before its rename: it filters
    /// all the same), and a frame run through it must be judged (verdict and
    /// counter) by one of the policies.
    pub fn in_force(&self) -> Result<Option<Which>, String> {
        let attached = self.attached_program();
        let root = self.f.bed.bpffs.path();
        let mut dirs = vec![self.dir.clone()];
        dirs.extend(self.staging_left().into_iter().map(|name| root.join(name)));
        let pinned = dirs
            .iter()
            .find(|dir| attached.is_some() && swaps::pinned_program_id(dir) == attached);
        match (attached, pinned) {
            (None, _) if swaps::pinned_program_id(&self.dir).is_none() => Ok(None),
            (Some(_), Some(dir)) => swaps::probe(dir)
                .map(Some)
                .ok_or_else(|| "the pinned filter judges by neither policy".to_owned()),
            (attached, _) => Err(format!(
                "program attached {attached:?}, pinned {:?} (staging left: {:?})",
                swaps::pinned_program_id(&self.dir),
                self.staging_left()
            )),
        }
    }

    /// The policy `status -o json` says is in force on the interface.
    pub fn status_says(&self) -> Result<Option<Which>, String> {
        let run = self.f.airlock(&["status", "-o", "json"]);
        if run.code != 0 {
            return Err(format!("status exit {}: {}", run.code, run.stderr));
        }
        let json: serde_json::Value =
            serde_json::from_str(&run.stdout).map_err(|e| format!("status JSON: {e}"))?;
        let Some(entry) = json["interfaces"]
            .as_array()
            .and_then(|all| all.iter().find(|i| i["iface"] == self.f.bed.server_if))
        else {
            return Ok(None);
        };
        if entry["attachment"] != "attached" {
            return Err(format!("status: attachment {}", entry["attachment"]));
        }
        match entry["policy"]["rules"][0]["name"]
            .as_str()
            .map(|n| &n[..1])
        {
            Some("a") => Ok(Some(Which::A)),
            Some("z") => Ok(Some(Which::B)),
            other => Err(format!("status names no policy of ours: {other:?}")),
        }
    }

    /// Staging directories in the pin root (a finished apply leaves none).
    pub fn staging_left(&self) -> Vec<String> {
        std::fs::read_dir(self.f.bed.bpffs.path())
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with("%staging-"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checks the state after a kill: in force one of `allowed`, `status` agreeing.
    /// Returns what is in force.
    pub fn check(
        &self,
        allowed: &[Option<Which>],
        when: &str,
        report: &mut Report,
    ) -> Option<Which> {
        let in_force = match self.in_force() {
            Ok(which) if allowed.contains(&which) => which,
            other => {
                report.wrong_states += 1;
                report.note(format!(
                    "{when}: in force {other:?}, expected one of {allowed:?}"
                ));
                return None;
            }
        };
        match self.status_says() {
            Ok(said) if said == in_force => {}
            other => {
                report.status_lies += 1;
                report.note(format!(
                    "{when}: status says {other:?}, in force {in_force:?}"
                ));
            }
        }
        in_force
    }

    /// The apply after a kill: must put `which` in force and leave nothing behind.
    pub fn repair(&self, which: Which, when: &str, report: &mut Report) {
        let result = self.apply(which, &[]).and_then(|()| {
            let left = self.staging_left();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("staging left behind: {left:?}"))
            }
        });
        if let Err(error) = result {
            report.failed_repairs += 1;
            report.note(format!("{when}: repairing apply failed: {error}"));
            return;
        }
        let before = report.wrong_states + report.status_lies;
        self.check(
            &[Some(which)],
            &format!("{when}, after the repairing apply"),
            report,
        );
        if report.wrong_states + report.status_lies > before {
            report.failed_repairs += 1;
        }
    }
}

/// Waits until process `pid` is stopped (state `T`); false if it exited or did not
/// stop within `timeout`.
pub fn wait_stopped(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match state(pid) {
            Some('T' | 't') => return true,
            Some('Z') | None => return false,
            _ => {}
        }
        thread::sleep(Duration::from_millis(2));
    }
    false
}

/// The pids of stopped `airlock` processes whose environment names `pin_root`
/// (the confirm watchdog runs detached: its pid is found this way).
pub fn stopped_under(pin_root: &Path) -> Vec<u32> {
    let needle = format!("AIRLOCK_PIN_ROOT={}", pin_root.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        })
        .filter(|&pid| matches!(state(pid), Some('T' | 't')))
        .collect()
}

/// The state letter of process `pid` (`None`: gone).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name's closing parenthesis.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim().chars().next())
}

/// SIGKILLs `pid` (not a child of ours) and waits until it is gone.
pub fn kill_pid(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    // Gone, or a zombie init has yet to reap (it holds nothing any more).
    while !matches!(state(pid), None | Some('Z')) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `apply -f which` to `step` and SIGKILLs it there; an error if it never
/// stopped there (it exited first).
fn kill_at(bed: &Bed, which: Which, extra: &[&str], step: &str) -> Result<(), String> {
    let mut args = vec!["apply", "-f", bed.path(which)];
    args.extend_from_slice(extra);
    let mut child = bed.spawn(&args, Some(step));
    let stopped = wait_stopped(child.id(), Duration::from_secs(20));
    let _ = child.kill();
    let status = child.wait().expect("wait for apply");
    if stopped {
        Ok(())
    } else {
        Err(format!("apply never stopped at {step} (exit {status})"))
    }
}

/// The steps of a swap (a filter already in place).
pub const SWAP_STEPS: [&str; 4] = ["compile", "tables-written", "before-flip", "after-flip"];
/// The steps of a first install.
pub const INSTALL_STEPS: [&str; 5] = [
    "compile",
    "tables-written",
    "before-flip",
    "install-attached",
    "install-pinned",
];

/// Kills `apply` at every named step, for a swap and for a first install.
pub fn at_every_step(bed: &Bed, report: &mut Report) {
    for step in INSTALL_STEPS {
        let when = format!("install killed at {step}");
        let _ = bed.f.airlock(&["remove", "--all"]);
        if let Err(e) = kill_at(bed, Which::A, &[], step) {
            report.wrong_states += 1;
            report.note(format!("{when}: {e}"));
            continue;
        }
        report.kills += 1;
        bed.check(&[None, Some(Which::A)], &when, report);
        bed.repair(Which::A, &when, report);
    }
    for step in SWAP_STEPS {
        let when = format!("swap A to B killed at {step}");
        if let Err(e) = bed.apply(Which::A, &[]) {
            report.failed_repairs += 1;
            report.note(format!("{when}: setting up: {e}"));
            continue;
        }
        if let Err(e) = kill_at(bed, Which::B, &[], step) {
            report.wrong_states += 1;
            report.note(format!("{when}: {e}"));
            continue;
        }
        report.kills += 1;
        bed.check(&[Some(Which::A), Some(Which::B)], &when, report);
        bed.repair(Which::B, &when, report);
    }
}

/// A commit-confirm killed: the CLI after its flip (before it armed the watchdog),
/// the watchdog during the window, the watchdog during its rollback. Each time the
/// probation policy must be rolled back at the deadline by whoever looks next
/// (`status` here), and `status` must tell the truth meanwhile.
pub fn during_confirm(bed: &Bed, report: &mut Report) {
    // The shortest window `--confirm` takes.
    let window = "10s";
    let cases: [(&str, &str); 3] = [
        ("apply --confirm killed after its flip", "after-flip"),
        ("confirm watchdog killed during the window", "watchdog"),
        ("confirm watchdog killed during its rollback", "rollback"),
    ];
    for (when, step) in cases {
        if let Err(e) = bed.apply(Which::A, &[]) {
            report.failed_repairs += 1;
            report.note(format!("{when}: setting up: {e}"));
            continue;
        }
        let started = Instant::now();
        let killed = if step == "after-flip" {
            kill_at(bed, Which::B, &["--confirm", window], step)
        } else {
            // The CLI arms the watchdog and exits; the watchdog (same environment)
            // stops itself.
            let mut child = bed.spawn(
                &["apply", "-f", bed.path(Which::B), "--confirm", window],
                Some(step),
            );
            let _ = child.wait();
            // The rollback comes at the window's end, on the boot clock, measured
            // from before the CLI exited: the window and a margin.
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let [pid, ..] = stopped_under(bed.f.bed.bpffs.path())[..] {
                    kill_pid(pid);
                    break Ok(());
                }
                if Instant::now() > deadline {
                    break Err(format!("no watchdog stopped at {step}"));
                }
                thread::sleep(Duration::from_millis(20));
            }
        };
        if let Err(e) = killed {
            report.wrong_states += 1;
            report.note(format!("{when}: {e}"));
            continue;
        }
        report.kills += 1;
        // During the window (or past it, for the rollback case): B, on probation,
        // unless a rollback has already happened.
        if started.elapsed() < Duration::from_secs(8) {
            bed.check(
                &[Some(Which::B)],
                &format!("{when}, inside the window"),
                report,
            );
        }
        // Past the deadline: `status` finds it expired and rolls it back.
        thread::sleep(Duration::from_secs(11).saturating_sub(started.elapsed()));
        // Nothing is left to roll it back but whoever looks next: the killed
        // process's work is finished by this `status`.
        let _ = bed.status_says();
        bed.check(
            &[Some(Which::A)],
            &format!("{when}, past the deadline"),
            report,
        );
    }
}

/// Applies, alternating policies, each SIGKILLed after a random delay within the
/// time an apply takes (every tenth a first install), until `kills` of them were
/// killed while running (at most `3 * kills` applies); after each, the state and
/// `status` are checked and a full apply must finish the job.
pub fn at_random(bed: &Bed, kills: u64, seed: u64, report: &mut Report) {
    let mut rng = StdRng::seed_from_u64(seed);
    bed.apply(Which::A, &[]).expect("first apply");
    // How long an apply takes here, to spread the kills over it.
    let started = Instant::now();
    for which in [Which::B, Which::A, Which::B, Which::A] {
        bed.apply(which, &[]).expect("timing apply");
    }
    let span = (started.elapsed() / 4).mul_f64(0.8);
    let mut current = Some(Which::A);
    let wanted = report.kills + kills;
    for i in 0..3 * kills {
        if report.kills >= wanted {
            break;
        }
        let target = current.map_or(Which::A, Which::other);
        if i % 10 == 9 {
            let _ = bed.f.airlock(&["remove", "--all"]);
            current = None;
        }
        let when = format!("random kill #{i} ({current:?} to {target:?})");
        let mut child = bed.spawn(&["apply", "-f", bed.path(target)], None);
        thread::sleep(span.mul_f64(rng.random::<f64>()));
        if matches!(child.try_wait(), Ok(Some(_))) {
            report.finished_first += 1;
        } else {
            let _ = child.kill();
            report.kills += 1;
        }
        let _ = child.wait();
        bed.check(&[current, Some(target)], &when, report);
        bed.repair(target, &when, report);
        current = Some(target);
    }
}

/// The agent in the server namespace on `policy`, stopping at `stop_at`.
pub fn spawn_agent(bed: &Bed, stop_at: Option<&str>) -> Child {
    let f = &bed.f;
    let mut command = f.bed.server.command(airlock_bin());
    command
        .args(["agent", "-f"])
        .arg(crate::agent::policy_path(f))
        .arg("--pin-root")
        .arg(f.bed.bpffs.path())
        .arg("--state-dir")
        .arg(crate::agent::state_dir(f))
        .args([
            "--metrics-addr",
            &format!("127.0.0.1:{}", crate::agent::METRICS),
        ])
        .args(["--log-format", "json", "--reconcile-interval", "1"])
        .env_remove("SSH_CONNECTION")
        .env_remove(airlock::test_hook::STOP_AT)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(step) = stop_at {
        command.env(airlock::test_hook::STOP_AT, step);
    }
    command.spawn().expect("starting the agent")
}

/// Waits until `which` is in force and `status` says so.
fn settles_on(bed: &Bed, which: Which, timeout: Duration) -> bool {
    crate::netns::wait_until(timeout, || {
        bed.in_force() == Ok(Some(which)) && bed.status_says() == Ok(Some(which))
    })
}

/// The agent SIGKILLed at a step of its first apply (startup), of a reload, and of
/// the reconcile that reinstalls a filter removed behind its back; restarted, it
/// must put the policy file in force.
pub fn agent_at_steps(bed: &Bed, report: &mut Report) {
    let iface = bed.f.bed.server_if.clone();
    let write = |which| crate::agent::rename_policy(&bed.f, &swaps::policy_text(which, &iface));
    // (what, in force before, file at start, step, file change after start, allowed after the kill)
    type Case = (&'static str, Which, Which, &'static str, Option<Which>);
    let cases: [Case; 6] = [
        (
            "agent killed in its first apply, before the flip",
            Which::B,
            Which::A,
            "before-flip",
            None,
        ),
        (
            "agent killed in its first apply, after the flip",
            Which::B,
            Which::A,
            "after-flip",
            None,
        ),
        (
            "agent killed in a reload, source tables written",
            Which::A,
            Which::A,
            "tables-written:2",
            Some(Which::B),
        ),
        (
            "agent killed in a reload, before the flip",
            Which::A,
            Which::A,
            "before-flip:2",
            Some(Which::B),
        ),
        (
            "agent killed reinstalling a removed filter, attached",
            Which::A,
            Which::A,
            "install-attached",
            None,
        ),
        (
            "agent killed reinstalling a removed filter, pinned",
            Which::A,
            Which::A,
            "install-pinned",
            None,
        ),
    ];
    for (when, before, file, step, change) in cases {
        if let Err(e) = bed.apply(before, &[]) {
            report.failed_repairs += 1;
            report.note(format!("{when}: setting up: {e}"));
            continue;
        }
        write(file);
        let mut agent = spawn_agent(bed, Some(step));
        let reinstall = step.starts_with("install");
        if change.is_some() || reinstall {
            // Its first apply done (it stops at a later arrival), then the trigger.
            if !crate::netns::wait_until(Duration::from_secs(10), || crate::agent::ready(&bed.f)) {
                report.wrong_states += 1;
                report.note(format!("{when}: agent not ready"));
                let _ = agent.kill();
                let _ = agent.wait();
                continue;
            }
            match change {
                Some(which) => write(which),
                // The link unpinned behind the agent's back: nothing holds it, so the
                // filter is detached, and the agent's reconcile reinstalls it.
                None => {
                    let _ = std::fs::remove_file(bed.dir.join(airlock::loader::LINK_PIN));
                }
            }
        }
        let stopped = wait_stopped(agent.id(), Duration::from_secs(15));
        let _ = agent.kill();
        let _ = agent.wait();
        if !stopped {
            report.wrong_states += 1;
            report.note(format!("{when}: the agent never stopped at {step}"));
            continue;
        }
        report.kills += 1;
        let new = change.unwrap_or(file);
        let allowed: Vec<Option<Which>> = if reinstall {
            vec![None, Some(new)]
        } else {
            vec![Some(before), Some(new)]
        };
        bed.check(&allowed, when, report);
        // Restarted, it repairs: the file's policy in force, nothing left over.
        let mut agent = spawn_agent(bed, None);
        let repaired = settles_on(bed, new, Duration::from_secs(10));
        let left = bed.staging_left();
        if !repaired || !left.is_empty() {
            report.failed_repairs += 1;
            report.note(format!(
                "{when}: the restarted agent did not repair: in force {:?}, status {:?}, staging left {left:?}",
                bed.in_force(),
                bed.status_says()
            ));
        }
        let _ = agent.kill();
        let _ = agent.wait();
    }
}
