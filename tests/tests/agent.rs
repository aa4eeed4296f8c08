//! The host agent, driven as an operator would: started in the server namespace the
//! test creates, fed policy edits of every kind, signalled, killed, and judged by real
//! traffic, its /metrics and its JSON log. Needs root; fails (never skips) without it.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    thread,
    time::Duration,
};

use airlock_integration::{
    agent::{
        Agent, RELOAD, UDP_PORT, metric, metrics, policy_path, policy_text, ready, rename_policy,
        state_dir, write_policy,
    },
    cli::{airlock_bin, airlock_in},
    fixture::{ALLOWED, Fixture, PORT, REFUSED},
    netns::{addr, wait_until},
};

#[test]
fn agent_enforces_and_follows_in_place_edits_renames_and_sighup() {
    let f = Fixture::new("ag");
    write_policy(&f, &policy_text(&f, "office"));
    let agent = Agent::start(&f, &[], &policy_path(&f), &[]);
    assert!(f.gets_in(addr::OFFICE_V4));
    assert!(f.kept_out(addr::STRANGER_V4));

    // Edited in place: the stranger's network joins the rule.
    write_policy(&f, &policy_text(&f, "office, 203.0.113.0/24"));
    assert!(
        wait_until(RELOAD, || f.gets_in(addr::STRANGER_V4)),
        "in-place edit not in force; log:\n{}",
        agent.log()
    );
    // Replaced by rename, as editors do: the stranger is out again.
    rename_policy(&f, &policy_text(&f, "office"));
    assert!(
        wait_until(RELOAD, || f.kept_out(addr::STRANGER_V4)),
        "renamed policy not in force; log:\n{}",
        agent.log()
    );
    assert!(f.gets_in(addr::OFFICE_V4));

    let before = metric(&f, "airlock_policy_reloads_total");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait_until(RELOAD, || metric(&f, "airlock_policy_reloads_total")
            > before),
        "SIGHUP did not reload"
    );
    for kind in ["unreadable", "value", "lockout", "apply"] {
        let series = format!("airlock_policy_reload_failures_total{{kind=\"{kind}\"}}");
        assert!(metrics(&f).contains(&series), "every kind starts at 0");
        assert_eq!(metric(&f, &series), 0.0);
    }
}

#[test]
fn invalid_policy_is_rejected_logged_counted_and_the_old_one_stays() {
    let f = Fixture::new("ai");
    write_policy(&f, &policy_text(&f, "office"));
    let agent = Agent::start(&f, &[], &policy_path(&f), &[]);
    rename_policy(&f, &policy_text(&f, "office, 203.0.113.7/24"));
    assert!(
        // A CIDR with host bits: a bad value.
        wait_until(RELOAD, || metric(
            &f,
            "airlock_policy_reload_failures_total{kind=\"value\"}"
        ) >= 1.0),
        "failure not counted; log:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        log.contains("policy.yaml:8:") && log.contains("203.0.113.0/24"),
        "the log carries the same precise error the CLI gives:\n{log}"
    );
    assert!(
        f.gets_in(addr::OFFICE_V4),
        "old policy still lets the office in"
    );
    assert!(
        f.kept_out(addr::STRANGER_V4),
        "and still keeps the stranger out"
    );
    assert!(ready(&f), "the old policy is still applied everywhere");
}

#[test]
fn configmap_symlink_swap_is_picked_up_when_started_like_the_daemonset() {
    // The kubelet's layout: policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>.
    let f = Fixture::new("acm");
    let root = f.dir.path().join("configmap");
    let version = |name: &str, text: &str| {
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("policy.yaml"), text).expect("write");
    };
    version("..2026_11_29_00_00_00.1", &policy_text(&f, "office"));
    std::os::unix::fs::symlink("..2026_11_29_00_00_00.1", root.join("..data")).expect("link");
    std::os::unix::fs::symlink("..data/policy.yaml", root.join("policy.yaml")).expect("link");
    let agent = Agent::start(&f, &[], &root.join("policy.yaml"), &[]);
    assert!(f.kept_out(addr::STRANGER_V4));

    version(
        "..2026_11_29_00_01_00.2",
        &policy_text(&f, "office, 203.0.113.0/24"),
    );
    std::os::unix::fs::symlink("..2026_11_29_00_01_00.2", root.join("..data_tmp")).expect("link");
    fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap ..data");
    fs::remove_dir_all(root.join("..2026_11_29_00_00_00.1")).expect("old version");
    assert!(
        wait_until(RELOAD, || f.gets_in(addr::STRANGER_V4)),
        "ConfigMap update not in force; log:\n{}",
        agent.log()
    );
}

