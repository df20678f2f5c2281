//! A batch of new-snapshot events from the SQS queue: one reconcile for all its snapshots (one
//! look, the copies that fit started, no waiting), answered per record. A record whose
//! snapshots all have a copy started (or are gone, or can never be copied) is done; any other
//! is a batch item failure, so SQS delivers it again after the visibility timeout, the backoff
//! between tries, and only after `maxReceiveCount` tries the dead-letter queue. A record that
//! is not a snapshot event, or not readable, is logged and dropped: retrying cannot fix it, and
//! it must never fail the batch.

use std::collections::{BTreeMap, HashSet};

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::contract::error::CopySnapshotsError;
use crate::contract::event::{Invocation, MULTI_VOLUME_COMPLETION, SNAPSHOT_NOTIFICATION, parse_payload};
use crate::contract::request::{CopyRequest, RequestPayload, Settings};
use crate::contract::response::Response;
use crate::engine::progress::{LogObserver, StopSignal};
use crate::engine::{RunLimits, reconcile_observed};
use crate::ids::{Region, SnapshotId};
use crate::store::{SnapshotStore, SourceSelector};

/// Whether a payload is an SQS event (Lambda's event source mapping hands over `Records`, each
/// with `eventSource` `aws:sqs`).
pub fn is_sqs_event(payload: &Value) -> bool {
    payload.get("Records").and_then(Value::as_array).is_some_and(|records| {
        !records.is_empty() && records.iter().all(|r| r.get("eventSource").and_then(Value::as_str) == Some("aws:sqs"))
    })
}

/// What one batch came to.
#[derive(Debug)]
pub struct BatchOutcome {
    /// The answer to Lambda: the records to deliver again.
    pub answer: SqsBatchResponse,
    /// The reconciles' responses merged, for the metrics line (or the error that ended one).
    pub result: Result<Response, CopySnapshotsError>,
    /// Records dropped, with why (not a snapshot event, unreadable).
    pub dropped: Vec<(String, String)>,
    /// The event itself did not parse: the invocation fails, so Lambda hands the whole batch
    /// back (an empty answer would delete it).
    pub envelope_unreadable: bool,
}

impl BatchOutcome {
    /// The message ids SQS delivers again.
    pub fn failed_message_ids(&self) -> Vec<&str> {
        self.answer.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect()
    }
}

/// One record's snapshots, by its message id.
struct Record {
    message_id: String,
    region: Region,
    snapshots: Vec<SnapshotId>,
}

/// Handles one SQS batch: one reconcile per source region of its snapshots (a deployment's
/// events name one), with `max_wait_seconds` 0.
pub async fn handle_batch<S: SnapshotStore>(
    payload: Value,
    settings: &Settings,
    store: &S,
    deadline: Option<Instant>,
) -> BatchOutcome {
    let mut dropped = Vec::new();
    let event: SqsEvent = match serde_json::from_value(payload) {
        Ok(event) => event,
        Err(e) => {
            // No message ids, so nothing can be answered per record; an empty answer would
            // tell Lambda the whole batch succeeded and delete it. An error makes Lambda hand
            // the whole batch back instead.
            error!(error = %e, "an SQS event that does not parse; the whole batch is handed back");
            return BatchOutcome {
                answer: SqsBatchResponse::default(),
                result: Err(CopySnapshotsError::InvalidRequest(format!("the SQS event does not parse: {e}"))),
                dropped: Vec::new(),
                envelope_unreadable: true,
            };
        }
    };
    let mut records = Vec::new();
    let mut handed_back = Vec::new();
    for message in event.records {
        let Some(message_id) = message.message_id.filter(|id| !id.is_empty()) else {
            warn!("an SQS record without a message id is dropped: it cannot be reported as failed");
            continue;
        };
        match record_snapshots(message.body.as_deref(), settings) {
            Ok((region, snapshots)) => records.push(Record { message_id, region, snapshots }),
            Err(NotCopied::Drop(reason)) => {
                warn!(message_id, %reason, "SQS record dropped");
                dropped.push((message_id, reason));
            }
            Err(NotCopied::HandBack(reason)) => {
                error!(message_id, %reason, "a snapshot event this deployment refuses; handed back to the queue");
                handed_back.push(message_id);
            }
        }
    }
    let mut by_region: BTreeMap<Region, Vec<Record>> = BTreeMap::new();
    for record in records {
        by_region.entry(record.region.clone()).or_default().push(record);
    }
    let mut answer = SqsBatchResponse::default();
    answer.batch_item_failures.extend(handed_back.into_iter().map(item_failure));
    let mut merged: Option<Result<Response, CopySnapshotsError>> = None;
    for (region, records) in by_region {
        let result = reconcile_region(&region, &records, settings, store, deadline).await;
        let done: HashSet<&str> = match &result {
            Ok(response) => done_in_every_target(response),
            Err(e) => {
                error!(error_type = e.error_type(), error_message = %e, %region, "a batch's reconcile failed; its records are delivered again");
                HashSet::new()
            }
        };
        for record in &records {
            if !record.snapshots.iter().all(|id| done.contains(id.as_str())) {
                answer.batch_item_failures.push(item_failure(record.message_id.clone()));
            }
        }
        merged = Some(match merged {
            None => result,
            Some(merged) => merge(merged, result),
        });
    }
    let merged = merged.unwrap_or_else(|| Ok(Response { complete: true, ..Response::default() }));
    info!(records_failed = answer.batch_item_failures.len(), records_dropped = dropped.len(), "batch answered");
    BatchOutcome { answer, result: merged, dropped, envelope_unreadable: false }
}

