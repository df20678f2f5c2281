//! One CloudWatch Embedded Metric Format line per invocation: what the invocation did, as
//! metrics in the `CopySnapshots` namespace with the target region as dimension. Lambda sends
//! stdout to CloudWatch Logs, which extracts the metrics; no API call, no extra permission.
//!
//! `OldestUncopiedSourceSeconds` is the recovery point a disaster-recovery owner watches: the
//! age of the oldest source of the request with no completed copy yet, 0 when every source has
//! one (an alarm needs a value to clear). It is left out when the invocation failed before it
//! knew its sources: an unknown age is not a zero one.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::contract::error::CopySnapshotsError;
use crate::contract::response::{RecoveryPoint, Response};

pub const NAMESPACE: &str = "CopySnapshots";

/// The counts one invocation reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InvocationCounts {
    pub copies_started: usize,
    pub copies_reused: usize,
    pub copies_failed: usize,
    pub pending_sources: usize,
    pub duplicates_removed: usize,
    /// Copies retention deleted (none in a dry run, which only says what it would delete).
    pub copies_deleted: usize,
    /// Deletions the deletion breaker held (the run deleted none of them).
    pub deletions_held: usize,
    /// Deletions the role was denied (AccessDenied, UnauthorizedOperation).
    pub copies_not_deleted: usize,
    /// 1 when the invocation ended in an error other than `CopyFailed` or `SourcesPending`
    /// (both report their work; the second is retried by Lambda).
    pub errors: usize,
    /// Seconds since the start of the oldest source without a completed copy, at `now`; 0 when
    /// all are copied; `None` when the sources are unknown.
    pub oldest_uncopied_seconds: Option<u64>,
}

impl InvocationCounts {
    pub fn of(result: &Result<Response, CopySnapshotsError>, now: SystemTime) -> Self {
        match answered(result) {
            Some(response) => Self::of_response(response, now),
            None => Self { errors: 1, ..Self::default() },
        }
    }

    /// The counts of an answer (one target's, or the whole of a one-target request's).
    pub fn of_response(response: &Response, now: SystemTime) -> Self {
        // A dry run did nothing: its would-be failures and pending sources must not feed the
        // alarms the scheduled runs feed (CopiesFailed, the recovery point).
        if response.dry_run {
            return Self::default();
        }
        let reused = response.copies.iter().filter(|c| c.reused).count();
        Self {
            copies_started: response.copies.len() - reused,
            copies_reused: reused,
            copies_failed: response.failed.len(),
            pending_sources: response.pending_sources.len(),
            duplicates_removed: response.duplicates_removed.len(),
            copies_deleted: response.deleted.len(),
            deletions_held: response.deletion_breaker.as_ref().map_or(0, |b| b.would_delete),
            copies_not_deleted: response.deletions_denied,
            errors: 0,
            oldest_uncopied_seconds: match response.recovery_point {
                RecoveryPoint::NotMeasured => None,
                RecoveryPoint::AllCopied => Some(0),
                // A start time in the future (clock skew) counts as age 0.
                RecoveryPoint::OldestUncopied(start) => Some(now.duration_since(start).unwrap_or_default().as_secs()),
            },
        }
    }
}

/// The EMF document for one invocation. `target_region` is `None` when the request was
/// rejected before one was known.
pub fn emf(target_region: Option<&str>, counts: InvocationCounts, timestamp_ms: u128) -> Value {
    let mut metrics = vec![
        ("CopiesStarted", "Count", counts.copies_started as u64),
        ("CopiesReused", "Count", counts.copies_reused as u64),
        ("CopiesFailed", "Count", counts.copies_failed as u64),
        ("PendingSources", "Count", counts.pending_sources as u64),
        ("DuplicatesRemoved", "Count", counts.duplicates_removed as u64),
        ("CopiesDeleted", "Count", counts.copies_deleted as u64),
        ("DeletionsHeld", "Count", counts.deletions_held as u64),
        ("CopiesNotDeleted", "Count", counts.copies_not_deleted as u64),
        ("InvocationErrors", "Count", counts.errors as u64),
    ];
    if let Some(seconds) = counts.oldest_uncopied_seconds {
        metrics.push(("OldestUncopiedSourceSeconds", "Seconds", seconds));
    }
    let mut document = json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["TargetRegion"]],
                "Metrics": metrics.iter().map(|(name, unit, _)| json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
            }],
        },
        "TargetRegion": target_region.unwrap_or("unknown"),
    });
    for (name, _, value) in metrics {
        document[name] = json!(value);
    }
    document
}

/// The EMF documents of one invocation: one, or with several targets one per target (each
/// target's counts under its own region, so a region's alarms see only its copies), as a JSON
/// list. An error that ends the invocation counts once, under `default_region`.
pub fn emf_of(
    result: &Result<Response, CopySnapshotsError>,
    default_region: Option<&str>,
    now: SystemTime,
    timestamp_ms: u128,
) -> Value {
    let Some(response) = answered(result).filter(|response| !response.targets.is_empty()) else {
        return emf(default_region, InvocationCounts::of(result, now), timestamp_ms);
    };
    let lines = response
        .targets
        .iter()
        .map(|target| {
            let mut counts = InvocationCounts::of_response(&target.response, now);
            // A target that an error stopped while the others went on counts it in its own
            // region, where its alarm looks.
            counts.errors = usize::from(target.error.is_some());
            emf(Some(&target.target_region), counts, timestamp_ms)
        })
        .collect();
    Value::Array(lines)
}

