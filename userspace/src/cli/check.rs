//! `airlock check`: the security self-check of the network namespace it runs in.
//! Gathers the facts (sockets, links, filters, the policy in force), has the
//! library judge them (airlock::check), probes each answer through the attached
//! programs, and prints a table or JSON; the exit code says whether any finding is
//! at or above `--fail-on`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use airlock::{
    check::{self, Exposure, Filter, Inputs, Report, Severity, Who},
    loader::PinRoot,
    policy::{self, Policy},
    sockets,
};
use anyhow::Context as _;
use serde_json::json;

use super::{OutputFormat, PinRootArg, UsageError, explain_live::same_policy, output, preflight};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The policy to judge reach by (default: the file the filters here were
    /// applied from, as recorded beside them).
    #[arg(short = 'f', long = "file")]
    policy: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value_t)]
    pub(super) output: OutputFormat,
    /// Exit 1 when a finding is at least this severe: info, low, medium, high or
    /// critical.
    #[arg(long, default_value = "low", value_parser = parse_severity)]
    fail_on: Severity,
    /// Built-in region data older than this is reported stale (e.g. 90days).
    #[arg(long, default_value = "90days", value_parser = humantime::parse_duration)]
    region_max_age: Duration,
    /// Judge by the model only: send no probe through the attached programs (each
    /// probe counts as one packet in `status`).
    #[arg(long)]
    no_probe: bool,
    #[command(flatten)]
    pin_root: PinRootArg,
}

