//! Header parsing: Ethernet (up to two VLAN tags), IPv4 (options, fragments), IPv6
//! (a bounded walk of extension headers), then TCP/UDP/ICMP/ICMPv6.
//!
//! Every read goes through [`read`], which bounds-checks against the end of the
//! frame and, once the IP header is read, against the end of the IP packet as its
//! own length field states it (IPv4 total length, IPv6 40 + payload length): the
//! kernel trims the bytes past that before it looks at the packet, so on ingress a
//! header that only fits in those trailing bytes is one the kernel never sees, and
//! judging by it would be judging another packet. Every loop has a named bound. The result is a [`Headers`] the verdict code
//! can use without touching packet memory again. The same walk serves the XDP
//! program (ingress: the peer is the source) and the TC egress program (the peer is
//! the destination), so both sides of a flow are read by one parser.

const ETH_HDR_LEN: usize = 14;
pub(crate) const ETH_P_IPV4: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
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
pub(crate) const TCP_MIN_LEN: usize = 20;
pub(crate) const UDP_LEN: usize = 8;
const ICMP_MIN_LEN: usize = 8;

/// The packet bytes a program may read: `[start, end)` from its context, and of
/// those only the first `limit` (the end of the IP packet, once it is known).
#[derive(Clone, Copy)]
pub struct Bytes {
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// Offset from `start` past which a read fails even inside the frame. A
    /// constant `usize::MAX` until the IP header is read, so LLVM drops the check
    /// from the link-layer reads.
    limit: usize,
}

impl Bytes {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self {
            start,
            end,
            limit: usize::MAX,
        }
    }

    /// These bytes, cut at `ip_end` (an offset from `start`) where the direction
    /// bounds reads by the IP length. `None` when the IP header claims more than
    /// the frame holds: the kernel drops such a packet as truncated, and so does
    /// the filter.
    #[inline(always)]
    fn bounded<D: Direction>(&self, ip_end: usize) -> Option<Self> {
        if !D::BOUNDED_BY_IP_LENGTH {
            return Some(*self);
        }
        if self.start + ip_end > self.end {
            return None;
        }
        Some(Self {
            start: self.start,
            end: self.end,
            // Hidden from LLVM: knowing `start + limit <= end`, it drops the frame
            // check from later reads as redundant, and the verifier, which cannot
            // follow that reasoning, then refuses the read.
            limit: opaque_to_llvm(ip_end),
        })
    }

    /// Whether the frame holds more than `len` bytes from `offset`.
    #[inline(always)]
    fn longer_than(&self, offset: usize, len: usize) -> bool {
        self.start + offset + len < self.end
    }
}

/// Which way a packet travels, and so which of its addresses and ports belong to
/// the remote peer and which to this host.
pub trait Direction {
    /// Offset of the peer's address in the IPv4 header.
    const PEER_V4: usize;
    /// Offset of the peer's address in the IPv6 header.
    const PEER_V6: usize;
    /// Whether the transport header's source port is the host's.
    const LOCAL_IS_SOURCE: bool;
    /// Whether reads stop at the end of the IP packet as its header states it.
    /// Ingress: yes, as the kernel bounds it. Egress: the host wrote the packet, and
    /// a GSO packet's length field can be 0 (BIG TCP); the frame bounds it.
    const BOUNDED_BY_IP_LENGTH: bool;
}

/// Arriving: the peer is the source, the host's port the destination port.
pub struct Ingress;
/// Leaving: the peer is the destination, the host's port the source port.
pub struct Egress;

impl Direction for Ingress {
    const PEER_V4: usize = 12;
    const PEER_V6: usize = 8;
    const LOCAL_IS_SOURCE: bool = false;
    const BOUNDED_BY_IP_LENGTH: bool = true;
}

impl Direction for Egress {
    const PEER_V4: usize = 16;
    const PEER_V6: usize = 24;
    const LOCAL_IS_SOURCE: bool = true;
    const BOUNDED_BY_IP_LENGTH: bool = false;
}

/// What comes before the IP header.
pub trait LinkLayer {
    /// The ethertype of what the frame carries and where that begins. `None`:
    /// malformed.
    fn network(ctx: &Bytes) -> Option<(u16, usize)>;
}

