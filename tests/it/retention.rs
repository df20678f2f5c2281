//! Retention on the in-memory EC2 and tokio's paused clock (whose calendar the simulator
//! follows): a month of daily runs, counts per volume, the newest copy of a volume, orphans,
//! snapshots that are not this request's, refused and pending deletes, the deadline, the
//! volume's last completed copy, dry runs, and a second run that changes nothing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use copy_snapshots::contract::request::{CopyRequest, DEFAULT_MAX_POLL_INTERVAL, Settings};
use copy_snapshots::contract::response::Response;
use copy_snapshots::engine::{RunLimits, plan, reconcile};
use copy_snapshots::store::simulated::{CopyTimeModel, SimulatedEc2};
use copy_snapshots::store::{
    CopySpec, ENCRYPTION_TAG, SOURCE_REGION_TAG, SOURCE_SNAPSHOT_TAG, SOURCE_START_TIME_TAG, SOURCE_VOLUME_TAG,
    SnapshotState, Tag, format_start_time,
};
use copy_snapshots::{CopySnapshotsError, ids::SnapshotId};
use serde_json::{Value, json};
use tokio::time::Instant;

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
const DAY: Duration = Duration::from_secs(86_400);
const DAILY: (&str, &str) = ("Backup", "daily");

/// The schedule's request (tag:Backup=daily) with `extra` fields.
fn request(extra: Value) -> CopyRequest {
    crate::support::engine_world::request_with(
        json!({"filters": [{"name": "tag:Backup", "values": ["daily"]}], "region": SOURCE, "target_region": TARGET}),
        extra,
    )
}

fn limits(deadline: Option<Instant>) -> RunLimits {
    RunLimits {
        deadline,
        poll_interval: Duration::from_secs(15),
        max_poll_interval: DEFAULT_MAX_POLL_INTERVAL,
        call_timeout: Duration::from_secs(1),
    }
}

async fn run(ec2: &SimulatedEc2, request: &CopyRequest) -> Response {
    reconcile(ec2, request, limits(None)).await.expect("the run succeeds")
}

fn volume(n: usize) -> String {
    format!("vol-{n:017x}")
}

/// This function's live (not `error`) copies in the target region, per source volume tag.
fn copies_per_volume(ec2: &SimulatedEc2) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for copy in ec2.tracked_copies(TARGET) {
        if copy.state != SnapshotState::Error {
            *counts.entry(copy.source_volume_id.unwrap_or_default()).or_insert(0) += 1;
        }
    }
    counts
}

/// The sources of this function's copies in the target region.
fn copied_sources(ec2: &SimulatedEc2) -> HashSet<SnapshotId> {
    ec2.tracked_copies(TARGET).into_iter().map(|c| c.source_id).collect()
}

fn ids(list: &[String]) -> HashSet<SnapshotId> {
    list.iter().map(|id| SnapshotId::parse(id).unwrap()).collect()
}

fn deleted_sources(response: &Response) -> HashSet<SnapshotId> {
    ids(&response.deleted.iter().map(|d| d.source_snapshot_id.clone()).collect::<Vec<_>>())
}

/// `count` snapshots of each of `volumes` volumes, the first of each started now, then one a
/// day older each; by volume, newest first.
fn aged_sources(ec2: &SimulatedEc2, volumes: usize, count: u32) -> Vec<Vec<SnapshotId>> {
    (0..volumes)
        .map(|v| (0..count).map(|age| ec2.add_volume_snapshot(SOURCE, &volume(v), 8, DAY * age, &[DAILY])).collect())
        .collect()
}

/// Copies every source (a plain request, before any retention was configured).
async fn copy_all(ec2: &SimulatedEc2) -> Response {
    let response = run(ec2, &request(json!({"wait_for_completion": true}))).await;
    assert!(response.complete && response.deleted.is_empty(), "{response:?}");
    response
}

