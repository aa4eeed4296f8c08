//! The previous text of each `file:` import and its networks in address order,
//! kept by `airlock apply` so that a re-apply of a slightly changed list parses
//! only the lines that changed. Justified by speed alone: at a million lines the
//! parse and the compiler's sort of a list in no order are each a pass over a
//! million items (docs/performance.md, "Where the time goes"); from the cache a
//! re-apply compares the list, as it reads it a window at a time, with the
//! entry's text (no copy of the list whole: 20 MB of fresh memory at a million
//! lines), parses the changed lines, and merges their networks into the sorted
//! ones, which the compiler then sorts in one pass (a single run). The new
//! entry's text is the old one with the changed lines' bytes put in: exactly
//! the text read, compared and parsed, whoever writes the list meanwhile.
//!
//! What it holds is a pure function of the text: the networks its lines parse
//! to, as a multiset (each line gives at most one, whatever the others say). So
//! an entry never has to agree with what is applied, only with the text stored
//! beside it, and anything wrong with it (missing, torn, another version's,
//! another file's, a line that no longer parses, a network to remove that is not
//! there) falls back to the full parse, never to other networks. Every byte is
//! under a CRC-32 and the counts must fill the file exactly.
//!
//! The directory is trusted like the pin root (`crate::trust`): root's alone,
//! with every directory on the way to it; entries are 0600, never followed
//! through a symlink, written whole under a temporary name and renamed.

use std::cell::RefCell;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sha2::{Digest as _, Sha256};

use super::imports::line_network;
use diff::changed_lines;
use entry::{Entry, EntryFile, log_written, read_entry};
#[cfg(test)]
use entry::{HEADER, Storage};

mod diff;
mod entry;

/// Where `airlock apply` keeps the cache unless `AIRLOCK_CACHE_DIR` says
/// otherwise (set empty: no cache).
pub const DEFAULT_DIR: &str = "/var/cache/airlock";

/// Bytes of a stored IPv6 network: the address (network order), the length.
const V6_BYTES: usize = 17;

