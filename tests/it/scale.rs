//! At real-account scale, on the in-memory EC2 and tokio's paused clock: a night's burst of
//! new-snapshot events through the SQS queue (while other services' copies hold the region's
//! quota, and with two batches in flight together), `pending_limit` shared by every invocation
//! of the deployment, throttling and one denied source that do not stop the run, copies that
//! are never sources, and invocations shorter than the SDK's operation timeout that still
//! make progress.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::engine_world::request_with;
use crate::support::events::snapshot_notification;
use copy_snapshots::CopySnapshotsError;
use copy_snapshots::contract::request::{CopyRequest, Settings};
use copy_snapshots::engine::slots::RESERVATION_TTL;
use copy_snapshots::engine::{RunLimits, reconcile};
use copy_snapshots::entry::batch::handle_batch;
use copy_snapshots::entry::simulated_queue::{QueueSettings, SimulatedQueue};
use copy_snapshots::ids::{Region, SnapshotId};
use copy_snapshots::store::ledger::{LedgerState, SlotEntry, SlotKey};
use copy_snapshots::store::simulated::{MemoryLedger, SimulatedEc2};
use copy_snapshots::store::{SOURCE_REGION_TAG, SOURCE_SNAPSHOT_TAG};
use serde_json::{Value, json};
use tokio::time::Instant;

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
const POLL: Duration = Duration::from_secs(15);
const CALL_TIMEOUT: Duration = Duration::from_secs(25);
const HOUR: Duration = Duration::from_secs(3600);

fn settings(pending_limit: u32) -> Settings {
    Settings {
        source_region: Some(Region::parse(SOURCE).unwrap()),
        target_region: Some(Region::parse(TARGET).unwrap()),
        pending_limit,
        ..Settings::default()
    }
}

fn request(ids: &[SnapshotId], extra: Value) -> CopyRequest {
    request_with(json!({"snapshot_ids": ids, "region": SOURCE, "target_region": TARGET}), extra)
}

fn limits(deadline: Option<Duration>) -> RunLimits {
    RunLimits {
        deadline: deadline.map(|d| Instant::now() + d),
        poll_interval: POLL,
        max_poll_interval: copy_snapshots::contract::request::DEFAULT_MAX_POLL_INTERVAL,
        call_timeout: CALL_TIMEOUT,
    }
}

/// Live (not `error`) copies per source in the target region.
fn live_copies_per_source(ec2: &SimulatedEc2) -> HashMap<SnapshotId, usize> {
    crate::support::engine_world::live_copies_per_source(ec2, TARGET)
}

fn assert_each_copied_once(ec2: &SimulatedEc2, ids: &[SnapshotId]) {
    let counts = live_copies_per_source(ec2);
    let missing: Vec<&SnapshotId> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(missing.is_empty(), "{} sources never copied, e.g. {:?}", missing.len(), missing.first());
    let doubled: Vec<(&SnapshotId, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "sources copied more than once: {doubled:?}");
    assert_eq!(counts.len(), ids.len(), "copies of unexpected sources");
}