fn parse_severity(value: &str) -> Result<Severity, String> {
    Severity::from_name(value)
        .ok_or_else(|| format!("{value:?} is not one of info, low, medium, high, critical"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = PinRoot::new(&args.pin_root.pin_root);
    preflight::kernel_access("check", &root)?;
    let links = check::facts::links().context("listing this namespace's interfaces")?;
    let filters = check::facts::filters_here(&root, &links)?;
    let (policy, differs_on) = policy_in_force(args.policy.as_deref(), &filters)?;
    let mut listeners = sockets::listeners().context("listing listening sockets (sock_diag)")?;
    match sockets::dnat::published() {
        Ok(published) => listeners.extend(published),
        Err(error) => tracing::warn!(
            %error,
            "ports published only by DNAT rules (Docker without its userland proxy) are not listed"
        ),
    }
    let inodes: Vec<u32> = listeners.iter().map(|l| l.inode).collect();
    let owners = sockets::owners::owners(&inodes);
    let mut report = check::assess(&Inputs {
        policy: policy.as_ref(),
        links: &links,
        filters: &filters,
        listeners: &listeners,
        owners: &owners,
        region_max_age: args.region_max_age,
        now: SystemTime::now(),
        differs_on: &differs_on,
    });
    if let (Some(policy), false) = (&policy, args.no_probe) {
        check::verify::verify(&mut report, policy, &filters);
    }
    let failed = report.worst().is_some_and(|w| w >= args.fail_on);
    if args.output == OutputFormat::Json {
        print_json(&report, &filters, policy.as_ref(), args.fail_on, failed)?;
    } else {
        print_human(&report, &filters, policy.as_ref());
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The policy to judge by, and the interfaces where it is not the one in force.
fn policy_in_force(
    given: Option<&Path>,
    filters: &[Filter],
) -> anyhow::Result<(Option<Policy>, Vec<String>)> {
    let policy = match given {
        Some(path) => policy::load(path)?,
        None => {
            let recorded: BTreeSet<&str> = filters
                .iter()
                .filter_map(|f| f.summary.as_ref())
                .map(|s| s.policy_path.as_str())
                .collect();
            let path = match recorded.iter().collect::<Vec<_>>()[..] {
                [] => return Ok((None, Vec::new())),
                [one] => *one,
                _ => {
                    return Err(UsageError(format!(
                        "the filters here enforce policies from different files ({}): name the one to judge by with -f",
                        recorded.into_iter().collect::<Vec<_>>().join(", ")
                    ))
                    .into());
                }
            };
            policy::load(Path::new(path)).with_context(|| {
                format!("reading the policy in force (applied from {path}); name it with -f")
            })?
        }
    };
    let differs = filters
        .iter()
        .filter(|f| f.summary.as_ref().is_none_or(|s| !same_policy(&policy, s)))
        .map(|f| f.iface.clone())
        .collect();
    Ok((Some(policy), differs))
}

fn print_json(
    report: &Report,
    filters: &[Filter],
    policy: Option<&Policy>,
    fail_on: Severity,
    failed: bool,
) -> anyhow::Result<()> {
    let counts: serde_json::Map<String, serde_json::Value> = Severity::ALL
        .iter()
        .map(|s| {
            let n = report.findings.iter().filter(|f| f.severity == *s).count();
            (s.name().to_owned(), n.into())
        })
        .collect();
    output::print_json(&json!({
        "policy": policy.map(|p| p.origin.display().to_string()),
        "filters": filters.iter().map(|f| json!({
            "iface": f.iface,
            "mode": f.mode.xdp_mode_name(),
            "policy_path": f.summary.as_ref().map(|s| s.policy_path.clone()),
            "serial": f.summary.as_ref().map(|s| s.serial),
        })).collect::<Vec<_>>(),
        "exposures": report.exposures,
        "findings": report.findings,
        "counts": counts,
        "fail_on": fail_on.name(),
        "failed": failed,
    }))
}

/// "office, airbyte-us (rule db)", "everyone (no rule covers it and default is pass)".
fn reach_text(e: &Exposure) -> String {
    match e.who {
        Who::Sets => format!("{} + management ({})", e.sets.join(", "), e.why),
        Who::Everyone => format!("EVERYONE ({})", e.why),
        Who::Management => format!("management only ({})", e.why),
        Who::Nobody => format!("nobody ({})", e.why),
    }
}

fn kernel_text(e: &Exposure) -> String {
    if e.probes.is_empty() {
        return "-".into();
    }
    e.probes
        .iter()
        .map(|p| match (p.kernel, p.agree) {
            (Some(k), true) => format!("{}: {k} from {}, agrees", p.iface, p.src),
            (Some(k), false) => format!(
                "{}: {k} from {}, DISAGREES (model: {})",
                p.iface, p.src, p.model
            ),
            (None, _) => format!(
                "{}: probe failed: {}",
                p.iface,
                p.error.as_deref().unwrap_or("?")
            ),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn print_human(report: &Report, filters: &[Filter], policy: Option<&Policy>) {
    let filtered: Vec<String> = filters
        .iter()
        .map(|f| format!("{} ({})", f.iface, f.mode.xdp_mode_name()))
        .collect();
    println!(
        "filters in this network namespace: {}",
        if filtered.is_empty() {
            "none".to_owned()
        } else {
            filtered.join(", ")
        }
    );
    if let Some(policy) = policy {
        println!("policy: {}", policy.origin.display());
    }
    println!();
    if report.exposures.is_empty() {
        println!("no socket listens on an address other hosts can reach");
    } else {
        println!(
            "{:<11} {:<6} {:<24} {:<16} REACHABLE BY / KERNEL",
            "PORT", "FAMILY", "ADDRESS", "PROCESS"
        );
        for e in &report.exposures {
            println!(
                "{:<11} {:<6} {:<24} {:<16} {}",
                format!("{}/{}", e.port, e.proto),
                e.family.name(),
                e.address,
                e.process.as_deref().unwrap_or("?"),
                reach_text(e)
            );
            if !e.probes.is_empty() {
                println!("{:<60} kernel: {}", "", kernel_text(e));
            }
        }
    }
    println!();
    if report.findings.is_empty() {
        println!("no findings");
        return;
    }
    println!("{:<9} {:<21} DETAIL", "SEVERITY", "FINDING");
    for f in &report.findings {
        println!(
            "{:<9} {:<21} {}",
            f.severity.name().to_uppercase(),
            f.kind.name(),
            f.message
        );
    }
}
