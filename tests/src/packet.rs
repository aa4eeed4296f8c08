//! A small frame builder for the kernel tests.
//!
//! A [`FrameSpec`] describes a frame the way a test thinks of it (tags, addresses,
//! options, extension headers, transport, where it is cut short). [`FrameSpec::build`]
//! turns it into bytes and, separately, into the [`PacketClass`] a correct parser
//! must reach for those bytes. The class is worked out by [`FrameSpec::expected_class`]
//! from the spec and the final length with the parsing rules written out below, not
//! by re-reading the bytes, so a bug in the encoder or in the kernel's parser shows
//! up as a disagreement instead of being copied into the expectation.
//!
//! The parsing rules a correct parser follows (docs/policy.md, "Verdict rules" and
//! "Malformed packets"):
//! - shorter than an Ethernet header, a cut VLAN tag, or a third tag: malformed, no
//!   source (a third tag could hide an IP packet behind "non-IP");
//! - an ethertype other than IPv4/IPv6 (ARP, LLDP, ...): non-IP;
//! - no complete fixed IP header, a version that contradicts the ethertype, IHL < 5:
//!   malformed, no source;
//! - IPv4 options cut short, or a total length smaller than the header: malformed,
//!   source known;
//! - the packet is what the IP header's length says (IPv4 total length, IPv6 40 +
//!   payload length), as the kernel sees it: it drops a frame shorter than that
//!   (malformed, source known here) and trims the bytes past it, so nothing in
//!   those trailing bytes counts, and every header below must end inside the
//!   stated length (a length of 0 over 64 KiB of frame, BIG TCP, means the frame's);
//! - a non-first fragment carries no transport header; but a TCP fragment at offset
//!   8 bytes exists only to overwrite the ports of the first one (RFC 1858), so it is
//!   malformed, source known;
//! - IPv6 extension headers must be present in full, at most
//!   [`IPV6_MAX_EXT_HEADERS`] of them before the transport header (a longer chain
//!   only serves to push the ports out of the parser's reach): otherwise malformed,
//!   source known;
//! - TCP needs its 20-byte header, UDP 8 bytes, ICMP/ICMPv6 8 bytes; anything shorter
//!   is malformed, source known. Other protocols need nothing.
//!
//! Checksums: the IPv4 header checksum is correct (a frame a real stack would
//! accept); transport checksums are left zero because nothing on the path checks them.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use airlock::reference::{self, L4, PacketClass};

/// Longest IPv6 extension header chain a correct parser walks (design: "a bounded
/// number of extension headers").
pub const IPV6_MAX_EXT_HEADERS: usize = 8;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_LLDP: u16 = 0x88cc;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_ESP: u8 = 50;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_SCTP: u8 = 132;

const ETH_HDR_LEN: usize = 14;
const VLAN_TAG_LEN: usize = 4;
const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
const TCP_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;
const ICMP_HDR_LEN: usize = 8;

/// A VLAN tag protocol identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// 802.1Q, 0x8100.
    Dot1Q,
    /// 802.1ad (QinQ outer), 0x88a8.
    Dot1Ad,
    /// Pre-standard QinQ outer tag, 0x9100.
    QinQLegacy,
}

impl Tag {
    pub fn tpid(self) -> u16 {
        match self {
            Tag::Dot1Q => 0x8100,
            Tag::Dot1Ad => 0x88a8,
            Tag::QinQLegacy => 0x9100,
        }
    }
}

/// What follows the IP header (and extension headers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        dst_port: u16,
        /// The flags byte: [`reference::TCP_SYN`] for a connection's first segment.
        flags: u8,
    },
    Udp {
        dst_port: u16,
    },
    /// ICMP (protocol 1) with this type; under IPv6 it is just an unknown protocol.
    Icmp {
        icmp_type: u8,
    },
    /// ICMPv6 (protocol 58) with this type; under IPv4 it is just an unknown protocol.
    Icmpv6 {
        icmp_type: u8,
    },
    /// Any other protocol, `payload` bytes of zeros.
    Other {
        protocol: u8,
        payload: usize,
    },
}

