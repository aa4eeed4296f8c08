//! The control plane, driven as a user would: the real `airlock` binary applies a
//! policy that imports N prefixes from a file (`file:`), inside a namespace, with
//! its own bpffs; then re-applies it with 1% of the prefixes changed, into the
//! empty second copy and in steady state. Every figure is the median of
//! [`RUNS`] runs: wall time of each run, and its peak resident memory from GNU
//! time (see [`run_measured`]). The kernel memory of the maps is what the kernel charges for
//! them (`memlock` in their fdinfo).

use std::{
    os::unix::process::ExitStatusExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    RUNS,
    policies::{SEED, Workload, mutate},
    progress,
};
use crate::{
    cli::airlock_bin,
    netns::{Namespace, PrivateBpffs},
};

/// One CLI run.
#[derive(Clone, Copy, Debug, Default)]
pub struct CliRun {
    pub seconds: f64,
    pub max_rss_kib: u64,
}

/// Runs `airlock <args>` in `ns`, with `env` set, to completion (killing it after
/// `limit`), returning its wall time and peak RSS. It starts in the namespace as
/// under `nsenter --net`, spawned from a thread of this process that joined it
/// (`setns` moves only the calling thread, and a child starts in its parent
/// thread's namespaces); `ip netns exec` would add a mount namespace and a /sys
/// mount to every timing. Without a `pre_exec` hook std spawns through
/// `posix_spawn` (vfork), which copies nothing of this process: a fork would copy
/// its page tables, some milliseconds once it holds the 1M-prefix workloads, timed
/// as the CLI's. The RSS comes from GNU time (`/usr/bin/time -f %M`), not from our
/// own `wait4`: a child spawned by this process inherits, through vfork and exec, a
/// peak RSS that includes this (large) process's.
pub fn run_measured(
    ns: &Namespace,
    env: &[(&str, &std::ffi::OsStr)],
    args: &[&str],
    limit: Duration,
) -> Result<CliRun> {
    let rss_file = tempfile::NamedTempFile::new()?;
    let mut command = Command::new("/usr/bin/time");
    command
        .args(["-f", "%M", "-o"])
        .arg(rss_file.path())
        .arg(airlock_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let seconds = ns
        .spawn(move || timed_run(command, limit))
        .join()
        .map_err(|_| anyhow::anyhow!("the thread timing the CLI panicked"))??;
    let max_rss_kib = std::fs::read_to_string(rss_file.path())?
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .context("no peak RSS from /usr/bin/time")?;
    Ok(CliRun {
        seconds,
        max_rss_kib,
    })
}

/// Runs `command` to a successful exit within `limit` (killing it after that):
/// its wall time in seconds.
fn timed_run(mut command: Command, limit: Duration) -> Result<f64> {
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    let pid = child.id() as libc::pid_t;
    // Bounded: wait for the exit on a pidfd (timed to the exit, not to a polling
    // interval) until the limit, then kill.
    let exited = exits_within(pid, limit)?;
    if !exited {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut status = 0;
    // SAFETY: pid is our child; status is valid to write.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        bail!("waitpid: {}", std::io::Error::last_os_error());
    }
    if !exited {
        bail!("{command:?} did not finish within {limit:?}");
    }
    let exit = std::process::ExitStatus::from_raw(status);
    let mut err = String::new();
    if let Some(mut e) = child.stderr {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut err);
    }
    if !exit.success() {
        bail!("{command:?} failed ({exit}): {}", err.trim());
    }
    // AIRLOCK_BENCH_VERBOSE=1 (with e.g. AIRLOCK_LOG=airlock=debug): show what the
    // CLI logged, for a breakdown of where its time goes.
    if std::env::var_os("AIRLOCK_BENCH_VERBOSE").is_some() {
        progress(format!("{:.0} ms: {}", seconds * 1000.0, err.trim()));
    }
    Ok(seconds)
}

/// Whether process `pid` (our child, not yet reaped) exits within `limit`.
fn exits_within(pid: libc::pid_t, limit: Duration) -> Result<bool> {
    // SAFETY: pidfd_open takes plain integers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        bail!("pidfd_open: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh descriptor we now own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let mut poll = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut poll, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if rc > 0 {
            return Ok(true);
        }
        if rc == 0 {
            return Ok(false);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            bail!("poll: {error}");
        }
    }
}

