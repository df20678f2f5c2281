//! Step 1, the look: resolves each target's key, the request's sources (once for every
//! target), builds each target's run, and finds the copies earlier invocations made there
//! (judging retention first when there is one).
//! May change: everything (it builds the state); after it, the entries and the queue.

use std::collections::{HashMap, HashSet};

use tracing::{debug, warn};

use crate::contract::error::CopySnapshotsError;
use crate::contract::request::CopyRequest;
use crate::contract::response::plural;
use crate::contract::targets::Target;
use crate::engine::ownership::AskedEncryption;
use crate::engine::progress::{LookedSource, RunEvent, SourceStatus};
use crate::engine::timeline::Timeline;
use crate::ids::{SnapshotId, shorten};
use crate::store::{
    SOURCE_REGION_TAG, SOURCE_SNAPSHOT_TAG, SnapshotState, SnapshotStore, SourceSelector, SourceSnapshot, StoreError,
};

use super::entry::{Entry, Stage};
use super::fatal::fatal;
use super::limits::MAX_ATTEMPTS;
use super::state::{Run, Shared};

/// The request's sources as the look found them, for every target alike: each source's entry
/// (waiting, not ready, or failed before any copy) and what the look skipped.
pub(super) struct LookedUp {
    entries: Vec<Entry>,
    skipped: Vec<LookedSource>,
}

/// Looks up the request's sources in the source region, once for all its targets.
pub(super) async fn look_sources<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    timeline: &Timeline,
) -> Result<LookedUp, CopySnapshotsError> {
    let region = &request.source_region;
    let doing = format!("looking up {} in {region}", describe_selector(&request.sources));
    let found = timeline.call_retrying(|| store.describe_sources(region, &request.sources)).await;
    let found = found.map_err(|e| match e {
        // A definite refusal of the request's own filters or ids (a misspelled filter name, a
        // bad value) fails the same way on every retry: the request must change.
        StoreError::Refused { code, message } => CopySnapshotsError::InvalidRequest(format!(
            "EC2 refused {doing}: {code}: {message}; valid: DescribeSnapshots filter names (`tag:<key>`, `tag-key`, \
             `volume-id`, `status`, … as the EC2 API reference lists them), at most 200 values each; nothing was \
             copied"
        )),
        other => look_failed(other, &doing, timeline),
    })?;
    let (entries, skipped) = match &request.sources {
        SourceSelector::Ids(ids) => entries_for_ids(ids, found, request)?,
        SourceSelector::Filters(_) => entries_for_filters(found),
    };
    debug!(sources = entries.len(), "sources resolved");
    Ok(LookedUp { entries, skipped })
}

impl<'a, S: SnapshotStore> Run<'a, S> {
    /// One target's look: its run over the sources looked up, and the copies earlier
    /// invocations made there, live and failed. The run comes back whatever the look's
    /// outcome: a target whose look failed answers with its sources not started.
    pub(super) async fn look(
        shared: Shared<'a, S>,
        sources: &LookedUp,
        span: tracing::Span,
    ) -> (Self, Result<(), CopySnapshotsError>) {
        let mut run = Self::new(shared, sources.entries.clone(), sources.skipped.clone(), span);
        if let Err(error) = run.look_for_earlier_copies().await {
            return (run, Err(error));
        }
        run.queue_waiting();
        run.observer.observe(RunEvent::Looked { sources: run.looked_sources() });
        (run, Ok(()))
    }

    /// A target whose look could not begin (its key could not be looked at): its run over the
    /// sources, none started, with the error that stops it.
    pub(super) fn not_looked(
        shared: Shared<'a, S>,
        sources: &LookedUp,
        span: tracing::Span,
        error: CopySnapshotsError,
    ) -> (Self, Result<(), CopySnapshotsError>) {
        (Self::new(shared, sources.entries.clone(), sources.skipped.clone(), span), Err(error))
    }

    /// Finds the copies earlier invocations made of the sources still waiting, and adopts them;
    /// with a retention, judges every copy from the source region first (one listing serves
    /// both).
    async fn look_for_earlier_copies(&mut self) -> Result<(), CopySnapshotsError> {
        let (store, request, target, timeline) = (self.store, self.request, self.target, self.timeline);
        let region = &request.source_region;
        let doing = format!("looking for earlier copies in {}", target.place);
        if target.retention.is_set() {
            // Retention judges every copy from this region, whatever its source: one listing
            // serves that and the look for earlier copies alike.
            let copies = timeline
                .call_retrying(|| store.list_copies(&target.place, region))
                .await
                .map_err(|e| look_failed(e, &doing, &timeline))?;
            self.judge_retention(&copies).await;
            let wanted: HashSet<&SnapshotId> = self.waiting_sources().collect();
            let existing = copies.iter().filter(|c| wanted.contains(&c.source_id)).cloned().collect();
            self.adopt(existing, true);
        } else {
            let wanted: Vec<SnapshotId> = self.waiting_sources().cloned().collect();
            if !wanted.is_empty() {
                let existing = timeline
                    .call_retrying(|| store.find_copies(&target.place, region, &wanted))
                    .await
                    .map_err(|e| look_failed(e, &doing, &timeline))?;
                self.adopt(existing, true);
            }
        }
        Ok(())
    }
}

