//! The benchmark's do-nothing programs (`bench-ebpf/`), embedded at build time by
//! `tests/build.rs`: the bench measures Airlock against them, and the tests use
//! `xdp-pass` as another tool's XDP program. They are not in the `airlock` binary.

static XDP_PASS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-pass"));
static XDP_DROP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-drop"));
static XDP_PEEK_DROP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-peek-drop"));
static XDP_TX_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-tx"));
static TC_PASS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc-pass"));

/// The benchmark's do-nothing programs, by name: `xdp-pass` and `xdp-drop` (the
/// floors Airlock is measured against), `xdp-peek-drop` (`xdp-drop` that first reads
/// the headers), `xdp-tx` (the live traffic generator) and
/// `tc-pass` (the egress program's floor). Each object holds one program named
/// like the file with `_` for `-`.
pub fn floor_object_bytes(name: &str) -> Option<&'static [u8]> {
    match name {
        "xdp-pass" => Some(XDP_PASS_OBJECT),
        "xdp-drop" => Some(XDP_DROP_OBJECT),
        "xdp-peek-drop" => Some(XDP_PEEK_DROP_OBJECT),
        "xdp-tx" => Some(XDP_TX_OBJECT),
        "tc-pass" => Some(TC_PASS_OBJECT),
        _ => None,
    }
}