#[test]
fn killed_agent_restarts_and_adopts_the_filter_with_no_wrong_verdict_in_between() {
    let f = Fixture::new("ak");
    write_policy(&f, &policy_text(&f, "office"));
    let agent = Agent::start(&f, &[], &policy_path(&f), &[]);

    let stop = AtomicBool::new(false);
    let wrong = AtomicUsize::new(0);
    let tries = AtomicUsize::new(0);
    thread::scope(|scope| {
        for (source, should_get_in) in [(addr::OFFICE_V4, true), (addr::STRANGER_V4, false)] {
            let (stop, wrong, tries, bed) = (&stop, &wrong, &tries, &f.bed);
            scope.spawn(move || {
                for _ in 0..1_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let timeout = if should_get_in { ALLOWED } else { REFUSED };
                    if bed.connects(source, PORT, timeout) != should_get_in {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    tries.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        thread::sleep(Duration::from_millis(500));
        // kill -9: no chance to clean up; the pinned filter must carry on alone.
        agent.stop(nix::sys::signal::Signal::SIGKILL);
        thread::sleep(Duration::from_millis(800));
        let restarted = Agent::start(&f, &[], &policy_path(&f), &[]);
        thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        assert!(restarted.log().contains("policy in force"));
    });
    let tries = tries.load(Ordering::Relaxed);
    assert!(tries >= 6, "only {tries} connections tried");
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "wrong verdicts among {tries} connections"
    );
}

#[test]
fn recreated_interface_gets_the_filter_back() {
    let f = Fixture::new("ar");
    write_policy(&f, &policy_text(&f, "office"));
    let agent = Agent::start(&f, &[], &policy_path(&f), &[]);
    // Delete the server's veth end (which deletes the pair) and make it anew.
    let iface = f.bed.server_if.clone();
    f.bed.server.ip(&["link", "del", &iface]);
    f.bed.recreate_link();
    agent.wait_for_repair(&f);
    assert!(wait_until(RELOAD, || ready(&f)));
    assert!(
        f.kept_out(addr::STRANGER_V4),
        "the filter is back on the new interface"
    );
    assert!(f.gets_in(addr::OFFICE_V4));
}

#[test]
fn a_detached_egress_program_is_put_back_without_pausing_the_filter() {
    let f = Fixture::new("ae");
    write_policy(&f, &policy_text(&f, "office"));
    let agent = Agent::start(&f, &[], &policy_path(&f), &[]);
    let dir = f.bed.bpffs.path().join(&f.bed.server_if);
    let xdp_link = || {
        airlock::loader::pinned_link_state(
            &dir.join(airlock::loader::LINK_PIN),
            airlock::loader::LinkKind::Xdp,
        )
        .expect("xdp link")
        .link_id
    };
    let xdp_link_before = xdp_link();
    fs::remove_file(dir.join(airlock::loader::EGRESS_LINK_PIN)).expect("unpin egress link");
    agent.wait_for_repair(&f);
    let status = f.status_json();
    assert_eq!(
        status["interfaces"][0]["return_traffic"]["egress"], "attached",
        "{status}"
    );
    // Only the egress link was replaced: the XDP link (and its filtering) never went.
    assert_eq!(xdp_link(), xdp_link_before);
    assert!(f.kept_out(addr::STRANGER_V4));
    assert!(f.gets_in(addr::OFFICE_V4));
}

#[test]
fn metrics_count_the_packets_sent_and_drops_are_sampled_in_the_json_log() {
    let f = Fixture::new("am");
    write_policy(&f, &policy_text(&f, "office"));
    let agent = Agent::start(&f, &[], &policy_path(&f), &[]);
    f.bed.send_udp(addr::STRANGER_V4, UDP_PORT, 20);
    f.bed.send_udp(addr::OFFICE_V4, UDP_PORT, 10);
    let iface = &f.bed.server_if;
    let refused = format!(
        "airlock_rule_packets_total{{interface=\"{iface}\",rule=\"dns\",verdict=\"refused\"}}"
    );
    let allowed = format!(
        "airlock_rule_packets_total{{interface=\"{iface}\",rule=\"dns\",verdict=\"allowed\"}}"
    );
    assert!(
        wait_until(RELOAD, || metric(&f, &refused) == 20.0
            && metric(&f, &allowed) == 10.0),
        "rule counters do not match the 20 refused and 10 allowed datagrams:\n{}",
        metrics(&f)
    );
    let dropped = format!(
        "airlock_packets_total{{interface=\"{iface}\",reason=\"rule_refused\",verdict=\"dropped\"}}"
    );
    assert!(metric(&f, &dropped) >= 20.0);
    assert!(
        wait_until(RELOAD, || agent
            .log()
            .lines()
            .filter(|l| l.contains("\"target\":\"airlock::drop\"")
                && l.contains("\"source\":\"203.0.113.10\"")
                && l.contains("\"dst_port\":5353")
                && l.contains("\"rule\":\"dns\""))
            .count()
            == 20),
        "every one of the 20 drops (under the rate limit) is a JSON log line:\n{}",
        agent.log()
    );
    assert_eq!(
        metric(
            &f,
            &format!("airlock_drop_samples_total{{interface=\"{iface}\",outcome=\"sent\"}}")
        ),
        20.0
    );
}

#[test]
fn a_second_agent_on_the_same_pin_root_refuses_to_start() {
    let f = Fixture::new("a2");
    write_policy(&f, &policy_text(&f, "office"));
    let _agent = Agent::start(&f, &[], &policy_path(&f), &[]);
    let output = f
        .bed
        .server
        .command(airlock_bin())
        .args(["agent", "-f"])
        .arg(policy_path(&f))
        .arg("--pin-root")
        .arg(f.bed.bpffs.path())
        .arg("--state-dir")
        .arg(state_dir(&f))
        .args(["--metrics-addr", "127.0.0.1:9478"])
        .output()
        .expect("second agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another airlock agent already manages"),
        "{stderr}"
    );
}

#[test]
fn watch_beside_the_agent_shows_every_drop_and_the_log_keeps_them_all() {
    let f = Fixture::new("aw");
    write_policy(&f, &policy_text(&f, "office"));
    let agent = Agent::start(&f, &[], &policy_path(&f), &[]);
    let watch_command = |state: &Path, seconds: &str| {
        let mut command = f.bed.server.command(airlock_bin());
        command
            .args(["watch", "--seconds", seconds, "--pin-root"])
            .arg(f.bed.bpffs.path())
            .arg("--state-dir")
            .arg(state);
        command
    };
    let out = f.dir.path().join("watch.out");
    let mut watch = watch_command(&state_dir(&f), "8")
        .stdout(fs::File::create(&out).expect("watch output"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("airlock watch");
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .log()
            .contains("a watch session reads the drop samples")),
        "watch did not connect to the agent; log:\n{}",
        agent.log()
    );
    f.bed.send_udp(addr::STRANGER_V4, UDP_PORT, 20);
    // Both see all 20 (under the rate limit): neither takes samples from the other.
    let drops = |text: &str| {
        text.lines()
            .filter(|l| l.contains("203.0.113.10") && l.contains("5353") && l.contains("dns"))
            .count()
    };
    assert!(
        wait_until(RELOAD, || drops(
            &fs::read_to_string(&out).unwrap_or_default()
        ) == 20),
        "watch shows every drop:\n{}",
        fs::read_to_string(&out).unwrap_or_default()
    );
    assert!(
        wait_until(RELOAD, || agent
            .log()
            .lines()
            .filter(|l| l.contains("\"target\":\"airlock::drop\""))
            .count()
            == 20),
        "the agent logs every drop too:\n{}",
        agent.log()
    );
    let _ = watch.kill();
    let output = watch.wait_with_output().expect("watch exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "reading the drop samples of the airlock agent (pid {})",
            agent.child.id()
        )),
        "{stderr}"
    );
    // Without an agent (another state directory; the agent killed, its socket
    // file left behind), watch reads the rings itself.
    let alone = |state: &Path| {
        let run = watch_command(state, "0").output().expect("airlock watch");
        assert!(run.status.success(), "{run:?}");
        String::from_utf8_lossy(&run.stderr).into_owned()
    };
    assert!(!alone(&f.dir.path().join("no-agent")).contains("agent"));
    drop(agent);
    let stderr = alone(&state_dir(&f));
    assert!(!stderr.contains("agent"), "{stderr}");
}

