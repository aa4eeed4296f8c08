//! Building, testing and the demo.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

pub fn cmd(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

pub fn output_of(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Every cargo run of the tasks builds with the same AIRLOCK_COMMIT (what
/// `airlock --version` names): one that differed would rebuild the binary.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(workspace_root());
    if let Some(commit) = commit_id() {
        command.env("AIRLOCK_COMMIT", commit);
    }
    command
}

/// The checked-out commit, `-dirty` if tracked files differ from it; `None` outside
/// a git work tree (a source tarball).
fn commit_id() -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(workspace_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let id = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])?;
    Some(if dirty.is_empty() {
        id
    } else {
        format!("{id}-dirty")
    })
}

/// The second build the upgrade tests take a filter over with (and back): the
/// same source with another map layout version (`--features layout-bump`), at
/// target/release/airlock-layout-bump. Built before the plain one, whose binary
/// cargo then puts back at target/release/airlock.
pub fn build_layout_bump() -> Result<PathBuf> {
    cmd(cargo().args([
        "build",
        "--release",
        "-p",
        "airlock",
        "--bin",
        "airlock",
        "--features",
        "airlock/layout-bump",
    ]))?;
    let release = workspace_root().join("target/release");
    let bumped = release.join(LAYOUT_BUMP_BIN);
    // A copy, not the file cargo may replace in place.
    let _ = std::fs::remove_file(&bumped);
    std::fs::copy(release.join("airlock"), &bumped)
        .with_context(|| format!("copying the layout-bump build to {}", bumped.display()))?;
    eprintln!("xtask: built {} (another map layout)", bumped.display());
    Ok(bumped)
}

/// Where [`build_layout_bump`] leaves its binary.
const LAYOUT_BUMP_BIN: &str = "airlock-layout-bump";
/// The variable the upgrade tests find it by (tests/src/upgrades.rs).
const LAYOUT_BUMP_ENV: &str = "AIRLOCK_BIN_LAYOUT_BUMP";

pub fn build_release() -> Result<()> {
    cmd(cargo().args([
        "build",
        "--release",
        "-p",
        "airlock",
        "-p",
        "airlock-integration",
        "-p",
        "airlock-bench",
        "--bins",
    ]))?;
    eprintln!(
        "xtask: built {}",
        workspace_root().join("target/release/airlock").display()
    );
    Ok(())
}

pub fn test(lint: bool, test_args: &[String]) -> Result<()> {
    if lint {
        cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
        // Every host crate, the root-only ones too; the eBPF crates cannot build for
        // the host target (clippy_ebpf lints them for their own).
        cmd(cargo()
            .args(["clippy", "--all-targets"])
            .args(HOST_CRATES)
            .args(["--", "-D", "warnings"]))?;
        clippy_ebpf()?;
    }
    if !crate::setup::is_root() {
        bail!(
            "the kernel and network tests need root (BPF, network namespaces); run as root, e.g. sudo -E cargo xtask test"
        );
    }
    // The tests drive the real binary, as a user would, and the real image.
    let bumped = build_layout_bump()?;
    build_release()?;
    crate::image::image(TEST_IMAGE)?;
    let airlock = workspace_root().join("target/release/airlock");
    // `airlock apply` keeps an import cache, in /var/cache/airlock unless told
    // otherwise: the tests' applies keep theirs in a directory of this run's,
    // removed after it, not on the host.
    let import_cache = tempfile::Builder::new()
        .prefix("airlock-test-cache-")
        .tempdir()
        .context("making the tests' import cache directory")?;
    let mut command = cargo();
    command
        .args(["test", "--release"])
        .args(HOST_CRATES)
        .env("AIRLOCK_BIN", &airlock)
        .env("AIRLOCK_CACHE_DIR", import_cache.path())
        .env(LAYOUT_BUMP_ENV, &bumped)
        .env("AIRLOCK_IMAGE", TEST_IMAGE);
    // Straight to cargo: `-- FILTER` filters, `-- --test FILE FILTER` picks a file,
    // `-- FILTER -- --nocapture` reaches the test harness.
    command.args(test_args);
    cmd(&mut command)
}

/// The image `tests/tests/container_image.rs` runs (not the release tag).
const TEST_IMAGE: &str = "localhost/airlock:test";

/// Every crate that builds for the host: the default members and the root-only
/// `tests` and `bench`, which a plain `cargo test` leaves out.
const HOST_CRATES: [&str; 5] = [
    "--workspace",
    "--exclude",
    "airlock-ebpf",
    "--exclude",
    "airlock-bench-ebpf",
];

pub fn demo() -> Result<()> {
    if !crate::setup::is_root() {
        bail!("the demo creates network namespaces and loads BPF: run it as root");
    }
    build_release()?;
    let root = workspace_root();
    cmd(Command::new(root.join("target/release/airlock-demo"))
        .env("AIRLOCK_BIN", root.join("target/release/airlock")))
}

/// `counts`: swaps, random kills, fuzz executions, interface churn cycles, takeovers,
/// agent reloads.
pub fn soak(frames: u64, seed: Option<&str>, only: &[String], counts: [u64; 6]) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("the soak run loads the XDP program into the kernel: run it as root");
    }
    let bumped = build_layout_bump()?;
    build_release()?;
    let mut command = Command::new(workspace_root().join("target/release/airlock-soak"));
    // The swaps and kills drive the binary under test, as the suite does; the
    // upgrades take its filters over with a second build and back.
    command
        .env(
            "AIRLOCK_BIN",
            workspace_root().join("target/release/airlock"),
        )
        .env(LAYOUT_BUMP_ENV, &bumped)
        .arg(frames.to_string());
    if let Some(seed) = seed {
        command.arg(seed);
    }
    for part in only {
        command.args(["--only", part]);
    }
    for (flag, count) in [
        "--swaps",
        "--kills",
        "--fuzz",
        "--churn",
        "--takeovers",
        "--reloads",
    ]
    .into_iter()
    .zip(counts)
    {
        command.arg(flag).arg(count.to_string());
    }
    cmd(&mut command)
}

/// Clippy on the XDP program, for the target it really builds for.
fn clippy_ebpf() -> Result<()> {
    cmd(nightly("cargo")
        .args(["clippy", "-p", "airlock-ebpf", "-p", "airlock-bench-ebpf"])
        .args(["--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"]))
}

/// A nightly tool through rustup. `+nightly` would not do: inside `cargo xtask`,
/// `$CARGO` and the PATH may name the stable toolchain's binaries, not rustup's proxies.
pub fn nightly(tool: &str) -> Command {
    let mut command = Command::new("rustup");
    command
        .current_dir(workspace_root())
        .args(["run", "nightly", tool]);
    command
}
