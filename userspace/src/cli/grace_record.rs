//! `airlock grace-record` (hidden): started by `apply` as it exits, it waits out
//! the RCU grace period that follows the apply's flips and records it in each
//! filter's maps, so the next apply can rewrite the retired copies without waiting
//! (see `loader::record_grace_periods`). Nothing depends on it finishing: without
//! a record, the next apply waits for itself.

use std::{
    io,
    process::{Command, ExitCode, Stdio},
};

use airlock::loader::{self, PinRoot};

use super::PinRootArg;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pin_root: PinRootArg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = PinRoot::new(&args.pin_root.pin_root);
    let recorded = loader::record_grace_periods(&root);
    tracing::debug!(recorded, "grace periods recorded");
    Ok(ExitCode::SUCCESS)
}

/// Starts `airlock grace-record` for `root` (an absolute path), detached (a process
/// group of its own, stdio on /dev/null) and not waited for. Spawned through
/// `posix_spawn`, so without a `pre_exec` hook or a working directory to change to
/// (glibc before 2.29 cannot spawn with one): a fork would copy the page tables of
/// this process, which still holds the compiled policy. Nothing needs it to survive
/// a hangup of the session (unlike the confirm watchdog, in a session of its own).
pub fn start(root: &PinRoot) -> io::Result<()> {
    use std::os::unix::process::CommandExt as _;
    Command::new(std::env::current_exe()?)
        .arg("grace-record")
        .arg("--pin-root")
        .arg(root.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
}
