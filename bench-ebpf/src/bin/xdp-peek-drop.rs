//! The live benchmark's second floor: drops every frame after reading what any
//! filter must read first, the Ethernet type and a word of the IP source address.
//! Live, a frame's first read is a cache miss on the receiving CPU (the sender
//! wrote the frame on the other one), which `xdp-drop` never pays since it reads
//! nothing; this floor shows how much of the gap to `xdp-drop` that miss is.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Bytes 12-13: the Ethernet type; 26-29: IPv4's source address (inside IPv6's).
const READ_UP_TO: usize = 30;

#[xdp]
pub fn xdp_peek_drop(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + READ_UP_TO > end {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: both reads lie inside [start, end), checked above.
    let (ethertype, source) = unsafe {
        (
            ((start + 12) as *const u16).read_unaligned(),
            ((start + 26) as *const u32).read_unaligned(),
        )
    };
    // Never true for the bench's frames; it keeps both reads in the program.
    if ethertype == 0 && source == 0 {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

airlock_ebpf::program_object!();
