//! `airlock watch`: sampled drops, live, for a person at a terminal.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use airlock::{
    agent,
    loader::{PinRoot, PolicyMaps},
    samples::{DropEvent, open_ring},
};

use super::PinRootArg;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pin_root: PinRootArg,
    /// Stop after this many seconds (default: until interrupted).
    #[arg(long)]
    seconds: Option<u64>,
    /// The agent's `--state-dir`, to tell whether an agent reads these samples too.
    #[arg(long, default_value = agent::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

/// Reads every interface's sample ring directly. The ring has one consumer position:
/// while an agent runs, each sample reaches either the agent's log or this view.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = PinRoot::new(&args.pin_root.pin_root);
    let mut rings = Vec::new();
    for iface in root.interfaces()? {
        let dir = root.interface_dir(&iface);
        let names: Vec<String> = PolicyMaps::open_pinned(&dir)
            .ok()
            .and_then(|m| m.active_summary().ok().flatten())
            .map(|s| s.rules.into_iter().map(|r| r.name).collect())
            .unwrap_or_default();
        rings.push((iface, names, open_ring(&dir)?));
    }
    if rings.is_empty() {
        println!(
            "no Airlock filter is pinned under {}",
            root.path().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(holder) = agent::agent_holding(&args.state_dir, root.path()) {
        eprintln!(
            "note: an airlock agent ({holder}) reads these drop samples too; the kernel's ring has one read position, so each sample shows either here or in the agent's log"
        );
    }
    println!(
        "{:<8} {:<12} {:<40} {:<7} {:>6}  {:<22} reason",
        "time", "interface", "source", "proto", "port", "rule"
    );
    let deadline = args
        .seconds
        .map(|s| std::time::Instant::now() + Duration::from_secs(s));
    while deadline.is_none_or(|d| std::time::Instant::now() < d) {
        let mut quiet = true;
        for (iface, names, ring) in &mut rings {
            while let Some(item) = ring.next() {
                quiet = false;
                let Some(event) = DropEvent::decode(&item) else {
                    continue;
                };
                let rule = event
                    .rule
                    .and_then(|i| names.get(i as usize).cloned())
                    .unwrap_or_else(|| "-".to_owned());
                let verdict = if event.monitor {
                    " (monitor: passed)"
                } else {
                    ""
                };
                println!(
                    "{:<8} {:<12} {:<40} {:<7} {:>6}  {:<22} {}{verdict}",
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                        .to_string()
                        .get(11..19)
                        .unwrap_or(""),
                    iface,
                    event.source_text(),
                    event.protocol_name(),
                    event.dst_port,
                    rule,
                    event.reason.name(),
                );
            }
        }
        if quiet {
            // Samples are rate limited in the kernel; polling 10 times a second is ample.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(ExitCode::SUCCESS)
}
