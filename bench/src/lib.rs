//! The benchmark (`bench`, run by `airlock-bench`) and the demo (`airlock-demo`):
//! root-only programs, kept out of the `airlock` binary and out of the default
//! members. The test harness they build on is `airlock-integration`'s, re-exported
//! here under the names the bench was written with.
pub use airlock_integration::{cli, floors, kernel, netns, packet};

pub mod bench;
