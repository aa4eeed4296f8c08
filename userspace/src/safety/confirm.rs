//! Commit-confirm: `apply --confirm 60s` puts a policy in force on probation; unless
//! `airlock confirm` clears it before the deadline, it is rolled back: to the previous
//! policy (a one-word flip back to the other generation, which still holds it) or,
//! when there was none, by removing the filter.
//!
//! Why it survives the applying process: the pending state is not kept in any
//! process. It is written, with the policy, into the `META` JSON of the new
//! generation in the same apply that puts the policy in force (so there is no moment
//! when the policy is in force without its deadline), and lives in bpffs as long as
//! the filter does. Two things finish it:
//! - a watchdog armed by the apply: `airlock confirm-watchdog`, started with setsid in
//!   its own session, stdio on /dev/null, so neither the death of `apply`, its process
//!   group, nor the terminal going away reaches it. It polls the pending state once a
//!   second (exits as soon as it is confirmed or superseded) and rolls back at the
//!   deadline;
//! - any later `airlock status`, `airlock apply` and the agent's reconcile, which roll
//!   back whatever expired pending state they find (if the watchdog was killed too).
//!
//! The rollback target is not recorded but read when it is needed: the other
//! generation holds the previous policy if it holds a valid one (an apply always
//! writes the inactive copy and flips), and a freshly installed filter has never
//! written it. All interfaces of one apply share a token and a deadline and roll back
//! together. Every read-check-write of the pending state holds an exclusive `flock`
//! on the pin root directory, so `confirm` and a rollback cannot interleave. A
//! rollback to the previous policy notes itself in that policy's summary, which
//! `status` shows: the watchdog's own log goes nowhere.

use std::{
    io,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::loader::{self, LoaderError, PendingConfirm, PinRoot, PolicyMaps, Restored, WriterLock};

/// The longest probation `--confirm` accepts.
pub const MAX_CONFIRM: Duration = Duration::from_secs(24 * 3600);

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds on `CLOCK_BOOTTIME`: time since boot, suspend included, never set.
fn now_boot_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000
    })
}

/// Milliseconds until `confirm`'s deadline (negative once past): by the boot clock
/// when it was recorded, so that a wall clock set back during the window cannot
/// put the rollback off, nor one set forward bring it on early.
fn millis_left(confirm: &PendingConfirm, now_unix: u64) -> i64 {
    match confirm.deadline_boot_ms {
        Some(deadline) => deadline as i64 - now_boot_ms() as i64,
        None => (confirm.deadline_unix as i64 - now_unix as i64) * 1000,
    }
}

/// What a rollback returns to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RollbackTarget {
    /// Flip back to `generation`, which holds apply #`serial` of `policy_path`.
    Previous {
        generation: u32,
        serial: u64,
        policy_path: String,
    },
    /// No previous policy: the filter is removed.
    Remove,
}

impl std::fmt::Display for RollbackTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RollbackTarget::Previous {
                serial,
                policy_path,
                ..
            } => write!(f, "the previous policy (apply #{serial}, {policy_path})"),
            RollbackTarget::Remove => write!(f, "no filter (there was none before)"),
        }
    }
}

/// A confirmation pending on one interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pending {
    pub iface: String,
    pub deadline_unix: u64,
    pub token: u64,
    /// Zero or negative once the deadline has passed.
    pub seconds_left: i64,
    pub serial: u64,
    pub rollback: RollbackTarget,
    #[serde(skip)]
    millis_left: i64,
}

fn target_of(maps: &PolicyMaps) -> Result<RollbackTarget, LoaderError> {
    let other = 1 - maps.active_generation()?;
    Ok(match maps.generation_summary(other)? {
        Some(previous) => RollbackTarget::Previous {
            generation: other,
            serial: previous.serial,
            policy_path: previous.policy_path,
        },
        None => RollbackTarget::Remove,
    })
}

