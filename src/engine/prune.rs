//! The safeguards on retention's deletions and the deleting: the AMI check and the deletion
//! breaker (run when the look has judged), the newest completed copy of each volume held back;
//! then the deletions, in the time the run would otherwise wait; and the plan's list of them.
//! May change: the deletions' outcomes, the breaker, `images_unknown`.

use std::collections::HashSet;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::contract::response::DeletionBreaker;
use crate::engine::plan::PlannedDeletion;
use crate::engine::progress::RunEvent;
use crate::ids::SnapshotId;
use crate::store::{DeleteOutcome, SnapshotState, SnapshotStore, StoreError};

use super::deletion::{DeletionOutcome, SOURCE_GROUP_PREFIX, volume_group};
use super::entry::Stage;
use super::limits::{BREAKER_MIN_DELETIONS, BREAKER_SHARE_DENOMINATOR};
use super::state::Run;

impl<'a, S: SnapshotStore> Run<'a, S> {
    /// One DescribeImages for every copy that may be deleted: a copy a registered AMI uses
    /// stays (reported in `not_deleted` with the AMI). Without an answer, nothing is deleted.
    pub(super) async fn check_images(&mut self) {
        let candidates: Vec<SnapshotId> = self
            .deletions
            .iter()
            .filter(|d| d.outcome == DeletionOutcome::Due && d.state != SnapshotState::Pending)
            .map(|d| d.copy.clone())
            .collect();
        if candidates.is_empty() {
            return;
        }
        let target = &self.target.place;
        match self.timeline.call_retrying(|| self.store.images_using(target, &candidates)).await {
            Ok(using) => {
                for deletion in &mut self.deletions {
                    if let Some(image) = using.get(&deletion.copy) {
                        deletion.outcome = DeletionOutcome::InUse(image.clone());
                    }
                }
            }
            Err(error) => {
                warn!(%error, "could not tell which copies an AMI uses; none is deleted this run");
                self.images_unknown = Some(error.to_string());
            }
        }
    }

    /// The deletion breaker: more than [`BREAKER_MIN_DELETIONS`] and more than a quarter of
    /// the `managed` copies (this request's, from this source region) is not what a schedule
    /// does; it is what a source-side incident or a wrong request looks like. None is deleted,
    /// unless the request says `allow_mass_deletion`.
    pub(super) fn check_breaker(&mut self, managed: usize) {
        let would_delete = self.deletions.iter().filter(|d| d.outcome == DeletionOutcome::Due).count();
        if would_delete <= BREAKER_MIN_DELETIONS || would_delete * BREAKER_SHARE_DENOMINATOR <= managed {
            return;
        }
        if self.request.allow_mass_deletion {
            warn!(would_delete, managed, "a mass deletion, allowed by the request");
            return;
        }
        let message = format!(
            "deletion breaker: this run would delete {would_delete} of the {managed} copies it manages (more than \
             {BREAKER_MIN_DELETIONS} and more than 1/{BREAKER_SHARE_DENOMINATOR} of them), so it deletes none; if that \
             is meant (a retention turned on over a backlog), check the list with `dry_run: true` and \
             `allow_mass_deletion: true`, then run with `allow_mass_deletion: true`"
        );
        warn!(would_delete, managed, "{message}");
        self.breaker = Some(DeletionBreaker { would_delete, managed, message });
    }

