//! One invocation, end to end and free of the Lambda runtime: payload → request → reconcile →
//! response. `main` wraps this in the runtime; tests call it directly.

use serde_json::Value;
use tokio::time::Instant;
use tracing::info;

use crate::error::CopySnapshotsError;
use crate::event::{Invocation, parse_payload};
use crate::reconcile::{RunLimits, reconcile};
use crate::request::Settings;
use crate::response::Response;
use crate::store::SnapshotStore;

/// Handles one payload. Bad input is rejected before `store` is called at all.
pub async fn handle<S: SnapshotStore>(
    payload: Value,
    settings: &Settings,
    store: &S,
    deadline: Option<Instant>,
) -> Result<Response, CopySnapshotsError> {
    match parse_payload(payload, settings)? {
        Invocation::Ignore { reason } => {
            info!(%reason, "nothing to copy");
            Ok(Response::nothing_to_do())
        }
        Invocation::Copy(request) => {
            let limits = RunLimits { deadline, poll_interval: settings.poll_interval };
            reconcile(store, &request, limits).await
        }
    }
}
