//! Airlock loaded and configured as `airlock apply` installs it
//! (`install_staged` in userspace/src/loader/mod.rs), through the same library
//! calls: the embedded object and its maps (`LoadedFilter::load`, which
//! `load_object` and `PolicyMaps::take` as the install does), the egress program
//! verified beside the XDP program where the kernel has tcx, and drop sampling
//! switched on at `DEFAULT_SAMPLE_RATE` with `PolicyMaps::set_sample_rate` (which
//! also writes the kernel's HZ). Not attached or pinned: BPF_PROG_TEST_RUN needs
//! neither, and attaching changes nothing the program does per packet. The
//! policies run under `default: drop` (policies.rs), where the egress program's
//! flow table decides what no rule covers.

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use airlock::loader::{LoadedFilter, PolicyMaps, egress_supported};

/// How the filter under test was set up, for the report.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Drop samples per second per CPU.
    pub sample_rate: u32,
    /// The sampler's window, in jiffies (the kernel's HZ: one second).
    pub window_jiffies: u32,
    /// Whether the egress program was loaded (the kernel has tcx).
    pub egress: bool,
}

/// Loads Airlock's programs and configures their maps as `airlock apply` does.
pub fn load() -> Result<(LoadedFilter, Settings)> {
    let mut filter = LoadedFilter::load().context("loading Airlock's XDP program")?;
    let egress = egress_supported();
    if egress {
        filter
            .egress_program()
            .context("loading Airlock's egress program")?;
    }
    configure(&mut filter.maps)?;
    Ok((
        filter,
        Settings {
            sample_rate: airlock_common::DEFAULT_SAMPLE_RATE,
            window_jiffies: airlock::kernel_hz::kernel_hz(),
            egress,
        },
    ))
}

/// What `airlock apply` sets in a fresh filter's maps before its first policy.
pub fn configure(maps: &mut PolicyMaps) -> Result<()> {
    maps.set_sample_rate(airlock_common::DEFAULT_SAMPLE_RATE)
        .map_err(|e| anyhow::anyhow!("switching drop sampling on: {e}"))
}

impl Settings {
    /// The report's statement of what was measured.
    pub fn describe(&self) -> String {
        format!(
            "Airlock is measured as `airlock apply` installs it: the same loader calls, drop sampling on at {} samples per second per CPU (the default; a window of {} jiffies), policies under `default: drop` with the egress program {}. A refused packet is sampled only while its CPU's window has samples left, so a flood is held back after the first {} per second: each refused row runs {} frames {} times, and its sampler column gives the share of them that took that rate-limited path.",
            self.sample_rate,
            self.window_jiffies,
            if self.egress {
                "loaded (its flow table decides what no rule covers)"
            } else {
                "not loaded (this kernel has no tcx)"
            },
            self.sample_rate,
            super::per_packet::REPEAT,
            super::RUNS,
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "loaded_as": "airlock apply (LoadedFilter::load, egress program, PolicyMaps::set_sample_rate)",
            "sample_rate_per_cpu_per_second": self.sample_rate,
            "sample_window_jiffies": self.window_jiffies,
            "default": "drop",
            "egress_program": self.egress,
            "runs_per_row": super::RUNS,
            "frames_per_run": super::per_packet::REPEAT,
        })
    }
}
