//! Drop samples: a few dropped packets per second per CPU go to user space through a
//! ring buffer (the agent logs them, `airlock watch` shows them). The rate limit is
//! enforced here, in the kernel, so a flood costs a counter increment per packet and
//! never floods the ring or the logs; what the limit holds back is counted.

use airlock_common::{
    DropSample, NO_RULE, Reason, SAMPLES_RATE_LIMITED, SAMPLES_RING_FULL, SAMPLES_SENT,
};
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};

use crate::{
    maps::{DROP_SAMPLES, SAMPLE_STATE, SAMPLE_STATS, SAMPLING, bump},
    parse::{L4, Packet, Peer},
};

const WINDOW_NS: u64 = 1_000_000_000;

/// What a drop sample says about the packet, taken from the parse result as plain,
/// always-initialized integers. Carrying the `Packet` enum itself to the sampling
/// code let LLVM copy its unused (undefined) payload bytes in whatever register was
/// free, once a packet pointer, which the verifier rightly refuses.
#[derive(Clone, Copy)]
pub struct SampleInfo {
    family: u8,
    protocol: u8,
    dst_port: u16,
    source: [u8; 16],
}

impl SampleInfo {
    #[inline(always)]
    pub fn of(packet: &Packet) -> Self {
        let mut info = SampleInfo {
            family: 0,
            protocol: 0,
            dst_port: 0,
            source: [0; 16],
        };
        let (source, l4) = match *packet {
            Packet::Ip(source, l4) => (Some(source), Some(l4)),
            Packet::MalformedFrom(source) => (Some(source), None),
            Packet::NonIp | Packet::Malformed => (None, None),
        };
        match source {
            Some(Peer::V4(address)) => {
                info.family = 4;
                info.source[0] = address[0];
                info.source[1] = address[1];
                info.source[2] = address[2];
                info.source[3] = address[3];
            }
            Some(Peer::V6(address)) => {
                info.family = 6;
                info.source = address;
            }
            None => {}
        }
        let (protocol, dst_port) = match l4 {
            Some(L4::Tcp(ports, _)) => (6, ports.local),
            Some(L4::Udp(ports)) => (17, ports.local),
            Some(L4::Icmp(icmp)) => (1, u16::from(icmp.icmp_type)),
            Some(L4::Icmpv6(icmp)) => (58, u16::from(icmp.icmp_type)),
            Some(L4::Other) | Some(L4::NonFirstFragment) | None => (0, 0),
        };
        info.protocol = protocol;
        info.dst_port = dst_port;
        info
    }
}

#[inline(always)]
pub fn sample_drop(
    ctx: &XdpContext,
    info: SampleInfo,
    reason: Reason,
    rule: Option<u32>,
    monitor: bool,
) {
    let rate = SAMPLING.get(0).map_or(0, |s| s.per_cpu_per_second);
    if rate == 0 {
        return;
    }
    let Some(window) = SAMPLE_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    let window = unsafe { &mut *window };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(window.started_ns) >= WINDOW_NS {
        window.started_ns = now;
        window.sent = 0;
    }
    if window.sent >= u64::from(rate) {
        bump(&SAMPLE_STATS, SAMPLES_RATE_LIMITED);
        return;
    }
    window.sent += 1;
    let sample = DropSample {
        timestamp_ns: now,
        source: info.source,
        ifindex: ctx.ingress_ifindex() as u32,
        rule: rule.unwrap_or(NO_RULE),
        dst_port: info.dst_port,
        protocol: info.protocol,
        family: info.family,
        reason: reason as u8,
        monitor: u8::from(monitor),
        _pad: [0; 2],
    };
    if DROP_SAMPLES.output::<DropSample>(&sample, 0).is_ok() {
        bump(&SAMPLE_STATS, SAMPLES_SENT);
    } else {
        bump(&SAMPLE_STATS, SAMPLES_RING_FULL);
    }
}
