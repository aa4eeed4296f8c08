//! `airlock watch`: sampled drops, live, for a person at a terminal.

use std::{
    io::{BufRead as _, BufReader, ErrorKind},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use airlock::{
    agent,
    datapath_log::{self, DatapathLine},
    loader::{PinRoot, PolicyMaps},
    samples::{DropEvent, DropRecord, open_ring},
};

use super::{OutputFormat, PinRootArg};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pin_root: PinRootArg,
    /// Stop after this many seconds (default: until interrupted).
    #[arg(long)]
    seconds: Option<u64>,
    /// The agent's `--state-dir`: while an agent runs, the samples come through it.
    #[arg(long, default_value = agent::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// json: one JSON object per line per sample (docs/schemas/watch.schema.json).
    #[arg(short, long, value_enum, default_value_t)]
    pub(super) output: OutputFormat,
}

/// Samples are rate limited in the kernel; looking 10 times a second is ample.
const POLL: Duration = Duration::from_millis(100);

/// The kernel's sample ring has one read position, so while an agent runs (and
/// reads it) the samples are taken from the agent, which passes every one on;
/// without an agent, from every interface's ring directly.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = PinRoot::new(&args.pin_root.pin_root);
    super::preflight::kernel_access("watch", &root)?;
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs(s));
    // Only a running agent answers on its socket (a killed one's file refuses).
    let socket = agent::samples_socket_path(&args.state_dir, root.path());
    let holder = || agent::agent_holding(&args.state_dir, root.path());
    // Samples from a socket another user could have put there would be theirs.
    let connected = match airlock::trust::check_dir_and_parents(&args.state_dir) {
        Ok(()) => UnixStream::connect(&socket),
        Err(error) => Err(std::io::Error::other(error)),
    };
    match connected {
        Ok(stream) => {
            let who = holder().map(|h| format!(" ({h})")).unwrap_or_default();
            eprintln!("reading the drop samples of the airlock agent{who}");
            let out = Printer::new(args.output);
            out.header();
            return through_agent(stream, deadline, &out);
        }
        Err(error) => {
            if let Some(holder) = holder() {
                eprintln!(
                    "note: an airlock agent ({holder}) reads these drop samples, and its socket {} does not answer ({error}): each sample shows either here or in its log",
                    socket.display()
                );
            }
        }
    }
    from_rings(&root, deadline, &Printer::new(args.output))
}

fn from_rings(
    root: &PinRoot,
    deadline: Option<Instant>,
    out: &Printer,
) -> anyhow::Result<ExitCode> {
    let mut rings = Vec::new();
    let mut logs = Vec::new();
    for iface in root.interfaces()? {
        let dir = root.interface_dir(&iface);
        let names: Vec<String> = PolicyMaps::open_pinned(&dir)
            .ok()
            .and_then(|m| m.active_summary().ok().flatten())
            .map(|s| s.rules.into_iter().map(|r| r.name).collect())
            .unwrap_or_default();
        rings.push((iface.clone(), names, open_ring(&dir)?));
        // The program's own lines (when its level is on), where they can be read.
        match datapath_log::open(&dir, ToStderr { iface }) {
            Ok(logger) => logs.push(logger),
            Err(error) => tracing::debug!(%error, "no datapath log"),
        }
    }
    if rings.is_empty() {
        // On stderr: with -o json, stdout holds samples only.
        eprintln!(
            "no Airlock filter is pinned under {}",
            root.path().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    out.header();
    while deadline.is_none_or(|d| Instant::now() < d) {
        let mut quiet = true;
        for (iface, names, ring) in &mut rings {
            while let Some(item) = ring.next() {
                quiet = false;
                let Some(event) = DropEvent::decode(&item) else {
                    continue;
                };
                let rule = event.rule.and_then(|i| names.get(i as usize).cloned());
                out.row(&DropRecord::new(iface, &event, rule))?;
            }
        }
        for log in &mut logs {
            log.flush();
        }
        if quiet {
            std::thread::sleep(POLL);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the agent's samples (one JSON line each) until `deadline` or until the
/// agent goes away.
fn through_agent(
    stream: UnixStream,
    deadline: Option<Instant>,
    out: &Printer,
) -> anyhow::Result<ExitCode> {
    stream.set_read_timeout(Some(POLL))?;
    let mut lines = BufReader::new(stream);
    // Bytes, not a String: a read that times out keeps what it read, even half of
    // a character.
    let mut line = Vec::new();
    while deadline.is_none_or(|d| Instant::now() < d) {
        match lines.read_until(b'\n', &mut line) {
            Ok(0) => {
                eprintln!("the agent closed the sample stream (it stopped)");
                break;
            }
            // A whole line: a timeout may have left a part of one in `line`.
            Ok(_) if line.ends_with(b"\n") => {
                if let Ok(record) = serde_json::from_slice::<DropRecord>(&line) {
                    out.row(&record)?;
                } else if let Ok(log) = serde_json::from_slice::<DatapathLine>(&line) {
                    datapath_line(&log.interface, &log.level, &log.datapath);
                } else if let Ok(missed) = serde_json::from_slice::<agent::Missed>(&line) {
                    eprintln!("({} samples skipped: this view fell behind)", missed.missed);
                }
                line.clear();
            }
            Ok(_) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Samples as a table for a person, or as JSON lines: each the agent's record with
/// the time it was shown and the schema version.
struct Printer {
    format: OutputFormat,
}

impl Printer {
    fn new(format: OutputFormat) -> Self {
        Self { format }
    }

    fn header(&self) {
        if self.format == OutputFormat::Human {
            println!(
                "{:<8} {:<12} {:<40} {:<7} {:>6}  {:<22} reason",
                "time", "interface", "source", "proto", "port", "rule"
            );
        }
    }

    fn row(&self, record: &DropRecord) -> anyhow::Result<()> {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        if self.format == OutputFormat::Json {
            let mut value = serde_json::to_value(record)?;
            if let Some(object) = value.as_object_mut() {
                object.insert("time".into(), now.into());
                object.insert(
                    "schema_version".into(),
                    super::output::SCHEMA_VERSION.into(),
                );
            }
            println!("{value}");
            return Ok(());
        }
        let verdict = if record.verdict == "would_drop" {
            " (monitor: passed)"
        } else {
            ""
        };
        let rule = if record.rule.is_empty() {
            "-"
        } else {
            &record.rule
        };
        println!(
            "{:<8} {:<12} {:<40} {:<7} {:>6}  {:<22} {}{verdict}",
            now.get(11..19).unwrap_or(""),
            record.interface,
            record.source,
            record.protocol,
            record.dst_port,
            rule,
            record.reason,
        );
        Ok(())
    }
}

/// The datapath's lines, on stderr (stdout holds the samples, as JSON with `-o json`).
struct ToStderr {
    iface: String,
}

impl log::Log for ToStderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        datapath_line(&self.iface, record.level(), record.args());
    }

    fn flush(&self) {}
}

/// One datapath line on stderr, read from the ring or passed on by the agent.
fn datapath_line(iface: &str, level: impl std::fmt::Display, message: impl std::fmt::Display) {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    eprintln!(
        "{} {:<12} datapath {level}: {message}",
        now.get(11..19).unwrap_or(""),
        iface,
    );
}
