//! Airlock's XDP program: one per ingress interface, deciding every frame before the
//! kernel's network stack sees it (and, in egress.rs, its TC egress companion that
//! records the flows the host opens). The verdict rules are docs/policy.md's, in its order;
//! `userspace/src/reference.rs` states the same rules plainly and the kernel tests
//! hold this program to it.
#![no_std]
#![no_main]
// Inline BPF assembly (parse.rs): one load per word of the peer address, and
// a cursor the verifier treats as unknown.
#![feature(asm_experimental_arch)]
// A breakdown variant (see `stop`) ends early on purpose.
#![cfg_attr(airlock_breakdown, allow(unreachable_code, unused))]

mod egress;
mod fast;
mod flags;
mod flows;
mod log;
mod maps;
mod mem;
mod parse;
mod sample;
mod source;

use airlock_common::{
    DEFAULT_DROP, FLAG_TABLE_V4, FLAG_TABLE_V6, GenConfig, GenPolicy, MODE_MONITOR,
    REFUSED_STAT_OFFSET, Reason, SRC_DENY, SRC_MANAGEMENT, SourceEntry, UNFLAGGED_V4, UNFLAGGED_V6,
    reason_stat_index, rule_stat_index,
};
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use parse::{
    Bytes, Ethernet, Headers, Ingress, KIND_IP, KIND_MALFORMED, KIND_MALFORMED_FROM, KIND_NON_IP,
    L4_ICMP, L4_ICMPV6, L4_NON_FIRST_FRAGMENT, L4_TCP, L4_UDP, LinkLayer, RawIp,
};

/// For Ethernet devices (and everything that looks like one: veth, bridges, bonds,
/// VLAN devices, macvlan, tap).
#[xdp]
// Into the entry point the macro wraps it in: the program is large enough that
// LLVM would otherwise leave a BPF-to-BPF call on every packet.
#[inline(always)]
pub fn airlock_xdp(ctx: XdpContext) -> u32 {
    filter::<Ethernet>(ctx)
}

/// For devices without a link-layer header (tun, WireGuard, PPP, IP-in-IP): the
/// frame starts at the IP header. The loader picks by the device's link type.
#[xdp]
#[inline(always)]
pub fn airlock_xdp_l3(ctx: XdpContext) -> u32 {
    filter::<RawIp>(ctx)
}

