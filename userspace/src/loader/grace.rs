//! Waiting until no program still reads the inactive generation.
//!
//! A packet reads `ACTIVE_GEN` once, then searches that generation's tables. A
//! packet that read it just before the last flip may still be searching the copy
//! that flip made inactive, which is the copy the next apply rewrites. XDP and TC
//! programs run inside an RCU read-side section, so after one RCU grace period that
//! follows the flip, no packet reads the old copy any more.
//! That grace period is often over before the next apply begins, and then on
//! record (see `grace_record`): the apply writes at once.

use aya::maps::Map;

use super::{LoaderError, source_tables};

/// `MEMBARRIER_CMD_GLOBAL` (linux/membarrier.h): returns once every CPU has passed
/// through a quiescent state, implemented in the kernel as `synchronize_rcu()` when
/// more than one CPU is online.
const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;

/// Returns once programs that started before the call have finished: one RCU grace
/// period, a few milliseconds. Call it after the last flip and before writing the
/// copy that flip retired (`generation`; `chunks` is an array of chunk maps, named
/// `name`).
///
/// `membarrier` where it waits: not with one CPU online (where a program can still
/// be mid-run on a preemptible kernel), nor where the kernel refuses it (`nohz_full`
/// CPUs) or a seccomp profile forbids it. There, an update of the array of maps,
/// which the kernel always makes wait, costs two grace periods and a 4 MiB map.
pub(crate) fn wait_for_running_programs(
    chunks: &Map,
    generation: u32,
    name: &'static str,
) -> Result<(), LoaderError> {
    if membarrier() {
        return Ok(());
    }
    source_tables::wait_through(chunks, generation, name)
}

/// One RCU grace period through `membarrier`; false where it does not wait (see
/// [`wait_for_running_programs`]).
pub(crate) fn membarrier() -> bool {
    // SAFETY: sysconf takes a constant and touches no memory of ours.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if online <= 1 {
        return false;
    }
    // SAFETY: membarrier takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        tracing::debug!(%error, "membarrier refused; a swap waits through the array of maps");
    }
    rc == 0
}
