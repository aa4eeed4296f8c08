//! `airlock explain --live`: the reference model's verdict beside the attached
//! kernel program's, for the same synthetic packet (BPF_PROG_TEST_RUN).

use std::{net::IpAddr, process::ExitCode};

use airlock::{
    compile,
    loader::{PinRoot, PolicyMaps, PolicySummary},
    policy::Policy,
    probe,
    reference::{L4, Verdict},
};
use serde_json::json;

use super::{OutputFormat, UsageError, output};

pub struct Live<'a> {
    pub policy: &'a Policy,
    pub src: IpAddr,
    pub l4: L4,
    pub verdict: &'a Verdict,
    pub rule: Option<String>,
    pub iface: Option<String>,
    pub root: PinRoot,
    pub output: OutputFormat,
}

fn pick_iface(root: &PinRoot, iface: Option<String>) -> anyhow::Result<String> {
    if let Some(iface) = iface {
        return Ok(iface);
    }
    let pinned = root.interfaces()?;
    match &pinned[..] {
        [one] => Ok(one.clone()),
        [] => Err(UsageError(format!(
            "--live: no Airlock filter is pinned under {}",
            root.path().display()
        ))
        .into()),
        many => Err(UsageError(format!(
            "--live: filters are pinned on {}; say which with --iface",
            many.join(", ")
        ))
        .into()),
    }
}

/// Whether `policy` is what the summary in force describes (ignoring when and from
/// which path it was applied).
pub(super) fn same_policy(policy: &Policy, in_force: &PolicySummary) -> bool {
    let Ok(compiled) = compile::compile(policy) else {
        return false;
    };
    let mine = PolicySummary::describe(policy, &compiled, &policy.origin);
    (
        &mine.mode,
        &mine.default,
        &mine.rules,
        mine.prefixes_v4,
        mine.prefixes_v6,
    ) == (
        &in_force.mode,
        &in_force.default,
        &in_force.rules,
        in_force.prefixes_v4,
        in_force.prefixes_v6,
    )
}

pub fn run(live: Live<'_>) -> anyhow::Result<ExitCode> {
    let iface = pick_iface(&live.root, live.iface)?;
    let dir = live.root.interface_dir(&iface);
    if !dir.exists() {
        return Err(UsageError(format!(
            "--live: no Airlock filter is pinned for {iface} under {}",
            live.root.path().display()
        ))
        .into());
    }
    let in_force = PolicyMaps::open_pinned(&dir)?.active_summary()?;
    let frame = probe::frame(live.src, &live.l4);
    let kernel = probe::run_pinned(&dir, &frame)?;
    let reference = live.verdict;
    let agree =
        kernel.pass == reference.pass && kernel.reason.is_none_or(|r| r == reference.reason);
    let note = match &in_force {
        Some(s) if !same_policy(live.policy, s) => Some(format!(
            "the policy in force on {iface} is apply #{} of {}, not {}: a disagreement may only mean they differ",
            s.serial,
            s.policy_path,
            live.policy.origin.display()
        )),
        None => Some(format!("no policy recorded on {iface}")),
        _ => None,
    };
    if live.output == OutputFormat::Json {
        output::print_json(&json!({
            "src": live.src.to_string(),
            "packet": output::packet_json(&live.l4),
            "iface": iface,
            "reference": {
                "verdict": if reference.pass { "pass" } else { "drop" },
                "reason": reference.reason.name(),
                "rule": live.rule,
                "set": reference.set,
            },
            "kernel": {
                "verdict": if kernel.pass { "pass" } else { "drop" },
                "action": probe::action_name(kernel.action),
                "reason": kernel.reason.map(|r| r.name()),
                "attempts": kernel.attempts,
            },
            "agree": agree,
            "note": note,
        }))?;
    } else {
        let word = |pass: bool| if pass { "PASS" } else { "DROP" };
        let mut because = vec![format!("reason {}", reference.reason.name())];
        if let Some(rule) = &live.rule {
            because.push(format!("rule {rule}"));
        }
        if let Some(set) = &reference.set {
            because.push(format!("set {set}"));
        }
        println!(
            "reference: {}: {} ({})",
            word(reference.pass),
            live.src,
            because.join(", ")
        );
        println!(
            "kernel:    {}: {} ({}, reason {}) on {iface}",
            word(kernel.pass),
            live.src,
            probe::action_name(kernel.action),
            kernel
                .reason
                .map_or("unknown: other traffic moved the counters too", |r| r
                    .name())
        );
        if let Some(note) = &note {
            println!("note: {note}");
        }
        if agree {
            println!("kernel and reference model agree");
        }
    }
    if !agree {
        eprintln!(
            "!!! DISAGREEMENT: the kernel program on {iface} and the reference model decide this packet differently !!!"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
