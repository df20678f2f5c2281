//! The reconciler on the in-memory EC2 and tokio's paused clock: limits, idempotency across
//! interruptions and deadlines, region quota, failures, ambiguous answers, polling cost.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::engine_world::request_with;
use crate::support::events::snapshot_notification;
use copy_snapshots::CopySnapshotsError;
use copy_snapshots::contract::request::{CopyRequest, DEFAULT_MAX_POLL_INTERVAL, Settings};
use copy_snapshots::contract::response::Response;
use copy_snapshots::engine::{MAX_ATTEMPTS, RunLimits, reconcile};
use copy_snapshots::ids::SnapshotId;
use copy_snapshots::store::simulated::{CopyTimeModel, QuietStart, SimulatedEc2};
use copy_snapshots::store::{
    CopySpec, ENCRYPTION_TAG, SOURCE_REGION_TAG, SOURCE_SNAPSHOT_TAG, SOURCE_START_TIME_TAG, SnapshotState, Tag,
    find_tag,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio::time::Instant;

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
const POLL: Duration = Duration::from_secs(15);
/// The in-memory EC2 answers within its latency; tests with latency set it lower than this.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

fn request(ids: &[SnapshotId], extra: Value) -> CopyRequest {
    request_with(json!({"snapshot_ids": ids, "region": SOURCE, "target_region": TARGET}), extra)
}

fn no_deadline() -> RunLimits {
    RunLimits {
        deadline: None,
        poll_interval: POLL,
        max_poll_interval: DEFAULT_MAX_POLL_INTERVAL,
        call_timeout: CALL_TIMEOUT,
    }
}

fn deadline_in(after: Duration) -> RunLimits {
    RunLimits {
        deadline: Some(Instant::now() + after),
        poll_interval: POLL,
        max_poll_interval: DEFAULT_MAX_POLL_INTERVAL,
        call_timeout: CALL_TIMEOUT,
    }
}

/// Sources of sizes `sizes` in the source region.
fn sources(ec2: &SimulatedEc2, sizes: &[u64]) -> Vec<SnapshotId> {
    sizes.iter().map(|gib| ec2.add_source(SOURCE, *gib, &[])).collect()
}

/// Live (not `error`) copies per source in the target region.
fn live_copies_per_source(ec2: &SimulatedEc2) -> HashMap<SnapshotId, usize> {
    crate::support::engine_world::live_copies_per_source(ec2, TARGET)
}

fn assert_each_copied_once(ec2: &SimulatedEc2, ids: &[SnapshotId]) {
    let counts = live_copies_per_source(ec2);
    for id in ids {
        assert_eq!(counts.get(id), Some(&1), "{id} should have exactly one copy; all: {counts:?}");
    }
    assert_eq!(counts.len(), ids.len(), "copies of unexpected sources: {counts:?}");
}

fn assert_request_order(response: &Response, ids: &[SnapshotId]) {
    let order: Vec<&str> = response.copies.iter().map(|c| c.source_snapshot_id.as_str()).collect();
    let expected: Vec<&str> = ids.iter().map(SnapshotId::as_str).collect();
    assert_eq!(order, expected);
    let copy_ids: Vec<&str> = response.copies.iter().map(|c| c.snapshot_id.as_str()).collect();
    assert_eq!(response.snapshot_ids, copy_ids);
}

#[tokio::test(start_paused = true)]
async fn pending_copies_never_exceed_the_limit_and_all_are_copied_once() {
    let ec2 = SimulatedEc2::new();
    let sizes: Vec<u64> = (0..30).map(|i| 8 + (i * 37) % 300).collect();
    let ids = sources(&ec2, &sizes);
    let response =
        reconcile(&ec2, &request(&ids, json!({"pending_limit": 4, "wait_for_completion": true})), no_deadline())
            .await
            .unwrap();
    assert!(response.complete);
    assert!(response.copies.iter().all(|c| c.state == "completed" && !c.reused));
    assert_request_order(&response, &ids);
    assert_each_copied_once(&ec2, &ids);
    // The simulator checks at every start, the only moment the count can rise.
    assert_eq!(ec2.max_tracked_pending(TARGET), 4, "the limit is used, never exceeded");
}

#[tokio::test(start_paused = true)]
async fn largest_sources_start_first() {
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[10, 500, 40, 2000, 100]);
    let response = reconcile(&ec2, &request(&ids, json!({"pending_limit": 2, "max_wait_seconds": 0})), no_deadline())
        .await
        .unwrap();
    let started: Vec<&str> = response.copies.iter().map(|c| c.source_snapshot_id.as_str()).collect();
    assert_eq!(started, [ids[1].as_str(), ids[3].as_str()], "the two largest, reported in request order");
    assert_eq!(response.pending_sources, [ids[0].as_str(), ids[2].as_str(), ids[4].as_str()]);
    assert!(!response.complete);
}

#[tokio::test(start_paused = true)]
async fn a_second_run_reuses_every_copy() {
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8, 16, 32]);
    let req = request(&ids, json!({"wait_for_completion": true}));
    let first = reconcile(&ec2, &req, no_deadline()).await.unwrap();
    let starts = ec2.calls().start_copy;
    let second = reconcile(&ec2, &req, no_deadline()).await.unwrap();
    assert_eq!(ec2.calls().start_copy, starts, "no new CopySnapshot");
    assert!(second.complete && second.copies.iter().all(|c| c.reused && c.state == "completed"));
    assert_eq!(first.snapshot_ids, second.snapshot_ids);
}

