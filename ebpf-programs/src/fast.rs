//! The common frames, parsed straight through (issue 19): IPv4 without options and
//! not a later fragment, or IPv6 with TCP or UDP as its next header, carrying TCP
//! or UDP. Word loads (two for the IPv4 header, one for IPv6's, one for the ports)
//! and a few checks, where the general parser reads byte by byte and branches on
//! options, fragments, extension headers and the BIG TCP length. Any other frame
//! (options, fragments, extension headers, ICMP, lengths that do not add up, a
//! frame cut short) is left to the general parser in parse.rs, so a frame accepted
//! here must get exactly the `Headers` that parser gives it: the conditions below
//! are the ones under which that parser reaches the same transport header through
//! the same checks. The kernel differential tests hold the two to each other.
//!
//! The egress program takes the same path (`Direction` says which port is
//! whose); its general parse reads up to the end of the frame rather than the IP
//! length, so here too the IP length is not checked against the frame: a
//! segment with its payload in pages past the linear part is common on egress.

use crate::mem::Slot;
use crate::parse::{
    Bytes, Direction, ETH_P_IPV4, ETH_P_IPV6, Headers, IPPROTO_TCP, IPPROTO_UDP, KIND_IP, L4_TCP,
    L4_UDP, TCP_MIN_LEN, UDP_LEN, load, unknown_to_verifier,
};

const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;

/// The IPv4 header's first word as loaded (byte 0 in the low bits): version and
/// header length (byte 0), the fragment offset (the low 5 bits of byte 6 and all of
/// byte 7). Masked and compared to `0x45`: version 4, no options, offset 0.
const IPV4_SIMPLE_MASK: u64 = 0xff1f_0000_0000_00ff;
const IPV4_SIMPLE: u64 = 0x45;

/// The frame's headers, written into `slot`, when it is one of the
/// common frames (`ethertype` and `offset` as
/// [`crate::parse::LinkLayer::network`] found them); otherwise `None`, and
/// nothing written. No zeroing first: every byte of the slot is written.
#[inline(always)]
pub fn parse<'a, D: Direction>(
    ctx: &Bytes,
    ethertype: u16,
    offset: usize,
    slot: &'a mut Slot<Headers>,
) -> Option<&'a Headers> {
    let found = parse_common::<D>(ctx, ethertype, offset)?;
    Some(slot.write(found))
}

#[inline(always)]
pub(crate) fn parse_common<D: Direction>(
    ctx: &Bytes,
    ethertype: u16,
    offset: usize,
) -> Option<Headers> {
    // As an offset the verifier does not know (below 64; at most 22 here), so the
    // checks below bound `ip` only and leave what it knows of `start` as the
    // general parser leaves it: with each tag count's constant offset, each kind
    // of frame reached what follows in a state of its own, checked again.
    let offset = (unknown_to_verifier(offset as u64, (ctx.end - ctx.start) as u64) & 0x3f) as usize;
    let ip = ctx.start + offset;
    // The frame's length from the IP header on; the general parser cuts reads at
    // the IP length only once that fits in the frame, and refuses it otherwise.
    let available = ctx.end - ip;
    if ethertype == ETH_P_IPV4 {
        // The header and the shortest transport header (UDP's), for the verifier;
        // the IP length checked below is what bounds the reads.
        if ip + IPV4_HDR_LEN + UDP_LEN > ctx.end {
            return None;
        }
        // SAFETY: 16 bytes from `ip` are in the frame (checked above).
        let (first, second) = unsafe { (load::<u64>(ip), load::<u64>(ip + 8)) };
        if first & IPV4_SIMPLE_MASK != IPV4_SIMPLE {
            return None;
        }
        // A total length of 0 (BIG TCP) is below every minimum here.
        let total_len = usize::from(u16::from_be((first >> 16) as u16));
        // Egress reads are bounded by the frame only (`Direction`): a segment
        // whose payload sits in pages past the linear part is still one of these.
        if D::BOUNDED_BY_IP_LENGTH && total_len > available {
            return None;
        }
        let protocol = (second >> 8) as u8;
        transport::<D>(
            ctx,
            ip + IPV4_HDR_LEN,
            total_len.wrapping_sub(IPV4_HDR_LEN),
            protocol,
            4,
            offset + D::PEER_V4,
        )
    } else if ethertype == ETH_P_IPV6 {
        if ip + IPV6_HDR_LEN + UDP_LEN > ctx.end {
            return None;
        }
        // SAFETY: 8 bytes from `ip` are in the frame (checked above).
        let first = unsafe { load::<u64>(ip) };
        if first & 0xf0 != 0x60 {
            return None;
        }
        // A payload length of 0 (jumbogram, BIG TCP) is below every minimum here.
        let payload_len = usize::from(u16::from_be((first >> 32) as u16));
        if D::BOUNDED_BY_IP_LENGTH && payload_len > available - IPV6_HDR_LEN {
            return None;
        }
        let next = (first >> 48) as u8;
        transport::<D>(
            ctx,
            ip + IPV6_HDR_LEN,
            payload_len,
            next,
            6,
            offset + D::PEER_V6,
        )
    } else {
        None
    }
}

/// The TCP or UDP header at `at`, `len` bytes of IP payload from there (a huge
/// value when the IP header's length did not cover itself: refused like a short
/// one, as the general parser does).
#[inline(always)]
fn transport<D: Direction>(
    ctx: &Bytes,
    at: usize,
    len: usize,
    protocol: u8,
    family: u8,
    peer_at: usize,
) -> Option<Headers> {
    let (l4, need) = match protocol {
        IPPROTO_TCP => (L4_TCP, TCP_MIN_LEN),
        IPPROTO_UDP => (L4_UDP, UDP_LEN),
        _ => return None,
    };
    // The general parser's two checks of a transport header: within the IP
    // length, then within the frame (the one the verifier needs).
    if len < need || len > 0xffff || at + need > ctx.end {
        return None;
    }
    // SAFETY: `need` (8 or 20) bytes from `at` are in the frame (checked above).
    let ports = unsafe { load::<u32>(at) };
    let tcp_flags = if l4 == L4_TCP {
        // SAFETY: a TCP header: 20 bytes from `at` are in the frame.
        unsafe { core::ptr::read((at + 13) as *const u8) }
    } else {
        0
    };
    let source = u16::from_be(ports as u16);
    let destination = u16::from_be((ports >> 16) as u16);
    let (local_port, peer_port) = if D::LOCAL_IS_SOURCE {
        (source, destination)
    } else {
        (destination, source)
    };
    Some(Headers {
        kind: KIND_IP,
        family,
        l4,
        tcp_flags,
        icmp_type: 0,
        local_port,
        peer_port,
        peer_at: peer_at as u16,
    })
}
