//! The answer: the response built from the run's state, with the notes on why sources were left
//! waiting, and the error an event, a failure or a pending source calls for. Consumes the run;
//! changes nothing in EC2.

use tokio::time::Instant;
use tracing::{info, warn};

use crate::contract::error::CopySnapshotsError;
use crate::contract::request::CopyRequest;
use crate::contract::response::{
    CopyReport, DeletedCopy, FailureReport, NotDeletedCopy, RecoveryPoint, Response, SkippedSource, plural,
};
use crate::contract::response::{TargetError, TargetResponse};
use crate::contract::targets::Target;
use crate::engine::progress::SourceStatus;
use crate::store::{SnapshotState, SnapshotStore, SourceSelector};

use super::deletion::{Deletion, DeletionOutcome};
use super::entry::Stage;
use super::state::Run;

impl<'a, S: SnapshotStore> Run<'a, S> {
    /// Why sources were left waiting, when the reason is not the copy quota doing its job: the
    /// invocation was too short to start anything, EC2 throttled it, or other invocations'
    /// copies fill this deployment's `pending_limit`.
    pub(super) fn notes_for(&self) -> Vec<String> {
        let waiting = self.waiting_count();
        if waiting == 0 {
            return Vec::new();
        }
        let waiting_text = plural(waiting, "source");
        let mut notes = Vec::new();
        if self.throttled_calls > 0 {
            notes.push(format!(
                "EC2 throttled {} beyond the SDK's retries; this invocation backed off and left {waiting_text} for the next",
                plural(self.throttled_calls, "call")
            ));
        }
        if let Some((pending, others)) = self.deployment_pending()
            && pending >= self.target.pending_limit
            && others > 0
        {
            notes.push(format!(
                "this deployment has {pending} copies pending in {} (pending_limit {}; {others} started by other \
                 invocations); {waiting_text} wait for a slot",
                self.target.place.region, self.target.pending_limit
            ));
        }
        if self.ledger_failures > 0 {
            notes.push(format!(
                "the slot ledger did not answer in {} (no copy starts without a reserved slot); {waiting_text} wait \
                 for the next",
                plural(self.ledger_failures, "round")
            ));
        }
        let ran_out =
            !self.timeline.may_call() || self.timeline.work_until().is_some_and(|until| Instant::now() >= until);
        if self.copies_started() == 0 && ran_out && !self.held_until_next_poll() {
            let total = self.timeline.total().map_or(String::new(), |t| format!("'s {:.1} s", t.as_secs_f64()));
            notes.push(format!(
                "the invocation{total} left no time to start a copy after the look; {waiting_text} wait for the next \
                 invocation (a Lambda Timeout of 30 s or more lets every invocation start copies)"
            ));
        }
        notes
    }

    /// This target's answer: where each of its sources stands, its deletions and notes, and
    /// the error it `ended` with, if one stopped it while other targets went on.
    pub(super) fn answer(self, ended: Option<CopySnapshotsError>) -> TargetAnswer {
        let started = self.copies_started();
        let mut response = Response::default();
        self.answer_sources(&mut response);
        let all_done = !self.request.wait_for_completion || self.pending_copies().next().is_none();
        response.notes = self.notes_for();
        if let Some(why) = self.deletions_blocked()
            && self.breaker.is_none()
        {
            response.notes.push(why);
        }
        response.duplicates_removed = self.duplicates_removed;
        response.skipped = self
            .skipped
            .iter()
            .filter_map(|looked| match &looked.status {
                SourceStatus::Skipped { reason } => {
                    Some(SkippedSource { source_snapshot_id: looked.source.to_string(), reason: reason.clone() })
                }
                _ => None,
            })
            .collect();
        let held_by_breaker = self.breaker.is_some();
        response.deletion_breaker = self.breaker;
        answer_deletions(self.deletions, held_by_breaker, &mut response);
        response.complete = response.pending_sources.is_empty()
            && response.failed.is_empty()
            && all_done
            && response.deletions_left == 0;
        info!(
            target_region = %self.target.place.region,
            copies = response.copies.len(),
            started,
            pending_sources = response.pending_sources.len(),
            failed = response.failed.len(),
            duplicates_removed = response.duplicates_removed.len(),
            skipped = response.skipped.len(),
            deleted = response.deleted.len(),
            not_deleted = response.not_deleted.len(),
            deletions_left = response.deletions_left,
            complete = response.complete,
            "done"
        );
        for note in &response.notes {
            warn!(target_region = %self.target.place.region, %note, "sources left for the next invocation");
        }
        TargetAnswer { target: self.target.describe(), response, all_done, ended }
    }