#[tokio::test(start_paused = true)]
async fn interrupted_anywhere_then_run_again_makes_no_duplicate() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut orphaned = 0;
    for round in 0..40 {
        let ec2 = SimulatedEc2::new().with_latency(Duration::from_millis(300));
        let sizes: Vec<u64> = (0..12).map(|_| rng.random_range(8..200)).collect();
        let ids = sources(&ec2, &sizes);
        let req = request(&ids, json!({"pending_limit": 3, "wait_for_completion": true}));
        // Cut the invocation off at a random moment, mid-call included: a copy may exist
        // that the invocation never heard of.
        let mut cuts = 0;
        loop {
            // Half the cuts fall in the first seconds, where the starts are; the others
            // anywhere in the job.
            let cut = if rng.random_bool(0.5) {
                Duration::from_millis(rng.random_range(0..3_000))
            } else {
                Duration::from_millis(rng.random_range(0..4_000_000))
            };
            match tokio::time::timeout(cut, reconcile(&ec2, &req, no_deadline())).await {
                Ok(result) => {
                    let response = result.unwrap();
                    assert!(response.complete, "round {round}");
                    assert_request_order(&response, &ids);
                    break;
                }
                Err(_) => cuts += 1,
            }
            assert!(cuts < 200, "round {round}: never finished");
        }
        assert_each_copied_once(&ec2, &ids);
        assert!(ec2.max_tracked_pending(TARGET) <= 3, "round {round}");
        assert_eq!(ec2.calls().delete_copy, 0, "round {round}: a duplicate was made (and deleted)");
        orphaned += ec2.orphaned_starts();
    }
    // Otherwise the scenario never cut inside a CopySnapshot and proves nothing about them.
    assert!(orphaned > 0, "no cut fell between a copy's creation and its answer");
    println!("orphaned_starts={orphaned}");
}

#[tokio::test(start_paused = true)]
async fn a_short_deadline_returns_in_time_and_repeated_invocations_finish_the_job() {
    let ec2 = SimulatedEc2::new().with_latency(Duration::from_millis(200));
    let sizes: Vec<u64> = (0..25).map(|i| 8 + (i * 53) % 400).collect();
    let ids = sources(&ec2, &sizes);
    let req = request(&ids, json!({"pending_limit": 5, "wait_for_completion": true}));
    let mut invocations = 0;
    loop {
        invocations += 1;
        let limits = deadline_in(Duration::from_secs(60));
        let deadline = limits.deadline.unwrap();
        let response = reconcile(&ec2, &req, limits).await.unwrap();
        assert!(Instant::now() < deadline, "invocation {invocations} overran its deadline");
        if response.complete {
            assert_request_order(&response, &ids);
            assert!(response.copies.iter().all(|c| c.state == "completed"));
            break;
        }
        assert!(
            !response.pending_sources.is_empty() || response.copies.iter().any(|c| c.state == "pending"),
            "an incomplete answer says what is left"
        );
        // Step Functions' Wait state between invocations.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(invocations < 500, "never finished");
    }
    assert!(invocations > 1, "the job needs more than one 60 s invocation");
    assert_each_copied_once(&ec2, &ids);
    assert!(ec2.max_tracked_pending(TARGET) <= 5);
}

#[tokio::test(start_paused = true)]
async fn a_short_lived_invocation_still_starts_copies() {
    // A function configured with a 20 s timeout: the margin shrinks with the time there is.
    let ec2 = SimulatedEc2::new().with_latency(Duration::from_millis(100));
    let ids = sources(&ec2, &[8, 8, 8]);
    let limits = deadline_in(Duration::from_secs(20));
    let response = reconcile(&ec2, &request(&ids, json!({})), limits).await.unwrap();
    assert!(response.complete, "{response:?}");
    assert!(Instant::now() < limits.deadline.unwrap());
}

#[tokio::test(start_paused = true)]
async fn max_wait_zero_starts_what_fits_and_returns_at_once() {
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8; 7]);
    let req = request(&ids, json!({"pending_limit": 3, "max_wait_seconds": 0}));
    let started = Instant::now();
    let response = reconcile(&ec2, &req, deadline_in(Duration::from_secs(900))).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO, "no waiting");
    assert_eq!(response.copies.len(), 3);
    assert_eq!(response.pending_sources.len(), 4);
    assert!(!response.complete);
    assert_eq!(ec2.calls().describe_copies, 0);
}

#[tokio::test(start_paused = true)]
async fn foreign_copies_filling_the_region_delay_but_never_fail() {
    let ec2 = SimulatedEc2::new();
    ec2.add_foreign_pending(TARGET, 20, Duration::from_secs(1200));
    let ids = sources(&ec2, &[8, 8, 8, 8, 8]);
    let started = Instant::now();
    let response = reconcile(&ec2, &request(&ids, json!({})), no_deadline()).await.unwrap();
    assert!(response.complete);
    assert!(ec2.no_slot_answers() > 0, "the region was full");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1200), "copies started only once slots freed");
    // The engine's part: it backs off to at most 16 poll intervals while the region is full,
    // so it starts within that of the slots freeing.
    assert!(waited <= Duration::from_secs(1200) + POLL * 17, "slow to notice free slots: {waited:?}");
    assert!(ec2.calls().start_copy < 40, "backs off while waiting: {} CopySnapshot calls", ec2.calls().start_copy);
    assert_each_copied_once(&ec2, &ids);
}

