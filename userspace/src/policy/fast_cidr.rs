//! The fast path of range-list parsing: a line that is a bare network, written
//! plainly and without host bits, read without the general parser's searches and
//! allocations. It answers only when it is sure to give what `parse_cidr` gives;
//! every other line (comments, oddities, every malformed one) goes the general way,
//! which says what is wrong.

use ipnet::{IpNet, Ipv6Net};

#[cfg(test)]
use super::addr::parse_cidr;

/// The network on `line`, or None for the general path.
pub(crate) fn fast_cidr(line: &[u8]) -> Option<IpNet> {
    let (net, end) = fast_prefix(line)?;
    (end == line.len()).then_some(net)
}

/// The network on the first line of `text` when the line is just that network,
/// written as [`fast_cidr`] takes it, and the length of the line with its ending
/// (where the next line starts). One pass: the
/// line's end is found where the network ends instead of searched for first. The
/// line ends as `str::lines` ends it: at '\n' (a '\r' before it is dropped) or at
/// the end of the text. None sends the line the general way.
pub(crate) fn fast_line(text: &[u8]) -> Option<(IpNet, usize)> {
    let (net, end) = fast_prefix(text)?;
    match text.get(end) {
        None => Some((net, end)),
        Some(b'\n') => Some((net, end + 1)),
        Some(b'\r') if text.get(end + 1) == Some(&b'\n') => Some((net, end + 2)),
        Some(_) => None,
    }
}

/// A plainly written network at the start of `text` and where it ends. The two
/// forms never both apply: IPv4 takes only digits, '.' and '/', IPv6 needs a ':'.
fn fast_prefix(text: &[u8]) -> Option<(IpNet, usize)> {
    ipv4_prefix(text).or_else(|| ipv6_prefix(text))
}

/// A decimal number of at most `digits` digits and at most `max` at `*at`, without
/// leading zeros ("010", which some parsers read as octal).
fn number(line: &[u8], at: &mut usize, max: u32, digits: usize) -> Option<u32> {
    let start = *at;
    let mut value = 0u32;
    while *at < line.len() && line[*at].is_ascii_digit() && *at - start < digits {
        value = value * 10 + u32::from(line[*at] - b'0');
        *at += 1;
    }
    let len = *at - start;
    if len == 0 || (len > 1 && line[start] == b'0') || value > max {
        return None;
    }
    Some(value)
}

