//! copy-snapshots: copies EBS snapshots to another region as a reconciler — each invocation
//! converges the target region towards "every source has a copy", idempotently, through tags
//! on the copies. See DESIGN.md in the project's shared folder for the contract.
//!
//! Module map:
//! - [`ids`]: snapshot ids, regions, KMS key references, snapshot ARNs, validated.
//! - [`request`]: the request, the environment's defaults, validation.
//! - [`event`]: payload → request (direct request or EventBridge event).
//! - [`store`]: the trait the engine asks EC2 through, in domain types.
//! - [`reconcile`]: the engine; [`poll_timing`]: when it polls next.
//! - [`response`], [`error`]: what an invocation answers.
//! - [`ec2`]: the store on aws-sdk-ec2 (the only module that uses the SDK).
//! - [`handler`]: one invocation end to end; [`logging`]: the Lambda log setup;
//!   [`metrics`]: the per-invocation CloudWatch EMF line.
//! - `simulated` (feature `simulated`): an in-memory EC2 on tokio's clock, for the tests and
//!   the benchmark; not built into the Lambda.

pub mod ec2;
pub mod error;
pub mod event;
pub mod handler;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod poll_timing;
pub mod reconcile;
pub mod request;
pub mod response;
#[cfg(feature = "simulated")]
pub mod simulated;
pub mod store;

pub use error::CopySnapshotsError;
pub use handler::handle;
pub use request::{CopyRequest, Settings};
pub use response::Response;