#[tokio::test(start_paused = true)]
async fn the_region_quota_shared_with_foreign_copies_is_respected() {
    let ec2 = SimulatedEc2::new();
    ec2.add_foreign_pending(TARGET, 17, Duration::from_secs(3000));
    let ids = sources(&ec2, &[8; 10]);
    let response = reconcile(&ec2, &request(&ids, json!({"wait_for_completion": true})), no_deadline()).await.unwrap();
    assert!(response.complete);
    // The simulator refuses a fourth start; what the engine controls is that after one
    // ResourceLimitExceeded it tries no other start until the next poll.
    let refused = ec2.no_slot_answers();
    assert!(refused > 0, "the region was never full");
    assert!(refused <= ec2.calls().describe_copies + 1, "{refused} refusals in {} rounds", ec2.calls().describe_copies);
    assert_each_copied_once(&ec2, &ids);
}

#[tokio::test(start_paused = true)]
async fn failed_copies_do_not_stop_the_others_and_end_in_copy_failed() {
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8, 20, 30, 40, 50, 60]);
    ec2.fail_copies_of(&ids[1], "Given key ID is not accessible");
    ec2.refuse_next_copy_of(&ids[4], "InvalidParameterValue", "Snapshot is too large for this operation");
    let result =
        reconcile(&ec2, &request(&ids, json!({"pending_limit": 2, "wait_for_completion": true})), no_deadline()).await;
    let Err(CopySnapshotsError::CopyFailed { message, response }) = result else { panic!("{result:?}") };
    assert!(message.contains(ids[1].as_str()) && message.contains("Given key ID is not accessible"), "{message}");
    assert!(message.contains(ids[4].as_str()) && message.contains("InvalidParameterValue"), "{message}");
    for copy in &response.copies {
        assert!(message.contains(&copy.snapshot_id), "the message names every copy made: {message}");
        assert_eq!(copy.state, "completed");
    }
    assert_eq!(response.copies.len(), 4);
    let failed: Vec<&str> = response.failed.iter().map(|f| f.source_snapshot_id.as_str()).collect();
    assert_eq!(failed, [ids[1].as_str(), ids[4].as_str()]);
    assert!(response.failed[0].snapshot_id.is_some(), "the copy that ended in error is named");
    assert!(!response.complete);
}

#[tokio::test(start_paused = true)]
async fn a_copy_in_error_or_with_other_encryption_is_not_reused() {
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8, 8]);
    ec2.fail_copies_of(&ids[0], "Given key ID is not accessible");
    let plain = request(&ids, json!({"wait_for_completion": true}));
    let first = reconcile(&ec2, &plain, no_deadline()).await;
    assert!(matches!(first, Err(CopySnapshotsError::CopyFailed { .. })), "{first:?}");
    let errors_of_first = ec2.tracked_copies(TARGET).iter().filter(|c| c.source_id == ids[0]).count();
    assert_eq!(errors_of_first, MAX_ATTEMPTS, "an error copy is tried again, up to the bound");

    // Same request again: the error copies are found and counted, so nothing new is tried.
    let again = reconcile(&ec2, &plain, no_deadline()).await;
    let Err(CopySnapshotsError::CopyFailed { response, .. }) = again else { panic!("{again:?}") };
    assert_eq!(response.failed[0].error_snapshot_ids.len(), MAX_ATTEMPTS, "{response:?}");
    let copies = ec2.tracked_copies(TARGET);
    assert_eq!(copies.iter().filter(|c| c.source_id == ids[0]).count(), MAX_ATTEMPTS);
    assert_eq!(copies.iter().filter(|c| c.source_id == ids[1]).count(), 1, "the good copy is reused");

    // Encrypted with a key: the unencrypted copy of ids[1] does not count.
    let key = ec2.add_key(TARGET, None);
    let key = key.as_str();
    let encrypted = request(&ids[1..], json!({"encrypt": true, "kms_key_id": key, "wait_for_completion": true}));
    let response = reconcile(&ec2, &encrypted, no_deadline()).await.unwrap();
    assert!(!response.copies[0].reused);
    let again = reconcile(&ec2, &encrypted, no_deadline()).await.unwrap();
    assert!(again.copies[0].reused, "the encrypted copy now counts");
    assert_eq!(again.snapshot_ids, response.snapshot_ids);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_copy_call_is_looked_up_before_any_retry() {
    for created in [true, false] {
        let ec2 = SimulatedEc2::new();
        let ids = sources(&ec2, &[8, 16, 24]);
        ec2.lose_answer_to_next_copy_of(&ids[1], created);
        let response =
            reconcile(&ec2, &request(&ids, json!({"wait_for_completion": true})), no_deadline()).await.unwrap();
        assert!(response.complete, "created={created}");
        assert_each_copied_once(&ec2, &ids);
        let expected_starts = if created { 3 } else { 4 };
        assert_eq!(ec2.calls().start_copy, expected_starts, "created={created}");
    }
}

