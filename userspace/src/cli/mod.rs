//! Command definitions (clap derive: the doc comments are the help text) and the
//! dispatch to one module per verb.

mod agent;
mod agent_guard;
mod apply;
mod check;
mod confirm;
mod diff;
mod docs;
mod explain;
mod explain_live;
mod grace_record;
mod output;
mod preflight;
mod ranges;
mod regions;
mod remove;
mod report;
mod safe;
mod status;
mod validate;
pub mod version;
mod watch;

use std::{path::PathBuf, process::ExitCode};

use airlock::{compile::CompileError, loader::DEFAULT_PIN_ROOT, policy::PolicyError};
use clap::{Parser, Subcommand, ValueEnum};

/// Airlock: an IP allowlist enforced in the kernel with XDP.
#[derive(Parser, Debug)]
#[command(
    name = "airlock",
    version,
    about,
    propagate_version = true,
    after_long_help = ENVIRONMENT_AND_EXIT_STATUS
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log errors only (no warnings or progress on stderr). What a command prints
    /// on stdout, and its exit code, stay the same. `AIRLOCK_LOG` overrides -v/-q.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log format on stderr: human (default) or json (one JSON object per line).
    #[arg(long, value_enum, default_value_t, global = true)]
    pub log_format: LogFormat,
    /// The XDP program's own log lines (why a frame was malformed: debug; which
    /// source and port entry decided each packet: trace), in filters this command
    /// loads; read by the agent into its log and by `airlock watch`. Off by default
    /// (the lines are then not in the program at all); -vv means debug. Fixed when a
    /// filter is installed: a filter already attached keeps its level.
    #[arg(long, value_enum, global = true, value_name = "LEVEL")]
    pub datapath_log: Option<DatapathLog>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatapathLog {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Cli {
    /// The datapath log level: `--datapath-log`, else debug with -vv, else off.
    pub fn datapath_log_level(&self) -> Option<aya_log::Level> {
        use aya_log::Level;
        match self.datapath_log {
            Some(DatapathLog::Off) => None,
            Some(DatapathLog::Error) => Some(Level::Error),
            Some(DatapathLog::Warn) => Some(Level::Warn),
            Some(DatapathLog::Info) => Some(Level::Info),
            Some(DatapathLog::Debug) => Some(Level::Debug),
            Some(DatapathLog::Trace) => Some(Level::Trace),
            None if self.verbose >= 2 => Some(Level::Debug),
            None => None,
        }
    }
}

/// The end of `airlock --help` and of airlock(1).
const ENVIRONMENT_AND_EXIT_STATUS: &str = "\
Environment:
  AIRLOCK_LOG       what to log on stderr, a tracing filter (e.g. warn, debug,
                    airlock=trace,aya=info); wins over -v and -q
  AIRLOCK_PIN_ROOT  the pin root, as --pin-root (default /sys/fs/bpf/airlock)
  AIRLOCK_RANGES_CA a PEM file of CA certificates `ranges fetch` trusts instead
                    of the built-in roots, as --ca-file
  NO_COLOR          no colour in human log lines

Exit status:
  0  success
  1  runtime failure (diff --exit-code: changes; failures exit 3; check: a
     finding at or above --fail-on)
  2  bad usage, an invalid policy, or a refusal that changed nothing (anti-lockout,
     a pending confirmation, an agent managing the pin root, a range list that
     shrank more than --max-removed)

-o json: every command's JSON carries schema_version; its shape is documented in
docs/schemas/<command>.schema.json, and a failure is one JSON object on stdout
(docs/schemas/error.schema.json).";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Human,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct PinRootArg {
    /// Directory on a bpffs where filters are pinned (mounted there if needed).
    #[arg(long, env = "AIRLOCK_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
}

impl PinRootArg {
    pub fn root(&self) -> airlock::loader::PinRoot {
        airlock::loader::PinRoot::new(&self.pin_root)
    }
}