/// `count` new snapshots and their `EBS Snapshot Notification`s, sent to `queue` evenly over
/// `over`, the queue working meanwhile.
async fn burst(
    ec2: &SimulatedEc2,
    queue: &mut SimulatedQueue,
    settings: &Settings,
    count: usize,
    over: Duration,
) -> Vec<SnapshotId> {
    let mut ids = Vec::with_capacity(count);
    let per_minute = count.div_ceil(over.as_secs().div_ceil(60) as usize);
    for chunk in 0..count.div_ceil(per_minute) {
        for i in 0..per_minute.min(count - chunk * per_minute) {
            let id = ec2.add_source(SOURCE, 8 + ((chunk * per_minute + i) as u64 * 37) % 120, &[]);
            queue.send(&snapshot_notification(SOURCE, id.as_str()));
            ids.push(id);
        }
        let minute = Instant::now() + Duration::from_secs(60);
        queue.work_until(ec2, settings, minute).await;
        tokio::time::sleep_until(minute).await;
    }
    ids
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_500_events_waits_in_the_queue_while_other_copies_hold_the_quota() {
    let ec2 = SimulatedEc2::new();
    // Data Lifecycle Manager's or AWS Backup's copies hold all 20 slots for 6 hours.
    ec2.add_foreign_pending(TARGET, 20, 6 * HOUR);
    let settings = settings(15);
    let mut queue = SimulatedQueue::new(QueueSettings::TEMPLATE);
    let ids = burst(&ec2, &mut queue, &settings, 500, Duration::from_secs(600)).await;
    queue.work_until(&ec2, &settings, Instant::now() + 48 * HOUR).await;

    let calls = ec2.calls();
    println!(
        "burst_500_quota_held_6h: copied={} dead_lettered={} invocations={} ec2_calls_per_copy={:.2} queue_left={}",
        live_copies_per_source(&ec2).len(),
        queue.stats.dead_lettered.len(),
        queue.stats.invocations,
        calls.total() as f64 / ids.len() as f64,
        queue.in_queue()
    );
    assert!(queue.stats.dead_lettered.is_empty(), "{} dead-lettered", queue.stats.dead_lettered.len());
    assert_eq!(queue.in_queue(), 0, "every message acknowledged");
    assert_each_copied_once(&ec2, &ids);
    assert!(ec2.max_tracked_pending(TARGET) <= 15, "pending_limit 15 passed: {}", ec2.max_tracked_pending(TARGET));
}

/// EC2 answering in 50 ms and the slot table in 5 ms, as across regions: two batches in flight
/// together count, reserve and start side by side, not one after the other.
fn deployed_stack() -> SimulatedEc2 {
    SimulatedEc2::new()
        .with_latency(Duration::from_millis(50))
        .with_slot_ledger(MemoryLedger::new().with_latency(Duration::from_millis(5)))
}

#[tokio::test(start_paused = true)]
async fn a_burst_with_a_free_quota_never_holds_more_than_pending_limit_even_with_two_batches_in_flight() {
    let ec2 = deployed_stack();
    let settings = settings(10);
    let mut queue = SimulatedQueue::new(QueueSettings::TEMPLATE);
    // All 500 within a minute: more than one batch of 100 is visible at once.
    let ids = burst(&ec2, &mut queue, &settings, 500, Duration::from_secs(60)).await;
    queue.work_until(&ec2, &settings, Instant::now() + 48 * HOUR).await;

    let ledger = ec2.ledger().map(MemoryLedger::calls).unwrap_or_default();
    let calls = ec2.calls();
    println!(
        "burst_500_two_in_flight_ledger: invocations={} ec2_calls_per_copy={:.2} ledger_calls_per_copy={:.2} \
         conflicts={} refreshes={} max_pending={}",
        queue.stats.invocations,
        calls.total() as f64 / ids.len() as f64,
        ledger.total() as f64 / ids.len() as f64,
        ledger.conflicts,
        calls.list_pending_copies,
        ec2.max_tracked_pending(TARGET)
    );
    assert_eq!(queue.stats.max_in_flight, 2, "the scenario never had two batches in flight together");
    assert!(ledger.conflicts > 0, "the two batches never wrote the ledger against each other: {ledger:?}");
    assert!(queue.stats.dead_lettered.is_empty(), "{} dead-lettered", queue.stats.dead_lettered.len());
    assert_each_copied_once(&ec2, &ids);
    assert_eq!(
        ec2.max_tracked_pending(TARGET),
        10,
        "this deployment's pending copies must reach, and never pass, pending_limit"
    );
}

/// What the slot table is for, and why a deployment without one (the command line, a function
/// deployed by hand) is documented as not atomic: the same two batches, counting with one
/// DescribeSnapshots each, both see the slots free and both fill them.
#[tokio::test(start_paused = true)]
async fn without_a_slot_table_two_batches_in_flight_together_can_pass_pending_limit() {
    let ec2 = SimulatedEc2::new().with_latency(Duration::from_millis(50));
    let settings = settings(10);
    // Two batches of 20 received together, each start-only.
    let mut queue = SimulatedQueue::new(QueueSettings { batch_size: 20, ..QueueSettings::TEMPLATE });
    let ids: Vec<SnapshotId> = (0..40).map(|_| ec2.add_source(SOURCE, 100, &[])).collect();
    for id in &ids {
        queue.send(&snapshot_notification(SOURCE, id.as_str()));
    }
    queue.work_until(&ec2, &settings, Instant::now() + Duration::from_secs(30)).await;
    assert_eq!(queue.stats.max_in_flight, 2);
    let pending = ec2.max_tracked_pending(TARGET);
    assert!(pending > 10, "both counts saw the slots free, both filled them: {pending} of 10");
}

#[tokio::test(start_paused = true)]
async fn a_reservation_whose_invocation_died_holds_its_slots_until_its_ttl_then_a_refresh_frees_them() {
    let ec2 = deployed_stack();
    let ids: Vec<SnapshotId> = (0..3).map(|_| ec2.add_source(SOURCE, 8, &[])).collect();
    // An invocation reserved all 3 slots of pending_limit 3 a moment ago, then died before
    // starting anything (its sources are not these: a batch of other events).
    let now = ec2.now();
    let mut dead = LedgerState { refreshed_at: Some(now), ..LedgerState::default() };
    let source_region = Region::parse(SOURCE).unwrap();
    for n in 0..3u8 {
        let other = SnapshotId::parse(&format!("snap-0dead{n:012x}")).unwrap();
        let entry = SlotEntry { copy_id: None, reserved_at: now, recorded_at: None };
        dead.entries.insert(SlotKey::for_copy(&source_region, &other, "none"), entry);
    }
    let ledger = ec2.ledger().expect("a ledger");
    ledger.put(TARGET, dead);

    let started = Instant::now();
    let response = reconcile(&ec2, &request(&ids, json!({"pending_limit": 3})), limits(Some(Duration::from_secs(900))))
        .await
        .expect("an answer");
    assert_eq!(response.copies.len(), 3, "{response:?}");
    let first_start = ec2.first_copy_started_after(TARGET, started);
    // Not before the reservations' TTL (they might have been live), and soon after it.
    assert!(first_start >= RESERVATION_TTL, "started {first_start:?} after the run began, inside the TTL");
    assert!(first_start <= RESERVATION_TTL + Duration::from_secs(90), "started only {first_start:?} after");
    let (state, _) = ledger.state(TARGET).expect("the ledger");
    assert!(
        state.entries.keys().all(|k| !k.as_str().contains("snap-0dead")),
        "the dead reservations are gone: {state:?}"
    );
    assert_eq!(state.entries.len(), 3, "this run's 3 copies hold the slots: {state:?}");
    assert!(state.entries.values().all(|e| e.copy_id.is_some()), "{state:?}");
}

#[tokio::test(start_paused = true)]
async fn a_slot_table_that_does_not_answer_starts_nothing_and_fails_nothing() {
    let ec2 = deployed_stack();
    let ids: Vec<SnapshotId> = (0..4).map(|_| ec2.add_source(SOURCE, 8, &[])).collect();
    let ledger = ec2.ledger().expect("a ledger");
    ledger.fail_next_calls(1_000);
    let response = reconcile(&ec2, &request(&ids, json!({})), limits(Some(Duration::from_secs(120))))
        .await
        .expect("a throttled table never fails the run");
    assert_eq!(ec2.calls().start_copy, 0, "a copy started without a reserved slot");
    assert_eq!(response.pending_sources.len(), 4);
    assert!(response.notes.iter().any(|n| n.contains("slot ledger did not answer")), "{:?}", response.notes);
    // Backed off: a few tries in two minutes, not one per poll interval or faster.
    let tries = ledger.calls().failed;
    assert!((2..=12).contains(&tries), "{tries} ledger calls in two minutes");
    // The table answers again: the next invocation copies everything.
    ledger.fail_next_calls(0);
    let again = reconcile(&ec2, &request(&ids, json!({})), limits(Some(Duration::from_secs(120)))).await.unwrap();
    assert_eq!(again.copies.len(), 4, "{again:?}");
}

#[tokio::test(start_paused = true)]
async fn a_slot_table_the_role_may_not_use_is_access_denied_naming_it() {
    let ec2 = deployed_stack();
    let ids: Vec<SnapshotId> = (0..2).map(|_| ec2.add_source(SOURCE, 8, &[])).collect();
    ec2.ledger().expect("a ledger").deny();
    let result = reconcile(&ec2, &request(&ids, json!({})), limits(Some(HOUR))).await;
    let Err(CopySnapshotsError::AccessDenied(message)) = result else { panic!("{result:?}") };
    assert!(message.contains("slot ledger") && message.contains("dynamodb:GetItem"), "{message}");
    assert_eq!(ec2.calls().start_copy, 0);
}

#[tokio::test(start_paused = true)]
async fn with_a_slot_table_pending_limit_counts_the_copies_other_invocations_started() {
    let ec2 = deployed_stack();
    let first: Vec<SnapshotId> = (0..8).map(|_| ec2.add_source(SOURCE, 50, &[])).collect();
    let second: Vec<SnapshotId> = (0..8).map(|_| ec2.add_source(SOURCE, 50, &[])).collect();
    let start_only = json!({"pending_limit": 10, "max_wait_seconds": 0});
    let a = reconcile(&ec2, &request(&first, start_only.clone()), limits(Some(HOUR))).await.unwrap();
    assert_eq!(a.copies.len(), 8);
    let b = reconcile(&ec2, &request(&second, start_only), limits(Some(HOUR))).await.unwrap();
    assert_eq!(b.copies.len(), 2, "{b:?}");
    assert!(b.notes.iter().any(|n| n.contains("started by other invocations")), "{:?}", b.notes);
    // One refresh (the ledger's first use); the second invocation trusted the ledger.
    assert_eq!(ec2.calls().list_pending_copies, 1);
    assert_eq!(ec2.max_tracked_pending(TARGET), 10);
}

#[tokio::test(start_paused = true)]
async fn pending_limit_counts_the_copies_other_invocations_started() {
    let ec2 = SimulatedEc2::new();
    let first: Vec<SnapshotId> = (0..8).map(|_| ec2.add_source(SOURCE, 50, &[])).collect();
    let second: Vec<SnapshotId> = (0..8).map(|_| ec2.add_source(SOURCE, 50, &[])).collect();
    let start_only = json!({"pending_limit": 10, "max_wait_seconds": 0});
    let a = reconcile(&ec2, &request(&first, start_only.clone()), limits(Some(HOUR))).await.unwrap();
    assert_eq!(a.copies.len(), 8);
    // Another invocation (the schedule, a batch) of another request, the first one's copies
    // still pending: only the 2 slots left of this deployment's 10.
    let b = reconcile(&ec2, &request(&second, start_only), limits(Some(HOUR))).await.unwrap();
    assert_eq!(b.copies.len(), 2, "{b:?}");
    assert_eq!(b.pending_sources.len(), 6);
    assert!(b.notes.iter().any(|n| n.contains("started by other invocations")), "{:?}", b.notes);
    assert_eq!(ec2.max_tracked_pending(TARGET), 10);
}

#[tokio::test(start_paused = true)]
async fn a_denied_source_fails_alone_and_every_other_is_copied() {
    let ec2 = SimulatedEc2::new();
    let ids: Vec<SnapshotId> = [500, 8, 16, 32].iter().map(|gib| ec2.add_source(SOURCE, *gib, &[])).collect();
    // The largest, started first: an SCP denies its snapshot.
    let denial = "UnauthorizedOperation: explicit deny in a service control policy";
    ec2.deny_copies_of(&ids[0], denial);
    let result = reconcile(&ec2, &request(&ids, json!({})), limits(Some(HOUR))).await;
    let Err(CopySnapshotsError::CopyFailed { message, response }) = result else { panic!("{result:?}") };
    assert!(message.contains(ids[0].as_str()) && message.contains("explicit deny"), "{message}");
    let copied: Vec<&str> = response.copies.iter().map(|c| c.source_snapshot_id.as_str()).collect();
    assert_eq!(copied, [ids[1].as_str(), ids[2].as_str(), ids[3].as_str()]);
    assert_eq!(response.failed.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn throttling_beyond_the_sdks_retries_backs_off_and_every_source_is_copied() {
    let ec2 = SimulatedEc2::new();
    let ids: Vec<SnapshotId> = (0..12).map(|i| ec2.add_source(SOURCE, 8 + i * 10, &[])).collect();
    // The look, the count, polls and starts throttled, more than once each.
    ec2.throttle_next_looks(6);
    ec2.throttle_next_starts(4);
    let response =
        reconcile(&ec2, &request(&ids, json!({"pending_limit": 5, "wait_for_completion": true})), limits(None))
            .await
            .expect("throttling never fails a run that has time");
    assert!(response.complete, "{response:?}");
    assert_eq!(response.copies.len(), 12);
    let calls = ec2.calls();
    assert_eq!(calls.throttled_looks, 6, "the scenario throttled fewer look-ups than asked");
    let counts = live_copies_per_source(&ec2);
    assert!(ids.iter().all(|id| counts.get(id) == Some(&1)), "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn throttling_that_outlasts_a_short_invocation_leaves_the_sources_for_the_next() {
    let ec2 = SimulatedEc2::new();
    let ids: Vec<SnapshotId> = (0..4).map(|_| ec2.add_source(SOURCE, 8, &[])).collect();
    ec2.throttle_next_starts(1_000);
    let deadline = Duration::from_secs(60);
    let started = Instant::now();
    let response = reconcile(&ec2, &request(&ids, json!({})), limits(Some(deadline))).await.expect("an answer");
    assert!(Instant::now() <= started + deadline, "answered after the deadline");
    assert_eq!(response.pending_sources.len(), 4);
    assert!(response.notes.iter().any(|n| n.contains("throttled")), "{:?}", response.notes);
    // Backed off: a few tries in a minute, not one per millisecond.
    assert!(ec2.calls().start_copy < 20, "{} starts in a minute", ec2.calls().start_copy);
}

#[tokio::test(start_paused = true)]
async fn a_copy_this_function_made_is_never_a_source_even_from_another_region() {
    let ec2 = SimulatedEc2::new();
    let own = ec2.add_source(SOURCE, 8, &[("Backup", "daily")]);
    // A copy the opposite stack (eu-west-1 → us-east-1) made, tagged Backup=daily by copy_tags.
    let theirs = ec2.add_source(
        SOURCE,
        8,
        &[("Backup", "daily"), (SOURCE_SNAPSHOT_TAG, "snap-0123456789abcdef0"), (SOURCE_REGION_TAG, TARGET)],
    );
    let by_filter = CopyRequest::from_json(
        json!({"filters": [{"name": "tag:Backup", "values": ["daily"]}], "region": SOURCE, "target_region": TARGET}),
        &Settings::default(),
    )
    .unwrap();
    let response = reconcile(&ec2, &by_filter, limits(Some(HOUR))).await.unwrap();
    assert_eq!(response.copies.len(), 1);
    assert_eq!(response.copies[0].source_snapshot_id, own.as_str());
    assert_eq!(response.skipped.len(), 1, "{:?}", response.skipped);
    assert_eq!(response.skipped[0].source_snapshot_id, theirs.as_str());
    assert!(response.skipped[0].reason.contains("a copy this function made"), "{:?}", response.skipped);
    // Asked for by id, the same: skipped, not copied.
    let by_id = reconcile(&ec2, &request(std::slice::from_ref(&theirs), json!({})), limits(Some(HOUR))).await.unwrap();
    assert!(by_id.copies.is_empty() && by_id.skipped.len() == 1, "{by_id:?}");
    assert!(!live_copies_per_source(&ec2).contains_key(&theirs));
}

#[tokio::test(start_paused = true)]
async fn six_second_invocations_copy_everything() {
    // 50 ms a call, as EC2 answers across regions: a 6 s invocation has time for its look and
    // a few dozen starts, though the SDK's operation timeout alone is 25 s.
    let ec2 = SimulatedEc2::new().with_latency(Duration::from_millis(50));
    let ids: Vec<SnapshotId> = (0..30).map(|i| ec2.add_source(SOURCE, 8 + i, &[])).collect();
    let job = request(&ids, json!({"pending_limit": 20}));
    let mut rounds = 0;
    let mut first_round_copies = None;
    loop {
        rounds += 1;
        let started = Instant::now();
        let deadline = Duration::from_secs(6);
        let response = reconcile(&ec2, &job, limits(Some(deadline))).await.expect("an answer");
        assert!(Instant::now() <= started + deadline, "round {rounds} answered after its deadline");
        first_round_copies.get_or_insert(response.copies.len());
        if response.complete {
            break;
        }
        assert!(rounds < 40, "40 invocations of 6 s did not finish: {response:?}");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert!(first_round_copies.unwrap_or(0) > 0, "the first 6 s invocation started nothing");
    println!("six_second_invocations: rounds={rounds} first_round_copies={first_round_copies:?}");
    let counts = live_copies_per_source(&ec2);
    assert!(ids.iter().all(|id| counts.get(id) == Some(&1)), "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn an_invocation_too_short_to_start_anything_says_so() {
    // Calls of 800 ms in a 2.5 s invocation: the look fits, no start does.
    let ec2 = SimulatedEc2::new().with_latency(Duration::from_millis(800));
    let ids: Vec<SnapshotId> = (0..3).map(|_| ec2.add_source(SOURCE, 8, &[])).collect();
    let response = reconcile(&ec2, &request(&ids, json!({})), limits(Some(Duration::from_millis(2_500)))).await;
    let response = response.expect("an answer, not an error");
    assert!(!response.complete);
    assert!(response.notes.iter().any(|n| n.contains("left no time to start a copy")), "{:?}", response.notes);
}

#[tokio::test(start_paused = true)]
async fn a_batch_answers_each_record_and_drops_what_is_not_a_snapshot_event() {
    let ec2 = SimulatedEc2::new();
    ec2.add_foreign_pending(TARGET, 19, HOUR);
    let (a, b) = (ec2.add_source(SOURCE, 8, &[]), ec2.add_source(SOURCE, 100, &[]));
    let gone = SnapshotId::parse("snap-0aaaaaaaaaaaaaaaa").unwrap();
    let record = |id: &str, body: String| json!({"messageId": id, "body": body, "eventSource": "aws:sqs", "attributes": {}, "messageAttributes": {}});
    let batch = json!({"Records": [
        record("m-a", snapshot_notification(SOURCE, a.as_str()).to_string()),
        record("m-b", snapshot_notification(SOURCE, b.as_str()).to_string()),
        record("m-gone", snapshot_notification(SOURCE, gone.as_str()).to_string()),
        record("m-garbage", "{not json".to_owned()),
        record("m-other", json!({"detail-type": "Object Created", "source": "aws.s3", "detail": {}}).to_string()),
    ]});
    let settings = settings(20);
    let outcome = handle_batch(batch.clone(), &settings, &ec2, Some(Instant::now() + Duration::from_secs(60))).await;
    // One slot in the region: the larger snapshot starts; the smaller waits for a retry.
    assert_eq!(outcome.failed_message_ids(), ["m-a"]);
    assert_eq!(outcome.dropped.len(), 2, "{:?}", outcome.dropped);
    assert_eq!(ec2.calls().describe_sources, 1, "one look for the whole batch");
    // Redelivered once the quota frees: the copy started before is found, not made again.
    tokio::time::sleep(2 * HOUR).await;
    let again = handle_batch(batch, &settings, &ec2, Some(Instant::now() + Duration::from_secs(60))).await;
    assert!(again.failed_message_ids().is_empty(), "{:?}", again.failed_message_ids());
    assert_eq!(live_copies_per_source(&ec2).get(&b), Some(&1));
    assert_eq!(live_copies_per_source(&ec2).get(&a), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_deployment_is_full_tries_again_after_a_backoff_not_after_the_longest_poll() {
    let ec2 = SimulatedEc2::new();
    // Another invocation's 10 copies fill pending_limit 10 for 3 minutes.
    let first: Vec<SnapshotId> = (0..10).map(|_| ec2.add_source(SOURCE, 3, &[])).collect();
    let start_only = json!({"pending_limit": 10, "max_wait_seconds": 0});
    reconcile(&ec2, &request(&first, start_only), limits(Some(HOUR))).await.unwrap();
    let second: Vec<SnapshotId> = (0..2).map(|_| ec2.add_source(SOURCE, 8, &[])).collect();
    let started = Instant::now();
    let response =
        reconcile(&ec2, &request(&second, json!({"pending_limit": 10})), limits(Some(Duration::from_secs(900))))
            .await
            .unwrap();
    // A run that waited out the longest poll interval (900 s) would start nothing in its
    // 15 minutes; backing off, it starts both soon after the first copies complete.
    assert_eq!(response.copies.len(), 2, "{response:?}");
    let last_start = ec2.last_copy_started_after(TARGET, started);
    assert!(last_start <= Duration::from_secs(480), "started {last_start:?} after the run began");
}

#[tokio::test(start_paused = true)]
async fn a_batch_hands_back_a_snapshot_event_the_deployment_refuses_instead_of_dropping_it() {
    let ec2 = SimulatedEc2::new();
    let id = ec2.add_source(SOURCE, 8, &[]);
    // Deployed for another source region: the event's region is not one it may copy from. A
    // setting to fix, not an event to lose.
    let mut settings = settings(15);
    settings.allowed_source_regions = Some(vec![Region::parse("ap-south-1").unwrap()]);
    let batch = json!({"Records": [{
        "messageId": "m-1", "body": snapshot_notification(SOURCE, id.as_str()).to_string(),
        "eventSource": "aws:sqs", "attributes": {}, "messageAttributes": {}
    }]});
    let outcome = handle_batch(batch, &settings, &ec2, Some(Instant::now() + Duration::from_secs(60))).await;
    assert_eq!(outcome.failed_message_ids(), ["m-1"]);
    assert!(outcome.dropped.is_empty(), "{:?}", outcome.dropped);
    assert_eq!(ec2.calls().total(), 0, "nothing asked of EC2 for a request the deployment refuses");
}

#[tokio::test(start_paused = true)]
async fn a_batch_whose_event_does_not_parse_is_handed_back_whole() {
    let ec2 = SimulatedEc2::new();
    // Records that claim to come from SQS but carry no usable fields.
    let batch = json!({"Records": [{"eventSource": "aws:sqs", "messageId": 7}]});
    assert!(copy_snapshots::entry::batch::is_sqs_event(&batch));
    let outcome = handle_batch(batch, &settings(15), &ec2, None).await;
    assert!(outcome.envelope_unreadable, "an empty answer would delete the whole batch");
    assert!(outcome.result.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_start_round_longer_than_its_reservations_live_gives_back_what_it_has_not_started() {
    // Each EC2 call takes 10 s (a throttled account): 15 starts would take 150 s, beyond the
    // reservations' 120 s TTL. A second invocation arriving meanwhile must not take the round's
    // reservations for dead and start copies in their slots while the round goes on.
    let ec2 = SimulatedEc2::new()
        .with_latency(Duration::from_secs(10))
        .with_slot_ledger(MemoryLedger::new().with_latency(Duration::from_millis(5)));
    let first: Vec<SnapshotId> = (0..15).map(|_| ec2.add_source(SOURCE, 400, &[])).collect();
    let second: Vec<SnapshotId> = (0..15).map(|_| ec2.add_source(SOURCE, 400, &[])).collect();
    let start_only = json!({"pending_limit": 15, "max_wait_seconds": 0});
    let later = async {
        tokio::time::sleep(Duration::from_secs(125)).await;
        reconcile(&ec2, &request(&second, start_only.clone()), limits(Some(HOUR))).await
    };
    let first_request = request(&first, start_only.clone());
    let (a, b) = tokio::join!(reconcile(&ec2, &first_request, limits(Some(HOUR))), later);
    let (a, b) = (a.expect("the first run"), b.expect("the second run"));
    println!(
        "first started {}, second started {}, most pending {}",
        a.copies.len(),
        b.copies.len(),
        ec2.max_tracked_pending(TARGET)
    );
    assert!(a.copies.len() < 15, "the long round gave back what it could not start in time: {}", a.copies.len());
    assert!(ec2.max_tracked_pending(TARGET) <= 15, "{} pending", ec2.max_tracked_pending(TARGET));
}
