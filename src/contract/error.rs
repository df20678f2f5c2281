//! The errors an invocation can end with. Each variant is a Lambda `errorType` named in
//! DESIGN.md, so Step Functions `Retry`/`Catch` can tell them apart.

use crate::contract::response::{Answer, Response, ResponseFormat, Summary};

/// Why an invocation failed. The message names the offending value and what would be valid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CopySnapshotsError {
    /// Malformed payload or settings; nothing was copied and no AWS call was made.
    #[error("{0}")]
    InvalidRequest(String),
    /// A requested snapshot does not exist or is not visible; nothing was copied.
    #[error("{0}")]
    SourceNotFound(String),
    /// A requested snapshot is not `completed` (or is archived); nothing was copied.
    #[error("{0}")]
    SourceNotReady(String),
    /// Some copies failed after all other work was done. `response` holds everything else.
    #[error("{message}")]
    CopyFailed { message: String, response: Box<Response> },
    /// An EventBridge event's snapshot could not be started before the deadline (the region's
    /// copy quota stayed full). The invocation fails so that Lambda retries the event and
    /// finally sends it to the on-failure destination: an event is never acknowledged while
    /// its snapshot has no copy. `response` holds what was done.
    #[error("{message}")]
    SourcesPending { message: String, response: Box<Response> },
    /// EC2 or KMS said no; the message says how far the invocation got.
    #[error("{0}")]
    AccessDenied(String),
    /// EC2 throttling outlasted the SDK's retries; safe to retry.
    #[error("{0}")]
    Throttled(String),
    /// EC2 failed in a way none of the above covers (5xx, network); safe to retry.
    #[error("{0}")]
    Ec2Error(String),
}

impl CopySnapshotsError {
    /// What was done before the error, for the errors that carry it.
    pub fn response(&self) -> Option<&Response> {
        match self {
            Self::CopyFailed { response, .. } | Self::SourcesPending { response, .. } => Some(response),
            _ => None,
        }
    }

    /// The Lambda `errorType`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "InvalidRequest",
            Self::SourceNotFound(_) => "SourceNotFound",
            Self::SourceNotReady(_) => "SourceNotReady",
            Self::CopyFailed { .. } => "CopyFailed",
            Self::SourcesPending { .. } => "SourcesPending",
            Self::AccessDenied(_) => "AccessDenied",
            Self::Throttled(_) => "Throttled",
            Self::Ec2Error(_) => "Ec2Error",
        }
    }
}

impl From<CopySnapshotsError> for lambda_runtime::Diagnostic {
    fn from(error: CopySnapshotsError) -> Self {
        Self { error_type: error.error_type().to_owned(), error_message: error.to_string() }
    }
}

/// The result as the caller asked for it. A summary caller keeps errors in state too (a
/// Catch's ResultPath), so a `CopyFailed` message, which names every failure and copy, is
/// replaced by the summary's bounded one.
pub fn respond(
    result: Result<Response, CopySnapshotsError>,
    format: ResponseFormat,
    target_region: &str,
) -> Result<Answer, CopySnapshotsError> {
    match (result, format) {
        (Ok(response), format) => Ok(Answer::new(response, format)),
        (Err(CopySnapshotsError::CopyFailed { response, .. }), ResponseFormat::Summary) => {
            let message = Summary::of(&response).failure_message_of_request(target_region);
            Err(CopySnapshotsError::CopyFailed { message, response })
        }
        (Err(error), _) => Err(error),
    }
}
