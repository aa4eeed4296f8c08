//! `airlock apply` SIGKILLed at each step of its work and after random delays
//! (issue 20, part 2): afterwards the filter in force is exactly the old policy or
//! the new one, `status` says which, and the next apply finishes the job. The soak
//! command runs the long version (`cargo xtask soak`).
//!
//! Needs root (BPF, network namespaces).

use airlock_integration::kills::{self, Bed, Report};

fn assert_clean(what: &str, report: &Report) {
    eprintln!("{what}: {report:?}");
    assert!(report.ok(), "{what}: {report:#?}");
}

#[test]
fn apply_killed_at_every_step_leaves_old_or_new_and_the_next_apply_repairs() {
    let bed = Bed::new("kst");
    let mut report = Report::default();
    kills::at_every_step(&bed, &mut report);
    assert_clean("every step", &report);
    assert_eq!(
        report.kills as usize,
        kills::INSTALL_STEPS.len() + kills::SWAP_STEPS.len()
    );
}

#[test]
fn commit_confirm_killed_in_its_window_or_rollback_still_rolls_back() {
    let bed = Bed::new("kcf");
    let mut report = Report::default();
    kills::during_confirm(&bed, &mut report);
    assert_clean("confirm", &report);
    assert_eq!(report.kills, 3);
}

#[test]
fn apply_killed_after_random_delays_leaves_old_or_new() {
    let bed = Bed::new("krn");
    let mut report = Report::default();
    kills::at_random(&bed, 30, 0x5eed_0020, &mut report);
    assert_clean("random kills", &report);
    assert!(
        report.kills >= 30,
        "too few applies were killed while running: {report:?}"
    );
}

#[test]
fn agent_killed_in_its_applies_and_reconcile_is_repaired_by_the_next_one() {
    let bed = Bed::new("kag");
    let mut report = Report::default();
    kills::agent_at_steps(&bed, &mut report);
    assert_clean("agent", &report);
    assert_eq!(report.kills, 6);
}
