//! Network tests: the real `airlock` binary applied to a veth in a namespace the
//! test creates, judged by real TCP connections from the other namespace, over IPv4
//! and IPv6. Needs root; fails (never skips) without it.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use airlock_integration::{
    fixture::{ALLOWED, Fixture, PORT, REFUSED},
    netns::{addr, wait_until},
};

/// Writes a policy allowing `from` (set names or CIDRs) to PORT/tcp.
fn write_policy(f: &Fixture, file: &str, default: &str, mode: &str, from: &[&str]) -> PathBuf {
    let text = format!(
        "version: 1\ninterfaces: [{iface}]\nmode: {mode}\ndefault: {default}\nsets:\n  office: [198.51.100.0/24, \"2001:db8:100::/48\"]\n  partners: [192.0.2.0/24, \"2001:db8:1::/48\"]\nrules:\n  - name: db\n    ports: [{PORT}/tcp]\n    from: [{from}]\n",
        iface = f.bed.server_if,
        from = from.join(", "),
    );
    f.write(file, &text)
}

#[test]
fn applied_filter_enforces_over_ipv4_and_ipv6_after_the_cli_has_exited() {
    let f = Fixture::new("net");
    let policy = write_policy(&f, "p.yaml", "pass", "enforce", &["office"]);
    f.apply(&policy);
    // `airlock apply` has exited: whatever happens now is the pinned filter alone.
    assert!(f.gets_in(addr::OFFICE_V4), "office over IPv4 must get in");
    assert!(f.gets_in(addr::OFFICE_V6), "office over IPv6 must get in");
    assert!(
        f.kept_out(addr::STRANGER_V4),
        "stranger over IPv4 must be kept out"
    );
    assert!(
        f.kept_out(addr::STRANGER_V6),
        "stranger over IPv6 must be kept out"
    );
    assert!(
        f.kept_out(addr::PARTNER_V4),
        "partners are not in this rule"
    );

    let status = f.status_json();
    let iface = &status["interfaces"][0];
    assert_eq!(iface["iface"], f.bed.server_if.as_str());
    assert_eq!(iface["attachment"], "attached");
    assert_eq!(iface["rules"][0]["name"], "db");
    for family in ["ipv4", "ipv6"] {
        let table = &iface["source_tables"][family];
        assert_eq!(table["placement"], "preallocated", "{family}: {table}");
        assert!(
            table["directory_slots"].as_u64().unwrap_or(0) > 0
                && table["bytes"].as_u64().unwrap_or(0) > 0,
            "{family}: {table}"
        );
    }
    // The office's /24 is narrower than an IPv4 directory slot (a /13), so its
    // slot holds a run: the range before it, the office, the range after. (Its
    // IPv6 /48 needs none: that directory's window is cut to the table's own
    // boundaries, and they fall on slot edges.)
    let v4 = &iface["source_tables"]["ipv4"];
    assert!(v4["ranges"].as_u64().unwrap_or(0) >= 2, "ipv4: {v4}");
    // Two accepted connections: at least their SYN and final ACK each passed rule db.
    assert!(
        iface["rules"][0]["allowed"]["packets"]
            .as_u64()
            .unwrap_or(0)
            >= 4
    );
    // Three refused sources, one SYN each at least (retransmits may add more).
    assert!(
        iface["rules"][0]["refused"]["packets"]
            .as_u64()
            .unwrap_or(0)
            >= 3
    );
    assert!(
        iface["reasons"]["rule_refused"]["packets"]
            .as_u64()
            .unwrap_or(0)
            >= 3
    );
}

#[test]
fn default_drop_still_lets_allowed_peers_resolve_and_connect() {
    // ARP and neighbour discovery must pass under default: drop, or nothing works.
    let f = Fixture::new("dd");
    let policy = write_policy(&f, "p.yaml", "drop", "enforce", &["office"]);
    f.apply(&policy);
    assert!(f.gets_in(addr::OFFICE_V4));
    assert!(f.gets_in(addr::OFFICE_V6));
    assert!(f.kept_out(addr::STRANGER_V4));
    assert!(
        !f.bed.connects(addr::STRANGER_V4, 8080, REFUSED),
        "uncovered port under default: drop"
    );
}

