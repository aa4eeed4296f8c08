//! The safe-apply pieces `apply` and `status` share: finishing expired
//! commit-confirms, and pending confirmations as JSON.

use airlock::{loader::PinRoot, safety::confirm};
use serde_json::{Value, json};

/// Rolls back expired commit-confirms (the watchdog should have; it may have been
/// killed) and says so on stderr.
pub fn finish_expired(root: &PinRoot) {
    print_expired(&confirm::expire_due(root));
}

/// Says on stderr which expired commit-confirms were rolled back.
pub fn print_expired(expired: &[confirm::RolledBack]) {
    for rolled in expired {
        match &rolled.result {
            Ok(target) => eprintln!(
                "{}: apply #{} was not confirmed in time: rolled back to {target}",
                rolled.iface, rolled.serial
            ),
            Err(error) => eprintln!(
                "{}: apply #{} was not confirmed in time, and rolling it back failed: {error}",
                rolled.iface, rolled.serial
            ),
        }
    }
}

/// The confirmation pending on `iface`, for `status -o json` (null if none).
pub fn pending_json(root: &PinRoot, iface: &str) -> Value {
    match confirm::pending(root, iface, confirm::now_unix()) {
        Ok(Some(p)) => json!({
            "deadline_unix": p.deadline_unix,
            "seconds_left": p.seconds_left.max(0),
            "rollback": p.rollback,
            "rollback_to": p.rollback.to_string(),
        }),
        _ => Value::Null,
    }
}