#[test]
fn sigterm_leaves_the_filter_enforcing_and_detach_on_exit_removes_it() {
    let f = Fixture::new("at");
    write_policy(&f, &policy_text(&f, "office"));
    let agent = Agent::start(&f, &[], &policy_path(&f), &[]);
    agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(
        f.kept_out(addr::STRANGER_V4),
        "fail-closed: still enforcing after SIGTERM"
    );
    let status = airlock_in(&f.bed.server, f.bed.bpffs.path(), &["status", "-o", "json"]);
    assert!(
        status.stdout.contains("\"attachment\": \"attached\""),
        "{}",
        status.stdout
    );

    let agent = Agent::start(&f, &[], &policy_path(&f), &["--detach-on-exit"]);
    agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(
        f.bed.connects(addr::STRANGER_V4, PORT, ALLOWED),
        "detached on exit"
    );
}

#[test]
fn agent_binary_is_the_one_under_test() {
    // The DaemonSet image and the systemd unit run this same binary: it must
    // know the agent command and its flags.
    let output = Command::new(airlock_bin())
        .args(["agent", "--help"])
        .output()
        .expect("airlock agent --help");
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--file",
        "--pin-root",
        "--metrics-addr",
        "--detach-on-exit",
        "--state-dir",
        "--log-format",
    ] {
        assert!(help.contains(flag), "agent --help lacks {flag}:\n{help}");
    }
}

