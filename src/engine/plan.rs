//! What a run would do, without doing it: each source with its copy or why it has none, the GiB
//! to transfer, and how long the job would take, scheduled as the engine schedules (largest
//! first, at most `pending_limit` at once) under a stated copy-time model; with a retention, the
//! copies it would delete. The command line's `plan` prints it, a `dry_run` request answers it;
//! the engine builds it from its own look ([`plan`](fn@crate::engine::plan)).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use serde::Serialize;

use crate::contract::response::{CopyReport, DeletedCopy, FailureReport, Response, SkippedSource};
use crate::store::copy_time::CopyTimeModel;

use crate::engine::progress::{LookedSource, SourceStatus};

/// The plan of one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub source_region: String,
    pub target_region: String,
    pub pending_limit: usize,
    pub sources: Vec<PlannedSource>,
    /// Sources this run would copy, and their total size.
    pub copies_to_make: usize,
    pub gib_to_copy: u64,
    /// Until every copy (new, and earlier ones still pending) would be completed.
    pub estimated_seconds: u64,
    pub copy_time_model: String,
    /// Copies retention would delete now (`delete` rows), and their size.
    #[serde(skip_serializing_if = "is_zero")]
    pub copies_to_delete: usize,
    #[serde(skip_serializing_if = "is_zero")]
    pub gib_to_delete: u64,
    /// The deletion breaker would hold a run of this request: it deletes none of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_breaker: Option<crate::contract::response::DeletionBreaker>,
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// A copy retention deletes, as the look found it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedDeletion {
    pub copy: crate::ids::SnapshotId,
    pub source: crate::ids::SnapshotId,
    pub size_gib: u64,
    /// EC2's state of the copy (`completed`, `error`, or `pending`).
    pub state: String,
    /// Why it goes.
    pub reason: String,
    /// `Some(why)`: not now (the copy is still pending, or it is its volume's last completed
    /// copy until a newer one completes).
    pub later: Option<String>,
}

/// One source in a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedSource {
    pub source_snapshot_id: String,
    pub size_gib: u64,
    /// `copy`, `has_copy`, `not_ready`, `skip` or `failed`; for a copy retention deletes,
    /// `delete` (`snapshot_id` is the copy) or `delete_later`.
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl PlannedSource {
    fn of(looked: &LookedSource) -> Self {
        let mut planned = Self {
            source_snapshot_id: looked.source.to_string(),
            size_gib: looked.size_gib,
            action: "copy",
            snapshot_id: None,
            state: None,
            progress: None,
            reason: None,
        };
        match &looked.status {
            SourceStatus::HasCopy { copy, state, progress } => {
                planned.action = "has_copy";
                planned.snapshot_id = Some(copy.to_string());
                planned.state = Some(state.clone());
                planned.progress = progress.map(|p| format!("{p}%"));
            }
            SourceStatus::ToCopy { note } => planned.reason.clone_from(note),
            SourceStatus::NotReady { reason } => (planned.action, planned.reason) = ("not_ready", Some(reason.clone())),
            SourceStatus::Skipped { reason } => (planned.action, planned.reason) = ("skip", Some(reason.clone())),
            SourceStatus::Failed { reason } => (planned.action, planned.reason) = ("failed", Some(reason.clone())),
        }
        planned
    }
}

impl Plan {
    /// The answer to a dry run, from this plan (the look of a run): what a run would copy, skip
    /// and delete. `complete` says whether a run now would find nothing to do.
    pub fn dry_run_response(&self, wait_for_completion: bool) -> Response {
        let plan = self;
        let mut response =
            Response { dry_run: true, deletion_breaker: plan.deletion_breaker.clone(), ..Response::default() };
        for planned in &plan.sources {
            let source = planned.source_snapshot_id.clone();
            let reason = || planned.reason.clone().unwrap_or_default();
            match (planned.action, &planned.snapshot_id) {
                ("has_copy", Some(copy)) => {
                    response.snapshot_ids.push(copy.clone());
                    response.copies.push(CopyReport {
                        source_snapshot_id: source,
                        snapshot_id: copy.clone(),
                        state: planned.state.clone().unwrap_or_default(),
                        progress: planned.progress.clone(),
                        reused: true,
                    });
                }
                ("copy", _) => response.to_copy.push(source),
                ("not_ready", _) => response.pending_sources.push(source),
                ("skip", _) => response.skipped.push(SkippedSource { source_snapshot_id: source, reason: reason() }),
                ("failed", _) => response.failed.push(FailureReport {
                    source_snapshot_id: source,
                    snapshot_id: None,
                    error_snapshot_ids: Vec::new(),
                    error: reason(),
                    target_region: None,
                }),
                ("delete", Some(copy)) => response.deleted.push(DeletedCopy {
                    snapshot_id: copy.clone(),
                    source_snapshot_id: source,
                    reason: reason(),
                }),
                _ => response.deletions_left += 1,
            }
        }
        let waiting = wait_for_completion && response.copies.iter().any(|c| c.state != "completed");
        response.complete = response.to_copy.is_empty()
            && response.pending_sources.is_empty()
            && response.failed.is_empty()
            && response.deleted.is_empty()
            && response.deletions_left == 0
            && !waiting;
        response
    }
}

