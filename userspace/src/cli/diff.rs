//! `airlock diff -f NEW`: what NEW would change against the policy in force, per
//! interface: mode, default, management and deny, rules (ports, `from` sets) and the
//! source prefixes each gains or loses (read back from the kernel's source tables).

use std::{path::PathBuf, process::ExitCode};

use airlock::{
    compile,
    diff::{self, GroupDiff, PolicyDiff, PrefixChanges, PrefixList, Side},
    interfaces,
    loader::{PinRoot, PolicyMaps, PolicySummary},
    pipeline, policy,
};
use serde_json::json;

use super::{OutputFormat, PinRootArg, output, preflight};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The new policy.
    #[arg(short = 'f', long = "file")]
    policy: PathBuf,
    /// Compare with the filter on this interface (repeatable; default: every pinned
    /// filter, or the policy's interfaces if none is pinned).
    #[arg(long = "iface")]
    ifaces: Vec<String>,
    /// List at most this many prefixes per family in each list.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    #[command(flatten)]
    pin_root: PinRootArg,
    #[arg(short, long, value_enum, default_value_t)]
    pub(super) output: OutputFormat,
    /// Exit 1 when NEW changes anything on some interface, 0 when it changes
    /// nothing (as `git diff --exit-code`); an invalid policy or bad usage still
    /// exits 2, and any other failure exits 3 instead of 1.
    #[arg(long)]
    exit_code: bool,
}

/// Marks a failure of `diff --exit-code`, whose exit code 1 means "changes".
#[derive(Debug, thiserror::Error)]
#[error("diff")]
pub struct DiffFailed;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let exit_code = args.exit_code;
    run_inner(args).map_err(|e| if exit_code { e.context(DiffFailed) } else { e })
}

fn run_inner(args: Args) -> anyhow::Result<ExitCode> {
    let root = PinRoot::new(&args.pin_root.pin_root);
    preflight::kernel_access("diff", &root)?;
    let policy = policy::load(&args.policy)?;
    let compiled = pipeline::compile(&policy)?;
    let new = Side {
        summary: PolicySummary::describe(&policy, &compiled, &args.policy),
        // The kernel's side is read back in canonical form: compare like with like.
        v4: compile::ranges::canonical(&compiled.v4),
        v6: compile::ranges::canonical(&compiled.v6),
    };
    let mut ifaces = args.ifaces.clone();
    if ifaces.is_empty() {
        ifaces = root.interfaces()?;
    }
    if ifaces.is_empty() {
        ifaces = interfaces::resolve(&policy, &[]).unwrap_or_default();
    }
    let mut results = Vec::new();
    for iface in &ifaces {
        let dir = root.interface_dir(iface);
        let old = if dir.exists() {
            let maps = PolicyMaps::open_pinned(&dir)?;
            match maps.active_summary()? {
                Some(summary) => {
                    let (v4, v6) = maps.active_prefixes()?;
                    Some(Side { summary, v4, v6 })
                }
                None => None,
            }
        } else {
            None
        };
        let d = diff::diff(old.as_ref(), &new, args.limit);
        results.push((iface.clone(), old.map(|o| o.summary), d));
    }
    let changed = results.iter().any(|(_, _, d)| d.changed);
    let outcome = if args.exit_code && changed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    if args.output == OutputFormat::Json {
        let list: Vec<_> = results
            .iter()
            .map(|(iface, in_force, d)| {
                json!({
                    "iface": iface,
                    "in_force": in_force.as_ref().map(|s| json!({
                        "policy_path": s.policy_path, "serial": s.serial,
                    })),
                    "diff": d,
                })
            })
            .collect();
        output::print_json(&json!({
            "policy": args.policy.display().to_string(),
            "interfaces": list,
        }))?;
        return Ok(outcome);
    }
    for (iface, in_force, d) in &results {
        match in_force {
            Some(s) => println!(
                "{iface}: {} against apply #{} of {}",
                args.policy.display(),
                s.serial,
                s.policy_path
            ),
            None => println!(
                "{iface}: no Airlock policy in force; {} would add everything below",
                args.policy.display()
            ),
        }
        print_human(d);
    }
    Ok(outcome)
}

fn list(prefix: &str, l: &PrefixList) -> Option<String> {
    if l.count == 0 {
        return None;
    }
    let shown: Vec<String> = l.shown.iter().map(|p| format!("{prefix}{p}")).collect();
    let more = l.count - l.shown.len();
    Some(if more > 0 {
        format!("{} (+{more} more)", shown.join(" "))
    } else {
        shown.join(" ")
    })
}

fn print_prefixes(indent: &str, p: &PrefixChanges) {
    let lines = [
        ("IPv4 sources added:  ", list("+", &p.added_v4)),
        ("IPv6 sources added:  ", list("+", &p.added_v6)),
        ("IPv4 sources removed:", list("-", &p.removed_v4)),
        ("IPv6 sources removed:", list("-", &p.removed_v6)),
    ];
    for (label, line) in lines {
        if let Some(line) = line {
            println!("{indent}{label} {line}");
        }
    }
}

fn signed(added: &[String], removed: &[String]) -> String {
    added
        .iter()
        .map(|a| format!("+{a}"))
        .chain(removed.iter().map(|r| format!("-{r}")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_group(name: &str, g: &GroupDiff) {
    if g.is_empty() {
        return;
    }
    println!("  {name}: {}", signed(&g.sets_added, &g.sets_removed));
    print_prefixes("    ", &g.prefixes);
}

fn print_human(d: &PolicyDiff) {
    if !d.changed {
        println!("  no changes");
        return;
    }
    if let Some(c) = &d.mode {
        println!("  mode: {} -> {}", c.from, c.to);
    }
    if let Some(c) = &d.default {
        println!("  default: {} -> {}", c.from, c.to);
    }
    print_group("management", &d.management);
    print_group("deny", &d.deny);
    for (mark, rules) in [
        ("+ rule", &d.rules_added),
        ("- rule", &d.rules_removed),
        ("~ rule", &d.rules_changed),
    ] {
        for r in rules {
            println!("  {mark} {}", r.name);
            let ports = signed(&r.ports_added, &r.ports_removed);
            if !ports.is_empty() {
                println!("      ports: {ports}");
            }
            let from = signed(&r.from_added, &r.from_removed);
            if !from.is_empty() {
                println!("      from:  {from}");
            }
            print_prefixes("      ", &r.prefixes);
        }
    }
}