thread_local! {
    /// The cache directory of this thread's policy loads, if [`enable`]d here.
    static DIR: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Cache writes not yet finished (joined by [`Session`]'s drop).
static WRITERS: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// The cache in use on this thread while it lives; dropping it waits for the
/// entries being written, so none is left half-written by the process's exit.
pub struct Session(());

impl Drop for Session {
    fn drop(&mut self) {
        DIR.with(|dir| dir.borrow_mut().take());
        wait_for_writers();
    }
}

/// Waits for the entries being written.
pub(crate) fn wait_for_writers() {
    let writers = std::mem::take(&mut *WRITERS.lock().unwrap_or_else(|e| e.into_inner()));
    if writers.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    for writer in writers {
        let _ = writer.join();
    }
    tracing::debug!(
        us = started.elapsed().as_micros() as u64,
        "import cache writers joined"
    );
}

/// No cache for this thread's policy loads (tests).
#[cfg(test)]
pub(crate) fn disable() {
    DIR.with(|dir| dir.borrow_mut().take());
}

/// Uses the cache in `AIRLOCK_CACHE_DIR` (default [`DEFAULT_DIR`]) for this
/// thread's policy loads, if this process is root's and the directory is root's
/// alone (made 0700 if missing). Otherwise the lists are parsed whole, as
/// without it.
pub fn enable() -> Session {
    let base = match std::env::var_os("AIRLOCK_CACHE_DIR") {
        Some(dir) if dir.is_empty() => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => Some(PathBuf::from(DEFAULT_DIR)),
    };
    if let Some(base) = base {
        enable_in(&base.join("imports"));
    }
    Session(())
}

/// [`enable`] with the directory given.
pub(crate) fn enable_in(dir: &Path) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let trusted =
        crate::trust::create_dir_all(dir).and_then(|()| crate::trust::check_dir_and_parents(dir));
    match trusted {
        Ok(()) => {
            remove_stale(dir);
            DIR.with(|d| *d.borrow_mut() = Some(dir.to_owned()));
        }
        Err(error) => tracing::debug!(%error, "import cache not used"),
    }
}

/// Entries kept: the most recently written, up to this many and this many bytes
/// (a host imports a handful of lists; one whose policy moved leaves its entry).
const MAX_ENTRIES: usize = 32;
const MAX_BYTES: u64 = 512 << 20;

/// Tidies the directory: temporary files of entries an apply was killed while
/// writing (a writer finishes in well under a second; an hour is surely stale),
/// and the oldest entries past [`MAX_ENTRIES`] or [`MAX_BYTES`].
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut kept = Vec::new();
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let Ok(modified) = meta.modified() else {
            continue;
        };
        if entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(b".import-")
        {
            if modified.elapsed().is_ok_and(|age| age.as_secs() > 3600) {
                let _ = std::fs::remove_file(entry.path());
            }
        } else if meta.is_file() {
            kept.push((modified, meta.len(), entry.path()));
        }
    }
    kept.sort_by_key(|k| std::cmp::Reverse(k.0));
    let mut bytes = 0;
    for (i, (_, len, path)) in kept.iter().enumerate() {
        bytes += len;
        if i >= MAX_ENTRIES || bytes > MAX_BYTES {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn enabled_dir() -> Option<PathBuf> {
    DIR.with(|d| d.borrow().clone())
}

/// The networks of the list at `path` (at most `limit` bytes) from its cached
/// entry, read and compared with the entry's text as it comes (no copy of it
/// whole), parsing only the lines that changed; the new entry (the text as
/// read) is written on a thread of its own as they are merged. None (nothing to
/// use, or the list not readable as [`import_file::read`] would give it) sends
/// the caller to the full read and parse, which says what is wrong.
///
/// [`import_file::read`]: super::import_file::read
pub(crate) fn networks(path: &Path, limit: u64) -> Option<Vec<IpNet>> {
    let dir = enabled_dir()?;
    let key = key_of(path)?;
    let started = std::time::Instant::now();
    let (file, meta) = super::import_file::open_checked(path, limit).ok()?;
    let size = usize::try_from(meta.len()).ok()?;
    let entry = Arc::new(read_entry(&dir.join(&key), &key, size));
    let read = started.elapsed();
    let nets = entry.as_ref().as_ref().and_then(|old| {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let changes = Changes::of(old, &mut diff::Window::new(file, limit))?;
        let compared = started.elapsed();
        let (count4, count6) = changes.counts(old)?;
        let mut writer = EntryWriter::start(
            dir,
            key,
            Arc::clone(&entry),
            changes.diff,
            count4 * 8,
            count6 * V6_BYTES,
        );
        let nets = changes
            .parsed
            .apply(old, (count4, count6), &mut |bytes| writer.push(bytes))?;
        writer.finish();
        tracing::debug!(
            compare_us = (compared - read).as_micros() as u64,
            merge_us = (started.elapsed() - compared).as_micros() as u64,
            removed = changes.parsed.removed,
            added = changes.parsed.added,
            "import cache updated"
        );
        Some(nets)
    });
    tracing::debug!(
        hit = nets.is_some(),
        read_us = read.as_micros() as u64,
        us = started.elapsed().as_micros() as u64,
        "import cache"
    );
    nets
}

/// Records `nets`, the networks the full parse found in `text` (every line
/// good), for the next apply: sorted and written on a thread of their own.
pub(crate) fn store(path: &Path, text: Arc<String>, nets: &[IpNet]) {
    let (Some(dir), Some(key)) = (enabled_dir(), key_of(path)) else {
        return;
    };
    let mut v4 = Vec::with_capacity(nets.len());
    let mut v6 = Vec::new();
    for net in nets {
        match net {
            IpNet::V4(n) => v4.push(v4_key(n)),
            // As stored: sorted as bytes, in the order of (address, length).
            IpNet::V6(n) => v6.push(v6_stored(v6_key(n))),
        }
    }
    spawn(move || {
        let lengths = (v4.len() * 8, v6.len() * V6_BYTES);
        let result = (|| {
            // The text first, so that it can go before the sort.
            let mut file = EntryFile::create(&dir, &key, &[text.as_bytes()], lengths)?;
            drop(text);
            v4.sort_unstable();
            v6.sort_unstable();
            for chunk in v4.chunks(CHUNK / 8) {
                file.keys(&v4_bytes(chunk))?;
            }
            for chunk in v6.chunks(CHUNK / V6_BYTES) {
                file.keys(chunk.as_flattened())?;
            }
            file.finish(&dir, &key)
        })();
        log_written(result);
    });
}

fn spawn(work: impl FnOnce() + Send + 'static) {
    match std::thread::Builder::new()
        .name("import-cache".into())
        .spawn(work)
    {
        Ok(handle) => WRITERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle),
        Err(error) => tracing::debug!(%error, "import cache not written"),
    }
}

/// What reaches the thread writing an entry: key bytes, in order, then the word
/// that they are all there. A writer whose sender goes without it writes nothing.
enum Piece {
    Keys(Vec<u8>),
    Done,
}

/// Bytes of keys sent to the writer at a time.
const CHUNK: usize = 1 << 16;

/// An entry being written as its keys are merged: the text and header first, on
/// the writer's thread, beside the comparison's last steps and the merge.
struct EntryWriter {
    sender: Option<std::sync::mpsc::Sender<Piece>>,
    chunk: Vec<u8>,
    /// Chunks the writer is done with, to fill again (fresh memory costs more
    /// than the copy).
    returned: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl EntryWriter {
    /// `old` the entry read (shared: its text is most of the new one), `diff`
    /// how the new text differs from it.
    fn start(
        dir: PathBuf,
        key: String,
        old: Arc<Option<Entry>>,
        diff: TextDiff,
        v4: usize,
        v6: usize,
    ) -> EntryWriter {
        let (sender, receiver) = std::sync::mpsc::channel();
        let (give_back, returned) = std::sync::mpsc::channel();
        let started = std::time::Instant::now();
        spawn(move || {
            let result = (|| {
                let Some(old) = old.as_ref() else {
                    return Ok(false);
                };
                let pieces = diff.pieces(old.text());
                let mut file = EntryFile::create(&dir, &key, &pieces, (v4, v6))?;
                for piece in receiver {
                    match piece {
                        Piece::Keys(bytes) => {
                            file.keys(&bytes)?;
                            let _ = give_back.send(bytes);
                        }
                        Piece::Done => return file.finish(&dir, &key),
                    }
                }
                Ok(false)
            })();
            log_written(result);
            tracing::debug!(
                us = started.elapsed().as_micros() as u64,
                "import cache entry written"
            );
        });
        EntryWriter {
            sender: Some(sender),
            chunk: Vec::with_capacity(CHUNK),
            returned,
        }
    }

    /// Queues `bytes` (a key, or a run of the old entry's keys), sent a
    /// [`CHUNK`] at a time.
    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = CHUNK.saturating_sub(self.chunk.len()).max(1);
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.chunk.extend_from_slice(now);
            bytes = later;
            if self.chunk.len() >= CHUNK {
                self.send();
            }
        }
    }

    fn send(&mut self) {
        let next = match self.returned.try_recv() {
            Ok(mut used) => {
                used.clear();
                used
            }
            Err(_) => Vec::with_capacity(CHUNK),
        };
        let chunk = std::mem::replace(&mut self.chunk, next);
        if let Some(sender) = &self.sender
            && sender.send(Piece::Keys(chunk)).is_err()
        {
            self.sender = None;
        }
    }

    fn finish(mut self) {
        self.send();
        if let Some(sender) = &self.sender {
            let _ = sender.send(Piece::Done);
        }
    }
}

