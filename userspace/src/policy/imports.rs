//! `file:` imports: a provider's range list, one CIDR or address per line, `#`
//! comments and blank lines allowed. Errors name the imported file and its line,
//! because that is the file the operator has to fix.

use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::addr::parse_cidr;
use super::raw::{Ctx, Pos};

/// Where an imported path is resolved from: the policy file's directory.
pub(crate) fn resolve(origin: &Path, relative: &str) -> PathBuf {
    match origin.parent() {
        Some(dir) => dir.join(relative),
        None => PathBuf::from(relative),
    }
}

/// Reads and parses the list `relative` (as written at `pos` of field `field`).
/// Problems are recorded in `ctx`; the good lines are returned either way so later
/// checks (e.g. `except` containment) don't produce follow-on noise.
pub(crate) fn import(
    ctx: &mut Ctx,
    origin: &Path,
    relative: &str,
    pos: Pos,
    field: &str,
) -> Vec<IpNet> {
    let path = resolve(origin, relative);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            ctx.error(
                pos,
                field,
                Some(relative),
                format!("cannot read imported file {}: {e}", path.display()),
                Some("the path is relative to the policy file's directory".to_string()),
            );
            return Vec::new();
        }
    };
    parse_list(ctx, pos, &path, &text, field)
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
    for (index, line) in text.lines().enumerate() {
        // Most lines of a large list are a bare IPv4 network: take those without the
        // general path's searches and allocations.
        if let Some(net) = fast_ipv4(line.as_bytes()) {
            out.push(net);
            continue;
        }
        let plain = !line.bytes().any(|b| b == b'#' || b.is_ascii_whitespace());
        if plain
            && !line.is_empty()
            && let Ok(net) = parse_cidr(line)
        {
            out.push(net);
            continue;
        }
        let content = line.split_once('#').map_or(line, |(before, _)| before);
        let mut words = content.split_whitespace();
        let Some(word) = words.next() else { continue };
        let column = |w: &str| {
            // Byte offset of the word inside the line (it is a subslice of it).
            w.as_ptr() as usize - line.as_ptr() as usize + 1
        };
        let pos = Pos {
            line: index + 1,
            column: column(word),
        };
        if let Some(extra) = words.next() {
            ctx.error_in(
                anchor,
                path.to_path_buf(),
                Pos {
                    line: index + 1,
                    column: column(extra),
                },
                field,
                Some(extra),
                format!("unexpected {extra:?} after {word:?}: one CIDR or address per line"),
                None,
            );
            continue;
        }
        match parse_cidr(word) {
            Ok(net) => out.push(net),
            Err(p) => ctx.error_in(
                anchor,
                path.to_path_buf(),
                pos,
                field,
                Some(word),
                p.message,
                p.hint,
            ),
        }
    }
    out
}

/// Lists at least this large are read on two threads.
const PARALLEL_BYTES: usize = 1 << 20;

