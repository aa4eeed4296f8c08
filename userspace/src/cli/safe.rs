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

/// The shortest probation `--confirm` accepts. Confirming means reading the
/// PENDING line and typing `airlock confirm` in a session that still works, and
/// checking first that you can still get in (a second SSH login) takes longer:
/// a window shorter than this could only ever roll back, whatever the policy does.
pub const MIN_CONFIRM: std::time::Duration = std::time::Duration::from_secs(10);

/// `--confirm DURATION`: between [`MIN_CONFIRM`] and `confirm::MAX_CONFIRM`.
pub fn parse_confirm_window(text: &str) -> Result<humantime::Duration, String> {
    let within: humantime::Duration = text.parse().map_err(|e| format!("{e}; e.g. 2m or 90s"))?;
    if *within < MIN_CONFIRM {
        return Err(format!(
            "{text} is too short to react in: at least {} (the time to read the PENDING line and type `airlock confirm`; checking first that you can still log in takes longer), e.g. --confirm 2m",
            humantime::format_duration(MIN_CONFIRM)
        ));
    }
    if *within > confirm::MAX_CONFIRM {
        return Err(format!(
            "{text} is longer than {}; e.g. --confirm 2m",
            humantime::format_duration(confirm::MAX_CONFIRM)
        ));
    }
    Ok(within)
}