#[tokio::test(start_paused = true)]
async fn polling_uses_one_call_per_round_and_few_rounds_for_long_copies() {
    let ec2 = SimulatedEc2::new();
    // 20 copies of 2 TiB: about 11.4 hours each.
    let ids = sources(&ec2, &[2048; 20]);
    let response = reconcile(&ec2, &request(&ids, json!({"wait_for_completion": true})), no_deadline()).await.unwrap();
    assert!(response.complete);
    let calls = ec2.calls();
    assert_eq!(calls.describe_sources, 1);
    assert_eq!(calls.find_copies, 1);
    assert_eq!(calls.start_copy, 20);
    // A fixed 15 s poll would make 2,700 calls; waiting as progress suggests needs few.
    assert!(calls.describe_copies <= 60, "{} polls", calls.describe_copies);
}

#[tokio::test(start_paused = true)]
async fn a_small_copy_quiet_for_its_first_30_percent_is_polled_soon_after_it_completes() {
    // 8 GiB: 280 s by the model, here 0.64 of it (179 s, a small incremental copy), reading 0%
    // for its first 54 s. A 0% reading at 15 s once meant "at least 99 × 15 s more", so the
    // next poll came 15 minutes later and the slot idled 12 of them.
    let quiet = QuietStart { quiet_share: 0.3, shortest: 0.64, longest: 0.64 };
    let ec2 = SimulatedEc2::new().with_quiet_start_copies(quiet);
    let ids = sources(&ec2, &[8]);
    let started = Instant::now();
    let response = reconcile(&ec2, &request(&ids, json!({"wait_for_completion": true})), no_deadline()).await.unwrap();
    let seen = started.elapsed();
    assert!(response.complete && response.copies[0].state == "completed");
    let took = ec2.copy_durations(TARGET)[0];
    assert!(seen <= took + POLL, "completed after {took:?}, seen after {seen:?}");
    assert!(ec2.calls().describe_copies <= 6, "{} polls", ec2.calls().describe_copies);
}

#[tokio::test(start_paused = true)]
async fn missing_or_unready_sources_stop_everything_before_any_copy() {
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8]);
    let missing = SnapshotId::parse("snap-0000000000000dead").unwrap();
    let result = reconcile(&ec2, &request(&[ids[0].clone(), missing.clone()], json!({})), no_deadline()).await;
    let Err(CopySnapshotsError::SourceNotFound(message)) = result else { panic!("{result:?}") };
    assert!(message.contains(missing.as_str()) && !message.contains(ids[0].as_str()), "{message}");

    let pending = ec2.add_snapshot(SOURCE, 8, SnapshotState::Pending, false, &[]);
    let archived = ec2.add_source(SOURCE, 8, &[]);
    ec2.archive(SOURCE, &archived);
    let result =
        reconcile(&ec2, &request(&[ids[0].clone(), pending.clone(), archived.clone()], json!({})), no_deadline()).await;
    let Err(CopySnapshotsError::SourceNotReady(message)) = result else { panic!("{result:?}") };
    assert!(message.contains(pending.as_str()) && message.contains("pending"), "{message}");
    assert!(message.contains(archived.as_str()) && message.contains("archive"), "{message}");
    assert_eq!(ec2.calls().start_copy, 0);
    assert!(ec2.tracked_copies(TARGET).is_empty());
}

#[tokio::test(start_paused = true)]
async fn access_denied_fails_each_source_and_throttling_backs_off_until_done() {
    // A role that may copy nothing: every source fails with the denial, named in CopyFailed;
    // the look itself being denied is the AccessDenied errorType (see the handler tests).
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8, 8]);
    ec2.deny_copies();
    let result = reconcile(&ec2, &request(&ids, json!({})), no_deadline()).await;
    let Err(err @ CopySnapshotsError::CopyFailed { .. }) = result else { panic!("{result:?}") };
    assert!(ids.iter().all(|id| err.to_string().contains(id.as_str())), "{err}");
    assert!(err.to_string().contains("UnauthorizedOperation"), "{err}");

    // Throttling beyond the SDK's retries on a start: backed off, not fatal.
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8, 8, 8]);
    let req = request(&ids, json!({"pending_limit": 1, "wait_for_completion": true}));
    ec2.throttle_next_starts(1);
    let response = reconcile(&ec2, &req, no_deadline()).await.expect("throttling backs off");
    assert!(response.complete);
    assert_each_copied_once(&ec2, &ids);
}