/// A list whose every line is a plain CIDR or address, blank, or a comment: its
/// networks, read on two threads when the list has at least `parallel` bytes. `None`
/// as soon as a line is anything else; the caller then reads the whole list the
/// general way, which reports every problem in order (and accepts the few unusual
/// but valid lines this does not, e.g. an address followed by a comment).
fn parse_clean_list(text: &str, parallel: usize) -> Option<Vec<IpNet>> {
    fn part(text: &str) -> Option<Vec<IpNet>> {
        let mut out = Vec::with_capacity(text.len() / 16);
        for line in text.lines() {
            if let Some(net) = fast_ipv4(line.as_bytes()) {
                out.push(net);
                continue;
            }
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
    if text.len() < parallel {
        return part(text);
    }
    // Split after the newline nearest the middle, so no line is cut. Searched in
    // bytes: the middle may fall inside a multi-byte character, and '\n' never does.
    let middle = text.len() / 2;
    let Some(split) = text.as_bytes()[middle..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| middle + i + 1)
    else {
        return part(text);
    };
    let (first, second) = text.split_at(split);
    let (mut nets, rest) = crate::parallel::join(|| part(first), || part(second));
    nets.as_mut()?.extend(rest?);
    nets
}

/// `a.b.c.d` or `a.b.c.d/len` written plainly (decimal octets without leading
/// zeros, a length of one or two digits, nothing else on the line) and without host
/// bits: the same network `parse_cidr` returns for it. Anything else, including every
/// malformed line, is `None` and goes the general way (which says what is wrong).
fn fast_ipv4(line: &[u8]) -> Option<IpNet> {
    /// A decimal number of at most `digits` digits and at most `max` at `*at`.
    fn number(line: &[u8], at: &mut usize, max: u32, digits: usize) -> Option<u32> {
        let start = *at;
        let mut value = 0u32;
        while *at < line.len() && line[*at].is_ascii_digit() && *at - start < digits {
            value = value * 10 + u32::from(line[*at] - b'0');
            *at += 1;
        }
        let len = *at - start;
        // No leading zeros ("010"), which some parsers read as octal.
        if len == 0 || (len > 1 && line[start] == b'0') || value > max {
            return None;
        }
        Some(value)
    }
    let mut at = 0;
    let mut addr = 0u32;
    for i in 0..4 {
        addr = addr << 8 | number(line, &mut at, 255, 3)?;
        if i < 3 {
            if line.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
    }
    let len = match line.get(at) {
        None => 32,
        Some(b'/') => {
            at += 1;
            let len = number(line, &mut at, 32, 2)?;
            if at != line.len() {
                return None;
            }
            len
        }
        Some(_) => return None,
    };
    let host = if len == 32 { 0 } else { u32::MAX >> len };
    if addr & host != 0 {
        return None;
    }
    Some(IpNet::V4(ipnet::Ipv4Net::new(addr.into(), len as u8).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv4_fast_path_agrees_with_the_general_parser() {
        let mut rng: u64 = 0x1234_5678_9abc_def0;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut lines: Vec<String> = [
            "0.0.0.0/0",
            "255.255.255.255",
            "10.0.0.0/8",
            "10.0.0.1/8",
            "010.0.0.0/8",
            "1.2.3.4/33",
            "1.2.3.4/032",
            "1.2.3.4/",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3.4 ",
            " 1.2.3.4",
            "1.2.3.4/24#x",
            "1..2.3",
            "1.2.3.4/8/8",
            "",
            "1.2.3.04",
            "1.2.3.0/24",
            "1.2.3.0/024",
            "192.168.0.0/16",
            "1.2.3.4/32",
        ]
        .map(String::from)
        .to_vec();
        for _ in 0..20_000 {
            let r = next();
            let octet = |k: u32| ((r >> (8 * k)) & 0xff).to_string();
            let len = (r >> 40) % 34;
            let mut line = format!("{}.{}.{}.{}", octet(0), octet(1), octet(2), octet(3));
            if len < 33 {
                line = format!("{line}/{len}");
            }
            if (r >> 50) % 7 == 0 {
                // Truncate the address to the mask, so many lines are valid.
                if let Ok(net) = line.parse::<IpNet>() {
                    line = net.trunc().to_string();
                }
            }
            lines.push(line);
        }
        for line in &lines {
            if let Some(fast) = fast_ipv4(line.as_bytes()) {
                assert_eq!(parse_cidr(line), Ok(fast), "{line:?}");
            }
        }
        assert!(
            lines
                .iter()
                .filter(|l| fast_ipv4(l.as_bytes()).is_some())
                .count()
                > 2000
        );
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
        for text in texts.iter().copied().chain([big.as_str()]) {
            let mut problems = 0;
            let mut general = Vec::new();
            // The general path alone: what parse_list did before the clean-list reader.
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
            for parallel in [0, 64, usize::MAX] {
                if let Some(nets) = parse_clean_list(text, parallel) {
                    assert_eq!(problems, 0, "{text:?}: clean, but has problems");
                    assert_eq!(nets, general, "{text:?} (parallel from {parallel} bytes)");
                }
            }
        }
        assert!(parse_clean_list(&big, 64).is_some());
        assert!(parse_clean_list(texts[3], 0).is_none());
        assert!(parse_clean_list(texts[4], 0).is_none());
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
