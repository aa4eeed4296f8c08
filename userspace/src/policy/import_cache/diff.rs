//! Which lines of a list changed since the text an entry holds: the two texts
//! compared in order, a block at a time, and brought back in step after each
//! difference.

use std::io::Read as _;

/// Past this share of the text changed, the full parse is as quick.
const MOST_CHANGED: usize = 4;

/// How far ahead (in lines) the comparison looks for where the two texts agree
/// again after a difference: lines inserted or removed in a block up to this long
/// cost only their own parse.
const RESYNC: usize = 8;

/// The lines from a place in a text, found as they are asked for.
struct Lines<'a> {
    text: &'a [u8],
    starts: [usize; RESYNC + 2],
    known: usize,
}

impl<'a> Lines<'a> {
    fn at(text: &'a [u8], start: usize) -> Self {
        let mut starts = [start; RESYNC + 2];
        starts[0] = start;
        Lines {
            text,
            starts,
            known: 1,
        }
    }

    /// Where line `k` starts (the text's end for a line past it).
    fn start(&mut self, k: usize) -> usize {
        while self.known <= k {
            let previous = self.starts[self.known - 1];
            self.starts[self.known] = match memchr::memchr(b'\n', &self.text[previous..]) {
                Some(end) => previous + end + 1,
                None => self.text.len(),
            };
            self.known += 1;
        }
        self.starts[k]
    }

    /// Line `k` without its '\n'; None past the text's end.
    fn line(&mut self, k: usize) -> Option<&'a [u8]> {
        let start = self.start(k);
        if start >= self.text.len() {
            return None;
        }
        let next = self.start(k + 1);
        let end = if self.text[next - 1] == b'\n' {
            next - 1
        } else {
            next
        };
        Some(&self.text[start..end])
    }
}

/// The new text, read as the comparison needs it (no copy of it whole: at a
/// million lines that was 20 MB of fresh memory): `buf` holds its bytes from
/// `base` on. What the comparison saw is exactly what was read, whoever writes
/// the file meanwhile; the new entry's text is made of it (see [`Diff`]).
pub(super) struct Window<R> {
    source: R,
    buf: Vec<u8>,
    base: usize,
    eof: bool,
    /// The most bytes the text may have.
    limit: usize,
    /// The text before this (a line's start) is known to be UTF-8.
    checked: usize,
    /// Bytes read at a time ([`READ`]; tests read less, to move the window's
    /// end everywhere).
    read: usize,
}

/// Bytes read at a time.
const READ: usize = 256 << 10;

impl<R: std::io::Read> Window<R> {
    pub(super) fn new(source: R, limit: usize) -> Self {
        Self::reading(source, limit, READ)
    }

    pub(super) fn reading(source: R, limit: usize, read: usize) -> Self {
        Window {
            source,
            buf: Vec::with_capacity(read),
            base: 0,
            eof: false,
            limit,
            checked: 0,
            read: read.max(1),
        }
    }

    /// Where the bytes read so far end.
    fn end(&self) -> usize {
        self.base + self.buf.len()
    }

    /// Reads more, keeping the text from `keep` (a line's start, at or after
    /// the last `keep`) on. None if the text is not UTF-8 up to `keep`, cannot be
    /// read, or is longer than the limit.
    fn fill(&mut self, keep: usize) -> Option<()> {
        let drop = keep - self.base;
        std::str::from_utf8(&self.buf[self.checked - self.base..drop]).ok()?;
        self.checked = keep;
        self.buf.drain(..drop);
        self.base = keep;
        let room = self
            .limit
            .saturating_add(1)
            .saturating_sub(self.end())
            .min(self.read);
        let read = std::io::Read::by_ref(&mut self.source)
            .take(room as u64)
            .read_to_end(&mut self.buf)
            .ok()?;
        self.eof = read == 0;
        (self.end() <= self.limit).then_some(())
    }

    /// Reads until the window holds `lines` line ends after `from`, or the
    /// text's end.
    fn lines_ahead(&mut self, from: usize, lines: usize) -> Option<()> {
        // Line ends counted in the bytes read since the last count only: a long
        // line is searched once, not again after every read.
        let (mut found, mut searched) = (0, from);
        loop {
            found += memchr::memchr_iter(b'\n', &self.buf[searched - self.base..])
                .take(lines - found)
                .count();
            if found == lines || self.eof {
                return Some(());
            }
            searched = self.end();
            self.fill(from)?;
        }
    }

    /// Some once the text is all read and checked to be UTF-8.
    fn finish(&mut self) -> Option<()> {
        if !self.eof {
            return None;
        }
        std::str::from_utf8(&self.buf[self.checked - self.base..]).ok()?;
        self.checked = self.end();
        Some(())
    }
}

