//! Map creation refused. This kernel charges BPF maps to the memory cgroup of the
//! process that creates them (RLIMIT_MEMLOCK no longer counts since Linux 5.11), so
//! what makes map creation fail for real is a memory cgroup's limit, as a pod's or
//! a systemd unit's. `apply` runs in a child cgroup of the test's own, limited
//! below what a first install needs: it must fail with a clear error and leave
//! nothing behind (no filter, no staging), or be OOM-killed (a kill, which the
//! kill tests cover) and leave something the next apply repairs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use super::{Tally, policy, s, xdp_attached};
use crate::{cli::airlock_bin, fixture::Fixture};

/// A memory cgroup made for the test under the test's own (cgroup v1 or v2),
/// removed when dropped.
pub struct MemoryCgroup {
    path: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// `None` when this host has no memory controller the test can use.
    pub fn new(name: &str) -> Option<Self> {
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        let (base, v2) = own.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if controllers.split(',').any(|c| c == "memory") {
                Some((format!("/sys/fs/cgroup/memory{path}"), false))
            } else if controllers.is_empty() {
                let base = format!("/sys/fs/cgroup{path}");
                let available = fs::read_to_string(format!("{base}/cgroup.subtree_control"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
                available.then_some((base, true))
            } else {
                None
            }
        })?;
        let path = Path::new(&base).join(name);
        fs::create_dir(&path).ok()?;
        Some(Self { path, v2 })
    }

    fn file(&self, v1: &str, v2: &str) -> PathBuf {
        self.path.join(if self.v2 { v2 } else { v1 })
    }

    pub fn limit(&self, bytes: u64) {
        fs::write(
            self.file("memory.limit_in_bytes", "memory.max"),
            bytes.to_string(),
        )
        .expect("setting the memory limit");
    }

    /// The most memory charged at once since the cgroup was made.
    pub fn peak(&self) -> u64 {
        fs::read_to_string(self.file("memory.max_usage_in_bytes", "memory.peak"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `argv` run to its end inside the cgroup (a shell joins it, then execs).
    pub fn run(&self, argv: &mut Command) -> std::process::Output {
        let procs = self.path.join("cgroup.procs");
        let mut command = Command::new("sh");
        command
            .args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
            .arg(&procs)
            .arg(argv.get_program())
            .args(argv.get_args());
        for (key, value) in argv.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        command.output().expect("running in the cgroup")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Empty once its processes exited; charges left (maps still pinned) move
        // to the parent.
        let _ = fs::remove_dir(&self.path);
    }
}

fn apply_in(f: &Fixture, cgroup: &MemoryCgroup, policy: &Path) -> (i32, String) {
    let mut argv = f.bed.server.command(airlock_bin());
    argv.args(["apply", "-f", s(policy)])
        .env("AIRLOCK_PIN_ROOT", f.bed.bpffs.path())
        .env("NO_COLOR", "1")
        .env_remove("SSH_CONNECTION")
        .env_remove("AIRLOCK_LOG");
    let output = cgroup.run(&mut argv);
    use std::os::unix::process::ExitStatusExt as _;
    let code = output
        .status
        .code()
        .unwrap_or_else(|| 128 + output.status.signal().unwrap_or(0));
    (code, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// First installs under shrinking limits (fractions of the peak an unlimited one
/// reached); at least one must fail on map creation with a clear error.
pub fn map_creation_refused(f: &Fixture) -> Tally {
    let mut t = Tally::new("map creation refused");
    let office = policy(f, "office");
    let tag = crate::netns::unique_name("airlock-fault-");
    let Some(free) = MemoryCgroup::new(&format!("{tag}-free")) else {
        t.fail("no memory cgroup controller available to the test (cgroup v1 memory, or v2 with memory in subtree_control)".into());
        return t;
    };
    let (code, stderr) = apply_in(f, &free, &office);
    assert_eq!(code, 0, "unlimited apply failed: {stderr}");
    let peak = free.peak();
    assert!(peak > 0, "no peak memory figure");
    let _ = f.airlock(&["remove", "--all"]);
    let mut clean = 0;
    for percent in [80, 65, 50, 40] {
        let Some(cgroup) = MemoryCgroup::new(&format!("{tag}-{percent}")) else {
            t.fail("making a memory cgroup".into());
            break;
        };
        let limit = peak * percent / 100;
        cgroup.limit(limit);
        t.faults += 1;
        let (code, stderr) = apply_in(f, &cgroup, &office);
        let attached = xdp_attached(&f.bed.server, &f.bed.server_if);
        let what = format!(
            "first install limited to {} KiB ({percent}% of its peak)",
            limit / 1024
        );
        match code {
            0 if attached => {
                t.office(f, &what);
                t.outcome(format!("{what}: fitted"));
            }
            0 => t.fail(format!("{what}: said it succeeded; nothing attached")),
            1 => {
                let error = stderr.trim().lines().last().unwrap_or_default().to_owned();
                if attached
                    || !error.contains("failed to create map")
                    || !error.contains("Cannot allocate memory")
                {
                    t.fail(format!("{what}: exit 1, attached {attached}: {stderr}"));
                } else {
                    clean += 1;
                    t.outcome(format!("{what}: refused ({error})"));
                }
            }
            // Killed by the cgroup's OOM killer before it reached the maps: the
            // next apply must clean up and install.
            _ => t.outcome(format!(
                "{what}: OOM-killed (exit {code}) before creating maps"
            )),
        }
        let left: Vec<String> = fs::read_dir(f.bed.bpffs.path())
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with("%staging-") || *n == f.bed.server_if)
                    .collect()
            })
            .unwrap_or_default();
        if code == 1 && !left.is_empty() {
            t.fail(format!("{what}: refused but left {left:?} in the pin root"));
        }
        // The repair: an apply with memory enough.
        let (code, stderr) = apply_in(f, &free, &office);
        if code != 0 {
            t.fail(format!("{what}: the apply after it failed: {stderr}"));
        } else {
            t.office(f, &format!("{what}, then applied without the limit"));
        }
        let _ = f.airlock(&["remove", "--all"]);
    }
    if clean == 0 {
        t.fail("no limit made map creation fail with a clear error".into());
    }
    t
}
