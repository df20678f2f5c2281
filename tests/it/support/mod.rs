//! Test support shared by the tests: the engine tests' world, and what the tests that run the
//! real function binary against an emulator need.

pub mod engine_world;
pub mod events;
pub mod fault_ec2;
pub mod moto;
pub mod runtime_api;
pub mod scripted_ec2;