    /// Each source's line of the answer (its copy, its failure, or pending), and the recovery
    /// point of a request by filters.
    fn answer_sources(&self, response: &mut Response) {
        for entry in &self.entries {
            let source_id = entry.source.id.to_string();
            match &entry.stage {
                Stage::Copying { copy, reused } => {
                    response.snapshot_ids.push(copy.id.to_string());
                    response.copies.push(CopyReport {
                        source_snapshot_id: source_id,
                        snapshot_id: copy.id.to_string(),
                        state: copy.state.as_str().to_owned(),
                        progress: copy.progress.map(|p| format!("{p}%")),
                        reused: *reused,
                    });
                }
                Stage::Failed { copy_id, reason } => response.failed.push(FailureReport {
                    source_snapshot_id: source_id,
                    snapshot_id: copy_id.as_ref().map(ToString::to_string),
                    error_snapshot_ids: entry.error_copies.iter().map(|e| e.id.to_string()).collect(),
                    error: reason.clone(),
                    target_region: None,
                }),
                Stage::Waiting | Stage::NotReady | Stage::Unsure { .. } => response.pending_sources.push(source_id),
            }
        }
        // For the recovery-point metric: a source counts as copied once its copy is completed.
        // Only a request by filters selects the whole set the metric is about.
        if let SourceSelector::Filters(_) = self.request.sources {
            let oldest = crate::contract::response::oldest_uncopied(self.entries.iter().map(|e| {
                (
                    e.source.start_time,
                    matches!(&e.stage, Stage::Copying { copy, .. } if copy.state == SnapshotState::Completed),
                )
            }));
            response.recovery_point = oldest.map_or(RecoveryPoint::AllCopied, RecoveryPoint::OldestUncopied);
        }
    }
}

/// The deletions' lines of the answer: deleted, not deleted (with why), or left for a later run.
fn answer_deletions(deletions: Vec<Deletion>, held_by_breaker: bool, response: &mut Response) {
    for deletion in deletions {
        let (snapshot_id, source_snapshot_id) = (deletion.copy.to_string(), deletion.source.to_string());
        let not_deleted = |error: String, image_id: Option<String>| NotDeletedCopy {
            snapshot_id: snapshot_id.clone(),
            source_snapshot_id: source_snapshot_id.clone(),
            reason: deletion.reason.clone(),
            error,
            image_id,
        };
        match deletion.outcome {
            DeletionOutcome::Deleted => {
                response.deleted.push(DeletedCopy { snapshot_id, source_snapshot_id, reason: deletion.reason });
            }
            DeletionOutcome::AlreadyGone => {}
            DeletionOutcome::InUse(image) => response
                .not_deleted
                .push(not_deleted(format!("in use by {image}, a registered AMI; deregister it first"), Some(image))),
            DeletionOutcome::Refused(error) => response.not_deleted.push(not_deleted(error, None)),
            DeletionOutcome::Denied(error) => {
                response.deletions_denied += 1;
                response.not_deleted.push(not_deleted(error, None));
            }
            // Held by the breaker: not work a later run of the same request does, so not
            // left (a Step Functions loop would never end); the answer says why.
            DeletionOutcome::Due if held_by_breaker => {}
            DeletionOutcome::Due | DeletionOutcome::Unsure => response.deletions_left += 1,
        }
    }
}

/// One target's answer, whether it waited for everything it was asked to, and the error that
/// stopped it (several targets only).
pub(super) struct TargetAnswer {
    /// The target, for messages.
    target: String,
    response: Response,
    all_done: bool,
    ended: Option<CopySnapshotsError>,
}

impl TargetAnswer {
    /// Adds what the answer should say besides its copies (a share left for the next run).
    pub(super) fn add_notes(&mut self, notes: &[String]) {
        self.response.notes.extend(notes.iter().cloned());
    }
}

