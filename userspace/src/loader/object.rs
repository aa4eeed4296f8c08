//! The compiled XDP object, embedded at build time so `airlock` is one file.

use aya::{Ebpf, EbpfLoader};

use super::LoaderError;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/airlock-ebpf"));

/// Chooses the datapath log level (aya-log's numbering: 0 off, 1 error ... 4
/// debug, 5 trace) for filters this process installs, and for running filters it
/// applies to (`--datapath-log`, `-vv`): see `log_level.rs`.
pub fn set_datapath_log(level: u8) {
    super::log_level::choose(level);
}

/// The level chosen on this process's command line (0: off, or none chosen).
pub fn datapath_log() -> u8 {
    super::log_level::chosen().unwrap_or(0)
}

/// Parses the object and creates its maps (not yet pinned, program not yet
/// loaded), with the chosen datapath log level (off if none was chosen).
pub fn load_object() -> Result<Ebpf, LoaderError> {
    load_object_logging(datapath_log())
}

/// As [`load_object`], with datapath log level `level` (0: off).
pub fn load_object_logging(level: u8) -> Result<Ebpf, LoaderError> {
    if OBJECT.is_empty() {
        return Err(LoaderError::NoObject);
    }
    // aya-log's own gate is frozen open (its check is pruned at verification);
    // the program's `LOG_LEVEL` map is the gate that can change while it runs.
    let mut ebpf = EbpfLoader::new()
        .override_global(aya_log::LEVEL, &(aya_log::Level::Trace as u8), true)
        .load(OBJECT)
        .map_err(|e| LoaderError::Load(Box::new(e)))?;
    super::log_level::set_in_object(&mut ebpf, level)?;
    Ok(ebpf)
}
