//! `airlock-bench`: what Airlock costs per packet as its policy grows, how fast it
//! drops live traffic, how that compares with the kernel's floor and with peers
//! (xdp-filter, nftables), and how long a policy takes to load. Every figure is
//! also given as a ratio against a baseline measured in the same run, because
//! absolute times on shared machines move from run to run.
//!
//! Airlock is loaded and configured as `airlock apply` installs it (see
//! [`production`]), so the figures are those of what runs in production.
//! Everything runs in throwaway namespaces with its own bpffs, inside a private
//! mount namespace that takes them with it when the process ends however it ends
//! ([`sandbox`]), and every loop is bounded in time or count. `cargo xtask bench`
//! builds and runs it.

pub mod control;
pub mod egress;
pub mod live;
pub mod load;
pub mod peers;
pub mod per_packet;
pub mod policies;
pub mod production;
pub mod report;
pub mod sandbox;
pub mod sender;

use std::{fs::File, path::PathBuf, sync::OnceLock, time::Duration};

use nix::sched::{CloneFlags, CpuSet, sched_getaffinity, sched_setaffinity, setns};
use nix::unistd::Pid;

use crate::netns::Namespace;

/// Runs of every measurement; figures are min/median/max over these. Seven: a
/// median of three moved by a third when one run shared its CPU with a compiler.
pub const RUNS: usize = 7;

/// min / median / max of a few runs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Stats {
    /// Of a non-empty sample (an empty one gives all zeros).
    pub fn of(values: &[f64]) -> Self {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return Self::default();
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Self {
            min: sorted[0],
            median,
            max: sorted[n - 1],
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "min": self.min, "median": self.median, "max": self.max })
    }
}

/// Runs `f` on a thread that has entered `ns`'s network namespace (scoped, so `f`
/// may borrow): interface indices, XDP attachment and BPF_PROG_TEST_RUN's
/// `ingress_ifindex` are all resolved in the calling thread's namespace.
pub fn in_namespace<T: Send>(ns: &Namespace, f: impl FnOnce() -> T + Send) -> T {
    let path = PathBuf::from("/var/run/netns").join(ns.name());
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into bench namespace");
                f()
            })
            .join()
            .expect("namespace thread panicked")
    })
}

/// The CPUs this process was allowed to run on when the bench started, in order.
/// Read once, before any pinning: the calling thread's own mask (what
/// `available_parallelism` counts) is a single CPU while it is pinned, and a count
/// or an "unpin" taken from it then would keep it, and every process it starts (the
/// CLI runs of the control-plane bench), on that one CPU.
fn allowed_cpus() -> &'static [usize] {
    static ALLOWED: OnceLock<Vec<usize>> = OnceLock::new();
    ALLOWED.get_or_init(|| {
        let set = sched_getaffinity(Pid::from_raw(0)).unwrap_or_else(|_| CpuSet::new());
        let cpus: Vec<usize> = (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect();
        if cpus.is_empty() { vec![0] } else { cpus }
    })
}

/// Records the CPUs the process may use; call first thing, before any thread pins
/// itself (later calls are no-ops).
pub fn remember_cpus() {
    allowed_cpus();
}

/// Pins the calling thread to the `index`th allowed CPU, the last one if there are
/// fewer (best effort: on a one-CPU machine it stays put).
pub fn pin_to_cpu(index: usize) {
    let cpus = allowed_cpus();
    let mut set = CpuSet::new();
    if set.set(cpus[index.min(cpus.len() - 1)]).is_ok() {
        let _ = sched_setaffinity(Pid::from_raw(0), &set);
    }
}

/// The `index`th allowed CPU, as [`pin_to_cpu`] picks it.
pub fn cpu_number(index: usize) -> usize {
    let cpus = allowed_cpus();
    cpus[index.min(cpus.len() - 1)]
}

/// Lets the calling thread run on every CPU it was allowed at the start again.
pub fn unpin() {
    let mut set = CpuSet::new();
    for &cpu in allowed_cpus() {
        let _ = set.set(cpu);
    }
    let _ = sched_setaffinity(Pid::from_raw(0), &set);
}

/// CPUs the bench may use (see [`allowed_cpus`]).
pub fn online_cpus() -> usize {
    allowed_cpus().len()
}

/// CPU time the calling thread has used: unlike wall time it stops while the
/// thread is preempted, and unlike BPF_PROG_TEST_RUN's own figure it is not
/// rounded to whole nanoseconds per run.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Prints a progress line to stderr (the report goes to files).
pub fn progress(message: impl AsRef<str>) {
    eprintln!("airlock-bench: {}", message.as_ref());
}