impl Transport {
    /// A connection's first segment (SYN without ACK) to `dst_port`.
    pub fn tcp_syn(dst_port: u16) -> Self {
        Transport::Tcp {
            dst_port,
            flags: reference::TCP_SYN,
        }
    }

    /// A segment of an established connection (ACK) to `dst_port`: what a reply
    /// to a connection the host opened carries, after its SYN-ACK.
    pub fn tcp_ack(dst_port: u16) -> Self {
        Transport::Tcp {
            dst_port,
            flags: reference::TCP_ACK,
        }
    }

    pub fn protocol(&self) -> u8 {
        match *self {
            Transport::Tcp { .. } => IPPROTO_TCP,
            Transport::Udp { .. } => IPPROTO_UDP,
            Transport::Icmp { .. } => IPPROTO_ICMP,
            Transport::Icmpv6 { .. } => IPPROTO_ICMPV6,
            Transport::Other { protocol, .. } => protocol,
        }
    }

    /// Bytes of header a correct parser needs to read for this protocol under the
    /// given family, and what it concludes when they are there.
    fn needs(&self, ipv6: bool) -> (usize, L4) {
        match *self {
            Transport::Tcp { dst_port, flags } => (TCP_HDR_LEN, L4::Tcp { dst_port, flags }),
            Transport::Udp { dst_port } => (UDP_HDR_LEN, L4::Udp { dst_port }),
            Transport::Icmp { icmp_type } if !ipv6 => (ICMP_HDR_LEN, L4::Icmp { icmp_type }),
            Transport::Icmpv6 { icmp_type } if ipv6 => (ICMP_HDR_LEN, L4::Icmpv6 { icmp_type }),
            _ => (
                0,
                L4::Other {
                    protocol: self.protocol(),
                },
            ),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Transport::Tcp { dst_port, flags } => {
                out.extend_from_slice(&SOURCE_PORT.to_be_bytes());
                out.extend_from_slice(&dst_port.to_be_bytes());
                out.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // sequence
                out.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment
                out.push(5 << 4); // data offset: 5 words, no options
                out.push(flags);
                out.extend_from_slice(&64240u16.to_be_bytes()); // window
                out.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            }
            Transport::Udp { dst_port } => {
                out.extend_from_slice(&SOURCE_PORT.to_be_bytes());
                out.extend_from_slice(&dst_port.to_be_bytes());
                out.extend_from_slice(&(UDP_HDR_LEN as u16 + 4).to_be_bytes());
                out.extend_from_slice(&[0, 0]); // checksum
                out.extend_from_slice(b"ping");
            }
            Transport::Icmp { icmp_type } | Transport::Icmpv6 { icmp_type } => {
                out.extend_from_slice(&[icmp_type, 0, 0, 0]);
                // Rest of header (identifier/sequence, MTU, or reserved) and a body
                // big enough for the neighbour discovery messages (target address).
                out.extend_from_slice(&[0u8; 4 + 16]);
            }
            Transport::Other { payload, .. } => out.resize(out.len() + payload, 0),
        }
    }
}

/// One IPv6 extension header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options, `(len + 1) * 8` bytes.
    HopByHop { len: u8 },
    /// Routing header, `(len + 1) * 8` bytes.
    Routing { len: u8 },
    /// Destination options, `(len + 1) * 8` bytes.
    DestOpts { len: u8 },
    /// Fragment header; `offset` in 8-byte units.
    Fragment { offset: u16, more: bool },
    /// Authentication header, `(len + 2) * 4` bytes.
    Ah { len: u8 },
}

impl Ext {
    fn protocol(self) -> u8 {
        match self {
            Ext::HopByHop { .. } => 0,
            Ext::Routing { .. } => 43,
            Ext::DestOpts { .. } => 60,
            Ext::Fragment { .. } => 44,
            Ext::Ah { .. } => 51,
        }
    }

    /// Its length in bytes.
    pub fn byte_len(self) -> usize {
        match self {
            Ext::HopByHop { len } | Ext::Routing { len } | Ext::DestOpts { len } => {
                (usize::from(len) + 1) * 8
            }
            Ext::Fragment { .. } => 8,
            Ext::Ah { len } => (usize::from(len) + 2) * 4,
        }
    }

