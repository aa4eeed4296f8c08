//! The fast path of range-list parsing: a line that is a bare network, written
//! plainly and without host bits, read without the general parser's searches and
//! allocations. It answers only when it is sure to give what `parse_cidr` gives;
//! every other line (comments, oddities, every malformed one) goes the general way,
//! which says what is wrong.
//!
//! The readers look at a fixed window of the text, so no read tests for the text's
//! end; they read several bytes at a time, as the lanes of one integer; and they
//! gather their checks into flags tested once, because where an octet or a length
//! ends differs from line to line and a branch on each would often be mispredicted.
//! They are inlined into the caller's loop (`#[inline(always)]`), so what they find
//! stays in registers.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

#[cfg(test)]
use super::addr::parse_cidr;

#[cfg(test)]
mod reference;

/// How many bytes the readers see at once: the longest line they take is 45 bytes
/// (eight four-digit groups, "/128", "\r\n"), and they read no further than the
/// first 46 bytes of any line.
const WINDOW: usize = 64;

/// The start of `text` in a window padded with zero bytes, for a text shorter than
/// the window (the last lines of a list) and for single lines. A zero byte is
/// neither part of an address nor a line ending, so an address ends where the text
/// does at the latest.
fn padded(text: &[u8]) -> [u8; WINDOW] {
    let mut window = [0; WINDOW];
    let len = text.len().min(WINDOW);
    window[..len].copy_from_slice(&text[..len]);
    window
}

/// A plainly written network at the start of `window`, and where it ends: both
/// readers behind one call, for the paths that are not hot.
#[inline(never)]
fn fast_prefix(window: &[u8; WINDOW]) -> Option<(IpNet, usize)> {
    if is_ipv4(window) {
        ipv4_prefix(window).map(|(net, end)| (IpNet::V4(net), end))
    } else {
        ipv6_prefix(window).map(|(net, end)| (IpNet::V6(net), end))
    }
}

/// The network on `line`, or None for the general path.
pub(crate) fn fast_cidr(line: &[u8]) -> Option<IpNet> {
    // A line longer than the window never ends where a network does.
    let (net, end) = fast_prefix(&padded(line))?;
    (end == line.len()).then_some(net)
}

/// The network on the first line of `text`, pushed onto `out`, when the line is
/// just that network, written as [`fast_cidr`] takes it; and the length of the line
/// with its ending (where the next line starts). One pass: the line's end is found
/// where the network ends instead of searched for first. The line ends as
/// `str::lines` ends it: at '\n' (a '\r' before it is dropped) or at the end of the
/// text. None, with nothing pushed, sends the line the general way.
///
/// Each form pushes its own kind of network, which the compiler writes out as it
/// is; returning either kind would have it merge the two first.
#[inline(always)]
pub(crate) fn fast_line(text: &[u8], out: &mut Vec<IpNet>) -> Option<usize> {
    let Some(window) = text.first_chunk() else {
        // Only near the end of the text: kept out of the loop.
        return short_line(text, out);
    };
    if is_ipv4(window) {
        let (net, end) = ipv4_prefix(window)?;
        let length = line_length(text, end)?;
        out.push(IpNet::V4(net));
        Some(length)
    } else {
        let (net, end) = ipv6_prefix(window)?;
        let length = line_length(text, end)?;
        out.push(IpNet::V6(net));
        Some(length)
    }
}

/// [`fast_line`] for a text shorter than the window.
#[inline(never)]
fn short_line(text: &[u8], out: &mut Vec<IpNet>) -> Option<usize> {
    let (net, end) = fast_prefix(&padded(text))?;
    let length = line_length(text, end)?;
    out.push(net);
    Some(length)
}

/// The length, with its ending, of the line of `text` whose network ends at `end`,
/// when nothing but the ending follows the network.
fn line_length(text: &[u8], end: usize) -> Option<usize> {
    match text.get(end) {
        None if end == text.len() => Some(end),
        Some(b'\n') => Some(end + 1),
        Some(b'\r') if text.get(end + 1) == Some(&b'\n') => Some(end + 2),
        _ => None,
    }
}

