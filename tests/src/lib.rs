//! Shared fixtures for the root-only tests.
pub mod agent;
pub mod cli;
pub mod differential;
pub mod fake_api;
pub mod faults;
pub mod fixture;
pub mod floors;
pub mod fuzz;
pub mod https;
pub mod kills;
pub mod netns;

pub mod kernel;
pub mod packet;
pub mod swaps;
pub mod upgrades;
