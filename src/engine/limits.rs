//! The bounds of one run: its time limits ([`RunLimits`]) and the engine's fixed limits on
//! attempts, unsure look-ups and deletions.

use std::time::Duration;

use tokio::time::Instant;

/// The deletion breaker holds a run that would delete more than this many copies …
pub const BREAKER_MIN_DELETIONS: usize = 20;

/// … and more than 1/this of the copies it manages.
pub const BREAKER_SHARE_DENOMINATOR: usize = 4;

/// The most copies of one source that may end in `error` before the source is failed. Counted
/// from EC2 (the error copies stay), so the bound holds across invocations: a cause that
/// persists (a key policy, a deleted key) costs three copies, not one per round forever.
pub const MAX_ATTEMPTS: usize = 3;

/// How often an unsure start is looked up (backing off from the poll interval: 1, 2, 4, 8
/// intervals, 225 s at the default 15 s) before the source is started again. AWS advises
/// backing off for up to minutes before trusting a DescribeSnapshots that lacks a new copy.
pub const UNSURE_LOOKS: u32 = 4;

/// Time limits of one invocation.
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    /// The invocation's deadline (Lambda's `Context::deadline`); `None` runs until done.
    pub deadline: Option<Instant>,
    /// The shortest wait between two polls (`POLL_INTERVAL_SECONDS`).
    pub poll_interval: Duration,
    /// The longest wait between two polls (`MAX_POLL_INTERVAL_SECONDS`).
    pub max_poll_interval: Duration,
    /// The longest one store call may take (the SDK's operation timeout): after the look, no
    /// call starts unless it fits before the deadline.
    pub call_timeout: Duration,
}

/// How long the looks for an unsure start span: 1 + 2 + 4 + 8 poll intervals. A copy EC2
/// confirmed but that is missing from every listing for twice that is taken as gone.
pub(super) fn unsure_window(poll_interval: Duration) -> Duration {
    poll_interval * (2u32.pow(UNSURE_LOOKS) - 1)
}
