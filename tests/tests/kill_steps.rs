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

/// `remove` takes the writer lock an apply holds: started while an apply is
/// stopped just before its flip (lock held, the inactive copy written), it waits,
/// and only after the apply finished removes the filter, whole: no filter, no
/// staging directory, nothing pinned.
#[test]
fn remove_waits_for_an_apply_that_holds_the_writer_lock() {
    use std::time::Duration;

    use airlock_integration::swaps::Which;
    use nix::{sys::signal, unistd::Pid};

    let bed = Bed::new("krm");
    bed.apply(Which::A, &[]).expect("first apply");
    let mut apply = bed.spawn(&["apply", "-f", bed.path(Which::B)], Some("before-flip"));
    let stopped = kills::wait_stopped(apply.id(), Duration::from_secs(20));
    let mut remove = bed.spawn(&["remove", "--all"], None);
    std::thread::sleep(Duration::from_millis(1500));
    let waited = matches!(remove.try_wait(), Ok(None));
    let in_force_meanwhile = bed.in_force();
    let _ = signal::kill(Pid::from_raw(apply.id() as i32), signal::Signal::SIGCONT);
    let applied = apply.wait().expect("apply");
    let removed = remove.wait().expect("remove");
    assert!(stopped, "the apply did not stop before its flip");
    assert!(
        waited,
        "remove finished while an apply held the writer lock: {removed}"
    );
    assert_eq!(
        in_force_meanwhile,
        Ok(Some(Which::A)),
        "while remove waited"
    );
    assert!(applied.success(), "apply: {applied}");
    assert!(removed.success(), "remove: {removed}");
    assert_eq!(bed.in_force(), Ok(None));
    assert!(bed.staging_left().is_empty(), "{:?}", bed.staging_left());
    assert_eq!(bed.f.status_json()["interfaces"], serde_json::json!([]));
}
