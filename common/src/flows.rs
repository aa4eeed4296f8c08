//! The return-traffic flow table: which flows the host itself has opened, so that
//! under `default: drop` their replies pass (docs/policy.md, verdict rule 6).
//!
//! Written only by the TC egress program, from packets the host sends; the XDP
//! program only reads it. Packets arriving from outside therefore never write it
//! (a flood of spoofed "replies" cannot add an entry), a TCP flow is only created
//! by the host's own SYN, and the table is an LRU hash of fixed size, so memory is
//! bounded whatever the traffic: when it is full, the kernel evicts flows it has
//! not seen used lately (they come back with the host's next packet on them).

/// Flows tracked per interface. Preallocated by the kernel (about 100 bytes each
/// with the LRU's bookkeeping, so ~6.5 MiB per interface).
pub const FLOW_TABLE_ENTRIES: u32 = 65_536;

pub const MAP_FLOWS: &str = "FLOWS";
/// The egress program's own per-CPU memory; user space never reads it.
pub const MAP_EGRESS_RECENT: &str = "EGRESS_RECENT";

/// Name of the TC egress program in the object.
pub const EGRESS_PROGRAM_NAME: &str = "airlock_egress";

const SECOND_NS: u64 = 1_000_000_000;

/// How long after the host's last packet on an open TCP connection replies still
/// pass: Linux's default `tcp_keepalive_time`, so a connection with keepalive on is
/// refreshed before it expires however quiet it is.
pub const TCP_TIMEOUT_NS: u64 = 7_200 * SECOND_NS;
/// After the host's SYN, until the connection is established (the host's first
/// ACK moves it to [`TCP_TIMEOUT_NS`]): as long as Linux keeps retrying a connect
/// (`tcp_syn_retries` 6 is about 127 s), so scans and failing connects do not sit
/// in the table for hours.
pub const TCP_SYN_TIMEOUT_NS: u64 = 130 * SECOND_NS;
/// After the host sent a FIN: long enough for the peer's FIN and the last ACKs
/// (conntrack's TIME_WAIT is also 120 s).
pub const TCP_CLOSING_TIMEOUT_NS: u64 = 120 * SECOND_NS;
/// UDP has no end: conntrack's timeout for a UDP flow that has seen replies.
pub const UDP_TIMEOUT_NS: u64 = 120 * SECOND_NS;
/// An echo request's replies.
pub const ICMP_ECHO_TIMEOUT_NS: u64 = 30 * SECOND_NS;
/// The egress program rewrites an entry only when its deadline would move by more
/// than this, so a busy flow costs a lookup per packet, not a write.
pub const FLOW_REFRESH_SLACK_NS: u64 = SECOND_NS;

/// Per-CPU memory of the flows this CPU's egress program refreshed lately
/// (`EGRESS_RECENT`): a packet on one of them skips the flow table altogether.
/// Direct-mapped by the flow's ports, so a few interleaved connections each keep
/// their slot.
pub const EGRESS_RECENT_SLOTS: u32 = 64;

/// How long a remembered refresh stands, as a fraction of a second
/// (`SamplingConfig::window_jiffies / EGRESS_RECENT_FRACTION` jiffies): a flow's
/// deadline can then trail its last packet by this plus [`FLOW_REFRESH_SLACK_NS`]
/// at most, against timeouts of two minutes or more.
pub const EGRESS_RECENT_FRACTION: u32 = 4;

/// An `EGRESS_RECENT` slot: `key`'s entry was live and fresh (its deadline within
/// [`FLOW_REFRESH_SLACK_NS`] of a refresh) at `bpf_jiffies64() == at_jiffies`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentFlow {
    pub key: FlowKey,
    pub at_jiffies: u64,
}

/// Per-CPU memory of replies the XDP program found a live flow for lately
/// (`REPLY_RECENT`): the next reply on the same flow skips the flow table's hash
/// lookup. Direct-mapped by [`flow_epoch_slot`] (masked to this many slots).
pub const REPLY_RECENT_SLOTS: u32 = 256;
pub const MAP_REPLY_RECENT: &str = "REPLY_RECENT";

