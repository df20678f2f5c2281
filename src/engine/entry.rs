//! One source in one target's run ([`Entry`]): its stage ([`Stage`]), the copy being watched
//! ([`TrackedCopy`]) and its attempts so far ([`ErrorCopy`]). The run's state
//! ([`super::state`]) moves entries between stages.

use tokio::time::Instant;

use crate::engine::poll_timing::CompletionEstimate;
use crate::ids::SnapshotId;
use crate::store::{SnapshotState, SourceSnapshot};

/// Where one source stands.
#[derive(Debug, Clone)]
pub(super) enum Stage {
    /// No copy yet; in the start queue.
    Waiting,
    /// A filter matched it but it is not `completed` yet; a later invocation copies it.
    NotReady,
    /// A CopySnapshot call failed without a definite answer, or a copy being watched vanished:
    /// a copy may exist that EC2 does not list yet (it is eventually consistent). It is looked
    /// up by its tags, with backoff, [`UNSURE_LOOKS`](super::limits::UNSURE_LOOKS) times before a new attempt, and holds a
    /// slot meanwhile.
    Unsure {
        misses: u32,
        next_look: Instant,
    },
    Copying {
        copy: TrackedCopy,
        reused: bool,
    },
    Failed {
        copy_id: Option<SnapshotId>,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) source: SourceSnapshot,
    pub(super) stage: Stage,
    /// This project's copies of the source that ended in `error` (or under another key than
    /// the request's), found by their tags or seen failing: the source's attempts so far, kept
    /// in EC2 itself.
    pub(super) error_copies: Vec<ErrorCopy>,
}

impl Entry {
    pub(super) fn new(source: SourceSnapshot, stage: Stage) -> Self {
        Self { source, stage, error_copies: Vec::new() }
    }

    /// One more of the source's copies ended in `error` (or under another key): an attempt.
    pub(super) fn record_error_copy(&mut self, id: SnapshotId, message: String) {
        self.error_copies.push(ErrorCopy { id, message });
    }

    /// The source fails: its copy `copy_id` (if any) cannot serve, for `reason`.
    pub(super) fn fail_with(&mut self, copy_id: Option<SnapshotId>, reason: String) {
        self.stage = Stage::Failed { copy_id, reason };
    }
}

/// A copy that ended in `error`, with EC2's `StateMessage`.
#[derive(Debug, Clone)]
pub(super) struct ErrorCopy {
    pub(super) id: SnapshotId,
    pub(super) message: String,
}

/// A copy being watched, with what is known of its speed.
#[derive(Debug, Clone)]
pub(super) struct TrackedCopy {
    pub(super) id: SnapshotId,
    pub(super) state: SnapshotState,
    pub(super) progress: Option<u8>,
    pub(super) estimate: CompletionEstimate,
    /// Seen in at least one answer; a seen copy that vanishes was deleted.
    pub(super) seen: bool,
}
