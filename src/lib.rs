//! copy-snapshots: copies EBS snapshots to another region as a reconciler — each invocation
//! converges the target region towards "every source has a copy", idempotently, through tags
//! on the copies. See DESIGN.md in the project's shared folder for the contract.
//!
//! The folders are the layers, and each uses only those below it (`scripts/check-layers`
//! checks this and that no two modules import each other, directly or around a loop):
//! - [`entry`]: the entry points — the Lambda (handler, SQS batches, logging), the command line
//!   and its terminal display, `verify-aws`. Builds the store and runs the engine.
//! - [`engine`]: the reconciler, a module per step over one run's state, and its rules
//!   (ownership, slot accounting, poll timing, the plan, what it reports as it works). Knows no
//!   SDK: it asks the store.
//! - [`contract`]: the request and the answer (request, event, retention, response, error,
//!   metrics): data and pure rules.
//! - [`store`]: the port the engine asks EC2 (and KMS, and the slot ledger) through, in domain
//!   types, with its adapters: aws-sdk-ec2, aws-sdk-kms and aws-sdk-dynamodb (the only
//!   modules that touch an SDK client), and, behind the `simulated` feature, the in-memory EC2.
//!   It uses only [`ids`].
//! - [`ids`]: snapshot ids, regions, KMS key references and snapshot ARNs, validated: the
//!   vocabulary of every layer.

pub mod contract;
pub mod engine;
pub mod entry;
pub mod ids;
pub mod store;

pub use contract::error::CopySnapshotsError;
pub use contract::request::{CopyRequest, Settings};
pub use contract::response::Response;
pub use entry::handler::handle;
