//! The safe-apply steps `apply` and `status` share: the anti-lockout check, finishing
//! expired commit-confirms, and pending confirmations as JSON.

use airlock::{
    loader::PinRoot,
    policy::Policy,
    safety::{
        confirm,
        lockout::{self, Facts, LockoutError},
    },
};
use serde_json::{Value, json};

/// Refuses (a [`LockoutError`], exit 2) a policy that would cut the SSH session, the
/// gateway or neighbour discovery on `ifaces`, unless `force`. Warnings go to stderr.
/// `facts`: the host's sessions, routes and addresses (`Facts::from_system`).
pub fn check_lockout(
    policy: &Policy,
    facts: &Facts,
    ifaces: &[String],
    force: bool,
) -> anyhow::Result<()> {
    let assessment = lockout::assess(policy, facts, ifaces);
    lockout::log_findings(&assessment, force);
    airlock::safety::ephemeral::warn(policy);
    if assessment.is_lockout() && !force {
        return Err(LockoutError { assessment }.into());
    }
    Ok(())
}

/// Rolls back expired commit-confirms (the watchdog should have; it may have been
/// killed) and says so on stderr.
pub fn finish_expired(root: &PinRoot) {
    for rolled in confirm::expire_due(root) {
        match rolled.result {
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

/// `apply --confirm`: applies on probation, arms the watchdog, says what happens next.
pub fn apply_confirmed(
    root: &PinRoot,
    ifaces: &[String],
    compiled: &airlock::compile::Compiled,
    summary: &airlock::loader::PolicySummary,
    within: std::time::Duration,
) -> anyhow::Result<Vec<airlock::loader::ApplyOutcome>> {
    let (done, pending) = match confirm::apply_confirmed(root, ifaces, compiled, summary, within) {
        Ok(ok) => ok,
        // Unwrapped so the exit code sees what it is (2: refused, nothing changed).
        Err(confirm::ConfirmApplyError::Pending(conflict)) => return Err(conflict.into()),
        Err(error) => return Err(error.into()),
    };
    let left = pending.deadline_unix.saturating_sub(confirm::now_unix());
    eprintln!(
        "PENDING CONFIRMATION on {}: run `airlock confirm` within {left}s, or this apply is rolled back (even if this shell is gone)",
        ifaces.join(", ")
    );
    Ok(done)
}