/// Ethernet, behind up to two VLAN tags.
pub struct Ethernet;
/// No link-layer header: the IP header at offset 0 (tun, WireGuard, PPP, IP-in-IP
/// devices). Read as Ethernet, its address bytes would be taken for an ethertype
/// and the packet passed as non-IP.
pub struct RawIp;

impl LinkLayer for Ethernet {
    #[inline(always)]
    fn network(ctx: &Bytes) -> Option<(u16, usize)> {
        ethertype(ctx)
    }
}

impl LinkLayer for RawIp {
    /// The version nibble says the family, as the kernel's tun driver decides it;
    /// anything else cannot be delivered as IP and is malformed, not "non-IP".
    /// Two bytes are read, not one: the check for one byte at offset 0 compiles to
    /// `start >= end`, from which the verifier grants no readable range. (Any IP
    /// header is 20 bytes or more, so no verdict changes.)
    #[inline(always)]
    fn network(ctx: &Bytes) -> Option<(u16, usize)> {
        match read::<2>(ctx, 0)?[0] >> 4 {
            4 => Some((ETH_P_IPV4, 0)),
            6 => Some((ETH_P_IPV6, 0)),
            _ => None,
        }
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// [`Headers::kind`]: not IPv4 or IPv6 (ARP, LLDP, ...).
pub const KIND_NON_IP: u8 = 0;
/// Headers too short or inconsistent to know even the source.
pub const KIND_MALFORMED: u8 = 1;
/// The IP header is sound, so the source is known, but what follows is not.
pub const KIND_MALFORMED_FROM: u8 = 2;
/// A sound IP packet: the peer and [`Headers::l4`] are known.
pub const KIND_IP: u8 = 3;

/// [`Headers::l4`]: a protocol without ports Airlock knows of (ESP, GRE, SCTP, ...).
pub const L4_OTHER: u8 = 0;
pub const L4_TCP: u8 = 1;
pub const L4_UDP: u8 = 2;
pub const L4_ICMP: u8 = 3;
pub const L4_ICMPV6: u8 = 4;
/// A non-first fragment: it carries no transport header.
pub const L4_NON_FIRST_FRAGMENT: u8 = 5;

/// What the parser found, as plain integers that are always initialized.
///
/// Deliberately not an enum with payloads: carried through several functions, those
/// made LLVM zero big stack areas on every path and move undefined payload bytes
/// through registers that once held packet pointers, which the verifier refuses
/// ("pointer arithmetic with <<= operator prohibited"). Fields a packet does not
/// have keep their zero.
///
/// Kept in memory (see `crate::mem`): made with `mem::Slot::zeroed`, it is written
/// field by field as the parse finds them and read back by the verdict code.
#[derive(Clone, Copy)]
pub struct Headers {
    /// `KIND_*`.
    pub kind: u8,
    /// 4 or 6 once the IP header was read (`KIND_MALFORMED_FROM`, `KIND_IP`), else 0.
    pub family: u8,
    /// `L4_*` (only for `KIND_IP`).
    pub l4: u8,
    /// TCP: the flags byte.
    pub tcp_flags: u8,
    /// ICMP/ICMPv6: the type.
    pub icmp_type: u8,
    /// TCP/UDP: this host's port (on ingress, the destination port the rules match).
    /// ICMP/ICMPv6: the echo identifier (bytes 4-5; meaningless for other types).
    pub local_port: u16,
    /// TCP/UDP: the peer's port.
    pub peer_port: u16,
    /// Where the remote end's address (on ingress, the source) begins in the
    /// packet: 4 bytes when `family` is 4, 16 when it is 6. Read again where it is
    /// needed ([`Headers::peer_v4`], [`Headers::peer_v6`]) rather than carried:
    /// LLVM split a carried IPv6 address into 16 byte-sized values, each spilled
    /// (and zeroed on the IPv4 paths).
    pub peer_at: u16,
}

/// A TCP segment opening a connection: SYN without ACK. It cannot answer one the
/// host opened (every answer to the host's SYN carries ACK), so it skips the flow
/// table; the reference model's `L4::opens_connection` says the same.
#[inline(always)]
pub fn opens_connection(headers: &Headers) -> bool {
    headers.l4 == L4_TCP && headers.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

impl Headers {
    /// `peer_at`, provably small: read back from the stack, where the verifier does
    /// not track the value of a 2-byte store, it could otherwise be anything up to
    /// 0xffff, and the verifier proves no packet range past an offset that large.
    /// Never more than 22 + 24 (two tags, then the IPv6 destination).
    #[inline(always)]
    fn peer_offset(&self) -> usize {
        usize::from(self.peer_at) & 0xff
    }

    /// The peer's IPv4 address (`family` is 4).
    #[inline(always)]
    pub fn peer_v4(&self, ctx: &Bytes) -> [u8; 4] {
        let at = ctx.start + self.peer_offset();
        if at + 4 > ctx.end {
            return [0; 4];
        }
        // SAFETY: 4 bytes in the packet, checked just above.
        unsafe { load::<u32>(at) }.to_ne_bytes()
    }

    /// The peer's IPv6 address (`family` is 6) as two words in packet byte
    /// order (its bytes, stored as they are), zero if cut short.
    #[inline(always)]
    pub fn peer_v6_words(&self, ctx: &Bytes) -> [u64; 2] {
        let at = ctx.start + self.peer_offset();
        if at + 16 > ctx.end {
            return [0, 0];
        }
        // SAFETY: 16 bytes in the packet, checked just above.
        unsafe { [load::<u64>(at), load::<u64>(at + 8)] }
    }

    /// The peer's IPv6 address (`family` is 6).
    #[inline(always)]
    pub fn peer_v6(&self, ctx: &Bytes) -> [u8; 16] {
        let at = ctx.start + self.peer_offset();
        if at + 16 > ctx.end {
            // Written out: `[0; 16]` here becomes a `memset` call.
            return [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        }
        // SAFETY: 16 bytes in the packet, checked just above.
        let (high, low) = unsafe { (load::<u64>(at), load::<u64>(at + 8)) };
        let (high, low) = (high.to_ne_bytes(), low.to_ne_bytes());
        [
            high[0], high[1], high[2], high[3], high[4], high[5], high[6], high[7], low[0], low[1],
            low[2], low[3], low[4], low[5], low[6], low[7],
        ]
    }
}

/// A word of the packet at `at`, in packet byte order, as one load instruction.
/// For the peer's address, read on every packet, and the common frames' headers
/// (fast.rs): `read` of an array is split
/// by LLVM into byte loads, shifts and ors (the BPF target assumes no misaligned
/// access, and the flag that lifts it cannot be passed through aya-build), 16 loads
/// and 30 more instructions for an IPv6 address; the kernel allows packet loads at
/// any alignment where this program runs (x86_64, arm64). The general parser's
/// header fields stay byte loads: written this way everywhere, the parse verified
/// 40% slower.
///
/// # Safety
/// `size_of::<T>()` bytes at `at` are in the packet (checked against its end).
#[inline(always)]
pub(crate) unsafe fn load<T: PacketWord>(at: usize) -> T {
    let value: u64;
    // SAFETY: in the packet (the caller's contract); the instruction only reads.
    unsafe {
        if size_of::<T>() == 8 {
            core::arch::asm!(
                "{0} = *(u64 *)({1} + 0)",
                lateout(reg) value,
                in(reg) at,
                options(nostack, readonly, preserves_flags),
            );
        } else {
            core::arch::asm!(
                "{0} = *(u32 *)({1} + 0)",
                lateout(reg) value,
                in(reg) at,
                options(nostack, readonly, preserves_flags),
            );
        }
    }
    T::from_u64(value)
}

/// The widths `load` reads.
pub(crate) trait PacketWord {
    fn from_u64(value: u64) -> Self;
}

impl PacketWord for u32 {
    #[inline(always)]
    fn from_u64(value: u64) -> Self {
        value as u32
    }
}

impl PacketWord for u64 {
    #[inline(always)]
    fn from_u64(value: u64) -> Self {
        value
    }
}

#[inline(always)]
fn read<const N: usize>(ctx: &Bytes, offset: usize) -> Option<[u8; N]> {
    // The IP length's bound, then the frame's (the one the verifier needs).
    if offset + N > ctx.limit {
        return None;
    }
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

/// Parses the frame in `ctx` into `headers`, which must arrive all zero
/// (`KIND_NON_IP`). Written in place: returned by value from the many exits of the
/// parse, its fields became values merged from every path, which LLVM kept in
/// spill slots it re-zeroed at every branch.
#[inline(always)]
pub fn parse<D: Direction, L: LinkLayer>(ctx: &Bytes, headers: &mut Headers) {
    parse_network::<D>(ctx, L::network(ctx), headers);
}

/// Whether an ethertype is one the filter judges (IPv4 or IPv6); everything else
/// passes as non-IP.
#[inline(always)]
pub fn is_ip(ethertype: u16) -> bool {
    ethertype == ETH_P_IPV4 || ethertype == ETH_P_IPV6
}

/// As [`parse`], from what [`LinkLayer::network`] already found, so a caller can
/// let non-IP frames go before it reads any policy state.
#[inline(always)]
pub fn parse_network<D: Direction>(
    ctx: &Bytes,
    network: Option<(u16, usize)>,
    headers: &mut Headers,
) {
    let Some((ethertype, offset)) = network else {
        headers.kind = KIND_MALFORMED;
        return;
    };
    match ethertype {
        ETH_P_IPV4 => parse_ipv4::<D>(ctx, offset, headers),
        ETH_P_IPV6 => parse_ipv6::<D>(ctx, offset, headers),
        _ => headers.kind = KIND_NON_IP,
    }
}

/// The ethertype of what the Ethernet header carries and where that begins,
/// behind up to two tags: 802.1Q, or 802.1ad/QinQ outer + 802.1Q inner. Unrolled
/// by hand so the verifier sees fixed offsets instead of a loop. `None`: malformed.
///
/// Each ethertype is one 2-byte load compared in packet byte order, IP first: an
/// untagged IP frame leaves after one compare, a tagged one after four, and the
/// ethertype found is a constant on each way out. Read with `read` (two byte
/// loads, a shift, an or, a byte swap) and tested for a tag first, a tagged frame
/// took 9 instructions more than an untagged one (1.2 ns).
#[inline(always)]
fn ethertype(ctx: &Bytes) -> Option<(u16, usize)> {
    let outer = wire16::<12>(ctx)?;
    if let Some(ip) = ip_ethertype(outer) {
        return Some((ip, ETH_HDR_LEN));
    }
    if !is_vlan_wire(outer) {
        return Some((u16::from_be(outer as u16), ETH_HDR_LEN));
    }
    let inner = wire16::<{ ETH_HDR_LEN + 2 }>(ctx)?;
    if let Some(ip) = ip_ethertype(inner) {
        return Some((ip, ETH_HDR_LEN + 4));
    }
    if !is_vlan_wire(inner) {
        return Some((u16::from_be(inner as u16), ETH_HDR_LEN + 4));
    }
    let third = wire16::<{ ETH_HDR_LEN + 6 }>(ctx)?;
    // A third tag: nothing on a host decapsulates it, and passing it as "non-IP"
    // would let a tagged IP packet skip the filter.
    if is_vlan_wire(third) {
        return None;
    }
    Some((u16::from_be(third as u16), ETH_HDR_LEN + 8))
}

/// The two bytes at `OFFSET` in packet byte order, as one load at a constant
/// offset from the frame's start (compare with `value.to_be()`): the load
/// zero-extends, which LLVM does not know of an `asm!` output, so the value is
/// kept wide rather than masked.
#[inline(always)]
fn wire16<const OFFSET: usize>(ctx: &Bytes) -> Option<u64> {
    // The link layer comes before any IP length bound: the frame's is the one.
    if ctx.start + OFFSET + 2 > ctx.end {
        return None;
    }
    let value: u64;
    // SAFETY: 2 bytes at `OFFSET` are in the frame (checked above); the
    // instruction only reads.
    unsafe {
        core::arch::asm!(
            "{0} = *(u16 *)({1} + {offset})",
            lateout(reg) value,
            in(reg) ctx.start,
            offset = const OFFSET,
            options(nostack, readonly, preserves_flags),
        );
    }
    Some(value)
}

/// IPv4's or IPv6's ethertype, for one in packet byte order that is one.
#[inline(always)]
fn ip_ethertype(wire: u64) -> Option<u16> {
    if wire == u64::from(ETH_P_IPV4.to_be()) {
        Some(ETH_P_IPV4)
    } else if wire == u64::from(ETH_P_IPV6.to_be()) {
        Some(ETH_P_IPV6)
    } else {
        None
    }
}

#[inline(always)]
fn is_vlan_wire(wire: u64) -> bool {
    [ETH_P_8021Q, ETH_P_8021AD, ETH_P_QINQ_LEGACY]
        .iter()
        .any(|&tag| wire == u64::from(tag.to_be()))
}

#[inline(always)]
fn parse_ipv4<D: Direction>(ctx: &Bytes, offset: usize, headers: &mut Headers) {
    headers.kind = KIND_MALFORMED;
    let Some(header) = read::<20>(ctx, offset) else {
        return;
    };
    let header_len = usize::from(header[0] & 0x0f) * 4;
    if header[0] >> 4 != 4 || header_len < 20 {
        return;
    }
    headers.kind = KIND_MALFORMED_FROM;
    headers.family = 4;
    // At most 22 + 16: the offset of an IP header behind two tags.
    headers.peer_at = (offset + D::PEER_V4) as u16;
    let mut total_len = usize::from(be16([header[2], header[3]]));
    // GRO's merged packets over 64 KiB (BIG TCP, seen only in generic mode) carry
    // 0, and the kernel then takes the frame's length, as here.
    if total_len == 0 && ctx.longer_than(offset, 0xffff) {
        total_len = 0x1_0000;
    }
    // Options must be present in full, and the stated length must cover the header.
    if total_len < header_len || !present(ctx, offset + header_len) {
        return;
    }
    let Some(ctx) = &ctx.bounded::<D>(offset + total_len) else {
        return;
    };
    let protocol = header[9];
    let fragment_offset = be16([header[6], header[7]]) & 0x1fff;
    if fragment_offset != 0 {
        // RFC 1858: a TCP fragment at offset 8 bytes can only be an attempt to
        // overwrite the ports of the first fragment, which was filtered on them.
        if protocol == IPPROTO_TCP && fragment_offset == 1 {
            return;
        }
        headers.kind = KIND_IP;
        headers.l4 = L4_NON_FIRST_FRAGMENT;
        return;
    }
    parse_l4::<D>(ctx, offset + header_len, protocol, false, headers);
}

#[inline(always)]
fn parse_ipv6<D: Direction>(ctx: &Bytes, offset: usize, headers: &mut Headers) {
    headers.kind = KIND_MALFORMED;
    let Some(header) = read::<40>(ctx, offset) else {
        return;
    };
    if header[0] >> 4 != 6 {
        return;
    }
    headers.kind = KIND_MALFORMED_FROM;
    headers.family = 6;
    headers.peer_at = (offset + D::PEER_V6) as u16;
    let mut payload_len = usize::from(be16([header[4], header[5]]));
    // A jumbogram or a GRO packet over 64 KiB (BIG TCP): only possible in a frame
    // that long, where the kernel takes the frame's length.
    if payload_len == 0 && ctx.longer_than(offset + 40, 0xffff) {
        payload_len = 0x1_0000;
    }
    let Some(ctx) = &ctx.bounded::<D>(offset + 40 + payload_len) else {
        return;
    };
    let mut next = header[6];
    let mut cursor = offset + 40;
    if is_extension_header(next) {
        match skip_extensions(ctx, cursor, next) {
            Extensions::Transport(at, protocol) => {
                cursor = at;
                next = protocol;
            }
            Extensions::NonFirstFragment => {
                headers.kind = KIND_IP;
                headers.l4 = L4_NON_FIRST_FRAGMENT;
                return;
            }
            Extensions::Malformed => return,
        }
    }
    parse_l4::<D>(ctx, cursor, next, true, headers);
}

/// Where a walk of IPv6 extension headers ended.
enum Extensions {
    /// The transport header's offset and protocol.
    Transport(usize, u8),
    NonFirstFragment,
    Malformed,
}

/// The bounded walk of IPv6 extension headers, off the common path.
#[inline(always)]
fn skip_extensions(ctx: &Bytes, mut cursor: usize, mut next: u8) -> Extensions {
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        // Each header moves the cursor by its own length, so the verifier would
        // check every sequence of header kinds and lengths as a path of its own
        // (most of the work of loading both programs). As "some offset below
        // 0x4000" the cursor starts every step in the same state, which the
        // verifier then checks once.
        cursor = (unknown_to_verifier(cursor as u64, u64::from(next)) & 0x3fff) as usize;
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH | IPPROTO_HIP
            | IPPROTO_SHIM6 => {
                let Some(ext) = read::<2>(ctx, cursor) else {
                    return Extensions::Malformed;
                };
                next = ext[0];
                cursor += (usize::from(ext[1]) + 1) * 8;
                if !present(ctx, cursor) {
                    return Extensions::Malformed;
                }
            }
            IPPROTO_AH => {
                let Some(ext) = read::<2>(ctx, cursor) else {
                    return Extensions::Malformed;
                };
                next = ext[0];
                cursor += (usize::from(ext[1]) + 2) * 4;
                if !present(ctx, cursor) {
                    return Extensions::Malformed;
                }
            }
            IPPROTO_FRAGMENT => {
                let Some(fragment) = read::<8>(ctx, cursor) else {
                    return Extensions::Malformed;
                };
                next = fragment[0];
                let fragment_offset = be16([fragment[2], fragment[3]]) >> 3;
                if fragment_offset != 0 {
                    if next == IPPROTO_TCP && fragment_offset == 1 {
                        return Extensions::Malformed;
                    }
                    return Extensions::NonFirstFragment;
                }
                cursor += 8;
            }
            _ => return Extensions::Transport(cursor, next),
        }
        // Keeps the offset provably small for the verifier; no real chain comes close.
        if cursor > 0x3fff {
            return Extensions::Malformed;
        }
    }
    // Exactly IPV6_MAX_EXT_HEADERS headers is fine; only a longer chain is malformed.
    if is_extension_header(next) {
        return Extensions::Malformed;
    }
    Extensions::Transport(cursor, next)
}

/// `value` itself, through two xors with `noise` (any number the verifier does not
/// know): LLVM cannot see into the assembly, and the verifier does not see that the
/// xors cancel, so from here on it only knows what the caller masks `value` to.
#[inline(always)]
pub(crate) fn unknown_to_verifier(value: u64, noise: u64) -> u64 {
    let mut value = value;
    // SAFETY: register arithmetic only.
    unsafe {
        core::arch::asm!(
            "{v} ^= {n}",
            "{v} ^= {n}",
            v = inout(reg) value,
            n = in(reg) noise,
            options(pure, nomem, nostack),
        );
    }
    value
}

/// `value`, through a register move LLVM cannot see into: it can no longer relate
/// the result to anything it knew, while the verifier follows the move. (An empty
/// block would do for LLVM, but leaves a line-info record on no instruction, which
/// the kernel refuses.)
#[inline(always)]
fn opaque_to_llvm(value: usize) -> usize {
    let mut value = value;
    // SAFETY: a register move.
    unsafe {
        core::arch::asm!("{v} = {v}", v = inout(reg) value, options(pure, nomem, nostack));
    }
    value
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
fn set_ports<D: Direction>(headers: &mut Headers, header: &[u8]) {
    let source = be16([header[0], header[1]]);
    let destination = be16([header[2], header[3]]);
    if D::LOCAL_IS_SOURCE {
        headers.local_port = source;
        headers.peer_port = destination;
    } else {
        headers.local_port = destination;
        headers.peer_port = source;
    }
}

/// The transport header at `offset`; `headers` arrives as `KIND_MALFORMED_FROM`
/// with the peer set, and leaves as `KIND_IP` unless the header is cut short.
#[inline(always)]
fn parse_l4<D: Direction>(
    ctx: &Bytes,
    offset: usize,
    protocol: u8,
    ipv6: bool,
    headers: &mut Headers,
) {
    match protocol {
        IPPROTO_TCP => {
            let Some(tcp) = read::<TCP_MIN_LEN>(ctx, offset) else {
                return;
            };
            headers.l4 = L4_TCP;
            set_ports::<D>(headers, &tcp);
            headers.tcp_flags = tcp[13];
        }
        IPPROTO_UDP => {
            let Some(udp) = read::<UDP_LEN>(ctx, offset) else {
                return;
            };
            headers.l4 = L4_UDP;
            set_ports::<D>(headers, &udp);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 if (protocol == IPPROTO_ICMPV6) == ipv6 => {
            let Some(icmp) = read::<ICMP_MIN_LEN>(ctx, offset) else {
                return;
            };
            headers.l4 = if ipv6 { L4_ICMPV6 } else { L4_ICMP };
            headers.icmp_type = icmp[0];
            headers.local_port = be16([icmp[4], icmp[5]]);
        }
        _ => headers.l4 = L4_OTHER,
    }
    headers.kind = KIND_IP;
}