/// The control-plane figures for one policy size. Each [`CliRun`] is the run of
/// median time among [`RUNS`] (with the peak memory of them all); the `_seconds`
/// fields hold every run's time.
#[derive(Clone, Debug, Default)]
pub struct ControlRow {
    pub label: String,
    pub prefixes: usize,
    /// `airlock validate`: parse and check only.
    pub validate: CliRun,
    pub validate_seconds: Vec<f64>,
    /// First `airlock apply` (no filter on the interface): load, fill, attach, pin.
    pub first: CliRun,
    pub first_seconds: Vec<f64>,
    /// `apply` with 1% of the prefixes changed right after a first apply (into the
    /// empty second copy).
    pub change_1: CliRun,
    pub change_1_seconds: Vec<f64>,
    /// The same again, into a copy that holds the policy before last (steady state).
    pub change_2: CliRun,
    pub steady_seconds: Vec<f64>,
    /// Bytes the kernel charges for the filter's maps.
    pub map_bytes: u64,
    /// Trie entries the policy compiled to (v4, v6), from `status -o json`.
    pub entries: Option<(u64, u64)>,
}

/// The run of median time (its memory the peak of all), and every run's time.
fn median_run(mut runs: Vec<CliRun>) -> (CliRun, Vec<f64>) {
    let seconds = runs.iter().map(|r| r.seconds).collect();
    let peak = runs.iter().map(|r| r.max_rss_kib).max().unwrap_or(0);
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let mut median = runs.get(runs.len() / 2).copied().unwrap_or_default();
    median.max_rss_kib = peak;
    (median, seconds)
}

/// Runs the CLI on `workload` against `iface` in `ns`: [`RUNS`] validations,
/// [`RUNS`] times a first apply (after `remove --all`) followed by a 1% change,
/// then [`RUNS`] steady-state 1% changes.
pub fn measure(
    ns: &Namespace,
    iface: &str,
    workload: &Workload,
    dir: &Path,
    limit: Duration,
) -> Result<ControlRow> {
    let bpffs = PrivateBpffs::new();
    let list = dir.join(format!("bulk-{}.txt", workload.prefixes));
    let policy = dir.join(format!("policy-{}.yaml", workload.prefixes));
    std::fs::write(
        &policy,
        workload.policy_yaml(iface, Path::new(list.file_name().context("name")?)),
    )?;
    let policy_arg = policy.to_str().context("utf-8 path")?;
    // The import cache as `airlock apply` keeps it, but empty at the row's first
    // apply and not left in the host's /var/cache/airlock afterwards.
    let import_cache = tempfile::tempdir()?;
    let env = [
        ("AIRLOCK_PIN_ROOT", bpffs.path().as_os_str()),
        ("AIRLOCK_CACHE_DIR", import_cache.path().as_os_str()),
        ("NO_COLOR", "1".as_ref()),
    ];
    let airlock = |args: &[&str]| {
        let mut command = ns.command(airlock_bin());
        command.args(args).envs(env);
        command
    };
    let measured = |args: &[&str]| run_measured(ns, &env, args, limit);
    // Each change replaces the same 1% of the lines with new prefixes, so every
    // re-apply differs from the policy before it by exactly that.
    let write_list = |bulk: &[ipnet::IpNet]| {
        let text: String = bulk.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(&list, text)
    };
    let mut row = ControlRow {
        label: super::policies::size_label(workload.prefixes - 11),
        prefixes: workload.prefixes,
        ..Default::default()
    };
    write_list(&workload.bulk)?;
    let mut validate = Vec::new();
    for _ in 0..RUNS {
        validate.push(measured(&["validate", "-f", policy_arg])?);
    }
    (row.validate, row.validate_seconds) = median_run(validate);
    let result = (|| -> Result<()> {
        let (mut first, mut change_1, mut steady) = (Vec::new(), Vec::new(), Vec::new());
        let mut seed = SEED + 1;
        for i in 0..RUNS {
            if i > 0 {
                let removed = airlock(&["remove", "--all"]).output()?;
                anyhow::ensure!(
                    removed.status.success(),
                    "airlock remove --all: {}",
                    String::from_utf8_lossy(&removed.stderr).trim()
                );
            }
            write_list(&workload.bulk)?;
            first.push(measured(&["apply", "-f", policy_arg])?);
            if i == 0 {
                row.map_bytes = map_bytes(&bpffs.path().join(iface));
                row.entries = entries(airlock(&["status", "-o", "json"]));
            }
            write_list(&mutate(&workload.bulk, 1, seed))?;
            seed += 1;
            change_1.push(measured(&["apply", "-f", policy_arg])?);
        }
        for _ in 0..RUNS {
            write_list(&mutate(&workload.bulk, 1, seed))?;
            seed += 1;
            steady.push(measured(&["apply", "-f", policy_arg])?);
        }
        (row.first, row.first_seconds) = median_run(first);
        (row.change_1, row.change_1_seconds) = median_run(change_1);
        (row.change_2, row.steady_seconds) = median_run(steady);
        Ok(())
    })();
    let _ = airlock(&["remove", "--all"]).output();
    result?;
    Ok(row)
}

