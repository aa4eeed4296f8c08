//! `cargo xtask image`: the agent's container image, built from this machine's own
//! files, no registry needed: the release binary the tests drive, on a root
//! filesystem unpacked from Debian packages (the C library it links against, and the
//! shell, `grep` and `mount` the Helm chart's init container uses to mount bpffs).
//! The image definition is `deploy/container/Containerfile`; this task makes its
//! build context (`target/image/context/`) and runs `podman build`.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::run::{cargo, cmd, output_of, workspace_root};

/// The image's name when `--tag` is not given.
pub const DEFAULT_TAG: &str = concat!("localhost/airlock:", env!("CARGO_PKG_VERSION"));

/// The root filesystem: the binary's libraries (glibc, libgcc_s), and `/bin/sh`,
/// `grep` and `mount` with theirs, for the init container. Nothing else: no package
/// manager, no coreutils.
const PACKAGES: [&str; 10] = [
    "libc6",
    "libgcc-s1",
    "dash",
    "grep",
    "libpcre2-8-0",
    "mount",
    "libmount1",
    "libblkid1",
    "libselinux1",
    "libsmartcols1",
];

/// What `podman run` needs on this kind of machine, harmless elsewhere: runc, since
/// crun refuses hosts with cgroup v1 and v2 mounted side by side; and explicit
/// limits, since podman's default `nofile`/`nproc` exceed the hard limits some
/// hosts (and CI sandboxes) give root. `tests/tests/container_image.rs` runs the
/// image with the same flags.
pub const RUN_FLAGS: [&str; 6] = [
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
];

pub fn image(tag: &str) -> Result<()> {
    crate::setup::ensure_tools(&[("podman", "podman"), ("runc", "runc")])?;
    cmd(cargo().args(["build", "--release", "-p", "airlock", "--bin", "airlock"]))?;
    let root = workspace_root();
    let work = root.join("target/image");
    let debs = work.join("debs");
    let context = work.join("context");
    fs::create_dir_all(&debs)?;
    download(&debs)?;
    if context.exists() {
        fs::remove_dir_all(&context).context("clearing the old build context")?;
    }
    let rootfs = context.join("rootfs");
    fs::create_dir_all(&rootfs)?;
    unpack(&debs, &rootfs)?;
    fs::copy(root.join("target/release/airlock"), context.join("airlock"))
        .context("copying target/release/airlock into the build context")?;
    cmd(Command::new("podman")
        .args(["build", "--quiet", "-f"])
        .arg(root.join("deploy/container/Containerfile"))
        .args(["-t", tag])
        .arg(&context))?;
    let size =
        output_of(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", tag]))?;
    let size: u64 = size.trim().parse().context("image size")?;
    // The binary must run on the image's own C library, not only on the host's.
    let version = output_of(
        Command::new("podman")
            .args(["run", "--rm"])
            .args(RUN_FLAGS)
            .args([tag, "--version"]),
    )?;
    eprintln!(
        "xtask: built {tag}: {:.1} MiB; in the image: {}",
        size as f64 / (1024.0 * 1024.0),
        version.lines().next().unwrap_or_default()
    );
    Ok(())
}

/// The packages' `.deb` files, from this machine's apt sources (kept for the next
/// build; an index update only when a download fails, as on a fresh machine).
fn download(debs: &Path) -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|package| !has_deb(debs, package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let get = || {
        Command::new("apt-get")
            .current_dir(debs)
            .args(["download", "-qq"])
            .args(&missing)
            .status()
    };
    if !get().context("running apt-get download")?.success() {
        cmd(Command::new("apt-get").args(["update", "-qq"]))?;
        if !get()?.success() {
            bail!("apt-get download {} failed", missing.join(" "));
        }
    }
    Ok(())
}

fn has_deb(debs: &Path, package: &str) -> bool {
    fs::read_dir(debs).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
    })
}

/// Unpacks every package into `rootfs` (without running maintainer scripts) and
/// drops documentation.
fn unpack(debs: &Path, rootfs: &Path) -> Result<()> {
    for package in PACKAGES {
        let deb = fs::read_dir(debs)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")))
            })
            .with_context(|| format!("no .deb for {package}"))?;
        cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(rootfs))?;
    }
    // Debian's dash ships /bin/sh itself; older ones made it in a maintainer script.
    let sh = rootfs.join("bin/sh");
    if sh.symlink_metadata().is_err() {
        std::os::unix::fs::symlink("dash", &sh).context("linking /bin/sh")?;
    }
    for dir in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
    ] {
        let path = rootfs.join(dir);
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}
