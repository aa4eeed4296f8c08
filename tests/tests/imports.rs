//! `file:` imports through the real binary, as an operator (or the agent's
//! ConfigMap) would write them: a FIFO, a device, a file past the size limit, a
//! file that is not a range list, a binary file and an empty import each make
//! `airlock validate` fail promptly, exit 2, with an error naming the file, line and
//! field, and without echoing the file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_integration::cli::{Run, airlock_bin};

/// Longer than any of these takes; a hang (a FIFO waited on) fails the test.
const DEADLINE: Duration = Duration::from_secs(20);

/// `airlock validate -f <policy> [extra]`, killed (and the test failed) past the
/// deadline.
fn validate(policy: &Path, extra: &[&str]) -> Run {
    let mut child = Command::new(airlock_bin())
        .args(["validate", "-f"])
        .arg(policy)
        .args(extra)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running airlock");
    let started = Instant::now();
    while child.try_wait().expect("waiting").is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("airlock validate still running after {DEADLINE:?}: it hung on the import");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output").into()
}

/// A policy importing `import` for the set of rule `db` (`file:` on line 5, the
/// rule's `from:` on line 9), in a fresh directory.
fn policy(import: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\ninterfaces: [eth0]\nsets:\n  prov:\n    file: {import}\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [prov]\n"
        ),
    )
    .expect("write policy");
    (dir, policy)
}

/// Checks the run failed as an invalid policy, with `expected` in the error, and
/// returns its stderr.
fn refused(run: &Run, expected: &str) -> String {
    assert_eq!(
        run.code, 2,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains(expected),
        "expected {expected:?} in:\n{}",
        run.stderr
    );
    run.stderr.clone()
}

#[test]
fn a_fifo_import_fails_promptly() {
    let (dir, policy) = policy("feed");
    let fifo = dir.path().join("feed");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let started = Instant::now();
    let run = validate(&policy, &[]);
    refused(
        &run,
        &format!(
            "{}:5:11: sets.prov.file: imported file {} is a FIFO (named pipe), not a regular file",
            policy.display(),
            fifo.display()
        ),
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_device_import_fails_promptly() {
    for device in ["/dev/zero", "/dev/urandom"] {
        let (_dir, policy) = policy(device);
        let run = validate(&policy, &[]);
        refused(
            &run,
            &format!(
                "sets.prov.file: imported file {device} is a character device, not a regular file"
            ),
        );
    }
}

#[test]
fn an_import_over_the_size_limit_fails_before_it_is_read() {
    let (dir, policy) = policy("big.txt");
    // Sparse: just over the default 256 MiB, costing no disk.
    let big = std::fs::File::create(dir.path().join("big.txt")).expect("create");
    big.set_len((256 << 20) + 1).expect("set_len");
    let started = Instant::now();
    let run = validate(&policy, &[]);
    refused(
        &run,
        "is 256.0 MiB (268435457 bytes), more than max_size (256 MiB",
    );
    refused(&run, "raise the set's max_size");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_file_that_is_not_a_range_list_gets_bounded_errors_without_its_content() {
    // The policy in a subdirectory, naming a file beside it with `../`: a path
    // outside the policy's directory is read like any other (the policy's author
    // chooses), but what it holds is not repeated.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
    let policy = dir.path().join("etc/policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\ninterfaces: [eth0]\nsets:\n  prov:\n    file: ../secrets.conf\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [prov]\n",
    )
    .expect("write policy");
    let secrets = dir.path().join("etc/../secrets.conf");
    let mut text = String::new();
    for i in 0..50_000 {
        text.push_str(&format!("api_key_{i} = \"sk-live-SECRETSECRET{i:06}\"\n"));
    }
    std::fs::write(&secrets, &text).expect("write");
    for output in [&[][..], &["-o", "json"][..]] {
        let run = validate(&policy, output);
        assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(!all.contains("SECRET"), "{all}");
        assert!(!all.contains("api_key"), "{all}");
        assert!(all.len() < 8192, "{} bytes of errors:\n{all}", all.len());
        assert!(
            all.contains("stopped after 10 problems in this file"),
            "{all}"
        );
    }
    let run = validate(&policy, &[]);
    refused(
        &run,
        &format!(
            "{}:1:11: sets.prov.file: more than one word on the line: one CIDR or address per line",
            secrets.display()
        ),
    );
    let json: serde_json::Value =
        serde_json::from_str(&validate(&policy, &["-o", "json"]).stdout).expect("json output");
    let diagnostics = json["diagnostics"].as_array().expect("diagnostics");
    assert_eq!(diagnostics.len(), 11, "{json:#}");
    assert_eq!(diagnostics[0]["line"], 1);
    assert_eq!(diagnostics[0]["field"], "sets.prov.file");
    assert_eq!(diagnostics[0]["value"], serde_json::Value::Null);
}

#[test]
fn a_binary_import_is_one_error() {
    let (dir, policy) = policy("blob.bin");
    let mut blob = Vec::with_capacity(1 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while blob.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        blob.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(dir.path().join("blob.bin"), &blob).expect("write");
    let run = validate(&policy, &[]);
    let stderr = refused(&run, "not a text file: this byte is not UTF-8");
    assert!(stderr.len() < 1024, "{stderr}");
}

#[test]
fn an_empty_import_is_an_error_naming_rule_and_import() {
    let (dir, policy) = policy("ranges.txt");
    std::fs::write(dir.path().join("ranges.txt"), "# downloaded ranges\n").expect("write");
    let run = validate(&policy, &[]);
    refused(
        &run,
        &format!(
            "{}:9:11: rules[0].from: rule \"db\" would allow no source: set \"prov\" imports \"ranges.txt\" (line 5), which holds no address",
            policy.display()
        ),
    );
    // The same list with a range in it is valid.
    std::fs::write(
        dir.path().join("ranges.txt"),
        "# downloaded ranges\n192.0.2.0/24\n",
    )
    .expect("write");
    let run = validate(&policy, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}
