//! copy-snapshots: copies EBS snapshots to another region as a reconciler — each invocation
//! converges the target region towards "every source has a copy", idempotently, through tags
//! on the copies. See DESIGN.md in the project's shared folder for the contract.
//!
//! Module map:
//! - [`ids`]: snapshot ids, regions, KMS key references, snapshot ARNs, validated.
//! - [`request`]: the request, the environment's defaults, validation.
//! - [`event`]: payload → request (direct request or EventBridge event).
//! - [`store`]: the trait the engine asks EC2 through, in domain types.
//! - [`engine`]: the engine, a module per step over one run's state ([`reconcile`] is its
//!   first path, re-exported); [`poll_timing`]: when it polls next; [`progress`]: what it
//!   reports as it works (and the signal that stops it); [`plan`]: what it would do;
//!   [`retention`]: the one rule for which sources are copied and which copies are deleted;
//!   [`ownership`]: the one rule for which copies belong to a request.
//! - [`response`], [`error`]: what an invocation answers.
//! - [`slots`]: this deployment's copy slots in a target region, reserved in a ledger with
//!   conditional writes (the accounting and its port); [`dynamo_slots`]: that ledger on
//!   aws-sdk-dynamodb.
//! - [`ec2`]: the store on aws-sdk-ec2; [`kms`]: the key a request names, resolved with
//!   aws-sdk-kms (with [`dynamo_slots`], the only modules that use an SDK client); [`presign`]:
//!   CopySnapshot's PresignedUrl, signed with aws-sigv4 (pure, no SDK client).
//! - [`batch`]: a batch of new-snapshot events from the SQS queue, answered per record;
//!   [`timeline`]: each call's share of the invocation's time, and the backoff with jitter.
//! - [`handler`]: one invocation end to end; [`logging`]: the Lambda log setup;
//!   [`metrics`]: the per-invocation CloudWatch EMF line; [`lambda`]: the Lambda bootstrap.
//! - [`cli`]: the command line (flags → the same request); [`terminal`]: its progress display
//!   and tables.
//! - [`verify_aws`]: `copy-snapshots verify-aws`, the live check on a user's own account (its
//!   own volume, snapshot and copy, made and deleted; the copy by the engine).
//! - `simulated` (feature `simulated`): an in-memory EC2 on tokio's clock, for the tests and
//!   the benchmark, and `simulated_queue`: the SQS queue and event source mapping in front of
//!   the function; neither is built into the Lambda.

pub mod batch;
pub mod cli;
pub mod dynamo_slots;
pub mod ec2;
pub mod engine;
pub mod error;
pub mod event;
pub mod handler;
pub mod ids;
pub mod kms;
pub mod lambda;
pub mod logging;
pub mod metrics;
pub mod ownership;
pub mod plan;
pub mod poll_timing;
pub mod presign;
pub mod progress;
pub mod reconcile;
pub mod request;
pub mod response;
pub mod retention;
#[cfg(feature = "simulated")]
pub mod simulated;
#[cfg(feature = "simulated")]
pub mod simulated_queue;
pub mod slots;
pub mod store;
pub mod terminal;
pub mod timeline;
pub mod verify_aws;

pub use error::CopySnapshotsError;
pub use handler::handle;
pub use request::{CopyRequest, Settings};
pub use response::Response;