#[tokio::test(start_paused = true)]
async fn thirty_days_of_a_daily_schedule_keep_a_week_per_volume_and_never_copy_a_deleted_one_again() {
    // Once with the source region keeping every snapshot, once with it keeping three days (as
    // Data Lifecycle Manager would): the copies of gone sources are judged by their own tags.
    for source_region_keeps in [None, Some(3u32)] {
        let ec2 = SimulatedEc2::new();
        let req = request(json!({"retain_days": 7, "wait_for_completion": true}));
        let mut sources: Vec<(SnapshotId, Instant)> = Vec::new();
        let mut copied = HashSet::new();
        let mut deleted = HashSet::new();
        for day in 0..30 {
            let today = Instant::now();
            for v in 0..5 {
                sources.push((ec2.add_volume_snapshot(SOURCE, &volume(v), 8, Duration::ZERO, &[DAILY]), today));
            }
            if let Some(keep) = source_region_keeps {
                for (id, taken) in &sources {
                    if today.duration_since(*taken) > DAY * keep {
                        ec2.remove_snapshot(SOURCE, id);
                    }
                }
            }
            let response = run(&ec2, &req).await;
            assert!(response.complete, "day {day}: {response:?}");
            assert!(response.not_deleted.is_empty());
            for copy in response.copies.iter().filter(|c| !c.reused) {
                let source = SnapshotId::parse(&copy.source_snapshot_id).unwrap();
                assert!(!deleted.contains(&source), "day {day}: {source} was copied again after its copy was deleted");
                assert!(copied.insert(source), "day {day}: {} copied twice", copy.source_snapshot_id);
            }
            deleted.extend(deleted_sources(&response));
            let per_volume = copies_per_volume(&ec2);
            assert_eq!(per_volume.len(), 5, "day {day}: {per_volume:?}");
            if day >= 7 {
                assert!(per_volume.values().all(|n| (7..=8).contains(n)), "day {day}: {per_volume:?}");
            } else {
                assert!(per_volume.values().all(|n| *n == day + 1), "day {day}: nothing deleted yet: {per_volume:?}");
            }
            let since = Instant::now().duration_since(today);
            tokio::time::advance(DAY - since).await;
        }
        assert_eq!(deleted.len(), (30 - 7) * 5, "keeps={source_region_keeps:?}");
        assert_eq!(ec2.pending_deletes(), 0, "a pending copy was deleted");
        if source_region_keeps.is_some() {
            // 23 days of deletions, each of a copy whose source was gone for days.
            assert!(ec2.calls().delete_copy >= 23 * 5);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retain_count_three_holds_exactly_three_copies_per_volume_the_newest() {
    let ec2 = SimulatedEc2::new();
    let sources = aged_sources(&ec2, 5, 10);
    copy_all(&ec2).await;
    assert!(copies_per_volume(&ec2).values().all(|n| *n == 10));

    // 35 of 50 copies: more than the deletion breaker lets a run delete without the override.
    let req = request(json!({"retain_count": 3, "wait_for_completion": true, "allow_mass_deletion": true}));
    let pruned = run(&ec2, &req).await;
    assert!(pruned.complete, "{pruned:?}");
    assert_eq!(pruned.deleted.len(), 35);
    assert_eq!(pruned.skipped.len(), 35, "each source out of retention is reported, not copied");
    assert!(pruned.skipped.iter().all(|s| s.reason.contains("out of retention (retain_count 3)")), "{pruned:?}");
    assert_eq!(pruned.copies.len(), 15);
    assert!(copies_per_volume(&ec2).values().all(|n| *n == 3), "{:?}", copies_per_volume(&ec2));
    let newest: HashSet<SnapshotId> = sources.iter().flat_map(|v| v[..3].iter().cloned()).collect();
    assert_eq!(copied_sources(&ec2), newest);
    let oldest = &sources[0][9];
    let reason = &pruned.deleted.iter().find(|d| d.source_snapshot_id == oldest.as_str()).unwrap().reason;
    assert!(
        reason.starts_with("its source is out of retention (retain_count 3): started 9 days ago, the 10th newest"),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_newest_copy_of_a_volume_whose_snapshots_are_all_old_is_kept() {
    let ec2 = SimulatedEc2::new();
    let old: Vec<SnapshotId> =
        [30, 40, 50].map(|age| ec2.add_volume_snapshot(SOURCE, &volume(1), 8, DAY * age, &[DAILY])).into();
    let fresh = ec2.add_volume_snapshot(SOURCE, &volume(2), 8, Duration::ZERO, &[DAILY]);
    copy_all(&ec2).await;

    let response = run(&ec2, &request(json!({"retain_days": 7}))).await;
    assert_eq!(deleted_sources(&response), HashSet::from([old[1].clone(), old[2].clone()]));
    assert_eq!(copied_sources(&ec2), HashSet::from([old[0].clone(), fresh]), "a recovery copy of every volume");

    // The same from nothing: only the newest of the old volume is copied at all.
    let ec2 = SimulatedEc2::new();
    let old: Vec<SnapshotId> =
        [30, 40, 50].map(|age| ec2.add_volume_snapshot(SOURCE, &volume(1), 8, DAY * age, &[DAILY])).into();
    let response = run(&ec2, &request(json!({"retain_days": 7}))).await;
    assert_eq!(response.copies.len(), 1);
    assert_eq!(response.copies[0].source_snapshot_id, old[0].as_str());
    assert_eq!(ids(&response.skipped.iter().map(|s| s.source_snapshot_id.clone()).collect::<Vec<_>>()).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_orphan_is_kept_without_the_rule_and_deleted_after_the_grace_with_it() {
    let ec2 = SimulatedEc2::new();
    // A volume that is gone with all its snapshots, and one still backed up.
    let gone = ec2.add_volume_snapshot(SOURCE, &volume(1), 8, DAY * 5, &[DAILY]);
    ec2.add_volume_snapshot(SOURCE, &volume(2), 8, Duration::ZERO, &[DAILY]);
    copy_all(&ec2).await;
    ec2.remove_snapshot(SOURCE, &gone);

    // Without delete_orphans_after_days the orphan stays, however old, whatever the retention.
    let response = run(&ec2, &request(json!({"retain_days": 1, "retain_count": 1}))).await;
    assert!(response.deleted.is_empty() && response.deletions_left == 0, "{response:?}");
    assert!(copied_sources(&ec2).contains(&gone));

    // With a grace of 10 days: kept at 5 days old, deleted once older than 10.
    let req = request(json!({"delete_orphans_after_days": 10}));
    let response = run(&ec2, &req).await;
    assert!(response.deleted.is_empty(), "{response:?}");
    tokio::time::advance(DAY * 6).await;
    // Past the grace, but the volume itself still exists (its snapshots were deleted, as by
    // ransomware or a mistaken clean-up): its last copy stays.
    let response = run(&ec2, &req).await;
    assert!(response.deleted.is_empty() && response.deletions_left == 0, "{response:?}");
    assert_eq!(ec2.calls().describe_volumes, 1);
    // DescribeVolumes without an answer: kept too.
    ec2.remove_volume(&volume(1));
    ec2.fail_volume_looks(true);
    let response = run(&ec2, &req).await;
    assert!(response.deleted.is_empty(), "{response:?}");
    ec2.fail_volume_looks(false);
    // The volume is gone: its last copy goes.
    let response = run(&ec2, &req).await;
    assert_eq!(deleted_sources(&response), HashSet::from([gone.clone()]));
    let reason = &response.deleted[0].reason;
    assert_eq!(
        reason,
        &format!(
            "its source and its volume {} are gone from {SOURCE}, and started 11 days ago, more than \
             delete_orphans_after_days 10",
            volume(1)
        )
    );
    assert!(!copied_sources(&ec2).contains(&gone));
    assert_eq!(copied_sources(&ec2).len(), 1, "the live volume's copy stays");
}

/// A snapshot in the target region made by someone else, carrying `tags`.
fn foreign(ec2: &SimulatedEc2, tags: &[(&str, &str)]) -> SnapshotId {
    ec2.add_snapshot(TARGET, 8, SnapshotState::Completed, false, tags)
}

#[tokio::test(start_paused = true)]
async fn snapshots_without_the_tags_or_from_another_region_or_request_are_never_touched() {
    let ec2 = SimulatedEc2::new();
    let sources = aged_sources(&ec2, 1, 3);
    let old = sources[0][2].clone();
    let old_start = format_start_time(ec2.now() - DAY * 2);
    copy_all(&ec2).await;
    let vol = volume(0);
    let untagged = foreign(&ec2, &[]);
    let other_region = foreign(
        &ec2,
        &[
            (SOURCE_SNAPSHOT_TAG, old.as_str()),
            (SOURCE_REGION_TAG, "ap-south-1"),
            (SOURCE_VOLUME_TAG, &vol),
            (SOURCE_START_TIME_TAG, &old_start),
            (ENCRYPTION_TAG, "none"),
        ],
    );
    let region_tag_only = foreign(&ec2, &[(SOURCE_REGION_TAG, SOURCE), (SOURCE_VOLUME_TAG, &vol)]);
    // Another request's copy of the same source, encrypted with its key.
    let req = request(json!({"retain_count": 1, "delete_orphans_after_days": 0}));
    let key = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let keyed = ec2.add_tracked_copy(
        &CopySpec {
            source_id: old.clone(),
            source_region: req.source_region.clone(),
            target: req.targets[0].place.clone(),
            description: "another request's copy".into(),
            encrypted: true,
            kms_key_id: Some(key.into()),
            tags: vec![
                Tag::new(SOURCE_SNAPSHOT_TAG, old.as_str()),
                Tag::new(SOURCE_REGION_TAG, SOURCE),
                Tag::new(ENCRYPTION_TAG, key),
                Tag::new(SOURCE_VOLUME_TAG, &vol),
                Tag::new(SOURCE_START_TIME_TAG, &old_start),
            ],
            completion_duration_minutes: None,
        },
        None,
    );
    ec2.complete_now(TARGET, &keyed);

    let response = run(&ec2, &req).await;
    assert_eq!(response.deleted.len(), 2, "the plain copies of the two older sources: {response:?}");
    let deleted: HashSet<SnapshotId> = ec2.deleted().into_iter().collect();
    for untouched in [&untagged, &other_region, &region_tag_only, &keyed] {
        assert!(!deleted.contains(untouched), "{untouched} was deleted");
    }
    assert_eq!(ec2.calls().delete_copy, 2, "no DeleteSnapshot on anything else");
    assert!(response.not_deleted.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_copy_of_a_snapshot_this_request_does_not_select_is_neither_counted_nor_deleted() {
    let ec2 = SimulatedEc2::new();
    let daily_old = ec2.add_volume_snapshot(SOURCE, &volume(0), 8, DAY * 3, &[DAILY]);
    let daily_new = ec2.add_volume_snapshot(SOURCE, &volume(0), 8, DAY * 2, &[DAILY]);
    // The weekly schedule's snapshot of the same volume, newer than both, and its copy.
    let weekly = ec2.add_volume_snapshot(SOURCE, &volume(0), 8, DAY, &[("Backup", "weekly")]);
    let payload = json!({"filters": [{"name": "tag:Backup", "values": ["weekly"]}], "region": SOURCE,
                         "target_region": TARGET, "wait_for_completion": true});
    run(&ec2, &CopyRequest::from_json(payload, &Settings::default()).unwrap()).await;

    // Counted, the weekly snapshot would push the older daily one out of the newest two.
    let two = run(&ec2, &request(json!({"retain_count": 2, "wait_for_completion": true}))).await;
    assert!(two.skipped.is_empty() && two.deleted.is_empty(), "{two:?}");
    assert_eq!(copied_sources(&ec2), HashSet::from([daily_old.clone(), daily_new, weekly.clone()]));
    let one = run(&ec2, &request(json!({"retain_count": 1, "delete_orphans_after_days": 0}))).await;
    assert_eq!(deleted_sources(&one), HashSet::from([daily_old]));
    assert!(copied_sources(&ec2).contains(&weekly), "the weekly copy is the weekly schedule's");
}

#[tokio::test(start_paused = true)]
async fn a_refused_delete_is_reported_and_the_run_goes_on() {
    let ec2 = SimulatedEc2::new();
    aged_sources(&ec2, 1, 4);
    copy_all(&ec2).await;
    let copies: Vec<SnapshotId> = ec2.tracked_copies(TARGET).into_iter().map(|c| c.id).collect();
    // The two oldest sources' copies: one an AMI uses, one locked.
    let (in_use, locked) = (copies[3].clone(), copies[2].clone());
    ec2.refuse_delete(
        &in_use,
        "InvalidSnapshot.InUse",
        &format!("The snapshot {in_use} is currently in use by ami-0abc"),
    );
    ec2.refuse_delete(&locked, "SnapshotLocked", &format!("The snapshot {locked} is locked"));

    let req = request(json!({"retain_count": 1}));
    let response = run(&ec2, &req).await;
    assert!(response.complete, "a refusal is not work left: {response:?}");
    assert_eq!(response.deleted.len(), 1);
    assert_eq!(response.deleted[0].snapshot_id, copies[1].as_str());
    let refused: HashMap<&str, &str> =
        response.not_deleted.iter().map(|n| (n.snapshot_id.as_str(), n.error.as_str())).collect();
    assert_eq!(refused.len(), 2, "{response:?}");
    assert!(refused[in_use.as_str()].starts_with("InvalidSnapshot.InUse: "), "{refused:?}");
    assert!(refused[locked.as_str()].starts_with("SnapshotLocked: "), "{refused:?}");

    // The next run tries again; once the AMI is gone, the copy goes.
    ec2.allow_delete(&in_use);
    let response = run(&ec2, &req).await;
    assert_eq!(response.deleted.len(), 1);
    assert_eq!(response.deleted[0].snapshot_id, in_use.as_str());
    assert_eq!(response.not_deleted.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn every_second_run_of_the_same_request_makes_no_copy_or_delete_call() {
    let rules = [
        json!({"retain_days": 3}),
        json!({"retain_count": 2}),
        json!({"retain_days": 5, "retain_count": 2}),
        json!({"delete_orphans_after_days": 2}),
        json!({"retain_days": 3, "delete_orphans_after_days": 0}),
        json!({"retain_count": 1, "delete_orphans_after_days": 4}),
    ];
    for rule in rules {
        for wait in [true, false] {
            let ec2 = SimulatedEc2::new();
            let sources = aged_sources(&ec2, 4, 8);
            // Some sources were copied before and are gone now, some never were copied.
            copy_all(&ec2).await;
            for volume in &sources {
                ec2.remove_snapshot(SOURCE, &volume[7]);
                ec2.remove_snapshot(SOURCE, &volume[5]);
            }
            for _ in 0..3 {
                ec2.add_volume_snapshot(SOURCE, &volume(99), 8, DAY * 3, &[DAILY]);
            }
            let mut extra = rule.clone();
            extra["wait_for_completion"] = json!(wait);
            let req = request(extra);
            let first = run(&ec2, &req).await;
            // Copies still pending: wait them out, as the next day's run would.
            tokio::time::advance(Duration::from_secs(3_600)).await;
            let calls = ec2.calls();
            let second = run(&ec2, &req).await;
            let again = ec2.calls();
            assert_eq!(again.start_copy, calls.start_copy, "{rule}, wait {wait}: CopySnapshot on the second run");
            assert_eq!(again.delete_copy, calls.delete_copy, "{rule}, wait {wait}: DeleteSnapshot on the second run");
            assert!(second.deleted.is_empty() && second.deletions_left == 0, "{rule}: {second:?}");
            assert!(second.copies.iter().all(|c| c.reused), "{rule}");
            let skipped = |r: &Response| r.skipped.iter().map(|s| s.source_snapshot_id.clone()).collect::<Vec<_>>();
            assert_eq!(skipped(&second), skipped(&first), "{rule}: the same sources skipped");
            assert_eq!(ec2.pending_deletes(), 0);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_pending_copy_is_never_deleted_and_a_volume_keeps_its_last_completed_copy() {
    let ec2 = SimulatedEc2::new();
    let first = ec2.add_volume_snapshot(SOURCE, &volume(1), 100, Duration::ZERO, &[DAILY]);
    let req = request(json!({"retain_count": 1, "max_wait_seconds": 0}));
    // Day 1: the copy starts, and is still pending when a newer snapshot arrives.
    run(&ec2, &req).await;
    tokio::time::advance(Duration::from_secs(60)).await;
    let second = ec2.add_volume_snapshot(SOURCE, &volume(1), 100, Duration::ZERO, &[DAILY]);
    let response = run(&ec2, &req).await;
    assert!(response.deleted.is_empty(), "the first copy is pending: {response:?}");
    assert_eq!(response.deletions_left, 1);
    assert!(!response.complete, "a later run has a deletion to make");
    assert_eq!(ec2.pending_deletes(), 0);

    // The first copy completes; the second is still pending: the volume's only completed copy
    // stays until the second completes.
    tokio::time::advance(Duration::from_secs(120 + 100 * 20 - 60)).await;
    let response = run(&ec2, &req).await;
    assert!(response.deleted.is_empty(), "{response:?}");
    assert_eq!(response.deletions_left, 1);
    let planned = plan(&ec2, &req, CopyTimeModel::DEFAULT).await.unwrap().remove(0);
    let later: Vec<&str> =
        planned.sources.iter().filter(|s| s.action == "delete_later").map(|s| s.source_snapshot_id.as_str()).collect();
    assert_eq!(later, [first.as_str()]);
    assert!(
        planned.sources.iter().any(|s| s.reason.as_deref().is_some_and(|r| r.contains("the newest completed copy of")))
    );

    tokio::time::advance(Duration::from_secs(120 + 100 * 20)).await;
    let response = run(&ec2, &req).await;
    assert_eq!(deleted_sources(&response), HashSet::from([first]));
    assert!(response.complete);
    assert_eq!(copied_sources(&ec2), HashSet::from([second]));
    assert_eq!(ec2.pending_deletes(), 0);
}

#[tokio::test(start_paused = true)]
async fn pruning_that_cannot_finish_before_the_deadline_stops_cleanly_and_the_next_run_continues() {
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::INSTANT);
    aged_sources(&ec2, 2, 150);
    copy_all(&ec2).await;
    let ec2 = ec2.with_latency(Duration::from_millis(200));
    let req = request(json!({"retain_count": 1, "allow_mass_deletion": true}));
    let mut runs = 0;
    let mut deleted = 0;
    loop {
        runs += 1;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        let response = reconcile(&ec2, &req, limits(Some(deadline))).await.expect("no error for unfinished pruning");
        assert!(Instant::now() <= deadline, "run {runs} answered after its deadline");
        deleted += response.deleted.len();
        if response.complete {
            assert_eq!(response.deletions_left, 0);
            break;
        }
        assert!(response.deletions_left > 0, "{response:?}");
        assert!(runs < 10, "pruning does not converge");
    }
    assert!(runs >= 2, "one 30 s run cannot make 298 deletions at 0.2 s each");
    assert_eq!(deleted, 298);
    assert_eq!(ec2.calls().delete_copy, 298, "no copy deleted twice");
    assert!(copies_per_volume(&ec2).values().all(|n| *n == 1));
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_calls_neither_copy_nor_delete_and_answers_what_a_run_would_do() {
    let ec2 = SimulatedEc2::new();
    let sources = aged_sources(&ec2, 2, 5);
    copy_all(&ec2).await;
    let new = ec2.add_volume_snapshot(SOURCE, &volume(0), 8, Duration::ZERO, &[DAILY]);
    let req = request(json!({"retain_count": 2, "dry_run": true}));
    let before = ec2.calls();
    let answer = run(&ec2, &req).await;
    let after = ec2.calls();
    assert_eq!((after.start_copy, after.delete_copy), (before.start_copy, before.delete_copy));
    assert!(answer.dry_run && !answer.complete);
    assert_eq!(answer.to_copy, [new.as_str()]);
    // vol 0: the new one and sources[0][0] are kept; vol 1: sources[1][0..2].
    let would_delete = deleted_sources(&answer);
    let expected: HashSet<SnapshotId> = sources[0][1..].iter().chain(&sources[1][2..]).cloned().collect();
    assert_eq!(would_delete, expected);
    assert_eq!(answer.skipped.len(), expected.len());
    let serialized = serde_json::to_value(&answer).unwrap();
    assert_eq!(serialized["dry_run"], true, "{serialized}");

    // The real run does exactly that.
    let mut real = req.clone();
    real.dry_run = false;
    let response = run(&ec2, &real).await;
    assert_eq!(deleted_sources(&response), would_delete);
    let started: Vec<&str> =
        response.copies.iter().filter(|c| !c.reused).map(|c| c.source_snapshot_id.as_str()).collect();
    assert_eq!(started, [new.as_str()]);
    assert!(!response.dry_run);
}

#[tokio::test(start_paused = true)]
async fn sources_out_of_retention_requested_by_id_are_skipped_and_an_error_stays_an_error() {
    let ec2 = SimulatedEc2::new();
    let sources = aged_sources(&ec2, 1, 3);
    let payload = json!({"snapshot_ids": sources[0], "region": SOURCE, "target_region": TARGET, "retain_count": 1});
    let req = CopyRequest::from_json(payload, &Settings::default()).unwrap();
    let response = run(&ec2, &req).await;
    assert_eq!(response.copies.len(), 1);
    assert_eq!(response.copies[0].source_snapshot_id, sources[0][0].as_str());
    assert_eq!(response.skipped.len(), 2);
    assert!(response.complete, "skipped by retention is done, not pending");
    // A missing id is still SourceNotFound, retention or not.
    let payload = json!({"snapshot_ids": ["snap-0123456789abcdef0"], "region": SOURCE, "target_region": TARGET,
                         "retain_count": 1});
    let req = CopyRequest::from_json(payload, &Settings::default()).unwrap();
    assert!(matches!(reconcile(&ec2, &req, limits(None)).await, Err(CopySnapshotsError::SourceNotFound(_))));
}
