//! Turns an invocation payload into work: a direct request (manual invoke, Step Functions,
//! schedule Input), or one of the two EventBridge snapshot events, whose sources come from the
//! event and everything else from the environment. Any other event asks for nothing.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use serde_json::Value;

use crate::contract::error::CopySnapshotsError;
use crate::contract::request::{CopyRequest, RequestPayload, Settings};
use crate::ids::SnapshotArn;

pub const SNAPSHOT_NOTIFICATION: &str = "EBS Snapshot Notification";
pub const MULTI_VOLUME_COMPLETION: &str = "EBS Multi-Volume Snapshots Completion Status";
pub const SCHEDULED_EVENT: &str = "Scheduled Event";

/// What a payload asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    Copy(Box<CopyRequest>),
    /// An event that asks for no copy; answered with an empty, complete response.
    Ignore {
        reason: String,
    },
}

/// Reads a payload. Errors are `InvalidRequest`.
pub fn parse_payload(payload: Value, settings: &Settings) -> Result<Invocation, CopySnapshotsError> {
    let is_event = payload.as_object().is_some_and(|o| o.contains_key("detail-type"));
    if !is_event {
        return CopyRequest::from_json(payload, settings).map(|r| Invocation::Copy(Box::new(r)));
    }
    let event: EventBridgeEvent<Value> = serde_json::from_value(payload)
        .map_err(|e| CopySnapshotsError::InvalidRequest(format!("EventBridge event: {e}")))?;
    let detail = &event.detail;
    let text = |field: &str| detail.get(field).and_then(Value::as_str).unwrap_or("");
    match event.detail_type.as_str() {
        SNAPSHOT_NOTIFICATION => {
            if text("event") != "createSnapshot" || text("result") != "succeeded" {
                return Ok(ignore(format!(
                    "{SNAPSHOT_NOTIFICATION} with event `{}` and result `{}`: only a succeeded createSnapshot is copied",
                    text("event"),
                    text("result")
                )));
            }
            let arn = detail.get("snapshot_id").and_then(Value::as_str).ok_or_else(|| {
                CopySnapshotsError::InvalidRequest(format!(
                    "{SNAPSHOT_NOTIFICATION}: detail.snapshot_id is missing; valid: a snapshot ARN"
                ))
            })?;
            let arn = SnapshotArn::parse(arn)
                .map_err(|e| CopySnapshotsError::InvalidRequest(format!("detail.snapshot_id: {e}")))?;
            request_for(vec![arn], settings)
        }
        MULTI_VOLUME_COMPLETION => {
            let snapshots = detail.get("snapshots").and_then(Value::as_array).ok_or_else(|| {
                CopySnapshotsError::InvalidRequest(format!(
                    "{MULTI_VOLUME_COMPLETION}: detail.snapshots is missing; valid: a list of \
                     {{\"snapshot_id\": ARN, \"status\": …}}"
                ))
            })?;
            let mut arns = Vec::new();
            for (i, snapshot) in snapshots.iter().enumerate() {
                if snapshot.get("status").and_then(Value::as_str) != Some("completed") {
                    continue;
                }
                let arn = snapshot.get("snapshot_id").and_then(Value::as_str).unwrap_or("");
                let arn = SnapshotArn::parse(arn).map_err(|e| {
                    CopySnapshotsError::InvalidRequest(format!("detail.snapshots[{i}].snapshot_id: {e}"))
                })?;
                arns.push(arn);
            }
            if arns.is_empty() {
                return Ok(ignore(format!("{MULTI_VOLUME_COMPLETION} lists no completed snapshot")));
            }
            request_for(arns, settings)
        }
        SCHEDULED_EVENT if detail.as_object().is_none_or(|d| d.is_empty()) => Err(CopySnapshotsError::InvalidRequest(
            "a bare Scheduled Event names no snapshots: give the schedule an Input with a request, e.g. \
             {\"filters\": [{\"name\": \"tag:Backup\", \"values\": [\"daily\"]}]}"
                .to_owned(),
        )),
        other => Ok(ignore(format!("event `{other}` from `{}` asks for no copy", event.source))),
    }
}

fn ignore(reason: String) -> Invocation {
    Invocation::Ignore { reason }
}

/// A request for the event's snapshots, in the region their ARNs name.
fn request_for(arns: Vec<SnapshotArn>, settings: &Settings) -> Result<Invocation, CopySnapshotsError> {
    let region = arns[0].region.clone();
    if let Some(other) = arns.iter().find(|a| a.region != region) {
        return Err(CopySnapshotsError::InvalidRequest(format!(
            "the event's snapshots are in two regions ({region} and {}); valid: one source region per event",
            other.region
        )));
    }
    let mut ids: Vec<String> = Vec::with_capacity(arns.len());
    for arn in arns {
        // CreateSnapshots can list a snapshot once per volume; copy it once.
        if !ids.iter().any(|id| id == arn.snapshot_id.as_str()) {
            ids.push(arn.snapshot_id.as_str().to_owned());
        }
    }
    let payload =
        RequestPayload { snapshot_ids: Some(ids), region: Some(region.as_str().to_owned()), ..Default::default() };
    let mut request = CopyRequest::check(payload, settings)?;
    request.from_event = true;
    Ok(Invocation::Copy(Box::new(request)))
}
