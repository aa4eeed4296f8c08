//! `airlock ranges fetch|diff`: providers' published range lists as snapshots a
//! policy's `sets:` can name (`provider: aws`, `snapshot: PATH`).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::SystemTime,
};

use airlock::ranges::{
    Entry, Provider, Selection,
    diff::{self, Diff},
    fetch,
    refresh::{self, Refusal, Target},
    snapshot::Snapshot,
};
use serde_json::json;

use super::{OutputFormat, UsageError, output};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Verb,
}

#[derive(clap::Subcommand, Debug)]
enum Verb {
    /// Download a provider's list over HTTPS, check its format and write a
    /// snapshot (URL, fetch time, the provider's version stamp, SHA-256). An
    /// existing snapshot at --out is replaced only if the new list keeps enough of
    /// its ranges (--max-removed).
    ///
    /// Example: airlock ranges fetch aws --out /etc/airlock/ranges/aws.json
    Fetch(FetchArgs),
    /// What a newer snapshot adds and removes, per region and service list, and
    /// with -f, per set of that policy that takes this provider's list.
    ///
    /// Example: airlock ranges diff aws-old.json aws.json -f /etc/airlock/policy.yaml
    Diff(DiffArgs),
}

#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// aws, gcp, azure, cloudflare or github.
    #[arg(value_parser = parse_provider)]
    provider: Provider,
    /// Where to write the snapshot.
    #[arg(long)]
    out: PathBuf,
    /// The document's URL (default: the provider's published one; Azure's weekly
    /// ServiceTags_Public_*.json has a new URL each week and must be given).
    #[arg(long)]
    url: Option<String>,
    /// Trust only the CA certificates of this PEM file instead of the built-in
    /// (Mozilla) roots: for a TLS-inspecting proxy, or a test server.
    #[arg(long, env = "AIRLOCK_RANGES_CA")]
    ca_file: Option<PathBuf>,
    /// Refuse to replace the snapshot at --out when the new list lacks more than
    /// this share of its ranges (a truncated or hijacked download must not empty
    /// an allowlist), e.g. 10%.
    #[arg(long, default_value = "10%", value_parser = parse_share)]
    max_removed: f64,
    /// Also refuse when any set of this policy that takes its ranges from --out
    /// would lose more than --max-removed of what it selects (the agent's
    /// scheduled refresh guards the same way): a truncated download can empty one
    /// region's list while the whole list loses little.
    #[arg(short = 'f', long = "file", value_name = "POLICY")]
    policy: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value_t)]
    pub(super) output: OutputFormat,
}

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    old: PathBuf,
    new: PathBuf,
    /// Also say, for each set of this policy that takes the provider's list, what
    /// its filter selects that the refresh adds and removes.
    #[arg(short = 'f', long = "file", value_name = "POLICY")]
    policy: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value_t)]
    pub(super) output: OutputFormat,
}

impl Args {
    pub fn output(&self) -> OutputFormat {
        match &self.command {
            Verb::Fetch(a) => a.output,
            Verb::Diff(a) => a.output,
        }
    }
}

fn parse_provider(value: &str) -> Result<Provider, String> {
    Provider::from_name(value)
        .ok_or_else(|| format!("{value:?} is not one of aws, gcp, azure, cloudflare, github"))
}

pub(super) fn parse_share(value: &str) -> Result<f64, String> {
    let number = value.strip_suffix('%').unwrap_or(value);
    match number.parse::<f64>() {
        Ok(n) if (0.0..=100.0).contains(&n) => Ok(n / 100.0),
        _ => Err(format!("{value:?}: expected a percentage such as 10%")),
    }
}

/// A refresh the shrink guard refused: nothing was written.
#[derive(Debug, thiserror::Error)]
#[error(
    "refused: the new {provider} list lacks {removed} of the {old} ranges of {path} ({share:.1}%, more than --max-removed {max:.1}%); the snapshot there is kept. Look at the source (a truncated or hijacked download?), then raise --max-removed if the change is real"
)]
pub struct ShrinkRefused {
    provider: Provider,
    removed: usize,
    old: usize,
    path: String,
    share: f64,
    max: f64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Verb::Fetch(a) => run_fetch(a),
        Verb::Diff(a) => run_diff(a),
    }
}

