//! The CLI's word about itself, checked as an operator meets it, through the real
//! binary in namespaces the tests create: JSON outputs against their schemas
//! (docs/schemas/), a closed pipe, a running agent beside apply/remove/confirm, an
//! unprivileged user (setpriv), `ip netns exec` hiding bpffs, interfaces named on the
//! command line, and the conventions (errors said once, exit codes, version,
//! completions, man page). Needs root; fails (never skips) without it.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use airlock_integration::{
    cli::{Run, airlock, airlock_bin},
    fixture::{Fixture, PORT},
    netns::{addr, wait_until},
};
use serde_json::Value;

const UDP_PORT: u16 = 5353;

/// Office may reach PORT/tcp and UDP_PORT/udp; everything else to them is refused.
fn policy(f: &Fixture, name: &str, from: &str) -> PathBuf {
    f.write(
        name,
        &format!(
            "version: 1\ninterfaces: [{}]\nsets:\n  office: [198.51.100.0/24, \"2001:db8:100::/48\"]\nrules:\n  - name: db\n    ports: [{PORT}/tcp]\n    from: [{from}]\n  - name: dns\n    ports: [{UDP_PORT}/udp]\n    from: [{from}]\n",
            f.bed.server_if
        ),
    )
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `-o json` output, parsed; the run must have ended with `code`.
fn json_of(run: &Run, code: i32) -> Value {
    assert_eq!(
        run.code, code,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\nstderr:\n{}", run.stdout, run.stderr))
}

/// Fails unless `value` is valid against docs/schemas/`name`.schema.json.
fn assert_schema(name: &str, value: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schemas")
        .join(format!("{name}.schema.json"));
    let schema: Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("schema file")).expect("schema");
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{} is not a valid schema: {e}", path.display()));
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} output does not match {}:\n{}\n{value:#}",
        path.display(),
        errors.join("\n")
    );
}

