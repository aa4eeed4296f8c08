//! Datapath debug and trace lines (aya-log): why a frame was judged malformed, and
//! which source entry and port entry decided. The level is the one word of the
//! `LOG_LEVEL` map (aya-log's numbering: 0 off ... 4 debug, 5 trace), pinned with the
//! filter, so `airlock apply --datapath-log LEVEL` changes it on a running filter.
//! Off by default. aya-log's own `AYA_LOG_LEVEL` global is frozen at trace by the
//! loader (its check is then pruned by the verifier): the map is the only gate, one
//! array lookup where a line could be written, taken only when the lookup says so.

use airlock_common::Reason;
use aya_log_ebpf::{debug, trace};

use crate::maps::LOG_LEVEL;
use crate::parse::{Bytes, Headers, KIND_MALFORMED};

/// aya-log's `Level::Debug` and `Level::Trace`.
const DEBUG: u32 = 4;
const TRACE: u32 = 5;

/// Whether lines at `level` are on (the verifier inlines the array lookup).
#[inline(always)]
fn enabled(level: u32) -> bool {
    LOG_LEVEL.get(0).is_some_and(|current| *current >= level)
}

/// A frame the parser judged malformed: where the parse stopped (a frame whose
/// peer address was read names it).
#[inline(always)]
pub fn malformed(packet: &Bytes, headers: &Headers, bytes: u64) {
    if !enabled(DEBUG) {
        return;
    }
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
    if !enabled(TRACE) {
        return;
    }
    trace!(
        &(),
        "verdict reason {} rule {}: source entry rules {:x} flags {:x}, port entry rules {:x}",
        reason as u32,
        rule.map_or(-1, |rule| rule as i64),
        source_rules,
        flags,
        port_rules
    );
}