    fn encode(self, next: u8, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            // Zero bytes after the first two are Pad1 options (hop-by-hop, destination
            // options) or routing type 0 with no segments left: all well formed.
            Ext::HopByHop { len } | Ext::Routing { len } | Ext::DestOpts { len } => {
                out.extend_from_slice(&[next, len]);
            }
            Ext::Fragment { offset, more } => {
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                out.extend_from_slice(&0xa1a2_a3a4u32.to_be_bytes()); // identification
            }
            Ext::Ah { len } => {
                out.extend_from_slice(&[next, len, 0, 0]);
                out.extend_from_slice(&0x100u32.to_be_bytes()); // SPI
                out.extend_from_slice(&1u32.to_be_bytes()); // sequence number
            }
        }
        out.resize(start + self.byte_len(), 0);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Spec {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Words of options (0..=10), filled with NOPs and an End of Options.
    pub option_words: u8,
    /// Fragment offset, in 8-byte units.
    pub frag_offset: u16,
    pub more_fragments: bool,
    pub transport: Transport,
    /// Version nibble actually written (4 unless testing a mismatch).
    pub version: u8,
    /// IHL actually written, when it should not be `5 + option_words`.
    pub ihl_override: Option<u8>,
    /// Total length actually written, when it should not be the true length.
    pub total_len_override: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Spec {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub ext: Vec<Ext>,
    pub transport: Transport,
    /// Version nibble actually written (6 unless testing a mismatch).
    pub version: u8,
    /// Payload length actually written, when it should not be the true length.
    pub payload_len_override: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L3 {
    V4(Ipv4Spec),
    V6(Ipv6Spec),
    /// An ARP request.
    Arp,
    /// Some other ethertype with `payload` zero bytes (LLDP, ...).
    Raw {
        ethertype: u16,
        payload: usize,
    },
}

/// A frame, as a test describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    /// VLAN tags, outermost first.
    pub tags: Vec<Tag>,
    pub l3: L3,
    /// Bytes after the IP packet, inside the frame (Ethernet padding, or what an
    /// attacker hides past the stated length).
    pub trailer: Vec<u8>,
    /// Cut the frame to this many bytes (if shorter than its full length).
    pub truncate: Option<usize>,
}

/// Built bytes and what a correct parser makes of them.
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
    pub class: PacketClass,
    pub spec: FrameSpec,
}

impl Frame {
    pub fn hex(&self) -> String {
        hex(&self.bytes)
    }
}

/// Lowercase hex, 16 bytes per line.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(s, "{:04x}:", i * 16);
        for b in chunk {
            let _ = write!(s, " {b:02x}");
        }
        s.push('\n');
    }
    s
}

/// Source port of every TCP and UDP frame built here (the peer's port).
pub const SOURCE_PORT: u16 = 40000;
/// Offset of the TCP flags byte in the TCP header.
pub const TCP_FLAGS_OFFSET: usize = 13;

/// Turns a built frame around, as the host's own packet to that peer: addresses and
/// MACs swapped, and TCP/UDP ports swapped. So `mirror(spec.build())` is the
/// packet the host sends that `spec` answers. Only for untagged frames without IPv4
/// options or IPv6 extension headers; returns the transport header's offset.
pub fn mirror(bytes: &mut [u8]) -> usize {
    let l4 = transport_offset(bytes);
    let (src, dst, len, protocol) = match l4 - 14 {
        IPV4_HDR_LEN => (14 + 12, 14 + 16, 4, bytes[14 + 9]),
        _ => (14 + 8, 14 + 24, 16, bytes[14 + 6]),
    };
    for i in 0..6 {
        bytes.swap(i, 6 + i);
    }
    for i in 0..len {
        bytes.swap(src + i, dst + i);
    }
    if protocol == IPPROTO_TCP || protocol == IPPROTO_UDP {
        bytes.swap(l4, l4 + 2);
        bytes.swap(l4 + 1, l4 + 3);
    }
    l4
}

