//! Which lines of a list changed since the text an entry holds: the two texts
//! compared in order, a block at a time, and brought back in step after each
//! difference.

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

/// The lines of `old` and `new` that differ, compared in order: the removed
/// ones and the added ones (without their line endings). After a difference the
/// two texts are brought back in step at the nearest pair of equal lines within
/// [`RESYNC`] lines of each (a line changed, a block inserted or removed); past
/// that, lines are paired off as changed, which stops the comparison once a
/// quarter of the text has changed (None: the full parse is as quick).
#[allow(clippy::type_complexity)]
pub(super) fn changed_lines<'a>(
    old: &'a [u8],
    new: &'a [u8],
) -> Option<(Vec<&'a [u8]>, Vec<&'a [u8]>)> {
    // Every (lines of old, lines of new) to skip, nearest first.
    let mut skips: Vec<(usize, usize)> = (0..=RESYNC)
        .flat_map(|a| (0..=RESYNC).map(move |b| (a, b)))
        .filter(|&skip| skip != (0, 0))
        .collect();
    skips.sort_by_key(|&(a, b)| (a + b, a.abs_diff(b)));
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    let mut changed_bytes = 0;
    loop {
        let common = common_prefix(&old[i..], &new[j..]);
        if i + common == old.len() && j + common == new.len() {
            return Some((removed, added));
        }
        // Back to the start of the line that differs.
        let start = memchr::memrchr(b'\n', &old[i..i + common]).map_or(0, |p| p + 1);
        let (mut old_lines, mut new_lines) = (Lines::at(old, i + start), Lines::at(new, j + start));
        // Both texts' ends count as equal lines.
        let (a, b) = skips
            .iter()
            .copied()
            .find(|&(a, b)| old_lines.line(a) == new_lines.line(b))
            .unwrap_or((1, 1));
        for k in 0..a {
            removed.extend(old_lines.line(k));
        }
        for k in 0..b {
            added.extend(new_lines.line(k));
        }
        let (i0, j0) = (i + start, j + start);
        (i, j) = (old_lines.start(a), new_lines.start(b));
        changed_bytes += i - i0 + j - j0;
        if changed_bytes > new.len() / MOST_CHANGED + 4096 {
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
