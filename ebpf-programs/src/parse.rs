//! Header parsing: Ethernet (up to two VLAN tags), IPv4 (options, fragments), IPv6
//! (a bounded walk of extension headers), then TCP/UDP/ICMP/ICMPv6.
//!
//! Every read goes through [`read`], which bounds-checks against the end of the
//! packet; every loop has a named bound. The result is a [`Packet`] the verdict code
//! can use without touching packet memory again. The same walk serves the XDP
//! program (ingress: the peer is the source) and the TC egress program (the peer is
//! the destination), so both sides of a flow are read by one parser.

const ETH_HDR_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ outer tag still emitted by some switches.
const ETH_P_QINQ_LEGACY: u16 = 0x9100;

const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;
const IPPROTO_HIP: u8 = 139;
const IPPROTO_SHIM6: u8 = 140;

/// More extension headers than this is not a real packet; it is treated as malformed
/// rather than walked further (a longer chain only serves to hide the ports).
pub const IPV6_MAX_EXT_HEADERS: usize = 8;

/// Where the transport header's destination port (or ICMP type) begins and how much
/// of the header must be present for the packet to be well formed.
const TCP_MIN_LEN: usize = 20;
const UDP_LEN: usize = 8;
const ICMP_MIN_LEN: usize = 8;

/// The packet bytes a program may read: `[start, end)` from its context.
#[derive(Clone, Copy)]
pub struct Bytes {
    start: usize,
    end: usize,
}

impl Bytes {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }
}

/// Which way a packet travels, and so which of its addresses and ports belong to
/// the remote peer and which to this host.
pub trait Direction {
    /// Offset of the peer's address in the IPv4 header.
    const PEER_V4: usize;
    /// Offset of the peer's address in the IPv6 header.
    const PEER_V6: usize;
    /// Whether the host's port is the transport header's source port.
    const LOCAL_IS_SOURCE: bool;
}

/// Arriving: the peer is the source, the host's port the destination port.
pub struct Ingress;
/// Leaving: the peer is the destination, the host's port the source port.
pub struct Egress;

impl Direction for Ingress {
    const PEER_V4: usize = 12;
    const PEER_V6: usize = 8;
    const LOCAL_IS_SOURCE: bool = false;
}

impl Direction for Egress {
    const PEER_V4: usize = 16;
    const PEER_V6: usize = 24;
    const LOCAL_IS_SOURCE: bool = true;
}

/// The remote end's address (on ingress, the source).
#[derive(Clone, Copy)]
pub enum Peer {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[derive(Clone, Copy)]
pub struct Ports {
    /// This host's port (on ingress, the destination port the rules match).
    pub local: u16,
    pub peer: u16,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy)]
pub struct Icmp {
    pub icmp_type: u8,
    /// The echo identifier (bytes 4-5; meaningless for other types).
    pub echo_id: u16,
}

#[derive(Clone, Copy)]
pub enum L4 {
    /// Ports and the flags byte.
    Tcp(Ports, u8),
    Udp(Ports),
    Icmp(Icmp),
    Icmpv6(Icmp),
    /// A protocol without ports Airlock knows of (ESP, GRE, SCTP, ...).
    Other,
    /// A non-first fragment: it carries no transport header.
    NonFirstFragment,
}

#[derive(Clone, Copy)]
pub enum Packet {
    NonIp,
    /// Headers too short or inconsistent to know even the source.
    Malformed,
    /// The IP header is sound, so the source is known, but what follows is not.
    MalformedFrom(Peer),
    Ip(Peer, L4),
}

#[inline(always)]
fn read<const N: usize>(ctx: &Bytes, offset: usize) -> Option<[u8; N]> {
    if ctx.start + offset + N > ctx.end {
        return None;
    }
    // SAFETY: bounds checked against the end of the packet just above.
    Some(unsafe { core::ptr::read_unaligned((ctx.start + offset) as *const [u8; N]) })
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_LEGACY
}

#[inline(always)]
pub fn parse<D: Direction>(ctx: &Bytes) -> Packet {
    let Some(ethertype) = read::<2>(ctx, 12) else {
        return Packet::Malformed;
    };
    let mut ethertype = be16(ethertype);
    let mut offset = ETH_HDR_LEN;
    // Two tags: 802.1Q, or 802.1ad/QinQ outer + 802.1Q inner. Unrolled by hand so the
    // verifier sees two fixed offsets instead of a loop.
    if is_vlan(ethertype) {
        let Some(inner) = read::<2>(ctx, offset + 2) else {
            return Packet::Malformed;
        };
        ethertype = be16(inner);
        offset += 4;
        if is_vlan(ethertype) {
            let Some(inner) = read::<2>(ctx, offset + 2) else {
                return Packet::Malformed;
            };
            ethertype = be16(inner);
            offset += 4;
            // A third tag: nothing on a host decapsulates it, and passing it as
            // "non-IP" would let a tagged IP packet skip the filter.
            if is_vlan(ethertype) {
                return Packet::Malformed;
            }
        }
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4::<D>(ctx, offset),
        ETH_P_IPV6 => parse_ipv6::<D>(ctx, offset),
        _ => Packet::NonIp,
    }
}