/// How a new text differs from an old one: each edit replaces a range of the
/// old text with bytes of `added` (the new text's differing lines, with their
/// line ends), in order. The new text is the old one with the edits made, byte
/// for byte (the bytes between edits compared equal): the new entry's text is
/// made so, and is exactly the text whose lines were compared and parsed.
pub(super) struct Diff<'a> {
    pub(super) edits: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    pub(super) added: Vec<u8>,
    /// The old text's lines removed (without line ends).
    pub(super) removed: Vec<&'a [u8]>,
    /// The new text's lines added, as ranges of `added` (without line ends).
    pub(super) added_lines: Vec<std::ops::Range<usize>>,
}

impl Diff<'_> {
    pub(super) fn added_lines(&self) -> Vec<&[u8]> {
        self.added_lines
            .iter()
            .map(|r| &self.added[r.clone()])
            .collect()
    }
}

/// The lines of `old` and of the text `new` reads that differ, compared in
/// order. After a difference the two texts are brought back in step at the
/// nearest pair of equal lines within [`RESYNC`] lines of each (a line
/// changed, a block inserted or removed); past that, lines are paired off as
/// changed, which stops the comparison once a quarter of the old text has
/// changed (None: the full parse is as quick). None as well if the new text
/// cannot be read whole, is longer than its limit, or is not UTF-8.
pub(super) fn changed_lines<'a, R: std::io::Read>(
    old: &'a [u8],
    new: &mut Window<R>,
) -> Option<Diff<'a>> {
    // Every (lines of old, lines of new) to skip, nearest first.
    let mut skips: Vec<(usize, usize)> = (0..=RESYNC)
        .flat_map(|a| (0..=RESYNC).map(move |b| (a, b)))
        .filter(|&skip| skip != (0, 0))
        .collect();
    skips.sort_by_key(|&(a, b)| (a + b, a.abs_diff(b)));
    let mut diff = Diff {
        edits: Vec::new(),
        added: Vec::new(),
        removed: Vec::new(),
        added_lines: Vec::new(),
    };
    let (mut i, mut j) = (0, 0);
    let mut changed_bytes = 0;
    loop {
        let mut common = 0;
        // The last line start seen in the common bytes, searched for only in
        // those compared since (a line with no end in sight is not searched
        // again at every read).
        let mut line_start = j;
        loop {
            let before = common;
            common += common_prefix(&old[i + common..], &new.buf[j + common - new.base..]);
            if let Some(p) = memchr::memrchr(b'\n', &old[i + before..i + common]) {
                line_start = j + before + p + 1;
            }
            if j + common < new.end() || new.eof {
                break;
            }
            // The window's end: read on, from the last line start seen.
            new.fill(line_start.max(new.base))?;
        }
        if i + common == old.len() && j + common == new.end() && new.eof {
            new.finish()?;
            return Some(diff);
        }
        // Back to the start of the line that differs.
        let start = memchr::memrchr(b'\n', &old[i..i + common]).map_or(0, |p| p + 1);
        let (i0, j0) = (i + start, j + start);
        new.lines_ahead(j0, RESYNC + 2)?;
        let window = &new.buf[..];
        let (mut old_lines, mut new_lines) = (Lines::at(old, i0), Lines::at(window, j0 - new.base));
        // Both texts' ends count as equal lines.
        let (a, b) = skips
            .iter()
            .copied()
            .find(|&(a, b)| old_lines.line(a) == new_lines.line(b))
            .unwrap_or((1, 1));
        for k in 0..a {
            diff.removed.extend(old_lines.line(k));
        }
        let from = diff.added.len();
        let (jw0, jw) = (j0 - new.base, new_lines.start(b));
        diff.added.extend_from_slice(&window[jw0..jw]);
        for k in 0..b {
            if let Some(line) = new_lines.line(k) {
                let at = from + (line.as_ptr() as usize - window[jw0..].as_ptr() as usize);
                diff.added_lines.push(at..at + line.len());
            }
        }
        (i, j) = (old_lines.start(a), new.base + jw);
        diff.edits.push((i0..i, from..diff.added.len()));
        changed_bytes += i - i0 + j - j0;
        if changed_bytes > old.len() / MOST_CHANGED + 4096 {
            return None;
        }
    }
}

/// How many bytes `a` and `b` begin with alike: compared a block at a time.
pub(super) fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 64;
    let n = a.len().min(b.len());
    let mut k = 0;
    while k + BLOCK <= n && a[k..k + BLOCK] == b[k..k + BLOCK] {
        k += BLOCK;
    }
    while k < n && a[k] == b[k] {
        k += 1;
    }
    k
}