/// The capabilities deploy/systemd/airlock.service grants, as setpriv spells them.
fn unit_capabilities() -> Vec<String> {
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/airlock.service"
    ))
    .expect("systemd unit");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet in the unit");
    line.split_whitespace()
        .map(|cap| cap.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// `setpriv` arguments that leave a process only the unit's capabilities.
fn unit_capabilities_setpriv() -> Vec<String> {
    let caps = unit_capabilities();
    assert_eq!(
        caps,
        ["bpf", "net_admin", "perfmon"],
        "the unit's capability set changed: update this test and the docs"
    );
    let bounding = format!(
        "--bounding-set=-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    ["setpriv", "--no-new-privs", "--inh-caps=-all", &bounding]
        .map(str::to_owned)
        .to_vec()
}

#[test]
fn agent_works_with_only_the_capabilities_the_systemd_unit_grants() {
    let caps = unit_capabilities();
    let f = Fixture::new("acap");
    write_policy(&f, &policy_text(&f, "office"));
    let setpriv = unit_capabilities_setpriv();
    let wrapper: Vec<&str> = setpriv.iter().map(String::as_str).collect();
    let agent = Agent::start(&f, &wrapper, &policy_path(&f), &[]);
    assert!(
        f.kept_out(addr::STRANGER_V4),
        "enforcing with only {caps:?}"
    );
    assert!(f.gets_in(addr::OFFICE_V4));
    rename_policy(&f, &policy_text(&f, "office, 203.0.113.0/24"));
    assert!(
        wait_until(RELOAD, || f.gets_in(addr::STRANGER_V4)),
        "reloading with only {caps:?}; log:\n{}",
        agent.log()
    );
}

/// A policy too large for the preallocated tables keeps its source tables in chunk
/// maps, which a re-apply rewrites in place when it may open them by id (that takes
/// CAP_SYS_ADMIN, which the unit does not grant). With the unit's capabilities only,
/// reload after reload (each copy written twice, then the chunks released for a
/// small policy and made again) keeps enforcing the policy of the moment.
#[test]
fn agent_reloads_a_policy_in_chunk_maps_with_only_the_units_capabilities() {
    let f = Fixture::new("achk");
    // 600,000 hosts (outside the test bed's addresses; a few repeat or touch),
    // about 290 a directory slot, make runs of 1,025 elements in 2,048 slots: more
    // than the preallocated IPv4 values hold (2^21 elements, directory included).
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut hosts = String::new();
    for _ in 0..600_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let host = 0x0a00_0000 | (state as u32 & 0x00ff_ffff);
        hosts.push_str(&std::net::Ipv4Addr::from(host).to_string());
        hosts.push('\n');
    }
    fs::write(f.dir.path().join("bulk.txt"), hosts).expect("write list");
    let with_bulk = |from: &str| {
        policy_text(&f, from).replace("sets:\n", "sets:\n  bulk:\n    file: bulk.txt\n")
    };
    write_policy(&f, &with_bulk("office, bulk"));
    let setpriv = unit_capabilities_setpriv();
    let wrapper: Vec<&str> = setpriv.iter().map(String::as_str).collect();
    let agent = Agent::start(&f, &wrapper, &policy_path(&f), &[]);
    assert!(f.gets_in(addr::OFFICE_V4), "log:\n{}", agent.log());
    assert!(f.kept_out(addr::STRANGER_V4));
    let chunked = |f: &Fixture| {
        f.status_json()["interfaces"][0]["source_tables"]["ipv4"]["placement"] == "chunks"
    };
    assert!(chunked(&f), "the test needs a table in chunks");
    // Stranger in, out, in (the third apply rewrites the first copy's chunks), then a
    // policy without the list (chunks released), then the list again.
    let steps = [
        (with_bulk("office, bulk, 203.0.113.0/24"), true),
        (with_bulk("office, bulk"), false),
        (with_bulk("office, bulk, 203.0.113.0/24"), true),
        (policy_text(&f, "office"), false),
        (with_bulk("office, bulk, 203.0.113.0/24"), true),
    ];
    for (step, (text, stranger_in)) in steps.iter().enumerate() {
        rename_policy(&f, text);
        assert!(
            wait_until(RELOAD * 3, || f.gets_in(addr::STRANGER_V4) == *stranger_in),
            "step {step}: the stranger should be {}; log:\n{}",
            if *stranger_in { "in" } else { "out" },
            agent.log()
        );
        assert!(
            f.gets_in(addr::OFFICE_V4),
            "step {step}: office must stay in"
        );
    }
    assert!(chunked(&f));
    assert!(
        !agent.log().contains("\"level\":\"ERROR\""),
        "no apply failed; log:\n{}",
        agent.log()
    );
}
