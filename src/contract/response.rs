//! What an invocation answers: where every source stands. Field names are the contract of
//! DESIGN.md; `snapshot_ids` is avtomat-aws's output, kept for its users.
//!
//! A full answer grows with the sources (about 160 bytes each). Step Functions fails an
//! execution whose task result passes 256 KiB (`States.DataLimitExceeded`, which no Catch
//! catches), and the limit applies to the Lambda task's raw result, before any ResultSelector.
//! So a caller that keeps the answer in state asks for `response_format: "summary"` and gets an
//! [`Answer::Summary`]: counts and a bounded list of failures, whatever the number of sources.
//! The full list stays in the function's log line "done" and in a full answer.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Most failures a summary lists; the count says how many there are in all.
pub const SUMMARY_MAX_FAILURES: usize = 20;
/// Longest error text (in characters) a summary keeps per failure.
pub const SUMMARY_MAX_ERROR_CHARS: usize = 300;

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
    /// Sources the request selects that it does not copy, with why: out of retention, in the
    /// archive tier, in `error`, a copy this function made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedSource>,
    /// Copies retention deleted (in a dry run: would delete now).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<DeletedCopy>,
    /// Copies retention would delete that are left in place: a registered AMI uses them
    /// (`image_id`), or EC2 refused (locked, access denied, …). The next run tries again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_deleted: Vec<NotDeletedCopy>,
    /// The deletion breaker held this run: it would have deleted an unusual share of the copies
    /// it manages, so it deleted none (see the README's Retention section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_breaker: Option<DeletionBreaker>,
    /// For the `CopiesNotDeleted` metric only: deletions the role was denied.
    #[serde(skip)]
    pub deletions_denied: usize,
    /// Copies retention deletes that this invocation did not get to: the deadline came first,
    /// the copy is still pending, or it is its volume's last completed copy until a newer one
    /// completes. The next run continues.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deletions_left: usize,
    /// A dry run: nothing was copied or deleted; `to_copy` and `deleted` say what a run would do.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// Dry run only: the sources a run would copy now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_copy: Vec<String>,
    /// Why sources were left for the next invocation, when it is more than the copy quota:
    /// the invocation was too short, EC2 throttled it, other invocations' copies fill
    /// `pending_limit`. Also logged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// For the recovery-point metric only, not part of the answer.
    #[serde(skip)]
    pub recovery_point: RecoveryPoint,
    /// A request with several targets: each target's own answer, in the order of `targets`.
    /// The fields above then hold `complete` (every target's), `snapshot_ids` (every target's
    /// copies, target by target, each in source order), `dry_run` and `notes`; each list of
    /// copies, failures and deletions is its target's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetResponse>,
}

/// One target's part of the answer to a request with several targets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetResponse {
    pub target_region: String,
    /// The account of the target's role, when the copies are made in another account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The error that stopped this target in this invocation while the others went on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TargetError>,
    #[serde(flatten)]
    pub response: Response,
}

/// An error one target ended with: its Lambda `errorType` and message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetError {
    pub error_type: String,
    pub error_message: String,
}

impl RecoveryPoint {
    /// The recovery point of several targets: the oldest uncopied source of any (`first`: this
    /// is the first target's, taken as it is).
    pub fn worst_with(self, other: Self, first: bool) -> Self {
        match (self, other) {
            _ if first => other,
            (Self::NotMeasured, _) | (_, Self::NotMeasured) => Self::NotMeasured,
            (Self::AllCopied, other) | (other, Self::AllCopied) => other,
            (Self::OldestUncopied(a), Self::OldestUncopied(b)) => Self::OldestUncopied(a.min(b)),
        }
    }
}

/// What an invocation can say of the recovery point: the age of the oldest source without a
/// completed copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecoveryPoint {
    /// The request names some snapshots (ids, an event), not the set a disaster-recovery owner
    /// watches: reporting its few would let an alarm on the whole set clear while a scheduled
    /// source is still uncopied.
    #[default]
    NotMeasured,
    /// Every source the filters select has a completed copy.
    AllCopied,
    /// The start time of the oldest selected source with no completed copy yet.
    OldestUncopied(SystemTime),
}

impl Response {
    /// Each target's answer with its target (one target: the answer itself).
    pub fn by_target(&self) -> Vec<(Option<&str>, &Response)> {
        if self.targets.is_empty() {
            return vec![(None, self)];
        }
        self.targets.iter().map(|t| (Some(t.target_region.as_str()), &t.response)).collect()
    }

    /// The answer to an event that asks for no copy.
    pub fn nothing_to_do() -> Self {
        Self { complete: true, ..Self::default() }
    }

    /// The `SourcesPending` message: which of an event's snapshots have no copy started.
    pub(crate) fn sources_pending_message(&self, target_region: &str) -> String {
        format!(
            "{} of this event not started in {target_region} before the deadline (the region's copy quota stayed full, \
             or EC2 did not answer): {}; failing so that Lambda retries the event and, after its retries, sends it to \
             the on-failure destination. Copies already started: {}",
            plural(self.pending_sources.len(), "snapshot"),
            self.pending_sources.join(", "),
            self.copies.len()
        )
    }

