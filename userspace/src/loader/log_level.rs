//! The datapath log level of a filter: the one word of its `LOG_LEVEL` map
//! (ebpf-programs/src/log.rs), set at install and changeable on a running filter
//! (`airlock apply --datapath-log LEVEL`, the agent's option) without reloading
//! the program.

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

use aya::maps::{Array, Map, MapData};

use super::LoaderError;

/// The map's name in the object (the kernel keeps at most 15 bytes).
pub const MAP_LOG_LEVEL: &str = "LOG_LEVEL";

/// No level was chosen on the command line: installs get 0 (off), running
/// filters keep theirs.
const UNCHOSEN: u8 = u8::MAX;

/// The level this process's command line chose (aya-log's numbering: 0 off,
/// 1 error ... 4 debug, 5 trace), or [`UNCHOSEN`].
static CHOSEN: AtomicU8 = AtomicU8::new(UNCHOSEN);

/// Chooses the level for filters this process installs or applies to
/// (`--datapath-log`, `-vv`); 0 is off.
pub fn choose(level: u8) {
    CHOSEN.store(level.min(aya_log::Level::Trace as u8), Ordering::Relaxed);
}

/// The chosen level, if one was.
pub fn chosen() -> Option<u8> {
    Some(CHOSEN.load(Ordering::Relaxed)).filter(|&level| level != UNCHOSEN)
}

/// Writes `level` into the `LOG_LEVEL` map of a freshly loaded object.
pub(crate) fn set_in_object(ebpf: &mut aya::Ebpf, level: u8) -> Result<(), LoaderError> {
    let map = ebpf
        .map_mut(MAP_LOG_LEVEL)
        .ok_or(LoaderError::MissingMap(MAP_LOG_LEVEL))?;
    let mut array = Array::<&mut MapData, u32>::try_from(map).map_err(map_error)?;
    array.set(0, u32::from(level), 0).map_err(map_error)
}

/// The `LOG_LEVEL` map of the filter pinned in `dir`, opened before anything is
/// changed so that a filter without one (installed by an airlock from before it)
/// is refused up front.
pub(crate) struct PinnedLogLevel(Array<MapData, u32>);

impl PinnedLogLevel {
    pub(crate) fn open(dir: &Path, iface: &str) -> Result<Self, LoaderError> {
        let path = super::pins::pinned_path(dir, MAP_LOG_LEVEL)?;
        if !super::pins::present(&path) {
            return Err(LoaderError::NoLogLevel(iface.to_owned()));
        }
        let data = MapData::from_pin(&path).map_err(map_error)?;
        let map = Map::from_map_data(data).map_err(map_error)?;
        Ok(Self(Array::try_from(map).map_err(map_error)?))
    }

    /// The level in force.
    pub(crate) fn get(&self) -> Result<u8, LoaderError> {
        let level = self.0.get(&0, 0).map_err(map_error)?;
        Ok(level.min(aya_log::Level::Trace as u32) as u8)
    }

    /// Sets the level; the program reads it at its next line.
    pub(crate) fn set(&mut self, level: u8) -> Result<(), LoaderError> {
        self.0.set(0, u32::from(level), 0).map_err(map_error)
    }
}

/// The level in force in the filter pinned in `dir` (`None`: a filter without the
/// map, whose level was fixed at its install).
pub fn pinned(dir: &Path, iface: &str) -> Option<u8> {
    PinnedLogLevel::open(dir, iface).ok()?.get().ok()
}

fn map_error(source: aya::maps::MapError) -> LoaderError {
    LoaderError::Map {
        name: MAP_LOG_LEVEL,
        source,
    }
}
