//! Applying a policy without locking yourself out: the anti-lockout check run before
//! every apply (CLI and agent), commit-confirm with a rollback that survives the
//! applying process, `airlock diff` against the policy in force, and the synthetic
//! packets `airlock explain --live` runs through the attached program.

pub mod confirm;
pub mod diff;
pub mod ephemeral;
pub mod host_facts;
pub mod lockout;
pub mod probe;