    /// The `CopyFailed` message: each failure, and every copy made.
    pub(crate) fn copy_failed_message(&self, target_region: &str) -> String {
        let failures: Vec<String> =
            self.failed.iter().map(|f| format!("{}: {}", f.source_snapshot_id, f.error)).collect();
        let made: Vec<String> =
            self.copies.iter().map(|c| format!("{} → {} ({})", c.source_snapshot_id, c.snapshot_id, c.state)).collect();
        format!(
            "{} of {} failed to copy to {target_region}: {}. Copies made: {}",
            self.failed.len(),
            plural(self.failed.len() + self.copies.len(), "source"),
            failures.join("; "),
            if made.is_empty() { "none".to_owned() } else { made.join(", ") }
        )
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
    /// In the summary of a request with several targets: the target it failed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_region: Option<String>,
}

/// A duplicate copy that was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedCopy {
    pub source_snapshot_id: String,
    pub snapshot_id: String,
}

/// A source the request selects and does not copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedSource {
    pub source_snapshot_id: String,
    pub reason: String,
}

/// A copy retention deleted, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedCopy {
    pub snapshot_id: String,
    pub source_snapshot_id: String,
    pub reason: String,
}

/// A copy retention would delete that EC2 refused to delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotDeletedCopy {
    pub snapshot_id: String,
    pub source_snapshot_id: String,
    /// Why retention deletes it.
    pub reason: String,
    /// Why it stays: the AMI that uses it, or EC2's refusal (`SnapshotLocked: …`).
    pub error: String,
    /// The registered AMI that uses the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
}

/// Why a run deleted none of the copies retention would delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionBreaker {
    /// Copies the run would have deleted.
    pub would_delete: usize,
    /// Copies it manages: this request's, from its source region, in any state.
    pub managed: usize,
    pub message: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The request's `response_format`: how much the answer lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseFormat {
    /// Every copy, pending source and failure ([`Response`]).
    #[default]
    Full,
    /// Counts and at most [`SUMMARY_MAX_FAILURES`] failures ([`SummaryAnswer`]), a few KiB
    /// whatever the number of sources: for Step Functions.
    Summary,
}

/// What the function returns: the full response, or its summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Full(Response),
    Summary(SummaryAnswer),
}

impl Answer {
    pub fn new(response: Response, format: ResponseFormat) -> Self {
        match format {
            ResponseFormat::Full => Self::Full(response),
            ResponseFormat::Summary => {
                Self::Summary(SummaryAnswer { complete: response.complete, summary: Summary::of(&response) })
            }
        }
    }
}

/// The compact answer: `complete` as in the full one, and the counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryAnswer {
    pub complete: bool,
    pub summary: Summary,
}

/// Counts of a response, and its first failures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Sources the request resolved to (copies + pending_sources + failed).
    pub sources: usize,
    /// Copies started or reused.
    pub copies: usize,
    /// Of those, made by an earlier invocation.
    pub reused: usize,
    /// Of those, seen `completed`.
    pub completed: usize,
    /// Of those, not `completed` yet.
    pub pending: usize,
    /// Sources with no copy started yet.
    pub pending_sources: usize,
    /// Sources that could not be copied.
    pub failed: usize,
    /// Sources not copied, by retention or because they cannot be (see [`Response::skipped`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: usize,
    /// Copies retention deleted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deleted: usize,
    /// Copies EC2 refused to delete.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_deleted: usize,
    /// Copies retention deletes that a later run gets to.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deletions_left: usize,
    /// The deletion breaker held the run's deletions: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_breaker: Option<String>,
    /// The first [`SUMMARY_MAX_FAILURES`] failures, each error cut to
    /// [`SUMMARY_MAX_ERROR_CHARS`] characters (with several targets, each target's share of
    /// them is in its own summary).
    pub failures: Vec<FailureReport>,
    /// A request with several targets: each target's summary (its failures listed above); the
    /// counts above are their sums.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetSummary>,
}

/// One target's summary, in a request with several.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSummary {
    pub target_region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub complete: bool,
    /// The error that stopped this target in this invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TargetError>,
    #[serde(flatten)]
    pub summary: Summary,
}

