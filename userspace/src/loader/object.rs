//! The compiled XDP object, embedded at build time so `airlock` is one file.

use aya::{Ebpf, EbpfLoader};

use super::LoaderError;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/airlock-ebpf"));

/// Parses the object and creates its maps (not yet pinned, program not yet loaded).
pub fn load_object() -> Result<Ebpf, LoaderError> {
    if OBJECT.is_empty() {
        return Err(LoaderError::NoObject);
    }
    EbpfLoader::new()
        .load(OBJECT)
        .map_err(|e| LoaderError::Load(Box::new(e)))
}