/// The invocation's answer from its targets' answers (one target's as it is, several nested):
/// `SourcesPending` for an event whose sources are not all started in every target; the first
/// target's error when an error stopped every target (one that stopped only some is in their
/// answers, `complete` false, and each one's EMF line counts it); `CopyFailed` when failures
/// remain and no target has anything left to do.
pub(super) fn conclude(request: &CopyRequest, answers: Vec<TargetAnswer>) -> Result<Response, CopySnapshotsError> {
    let several = answers.len() > 1;
    let pending: Vec<String> = answers
        .iter()
        .filter(|a| !a.response.pending_sources.is_empty())
        .map(|a| a.response.sources_pending_message(&a.target))
        .collect();
    let all_done = answers.iter().all(|a| a.all_done);
    let failed: Vec<String> = answers
        .iter()
        .filter(|a| !a.response.failed.is_empty())
        .map(|a| a.response.copy_failed_message(&a.target))
        .collect();
    let all_ended = several && answers.iter().all(|a| a.ended.is_some());
    let mut first_ended = None;
    let mut parts = Vec::with_capacity(answers.len());
    for answer in answers {
        let error = answer
            .ended
            .as_ref()
            .map(|e| TargetError { error_type: e.error_type().to_owned(), error_message: e.to_string() });
        if let Some(ended) = answer.ended {
            first_ended.get_or_insert((ended, answer.target));
        }
        parts.push((answer.response, error));
    }
    let response = combine(&request.targets, parts);
    if request.from_queue {
        // A batch answers per record (its handler turns pending and failed sources into batch
        // item failures); no error would say more.
        return Ok(response);
    }
    if request.from_event && !pending.is_empty() {
        let message = pending.join("; ");
        return Err(CopySnapshotsError::SourcesPending { message, response: Box::new(response) });
    }
    if let Some((error, target)) = first_ended
        && all_ended
    {
        return Err(naming_target(error, &target));
    }
    if !failed.is_empty() && pending.is_empty() && all_done {
        let message = failed.join("; ");
        return Err(CopySnapshotsError::CopyFailed { message, response: Box::new(response) });
    }
    Ok(response)
}

/// `error` with its message naming `target` (one of several).
pub(super) fn naming_target(error: CopySnapshotsError, target: &str) -> CopySnapshotsError {
    use CopySnapshotsError as E;
    let named = |message: String| format!("{target}: {message}");
    match error {
        E::InvalidRequest(m) => E::InvalidRequest(named(m)),
        E::SourceNotFound(m) => E::SourceNotFound(named(m)),
        E::SourceNotReady(m) => E::SourceNotReady(named(m)),
        E::AccessDenied(m) => E::AccessDenied(named(m)),
        E::Throttled(m) => E::Throttled(named(m)),
        E::Ec2Error(m) => E::Ec2Error(named(m)),
        other @ (E::CopyFailed { .. } | E::SourcesPending { .. }) => other,
    }
}

/// The answer of a request from its targets' answers (each with the error that stopped it), in
/// the order of `targets`: one target's as it is, several nested (see [`Response::targets`]).
pub(super) fn combine(targets: &[Target], mut answers: Vec<(Response, Option<TargetError>)>) -> Response {
    if answers.len() == 1
        && let Some((only, _)) = answers.pop()
    {
        return only;
    }
    let mut all = Response { complete: true, ..Response::default() };
    for (target, (answer, error)) in targets.iter().zip(answers) {
        all.snapshot_ids.extend(answer.snapshot_ids.iter().cloned());
        all.complete &= answer.complete && error.is_none();
        all.dry_run |= answer.dry_run;
        all.deletions_denied += answer.deletions_denied;
        all.recovery_point = all.recovery_point.worst_with(answer.recovery_point, all.targets.is_empty());
        all.notes.extend(answer.notes.iter().map(|note| format!("{}: {note}", target.place)));
        all.targets.push(TargetResponse {
            target_region: target.place.region.to_string(),
            account: target.place.account().map(str::to_owned),
            error,
            response: answer,
        });
    }
    all
}