/// The entry's file name: a digest of the import's absolute path (a name of
/// fixed length and alphabet, whatever the path holds).
fn key_of(path: &Path) -> Option<String> {
    let path = std::path::absolute(path).ok()?;
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// IPv4 networks in order: the address, then the length.
fn v4_key(net: &Ipv4Net) -> u64 {
    u64::from(u32::from(net.network())) << 8 | u64::from(net.prefix_len())
}

fn v6_key(net: &Ipv6Net) -> (u128, u8) {
    (u128::from(net.network()), net.prefix_len())
}

fn v4_bytes(keys: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys.len() * 8);
    for key in keys {
        out.extend_from_slice(&key.to_le_bytes());
    }
    out
}

/// An IPv6 key as stored: the address (network order), then the length.
fn v6_stored((addr, len): (u128, u8)) -> [u8; V6_BYTES] {
    let mut out = [len; V6_BYTES];
    out[..16].copy_from_slice(&addr.to_be_bytes());
    out
}

#[cfg(test)]
fn v6_bytes(keys: &[(u128, u8)]) -> Vec<u8> {
    keys.iter().flat_map(|&k| v6_stored(k)).collect()
}

/// Sorted IPv4 and IPv6 keys.
type FamilyKeys = (Vec<u64>, Vec<(u128, u8)>);

