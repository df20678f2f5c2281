//! Test support shared by the test binaries that run the real function binary.

#![allow(dead_code)] // each test binary uses its own part of the support code

pub mod events;
pub mod fault_ec2;
pub mod moto;
pub mod runtime_api;
