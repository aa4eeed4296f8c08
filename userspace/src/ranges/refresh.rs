//! A scheduled refresh of the provider lists a policy uses (the agent's
//! `--refresh-ranges`): for each snapshot file its provider sets name, download the
//! document again, check its format, and guard against shrinking, both for the
//! whole list and for each set's selection (a truncated download can empty one
//! region's list while the document loses little). What passes is a candidate;
//! the agent validates the policy with it and swaps it in (agent/ranges.rs).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use ureq::tls::Certificate;

use super::{
    Provider, RangesError, Selection,
    diff::{self, Diff, SetDiff},
    fetch,
    snapshot::Snapshot,
};
use crate::policy::Policy;

/// The default share of a list's ranges a refresh may remove.
pub const DEFAULT_MAX_REMOVED: f64 = 0.10;

/// How a refresh runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Refuse a list that lacks more than this share (0..=1) of the ranges of the
    /// snapshot it would replace, or of any set's selection.
    pub max_removed: f64,
    /// Per provider, the URL to fetch instead of the one the snapshot records.
    pub urls: BTreeMap<Provider, String>,
    /// Trust only these CA certificates (a proxy's, a test's).
    pub ca: Option<Vec<Certificate<'static>>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_removed: DEFAULT_MAX_REMOVED,
            urls: BTreeMap::new(),
            ca: None,
        }
    }
}

/// One snapshot file a policy uses, and the sets that select from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub path: PathBuf,
    pub provider: Provider,
    pub sets: Vec<(String, Selection)>,
}

/// The snapshot files `policy`'s provider sets name, each once.
pub fn targets(policy: &Policy) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    for (name, source) in &policy.provider_sets {
        match out.iter_mut().find(|t| t.path == source.snapshot) {
            Some(target) => target.sets.push((name.clone(), source.selection.clone())),
            None => out.push(Target {
                path: source.snapshot.clone(),
                provider: source.provider,
                sets: vec![(name.clone(), source.selection.clone())],
            }),
        }
    }
    out
}

/// A refreshed list that passed the checks: what to write, and what it changes.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub path: PathBuf,
    pub provider: Provider,
    pub snapshot: Snapshot,
    /// The snapshot file's text.
    pub text: String,
    /// The SHA-256 of the snapshot it replaces, as read: a file changed since then
    /// (by `ranges fetch`, say) is not overwritten.
    pub replaces: String,
    pub diff: Diff,
    pub sets: Vec<SetDiff>,
    /// Distinct ranges in the new list.
    pub ranges: usize,
}

/// Why a refresh of one list changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The snapshot on disk cannot be read (it was good when the policy was applied).
    #[error("the snapshot in use: {0}")]
    Current(#[source] RangesError),
    #[error(transparent)]
    Fetch(RangesError),
    /// Malformed, truncated, or in a shape the parser does not know.
    #[error(transparent)]
    Document(RangesError),
    #[error(
        "refused: the new {provider} list lacks {removed} of the {old} ranges of {list} ({share:.1}%, more than the {max:.1}% allowed); the snapshot in use is kept"
    )]
    Shrink {
        provider: Provider,
        /// "PATH" or "set NAME".
        list: String,
        removed: usize,
        old: usize,
        share: f64,
        max: f64,
    },
}

impl Refusal {
    /// The `result` label of the metrics.
    pub fn result(&self) -> &'static str {
        match self {
            Refusal::Current(_) => "snapshot_unreadable",
            Refusal::Fetch(_) => "fetch_failed",
            Refusal::Document(_) => "invalid_document",
            Refusal::Shrink { .. } => "refused_shrink",
        }
    }
}

/// Downloads and checks `target`'s list: `Ok(None)` when the document is the
/// one in use.
pub fn refresh(target: &Target, options: &Options) -> Result<Option<Candidate>, Refusal> {
    let (old, old_parsed) = Snapshot::read(&target.path).map_err(Refusal::Current)?;
    let url = options
        .urls
        .get(&target.provider)
        .cloned()
        .unwrap_or_else(|| old.url.clone());
    let fetched = fetch::fetch(&url, options.ca.clone()).map_err(Refusal::Fetch)?;
    check(
        target,
        &url,
        fetched.body,
        fetched.etag,
        (&old, &old_parsed.entries),
        options.max_removed,
    )
}

/// The checks of a downloaded `document` against the snapshot in use.
pub fn check(
    target: &Target,
    url: &str,
    document: String,
    etag: Option<String>,
    (old, old_entries): (&Snapshot, &[super::Entry]),
    max_removed: f64,
) -> Result<Option<Candidate>, Refusal> {
    let (snapshot, parsed) = Snapshot::new(target.provider, url, document, etag, SystemTime::now())
        .map_err(Refusal::Document)?;
    if snapshot.sha256 == old.sha256 {
        return Ok(None);
    }
    let (whole, sets) = guard(target, old_entries, &parsed.entries, max_removed)?;
    let text = snapshot.text();
    Ok(Some(Candidate {
        path: target.path.clone(),
        provider: target.provider,
        ranges: whole.new_ranges,
        snapshot,
        text,
        replaces: old.sha256.clone(),
        diff: whole,
        sets,
    }))
}

/// The shrink guard, for the agent's refresh and `airlock ranges fetch` alike: what
/// `new` changes against `old`, for the whole list and for each of `target`'s sets,
/// refused if it removes more than `max_removed` (0..=1) of the list's ranges or of
/// any set's selection (a truncated download can empty one region's list while
/// the document loses little).
pub fn guard(
    target: &Target,
    old: &[super::Entry],
    new: &[super::Entry],
    max_removed: f64,
) -> Result<(Diff, Vec<SetDiff>), Refusal> {
    let whole = diff::diff(old, new);
    let sets = diff::set_diffs(target.sets.iter().map(|(n, s)| (n.as_str(), s)), old, new);
    let shrink = |list: String, removed: usize, old: usize, share: f64| Refusal::Shrink {
        provider: target.provider,
        list,
        removed,
        old,
        share: share * 100.0,
        max: max_removed * 100.0,
    };
    if whole.removed_share() > max_removed {
        return Err(shrink(
            target.path.display().to_string(),
            whole.removed,
            whole.old_ranges,
            whole.removed_share(),
        ));
    }
    if let Some(set) = sets.iter().find(|s| s.removed_share() > max_removed) {
        return Err(shrink(
            format!("set {}", set.set),
            set.removed.len(),
            set.old_ranges,
            set.removed_share(),
        ));
    }
    Ok((whole, sets))
}

/// The SHA-256 the snapshot at `path` records, if it is readable.
pub fn current_sha256(path: &Path) -> Option<String> {
    Snapshot::read(path).ok().map(|(s, _)| s.sha256)
}
