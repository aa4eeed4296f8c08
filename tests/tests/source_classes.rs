//! A policy whose sources fall into more distinct answers (classes) than a
//! generation's class table holds is refused by `validate`, by `apply --dry-run`
//! and by `apply` alike, with the same message, and changes nothing: through the
//! real binary in a test bed. Needs root; fails (never skips) without it.

use std::{fmt::Write as _, net::Ipv6Addr, path::Path};

use airlock_integration::{
    fixture::{Fixture, PORT},
    netns::addr,
};

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Sixteen imported lists over 2001:db8::/32's next 16 bits: list `j` holds the
/// addresses whose bit `j` (from the top) is set, as the `2^j` prefixes /`33 + j`
/// that say so. A rule per list: every non-empty combination of the 16 rules is
/// some source's answer, 2^16 IPv6 classes, twice what fits.
fn every_combination(f: &Fixture) -> std::path::PathBuf {
    let mut policy = format!(
        "version: 1\ninterfaces: [{}]\nmode: enforce\ndefault: drop\nsets:\n  office: [198.51.100.0/24]\n",
        f.bed.server_if
    );
    for j in 0..16u32 {
        let len = 33 + j;
        let mut list = String::new();
        for above in 0..1u128 << j {
            let net = Ipv6Addr::from((0x2001_0db8u128 << 96) | (((above << 1) | 1) << (128 - len)));
            let _ = writeln!(list, "{net}/{len}");
        }
        f.write(&format!("b{j}.txt"), &list);
        let _ = writeln!(policy, "  b{j}: {{file: b{j}.txt}}");
    }
    policy.push_str(&format!(
        "rules:\n  - {{name: db, ports: [{PORT}/tcp], from: [office]}}\n"
    ));
    for j in 0..16 {
        let _ = writeln!(policy, "  - {{name: r{j}, ports: [22/tcp], from: [b{j}]}}");
    }
    f.write("classes.yaml", &policy)
}

#[test]
fn too_many_source_classes_are_refused_by_validate_dry_run_and_apply() {
    let f = Fixture::new("sc");
    let office = f.write(
        "office.yaml",
        &format!(
            "version: 1\ninterfaces: [{}]\nmode: enforce\ndefault: drop\nrules:\n  - {{name: db, ports: [{PORT}/tcp], from: [198.51.100.0/24]}}\n",
            f.bed.server_if
        ),
    );
    f.apply(&office);
    let before = f.status_json();
    let big = every_combination(&f);

    let message = "the policy's IPv6 sources fall into 65536 distinct combinations of rules \
                   and management/deny sets, more than the 32768 the datapath holds";
    for args in [
        &["validate", "-f", s(&big)][..],
        &["apply", "-f", s(&big), "--dry-run"],
        &["apply", "-f", s(&big)],
    ] {
        let run = f.airlock(args);
        assert_eq!(
            run.code, 2,
            "{args:?} refuses the policy as invalid:\n{}\n{}",
            run.stdout, run.stderr
        );
        assert!(
            run.stderr.contains(message),
            "{args:?} says why:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("classes.yaml"),
            "{args:?} names the file:\n{}",
            run.stderr
        );
    }

    assert_eq!(f.status_json(), before, "nothing changed");
    assert!(
        f.gets_in(addr::OFFICE_V4),
        "the policy in force still admits the office"
    );
    assert!(
        f.kept_out(addr::STRANGER_V4),
        "and still keeps the stranger out"
    );
}
