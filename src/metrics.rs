//! One CloudWatch Embedded Metric Format line per invocation: what the invocation did, as
//! metrics in the `CopySnapshots` namespace with the target region as dimension. Lambda sends
//! stdout to CloudWatch Logs, which extracts the metrics; no API call, no extra permission.

use serde_json::{Value, json};

use crate::error::CopySnapshotsError;
use crate::response::Response;

pub const NAMESPACE: &str = "CopySnapshots";

/// The counts one invocation reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InvocationCounts {
    pub copies_started: usize,
    pub copies_reused: usize,
    pub copies_failed: usize,
    pub pending_sources: usize,
    pub duplicates_removed: usize,
    /// 1 when the invocation ended in an error other than `CopyFailed` or `SourcesPending`
    /// (both report their work; the second is retried by Lambda).
    pub errors: usize,
}

impl InvocationCounts {
    pub fn of(result: &Result<Response, CopySnapshotsError>) -> Self {
        let response = match result {
            Ok(response) => response,
            Err(
                CopySnapshotsError::CopyFailed { response, .. } | CopySnapshotsError::SourcesPending { response, .. },
            ) => response,
            Err(_) => return Self { errors: 1, ..Self::default() },
        };
        let reused = response.copies.iter().filter(|c| c.reused).count();
        Self {
            copies_started: response.copies.len() - reused,
            copies_reused: reused,
            copies_failed: response.failed.len(),
            pending_sources: response.pending_sources.len(),
            duplicates_removed: response.duplicates_removed.len(),
            errors: 0,
        }
    }
}

/// The EMF document for one invocation. `target_region` is `None` when the request was
/// rejected before one was known.
pub fn emf(target_region: Option<&str>, counts: InvocationCounts, timestamp_ms: u128) -> Value {
    let metrics = [
        ("CopiesStarted", counts.copies_started),
        ("CopiesReused", counts.copies_reused),
        ("CopiesFailed", counts.copies_failed),
        ("PendingSources", counts.pending_sources),
        ("DuplicatesRemoved", counts.duplicates_removed),
        ("InvocationErrors", counts.errors),
    ];
    let mut document = json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["TargetRegion"]],
                "Metrics": metrics.iter().map(|(name, _)| json!({"Name": name, "Unit": "Count"})).collect::<Vec<_>>(),
            }],
        },
        "TargetRegion": target_region.unwrap_or("unknown"),
    });
    for (name, value) in metrics {
        document[name] = json!(value);
    }
    document
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::{CopyReport, FailureReport};

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
            }],
            ..Response::default()
        };
        let counts = InvocationCounts::of(&Ok(response.clone()));
        assert_eq!(
            counts,
            InvocationCounts {
                copies_started: 2,
                copies_reused: 1,
                copies_failed: 1,
                pending_sources: 1,
                duplicates_removed: 0,
                errors: 0
            }
        );
        let failed = Err(CopySnapshotsError::CopyFailed { message: "m".into(), response: Box::new(response) });
        assert_eq!(InvocationCounts::of(&failed), counts, "CopyFailed still reports its work");
        let throttled = InvocationCounts::of(&Err(CopySnapshotsError::Throttled("t".into())));
        assert_eq!(throttled.errors, 1);

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
}
