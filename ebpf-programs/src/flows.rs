//! Return traffic under `default: drop` (design.md, verdict rule 6).
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
    FLOW_FAMILY_V4, FLOW_FAMILY_V6, FLOW_REFRESH_SLACK_NS, FlowKey, FlowState,
    ICMP_ECHO_TIMEOUT_NS, TCP_CLOSING_TIMEOUT_NS, TCP_TIMEOUT_NS, UDP_TIMEOUT_NS,
};
use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::{
    maps::FLOWS,
    parse::{Icmp, L4, Peer, TCP_FIN, TCP_RST},
};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

#[inline(always)]
fn key(peer: Peer, protocol: u8, local_port: u16, peer_port: u16) -> FlowKey {
    let mut key = FlowKey {
        peer: [0; 16],
        local_port,
        peer_port,
        protocol,
        family: FLOW_FAMILY_V4,
        _pad: [0; 2],
    };
    match peer {
        Peer::V4(address) => {
            key.peer[0] = address[0];
            key.peer[1] = address[1];
            key.peer[2] = address[2];
            key.peer[3] = address[3];
        }
        Peer::V6(address) => {
            key.peer = address;
            key.family = FLOW_FAMILY_V6;
        }
    }
    key
}

/// Whether an arriving packet answers a flow the host opened and that has not
/// expired. Only TCP, UDP and echo replies can: other ICMP the host needs is
/// essential and passed before this (rule 4); other protocols have no flows.
#[inline(always)]
pub fn is_reply(peer: Peer, l4: L4) -> bool {
    let key = match l4 {
        L4::Tcp(ports, _) => key(peer, IPPROTO_TCP, ports.local, ports.peer),
        L4::Udp(ports) => key(peer, IPPROTO_UDP, ports.local, ports.peer),
        L4::Icmp(Icmp {
            icmp_type: ICMP_ECHO_REPLY,
            echo_id,
        }) => key(peer, IPPROTO_ICMP, echo_id, 0),
        L4::Icmpv6(Icmp {
            icmp_type: ICMPV6_ECHO_REPLY,
            echo_id,
        }) => key(peer, IPPROTO_ICMPV6, echo_id, 0),
        _ => return false,
    };
    match FLOWS.get_ptr(key) {
        // SAFETY: a map value pointer the kernel returned; read once.
        Some(state) => unsafe { bpf_ktime_get_ns() < (*state).expires_ns },
        None => false,
    }
}

/// What a packet the host sends means for the table, as plain always-initialized
/// integers: handing the `L4` enum itself through several functions let LLVM move
/// its undefined payload bytes around, which the verifier refuses (see sample.rs).
pub struct Outgoing {
    pub key: FlowKey,
    /// How long its replies may come after this packet.
    pub timeout_ns: u64,
    /// 1: the host sent a FIN; 2: a RST (the flow is over); 0 otherwise.
    pub ending: u8,
}

const ENDING_FIN: u8 = 1;
const ENDING_RST: u8 = 2;

impl Outgoing {
    /// `None` for what opens no flow (other protocols, ICMP other than echo).
    #[inline(always)]
    pub fn of(peer: Peer, l4: L4) -> Option<Self> {
        let (key, timeout_ns, ending) = match l4 {
            L4::Tcp(ports, flags) => {
                let ending = if flags & TCP_RST != 0 {
                    ENDING_RST
                } else if flags & TCP_FIN != 0 {
                    ENDING_FIN
                } else {
                    0
                };
                (
                    key(peer, IPPROTO_TCP, ports.local, ports.peer),
                    TCP_TIMEOUT_NS,
                    ending,
                )
            }
            L4::Udp(ports) => (
                key(peer, IPPROTO_UDP, ports.local, ports.peer),
                UDP_TIMEOUT_NS,
                0,
            ),
            L4::Icmp(Icmp {
                icmp_type: ICMP_ECHO_REQUEST,
                echo_id,
            }) => (key(peer, IPPROTO_ICMP, echo_id, 0), ICMP_ECHO_TIMEOUT_NS, 0),
            L4::Icmpv6(Icmp {
                icmp_type: ICMPV6_ECHO_REQUEST,
                echo_id,
            }) => (
                key(peer, IPPROTO_ICMPV6, echo_id, 0),
                ICMP_ECHO_TIMEOUT_NS,
                0,
            ),
            _ => return None,
        };
        Some(Outgoing {
            key,
            timeout_ns,
            ending,
        })
    }

    /// TCP (`Some(true)`) or UDP (`Some(false)`): the protocols rules cover.
    #[inline(always)]
    pub fn ported(&self) -> Option<bool> {
        match self.key.protocol {
            IPPROTO_TCP => Some(true),
            IPPROTO_UDP => Some(false),
            _ => None,
        }
    }
}

/// Records (or refreshes, or forgets) the flow of a packet the host is sending.
#[inline(always)]
pub fn record(outgoing: &Outgoing) {
    let key = outgoing.key;
    if outgoing.ending == ENDING_RST {
        // The host aborted the connection: nothing more should come back.
        let _ = FLOWS.remove(key);
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let (was_closing, old_expiry) = match FLOWS.get_ptr(key) {
        // SAFETY: a map value pointer the kernel returned.
        Some(state) => unsafe { ((*state).closing != 0, (*state).expires_ns) },
        None => (false, 0),
    };
    let closing = outgoing.ending == ENDING_FIN || was_closing;
    let timeout = if closing {
        TCP_CLOSING_TIMEOUT_NS
    } else {
        outgoing.timeout_ns
    };
    let expires_ns = now + timeout;
    // Skip the write when nothing would change by more than the slack: a busy flow
    // then costs one lookup per packet, and CPUs do not fight over the entry.
    if closing == was_closing && old_expiry.abs_diff(expires_ns) < FLOW_REFRESH_SLACK_NS {
        return;
    }
    let state = FlowState {
        expires_ns,
        closing: u32::from(closing),
        _pad: 0,
    };
    let _ = FLOWS.insert(key, state, 0);
}
