//! Network namespaces that cannot outlive the bench. `ip netns add` keeps a
//! namespace alive by bind-mounting it under /var/run/netns, and that mount stays
//! after the process that made it is gone: a bench stopped by Ctrl-C, a panic
//! with `panic = "abort"` or a SIGKILL would leave its namespaces (and their veth
//! pairs and XDP programs) behind, where drop guards and signal handlers cannot
//! reach. So the bench first moves into a mount namespace of its own, with a
//! private tmpfs on /var/run/netns: every namespace it creates is pinned there
//! only, the host's `ip netns list` never sees it, and when the last process of
//! the bench (it, or a child still running) ends, the kernel unmounts all of it
//! and frees the namespaces. The private bpffs mounts go the same way. The
//! namespaces' own `Drop` still deletes them in an orderly run.

use std::path::Path;

use anyhow::{Context as _, Result};
use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
};

/// Where `ip netns` pins named namespaces (iproute2's `NETNS_RUN_DIR`).
const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Enters a private mount namespace with its own /var/run/netns. Call first
/// thing in `main`: the kernel refuses a new mount namespace to a thread that
/// shares its filesystem context with others (EINVAL once any thread exists).
pub fn enter() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).context(
        "unshare(CLONE_NEWNS): a private mount namespace for the bench's network namespaces (call it before any thread starts)",
    )?;
    // Slave, not shared: mounts made here (the netns pins, the bpffs) never
    // propagate back to the host; the host's still show up here.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("making / a slave mount in the bench's mount namespace")?;
    std::fs::create_dir_all(NETNS_RUN_DIR).with_context(|| format!("creating {NETNS_RUN_DIR}"))?;
    mount(
        Some("tmpfs"),
        Path::new(NETNS_RUN_DIR),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m"),
    )
    .with_context(|| format!("mounting a private tmpfs on {NETNS_RUN_DIR}"))?;
    Ok(())
}
