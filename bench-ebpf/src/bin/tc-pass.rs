//! The egress benchmark's floor: a TC program that only hands the packet on
//! (TCX_NEXT). The egress program's per-packet cost is reported against it.
#![no_std]
#![no_main]

use aya_ebpf::{macros::classifier, programs::TcContext};

#[classifier]
pub fn tc_pass(_ctx: TcContext) -> i32 {
    -1
}

airlock_ebpf::program_object!();
