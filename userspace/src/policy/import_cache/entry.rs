//! An entry of the import cache on disk: its layout, read back whole through a
//! read-only mapping and checked, and written under a temporary name.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use super::V6_BYTES;

const MAGIC: &[u8; 8] = b"ALIMPRT\n";
/// Bumped with any change to the layout or to what a line parses to.
const FORMAT: u32 = 1;

/// A file mapped read-only: a re-apply reads its entry where the page cache
/// holds it, with no copy and no fresh memory to fault in (zeroing fresh pages
/// is the largest single cost of an apply at a million prefixes on this kind of
/// host). Entries are replaced by rename and never changed in place, in a
/// directory only root can write, so the pages stay what was checked (a
/// truncation by root would fault the reader).
pub(super) struct Mapped {
    memory: std::ptr::NonNull<std::ffi::c_void>,
    len: usize,
}

impl Mapped {
    fn of(file: &std::fs::File, len: usize) -> Option<Mapped> {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap};
        let length = std::num::NonZeroUsize::new(len)?;
        // SAFETY: a fresh private read-only mapping of `len` bytes of the file
        // (its size), unmapped on drop; the type's comment says why its bytes do
        // not change while mapped.
        let memory = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_POPULATE,
                file,
                0,
            )
        }
        .ok()?;
        Some(Mapped { memory, len })
    }
}

// SAFETY: the mapping is read-only and private, and never changes while mapped
// (see the type's comment): its bytes may be read from any thread (the writer
// of the next entry copies the text from it while the merge reads its keys).
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: mapped in `of` with this length; no slice of it outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.memory, self.len) };
    }
}

/// An entry's bytes: mapped from its file, or (tests) made in memory.
pub(super) enum Storage {
    Mapped(Mapped),
    #[cfg(test)]
    Owned(Vec<u8>),
}

impl Storage {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            // SAFETY: the mapping holds `len` readable bytes while `self` lives.
            Storage::Mapped(m) => unsafe {
                std::slice::from_raw_parts(m.memory.as_ptr().cast::<u8>(), m.len)
            },
            #[cfg(test)]
            Storage::Owned(bytes) => bytes,
        }
    }
}

/// A cached entry, checked whole: the file's bytes, and where in them its text
/// and its sorted IPv4 keys (8 bytes each, little-endian) and IPv6 keys are.
pub(super) struct Entry {
    pub(super) bytes: Storage,
    pub(super) text: std::ops::Range<usize>,
    pub(super) v4: std::ops::Range<usize>,
    pub(super) v6: std::ops::Range<usize>,
}

impl Entry {
    pub(super) fn text(&self) -> &[u8] {
        &self.bytes.as_slice()[self.text.clone()]
    }
    pub(super) fn v4(&self) -> &[u8] {
        &self.bytes.as_slice()[self.v4.clone()]
    }
    pub(super) fn v6(&self) -> &[u8] {
        &self.bytes.as_slice()[self.v6.clone()]
    }
}

/// The header: magic, format, then the lengths of the key (the name), the text,
/// the IPv4 and the IPv6 keys, in bytes.
pub(super) const HEADER: usize = 8 + 4 + 4 * 8;

fn header(key: &str, text: usize, v4: usize, v6: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + key.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    for n in [key.len(), text, v4, v6] {
        out.extend_from_slice(&(n as u64).to_le_bytes());
    }
    out.extend_from_slice(key.as_bytes());
    out
}