/// Entries for requested ids, in request order; all must exist and be ready, except in a batch
/// of queued events, where a snapshot gone since its event is skipped and one not ready yet
/// waits. A snapshot that is itself one of this project's copies is never a source: skipped.
pub(super) fn entries_for_ids(
    ids: &[SnapshotId],
    found: Vec<SourceSnapshot>,
    request: &CopyRequest,
) -> Result<(Vec<Entry>, Vec<LookedSource>), CopySnapshotsError> {
    let mut by_id: HashMap<SnapshotId, SourceSnapshot> = found.into_iter().map(|s| (s.id.clone(), s)).collect();
    let mut skipped = Vec::new();
    let missing: Vec<&SnapshotId> = ids.iter().filter(|id| !by_id.contains_key(*id)).collect();
    if request.from_queue {
        for id in missing {
            let reason = format!("not found in {} (deleted since its event, or not visible)", request.source_region);
            skipped.push(LookedSource { source: id.clone(), size_gib: 0, status: SourceStatus::Skipped { reason } });
        }
    } else if !missing.is_empty() {
        let missing: Vec<&str> = missing.into_iter().map(SnapshotId::as_str).collect();
        return Err(CopySnapshotsError::SourceNotFound(format!(
            "{} not found in {} (or not visible to this account): {}; nothing was copied",
            plural(missing.len(), "snapshot"),
            request.source_region,
            missing.join(", ")
        )));
    }
    let mut entries = Vec::with_capacity(ids.len());
    let mut not_ready = Vec::new();
    for id in ids {
        let Some(source) = by_id.remove(id) else { continue };
        if let Some(reason) = own_copy_reason(&source) {
            skipped.push(LookedSource {
                source: source.id.clone(),
                size_gib: source.size_gib,
                status: SourceStatus::Skipped { reason },
            });
            continue;
        }
        match not_ready_reason(&source) {
            None => entries.push(Entry::new(source, Stage::Waiting)),
            Some(_) if request.from_queue && source.state == SnapshotState::Pending => {
                entries.push(Entry::new(source, Stage::NotReady));
            }
            Some(why) if request.from_queue => {
                skipped.push(LookedSource {
                    source: source.id.clone(),
                    size_gib: source.size_gib,
                    status: SourceStatus::Skipped { reason: format!("cannot be copied: {why}") },
                });
            }
            Some(why) => not_ready.push(format!("{} {why}", source.id)),
        }
    }
    if !not_ready.is_empty() {
        return Err(CopySnapshotsError::SourceNotReady(format!(
            "{} not ready to copy: {}; copy once they are `completed` (and in the standard tier); nothing was copied",
            plural(not_ready.len(), "snapshot"),
            not_ready.join("; ")
        )));
    }
    Ok((entries, skipped))
}

/// Why a snapshot is never a source: it carries this project's tracking tag, so it is a copy
/// some deployment of this function made. Copying it again would never end when two stacks
/// copy both ways (A to B and B to A), or within one region.
pub(super) fn own_copy_reason(source: &SourceSnapshot) -> Option<String> {
    source.tag(SOURCE_SNAPSHOT_TAG).map(|of| {
        let from = source.tag(SOURCE_REGION_TAG).unwrap_or("another region");
        format!("a copy this function made (of {of} from {from}); copies are never copied again")
    })
}

/// Entries for what the filters matched, sorted by id for a stable order. Snapshots not yet
/// completed wait for a later invocation; ones that never will be are left out, and returned
/// with why.
pub(super) fn entries_for_filters(mut found: Vec<SourceSnapshot>) -> (Vec<Entry>, Vec<LookedSource>) {
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found.dedup_by(|a, b| a.id == b.id);
    let mut skipped = Vec::new();
    let mut skip = |source: &SourceSnapshot, reason: String| {
        skipped.push(LookedSource {
            source: source.id.clone(),
            size_gib: source.size_gib,
            status: SourceStatus::Skipped { reason },
        });
    };
    let mut entries = Vec::new();
    for source in found {
        // This project's copies match the same filters (with copy_tags, or a filter on a tag
        // every snapshot carries): within one region, or with stacks copying both ways,
        // copying them again would never end.
        if let Some(reason) = own_copy_reason(&source) {
            debug!(snapshot = %source.id, "skipping a copy this function made");
            skip(&source, reason);
            continue;
        }
        match (&source.state, source.archived) {
            (SnapshotState::Completed, false) => entries.push(Entry::new(source, Stage::Waiting)),
            (SnapshotState::Pending, _) => entries.push(Entry::new(source, Stage::NotReady)),
            _ => {
                warn!(snapshot = %source.id, state = source.state.as_str(), archived = source.archived, "skipping a snapshot that cannot be copied");
                let reason = not_ready_reason(&source).unwrap_or_else(|| "cannot be copied".to_owned());
                skip(&source, reason);
            }
        }
    }
    (entries, skipped)
}