#[test]
fn every_json_output_matches_its_schema() {
    let f = Fixture::new("cj");
    let office = policy(&f, "office.yaml", "office");
    let partners = policy(&f, "partners.yaml", "192.0.2.0/24");

    let v = json_of(&f.airlock(&["validate", "-f", s(&office), "-o", "json"]), 0);
    assert_schema("validate", &v);
    let bad = f.write("bad.yaml", "version: 1\nrules: [x]\n");
    let v = json_of(&f.airlock(&["validate", "-f", s(&bad), "-o", "json"]), 2);
    assert_schema("validate", &v);
    // A rule that is not a mapping: labelled as a problem of structure.
    assert_eq!(v["diagnostics"][0]["kind"], "structure", "{v:#}");
    assert_schema(
        "regions",
        &json_of(&f.airlock(&["regions", "-o", "json"]), 0),
    );

    let dry = json_of(
        &f.airlock(&["apply", "-f", s(&office), "--dry-run", "-o", "json"]),
        0,
    );
    assert_schema("apply", &dry);
    // The first apply attaches; the second swaps; both are attached, as the kernel says.
    let first = json_of(&f.airlock(&["apply", "-f", s(&office), "-o", "json"]), 0);
    assert_schema("apply", &first);
    assert_eq!(first["applied"][0]["attached"], true, "{first:#}");
    assert_eq!(first["applied"][0]["action"], "attached", "{first:#}");
    let second = json_of(&f.airlock(&["apply", "-f", s(&office), "-o", "json"]), 0);
    assert_schema("apply", &second);
    assert_eq!(second["applied"][0]["attached"], true, "{second:#}");
    assert_eq!(second["applied"][0]["action"], "swapped", "{second:#}");

    // An invalid policy under -o json: JSON on stdout, with its diagnostics.
    let error = json_of(&f.airlock(&["apply", "-f", s(&bad), "-o", "json"]), 2);
    assert_schema("error", &error);
    assert_eq!(
        error["error"]["diagnostics"][0]["field"], "rules[0]",
        "{error:#}"
    );
    assert_eq!(error["error"]["diagnostics"][0]["kind"], "structure");
    assert_eq!(error["error"]["exit_code"], 2);

    assert_schema("status", &f.status_json());

    for (packet, expected) in [
        (
            &["--port", "8000"][..],
            serde_json::json!({"protocol": "tcp", "dst_port": 8000}),
        ),
        (
            &["--port", "5353/udp"],
            serde_json::json!({"protocol": "udp", "dst_port": 5353}),
        ),
        (
            &["--icmp-type", "8"],
            serde_json::json!({"protocol": "icmp", "icmp_type": 8}),
        ),
        (
            &["--fragment"],
            serde_json::json!({"protocol": "non_first_fragment"}),
        ),
    ] {
        let mut args = vec![
            "explain",
            "-f",
            s(&office),
            "--src",
            addr::OFFICE_V4,
            "-o",
            "json",
        ];
        args.extend_from_slice(packet);
        let v = json_of(&f.airlock(&args), 0);
        assert_schema("explain", &v);
        assert_eq!(v["packet"], expected, "{v:#}");
    }
    let live = json_of(
        &f.airlock(&[
            "explain",
            "--live",
            "-f",
            s(&office),
            "--src",
            addr::OFFICE_V4,
            "--port",
            "5432",
            "-o",
            "json",
        ]),
        0,
    );
    assert_schema("explain", &live);
    assert_eq!(live["agree"], true, "{live:#}");

    let diff = json_of(&f.airlock(&["diff", "-f", s(&partners), "-o", "json"]), 0);
    assert_schema("diff", &diff);
    assert_eq!(diff["interfaces"][0]["diff"]["changed"], true, "{diff:#}");

    // Drops read from the rings (no agent), one JSON line each.
    let watch = f
        .bed
        .server
        .command(airlock_bin())
        .args(["watch", "--seconds", "4", "-o", "json"])
        .env("AIRLOCK_PIN_ROOT", f.bed.bpffs.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("airlock watch");
    std::thread::sleep(Duration::from_millis(800));
    f.bed.send_udp(addr::STRANGER_V4, UDP_PORT, 5);
    let output = watch.wait_with_output().expect("watch output");
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        lines.len(),
        5,
        "one line per drop:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for line in &lines {
        assert_schema("watch", line);
        assert_eq!(line["source"], addr::STRANGER_V4);
        assert_eq!(line["rule"], "dns");
    }

    // The self-check, with and without findings (a policy file that is not the one
    // in force gives some). After `watch`: the probes are sampled as drops too.
    let clean = f.airlock(&["check", "-o", "json"]);
    assert_schema("check", &json_of(&clean, clean.code.clamp(0, 1)));
    let other = json_of(&f.airlock(&["check", "-f", s(&partners), "-o", "json"]), 1);
    assert_schema("check", &other);
    assert!(
        other["findings"].as_array().is_some_and(|f| !f.is_empty()),
        "{other:#}"
    );

    let run = f.airlock(&[
        "apply",
        "-f",
        s(&partners),
        "--confirm",
        "30s",
        "-o",
        "json",
    ]);
    assert_schema("apply", &json_of(&run, 0));
    let status = f.status_json();
    assert_schema("status", &status);
    assert!(
        status["interfaces"][0]["confirm"]["seconds_left"].is_u64(),
        "{status:#}"
    );
    let confirmed = json_of(&f.airlock(&["confirm", "-o", "json"]), 0);
    assert_schema("confirm", &confirmed);
    assert_eq!(confirmed["results"][0]["outcome"], "kept", "{confirmed:#}");

    let removed = json_of(&f.airlock(&["remove", "--all", "-o", "json"]), 0);
    assert_schema("remove", &removed);
    assert_eq!(
        removed["removed"][0],
        f.bed.server_if.as_str(),
        "{removed:#}"
    );
    let none = json_of(&f.airlock(&["remove", "--all", "-o", "json"]), 0);
    assert_schema("remove", &none);
    assert_eq!(none["removed"], serde_json::json!([]));
}