/// Sum of `memlock` over the maps pinned in `dir` (the kernel's charge for each),
/// and over the inner maps of its arrays of maps (the source tables of a policy too
/// large for the preallocated ones, which are not pinned themselves).
pub fn map_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(out) = Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(&path)
            .output()
        else {
            progress("bpftool not found: map memory not measured");
            return 0;
        };
        if let Ok(info) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            total += info["bytes_memlock"].as_u64().unwrap_or(0);
            if info["type"] == "array_of_maps" {
                total += inner_map_bytes(&path);
            }
        }
    }
    total
}

/// `memlock` of the maps an array of maps (pinned at `path`) holds.
fn inner_map_bytes(path: &Path) -> u64 {
    let bpftool = |args: &[&str]| -> Option<serde_json::Value> {
        let out = Command::new("bpftool").args(args).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let Some(path) = path.to_str() else {
        return 0;
    };
    let Some(serde_json::Value::Array(slots)) = bpftool(&["-j", "map", "dump", "pinned", path])
    else {
        return 0;
    };
    slots
        .iter()
        .filter_map(|slot| {
            // The value is the inner map's id, as bytes ("0xdb", ...), little-endian.
            let bytes = slot["value"].as_array()?;
            let id = bytes.iter().rev().try_fold(0u32, |id, byte| {
                let byte = u32::from_str_radix(byte.as_str()?.trim_start_matches("0x"), 16).ok()?;
                Some((id << 8) | byte)
            })?;
            bpftool(&["-j", "map", "show", "id", &id.to_string()])?["bytes_memlock"].as_u64()
        })
        .sum()
}

fn entries(mut status: Command) -> Option<(u64, u64)> {
    let out = status.output().ok()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let find = |key: &str| -> Option<u64> { find_key(&json, key) };
    Some((find("prefixes_v4")?, find("prefixes_v6")?))
}

fn find_key(value: &serde_json::Value, key: &str) -> Option<u64> {
    match value {
        serde_json::Value::Object(map) => map
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .or_else(|| map.values().find_map(|v| find_key(v, key))),
        serde_json::Value::Array(items) => items.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// Resident memory of the agent at `workload`'s size, if this airlock has one:
/// started under `ip netns exec`, given `settle` to load the policy, then read
/// from /proc and stopped.
pub fn agent_rss(
    ns: &Namespace,
    iface: &str,
    workload: &Workload,
    dir: &Path,
    settle: Duration,
) -> Result<Option<u64>> {
    let help = Command::new(airlock_bin())
        .args(["agent", "--help"])
        .output()?;
    if !help.status.success() {
        return Ok(None);
    }
    let bpffs = PrivateBpffs::new();
    let list = dir.join("agent-bulk.txt");
    let policy = dir.join("agent-policy.yaml");
    std::fs::write(&list, workload.list_text())?;
    std::fs::write(
        &policy,
        workload.policy_yaml(iface, Path::new("agent-bulk.txt")),
    )?;
    let port = 19_000 + (std::process::id() % 1000) as u16;
    let mut command = ns.command(airlock_bin());
    // A long-running child would keep the bench's namespaces (see sandbox.rs)
    // alive after the bench itself was killed: it dies with the bench. This
    // thread (which forks it) lives until the agent is stopped below.
    // SAFETY: only prctl(2), async-signal-safe, runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .args(["agent", "-f"])
        .arg(&policy)
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("AIRLOCK_PIN_ROOT", bpffs.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    // Bounded wait for the policy to be in force, then read the RSS once more.
    let deadline = Instant::now() + settle;
    let mut rss = None;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        if child.try_wait()?.is_some() {
            break;
        }
        rss = vm_rss_kib(pid).or(rss);
    }
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let stop = Instant::now();
    while child.try_wait()?.is_none() && stop.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait()?.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = ns
        .command(airlock_bin())
        .args(["remove", "--all"])
        .env("AIRLOCK_PIN_ROOT", bpffs.path())
        .output();
    Ok(rss)
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
