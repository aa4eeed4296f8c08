//! Which policy, which revision, in which mode, applies to one node: pure logic, from
//! the policies the agent's watch holds and its own Node's labels.
//!
//! Every outcome that is not a clear answer is reported, never guessed: two policies
//! at the same highest priority are a conflict; a policy whose selector cannot be
//! parsed stops the resolution (it might have been the one meant for this node). In
//! both cases the agent keeps enforcing what it enforces and says why.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt as _};
use sha2::{Digest as _, Sha256};

use crate::AirlockPolicy;

/// What the node should enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    pub policy: String,
    pub revision: String,
    /// In force because the node is in the policy's canary.
    pub canary: bool,
    /// Apply in monitor mode whatever the policy text says (a canary's first stage).
    pub monitor: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Apply(Selected),
    /// No policy selects this node.
    NoPolicy,
    /// Several policies select it at the same, highest priority.
    Conflict {
        priority: i32,
        policies: Vec<String>,
    },
    /// A policy's selector (or its canary's) is not a valid label selector.
    InvalidSelector {
        policy: String,
        error: String,
    },
}

impl Resolution {
    /// The reason for the node status' InSync condition when nothing new applies.
    pub fn reason(&self) -> &'static str {
        match self {
            Resolution::Apply(_) => "Resolved",
            Resolution::NoPolicy => "NoPolicySelectsNode",
            Resolution::Conflict { .. } => "PolicyConflict",
            Resolution::InvalidSelector { .. } => "InvalidSelector",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Resolution::Apply(s) => format!(
                "policy {} revision {}{}{}",
                s.policy,
                s.revision,
                if s.canary { " (canary)" } else { "" },
                if s.monitor { " in monitor mode" } else { "" }
            ),
            Resolution::NoPolicy => "no AirlockPolicy selects this node's labels".into(),
            Resolution::Conflict { priority, policies } => format!(
                "AirlockPolicies {} all select this node at priority {priority}: give one a higher priority",
                policies.join(", ")
            ),
            Resolution::InvalidSelector { policy, error } => {
                format!("AirlockPolicy {policy}: invalid node selector: {error}")
            }
        }
    }
}

fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    let selector = Selector::try_from(selector.clone()).map_err(|e| e.0)?;
    Ok(selector.matches(labels))
}

/// Resolves `policies` for the node `node` with `labels`.
pub fn resolve(
    policies: &[AirlockPolicy],
    node: &str,
    labels: &BTreeMap<String, String>,
) -> Resolution {
    let mut selecting: Vec<(&str, &AirlockPolicy)> = Vec::new();
    for policy in policies {
        let name = policy.metadata.name.as_deref().unwrap_or_default();
        match matches(&policy.spec.node_selector, labels) {
            Ok(true) => selecting.push((name, policy)),
            Ok(false) => {}
            Err(error) => {
                return Resolution::InvalidSelector {
                    policy: name.into(),
                    error,
                };
            }
        }
    }
    let Some(top) = selecting.iter().map(|(_, p)| p.spec.priority).max() else {
        return Resolution::NoPolicy;
    };
    let mut winners: Vec<(&str, &AirlockPolicy)> = selecting
        .into_iter()
        .filter(|(_, p)| p.spec.priority == top)
        .collect();
    if winners.len() > 1 {
        let mut policies: Vec<String> = winners.iter().map(|(n, _)| n.to_string()).collect();
        policies.sort();
        return Resolution::Conflict {
            priority: top,
            policies,
        };
    }
    let (name, policy) = winners.pop().expect("one winner");
    if let Some(canary) = &policy.spec.canary {
        let selected = match &canary.node_selector {
            None => true,
            Some(selector) => match matches(selector, labels) {
                Ok(m) => m,
                Err(error) => {
                    return Resolution::InvalidSelector {
                        policy: name.into(),
                        error: format!("canary: {error}"),
                    };
                }
            },
        };
        let share = canary.percent.unwrap_or(100);
        if selected && in_canary(name, node, share) {
            return Resolution::Apply(Selected {
                policy: name.into(),
                revision: canary.revision.clone(),
                canary: true,
                monitor: canary.monitor,
            });
        }
    }
    Resolution::Apply(Selected {
        policy: name.into(),
        revision: policy.spec.revision.clone(),
        canary: false,
        monitor: false,
    })
}

/// The node's place among 10,000 buckets for this policy: a hash of both names, so
/// it never changes for a node, and a node in the canary at some percentage stays
/// in it at any larger one.
pub fn canary_bucket(policy: &str, node: &str) -> u16 {
    let mut hasher = Sha256::new();
    hasher.update(b"airlock canary\0");
    hasher.update(policy.as_bytes());
    hasher.update(b"\0");
    hasher.update(node.as_bytes());
    let hash = hasher.finalize();
    let word = u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"));
    (word % 10_000) as u16
}

/// Whether `node` is in `policy`'s canary at `percent` (0 to 100).
pub fn in_canary(policy: &str, node: &str, percent: u8) -> bool {
    u32::from(canary_bucket(policy, node)) < u32::from(percent.min(100)) * 100
}
