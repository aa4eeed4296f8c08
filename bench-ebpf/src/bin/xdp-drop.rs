//! The live benchmark's floor: an XDP program that drops every frame and does
//! nothing else, the fastest a receiver can discard traffic. Airlock's live drop
//! rate is reported as a ratio against it, measured in the same run.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

airlock_ebpf::program_object!();
