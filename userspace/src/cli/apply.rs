//! `airlock apply`: validate, compile, then put the policy in force on every
//! interface or on none.

use std::{path::PathBuf, process::ExitCode};

use airlock::{
    interfaces,
    loader::PinRoot,
    pipeline,
    policy::{self, Mode, XdpMode},
    safety::confirm,
};

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
    /// How to attach the XDP program (overrides the policy's `xdp_mode`): auto
    /// (native, or generic where the driver has no native XDP), native or generic.
    #[arg(long, value_name = "MODE", value_parser = super::parse_xdp_mode)]
    xdp_mode: Option<XdpMode>,
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
    // The socket tables are read while the policy is (milliseconds each on a busy
    // host, and the compile does not need them).
    let facts = pipeline::EarlyFacts::start();
    // A re-apply parses only the imported lines that changed since the last
    // apply; the entries written meanwhile are finished when this returns.
    let _import_cache = (!args.dry_run).then(policy::import_cache::enable);
    let mut policy = policy::load(&args.policy)?;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "policy loaded");
    if let Some(mode) = args.mode {
        policy.mode = match mode {
            ModeArg::Enforce => Mode::Enforce,
            ModeArg::Monitor => Mode::Monitor,
        };
    }
    // An apply that filters nothing while saying it succeeded would be a lie.
    interfaces::check_globs_match(&args.ifaces)?;
    let options = pipeline::Options {
        iface_overrides: args.ifaces.clone(),
        force: args.force,
        dry_run: args.dry_run,
        confirm: args.confirm.map(Into::into),
        xdp_mode: args.xdp_mode,
        ..pipeline::Options::default()
    };
    // A dry run answers "would this apply go through?": the same checks refuse it
    // the same way (same message, same exit code), before any output that would
    // say it loads.
    let prepared = pipeline::prepare_with(&root, policy, &options, Some(facts))?;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "checks done");
    safe::print_expired(&prepared.plan.expired);
    let tunnels = airlock::tunnels::warn_uncovered(&prepared.plan.policy, &prepared.plan.ifaces);
    if args.dry_run {
        let plan = &prepared.plan;
        output::dry_run(
            &plan.policy,
            &plan.compiled,
            &plan.ifaces,
            &tunnels,
            args.output,
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    // Nothing reads the policy's networks any more (the compile, the checks,
    // the summary and the tunnel warning are done): the write reads the compiled
    // entries alone. They go now, not at exit, and the heap's free memory with
    // them (mimalloc keeps what the parse, the fold and these networks freed for
    // reuse), so the write's peak does not stack on them: at a million prefixes,
    // the first apply's peak RSS fell from 139-179 to 106-132 MiB.
    let mut prepared = prepared;
    release_networks(&mut prepared.plan.policy);
    // SAFETY: mi_collect only returns memory mimalloc holds free.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    let applied = prepared.commit()?;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "applied");
    if let Some(pending) = &applied.pending {
        let left = pending.deadline_unix.saturating_sub(confirm::now_unix());
        eprintln!(
            "PENDING CONFIRMATION on {}: run `airlock confirm` within {left}s, or this apply is rolled back (even if this shell is gone)",
            applied.plan.ifaces.join(", ")
        );
    }
    output::applied(
        &root,
        &applied.outcomes,
        &applied.plan.compiled,
        &tunnels,
        args.output,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Drops `policy`'s sets, and every group's references to them so that the
/// shared sets are freed; its rules keep their names and ports.
fn release_networks(policy: &mut policy::Policy) {
    policy.sets.clear();
    policy.management.sets.clear();
    policy.deny.sets.clear();
    for rule in &mut policy.rules {
        rule.from.sets.clear();
    }
}
