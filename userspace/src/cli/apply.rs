//! `airlock apply`: validate, compile, then put the policy in force on every
//! interface or on none.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use airlock::{
    compile::{self, Compiled},
    loader::{self, PinRoot, PolicySummary, RuleSummary},
    policy::{self, Mode, Policy},
};
use anyhow::Context as _;

use super::{OutputFormat, PinRootArg, interfaces, output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Policy file (YAML, version 1).
    #[arg(short = 'f', long = "file")]
    policy: PathBuf,
    /// Interface to filter (repeatable); overrides the policy's `interfaces`.
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
    output: OutputFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ModeArg {
    Enforce,
    Monitor,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut policy = policy::load(&args.policy)?;
    if let Some(mode) = args.mode {
        policy.mode = match mode {
            ModeArg::Enforce => Mode::Enforce,
            ModeArg::Monitor => Mode::Monitor,
        };
    }
    let compiled = compile::compile(&policy)?;
    let ifaces = interfaces::resolve(&policy, &args.ifaces)?;
    if args.dry_run {
        output::dry_run(&policy, &compiled, &ifaces, args.output)?;
        return Ok(ExitCode::SUCCESS);
    }
    interfaces::check_exist(&ifaces)?;
    let root = PinRoot::new(&args.pin_root.pin_root);
    let summary = summarize(&policy, &compiled, &args.policy);
    let mut done = Vec::new();
    for iface in &ifaces {
        match loader::apply(&root, iface, &compiled, summary.clone()) {
            Ok(outcome) => {
                tracing::debug!(
                    iface,
                    attached = outcome.attached,
                    mode = outcome.attach_mode.as_str(),
                    serial = outcome.serial,
                    "policy in force"
                );
                done.push(outcome);
            }
            Err(error) => {
                for outcome in done.iter().rev() {
                    if let Err(undo) = loader::undo(&root, outcome) {
                        tracing::error!(iface = outcome.iface, error = %undo, "could not undo apply");
                    }
                }
                return Err(error)
                    .with_context(|| format!("applying to {iface} (nothing changed)"));
            }
        }
    }
    output::applied(&done, &compiled, args.output)?;
    Ok(ExitCode::SUCCESS)
}

pub fn summarize(policy: &Policy, compiled: &Compiled, path: &std::path::Path) -> PolicySummary {
    let stats = compiled.stats();
    PolicySummary {
        policy_path: std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_owned())
            .display()
            .to_string(),
        applied_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        serial: 0,
        mode: policy.mode.name().to_owned(),
        default: policy.default.name().to_owned(),
        rules: policy
            .rules
            .iter()
            .map(|rule| RuleSummary {
                name: rule.name.clone(),
                ports: rule.ports.iter().map(ToString::to_string).collect(),
                from: rule.from.sets.iter().map(|s| s.name.clone()).collect(),
            })
            .collect(),
        prefixes_v4: stats.entries.v4,
        prefixes_v6: stats.entries.v6,
        attach_mode: String::new(),
    }
}
