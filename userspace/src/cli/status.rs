//! `airlock status`: what is in force, read back from the kernel.

use std::{path::PathBuf, process::ExitCode};

use airlock::{
    agent::{self, AgentReport},
    loader::{self, LINK_PIN, PinRoot, PolicyMaps},
};
use airlock_common::{Counter, Reason};
use serde_json::{Value, json};

use super::{OutputFormat, PinRootArg, output, preflight, safe};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pin_root: PinRootArg,
    #[arg(short, long, value_enum, default_value_t)]
    pub(super) output: OutputFormat,
    /// The agent's `--state-dir`: while an agent manages the pin root, its own
    /// report (is the policy file what is enforced? its last rejection) is read there.
    #[arg(long, default_value = agent::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

fn counter_json(c: Counter) -> Value {
    json!({ "packets": c.packets, "bytes": c.bytes })
}

/// Everything `status` knows about one interface's filter, as JSON (the human
/// output is rendered from the same value, so the two never disagree).
fn interface_status(root: &PinRoot, iface: &str) -> anyhow::Result<Value> {
    let dir = root.interface_dir(iface);
    let link = loader::pinned_link_state(&dir.join(LINK_PIN), loader::LinkKind::Xdp);
    let current_index = loader::interface_index(iface);
    // The link's interface index is 0 once the interface is gone. An interface of
    // another network namespace cannot be looked up by name from here.
    let attachment = match (&link, current_index) {
        (Ok(l), Some(i)) if l.ifindex == i => "attached",
        (Ok(l), None) if l.ifindex != 0 => "attached_other_netns",
        _ => "detached",
    };
    let egress = loader::pinned_link_state(
        &dir.join(loader::EGRESS_LINK_PIN),
        loader::LinkKind::TcxEgress,
    );
    let egress_attached = matches!((&egress, current_index), (Ok(l), Some(i)) if l.ifindex == i)
        || matches!((&egress, current_index), (Ok(l), None) if l.ifindex != 0);
    // Read-only opens throughout: `status` changes nothing, and works on a
    // read-only bpffs (or a read-only bind mount of the pin root).
    let flows = loader::FlowTable::open_pinned_read_only(&dir)
        .and_then(|t| t.occupancy())
        .ok();
    let maps = PolicyMaps::open_pinned_read_only(&dir)?;
    // Everything below describes the copy in force when the counters were read,
    // even if a policy is applied meanwhile.
    let counters = maps.counters()?;
    let generation = counters.generation;
    let summary = maps.generation_summary(generation)?;
    if let Some(found) = loader::foreign_layout(&dir) {
        tracing::warn!(
            iface,
            found,
            ours = airlock_common::LAYOUT_VERSION,
            "this filter was pinned by an airlock with another map layout, whose policy summary this one cannot read; `airlock apply` takes it over without a moment unfiltered"
        );
    }
    let tables = maps
        .table_shapes(generation)?
        .map(|(v4, v6)| json!({ "ipv4": v4, "ipv6": v6 }));
    let reasons: serde_json::Map<String, Value> = Reason::ALL
        .iter()
        .map(|r| (r.name().to_owned(), counter_json(counters.reason(*r))))
        .collect();
    let rules: Vec<Value> = counters
        .rules
        .iter()
        .enumerate()
        .map(|(index, (allowed, refused))| {
            let rule = summary.as_ref().and_then(|s| s.rules.get(index));
            json!({
                "name": rule.map(|r| r.name.clone()),
                "ports": rule.map(|r| r.ports.clone()),
                "from": rule.map(|r| r.from.clone()),
                "allowed": counter_json(*allowed),
                "refused": counter_json(*refused),
            })
        })
        .collect();
    Ok(json!({
        "iface": iface,
        "attachment": attachment,
        "link": link.ok().map(|l| json!({"id": l.link_id, "program_id": l.program_id, "ifindex": l.ifindex})),
        "generation": generation,
        "policy": summary,
        "source_tables": tables,
        "reasons": reasons,
        "rules": rules,
        "confirm": safe::pending_json(root, iface),
        "return_traffic": {
            "egress": if egress_attached {
                "attached"
            } else if loader::egress_supported() {
                "detached"
            } else {
                "unsupported"
            },
            "flows_live": flows.map(|f| f.live),
            "flows_present": flows.map(|f| f.present),
            "capacity": flows.map(|f| f.capacity),
        },
    }))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = PinRoot::new(&args.pin_root.pin_root);
    preflight::kernel_access("status", &root)?;
    safe::finish_expired(&root);
    // An apply killed mid-install may have left a filter enforcing in its staging
    // directory: put in place, it is listed below like any other.
    if let Err(error) = loader::recover_interrupted_installs(&root) {
        eprintln!("airlock: finishing an interrupted install: {error}");
    }
    let mut all = Vec::new();
    for iface in root.interfaces()? {
        all.push(interface_status(&root, &iface)?);
    }
    let agent = agent::report::read(&args.state_dir, root.path());
    if args.output == OutputFormat::Json {
        output::print_json(&json!({
            "pin_root": root.path().display().to_string(),
            "agent": agent,
            "interfaces": all,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(agent) = &agent {
        print_agent(agent);
    }
    if all.is_empty() {
        println!(
            "no Airlock filter is pinned under {}",
            root.path().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for status in &all {
        print_human(status);
    }
    Ok(ExitCode::SUCCESS)
}

/// What the agent says of the policy file against what is enforced.
fn print_agent(agent: &AgentReport) {
    println!(
        "agent (pid {}), policy file {}: {}, {}",
        agent.pid,
        agent.policy_file,
        if agent.ready {
            "ready"
        } else {
            "NOT READY (no valid policy is enforced on every selected interface)"
        },
        if agent.in_sync {
            "in sync"
        } else {
            "OUT OF SYNC"
        }
    );
    if let Some(rejection) = agent.last_rejection.as_ref().filter(|_| !agent.in_sync) {
        println!(
            "  POLICY FILE REJECTED {}: what is enforced below is not the file as it is now",
            unix_time(&json!(rejection.at_unix))
        );
        for line in rejection.error.lines() {
            println!("    {line}");
        }
    }
}

fn print_human(s: &Value) {
    let policy = &s["policy"];
    let mode = policy["attach_mode"].as_str().unwrap_or("?");
    let attached = match s["attachment"].as_str() {
        Some("attached") => format!("attached ({mode} mode)"),
        Some("attached_other_netns") => format!(
            "attached ({mode} mode, ifindex {}, in another network namespace)",
            s["link"]["ifindex"]
        ),
        _ => "NOT ATTACHED (interface gone or link removed; apply again)".to_owned(),
    };
    println!("{}: {attached}", s["iface"].as_str().unwrap_or("?"));
    if policy.is_null() {
        println!("  no policy recorded");
        return;
    }
    if let Some(left) = s["confirm"]["seconds_left"].as_u64() {
        println!(
            "  PENDING CONFIRMATION: run `airlock confirm` within {left}s, or it rolls back to {}",
            s["confirm"]["rollback_to"].as_str().unwrap_or("?")
        );
    }
    println!(
        "  policy {} (apply #{}, generation {}, applied {})",
        policy["policy_path"].as_str().unwrap_or("?"),
        policy["serial"],
        s["generation"],
        unix_time(&policy["applied_at"])
    );
    let restored = &policy["restored"];
    if !restored.is_null() {
        println!(
            "  RESTORED {} by a rollback: apply #{} was not confirmed by {}",
            unix_time(&restored["at_unix"]),
            restored["rolled_back_serial"],
            unix_time(&restored["deadline_unix"])
        );
    }
    println!(
        "  mode {}, default {}, {} IPv4 + {} IPv6 prefixes",
        policy["mode"].as_str().unwrap_or("?"),
        policy["default"].as_str().unwrap_or("?"),
        policy["prefixes_v4"],
        policy["prefixes_v6"]
    );
    if let Some(tables) = s["source_tables"].as_object() {
        let shapes: Vec<String> = [("IPv4", "ipv4"), ("IPv6", "ipv6")]
            .iter()
            .map(|(name, key)| table_line(name, &tables[*key]))
            .collect();
        println!("  source tables: {}", shapes.join("; "));
    }
    let flows = &s["return_traffic"];
    if flows["egress"] == "unsupported" {
        println!(
            "  return traffic: not tracked (this kernel has no tcx, Linux 6.6+): under `default: drop` replies to the host's own connections are dropped"
        );
    } else if flows["egress"] == "attached" {
        match flows["flows_live"].as_u64() {
            Some(live) => println!(
                "  return traffic: {live} flows opened by this host tracked ({} entries of {})",
                flows["flows_present"], flows["capacity"]
            ),
            None => println!("  return traffic: tracked (flow table unreadable)"),
        }
    } else {
        println!(
            "  return traffic: EGRESS PROGRAM NOT ATTACHED: replies to this host's own connections hit `default` (apply again to repair)"
        );
    }
    println!(
        "  {:<28} {:<24} {:>12} {:>12}",
        "rule", "ports", "allowed", "refused"
    );
    for rule in s["rules"].as_array().into_iter().flatten() {
        let ports: Vec<&str> = rule["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "  {:<28} {:<24} {:>12} {:>12}",
            rule["name"].as_str().unwrap_or("?"),
            ports.join(","),
            rule["allowed"]["packets"].as_u64().unwrap_or(0),
            rule["refused"]["packets"].as_u64().unwrap_or(0)
        );
    }
    let reasons: Vec<String> = Reason::ALL
        .iter()
        .filter_map(|r| {
            let packets = s["reasons"][r.name()]["packets"].as_u64().unwrap_or(0);
            (packets > 0).then(|| format!("{} {packets}", r.name()))
        })
        .collect();
    println!(
        "  packets by reason: {}",
        if reasons.is_empty() {
            "none yet".to_owned()
        } else {
            reasons.join(", ")
        }
    );
}

/// Seconds since the Unix epoch, as UTC.
fn unix_time(seconds: &Value) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.as_u64().unwrap_or(0)),
    )
}

/// One family's source table for the human output, e.g. "IPv6 568369 ranges,
/// 17.4 MiB in 5 chunk maps".
fn table_line(family: &str, table: &Value) -> String {
    let mib = table["bytes"].as_u64().unwrap_or(0) as f64 / f64::from(1 << 20);
    let place = match table["chunk_maps"].as_u64() {
        Some(chunks) if chunks > 0 => format!("in {chunks} chunk maps"),
        _ => "preallocated".to_owned(),
    };
    format!(
        "{family} {} ranges, {mib:.1} MiB {place}",
        table["ranges"].as_u64().unwrap_or(0)
    )
}
