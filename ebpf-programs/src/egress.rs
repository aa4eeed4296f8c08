//! The host's outgoing packets, seen at TC egress on the same interface as the XDP
//! program: records the flows the host opens so their replies pass rule 6
//! (flows.rs says why this and not the kernel's conntrack). Never drops or changes
//! a packet.

use aya_ebpf::{macros::classifier, programs::TcContext};

use crate::{
    fast,
    flows::{self, Outgoing},
    maps, mem,
    parse::{
        self, Bytes, Egress, Ethernet, Headers, KIND_MALFORMED, KIND_MALFORMED_FROM, LinkLayer,
        RawIp,
    },
};

/// tcx's "continue": any program after ours (another tool's) decides as usual.
const TCX_NEXT: i32 = -1;

/// Enough for Ethernet, two VLAN tags, IPv6 with a few extension headers and the
/// ports.
const HEADER_BYTES: u32 = 256;

/// For Ethernet devices; `airlock_egress_l3` for devices without a link-layer
/// header (the loader picks, as for the XDP program).
#[classifier]
pub fn airlock_egress(ctx: TcContext) -> i32 {
    record::<Ethernet>(ctx)
}

#[classifier]
pub fn airlock_egress_l3(ctx: TcContext) -> i32 {
    record::<RawIp>(ctx)
}

#[inline(always)]
fn record<L: LinkLayer>(ctx: TcContext) -> i32 {
    let mut packet = Bytes::new(ctx.data(), ctx.data_end());
    let network = L::network(&packet);
    // IPv4 without options or IPv6 without extension headers, carrying TCP or
    // UDP (behind up to two VLAN tags, as `L::network` found them), is nearly
    // all a host sends: parsed straight through with word loads, into
    // registers. The general parse cost such a packet 0.5-3 ns more (UDP the
    // most); everything else (options, fragments, extension headers, ICMP, a
    // head not in the linear part) still takes it, unchanged.
    let mut slot = mem::Slot::<Headers>::new();
    let headers = &match network
        .and_then(|(ethertype, offset)| fast::parse_common::<Egress>(&packet, ethertype, offset))
    {
        Some(headers) => headers,
        None => general::<L>(&ctx, &mut packet, network, &mut slot),
    };
    #[cfg(airlock_egress_stop = "parse")]
    return stop(u32::from(headers.kind) + u32::from(headers.local_port));
    let outgoing = Outgoing::of(&packet, headers);
    #[cfg(airlock_egress_stop = "outgoing")]
    return stop(outgoing.map_or(0, |o| {
        u32::from(o.key.local_port) + u32::from(o.key.peer[3])
    }));
    #[cfg(airlock_egress_stop = "lookup")]
    return stop(outgoing.map_or(0, |o| u32::from(flows::recent_of(&o).is_some())));
    #[cfg(airlock_egress_stop = "fresh")]
    return stop(outgoing.map_or(0, |o| u32::from(flows::fresh_on_this_cpu(&o))));
    if let Some(outgoing) = outgoing
        && !flows::fresh_on_this_cpu(&outgoing)
        && !served_by_rules(&outgoing)
    {
        flows::record(&outgoing);
    }
    TCX_NEXT
}

/// The general parse, for what the straight-through one leaves: zeroed, parsed,
/// and parsed again after a pull when the headers were not all in the linear
/// part. Returned by value, so the common frames' headers never touch the stack.
#[inline(always)]
fn general<L: LinkLayer>(
    ctx: &TcContext,
    packet: &mut Bytes,
    network: Option<(u16, usize)>,
    slot: &mut mem::Slot<Headers>,
) -> Headers {
    let mut headers = slot.zeroed();
    parse::parse_network::<Egress>(packet, network, headers);
    // The stack builds its headers in the linear part, so this is rare; pulling
    // unconditionally would copy every cloned TCP segment's head.
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if (headers.kind == KIND_MALFORMED || headers.kind == KIND_MALFORMED_FROM)
        && linear < ctx.len()
        && ctx
            .pull_data(core::cmp::min(ctx.len(), HEADER_BYTES))
            .is_ok()
    {
        *packet = Bytes::new(ctx.data(), ctx.data_end());
        headers = slot.zeroed();
        parse::parse::<Egress, L>(packet, headers);
    }
    *headers
}

/// Ends a cost-breakdown build (`airlock_egress_stop`, as `airlock_stop` does the
/// XDP program) at its stop point, on a value LLVM cannot drop the work for;
/// production builds have none.
#[cfg(any(
    airlock_egress_stop = "parse",
    airlock_egress_stop = "outgoing",
    airlock_egress_stop = "lookup",
    airlock_egress_stop = "fresh"
))]
#[inline(always)]
fn stop(value: u32) -> i32 {
    if value == 0xdead_beef { 0 } else { TCX_NEXT }
}

/// Whether the host sends this from a port some rule of the policy in force covers
/// (a service it offers): the rules decide what its peers send back (rule 5 comes
/// before rule 6), so recording it would only let a busy server's own connections
/// crowd the host's outgoing flows out of the table.
#[inline(always)]
fn served_by_rules(outgoing: &Outgoing) -> bool {
    let tcp = match outgoing.protocol() {
        parse::IPPROTO_TCP => true,
        parse::IPPROTO_UDP => false,
        _ => return false,
    };
    let generation = maps::active_generation();
    let Some(policy) = maps::POLICY.get(generation) else {
        return false;
    };
    policy.config.valid != 0 && maps::port_slot(policy, tcp, outgoing.key.local_port).rules != 0
}
