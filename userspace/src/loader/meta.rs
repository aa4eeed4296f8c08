//! The policy summary kept beside each generation in the pinned `META` map: what
//! `status` shows and what a later apply compares against. Kept in bpffs rather than
//! a state file so it can never outlive, or disagree with, the filter it describes.

use airlock_common::{LAYOUT_VERSION, META_BYTES, PolicyMeta};
use serde::{Deserialize, Serialize};

use super::LoaderError;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSummary {
    pub name: String,
    pub ports: Vec<String>,
    pub from: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySummary {
    /// The policy file as given to `apply`.
    pub policy_path: String,
    /// Seconds since the Unix epoch.
    pub applied_at: u64,
    /// Counts applies on this interface: 1 for the first, +1 for each swap.
    pub serial: u64,
    pub mode: String,
    pub default: String,
    pub rules: Vec<RuleSummary>,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    /// `driver` (native) or `skb` (generic).
    pub attach_mode: String,
}

impl PolicySummary {
    pub(crate) fn encode(&self) -> Result<PolicyMeta, LoaderError> {
        let json = serde_json::to_vec(self).unwrap_or_default();
        if json.len() > META_BYTES {
            return Err(LoaderError::MetaTooLarge {
                len: json.len(),
                max: META_BYTES,
            });
        }
        let mut meta = PolicyMeta {
            layout_version: LAYOUT_VERSION,
            len: json.len() as u32,
            bytes: [0; META_BYTES],
        };
        meta.bytes[..json.len()].copy_from_slice(&json);
        Ok(meta)
    }

    /// `None` for an empty slot or one written by a different layout.
    pub(crate) fn decode(meta: &PolicyMeta) -> Option<Self> {
        let len = meta.len as usize;
        if meta.layout_version != LAYOUT_VERSION || len == 0 || len > META_BYTES {
            return None;
        }
        serde_json::from_slice(&meta.bytes[..len]).ok()
    }
}
