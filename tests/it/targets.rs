//! Several targets in one request: `targets` checked (each bad combination named by its target),
//! and the engine on the in-memory EC2 running one reconciler per target region side by side —
//! each region within its own `pending_limit`, a full region holding back none of the others,
//! each target with its own key and retention, the answer per target.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::engine_world::{live_copies_per_source, no_deadline};
use copy_snapshots::CopySnapshotsError;
use copy_snapshots::contract::request::{CopyRequest, Settings};
use copy_snapshots::contract::response::{Answer, ResponseFormat};
use copy_snapshots::engine::{plan, reconcile};
use copy_snapshots::ids::{Region, SnapshotId};
use copy_snapshots::store::SnapshotState;
use copy_snapshots::store::simulated::{CopyTimeModel, SimulatedEc2};
use serde_json::{Value, json};
use tokio::time::Instant;

const SOURCE: &str = "us-east-1";
const REGIONS: [&str; 3] = ["eu-west-1", "us-west-2", "ap-southeast-2"];

fn settings() -> Settings {
    Settings { source_region: Region::parse(SOURCE).ok(), ..Settings::default() }
}

fn check(payload: Value) -> Result<CopyRequest, CopySnapshotsError> {
    CopyRequest::from_json(payload, &settings())
}

fn invalid(payload: Value) -> String {
    match check(payload) {
        Err(CopySnapshotsError::InvalidRequest(message)) => message,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

fn sources(ec2: &SimulatedEc2, sizes: &[u64]) -> Vec<SnapshotId> {
    sizes.iter().map(|gib| ec2.add_source(SOURCE, *gib, &[])).collect()
}

fn three_targets(ids: &[SnapshotId], pending_limit: u32, extra: Value) -> CopyRequest {
    let targets: Vec<Value> = REGIONS.iter().map(|r| json!({"region": r})).collect();
    let mut payload = json!({"snapshot_ids": ids, "targets": targets, "pending_limit": pending_limit});
    if let (Some(payload), Some(extra)) = (payload.as_object_mut(), extra.as_object()) {
        payload.extend(extra.clone());
    }
    check(payload).expect("a valid request")
}

#[test]
fn each_target_takes_what_it_leaves_out_from_the_request() {
    let request = check(json!({
        "snapshot_ids": ["snap-0123abcd"],
        "encrypt": true,
        "kms_key_id": "alias/dr",
        "pending_limit": 7,
        "retain_days": 30,
        "targets": [
            {"region": "eu-west-1"},
            {"region": "us-west-2", "pending_limit": 3, "retain_count": 2, "retain_days": 10,
             "kms_key_id": "arn:aws:kms:us-west-2:111122223333:key/1111aaaa-2222-3333-4444-555566667777"},
            {"region": "ap-southeast-2", "encrypt": false},
        ],
    }))
    .expect("valid");
    let [first, second, third] = &request.targets[..] else { panic!("three targets: {:?}", request.targets) };
    assert_eq!((first.place.region.as_str(), first.pending_limit, first.encrypt), ("eu-west-1", 7, true));
    assert_eq!(first.kms_key.as_ref().map(|k| k.as_str()), Some("alias/dr"));
    assert_eq!(first.retention.days, Some(30));
    assert_eq!((second.pending_limit, second.retention.days, second.retention.count), (3, Some(10), Some(2)));
    assert!(second.kms_key.as_ref().is_some_and(|k| k.as_str().contains("us-west-2")));
    assert!(!third.encrypt && third.kms_key.is_none(), "a target without encryption takes no key: {third:?}");
}

#[test]
fn bad_target_combinations_are_refused_naming_the_target() {
    let one = json!({"snapshot_ids": ["snap-0123abcd"]});
    let with = |extra: Value| {
        let mut payload = one.clone();
        payload.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        payload
    };
    let both = invalid(with(json!({"target_region": "eu-west-1", "targets": [{"region": "us-west-2"}]})));
    assert!(both.contains("target_region and targets"), "{both}");
    let twice = invalid(with(json!({"targets": [{"region": "eu-west-1"}, {"region": "eu-west-1", "encrypt": true}]})));
    assert!(twice.contains("targets[1].region") && twice.contains("targets[0]"), "{twice}");
    let key = "arn:aws:kms:eu-west-1:111122223333:key/1111aaaa-2222-3333-4444-555566667777";
    let elsewhere = invalid(with(json!({"targets": [{"region": "us-west-2", "encrypt": true, "kms_key_id": key}]})));
    assert!(elsewhere.contains("targets[0].kms_key_id") && elsewhere.contains("us-west-2"), "{elsewhere}");
    // The request's key for every target: an ARN fits only its own region's.
    let inherited = invalid(with(json!({"encrypt": true, "kms_key_id": key,
        "targets": [{"region": "eu-west-1"}, {"region": "us-west-2"}]})));
    assert!(inherited.contains("kms_key_id (for us-west-2)"), "{inherited}");
    let role =
        invalid(with(json!({"targets": [{"region": "eu-west-1", "role_arn": "arn:aws:iam::111122223333:user/x"}]})));
    assert!(role.contains("targets[0].role_arn") && role.contains("is not an IAM role ARN"), "{role}");
    let six: Vec<Value> = ["eu-west-1", "eu-west-2", "eu-west-3", "us-west-1", "us-west-2", "ap-south-1"]
        .iter()
        .map(|r| json!({"region": r}))
        .collect();
    let too_many = invalid(with(json!({"targets": six})));
    assert!(too_many.contains("targets: 6 targets; valid: 1 to 5"), "{too_many}");
    let none = invalid(with(json!({"targets": []})));
    assert!(none.contains("targets: 0 targets"), "{none}");
    let zero = invalid(with(json!({"targets": [{"region": "eu-west-1", "pending_limit": 0}]})));
    assert!(zero.contains("targets[0].pending_limit"), "{zero}");
    let unknown = invalid(with(json!({"targets": [{"region": "eu-west-1", "retain": 3}]})));
    assert!(unknown.contains("unknown field `retain`"), "{unknown}");
}

#[test]
fn the_environment_names_the_targets_when_the_request_does_not() {
    let lookup = |name: &str| match name {
        "AWS_REGION" => Some(SOURCE.to_owned()),
        "TARGETS" => Some(r#"[{"region": "eu-west-1"}, {"region": "us-west-2", "retain_days": 7}]"#.to_owned()),
        _ => None,
    };
    let deployed = Settings::from_lookup(lookup).expect("valid settings");
    let request = CopyRequest::from_json(json!({"snapshot_ids": ["snap-0123abcd"]}), &deployed).expect("valid");
    let regions: Vec<&str> = request.targets.iter().map(|t| t.place.region.as_str()).collect();
    assert_eq!(regions, ["eu-west-1", "us-west-2"]);
    assert_eq!(request.targets[1].retention.days, Some(7));
    // A request's own target replaces the deployment's list.
    let own =
        CopyRequest::from_json(json!({"snapshot_ids": ["snap-0123abcd"], "target_region": "ap-south-1"}), &deployed)
            .expect("valid");
    assert_eq!(own.targets.len(), 1);
    let both = Settings::from_lookup(|name| match name {
        "TARGETS" => Some(r#"[{"region": "eu-west-1"}]"#.to_owned()),
        "TARGET_REGION" => Some("eu-west-1".to_owned()),
        _ => None,
    });
    assert!(matches!(both, Err(CopySnapshotsError::InvalidRequest(m)) if m.contains("TARGETS and TARGET_REGION")));
    let bad = Settings::from_lookup(|name| (name == "TARGETS").then(|| "eu-west-1".to_owned()));
    assert!(matches!(bad, Err(CopySnapshotsError::InvalidRequest(m)) if m.contains("environment variable TARGETS")));
}

#[tokio::test(start_paused = true)]
async fn every_target_gets_a_copy_of_every_source_within_its_own_limit() {
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT);
    let ids = sources(&ec2, &[500, 400, 300, 200, 100, 50, 40, 30]);
    let request = three_targets(&ids, 3, json!({"wait_for_completion": true}));
    let response = reconcile(&ec2, &request, no_deadline()).await.expect("copies everywhere");
    assert!(response.complete);
    assert_eq!(response.targets.len(), 3, "one answer per target");
    assert_eq!(response.snapshot_ids.len(), ids.len() * 3, "every target's copies, target by target");
    for (region, target) in REGIONS.iter().zip(&response.targets) {
        assert_eq!(target.target_region, *region);
        assert!(target.response.complete);
        let copied: HashSet<&str> = target.response.copies.iter().map(|c| c.source_snapshot_id.as_str()).collect();
        assert_eq!(copied.len(), ids.len(), "{region}: a copy of every source");
        let live = live_copies_per_source(&ec2, region);
        assert!(ids.iter().all(|id| live.get(id) == Some(&1)), "{region}: exactly one copy each: {live:?}");
        assert!(ec2.max_tracked_pending(region) <= 3, "{region}: {} pending at once", ec2.max_tracked_pending(region));
    }
    // The first target's ids come first, in source order.
    let first: Vec<&str> = response.targets[0].response.snapshot_ids.iter().map(String::as_str).collect();
    assert_eq!(response.snapshot_ids[..ids.len()].iter().map(String::as_str).collect::<Vec<_>>(), first);
    // Run again: every copy is reused, none made twice.
    let again = reconcile(&ec2, &request, no_deadline()).await.expect("a second run");
    assert!(again.targets.iter().all(|t| t.response.copies.iter().all(|c| c.reused)));
}

#[tokio::test(start_paused = true)]
async fn a_region_held_full_by_foreign_copies_does_not_slow_the_others() {
    let sizes = [300, 200, 100, 80, 60, 40];
    // Alone: how long the job takes to one free region.
    let alone = {
        let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT).with_region_copy_limit(20);
        let ids = sources(&ec2, &sizes);
        let targets = json!([{"region": REGIONS[1]}]);
        let request =
            check(json!({"snapshot_ids": ids, "targets": targets, "pending_limit": 2, "wait_for_completion": true}))
                .expect("valid");
        let started = Instant::now();
        reconcile(&ec2, &request, no_deadline()).await.expect("done");
        done_by(&ec2, REGIONS[1], started)
    };
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT).with_region_copy_limit(20);
    let ids = sources(&ec2, &sizes);
    // The first region's whole quota is taken by another tool's copies for two hours.
    ec2.add_foreign_pending(REGIONS[0], 20, Duration::from_secs(7200));
    let request = three_targets(&ids, 2, json!({"max_wait_seconds": 3 * 3600}));
    let started = Instant::now();
    let response = reconcile(&ec2, &request, no_deadline()).await.expect("an answer");
    let free_regions_done =
        REGIONS[1..].iter().map(|region| done_by(&ec2, region, started)).max().expect("two regions");
    assert!(
        free_regions_done <= alone + Duration::from_secs(60),
        "the free regions took {free_regions_done:?}, alone {alone:?}"
    );
    let held = &response.targets[0].response;
    assert!(
        held.copies.iter().all(|c| !c.reused)
            && ec2.first_copy_started_after(REGIONS[0], started) >= Duration::from_secs(7200),
        "the held region starts only once its quota frees"
    );
    assert!(response.targets[1..].iter().all(|t| t.response.copies.len() == ids.len()));
}

/// A bound on when `region`'s copies were done, the same way for every run compared: its last
/// start after `since`, plus its longest copy.
fn done_by(ec2: &SimulatedEc2, region: &str, since: Instant) -> Duration {
    ec2.last_copy_started_after(region, since) + ec2.copy_durations(region).into_iter().max().unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn each_target_keeps_its_own_retention() {
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::INSTANT);
    let day = Duration::from_secs(86_400);
    let ids: Vec<SnapshotId> =
        (0..4).map(|age| ec2.add_volume_snapshot(SOURCE, "vol-0123abcd", 8, day * (age * 10 + 1), &[])).collect();
    let request = check(json!({
        "filters": [{"name": "volume-id", "values": ["vol-0123abcd"]}],
        "targets": [{"region": REGIONS[0], "retain_count": 1}, {"region": REGIONS[1], "retain_count": 3}],
    }))
    .expect("valid");
    reconcile(&ec2, &request, no_deadline()).await.expect("copied");
    let kept = |region: &str| live_copies_per_source(&ec2, region).len();
    assert_eq!((kept(REGIONS[0]), kept(REGIONS[1])), (1, 3), "each target copies what its retention keeps");
    assert_eq!(ids.len(), 4);
    // The second target's rule tightens: it deletes two of its own copies, in its own region,
    // and the first target's copy stays.
    let tighter = check(json!({
        "filters": [{"name": "volume-id", "values": ["vol-0123abcd"]}],
        "targets": [{"region": REGIONS[0], "retain_count": 1}, {"region": REGIONS[1], "retain_count": 1}],
    }))
    .expect("valid");
    let response = reconcile(&ec2, &tighter, no_deadline()).await.expect("pruned");
    assert_eq!((response.targets[0].response.deleted.len(), response.targets[1].response.deleted.len()), (0, 2));
    assert_eq!((kept(REGIONS[0]), kept(REGIONS[1])), (1, 1));
    assert_eq!(ec2.deleted().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_summary_of_several_targets_stays_small_and_counts_each() {
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::INSTANT);
    let ids = sources(&ec2, &[8; 30]);
    for id in &ids[..25] {
        ec2.fail_copies_of(id, &"a long reason ".repeat(50));
    }
    let request = three_targets(&ids, 20, json!({"response_format": "summary"}));
    let failed = reconcile(&ec2, &request, no_deadline()).await;
    let Err(CopySnapshotsError::CopyFailed { response, message }) = failed else { panic!("{failed:?}") };
    for region in REGIONS {
        assert!(message.contains(region), "CopyFailed names each failing target: {message}");
    }
    let failed: usize = response.targets.iter().map(|t| t.response.failed.len()).sum();
    assert!(response.targets.iter().all(|t| t.response.failed.len() >= 20), "every target has failures");
    let Answer::Summary(summary) = Answer::new(*response, ResponseFormat::Summary) else { panic!("a summary") };
    let text = serde_json::to_string(&summary).expect("serializes");
    assert!(text.len() < 12 * 1024, "{} bytes", text.len());
    assert_eq!(summary.summary.targets.len(), 3);
    assert_eq!(summary.summary.failed, failed, "the counts are the targets' sums");
    let listed: usize = summary.summary.targets.iter().map(|t| t.summary.failures.len()).sum();
    assert!(listed <= copy_snapshots::contract::response::SUMMARY_MAX_FAILURES, "{listed} failures listed");
}

#[tokio::test(start_paused = true)]
async fn a_plan_shows_each_target() {
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[100, 8]);
    let request = three_targets(&ids, 5, json!({}));
    let plans = plan(&ec2, &request, CopyTimeModel::DEFAULT).await.expect("plans");
    let regions: Vec<&str> = plans.iter().map(|p| p.target_region.as_str()).collect();
    assert_eq!(regions, REGIONS);
    assert!(plans.iter().all(|p| p.copies_to_make == 2));
    assert!(REGIONS.iter().all(|r| ec2.tracked_copies(r).is_empty()), "a plan copies nothing");
}

#[test]
fn the_requests_own_fields_are_checked_under_their_own_names() {
    let targets = json!([{"region": "eu-west-1", "pending_limit": 5, "retain_days": 3}]);
    let zero = invalid(json!({"snapshot_ids": ["snap-0123abcd"], "pending_limit": 0, "targets": targets}));
    assert!(zero.starts_with("pending_limit: 0"), "{zero}");
    let days = invalid(json!({"snapshot_ids": ["snap-0123abcd"], "retain_days": 0, "targets": targets}));
    assert!(days.starts_with("retain_days: 0"), "{days}");
    let key = invalid(json!({"snapshot_ids": ["snap-0123abcd"], "encrypt": true, "kms_key_id": "not a key",
        "targets": [{"region": "eu-west-1", "kms_key_id": "alias/dr"}]}));
    assert!(key.starts_with("kms_key_id: "), "{key}");
    let unused = invalid(json!({"snapshot_ids": ["snap-0123abcd"], "kms_key_id": "alias/dr", "targets": targets}));
    assert!(unused.starts_with("kms_key_id: no target takes it"), "{unused}");
    let overridden = invalid(json!({"snapshot_ids": ["snap-0123abcd"], "encrypt": true, "kms_key_id": "alias/x",
        "targets": [{"region": "eu-west-1", "kms_key_id": "alias/a"}, {"region": "us-west-2", "encrypt": false}]}));
    assert!(overridden.starts_with("kms_key_id: no target takes it"), "{overridden}");
    // A target that turns encryption off takes none of the request's key, wherever the
    // request's encryption comes from.
    let lookup = |name: &str| match name {
        "AWS_REGION" => Some(SOURCE.to_owned()),
        "ENCRYPT" => Some("true".to_owned()),
        "KMS_KEY_ID" => Some("arn:aws:kms:eu-west-1:111122223333:key/1111aaaa-2222-3333-4444-555566667777".to_owned()),
        _ => None,
    };
    let deployed = Settings::from_lookup(lookup).expect("valid settings");
    let off = CopyRequest::from_json(
        json!({"snapshot_ids": ["snap-0123abcd"], "kms_key_id": "alias/dr",
               "targets": [{"region": "eu-west-1"}, {"region": "us-west-2", "encrypt": false}]}),
        &deployed,
    )
    .expect("valid");
    assert!(off.targets[1].kms_key.is_none() && !off.targets[1].encrypt);
    let env_key = CopyRequest::from_json(
        json!({"snapshot_ids": ["snap-0123abcd"], "targets": [{"region": "eu-west-1"}, {"region": "us-west-2"}]}),
        &deployed,
    );
    let Err(CopySnapshotsError::InvalidRequest(message)) = env_key else { panic!("{env_key:?}") };
    assert!(message.starts_with("KMS_KEY_ID (environment) (for us-west-2)"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn a_target_whose_calls_are_denied_stops_alone_and_the_others_finish() {
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT);
    let ids = sources(&ec2, &[100, 50, 20]);
    ec2.deny_region(REGIONS[1]);
    let request = three_targets(&ids, 5, json!({"wait_for_completion": true}));
    let response = reconcile(&ec2, &request, no_deadline()).await.expect("the others answer");
    // The denied target's error is in its answer; the others copied everything.
    let denied = &response.targets[1];
    assert_eq!(denied.error.as_ref().map(|e| e.error_type.as_str()), Some("AccessDenied"), "{denied:?}");
    assert!(!response.complete && !denied.response.complete);
    assert!(response.targets[0].response.complete && response.targets[2].response.complete);
    for region in [REGIONS[0], REGIONS[2]] {
        let live = live_copies_per_source(&ec2, region);
        assert!(ids.iter().all(|id| live.get(id) == Some(&1)), "{region}: every source copied: {live:?}");
    }
    // Every target denied: the invocation's error is the first target's, named.
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8]);
    for region in REGIONS {
        ec2.deny_region(region);
    }
    let result = reconcile(&ec2, &three_targets(&ids, 5, json!({})), no_deadline()).await;
    let Err(CopySnapshotsError::AccessDenied(message)) = &result else { panic!("{result:?}") };
    assert!(message.starts_with("eu-west-1: "), "{message}");
    // Denied mid-run (after its copies started): it stops at its next poll; the others
    // still wait for theirs to complete.
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT);
    let ids = sources(&ec2, &[100, 50, 20]);
    let request = three_targets(&ids, 5, json!({"wait_for_completion": true}));
    let deny_later = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ec2.deny_region(REGIONS[1]);
    };
    let (result, ()) = tokio::join!(reconcile(&ec2, &request, no_deadline()), deny_later);
    let response = result.expect("the others answer");
    let error = response.targets[1].error.as_ref().map(|e| e.error_message.as_str()).unwrap_or_default();
    assert!(error.contains("polling the copies"), "stopped at its poll: {error}");
    for region in [REGIONS[0], REGIONS[2]] {
        let copies = ec2.tracked_copies(region);
        assert_eq!(copies.len(), ids.len(), "{region}");
        assert!(copies.iter().all(|c| c.state == SnapshotState::Completed), "{region}: waited for every copy");
    }
    // While another target still works, the denied one's error is in its answer instead.
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT);
    let ids = sources(&ec2, &[100, 50, 20]);
    ec2.deny_region(REGIONS[1]);
    // One slot each and no waiting: the others leave sources for the next invocation.
    let request = three_targets(&ids, 1, json!({"max_wait_seconds": 0}));
    let response = reconcile(&ec2, &request, no_deadline()).await.expect("an answer while others work");
    let denied = &response.targets[1];
    assert_eq!(denied.error.as_ref().map(|e| e.error_type.as_str()), Some("AccessDenied"), "{denied:?}");
    assert!(!response.complete && denied.response.pending_sources.len() == ids.len());
    assert_eq!(response.targets[0].response.copies.len(), 1, "the first target started what fits");
    let metrics = copy_snapshots::contract::metrics::emf_of(&Ok(response.clone()), Some(REGIONS[0]), ec2.now(), 0);
    let lines = metrics.as_array().expect("one EMF document per target");
    assert_eq!(lines.len(), 3);
    assert_eq!((lines[1]["TargetRegion"].clone(), lines[1]["InvocationErrors"].clone()), (json!(REGIONS[1]), json!(1)));
    assert_eq!(lines[0]["InvocationErrors"], 0);
    assert_eq!(lines[0]["CopiesStarted"], 1);
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_answers_each_target() {
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[100, 8]);
    let response =
        reconcile(&ec2, &three_targets(&ids, 5, json!({"dry_run": true})), no_deadline()).await.expect("plan");
    assert!(response.dry_run && !response.complete);
    assert_eq!(response.targets.len(), 3);
    assert!(response.targets.iter().all(|t| t.response.to_copy.len() == 2), "{response:?}");
    assert!(REGIONS.iter().all(|r| ec2.tracked_copies(r).is_empty()), "a dry run copies nothing");
}

