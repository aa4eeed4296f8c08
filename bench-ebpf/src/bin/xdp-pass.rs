//! The benchmark's floor: an XDP program that returns `XDP_PASS` and does nothing
//! else. Airlock's per-packet cost is reported as a ratio against it, measured in
//! the same run.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

airlock_ebpf::program_object!();
