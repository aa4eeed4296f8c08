//! `file:` imports: a provider's range list, one CIDR or address per line, `#`
//! comments and blank lines allowed. Errors name the imported file and its line,
//! because that is the file the operator has to fix.
//!
//! A policy can name any file, and its errors go to the agent's logs: a file that is
//! not a range list gets at most [`MAX_PROBLEMS`] errors, and only words that could
//! be a mistyped address are quoted in them.

use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::addr::parse_cidr;
use super::error::DiagnosticKind;
use super::fast_cidr::{fast_cidr, fast_line};
use super::import_cache;
use super::import_file::{self, ReadError};
use super::raw::{Ctx, Pos};

/// Problems reported per imported file; past them it is not a range list anyway.
pub(crate) const MAX_PROBLEMS: usize = 10;

/// Longest word quoted in a message: more than the longest address
/// (`0000:0000:0000:0000:0000:ffff:255.255.255.255/128`).
const MAX_SHOWN: usize = 64;

/// Where an imported path is resolved from: the policy file's directory.
pub(crate) fn resolve(origin: &Path, relative: &str) -> PathBuf {
    match origin.parent() {
        Some(dir) => dir.join(relative),
        None => PathBuf::from(relative),
    }
}

/// Reads and parses the list `relative` (as written at `pos` of field `field`), at
/// most `max_size` bytes of it. Problems are recorded in `ctx`; the good lines are
/// returned either way so later checks (e.g. `except` containment) don't produce
/// follow-on noise.
pub(crate) fn import(
    ctx: &mut Ctx,
    origin: &Path,
    relative: &str,
    pos: Pos,
    field: &str,
    max_size: u64,
) -> Vec<IpNet> {
    let path = resolve(origin, relative);
    let started = std::time::Instant::now();
    if let Some(nets) = import_cache::networks(&path, max_size) {
        tracing::debug!(
            us = started.elapsed().as_micros() as u64,
            networks = nets.len(),
            "list imported through the cache"
        );
        return nets;
    }
    let text = match import_file::read(&path, max_size) {
        Ok(t) => t,
        Err(e @ ReadError::NotText { line, column }) => {
            let message = e.message(&path);
            let at = Pos { line, column };
            ctx.error_in(
                DiagnosticKind::Import,
                pos,
                path,
                at,
                field,
                None,
                message,
                e.hint(),
            );
            return Vec::new();
        }
        Err(e) => {
            ctx.error(
                DiagnosticKind::Import,
                pos,
                field,
                Some(relative),
                e.message(&path),
                e.hint(),
            );
            return Vec::new();
        }
    };
    let read = started.elapsed();
    // Shared with the thread writing the import cache's entry.
    let text = std::sync::Arc::new(text);
    let problems = ctx.diags.len();
    let nets = parse_list(ctx, pos, &path, &text, field);
    if ctx.diags.len() == problems {
        import_cache::store(&path, text, &nets);
    }
    tracing::debug!(
        read_us = read.as_micros() as u64,
        parse_us = (started.elapsed() - read).as_micros() as u64,
        networks = nets.len(),
        "list imported"
    );
    nets
}

/// `word` if it may be quoted in a message: short, and only characters an address
/// has. Anything else could be a secret of whatever file the policy named, or
/// terminal escapes: it is described, not shown.
fn shown(word: &str) -> Option<&str> {
    (word.len() <= MAX_SHOWN
        && word
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b'.' | b':' | b'/')))
    .then_some(word)
}

/// What is said of a word that is not shown.
fn unshown(word: &str) -> String {
    let why = if word.len() > MAX_SHOWN {
        "longer than any address"
    } else {
        "it holds characters no address has"
    };
    format!("a {}-byte word (not shown: {why})", word.len())
}

