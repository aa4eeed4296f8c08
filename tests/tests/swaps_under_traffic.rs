//! Policy swaps under traffic (issue 20, part 1): frames run through the pinned,
//! attached program from several threads while the CLI and then the agent swap
//! between two policies; every frame's verdict and counter must be those of the
//! policy in force before or after the swap it overlapped. The soak command runs
//! the long version (`cargo xtask soak`).
//!
//! Needs root (BPF, network namespaces).

use airlock_integration::{fixture::Fixture, swaps};

#[test]
fn every_frame_is_judged_by_one_whole_policy_across_swaps_by_the_cli_and_the_agent() {
    let f = Fixture::new("swp");
    // 500 here (about a minute on a busy 2-core machine; the agent's reloads wait
    // out a 150 ms debounce each); the soak command runs 2,000.
    let report = swaps::run(&f, 400, 100);
    assert_eq!(report.swaps, 500);
    assert!(
        report.packets > 10_000,
        "too few frames checked to mean anything: {report:?}"
    );
    assert!(
        report.overlapping > 0,
        "no frame ran while a flip happened: the test proved nothing: {report:?}"
    );
    assert!(report.ok(), "{report:#?}");
}
