//! Faults from outside (issue 20, part 4), short versions of what `cargo xtask
//! soak --only faults` runs at length: the filtered interface deleted and
//! recreated under the agent; the pin root without bpffs, read-only, unmounted
//! under the agent, and the agent's state directory full; map creation refused by a
//! memory cgroup; the interface renamed and the default route moved under
//! `interfaces: [auto]`; the wall clock set back and forth in a confirm window;
//! the agent reloading valid and invalid policies in a row. Verdicts are checked
//! with real connections between the test namespaces throughout.
//!
//! Needs root (BPF, network namespaces, mounts, cgroups).

use airlock_integration::{
    faults::{self, Tally, bpffs, clock, ifaces, memory, reloads},
    fixture::Fixture,
    kills::Bed,
};

fn check(t: &Tally) {
    eprintln!("{}", t.summary());
    assert!(t.ok(), "{t:#?}");
}

#[test]
fn the_agent_puts_the_policy_back_on_an_interface_deleted_and_recreated_again_and_again() {
    let bed = Bed::new("fch");
    let report = faults::interface_churn(&bed, 5);
    eprintln!("interface churn: {report:?}");
    assert!(report.ok(), "{report:#?}");
    assert_eq!(report.cycles, 5);
}

#[test]
fn no_bpffs_a_read_only_or_unmounted_one_and_a_full_state_directory_end_in_an_error_or_a_repair() {
    let f = Fixture::new("fbf");
    check(&bpffs::all(&f));
}

#[test]
fn status_reads_a_filter_pinned_on_a_read_only_bpffs_or_bind_mount() {
    let f = Fixture::new("fro");
    let mut t = Tally::new("read-only status");
    bpffs::status_read_only(&f, &mut t);
    check(&t);
}

#[test]
fn map_creation_refused_by_a_memory_cgroup_fails_clearly_and_leaves_nothing_behind() {
    let f = Fixture::new("fmm");
    check(&memory::map_creation_refused(&f));
}

#[test]
fn a_renamed_interface_keeps_its_filter_and_the_agent_follows_the_default_route() {
    let f = Fixture::new("fif");
    check(&ifaces::all(&f));
}

#[test]
fn the_wall_clock_set_back_or_forward_moves_neither_the_rollback_nor_the_confirm_window() {
    let f = Fixture::new("fck");
    check(&clock::jumps(&f));
}

#[test]
fn reloads_in_a_row_valid_and_invalid_keep_memory_descriptors_and_metrics_straight() {
    let f = Fixture::new("frl");
    let (t, churn) = reloads::churn(&f, 40);
    eprintln!("{churn:?}");
    check(&t);
}
