//! The grace period after a flip, on record, so that the next apply need not wait
//! for one (see `grace`).
//!
//! `ACTIVE_GEN` holds the generation in bit 0 (all the program reads) and, above
//! it, a count of flips. After an apply, `airlock grace-record` (the agent: a
//! thread) reads each filter's word, waits one grace period, and writes the
//! `ACTIVE_GEN` map's id and that word into the filter's `GRACE_DONE` map. An
//! apply that finds the record for the word in force knows no packet reads the
//! copy that flip retired, and rewrites it at once; otherwise it waits.
//!
//! A record must never match a flip it did not follow. The map id tells a filter
//! from one reinstalled in its place; the count never repeats a word, because
//! `GRACE_DONE` also keeps the highest word ever flipped to, and a flip counts on
//! from there even after a loader that wrote the bare generation (0 or 1, which
//! no record names) had flipped in between.

use std::{collections::HashMap, path::Path, path::PathBuf};

use airlock_common::{GRACE_DONE_SLOTS, MAP_ACTIVE_GEN, MAP_GRACE_DONE};
use aya::maps::{Array, IterableMap as _, Map, MapData};

use super::{LoaderError, PinRoot, grace::membarrier};

/// `GRACE_DONE`'s slots.
const RECORD: u32 = 0;
const HIGHEST_WORD: u32 = 1;

/// `GRACE_DONE` as found pinned beside a filter, if it has every slot: without a
/// place for the highest word the count could repeat, so such a filter is treated
/// as having no records (every apply waits for itself).
pub(crate) fn usable(done: Array<MapData, u64>) -> Option<Array<MapData, u64>> {
    (done.len() >= GRACE_DONE_SLOTS).then_some(done)
}

/// The word a flip to `generation` writes, over `word` in force and `highest`, the
/// highest word flipped to before (0: unknown). Counted from 1, so a flipped word is
/// never a bare generation; after 2^31 - 1 flips the count starts again.
fn flipped_word(word: u32, highest: u32, generation: u32) -> u32 {
    let flips = (word >> 1).max(highest >> 1) % (u32::MAX >> 1) + 1;
    (flips << 1) | (generation & 1)
}

/// What `GRACE_DONE` holds once a grace period has passed after the flip that wrote
/// `word` into the `ACTIVE_GEN` map with id `map_id`.
fn record(map_id: u32, word: u32) -> u64 {
    (u64::from(map_id) << 32) | u64::from(word)
}

/// Whether `found` (a record) says a grace period followed the flip to `word` of the
/// `ACTIVE_GEN` map `map_id`. A bare generation is never on record.
fn names_flip(found: u64, map_id: u32, word: u32) -> bool {
    word > 1 && found == record(map_id, word)
}

/// Writes the flip to `generation` into `active`, counting on from the word in force
/// and the highest one `done` (the filter's `GRACE_DONE`, absent from filters
/// pinned before it existed) has seen; the highest word is written first. Where
/// `done` cannot be read or written, the flip writes the bare generation, which no
/// record names, rather than fail (an undo or a rollback must go through).
pub(crate) fn flip(
    active: &mut Array<MapData, u32>,
    done: Option<&mut Array<MapData, u64>>,
    generation: u32,
) -> Result<(), LoaderError> {
    let word = active.get(&0, 0).map_err(|source| LoaderError::Map {
        name: MAP_ACTIVE_GEN,
        source,
    })?;
    let next = match done {
        Some(done) => done
            .get(&HIGHEST_WORD, 0)
            .and_then(|highest| {
                let next = flipped_word(word, highest as u32, generation);
                done.set(HIGHEST_WORD, u64::from(next), 0).map(|()| next)
            })
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "{MAP_GRACE_DONE} not usable; the next apply waits");
                generation & 1
            }),
        None => flipped_word(word, 0, generation),
    };
    active.set(0, next, 0).map_err(|source| LoaderError::Map {
        name: MAP_ACTIVE_GEN,
        source,
    })
}

