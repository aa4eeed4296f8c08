//! `airlock agent`: the long-running host agent (see `airlock::agent`).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use airlock::{
    agent::{self, AgentConfig},
    policy::XdpMode,
    ranges::{Provider, fetch, refresh},
};
use airlock_common::DEFAULT_SAMPLE_RATE;

use super::PinRootArg;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Policy file; watched, and reloaded on every change and on SIGHUP.
    #[arg(
        short = 'f',
        long = "file",
        required_unless_present = "kubernetes_node",
        conflicts_with = "kubernetes_node"
    )]
    pub(super) policy: Option<PathBuf>,
    /// Take the policy from AirlockPolicy resources instead of a file, as this
    /// Kubernetes node (the chart passes the downward API's spec.nodeName).
    #[arg(long, value_name = "NODE", env = "AIRLOCK_KUBERNETES_NODE")]
    kubernetes_node: Option<String>,
    /// Where the Kubernetes source keeps the last good revision on the host, to
    /// enforce through API server outages and restarts.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/airlock/fleet")]
    cache_dir: PathBuf,
    #[command(flatten)]
    pin_root: PinRootArg,
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9477")]
    metrics_addr: SocketAddr,
    /// Interface name or glob (e.g. `eth*`) to filter, overriding the policy (repeatable).
    #[arg(long = "iface")]
    ifaces: Vec<String>,
    /// Remove the filters on exit instead of leaving them enforcing.
    #[arg(long)]
    detach_on_exit: bool,
    /// Directory for the single-instance lock and the drop-sample socket `watch` reads.
    #[arg(long, default_value = agent::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Seconds between checks that every interface still runs the current policy
    /// (interface events trigger a check at once as well).
    #[arg(long, default_value_t = 10)]
    reconcile_interval: u64,
    /// Drop samples per second per CPU sent by the kernel (0: none).
    #[arg(long, default_value_t = DEFAULT_SAMPLE_RATE)]
    sample_rate: u32,
    /// Apply policies that would cut an SSH session, the default gateway or neighbour
    /// discovery (by default such a policy is rejected like an invalid one).
    #[arg(long)]
    force: bool,
    /// How to attach the XDP program (overrides the policy's `xdp_mode`): auto
    /// (native, or generic where the driver has no native XDP), native or generic.
    #[arg(long, value_name = "MODE", value_parser = super::parse_xdp_mode)]
    xdp_mode: Option<XdpMode>,
    /// Download the provider lists the policy's `provider:` sets use every
    /// INTERVAL (e.g. 6h), each from the URL its snapshot records (or
    /// --ranges-url), and put a list that passes the checks in force like any
    /// reload. Off by default.
    #[arg(long, value_name = "INTERVAL", value_parser = parse_interval)]
    refresh_ranges: Option<Duration>,
    /// Refuse a refreshed list that lacks more than this share of the ranges of the
    /// snapshot in use, or of any set's selection (a truncated or hijacked
    /// download must not empty an allowlist).
    #[arg(long, value_name = "SHARE", default_value = "10%", value_parser = super::ranges::parse_share)]
    ranges_max_removed: f64,
    /// PROVIDER=URL: fetch that provider's list from URL instead of the URL its
    /// snapshot records (repeatable; Azure's weekly file has a new URL each week).
    #[arg(long, value_name = "PROVIDER=URL", value_parser = parse_provider_url)]
    ranges_url: Vec<(Provider, String)>,
    /// Trust only the CA certificates of this PEM file for --refresh-ranges
    /// instead of the built-in (Mozilla) roots.
    #[arg(long, value_name = "PEM", env = "AIRLOCK_RANGES_CA")]
    ranges_ca_file: Option<PathBuf>,
}

fn parse_interval(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(d),
        Ok(_) => Err("at least 1s".into()),
        Err(e) => Err(format!("{value:?}: {e} (e.g. 6h, 30m)")),
    }
}

fn parse_provider_url(value: &str) -> Result<(Provider, String), String> {
    let (name, url) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?}: expected PROVIDER=URL"))?;
    let provider = Provider::from_name(name)
        .ok_or_else(|| format!("{name:?} is not one of aws, gcp, azure, cloudflare, github"))?;
    if !url.starts_with("https://") {
        return Err(format!("{url:?}: only https:// URLs are fetched"));
    }
    Ok((provider, url.to_owned()))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::preflight::kernel_access(
        "agent",
        &airlock::loader::PinRoot::new(&args.pin_root.pin_root),
    )?;
    let fleet = args
        .kubernetes_node
        .map(|node| airlock::fleet::source::FleetConfig {
            node,
            cache_dir: args.cache_dir.clone(),
        });
    let policy_path = match (&fleet, args.policy) {
        (Some(_), _) => airlock::fleet::cache::Cache::new(&args.cache_dir).policy_path(),
        (None, Some(path)) => path,
        (None, None) => unreachable!("clap requires --file without --kubernetes-node"),
    };
    let refresh_ranges = match args.refresh_ranges {
        Some(interval) => Some(agent::RefreshConfig {
            interval,
            options: refresh::Options {
                max_removed: args.ranges_max_removed,
                urls: args.ranges_url.into_iter().collect(),
                ca: args
                    .ranges_ca_file
                    .as_deref()
                    .map(fetch::load_ca)
                    .transpose()?,
            },
        }),
        None => None,
    };
    let config = AgentConfig {
        refresh_ranges,
        policy_path,
        fleet,
        pin_root: args.pin_root.pin_root,
        metrics_addr: args.metrics_addr,
        iface_overrides: args.ifaces,
        detach_on_exit: args.detach_on_exit,
        state_dir: args.state_dir,
        reconcile_interval: Duration::from_secs(args.reconcile_interval.max(1)),
        sample_rate: args.sample_rate,
        force: args.force,
        xdp_mode: args.xdp_mode,
    };
    // One thread is plenty: the work is a few system calls per event.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(agent::run(config))?;
    Ok(ExitCode::SUCCESS)
}