/// Parses the text of a range list read from `path`.
pub(crate) fn parse_list(
    ctx: &mut Ctx,
    anchor: Pos,
    path: &Path,
    text: &str,
    field: &str,
) -> Vec<IpNet> {
    if let Some(nets) = parse_clean_list(text, PARALLEL_BYTES) {
        return nets;
    }
    let mut out = Vec::with_capacity(text.len() / 16);
    let mut problems = 0;
    for (index, line) in text.lines().enumerate() {
        match line_network(line) {
            Ok(Some(net)) => {
                out.push(net);
                continue;
            }
            Ok(None) => continue,
            // Worked out again below, to say what is wrong and where.
            Err(()) => {}
        }
        let content = line.split_once('#').map_or(line, |(before, _)| before);
        let mut words = content.split_whitespace();
        let Some(word) = words.next() else { continue };
        let column = |w: &str| {
            // Byte offset of the word inside the line (it is a subslice of it).
            w.as_ptr() as usize - line.as_ptr() as usize + 1
        };
        let mut pos = Pos {
            line: index + 1,
            column: column(word),
        };
        if problems == MAX_PROBLEMS {
            ctx.error_in(
                DiagnosticKind::Import,
                anchor,
                path.to_path_buf(),
                pos,
                field,
                None,
                format!("stopped after {MAX_PROBLEMS} problems in this file"),
                Some(
                    "an import is a text file with one CIDR or address per line; is this one?"
                        .into(),
                ),
            );
            break;
        }
        let (value, message, hint) = if let Some(extra) = words.next() {
            pos.column = column(extra);
            let message = match (shown(word), shown(extra)) {
                (Some(word), Some(extra)) => {
                    format!("unexpected {extra:?} after {word:?}: one CIDR or address per line")
                }
                _ => "more than one word on the line: one CIDR or address per line".to_string(),
            };
            (shown(extra), message, None)
        } else if shown(word).is_none() {
            let message = format!("not a CIDR or address: {}", unshown(word));
            (None, message, Some("write an address (192.0.2.7, 2001:db8::7) or a network (192.0.2.0/24, 2001:db8::/32)".to_string()))
        } else {
            match parse_cidr(word) {
                Ok(net) => {
                    out.push(net);
                    continue;
                }
                Err(p) => (Some(word), p.message, p.hint),
            }
        };
        problems += 1;
        ctx.error_in(
            DiagnosticKind::Import,
            anchor,
            path.to_path_buf(),
            pos,
            field,
            value,
            message,
            hint,
        );
    }
    out
}

/// What one line of a list gives, as [`parse_list`] reads it (`line` as
/// `str::lines` cuts it): its network, nothing (blank, a comment), or `Err` for
/// a line `parse_list` reports. The import cache parses changed lines with it;
/// any `Err` sends it to `parse_list`, which says what is wrong.
#[inline(always)]
pub(crate) fn line_network(line: &str) -> Result<Option<IpNet>, ()> {
    // Most lines of a large list are a bare network: take those without the
    // general path's searches and allocations.
    if let Some(net) = fast_cidr(line.as_bytes()) {
        return Ok(Some(net));
    }
    let plain = !line.bytes().any(|b| b == b'#' || b.is_ascii_whitespace());
    if plain
        && !line.is_empty()
        && let Ok(net) = parse_cidr(line)
    {
        return Ok(Some(net));
    }
    let content = line.split_once('#').map_or(line, |(before, _)| before);
    let mut words = content.split_whitespace();
    let Some(word) = words.next() else {
        return Ok(None);
    };
    if words.next().is_some() || shown(word).is_none() {
        return Err(());
    }
    parse_cidr(word).map(Some).map_err(drop)
}

/// Lists at least this large are read on two threads.
const PARALLEL_BYTES: usize = 1 << 20;

