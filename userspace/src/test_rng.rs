//! A seeded generator for the unit tests' random inputs: deterministic, so a failing
//! case comes back on every run.

/// xorshift64: `state` must be nonzero.
pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}