/// The networks of `lines` (each as `str::lines` gives them, with a '\r' still
/// on the end), sorted: None if one is not a good line.
fn parse_lines(lines: &[&[u8]]) -> Option<FamilyKeys> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for line in lines {
        let line = std::str::from_utf8(line).ok()?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        match line_network(line).ok()? {
            Some(IpNet::V4(n)) => v4.push(v4_key(&n)),
            Some(IpNet::V6(n)) => v6.push(v6_key(&n)),
            None => {}
        }
    }
    v4.sort_unstable();
    v6.sort_unstable();
    Some((v4, v6))
}

/// How the new text differs from an entry's, as the writer keeps it: the
/// edits and the new lines' bytes, with nothing borrowed from the entry.
struct TextDiff {
    edits: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    added: Vec<u8>,
}

impl TextDiff {
    /// The new text, in pieces: ranges of the old text `old` and new bytes.
    fn pieces<'a>(&'a self, old: &'a [u8]) -> Vec<&'a [u8]> {
        let mut pieces = Vec::with_capacity(self.edits.len() * 2 + 1);
        let mut at = 0;
        for (gone, came) in &self.edits {
            pieces.push(&old[at..gone.start]);
            pieces.push(&self.added[came.clone()]);
            at = gone.end;
        }
        pieces.push(&old[at..]);
        pieces.retain(|p| !p.is_empty());
        pieces
    }
}

/// A changed text: how it differs, and what its changed lines parse to.
struct Changes {
    diff: TextDiff,
    parsed: Parsed,
}

impl Changes {
    /// From `entry`'s text to the text `new` reads: None if a changed line is
    /// not a good one, too much changed, or the text is not one
    /// [`super::import_file::read`] would give.
    fn of<R: std::io::Read>(entry: &Entry, new: &mut diff::Window<R>) -> Option<Changes> {
        let diff = changed_lines(entry.text(), new)?;
        let (gone4, gone6) = parse_lines(&diff.removed)?;
        let (new4, new6) = parse_lines(&diff.added_lines())?;
        Some(Changes {
            parsed: Parsed {
                gone4,
                new4,
                gone6,
                new6,
                removed: diff.removed.len(),
                added: diff.added_lines.len(),
            },
            diff: TextDiff {
                edits: diff.edits,
                added: diff.added,
            },
        })
    }

    fn counts(&self, entry: &Entry) -> Option<(usize, usize)> {
        self.parsed.counts(entry)
    }
}

/// The networks a changed text loses and gains, per family, sorted.
struct Parsed {
    gone4: Vec<u64>,
    new4: Vec<u64>,
    gone6: Vec<(u128, u8)>,
    new6: Vec<(u128, u8)>,
    /// Lines removed and added.
    removed: usize,
    added: usize,
}

impl Parsed {
    /// How many networks of each family the new text has.
    fn counts(&self, entry: &Entry) -> Option<(usize, usize)> {
        let v4 = (entry.v4().len() / 8 + self.new4.len()).checked_sub(self.gone4.len())?;
        let v6 = (entry.v6().len() / V6_BYTES + self.new6.len()).checked_sub(self.gone6.len())?;
        Some((v4, v6))
    }

