//! The container image (`cargo xtask image`, deploy/container/Containerfile) run as
//! the DaemonSet runs it (deploy/kubernetes/30-daemonset.yaml): the init container,
//! privileged, mounts bpffs on the "node" with bidirectional propagation; the agent,
//! with only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, a read-only root filesystem and
//! no_new_privs, on the node's network (here: the server namespace of a test bed),
//! enforces a policy mounted like a ConfigMap and picks up a swap of it.
//!
//! `cargo xtask test` builds the image and names it in `AIRLOCK_IMAGE`.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use airlock_integration::{
    fixture::{Fixture, PORT},
    netns::{addr, wait_until},
};
use serde_json::Value;

/// As `xtask/src/image.rs` runs the image: runc (crun refuses hosts with cgroup v1
/// and v2 side by side) and limits within the hard limits some hosts give root.
const RUN_FLAGS: [&str; 6] = [
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
];

fn image() -> String {
    std::env::var("AIRLOCK_IMAGE").unwrap_or_else(|_| {
        panic!(
            "AIRLOCK_IMAGE is not set: run the tests with `cargo xtask test`, which builds the \
             image, or build it with `cargo xtask image` and set AIRLOCK_IMAGE=localhost/airlock:0.1.0"
        )
    })
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("running podman (cargo xtask image installs it)")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The rendered DaemonSet, for the init script and the agent's arguments.
fn daemonset() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/30-daemonset.yaml");
    serde_norway::from_str(&fs::read_to_string(path).expect("30-daemonset.yaml"))
        .expect("DaemonSet YAML")
}

/// A directory the init container's bpffs mount propagates back out of: a shared
/// bind mount of itself, as a node's /sys/fs/bpf is. Unmounted (bpffs, then the
/// bind) on drop, which releases the pins and with them the filters.
struct NodeBpffs {
    dir: tempfile::TempDir,
}

impl NodeBpffs {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("airlock-node-bpffs-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().to_str().expect("utf-8").to_owned();
        for args in [
            ["--bind", &path, &path].as_slice(),
            ["--make-shared", &path].as_slice(),
        ] {
            let status = Command::new("mount").args(args).status().expect("mount");
            assert!(status.success(), "mount {args:?}");
        }
        Self { dir }
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().expect("utf-8")
    }

    fn is_bpffs(&self) -> bool {
        fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(self.path()) && l.starts_with("bpf "))
        })
    }
}

impl Drop for NodeBpffs {
    fn drop(&mut self) {
        // The bpffs the init container mounted, then the bind under it.
        while fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(self.path()))
        }) {
            if !Command::new("umount")
                .arg(self.path())
                .status()
                .is_ok_and(|s| s.success())
            {
                break;
            }
        }
    }
}

/// A running container, removed on drop (also when the test fails).
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.0]);
    }
}

/// podman's default seccomp profile (4.3, Debian bookworm) lets bpf(2) and
/// perf_event_open(2) through only with CAP_SYS_ADMIN; containerd's and CRI-O's,
/// which a DaemonSet's `RuntimeDefault` means, also with CAP_BPF and CAP_PERFMON.
/// This is podman's profile with those two rules added, so the agent runs confined
/// as on a node, not unconfined.
fn runtime_default_profile(dir: &Path) -> PathBuf {
    let mut profile: Value = serde_json::from_str(
        &fs::read_to_string("/usr/share/containers/seccomp.json")
            .expect("podman's seccomp profile, /usr/share/containers/seccomp.json"),
    )
    .expect("seccomp JSON");
    let rules = profile["syscalls"].as_array_mut().expect("syscalls");
    // The profile's rule refusing them without CAP_SYS_ADMIN would contradict ours
    // (one action per call): without it they fall to the default action, EPERM, when
    // ours does not apply.
    for rule in rules.iter_mut() {
        if rule["action"] != "SCMP_ACT_ALLOW"
            && let Some(names) = rule["names"].as_array_mut()
        {
            names.retain(|n| n != "bpf" && n != "perf_event_open");
        }
    }
    for (call, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        rules.push(serde_json::json!({
            "names": [call],
            "action": "SCMP_ACT_ALLOW",
            "includes": { "caps": [cap] },
        }));
    }
    let path = dir.join("seccomp.json");
    fs::write(&path, profile.to_string()).expect("write seccomp profile");
    path
}

/// Writes `policy.yaml` into a ConfigMap-like directory as the kubelet does: the
/// file in a timestamped directory, `..data` pointing at it, `policy.yaml` a symlink
/// through `..data`; a swap renames a new `..data` over the old one.
fn publish(dir: &Path, version: &str, policy: &str) {
    let data = dir.join(format!("..{version}"));
    fs::create_dir(&data).expect("ConfigMap version directory");
    fs::write(data.join("policy.yaml"), policy).expect("write policy");
    let tmp = dir.join("..data_tmp");
    symlink(format!("..{version}"), &tmp).expect("..data_tmp");
    fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    let link = dir.join("policy.yaml");
    if link.symlink_metadata().is_err() {
        symlink("..data/policy.yaml", link).expect("policy.yaml link");
    }
}

