//! The pin root's filesystem failing: no bpffs there, the bpffs unmounted under a
//! running filter, the bpffs read-only, and the agent's state directory (its lock,
//! socket and report: the only files Airlock keeps outside bpffs) on a full
//! filesystem. bpffs itself cannot fill up: it holds no data, only references.

use std::{
    fs,
    io::Write as _,
    time::{Duration, Instant},
};

use super::{Tally, policy, run, s, spawn_agent, xdp_attached};
use crate::{
    agent,
    cli::airlock_in,
    fixture::Fixture,
    netns::{addr, wait_until},
};

/// `apply` with a pin root on a plain directory (no bpffs, none above it), from
/// `ip netns exec`, whose private mount namespace would take a bpffs mounted there
/// (and the filter pinned in it) away when the process exits: refused, clearly,
/// with nothing attached; or, if it says it succeeded, the filter must be in
/// force after it exited.
pub fn not_bpffs(f: &Fixture, t: &mut Tally) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("pins");
    let office = policy(f, "office");
    t.faults += 1;
    let run_ = airlock_in(&f.bed.server, &root, &["apply", "-f", s(&office)]);
    let attached = xdp_attached(&f.bed.server, &f.bed.server_if);
    if run_.code == 0 {
        if attached {
            t.office(f, "apply on a pin root with no bpffs, said to succeed");
            t.outcome("no bpffs: mounted one and installed".into());
        } else {
            t.fail(format!(
                "apply on a pin root with no bpffs said it succeeded, and no filter is in force after it exited: {}",
                run_.stdout.trim()
            ));
        }
    } else if attached || !run_.stderr.contains("bpffs") {
        t.fail(format!(
            "apply on a pin root with no bpffs: exit {}, attached {attached}, error {:?}",
            run_.code, run_.stderr
        ));
    } else {
        t.outcome("no bpffs: refused (mount it first)".into());
    }
    // A mount it may have made would be in its own namespace; none is in ours.
    let _ = std::process::Command::new("umount").arg(&root).status();
    let _ = f.airlock(&["remove", "--all"]);
}

/// The bpffs unmounted (lazily, as `umount -l` does even while files are open)
/// under a filter the agent keeps, then another mounted there. While the agent
/// holds its lock in the unmounted one, that bpffs and the filters pinned in it
/// live on and keep enforcing; the agent must say why it cannot repair (or repair
/// by mounting one itself), and move to the new bpffs once there is one, putting
/// the policy back there. The time the interface goes without a filter is
/// measured throughout.
pub fn unmounted_under_agent(f: &Fixture, t: &mut Tally) {
    let office = policy(f, "office");
    let state = f.dir.path().join("state-unmount");
    let agent = match spawn_agent(f, &office, &state, true) {
        Ok(agent) => agent,
        Err(e) => return t.fail(format!("bpffs unmounted: {e}")),
    };
    if !super::ready_within(f, Duration::from_secs(10)) {
        return t.fail(format!("bpffs unmounted: agent not ready: {}", agent.log()));
    }
    t.office(f, "before the bpffs was unmounted");
    let root = f.bed.bpffs.path().to_owned();
    let (server, iface) = (&f.bed.server, f.bed.server_if.as_str());
    // Polls the kernel until `done`; adds up the time with no XDP program attached.
    let mut unfiltered = Duration::ZERO;
    let mut watch = |limit: Duration, done: &mut dyn FnMut() -> bool| {
        let started = Instant::now();
        let mut last = Instant::now();
        while started.elapsed() < limit {
            let attached = xdp_attached(server, iface);
            if !attached {
                unfiltered += last.elapsed();
            }
            last = Instant::now();
            if attached && done() {
                return true;
            }
        }
        false
    };
    t.faults += 1;
    run("umount", &["-l", s(&root)]);
    // The agent either repairs (mounting a bpffs itself, in the host's mount
    // namespace) or says why not and is not ready.
    let pinned = || root.join(iface).join("link").exists();
    let repaired = watch(Duration::from_secs(3), &mut || agent::ready(f) && pinned());
    if !repaired {
        let log = agent.log();
        if !log.contains("bpffs") {
            t.fail(format!(
                "bpffs unmounted: the agent neither repaired nor said why: {log}"
            ));
        }
        if xdp_attached(server, iface) {
            t.office(f, "bpffs unmounted, not mounted again yet");
        }
        run("mount", &["-t", "bpf", "-o", "mode=0700", "bpf", s(&root)]);
    }
    let remounted = Instant::now();
    let back = watch(Duration::from_secs(10), &mut || agent::ready(f) && pinned());
    if !back {
        return t.fail(format!(
            "bpffs unmounted then mounted again: the agent did not repair: {}",
            agent.log()
        ));
    }
    let took = remounted.elapsed();
    t.office(f, "after the agent repaired the unmounted bpffs");
    t.unfiltered += unfiltered;
    t.outcome(format!(
        "bpffs unmounted under the agent: {}; the policy pinned in the new bpffs {took:.1?} after it was mounted, {unfiltered:.2?} without a filter in all",
        if repaired {
            "the agent mounted one itself"
        } else {
            "the filter kept enforcing, the agent said it cannot mount bpffs here and was not ready"
        },
    ));
    drop(agent);
    let _ = f.airlock(&["remove", "--all"]);
}