/// The filters a command acts on: `--iface IF` (repeatable) or `--all`, under
/// `--pin-root`. What `--iface` and `--all` mean is the command's to say, in its
/// help: `#[command(mut_arg("ifaces", ...), mut_arg("all", ...))]` on its `Args`.
#[derive(clap::Args, Debug, Clone)]
pub struct FilterArgs {
    #[arg(long = "iface", conflicts_with = "all")]
    pub ifaces: Vec<String>,
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub pin_root: PinRootArg,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compile a policy, load it into the kernel and attach it; the filter keeps
    /// enforcing after this command exits. On an interface that already has Airlock,
    /// swaps the policy atomically without detaching.
    ///
    /// Example: airlock apply -f /etc/airlock/policy.yaml
    Apply(apply::Args),
    /// Show the filters in force: interfaces, policy, counters per rule and reason.
    Status(status::Args),
    /// Detach and unpin Airlock from interfaces.
    Remove(remove::Args),
    /// Check a policy without touching the kernel (no root needed).
    Validate(validate::Args),
    /// Say what a policy decides for one packet, and which rule or set decided it.
    ///
    /// Example: airlock explain -f policy.yaml --src 34.106.109.131 --port 5432/tcp
    Explain(explain::Args),
    /// List the built-in region sets, with their source and date.
    Regions(regions::Args),
    /// Run the host agent: enforce the policy file and keep enforcing it (reload on
    /// change and SIGHUP, repair drift, serve /metrics, log sampled drops).
    ///
    /// Example: airlock agent -f /etc/airlock/policy.yaml --log-format json
    Agent(agent::Args),
    /// Show sampled drops live.
    Watch(watch::Args),
    /// The security self-check of this network namespace: who can reach each
    /// listening socket under the policy in force (verified with a probe through the
    /// attached filter), and findings by severity. Exit 1 when a finding is at or
    /// above --fail-on.
    ///
    /// Example: airlock check --fail-on high -o json
    Check(check::Args),
    /// Providers' published range lists (aws, gcp, azure, cloudflare, github):
    /// fetch a snapshot a policy's `sets:` can name, or compare two.
    ///
    /// Example: airlock ranges fetch gcp --out /etc/airlock/ranges/gcp.json
    Ranges(ranges::Args),
    /// Keep the policy applied with `apply --confirm` (otherwise it is rolled back
    /// at the deadline).
    Confirm(confirm::Args),
    /// What a new policy would change against the one in force: rules, ports, sets
    /// and the source prefixes each gains or loses.
    ///
    /// Example: airlock diff -f new-policy.yaml
    Diff(diff::Args),
    /// Print shell completions for SHELL on stdout.
    ///
    /// Example: airlock completions bash > /usr/share/bash-completion/completions/airlock
    Completions(docs::CompletionsArgs),
    /// Print the manual page airlock(1) (roff), or write every page with --dir.
    ///
    /// Example: airlock man | man -l -
    Man(docs::ManArgs),
    /// Started by `apply --confirm`: rolls back at the deadline unless confirmed.
    #[command(hide = true)]
    ConfirmWatchdog(confirm::WatchdogArgs),
    /// Started by `apply`: records the grace period after its flips.
    #[command(hide = true)]
    GraceRecord(grace_record::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Apply(args) => apply::run(args),
        Command::Status(args) => status::run(args),
        Command::Remove(args) => remove::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Regions(args) => regions::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Watch(args) => watch::run(args),
        Command::Check(args) => check::run(args),
        Command::Ranges(args) => ranges::run(args),
        Command::Confirm(args) => confirm::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
        Command::ConfirmWatchdog(args) => confirm::run_watchdog(args),
        Command::GraceRecord(args) => grace_record::run(args),
    }
}

impl Cli {
    /// Whether the command was asked for JSON (`-o json`): its errors are JSON too.
    pub fn json_output(&self) -> bool {
        let output = match &self.command {
            Command::Apply(a) => a.output,
            Command::Status(a) => a.output,
            Command::Validate(a) => a.output,
            Command::Explain(a) => a.output,
            Command::Regions(a) => a.output,
            Command::Check(a) => a.output,
            Command::Ranges(a) => a.output(),
            Command::Confirm(a) => a.output,
            Command::Diff(a) => a.output,
            Command::Remove(a) => a.output,
            Command::Watch(a) => a.output,
            _ => OutputFormat::Human,
        };
        output == OutputFormat::Json
    }

    /// The policy file of an `airlock agent` command line.
    fn agent_policy(self) -> Option<PathBuf> {
        match self.command {
            Command::Agent(args) => args.policy,
            _ => None,
        }
    }

    /// The long-running agent keeps Rust's default of ignoring SIGPIPE (a `watch`
    /// client that goes away must not kill it); every other command dies of it
    /// quietly, as `cat` does, when its reader is gone (`airlock status | head`).
    pub fn exits_on_closed_pipe(&self) -> bool {
        !matches!(self.command, Command::Agent(_))
    }
}

/// `--xdp-mode auto|native|generic`.
fn parse_xdp_mode(value: &str) -> Result<airlock::policy::XdpMode, String> {
    airlock::policy::XdpMode::from_name(value)
        .ok_or_else(|| format!("{value:?} is not one of auto, native, generic"))
}

/// A usage problem found after argument parsing (clap's own exit with 2 as well).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// 2 for an invalid policy or bad usage, 1 for everything else (3 for
/// `diff --exit-code`, where 1 means "changes").
pub fn exit_code_for(error: &anyhow::Error) -> u8 {
    let invalid = error.chain().any(|cause| {
        cause.is::<PolicyError>()
            || cause.is::<CompileError>()
            || cause.is::<UsageError>()
            || cause.is::<airlock::safety::lockout::LockoutError>()
            || cause.is::<airlock::safety::confirm::PendingConflict>()
            || cause.is::<agent_guard::AgentManages>()
            || cause.is::<ranges::ShrinkRefused>()
            || cause
                .downcast_ref::<airlock::interfaces::InterfaceError>()
                .is_some_and(airlock::interfaces::InterfaceError::is_usage)
            || cause
                .downcast_ref::<airlock::pipeline::Error>()
                .is_some_and(airlock::pipeline::Error::is_refusal)
    });
    if invalid {
        2
    } else if error.chain().any(|cause| cause.is::<diff::DiffFailed>()) {
        3
    } else {
        1
    }
}

/// Logs go to stderr. `AIRLOCK_LOG` (a `tracing` filter: `debug`, or
/// `airlock=trace,aya=info`) wins over -v and -q.
pub fn init_logging(verbose: u8, quiet: bool, format: LogFormat, datapath_log: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    // The datapath's lines were asked for by their own flag: shown at any -v.
    let default = if datapath_log {
        format!("{default},airlock::datapath=trace")
    } else {
        default.to_owned()
    };
    let filter = EnvFilter::try_from_env("AIRLOCK_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .with_target(false)
            .init(),
    }
}

/// Says what failed: on stderr for a person (an invalid policy's diagnostics one per
/// line), and with `-o json` also as JSON on stdout.
pub fn report_error(error: &anyhow::Error, code: u8, json: bool) {
    eprintln!("airlock: {}", report::text(error));
    if json {
        let _ = output::print_json(&report::json(error, code));
    }
}
