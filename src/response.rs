//! What an invocation answers: where every source stands. Field names are the contract of
//! DESIGN.md; `snapshot_ids` is avtomat-aws's output, kept for its users.

use serde::{Deserialize, Serialize};

/// The answer to one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// One copy per source that has one, in request order.
    pub snapshot_ids: Vec<String>,
    /// Every copy started or reused, in request order.
    pub copies: Vec<CopyReport>,
    /// Sources with no copy started yet; calling again continues with them.
    pub pending_sources: Vec<String>,
    /// Sources whose copy EC2 refused, or whose copy ended in `error`.
    pub failed: Vec<FailureReport>,
    /// Every source has a copy started (and, with `wait_for_completion`, completed).
    pub complete: bool,
    /// Second live copies of a source (left by overlapping invocations or by a start EC2
    /// answered late) that this invocation deleted, keeping the other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates_removed: Vec<RemovedCopy>,
}

impl Response {
    /// The answer to an event that asks for no copy.
    pub fn nothing_to_do() -> Self {
        Self { complete: true, ..Self::default() }
    }
}

/// One copy and its state when the invocation returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyReport {
    pub source_snapshot_id: String,
    pub snapshot_id: String,
    pub state: String,
    /// EC2's progress, e.g. `"12%"`; absent until EC2 reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Made by an earlier invocation and found again by its tags.
    pub reused: bool,
}

/// A source that could not be copied, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReport {
    pub source_snapshot_id: String,
    /// The copy that ended in `error`, if EC2 got as far as making one (the latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Every copy of this source that ended in `error`: its attempts, kept in EC2.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_snapshot_ids: Vec<String>,
    pub error: String,
}

/// A duplicate copy that was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedCopy {
    pub source_snapshot_id: String,
    pub snapshot_id: String,
}