/// The bpffs made read-only under a filter in force (remount ro), and a read-only
/// bind mount of it used as the pin root: each apply must either succeed (the
/// policy it applies in force) or fail clearly with the old policy in force.
pub fn read_only(f: &Fixture, t: &mut Tally) {
    let office = policy(f, "office");
    let partners = policy(f, "partners");
    let root = f.bed.bpffs.path().to_owned();
    f.apply(&office);
    t.office(f, "before the bpffs was made read-only");

    let attempt = |pin_root: &std::path::Path, what: &str, t: &mut Tally| {
        t.faults += 1;
        let run_ = airlock_in(&f.bed.server, pin_root, &["apply", "-f", s(&partners)]);
        if run_.code == 0 {
            t.partners(f, &format!("{what}: apply succeeded"));
            t.outcome(format!("{what}: the swap succeeded (writes to maps)"));
        } else {
            let clear = run_.stderr.contains("Read-only") || run_.stderr.contains("read-only");
            if !clear {
                t.fail(format!("{what}: unclear error: {:?}", run_.stderr));
            }
            t.office(f, &format!("{what}: apply refused"));
            t.outcome(format!(
                "{what}: refused ({})",
                run_.stderr.trim().lines().last().unwrap_or_default()
            ));
        }
        // `status` only reads: it works on a read-only bpffs.
        let status = airlock_in(&f.bed.server, pin_root, &["status"]);
        if status.code != 0 {
            t.fail(format!("{what}: status failed: {}", status.stderr));
        }
    };
    run("mount", &["-o", "remount,ro", s(&root)]);
    attempt(&root, "bpffs remounted read-only", t);
    run("mount", &["-o", "remount,rw", s(&root)]);
    // Repaired: an apply on the writable bpffs succeeds.
    f.apply(&office);
    t.office(f, "bpffs writable again");

    let bind = tempfile::tempdir().expect("temp dir");
    run("mount", &["--bind", s(&root), s(bind.path())]);
    run("mount", &["-o", "remount,bind,ro", s(bind.path())]);
    attempt(bind.path(), "read-only bind mount as the pin root", t);
    // A first install there: nothing was in force, nothing may be after a refusal.
    let _ = f.airlock(&["remove", "--all"]);
    t.faults += 1;
    let run_ = airlock_in(&f.bed.server, bind.path(), &["apply", "-f", s(&office)]);
    let attached = xdp_attached(&f.bed.server, &f.bed.server_if);
    match (run_.code, attached) {
        (0, true) => t.office(f, "first install on a read-only bind mount"),
        (0, false) => t.fail(
            "first install on a read-only bind mount said it succeeded; nothing attached".into(),
        ),
        (_, true) => t.fail(format!(
            "first install on a read-only bind mount failed but left a filter: {}",
            run_.stderr
        )),
        (_, false) => t.outcome(format!(
            "first install on a read-only bind mount: refused ({}), nothing attached",
            run_.stderr.trim().lines().last().unwrap_or_default()
        )),
    }
    let _ = std::process::Command::new("umount")
        .arg(bind.path())
        .status();
    let _ = f.airlock(&["remove", "--all"]);
}