/// Where the transport header starts in an untagged frame without IPv4 options or
/// IPv6 extension headers.
pub fn transport_offset(bytes: &[u8]) -> usize {
    match u16::from_be_bytes([bytes[12], bytes[13]]) {
        0x0800 => {
            assert_eq!(bytes[14], 0x45, "IPv4 without options only");
            14 + IPV4_HDR_LEN
        }
        0x86dd => 14 + IPV6_HDR_LEN,
        other => panic!("not an untagged IP frame (ethertype {other:#06x})"),
    }
}

const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// The host being protected: destination of every IP frame.
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

impl FrameSpec {
    /// IPv4 to the host, from `src`, carrying `transport`.
    pub fn v4(src: Ipv4Addr, transport: Transport) -> Self {
        FrameSpec {
            tags: Vec::new(),
            l3: L3::V4(Ipv4Spec {
                src,
                dst: HOST_V4,
                option_words: 0,
                frag_offset: 0,
                more_fragments: false,
                transport,
                version: 4,
                ihl_override: None,
                total_len_override: None,
            }),
            trailer: Vec::new(),
            truncate: None,
        }
    }

    /// IPv6 to the host, from `src`, carrying `transport`.
    pub fn v6(src: Ipv6Addr, transport: Transport) -> Self {
        FrameSpec {
            tags: Vec::new(),
            l3: L3::V6(Ipv6Spec {
                src,
                dst: HOST_V6,
                ext: Vec::new(),
                transport,
                version: 6,
                payload_len_override: None,
            }),
            trailer: Vec::new(),
            truncate: None,
        }
    }

    /// From `src` (either family), carrying `transport`.
    pub fn ip(src: IpAddr, transport: Transport) -> Self {
        match src {
            IpAddr::V4(a) => Self::v4(a, transport),
            IpAddr::V6(a) => Self::v6(a, transport),
        }
    }

    pub fn tcp(src: &str, dst_port: u16) -> Self {
        Self::ip(parse_ip(src), Transport::tcp_syn(dst_port))
    }

    pub fn udp(src: &str, dst_port: u16) -> Self {
        Self::ip(parse_ip(src), Transport::Udp { dst_port })
    }

    /// ICMP for an IPv4 source, ICMPv6 for an IPv6 one.
    pub fn icmp(src: &str, icmp_type: u8) -> Self {
        let src = parse_ip(src);
        let transport = match src {
            IpAddr::V4(_) => Transport::Icmp { icmp_type },
            IpAddr::V6(_) => Transport::Icmpv6 { icmp_type },
        };
        Self::ip(src, transport)
    }

    pub fn other(src: &str, protocol: u8) -> Self {
        Self::ip(
            parse_ip(src),
            Transport::Other {
                protocol,
                payload: 16,
            },
        )
    }

    pub fn arp() -> Self {
        FrameSpec {
            tags: Vec::new(),
            l3: L3::Arp,
            trailer: Vec::new(),
            truncate: None,
        }
    }

    pub fn raw(ethertype: u16, payload: usize) -> Self {
        FrameSpec {
            tags: Vec::new(),
            l3: L3::Raw { ethertype, payload },
            trailer: Vec::new(),
            truncate: None,
        }
    }

    pub fn tag(mut self, tag: Tag) -> Self {
        self.tags.push(tag);
        self
    }

    pub fn truncate(mut self, len: usize) -> Self {
        self.truncate = Some(len);
        self
    }

    /// IPv4 options, `words` 4-byte words (IHL = 5 + words). Panics on IPv6.
    pub fn options(mut self, words: u8) -> Self {
        self.v4_mut().option_words = words;
        self
    }

