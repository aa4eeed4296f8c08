//! The host's outgoing packets, seen at TC egress on the same interface as the XDP
//! program: records the flows the host opens so their replies pass rule 6
//! (flows.rs says why this and not the kernel's conntrack). Never drops or changes
//! a packet.

use aya_ebpf::{macros::classifier, programs::TcContext};

use crate::{
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
    let mut slot = mem::Slot::<Headers>::new();
    let mut headers = slot.zeroed();
    parse::parse::<Egress, L>(&packet, headers);
    // The stack builds its headers in the linear part, so this is rare; pulling
    // unconditionally would copy every cloned TCP segment's head.
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if (headers.kind == KIND_MALFORMED || headers.kind == KIND_MALFORMED_FROM)
        && linear < ctx.len()
        && ctx
            .pull_data(core::cmp::min(ctx.len(), HEADER_BYTES))
            .is_ok()
    {
        packet = Bytes::new(ctx.data(), ctx.data_end());
        headers = slot.zeroed();
        parse::parse::<Egress, L>(&packet, headers);
    }
    if let Some(outgoing) = Outgoing::of(&packet, headers)
        && !flows::fresh_on_this_cpu(&outgoing)
        && !served_by_rules(&outgoing)
    {
        flows::record(&outgoing);
    }
    TCX_NEXT
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
