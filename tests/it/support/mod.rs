//! Test support shared by the tests that run the real function binary against an emulator.

pub mod events;
pub mod fault_ec2;
pub mod moto;
pub mod runtime_api;
pub mod scripted_ec2;