#[tokio::test(start_paused = true)]
async fn filters_select_by_tag_and_copies_carry_tags_and_tracking() {
    let ec2 = SimulatedEc2::new();
    let daily = ec2.add_source(SOURCE, 8, &[("Backup", "daily"), ("team", "core"), ("aws:backup:source", "x")]);
    let _weekly = ec2.add_source(SOURCE, 8, &[("Backup", "weekly")]);
    let in_progress = ec2.add_snapshot(SOURCE, 8, SnapshotState::Pending, false, &[("Backup", "daily")]);
    let payload = json!({"filters": [{"name": "tag:Backup", "values": ["daily"]}], "region": SOURCE,
                         "target_region": TARGET, "copy_tags": true, "tags": {"dr": "yes", "team": "dr"}});
    let req = CopyRequest::from_json(payload, &Settings::default()).unwrap();
    let response = reconcile(&ec2, &req, no_deadline()).await.unwrap();
    assert_eq!(response.copies.len(), 1);
    assert_eq!(response.copies[0].source_snapshot_id, daily.as_str());
    assert_eq!(response.pending_sources, [in_progress.as_str()], "not completed yet: a later run copies it");
    assert!(!response.complete);

    let copy = SnapshotId::parse(&response.copies[0].snapshot_id).unwrap();
    let tags = ec2.tags_of(TARGET, &copy);
    assert_eq!(find_tag(&tags, SOURCE_SNAPSHOT_TAG), Some(daily.as_str()));
    assert_eq!(find_tag(&tags, SOURCE_REGION_TAG), Some(SOURCE));
    assert_eq!(find_tag(&tags, "Backup"), Some("daily"));
    assert_eq!(find_tag(&tags, "team"), Some("dr"), "request tags win over copied ones");
    assert_eq!(find_tag(&tags, "dr"), Some("yes"));
    assert!(tags.iter().all(|t| !t.key.starts_with("aws:")));
    // What retention needs once the source is gone: its volume and its age.
    let source = ec2.tracked_copies(TARGET).into_iter().find(|c| c.id == copy).expect("the copy");
    assert!(source.source_volume_id.as_deref().is_some_and(|v| v.starts_with("vol-")), "{tags:?}");
    let started = source.source_start_time.expect("the source's start time");
    assert!(ec2.now().duration_since(started).is_ok_and(|d| d < Duration::from_millis(1)), "{tags:?}");
    assert!(find_tag(&tags, SOURCE_START_TIME_TAG).is_some_and(|t| t.ends_with('Z')), "{tags:?}");
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_sources_in_one_request() {
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::INSTANT);
    let ids: Vec<SnapshotId> = (0..10_000).map(|i| ec2.add_source(SOURCE, 8 + i % 50, &[])).collect();
    let response = reconcile(&ec2, &request(&ids, json!({})), no_deadline()).await.unwrap();
    assert!(response.complete);
    assert_eq!(response.snapshot_ids.len(), 10_000);
    assert_each_copied_once(&ec2, &ids);
}

/// A source whose copies always end in `error`, run as the state machine runs it: the same
/// request with `max_wait_seconds: 0` every round, so no poll ever sees a copy fail.
#[tokio::test(start_paused = true)]
async fn the_state_machine_loop_ends_in_copy_failed_after_a_bounded_number_of_error_copies() {
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8, 16, 24, 32, 40, 48]);
    ec2.fail_copies_of(&ids[2], "Given key ID is not accessible");
    let req = request(&ids, json!({"wait_for_completion": true, "max_wait_seconds": 0}));
    let mut rounds = 0;
    let (message, response) = loop {
        rounds += 1;
        match reconcile(&ec2, &req, deadline_in(Duration::from_secs(900))).await {
            Ok(response) => assert!(!response.complete, "round {rounds}: complete with a failing source"),
            Err(CopySnapshotsError::CopyFailed { message, response }) => break (message, response),
            Err(other) => panic!("round {rounds}: {other:?}"),
        }
        assert!(rounds < 40, "the loop never ended");
        // The state machine's Wait state.
        tokio::time::sleep(Duration::from_secs(300)).await;
    };
    let errors: Vec<_> = ec2.tracked_copies(TARGET).into_iter().filter(|c| c.source_id == ids[2]).collect();
    assert_eq!(errors.len(), MAX_ATTEMPTS, "{errors:?}");
    assert!(errors.iter().all(|c| c.state == SnapshotState::Error));
    assert!(message.contains(ids[2].as_str()) && message.contains("Given key ID is not accessible"), "{message}");
    for copy in &errors {
        assert!(message.contains(copy.id.as_str()), "the message names error copy {}: {message}", copy.id);
    }
    assert_eq!(response.copies.len(), 5);
    let others: Vec<SnapshotId> = ids.iter().filter(|id| **id != ids[2]).cloned().collect();
    let live = live_copies_per_source(&ec2);
    for id in &others {
        assert_eq!(live.get(id), Some(&1), "{id}");
    }
    println!("rounds_to_copy_failed={rounds}");
}

/// The same request as a daily schedule sends it: no waiting for completion.
#[tokio::test(start_paused = true)]
async fn six_scheduled_runs_with_a_failing_source_report_it_and_stop_trying() {
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8, 16, 24, 32, 40, 48]);
    ec2.fail_copies_of(&ids[0], "Given key ID is not accessible");
    let req = request(&ids, json!({}));
    let mut reported = 0;
    for _ in 0..6 {
        match reconcile(&ec2, &req, deadline_in(Duration::from_secs(900))).await {
            Ok(response) => assert!(response.failed.is_empty()),
            Err(CopySnapshotsError::CopyFailed { message, .. }) => {
                assert!(message.contains(ids[0].as_str()), "{message}");
                reported += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_secs(86_400)).await;
    }
    assert!(reported > 0, "no run reported the failing source");
    let errors = ec2.tracked_copies(TARGET).into_iter().filter(|c| c.source_id == ids[0]).count();
    assert!(errors <= MAX_ATTEMPTS, "{errors} error copies");
    assert_each_copied_once(&ec2, &ids[1..]);
}

