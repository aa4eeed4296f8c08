//! The drop sampler's rate limit, in the real program: at most the configured
//! number of samples per CPU per second, the rest counted as rate-limited, and a
//! new window (timed in jiffies, at the kernel's HZ) a second later. Needs root.

use std::time::Duration;

use airlock_common::{SAMPLES_RATE_LIMITED, SAMPLES_SENT};
use airlock_integration::kernel::{Harness, XDP_DROP};
use airlock_integration::packet::FrameSpec;
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

const DROP_ALL: &str = "version: 1\ninterfaces: [eth0]\ndefault: drop\n";

fn samples(h: &Harness) -> (u64, u64) {
    let counters = h.filter.maps.counters().expect("reading counters");
    (
        counters.samples[SAMPLES_SENT as usize],
        counters.samples[SAMPLES_RATE_LIMITED as usize],
    )
}

#[test]
fn refused_packets_are_sampled_up_to_the_rate_per_second() {
    // One CPU: the limit is per CPU, and BPF_PROG_TEST_RUN runs where we run.
    let mut cpu = CpuSet::new();
    cpu.set(0).expect("CPU 0");
    sched_setaffinity(Pid::from_raw(0), &cpu).expect("pinning the test to CPU 0");
    let mut h = Harness::new();
    h.apply(DROP_ALL);
    h.filter.maps.set_sample_rate(5).expect("setting the rate");
    let refused = FrameSpec::tcp("198.51.100.20", 5432).build();
    // Waits for a fresh window: the first packet may land in one already half used
    // by an earlier test in this process.
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..40 {
        assert_eq!(h.run(&refused.bytes).action, XDP_DROP);
    }
    assert_eq!(samples(&h), (5, 35), "(sent, rate-limited) in one window");
    // A second later, a new window: five more. (With the window timed at the wrong
    // HZ, say 1000 jiffies at HZ=250, these would all be held back.)
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..10 {
        h.run(&refused.bytes);
    }
    assert_eq!(
        samples(&h),
        (10, 40),
        "(sent, rate-limited) after a second window"
    );
}