/// Whether a grace period is on record since the last flip of the filter whose maps
/// these are: no packet still reads its inactive copy. False wherever anything is
/// unknown.
pub(crate) fn passed_since_flip(active: &Array<MapData, u32>, done: &Array<MapData, u64>) -> bool {
    let (Ok(word), Ok(info), Ok(found)) =
        (active.get(&0, 0), active.map().info(), done.get(&RECORD, 0))
    else {
        return false;
    };
    names_flip(found, info.id(), word)
}

fn open_array<V: aya::Pod>(dir: &Path, name: &str) -> Option<Array<MapData, V>> {
    let data = MapData::from_pin(super::pins::pinned_path(dir, name).ok()?).ok()?;
    Array::try_from(Map::from_map_data(data).ok()?).ok()
}

fn open_grace_done(dir: &Path) -> Option<Array<MapData, u64>> {
    usable(open_array(dir, MAP_GRACE_DONE)?)
}

/// The filters in `dirs` that exist and have no grace period on record since their
/// last flip, with the word in force in each.
pub(crate) fn words_not_on_record(dirs: &[PathBuf]) -> HashMap<PathBuf, u32> {
    dirs.iter()
        .filter_map(|dir| {
            let active = open_array::<u32>(dir, MAP_ACTIVE_GEN)?;
            let on_record =
                open_grace_done(dir).is_some_and(|done| passed_since_flip(&active, &done));
            let word = active.get(&0, 0).ok()?;
            (!on_record).then(|| (dir.clone(), word))
        })
        .collect()
}

/// Waits one grace period and records it for every filter pinned under `root`, as
/// following the flip each had when this began. Returns how many were recorded
/// (none where `membarrier` does not wait).
pub fn record_grace_periods(root: &PinRoot) -> usize {
    // Words and maps read before the wait: the grace period then follows each of
    // those flips. The maps stay open, so a filter removed or reinstalled meanwhile
    // gets no record (its old maps do, to no effect), and a record overwritten by
    // an older one only costs a wait.
    let filters: Vec<_> = root
        .interfaces()
        .unwrap_or_default()
        .iter()
        .filter_map(|iface| {
            let dir = root.interface_dir(iface);
            let active = open_array::<u32>(&dir, MAP_ACTIVE_GEN)?;
            let done = open_grace_done(&dir)?;
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
        .filter_map(|(mut done, record)| done.set(RECORD, record, 0).ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flip_writes_a_new_word_with_the_generation_in_bit_0() {
        let (mut word, mut highest) = (0, 0);
        let mut seen = std::collections::HashSet::new();
        for flip in 0..1000u32 {
            let generation = flip % 2;
            word = flipped_word(word, highest, generation);
            highest = word;
            assert_eq!(word & 1, generation);
            assert!(word > 1, "never a bare generation");
            assert!(seen.insert(word), "flip {flip} repeated word {word}");
        }
        // At the top of the count it starts again from 1, not at a bare generation.
        assert_eq!(flipped_word(u32::MAX - 1, 0, 1), 3);
        assert_eq!(flipped_word(u32::MAX, u32::MAX, 0), 2);
    }

    #[test]
    fn a_flip_after_a_bare_generation_counts_on_from_the_highest_word() {
        // Flips to 5 and 7; a loader that writes the bare generation flips to 0;
        // the next flip must not write 3, 5 or 7 again (a record of 7 from before
        // would otherwise name it).
        let next = flipped_word(0, 7, 1);
        assert!(next > 7, "{next}");
        assert_eq!(next & 1, 1);
        // Without a highest word (a filter pinned before GRACE_DONE), from the word.
        assert_eq!(flipped_word(7, 0, 0), 8);
    }

    #[test]
    fn a_record_names_one_flip_of_one_map() {
        let found = record(42, 7);
        assert!(names_flip(found, 42, 7));
        assert!(!names_flip(found, 43, 7), "another filter's map");
        assert!(!names_flip(found, 42, 9), "a later flip");
        assert!(!names_flip(record(42, 1), 42, 1), "a bare generation");
        assert!(!names_flip(0, 0, 0), "an empty record");
    }
}