#[test]
fn monitor_mode_counts_would_be_drops_and_passes_them() {
    let f = Fixture::new("mon");
    let policy = write_policy(&f, "p.yaml", "pass", "monitor", &["office"]);
    f.apply(&policy);
    assert!(f.gets_in(addr::STRANGER_V4), "monitor mode drops nothing");
    let status = f.status_json();
    let refused = status["interfaces"][0]["rules"][0]["refused"]["packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(refused >= 1, "the would-be drop is counted: {status}");
}

#[test]
fn reapply_under_continuous_traffic_never_gives_a_wrong_verdict() {
    let f = Fixture::new("swap");
    // Office is allowed by both policies, the stranger by neither; partners flip.
    let with_partners = write_policy(&f, "a.yaml", "pass", "enforce", &["office", "partners"]);
    let without_partners = write_policy(&f, "b.yaml", "pass", "enforce", &["office"]);
    f.apply(&with_partners);

    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicUsize::new(0));
    let tries = Arc::new(AtomicUsize::new(0));
    let bed = Arc::new(&f.bed);
    thread::scope(|scope| {
        for (source, should_get_in) in [
            (addr::OFFICE_V4, true),
            (addr::OFFICE_V6, true),
            (addr::STRANGER_V4, false),
            (addr::STRANGER_V6, false),
        ] {
            let (stop, wrong, tries, bed) = (&stop, &wrong, &tries, Arc::clone(&bed));
            scope.spawn(move || {
                // Bounded: the applies below end the loop; the cap is a safety net.
                for _ in 0..2_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let timeout = if should_get_in { ALLOWED } else { REFUSED };
                    if bed.connects(source, PORT, timeout) != should_get_in {
                        wrong.fetch_add(1, Ordering::Relaxed);
                        eprintln!("wrong verdict for {source} during re-apply");
                    }
                    tries.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        for round in 0..10 {
            let (policy, partners_in) = if round % 2 == 0 {
                (&without_partners, false)
            } else {
                (&with_partners, true)
            };
            f.apply(policy);
            // The new verdict is in force as soon as apply returns.
            assert_eq!(
                f.bed.connects(
                    addr::PARTNER_V4,
                    PORT,
                    if partners_in { ALLOWED } else { REFUSED }
                ),
                partners_in,
                "round {round}: partner verdict must follow the policy just applied"
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
    let tries = tries.load(Ordering::Relaxed);
    assert!(
        tries >= 20,
        "only {tries} connections were tried during the re-applies"
    );
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "{tries} connections, some with a wrong verdict"
    );
    let status = f.status_json();
    assert_eq!(status["interfaces"][0]["policy"]["serial"], 11);
    assert_eq!(
        status["interfaces"][0]["attachment"], "attached",
        "re-apply never detaches"
    );
}

#[test]
fn invalid_reapply_is_refused_and_the_policy_in_force_stays() {
    let f = Fixture::new("inv");
    let good = write_policy(&f, "good.yaml", "pass", "enforce", &["office"]);
    f.apply(&good);
    let bad = f.write(
        "bad.yaml",
        &format!(
            "version: 1\ninterfaces: [{}]\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [198.51.100.7/24]\n",
            f.bed.server_if
        ),
    );
    let run = f.airlock(&["apply", "-f", bad.to_str().expect("utf-8")]);
    assert_eq!(run.code, 2, "an invalid policy exits 2: {}", run.stderr);
    assert!(
        run.stderr.contains("bad.yaml:6:"),
        "names file and line: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("rules[0].from[0]"),
        "names the field: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("198.51.100.0/24"),
        "suggests the fix: {}",
        run.stderr
    );

    assert_eq!(
        f.status_json()["interfaces"][0]["policy"]["serial"],
        1,
        "nothing was applied"
    );
    assert!(
        f.gets_in(addr::OFFICE_V4),
        "the old policy still lets the office in"
    );
    assert!(
        f.kept_out(addr::STRANGER_V4),
        "and still keeps the stranger out"
    );
}

#[test]
fn remove_restores_full_connectivity_and_unpins_everything() {
    let f = Fixture::new("rm");
    let policy = write_policy(&f, "p.yaml", "drop", "enforce", &["office"]);
    f.apply(&policy);
    assert!(f.kept_out(addr::STRANGER_V4));
    let run = f.airlock(&["remove", "--iface", &f.bed.server_if]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        f.bed.connects(addr::STRANGER_V4, PORT, ALLOWED),
        "IPv4 open again"
    );
    assert!(
        f.bed.connects(addr::STRANGER_V6, PORT, ALLOWED),
        "IPv6 open again"
    );
    // A bpffs root holds the kernel's own `maps.debug` and `progs.debug`; a dot can
    // never be in a name Airlock pins. The writer lock `%lock` stays, empty:
    // removed, two writers could each lock a directory of that name.
    let lock = f.bed.bpffs.path().join("%lock");
    assert!(
        std::fs::read_dir(&lock).is_ok_and(|mut d| d.next().is_none()),
        "the writer lock is an empty directory"
    );
    let left: Vec<_> = std::fs::read_dir(f.bed.bpffs.path())
        .expect("pin root")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|name| !name.to_string_lossy().contains('.') && *name != "%lock")
        .collect();
    assert!(left.is_empty(), "pins left behind: {left:?}");
    assert_eq!(
        f.status_json()["interfaces"].as_array().map(Vec::len),
        Some(0)
    );
    let again = f.airlock(&["remove", "--iface", &f.bed.server_if]);
    assert_eq!(
        again.code, 1,
        "removing what is not there is a runtime error"
    );
}

/// `remove` detaches the programs, not just their pins: unpinning alone leaves a
/// link attached for as long as anything else holds it open (here the test, as
/// bpftool or a monitoring tool might), and otherwise until the kernel gets round
/// to freeing the pin (an RCU callback, which lazy-RCU kernels delay by seconds).
#[test]
fn remove_has_detached_both_programs_when_it_returns() {
    use airlock::loader::{EGRESS_LINK_PIN, LINK_PIN, LinkKind, link_state, pinned_link_state};
    use aya::programs::links::PinnedLink;
    let f = Fixture::new("rmd");
    let policy = write_policy(&f, "p.yaml", "drop", "enforce", &["office"]);
    let dir = f.bed.bpffs.path().join(&f.bed.server_if);
    for round in 0..5 {
        f.apply(&policy);
        let links = [
            (LINK_PIN, LinkKind::Xdp),
            (EGRESS_LINK_PIN, LinkKind::TcxEgress),
        ]
        .map(|(pin, kind)| {
            let state = pinned_link_state(&dir.join(pin), kind).expect("pinned link");
            assert_ne!(state.ifindex, 0, "{pin} attached before remove");
            let held = PinnedLink::from_pin(dir.join(pin)).expect("open the link");
            (pin, kind, state.link_id, held)
        });
        let run = f.airlock(&["remove", "--iface", &f.bed.server_if]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        for (pin, kind, id, _held) in links {
            let state = link_state(id, kind).expect("link by id");
            assert!(
                state.is_none_or(|s| s.ifindex == 0),
                "round {round}: the {pin} link is still attached when remove returns: {state:?}"
            );
        }
        assert!(
            f.gets_in(addr::STRANGER_V4),
            "round {round}: nothing filters"
        );
    }
}

/// `--iface` globs match the interfaces of the namespace airlock runs in, also when
/// it joined that namespace with `setns` (as `nsenter --net` does) and /sys is still
/// the host's, which lists the host's interfaces.
#[test]
fn interface_globs_match_the_namespace_airlock_entered() {
    let f = Fixture::new("glb");
    let policy = write_policy(&f, "p.yaml", "drop", "enforce", &["office"]);
    let output = f
        .bed
        .server
        .entered_command(airlock_integration::cli::airlock_bin())
        .args([
            "apply",
            "-f",
            policy.to_str().expect("utf-8"),
            "--iface",
            "alsrv*",
        ])
        .env("AIRLOCK_PIN_ROOT", f.bed.bpffs.path())
        .env("NO_COLOR", "1")
        .env_remove("SSH_CONNECTION")
        .output()
        .expect("running airlock");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&f.bed.server_if), "{stdout}");
    assert!(f.gets_in(addr::OFFICE_V4));
    assert!(f.kept_out(addr::STRANGER_V4));
}

/// The pin root may be a bpffs other tools use too (tc keeps `tc/globals` in the
/// one it is given): `status` lists only Airlock's filters, and `remove --all`
/// removes them and leaves the other tool's pins alone.
#[test]
fn remove_all_leaves_other_tools_pins_alone() {
    use aya::maps::{Array, IterableMap as _, MapData};
    let f = Fixture::new("fgn");
    let foreign = f.bed.bpffs.path().join("tc").join("globals");
    std::fs::create_dir_all(&foreign).expect("another tool's directory");
    let map = Array::<MapData, u32>::create(1, 0).expect("a map of another tool");
    map.map()
        .pin(foreign.join("their_map"))
        .expect("pinned beside Airlock's");
    let policy = write_policy(&f, "p.yaml", "drop", "enforce", &["office"]);
    f.apply(&policy);
    let status = f.status_json();
    let listed: Vec<&str> = status["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["iface"].as_str())
        .collect();
    assert_eq!(listed, [f.bed.server_if.as_str()], "{status}");
    let run = f.airlock(&["remove", "--all"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(f.gets_in(addr::STRANGER_V4), "Airlock's filter is gone");
    assert!(
        foreign.join("their_map").exists(),
        "the other tool's pin is still there"
    );
}

/// The grace period after an apply's flip passes after `apply` has exited: its
/// `grace-record` helper waits it out and records it beside the flip (the
/// `ACTIVE_GEN` map's id and word), so the next apply rewrites the retired copy
/// without waiting. A record that does not name the flip in force is ignored, so
/// this checks the record the helper leaves names exactly that flip.
#[test]
fn apply_leaves_the_grace_period_after_its_flip_on_record() {
    use airlock_common::{MAP_ACTIVE_GEN, MAP_GRACE_DONE};
    use aya::maps::{Array, IterableMap as _, Map, MapData};

    fn array<V: aya::Pod>(dir: &std::path::Path, name: &str) -> Array<MapData, V> {
        let data = MapData::from_pin(dir.join(name)).expect("pinned map");
        Array::try_from(Map::from_map_data(data).expect("map")).expect("an array")
    }
    let f = Fixture::new("grace");
    let dir = f.bed.bpffs.path().join(&f.bed.server_if);
    let mut flipped_words = Vec::new();
    for (round, from) in [&["office"][..], &["office", "partners"]]
        .iter()
        .enumerate()
    {
        let policy = write_policy(&f, &format!("p{round}.yaml"), "pass", "enforce", from);
        f.apply(&policy);
        let active: Array<MapData, u32> = array(&dir, MAP_ACTIVE_GEN);
        let word = active.get(&0, 0).expect("ACTIVE_GEN");
        let id = active.map().info().expect("map info").id();
        assert!(
            word > 1,
            "round {round}: a flip writes a counted word, not 0/1"
        );
        flipped_words.push(word);
        let want = (u64::from(id) << 32) | u64::from(word);
        let done: Array<MapData, u64> = array(&dir, MAP_GRACE_DONE);
        let recorded = wait_until(Duration::from_secs(5), || {
            done.get(&0, 0).is_ok_and(|record| record == want)
        });
        let found = done.get(&0, 0).ok();
        if membarrier_waits() {
            assert!(
                recorded,
                "round {round}: no grace period recorded for flip {word:#x} of map {id} (found {found:x?})"
            );
        } else {
            // One CPU, nohz_full or a seccomp filter: nothing waits, so nothing may
            // be recorded, and every apply waits for itself instead.
            assert!(
                !recorded,
                "round {round}: a grace period recorded where membarrier does not wait"
            );
        }
    }
    assert_ne!(
        flipped_words[0], flipped_words[1],
        "each flip writes a new word"
    );
    if membarrier_waits() {
        // With the record in place, the next apply rewrites the retired copy at
        // once, and the policy it applies is in force when it returns.
        let back = write_policy(&f, "p2.yaml", "pass", "enforce", &["office"]);
        let run = f.airlock(&["-v", "apply", "-f", back.to_str().expect("utf-8")]);
        assert_eq!(run.code, 0, "apply failed: {}", run.stderr);
        assert!(
            run.stderr
                .contains("grace period since the last flip is on record"),
            "the apply waited although the grace period was on record:\n{}",
            run.stderr
        );
        assert!(f.kept_out(addr::PARTNER_V4), "partners are out again");
        assert!(f.gets_in(addr::OFFICE_V4));
    }
}

/// `apply` starts its `grace-record` helper as it begins, and gives it the go
/// only after its flips. An apply refused before it flips leaves no helper
/// behind (it reads the end of its stdin and exits) and no record of a flip
/// that did not happen: the record still names the flip in force.
#[test]
fn a_refused_apply_leaves_no_grace_record_helper_and_no_record() {
    use airlock_common::{MAP_ACTIVE_GEN, MAP_GRACE_DONE};
    use aya::maps::{Array, IterableMap as _, Map, MapData};

    fn array<V: aya::Pod>(dir: &std::path::Path, name: &str) -> Array<MapData, V> {
        let data = MapData::from_pin(dir.join(name)).expect("pinned map");
        Array::try_from(Map::from_map_data(data).expect("map")).expect("an array")
    }
    /// Processes running `grace-record` for this test's pin root.
    fn helpers(pin_root: &std::path::Path) -> usize {
        let root = pin_root.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
            .filter(|cmdline| {
                let args: Vec<String> = cmdline
                    .split(|&b| b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                args.iter().any(|a| a == "grace-record") && args.contains(&root)
            })
            .count()
    }
    let f = Fixture::new("gracerefused");
    let dir = f.bed.bpffs.path().join(&f.bed.server_if);
    let policy = write_policy(&f, "p.yaml", "pass", "enforce", &["office"]);
    f.apply(&policy);
    let active: Array<MapData, u32> = array(&dir, MAP_ACTIVE_GEN);
    let done: Array<MapData, u64> = array(&dir, MAP_GRACE_DONE);
    let word = active.get(&0, 0).expect("ACTIVE_GEN");
    let id = active.map().info().expect("map info").id();
    let want = (u64::from(id) << 32) | u64::from(word);
    if membarrier_waits() {
        assert!(
            wait_until(Duration::from_secs(5), || done
                .get(&0, 0)
                .is_ok_and(|record| record == want)),
            "the first apply's flip was never recorded"
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || helpers(f.bed.bpffs.path()) == 0),
        "the first apply's helper did not finish"
    );
    let bad = f.write("bad.yaml", "version: 1\nrules: [not a rule\n");
    let run = f.airlock(&["apply", "-f", bad.to_str().expect("utf-8")]);
    assert_eq!(run.code, 2, "a broken policy is refused: {}", run.stderr);
    assert!(
        wait_until(Duration::from_secs(5), || helpers(f.bed.bpffs.path()) == 0),
        "a grace-record helper outlived the refused apply"
    );
    assert_eq!(active.get(&0, 0).expect("ACTIVE_GEN"), word, "no flip");
    if membarrier_waits() {
        assert_eq!(done.get(&0, 0).ok(), Some(want), "the record is unchanged");
    }
    assert!(f.gets_in(addr::OFFICE_V4), "the policy in force stays");
    assert!(f.kept_out(addr::PARTNER_V4));
}

/// Whether `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for a grace period here, as
/// the loader decides it (more than one CPU online, and the command supported).
fn membarrier_waits() -> bool {
    const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: sysconf and membarrier take plain integers and touch no memory.
    let (online, supported) = unsafe {
        (
            libc::sysconf(libc::_SC_NPROCESSORS_ONLN),
            libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0),
        )
    };
    online > 1 && supported > 0 && supported & MEMBARRIER_CMD_GLOBAL != 0
}