/// The confirmation pending on `iface`, if any.
pub fn pending(root: &PinRoot, iface: &str, now: u64) -> Result<Option<Pending>, LoaderError> {
    // Opened for writing where allowed, only to read: the config is then read
    // through a mapping of its page, where a descriptor that may only read copies
    // the whole POLICY value (megabytes, twice on every apply's path). A read-only
    // bpffs or a caller without write access reads it the slow way.
    let dir = root.interface_dir(iface);
    let maps = match PolicyMaps::open_pinned(&dir) {
        Ok(maps) => maps,
        Err(_) => PolicyMaps::open_pinned_read_only(&dir)?,
    };
    let Some(summary) = maps.active_summary()? else {
        return Ok(None);
    };
    let Some(confirm) = summary.pending_confirm else {
        return Ok(None);
    };
    let millis_left = millis_left(&confirm, now);
    Ok(Some(Pending {
        iface: iface.to_owned(),
        deadline_unix: confirm.deadline_unix,
        token: confirm.token,
        // Rounded up: expired (<= 0) only once the deadline itself has passed.
        seconds_left: (millis_left + 999).div_euclid(1000),
        serial: summary.serial,
        rollback: target_of(&maps)?,
        millis_left,
    }))
}

/// Every pending confirmation under `root` (interfaces whose maps cannot be read are
/// skipped).
pub fn pending_all(root: &PinRoot, now: u64) -> Vec<Pending> {
    root.interfaces()
        .unwrap_or_default()
        .iter()
        .filter_map(|iface| pending(root, iface, now).ok().flatten())
        .collect()
}

/// Like [`pending_all`], but an interface whose maps the kernel refuses to show
/// (EACCES, EPERM) is an error: `confirm` must not answer "nothing pending" then.
fn pending_readable(root: &PinRoot, now: u64) -> Result<Vec<Pending>, LoaderError> {
    let mut found = Vec::new();
    for iface in root.interfaces()? {
        match pending(root, &iface, now) {
            Ok(Some(p)) => found.push(p),
            Err(error) if error.is_permission_denied() => return Err(error),
            Ok(None) | Err(_) => {}
        }
    }
    Ok(found)
}

/// Why a rollback happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// The deadline passed unconfirmed: the restored policy's summary records it.
    Expired,
    /// `apply --confirm` could not arm its watchdog, and fails saying so itself.
    NotArmed,
}

/// Rolls back the apply `pending` describes (the caller holds the [`WriterLock`]
/// and has checked that it is still pending).
fn roll_back(
    writer: &WriterLock,
    root: &PinRoot,
    pending: &Pending,
    cause: Cause,
) -> Result<RollbackTarget, LoaderError> {
    let iface = pending.iface.as_str();
    let mut maps = PolicyMaps::open_pinned(&root.interface_dir(iface))?;
    let target = target_of(&maps)?;
    match &target {
        RollbackTarget::Previous { generation, .. } => {
            if cause == Cause::Expired {
                note_restored(&mut maps, *generation, pending);
            }
            crate::test_hook::stop_at("rollback");
            maps.set_active_generation(*generation)?;
        }
        RollbackTarget::Remove => {
            drop(maps);
            loader::remove(writer, root, iface)?;
        }
    }
    Ok(target)
}

/// Notes in `generation`'s summary that the rollback of `pending` puts it back in
/// force. Written while that copy is not in force yet, and only a description:
/// failing to write it must not keep the rollback from happening.
fn note_restored(maps: &mut PolicyMaps, generation: u32, pending: &Pending) {
    let noted = maps.generation_summary(generation).and_then(|summary| {
        let Some(mut summary) = summary else {
            return Ok(());
        };
        summary.restored = Some(Restored {
            rolled_back_serial: pending.serial,
            deadline_unix: pending.deadline_unix,
            at_unix: now_unix(),
        });
        maps.rewrite_summary(generation, &summary)
    });
    if let Err(error) = noted {
        tracing::warn!(iface = pending.iface, %error, "rollback not noted in the restored policy's summary");
    }
}

/// One interface rolled back (or not: `result` says).
#[derive(Debug)]
pub struct RolledBack {
    pub iface: String,
    pub serial: u64,
    pub result: Result<RollbackTarget, LoaderError>,
}

