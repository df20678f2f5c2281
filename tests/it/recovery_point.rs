//! The recovery-point figure: each invocation reports the start time of the oldest source of its
//! request that has no completed copy yet, and the metrics line turns it into
//! `OldestUncopiedSourceSeconds` (0 once every source is copied).

use std::time::{Duration, SystemTime};

use copy_snapshots::CopySnapshotsError;
use copy_snapshots::contract::metrics::InvocationCounts;
use copy_snapshots::contract::request::{CopyRequest, Settings};
use copy_snapshots::contract::response::RecoveryPoint;
use copy_snapshots::engine::{RunLimits, reconcile};
use copy_snapshots::store::simulated::SimulatedEc2;
use serde_json::json;

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
const DAY: Duration = Duration::from_secs(86_400);

fn request(extra: serde_json::Value) -> CopyRequest {
    let mut payload = json!({"filters": [{"name": "tag:Backup", "values": ["daily"]}],
                             "region": SOURCE, "target_region": TARGET});
    if let (Some(payload), Some(extra)) = (payload.as_object_mut(), extra.as_object()) {
        payload.extend(extra.clone());
    }
    CopyRequest::from_json(payload, &Settings::default()).expect("a valid request")
}

fn limits() -> RunLimits {
    crate::support::engine_world::no_deadline()
}

#[tokio::test(start_paused = true)]
async fn the_oldest_source_without_a_completed_copy_sets_the_recovery_point() {
    let ec2 = SimulatedEc2::new();
    let now = SystemTime::now();
    // Three days of daily snapshots; the largest is the newest, so it completes last.
    let sizes_and_ages = [(8, 3), (16, 2), (500, 1)];
    let mut ids = Vec::new();
    for (size, days) in sizes_and_ages {
        let id = ec2.add_source(SOURCE, size, &[("Backup", "daily")]);
        ec2.set_start_time(SOURCE, &id, now - DAY * days);
        ids.push(id);
    }

    // Started, none completed yet: the recovery point is the oldest source's.
    let response = reconcile(&ec2, &request(json!({"max_wait_seconds": 0})), limits()).await.unwrap();
    assert_eq!(response.copies.len(), 3);
    assert_eq!(response.recovery_point, RecoveryPoint::OldestUncopied(now - DAY * 3));
    let counts = InvocationCounts::of(&Ok(response), now);
    assert_eq!(counts.oldest_uncopied_seconds, Some(3 * 86_400));

    // Later the two small copies are completed, the 500 GiB one still runs.
    tokio::time::advance(Duration::from_secs(120 + 20 * 16 + 1)).await;
    let response = reconcile(&ec2, &request(json!({"max_wait_seconds": 0})), limits()).await.unwrap();
    assert_eq!(response.recovery_point, RecoveryPoint::OldestUncopied(now - DAY), "{:?}", response.copies);

    // All completed: nothing uncopied, and the metric says 0 (so an alarm can clear).
    let response = reconcile(&ec2, &request(json!({"wait_for_completion": true})), limits()).await.unwrap();
    assert!(response.complete);
    assert_eq!(response.recovery_point, RecoveryPoint::AllCopied);
    assert_eq!(InvocationCounts::of(&Ok(response), now).oldest_uncopied_seconds, Some(0));
}

#[tokio::test(start_paused = true)]
async fn a_failing_source_keeps_the_recovery_point_old() {
    let ec2 = SimulatedEc2::new();
    let now = SystemTime::now();
    let old = ec2.add_source(SOURCE, 8, &[("Backup", "daily")]);
    ec2.set_start_time(SOURCE, &old, now - DAY * 5);
    let new = ec2.add_source(SOURCE, 8, &[("Backup", "daily")]);
    ec2.set_start_time(SOURCE, &new, now - DAY);
    ec2.refuse_next_copy_of(&old, "InvalidParameterValue", "the key is not usable");

    let result = reconcile(&ec2, &request(json!({"wait_for_completion": true})), limits()).await;
    let counts = InvocationCounts::of(&result, now);
    assert!(matches!(result, Err(CopySnapshotsError::CopyFailed { .. })), "{result:?}");
    assert_eq!(counts.oldest_uncopied_seconds, Some(5 * 86_400), "the failed source is not copied");
}

#[tokio::test(start_paused = true)]
async fn a_request_by_ids_does_not_speak_for_the_recovery_point() {
    // One old snapshot the schedule has not copied, and a new one an event copies: the event's
    // invocation must not report 0 and clear an alarm on the whole set.
    let ec2 = SimulatedEc2::new();
    let now = SystemTime::now();
    let old = ec2.add_source(SOURCE, 8, &[("Backup", "daily")]);
    ec2.set_start_time(SOURCE, &old, now - DAY * 4);
    let new = ec2.add_source(SOURCE, 8, &[("Backup", "daily")]);
    let by_ids = CopyRequest::from_json(
        json!({"snapshot_ids": [new], "region": SOURCE, "target_region": TARGET, "wait_for_completion": true}),
        &Settings::default(),
    )
    .unwrap();
    let response = reconcile(&ec2, &by_ids, limits()).await.unwrap();
    assert!(response.complete);
    assert_eq!(response.recovery_point, RecoveryPoint::NotMeasured);
    assert_eq!(InvocationCounts::of(&Ok(response), now).oldest_uncopied_seconds, None);
    let by_filter = reconcile(&ec2, &request(json!({"max_wait_seconds": 0})), limits()).await.unwrap();
    assert_eq!(InvocationCounts::of(&Ok(by_filter), now).oldest_uncopied_seconds, Some(4 * 86_400));
}