    /// IPv4 fragment fields. Panics on IPv6 (use [`Ext::Fragment`]).
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        let v4 = self.v4_mut();
        v4.frag_offset = offset;
        v4.more_fragments = more;
        self
    }

    pub fn ihl(mut self, ihl: u8) -> Self {
        self.v4_mut().ihl_override = Some(ihl);
        self
    }

    pub fn total_len(mut self, len: u16) -> Self {
        self.v4_mut().total_len_override = Some(len);
        self
    }

    /// Writes `len` as the IPv6 payload length. Panics on IPv4.
    pub fn payload_len(mut self, len: u16) -> Self {
        match &mut self.l3 {
            L3::V6(v6) => v6.payload_len_override = Some(len),
            _ => panic!("payload_len() on a non-IPv6 frame"),
        }
        self
    }

    /// Appends `bytes` after the IP packet.
    pub fn trailer(mut self, bytes: &[u8]) -> Self {
        self.trailer.extend_from_slice(bytes);
        self
    }

    /// Length of the IP packet (header included) as built, before its length field
    /// is overridden and before the trailer: where a length field that tells the
    /// truth points.
    pub fn true_ip_len(&self) -> usize {
        let l3_start = ETH_HDR_LEN + VLAN_TAG_LEN * self.tags.len();
        self.full_len() - self.trailer.len() - l3_start
    }

    /// Writes `version` in the IP header's version nibble (either family).
    pub fn version(mut self, version: u8) -> Self {
        match &mut self.l3 {
            L3::V4(v4) => v4.version = version,
            L3::V6(v6) => v6.version = version,
            _ => panic!("version() on a non-IP frame"),
        }
        self
    }

    /// Appends an IPv6 extension header. Panics on IPv4.
    pub fn ext(mut self, ext: Ext) -> Self {
        match &mut self.l3 {
            L3::V6(v6) => v6.ext.push(ext),
            _ => panic!("ext() on a non-IPv6 frame"),
        }
        self
    }

    fn v4_mut(&mut self) -> &mut Ipv4Spec {
        match &mut self.l3 {
            L3::V4(v4) => v4,
            _ => panic!("IPv4 field set on a non-IPv4 frame"),
        }
    }

    /// Length of the frame before any truncation.
    pub fn full_len(&self) -> usize {
        self.encode_full().len()
    }

    pub fn build(&self) -> Frame {
        let mut bytes = self.encode_full();
        if let Some(len) = self.truncate {
            bytes.truncate(len);
        }
        Frame {
            class: self.expected_class(bytes.len()),
            bytes,
            spec: self.clone(),
        }
    }

    fn encode_full(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&DST_MAC);
        out.extend_from_slice(&SRC_MAC);
        for (i, tag) in self.tags.iter().enumerate() {
            out.extend_from_slice(&tag.tpid().to_be_bytes());
            // TCI: priority 0, VLAN id 100 + depth.
            out.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        match &self.l3 {
            L3::V4(v4) => {
                out.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
                encode_v4(v4, &mut out);
            }
            L3::V6(v6) => {
                out.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                encode_v6(v6, &mut out);
            }
            L3::Arp => {
                out.extend_from_slice(&ETH_P_ARP.to_be_bytes());
                out.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
                out.extend_from_slice(&SRC_MAC);
                out.extend_from_slice(&[198, 51, 100, 2]);
                out.extend_from_slice(&[0; 6]);
                out.extend_from_slice(&HOST_V4.octets());
            }
            L3::Raw { ethertype, payload } => {
                out.extend_from_slice(&ethertype.to_be_bytes());
                out.resize(out.len() + payload, 0);
            }
        }
        out.extend_from_slice(&self.trailer);
        out
    }

    /// What a correct parser concludes about this frame cut to `len` bytes, by the
    /// rules in the module documentation, in the order a parser meets the headers.
    pub fn expected_class(&self, len: usize) -> PacketClass {
        const NO_SOURCE: PacketClass = PacketClass::Malformed { src: None };
        if len < ETH_HDR_LEN {
            return NO_SOURCE;
        }
        if self.tags.len() > 2 {
            // Cut before or after the third tag, the frame is malformed either way.
            return NO_SOURCE;
        }
        let l3_start = ETH_HDR_LEN + VLAN_TAG_LEN * self.tags.len();
        if len < l3_start {
            return NO_SOURCE;
        }
        match &self.l3 {
            L3::Arp => PacketClass::NonIp,
            L3::Raw { ethertype, .. } => {
                assert!(
                    *ethertype != ETH_P_IPV4 && *ethertype != ETH_P_IPV6,
                    "use L3::V4/V6 for IP"
                );
                PacketClass::NonIp
            }
            L3::V4(v4) => classify_v4(v4, len - l3_start),
            L3::V6(v6) => classify_v6(v6, len - l3_start),
        }
    }
}

fn parse_ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad test address {s:?}: {e}"))
}