    /// Deletions that must wait: the newest completed copy of each volume (of this request,
    /// counting copies that completed during this run) is never deleted, so a volume always
    /// keeps a recovery copy, whatever happened to its snapshots in the source region. Only the
    /// orphan rule, once DescribeVolumes has said the volume itself is gone, may take it.
    /// Indexes into `deletions`.
    pub(super) fn held_back(&self) -> HashSet<usize> {
        let mut newest = self.newest_completed.clone();
        for entry in &self.entries {
            let Stage::Copying { copy, .. } = &entry.stage else { continue };
            if copy.state != SnapshotState::Completed {
                continue;
            }
            let group = volume_group(entry.source.volume_id.as_deref(), &entry.source.id);
            let rank = (entry.source.start_time, copy.id.clone());
            if newest.get(&group).is_none_or(|n| *n < rank) {
                newest.insert(group, rank);
            }
        }
        self.deletions
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                d.outcome == DeletionOutcome::Due
                    && !d.volume_gone
                    && newest.get(&d.group).is_some_and(|(_, copy)| *copy == d.copy)
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Why this run deletes nothing at all, if it does not: the breaker holds, or DescribeImages
    /// did not answer.
    pub(super) fn deletions_blocked(&self) -> Option<String> {
        if let Some(breaker) = &self.breaker {
            return Some(breaker.message.clone());
        }
        self.images_unknown.as_ref().map(|error| {
            format!("could not tell which copies an AMI uses ({error}); no copy was deleted, the next run tries again")
        })
    }

    /// Deletes what retention deletes, until `until` (the next poll; the end of the work), the
    /// stop signal or the last moment a call may start: whatever is left, the next run deletes.
    /// A refusal (locked, access denied) is reported and skipped; throttling ends this round of
    /// deletions; none of it fails the run.
    pub(super) async fn prune(&mut self, until: Option<Instant>) {
        if !self.deletions.iter().any(|d| d.outcome == DeletionOutcome::Due) || self.deletions_blocked().is_some() {
            return;
        }
        let held = self.held_back();
        for i in 0..self.deletions.len() {
            let deletion = &self.deletions[i];
            let deletable = matches!(deletion.state, SnapshotState::Completed | SnapshotState::Error);
            if deletion.outcome != DeletionOutcome::Due || !deletable || held.contains(&i) {
                continue;
            }
            if until.is_some_and(|until| Instant::now() >= until) || !self.may_call() || self.stop.is_set() {
                break;
            }
            let result = self.timeline.call(self.store.delete_copy(&self.target.place, &deletion.copy)).await;
            let deletion = &mut self.deletions[i];
            let (source, copy) = (deletion.source.clone(), deletion.copy.clone());
            match result {
                Ok(DeleteOutcome::Deleted) => {
                    self.observer.observe(RunEvent::CopyDeleted { source, copy, reason: deletion.reason.clone() });
                    deletion.outcome = DeletionOutcome::Deleted;
                }
                Ok(DeleteOutcome::AlreadyGone) => {
                    info!(%copy, "the copy was already gone (InvalidSnapshot.NotFound); not a deletion of this run");
                    deletion.outcome = DeletionOutcome::AlreadyGone;
                }
                Err(StoreError::Throttled(message)) => {
                    warn!(%copy, %message, "EC2 throttled a deletion; the rest wait for the next round");
                    break;
                }
                Err(StoreError::Unknown(message)) => {
                    warn!(%copy, %message, "a deletion had no definite answer; the next run sees whether it went");
                    deletion.outcome = DeletionOutcome::Unsure;
                }
                Err(StoreError::AccessDenied(message)) => {
                    let error = format!("access denied: {message}");
                    warn!(%copy, %error, "the role may not delete this copy; CopiesNotDeleted counts it");
                    self.observer.observe(RunEvent::DeleteRefused { source, copy, error: error.clone() });
                    deletion.outcome = DeletionOutcome::Denied(error);
                }
                Err(refusal) => {
                    let error = refusal.to_string();
                    self.observer.observe(RunEvent::DeleteRefused { source, copy, error: error.clone() });
                    deletion.outcome = DeletionOutcome::Refused(error);
                }
            }
        }
    }

    /// The deletions a run would make now, and those it would make later, for the plan.
    pub(super) fn planned_deletions(&self) -> Vec<PlannedDeletion> {
        let held = self.held_back();
        let blocked = self.deletions_blocked();
        self.deletions
            .iter()
            .enumerate()
            .filter(|(_, d)| d.outcome == DeletionOutcome::Due)
            .map(|(i, d)| PlannedDeletion {
                copy: d.copy.clone(),
                source: d.source.clone(),
                size_gib: d.size_gib,
                state: d.state.as_str().to_owned(),
                reason: d.reason.clone(),
                later: if let Some(why) = &blocked {
                    Some(why.clone())
                } else if d.state == SnapshotState::Pending {
                    Some("the copy is still pending: a run after it completes deletes it".to_owned())
                } else if held.contains(&i) {
                    Some(format!(
                        "the newest completed copy of {}, kept until a newer copy of it completes",
                        d.group.strip_prefix(SOURCE_GROUP_PREFIX).map_or(d.group.as_str(), |_| "its source")
                    ))
                } else {
                    None
                },
            })
            .collect()
    }
}