/// Whether to read the line in `window` as IPv4, else as IPv6: never could both
/// take it. IPv4 has a '.' in its second, third or fourth byte; IPv6 stops at a
/// '.', and no line ending follows one. So one look picks the form, instead of
/// trying IPv4 first on every IPv6 line.
fn is_ipv4(window: &[u8; WINDOW]) -> bool {
    let start = u32::from_le_bytes(*window.first_chunk().expect("4 of 64 bytes"));
    zero_bytes((start ^ 0x2e2e_2e2e).into()) & 0xffff_ff00 != 0
}

/// `byte` in every byte.
const fn splat(byte: u8) -> u128 {
    u128::from_ne_bytes([byte; 16])
}

/// The high bit of each byte of `x` that is zero, the other bits clear. Exact: the
/// addition never carries out of a byte.
fn zero_bytes(x: u128) -> u128 {
    !(((x & splat(0x7f)) + splat(0x7f)) | x) & splat(0x80)
}

/// The high bit of each byte of `x` that is 10 or more, the other bits clear: with
/// '0' taken away (by xor), the bytes that are not digits.
fn ten_or_more(x: u128) -> u128 {
    (((x & splat(0x7f)) + splat(0x76)) | x) & splat(0x80)
}

/// Bit `i` for byte `i` of `x`, from the high bits (the only bits `x` has). The
/// multiply moves each half's eight bits into its top byte; they land in distinct
/// places, so nothing carries.
fn byte_bits(x: u128) -> u64 {
    let gather = |half: u64| half.wrapping_mul(0x0002_0408_1020_4081) >> 56;
    gather(x as u64) | gather((x >> 64) as u64) << 8
}

/// For a prefix length of each number of digits (the index, 1 to 3), the least
/// value it may have (no leading zero, as in "/032") and how many from there are
/// allowed: for IPv4 at most 32 and two digits, for IPv6 at most 128.
const IPV4_LENGTHS: [(u32, u32); 4] = [(0, 0), (0, 10), (10, 23), (0, 0)];
const IPV6_LENGTHS: [(u32, u32); 4] = [(0, 0), (0, 10), (10, 90), (100, 29)];

/// The `/len` at `at`, if there is one: the length (`max` without one, for a bare
/// address), where the address ends with it, and whether `lengths` allows it. It
/// reads at most `DIGITS` digits; the caller refuses one that follows.
#[inline(always)]
fn prefix_len<const DIGITS: usize>(
    window: &[u8; WINDOW],
    at: usize,
    max: u32,
    lengths: &[(u32, u32); 4],
) -> (u32, usize, bool) {
    if window[at] != b'/' {
        return (max, at, true);
    }
    // Bytes that are not digits become 10 or more, which no range allows in the
    // first place of a number.
    let digit = |i: usize| u32::from(window[at + i].wrapping_sub(b'0'));
    let (first, second) = (digit(1), digit(2));
    let third = if DIGITS == 3 { digit(3) } else { 10 };
    // All three readings, then the one that applies (no branch to mispredict).
    let (two, three) = (second < 10, second < 10 && third < 10);
    let (one_digit, two_digits) = (first, first * 10 + second);
    let three_digits = two_digits * 10 + third;
    let len = if three {
        three_digits
    } else if two {
        two_digits
    } else {
        one_digit
    };
    let digits = 1 + usize::from(two) + usize::from(three);
    let (least, count) = lengths[digits];
    (len, at + 1 + digits, len.wrapping_sub(least) < count)
}

/// For an octet of each length (the index, 4 for longer ones), the least value it
/// may have and how many from there are allowed: no leading zero ("010", which
/// some parsers read as octal), at most 255, at most three digits.
const OCTETS: [(u32, u32); 5] = [(0, 0), (0, 10), (10, 90), (100, 156), (0, 0)];

