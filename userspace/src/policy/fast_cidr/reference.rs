//! The byte-at-a-time reader the windowed one replaced, kept as the tests'
//! reference: the windowed reader must answer exactly as this one does, on every
//! text (what the fast path accepts is unchanged).

use ipnet::{IpNet, Ipv6Net};

/// The network on `line`, or None for the general path.
pub(super) fn fast_cidr(line: &[u8]) -> Option<IpNet> {
    let (net, end) = fast_prefix(line)?;
    (end == line.len()).then_some(net)
}

/// The network on the first line of `text` when the line is just that network,
/// written as [`fast_cidr`] takes it, and the length of the line with its ending
/// (where the next line starts). One pass: the
/// line's end is found where the network ends instead of searched for first. The
/// line ends as `str::lines` ends it: at '\n' (a '\r' before it is dropped) or at
/// the end of the text. None sends the line the general way.
pub(super) fn fast_line(text: &[u8]) -> Option<(IpNet, usize)> {
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
