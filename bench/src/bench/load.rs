//! How busy the machine was while the bench ran: /proc/loadavg read before, at
//! every policy and control-plane step, and after. A run during which the one-minute
//! load average went above the machine's core count shared its CPUs with other
//! work, and its figures (the absolute ones most) say so in the report.

use serde_json::{Value, json};

/// One reading of /proc/loadavg.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
    /// The line as the kernel wrote it (with runnable/total tasks).
    pub text: String,
}

impl LoadAverage {
    pub fn read() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/loadavg").ok()?;
        let mut fields = text.split_whitespace().map(str::parse::<f64>);
        Some(Self {
            one: fields.next()?.ok()?,
            five: fields.next()?.ok()?,
            fifteen: fields.next()?.ok()?,
            text: text.trim().to_owned(),
        })
    }

    fn json(&self) -> Value {
        json!({ "1min": self.one, "5min": self.five, "15min": self.fifteen, "proc_loadavg": self.text })
    }
}

/// Online CPUs of the machine (not only those the bench may use): what the load
/// average is measured against.
pub fn machine_cores() -> usize {
    // SAFETY: sysconf takes a plain integer.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// The readings of one run.
#[derive(Clone, Debug, Default)]
pub struct LoadLog {
    /// (what the bench was about to do, the reading), in order.
    pub readings: Vec<(String, LoadAverage)>,
}

impl LoadLog {
    /// Reads /proc/loadavg now, labelled with the step about to run.
    pub fn sample(&mut self, step: impl Into<String>) {
        if let Some(load) = LoadAverage::read() {
            self.readings.push((step.into(), load));
        }
    }

    pub fn before(&self) -> Option<&LoadAverage> {
        self.readings.first().map(|(_, l)| l)
    }

    pub fn after(&self) -> Option<&LoadAverage> {
        self.readings.last().map(|(_, l)| l)
    }

    /// The highest one-minute figure read.
    pub fn peak(&self) -> f64 {
        self.readings.iter().map(|(_, l)| l.one).fold(0.0, f64::max)
    }

    /// Busy: the one-minute load average was above the core count at some reading.
    pub fn busy(&self) -> bool {
        self.peak() > machine_cores() as f64
    }

    /// One line for the report's header.
    pub fn summary(&self) -> String {
        let show = |l: Option<&LoadAverage>| {
            l.map_or("?".to_owned(), |l| {
                format!("{:.2} {:.2} {:.2}", l.one, l.five, l.fifteen)
            })
        };
        format!(
            "load average before {}, after {}, highest one-minute figure {:.2} ({} cores)",
            show(self.before()),
            show(self.after()),
            self.peak(),
            machine_cores()
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "cores": machine_cores(),
            "busy": self.busy(),
            "before": self.before().map(LoadAverage::json),
            "after": self.after().map(LoadAverage::json),
            "peak_1min": self.peak(),
            "readings": self.readings.iter().map(|(step, l)| json!({ "step": step, "load": l.json() })).collect::<Vec<_>>(),
        })
    }
}