/// `airlock status | head -3`, 50 times (and `regions`, which needs no pins): the
/// reader goes away while airlock still writes. No panic, no error, no exit 101.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let f = Fixture::new("cp");
    f.apply(&policy(&f, "office.yaml", "office"));
    for round in 0..50 {
        for command in ["status", "regions"] {
            let mut child = f
                .bed
                .server
                .command(airlock_bin())
                .arg(command)
                .env("AIRLOCK_PIN_ROOT", f.bed.bpffs.path())
                .env("RUST_BACKTRACE", "0")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("airlock");
            let stdout = child.stdout.take().expect("stdout");
            // `head -3`: read three lines, then close the pipe.
            let mut lines = BufReader::new(stdout).lines();
            for _ in 0..3 {
                lines.next().expect("a line").expect("utf-8");
            }
            drop(lines);
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut stderr)
                .expect("stderr");
            let status = child.wait().expect("wait");
            // `ip netns exec` passes a signal on as 128 + signal.
            let quiet = status.success()
                || status.signal() == Some(libc::SIGPIPE)
                || status.code() == Some(128 + libc::SIGPIPE);
            assert!(
                quiet && stderr.is_empty(),
                "round {round}, {command}: {status:?}\n{stderr}"
            );
        }
    }
}

/// An agent started in the server namespace on the fixture's pin root.
struct Agent(Child);

