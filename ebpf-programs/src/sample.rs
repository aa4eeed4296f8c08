//! Drop samples: a few dropped packets per second per CPU go to user space through a
//! ring buffer (the agent logs them, `airlock watch` shows them). The rate limit is
//! enforced here, in the kernel, so a flood costs a counter increment per packet and
//! never floods the ring or the logs; what the limit holds back is counted.

use airlock_common::{DropSample, NO_RULE, Reason, SAMPLES_RING_FULL, SAMPLES_SENT};
use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    programs::XdpContext,
};

use crate::{
    maps::{DROP_SAMPLES, SAMPLE_STATE, SAMPLE_STATS, bump, sample_rate, sample_window_jiffies},
    mem::Slot,
    parse::{
        Bytes, Headers, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, KIND_IP, L4_ICMP,
        L4_ICMPV6, L4_TCP, L4_UDP,
    },
};

/// Called for dropped (or, in monitor mode, would-be dropped) packets only. The
/// sample itself is built only once the rate limit lets it go.
#[inline(always)]
pub fn sample_drop(
    ctx: &XdpContext,
    headers: &Headers,
    reason: Reason,
    rule: Option<u32>,
    monitor: bool,
) {
    // Global data (see `maps::SAMPLING`): one load, no lookup, on the path a
    // flood takes.
    let rate = sample_rate();
    if rate == 0 {
        return;
    }
    let Some(window) = SAMPLE_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    let window = unsafe { &mut *window };
    // Timed in jiffies: the verifier turns `bpf_jiffies64` into one load, where a
    // clock helper is a call (12-15 ns) on every refused packet, the path a flood
    // takes. A window started by an older program on a nanosecond clock is far
    // ahead; the difference wraps to a huge value and starts a new window.
    let now = unsafe { bpf_jiffies64() };
    if now.wrapping_sub(window.started_jiffies) >= u64::from(sample_window_jiffies()) {
        window.started_jiffies = now;
        window.sent = 0;
    }
    if window.sent >= u64::from(rate) {
        window.rate_limited += 1;
        return;
    }
    window.sent += 1;
    send(ctx, headers, reason, rule, monitor);
}

/// Builds and sends one sample. The frame's bounds are read from the context
/// here, not passed in: kept from before the rate check they were two values
/// stored to the stack on every refused packet, sampled or not.
#[inline(always)]
fn send(ctx: &XdpContext, headers: &Headers, reason: Reason, rule: Option<u32>, monitor: bool) {
    let packet = Bytes::new(ctx.data(), ctx.data_end());
    let mut slot = Slot::<DropSample>::new();
    let sample = slot.zeroed();
    // The precise clock, as user space expects, in the samples actually sent.
    sample.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    sample.ifindex = ctx.ingress_ifindex() as u32;
    sample.rule = rule.unwrap_or(NO_RULE);
    sample.family = headers.family;
    sample.reason = reason as u8;
    sample.monitor = u8::from(monitor);
    if headers.family == 4 {
        sample.source[..4].copy_from_slice(&headers.peer_v4(&packet));
    } else if headers.family == 6 {
        sample.source = headers.peer_v6(&packet);
    }
    if headers.kind == KIND_IP {
        (sample.protocol, sample.dst_port) = match headers.l4 {
            L4_TCP => (IPPROTO_TCP, headers.local_port),
            L4_UDP => (IPPROTO_UDP, headers.local_port),
            L4_ICMP => (IPPROTO_ICMP, u16::from(headers.icmp_type)),
            L4_ICMPV6 => (IPPROTO_ICMPV6, u16::from(headers.icmp_type)),
            _ => (0, 0),
        };
    }
    if DROP_SAMPLES.output::<DropSample>(sample, 0).is_ok() {
        bump(&SAMPLE_STATS, SAMPLES_SENT);
    } else {
        bump(&SAMPLE_STATS, SAMPLES_RING_FULL);
    }
}
