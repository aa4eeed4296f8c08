//! `AirlockNodeStatus`: one per node, named after it, written only by its agent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A valid policy is enforced on every interface the node selected.
pub const CONDITION_ENFORCING: &str = "Enforcing";
/// What is enforced is what the API server says this node should enforce.
pub const CONDITION_IN_SYNC: &str = "InSync";

/// What a node's agent enforces, and why. The whole object is the agent's report
/// (no controller acts on it), so it has no spec/status split: the agent writes it
/// with server-side apply, and an admission policy in the chart lets each agent
/// write only the object named after its own node. Per-node objects keep these
/// writes off the shared policy objects.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "airlock.dev",
    version = "v1alpha1",
    kind = "AirlockNodeStatus",
    plural = "airlocknodestatuses",
    shortname = "alns",
    category = "airlock",
    printcolumn = r#"{"name":"Policy","type":"string","jsonPath":".spec.policy"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".spec.revision"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source"}"#,
    printcolumn = r#"{"name":"Enforcing","type":"string","jsonPath":".spec.conditions[?(@.type==\"Enforcing\")].status"}"#,
    printcolumn = r#"{"name":"InSync","type":"string","jsonPath":".spec.conditions[?(@.type==\"InSync\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".spec.conditions[?(@.type==\"InSync\")].reason"}"#,
    printcolumn = r#"{"name":"IPv4","type":"integer","jsonPath":".spec.ipv4Prefixes","priority":1}"#,
    printcolumn = r#"{"name":"IPv6","type":"integer","jsonPath":".spec.ipv6Prefixes","priority":1}"#,
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".spec.digest","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AirlockNodeStatusSpec {
    /// The AirlockPolicy whose revision is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The AirlockPolicyRevision in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Its digest (`airlock_crds::digest::of_revision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `enforce` or `monitor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// In force because this node is in the policy's canary.
    #[serde(default)]
    pub canary: bool,
    #[serde(default)]
    pub ipv4_prefixes: u64,
    #[serde(default)]
    pub ipv6_prefixes: u64,
    /// Where the policy in force came from.
    #[serde(default)]
    pub source: Source,
    /// Enforcing and InSync, with reasons.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Source {
    /// Nothing enforced yet.
    #[default]
    None,
    /// Read from the API server by this run of the agent.
    ApiServer,
    /// The agent's cache on the host: the API server was unreachable.
    LocalCache,
}
