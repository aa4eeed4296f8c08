//! A filter pinned by one build taken over by a build with another map layout
//! (`--features layout-bump`, `$AIRLOCK_BIN_LAYOUT_BUMP`): without a packet
//! passing unfiltered or a wrong verdict while it happens, surviving a kill at
//! each step of it, and refusing (old filter left enforcing) where it must.
//! `cargo xtask soak --only upgrades` runs the long version.

use std::{os::unix::fs::MetadataExt as _, time::Duration};

use airlock_integration::{
    cli::airlock_bin,
    fixture::Fixture,
    kills::{kill_pid, wait_stopped},
    upgrades::{self, TAKEOVER_STEPS, airlock_as, bumped_bin, interface_verdicts_ok},
};

#[test]
fn a_takeover_by_another_layout_lets_nothing_through_unfiltered() {
    let f = Fixture::new("upg");
    let report = upgrades::run(&f, 4);
    println!("upgrades: {}", report.figures());
    assert!(report.ok(), "{report:#?}");
}

#[test]
fn a_new_agent_takes_over_the_filter_the_old_agent_left_pinned() {
    let f = Fixture::new("upa");
    let report = upgrades::agent_takeover(&f);
    println!("upgrades by the agent: {}", report.figures());
    assert!(report.ok() && report.takeovers == 1, "{report:#?}");
}

#[test]
fn a_takeover_killed_at_any_step_leaves_a_filter_enforcing_and_the_next_apply_finishes_it() {
    let f = Fixture::new("upk");
    let iface = f.bed.server_if.clone();
    let policy = f.write("upgrade.yaml", &upgrades::policy_text(&iface));
    let policy = policy.to_str().expect("utf-8");
    let (old, new) = (airlock_bin(), bumped_bin());
    for step in TAKEOVER_STEPS {
        let _ = airlock_as(&f, &old, &["remove", "--all"]);
        let run = airlock_as(&f, &old, &["apply", "-f", policy]);
        assert_eq!(run.code, 0, "{step}: first apply: {}", run.stderr);
        let mut child = upgrades::spawn_stopping(&f, &new, &["apply", "-f", policy], step);
        assert!(
            wait_stopped(child.id(), Duration::from_secs(60)),
            "the takeover never reached {step}"
        );
        kill_pid(child.id());
        let _ = child.wait();
        assert_eq!(
            interface_verdicts_ok(&f),
            Some(true),
            "killed at {step}: the interface must run a filter judging by the policy"
        );
        // Either build's next apply finishes or undoes it; the new one's takes over
        // whatever is left in force.
        let run = airlock_as(&f, &new, &["apply", "-f", policy]);
        assert_eq!(run.code, 0, "{step}: apply after the kill: {}", run.stderr);
        assert_eq!(
            interface_verdicts_ok(&f),
            Some(true),
            "{step}: after repair"
        );
        let left = upgrades::staging_left(f.bed.bpffs.path());
        assert!(left.is_empty(), "{step}: staging left: {left:?}");
        let status = airlock_as(&f, &new, &["status", "-o", "json"]);
        assert_eq!(status.code, 0, "{step}: status: {}", status.stderr);
        let json: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
        let entry = &json["interfaces"][0];
        assert_eq!(entry["attachment"], "attached", "{step}: {json:#}");
        assert_eq!(
            entry["policy"]["rules"][0]["name"], "db",
            "{step}: {json:#}"
        );
    }
}

#[test]
fn a_takeover_on_probation_is_refused_and_the_old_filter_stays() {
    let f = Fixture::new("upr");
    let iface = f.bed.server_if.clone();
    let policy = f.write("upgrade.yaml", &upgrades::policy_text(&iface));
    let policy = policy.to_str().expect("utf-8");
    let run = airlock_as(&f, &airlock_bin(), &["apply", "-f", policy]);
    assert_eq!(run.code, 0, "first apply: {}", run.stderr);
    let before = f.bed.bpffs.path().join(&iface).join("prog");
    let program = std::fs::metadata(&before).expect("program pin").ino();
    let run = airlock_as(
        &f,
        &bumped_bin(),
        &["apply", "-f", policy, "--confirm", "60s"],
    );
    assert_ne!(run.code, 0, "a takeover on probation must be refused");
    assert!(
        run.stderr.contains("map layout") && run.stderr.contains("stays in force"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::metadata(&before).expect("program pin").ino(),
        program,
        "the old filter must stay pinned in place"
    );
    assert_eq!(interface_verdicts_ok(&f), Some(true));
    assert!(upgrades::staging_left(f.bed.bpffs.path()).is_empty());
}
