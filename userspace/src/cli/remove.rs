//! `airlock remove`: detach and unpin.

use std::process::ExitCode;

use airlock::loader;
use serde_json::json;

use super::{FilterArgs, OutputFormat, UsageError, agent_guard, output, preflight};

#[derive(clap::Args, Debug)]
#[command(
    mut_arg("ifaces", |a| a.help("Interface to remove the filter from (repeatable)")),
    mut_arg("all", |a| a.help("Remove every Airlock filter under the pin root")),
)]
pub struct Args {
    #[command(flatten)]
    filters: FilterArgs,
    /// Remove even while an agent manages the pin root (it will put its filters back).
    #[arg(long)]
    force: bool,
    #[arg(short, long, value_enum, default_value_t)]
    pub(super) output: OutputFormat,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = args.filters.pin_root.root();
    preflight::kernel_access("remove", &root)?;
    agent_guard::check(agent_guard::Guarded::Remove, &root, args.force)?;
    if !args.filters.all && args.filters.ifaces.is_empty() {
        return Err(UsageError("say which filters to remove: --iface IF or --all".into()).into());
    }
    // The writer lock an apply, a rollback and the agent take: a remove waits for
    // the one in progress (as an apply does) rather than unpinning under it. With
    // nothing pinned there is nothing to wait for (and taking the lock would mount a
    // bpffs to keep it in).
    let writer = if root.interfaces()?.is_empty() {
        None
    } else {
        Some(loader::WriterLock::acquire(&root)?)
    };
    let ifaces = if args.filters.all {
        root.interfaces()?
    } else {
        args.filters.ifaces
    };
    let json = args.output == OutputFormat::Json;
    for iface in &ifaces {
        match &writer {
            Some(writer) => loader::remove(writer, &root, iface)?,
            None => return Err(loader::LoaderError::NotInstalled(iface.clone()).into()),
        }
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
