//! How the XDP program is attached: never beside another XDP program (it would see
//! packets first, or after), native unless the driver has none, and the mode the
//! operator asks for with `--xdp-mode` / `xdp_mode`. Real devices in namespaces the
//! test creates; needs root.

use std::path::PathBuf;

use airlock_integration::{
    agent::{self, Agent},
    fixture::Fixture,
    netns::{Namespace, addr, wait_until},
};
use aya::programs::{Xdp, XdpMode};

fn policy(f: &Fixture, iface: &str, extra: &str) -> PathBuf {
    f.write(
        "p.yaml",
        &format!(
            "version: 1\ninterfaces: [{iface}]\n{extra}sets:\n  office: [198.51.100.0/24, \"2001:db8:100::/48\"]\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [office]\n"
        ),
    )
}

/// Another tool's XDP program (the do-nothing `xdp_pass`), attached to `iface` in
/// `ns` in `mode` until the returned object is dropped.
fn attach_other_program(ns: &Namespace, iface: &str, mode: XdpMode) -> aya::Ebpf {
    let iface = iface.to_owned();
    ns.spawn(move || {
        let bytes =
            airlock_integration::floors::floor_object_bytes("xdp-pass").expect("xdp-pass object");
        let mut ebpf = aya::Ebpf::load(bytes).expect("loading xdp-pass");
        let program: &mut Xdp = ebpf
            .program_mut("xdp_pass")
            .expect("xdp_pass program")
            .try_into()
            .expect("an XDP program");
        program.load().expect("verifying xdp_pass");
        program.attach(&iface, mode).expect("attaching xdp_pass");
        ebpf
    })
    .join()
    .expect("attach thread")
}

/// The XDP programs the kernel reports on `iface` in `ns`.
fn xdp_on(ns: &Namespace, iface: &str) -> airlock::link_type::XdpPrograms {
    let iface = iface.to_owned();
    ns.spawn(move || {
        airlock::link_type::query(&iface)
            .expect("rtnetlink")
            .expect("interface exists")
            .xdp
    })
    .join()
    .expect("query thread")
}

#[test]
fn apply_refuses_an_interface_another_xdp_program_holds_and_leaves_that_program_alone() {
    let f = Fixture::new("xo");
    let iface = f.bed.server_if.clone();
    let p = policy(&f, &iface, "");
    let path = p.to_str().expect("utf-8");
    for (mode, flags) in [
        (XdpMode::Driver, &[][..]),
        (XdpMode::Skb, &[][..]),
        // An explicit generic mode does not get behind a native program either.
        (XdpMode::Driver, &["--xdp-mode", "generic"][..]),
    ] {
        let other = attach_other_program(&f.bed.server, &iface, mode);
        let before = xdp_on(&f.bed.server, &iface);
        let id = before.driver.max(before.generic);
        assert_ne!(id, 0, "xdp_pass is attached ({mode:?}): {before:?}");

        let mut args = vec!["apply", "-f", path];
        args.extend_from_slice(flags);
        let run = f.airlock(&args);
        assert_eq!(run.code, 1, "{mode:?} {flags:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!(
                "interface {iface} already has an XDP program: id {id} \"xdp_pass\""
            )),
            "the error names the program in the way: {}",
            run.stderr
        );
        // Nothing of ours was attached or pinned, and the other program is untouched.
        assert_eq!(xdp_on(&f.bed.server, &iface), before, "{mode:?}");
        let status = f.status_json();
        assert_eq!(status["interfaces"], serde_json::json!([]), "{status}");
        drop(other);
    }
    // With the other program gone, the same apply goes through.
    f.apply(&p);
    assert!(f.kept_out(addr::STRANGER_V4));
}

