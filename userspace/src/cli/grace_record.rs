//! `airlock grace-record` (hidden): started by `apply` as it exits (see
//! `airlock::pipeline`), it waits out
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
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = PinRoot::new(&args.pin_root.pin_root);
    let recorded = loader::record_grace_periods(&root);
    tracing::debug!(recorded, "grace periods recorded");
    Ok(ExitCode::SUCCESS)
}
