//! Zero-initialized stack values without `memset`.
//!
//! LLVM merges the zero stores of a larger aggregate (here the 12 zero bytes after
//! an IPv4 address in a flow key, a drop sample's 16-byte address) into a `memset`,
//! which this target turns into a call of compiler_builtins' byte-at-a-time loop
//! (a BPF-to-BPF call and one iteration per byte). On a path every packet takes
//! that costs more than the parse itself, so values that must start out zero are
//! cleared here with 8-byte volatile stores, which LLVM neither merges nor removes.
//! The volatile stores also keep the value in memory, so fields written on many
//! branches are stored once each instead of living in registers LLVM spills and
//! re-zeroes at every branch.

use core::mem::{MaybeUninit, size_of};

use airlock_common::{DropSample, FlowKey};

/// Plain integers only: all-zero bytes are a valid value.
///
/// # Safety
/// Implement only for types whose every field is an integer or an array of them.
pub unsafe trait Plain {}

// SAFETY: integers and byte arrays only.
unsafe impl Plain for FlowKey {}
// SAFETY: integers and byte arrays only.
unsafe impl Plain for DropSample {}
// SAFETY: integers only.
unsafe impl Plain for crate::parse::Headers {}

/// Storage for a `T` on 8-byte boundaries, whole 8-byte words long.
#[repr(C, align(8))]
pub struct Slot<T>(MaybeUninit<T>);

impl<T: Plain> Slot<T> {
    #[inline(always)]
    pub const fn new() -> Self {
        Slot(MaybeUninit::uninit())
    }

    /// Zeroes the slot and returns the value in it.
    #[inline(always)]
    pub fn zeroed(&mut self) -> &mut T {
        let words = (self as *mut Self).cast::<u64>();
        let mut i = 0;
        while i < size_of::<Self>() / 8 {
            // SAFETY: `Self` is 8-byte aligned and a multiple of 8 bytes long (a
            // type's size is a multiple of its alignment), so every word written is
            // inside it and aligned.
            unsafe { words.add(i).write_volatile(0) };
            i += 1;
        }
        // SAFETY: every byte is now zero, a valid `T` (`T: Plain`).
        unsafe { self.0.assume_init_mut() }
    }

    /// Writes `value` into the slot (field by field; its padding stays as it
    /// was) and returns it: for a value whose every field is set, no zeroing
    /// first.
    #[inline(always)]
    pub fn write(&mut self, value: T) -> &mut T {
        self.0.write(value)
    }
}
