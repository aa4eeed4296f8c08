//! Policies from Kubernetes custom resources (issue 23; docs/kubernetes.md).
//!
//! The resource types and the rules (which policy, which revision, canary, shard
//! reassembly) are in the `airlock-crds` crate, as pure logic. Here:
//!
//! - `cache`: the resolved revision on the host's disk, laid out like a ConfigMap
//!   volume, which is what the agent's ordinary file source then enforces: one
//!   apply pipeline for both sources, and the last good policy survives API
//!   outages and restarts;
//! - `status`: the node's AirlockNodeStatus, as its server-side apply body;
//! - `source`: the watches (kube-rs watcher/reflector) that feed the cache, and
//!   the status writer.

pub mod cache;
pub mod source;
pub mod status;