/// Rolls back every interface whose pending confirmation has expired, and with them
/// every other interface of the same apply (same token). Cheap when nothing is
/// pending: one META read per interface.
pub fn expire_due(root: &PinRoot) -> Vec<RolledBack> {
    let now = now_unix();
    let tokens: Vec<u64> = pending_all(root, now)
        .into_iter()
        .filter(|p| p.seconds_left <= 0)
        .map(|p| p.token)
        .collect();
    if tokens.is_empty() {
        return Vec::new();
    }
    let Ok(lock) = WriterLock::acquire(root) else {
        return Vec::new();
    };
    roll_back_tokens(&lock, root, &tokens, now, Cause::Expired)
}

fn roll_back_tokens(
    writer: &WriterLock,
    root: &PinRoot,
    tokens: &[u64],
    now: u64,
    cause: Cause,
) -> Vec<RolledBack> {
    // Read again under the lock: a `confirm` may have won the race.
    pending_all(root, now)
        .into_iter()
        .filter(|p| tokens.contains(&p.token))
        .map(|p| {
            let result = roll_back(writer, root, &p, cause);
            match &result {
                Ok(target) => tracing::warn!(
                    iface = p.iface,
                    serial = p.serial,
                    %target,
                    "apply was not confirmed in time; rolled back"
                ),
                Err(error) => tracing::error!(iface = p.iface, %error, "rollback failed"),
            }
            RolledBack {
                iface: p.iface,
                serial: p.serial,
                result,
            }
        })
        .collect()
}

/// Why an apply was refused while a confirmation is pending.
#[derive(Debug, thiserror::Error)]
#[error(
    "a confirmation is pending on {iface} ({seconds_left}s left): run `airlock confirm` to keep that policy (then apply), or wait for its rollback"
)]
pub struct PendingConflict {
    pub iface: String,
    pub seconds_left: i64,
}

/// Refuses an apply to `ifaces` while one of them has a confirmation pending (a
/// second probation would make the unconfirmed policy the rollback target).
pub fn check_no_pending(root: &PinRoot, ifaces: &[String]) -> Result<(), PendingConflict> {
    let now = now_unix();
    match pending_all(root, now)
        .into_iter()
        .find(|p| ifaces.contains(&p.iface))
    {
        Some(p) => Err(PendingConflict {
            iface: p.iface,
            seconds_left: p.seconds_left.max(0),
        }),
        None => Ok(()),
    }
}

/// The probation of an `apply --confirm` that ends `within` from now, to be written
/// with the policy it guards (so the policy is never in force without its deadline).
pub fn new_probation(within: Duration) -> PendingConfirm {
    let within = within.as_secs().max(1);
    PendingConfirm {
        deadline_unix: now_unix() + within,
        token: new_token(),
        deadline_boot_ms: Some(now_boot_ms() + within * 1000),
    }
}

/// Why a probation could not be guarded.
#[derive(Debug, thiserror::Error)]
#[error("arming the rollback watchdog: {0} (the apply was rolled back)")]
pub struct WatchdogError(#[source] pub io::Error);

/// Arms the watchdog of an apply just made on probation (the caller still holds
/// the [`WriterLock`] of that apply). If it cannot be started, the apply is rolled
/// back at once: nothing would roll it back at its deadline.
pub fn arm_or_roll_back(
    writer: &WriterLock,
    root: &PinRoot,
    pending: &PendingConfirm,
) -> Result<(), WatchdogError> {
    arm_watchdog(root, pending).map(drop).map_err(|error| {
        roll_back_tokens(writer, root, &[pending.token], 0, Cause::NotArmed);
        WatchdogError(error)
    })
}

fn new_token() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

/// Starts `airlock confirm-watchdog` as its own session leader with stdio on
/// /dev/null: it shares nothing with the applying process that could end it.
fn arm_watchdog(root: &PinRoot, pending: &PendingConfirm) -> io::Result<u32> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command
        .arg("confirm-watchdog")
        .arg("--pin-root")
        .arg(root.path())
        .arg("--token")
        .arg(pending.token.to_string())
        .arg("--deadline")
        .arg(pending.deadline_unix.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/");
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Not waited for: when `apply` exits, init (or the subreaper) adopts it.
    let child = command.spawn()?;
    Ok(child.id())
}

/// The watchdog's loop: returns once the apply identified by `token` was confirmed,
/// superseded or removed, or at its deadline (the one recorded with the policy)
/// after rolling it back. Bounded by the deadline (and by [`MAX_CONFIRM`] on the
/// monotonic clock in any case).
pub fn watchdog(root: &PinRoot, token: u64) -> Vec<RolledBack> {
    let started = Instant::now();
    loop {
        let now = now_unix();
        let ours: Vec<Pending> = pending_all(root, now)
            .into_iter()
            .filter(|p| p.token == token)
            .collect();
        if ours.is_empty() || started.elapsed() > MAX_CONFIRM + Duration::from_secs(60) {
            return Vec::new();
        }
        let left = ours.iter().map(|p| p.millis_left).min().unwrap_or(0);
        if left <= 0 {
            let Ok(lock) = WriterLock::acquire(root) else {
                return Vec::new();
            };
            return roll_back_tokens(&lock, root, &[token], now, Cause::Expired);
        }
        crate::test_hook::stop_at("watchdog");
        // Wake when the deadline falls, or once a second to notice a confirmation
        // and exit early.
        let left = Duration::from_millis(left as u64);
        std::thread::sleep(left.min(Duration::from_secs(1)) + Duration::from_millis(10));
    }
}

/// What `confirm` did on one interface.
#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Confirmed {
    /// The policy stays; its deadline is gone.
    Kept { iface: String, serial: u64 },
    /// Too late: the deadline had passed, so it was rolled back instead.
    RolledBack {
        iface: String,
        serial: u64,
        to: RollbackTarget,
    },
}