impl Plan {
    /// The plan for `sources` as the look found them; `start_order` is the engine's start
    /// queue (largest first), as indexes into `sources`.
    pub fn new(
        source_region: String,
        target_region: String,
        pending_limit: usize,
        sources: &[LookedSource],
        start_order: &[usize],
        model: CopyTimeModel,
    ) -> Self {
        let in_flight = sources.iter().filter_map(|s| match &s.status {
            SourceStatus::HasCopy { state, progress, .. } if state == "pending" => {
                Some(model.remaining(s.size_gib, progress.unwrap_or(0)))
            }
            _ => None,
        });
        let queued: Vec<Duration> = start_order.iter().map(|&i| model.duration(sources[i].size_gib)).collect();
        let makespan = largest_first_makespan(in_flight, &queued, pending_limit);
        Self {
            source_region,
            target_region,
            pending_limit,
            sources: sources.iter().map(PlannedSource::of).collect(),
            copies_to_make: start_order.len(),
            gib_to_copy: start_order.iter().map(|&i| sources[i].size_gib).sum(),
            estimated_seconds: makespan.as_secs_f64().ceil() as u64,
            copy_time_model: model.describe(),
            copies_to_delete: 0,
            gib_to_delete: 0,
            deletion_breaker: None,
        }
    }

    /// The plan with the deletion breaker's verdict.
    pub fn with_breaker(mut self, breaker: Option<crate::contract::response::DeletionBreaker>) -> Self {
        self.deletion_breaker = breaker;
        self
    }

    /// The plan with the copies retention would delete, one row each after the sources.
    pub fn with_deletions(mut self, deletions: &[PlannedDeletion]) -> Self {
        for deletion in deletions {
            let (action, reason) = match &deletion.later {
                None => ("delete", deletion.reason.clone()),
                Some(why) => ("delete_later", format!("{}; {why}", deletion.reason)),
            };
            if deletion.later.is_none() {
                self.copies_to_delete += 1;
                self.gib_to_delete += deletion.size_gib;
            }
            self.sources.push(PlannedSource {
                source_snapshot_id: deletion.source.to_string(),
                size_gib: deletion.size_gib,
                action,
                snapshot_id: Some(deletion.copy.to_string()),
                state: Some(deletion.state.clone()),
                progress: None,
                reason: Some(reason),
            });
        }
        self
    }
}

/// When the last copy would end: copies already in flight run on (they hold slots); queued
/// ones start in the given order, each as soon as fewer than `slots` run.
fn largest_first_makespan(
    in_flight: impl IntoIterator<Item = Duration>,
    queued: &[Duration],
    slots: usize,
) -> Duration {
    let mut running: BinaryHeap<Reverse<Duration>> = in_flight.into_iter().map(Reverse).collect();
    let mut end = running.iter().map(|r| r.0).max().unwrap_or_default();
    let mut now = Duration::ZERO;
    for &duration in queued {
        while running.len() >= slots.max(1) {
            let Some(Reverse(free)) = running.pop() else { break };
            now = now.max(free);
        }
        let finish = now.saturating_add(duration);
        end = end.max(finish);
        running.push(Reverse(finish));
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mins(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    #[test]
    fn queued_copies_fill_free_slots_in_order() {
        // Two slots: 10 and 8 start at once; 5 goes where 8 ends; 4 where 10 ends.
        let end = largest_first_makespan([], &[mins(10), mins(8), mins(5), mins(4)], 2);
        assert_eq!(end, mins(14));
    }

    #[test]
    fn copies_in_flight_hold_slots_even_beyond_the_limit() {
        // Three in flight with a limit of two: the queued copy starts when two remain, at 3.
        let end = largest_first_makespan([mins(3), mins(6), mins(1)], &[mins(4)], 2);
        assert_eq!(end, mins(7));
    }

    #[test]
    fn nothing_to_do_takes_no_time() {
        assert_eq!(largest_first_makespan([], &[], 5), Duration::ZERO);
    }

    #[test]
    fn the_model_counts_what_is_left_of_a_copy() {
        let model = CopyTimeModel::DEFAULT;
        assert_eq!(model.duration(30), Duration::from_secs(120 + 600));
        assert_eq!(model.remaining(30, 50), Duration::from_secs(360));
        assert_eq!(CopyTimeModel::at_gib_per_hour(360.0).per_gib, Duration::from_secs(10));
        assert_eq!(model.describe(), "120 s start-up + 180 GiB per hour for each copy");
    }
}
