//! Waiting until no program still reads the inactive generation.
//!
//! A packet reads `ACTIVE_GEN` once, then searches that generation's tables. A
//! packet that read it just before the last flip may still be searching the copy
//! that flip made inactive, which is the copy the next apply rewrites. XDP and TC
//! programs run inside an RCU read-side section, so after one RCU grace period that
//! follows the flip, no packet reads the old copy any more.

use std::time::Duration;

/// `MEMBARRIER_CMD_GLOBAL` (linux/membarrier.h): returns once every CPU has passed
/// through a quiescent state, implemented in the kernel as `synchronize_rcu()`.
const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;

/// Where the kernel offers no grace period to user space (`nohz_full` CPUs refuse
/// `MEMBARRIER_CMD_GLOBAL`, a seccomp profile may forbid it): a program run lasts
/// microseconds, so this is thousands of times longer, though no guarantee.
const FALLBACK_WAIT: Duration = Duration::from_millis(50);

/// Returns once programs that started before the call have finished: one RCU grace
/// period, a few milliseconds. Call it after the last flip and before writing the
/// copy that flip retired.
pub(crate) fn wait_for_running_programs() {
    // SAFETY: membarrier takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(
            %error,
            wait_ms = FALLBACK_WAIT.as_millis() as u64,
            "no RCU grace period from membarrier; waiting a fixed time before rewriting the inactive policy copy"
        );
        std::thread::sleep(FALLBACK_WAIT);
    }
}