/// What an invocation answered, also with the errors that carry it (`CopyFailed`,
/// `SourcesPending`).
fn answered(result: &Result<Response, CopySnapshotsError>) -> Option<&Response> {
    match result {
        Ok(response) => Some(response),
        Err(error) => error.response(),
    }
}

/// The lines to print: one per document of [`emf_of`].
pub fn lines(documents: &Value) -> Vec<String> {
    match documents {
        Value::Array(documents) => documents.iter().map(Value::to_string).collect(),
        document => vec![document.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::response::{CopyReport, FailureReport};

    fn copy(reused: bool) -> CopyReport {
        CopyReport {
            source_snapshot_id: "snap-0123abcd".into(),
            snapshot_id: "snap-4567abcd".into(),
            state: "pending".into(),
            progress: None,
            reused,
        }
    }

    #[test]
    fn counts_and_document() {
        let response = Response {
            copies: vec![copy(false), copy(false), copy(true)],
            pending_sources: vec!["snap-89abcdef".into()],
            failed: vec![FailureReport {
                source_snapshot_id: "snap-0000aaaa".into(),
                snapshot_id: None,
                error_snapshot_ids: Vec::new(),
                error: "x".into(),
                target_region: None,
            }],
            ..Response::default()
        };
        let now = SystemTime::now();
        let counts = InvocationCounts::of(&Ok(response.clone()), now);
        assert_eq!(
            counts,
            InvocationCounts {
                copies_started: 2,
                copies_reused: 1,
                copies_failed: 1,
                pending_sources: 1,
                duplicates_removed: 0,
                copies_deleted: 0,
                deletions_held: 0,
                copies_not_deleted: 0,
                errors: 0,
                oldest_uncopied_seconds: None,
            }
        );
        let failed = Err(CopySnapshotsError::CopyFailed { message: "m".into(), response: Box::new(response) });
        assert_eq!(InvocationCounts::of(&failed, now), counts, "CopyFailed still reports its work");
        let throttled = InvocationCounts::of(&Err(CopySnapshotsError::Throttled("t".into())), now);
        assert_eq!(throttled.errors, 1);
        assert_eq!(throttled.oldest_uncopied_seconds, None, "unknown, not zero");
        let throttled_doc = emf(Some("eu-west-1"), throttled, 0);
        assert!(throttled_doc.get("OldestUncopiedSourceSeconds").is_none());
        assert!(!throttled_doc.to_string().contains("OldestUncopiedSourceSeconds"), "not declared either");

        let doc = emf(Some("eu-west-1"), counts, 1_700_000_000_000);
        assert_eq!(doc["TargetRegion"], "eu-west-1");
        assert_eq!(doc["CopiesStarted"], 2);
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Namespace"], NAMESPACE);
        let names: Vec<&str> = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        for name in &names {
            assert!(doc[*name].is_number(), "{name} has a value");
        }
        assert_eq!(emf(None, counts, 0)["TargetRegion"], "unknown");
    }

    #[test]
    fn copies_deleted_counts_a_runs_deletions_and_never_a_dry_runs() {
        let deleted = |n: usize| {
            (0..n)
                .map(|_| crate::contract::response::DeletedCopy {
                    snapshot_id: "snap-4567abcd".into(),
                    source_snapshot_id: "snap-0123abcd".into(),
                    reason: "out of retention".into(),
                })
                .collect()
        };
        let run = Response { deleted: deleted(3), ..Response::default() };
        let counts = InvocationCounts::of(&Ok(run), SystemTime::now());
        assert_eq!(counts.copies_deleted, 3);
        assert_eq!(emf(Some("eu-west-1"), counts, 0)["CopiesDeleted"], 3);
        let failed = crate::contract::response::FailureReport {
            source_snapshot_id: "snap-0123abcd".into(),
            snapshot_id: None,
            error_snapshot_ids: Vec::new(),
            error: "attempts used up".into(),
            target_region: None,
        };
        let dry = Response { deleted: deleted(3), failed: vec![failed], dry_run: true, ..Response::default() };
        let counts = InvocationCounts::of(&Ok(dry), SystemTime::now());
        assert_eq!(counts, InvocationCounts::default(), "a dry run counts nothing, not even what it would fail");
    }

    #[test]
    fn the_recovery_point_is_the_age_of_the_oldest_uncopied_source() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let response = Response {
            recovery_point: RecoveryPoint::OldestUncopied(now - std::time::Duration::from_secs(90_000)),
            ..Response::default()
        };
        let counts = InvocationCounts::of(&Ok(response), now);
        assert_eq!(counts.oldest_uncopied_seconds, Some(90_000));
        let doc = emf(Some("eu-west-1"), counts, 0);
        assert_eq!(doc["OldestUncopiedSourceSeconds"], 90_000);
        let declared = &doc["_aws"]["CloudWatchMetrics"][0]["Metrics"];
        assert!(
            declared
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["Name"] == "OldestUncopiedSourceSeconds" && m["Unit"] == "Seconds"),
            "{declared}"
        );
    }
}
