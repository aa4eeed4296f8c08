//! `airlock remove`: detach and unpin.

use std::process::ExitCode;

use airlock::loader::{self, PinRoot};
use serde_json::json;

use super::{OutputFormat, PinRootArg, UsageError, agent_guard, output, preflight};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Interface to remove the filter from (repeatable).
    #[arg(long = "iface", conflicts_with = "all")]
    ifaces: Vec<String>,
    /// Remove every Airlock filter under the pin root.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    pin_root: PinRootArg,
    /// Remove even while an agent manages the pin root (it will put its filters back).
    #[arg(long)]
    force: bool,
    #[arg(short, long, value_enum, default_value_t)]
    pub(super) output: OutputFormat,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = PinRoot::new(&args.pin_root.pin_root);
    preflight::kernel_access("remove", &root)?;
    agent_guard::check(agent_guard::Guarded::Remove, &root, args.force)?;
    let ifaces = if args.all {
        root.interfaces()?
    } else if args.ifaces.is_empty() {
        return Err(UsageError("say which filters to remove: --iface IF or --all".into()).into());
    } else {
        args.ifaces
    };
    let json = args.output == OutputFormat::Json;
    for iface in &ifaces {
        loader::remove(&root, iface)?;
        if !json {
            println!("{iface}: filter removed");
        }
    }
    if json {
        output::print_json(&json!({
            "pin_root": root.path().display().to_string(),
            "removed": ifaces,
        }))?;
    } else if ifaces.is_empty() {
        println!(
            "no Airlock filter is pinned under {}",
            root.path().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
