//! A test-only way to stop the process at a named step of an apply, so the tests
//! can SIGKILL it exactly there (tests/tests/kill_steps.rs).
//!
//! `AIRLOCK_TEST_STOP_AT=STEP[:N]` makes the N-th (default: first) arrival at
//! `STEP` raise SIGSTOP; nothing else changes. Unset (always, outside the tests),
//! it costs one environment read per process. It is compiled into the production
//! binary on purpose: the tests must kill the binary that ships. It gives nothing to
//! an attacker: whoever sets the environment of a root `airlock` process can already
//! make it run any code (`LD_PRELOAD`), and stopping it is no more than killing it,
//! which every step below must survive anyway (that is what the tests prove).
//!
//! The steps, in the order an apply reaches them: `compile`, `tables-written`
//! (source tables of the inactive copy written, ports not yet), `before-flip`,
//! `after-flip`, `install-attached` (a new filter attached, its link not yet
//! pinned), `install-pinned` (pinned in the staging directory, not yet renamed into
//! place), `rollback` (a commit-confirm rollback about to flip back), `watchdog`
//! (the confirm watchdog waiting out the window).

use std::sync::{
    OnceLock,
    atomic::{AtomicU32, Ordering},
};

/// The variable naming the step.
pub const STOP_AT: &str = "AIRLOCK_TEST_STOP_AT";

/// Raises SIGSTOP if `AIRLOCK_TEST_STOP_AT` names `step` and this is the arrival it
/// counts to.
pub fn stop_at(step: &str) {
    static WANTED: OnceLock<Option<(String, u32)>> = OnceLock::new();
    static ARRIVALS: AtomicU32 = AtomicU32::new(0);
    let wanted = WANTED.get_or_init(|| {
        let value = std::env::var(STOP_AT).ok()?;
        let (name, nth) = match value.split_once(':') {
            Some((name, nth)) => (name.to_owned(), nth.parse().ok()?),
            None => (value, 1),
        };
        Some((name, nth))
    });
    let Some((name, nth)) = wanted else {
        return;
    };
    if name == step && ARRIVALS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        tracing::warn!(step, "{STOP_AT}: stopping (SIGSTOP)");
        // SAFETY: raise has no preconditions.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
}