fn classify_v4(v4: &Ipv4Spec, len: usize) -> PacketClass {
    if len < IPV4_HDR_LEN || v4.version != 4 {
        return PacketClass::Malformed { src: None };
    }
    let ihl = usize::from(v4.ihl_override.unwrap_or(5 + v4.option_words) & 0x0f);
    if ihl < 5 {
        return PacketClass::Malformed { src: None };
    }
    let src = IpAddr::V4(v4.src);
    let malformed = PacketClass::Malformed { src: Some(src) };
    let header_len = ihl * 4;
    let mut total_len = v4
        .total_len_override
        .map_or_else(|| true_v4_len(v4), usize::from);
    if total_len == 0 && len > 0xffff {
        total_len = 0x1_0000;
    }
    if total_len < header_len || len < header_len || len < total_len {
        return malformed;
    }
    // What the kernel keeps: nothing past the stated length counts.
    let len = total_len;
    if v4.frag_offset != 0 {
        if v4.transport.protocol() == IPPROTO_TCP && v4.frag_offset == 1 {
            return malformed;
        }
        return PacketClass::Ip {
            src,
            l4: L4::NonFirstFragment,
        };
    }
    // The transport header starts where the header (as IHL states it) ends.
    let (needed, l4) = v4.transport.needs(false);
    if len < header_len + needed {
        return malformed;
    }
    PacketClass::Ip { src, l4 }
}

fn classify_v6(v6: &Ipv6Spec, len: usize) -> PacketClass {
    if len < IPV6_HDR_LEN || v6.version != 6 {
        return PacketClass::Malformed { src: None };
    }
    let src = IpAddr::V6(v6.src);
    let malformed = PacketClass::Malformed { src: Some(src) };
    let mut payload_len = v6
        .payload_len_override
        .map_or_else(|| true_v6_payload_len(v6), usize::from);
    if payload_len == 0 && len - IPV6_HDR_LEN > 0xffff {
        payload_len = 0x1_0000;
    }
    if len < IPV6_HDR_LEN + payload_len {
        return malformed;
    }
    let len = IPV6_HDR_LEN + payload_len;
    let mut cursor = IPV6_HDR_LEN;
    for (i, ext) in v6.ext.iter().enumerate() {
        if i >= IPV6_MAX_EXT_HEADERS {
            return malformed;
        }
        cursor += ext.byte_len();
        if len < cursor {
            return malformed;
        }
        if let Ext::Fragment { offset, .. } = *ext
            && offset != 0
        {
            // What follows the fragment header of a non-first fragment is payload,
            // not headers; only its immediate next header says what it continues.
            let next = v6
                .ext
                .get(i + 1)
                .map_or_else(|| v6.transport.protocol(), |e| e.protocol());
            if next == IPPROTO_TCP && offset == 1 {
                return malformed;
            }
            return PacketClass::Ip {
                src,
                l4: L4::NonFirstFragment,
            };
        }
    }
    let (needed, l4) = v6.transport.needs(true);
    if len < cursor + needed {
        return malformed;
    }
    PacketClass::Ip { src, l4 }
}

fn v4_header_len(v4: &Ipv4Spec) -> usize {
    IPV4_HDR_LEN + 4 * usize::from(v4.option_words)
}

fn transport_len(transport: &Transport) -> usize {
    let mut scratch = Vec::new();
    transport.encode(&mut scratch);
    scratch.len()
}

fn true_v6_payload_len(v6: &Ipv6Spec) -> usize {
    v6.ext.iter().map(|ext| ext.byte_len()).sum::<usize>() + transport_len(&v6.transport)
}

fn true_v4_len(v4: &Ipv4Spec) -> usize {
    v4_header_len(v4) + transport_len(&v4.transport)
}

