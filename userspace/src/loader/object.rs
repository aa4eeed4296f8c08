//! The compiled XDP object, embedded at build time so `airlock` is one file.

use std::sync::atomic::{AtomicU8, Ordering};

use aya::{Ebpf, EbpfLoader};

use super::LoaderError;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/airlock-ebpf"));

/// The datapath log level programs loaded from now on get (aya-log's numbering:
/// 0 off, 1 error ... 4 debug, 5 trace). Process-wide: it is a choice of the
/// command line (`--datapath-log`, `-vv`), fixed before anything is loaded.
static DATAPATH_LOG: AtomicU8 = AtomicU8::new(0);

/// Sets the level of the debug and trace lines in programs loaded from now on.
/// Baked into the program at load (a read-only global the verifier prunes on): a
/// filter already attached keeps the level it was loaded with.
pub fn set_datapath_log(level: aya_log::Level) {
    DATAPATH_LOG.store(level as u8, Ordering::Relaxed);
}

/// The level [`set_datapath_log`] set (0: off).
pub fn datapath_log() -> u8 {
    DATAPATH_LOG.load(Ordering::Relaxed)
}

/// Parses the object and creates its maps (not yet pinned, program not yet loaded).
pub fn load_object() -> Result<Ebpf, LoaderError> {
    load_object_logging(DATAPATH_LOG.load(Ordering::Relaxed))
}

/// As [`load_object`], with datapath log level `level` (0: off).
pub fn load_object_logging(level: u8) -> Result<Ebpf, LoaderError> {
    if OBJECT.is_empty() {
        return Err(LoaderError::NoObject);
    }
    EbpfLoader::new()
        .override_global(aya_log::LEVEL, &level, true)
        .load(OBJECT)
        .map_err(|e| LoaderError::Load(Box::new(e)))
}