/// `status` on the bpffs remounted read-only and on a read-only bind mount of it:
/// it only reads, so it must work there and report the filter in force as it is
/// (attached, its policy, its counters), not fail or call it detached.
pub fn status_read_only(f: &Fixture, t: &mut Tally) {
    let office = policy(f, "office");
    let root = f.bed.bpffs.path().to_owned();
    f.apply(&office);
    let check = |pin_root: &std::path::Path, what: &str, t: &mut Tally| {
        t.faults += 1;
        let run_ = airlock_in(&f.bed.server, pin_root, &["status", "-o", "json"]);
        if run_.code != 0 {
            t.fail(format!(
                "{what}: status exit {}: {}",
                run_.code, run_.stderr
            ));
            return;
        }
        let json: serde_json::Value = serde_json::from_str(&run_.stdout).expect("status JSON");
        let iface = &json["interfaces"][0];
        let policy_path = iface["policy"]["policy_path"].as_str().unwrap_or_default();
        let egress = iface["return_traffic"]["egress"]
            .as_str()
            .unwrap_or_default();
        if iface["iface"] != f.bed.server_if.as_str()
            || iface["attachment"] != "attached"
            || !policy_path.ends_with("office.yaml")
            || iface["reasons"].as_object().is_none_or(|r| r.is_empty())
            || egress == "detached"
        {
            t.fail(format!(
                "{what}: status does not tell the filter in force: {json:#}"
            ));
            return;
        }
        let human = airlock_in(&f.bed.server, pin_root, &["status"]);
        if human.code != 0 || !human.stdout.contains("attached (") {
            t.fail(format!(
                "{what}: human status exit {}: {}{}",
                human.code, human.stdout, human.stderr
            ));
            return;
        }
        t.outcome(format!("{what}: status read the filter in force"));
    };
    run("mount", &["-o", "remount,ro", s(&root)]);
    check(&root, "bpffs remounted read-only", t);
    run("mount", &["-o", "remount,rw", s(&root)]);
    let bind = tempfile::tempdir().expect("temp dir");
    run("mount", &["--bind", s(&root), s(bind.path())]);
    let unmount = Unmount(bind.path().to_owned());
    run("mount", &["-o", "remount,bind,ro", s(bind.path())]);
    check(bind.path(), "read-only bind mount as the pin root", t);
    drop(unmount);
    t.office(f, "after status on a read-only bpffs");
    let _ = f.airlock(&["remove", "--all"]);
}

/// The agent's state directory on a full tmpfs (no blocks, no inodes left), a
/// filter applied by the CLI in force: the agent starts or refuses clearly, the
/// filter keeps enforcing; with inodes free but no blocks (its report cannot be
/// written) it runs, reloads, and says what it could not write.
pub fn full_state_dir(f: &Fixture, t: &mut Tally) {
    let office = policy(f, "office");
    let partners = policy(f, "partners");
    let mount = tempfile::tempdir().expect("temp dir");
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=64k,nr_inodes=32,mode=0700",
            "tmpfs",
            s(mount.path()),
        ],
    );
    let _unmount = Unmount(mount.path().to_owned());
    let state = mount.path().join("state");
    fs::create_dir(&state).expect("state dir");
    // Fill the blocks, then the inodes.
    if let Ok(mut file) = fs::File::create(mount.path().join("fill")) {
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
    }
    let mut inodes = Vec::new();
    for i in 0.. {
        let path = mount.path().join(format!("i{i}"));
        if fs::File::create(&path).is_err() {
            break;
        }
        inodes.push(path);
    }
    f.apply(&office);
    t.office(f, "before the agent started on a full state directory");

    t.faults += 1;
    match spawn_agent(f, &office, &state, false) {
        Ok(agent) => {
            if super::ready_within(f, Duration::from_secs(10)) {
                t.outcome("state dir full (no inodes): the agent started".into());
            } else {
                t.fail(format!(
                    "state dir full: agent running but not ready: {}",
                    agent.log()
                ));
            }
        }
        Err(log) if log.contains("No space left") => t.outcome(format!(
            "state dir full (no inodes): the agent refused to start ({})",
            log.lines()
                .rev()
                .find(|l| l.contains("No space left"))
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect::<String>()
        )),
        Err(log) => t.fail(format!("state dir full: unclear failure: {log}")),
    }
    t.office(f, "after the agent met a full state directory");

    // Inodes back, blocks still full: the lock and socket can be made, the report
    // cannot be written.
    for path in &inodes {
        let _ = fs::remove_file(path);
    }
    t.faults += 1;
    let agent = match spawn_agent(f, &office, &state, false) {
        Ok(agent) => agent,
        Err(log) => return t.fail(format!("state dir without blocks: agent exited: {log}")),
    };
    if !super::ready_within(f, Duration::from_secs(10)) {
        return t.fail(format!(
            "state dir without blocks: not ready: {}",
            agent.log()
        ));
    }
    // The agent follows the file it was started on.
    fs::copy(&partners, &office).expect("policy");
    let reloaded = wait_until(agent::RELOAD * 2, || f.gets_in(addr::PARTNER_V4));
    if !reloaded {
        t.fail(format!(
            "state dir without blocks: reload not in force: {}",
            agent.log()
        ));
    }
    t.partners(f, "state dir without blocks, after a reload");
    let log = agent.log();
    if log.contains("writing the agent's report") {
        t.outcome("state dir without blocks: the agent ran, reloaded, and warned it could not write its report".into());
    } else {
        t.fail(format!(
            "state dir without blocks: no word of the report it could not write: {log}"
        ));
    }
    drop(agent);
    let _ = f.airlock(&["remove", "--all"]);
}

/// Unmounts a directory when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Every fault of this module, in one fixture.
pub fn all(f: &Fixture) -> Tally {
    let mut t = Tally::new("filesystems");
    not_bpffs(f, &mut t);
    read_only(f, &mut t);
    status_read_only(f, &mut t);
    full_state_dir(f, &mut t);
    unmounted_under_agent(f, &mut t);
    t
}
