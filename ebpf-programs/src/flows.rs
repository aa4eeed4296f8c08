//! Return traffic under `default: drop` (docs/policy.md, verdict rule 6).
//!
//! Why Airlock keeps its own table instead of asking the kernel's conntrack
//! (`bpf_xdp_ct_lookup`): that kfunc only finds entries when netfilter connection
//! tracking is loaded and tracking this traffic, which a host without stateful
//! nftables/iptables rules does not do; it would make our verdict depend on
//! someone else's firewall. Our table is filled from the one place that knows
//! which flows the host opened, its own outgoing packets (the TC egress program),
//! and is only read at XDP. Spoofed "replies" never write it, and it is a
//! fixed-size LRU, so memory stays bounded under any flood.

use airlock_common::{
    EGRESS_RECENT_FRACTION, EGRESS_RECENT_SLOTS, FLOW_FAMILY_V4, FLOW_FAMILY_V6,
    FLOW_PORT_BLOCK_BYTES, FLOW_REFRESH_SLACK_NS, FlowKey, FlowState, ICMP_ECHO_TIMEOUT_NS,
    REPLY_RECENT_SLOTS, RecentFlow, TCP_CLOSING_TIMEOUT_NS, TCP_SYN_TIMEOUT_NS, TCP_TIMEOUT_NS,
    UDP_TIMEOUT_NS, flow_epoch_slot, flow_port_byte,
};
use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::{
    maps::{EGRESS_RECENT, FLOW_EPOCHS, FLOW_PORTS, FLOWS, REPLY_RECENT, sample_window_jiffies},
    mem::Slot,
    parse::{
        Bytes, Headers, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, KIND_IP, L4_ICMP,
        L4_ICMPV6, L4_TCP, L4_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    },
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// The flow key of an IP packet (`headers.kind == KIND_IP`), built in `slot`
/// (cleared without a `memset` call; see `crate::mem`).
#[inline(always)]
fn key<'a>(
    slot: &'a mut Slot<FlowKey>,
    packet: &Bytes,
    headers: &Headers,
    protocol: u8,
    local_port: u16,
    peer_port: u16,
) -> &'a FlowKey {
    let key = slot.zeroed();
    key.local_port = local_port;
    key.peer_port = peer_port;
    key.protocol = protocol;
    if headers.family == 4 {
        key.peer[..4].copy_from_slice(&headers.peer_v4(packet));
        key.family = FLOW_FAMILY_V4;
    } else {
        // As two words: assigned as bytes, LLVM split the address into 16
        // values, each spilled and stored on its own (some 50 instructions per
        // IPv6 reply).
        let words = headers.peer_v6_words(packet);
        // SAFETY: `key` is the start of an 8-byte aligned `Slot` and `peer` its
        // first 16 bytes; any bytes are a valid address.
        unsafe { core::ptr::write((key as *mut FlowKey).cast::<[u64; 2]>(), words) };
        key.family = FLOW_FAMILY_V6;
    }
    key
}

