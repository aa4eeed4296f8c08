//! The benchmark's traffic generator: run with BPF_PROG_TEST_RUN in live-frames
//! mode (BPF_F_TEST_XDP_LIVE_FRAMES), `XDP_TX` sends every test frame out of the
//! interface it is run on, at several million frames per second per core.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

airlock_ebpf::program_object!();
