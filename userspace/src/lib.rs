//! Airlock's library: the policy language, its compiler to BPF map entries, a
//! reference model of the verdict rules, and the loader that puts a compiled policy
//! into the kernel. The `airlock` binary (and the agent) are thin fronts over it.

pub mod agent;
pub mod check;
pub mod compile;
pub mod datapath_log;
pub mod diff;
pub mod fleet;
pub mod interfaces;
pub mod kernel_hz;
pub mod link_type;
pub mod loader;
pub mod parallel;
pub mod pipeline;
pub mod policy;
pub mod probe;
pub mod ranges;
pub mod reference;
pub mod regions;
mod rtnetlink;
pub mod safety;
pub mod samples;
pub mod sockets;
#[doc(hidden)]
pub mod test_hook;
#[cfg(test)]
mod test_rng;
pub mod trust;
pub mod tunnels;