/// Whether an arriving packet answers a flow the host opened and that has not
/// expired. Only TCP, UDP and echo replies can: other ICMP the host needs is
/// essential and passed before this (rule 4); other protocols have no flows.
///
/// A reply on a flow this CPU found live a moment ago skips the table's hash
/// lookup (`REPLY_RECENT`): remembered only with more than a second left on the
/// deadline, for a quarter second at most, and only while the flow's
/// `FLOW_EPOCHS` counter has not moved, which every abort, close or reopen on
/// the flow (and every user-space write) moves. An entry the LRU evicted may
/// still be remembered for that quarter second: it was live, opened by the host.
#[inline(always)]
pub fn is_reply(packet: &Bytes, headers: &Headers) -> bool {
    if headers.kind != KIND_IP {
        return false;
    }
    let (protocol, peer_port) = match headers.l4 {
        L4_TCP => (IPPROTO_TCP, headers.peer_port),
        L4_UDP => (IPPROTO_UDP, headers.peer_port),
        L4_ICMP if headers.icmp_type == ICMP_ECHO_REPLY => (IPPROTO_ICMP, 0),
        L4_ICMPV6 if headers.icmp_type == ICMPV6_ECHO_REPLY => (IPPROTO_ICMPV6, 0),
        _ => return false,
    };
    // No flow was ever recorded on this port: nothing to look up.
    if !port_has_flows(protocol, headers.local_port) {
        return false;
    }
    let mut slot = Slot::new();
    let key = key(
        &mut slot,
        packet,
        headers,
        protocol,
        headers.local_port,
        peer_port,
    );
    // Read before the table: a change the egress program makes after this read
    // bumps the counter past what is remembered below.
    let epoch_slot = flow_epoch_slot(key);
    let epoch = FLOW_EPOCHS.get(epoch_slot).copied().unwrap_or(0);
    let recent = REPLY_RECENT.get_ptr_mut(epoch_slot & (REPLY_RECENT_SLOTS - 1));
    let now_jiffies = unsafe { bpf_jiffies64() };
    if let Some(recent) = recent
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        && unsafe {
            same_flow(&(*recent).key, key)
                && (*recent).epoch == epoch
                && now_jiffies.wrapping_sub((*recent).at_jiffies) < recent_jiffies()
        }
    {
        return true;
    }
    let Some(state) = FLOWS.get_ptr(key) else {
        return false;
    };
    // The coarse clock, as the egress program writes with: no clocksource read,
    // and a deadline can only be honoured up to a tick late.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: a map value pointer the kernel returned; read once.
    let expires_ns = unsafe { (*state).expires_ns };
    if now >= expires_ns {
        return false;
    }
    // Remembered only with more than a second left, so the memory (a quarter
    // second at most) never outlives the deadline.
    if let Some(recent) = recent
        && expires_ns - now > REPLY_RECENT_MARGIN_NS
    {
        // SAFETY: as above.
        unsafe {
            (*recent).key = *key;
            (*recent).epoch = epoch;
            (*recent).at_jiffies = now_jiffies;
        }
    }
    true
}

/// Whether any flow was ever recorded on `local_port` (`FLOW_PORTS`).
#[inline(always)]
fn port_has_flows(protocol: u8, local_port: u16) -> bool {
    let Some((block, byte)) = flow_port_byte(protocol, local_port) else {
        return false;
    };
    FLOW_PORTS
        .get(block)
        .is_some_and(|ports| ports[byte & (ports.len() - 1)] != 0)
}

/// Marks `key`'s local port in `FLOW_PORTS`, before its entry is written: every
/// entry the table holds has its port marked, so `port_has_flows` never hides
/// one. False (and the caller writes nothing) should the mark fail.
#[inline(always)]
fn mark_port(key: &FlowKey) -> bool {
    let Some((block, byte)) = flow_port_byte(key.protocol, key.local_port) else {
        return false;
    };
    let Some(ports) = FLOW_PORTS.get_ptr_mut(block) else {
        return false;
    };
    // SAFETY: a map value pointer the kernel returned. A plain byte store: every
    // writer stores the same 1, and no neighbouring byte is touched. Read first so
    // a port in use does not make its cache line bounce between CPUs.
    unsafe {
        let mark = &mut (*ports)[byte & (FLOW_PORT_BLOCK_BYTES - 1)];
        if core::ptr::read_volatile(mark) == 0 {
            core::ptr::write_volatile(mark, 1);
        }
    }
    true
}

/// See `is_reply`: comfortably more than the quarter second a remembered reply
/// stands, ticks included.
const REPLY_RECENT_MARGIN_NS: u64 = 1_000_000_000;

