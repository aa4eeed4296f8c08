//! `airlock apply`: validate, compile, then put the policy in force on every
//! interface or on none.

use std::{path::PathBuf, process::ExitCode};

use airlock::{
    compile,
    loader::{self, PinRoot, PolicySummary},
    policy::{self, Mode},
    safety::lockout::Facts,
};

use airlock::interfaces;

use super::{OutputFormat, PinRootArg, agent_guard, output, preflight, safe};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Policy file (YAML, version 1).
    #[arg(short = 'f', long = "file")]
    policy: PathBuf,
    /// Interface name or glob (e.g. `eth*`) to filter (repeatable); overrides the
    /// policy's `interfaces`, which may then be left out. A glob must match.
    #[arg(long = "iface")]
    ifaces: Vec<String>,
    /// Override the policy's mode.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Print what would be loaded and touch nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    pin_root: PinRootArg,
    #[arg(short, long, value_enum, default_value_t)]
    pub(super) output: OutputFormat,
    /// Apply even if the policy would cut your SSH session, the default gateway or
    /// neighbour discovery (the anti-lockout check refuses it otherwise), or while an
    /// agent manages the pin root (it will put its own policy back).
    #[arg(long)]
    force: bool,
    /// Roll back to the previous policy (or remove the filter if there was none)
    /// unless `airlock confirm` is run within this time, e.g. 2m or 5m (10s to 24h).
    /// The rollback happens even if this process dies.
    #[arg(long, value_name = "DURATION", value_parser = safe::parse_confirm_window)]
    confirm: Option<humantime::Duration>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ModeArg {
    Enforce,
    Monitor,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = PinRoot::new(&args.pin_root.pin_root);
    if !args.dry_run {
        preflight::kernel_access("apply", &root)?;
        agent_guard::check(agent_guard::Guarded::Apply, &root, args.force)?;
    }
    let started = std::time::Instant::now();
    let mut policy = policy::load(&args.policy)?;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "policy loaded");
    if let Some(mode) = args.mode {
        policy.mode = match mode {
            ModeArg::Enforce => Mode::Enforce,
            ModeArg::Monitor => Mode::Monitor,
        };
    }
    let ifaces = interfaces::resolve_all_matching(&policy, &args.ifaces)?;
    // A plain apply takes the writer lock before compiling, and the grace period
    // its swap must wait out then passes while it compiles (see
    // `WriterLock::acquire_early`). Expired confirmations are rolled back first
    // (that takes the lock too).
    let writer = if args.dry_run || args.confirm.is_some() {
        None
    } else {
        safe::finish_expired(&root);
        Some(loader::WriterLock::acquire_early(&root, &ifaces)?)
    };
    // The host facts the anti-lockout check needs (reading the socket tables is
    // milliseconds on a busy host) are gathered while the policy compiles.
    let (compiled, facts) =
        airlock::parallel::join(|| compile::compile(&policy), Facts::from_system);
    let compiled = compiled?;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "policy compiled");
    if args.dry_run {
        // A dry run answers "would this apply go through?": the lockout check
        // refuses it the same way (same message, same exit code), before any
        // output that would say it loads.
        safe::check_lockout(&policy, &facts, &ifaces, args.force)?;
        output::dry_run(&policy, &compiled, &ifaces, args.output)?;
        return Ok(ExitCode::SUCCESS);
    }
    interfaces::check_exist(&ifaces)?;
    safe::check_lockout(&policy, &facts, &ifaces, args.force)?;
    if writer.is_none() {
        safe::finish_expired(&root);
    }
    let summary = PolicySummary::describe(&policy, &compiled, &args.policy);
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "checks done");
    let done = match args.confirm {
        Some(within) => safe::apply_confirmed(&root, &ifaces, &compiled, &summary, *within)?,
        None => {
            let writer = match writer {
                Some(writer) => writer,
                None => loader::WriterLock::acquire(&root)?,
            };
            airlock::safety::confirm::check_no_pending(&root, &ifaces)?;
            loader::apply_all(&writer, &root, &ifaces, &compiled, &summary)?
        }
    };
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "applied");
    output::applied(&root, &done, &compiled, args.output)?;
    // The grace period after these flips passes after this process exits, and the
    // next apply finds it on record instead of waiting for one itself.
    if let Err(error) = super::grace_record::start(&root) {
        tracing::debug!(%error, "grace-record not started; the next apply waits");
    }
    Ok(ExitCode::SUCCESS)
}
