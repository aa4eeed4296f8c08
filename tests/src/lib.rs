//! Shared fixtures for the root-only tests.