/// Moves `key`'s counter in `FLOW_EPOCHS` on: this CPU's and every other CPU's
/// memory of replies on flows in its slot no longer stands. Called after the
/// table changed.
#[inline(always)]
fn invalidate_replies(key: &FlowKey) {
    if let Some(epoch) = FLOW_EPOCHS.get_ptr_mut(flow_epoch_slot(key)) {
        // An atomic add (BPF_ATOMIC | BPF_ADD), as other CPUs and user space bump
        // the same counter; written out because the BPF target offers no Rust
        // atomics.
        // SAFETY: a map value pointer the kernel returned, 8-byte aligned.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({0} + 0) += {1}",
                in(reg) epoch,
                in(reg) 1u64,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// What a packet the host sends does to the table.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Effect {
    /// Opens (or refreshes) a flow: a TCP SYN without ACK, a UDP datagram, an echo
    /// request.
    Open,
    /// Only keeps an open flow alive: any other TCP segment. Never creates one, so a
    /// connection someone else opened to this host (its SYN-ACK, its data) is never
    /// taken for one the host opened.
    Refresh,
    /// A TCP FIN: the flow winds down on the closing timeout.
    Close,
    /// A TCP RST: the flow is over.
    Abort,
}

/// What a packet the host sends means for the table, as plain integers.
pub struct Outgoing {
    pub key: FlowKey,
    /// How long its replies may come after this packet.
    pub timeout_ns: u64,
    pub effect: Effect,
}

impl Outgoing {
    /// `None` for what opens no flow (other protocols, ICMP other than echo, and
    /// anything not a sound IP packet).
    ///
    /// The key is put together as its three words, in registers: built in a
    /// zeroed stack slot (as `is_reply` does, for the hash lookup it always
    /// makes) and copied out, it cost every packet the host sends three zero
    /// stores, the field stores and a copy, before the comparison with this
    /// CPU's memory read it all back.
    #[inline(always)]
    pub fn of(packet: &Bytes, headers: &Headers) -> Option<Self> {
        if headers.kind != KIND_IP {
            return None;
        }
        let (protocol, peer_port, timeout_ns, effect) = match headers.l4 {
            L4_TCP => {
                let flags = headers.tcp_flags;
                let (timeout_ns, effect) = if flags & TCP_RST != 0 {
                    (0, Effect::Abort)
                } else if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
                    (TCP_SYN_TIMEOUT_NS, Effect::Open)
                } else if flags & TCP_FIN != 0 {
                    (TCP_CLOSING_TIMEOUT_NS, Effect::Close)
                } else {
                    (TCP_TIMEOUT_NS, Effect::Refresh)
                };
                (IPPROTO_TCP, headers.peer_port, timeout_ns, effect)
            }
            L4_UDP => (IPPROTO_UDP, headers.peer_port, UDP_TIMEOUT_NS, Effect::Open),
            L4_ICMP if headers.icmp_type == ICMP_ECHO_REQUEST => {
                (IPPROTO_ICMP, 0, ICMP_ECHO_TIMEOUT_NS, Effect::Open)
            }
            L4_ICMPV6 if headers.icmp_type == ICMPV6_ECHO_REQUEST => {
                (IPPROTO_ICMPV6, 0, ICMP_ECHO_TIMEOUT_NS, Effect::Open)
            }
            _ => return None,
        };
        let (peer, family) = if headers.family == 4 {
            // The address's bytes as they are, in the first four of `peer`.
            let v4 = u32::from_ne_bytes(headers.peer_v4(packet));
            ([u64::from(v4), 0], FLOW_FAMILY_V4)
        } else {
            (headers.peer_v6_words(packet), FLOW_FAMILY_V6)
        };
        let tail = u64::from(headers.local_port)
            | u64::from(peer_port) << 16
            | u64::from(protocol) << 32
            | u64::from(family) << 40;
        Some(Outgoing {
            key: key_of_words([peer[0], peer[1], tail]),
            timeout_ns,
            effect,
        })
    }

    /// Whether this packet keeps the deadline the previous one of its flow set:
    /// a TCP segment that only refreshes, or a UDP datagram (each opens the flow
    /// anew on the same timeout). Such packets may skip the table when this CPU
    /// saw their flow fresh a moment ago (`record`).
    #[inline(always)]
    pub fn is_steady(&self) -> bool {
        self.effect == Effect::Refresh
            || (self.effect == Effect::Open && self.key.protocol == IPPROTO_UDP)
    }

    /// The transport protocol number (6, 17, 1 or 58).
    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.key.protocol
    }
}