/// `a.b.c.d` or `a.b.c.d/len` written plainly (decimal octets without leading
/// zeros, a length of one or two digits) and without host bits at the start of
/// `text`: the network `parse_cidr` returns for it when nothing follows, and where
/// it ends. Anything else, including every malformed line, is `None` and goes the
/// general way (which says what is wrong).
fn ipv4_prefix(text: &[u8]) -> Option<(IpNet, usize)> {
    let mut at = 0;
    let mut addr = 0u32;
    for i in 0..4 {
        addr = addr << 8 | number(text, &mut at, 255, 3)?;
        if i < 3 {
            if text.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
    }
    let len = if text.get(at) == Some(&b'/') {
        at += 1;
        number(text, &mut at, 32, 2)?
    } else {
        32
    };
    let host = if len == 32 { 0 } else { u32::MAX >> len };
    if addr & host != 0 {
        return None;
    }
    let net = ipnet::Ipv4Net::new(addr.into(), len as u8).ok()?;
    Some((IpNet::V4(net), at))
}

/// `x:x:x:x:x:x:x:x` with at most one `::`, each group one to four hex digits, and an
/// optional `/len`, at the start of `text` (as [`ipv4_prefix`]): IPv6 as range lists
/// write it (no embedded IPv4, no zone).
fn ipv6_prefix(text: &[u8]) -> Option<(IpNet, usize)> {
    let hex = |at: usize| text.get(at).and_then(|&b| (b as char).to_digit(16));
    let mut groups = [0u16; 8];
    let mut count = 0;
    // Where `::` stands: the number of groups before it.
    let mut gap = None;
    let mut at = 0;
    if text.starts_with(b"::") {
        gap = Some(0);
        at = 2;
    }
    // A group must follow, except after `::` (which may end the address).
    let mut need_group = gap.is_none();
    loop {
        let start = at;
        let mut group = 0u32;
        while at - start < 4
            && let Some(digit) = hex(at)
        {
            group = group << 4 | digit;
            at += 1;
        }
        if at == start {
            if need_group {
                return None;
            }
            break;
        }
        // A fifth digit, or a ninth group.
        if hex(at).is_some() || count == 8 {
            return None;
        }
        groups[count] = group as u16;
        count += 1;
        // Anything but ':' ends the address; the caller checks what follows (an
        // embedded IPv4 address's '.' or a zone's '%' is left to the general path).
        if text.get(at) != Some(&b':') {
            break;
        }
        at += 1;
        if text.get(at) == Some(&b':') {
            if gap.is_some() {
                return None;
            }
            gap = Some(count);
            at += 1;
            need_group = false;
        } else {
            need_group = true; // no trailing single ':'
        }
    }
    let mut words = [0u16; 8];
    match gap {
        // `::` stands for at least one zero group.
        Some(before) if count <= 7 => {
            words[..before].copy_from_slice(&groups[..before]);
            let after = count - before;
            words[8 - after..].copy_from_slice(&groups[before..count]);
        }
        None if count == 8 => words = groups,
        _ => return None,
    }
    let len = if text.get(at) == Some(&b'/') {
        at += 1;
        number(text, &mut at, 128, 3)?
    } else {
        128
    };
    let value = words
        .iter()
        .fold(0u128, |acc, &word| acc << 16 | u128::from(word));
    let host = if len == 128 { 0 } else { u128::MAX >> len };
    if value & host != 0 {
        return None;
    }
    let net = Ipv6Net::new(value.into(), len as u8).ok()?;
    Some((IpNet::V6(net), at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::xorshift;

    /// The IPv4 form alone, as the whole line.
    fn fast_ipv4(line: &[u8]) -> Option<IpNet> {
        ipv4_prefix(line).and_then(|(net, end)| (end == line.len()).then_some(net))
    }

    #[test]
    fn the_ipv4_fast_path_agrees_with_the_general_parser() {
        let mut next = xorshift(0x1234_5678_9abc_def0);
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
            if (r >> 50).is_multiple_of(7) {
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
    fn the_ipv6_fast_path_agrees_with_the_general_parser() {
        let mut next = xorshift(0x0fed_cba9_8765_4321);
        let mut lines: Vec<String> = [
            "::",
            "::/0",
            "::1",
            "1::",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7::8",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7",
            "1::2::3",
            ":::",
            ":1::",
            "1:",
            ":1",
            "12345::",
            "2001:DB8::/32",
            "2001:0db8:0000::/48",
            "2001:db8::1/64",
            "2001:db8::/129",
            "2001:db8::/032",
            "2001:db8::/",
            "2001:db8::/32/1",
            "::ffff:192.0.2.1",
            "::ffff:192.0.2.0/120",
            "fe80::1%eth0",
            "2001:db8::g",
            "2001:db8:: ",
            " 2001:db8::",
        ]
        .map(String::from)
        .to_vec();
        for _ in 0..20_000 {
            let (high, low) = (next(), next());
            let value = u128::from(high) << 64 | u128::from(low);
            let len = (next() % 130) as u8;
            let addr = std::net::Ipv6Addr::from(value);
            // Canonical (with `::`), full, and with zero groups left in.
            let text = match next() % 3 {
                0 => addr.to_string(),
                1 => addr.segments().map(|g| format!("{g:x}")).join(":"),
                _ => addr.segments().map(|g| format!("{g:04X}")).join(":"),
            };
            let mut line = if len <= 128 {
                format!("{text}/{len}")
            } else {
                text
            };
            if next().is_multiple_of(3)
                && let Ok(net) = line.parse::<IpNet>()
            {
                // Truncate to the mask, so many lines are valid; shorten with `::`.
                line = net.trunc().to_string();
            }
            lines.push(line);
        }
        let mut fast = 0;
        for line in &lines {
            if let Some(net) = fast_cidr(line.as_bytes()) {
                assert_eq!(parse_cidr(line), Ok(net), "{line:?}");
                fast += 1;
            }
        }
        assert!(fast > 5_000, "only {fast} lines took the fast path");
        // Whatever the general parser accepts in the plain forms, the fast path takes.
        for line in [
            "::",
            "::1",
            "1::",
            "2001:db8::/32",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7::",
        ] {
            assert!(fast_cidr(line.as_bytes()).is_some(), "{line:?}");
        }
    }

    #[test]
    fn a_fast_line_ends_where_str_lines_ends_it() {
        let mut next = xorshift(0x00c0_ffee_1234_5678);
        let mut lines: Vec<String> = ["1.2.3.4", "10.0.0.0/8", "::", "2001:db8::/32", "1::", ""]
            .map(String::from)
            .to_vec();
        for _ in 0..2_000 {
            let r = next();
            lines.push(match r % 3 {
                0 => format!(
                    "{}.{}.{}.0/24",
                    r >> 8 & 0xff,
                    r >> 16 & 0xff,
                    r >> 24 & 0xff
                ),
                1 => std::net::Ipv4Addr::from((r >> 32) as u32).to_string(),
                _ => format!("{:x}:{:x}::/32", r >> 48 & 0xffff, r >> 32 & 0xffff),
            });
        }
        let endings = [
            "", "\n", "\r\n", "\r", "\r\r\n", "\n\r", " \n", "\t\n", "#\n", "x\n", "/\n", "/8\n",
            ":\n", "::\n", ".\n", "0\n", "%\n",
        ];
        let mut fast = 0;
        for line in &lines {
            for ending in endings {
                let text = format!("{line}{ending}9.9.9.9\n");
                let first = text.lines().next().unwrap_or("");
                let rest = &text[text.find('\n').map_or(text.len(), |i| i + 1)..];
                match fast_line(text.as_bytes()) {
                    Some((net, next_line)) => {
                        assert_eq!(fast_cidr(first.as_bytes()), Some(net), "{text:?}");
                        assert_eq!(parse_cidr(first), Ok(net), "{text:?}");
                        assert_eq!(&text[next_line..], rest, "{text:?}");
                        fast += 1;
                    }
                    // Whatever the line-by-line fast path takes, this takes too.
                    None => assert_eq!(fast_cidr(first.as_bytes()), None, "{text:?}"),
                }
                // Without a following line: the end of the text ends the line.
                let text = format!("{line}{ending}");
                let first = text.lines().next().unwrap_or("");
                match fast_line(text.as_bytes()) {
                    Some((net, end)) => {
                        assert_eq!(fast_cidr(first.as_bytes()), Some(net), "{text:?}");
                        assert_eq!(end, text.find('\n').map_or(text.len(), |i| i + 1));
                    }
                    None => assert_eq!(fast_cidr(first.as_bytes()), None, "{text:?}"),
                }
            }
        }
        assert!(fast > 3 * lines.len(), "only {fast} fast lines");
    }
}
