//! `AirlockPolicyRevision` (immutable) and `AirlockSourceShard`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most bytes of range-list text one shard may hold: a third of etcd's 1.5 MiB
/// request limit, so a shard with its metadata, JSON escaping and an apply's
/// managed fields is far from it. About 30,000 IPv4 or 12,000 IPv6 prefixes.
pub const MAX_SHARD_BYTES: usize = 512 * 1024;

/// One policy, immutable once created (the API server refuses any change to
/// `spec`): a change is a new revision, and a rollback is pointing an AirlockPolicy
/// back at an older one.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "airlock.dev",
    version = "v1alpha1",
    kind = "AirlockPolicyRevision",
    plural = "airlockpolicyrevisions",
    shortname = "alprev",
    category = "airlock",
    printcolumn = r#"{"name":"Sets","type":"string","jsonPath":".spec.sourceSets[*].name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "a revision is immutable: create a new one"}
]))]
pub struct AirlockPolicyRevisionSpec {
    /// The policy, as the text of a policy file (docs/policy.md). A set that imports
    /// `file: sets/NAME.txt` gets the source set NAME below.
    #[schemars(length(min = 1, max = 524288))]
    pub policy: String,
    /// Range lists too large for the policy text, each split into shards.
    #[serde(default)]
    pub source_sets: Vec<SourceSet>,
}

/// A range list assembled from shards, in order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSet {
    /// Its file name under `sets/` is NAME.txt.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
    )]
    pub name: String,
    /// At least one: an empty set never applies (it would open nothing, or, read as
    /// "no restriction", everything).
    #[schemars(length(min = 1))]
    pub shards: Vec<ShardRef>,
}

/// A shard by name, and the digest its content must have.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `sha256:` and the hex SHA-256 of the shard's `prefixes`, byte for byte.
    #[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))]
    pub digest: String,
}

/// One piece of a range list: lines as in an imported file (one CIDR or address a
/// line, `#` comments). Only a revision naming its digest gives it any meaning.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "airlock.dev",
    version = "v1alpha1",
    kind = "AirlockSourceShard",
    plural = "airlocksourceshards",
    shortname = "alshard",
    category = "airlock",
    printcolumn = r#"{"name":"Set","type":"string","jsonPath":".spec.set"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "a shard is immutable: create a new one"}
]))]
pub struct AirlockSourceShardSpec {
    /// The source set it was cut from (informational; the revision decides).
    #[schemars(length(max = 63))]
    pub set: String,
    #[schemars(length(min = 1, max = 524288))]
    pub prefixes: String,
}
