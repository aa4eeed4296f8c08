//! The policy summary kept beside each generation in the pinned `META` map: what
//! `status` shows and what a later apply compares against. Kept in bpffs rather than
//! a state file so it can never outlive, or disagree with, the filter it describes.

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use airlock_common::{LAYOUT_VERSION, META_BYTES, PolicyMeta};
use serde::{Deserialize, Serialize};

use super::{AttachMode, LoaderError};
use crate::{
    compile::Compiled,
    policy::{Policy, XdpMode},
};

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
    /// How the program runs; `None` before it is attached. Recorded by the
    /// kernel's name, `driver` or `skb` (`""` for none), as it always was: the
    /// summary's bytes in the pinned `META` map are unchanged.
    #[serde(with = "attach_mode_name")]
    pub attach_mode: Option<AttachMode>,
    /// The attach mode asked for (policy `xdp_mode`, or `--xdp-mode`); `auto` in
    /// summaries written before it was recorded.
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// Set names of `management` and `deny`, for `airlock diff` (absent in summaries
    /// written before they were recorded).
    #[serde(default)]
    pub management: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    /// Set by `apply --confirm`: this policy is on probation and is rolled back at the
    /// deadline unless `airlock confirm` clears it (see `crate::safety::confirm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_confirm: Option<PendingConfirm>,
    /// Set when a rollback put this policy back in force: `status` then says why
    /// the policy in force is not the one last applied (the watchdog that did it
    /// runs detached, its log goes nowhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<Restored>,
}

/// How a policy came back into force: the apply after it was not confirmed in time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// The apply that was rolled back.
    pub rolled_back_serial: u64,
    /// Its confirmation deadline, seconds since the Unix epoch.
    pub deadline_unix: u64,
    /// When the rollback happened, seconds since the Unix epoch.
    pub at_unix: u64,
}

/// A commit-confirm in progress, recorded with the policy it guards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingConfirm {
    /// Seconds since the Unix epoch after which the policy is rolled back (shown to
    /// people; the boot-clock deadline below decides when there is one).
    pub deadline_unix: u64,
    /// Ties the policy to the watchdog armed for it (one token per `apply`).
    pub token: u64,
    /// The deadline on `CLOCK_BOOTTIME`, in milliseconds: the wall clock can be set
    /// back or forth during the window (NTP stepping it, `date -s`), the boot clock
    /// cannot, and the pins it is kept in do not outlive a boot. Absent in states
    /// written by older versions (the wall clock decides then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_boot_ms: Option<u64>,
}

impl PolicySummary {
    /// The summary of `policy` as compiled, for recording beside it in the kernel.
    pub fn describe(policy: &Policy, compiled: &Compiled, path: &Path) -> Self {
        let stats = compiled.stats();
        PolicySummary {
            policy_path: std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.to_owned())
                .display()
                .to_string(),
            applied_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            serial: 0,
            mode: policy.mode.name().to_owned(),
            default: policy.default.name().to_owned(),
            rules: policy
                .rules
                .iter()
                .map(|rule| RuleSummary {
                    name: rule.name.clone(),
                    ports: rule.ports.iter().map(ToString::to_string).collect(),
                    from: rule.from.sets.iter().map(|s| s.name.clone()).collect(),
                })
                .collect(),
            prefixes_v4: stats.entries.v4,
            prefixes_v6: stats.entries.v6,
            attach_mode: None,
            xdp_mode: policy.xdp_mode,
            management: policy
                .management
                .sets
                .iter()
                .map(|s| s.name.clone())
                .collect(),
            deny: policy.deny.sets.iter().map(|s| s.name.clone()).collect(),
            pending_confirm: None,
            restored: None,
        }
    }

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
/// [`PolicySummary::attach_mode`] as the string it has always been in the pinned
/// summary. A name this airlock does not know (a newer one's) reads as `None`
/// rather than making the whole summary unreadable.
mod attach_mode_name {
    use serde::{Deserialize as _, Deserializer, Serializer};

    use super::AttachMode;

    pub fn serialize<S: Serializer>(mode: &Option<AttachMode>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(mode.map_or("", AttachMode::as_str))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<AttachMode>, D::Error> {
        Ok(AttachMode::from_name(&String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attach_mode_is_recorded_by_its_kernel_name() {
        let mut summary = PolicySummary::default();
        for (mode, name) in [
            (Some(AttachMode::Driver), "driver"),
            (Some(AttachMode::Skb), "skb"),
            (None, ""),
        ] {
            summary.attach_mode = mode;
            let json = serde_json::to_value(&summary).unwrap();
            assert_eq!(json["attach_mode"], name);
            let back: PolicySummary = serde_json::from_value(json).unwrap();
            assert_eq!(back.attach_mode, mode);
        }
        let newer = r#"{"policy_path":"p","applied_at":1,"serial":1,"mode":"enforce","default":"pass","rules":[],"prefixes_v4":0,"prefixes_v6":0,"attach_mode":"offload"}"#;
        let read: PolicySummary = serde_json::from_str(newer).unwrap();
        assert_eq!(read.attach_mode, None);
    }
}
