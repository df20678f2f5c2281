//! Every integration test in one crate, so aws-sdk-ec2 is linked into one test binary, not
//! ten. A module per concern (each was its own test crate before; the tests keep their names):
//! - [`engine`], [`recovery_point`], [`retention`]: the reconciler on the in-memory EC2 and
//!   tokio's paused clock;
//! - [`handler`]: `answer_lambda_event` in-process; [`requests`]: requests and events parsed;
//! - [`ec2_moto`], [`ec2_errors`]: the aws-sdk-ec2 store against moto, and against mocked
//!   answers moto cannot give (a scripted endpoint);
//! - [`lambda_binary`], [`reliability`], [`scale_binary`]: the built binary under a Lambda Runtime API, against
//!   moto and the fault-injecting emulator (tests/fault_ec2.py);
//! - [`cli`]: the same binary as a command line, against the fault-injecting emulator;
//! - [`deployment`], [`step_functions`]: the template and the state machine;
//! - [`verify_aws`]: the live check on a user's account (`verify-aws`), against the fault emulator.

mod support;

mod accounts;
mod cli;
mod deployment;
mod ec2_errors;
mod ec2_moto;
mod engine;
mod handler;
mod key_ownership;
mod lambda_binary;
mod recovery_point;
mod reliability;
mod requests;
mod retention;
mod safe_deletion;
mod scale;
mod scale_binary;
mod step_functions;
mod targets;
mod verify_aws;