/// The entry at `file` if it is whole and ours: root's, 0600, not a symlink,
/// for `key`, of this format, every length adding up, the CRC right. An entry
/// whose text is far longer than the new one (`new_len`) is not read: most of
/// it would have to be parsed anyway.
pub(super) fn read_entry(file: &Path, key: &str, new_len: usize) -> Option<Entry> {
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(file)
        .ok()?;
    let meta = handle.metadata().ok()?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        tracing::debug!(file = %file.display(), "import cache entry not root's alone: not used");
        return None;
    }
    let size = usize::try_from(meta.len()).ok()?;
    if size > new_len.saturating_mul(2).saturating_add(1 << 20) {
        return None;
    }
    let bytes = Storage::Mapped(Mapped::of(&handle, size)?);
    let (body, crc) = bytes.as_slice().split_last_chunk::<4>()?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return None;
    }
    let (head, rest) = body.split_first_chunk::<HEADER>()?;
    if &head[..8] != MAGIC || head[8..12] != FORMAT.to_le_bytes() {
        return None;
    }
    let field = |i: usize| {
        let at = 12 + i * 8;
        usize::try_from(u64::from_le_bytes(head[at..at + 8].try_into().ok()?)).ok()
    };
    let (key_len, text_len, v4_len, v6_len) = (field(0)?, field(1)?, field(2)?, field(3)?);
    let total = key_len
        .checked_add(text_len)?
        .checked_add(v4_len)?
        .checked_add(v6_len)?;
    if total != rest.len() || !v4_len.is_multiple_of(8) || !v6_len.is_multiple_of(V6_BYTES) {
        return None;
    }
    if &rest[..key_len] != key.as_bytes() {
        return None;
    }
    let text = HEADER + key_len..HEADER + key_len + text_len;
    let v4 = text.end..text.end + v4_len;
    let v6 = v4.end..v4.end + v6_len;
    Some(Entry {
        bytes,
        text,
        v4,
        v6,
    })
}

/// An entry being written: under a temporary name (0600, in the trusted
/// directory), renamed over the old one only once exactly the keys announced in
/// its header are written. Anything else (a failure, keys that stop short)
/// leaves the old entry or none, and the temporary file goes; the next apply
/// parses in full.
pub(super) struct EntryFile {
    file: tempfile::NamedTempFile,
    crc: crc32fast::Hasher,
    /// Key bytes still to come.
    left: usize,
}

impl EntryFile {
    /// Begins the entry: its header and text (`text`'s pieces, in order).
    pub(super) fn create(
        dir: &Path,
        key: &str,
        text: &[&[u8]],
        (v4, v6): (usize, usize),
    ) -> std::io::Result<Self> {
        let mut file = tempfile::Builder::new()
            .prefix(".import-")
            .tempfile_in(dir)?;
        let head = header(key, text.iter().map(|p| p.len()).sum(), v4, v6);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        file.write_all(&head)?;
        for part in text {
            crc.update(part);
        }
        write_pieces(file.as_file_mut(), text)?;
        Ok(EntryFile {
            file,
            crc,
            left: v4 + v6,
        })
    }

    pub(super) fn keys(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.left = self
            .left
            .checked_sub(bytes.len())
            .ok_or_else(|| std::io::Error::other("more keys than announced"))?;
        self.crc.update(bytes);
        self.file.write_all(bytes)
    }

    /// Puts the entry in place if it is complete (`Ok(false)` if not).
    pub(super) fn finish(mut self, dir: &Path, key: &str) -> std::io::Result<bool> {
        if self.left != 0 {
            return Ok(false);
        }
        self.file.write_all(&self.crc.finalize().to_le_bytes())?;
        self.file.persist(dir.join(key)).map_err(|e| e.error)?;
        Ok(true)
    }
}

/// Writes `pieces` in order, many to a system call (a changed text is
/// thousands of pieces).
fn write_pieces(file: &mut std::fs::File, pieces: &[&[u8]]) -> std::io::Result<()> {
    const AT_ONCE: usize = 512;
    for group in pieces.chunks(AT_ONCE) {
        let mut slices: Vec<std::io::IoSlice<'_>> =
            group.iter().map(|p| std::io::IoSlice::new(p)).collect();
        let mut left = &mut slices[..];
        while !left.is_empty() {
            match file.write_vectored(left) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => std::io::IoSlice::advance_slices(&mut left, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

pub(super) fn log_written(result: std::io::Result<bool>) {
    match result {
        Ok(true) => {}
        Ok(false) => tracing::debug!("import cache entry abandoned"),
        Err(error) => tracing::debug!(%error, "import cache not written"),
    }
}