fn earlier_copy_spec(request: &CopyRequest, source: &SnapshotId, kms_key_id: Option<&str>) -> CopySpec {
    CopySpec {
        source_id: source.clone(),
        source_region: request.source_region.clone(),
        target: request.targets[0].place.clone(),
        description: "an earlier invocation's copy".into(),
        encrypted: kms_key_id.is_some(),
        kms_key_id: kms_key_id.map(str::to_owned),
        tags: vec![
            Tag::new(SOURCE_SNAPSHOT_TAG, source.as_str()),
            Tag::new(SOURCE_REGION_TAG, SOURCE),
            Tag::new(ENCRYPTION_TAG, kms_key_id.unwrap_or("none")),
        ],
        completion_duration_minutes: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_second_copy_is_deleted_only_once_both_are_completed_keeping_the_oldest() {
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8, 8, 400, 400]);
    let req = request(&ids, json!({}));
    // ids[0]: an old completed copy and a newer pending one. ids[1]: two pending, the older
    // first. ids[2]: an older copy still pending (400 GiB) and a newer one already completed.
    // ids[3]: the same, but the older pending copy will end in `error`.
    let completed = ec2.add_tracked_copy(&earlier_copy_spec(&req, &ids[0], None), None);
    let older = ec2.add_tracked_copy(&earlier_copy_spec(&req, &ids[1], None), None);
    let older_pending = ec2.add_tracked_copy(&earlier_copy_spec(&req, &ids[2], None), None);
    let failing_pending = ec2.add_tracked_copy(&earlier_copy_spec(&req, &ids[3], None), Some("internal error"));
    tokio::time::sleep(Duration::from_secs(400)).await;
    let newer_of_0 = ec2.add_tracked_copy(&earlier_copy_spec(&req, &ids[0], None), None);
    let newer_completed = ec2.add_tracked_copy(&earlier_copy_spec(&req, &ids[2], None), None);
    ec2.complete_now(TARGET, &newer_completed);
    let good_of_3 = ec2.add_tracked_copy(&earlier_copy_spec(&req, &ids[3], None), None);
    ec2.complete_now(TARGET, &good_of_3);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let newer_of_1 = ec2.add_tracked_copy(&earlier_copy_spec(&req, &ids[1], None), None);

    // While one of two copies is pending, neither is deleted, and a completed one is the
    // source's copy.
    let first = reconcile(&ec2, &req, no_deadline()).await.unwrap();
    assert_eq!(
        first.snapshot_ids,
        [completed.to_string(), older.to_string(), newer_completed.to_string(), good_of_3.to_string()]
    );
    assert!(first.duplicates_removed.is_empty(), "{:?}", first.duplicates_removed);
    assert_eq!(ec2.calls().delete_copy, 0);

    // Once both are completed, the newer goes; the one that ended in `error` left the good one.
    tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    let second = reconcile(&ec2, &req, no_deadline()).await.unwrap();
    assert_eq!(
        second.snapshot_ids,
        [completed.to_string(), older.to_string(), older_pending.to_string(), good_of_3.to_string()]
    );
    let mut removed: Vec<&str> = second.duplicates_removed.iter().map(|r| r.snapshot_id.as_str()).collect();
    removed.sort_unstable();
    let mut expected = [newer_of_0.as_str(), newer_of_1.as_str(), newer_completed.as_str()];
    expected.sort_unstable();
    assert_eq!(removed, expected);
    assert_eq!(ec2.calls().delete_copy, 3);
    assert_eq!(ec2.calls().start_copy, 0);
    let live = ec2.tracked_copies(TARGET).into_iter().filter(|c| c.state != SnapshotState::Error).count();
    assert_eq!(live, 4, "one good copy of each source");
    assert!(ec2.tracked_copies(TARGET).iter().any(|c| c.id == failing_pending && c.state == SnapshotState::Error));
    // Nothing left to heal: a third run deletes nothing.
    let again = reconcile(&ec2, &req, no_deadline()).await.unwrap();
    assert!(again.duplicates_removed.is_empty());
    assert_eq!(ec2.calls().delete_copy, 3);
}

#[tokio::test(start_paused = true)]
async fn copies_encrypted_differently_serve_different_requests_and_are_never_duplicates() {
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8]);
    let key = ec2.add_key(TARGET, None);
    let key = key.as_str();
    let plain = request(&ids, json!({"wait_for_completion": true}));
    let encrypted = request(&ids, json!({"encrypt": true, "kms_key_id": key, "wait_for_completion": true}));
    // The schedule's plain copy, then a check with a key (the README's recipe), then both
    // again, as the schedule and the check would run on.
    let first_plain = reconcile(&ec2, &plain, no_deadline()).await.unwrap();
    let first_encrypted = reconcile(&ec2, &encrypted, no_deadline()).await.unwrap();
    for _ in 0..2 {
        let again = reconcile(&ec2, &plain, no_deadline()).await.unwrap();
        assert!(again.duplicates_removed.is_empty(), "{again:?}");
        assert_eq!(again.snapshot_ids, first_plain.snapshot_ids);
        let again = reconcile(&ec2, &encrypted, no_deadline()).await.unwrap();
        assert!(again.duplicates_removed.is_empty(), "{again:?}");
        assert_eq!(again.snapshot_ids, first_encrypted.snapshot_ids);
    }
    assert_eq!(ec2.calls().start_copy, 2);
    assert_eq!(ec2.calls().delete_copy, 0);
}

