//! Everything the XDP program and the loader must agree on byte for byte: map names,
//! sizes, and the `#[repr(C)]` layouts of keys and values.
//!
//! Layouts use explicit padding fields and integer flags (never `bool`), so the
//! `Pod` impls below are sound and the kernel and user views cannot drift.
#![no_std]

pub mod flows;
pub mod maps;
pub mod reason;

pub use flows::*;
pub use maps::*;
pub use reason::Reason;

/// Test builds only (`--features layout-bump`): a layout version no real build
/// has, so the upgrade tests can run two airlocks whose layouts differ
/// (tests/tests/upgrades.rs). It shadows `maps::LAYOUT_VERSION` as seen through
/// this crate's root, which is where the loader reads it; the maps are unchanged.
#[cfg(feature = "layout-bump")]
pub const LAYOUT_VERSION: u32 = maps::LAYOUT_VERSION + 1000;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is `#[repr(C)]`, `Copy`, made only of integers and
    // has no implicit padding, so any byte pattern is a valid value.
    unsafe impl aya::Pod for super::SourceEntry {}
    unsafe impl aya::Pod for super::GenConfig {}
    unsafe impl aya::Pod for super::PortSlot {}
    unsafe impl aya::Pod for super::SourceRangeV4 {}
    unsafe impl aya::Pod for super::SourceRangeV6 {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::PolicyMeta {}
    unsafe impl aya::Pod for super::SamplingConfig {}
    unsafe impl aya::Pod for super::SampleWindow {}
    unsafe impl aya::Pod for super::DropSample {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
}
