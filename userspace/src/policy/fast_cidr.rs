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
    if line.contains(&b':') {
        fast_ipv6(line)
    } else {
        fast_ipv4(line)
    }
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
/// zeros, a length of one or two digits, nothing else on the line) and without host
/// bits: the same network `parse_cidr` returns for it. Anything else, including every
/// malformed line, is `None` and goes the general way (which says what is wrong).
fn fast_ipv4(line: &[u8]) -> Option<IpNet> {
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

/// `x:x:x:x:x:x:x:x` with at most one `::`, each group one to four hex digits, and an
/// optional `/len`: IPv6 as range lists write it (no embedded IPv4, no zone).
fn fast_ipv6(line: &[u8]) -> Option<IpNet> {
    let (addr, len) = match line.iter().position(|&b| b == b'/') {
        Some(slash) => {
            let mut at = slash + 1;
            let len = number(line, &mut at, 128, 3)?;
            if at != line.len() {
                return None;
            }
            (&line[..slash], len)
        }
        None => (line, 128),
    };
    let mut groups = [0u16; 8];
    let mut count = 0;
    // Where `::` stands: the number of groups before it.
    let mut gap = None;
    let mut at = 0;
    if addr.starts_with(b"::") {
        gap = Some(0);
        at = 2;
    }
    while at < addr.len() {
        let start = at;
        let mut group = 0u32;
        while at < addr.len() && at - start < 4 {
            let Some(digit) = (addr[at] as char).to_digit(16) else {
                break;
            };
            group = group << 4 | digit;
            at += 1;
        }
        // No digits, a fifth one, or a ninth group.
        if at == start || addr.get(at).is_some_and(u8::is_ascii_hexdigit) || count == 8 {
            return None;
        }
        groups[count] = group as u16;
        count += 1;
        if at == addr.len() {
            break;
        }
        // Anything but ':' (an embedded IPv4 address's '.', a zone's '%') is left
        // to the general path.
        if addr[at] != b':' {
            return None;
        }
        at += 1;
        if addr.get(at) == Some(&b':') {
            if gap.is_some() {
                return None;
            }
            gap = Some(count);
            at += 1;
        } else if at == addr.len() {
            return None; // a trailing single ':'
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
    let value = words
        .iter()
        .fold(0u128, |acc, &word| acc << 16 | u128::from(word));
    let host = if len == 128 { 0 } else { u128::MAX >> len };
    if value & host != 0 {
        return None;
    }
    Some(IpNet::V6(Ipv6Net::new(value.into(), len as u8).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
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
}