fn encode_v4(v4: &Ipv4Spec, out: &mut Vec<u8>) {
    assert!(v4.option_words <= 10, "IPv4 options are at most 40 bytes");
    let start = out.len();
    let ihl = v4.ihl_override.unwrap_or(5 + v4.option_words);
    let total_len = v4.total_len_override.unwrap_or(true_v4_len(v4) as u16);
    out.push((v4.version << 4) | (ihl & 0x0f));
    out.push(0); // DSCP/ECN
    out.extend_from_slice(&total_len.to_be_bytes());
    out.extend_from_slice(&0x4242u16.to_be_bytes()); // identification
    let flags_frag = (u16::from(v4.more_fragments) << 13) | (v4.frag_offset & 0x1fff);
    out.extend_from_slice(&flags_frag.to_be_bytes());
    out.push(64); // TTL
    out.push(v4.transport.protocol());
    out.extend_from_slice(&[0, 0]); // checksum, filled below
    out.extend_from_slice(&v4.src.octets());
    out.extend_from_slice(&v4.dst.octets());
    if v4.option_words > 0 {
        // NOPs, then End of Option List in the last byte.
        let options = 4 * usize::from(v4.option_words);
        out.resize(out.len() + options - 1, 1);
        out.push(0);
    }
    let header_end = start + v4_header_len(v4);
    let checksum = internet_checksum(&out[start..header_end]);
    out[start + 10..start + 12].copy_from_slice(&checksum.to_be_bytes());
    v4.transport.encode(out);
}

fn encode_v6(v6: &Ipv6Spec, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[v6.version << 4, 0, 0, 0]); // version, class, flow label
    out.extend_from_slice(&[0, 0]); // payload length, filled below
    let first = v6
        .ext
        .first()
        .map_or_else(|| v6.transport.protocol(), |e| e.protocol());
    out.push(first);
    out.push(64); // hop limit
    out.extend_from_slice(&v6.src.octets());
    out.extend_from_slice(&v6.dst.octets());
    for (i, ext) in v6.ext.iter().enumerate() {
        let next = v6
            .ext
            .get(i + 1)
            .map_or_else(|| v6.transport.protocol(), |e| e.protocol());
        ext.encode(next, out);
    }
    v6.transport.encode(out);
    let payload = v6
        .payload_len_override
        .unwrap_or((out.len() - start - IPV6_HDR_LEN) as u16);
    out[start + 4..start + 6].copy_from_slice(&payload.to_be_bytes());
}

/// RFC 1071 ones' complement sum.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies_to_zero() {
        let frame = FrameSpec::tcp("198.51.100.7", 5432).options(3).build();
        let header = &frame.bytes[14..14 + 32];
        assert_eq!(internet_checksum(header), 0);
        assert_eq!(frame.bytes[14], 0x48);
    }

    #[test]
    fn full_tcp_frame_classifies_as_tcp() {
        let frame = FrameSpec::tcp("198.51.100.7", 5432).build();
        assert_eq!(frame.bytes.len(), 14 + 20 + 20);
        assert_eq!(
            frame.class,
            PacketClass::Ip {
                src: "198.51.100.7".parse().unwrap(),
                l4: L4::tcp_syn(5432)
            }
        );
    }

    #[test]
    fn ipv6_chain_encodes_next_headers_in_order() {
        let frame = FrameSpec::tcp("2001:db8::7", 443)
            .ext(Ext::HopByHop { len: 0 })
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
            })
            .build();
        assert_eq!(frame.bytes[14 + 6], 0); // IPv6 next: hop-by-hop
        assert_eq!(frame.bytes[14 + 40], 44); // hop-by-hop next: fragment
        assert_eq!(frame.bytes[14 + 48], IPPROTO_TCP); // fragment next: TCP
        assert_eq!(frame.bytes[14 + 56 + 2..14 + 56 + 4], 443u16.to_be_bytes());
    }

    #[test]
    fn truncation_classes_follow_the_layers() {
        let spec = FrameSpec::tcp("198.51.100.7", 22).tag(Tag::Dot1Q);
        let src = Some("198.51.100.7".parse().unwrap());
        assert_eq!(
            spec.expected_class(13),
            PacketClass::Malformed { src: None }
        );
        assert_eq!(
            spec.expected_class(18 + 19),
            PacketClass::Malformed { src: None }
        );
        assert_eq!(spec.expected_class(18 + 20), PacketClass::Malformed { src });
        assert_eq!(spec.expected_class(18 + 39), PacketClass::Malformed { src });
        assert!(matches!(
            spec.expected_class(18 + 40),
            PacketClass::Ip { .. }
        ));
    }
}
