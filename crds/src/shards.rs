//! Reassembling a revision's source sets from shards. A revision applies only when
//! every shard it names is present, named once, and has the digest the revision
//! gives; every problem is collected, and any one of them means nothing applies.

use std::collections::BTreeMap;

use crate::{AirlockPolicyRevisionSpec, AirlockSourceShardSpec, MAX_SHARD_BYTES, digest};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("source set {set}: shard {shard} is missing")]
    Missing { set: String, shard: String },
    #[error("source set {set}: shard {shard} has digest {actual}, the revision names {expected}")]
    BadDigest {
        set: String,
        shard: String,
        expected: String,
        actual: String,
    },
    #[error("source set {set}: shard {shard} is named more than once")]
    Duplicate { set: String, shard: String },
    #[error("source set {set} is named more than once")]
    DuplicateSet { set: String },
    #[error("source set {set} has no prefixes: an empty set never applies")]
    Empty { set: String },
}

/// A revision with its source sets assembled and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assembled {
    pub policy: String,
    /// Set name → its range-list text.
    pub sets: BTreeMap<String, String>,
    /// `digest::of_revision`.
    pub digest: String,
}

/// Whether a range-list text has at least one line that is not blank or a comment.
/// (The parser checks the lines themselves when the policy is compiled.)
fn has_entries(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or_default().trim();
        !line.is_empty()
    })
}

/// Assembles `revision`'s sets from `shards` (shard object name → spec).
pub fn assemble(
    revision: &AirlockPolicyRevisionSpec,
    shards: &BTreeMap<String, AirlockSourceShardSpec>,
) -> Result<Assembled, Vec<ShardError>> {
    let mut errors = Vec::new();
    let mut sets = BTreeMap::new();
    for set in &revision.source_sets {
        if sets.contains_key(&set.name) {
            errors.push(ShardError::DuplicateSet {
                set: set.name.clone(),
            });
            continue;
        }
        let mut text = String::new();
        let mut seen = std::collections::BTreeSet::new();
        for shard in &set.shards {
            let err_set = || set.name.clone();
            if !seen.insert(&shard.name) {
                errors.push(ShardError::Duplicate {
                    set: err_set(),
                    shard: shard.name.clone(),
                });
                continue;
            }
            let Some(content) = shards.get(&shard.name) else {
                errors.push(ShardError::Missing {
                    set: err_set(),
                    shard: shard.name.clone(),
                });
                continue;
            };
            let actual = digest::of(content.prefixes.as_bytes());
            if actual != shard.digest {
                errors.push(ShardError::BadDigest {
                    set: err_set(),
                    shard: shard.name.clone(),
                    expected: shard.digest.clone(),
                    actual,
                });
                continue;
            }
            text.push_str(&content.prefixes);
            if !text.ends_with('\n') {
                text.push('\n');
            }
        }
        if !has_entries(&text) && !errors.iter().any(|e| error_set(e) == set.name) {
            errors.push(ShardError::Empty {
                set: set.name.clone(),
            });
        }
        sets.insert(set.name.clone(), text);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Assembled {
        policy: revision.policy.clone(),
        sets,
        digest: digest::of_revision(revision),
    })
}

fn error_set(e: &ShardError) -> &str {
    match e {
        ShardError::Missing { set, .. }
        | ShardError::BadDigest { set, .. }
        | ShardError::Duplicate { set, .. }
        | ShardError::DuplicateSet { set }
        | ShardError::Empty { set } => set,
    }
}

/// Cuts a range list into shards of at most `MAX_SHARD_BYTES`, at line boundaries,
/// and returns each with its digest: what a publisher creates. A single line longer
/// than the limit is an error (no range-list line is anywhere near it).
pub fn split(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut shards = Vec::new();
    let mut current = String::new();
    for line in text.split_inclusive('\n') {
        if line.len() > MAX_SHARD_BYTES {
            return Err(format!("a line of {} bytes cannot fit a shard", line.len()));
        }
        if current.len() + line.len() > MAX_SHARD_BYTES {
            shards.push(std::mem::take(&mut current));
        }
        current.push_str(line);
    }
    if !current.is_empty() {
        shards.push(current);
    }
    Ok(shards
        .into_iter()
        .map(|s| (digest::of(s.as_bytes()), s))
        .collect())
}