#[tokio::test(start_paused = true)]
async fn an_unsure_start_is_not_retried_on_one_look_while_the_listing_lags() {
    // The copy EC2 made shows up 100 s late: within the backed-off looks, so no second start.
    let ec2 = SimulatedEc2::new().with_visibility_lag(Duration::from_secs(100));
    let ids = sources(&ec2, &[8, 16, 24]);
    ec2.lose_answer_to_next_copy_of(&ids[1], true);
    let response = reconcile(&ec2, &request(&ids, json!({"wait_for_completion": true})), no_deadline()).await.unwrap();
    assert!(response.complete);
    assert_eq!(ec2.calls().start_copy, 3, "a start was repeated before the lag passed");
    assert_each_copied_once(&ec2, &ids);
    assert!(ec2.calls().find_copies >= 3, "looked up {} times", ec2.calls().find_copies);
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_made_while_the_listing_lagged_heals_on_the_next_run() {
    // Longer than the looks for an unsure start (225 s): the engine starts the source again,
    // and the next run finds two. (Shorter than a confirmed copy may stay unlisted, 450 s.)
    let ec2 = SimulatedEc2::new().with_visibility_lag(Duration::from_secs(300));
    let ids = sources(&ec2, &[8, 16]);
    ec2.lose_answer_to_next_copy_of(&ids[0], true);
    let req = request(&ids, json!({"wait_for_completion": true}));
    let first = reconcile(&ec2, &req, no_deadline()).await.unwrap();
    assert!(first.complete);
    assert_eq!(ec2.calls().start_copy, 3);
    tokio::time::sleep(Duration::from_secs(600)).await;
    let second = reconcile(&ec2, &req, no_deadline()).await.unwrap();
    assert_eq!(second.duplicates_removed.len(), 1, "{second:?}");
    assert_each_copied_once(&ec2, &ids);
}

#[tokio::test(start_paused = true)]
async fn a_look_for_copies_without_an_answer_is_tried_again_and_an_ec2_error_only_when_it_never_answers() {
    // One look without an answer: tried again after a backoff, and the run goes on.
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8, 16]);
    ec2.lose_finds(0, 1);
    let response = reconcile(&ec2, &request(&ids, json!({})), no_deadline()).await.expect("the look is tried again");
    assert_eq!(response.copies.len(), 2);
    assert_eq!(ec2.calls().find_copies, 2);

    // Never an answer: an Ec2Error once the tries are used up, before any copy.
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8, 16]);
    ec2.lose_finds(0, 1_000);
    let result = reconcile(&ec2, &request(&ids, json!({})), no_deadline()).await;
    let Err(err @ CopySnapshotsError::Ec2Error(_)) = result else { panic!("{result:?}") };
    assert!(err.to_string().contains("no copy was started"), "{err}");
    assert_eq!(ec2.calls().start_copy, 0);

    // Later, while resolving an unsure start: the look is tried again next round.
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8, 16]);
    ec2.lose_answer_to_next_copy_of(&ids[1], true);
    ec2.lose_finds(1, 2);
    let response = reconcile(&ec2, &request(&ids, json!({})), no_deadline()).await.unwrap();
    assert!(response.complete);
    assert_eq!(ec2.calls().start_copy, 2);
    assert_each_copied_once(&ec2, &ids);
}

#[tokio::test(start_paused = true)]
async fn a_copy_that_would_carry_more_than_50_tags_fails_alone() {
    let ec2 = SimulatedEc2::new();
    let many: Vec<(String, String)> = (0..45).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let crowded = ec2.add_source(SOURCE, 8, &many);
    let plain = ec2.add_source(SOURCE, 8, &[]);
    let extra: serde_json::Map<String, Value> = (0..5).map(|i| (format!("x{i}"), json!("y"))).collect();
    let req = request(&[crowded.clone(), plain.clone()], json!({"copy_tags": true, "tags": extra}));
    let result = reconcile(&ec2, &req, no_deadline()).await;
    let Err(CopySnapshotsError::CopyFailed { message, response }) = result else { panic!("{result:?}") };
    assert!(
        message.contains(crowded.as_str())
            && message.contains("55 tags")
            && message.contains("5 of this function's")
            && message.contains("50"),
        "{message}"
    );
    assert_eq!(response.copies.len(), 1);
    assert_eq!(response.copies[0].source_snapshot_id, plain.as_str());
}

#[tokio::test(start_paused = true)]
async fn a_slow_store_and_an_unsure_start_near_the_deadline_still_answer_in_time() {
    // Every call takes 20 s; the SDK's operation timeout is 25 s. The smallest source starts
    // last, its answer lost, so an unsure look-up is due just as the time runs out.
    for total in (100..=240).step_by(10) {
        let ec2 = SimulatedEc2::new().with_latency(Duration::from_secs(20));
        let ids = sources(&ec2, &[8, 16, 24, 32, 40]);
        ec2.lose_answer_to_next_copy_of(&ids[0], true);
        let limits = RunLimits {
            deadline: Some(Instant::now() + Duration::from_secs(total)),
            poll_interval: POLL,
            max_poll_interval: DEFAULT_MAX_POLL_INTERVAL,
            call_timeout: Duration::from_secs(25),
        };
        let deadline = limits.deadline.unwrap();
        let result = reconcile(&ec2, &request(&ids, json!({"pending_limit": 5})), limits).await;
        assert!(result.is_ok(), "{total} s: {result:?}");
        assert!(Instant::now() <= deadline, "a {total} s invocation answered {:?} late", Instant::now() - deadline);
    }
}

