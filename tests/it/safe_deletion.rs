//! Deletions that a source-side incident cannot trigger, on the in-memory EC2 and tokio's
//! paused clock: a source region emptied (snapshots, then volumes too), the newest completed
//! copy of every volume, the deletion breaker and its override, copies an AMI uses, a failed
//! look on the retention path, DeleteSnapshot's NotFound, throttled, unanswered and denied
//! outcomes, the days rule keeping more than the count rule, and sources without a volume.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use copy_snapshots::contract::metrics::InvocationCounts;
use copy_snapshots::contract::request::{CopyRequest, Settings};
use copy_snapshots::contract::response::Response;
use copy_snapshots::engine::{RunLimits, reconcile};
use copy_snapshots::ids::SnapshotId;
use copy_snapshots::store::SnapshotState;
use copy_snapshots::store::simulated::{DeleteFault, SimulatedEc2};
use serde_json::{Value, json};

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
const DAY: Duration = Duration::from_secs(86_400);
const DAILY: (&str, &str) = ("Backup", "daily");

fn request(extra: Value) -> CopyRequest {
    crate::support::engine_world::request_with(
        json!({"filters": [{"name": "tag:Backup", "values": ["daily"]}], "region": SOURCE, "target_region": TARGET}),
        extra,
    )
}

async fn run(ec2: &SimulatedEc2, request: &CopyRequest) -> Response {
    let limits = RunLimits {
        deadline: None,
        poll_interval: Duration::from_secs(15),
        max_poll_interval: copy_snapshots::contract::request::DEFAULT_MAX_POLL_INTERVAL,
        call_timeout: Duration::from_secs(1),
    };
    reconcile(ec2, request, limits).await.expect("the run succeeds")
}

fn volume(n: usize) -> String {
    format!("vol-{n:017x}")
}

/// `count` daily snapshots of each of `volumes` volumes, newest first, one a day older each.
fn aged_sources(ec2: &SimulatedEc2, volumes: usize, count: u32) -> Vec<Vec<SnapshotId>> {
    (0..volumes)
        .map(|v| (0..count).map(|age| ec2.add_volume_snapshot(SOURCE, &volume(v), 8, DAY * age, &[DAILY])).collect())
        .collect()
}

async fn copy_all(ec2: &SimulatedEc2) {
    let response = run(ec2, &request(json!({"wait_for_completion": true}))).await;
    assert!(response.complete && response.deleted.is_empty(), "{response:?}");
}

/// Live copies in the target region by source.
fn copy_of(ec2: &SimulatedEc2) -> HashMap<SnapshotId, SnapshotId> {
    ec2.tracked_copies(TARGET)
        .into_iter()
        .filter(|c| c.state != SnapshotState::Error)
        .map(|c| (c.source_id, c.id))
        .collect()
}

fn deleted_sources(response: &Response) -> HashSet<SnapshotId> {
    response.deleted.iter().map(|d| SnapshotId::parse(&d.source_snapshot_id).unwrap()).collect()
}