/// Whether `outgoing` is a steady packet of a flow this CPU found fresh in the
/// table a moment ago: then it has nothing to record, and the caller skips the
/// table and the policy lookups.
///
/// Most of what a host sends is segments and datagrams of flows it refreshed a
/// moment ago on the same CPU. Such a steady packet would move a live entry's
/// deadline by less than the slack (a closing flow keeps its closing timeout) and
/// never creates one that a steady packet did not just find, so skipping it only
/// lets the deadline trail the last packet a little longer (see
/// `EGRESS_RECENT_FRACTION`). Everything else goes to the table and clears this
/// CPU's memory of the flow (`record`). Another CPU's memory stands: a four-tuple
/// aborted and reopened within the quarter second may keep its SYN deadline
/// until its next packet after that; a flow can only end early by it, never stay
/// open. An entry the LRU evicts inside the quarter second is recreated by the
/// next UDP datagram after it. A port a rule came to cover in the meantime only
/// has a refresh skipped that the table would not have taken anyway.
#[inline(always)]
pub fn fresh_on_this_cpu(outgoing: &Outgoing) -> bool {
    if !outgoing.is_steady() {
        return false;
    }
    let Some(recent) = EGRESS_RECENT.get_ptr_mut(recent_slot(&outgoing.key)) else {
        return false;
    };
    let now_jiffies = unsafe { bpf_jiffies64() };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    same_flow(unsafe { &(*recent).key }, &outgoing.key)
        && now_jiffies.wrapping_sub(unsafe { (*recent).at_jiffies }) < recent_jiffies()
}

/// `fresh_on_this_cpu` up to its memory's slot, for the cost breakdown.
#[cfg(airlock_egress_stop = "lookup")]
#[inline(always)]
pub fn recent_of(outgoing: &Outgoing) -> Option<*mut RecentFlow> {
    if !outgoing.is_steady() {
        return None;
    }
    EGRESS_RECENT.get_ptr_mut(recent_slot(&outgoing.key))
}

/// Records, refreshes or forgets the flow of a packet the host is sending.
#[inline(always)]
pub fn record(outgoing: &Outgoing) {
    let key = outgoing.key;
    let recent = EGRESS_RECENT.get_ptr_mut(recent_slot(&outgoing.key));
    let steady = outgoing.is_steady();
    if !steady {
        // An open, close or abort changes the deadline a refresh keeps: the next
        // refresh must see the table.
        forget(recent, &key);
    }
    if outgoing.effect == Effect::Abort {
        // The host aborted the connection: nothing more should come back. The
        // memory of its replies ends too, even when the table had already lost
        // the entry (an LRU eviction) and there is nothing to remove.
        let _ = FLOWS.remove(key);
        invalidate_replies(&key);
        return;
    }
    let now_jiffies = unsafe { bpf_jiffies64() };
    // The coarse clock (CLOCK_MONOTONIC_COARSE, a tick behind at most) is enough
    // for timeouts of seconds and costs less on a path every packet the host sends
    // takes; the XDP side compares against the same clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // An entry past its timeout is as good as absent (the LRU evicts it in its own
    // time): it neither keeps a flow going nor passes on its closing state.
    let live = match FLOWS.get_ptr(key) {
        // SAFETY: a map value pointer the kernel returned.
        Some(state) => unsafe {
            ((*state).expires_ns > now).then(|| ((*state).closing != 0, (*state).expires_ns))
        },
        None => None,
    };
    let (closing, old_expiry) = match (outgoing.effect, live) {
        // A new connection (the port pair may be reused) starts afresh.
        (Effect::Open, live) => (false, live.map_or(0, |(_, expiry)| expiry)),
        // Handled above; and a segment that is not a SYN never creates a flow.
        (Effect::Abort, _) | (Effect::Refresh | Effect::Close, None) => return,
        (Effect::Close, Some((_, expiry))) => (true, expiry),
        (Effect::Refresh, Some((closing, expiry))) => (closing, expiry),
    };
    let timeout = if closing {
        TCP_CLOSING_TIMEOUT_NS
    } else {
        outgoing.timeout_ns
    };
    let expires_ns = now + timeout;
    let was_closing = live.is_some_and(|(closing, _)| closing);
    // Skip the write when nothing would change by more than the slack: a busy flow
    // then costs one lookup per packet, and CPUs do not fight over the entry.
    if live.is_some()
        && closing == was_closing
        && old_expiry.abs_diff(expires_ns) < FLOW_REFRESH_SLACK_NS
    {
        remember(steady, recent, key, now_jiffies);
        return;
    }
    let state = FlowState {
        expires_ns,
        closing: u32::from(closing),
        _pad: 0,
    };
    if mark_port(&key) && FLOWS.insert(key, state, 0).is_ok() {
        remember(steady, recent, key, now_jiffies);
        // A close, or a new connection on a live entry's ports, brings the
        // deadline nearer; only a refresh of an open flow moves it on.
        if live.is_some() && outgoing.effect != Effect::Refresh {
            invalidate_replies(&key);
        }
    }
}

