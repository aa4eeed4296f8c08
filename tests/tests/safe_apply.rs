//! Safe apply, in namespaces the test creates, judged by real TCP connections: the
//! anti-lockout check (SSH_CONNECTION and the socket table), commit-confirm rolled
//! back with the applying process killed, `airlock confirm`, `status` showing the
//! time left, `diff` against a pinned filter and `explain --live` against the
//! attached program. Needs root; fails (never skips) without it.

use std::{
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use airlock_integration::{
    cli::{Run, airlock_bin},
    fixture::{Fixture, PORT},
    netns::{addr, wait_until},
};
use socket2::{Domain, Socket, Type};

/// The shared fixture, plus what these tests need on top of it.
struct SafeFixture(Fixture);

impl std::ops::Deref for SafeFixture {
    type Target = Fixture;

    fn deref(&self) -> &Fixture {
        &self.0
    }
}

impl SafeFixture {
    fn new(prefix: &str) -> Self {
        Self(Fixture::new(prefix))
    }

    /// `default: drop`; rule db (PORT/tcp) and rule ssh (22/tcp) from `from`.
    fn policy(&self, file: &str, from: &str) -> PathBuf {
        let text = format!(
            "version: 1\ninterfaces: [{iface}]\ndefault: drop\nmanagement: [\"2001:db8:ffff::1\"]\nsets:\n  office: [198.51.100.0/24, \"2001:db8:100::/48\"]\n  partners: [192.0.2.0/24, \"2001:db8:1::/48\"]\nrules:\n  - name: db\n    ports: [{PORT}/tcp]\n    from: [{from}]\n  - name: ssh\n    ports: [22/tcp]\n    from: [{from}]\n",
            iface = self.bed.server_if,
        );
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).expect("write policy");
        path
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = self.bed.server.command(airlock_bin());
        command
            .args(args)
            .env("AIRLOCK_PIN_ROOT", self.bed.bpffs.path())
            .env("NO_COLOR", "1")
            // Whatever session runs the tests is not the one under test.
            .env_remove("SSH_CONNECTION");
        command
    }

    fn airlock_env(&self, args: &[&str], key: &str, value: &str) -> Run {
        self.command(args)
            .env(key, value)
            .output()
            .expect("running airlock")
            .into()
    }

    /// Office (and not partners) is let in, over IPv4 and IPv6.
    fn office_policy_in_force(&self) -> bool {
        self.gets_in(addr::OFFICE_V4)
            && self.gets_in(addr::OFFICE_V6)
            && self.kept_out(addr::PARTNER_V4)
    }

    fn partner_policy_in_force(&self) -> bool {
        self.gets_in(addr::PARTNER_V4)
            && self.gets_in(addr::PARTNER_V6)
            && self.kept_out(addr::OFFICE_V4)
    }

    /// Watchdogs guarding this test bed's pin root (by their command line).
    fn watchdogs(&self) -> Vec<u32> {
        let root = self.bed.bpffs.path().display().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let words: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            if words.iter().any(|w| w == "confirm-watchdog") && words.contains(&root) {
                pids.push(pid);
            }
        }
        pids
    }

    /// An unconfirmed fresh install: it enforces on probation, then it is removed at
    /// the deadline.
    fn assert_removed_at_the_deadline(&self) {
        assert!(
            self.kept_out(addr::STRANGER_V4),
            "filter on probation enforces"
        );
        assert!(
            wait_until(Duration::from_secs(20), || self.gets_in(addr::STRANGER_V4)),
            "the filter was not removed at the deadline"
        );
    }

    /// Runs `airlock apply ... --confirm` the way a dying SSH session would: inside
    /// a shell, in a process group of its own that is SIGKILLed as a whole once the
    /// policy is in force. Returns when the group is dead.
    fn apply_confirm_then_kill_the_session(&self, policy: &Path, within: &str) {
        let mut shell = self
            .bed
            .server
            .command("sh")
            .args(["-c", "\"$@\"; sleep 60", "sh"])
            .arg(airlock_bin())
            .args(["apply", "-f", s(policy), "--confirm", within])
            .env("AIRLOCK_PIN_ROOT", self.bed.bpffs.path())
            .env_remove("SSH_CONNECTION")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawning the applying session");
        let pgid = shell.id() as i32;
        assert!(
            wait_until(Duration::from_secs(10), || !self.watchdogs().is_empty()),
            "apply --confirm armed no watchdog"
        );
        // SAFETY: kill(2) on the process group this test created.
        let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
        assert_eq!(rc, 0, "killing the applying session's process group");
        let status = shell.wait().expect("reaping the session");
        assert!(!status.success(), "the session was killed");
    }
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn lockout_of_the_ssh_session_is_refused_without_force() {
    let f = SafeFixture::new("lk");
    let office = f.policy("office.yaml", "office");
    // The SSH session comes from the stranger, to the server's 203.0.113.1:22.
    let stranger_session = format!("{} 50022 203.0.113.1 22", addr::STRANGER_V4);
    // A dry run is refused the same way, so it can be asked first.
    let dry = f.airlock_env(
        &["apply", "-f", s(&office), "--dry-run"],
        "SSH_CONNECTION",
        &stranger_session,
    );
    assert_eq!(
        dry.code, 2,
        "a dry run of a lockout exits 2: {}",
        dry.stderr
    );
    assert!(dry.stderr.contains("rule ssh refuses"), "{}", dry.stderr);
    let run = f.airlock_env(
        &["apply", "-f", s(&office)],
        "SSH_CONNECTION",
        &stranger_session,
    );
    assert_eq!(run.code, 2, "a lockout must exit 2: {}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "rule ssh refuses {} → port 22/tcp: your SSH session (SSH_CONNECTION)",
            addr::STRANGER_V4
        )),
        "the refusal names the rule and the session: {}",
        run.stderr
    );
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
    assert!(
        f.status_json()["interfaces"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "nothing applied"
    );
    assert!(
        f.gets_in(addr::STRANGER_V4),
        "no filter: the stranger still gets in"
    );

    // A session from the office passes rule ssh: applied.
    let office_session = format!("{} 50022 198.51.100.1 22", addr::OFFICE_V4);
    let run = f.airlock_env(
        &["apply", "-f", s(&office), "--dry-run"],
        "SSH_CONNECTION",
        &office_session,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = f.airlock_env(
        &["apply", "-f", s(&office)],
        "SSH_CONNECTION",
        &office_session,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(f.office_policy_in_force());
    assert!(f.kept_out(addr::STRANGER_V4));
    let run = f.airlock(&["remove", "--all"]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    // --force applies it anyway.
    let run = f.airlock_env(
        &["apply", "-f", s(&office), "--force"],
        "SSH_CONNECTION",
        &stranger_session,
    );
    assert_eq!(run.code, 0, "--force must apply: {}", run.stderr);
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
    assert!(f.kept_out(addr::STRANGER_V4));
    assert!(f.office_policy_in_force());
}

#[test]
fn lockout_of_an_established_ssh_connection_is_found_in_the_socket_table() {
    let f = SafeFixture::new("lks");
    // A real connection from the stranger to port 22 on the server, held open.
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let listener = f.bed.server.spawn(move || {
        let listener = TcpListener::bind("0.0.0.0:22").expect("bind :22");
        ready_tx.send(()).expect("ready");
        let (stream, _) = listener.accept().expect("accept");
        let _ = stop_rx.recv_timeout(Duration::from_secs(30));
        drop(stream);
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("listener on :22");
    let (client_stop_tx, client_stop_rx) = mpsc::channel::<()>();
    let (connected_tx, connected_rx) = mpsc::channel();
    let client = f.bed.client.spawn(move || {
        let target: SocketAddr = "203.0.113.1:22".parse().expect("address");
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let source: SocketAddr = format!("{}:0", addr::STRANGER_V4).parse().expect("source");
        socket.bind(&source.into()).expect("bind");
        socket
            .connect_timeout(&target.into(), Duration::from_secs(2))
            .expect("connect :22");
        let mut stream: TcpStream = socket.into();
        connected_tx.send(()).expect("connected");
        let _ = client_stop_rx.recv_timeout(Duration::from_secs(30));
        let _ = stream.set_read_timeout(Some(Duration::from_millis(10)));
        let _ = stream.read(&mut [0u8; 1]);
    });
    connected_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("connected to :22");

    let office = f.policy("office.yaml", "office");
    let run = f.airlock(&["apply", "-f", s(&office)]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "rule ssh refuses {} → port 22/tcp: an established SSH session",
            addr::STRANGER_V4
        )) && run.stderr.contains("socket table"),
        "{}",
        run.stderr
    );
    // A policy letting the stranger's session in is fine.
    let stranger = f.policy("stranger.yaml", "office, 203.0.113.0/24");
    let run = f.airlock(&["apply", "-f", s(&stranger)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    stop_tx.send(()).ok();
    client_stop_tx.send(()).ok();
    listener.join().expect("listener");
    client.join().expect("client");
}

#[test]
fn unconfirmed_apply_rolls_back_after_the_applying_session_is_killed() {
    let f = SafeFixture::new("cr");
    let office = f.policy("office.yaml", "office");
    let partners = f.policy("partners.yaml", "partners");
    f.apply(&office);
    assert!(f.office_policy_in_force());
    let before = f.status_json()["interfaces"][0]["policy"]["serial"].clone();

    let started = Instant::now();
    // The shortest window `--confirm` takes (10 s).
    f.apply_confirm_then_kill_the_session(&partners, "10s");
    // The session is dead; the watchdog, in a session of its own, is not.
    assert_eq!(f.watchdogs().len(), 1, "the watchdog survives the kill");
    assert!(
        f.partner_policy_in_force(),
        "the new policy is on probation"
    );
    // Judged by traffic alone (no airlock command that could roll back itself):
    // the previous policy comes back after the deadline.
    assert!(
        wait_until(Duration::from_secs(20), || f.gets_in(addr::OFFICE_V4)),
        "the previous policy did not come back"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "rolled back before the deadline ({:?})",
        started.elapsed()
    );
    assert!(f.office_policy_in_force());
    assert!(f.kept_out(addr::PARTNER_V6));
    assert!(
        wait_until(Duration::from_secs(5), || f.watchdogs().is_empty()),
        "the watchdog exits after the rollback"
    );
    let status = f.status_json();
    let iface = &status["interfaces"][0];
    assert_eq!(iface["policy"]["serial"], before, "{status:#}");
    assert!(iface["confirm"].is_null(), "{status:#}");
    // The watchdog logs nowhere: status says why the policy in force is not the
    // one applied last.
    let unconfirmed = before.as_u64().expect("a serial") + 1;
    let restored = &iface["policy"]["restored"];
    assert_eq!(restored["rolled_back_serial"], unconfirmed, "{status:#}");
    let (at, deadline) = (
        restored["at_unix"].as_u64().expect("the rollback's time"),
        restored["deadline_unix"].as_u64().expect("the deadline"),
    );
    assert!(at >= deadline, "{status:#}");
    let human = f.airlock(&["status"]);
    assert!(
        human
            .stdout
            .contains(&format!("apply #{unconfirmed} was not confirmed by")),
        "{}",
        human.stdout
    );
    // Until the next apply, which describes its own policy only.
    f.apply(&office);
    let status = f.status_json();
    assert!(
        status["interfaces"][0]["policy"]["restored"].is_null(),
        "{status:#}"
    );
}

#[test]
fn unconfirmed_fresh_install_is_removed() {
    let f = SafeFixture::new("cf");
    let office = f.policy("office.yaml", "office");
    f.apply_confirm_then_kill_the_session(&office, "10s");
    f.assert_removed_at_the_deadline();
    assert!(
        wait_until(Duration::from_secs(5), || f.watchdogs().is_empty()),
        "the watchdog exits"
    );
    let status = f.status_json();
    assert!(
        status["interfaces"].as_array().is_some_and(Vec::is_empty),
        "{status:#}"
    );
}

/// A pin root given as a relative path names the same directory for the
/// watchdog, which runs from `/`: the unconfirmed install is still removed at the
/// deadline.
#[test]
fn a_relative_pin_root_is_the_same_directory_for_the_watchdog() {
    let f = SafeFixture::new("cp");
    let office = f.policy("office.yaml", "office");
    let root = f.bed.bpffs.path();
    let (parent, name) = (
        root.parent().expect("the pin root's parent"),
        root.file_name().and_then(|n| n.to_str()).expect("a name"),
    );
    let run: Run = f
        .command(&[
            "apply",
            "-f",
            s(&office),
            "--confirm",
            "10s",
            "--pin-root",
            name,
        ])
        .current_dir(parent)
        .output()
        .expect("running airlock")
        .into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    f.assert_removed_at_the_deadline();
}

#[test]
fn confirm_keeps_the_policy_and_status_shows_the_time_left() {
    let f = SafeFixture::new("ck");
    let office = f.policy("office.yaml", "office");
    let partners = f.policy("partners.yaml", "partners");
    f.apply(&office);
    let run = f.airlock(&["apply", "-f", s(&partners), "--confirm", "10s"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("airlock confirm"), "{}", run.stderr);

    let status = f.status_json();
    let confirm = &status["interfaces"][0]["confirm"];
    let left = confirm["seconds_left"].as_u64().expect("seconds_left");
    assert!((1..=10).contains(&left), "{status:#}");
    assert_eq!(confirm["rollback"]["action"], "previous", "{status:#}");
    let human = f.airlock(&["status"]);
    assert!(
        human.stdout.contains("PENDING CONFIRMATION") && human.stdout.contains("apply #1"),
        "{}",
        human.stdout
    );
    // No second apply on top of one on probation.
    let run = f.airlock(&["apply", "-f", s(&office)]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("pending"), "{}", run.stderr);

    let run = f.airlock(&["confirm"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("confirmed"), "{}", run.stdout);
    assert!(
        wait_until(Duration::from_secs(5), || f.watchdogs().is_empty()),
        "the watchdog exits once confirmed"
    );
    thread::sleep(Duration::from_secs(10));
    assert!(f.partner_policy_in_force(), "a confirmed policy stays");
    assert!(f.status_json()["interfaces"][0]["confirm"].is_null());
    let run = f.airlock(&["confirm"]);
    assert_eq!(run.code, 1, "nothing to confirm: {}", run.stdout);
}

#[test]
fn an_expired_confirmation_is_finished_by_status_when_the_watchdog_is_gone_too() {
    let f = SafeFixture::new("cs");
    let office = f.policy("office.yaml", "office");
    let partners = f.policy("partners.yaml", "partners");
    f.apply(&office);
    let run = f.airlock(&["apply", "-f", s(&partners), "--confirm", "10s"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for pid in f.watchdogs() {
        // SAFETY: kill(2) on the watchdog this test's apply started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(wait_until(Duration::from_secs(5), || f
        .watchdogs()
        .is_empty()));
    thread::sleep(Duration::from_secs(11));
    assert!(
        f.partner_policy_in_force(),
        "nothing rolls back without the watchdog"
    );
    let run = f.airlock(&["status"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("not confirmed in time: rolled back"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("RESTORED"), "{}", run.stdout);
    assert!(f.office_policy_in_force());
}

#[test]
fn diff_against_the_pinned_filter() {
    let f = SafeFixture::new("df");
    let office = f.policy("office.yaml", "office");
    f.apply(&office);
    let run = f.airlock(&["diff", "-f", s(&office)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("no changes"), "{}", run.stdout);

    let new = f.dir.path().join("new.yaml");
    let text = std::fs::read_to_string(&office)
        .expect("read")
        .replace(
            "from: [office]\n  - name: ssh",
            "from: [partners]\n  - name: ssh",
        )
        .replace(
            "rules:\n",
            "rules:\n  - name: web\n    ports: [8000/tcp]\n    from: [10.0.0.0/8]\n",
        );
    std::fs::write(&new, text).expect("write");
    let run = f.airlock(&["diff", "-f", s(&new), "-o", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("diff JSON");
    let d = &json["interfaces"][0]["diff"];
    assert_eq!(json["interfaces"][0]["iface"], f.bed.server_if.as_str());
    assert_eq!(d["changed"], true);
    let db = &d["rules_changed"][0];
    assert_eq!(db["name"], "db", "{d:#}");
    assert_eq!(db["from_added"], serde_json::json!(["partners"]));
    assert_eq!(db["from_removed"], serde_json::json!(["office"]));
    assert_eq!(
        db["prefixes"]["added_v4"]["shown"],
        serde_json::json!(["192.0.2.0/24"])
    );
    assert_eq!(
        db["prefixes"]["added_v6"]["shown"],
        serde_json::json!(["2001:db8:1::/48"])
    );
    assert_eq!(
        db["prefixes"]["removed_v4"]["shown"],
        serde_json::json!(["198.51.100.0/24"])
    );
    assert_eq!(
        db["prefixes"]["removed_v6"]["shown"],
        serde_json::json!(["2001:db8:100::/48"])
    );
    assert_eq!(d["rules_added"][0]["name"], "web");
    assert_eq!(
        d["rules_added"][0]["ports_added"],
        serde_json::json!(["8000/tcp"])
    );
    assert_eq!(
        d["rules_changed"].as_array().map(Vec::len),
        Some(1),
        "ssh unchanged"
    );

    let run = f.airlock(&["diff", "-f", s(&new)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for needle in [
        "~ rule db",
        "+partners -office",
        "+192.0.2.0/24",
        "-198.51.100.0/24",
        "+ rule web",
    ] {
        assert!(
            run.stdout.contains(needle),
            "{needle:?} missing from:\n{}",
            run.stdout
        );
    }
    // Diff changes nothing.
    assert!(f.office_policy_in_force());
}

#[test]
fn explain_live_runs_the_attached_program_and_agrees_with_the_reference() {
    let f = SafeFixture::new("ex");
    let office = f.policy("office.yaml", "office");
    f.apply(&office);
    let explain = |policy: &Path, src: &str, packet: &[&str]| {
        let mut args = vec![
            "explain",
            "--live",
            "-f",
            s(policy),
            "--src",
            src,
            "-o",
            "json",
        ];
        args.extend_from_slice(packet);
        let run = f.airlock(&args);
        let json: serde_json::Value =
            serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stderr));
        (run.code, json)
    };
    let cases = [
        (
            addr::OFFICE_V4,
            vec!["--port", "5432/tcp"],
            "pass",
            "rule_allowed",
        ),
        (
            addr::OFFICE_V6,
            vec!["--port", "5432/tcp"],
            "pass",
            "rule_allowed",
        ),
        (
            addr::STRANGER_V4,
            vec!["--port", "5432/tcp"],
            "drop",
            "rule_refused",
        ),
        (
            addr::STRANGER_V6,
            vec!["--port", "22/tcp"],
            "drop",
            "rule_refused",
        ),
        (
            addr::STRANGER_V4,
            vec!["--port", "53/udp"],
            "drop",
            "default_drop",
        ),
        (
            addr::STRANGER_V4,
            vec!["--icmp-type", "3"],
            "pass",
            "essential_icmp",
        ),
        (
            addr::STRANGER_V6,
            vec!["--icmp-type", "135"],
            "pass",
            "essential_icmp",
        ),
        (addr::OFFICE_V4, vec!["--fragment"], "pass", "fragment_pass"),
        (
            addr::STRANGER_V6,
            vec!["--fragment"],
            "drop",
            "fragment_drop",
        ),
        (
            "2001:db8:ffff::1",
            vec!["--port", "9/tcp"],
            "pass",
            "management",
        ),
    ];
    for (src, packet, verdict, reason) in cases {
        let (code, json) = explain(&office, src, &packet);
        assert_eq!(code, 0, "{src} {packet:?}: {json:#}");
        assert_eq!(json["agree"], true, "{json:#}");
        assert_eq!(
            json["kernel"]["verdict"], verdict,
            "{src} {packet:?}: {json:#}"
        );
        assert_eq!(json["reference"]["verdict"], verdict, "{json:#}");
        assert_eq!(
            json["kernel"]["reason"], reason,
            "{src} {packet:?}: {json:#}"
        );
        assert_eq!(json["iface"], f.bed.server_if.as_str());
    }
    let run = f.airlock(&[
        "explain",
        "--live",
        "-f",
        s(&office),
        "--src",
        addr::OFFICE_V4,
        "--port",
        "5432/tcp",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("reference: PASS"), "{}", run.stdout);
    assert!(
        run.stdout.contains("kernel:    PASS") && run.stdout.contains("XDP_PASS"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("agree"), "{}", run.stdout);

    // Ask about a policy that is not the one in force: they differ, loudly.
    let partners = f.policy("partners.yaml", "partners");
    let run = f.airlock(&[
        "explain",
        "--live",
        "-f",
        s(&partners),
        "--src",
        addr::PARTNER_V4,
        "--port",
        "5432/tcp",
    ]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("DISAGREEMENT"), "{}", run.stderr);
    assert!(run.stdout.contains("kernel:    DROP"), "{}", run.stdout);
    assert!(
        run.stdout.contains("not"),
        "names the policy in force: {}",
        run.stdout
    );
}

/// The agent, with a lockout policy: rejected and logged like an invalid one (the
/// policy in force stays), unless started with --force.
#[test]
fn agent_rejects_a_policy_that_would_lock_out_the_session_unless_forced() {
    let f = SafeFixture::new("ag");
    let policy = f.dir.path().join("agent.yaml");
    let write = |from: &str| {
        let staged = f.policy("staged.yaml", from);
        std::fs::rename(&staged, &policy).expect("rename policy into place");
    };
    let stranger_session = format!("{} 50022 203.0.113.1 22", addr::STRANGER_V4);
    let start = |extra: &[&str], log: &Path| {
        let log_file = std::fs::File::create(log).expect("log file");
        f.command(&["agent", "-f", s(&policy)])
            .arg("--state-dir")
            .arg(f.dir.path().join("state"))
            .args(["--metrics-addr", "127.0.0.1:19477", "--log-format", "json"])
            .args(["--reconcile-interval", "1"])
            .args(extra)
            .env("SSH_CONNECTION", &stranger_session)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start agent")
    };
    let read = |log: &Path| std::fs::read_to_string(log).unwrap_or_default();
    let rejections = |log: &Path| read(log).matches("would lock you out").count();

    write("office");
    let log = f.dir.path().join("agent.log");
    let mut agent = start(&[], &log);
    assert!(
        wait_until(Duration::from_secs(10), || rejections(&log) >= 1),
        "lockout not rejected; log:\n{}",
        read(&log)
    );
    assert!(
        read(&log).contains("rule ssh refuses 203.0.113.10"),
        "{}",
        read(&log)
    );
    assert!(
        f.status_json()["interfaces"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    assert!(f.gets_in(addr::STRANGER_V4), "nothing applied");

    // A policy that keeps the session is applied; a lockout edit then is rejected
    // and the policy in force stays.
    write("office, 203.0.113.0/24");
    assert!(
        wait_until(Duration::from_secs(10), || f.kept_out(addr::PARTNER_V4)),
        "safe policy not applied; log:\n{}",
        read(&log)
    );
    write("office");
    assert!(
        wait_until(Duration::from_secs(10), || rejections(&log) >= 2),
        "second lockout not rejected; log:\n{}",
        read(&log)
    );
    assert!(f.gets_in(addr::STRANGER_V4), "the policy in force stays");
    let _ = agent.kill();
    let _ = agent.wait();

    // --force: applied anyway.
    let log = f.dir.path().join("agent-forced.log");
    let mut agent = start(&["--force"], &log);
    assert!(
        wait_until(Duration::from_secs(10), || f.kept_out(addr::STRANGER_V4)),
        "--force did not apply; log:\n{}",
        read(&log)
    );
    assert!(f.gets_in(addr::OFFICE_V4));
    let _ = agent.kill();
    let _ = agent.wait();
}