#[tokio::test(start_paused = true)]
async fn an_event_whose_snapshot_cannot_start_fails_so_lambda_retries_it() {
    let ec2 = SimulatedEc2::new();
    ec2.add_foreign_pending(TARGET, 20, Duration::from_secs(3600));
    let id = ec2.add_source(SOURCE, 8, &[]);
    let settings =
        Settings { target_region: Some(copy_snapshots::ids::Region::parse(TARGET).unwrap()), ..Settings::default() };
    let event = snapshot_notification(SOURCE, id.as_str());
    let result =
        copy_snapshots::handle(event.clone(), &settings, &ec2, Some(Instant::now() + Duration::from_secs(900))).await;
    let Err(err @ CopySnapshotsError::SourcesPending { .. }) = result else { panic!("{result:?}") };
    assert_eq!(err.error_type(), "SourcesPending");
    assert!(err.to_string().contains(id.as_str()), "{err}");
    // The same snapshot asked for directly is an ordinary incomplete answer.
    let direct = json!({"snapshot_ids": [id], "region": SOURCE, "target_region": TARGET});
    let response =
        copy_snapshots::handle(direct, &settings, &ec2, Some(Instant::now() + Duration::from_secs(900))).await.unwrap();
    assert_eq!(response.pending_sources, [id.as_str()]);
    // Lambda's retry, once the quota has room: copied once.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let response =
        copy_snapshots::handle(event, &settings, &ec2, Some(Instant::now() + Duration::from_secs(900))).await.unwrap();
    assert!(response.complete);
    assert_each_copied_once(&ec2, &[id]);
}

#[tokio::test(start_paused = true)]
async fn a_filter_ec2_refuses_is_an_invalid_request_naming_it() {
    let ec2 = SimulatedEc2::new();
    sources(&ec2, &[8]);
    let payload = json!({"filters": [{"name": "tags:Backup", "values": ["daily"]}], "region": SOURCE,
                         "target_region": TARGET});
    let req = CopyRequest::from_json(payload, &Settings::default()).unwrap();
    let result = reconcile(&ec2, &req, no_deadline()).await;
    let Err(err @ CopySnapshotsError::InvalidRequest(_)) = result else { panic!("{result:?}") };
    assert!(err.to_string().contains("tags:Backup"), "{err}");
    assert_eq!(ec2.calls().start_copy, 0);
}

#[tokio::test(start_paused = true)]
async fn a_copy_deleted_before_this_run_ever_saw_it_gives_way_to_the_surviving_one() {
    // Another invocation made c1 (not listed yet, so this run's look misses it and starts
    // c2), then heals the duplicate by deleting c2 before this run's polls ever list it.
    let ec2 = SimulatedEc2::new().with_visibility_lag(Duration::from_secs(100));
    let ids = sources(&ec2, &[8]);
    let req = request(&ids, json!({"wait_for_completion": true}));
    let c1 = ec2.add_tracked_copy(&earlier_copy_spec(&req, &ids[0], None), None);
    let target = req.targets[0].place.clone();
    let other_invocation = async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let c2 = ec2.tracked_copies(TARGET).into_iter().map(|c| c.id).find(|id| *id != c1).expect("this run's copy");
        copy_snapshots::store::SnapshotStore::delete_copy(&ec2, &target, &c2).await.unwrap();
    };
    let (result, ()) = tokio::join!(reconcile(&ec2, &req, deadline_in(Duration::from_secs(900))), other_invocation);
    let response = result.unwrap();
    assert!(response.complete, "{response:?}");
    assert_eq!(response.snapshot_ids, [c1.to_string()]);
    assert_eq!(ec2.calls().start_copy, 1);
    assert_each_copied_once(&ec2, &ids);
}

#[tokio::test(start_paused = true)]
async fn error_copies_of_a_request_with_another_key_are_not_this_requests_attempts() {
    // The README's encrypted-copy check, run with a key EC2 may not use, on a source the plain
    // schedule has not copied yet: three error copies under that key.
    let ec2 = SimulatedEc2::new();
    let ids = sources(&ec2, &[8]);
    let key = ec2.add_key(TARGET, None);
    let key = key.as_str();
    let keyed = request(&ids, json!({"encrypt": true, "kms_key_id": key, "wait_for_completion": true}));
    for _ in 0..MAX_ATTEMPTS {
        ec2.add_tracked_copy(&earlier_copy_spec(&keyed, &ids[0], Some(key)), Some("Given key ID is not accessible"));
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let again = reconcile(&ec2, &keyed, no_deadline()).await;
    assert!(matches!(again, Err(CopySnapshotsError::CopyFailed { .. })), "the keyed request is out of attempts");

    // The plain schedule copies it all the same.
    let plain = reconcile(&ec2, &request(&ids, json!({"wait_for_completion": true})), no_deadline()).await.unwrap();
    assert!(plain.complete, "{plain:?}");
    assert_eq!(plain.copies.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_end_of_a_bounded_wait_polls_once_more_so_the_answer_is_current() {
    // A copy done after 10 s; the first poll is due at 15 s (the poll interval), the wait
    // ends at 12 s: the answer must come from a poll at 12 s, not from the start's answer.
    let ec2 =
        SimulatedEc2::new().with_copy_time(CopyTimeModel { fixed: Duration::from_secs(10), per_gib: Duration::ZERO });
    let ids = sources(&ec2, &[8]);
    let request = request(&ids, json!({"wait_for_completion": true, "max_wait_seconds": 12}));
    let response = reconcile(&ec2, &request, no_deadline()).await.expect("an answer");
    assert_eq!(response.copies[0].state, "completed", "{response:?}");
    assert!(response.complete);
}
