//! Shared fixtures for the root-only tests.
pub mod agent;
pub mod cli;
pub mod differential;
pub mod fixture;
pub mod https;
pub mod netns;

pub mod bench;
pub mod kernel;
pub mod packet;