    /// The new text's networks, in order: `entry`'s sorted ones less those gone
    /// plus the new ones; their key bytes handed to `keys` as well (IPv4, then
    /// IPv6), as the next entry stores them: a run of the entry's keys that
    /// stays goes as one slice of the entry, a new key as its own bytes.
    fn apply(
        &self,
        entry: &Entry,
        (count4, count6): (usize, usize),
        keys: &mut impl FnMut(&[u8]),
    ) -> Option<Vec<IpNet>> {
        let mut nets = Vec::with_capacity(count4 + count6);
        let stored4 = entry.v4();
        let old4 = stored4
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
        let mut kept = Kept::default();
        merge(old4, &self.gone4, &self.new4, |k, from| {
            let len = (k & 0xff) as u32;
            let addr = (k >> 8) as u32;
            // A stored network is canonical, as the parse gives them: a length
            // of at most 32, no address bit past it, nothing above the address.
            if k >> 40 != 0 || len > 32 || u64::from(addr) << len & 0xffff_ffff != 0 {
                return None;
            }
            nets.push(IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from(addr), len as u8).ok()?,
            ));
            kept.key(from, &k.to_le_bytes(), stored4, 8, keys);
            Some(())
        })?;
        kept.flush(stored4, 8, keys);
        let stored6 = entry.v6();
        let old6 = stored6.chunks_exact(V6_BYTES).map(|c| {
            let addr = u128::from_be_bytes(c[..16].try_into().unwrap_or_default());
            (addr, c[16])
        });
        let mut kept = Kept::default();
        merge(old6, &self.gone6, &self.new6, |(addr, len), from| {
            let net = Ipv6Net::new(Ipv6Addr::from(addr), len).ok()?;
            if net.trunc() != net {
                return None;
            }
            nets.push(IpNet::V6(net));
            kept.key(from, &v6_stored((addr, len)), stored6, V6_BYTES, keys);
            Some(())
        })?;
        kept.flush(stored6, V6_BYTES, keys);
        (nets.len() == count4 + count6).then_some(nets)
    }
}

/// The run of an entry's keys (by index) merged since the last new one, not yet
/// handed on: handed on as one slice of the stored keys when a key that is not
/// the next of the run comes, or at the end.
#[derive(Default)]
struct Kept {
    run: std::ops::Range<usize>,
}

impl Kept {
    /// Hands on a merged key: `from` its index among `stored`'s keys (of `size`
    /// bytes each) if it is one of them, `bytes` its bytes.
    fn key(
        &mut self,
        from: Option<usize>,
        bytes: &[u8],
        stored: &[u8],
        size: usize,
        keys: &mut impl FnMut(&[u8]),
    ) {
        match from {
            Some(i) if i == self.run.end => self.run.end += 1,
            Some(i) => {
                self.flush(stored, size, keys);
                self.run = i..i + 1;
            }
            None => {
                self.flush(stored, size, keys);
                keys(bytes);
            }
        }
    }

    fn flush(&mut self, stored: &[u8], size: usize, keys: &mut impl FnMut(&[u8])) {
        if !self.run.is_empty() {
            keys(&stored[self.run.start * size..self.run.end * size]);
        }
        self.run = self.run.end..self.run.end;
    }
}

/// `old` (sorted) less `gone` plus `new` (both sorted), as a multiset, handed
/// to `emit` in order, each with its index in `old` if it comes from there.
/// None if `old` is out of order, holds a key of `gone` fewer times than `gone`
/// does, or `emit` refuses one.
fn merge<K: Copy + Ord>(
    old: impl Iterator<Item = K>,
    gone: &[K],
    new: &[K],
    mut emit: impl FnMut(K, Option<usize>) -> Option<()>,
) -> Option<()> {
    let (mut g, mut n) = (0, 0);
    let mut previous = None;
    for (index, key) in old.enumerate() {
        if previous.is_some_and(|p| key < p) {
            return None;
        }
        previous = Some(key);
        if let Some(&first) = gone.get(g) {
            if first < key {
                // Removed, but not there.
                return None;
            }
            if first == key {
                g += 1;
                continue;
            }
        }
        while let Some(&next) = new.get(n)
            && next <= key
        {
            emit(next, None)?;
            n += 1;
        }
        emit(key, Some(index))?;
    }
    if g < gone.len() {
        return None;
    }
    for &key in &new[n..] {
        emit(key, None)?;
    }
    Some(())
}

#[cfg(test)]
mod tests;