pub(super) fn not_ready_reason(source: &SourceSnapshot) -> Option<String> {
    if source.archived {
        return Some("is in the archive tier; restore it first".to_owned());
    }
    (source.state != SnapshotState::Completed).then(|| format!("is {}", source.state.as_str()))
}

/// The target's encryption, its key resolved in the target region (kms:DescribeKey) to the
/// key ARN its copies must be under: an alias names one key, not any. A key that does not
/// exist, cannot be described, is not enabled or cannot encrypt a volume is a bad request,
/// refused before any copy.
pub(super) async fn resolve_encryption<S: SnapshotStore>(
    store: &S,
    target: &Target,
    timeline: &Timeline,
) -> Result<AskedEncryption, CopySnapshotsError> {
    let key = match (&target.kms_key, target.encrypt) {
        (_, false) => return Ok(AskedEncryption::Plain),
        (None, true) => return Ok(AskedEncryption::DefaultKey),
        (Some(key), true) => key.as_str(),
    };
    let target = &target.place;
    let valid = format!(
        "valid: the key id, key ARN, alias name or alias ARN of an enabled symmetric encryption key in {target} \
         that this function's role may describe (kms:DescribeKey; the stack's KmsKeyArns); nothing was copied"
    );
    let invalid = |what: String| CopySnapshotsError::InvalidRequest(format!("kms_key_id: {what}; {valid}"));
    match timeline.call_retrying(|| store.describe_key(target, key)).await {
        Ok(found) if let Some(reason) = found.unusable_reason() => {
            Err(invalid(format!("`{}` names the key {}, which {reason}", shorten(key), found.arn)))
        }
        Ok(found) => {
            debug!(key, arn = %found.arn, "KMS key resolved");
            Ok(AskedEncryption::Key { given: key.to_owned(), arn: found.arn })
        }
        Err(StoreError::NotFound(message)) => {
            Err(invalid(format!("no key `{}` in {target} ({message})", shorten(key))))
        }
        // The key policy or the role does not let this function describe the key: as the
        // issue asks, a bad request (the key must be one the stack allows). Expired or unknown
        // credentials are not the key's fault: AccessDenied, as for any other call.
        Err(StoreError::AccessDenied(message)) if message.starts_with("AccessDeniedException") => {
            Err(invalid(format!("`{}` cannot be described in {target} ({message})", shorten(key))))
        }
        Err(StoreError::Refused { code, message }) => {
            Err(invalid(format!("`{}` cannot be described in {target} ({code}: {message})", shorten(key))))
        }
        Err(other) => Err(look_failed(other, &format!("describing the KMS key {key} in {target}"), timeline)),
    }
}

/// Maps an error of the look (before any copy) to its errorType. A look cut off by the
/// deadline says that the invocation was too short, and what would do.
pub(super) fn look_failed(error: StoreError, doing: &str, timeline: &Timeline) -> CopySnapshotsError {
    if let (StoreError::Unknown(message), Some(total)) = (&error, timeline.total())
        && !timeline.may_call()
    {
        return CopySnapshotsError::Ec2Error(format!(
            "the invocation's {:.1} s ran out {doing}: {message}; nothing was copied; give the function more time \
             (a Lambda Timeout of 30 s or more lets every invocation look and start copies)",
            total.as_secs_f64()
        ));
    }
    fatal(error, doing, 0)
}

/// Names the request's sources for messages: its filters, or how many ids.
pub(super) fn describe_selector(selector: &SourceSelector) -> String {
    match selector {
        SourceSelector::Ids(ids) => format!("the {}", plural(ids.len(), "requested snapshot")),
        SourceSelector::Filters(filters) => {
            let shown: Vec<String> =
                filters.iter().map(|f| format!("{}={}", shorten(&f.name), shorten(&f.values.join(",")))).collect();
            format!("the snapshots matching filters {}", shown.join(" "))
        }
    }
}

impl<S: SnapshotStore> Run<'_, S> {
    /// Where each source stands, as the look's report and the plan show it.
    pub(super) fn looked_sources(&self) -> Vec<LookedSource> {
        let looked = self.entries.iter().map(|entry| {
            let status = match &entry.stage {
                Stage::Copying { copy, .. } => SourceStatus::HasCopy {
                    copy: copy.id.clone(),
                    state: copy.state.as_str().to_owned(),
                    progress: copy.progress,
                },
                Stage::Waiting | Stage::Unsure { .. } => SourceStatus::ToCopy { note: to_copy_note(entry) },
                Stage::NotReady => SourceStatus::NotReady {
                    reason: format!("is {}; a later run copies it once it is completed", entry.source.state.as_str()),
                },
                Stage::Failed { reason, .. } => SourceStatus::Failed { reason: reason.clone() },
            };
            LookedSource { source: entry.source.id.clone(), size_gib: entry.source.size_gib, status }
        });
        looked.chain(self.skipped.iter().cloned()).collect()
    }
}

/// Why a source this run copies has no usable copy, when there is more to say than "none".
fn to_copy_note(entry: &Entry) -> Option<String> {
    (!entry.error_copies.is_empty())
        .then(|| format!("{} of {MAX_ATTEMPTS} attempts ended in error before", entry.error_copies.len()))
}
