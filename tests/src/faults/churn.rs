//! The interface the agent filters deleted and recreated over and over; each time
//! the agent's reconcile must put the policy back on the new device, and `status`
//! must say so.

use std::time::{Duration, Instant};

use crate::{
    kills::{self, Bed},
    swaps::{self, Which},
};

#[derive(Debug, Default)]
pub struct Report {
    pub cycles: u64,
    /// Cycles after which the agent did not put the policy back in time.
    pub unrepaired: u64,
    /// The longest time from the device's return to the policy in force on it.
    pub slowest_repair: Duration,
    pub examples: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.unrepaired == 0 && self.cycles > 0
    }
}

/// Deletes and recreates the veth pair `cycles` times under the agent.
pub fn interface_churn(bed: &Bed, cycles: u64) -> Report {
    let mut report = Report::default();
    let iface = bed.f.bed.server_if.clone();
    crate::agent::write_policy(&bed.f, &swaps::policy_text(Which::A, &iface));
    let mut agent = kills::spawn_agent(bed, None);
    let settled = |timeout| {
        crate::netns::wait_until(timeout, || {
            bed.in_force() == Ok(Some(Which::A)) && bed.status_says() == Ok(Some(Which::A))
        })
    };
    if !settled(Duration::from_secs(10)) {
        report.unrepaired += 1;
        report
            .examples
            .push("the agent never put the policy in force".into());
    }
    for cycle in 0..cycles {
        if !report.ok() && report.cycles > 0 {
            break;
        }
        bed.f.bed.server.ip(&["link", "del", &iface]);
        bed.f.bed.recreate_link();
        let back = Instant::now();
        report.cycles += 1;
        // The reconcile runs every second here.
        if settled(Duration::from_secs(10)) {
            report.slowest_repair = report.slowest_repair.max(back.elapsed());
        } else {
            report.unrepaired += 1;
            report.examples.push(format!(
                "cycle {cycle}: in force {:?}, status {:?}",
                bed.in_force(),
                bed.status_says()
            ));
        }
    }
    let _ = agent.kill();
    let _ = agent.wait();
    report
}