#[inline(always)]
fn filter<L: LinkLayer>(ctx: XdpContext) -> u32 {
    let packet = Bytes::new(ctx.data(), ctx.data_end());
    let network = L::network(&packet);
    // Non-IP frames (ARP, LLDP, ...) pass under every policy and in every mode: one
    // ethertype check and one counter, before any policy state is read. Counted
    // as enforced even in monitor mode (nothing differs) and even before the first
    // policy is complete (they would pass as `no_policy` too).
    if let Some((ethertype, _)) = network
        && !parse::is_ip(ethertype)
    {
        maps::count(
            &maps::REASON_STATS,
            reason_stat_index(Reason::NonIp as u32, false),
            &ctx,
        );
        return xdp_action::XDP_PASS;
    }
    // Parsed before the policy state is read, into memory: nothing of the parse
    // stays live in registers across the map lookups below (LLVM takes each for a
    // call and saves every live register around it).
    let mut slot = mem::Slot::<Headers>::new();
    let headers = match network.and_then(|(ethertype, offset)| {
        fast::parse::<Ingress>(&packet, ethertype, offset, &mut slot)
    }) {
        Some(headers) => headers,
        None => {
            let headers = slot.zeroed();
            parse::parse_network::<Ingress>(&packet, network, headers);
            headers
        }
    };
    // Read once: everything below uses this generation's maps only, so a policy
    // swap in user space is atomic for every packet.
    let generation = maps::active_generation();
    // Read in place, each field where it is needed: user space rewrites a
    // generation only once no packet reads it any more. The same value holds the
    // port tables: no second lookup for them.
    let Some(policy) = maps::POLICY.get(generation) else {
        return xdp_action::XDP_PASS;
    };
    let config = &policy.config;
    // Stop points for the cost breakdown (`cargo xtask bench --breakdown`): each
    // variant build ends the program there; production builds have none.
    #[cfg(airlock_stop = "config")]
    return stop(config.valid);
    let monitor = config.mode == MODE_MONITOR;
    if config.valid == 0 {
        maps::count(&maps::REASON_STATS, Reason::NoPolicy as u32, &ctx);
        return xdp_action::XDP_PASS;
    }
    // The frame's bounds again from the context rather than kept from above: two
    // loads here are cheaper than two values kept across the lookups (every read
    // below checks its own bounds).
    let packet = Bytes::new(ctx.data(), ctx.data_end());
    #[cfg(airlock_stop = "parse")]
    return stop(u32::from(headers.kind) + u32::from(headers.local_port));
    #[cfg(airlock_stop = "source")]
    return stop(lookup(generation, policy, &packet, headers).flags);
    let Verdict { reason, rule, stat } = decide(generation, policy, monitor, &packet, headers);
    let passes = reason.passes();
    // One counter per packet: a packet a rule decided is counted for that rule only
    // (user space derives the reason totals from the rule counters).
    match rule {
        Some(_) => maps::count(&maps::RULE_STATS, stat, &ctx),
        None => maps::count(
            &maps::REASON_STATS,
            reason_stat_index(reason as u32, monitor),
            &ctx,
        ),
    }
    if passes {
        return xdp_action::XDP_PASS;
    }
    sample::sample_drop(&ctx, headers, reason, rule, monitor);
    if monitor {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// A breakdown variant's end: passes, but depends on `value` so the work before
/// it is not optimized away.
#[cfg(airlock_breakdown)]
#[inline(always)]
fn stop(value: u32) -> u32 {
    if value == 0xdead_beef {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// A packet's verdict: why, and when a rule decided, the rule and its
/// `RULE_STATS` index.
struct Verdict {
    reason: Reason,
    rule: Option<u32>,
    /// Meaningful only with `rule`.
    stat: u32,
}

impl From<Reason> for Verdict {
    #[inline(always)]
    fn from(reason: Reason) -> Self {
        Verdict {
            reason,
            rule: None,
            stat: 0,
        }
    }
}

/// The verdict rules, in docs/policy.md's order.
///
/// A sound TCP or UDP packet (nearly every packet) gets a copy of its own per
/// transport, in which the kind and the transport are constants: LLVM takes each
/// map lookup for a call, and after one it read both from memory again and
/// branched on them a second time.
#[inline(always)]
fn decide(
    generation: u32,
    policy: &GenPolicy,
    monitor: bool,
    packet: &Bytes,
    headers: &Headers,
) -> Verdict {
    if headers.kind == KIND_IP {
        if headers.l4 == L4_TCP {
            return decide_as::<L4_TCP>(generation, policy, monitor, packet, headers);
        }
        if headers.l4 == L4_UDP {
            return decide_as::<L4_UDP>(generation, policy, monitor, packet, headers);
        }
    }
    decide_as::<ANY_L4>(generation, policy, monitor, packet, headers)
}

// `decide_as` works out a family's bit in `GenConfig::unflagged` and
// `GenConfig::flag_tables` as `1 << ((family >> 1) & 1)`: the same bit in both.
const _: () = assert!(UNFLAGGED_V4 == 1 << ((4 >> 1) & 1) && FLAG_TABLE_V4 == UNFLAGGED_V4);
const _: () = assert!(UNFLAGGED_V6 == 1 << ((6 >> 1) & 1) && FLAG_TABLE_V6 == UNFLAGGED_V6);

/// `decide_as`'s transport for a packet of any kind: not an `L4_*`.
const ANY_L4: u8 = u8::MAX;

/// [`decide`] for a packet of kind `KIND_IP` and transport `L4` (`L4_TCP`,
/// `L4_UDP`), or for any packet (`ANY_L4`).
#[inline(always)]
fn decide_as<const L4: u8>(
    generation: u32,
    policy: &GenPolicy,
    monitor: bool,
    packet: &Bytes,
    headers: &Headers,
) -> Verdict {
    let (kind, l4) = if L4 == ANY_L4 {
        (headers.kind, headers.l4)
    } else {
        (KIND_IP, L4)
    };
    let config = &policy.config;
    let default_action = config.default_action;
    match kind {
        KIND_NON_IP => return Reason::NonIp.into(),
        KIND_MALFORMED => {
            log::malformed(packet, headers);
            return Reason::Malformed.into();
        }
        _ => {}
    }
    // Only a packet a rule covers and a non-first fragment need the source's
    // rules. Every other packet (a flood to a port no rule covers, a reply,
    // essential ICMP, a malformed packet) needs only its management and deny
    // flags: none where no source of the family has one (the loader says so
    // from the classes it wrote), else from the family's flag table where it
    // has one. Their answer leads to the verdict the real one would: the same
    // flags, no rule asked.
    //
    // The family's bit in `config.unflagged` and `config.flag_tables` is worked
    // out from `family` without a branch (4, 0b100, gives bit 0; 6, 0b110, bit
    // 1): written as a choice between the two families, LLVM decided it before
    // the port's test, on every packet a rule covers, as a branch and three
    // instructions that packet never uses (105 instructions on the refused
    // IPv4 path, 103 this way); this way it follows the test, and the
    // uncovered path loses the zero extensions of the choice's result too.
    let family_bit: u32 = 1 << ((headers.family >> 1) & 1);
    // The port's slot is read again below rather than kept: carried across the
    // lookup, LLVM kept it per transport and the verifier then checked the lookup
    // once for each (187,567 instructions against 149,238).
    let covered = match l4 {
        L4_TCP => maps::port_slot(policy, true, headers.local_port).rules != 0,
        L4_UDP => maps::port_slot(policy, false, headers.local_port).rules != 0,
        _ => false,
    };
    // A measurement variant (`--cfg=airlock_no_flag_table`) reads no flag
    // table: the program as it was before them, on the same layout.
    let flag_table = if cfg!(airlock_no_flag_table) {
        0
    } else {
        family_bit
    };
    let full = covered
        || l4 == L4_NON_FIRST_FRAGMENT
        || config.unflagged & family_bit == 0 && config.flag_tables & flag_table == 0;
    // One call site of the full lookup: each is inlined, and the verifier
    // walks each copy.
    let entry = if full {
        lookup(generation, policy, packet, headers)
    } else if config.unflagged & family_bit != 0 {
        SourceEntry::default()
    } else {
        SourceEntry {
            flags: flags_of(config, packet, headers),
            ..SourceEntry::default()
        }
    };
    // One test on the common path: a source neither management nor denied, in a
    // sound packet.
    if entry.flags & (SRC_MANAGEMENT | SRC_DENY) != 0 || kind == KIND_MALFORMED_FROM {
        if entry.flags & SRC_MANAGEMENT != 0 {
            log::decided(Reason::Management, None, entry.rules, entry.flags, 0);
            return Reason::Management.into();
        }
        if kind == KIND_MALFORMED_FROM {
            log::malformed(packet, headers);
            return Reason::Malformed.into();
        }
        log::decided(Reason::Deny, None, entry.rules, entry.flags, 0);
        return Reason::Deny.into();
    }
    let slot = match l4 {
        L4_TCP => Some(maps::port_slot(policy, true, headers.local_port)),
        L4_UDP => Some(maps::port_slot(policy, false, headers.local_port)),
        L4_ICMP if essential_icmpv4(headers.icmp_type) => {
            return Reason::EssentialIcmp.into();
        }
        L4_ICMPV6 if essential_icmpv6(headers.icmp_type) => {
            return Reason::EssentialIcmp.into();
        }
        // Safe to pass: the first fragment carried the ports and was filtered on
        // them, and the kernel cannot reassemble a datagram without it.
        L4_NON_FIRST_FRAGMENT => {
            if entry.rules != 0 || default_action != DEFAULT_DROP {
                return Reason::FragmentPass.into();
            }
            return Reason::FragmentDrop.into();
        }
        _ => None,
    };
    let Some(slot) = slot.filter(|slot| slot.rules != 0) else {
        return uncovered(default_action, packet, headers);
    };
    let port_rules = slot.rules;
    // The port's lowest rule decides most packets: it counts every refused one,
    // and an allowed one whenever it lists the source. Its number and counter
    // were worked out by the loader; only a source allowed by a higher rule alone
    // needs the bits counted here.
    let rule = slot.lowest_rule;
    let verdict = if (entry.rules >> (rule & 63)) & 1 != 0 {
        Verdict {
            reason: Reason::RuleAllowed,
            rule: Some(rule),
            stat: slot.allowed_stat,
        }
    } else {
        let allowed = entry.rules & port_rules;
        if allowed == 0 {
            Verdict {
                reason: Reason::RuleRefused,
                rule: Some(rule),
                stat: slot.allowed_stat + REFUSED_STAT_OFFSET,
            }
        } else {
            let rule = lowest_bit(allowed);
            Verdict {
                reason: Reason::RuleAllowed,
                rule: Some(rule),
                stat: rule_stat_index(generation, monitor, true, rule),
            }
        }
    };
    log::decided(
        verdict.reason,
        verdict.rule,
        entry.rules,
        entry.flags,
        port_rules,
    );
    verdict
}

/// A packet no rule covers (docs/policy.md rules 6 and 7).
#[inline(always)]
fn uncovered(default_action: u32, packet: &Bytes, headers: &Headers) -> Verdict {
    if default_action != DEFAULT_DROP {
        return Reason::DefaultPass.into();
    }
    // Rule 6: under `default: drop`, replies to flows the host opened pass.
    // Looked up only here, so allowlisted and default-pass traffic never pays,
    // and never for a segment that opens a connection (SYN without ACK): it
    // answers nothing, so a SYN flood costs no lookup.
    if !parse::opens_connection(headers) && flows::is_reply(packet, headers) {
        return Reason::ReturnTraffic.into();
    }
    Reason::DefaultDrop.into()
}

/// The peer's entry (`headers.kind` is `KIND_MALFORMED_FROM` or `KIND_IP`, so
/// `family` is 4 or 6).
#[inline(always)]
fn lookup(generation: u32, policy: &GenPolicy, packet: &Bytes, headers: &Headers) -> SourceEntry {
    if headers.family == 4 {
        source::source_v4(generation, policy, headers.peer_v4(packet))
    } else {
        source::source_v6(generation, policy, headers.peer_v6(packet))
    }
}

/// The peer's management and deny flags from its family's flag table (see
/// `lookup`).
#[inline(always)]
fn flags_of(config: &GenConfig, packet: &Bytes, headers: &Headers) -> u32 {
    if headers.family == 4 {
        flags::flags_v4(config, headers.peer_v4(packet))
    } else {
        flags::flags_v6(config, headers.peer_v6(packet))
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

/// Index of the lowest set bit of a nonzero mask: the number of bits below it,
/// counted branch-free (SWAR popcount). Written out because BPF has no
/// count-trailing-zeros instruction (LLVM would call a libgcc helper); a binary
/// search of the halves cost some 50 instructions and 12 branches on every packet
/// a rule decides.
#[inline(always)]
fn lowest_bit(mask: u64) -> u32 {
    let below = (mask & mask.wrapping_neg()).wrapping_sub(1);
    let pairs = below - ((below >> 1) & 0x5555_5555_5555_5555);
    let nibbles = (pairs & 0x3333_3333_3333_3333) + ((pairs >> 2) & 0x3333_3333_3333_3333);
    let bytes = (nibbles + (nibbles >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // Summed by shifts, not the usual multiply: LLVM recognizes that form as a
    // popcount, turns it back into count-trailing-zeros and lowers that to a table
    // in .rodata, a map of its own the loader would pin.
    let halves = bytes + (bytes >> 32);
    let quarters = halves + (halves >> 16);
    ((quarters + (quarters >> 8)) & 0x7f) as u32
}

airlock_ebpf::program_object!();
