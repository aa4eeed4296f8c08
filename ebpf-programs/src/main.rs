//! Airlock's XDP program: one per ingress interface, deciding every frame before the
//! kernel's network stack sees it (and, in egress.rs, its TC egress companion that
//! records the flows the host opens). The verdict rules are design.md's, in its order;
//! `userspace/src/reference.rs` states the same rules plainly and the kernel tests
//! hold this program to it.
#![no_std]
#![no_main]

mod egress;
mod flows;
mod maps;
mod parse;
mod sample;

use airlock_common::{
    DEFAULT_DROP, MODE_MONITOR, Reason, SRC_DENY, SRC_MANAGEMENT, SourceEntry, reason_stat_index,
    rule_stat_index,
};
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use parse::{Bytes, Ingress, L4, Packet, Peer};

#[xdp]
pub fn airlock_xdp(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    // Read once: everything below uses this generation's maps only, so a policy
    // swap in user space is atomic for every packet.
    let generation = maps::ACTIVE_GEN.get(0).copied().unwrap_or(0) & 1;
    let Some(config) = maps::CONFIG.get(generation) else {
        return xdp_action::XDP_PASS;
    };
    let monitor = config.mode == MODE_MONITOR;
    if config.valid == 0 {
        maps::count(&maps::REASON_STATS, Reason::NoPolicy as u32, bytes);
        return xdp_action::XDP_PASS;
    }
    let packet = parse::parse::<Ingress>(&Bytes::new(ctx.data(), ctx.data_end()));
    // Taken before `decide`, on every path: built only on the drop path (after
    // `decide`), the `Packet` enum stays live across the lookups and LLVM moves its
    // bytes through a register that once held a packet pointer, which the verifier
    // refuses ("pointer arithmetic with <<= operator prohibited"; see sample.rs).
    let sample_info = sample::SampleInfo::of(&packet);
    let (reason, rule) = decide(generation, config.default_action, packet);
    let passes = reason.passes();
    // One counter per packet: a packet a rule decided is counted for that rule only
    // (user space derives the reason totals from the rule counters).
    match rule {
        Some(rule) => maps::count(
            &maps::RULE_STATS,
            rule_stat_index(generation, monitor, passes, rule),
            bytes,
        ),
        None => maps::count(
            &maps::REASON_STATS,
            reason_stat_index(reason as u32, monitor),
            bytes,
        ),
    }
    if passes {
        return xdp_action::XDP_PASS;
    }
    sample::sample_drop(&ctx, sample_info, reason, rule, monitor);
    if monitor {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// The verdict rules, in design.md's order. Returns the reason and, when a rule
/// decided, its index.
#[inline(always)]
fn decide(generation: u32, default_action: u32, packet: Packet) -> (Reason, Option<u32>) {
    let (source, l4) = match packet {
        Packet::NonIp => return (Reason::NonIp, None),
        Packet::Malformed => return (Reason::Malformed, None),
        Packet::MalformedFrom(source) => {
            let entry = lookup(generation, source);
            if entry.flags & SRC_MANAGEMENT != 0 {
                return (Reason::Management, None);
            }
            return (Reason::Malformed, None);
        }
        Packet::Ip(source, l4) => (source, l4),
    };
    let entry = lookup(generation, source);
    if entry.flags & SRC_MANAGEMENT != 0 {
        return (Reason::Management, None);
    }
    if entry.flags & SRC_DENY != 0 {
        return (Reason::Deny, None);
    }
    let default = if default_action == DEFAULT_DROP {
        Reason::DefaultDrop
    } else {
        Reason::DefaultPass
    };
    let port_rules = match l4 {
        L4::Tcp(ports, _) => maps::port_rules(generation, true, ports.local),
        L4::Udp(ports) => maps::port_rules(generation, false, ports.local),
        L4::Icmp(icmp) if essential_icmpv4(icmp.icmp_type) => {
            return (Reason::EssentialIcmp, None);
        }
        L4::Icmpv6(icmp) if essential_icmpv6(icmp.icmp_type) => {
            return (Reason::EssentialIcmp, None);
        }
        // Safe to pass: the first fragment carried the ports and was filtered on
        // them, and the kernel cannot reassemble a datagram without it.
        L4::NonFirstFragment => {
            if entry.rules != 0 || default_action != DEFAULT_DROP {
                return (Reason::FragmentPass, None);
            }
            return (Reason::FragmentDrop, None);
        }
        L4::Icmp(_) | L4::Icmpv6(_) | L4::Other => 0,
    };
    if port_rules == 0 {
        // Rule 6: under `default: drop`, replies to flows the host opened pass.
        // Looked up only here, so allowlisted and default-pass traffic never pays.
        if default_action == DEFAULT_DROP && flows::is_reply(source, l4) {
            return (Reason::ReturnTraffic, None);
        }
        return (default, None);
    }
    let allowed = entry.rules & port_rules;
    if allowed != 0 {
        (Reason::RuleAllowed, Some(lowest_bit(allowed)))
    } else {
        (Reason::RuleRefused, Some(lowest_bit(port_rules)))
    }
}

#[inline(always)]
fn lookup(generation: u32, source: Peer) -> SourceEntry {
    match source {
        Peer::V4(address) => maps::source_v4(generation, address),
        Peer::V6(address) => maps::source_v6(generation, address),
    }
}

/// Destination unreachable (incl. fragmentation needed), time exceeded, parameter
/// problem: dropping these breaks path MTU discovery and error reporting.
#[inline(always)]
fn essential_icmpv4(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 11 | 12)
}

/// ICMPv6 errors (1-4, incl. packet too big), MLD (130-132, 143) and neighbour
/// discovery (133-137): without them IPv6 stops working on the link.
#[inline(always)]
fn essential_icmpv6(icmp_type: u8) -> bool {
    matches!(icmp_type, 1..=4 | 130..=137 | 143)
}

/// Index of the lowest set bit of a nonzero mask. Written out because BPF has no
/// count-trailing-zeros instruction and LLVM would otherwise call a libgcc helper.
#[inline(always)]
fn lowest_bit(mask: u64) -> u32 {
    let mut mask = mask & mask.wrapping_neg();
    let mut index = 0;
    if mask & 0xffff_ffff == 0 {
        index += 32;
        mask >>= 32;
    }
    if mask & 0xffff == 0 {
        index += 16;
        mask >>= 16;
    }
    if mask & 0xff == 0 {
        index += 8;
        mask >>= 8;
    }
    if mask & 0xf == 0 {
        index += 4;
        mask >>= 4;
    }
    if mask & 0x3 == 0 {
        index += 2;
        mask >>= 2;
    }
    if mask & 0x1 == 0 {
        index += 1;
    }
    index
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: nothing above can panic, and the verifier would
    // reject the program if it could (the handler's loop has no exit).
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