/// Counters the egress program (and user space) bump whenever a flow's deadline
/// comes nearer or its entry goes (a close, an abort, a connection reopened on
/// the same ports): a remembered reply stands only while its slot's counter is
/// the one it was remembered with. One counter per [`flow_epoch_slot`], so a
/// host closing connections all the time clears only the memory of flows that
/// share a slot with them.
pub const FLOW_EPOCH_SLOTS: u32 = 1024;
pub const MAP_FLOW_EPOCHS: &str = "FLOW_EPOCHS";

/// `key`'s counter in `FLOW_EPOCHS` (and, masked further, its `REPLY_RECENT`
/// slot): from its ports and the last byte of each family's address, so the
/// connections a host keeps to one peer, and to many peers on one port, spread.
#[inline(always)]
pub const fn flow_epoch_slot(key: &FlowKey) -> u32 {
    (key.local_port as u32
        ^ ((key.peer_port as u32) << 5)
        ^ ((key.peer[3] as u32) << 2)
        ^ key.peer[15] as u32)
        & (FLOW_EPOCH_SLOTS - 1)
}

/// Which local ports any flow was ever recorded on, per transport (`FLOW_PORTS`):
/// a byte per port, set to 1 before the first entry on that port is written (by
/// the egress program, and by user space when it seeds the table) and never
/// cleared. A packet to a port whose byte is 0 cannot be a reply, and leaves
/// without the hash lookup: a flood of ACKs or RSTs to ports the host never
/// opened a flow from costs one array load. Bytes, not bits: a byte is written
/// with a plain store, so two CPUs marking neighbouring ports cannot lose either
/// mark, with no atomic read-modify-write.
///
/// TCP, UDP, ICMP echo and ICMPv6 echo (by echo identifier) in that order; each
/// transport's 65,536 bytes in [`FLOW_PORT_BLOCKS`] values of
/// [`FLOW_PORT_BLOCK_BYTES`].
pub const FLOW_PORT_BLOCK_BYTES: usize = 4096;
pub const FLOW_PORT_BLOCKS: u32 = 4 * (1 << 16) / FLOW_PORT_BLOCK_BYTES as u32;
pub const MAP_FLOW_PORTS: &str = "FLOW_PORTS";

/// The `FLOW_PORTS` value and byte of `local_port` for IP protocol `protocol`;
/// `None` for a protocol that has no flows.
#[inline(always)]
pub const fn flow_port_byte(protocol: u8, local_port: u16) -> Option<(u32, usize)> {
    let transport = match protocol {
        6 => 0,
        17 => 1,
        1 => 2,
        58 => 3,
        _ => return None,
    };
    Some((
        (transport << 4) | (local_port as u32 >> 12),
        local_port as usize & (FLOW_PORT_BLOCK_BYTES - 1),
    ))
}

/// A `REPLY_RECENT` slot: at `bpf_jiffies64() == at_jiffies`, `key`'s entry was
/// live for at least a quarter second more, and its `FLOW_EPOCHS` counter read
/// `epoch` (read before the table was).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentReply {
    pub key: FlowKey,
    pub epoch: u64,
    pub at_jiffies: u64,
}

pub const FLOW_FAMILY_V4: u8 = 4;
pub const FLOW_FAMILY_V6: u8 = 6;

/// A flow seen from the host: the remote peer's address and port, the host's port,
/// the protocol. ICMP echo uses the echo identifier as `local_port` and 0 as
/// `peer_port`. The host's own address is left out: a reply must come back on the
/// interface the flow left by, and that interface's table is the one consulted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// IPv4 in the first 4 bytes (the rest zero), or IPv6.
    pub peer: [u8; 16],
    pub local_port: u16,
    pub peer_port: u16,
    /// IP protocol number (6, 17, 1, 58).
    pub protocol: u8,
    /// [`FLOW_FAMILY_V4`] or [`FLOW_FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 2],
}

/// `FLOWS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// `bpf_ktime_get_ns()` after which replies no longer pass.
    pub expires_ns: u64,
    /// Nonzero once the host sent a FIN on this TCP flow: it stays on the short
    /// timeout even as the last ACKs go out.
    pub closing: u32,
    pub _pad: u32,
}
