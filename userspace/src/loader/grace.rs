//! Waiting until no program still reads the inactive generation.
//!
//! A packet reads `ACTIVE_GEN` once, then searches that generation's tables. A
//! packet that read it just before the last flip may still be searching the copy
//! that flip made inactive, which is the copy the next apply rewrites. XDP and TC
//! programs run inside an RCU read-side section, so after one RCU grace period that
//! follows the flip, no packet reads the old copy any more.
//!
//! That grace period need not hold up the next apply: `apply` starts
//! `airlock grace-record` as it exits (the agent a thread), which waits one out and
//! records it in the filter's `GRACE_DONE` map. An apply that finds the record for
//! the flip in force writes at once; one that finds none, or one for an earlier
//! flip, waits as before.

use std::path::Path;

use airlock_common::{MAP_ACTIVE_GEN, MAP_GRACE_DONE};
use aya::maps::{Array, IterableMap as _, Map, MapData};

use super::{LoaderError, PinRoot, source_tables};

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

/// The `ACTIVE_GEN` word a flip to `generation` writes over `word`: bit 0 is the
/// generation (all the program reads); the bits above count flips, so that a
/// grace period on record names the flip it followed. Counted from 1, so a flipped
/// word is never 0 or 1, the only words of loaders that wrote the bare generation:
/// no record matches those.
pub(crate) fn flipped_word(word: u32, generation: u32) -> u32 {
    let flips = (word >> 1) % (u32::MAX >> 1) + 1;
    (flips << 1) | (generation & 1)
}

/// What `GRACE_DONE` holds once a grace period has passed after the flip that wrote
/// `word` into the `ACTIVE_GEN` map with id `map_id`. The id tells a filter from one
/// reinstalled in its place (map ids are not reused while the kernel runs), the
/// word one flip from the next.
fn record(map_id: u32, word: u32) -> u64 {
    (u64::from(map_id) << 32) | u64::from(word)
}

/// Whether a grace period is on record since the last flip of the filter whose maps
/// these are: no packet still reads its inactive copy, which may then be rewritten
/// at once. False wherever anything is unknown.
pub(crate) fn passed_since_flip(active: &Array<MapData, u32>, done: &Array<MapData, u64>) -> bool {
    let (Ok(word), Ok(info)) = (active.get(&0, 0), active.map().info()) else {
        return false;
    };
    word > 1 && done.get(&0, 0).is_ok_and(|r| r == record(info.id(), word))
}

/// A filter's `ACTIVE_GEN` and `GRACE_DONE` maps, opened from its pin directory
/// (None for a filter pinned before `GRACE_DONE` existed).
fn open_record_maps(dir: &Path) -> Option<(Array<MapData, u32>, Array<MapData, u64>)> {
    fn open<V: aya::Pod>(dir: &Path, name: &str) -> Option<Array<MapData, V>> {
        let data = MapData::from_pin(dir.join(name)).ok()?;
        Array::try_from(Map::from_map_data(data).ok()?).ok()
    }
    Some((open(dir, MAP_ACTIVE_GEN)?, open(dir, MAP_GRACE_DONE)?))
}

/// Whether every filter pinned under `root` has a grace period on record since its
/// last flip (an apply then needs none of its own).
pub(crate) fn passed_for_all(root: &PinRoot) -> bool {
    root.interfaces().is_ok_and(|ifaces| {
        ifaces.iter().all(|iface| {
            open_record_maps(&root.interface_dir(iface))
                .is_some_and(|(active, done)| passed_since_flip(&active, &done))
        })
    })
}

/// Waits one grace period and records it for every filter pinned under `root`, as
/// following the flip each had when this began. Returns how many were recorded
/// (none where `membarrier` does not wait).
pub fn record_grace_periods(root: &PinRoot) -> usize {
    // Words and maps read before the wait: the grace period then follows each of
    // those flips. The maps stay open, so a filter removed or reinstalled meanwhile
    // gets no record (its old maps do, to no effect).
    let filters: Vec<_> = root
        .interfaces()
        .unwrap_or_default()
        .iter()
        .filter_map(|iface| {
            let (active, done) = open_record_maps(&root.interface_dir(iface))?;
            let word = active.get(&0, 0).ok()?;
            let id = active.map().info().ok()?.id();
            (word > 1).then_some((done, record(id, word)))
        })
        .collect();
    if filters.is_empty() || !membarrier() {
        return 0;
    }
    filters
        .into_iter()
        .filter_map(|(mut done, record)| done.set(0, record, 0).ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::flipped_word;

    #[test]
    fn every_flip_writes_a_new_word_with_the_generation_in_bit_0() {
        let mut word = 0;
        let mut seen = std::collections::HashSet::new();
        for flip in 0..1000u32 {
            let generation = flip % 2;
            word = flipped_word(word, generation);
            assert_eq!(word & 1, generation);
            assert!(word > 1, "never a bare generation");
            assert!(seen.insert(word), "flip {flip} repeated word {word}");
        }
        // From a bare generation written by an older loader, and at the top of the
        // count, where it starts again from 1 rather than at 0 or 1.
        assert_eq!(flipped_word(1, 0), 2);
        assert_eq!(flipped_word(u32::MAX - 1, 1), 3);
        assert_eq!(flipped_word(u32::MAX, 0), 2);
    }
}