fn provenance(s: &Snapshot, ranges: usize) -> serde_json::Value {
    json!({
        "provider": s.provider,
        "url": s.url,
        "fetched_at": s.fetched_at,
        "version": s.version,
        "sha256": s.sha256,
        "ranges": ranges,
    })
}

fn distinct(entries: &[Entry]) -> usize {
    let mut nets: Vec<_> = entries.iter().map(|e| e.net).collect();
    nets.sort_unstable();
    nets.dedup();
    nets.len()
}

fn run_fetch(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let url = match (&args.url, args.provider.url()) {
        (Some(url), _) => url.clone(),
        (None, Some(url)) => url.to_owned(),
        (None, None) => {
            return Err(UsageError(format!(
                "{} publishes its list at a new URL each week: give it with --url (the JSON link of the service tags download page)",
                args.provider
            ))
            .into());
        }
    };
    let ca = args.ca_file.as_deref().map(fetch::load_ca).transpose()?;
    let fetched = fetch::fetch(&url, ca)?;
    let (snapshot, parsed) = Snapshot::new(
        args.provider,
        &url,
        fetched.body,
        fetched.etag,
        SystemTime::now(),
    )?;
    let previous = previous(&args.out, args.provider)?;
    let mut target = Target {
        path: args.out.clone(),
        provider: args.provider,
        sets: Vec::new(),
    };
    // With nothing to replace, there is nothing a set could lose.
    if let (Some(policy), Some(_)) = (&args.policy, &previous) {
        target.sets = sets_taking(policy, &args.out, args.provider)?;
    }
    let change = match &previous {
        Some((_, entries)) => Some(
            refresh::guard(&target, entries, &parsed.entries, args.max_removed)
                .map_err(shrink_refused)?
                .0,
        ),
        None => None,
    };
    snapshot.write(&args.out)?;
    let ranges = distinct(&parsed.entries);
    if args.output == OutputFormat::Json {
        let mut value = provenance(&snapshot, ranges);
        value["path"] = json!(args.out.display().to_string());
        value["change"] = json!(change.as_ref().map(|c| json!({
            "previous_version": previous.as_ref().and_then(|(s, _)| s.version.clone()),
            "added": c.added,
            "removed": c.removed,
        })));
        output::print_json(&value)?;
    } else {
        println!(
            "wrote {}: {} list, {ranges} ranges, version {}, fetched {} from {}",
            args.out.display(),
            snapshot.provider,
            snapshot.version.as_deref().unwrap_or("unknown"),
            snapshot.fetched_at,
            snapshot.url
        );
        println!("  sha256 {}", snapshot.sha256);
        if let Some(c) = &change {
            println!(
                "  against the snapshot it replaced: +{} -{} ranges (airlock ranges diff shows which)",
                c.added, c.removed
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The sets of `policy` that take `provider`'s ranges from the snapshot at `out`.
fn sets_taking(
    policy: &Path,
    out: &Path,
    provider: Provider,
) -> anyhow::Result<Vec<(String, Selection)>> {
    let policy_text = airlock::policy::load(policy)?;
    let same = |a: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(out)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == out,
    };
    refresh::targets(&policy_text)
        .into_iter()
        .find(|t| t.provider == provider && same(&t.path))
        .map(|t| t.sets)
        .ok_or_else(|| {
            UsageError(format!(
                "no {provider} set of {} takes its ranges from {}: -f names the policy whose sets the refresh must not empty",
                policy.display(),
                out.display()
            ))
            .into()
        })
}

/// The guard's refusal as this command says it (exit 2).
fn shrink_refused(refusal: Refusal) -> anyhow::Error {
    match refusal {
        Refusal::Shrink {
            provider,
            list,
            removed,
            old,
            share,
            max,
        } => ShrinkRefused {
            provider,
            removed,
            old,
            path: list,
            share,
            max,
        }
        .into(),
        other => other.into(),
    }
}

/// The snapshot already at `path`, if it is a good one of `provider`'s; a broken
/// or foreign file there is replaced (and said so).
fn previous(path: &Path, provider: Provider) -> anyhow::Result<Option<(Snapshot, Vec<Entry>)>> {
    if !path.exists() {
        return Ok(None);
    }
    match Snapshot::read(path) {
        Ok((s, parsed)) if s.provider == provider => Ok(Some((s, parsed.entries))),
        Ok((s, _)) => Err(UsageError(format!(
            "{} holds {}'s list, not {provider}'s: pick another --out",
            path.display(),
            s.provider
        ))
        .into()),
        Err(e) => {
            tracing::warn!(
                "replacing {}, which is not a good snapshot: {e}",
                path.display()
            );
            Ok(None)
        }
    }
}

fn run_diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let (old, old_parsed) = Snapshot::read(&args.old)?;
    let (new, new_parsed) = Snapshot::read(&args.new)?;
    if old.provider != new.provider {
        return Err(UsageError(format!(
            "{} is {}'s list and {} is {}'s: compare two snapshots of one provider",
            args.old.display(),
            old.provider,
            args.new.display(),
            new.provider
        ))
        .into());
    }
    let change: Diff = diff::diff(&old_parsed.entries, &new_parsed.entries);
    let sets = match &args.policy {
        Some(path) => {
            let policy = airlock::policy::load(path)?;
            let sets: Vec<(&str, &Selection, &Path)> = policy
                .provider_sets
                .iter()
                .filter(|(_, s)| s.provider == old.provider)
                .map(|(name, s)| (name.as_str(), &s.selection, s.snapshot.as_path()))
                .collect();
            let diffs = diff::set_diffs(
                sets.iter().map(|(n, s, _)| (*n, *s)),
                &old_parsed.entries,
                &new_parsed.entries,
            );
            let snapshots: Vec<PathBuf> = sets.iter().map(|(_, _, p)| p.to_path_buf()).collect();
            Some(diffs.into_iter().zip(snapshots).collect::<Vec<_>>())
        }
        None => None,
    };
    if args.output == OutputFormat::Json {
        let mut value = json!({
            "old": provenance(&old, change.old_ranges),
            "new": provenance(&new, change.new_ranges),
            "diff": change,
        });
        if let Some(sets) = &sets {
            value["sets"] = sets
                .iter()
                .map(|(d, snapshot)| {
                    let mut v = json!(d);
                    v["snapshot"] = json!(snapshot.display().to_string());
                    v
                })
                .collect();
        }
        output::print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} {} ({}) -> {} ({}): +{} -{} of {} ranges",
        old.provider,
        old.version.as_deref().unwrap_or("?"),
        old.fetched_at,
        new.version.as_deref().unwrap_or("?"),
        new.fetched_at,
        change.added,
        change.removed,
        change.old_ranges
    );
    for group in &change.groups {
        let name = match (group.region.as_str(), group.service.as_str()) {
            ("", "") => "(all)".to_owned(),
            (region, "") => region.to_owned(),
            ("", service) => service.to_owned(),
            (region, service) => format!("{region} {service}"),
        };
        println!("  {name}:");
        for net in &group.added {
            println!("    + {net}");
        }
        for net in &group.removed {
            println!("    - {net}");
        }
    }
    if let Some(sets) = &sets {
        if sets.is_empty() {
            println!("no set of the policy takes {}'s list", old.provider);
        }
        for (set, snapshot) in sets {
            println!(
                "set {} (snapshot {}): +{} -{} of {} ranges",
                set.set,
                snapshot.display(),
                set.added.len(),
                set.removed.len(),
                set.old_ranges
            );
            for net in &set.added {
                println!("    + {net}");
            }
            for net in &set.removed {
                println!("    - {net}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
