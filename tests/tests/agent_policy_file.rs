//! The agent and its policy file: what wakes it (the file, a ConfigMap's `..data`
//! swap beside it and the files it imports, nothing else), how a rejection is told
//! (once per content), and what "ready" and "in sync" mean when the file and the
//! kernel disagree. The real binary in the test's namespaces; needs root.

use std::{fs, thread, time::Duration};

use airlock_integration::{
    agent::{
        Agent, RELOAD, metric, policy_path, policy_text, ready, rename_policy, state_dir,
        write_policy,
    },
    fixture::{ALLOWED, Fixture, PORT},
    netns::{addr, wait_until},
};

/// Debug lines of the agent's log that say it looked at an unchanged policy file.
fn looks(agent: &Agent) -> usize {
    agent
        .log()
        .lines()
        .filter(|l| l.contains("policy file unchanged"))
        .count()
}

/// Lines of the agent's log that report a rejected policy.
fn rejections(agent: &Agent) -> usize {
    agent
        .log()
        .lines()
        .filter(|l| l.contains("policy rejected"))
        .count()
}

#[test]
fn a_rejected_policy_is_logged_once_whatever_else_is_written_beside_it() {
    let f = Fixture::new("a1x");
    // The log is in the policy's directory (Agent puts it in the fixture's), so
    // each log line is a change in that directory.
    let invalid = policy_text(&f, "office, 203.0.113.7/24");
    write_policy(&f, &invalid);
    // -v: each look at the file is logged (at debug level), so a wake-up for
    // nothing shows.
    let agent = Agent::spawn(&f, &[], &policy_path(&f), &["-v"]);
    assert!(
        wait_until(RELOAD, || rejections(&agent) == 1),
        "log:\n{}",
        agent.log()
    );
    let stray = f.dir.path().join("notes.txt");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut sighup_sent = false;
    while std::time::Instant::now() < deadline {
        fs::write(&stray, format!("{:?}\n", std::time::Instant::now())).expect("write stray");
        if !sighup_sent && deadline - std::time::Instant::now() < Duration::from_secs(10) {
            // Asked to look again at the same content: nothing new to say.
            agent.signal(nix::sys::signal::Signal::SIGHUP);
            sighup_sent = true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        rejections(&agent),
        1,
        "one rejection logged for one content; log:\n{}",
        agent.log()
    );
    assert_eq!(
        looks(&agent),
        0,
        "the log and the stray file woke the agent; log:\n{}",
        agent.log()
    );
    assert!(
        agent
            .log()
            .contains("policy file still rejected (same content, same error)"),
        "SIGHUP looked again, quietly; log:\n{}",
        agent.log()
    );
    assert_eq!(
        metric(&f, "airlock_policy_reload_failures_total{kind=\"value\"}"),
        1.0
    );
    assert!(!ready(&f), "nothing valid was ever enforced");

    // Another invalid content is news; a valid one is enforced.
    rename_policy(&f, &policy_text(&f, "office, 203.0.113.7/16"));
    assert!(
        wait_until(RELOAD, || rejections(&agent) == 2),
        "log:\n{}",
        agent.log()
    );
    rename_policy(&f, &policy_text(&f, "office"));
    assert!(wait_until(RELOAD, || ready(&f)), "log:\n{}", agent.log());
    assert!(f.kept_out(addr::STRANGER_V4));
    assert!(f.gets_in(addr::OFFICE_V4));
}

#[test]
fn an_imported_file_is_watched_and_fixing_it_is_a_reload() {
    let f = Fixture::new("aim");
    let ranges = f.dir.path().join("ranges");
    fs::create_dir(&ranges).expect("mkdir");
    let list = ranges.join("partners.txt");
    fs::write(&list, "198.51.100.0/24\n192.0.2.300\n").expect("write list");
    let with_import = policy_text(&f, "partners").replace(
        "sets:\n",
        "sets:\n  partners:\n    file: ranges/partners.txt\n",
    );
    write_policy(&f, &with_import);
    let agent = Agent::spawn(&f, &[], &policy_path(&f), &["-v"]);
    assert!(
        wait_until(RELOAD, || rejections(&agent) == 1),
        "log:\n{}",
        agent.log()
    );
    assert!(agent.log().contains("partners.txt:2:"), "{}", agent.log());
    // Fixed in place: the policy's own text never changed.
    fs::write(&list, "198.51.100.0/24\n").expect("fix list");
    assert!(wait_until(RELOAD, || ready(&f)), "log:\n{}", agent.log());
    assert!(f.gets_in(addr::OFFICE_V4));
    assert!(f.kept_out(addr::STRANGER_V4));
    // Replaced by rename, as a download script would: the stranger joins.
    let temp = ranges.join(".partners.txt.new");
    fs::write(&temp, "198.51.100.0/24\n203.0.113.0/24\n").expect("write list");
    fs::rename(&temp, &list).expect("rename list");
    assert!(
        wait_until(RELOAD, || f.gets_in(addr::STRANGER_V4)),
        "log:\n{}",
        agent.log()
    );
    // Another file in the list's directory wakes nothing.
    let before = looks(&agent);
    fs::write(ranges.join("other.txt"), "203.0.113.0/24\n").expect("write other");
    thread::sleep(RELOAD);
    assert_eq!(looks(&agent), before, "log:\n{}", agent.log());
    assert_eq!(rejections(&agent), 1);
}

/// `airlock status` (human and JSON) with the agent's state directory.
fn status(f: &Fixture) -> (String, serde_json::Value) {
    let state = state_dir(f);
    let state = state.to_str().expect("utf-8");
    let human = f.airlock(&["status", "--state-dir", state]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    let json = f.airlock(&["status", "--state-dir", state, "-o", "json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    (
        human.stdout,
        serde_json::from_str(&json.stdout).expect("status JSON"),
    )
}

#[test]
fn a_rejected_edit_keeps_the_last_good_policy_ready_and_the_drift_is_signalled() {
    let f = Fixture::new("adr");
    write_policy(&f, &policy_text(&f, "office"));
    let agent = Agent::start(&f, &[], &policy_path(&f), &[]);
    assert_eq!(metric(&f, "airlock_policy_in_sync"), 1.0);
    let (human, json) = status(&f);
    assert_eq!(json["agent"]["in_sync"], true, "{json}");
    assert_eq!(json["agent"]["last_rejection"], serde_json::Value::Null);
    assert!(human.contains("ready, in sync"), "{human}");

    rename_policy(&f, &policy_text(&f, "office, 203.0.113.7/24"));
    assert!(
        wait_until(RELOAD, || metric(&f, "airlock_policy_in_sync") == 0.0),
        "drift not signalled; log:\n{}",
        agent.log()
    );
    // Still enforcing a valid policy everywhere: ready.
    assert!(ready(&f));
    assert_eq!(metric(&f, "airlock_ready"), 1.0);
    assert!(metric(&f, "airlock_policy_last_rejection_timestamp_seconds") > 0.0);
    assert!(f.kept_out(addr::STRANGER_V4));
    let (human, json) = status(&f);
    assert_eq!(json["agent"]["in_sync"], false, "{json}");
    assert_eq!(json["agent"]["ready"], true, "{json}");
    let error = json["agent"]["last_rejection"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("policy.yaml:8:"), "{json}");
    assert!(json["agent"]["last_rejection"]["at_unix"].as_u64() > Some(0));
    assert_eq!(json["agent"]["last_rejection"]["kind"], "value", "{json}");
    assert!(human.contains("POLICY FILE REJECTED"), "{human}");
    assert!(
        human.contains("203.0.113.0/24"),
        "the error itself: {human}"
    );
    let log = agent.log();
    assert!(
        log.contains("policy rejected; the last good policy (applied")
            && log.contains("the policy file and the kernel differ"),
        "{log}"
    );

    rename_policy(&f, &policy_text(&f, "office"));
    assert!(
        wait_until(RELOAD, || metric(&f, "airlock_policy_in_sync") == 1.0),
        "log:\n{}",
        agent.log()
    );
    assert!(agent.log().contains("in sync again"));
    let (human, json) = status(&f);
    assert_eq!(json["agent"]["in_sync"], true, "{json}");
    assert!(!human.contains("REJECTED"), "{human}");
}

#[test]
fn with_an_invalid_file_the_agent_says_what_is_enforced_at_start_and_after_a_restart() {
    let f = Fixture::new("ais");
    // Nothing pinned, an invalid file: nothing is enforced, and it says so.
    write_policy(&f, &policy_text(&f, "office, 203.0.113.7/24"));
    let agent = Agent::spawn(&f, &[], &policy_path(&f), &[]);
    assert!(
        wait_until(RELOAD, || rejections(&agent) == 1),
        "log:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(log.contains("nothing is enforced"), "{log}");
    assert!(!log.contains("stays in force"), "{log}");
    assert!(!ready(&f));
    assert_eq!(metric(&f, "airlock_policy_in_sync"), 0.0);
    assert!(
        f.bed.connects(addr::STRANGER_V4, PORT, ALLOWED),
        "no filter at all"
    );

    // A valid policy, enforced; then the agent stops (the filter stays) and comes
    // back to an invalid file.
    rename_policy(&f, &policy_text(&f, "office"));
    assert!(wait_until(RELOAD, || ready(&f)), "log:\n{}", agent.log());
    agent.stop(nix::sys::signal::Signal::SIGTERM);
    write_policy(&f, &policy_text(&f, "office, 203.0.113.7/24"));
    // Ready: the last good policy, pinned, is enforced on every interface.
    let agent = Agent::start(&f, &[], &policy_path(&f), &[]);
    assert_eq!(metric(&f, "airlock_ready"), 1.0);
    assert_eq!(metric(&f, "airlock_policy_in_sync"), 0.0);
    assert!(
        agent
            .log()
            .contains("the filter pinned before this agent started keeps enforcing"),
        "{}",
        agent.log()
    );
    let (human, json) = status(&f);
    assert_eq!(json["agent"]["ready"], true, "{json}");
    assert_eq!(json["agent"]["in_sync"], false, "{json}");
    assert!(human.contains("POLICY FILE REJECTED"), "{human}");
    assert!(f.kept_out(addr::STRANGER_V4));
    assert!(f.gets_in(addr::OFFICE_V4));
}

/// `airlock <args>` in the server namespace, killed if it has not ended within
/// 5 s: `(exit code, stderr)`, or `None` if it had to be killed (it blocked).
fn bounded(f: &Fixture, args: &[&str]) -> Option<(i32, String)> {
    use std::process::Stdio;
    let stderr = f.dir.path().join("bounded.err");
    let mut child = f
        .bed
        .server
        .command(airlock_integration::cli::airlock_bin())
        .args(args)
        .env("AIRLOCK_PIN_ROOT", f.bed.bpffs.path())
        .env_remove("SSH_CONNECTION")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("start airlock");
    let ended = wait_until(Duration::from_secs(5), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    let code = child.wait().expect("wait").code().unwrap_or(-1);
    Some((code, fs::read_to_string(&stderr).unwrap_or_default()))
}

/// A policy path that is a FIFO (a path a local user controls, pointing at one):
/// the CLI and the agent refuse it at once, naming the file, instead of blocking
/// for ever in open(2) waiting for a writer; the agent keeps serving and says
/// nothing is enforced.
#[test]
fn a_policy_file_that_is_a_fifo_is_refused_at_once_not_waited_on() {
    let f = Fixture::new("afi");
    let fifo = f.dir.path().join("policy.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let path = fifo.to_str().expect("utf-8");
    for verb in ["validate", "apply"] {
        let Some((code, stderr)) = bounded(&f, &[verb, "-f", path]) else {
            panic!("`airlock {verb} -f FIFO` blocked");
        };
        assert_eq!(code, 2, "{verb}: {stderr}");
        assert!(
            stderr.contains(path)
                && stderr.contains("FIFO")
                && stderr.contains("not a regular file"),
            "{verb}: {stderr}"
        );
    }
    assert_eq!(f.status_json()["interfaces"], serde_json::json!([]));

    let agent = Agent::spawn(&f, &[], &fifo, &[]);
    assert!(
        wait_until(RELOAD, || rejections(&agent) == 1),
        "log:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        log.contains("not a regular file") && log.contains(path),
        "{log}"
    );
    assert!(!ready(&f));
}