fn policy(iface: &str, from: &str) -> String {
    format!(
        "version: 1\ninterfaces: [{iface}]\ndefault: pass\nsets:\n  allowed: [{from}/32]\n\
         rules:\n  - name: db\n    ports: [{PORT}/tcp]\n    from: [allowed]\n"
    )
}

#[test]
fn the_image_run_as_the_daemonset_enforces_a_mounted_policy_and_picks_up_a_swap() {
    let image = image();
    let f = Fixture::new("img");
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    let node = NodeBpffs::new();

    // The init container, as the DaemonSet runs it.
    let init = &pod["initContainers"][0];
    let command: Vec<&str> = init["command"]
        .as_array()
        .expect("init command")
        .iter()
        .map(|v| v.as_str().expect("string"))
        .collect();
    assert_eq!(init["securityContext"]["privileged"], true);
    let bpffs_volume = format!("{}:/sys/fs/bpf:rshared", node.path());
    let mut args = vec!["run", "--rm", "--privileged", "--read-only"];
    args.extend(RUN_FLAGS);
    args.extend(["-v", &bpffs_volume, "--entrypoint", command[0], &image]);
    args.extend(&command[1..]);
    let out = podman(&args);
    assert!(
        out.status.success(),
        "the init container failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("mounted bpffs at /sys/fs/bpf"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        node.is_bpffs(),
        "the init container's bpffs did not reach the node"
    );

    // The agent: the DaemonSet's arguments, capabilities and mounts.
    let agent = &pod["containers"][0];
    let caps: Vec<String> = agent["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities")
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().expect("string")))
        .collect();
    assert_eq!(caps, ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
    let server_ip = addr::SERVER_V4[0];
    let agent_args: Vec<String> = agent["args"]
        .as_array()
        .expect("agent args")
        .iter()
        .map(|a| a.as_str().expect("string").replace("$(POD_IP)", server_ip))
        .collect();
    let scratch = tempfile::tempdir().expect("temp dir");
    let configmap = scratch.path().join("configmap");
    let state = scratch.path().join("state");
    fs::create_dir(&configmap).expect("configmap dir");
    fs::create_dir(&state).expect("state dir");
    publish(&configmap, "v1", &policy(&f.bed.server_if, addr::OFFICE_V4));
    let seccomp = format!(
        "seccomp={}",
        runtime_default_profile(scratch.path()).display()
    );
    let name = format!("airlock-image-test-{}", std::process::id());
    let netns = format!("ns:/run/netns/{}", f.bed.server.name());
    let volumes = [
        format!("{}:/sys/fs/bpf:rslave", node.path()),
        format!("{}:/run/airlock", state.display()),
        format!("{}:/etc/airlock:ro", configmap.display()),
    ];
    let cap_list = caps.join(",");
    let mut args = vec!["run", "--detach", "--name", &name, "--read-only"];
    args.extend(RUN_FLAGS);
    args.extend([
        "--network",
        &netns,
        "--cap-drop",
        "all",
        "--cap-add",
        &cap_list,
    ]);
    args.extend([
        "--security-opt",
        "no-new-privileges",
        "--security-opt",
        &seccomp,
    ]);
    for volume in &volumes {
        args.extend(["-v", volume]);
    }
    args.extend(["--tmpfs", "/tmp", "-e", "AIRLOCK_LOG=info", &image]);
    args.extend(agent_args.iter().map(String::as_str));
    let out = podman(&args);
    assert!(out.status.success(), "podman run: {}", text(&out.stderr));
    let container = Container(name);
    let logs = || {
        let out = podman(&["logs", &container.0]);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    };

    // The agent holds exactly the three capabilities, as the kernel sees it.
    let pid = text(&podman(&["inspect", "--format", "{{.State.Pid}}", &container.0]).stdout);
    let status = fs::read_to_string(format!("/proc/{}/status", pid.trim())).expect("agent status");
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff")
        .trim()
        .to_owned();
    // CAP_NET_ADMIN 12, CAP_PERFMON 38, CAP_BPF 39.
    assert_eq!(
        cap_eff,
        format!("{:016x}", (1u64 << 12) | (1 << 38) | (1 << 39))
    );

    assert!(
        wait_until(Duration::from_secs(60), || f.kept_out(addr::STRANGER_V4)
            && f.gets_in(addr::OFFICE_V4)),
        "the agent in the container did not enforce the mounted policy:\n{}",
        logs()
    );
    let ready = f
        .bed
        .server
        .spawn(move || std::net::TcpStream::connect((server_ip, 9477)).is_ok());
    assert!(
        ready.join().expect("metrics probe"),
        "metrics endpoint:\n{}",
        logs()
    );

    // A ConfigMap update: the kubelet swaps `..data`.
    publish(
        &configmap,
        "v2",
        &policy(&f.bed.server_if, addr::PARTNER_V4),
    );
    assert!(
        wait_until(Duration::from_secs(60), || f.kept_out(addr::OFFICE_V4)
            && f.gets_in(addr::PARTNER_V4)),
        "the agent in the container did not pick up the swapped policy:\n{}",
        logs()
    );
    assert!(f.kept_out(addr::STRANGER_V4));
}