/// A list whose every line is a plain CIDR or address, blank, or a comment: its
/// networks, read on two threads when the list has at least `parallel` bytes. `None`
/// as soon as a line is anything else; the caller then reads the whole list the
/// general way, which reports every problem in order (and accepts the few unusual
/// but valid lines this does not, e.g. an address followed by a comment).
fn parse_clean_list(text: &str, parallel: usize) -> Option<Vec<IpNet>> {
    /// `capacity`: the expected number of networks, reserved up front.
    fn part(text: &str, capacity: usize) -> Option<Vec<IpNet>> {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(capacity);
        let mut at = 0;
        while at < bytes.len() {
            // Most lines are a bare network: read it and the line's end in one pass.
            if let Some(length) = fast_line(&bytes[at..], &mut out) {
                at += length;
                continue;
            }
            // Any other line, cut as `str::lines` cuts it. `at` and the newline are
            // both character boundaries ('\n' is never inside a character).
            let (line, next) = match bytes[at..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let line = &text[at..at + i];
                    (line.strip_suffix('\r').unwrap_or(line), at + i + 1)
                }
                None => (&text[at..], bytes.len()),
            };
            at = next;
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if line.bytes().any(|b| b == b'#' || b.is_ascii_whitespace()) {
                return None;
            }
            out.push(parse_cidr(line).ok()?);
        }
        Some(out)
    }
    // A guess: provider lists' lines are mostly 10 to 45 bytes. Too low only costs
    // the vector regrowing.
    let capacity = text.len() / 16;
    if text.len() < parallel {
        return part(text, capacity);
    }
    // Split after the newline nearest the middle, so no line is cut. Searched in
    // bytes: the middle may fall inside a multi-byte character, and '\n' never does.
    let middle = text.len() / 2;
    let Some(split) = text.as_bytes()[middle..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| middle + i + 1)
    else {
        return part(text, capacity);
    };
    let (first, second) = text.split_at(split);
    // The first part reserves room for both, so appending the second moves nothing.
    let (mut nets, rest) =
        crate::parallel::join(|| part(first, capacity), || part(second, second.len() / 16));
    nets.as_mut()?.extend(rest?);
    nets
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The general path alone, what parse_list did before the clean-list reader:
    /// the networks of `text` and how many lines have problems.
    fn general_path(text: &str) -> (Vec<IpNet>, usize) {
        let (mut general, mut problems) = (Vec::new(), 0);
        for line in text.lines() {
            let content = line.split_once('#').map_or(line, |(before, _)| before);
            let mut words = content.split_whitespace();
            let Some(word) = words.next() else { continue };
            if words.next().is_some() {
                problems += 1;
                continue;
            }
            match parse_cidr(word) {
                Ok(net) => general.push(net),
                Err(_) => problems += 1,
            }
        }
        (general, problems)
    }

    #[test]
    fn clean_lists_read_in_parallel_give_what_the_general_path_gives() {
        let texts = [
            "# provider ranges\n\n10.0.0.0/8\n  # indented comment\n2001:db8::/32\n192.0.2.7\n",
            "10.0.0.0/8\r\n198.51.100.0/24\r\n\r\n2001:db8:1::/48\r\n",
            "1.2.3.4\u{a0}\n5.6.7.8\n",
            "1.2.3.4 # trailing comment\n",
            "10.0.0.1/8\n",
            "1.2.3.4 5.6.7.8\n",
            "\u{a0}\n\t\n10.1.0.0/16",
        ];
        let mut big = String::new();
        for i in 0..5000u32 {
            big.push_str(&format!("{}.{}.{}.0/24\n", 11 + i % 200, i / 200, i % 256));
            if i % 7 == 0 {
                big.push_str(&format!("2001:db8:{i:x}::/48\n# note {i}\n\n"));
            }
        }
        // The same with CRLF endings; and with one line of each unusual kind in the
        // middle (the whole list then goes the general way, or the line alone does).
        let crlf = big.replace('\n', "\r\n");
        let middle = big.len() / 2 + big[big.len() / 2..].find('\n').unwrap() + 1;
        let odd: Vec<String> = [
            "  10.9.0.0/16\n",
            "10.9.0.0/16 # trailing\n",
            "10.9.0.0/16\r\r\n",
            "\t# indented comment\r\n",
            "10.9.0.0/016\n",
            "10.9.0.1/16\n",
            "::ffff:10.9.0.0/120\n",
            "2001:DB8:0::/48\n",
            "\r\n",
        ]
        .iter()
        .map(|line| format!("{}{line}{}", &big[..middle], &big[middle..]))
        .collect();
        let ends = [
            "10.0.0.0/8\n1.2.3.4\r",
            "10.0.0.0/8\n::1\r",
            "10.0.0.0/8\n1.2.3.4\r\n",
            "10.0.0.0/8\r\n\r",
            "1.2.3.4",
            "",
            "\n",
        ];
        let larger = [big.as_str(), crlf.as_str()];
        for text in texts
            .iter()
            .chain(&ends)
            .chain(&larger)
            .copied()
            .chain(odd.iter().map(String::as_str))
        {
            let (general, problems) = general_path(text);
            for parallel in [0, 64, usize::MAX] {
                if let Some(nets) = parse_clean_list(text, parallel) {
                    assert_eq!(problems, 0, "{text:?}: clean, but has problems");
                    assert_eq!(nets, general, "{text:?} (parallel from {parallel} bytes)");
                }
            }
        }
        assert!(parse_clean_list(&big, 64).is_some());
        assert!(parse_clean_list(&crlf, 64).is_some());
        // Clean, the odd line taking the line-by-line way ("\t# ..", "/016",
        // "::ffff:..", "\r\n") or the fast one ("2001:DB8:0::/48"); or not clean.
        let clean: Vec<bool> = odd
            .iter()
            .map(|t| parse_clean_list(t, 64).is_some())
            .collect();
        assert_eq!(
            clean,
            [false, false, false, true, true, false, true, true, true]
        );
        assert!(parse_clean_list(texts[3], 0).is_none());
        assert!(parse_clean_list(texts[4], 0).is_none());
    }

    #[test]
    fn the_last_lines_read_near_the_end_of_the_text_as_elsewhere() {
        // The fast reader reads a window of bytes at once, and near the end of the
        // text a padded copy: put the last line at every place around the window's
        // size, the longest lines included.
        let lasts = [
            "10.0.0.0/8",
            "192.0.2.1",
            "2001:db8::/32",
            "1111:2222:3333:4444:5555:6666:7777:8888/128",
            "10.0.0.1/8",
            "1.2.3.4 # note",
            "2001:db8::/32\0",
        ];
        for pad in 0..80 {
            for (i, last) in lasts.iter().enumerate() {
                for ending in ["", "\n", "\r\n", "\r"] {
                    let text = format!("{}\n{last}{ending}", "#".repeat(pad));
                    let (general, problems) = general_path(&text);
                    let clean = parse_clean_list(&text, usize::MAX);
                    if let Some(nets) = &clean {
                        assert_eq!((nets, problems), (&general, 0), "{text:?}");
                    }
                    // The plain ones are taken (a lone '\r' ends no line).
                    assert_eq!(clean.is_some(), i < 4 && ending != "\r", "{text:?}");
                }
            }
        }
    }

    #[test]
    fn a_multibyte_character_at_the_middle_does_not_break_the_split() {
        // Slide a comment with two-byte characters across the middle of the text.
        for pad in 0..8 {
            let text = format!(
                "10.0.0.0/8\n{}# Zürich ©\n192.0.2.0/24\n",
                "#\n".repeat(pad)
            );
            // Split always (parallel from 0 bytes); pad 3 puts the middle inside "ü".
            if let Some(nets) = parse_clean_list(&text, 0) {
                let expected: Vec<IpNet> = vec![
                    "10.0.0.0/8".parse().unwrap(),
                    "192.0.2.0/24".parse().unwrap(),
                ];
                assert_eq!(nets, expected, "{text:?}");
            }
        }
    }

    #[test]
    fn parses_comments_blank_lines_and_reports_positions() {
        let mut ctx = Ctx::new(Path::new("p.yaml"));
        let text = "# provider ranges\n\n10.0.0.0/8   # main\n  192.0.2.1/24\n2001:db8::/32\n1.2.3.4 5.6.7.8\n";
        let nets = parse_list(
            &mut ctx,
            Pos::default(),
            Path::new("ranges.txt"),
            text,
            "sets.p.file",
        );
        assert_eq!(nets.len(), 2);
        assert_eq!(ctx.diags.len(), 2);
        let d = &ctx.diags[0];
        assert_eq!(
            d.to_string(),
            "ranges.txt:4:3: sets.p.file: 192.0.2.1/24 has host bits set (0.0.0.1 outside the /24 mask); did you mean 192.0.2.0/24?"
        );
        assert_eq!((ctx.diags[1].line, ctx.diags[1].column), (6, 9));
    }

    #[test]
    fn resolves_relative_to_policy_dir() {
        assert_eq!(
            resolve(Path::new("/etc/airlock/policy.yaml"), "r.txt"),
            PathBuf::from("/etc/airlock/r.txt")
        );
        assert_eq!(
            resolve(Path::new("policy.yaml"), "r.txt"),
            PathBuf::from("r.txt")
        );
        assert_eq!(
            resolve(Path::new("a/p.yaml"), "/abs.txt"),
            PathBuf::from("/abs.txt")
        );
    }
}
