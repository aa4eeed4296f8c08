//! Datapath debug and trace lines (aya-log): why a frame was judged malformed, and
//! which source entry and port entry decided. Off unless the loader sets aya-log's
//! `AYA_LOG_LEVEL` global (`--datapath-log LEVEL`, `-vv`). That global lives in the
//! object's read-only data, which the loader freezes, so the verifier knows its value
//! and removes every disabled call as dead code: with logging off the program the
//! kernel runs is the one without these lines (the bench keeps the verifier's
//! instruction counts to show it).

use airlock_common::Reason;
use aya_log_ebpf::{
    debug,
    macro_support::{Level, level_enabled},
    trace,
};

use crate::parse::{Bytes, Headers, KIND_MALFORMED};

/// A frame the parser judged malformed: where the parse stopped (a frame whose
/// peer address was read names it). `packet` is the whole frame.
#[inline(always)]
pub fn malformed(packet: &Bytes, headers: &Headers) {
    // The length is worked out only here, past the check: passed in, it was
    // computed and kept on the stack for every IP packet, logging off.
    if !level_enabled(Level::Debug) {
        return;
    }
    let bytes = (packet.end - packet.start) as u64;
    if headers.kind == KIND_MALFORMED {
        debug!(
            &(),
            "malformed frame ({} bytes): link-layer or IP header cut short, a third VLAN tag, or a bad IP version",
            bytes
        );
    } else if headers.family == 4 {
        let peer = u32::from_be_bytes(headers.peer_v4(packet));
        debug!(
            &(),
            "malformed frame ({} bytes) from {:i}: IPv4 options, lengths, a fragment at offset 8 or the transport header cut short",
            bytes,
            peer
        );
    } else {
        let peer = headers.peer_v6(packet);
        debug!(
            &(),
            "malformed frame ({} bytes) from {:i}: IPv6 lengths, extension chain or the transport header cut short",
            bytes,
            peer
        );
    }
}

/// The entries that decided a verdict: the source entry's rule mask and flags, and
/// the port entry's rule mask (0 when none was read).
#[inline(always)]
pub fn decided(reason: Reason, rule: Option<u32>, source_rules: u64, flags: u32, port_rules: u64) {
    if level_enabled(Level::Trace) {
        let rule = rule.map_or(-1, |rule| rule as i64);
        trace_decided(reason as u32, rule, source_rules, flags, port_rules);
    }
}

/// `decided`'s line, out of line: inlined, LLVM merged the call sites' line into
/// one and kept its values on the stack, stored on every packet a rule decided
/// (3 stores) before the level check the verifier prunes on. Not `#[cold]`: LLVM
/// puts cold functions in `.text.unlikely`, and aya resolves a call into that
/// section as if into `.text` (the call reached another function).
#[inline(never)]
fn trace_decided(reason: u32, rule: i64, source_rules: u64, flags: u32, port_rules: u64) {
    trace!(
        &(),
        "verdict reason {} rule {}: source entry rules {:x} flags {:x}, port entry rules {:x}",
        reason,
        rule,
        source_rules,
        flags,
        port_rules
    );
}
