//! `airlock confirm`: keep a policy applied with `apply --confirm`; and the hidden
//! `airlock confirm-watchdog` that `apply --confirm` starts to roll back at the
//! deadline (see `airlock::safety::confirm`).

use std::process::ExitCode;

use airlock::{
    loader::PinRoot,
    safety::confirm::{self, Confirmed},
};

use super::{FilterArgs, OutputFormat, PinRootArg, UsageError, agent_guard, output, preflight};

#[derive(clap::Args, Debug)]
#[command(
    mut_arg("ifaces", |a| a.help("Confirm only this interface (repeatable)")),
    mut_arg("all", |a| a.help("Confirm every interface with a pending confirmation (the default)")),
)]
pub struct Args {
    #[command(flatten)]
    filters: FilterArgs,
    #[arg(short, long, value_enum, default_value_t)]
    pub(super) output: OutputFormat,
    /// Confirm even while an agent manages the pin root.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = args.filters.pin_root.root();
    preflight::kernel_access("confirm", &root)?;
    agent_guard::check(agent_guard::Guarded::Confirm, &root, args.force)?;
    let ifaces = if args.filters.all {
        Vec::new()
    } else {
        args.filters.ifaces
    };
    let results = confirm::confirm(&root, &ifaces)?;
    let kept = results
        .iter()
        .filter(|r| matches!(r, Confirmed::Kept { .. }))
        .count();
    if args.output == OutputFormat::Json {
        output::print_json(&serde_json::json!({ "results": results }))?;
    } else {
        for result in &results {
            match result {
                Confirmed::Kept { iface, serial } => {
                    println!("{iface}: apply #{serial} confirmed; it stays in force")
                }
                Confirmed::RolledBack { iface, serial, to } => println!(
                    "{iface}: too late: the deadline of apply #{serial} had passed; rolled back to {to}"
                ),
            }
        }
        if results.is_empty() {
            println!(
                "no confirmation pending{} (if one was, it has been rolled back: see `airlock status`)",
                if ifaces.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", ifaces.join(", "))
                }
            );
        }
    }
    // Nothing confirmed is a failure: the policy the caller meant to keep is not in force.
    Ok(if kept > 0 && kept == results.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(clap::Args, Debug)]
pub struct WatchdogArgs {
    #[command(flatten)]
    pin_root: PinRootArg,
    /// The apply to guard.
    #[arg(long)]
    token: u64,
    /// Unix time of the deadline, for the record: the deadline recorded with the
    /// policy (by the boot clock) is what counts.
    #[arg(long)]
    deadline: u64,
}

pub fn run_watchdog(args: WatchdogArgs) -> anyhow::Result<ExitCode> {
    if args.token == 0 {
        return Err(UsageError("--token must not be 0".into()).into());
    }
    let root = PinRoot::new(&args.pin_root.pin_root);
    tracing::debug!(
        token = args.token,
        deadline_unix = args.deadline,
        "confirm watchdog"
    );
    let rolled = confirm::watchdog(&root, args.token);
    Ok(if rolled.iter().all(|r| r.result.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