#[tokio::test(start_paused = true)]
async fn a_queued_event_is_done_only_once_every_target_started_its_copy() {
    use copy_snapshots::entry::batch::handle_batch;
    let ec2 = SimulatedEc2::new().with_region_copy_limit(20);
    // The second target's quota is held by other services' copies.
    ec2.add_foreign_pending(REGIONS[1], 20, Duration::from_secs(3600));
    let id = ec2.add_source(SOURCE, 8, &[]);
    let lookup = |name: &str| match name {
        "AWS_REGION" => Some(SOURCE.to_owned()),
        "TARGETS" => Some(format!(r#"[{{"region": "{}"}}, {{"region": "{}"}}]"#, REGIONS[0], REGIONS[1])),
        _ => None,
    };
    let settings = Settings::from_lookup(lookup).expect("valid settings");
    let body = crate::support::events::snapshot_notification(SOURCE, id.as_str()).to_string();
    let batch = json!({"Records": [{"messageId": "m-1", "body": body, "eventSource": "aws:sqs", "attributes": {}, "messageAttributes": {}}]});
    let outcome = handle_batch(batch.clone(), &settings, &ec2, Some(Instant::now() + Duration::from_secs(30))).await;
    assert_eq!(outcome.failed_message_ids(), ["m-1"], "started in one target only: delivered again");
    assert_eq!(live_copies_per_source(&ec2, REGIONS[0]).get(&id), Some(&1));
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    let again = handle_batch(batch, &settings, &ec2, Some(Instant::now() + Duration::from_secs(30))).await;
    assert!(again.failed_message_ids().is_empty(), "{:?}", again.failed_message_ids());
    for region in &REGIONS[..2] {
        assert_eq!(live_copies_per_source(&ec2, region).get(&id), Some(&1), "{region}: one copy");
    }
}

#[test]
fn a_several_target_copy_failed_under_summary_stays_bounded_and_names_targets() {
    use copy_snapshots::contract::error::respond;
    use copy_snapshots::contract::response::{FailureReport, Response, TargetResponse};
    let failing = |region: &str| TargetResponse {
        target_region: region.to_owned(),
        response: Response {
            failed: (0..5000)
                .map(|i| FailureReport {
                    source_snapshot_id: format!("snap-{i:08x}"),
                    snapshot_id: None,
                    error_snapshot_ids: Vec::new(),
                    error: "x".repeat(1000),
                    target_region: None,
                })
                .collect(),
            ..Response::default()
        },
        ..TargetResponse::default()
    };
    let response = Response { targets: REGIONS.iter().map(|r| failing(r)).collect(), ..Response::default() };
    let error = CopySnapshotsError::CopyFailed { message: "x".repeat(10_000_000), response: Box::new(response) };
    let Err(CopySnapshotsError::CopyFailed { message, .. }) = respond(Err(error), ResponseFormat::Summary, "?") else {
        panic!("CopyFailed")
    };
    assert!(message.len() < 12 * 1024, "{} bytes", message.len());
    assert!(message.contains("5000 of 5000 in eu-west-1") && message.contains("in ap-southeast-2"), "{message}");
}
