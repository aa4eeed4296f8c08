//! Toolchain and machine set-up (docs/architecture.md, "Building the eBPF side", says why each step).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::run::{cmd, nightly, output_of};

pub fn setup() -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_packages()?;
    ensure_bpffs();
    crate::k8s_tools::ensure_k8s_tools()?;
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = output_of(nightly("rustc").args(["--print", "sysroot"]));
    match sysroot {
        Ok(s) => Ok(PathBuf::from(s.trim())),
        Err(_) => {
            eprintln!("xtask: installing the nightly toolchain");
            cmd(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
            let s = output_of(nightly("rustc").args(["--print", "sysroot"]))?;
            Ok(PathBuf::from(s.trim()))
        }
    }
}

/// The eBPF target has no prebuilt core library: it is built from source
/// (`-Z build-std=core`), which needs rust-src.
fn ensure_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to nightly");
    cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

/// bpf-linker must use the LLVM that rustc itself uses. No LLVM dev package of that
/// version exists here, but nightly ships its libLLVM; bpf-linker's build only needs
/// a prefix with `bin/llvm-config` and `lib/libLLVM.so`, so we make one that points
/// at nightly's library. The linker keeps an rpath to that prefix, so it lives in a
/// fixed place, and a stamp records which LLVM it was built for.
fn ensure_bpf_linker() -> Result<()> {
    let verbose = output_of(nightly("rustc").arg("-vV"))?;
    let llvm_version = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV printed no LLVM version")?
        .trim()
        .to_owned();
    let major = llvm_version
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    let prefix = cargo_home().join(format!("airlock-llvm-{major}"));
    let stamp = prefix.join("stamp");
    let linker = cargo_home().join("bin/bpf-linker");
    let want_stamp = format!("llvm {llvm_version}\n");
    if linker.exists()
        && fs::read_to_string(&stamp).is_ok_and(|s| s == want_stamp)
        && Command::new(&linker)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let libllvm = find_libllvm(&sysroot.join("lib"))?;
    fs::create_dir_all(prefix.join("bin"))?;
    fs::create_dir_all(prefix.join("lib"))?;
    // Under the plain name for the build, and every libLLVM file under its own name
    // (one is the soname) so bpf-linker also runs outside `rustup run`.
    let mut links = vec![(libllvm.clone(), prefix.join("lib/libLLVM.so"))];
    for entry in fs::read_dir(sysroot.join("lib"))? {
        let path = entry?.path();
        if let Some(name) = path
            .file_name()
            .filter(|n| n.to_string_lossy().starts_with("libLLVM"))
        {
            links.push((path.clone(), prefix.join("lib").join(name)));
        }
    }
    for (target, link) in links {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)?;
    }
    let config = prefix.join("bin/llvm-config");
    fs::write(&config, format!("#!/bin/sh\necho {llvm_version}\n"))?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&config, fs::Permissions::from_mode(0o755))?;
    eprintln!("xtask: building bpf-linker against nightly's LLVM {llvm_version} (about a minute)");
    cmd(nightly("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")])
        .arg("--root")
        .arg(cargo_home())
        .env("LLVM_PREFIX", &prefix))?;
    fs::write(&stamp, want_stamp)?;
    Ok(())
}

fn find_libllvm(lib: &Path) -> Result<PathBuf> {
    for entry in fs::read_dir(lib).with_context(|| format!("listing {}", lib.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("libLLVM") && name.contains(".so") {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM in {}; is the nightly toolchain complete?",
        lib.display()
    )
}

/// Tools the tests and demo shell out to, by Debian package: iproute2 for namespaces,
/// systemd-analyze for the unit tests, setpriv for running the agent with only the
/// unit's capabilities, nft for the DNAT rules `airlock check` reads, libfaketime
/// (with its `faketime` tool) for setting the wall clock of the processes under
/// test only (tests/src/faults/).
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("systemd-analyze", "systemd"),
    ("setpriv", "util-linux"),
    ("faketime", "faketime"),
];

fn ensure_packages() -> Result<()> {
    ensure_tools(PACKAGES)
}

fn on_path(tool: &str) -> bool {
    if tool.starts_with('/') {
        return Path::new(tool).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs, with apt-get, the Debian packages of those `(tool, package)` pairs whose
/// tool (a name on PATH, or an absolute path) is missing. Quick when nothing is.
pub fn ensure_tools(tools: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// `apt-get install` (after an index update: a fresh machine has none).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    eprintln!("xtask: installing {}", packages.join(" "));
    cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
    cmd(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The default pin root lives on /sys/fs/bpf, which is not mounted at boot here:
/// mounted root's alone (0700), as systemd mounts it. A failure only warns: builds
/// (e.g. in a container image) need no bpffs.
fn ensure_bpffs() {
    if !is_root() {
        eprintln!(
            "xtask: not root; skipping the bpffs mount (kernel tests and the demo need root)"
        );
        return;
    }
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return;
    }
    fs::create_dir_all("/sys/fs/bpf").ok();
    if let Err(error) =
        cmd(Command::new("mount").args(["-t", "bpf", "-o", "mode=0700", "bpf", "/sys/fs/bpf"]))
    {
        eprintln!("xtask: warning: could not mount bpffs at /sys/fs/bpf: {error:#}");
    }
}

pub fn is_root() -> bool {
    output_of(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}