/// `a.b.c.d` or `a.b.c.d/len` written plainly (decimal octets without leading
/// zeros, a length of one or two digits) and without host bits at the start of
/// `window`: the network `parse_cidr` returns for it when nothing follows, and where
/// it ends. Anything else, including every malformed line, is `None` and goes the
/// general way (which says what is wrong).
///
/// An address is at most 15 bytes: the first 16 are classified at once, the octets
/// found between the non-digits, and each octet's digits converted together.
#[inline(always)]
fn ipv4_prefix(window: &[u8; WINDOW]) -> Option<(Ipv4Net, usize)> {
    let head = u128::from_le_bytes(*window.first_chunk().expect("16 of 64 bytes"));
    // Bit i: byte i is not a digit. The bytes past the 16 count as such, so there
    // is always one more.
    let other = byte_bits(ten_or_more(head ^ splat(b'0'))) | !0xffff;
    // The first four non-digits end the octets (all within 20 bytes); the first
    // three must be the dots.
    let first = other.trailing_zeros();
    let rest = other & (other - 1);
    let second = rest.trailing_zeros();
    let rest = rest & (rest - 1);
    let third = rest.trailing_zeros();
    let rest = rest & (rest - 1);
    let end = rest.trailing_zeros();
    let dot = |at: u32| window[at as usize] == b'.';
    let mut ok = dot(first) & dot(second) & dot(third);
    let octets = [
        (0, first),
        (first + 1, second),
        (second + 1, third),
        (third + 1, end),
    ];
    let mut addr = 0;
    for (start, stop) in octets {
        // All digits, between two non-digits (perhaps none, or too many).
        let len = stop - start;
        let raw = u32::from_le_bytes(*window[start as usize..].first_chunk().expect("in it"));
        // Right-aligned in four bytes, `[thousands, hundreds, tens, ones]` (the
        // bytes past the octet shifted out), then pairs of digits, then the pairs.
        // An empty or a long octet gives nonsense, which its range refuses.
        let aligned = (raw ^ 0x3030_3030).wrapping_shl(32u32.wrapping_sub(8 * len));
        let pairs = aligned.wrapping_mul(10).wrapping_add(aligned >> 8) & 0x00ff_00ff;
        let value = pairs.wrapping_mul(100 << 16 | 1) >> 16;
        let (least, count) = OCTETS[len.min(4) as usize];
        ok &= value.wrapping_sub(least) < count;
        addr = addr << 8 | value;
    }
    let (len, end, good) = prefix_len::<2>(window, end as usize, 32, &IPV4_LENGTHS);
    // The bits the mask leaves out (none for a /32).
    let host = u32::MAX.checked_shr(len).unwrap_or(0);
    if !(ok & good) || addr & host != 0 {
        return None;
    }
    let net = Ipv4Net::new(Ipv4Addr::from(addr), len as u8).ok()?;
    Some((net, end))
}