/// Confirms the pending applies on `ifaces` (every interface when empty). Returns
/// what happened on each interface that had one.
pub fn confirm(root: &PinRoot, ifaces: &[String]) -> Result<Vec<Confirmed>, LoaderError> {
    // A root that cannot be looked at is an error, not "nothing pending".
    match root.path().try_exists() {
        Ok(true) => {}
        Ok(false) => return Ok(Vec::new()),
        Err(e) => return Err(LoaderError::io("checking", root.path(), e)),
    }
    let lock = WriterLock::acquire(root)?;
    let now = now_unix();
    let mut out = Vec::new();
    for p in pending_readable(root, now)? {
        if !ifaces.is_empty() && !ifaces.contains(&p.iface) {
            continue;
        }
        if p.seconds_left <= 0 {
            let to = roll_back(&lock, root, &p, Cause::Expired)?;
            out.push(Confirmed::RolledBack {
                iface: p.iface,
                serial: p.serial,
                to,
            });
            continue;
        }
        let mut maps = PolicyMaps::open_pinned(&root.interface_dir(&p.iface))?;
        if let Some(mut summary) = maps.active_summary()? {
            summary.pending_confirm = None;
            maps.rewrite_active_summary(&summary)?;
        }
        out.push(Confirmed::Kept {
            iface: p.iface,
            serial: p.serial,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::PolicySummary;

    #[test]
    fn pending_state_round_trips_and_old_summaries_still_decode() {
        let mut summary = PolicySummary {
            policy_path: "/etc/airlock/p.yaml".into(),
            serial: 3,
            ..PolicySummary::default()
        };
        let json = serde_json::to_string(&summary).unwrap();
        assert!(!json.contains("pending_confirm"), "{json}");
        assert!(!json.contains("restored"), "{json}");
        summary.pending_confirm = Some(PendingConfirm {
            deadline_unix: 1_700_000_000,
            token: 42,
            deadline_boot_ms: Some(5_000),
        });
        summary.restored = Some(Restored {
            rolled_back_serial: 4,
            deadline_unix: 1_700_000_000,
            at_unix: 1_700_000_001,
        });
        let json = serde_json::to_string(&summary).unwrap();
        let back: PolicySummary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, summary);
        // A summary written before these fields existed.
        let old = r#"{"policy_path":"p","applied_at":1,"serial":1,"mode":"enforce","default":"pass","rules":[],"prefixes_v4":0,"prefixes_v6":0,"attach_mode":"driver"}"#;
        let old: PolicySummary = serde_json::from_str(old).unwrap();
        assert_eq!(old.pending_confirm, None);
        assert_eq!(old.restored, None);
        assert!(old.management.is_empty());
    }

    #[test]
    fn tokens_differ_and_are_never_zero() {
        let a = new_token();
        std::thread::sleep(Duration::from_millis(1));
        assert_ne!(a, new_token());
        assert_ne!(a, 0);
    }
}
