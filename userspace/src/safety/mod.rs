//! Applying a policy without locking yourself out: the anti-lockout check run before
//! every apply (CLI and agent), commit-confirm with a rollback that survives the
//! applying process, and ephemeral-port warnings.

pub mod confirm;
pub mod ephemeral;
pub mod host_facts;
pub mod lockout;