/// Each byte's value as a hex digit, or 16 for any other byte.
const HEX: [u8; 256] = {
    let mut table = [16; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// The group of up to four hex digits at `at`: its value and its length (0 when
/// there is none). A fifth digit is left for the caller: it is no ':', '/' or line
/// ending, so the line is refused.
#[inline(always)]
fn hex_group(window: &[u8; WINDOW], at: usize) -> (u16, usize) {
    let hex = |i: usize| HEX[usize::from(window[at + i])];
    // The four bytes' values side by side, a byte each; 16 marks a non-digit.
    let values = u32::from_le_bytes([hex(0), hex(1), hex(2), hex(3)]);
    let length = (values & 0x1010_1010).trailing_zeros() / 8;
    // Right-aligned (the bytes past the group shifted out), then each pair of
    // digits into one byte: the second and fourth bytes of `pairs`.
    let aligned = (u64::from(values) << (32 - 8 * length)) as u32;
    let pairs = aligned.wrapping_mul(0x1001);
    (((pairs & 0xff00) | pairs >> 24) as u16, length as usize)
}

/// `x:x:x:x:x:x:x:x` with at most one `::`, each group one to four hex digits, and an
/// optional `/len`, at the start of `window` (as [`ipv4_prefix`]): IPv6 as range
/// lists write it (no embedded IPv4, no zone).
#[inline(always)]
fn ipv6_prefix(window: &[u8; WINDOW]) -> Option<(Ipv6Net, usize)> {
    // The groups read, from the top (the first in the high 16 bits of `high`),
    // and how many. Kept in registers as two halves, each group put in its place:
    // a 128-bit shift is slow on some processors, and a small array read back
    // whole stalls on the stores of its parts.
    let (mut high, mut low, mut count) = (0u64, 0u64, 0);
    // Where `::` stands: the number of groups before it.
    let mut gap = None;
    let mut at = 0;
    if window[0] == b':' && window[1] == b':' {
        gap = Some(0);
        at = 2;
    }
    // A group must follow, except after `::` (which may end the address).
    let mut need_group = gap.is_none();
    loop {
        // A group never starts past 42 (nine groups would be read by then): the
        // bound only shows the compiler that the reads stay in the window.
        at = at.min(42);
        let (group, size) = hex_group(window, at);
        if size == 0 {
            if need_group {
                return None;
            }
            break;
        }
        // No room for a ninth group.
        if count == 8 {
            return None;
        }
        let word = u64::from(group) << (48 - 16 * (count & 3));
        if count < 4 {
            high |= word;
        } else {
            low |= word;
        }
        count += 1;
        at += size;
        // Anything but ':' ends the address; the caller checks what follows (an
        // embedded IPv4 address's '.' or a zone's '%' is left to the general path).
        if window[at] != b':' {
            break;
        }
        if window[at + 1] == b':' {
            if gap.is_some() {
                return None;
            }
            gap = Some(count);
            at += 2;
            need_group = false;
            // Most often `::` ends the address: no group to read after it.
            if HEX[usize::from(window[at])] == 16 {
                break;
            }
        } else {
            at += 1;
            need_group = true; // no trailing single ':'
        }
    }
    // With `::`, the groups after it move to the low end, past the zeros it
    // stands for (at least one group).
    let mut value = u128::from(high) << 64 | u128::from(low);
    match gap {
        Some(before) if count <= 7 => {
            let top = !(u128::MAX >> (16 * before));
            let after = (value & !top).checked_shr(16 * (8 - count) as u32);
            value = (value & top) | after.unwrap_or(0);
        }
        None if count == 8 => {}
        _ => return None,
    }
    let (len, end, good) = prefix_len::<3>(window, at, 128, &IPV6_LENGTHS);
    // No host bits: the lowest bit set (128 for none) is inside the mask.
    if !good || value.trailing_zeros() + len < 128 {
        return None;
    }
    let net = Ipv6Net::new(Ipv6Addr::from(value), len as u8).ok()?;
    Some((net, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::xorshift;

    /// The IPv4 form alone, as the whole line.
    fn fast_ipv4(line: &[u8]) -> Option<IpNet> {
        let (net, end) = ipv4_prefix(&padded(line))?;
        (end == line.len()).then_some(IpNet::V4(net))
    }

    /// What [`fast_line`] takes: the network it pushes and the line's length.
    fn taken_line(text: &[u8]) -> Option<(IpNet, usize)> {
        let mut out = Vec::new();
        let length = fast_line(text, &mut out);
        // Something pushed exactly when the line is taken.
        assert_eq!(out.len(), usize::from(length.is_some()), "{text:?}");
        Some((out.pop()?, length?))
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

    /// A random line near the plain forms: a network or address of either family,
    /// written in one of the ways the fast path takes or must refuse (leading
    /// zeros, upper case, `::` anywhere, embedded IPv4, odd lengths), then perhaps
    /// changed a byte or a few at a time.
    fn near_plain_line(next: &mut impl FnMut() -> u64) -> Vec<u8> {
        let mut r = || next();
        let mut line = if r() % 4 != 0 {
            let octet = |r: u64| match r % 8 {
                0 => "0".to_string(),
                1 => "255".to_string(),
                2 => format!("{:02}", r >> 8 & 0xff),
                3 => (r >> 8 & 0x3ff).to_string(),
                _ => (r >> 8 & 0xff).to_string(),
            };
            let octets: Vec<String> = (0..4).map(|_| octet(r())).collect();
            octets.join(".")
        } else {
            let groups: Vec<u16> = (0..8)
                .map(|_| match r() % 4 {
                    0 => 0,
                    1 => (r() & 0xf) as u16,
                    _ => r() as u16,
                })
                .collect();
            let style = r();
            let mut words: Vec<String> = groups
                .iter()
                .map(|&g| match style % 5 {
                    0 => format!("{g:x}"),
                    1 => format!("{g:04X}"),
                    2 => format!("{g:0width$x}", width = (r() % 5) as usize),
                    3 => format!("{g:X}"),
                    _ => format!("{g:x}").to_uppercase().replace('A', "a"),
                })
                .collect();
            if r() % 8 == 0 {
                // An embedded IPv4 address in the last two groups.
                words.truncate(6);
                words.push("192.0.2.1".to_string());
            }
            // Leave out a run of groups for `::` (perhaps all, perhaps none).
            let from = (r() % 9) as usize;
            let to = (from + (r() % 9) as usize).min(words.len());
            if r() % 3 != 0 && from < words.len() {
                format!("{}::{}", words[..from].join(":"), words[to..].join(":"))
            } else {
                words.join(":")
            }
        };
        match r() % 6 {
            0 => {}
            1 => line.push_str(&format!("/{:02}", r() % 140)),
            _ => line.push_str(&format!("/{}", r() % 140)),
        }
        if r() % 3 == 0
            && let Ok(net) = line.parse::<IpNet>()
        {
            // Without host bits, so more lines are taken.
            line = net.trunc().to_string();
        }
        let mut line = line.into_bytes();
        const BYTES: &[u8] = b"0123456789abcdefABCDEFgG:./%\r\n \t#\0x-";
        for _ in 0..[0, 0, 0, 1, 1, 2, 3][(r() % 7) as usize] {
            let at = (r() as usize) % (line.len() + 1);
            let byte = match r() % 4 {
                0 => r() as u8,
                _ => BYTES[(r() as usize) % BYTES.len()],
            };
            match r() % 5 {
                0 | 1 if at < line.len() => line[at] = byte,
                2 if at < line.len() => {
                    line.remove(at);
                }
                3 if at < line.len() => line.insert(at, line[at]),
                _ => line.insert(at, byte),
            }
        }
        line
    }

    /// `line`, with `ending` and `rest` bytes of the next line after it, read by the
    /// windowed reader and by the old one: the same answer. With no `rest` the
    /// text is shorter than the window (so read in a padded copy) when the line is.
    fn assert_read_as_before(line: &[u8], ending: &[u8], rest: usize) {
        assert_eq!(
            fast_cidr(line),
            reference::fast_cidr(line),
            "{:?}",
            line.escape_ascii()
        );
        let mut text = [line, ending].concat();
        text.extend(b"9.9.9.9\n".iter().cycle().take(rest));
        let (fast, before) = (taken_line(&text), reference::fast_line(&text));
        assert_eq!(fast, before, "{:?}", text.escape_ascii());
    }

    #[test]
    fn the_windowed_reader_answers_as_the_byte_at_a_time_one_did() {
        let endings: [&[u8]; 8] = [b"", b"\n", b"\r\n", b"\r", b"\r\r\n", b" \n", b"\0", b"/"];
        // The longest lines and reads: nine groups, eight and `::`, all digits.
        let long = [
            "::1111:2222:3333:4444:5555:6666:7777:8888",
            "::1111:2222:3333:4444:5555:6666:7777:8888:9999",
            "1111:2222:3333:4444:5555:6666:7777:8888:9999",
            "1111:2222:3333:4444:5555:6666:7777:8888/128",
            "1111:2222:3333:4444:5555:6666:7777:8888/1280",
            "1111:2222:3333:4444:5555:6666:7777::/128",
            "1111:2222:3333:4444:5555:6666:7777:8888::",
            "1111:2222:3333:4444:5555:6666:7777:8888::/128",
            "1111:2222:3333:4444:5555:6666:7777:8888:/12",
            "::/0",
            "::/00",
            "::/1280",
            "255.255.255.255/32",
            "255.255.255.255/320",
            "255.255.255.2555",
            "1.2.3.4555555555555555555555",
            "1.2.3333333333333333333333.4",
            "1234567890123456789.1",
            "0.0.0.0/0",
        ];
        for line in long {
            for ending in endings {
                for rest in [0, 1, 64] {
                    assert_read_as_before(line.as_bytes(), ending, rest);
                }
            }
        }
        let mut next = xorshift(0x5eed_0ffa_5711_e5d1);
        let (mut lines, mut taken) = (0, 0);
        for _ in 0..100_000 {
            let line = near_plain_line(&mut next);
            lines += 1;
            taken += usize::from(fast_cidr(&line).is_some());
            // The text ending with the line or going on past the window, or
            // anywhere between.
            let rest = match next() % 4 {
                0 => 0,
                1 => 64,
                _ => (next() % 64) as usize,
            };
            assert_read_as_before(&line, endings[(next() % 8) as usize], rest);
        }
        // Enough of both kinds.
        assert!(
            taken > lines / 10 && taken < lines * 9 / 10,
            "{taken} of {lines}"
        );
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
                match taken_line(text.as_bytes()) {
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
                match taken_line(text.as_bytes()) {
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
