//! `airlock grace-record` (hidden): started by `apply` as it exits, or as it
//! begins and then told to go after its flips (see `airlock::pipeline`), it waits out
//! the RCU grace period that follows the apply's flips and records it in each
//! filter's maps, so the next apply can rewrite the retired copies without waiting
//! (see `loader::record_grace_periods`). Nothing depends on it finishing: without
//! a record, the next apply waits for itself.

use std::process::ExitCode;

use airlock::loader::{self, PinRoot};

use super::PinRootArg;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pin_root: PinRootArg,
    /// Started ahead of the apply's flips: wait for one byte on stdin, and record
    /// nothing if it ends without one (the apply did not get that far).
    #[arg(long, hide = true)]
    after_go: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = PinRoot::new(&args.pin_root.pin_root);
    if args.after_go {
        use std::io::Read as _;
        let mut go = [0u8; 1];
        if !matches!(std::io::stdin().read(&mut go), Ok(1)) {
            tracing::debug!("the apply did not flip: nothing to record");
            return Ok(ExitCode::SUCCESS);
        }
    }
    let recorded = loader::record_grace_periods(&root);
    tracing::debug!(recorded, "grace periods recorded");
    Ok(ExitCode::SUCCESS)
}
