//! `AirlockPolicy`: cluster-scoped; which nodes get which revision.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which nodes get which revision. Where several policies select one node the
/// highest `priority` wins; two at the same, highest priority are a conflict the
/// node reports (its status, condition InSync False, reason PolicyConflict), and the
/// node keeps what it enforces: never a silent pick.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "airlock.dev",
    version = "v1alpha1",
    kind = "AirlockPolicy",
    plural = "airlockpolicies",
    shortname = "alp",
    category = "airlock",
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".spec.revision"}"#,
    printcolumn = r#"{"name":"Canary","type":"string","jsonPath":".spec.canary.revision"}"#,
    printcolumn = r#"{"name":"Percent","type":"integer","jsonPath":".spec.canary.percent"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AirlockPolicySpec {
    /// The nodes this policy is for, by their labels. Empty selects every node.
    #[serde(default)]
    pub node_selector: LabelSelector,
    /// Higher wins where several policies select a node; equal is a conflict.
    #[serde(default)]
    pub priority: i32,
    /// The AirlockPolicyRevision in force on the selected nodes. Rollback: set it back.
    #[schemars(length(min = 1, max = 253))]
    pub revision: String,
    /// A revision for some of the selected nodes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// A staged rollout: nodes in the canary (matching `nodeSelector`, if set, and, if
/// `percent` is set, in that share of nodes) get `revision`, in monitor mode while
/// `monitor` is true. A node's share is a hash of its name, so a node in the canary
/// at 10 % stays in it at 20 %.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Canary {
    #[schemars(length(min = 1, max = 253))]
    pub revision: String,
    /// Nodes (among those the policy selects) that may be in the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Share of those nodes in the canary, 0 to 100; unset means all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<u8>,
    /// Apply the canary revision in monitor mode: count and sample what it would
    /// drop, drop nothing. The first stage of a rollout.
    #[serde(default)]
    pub monitor: bool,
}