impl Summary {
    pub fn of(response: &Response) -> Self {
        if response.targets.is_empty() {
            return Self::of_one(response, SUMMARY_MAX_FAILURES);
        }
        let targets: Vec<TargetSummary> = response
            .targets
            .iter()
            .map(|t| TargetSummary {
                target_region: t.target_region.clone(),
                account: t.account.clone(),
                complete: t.response.complete && t.error.is_none(),
                error: t.error.clone(),
                summary: Self::of_one(&t.response, 0),
            })
            .collect();
        let sum = |count: fn(&Summary) -> usize| targets.iter().map(|t| count(&t.summary)).sum();
        // The failures listed stay SUMMARY_MAX_FAILURES in all, each naming its target, where
        // a one-target summary lists them.
        let failures = response
            .targets
            .iter()
            .flat_map(|t| {
                t.response.failed.iter().map(|f| FailureReport {
                    error: cut(&f.error, SUMMARY_MAX_ERROR_CHARS),
                    target_region: Some(t.target_region.clone()),
                    ..f.clone()
                })
            })
            .take(SUMMARY_MAX_FAILURES)
            .collect();
        let breakers: Vec<String> = targets
            .iter()
            .filter_map(|t| t.summary.deletion_breaker.as_ref().map(|b| format!("{}: {b}", t.target_region)))
            .collect();
        Self {
            sources: sum(|s| s.sources),
            copies: sum(|s| s.copies),
            reused: sum(|s| s.reused),
            completed: sum(|s| s.completed),
            pending: sum(|s| s.pending),
            pending_sources: sum(|s| s.pending_sources),
            failed: sum(|s| s.failed),
            skipped: sum(|s| s.skipped),
            deleted: sum(|s| s.deleted),
            not_deleted: sum(|s| s.not_deleted),
            deletions_left: sum(|s| s.deletions_left),
            deletion_breaker: (!breakers.is_empty()).then(|| breakers.join("; ")),
            failures,
            targets,
        }
    }

    fn of_one(response: &Response, max_failures: usize) -> Self {
        let completed = response.copies.iter().filter(|c| c.state == "completed").count();
        Self {
            sources: response.copies.len() + response.pending_sources.len() + response.failed.len(),
            copies: response.copies.len(),
            reused: response.copies.iter().filter(|c| c.reused).count(),
            completed,
            pending: response.copies.len() - completed,
            pending_sources: response.pending_sources.len(),
            failed: response.failed.len(),
            skipped: response.skipped.len(),
            deleted: response.deleted.len(),
            not_deleted: response.not_deleted.len(),
            deletions_left: response.deletions_left,
            deletion_breaker: response.deletion_breaker.as_ref().map(|b| b.message.clone()),
            failures: response
                .failed
                .iter()
                .take(max_failures)
                .map(|f| FailureReport { error: cut(&f.error, SUMMARY_MAX_ERROR_CHARS), ..f.clone() })
                .collect(),
            targets: Vec::new(),
        }
    }

    /// A `CopyFailed` message of bounded size for the whole request: one target's, or the
    /// failures listed with their targets and each failing target's counts.
    pub fn failure_message_of_request(&self, target_region: &str) -> String {
        if self.targets.is_empty() {
            return self.failure_message(target_region);
        }
        let failing: Vec<String> = self
            .targets
            .iter()
            .filter(|t| t.summary.failed > 0)
            .map(|t| format!("{} of {} in {}", t.summary.failed, t.summary.sources, t.target_region))
            .collect();
        let listed: Vec<String> = self
            .failures
            .iter()
            .map(|f| format!("{} in {}: {}", f.source_snapshot_id, f.target_region.as_deref().unwrap_or("?"), f.error))
            .collect();
        let more = self.failed - self.failures.len();
        format!(
            "sources failed to copy: {}: {}{}. {} copies made ({} completed); the function's log lists every failure \
             and copy",
            failing.join(", "),
            listed.join("; "),
            if more > 0 { format!("; and {more} more") } else { String::new() },
            self.copies,
            self.completed,
        )
    }

    /// A `CopyFailed` message of bounded size: the counts and the listed failures.
    pub fn failure_message(&self, target_region: &str) -> String {
        let listed: Vec<String> =
            self.failures.iter().map(|f| format!("{}: {}", f.source_snapshot_id, f.error)).collect();
        let more = self.failed - self.failures.len();
        format!(
            "{} of {} sources failed to copy to {target_region}: {}{}. {} copies made ({} completed); the \
             function's log lists every failure and copy",
            self.failed,
            self.sources,
            listed.join("; "),
            if more > 0 { format!("; and {more} more") } else { String::new() },
            self.copies,
            self.completed,
        )
    }
}

/// The start time of the oldest source without a completed copy, from each source's start
/// time and whether its copy is completed. Sources of unknown age are left out.
pub fn oldest_uncopied(sources: impl IntoIterator<Item = (Option<SystemTime>, bool)>) -> Option<SystemTime> {
    sources.into_iter().filter(|(_, copied)| !copied).filter_map(|(start, _)| start).min()
}

/// `n noun` or `n nouns` (`copy` → `copies`).
pub(crate) fn plural(n: usize, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {noun}s"),
    }
}

/// `text` cut to `max` characters, marked with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_oldest_source_without_a_completed_copy() {
        let t = |s: u64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(oldest_uncopied([(t(10), true), (t(30), false), (t(20), false), (None, false)]), t(20));
        assert_eq!(oldest_uncopied([(t(10), true)]), None, "all copied");
        assert_eq!(oldest_uncopied([]), None);
    }

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("ééé", 2), "éé…");
        assert_eq!(cut("abc", 3), "abc");
    }
}
