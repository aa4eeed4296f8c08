//! Content digests: `sha256:` and 64 lowercase hex digits, over the exact bytes.
//!
//! A shard is named in its revision by digest, and the agent recomputes the digest of
//! what it read: whoever can write a shard object cannot change what a revision
//! applies without changing the revision, which is immutable.

use sha2::{Digest as _, Sha256};

/// The digest format, as the CRD schemas check it.
pub const PATTERN: &str = "^sha256:[0-9a-f]{64}$";

/// `sha256:<hex>` of `bytes`.
pub fn of(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The digest of a revision as a whole: its policy text and, in order, each set's
/// name and its shards' digests. Two revisions with the same digest apply the same
/// policy to the same prefixes; node status reports it, so drift shows at a glance.
pub fn of_revision(spec: &crate::AirlockPolicyRevisionSpec) -> String {
    let mut hasher = Sha256::new();
    // Length-prefixed fields, so no two different revisions hash the same bytes.
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(spec.policy.as_bytes());
    for set in &spec.source_sets {
        field(set.name.as_bytes());
        field(&(set.shards.len() as u64).to_le_bytes());
        for shard in &set.shards {
            field(shard.digest.as_bytes());
        }
    }
    let hash = hasher.finalize();
    let mut out = String::from("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        assert_eq!(
            of(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