/// `key`'s slot in `EGRESS_RECENT`: by its ports, which differ between the
/// connections a host keeps to one peer.
#[inline(always)]
fn recent_slot(key: &FlowKey) -> u32 {
    u32::from(key.local_port ^ key.peer_port.rotate_left(8)) & (EGRESS_RECENT_SLOTS - 1)
}

/// A key from its three words in memory order: the 16 address bytes, then
/// `local_port`, `peer_port`, `protocol` and `family` from the low bits up (the
/// layout asserted here; BPF is little-endian where this program runs), the
/// padding zero.
#[inline(always)]
fn key_of_words(words: [u64; 3]) -> FlowKey {
    const _: () = assert!(
        core::mem::offset_of!(FlowKey, peer) == 0
            && core::mem::offset_of!(FlowKey, local_port) == 16
            && core::mem::offset_of!(FlowKey, peer_port) == 18
            && core::mem::offset_of!(FlowKey, protocol) == 20
            && core::mem::offset_of!(FlowKey, family) == 21
            && core::mem::size_of::<FlowKey>() == 24
            && cfg!(target_endian = "little")
    );
    // SAFETY: 24 bytes of plain integers, every bit pattern valid.
    unsafe { core::mem::transmute::<[u64; 3], FlowKey>(words) }
}

/// Compared as three words: a derived `==` on the byte arrays can become a
/// `memcmp` call, which BPF cannot make.
#[inline(always)]
fn same_flow(a: &FlowKey, b: &FlowKey) -> bool {
    const _: () = assert!(core::mem::size_of::<FlowKey>() == 24);
    // SAFETY: FlowKey is 24 bytes of plain integers, every bit pattern valid.
    let (a, b) = unsafe {
        (
            core::mem::transmute::<FlowKey, [u64; 3]>(*a),
            core::mem::transmute::<FlowKey, [u64; 3]>(*b),
        )
    };
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) == 0
}

/// Notes in this CPU's memory that `key`'s entry is fresh as of `now_jiffies`,
/// after a steady packet only: the deadline a SYN or a close sets is not the one
/// the next refresh would keep (the first ACK after a SYN moves it from the SYN
/// timeout to the established one).
#[inline(always)]
fn remember(steady: bool, slot: Option<*mut RecentFlow>, key: FlowKey, now_jiffies: u64) {
    if !steady {
        return;
    }
    if let Some(slot) = slot {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        unsafe {
            (*slot).key = key;
            (*slot).at_jiffies = now_jiffies;
        }
    }
}

/// Clears this CPU's memory of `key`, if it holds it. (A zero key never matches:
/// real flows have a family.)
#[inline(always)]
fn forget(slot: Option<*mut RecentFlow>, key: &FlowKey) {
    if let Some(slot) = slot
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        && same_flow(unsafe { &(*slot).key }, key)
    {
        unsafe { (*slot).key = FlowKey::default() };
    }
}

/// How long a remembered refresh stands, in jiffies (a quarter second; the HZ
/// user space found, else the largest HZ, which only makes it shorter).
#[inline(always)]
fn recent_jiffies() -> u64 {
    u64::from(sample_window_jiffies() / EGRESS_RECENT_FRACTION)
}