impl Agent {
    fn start(f: &Fixture, policy: &Path, state_dir: &Path) -> Self {
        let child = f
            .bed
            .server
            .command(airlock_bin())
            .args(["agent", "-f", s(policy), "--metrics-addr", "127.0.0.1:0"])
            .arg("--pin-root")
            .arg(f.bed.bpffs.path())
            .arg("--state-dir")
            .arg(state_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start agent");
        let agent = Agent(child);
        assert!(
            wait_until(Duration::from_secs(10), || {
                airlock::agent::agent_pid(f.bed.bpffs.path()).is_some()
                    && f.airlock(&["status", "-o", "json"])
                        .stdout
                        .contains("\"serial\"")
            }),
            "the agent did not take the pin root and apply its policy"
        );
        agent
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn apply_remove_and_confirm_beside_a_running_agent_are_refused() {
    let f = Fixture::new("cg");
    let office = policy(&f, "office.yaml", "office");
    let other = policy(&f, "other.yaml", "192.0.2.0/24");
    let _agent = Agent::start(&f, &office, &f.dir.path().join("state"));
    let pid = airlock::agent::agent_pid(f.bed.bpffs.path()).expect("agent pid");

    for (args, verb) in [
        (vec!["apply", "-f", s(&other)], "apply"),
        (vec!["remove", "--all"], "remove"),
        (vec!["confirm"], "confirm"),
    ] {
        let run = f.airlock(&args);
        assert_eq!(run.code, 2, "{verb}: {}\n{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains(&format!("refusing to {verb}"))
                && run.stderr.contains(&format!("pid {pid}"))
                && run.stderr.contains(s(&office)),
            "{verb} names the agent and its policy: {}",
            run.stderr
        );
    }
    let run = f.airlock(&["apply", "-f", s(&other)]);
    assert!(
        run.stderr.contains("edit") && run.stderr.contains("--force"),
        "{}",
        run.stderr
    );
    // Nothing changed: the agent's policy is the one in force.
    assert!(f.gets_in(addr::OFFICE_V4) && f.kept_out(addr::PARTNER_V4));

    // The same refusal as JSON.
    let error = json_of(&f.airlock(&["apply", "-f", s(&other), "-o", "json"]), 2);
    assert_schema("error", &error);

    // A second agent on this pin root, with a state directory of its own, refuses.
    let second = f
        .bed
        .server
        .command(airlock_bin())
        .args(["agent", "-f", s(&office), "--metrics-addr", "127.0.0.1:0"])
        .arg("--pin-root")
        .arg(f.bed.bpffs.path())
        .arg("--state-dir")
        .arg(f.dir.path().join("another-state"))
        .output()
        .expect("second agent");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another airlock agent already manages")
            && stderr.contains(&format!("pid {pid}")),
        "{stderr}"
    );

    // --force goes ahead, and says so.
    let run = f.airlock(&["apply", "-f", s(&other), "--force"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("--force: going ahead"),
        "{}",
        run.stderr
    );
}

/// The guard sees an agent it cannot see in /proc: the CLI run in a PID namespace
/// of its own with its own /proc (`unshare --pid --fork --mount-proc`, as in a
/// container beside the host's agent), where /proc/locks leaves out the agent's
/// lock, still refuses, because it asks the lock in the shared bpffs itself.
#[test]
fn apply_and_remove_from_another_pid_namespace_beside_the_agent_are_refused() {
    let f = Fixture::new("cp");
    let office = policy(&f, "office.yaml", "office");
    let other = policy(&f, "other.yaml", "192.0.2.0/24");
    let _agent = Agent::start(&f, &office, &f.dir.path().join("state"));
    let in_own_pid_namespace = |args: &[&str]| -> Run {
        f.bed
            .server
            .command("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(airlock_bin())
            .args(args)
            .env("AIRLOCK_PIN_ROOT", f.bed.bpffs.path())
            .env("NO_COLOR", "1")
            .env_remove("SSH_CONNECTION")
            .env_remove("AIRLOCK_LOG")
            .output()
            .expect("unshare")
            .into()
    };
    for (args, verb) in [
        (vec!["apply", "-f", s(&other)], "apply"),
        (vec!["remove", "--all"], "remove"),
    ] {
        let run = in_own_pid_namespace(&args);
        assert_eq!(run.code, 2, "{verb}: {}\n{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains(&format!("refusing to {verb}"))
                && run.stderr.contains("in another PID namespace"),
            "{verb}: {}",
            run.stderr
        );
    }
    // Nor does a second agent start there.
    let state = f.dir.path().join("another-state");
    let second = in_own_pid_namespace(&[
        "agent",
        "-f",
        s(&office),
        "--metrics-addr",
        "127.0.0.1:0",
        "--state-dir",
        s(&state),
    ]);
    assert_eq!(second.code, 1, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("another airlock agent already manages"),
        "{}",
        second.stderr
    );
    assert!(f.gets_in(addr::OFFICE_V4) && f.kept_out(addr::PARTNER_V4));
}

/// `airlock <args>` in the server namespace as uid 65534 with no capabilities.
fn unprivileged(f: &Fixture, caps: &[&str], args: &[&str]) -> Run {
    let mut command = f.bed.server.command("setpriv");
    command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    if caps.is_empty() {
        command.arg("--inh-caps=-all");
    } else {
        let list = caps
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",");
        command.arg(format!("--inh-caps={list}"));
        command.arg(format!("--ambient-caps={list}"));
    }
    command
        .arg(airlock_bin())
        .args(args)
        .env("AIRLOCK_PIN_ROOT", f.bed.bpffs.path())
        .env_remove("SSH_CONNECTION")
        .output()
        .expect("setpriv airlock")
        .into()
}

#[test]
fn an_unprivileged_user_is_told_what_is_missing_never_nothing_pending() {
    let f = Fixture::new("cu");
    let office = policy(&f, "office.yaml", "office");
    let partners = policy(&f, "partners.yaml", "192.0.2.0/24");
    f.apply(&office);
    let run = f.airlock(&["apply", "-f", s(&partners), "--confirm", "60s"]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    for args in [
        &["confirm"][..],
        &["status"],
        &["remove", "--all"],
        &["apply", "-f", s(&office)],
        &["diff", "-f", s(&office)],
        &["watch", "--seconds", "1"],
        &[
            "explain",
            "--live",
            "-f",
            s(&office),
            "--src",
            addr::OFFICE_V4,
            "--port",
            "5432",
        ],
    ] {
        let run = unprivileged(&f, &[], args);
        assert_eq!(run.code, 1, "{args:?}: {}\n{}", run.stdout, run.stderr);
        assert!(
            run.stderr
                .contains("needs root, or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON")
                && run.stderr.contains("uid 65534")
                && run.stderr.lines().count() == 1
                && run.stdout.is_empty(),
            "{args:?}: said once and plainly: {}{}",
            run.stdout,
            run.stderr
        );
    }
    // With the capabilities but not root: root's pins are refused, and said so.
    let run = unprivileged(&f, &["bpf", "net_admin", "perfmon"], &["confirm"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        !run.stdout.contains("no confirmation pending"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("run it as root"), "{}", run.stderr);
    // The confirmation was pending all along, and validate needs no privileges.
    let run = f.airlock(&["confirm"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("confirmed"), "{}", run.stdout);
    let run = unprivileged(&f, &[], &["validate", "-f", s(&office)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn interfaces_come_from_the_command_line_first_and_must_match() {
    let f = Fixture::new("ci");
    let office = policy(&f, "office.yaml", "office");
    for extra in [&[][..], &["--dry-run"]] {
        let mut args = vec!["apply", "-f", s(&office), "--iface", "nomatch*"];
        args.extend_from_slice(extra);
        let run = f.airlock(&args);
        assert_eq!(run.code, 2, "{args:?}: {}\n{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("\"nomatch*\" matches no interface")
                && run.stderr.contains(&f.bed.server_if),
            "{}",
            run.stderr
        );
    }
    assert_eq!(
        f.status_json()["interfaces"],
        serde_json::json!([]),
        "nothing was applied"
    );
    // No `interfaces` in the policy: the command line names them, or it is refused.
    let bare = f.write(
        "bare.yaml",
        "version: 1\nsets:\n  office: [198.51.100.0/24]\nrules:\n  - name: db\n    ports: [5432]\n    from: [office]\n",
    );
    let run = f.airlock(&["validate", "-f", s(&bare)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = f.airlock(&["apply", "-f", s(&bare)]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--iface"), "{}", run.stderr);
    let glob = format!("{}*", &f.bed.server_if[..4]);
    let run = f.airlock(&["apply", "-f", s(&bare), "--iface", &glob, "--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains(&f.bed.server_if), "{}", run.stdout);
    let run = f.airlock(&["apply", "-f", s(&bare), "--iface", &f.bed.server_if]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(f.gets_in(addr::OFFICE_V4) && f.kept_out(addr::STRANGER_V4));
}

/// `ip netns exec` remounts /sys: bpffs under /sys/fs/bpf is out of sight, and the
/// commands say so instead of "nothing pinned" or a raw ENOENT.
#[test]
fn bpffs_hidden_by_ip_netns_exec_is_explained() {
    let f = Fixture::new("cn");
    let office = policy(&f, "office.yaml", "office");
    for args in [
        &["status"][..],
        &["apply", "-f", s(&office)],
        &["remove", "--all"],
    ] {
        let run: Run = f
            .bed
            .server
            .command(airlock_bin())
            .args(args)
            .env_remove("AIRLOCK_PIN_ROOT")
            .env_remove("SSH_CONNECTION")
            .output()
            .expect("airlock")
            .into();
        assert_eq!(run.code, 1, "{args:?}: {}\n{}", run.stdout, run.stderr);
        assert!(
            run.stderr
                .contains(&format!("nsenter --net=/run/netns/{}", f.bed.server.name()))
                && run.stderr.contains("--pin-root"),
            "{args:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn conventions_exit_codes_versions_and_generated_docs() {
    // Each cause once.
    let run = airlock(&["validate", "-f", "/nonexistent/airlock/policy.yaml"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("(os error 2)").count(),
        1,
        "{}",
        run.stderr
    );

    // --confirm too short to react in: refused before anything, with an example.
    let run = airlock(&["apply", "-f", "p.yaml", "--confirm", "3s"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("too short") && run.stderr.contains("--confirm 2m"),
        "{}",
        run.stderr
    );

    let short = airlock(&["-V"]);
    assert_eq!(short.code, 0);
    assert!(
        short.stdout.starts_with("airlock ") && short.stdout.contains("commit "),
        "{}",
        short.stdout
    );
    let long = airlock(&["--version"]);
    for feature in ["tcx", "BTF", "bpffs", "native XDP"] {
        assert!(long.stdout.contains(feature), "{}", long.stdout);
    }

    let bash = airlock(&["completions", "bash"]);
    assert_eq!(bash.code, 0, "{}", bash.stderr);
    assert!(bash.stdout.contains("complete -F") && bash.stdout.contains("apply"));
    let man = airlock(&["man"]);
    assert_eq!(man.code, 0, "{}", man.stderr);
    assert!(man.stdout.contains(".TH airlock 1") && man.stdout.contains("AIRLOCK_LOG"));
    let dir = tempfile::tempdir().expect("temp dir");
    let run = airlock(&["man", "--dir", dir.path().to_str().expect("utf-8")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for page in ["airlock.1", "airlock-apply.1", "airlock-status.1"] {
        assert!(dir.path().join(page).exists(), "{page}");
    }
}

#[test]
fn diff_exit_code_and_quiet() {
    let f = Fixture::new("cd");
    let office = policy(&f, "office.yaml", "office");
    let partners = policy(&f, "partners.yaml", "192.0.2.0/24");
    // -q: nothing on stderr for a plain apply; stdout is unchanged.
    let run = f.airlock(&["-q", "apply", "-f", s(&office)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    assert!(run.stdout.contains("attached"), "{}", run.stdout);
    let run = f.airlock(&["diff", "-f", s(&office), "--exit-code"]);
    assert_eq!(run.code, 0, "no changes: {}{}", run.stdout, run.stderr);
    let run = f.airlock(&["diff", "-f", s(&partners), "--exit-code"]);
    assert_eq!(run.code, 1, "changes: {}{}", run.stdout, run.stderr);
    let run = f.airlock(&["diff", "-f", s(&partners)]);
    assert_eq!(run.code, 0, "without --exit-code: {}", run.stderr);
    let run = f.airlock(&["diff", "-f", "/nonexistent/p.yaml", "--exit-code"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
fn a_json_policy_is_read_and_its_errors_name_file_line_column_and_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("policy.json");
    fs::write(
        &good,
        r#"{"version": 1, "interfaces": ["eth0"], "sets": {"office": ["198.51.100.0/24"]},
 "rules": [{"name": "db", "ports": ["5432/tcp"], "from": ["office"]}]}"#,
    )
    .expect("write policy");
    let run = airlock(&["validate", "-f", s(&good)]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let bad = dir.path().join("bad.json");
    fs::write(
        &bad,
        "{\n  \"version\": 1,\n  \"rules\": [\n    {\"name\": \"db\", \"ports\": [\"5432/tcp\"], \"form\": [\"192.0.2.0/24\"]}\n  ]\n}\n",
    )
    .expect("write policy");
    let run = airlock(&["validate", "-f", s(&bad)]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let expected = format!(
        "{}:4:48: rules[0].form: unknown field `form`",
        bad.display()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    let v = json_of(&airlock(&["validate", "-f", s(&bad), "-o", "json"]), 2);
    assert_schema("validate", &v);
    let text = v.to_string();
    assert!(
        text.contains(r#""field":"rules[0].form""#) && text.contains(r#""line":4"#),
        "{v:#}"
    );
}