/// A record SQS is to deliver again.
fn item_failure(message_id: String) -> BatchItemFailure {
    // The type is non-exhaustive: built from its default.
    let mut failure = BatchItemFailure::default();
    failure.item_identifier = message_id;
    failure
}

/// Why a record is not turned into snapshots to copy.
enum NotCopied {
    /// Retrying cannot help (not a snapshot event, unreadable, a failed snapshot result):
    /// the record is dropped.
    Drop(String),
    /// A snapshot event this deployment refuses as configured (a setting, an allowed region):
    /// the record is handed back, so it ends in the dead-letter queue, with its alarm, rather
    /// than vanishing with a log line.
    HandBack(String),
}

/// The source region and snapshots of one record's body: an EventBridge snapshot event.
fn record_snapshots(body: Option<&str>, settings: &Settings) -> Result<(Region, Vec<SnapshotId>), NotCopied> {
    let body = body.ok_or_else(|| NotCopied::Drop("the record has no body".to_owned()))?;
    let payload: Value =
        serde_json::from_str(body).map_err(|e| NotCopied::Drop(format!("the body is not JSON: {e}")))?;
    let detail_type = payload.get("detail-type").and_then(Value::as_str).map(str::to_owned);
    let Some(detail_type) = detail_type else {
        return Err(NotCopied::Drop("the body is not an EventBridge event".to_owned()));
    };
    match parse_payload(payload, settings) {
        Ok(Invocation::Copy(request)) => match request.sources {
            SourceSelector::Ids(ids) => Ok((request.source_region, ids)),
            SourceSelector::Filters(_) => Err(NotCopied::Drop("the event selects no snapshot ids".to_owned())),
        },
        Ok(Invocation::Ignore { reason }) => Err(NotCopied::Drop(reason)),
        Err(e) if [SNAPSHOT_NOTIFICATION, MULTI_VOLUME_COMPLETION].contains(&detail_type.as_str()) => {
            Err(NotCopied::HandBack(e.to_string()))
        }
        Err(e) => Err(NotCopied::Drop(e.to_string())),
    }
}

/// One reconcile for the records of one source region: their snapshots, each once, in the
/// order they arrived; everything else from the environment.
async fn reconcile_region<S: SnapshotStore>(
    region: &Region,
    records: &[Record],
    settings: &Settings,
    store: &S,
    deadline: Option<Instant>,
) -> Result<Response, CopySnapshotsError> {
    let mut seen = HashSet::new();
    let ids: Vec<String> = records
        .iter()
        .flat_map(|r| r.snapshots.iter())
        .filter(|id| seen.insert(*id))
        .map(|id| id.as_str().to_owned())
        .collect();
    let payload = RequestPayload {
        snapshot_ids: Some(ids),
        region: Some(region.as_str().to_owned()),
        // Start what fits and return: the queue's visibility timeout is the wait for a slot.
        max_wait_seconds: Some(0),
        ..RequestPayload::default()
    };
    let mut request = CopyRequest::check(payload, settings)?;
    request.from_event = true;
    request.from_queue = true;
    info!(%region, sources = seen.len(), records = records.len(), "batch of snapshot events");
    let limits = RunLimits {
        deadline,
        poll_interval: settings.poll_interval,
        max_poll_interval: settings.max_poll_interval,
        call_timeout: settings.call_timeout,
    };
    reconcile_observed(store, &request, limits, &LogObserver, StopSignal::never()).await
}

/// The sources with a copy started (or skipped) in every target of the request: a record is
/// done only when each of its snapshots is, everywhere.
fn done_in_every_target(response: &Response) -> HashSet<&str> {
    let mut per_target = response.by_target().into_iter().map(|(_, answer)| {
        answer
            .copies
            .iter()
            .map(|c| c.source_snapshot_id.as_str())
            .chain(answer.skipped.iter().map(|s| s.source_snapshot_id.as_str()))
            .collect::<HashSet<&str>>()
    });
    let first = per_target.next().unwrap_or_default();
    per_target.fold(first, |done, target| done.intersection(&target).copied().collect())
}

/// Two reconciles' responses as one, for the metrics: lists appended (target by target when
/// there are several); an error wins.
fn merge(
    left: Result<Response, CopySnapshotsError>,
    right: Result<Response, CopySnapshotsError>,
) -> Result<Response, CopySnapshotsError> {
    let (mut left, mut right) = match (left, right) {
        (Ok(left), Ok(right)) => (left, right),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    for (mine, theirs) in left.targets.iter_mut().zip(std::mem::take(&mut right.targets)) {
        mine.error = mine.error.take().or(theirs.error);
        merge_lists(&mut mine.response, theirs.response);
    }
    merge_lists(&mut left, right);
    Ok(left)
}

fn merge_lists(left: &mut Response, right: Response) {
    left.snapshot_ids.extend(right.snapshot_ids);
    left.copies.extend(right.copies);
    left.pending_sources.extend(right.pending_sources);
    left.failed.extend(right.failed);
    left.duplicates_removed.extend(right.duplicates_removed);
    left.skipped.extend(right.skipped);
    left.notes.extend(right.notes);
    left.complete &= right.complete;
}