#[tokio::test(start_paused = true)]
async fn emptying_the_source_region_loses_no_volume_its_newest_copy_and_the_breaker_holds() {
    let ec2 = SimulatedEc2::new();
    let sources = aged_sources(&ec2, 10, 5);
    copy_all(&ec2).await;
    assert_eq!(copy_of(&ec2).len(), 50);
    tokio::time::advance(DAY * 30).await;

    // Ransomware (or a mistaken clean-up) deletes every source snapshot.
    for id in sources.iter().flatten() {
        ec2.remove_snapshot(SOURCE, id);
    }
    let every_rule = [
        json!({"retain_days": 1}),
        json!({"retain_count": 1}),
        json!({"retain_days": 1, "retain_count": 1}),
        json!({"delete_orphans_after_days": 0}),
        json!({"retain_days": 1, "retain_count": 1, "delete_orphans_after_days": 0}),
    ];
    for rule in &every_rule {
        let response = run(&ec2, &request(rule.clone())).await;
        assert!(response.deleted.is_empty() && response.deletions_left == 0, "{rule}: {response:?}");
        assert!(response.deletion_breaker.is_none(), "{rule}: nothing to hold: {response:?}");
        assert!(response.complete, "{rule}");
    }
    assert_eq!(copy_of(&ec2).len(), 50, "every copy kept: the volumes still exist");
    assert!(ec2.deleted().is_empty());

    // The volumes are deleted too: the orphan rule may now take every copy, and the breaker
    // holds the run that would.
    for v in 0..10 {
        ec2.remove_volume(&volume(v));
    }
    let orphans = request(json!({"retain_count": 1, "delete_orphans_after_days": 0}));
    let response = run(&ec2, &orphans).await;
    assert!(response.deleted.is_empty(), "{response:?}");
    let breaker = response.deletion_breaker.clone().expect("the breaker holds");
    assert_eq!((breaker.would_delete, breaker.managed), (50, 50));
    assert!(breaker.message.contains("allow_mass_deletion"), "{}", breaker.message);
    assert_eq!(response.deletions_left, 0, "held deletions are not work a loop waits for");
    assert!(response.complete);
    assert_eq!(ec2.calls().delete_copy, 0);
    for volume_sources in &sources {
        assert!(copy_of(&ec2).contains_key(&volume_sources[0]), "a volume lost its newest copy");
    }
    let counts = InvocationCounts::of(&Ok(response.clone()), SystemTime::now());
    assert_eq!(counts.deletions_held, 50);
    let emf = copy_snapshots::contract::metrics::emf(Some(TARGET), counts, 0);
    assert_eq!(emf["DeletionsHeld"], 50);

    // The dry run says the same, and with the override lists what would go.
    let dry = run(&ec2, &request(json!({"retain_count": 1, "delete_orphans_after_days": 0, "dry_run": true}))).await;
    assert!(dry.deletion_breaker.is_some() && dry.deleted.is_empty(), "{dry:?}");
    let allowed = json!({"retain_count": 1, "delete_orphans_after_days": 0, "allow_mass_deletion": true});
    let mut dry_allowed = allowed.clone();
    dry_allowed["dry_run"] = json!(true);
    let dry = run(&ec2, &request(dry_allowed)).await;
    assert!(dry.deletion_breaker.is_none());
    assert_eq!(dry.deleted.len(), 50);
    let response = run(&ec2, &request(allowed)).await;
    assert_eq!(response.deleted.len(), 50, "the override lets a run over a large backlog proceed");
    assert!(response.deleted[0].reason.contains("its volume"), "{}", response.deleted[0].reason);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_needs_more_than_twenty_and_more_than_a_quarter() {
    for (volumes, copies_each, keep, held) in [(3, 10, 3, true), (1, 21, 20, false), (30, 4, 3, false), (5, 6, 1, true)]
    {
        let ec2 = SimulatedEc2::new();
        aged_sources(&ec2, volumes, copies_each);
        copy_all(&ec2).await;
        let managed = volumes * copies_each as usize;
        let would = volumes * (copies_each - keep) as usize;
        let response = run(&ec2, &request(json!({"retain_count": keep}))).await;
        assert_eq!(response.deletion_breaker.is_some(), held, "{would} of {managed}: {response:?}");
        assert_eq!(response.deleted.len(), if held { 0 } else { would });
    }
}

#[tokio::test(start_paused = true)]
async fn the_newest_copy_of_a_volume_whose_sources_are_gone_survives_days_and_count() {
    let ec2 = SimulatedEc2::new();
    // vol 0: every source gone; vol 1: still backed up. A third volume's newest source is gone
    // and newer than its newest remaining one.
    let sources = aged_sources(&ec2, 3, 4);
    copy_all(&ec2).await;
    tokio::time::advance(DAY * 20).await;
    for id in &sources[0] {
        ec2.remove_snapshot(SOURCE, id);
    }
    ec2.remove_snapshot(SOURCE, &sources[2][0]);
    for rule in [json!({"retain_days": 7}), json!({"retain_count": 1}), json!({"retain_days": 7, "retain_count": 1})] {
        let response = run(&ec2, &request(rule.clone())).await;
        let copies = copy_of(&ec2);
        assert!(copies.contains_key(&sources[0][0]), "{rule}: vol 0 lost its newest copy: {response:?}");
        assert!(copies.contains_key(&sources[1][0]), "{rule}");
        assert!(copies.contains_key(&sources[2][0]), "{rule}: vol 2's newest copy (source gone) is kept");
        assert!(response.complete && response.deletions_left == 0, "{rule}: {response:?}");
    }
    // vol 1 and vol 2 are pruned to their newest; vol 2 also keeps the newest it selects.
    let copies = copy_of(&ec2);
    assert!(!copies.contains_key(&sources[1][3]) && !copies.contains_key(&sources[2][3]));
}

#[tokio::test(start_paused = true)]
async fn days_keep_more_than_count_when_they_say_so() {
    let ec2 = SimulatedEc2::new();
    let ages = [0, 5, 10, 15, 20, 25, 40];
    let sources: Vec<SnapshotId> =
        ages.iter().map(|age| ec2.add_volume_snapshot(SOURCE, &volume(0), 8, DAY * *age, &[DAILY])).collect();
    copy_all(&ec2).await;
    let response = run(&ec2, &request(json!({"retain_days": 30, "retain_count": 3}))).await;
    assert_eq!(deleted_sources(&response), HashSet::from([sources[6].clone()]), "{response:?}");
    assert_eq!(copy_of(&ec2).len(), 6, "30 days keep six, more than the count's three");
}

#[tokio::test(start_paused = true)]
async fn sources_without_a_volume_are_each_a_group_of_their_own() {
    let ec2 = SimulatedEc2::new();
    let alone: Vec<SnapshotId> =
        [30, 40, 50].iter().map(|age| ec2.add_snapshot_without_volume(SOURCE, 8, DAY * *age, &[DAILY])).collect();
    let response = run(&ec2, &request(json!({"retain_count": 1, "wait_for_completion": true}))).await;
    assert!(response.skipped.is_empty(), "{response:?}");
    assert_eq!(response.copies.len(), 3);
    let response = run(&ec2, &request(json!({"retain_days": 7, "retain_count": 1}))).await;
    assert!(response.deleted.is_empty() && response.skipped.is_empty(), "{response:?}");
    assert_eq!(copy_of(&ec2).keys().cloned().collect::<HashSet<_>>(), alone.into_iter().collect());
}

#[tokio::test(start_paused = true)]
async fn a_failed_look_for_gone_sources_deletes_none_of_their_copies() {
    let ec2 = SimulatedEc2::new();
    let weekly = ec2.add_volume_snapshot(SOURCE, &volume(0), 8, DAY * 5, &[("Backup", "weekly")]);
    let old = ec2.add_volume_snapshot(SOURCE, &volume(0), 8, DAY * 3, &[DAILY]);
    let new = ec2.add_volume_snapshot(SOURCE, &volume(0), 8, DAY * 2, &[DAILY]);
    let weekly_request = json!({"filters": [{"name": "tag:Backup", "values": ["weekly"]}], "region": SOURCE,
                                "target_region": TARGET, "wait_for_completion": true});
    run(&ec2, &CopyRequest::from_json(weekly_request, &Settings::default()).unwrap()).await;
    copy_all(&ec2).await;
    // The look by filters answers; the look by id for the weekly copy's source does not.
    ec2.fail_source_looks(1, 1);
    let response = run(&ec2, &request(json!({"retain_count": 1, "delete_orphans_after_days": 0}))).await;
    assert_eq!(deleted_sources(&response), HashSet::from([old]), "{response:?}");
    let copies = copy_of(&ec2);
    assert!(copies.contains_key(&weekly), "an unresolved source is not a gone one");
    assert!(copies.contains_key(&new));
}

#[tokio::test(start_paused = true)]
async fn a_copy_an_ami_uses_is_never_deleted() {
    let ec2 = SimulatedEc2::new();
    let sources = aged_sources(&ec2, 1, 4);
    copy_all(&ec2).await;
    let copies = copy_of(&ec2);
    let used = copies[&sources[0][3]].clone();
    ec2.register_image("ami-0123456789abcdef0", &used);
    let req = request(json!({"retain_count": 1}));

    // Without DescribeImages' answer, nothing is deleted.
    ec2.fail_image_looks(true);
    let response = run(&ec2, &req).await;
    assert!(response.deleted.is_empty() && response.deletions_left == 3, "{response:?}");
    assert!(response.notes.iter().any(|n| n.contains("AMI")), "{response:?}");
    ec2.fail_image_looks(false);

    let before = ec2.calls().describe_images;
    let response = run(&ec2, &req).await;
    assert_eq!(ec2.calls().describe_images, before + 1, "one DescribeImages for every candidate");
    assert_eq!(deleted_sources(&response), HashSet::from([sources[0][1].clone(), sources[0][2].clone()]));
    assert_eq!(response.not_deleted.len(), 1, "{response:?}");
    assert_eq!(response.not_deleted[0].snapshot_id, used.as_str());
    assert_eq!(response.not_deleted[0].image_id.as_deref(), Some("ami-0123456789abcdef0"));
    assert!(!ec2.deleted().contains(&used));
    assert!(response.complete, "{response:?}");
}

#[tokio::test(start_paused = true)]
async fn delete_snapshot_outcomes_are_told_apart() {
    let ec2 = SimulatedEc2::new();
    let sources = aged_sources(&ec2, 1, 6);
    copy_all(&ec2).await;
    let copies = copy_of(&ec2);
    let req = request(json!({"retain_count": 1}));
    // Five deletions: the first four calls are answered with one fault each.
    ec2.fault_next_deletes(&[
        DeleteFault::Unanswered { deleted: false },
        DeleteFault::Unanswered { deleted: true },
        DeleteFault::Denied,
        DeleteFault::Throttled,
    ]);
    let response = run(&ec2, &req).await;
    assert!(response.deleted.is_empty(), "no DeleteSnapshot answered 'deleted': {response:?}");
    assert_eq!(response.not_deleted.len(), 1, "{response:?}");
    assert!(response.not_deleted[0].error.starts_with("access denied"), "{response:?}");
    assert_eq!(response.deletions_left, 4, "two unanswered, the throttled one and the one after it: {response:?}");
    assert!(!response.complete);
    let counts = InvocationCounts::of(&Ok(response.clone()), SystemTime::now());
    assert_eq!((counts.copies_deleted, counts.copies_not_deleted), (0, 1));
    assert_eq!(copy_snapshots::contract::metrics::emf(Some(TARGET), counts, 0)["CopiesNotDeleted"], 1);
    assert_eq!(ec2.deleted().len(), 1, "the unanswered call that did delete");

    // The next run: what is left goes, the one already gone is not deleted again.
    let response = run(&ec2, &req).await;
    assert_eq!(response.deleted.len(), 4, "{response:?}");
    assert!(response.complete && response.deletions_left == 0);
    assert_eq!(copy_of(&ec2).keys().cloned().collect::<Vec<_>>(), [sources[0][0].clone()]);
    let _ = copies;
}

#[tokio::test(start_paused = true)]
async fn a_copy_already_gone_is_not_counted_as_deleted() {
    let ec2 = SimulatedEc2::new();
    aged_sources(&ec2, 1, 3);
    copy_all(&ec2).await;
    ec2.fault_next_deletes(&[DeleteFault::GoneBefore]);
    let response = run(&ec2, &request(json!({"retain_count": 1}))).await;
    assert_eq!(response.deleted.len(), 1, "one deleted, one already gone: {response:?}");
    assert_eq!(response.deletions_left, 0);
    assert!(response.complete);
    assert_eq!(InvocationCounts::of(&Ok(response), SystemTime::now()).copies_deleted, 1);
}

#[test]
fn allow_mass_deletion_needs_a_retention() {
    let payload = json!({"snapshot_ids": ["snap-0123456789abcdef0"], "region": SOURCE, "target_region": TARGET,
                         "allow_mass_deletion": true});
    let error = CopyRequest::from_json(payload, &Settings::default()).unwrap_err();
    assert!(error.to_string().contains("allow_mass_deletion"), "{error}");
    let payload = json!({"snapshot_ids": ["snap-0123456789abcdef0"], "region": SOURCE, "target_region": TARGET,
                         "allow_mass_deletion": "yes"});
    assert!(CopyRequest::from_json(payload, &Settings::default()).is_err());
}
