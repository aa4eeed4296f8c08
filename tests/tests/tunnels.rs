//! Tunnel devices that would carry decapsulated packets past the filter: `apply`
//! (human and JSON output, and its log) and the agent name each one, its kind and
//! its outer port, and say how to cover it; no tunnel, a tunnel that is filtered
//! itself, or one whose outer port a rule covers, gives no warning. Real vxlan
//! devices in the test's own namespace. Needs root; fails (never skips) without it.

use std::{
    fs,
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use airlock_integration::{
    cli::{Run, airlock_bin},
    fixture::Fixture,
    netns::wait_until,
};

/// A policy for the veth interface, restricting 5432/tcp, plus `extra_rules`.
fn policy(f: &Fixture, extra_rules: &str) -> std::path::PathBuf {
    f.write(
        "policy.yaml",
        &format!(
            "version: 1\ninterfaces: [{}]\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [198.51.100.0/24]\n{extra_rules}",
            f.bed.server_if
        ),
    )
}

/// A vxlan device in the server namespace, up, decapsulating what arrives on the
/// veth at UDP `port`.
fn add_vxlan(f: &Fixture, name: &str, id: &str, port: u16) {
    let port = port.to_string();
    f.bed.server.ip(&[
        "link",
        "add",
        name,
        "type",
        "vxlan",
        "id",
        id,
        "dstport",
        &port,
        "local",
        "192.0.2.1",
        "dev",
        &f.bed.server_if,
    ]);
    f.bed.server.ip(&["link", "set", name, "up"]);
}

fn apply(f: &Fixture, policy: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["apply", "-f", policy.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    let run = f.airlock(&args);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    run
}

fn apply_json(f: &Fixture, policy: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = extra.to_vec();
    args.extend_from_slice(&["-o", "json"]);
    let run = apply(f, policy, &args);
    serde_json::from_str(&run.stdout).expect("apply JSON")
}

#[test]
fn apply_warns_about_a_vxlan_device_and_how_to_cover_it() {
    let f = Fixture::new("tun");
    let plain = policy(&f, "");

    // No tunnel: no warning.
    let run = apply(&f, &plain, &[]);
    assert!(!run.stdout.contains("warning"), "{}", run.stdout);
    assert!(!run.stderr.contains("decapsulated"), "{}", run.stderr);
    assert_eq!(
        apply_json(&f, &plain, &[])["tunnel_warnings"],
        serde_json::json!([])
    );

    add_vxlan(&f, "alvx0", "42", 4789);
    let run = apply(&f, &plain, &[]);
    let expected = "warning: vxlan device alvx0 delivers decapsulated packets that no filter sees, and the policy lets anyone send them (4789/udp under default: pass); add alvx0 to interfaces, or cover 4789/udp with a rule listing the tunnel's peers";
    assert!(run.stdout.contains(expected), "{}", run.stdout);
    assert!(
        run.stderr.contains("WARN") && run.stderr.contains("alvx0"),
        "no warning logged:\n{}",
        run.stderr
    );
    let json = apply_json(&f, &plain, &[]);
    assert_eq!(
        json["tunnel_warnings"],
        serde_json::json!([{
            "device": "alvx0",
            "kind": "vxlan",
            "outer": {"udp": 4789},
            "fix": "add alvx0 to interfaces, or cover 4789/udp with a rule listing the tunnel's peers",
        }]),
        "{json:#}"
    );
    // The dry run says it too.
    let run = f.airlock(&["apply", "-f", plain.to_str().expect("utf-8"), "--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains(expected), "{}", run.stdout);

    // The tunnel filtered itself: no warning.
    let both = ["--iface", &f.bed.server_if, "--iface", "alvx0"];
    let run = apply(&f, &plain, &both);
    assert!(!run.stdout.contains("warning"), "{}", run.stdout);
    assert_eq!(
        apply_json(&f, &plain, &both)["tunnel_warnings"],
        serde_json::json!([])
    );

    // Its outer port covered by a rule: no warning either.
    let covered = policy(
        &f,
        "  - name: overlay\n    ports: [4789/udp]\n    from: [192.0.2.0/24]\n",
    );
    let json = apply_json(&f, &covered, &[]);
    assert_eq!(json["tunnel_warnings"], serde_json::json!([]), "{json:#}");
}

/// The agent in the server namespace, its JSON log in a file; killed on drop.
struct Agent {
    child: Child,
    log: std::path::PathBuf,
}

impl Agent {
    fn start(f: &Fixture, policy: &Path) -> Self {
        let log = f.dir.path().join("agent.log");
        let child = f
            .bed
            .server
            .command(airlock_bin())
            .args(["agent", "-f"])
            .arg(policy)
            .arg("--pin-root")
            .arg(f.bed.bpffs.path())
            .arg("--state-dir")
            .arg(f.dir.path().join("state"))
            .args(["--metrics-addr", "127.0.0.1:9477"])
            .args(["--log-format", "json", "--reconcile-interval", "1"])
            .env_remove("SSH_CONNECTION")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start agent");
        Self { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's warnings about tunnel device `device`.
    fn tunnel_warnings(&self, device: &str) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|entry| entry["level"] == "WARN" && entry["device"] == device)
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_agent_warns_at_start_and_when_a_tunnel_appears() {
    let f = Fixture::new("tua");
    add_vxlan(&f, "alvx1", "43", 4789);
    let agent = Agent::start(&f, &policy(&f, ""));
    assert!(
        wait_until(Duration::from_secs(10), || !agent
            .tunnel_warnings("alvx1")
            .is_empty()),
        "no warning about alvx1 at start; log:\n{}",
        agent.log()
    );
    let warning = &agent.tunnel_warnings("alvx1")[0];
    assert_eq!(warning["kind"], "vxlan");
    assert_eq!(warning["outer"], "4789/udp");

    // A tunnel created later (reconcile, on the link event or the timer).
    add_vxlan(&f, "alvx2", "44", 8472);
    assert!(
        wait_until(Duration::from_secs(10), || !agent
            .tunnel_warnings("alvx2")
            .is_empty()),
        "no warning about alvx2 after it appeared; log:\n{}",
        agent.log()
    );
    assert!(
        agent.tunnel_warnings("alvx2")[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("8472/udp")
    );
    // Reconciles that find the same tunnels (one a second here) do not repeat it.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.tunnel_warnings("alvx1").len(), 1, "{}", agent.log());
    assert_eq!(agent.tunnel_warnings("alvx2").len(), 1, "{}", agent.log());
}
