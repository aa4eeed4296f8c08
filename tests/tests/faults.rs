//! Faults from outside (issue 20, part 4): the filtered interface deleted and
//! recreated under the agent, which must put the policy back each time. The soak
//! command runs 100 cycles.
//!
//! Needs root (BPF, network namespaces).

use airlock_integration::{faults, kills::Bed};

#[test]
fn the_agent_puts_the_policy_back_on_an_interface_deleted_and_recreated_again_and_again() {
    let bed = Bed::new("fch");
    let report = faults::interface_churn(&bed, 5);
    eprintln!("interface churn: {report:?}");
    assert!(report.ok(), "{report:#?}");
    assert_eq!(report.cycles, 5);
}
