//! Shard reassembly: a revision applies only with every shard present, once, with
//! its digest; an empty set never applies. And splitting keeps shards under the limit.

use std::collections::BTreeMap;

use airlock_crds::{
    AirlockPolicyRevisionSpec, AirlockSourceShardSpec, MAX_SHARD_BYTES, ShardRef, SourceSet,
    digest,
    shards::{ShardError, assemble, split},
};

fn shard(text: &str) -> AirlockSourceShardSpec {
    AirlockSourceShardSpec {
        set: "blocklist".into(),
        prefixes: text.into(),
    }
}

fn revision(refs: &[(&str, &str)]) -> AirlockPolicyRevisionSpec {
    AirlockPolicyRevisionSpec {
        policy: "version: 1\n".into(),
        source_sets: vec![SourceSet {
            name: "blocklist".into(),
            shards: refs
                .iter()
                .map(|(name, text)| ShardRef {
                    name: name.to_string(),
                    digest: digest::of(text.as_bytes()),
                })
                .collect(),
        }],
    }
}

fn store(pairs: &[(&str, &str)]) -> BTreeMap<String, AirlockSourceShardSpec> {
    pairs
        .iter()
        .map(|(n, t)| (n.to_string(), shard(t)))
        .collect()
}

const A: &str = "192.0.2.0/24\n";
const B: &str = "198.51.100.0/24\n2001:db8::/32";

#[test]
fn complete_set_assembles_in_order() {
    let rev = revision(&[("s-a", A), ("s-b", B)]);
    let got = assemble(&rev, &store(&[("s-b", B), ("s-a", A)])).unwrap();
    assert_eq!(
        got.sets["blocklist"],
        "192.0.2.0/24\n198.51.100.0/24\n2001:db8::/32\n"
    );
    assert_eq!(got.digest, digest::of_revision(&rev));
}

#[test]
fn a_missing_shard_means_nothing_applies() {
    let rev = revision(&[("s-a", A), ("s-b", B)]);
    assert_eq!(
        assemble(&rev, &store(&[("s-a", A)])).unwrap_err(),
        [ShardError::Missing {
            set: "blocklist".into(),
            shard: "s-b".into()
        }]
    );
}

#[test]
fn a_shard_whose_content_changed_is_refused() {
    let rev = revision(&[("s-a", A), ("s-b", B)]);
    let errors = assemble(&rev, &store(&[("s-a", A), ("s-b", "0.0.0.0/0\n")])).unwrap_err();
    assert!(
        matches!(&errors[..], [ShardError::BadDigest { shard, .. }] if shard == "s-b"),
        "{errors:?}"
    );
}

#[test]
fn a_shard_named_twice_is_refused() {
    let rev = revision(&[("s-a", A), ("s-a", A)]);
    assert_eq!(
        assemble(&rev, &store(&[("s-a", A)])).unwrap_err(),
        [ShardError::Duplicate {
            set: "blocklist".into(),
            shard: "s-a".into()
        }]
    );
}

#[test]
fn a_set_named_twice_is_refused() {
    let mut rev = revision(&[("s-a", A)]);
    rev.source_sets.push(rev.source_sets[0].clone());
    assert_eq!(
        assemble(&rev, &store(&[("s-a", A)])).unwrap_err(),
        [ShardError::DuplicateSet {
            set: "blocklist".into()
        }]
    );
}

#[test]
fn empty_sets_never_apply() {
    for text in ["", "\n\n", "# only a comment\n   \n"] {
        let rev = revision(&[("s-e", text)]);
        assert_eq!(
            assemble(&rev, &store(&[("s-e", text)])).unwrap_err(),
            [ShardError::Empty {
                set: "blocklist".into()
            }],
            "{text:?}"
        );
    }
    // A set with no shards at all (the schema refuses it; the agent does too).
    let rev = revision(&[]);
    assert!(matches!(
        &assemble(&rev, &store(&[])).unwrap_err()[..],
        [ShardError::Empty { .. }]
    ));
}

#[test]
fn every_problem_is_reported_at_once() {
    let rev = revision(&[("s-a", A), ("s-b", B), ("s-c", A)]);
    let errors = assemble(&rev, &store(&[("s-a", "10.0.0.0/8\n")])).unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:?}");
}

/// A million prefixes split into shards under the limit that reassemble to the
/// same text.
#[test]
fn a_million_prefixes_split_and_reassemble() {
    let mut text = String::new();
    for i in 0..1_000_000u32 {
        let [a, b, c, _] = (0x0a00_0000u32 + (i << 8)).to_be_bytes();
        text.push_str(&format!("{a}.{b}.{c}.0/24\n"));
    }
    let shards = split(&text).unwrap();
    assert!(shards.iter().all(|(_, s)| s.len() <= MAX_SHARD_BYTES));
    eprintln!(
        "1,000,000 IPv4 prefixes, {} bytes: {} shards",
        text.len(),
        shards.len()
    );
    let refs: Vec<(String, &str)> = shards
        .iter()
        .enumerate()
        .map(|(i, (_, s))| (format!("big-{i}"), s.as_str()))
        .collect();
    let refs_borrowed: Vec<(&str, &str)> = refs.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let rev = revision(&refs_borrowed);
    let got = assemble(&rev, &store(&refs_borrowed)).unwrap();
    assert_eq!(got.sets["blocklist"], text);
}
