//! Test support shared by the test binaries that run the real function binary.

pub mod runtime_api;
