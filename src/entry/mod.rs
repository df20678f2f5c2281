//! The entry points: how an invocation arrives and how its answer leaves. The Lambda
//! ([`lambda`], [`handler`], [`batch`] for the SQS queue's batches, [`logging`]), the command
//! line ([`cli`] and its [`terminal`] display), and `verify-aws` ([`verify_aws`]), the live
//! check on a user's own account. They turn input into a request, build the store, run the
//! engine and answer; none decides what to copy or delete.

pub mod batch;
pub mod cli;
pub mod handler;
pub mod lambda;
pub mod logging;
#[cfg(feature = "simulated")]
pub mod simulated_queue;
pub mod terminal;
pub mod verify_aws;
