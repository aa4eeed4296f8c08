//! A source's management and deny flags from its generation's flag table
//! (`airlock_common::GenConfig::flag_tables`): a handful of intervals in the
//! config the program already holds, searched in three fixed steps. For packets
//! whose verdict needs only those flags (a port no rule covers, essential ICMP,
//! a malformed packet's source): the full source lookup costs a directory read
//! and a run search in a 4 MiB table, this a few loads from one cache line or
//! three.

use airlock_common::{FLAG_INTERVALS, GenConfig};

use crate::source::step_if_before;

/// Index mask of a flag table's intervals.
const LAST: u64 = FLAG_INTERVALS as u64 - 1;

/// The flags (`SRC_MANAGEMENT | SRC_DENY`) of the IPv4 address `addr` in
/// `config`'s flag table (only meaningful where `FLAG_TABLE_V4` is set).
#[inline(always)]
pub fn flags_v4(config: &GenConfig, addr: [u8; 4]) -> u32 {
    let starts = &config.flag_starts_v4;
    // An interval starts at or before the address when its start is below
    // `bound`: branch-free steps (`step_if_before`), so the verifier walks
    // one path, not one per outcome.
    let bound = u64::from(u32::from_be_bytes(addr)) + 1;
    let mut at = step_if_before(starts[4], bound, 4);
    at += step_if_before(starts[((at + 2) & LAST) as usize], bound, 2);
    at += step_if_before(starts[((at + 1) & LAST) as usize], bound, 1);
    interval_flags(config.flag_bits_v4, at)
}

/// As [`flags_v4`], for an IPv6 address (`FLAG_TABLE_V6`).
#[inline(always)]
pub fn flags_v6(config: &GenConfig, addr: [u8; 16]) -> u32 {
    let high = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let low = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let starts = &config.flag_starts_v6;
    let mut at = 0u64;
    for step in [4u64, 2, 1] {
        let start = starts[((at + step) & LAST) as usize];
        // In branches, as the wide IPv6 run search (source.rs): three steps
        // make at most eight paths, which meet again once `at` is read.
        if start[0] < high || (start[0] == high && start[1] <= low) {
            at += step;
        }
    }
    interval_flags(config.flag_bits_v6, at)
}

/// Interval `at`'s two flag bits from its family's `flag_bits_*` word.
#[inline(always)]
fn interval_flags(bits: u32, at: u64) -> u32 {
    (bits >> ((2 * at) & 31)) & 3
}