#[inline(always)]
fn parse_ipv4<D: Direction>(ctx: &Bytes, offset: usize) -> Packet {
    let Some(header) = read::<20>(ctx, offset) else {
        return Packet::Malformed;
    };
    let header_len = usize::from(header[0] & 0x0f) * 4;
    if header[0] >> 4 != 4 || header_len < 20 {
        return Packet::Malformed;
    }
    let at = D::PEER_V4;
    let source = Peer::V4([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let total_len = usize::from(be16([header[2], header[3]]));
    // Options must be present in full, and the stated length must cover the header.
    if total_len < header_len || !present(ctx, offset + header_len) {
        return Packet::MalformedFrom(source);
    }
    let protocol = header[9];
    let fragment_offset = be16([header[6], header[7]]) & 0x1fff;
    if fragment_offset != 0 {
        // RFC 1858: a TCP fragment at offset 8 bytes can only be an attempt to
        // overwrite the ports of the first fragment, which was filtered on them.
        if protocol == IPPROTO_TCP && fragment_offset == 1 {
            return Packet::MalformedFrom(source);
        }
        return Packet::Ip(source, L4::NonFirstFragment);
    }
    parse_l4::<D>(ctx, offset + header_len, protocol, source, false)
}

#[inline(always)]
fn parse_ipv6<D: Direction>(ctx: &Bytes, offset: usize) -> Packet {
    let Some(header) = read::<40>(ctx, offset) else {
        return Packet::Malformed;
    };
    if header[0] >> 4 != 6 {
        return Packet::Malformed;
    }
    let mut address = [0u8; 16];
    address.copy_from_slice(&header[D::PEER_V6..D::PEER_V6 + 16]);
    let source = Peer::V6(address);
    let mut next = header[6];
    let mut cursor = offset + 40;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH | IPPROTO_HIP
            | IPPROTO_SHIM6 => {
                let Some(ext) = read::<2>(ctx, cursor) else {
                    return Packet::MalformedFrom(source);
                };
                next = ext[0];
                cursor += (usize::from(ext[1]) + 1) * 8;
                if !present(ctx, cursor) {
                    return Packet::MalformedFrom(source);
                }
            }
            IPPROTO_AH => {
                let Some(ext) = read::<2>(ctx, cursor) else {
                    return Packet::MalformedFrom(source);
                };
                next = ext[0];
                cursor += (usize::from(ext[1]) + 2) * 4;
                if !present(ctx, cursor) {
                    return Packet::MalformedFrom(source);
                }
            }
            IPPROTO_FRAGMENT => {
                let Some(fragment) = read::<8>(ctx, cursor) else {
                    return Packet::MalformedFrom(source);
                };
                next = fragment[0];
                let fragment_offset = be16([fragment[2], fragment[3]]) >> 3;
                if fragment_offset != 0 {
                    if next == IPPROTO_TCP && fragment_offset == 1 {
                        return Packet::MalformedFrom(source);
                    }
                    return Packet::Ip(source, L4::NonFirstFragment);
                }
                cursor += 8;
            }
            _ => return parse_l4::<D>(ctx, cursor, next, source, true),
        }
        // Keeps the offset provably small for the verifier; no real chain comes close.
        if cursor > 0x3fff {
            return Packet::MalformedFrom(source);
        }
    }
    // Exactly IPV6_MAX_EXT_HEADERS headers is fine; only a longer chain is malformed.
    if is_extension_header(next) {
        return Packet::MalformedFrom(source);
    }
    parse_l4::<D>(ctx, cursor, next, source, true)
}

#[inline(always)]
fn is_extension_header(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_DSTOPTS
            | IPPROTO_MH
            | IPPROTO_HIP
            | IPPROTO_SHIM6
            | IPPROTO_AH
            | IPPROTO_FRAGMENT
    )
}

/// Whether the header that ends just before `end` is entirely in the packet: a
/// header cut short is malformed even when nothing after it would be read.
#[inline(always)]
fn present(ctx: &Bytes, end: usize) -> bool {
    end == 0 || read::<1>(ctx, end - 1).is_some()
}

/// Host and peer ports from a transport header's first four bytes.
#[inline(always)]
fn ports<D: Direction>(header: &[u8]) -> Ports {
    let source = be16([header[0], header[1]]);
    let destination = be16([header[2], header[3]]);
    if D::LOCAL_IS_SOURCE {
        Ports {
            local: source,
            peer: destination,
        }
    } else {
        Ports {
            local: destination,
            peer: source,
        }
    }
}

#[inline(always)]
fn icmp(header: [u8; ICMP_MIN_LEN]) -> Icmp {
    Icmp {
        icmp_type: header[0],
        echo_id: be16([header[4], header[5]]),
    }
}

#[inline(always)]
fn parse_l4<D: Direction>(
    ctx: &Bytes,
    offset: usize,
    protocol: u8,
    source: Peer,
    ipv6: bool,
) -> Packet {
    let l4 = match protocol {
        IPPROTO_TCP => match read::<TCP_MIN_LEN>(ctx, offset) {
            Some(tcp) => L4::Tcp(ports::<D>(&tcp), tcp[13]),
            None => return Packet::MalformedFrom(source),
        },
        IPPROTO_UDP => match read::<UDP_LEN>(ctx, offset) {
            Some(udp) => L4::Udp(ports::<D>(&udp)),
            None => return Packet::MalformedFrom(source),
        },
        IPPROTO_ICMP if !ipv6 => match read::<ICMP_MIN_LEN>(ctx, offset) {
            Some(header) => L4::Icmp(icmp(header)),
            None => return Packet::MalformedFrom(source),
        },
        IPPROTO_ICMPV6 if ipv6 => match read::<ICMP_MIN_LEN>(ctx, offset) {
            Some(header) => L4::Icmpv6(icmp(header)),
            None => return Packet::MalformedFrom(source),
        },
        _ => L4::Other,
    };
    Packet::Ip(source, l4)
}