#[test]
fn explicit_generic_mode_is_used_and_a_later_explicit_native_is_refused() {
    let f = Fixture::new("xg");
    let iface = f.bed.server_if.clone();
    let p = policy(&f, &iface, "");
    let path = p.to_str().expect("utf-8");
    let run = f.airlock(&["apply", "-f", path, "--xdp-mode", "generic"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let xdp = xdp_on(&f.bed.server, &iface);
    assert!(xdp.generic != 0 && xdp.driver == 0, "{xdp:?}");
    let status = f.status_json();
    assert_eq!(status["interfaces"][0]["policy"]["attach_mode"], "skb");
    assert!(f.gets_in(addr::OFFICE_V4));
    assert!(f.kept_out(addr::STRANGER_V4));

    // A swap never re-attaches, so a mode the filter does not have is refused
    // (bad request: exit 2), and the policy in force stays.
    let run = f.airlock(&["apply", "-f", path, "--xdp-mode", "native"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("attached in generic mode, and native mode was asked for"),
        "{}",
        run.stderr
    );
    // auto accepts the mode in place.
    let run = f.airlock(&["apply", "-f", path]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(xdp_on(&f.bed.server, &iface), xdp);
    assert!(f.kept_out(addr::STRANGER_V4));
}

#[test]
fn native_mode_fails_where_the_driver_has_none_and_auto_falls_back_to_generic() {
    let f = Fixture::new("xn");
    // A bridge has no native XDP (no ndo_bpf); the kernel says EOPNOTSUPP.
    let bridge = airlock_integration::netns::unique_name("albr");
    f.bed.server.ip(&["link", "add", &bridge, "type", "bridge"]);
    f.bed.server.ip(&["link", "set", &bridge, "up"]);

    // The policy's own xdp_mode, then the flag.
    let p = policy(&f, &bridge, "xdp_mode: native\n");
    let run = f.airlock(&["apply", "-f", p.to_str().expect("utf-8")]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "native XDP on {bridge}: its driver does not support native XDP"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(xdp_on(&f.bed.server, &bridge), Default::default());
    assert_eq!(f.status_json()["interfaces"], serde_json::json!([]));

    let p = policy(&f, &bridge, "");
    let run = f.airlock(&["apply", "-f", p.to_str().expect("utf-8")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("no native XDP; attaching in generic (skb) mode"),
        "the fallback is said: {}",
        run.stderr
    );
    let xdp = xdp_on(&f.bed.server, &bridge);
    assert!(xdp.generic != 0 && xdp.driver == 0, "{xdp:?}");
    assert_eq!(
        f.status_json()["interfaces"][0]["policy"]["attach_mode"],
        "skb"
    );
}

/// A first install that fails in the kernel (native XDP on a bridge, which has
/// none) leaves no filter, and says so: not that "the policy in force stays in
/// force", when none is. Beside an interface that has a filter, it says which
/// keeps its policy and which has none. The agent's first reload says the same.
#[test]
fn a_failed_first_install_says_no_filter_is_in_place_not_that_a_policy_stays() {
    let f = Fixture::new("xf");
    let bridge = airlock_integration::netns::unique_name("albr");
    f.bed.server.ip(&["link", "add", &bridge, "type", "bridge"]);
    f.bed.server.ip(&["link", "set", &bridge, "up"]);
    let iface = f.bed.server_if.clone();

    let p = policy(&f, &bridge, "xdp_mode: native\n");
    let native = std::fs::read_to_string(&p).expect("policy");
    let run = f.airlock(&["apply", "-f", p.to_str().expect("utf-8")]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "nothing was applied; no filter is in place on {bridge}"
        )) && !run.stderr.contains("stays in force"),
        "{}",
        run.stderr
    );
    assert_eq!(f.status_json()["interfaces"], serde_json::json!([]));

    // One interface filtered, the other not: each said as it is.
    let p = policy(&f, &iface, "");
    f.apply(&p);
    let run = f.airlock(&[
        "apply",
        "-f",
        p.to_str().expect("utf-8"),
        "--xdp-mode",
        "native",
        "--iface",
        &iface,
        "--iface",
        &bridge,
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "nothing was applied; the policy in force on {iface} stays in force, no filter is in place on {bridge}"
        )),
        "{}",
        run.stderr
    );
    assert!(f.kept_out(addr::STRANGER_V4));
    assert_eq!(f.airlock(&["remove", "--all"]).code, 0);

    // The agent's first reload, nothing pinned.
    agent::write_policy(&f, &native);
    let agent = Agent::spawn(&f, &[], &agent::policy_path(&f), &[]);
    assert!(
        wait_until(agent::RELOAD * 5, || agent
            .log()
            .contains("policy rejected")),
        "{}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        log.contains(&format!("no filter is in place on {bridge}"))
            && !log.contains("stays in force"),
        "{log}"
    );
}
