//! Issue 19's features at scale, through the built binary as Lambda runs it, against the
//! fault-injecting EC2 (tests/fault_ec2.py): an SQS batch of snapshot events answered per
//! record while the region's quota is full and again once it frees; one source EC2 denies
//! (403 UnauthorizedOperation) among others; throttling that outlasts the SDK's 8 attempts;
//! 6-second invocations with the default 25 s operation timeout; `pending_limit` counted over
//! the deployment's pending copies, whichever invocation started them. Each scenario prints
//! its figures.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::events::snapshot_notification;
use crate::support::fault_ec2::{FaultEc2, Record};
use crate::support::runtime_api::{Answer, LambdaHarness};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
/// Simulated copy time is (120 s + 20 s/GiB) × this: an 8 GiB copy takes 0.56 s, 100 GiB 4.2 s.
const TIME_SCALE: f64 = 0.002;
const LONG: Duration = Duration::from_secs(600);
const TRACKING_TAG: &str = "copy-snapshots:source-snapshot-id";

/// The binary under the fake Runtime API, against `emulator`, with `env` on top (the default
/// `EC2_CALL_TIMEOUT_SECONDS`, 25 s, unless `env` sets it).
async fn function(emulator: &FaultEc2, env: &[(&str, &str)]) -> LambdaHarness {
    let endpoint = emulator.endpoint();
    let mut all = vec![
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", SOURCE),
        ("TARGET_REGION", TARGET),
        ("POLL_INTERVAL_SECONDS", "0.05"),
    ];
    all.extend_from_slice(env);
    LambdaHarness::start(&all).await
}

fn request(ids: &[String], extra: Value) -> Value {
    let mut request = json!({"snapshot_ids": ids});
    if let (Some(r), Some(e)) = (request.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    request
}

fn report(scenario: &str, record: &Record, extra: &str) {
    let (streak, _) = record.streak_throttled();
    println!(
        "scenario={scenario} copies={} duplicates={} max_pending={} ec2_calls={} copy_calls={} throttled={} \
         streak_throttled={streak} {extra}",
        record.copies().count(),
        record.duplicates(),
        record.max_pending(TARGET),
        record.all_calls(),
        record.calls("CopySnapshot"),
        record.throttled(),
    );
    assert_eq!(record.explicit_encrypted_false(), 0, "{scenario}: a CopySnapshot sent Encrypted=false");
}

fn assert_each_copied_once(record: &Record, ids: &[String]) {
    for id in ids {
        assert_eq!(record.good_copies_of(id), 1, "{id}: {:?}", record.0["copies"]);
    }
    assert_eq!(record.duplicates(), 0);
    assert_eq!(record.deleted(), 0, "a duplicate was made (and deleted)");
}

fn copied_sources(response: &Value) -> Vec<String> {
    let copies = response["copies"].as_array().expect("copies");
    copies.iter().map(|c| c["source_snapshot_id"].as_str().expect("a source").to_owned()).collect()
}

/// One SQS record as Lambda's event source mapping hands it over.
fn sqs_record(message_id: &str, body: &str) -> Value {
    json!({
        "messageId": message_id,
        "receiptHandle": format!("AQEB{message_id}"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1764064800000",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1764064800010"
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": format!("arn:aws:sqs:{SOURCE}:111122223333:copy-snapshots-CopyQueue"),
        "awsRegion": SOURCE
    })
}

/// The message ids a batch answer lists as failures; panics unless the answer is the batch
/// response shape.
fn batch_failures(answer: Answer) -> BTreeSet<String> {
    let response = answer.response();
    let failures = response["batchItemFailures"].as_array().unwrap_or_else(|| panic!("not a batch answer: {response}"));
    assert_eq!(response.as_object().map(|o| o.len()), Some(1), "only batchItemFailures: {response}");
    failures.iter().map(|f| f["itemIdentifier"].as_str().expect("an itemIdentifier").to_owned()).collect()
}

/// A batch of new-snapshot events while other services' copies hold every slot of the region:
/// the records whose snapshots have no copy started come back as failures, exactly those (not
/// the one already copied, not the ones that are no snapshot event); delivered again once the
/// quota frees, the same batch answers no failures and each snapshot has one copy.
#[tokio::test]
async fn an_sqs_batch_with_a_full_quota_returns_exactly_the_unstarted_records_then_copies_each_once() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE, "region_limit": 20}));
    let mut lambda = function(&emulator, &[]).await;
    // One snapshot copied before the burst: its record is done whatever the quota.
    let copied = emulator.sources(SOURCE, &[8]);
    let before = lambda.invoke(&request(&copied, json!({"wait_for_completion": true})), LONG).await.response();
    assert_eq!(before["complete"], true, "{before}");

    let ids = emulator.sources(SOURCE, &[8, 16, 24, 32]);
    let foreign_started = Instant::now();
    let foreign_seconds = 4.0;
    emulator.foreign_copies(TARGET, 20, foreign_seconds);
    let notification = |id: &str| snapshot_notification(SOURCE, id).to_string();
    let mut records: Vec<Value> =
        ids.iter().enumerate().map(|(i, id)| sqs_record(&format!("msg-new-{i}"), &notification(id))).collect();
    records.push(sqs_record("msg-copied", &notification(&copied[0])));
    // Not snapshot events: dropped, never failures (retrying cannot fix them).
    let mut copy_event = snapshot_notification(SOURCE, &ids[0]);
    copy_event["detail"]["event"] = "copySnapshot".into();
    records.push(sqs_record("msg-copy-event", &copy_event.to_string()));
    records.push(sqs_record("msg-not-eventbridge", r#"{"hello": "world"}"#));
    records.push(sqs_record("msg-unreadable", "this is not JSON {"));
    let batch = json!({ "Records": records });
    let unstarted: BTreeSet<String> = (0..ids.len()).map(|i| format!("msg-new-{i}")).collect();

    let first = batch_failures(lambda.invoke(&batch, Duration::from_secs(20)).await);
    let record = emulator.record();
    assert!(record.no_slot_answers() > 0, "the region was never full; the scenario tests nothing");
    for id in &ids {
        assert_eq!(record.good_copies_of(id), 0, "{id} was copied with every slot held");
    }
    assert_eq!(first, unstarted, "the failures are exactly the unstarted records");

    // The queue's visibility timeout, scaled: the foreign copies end meanwhile.
    let freed = Duration::from_secs_f64(foreign_seconds + 0.5);
    tokio::time::sleep(freed.saturating_sub(foreign_started.elapsed())).await;
    let second = batch_failures(lambda.invoke(&batch, Duration::from_secs(20)).await);
    assert_eq!(second, BTreeSet::new(), "every record has its copy started");
    // A third delivery (SQS delivers at least once) changes nothing.
    let copy_calls = emulator.record().calls("CopySnapshot");
    let third = batch_failures(lambda.invoke(&batch, Duration::from_secs(20)).await);
    assert_eq!(third, BTreeSet::new());
    let record = emulator.record();
    report("sqs_batch_full_quota_then_free", &record, &format!("first_failures={}", first.len()));
    assert_eq!(record.calls("CopySnapshot"), copy_calls, "a delivery of a done batch started copies");
    let mut all = ids.clone();
    all.extend(copied);
    assert_each_copied_once(&record, &all);
    // The metrics line of each batch.
    assert_eq!(lambda.metrics_lines().len(), 4, "{}", lambda.log());
}

/// One source whose CopySnapshot EC2 denies (an SCP's explicit deny): it fails alone, named in
/// CopyFailed with EC2's message, and every other source, including the smaller ones started
/// after it, is copied; the denial is not retried within the run.
#[tokio::test]
async fn one_denied_source_fails_alone_and_every_other_source_is_copied() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    // The denied source is the largest, so it is the first started: nothing may stop behind it.
    let ids = emulator.sources(SOURCE, &[200, 8, 16, 24, 32, 40]);
    let denial = "You are not authorized to perform this operation. with an explicit deny in a service control policy";
    emulator.deny_copies(&json!({ids[0].clone(): denial}));
    let mut lambda = function(&emulator, &[]).await;
    let payload = request(&ids, json!({"pending_limit": 3, "wait_for_completion": true}));
    let (error_type, message) = lambda.invoke(&payload, LONG).await.error();
    let record = emulator.record();
    report("one_denied_source", &record, "");

    assert_eq!(error_type, "CopyFailed", "{message}");
    assert!(message.contains(&ids[0]) && message.contains("UnauthorizedOperation"), "{message}");
    assert!(message.contains("explicit deny in a service control policy"), "EC2's message: {message}");
    assert_eq!(record.denied_copies_of(&ids[0]), 1, "the denied CopySnapshot was retried");
    assert_eq!(record.good_copies_of(&ids[0]), 0);
    assert_each_copied_once(&record, &ids[1..]);

    // The next run tries the denied source once more (EC2 keeps no trace of a denial), reports
    // it again, and starts nothing else.
    let copy_calls = record.calls("CopySnapshot");
    let (error_type, message) = lambda.invoke(&payload, LONG).await.error();
    let record = emulator.record();
    assert_eq!(error_type, "CopyFailed", "{message}");
    assert!(message.contains(&ids[0]), "{message}");
    assert_eq!(record.calls("CopySnapshot"), copy_calls + 1, "only the denied source is tried again");
    assert_each_copied_once(&record, &ids[1..]);
}

/// How the run met throttling, from its log: look-ups tried again after a backoff, other calls
/// backed off, and starts without a definite answer (the SDK's operation timeout ended the
/// throttled retries first).
fn throttling_seen(lambda: &LambdaHarness) -> (usize, usize, usize) {
    let log = lambda.log();
    let count = |text: &str| log.lines().filter(|l| l.contains(text)).count();
    (
        count("a look-up failed without a definite answer; trying again"),
        count("EC2 throttled beyond the SDK's retries; backing off"),
        count("copy start had no definite answer"),
    )
}

/// Throttling longer than the SDK's 8 attempts on every call from the first (the look
/// included): the run backs off with jitter and goes on, every source copied once,
/// `complete: true`. `EC2_CALL_TIMEOUT_SECONDS` 120 lets the SDK's 8 attempts (up to 71 s of
/// its own backoff) run out before its operation timeout, so the engine sees `Throttled`.
#[tokio::test]
async fn throttling_beyond_the_sdks_retries_ends_with_every_source_copied() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let ids = emulator.sources(SOURCE, &[8, 16, 24, 32]);
    emulator.throttle_streak(10, None);
    let mut lambda = function(&emulator, &[("EC2_CALL_TIMEOUT_SECONDS", "120")]).await;
    let started = Instant::now();
    let payload = request(&ids, json!({"wait_for_completion": true}));
    let response = lambda.invoke(&payload, LONG).await.response();
    let record = emulator.record();
    let (looks_retried, backed_off, unsure) = throttling_seen(&lambda);
    report(
        "throttle_streak_10_every_call",
        &record,
        &format!(
            "seconds={:.1} looks_retried={looks_retried} backed_off={backed_off} unsure_starts={unsure}",
            started.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(record.streak_throttled(), (10, 0), "the streak was not used up");
    assert!(looks_retried + backed_off > 0, "throttling never outlasted the SDK's retries: {}", lambda.log());
    assert_eq!(response["complete"], true, "{response}");
    assert_eq!(copied_sources(&response), ids);
    assert_each_copied_once(&record, &ids);
}

/// The same streak with the default 25 s operation timeout, as a deployment runs: the SDK's
/// jittered backoff for 8 attempts averages about 35 s, so the operation timeout usually ends
/// the throttled look first, as a call without a definite answer; the look tries it again after
/// a backoff (issue 19, section 3), so the run copies everything instead of failing `Ec2Error`.
#[tokio::test]
async fn throttling_beyond_the_sdks_retries_of_the_look_with_the_default_call_timeout_still_copies() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let ids = emulator.sources(SOURCE, &[8, 16]);
    emulator.throttle_streak(10, None);
    let mut lambda = function(&emulator, &[]).await;
    let response = lambda.invoke(&request(&ids, json!({"wait_for_completion": true})), LONG).await.response();
    let record = emulator.record();
    report("throttle_streak_10_default_call_timeout", &record, "");
    assert_eq!(response["complete"], true, "{response}");
    assert_each_copied_once(&record, &ids);
}

/// Throttling longer than the SDK's 8 attempts on CopySnapshot only: 10 calls in a row (the
/// SDK's 8 attempts of the first start, then 2 more). Returns how the run met it.
async fn copy_starts_throttled_beyond_the_sdks_retries(scenario: &str, env: &[(&str, &str)]) -> (usize, usize) {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let ids = emulator.sources(SOURCE, &[8, 16, 24, 32, 40, 48]);
    emulator.throttle_streak(10, Some(&["CopySnapshot"]));
    let mut lambda = function(&emulator, env).await;
    let started = Instant::now();
    let payload = request(&ids, json!({"pending_limit": 3, "wait_for_completion": true}));
    let response = lambda.invoke(&payload, LONG).await.response();
    let record = emulator.record();
    let (looks_retried, backed_off, unsure) = throttling_seen(&lambda);
    report(
        scenario,
        &record,
        &format!(
            "seconds={:.1} looks_retried={looks_retried} backed_off={backed_off} unsure_starts={unsure}",
            started.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(record.streak_throttled(), (10, 0), "the streak was not used up");
    assert_eq!(response["complete"], true, "{response}");
    assert_eq!(copied_sources(&response), ids);
    assert_each_copied_once(&record, &ids);
    assert!(record.max_pending(TARGET) <= 3);
    (backed_off, unsure)
}

/// With `EC2_CALL_TIMEOUT_SECONDS` 120 the SDK's 8 attempts run out before its operation
/// timeout: the engine hears `Throttled` for the start, puts the source back, backs off with
/// jitter and goes on.
#[tokio::test]
async fn throttled_copy_starts_beyond_the_sdks_retries_back_off_and_go_on() {
    let env = [("EC2_CALL_TIMEOUT_SECONDS", "120")];
    let (backed_off, _) = copy_starts_throttled_beyond_the_sdks_retries("throttle_streak_10_copy_120s", &env).await;
    assert!(backed_off > 0, "the engine never heard Throttled");
}

/// With the default 25 s operation timeout, as deployed: the engine hears `Throttled` (it backs
/// off) or, more often, no definite answer (it looks for the copy by its tags before starting
/// it again); either way every source is copied once.
#[tokio::test]
async fn throttled_copy_starts_with_the_default_call_timeout_end_with_every_source_copied_once() {
    let (backed_off, unsure) = copy_starts_throttled_beyond_the_sdks_retries("throttle_streak_10_copy_25s", &[]).await;
    assert!(backed_off + unsure > 0, "throttling never outlasted the SDK's retries");
}

/// Invocations of 6 s with the SDK's default 25 s operation timeout, as a new user's Lambda
/// with a short Timeout runs: the first already starts copies, each answers before its
/// deadline, and the job completes in a bounded number of rounds.
#[tokio::test]
async fn six_second_invocations_make_progress_from_the_first_and_finish() {
    let emulator = FaultEc2::start();
    // 1.7 s to 8.4 s per copy: 30 of them need more than one 6 s invocation.
    emulator.configure(json!({"time_scale": 0.006}));
    let mut rng = StdRng::seed_from_u64(19);
    let sizes: Vec<u64> = (0..30).map(|_| rng.random_range(8..64)).collect();
    let ids = emulator.sources(SOURCE, &sizes);
    let mut lambda = function(&emulator, &[]).await;
    let payload = request(&ids, json!({"wait_for_completion": true}));
    let deadline = Duration::from_secs(6);
    let mut rounds = 0;
    let response = loop {
        rounds += 1;
        let started = Instant::now();
        let response = lambda.invoke(&payload, deadline).await.response();
        let took = started.elapsed();
        assert!(took < deadline, "round {rounds} answered after its deadline ({took:?})");
        if rounds == 1 {
            let record = emulator.record();
            assert!(record.calls("CopySnapshot") > 0, "the first 6 s invocation started no copy: {response}");
        }
        if response["complete"] == true {
            break response;
        }
        assert!(rounds < 8, "not complete after {rounds} rounds of 6 s: {response}");
        // The state machine's Wait state.
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let record = emulator.record();
    report("six_second_invocations_30_sources", &record, &format!("rounds={rounds}"));
    assert!(rounds > 1, "the job fit in one invocation; the scenario tests nothing");
    assert_eq!(copied_sources(&response), ids);
    assert_each_copied_once(&record, &ids);
}

/// `pending_limit` bounds the deployment's pending copies, whichever invocation started them:
/// a first request leaves 5 pending; a second, for other sources, with the same limit starts
/// none and says why in `notes`; both finish later without more than 5 ever pending. The count
/// is one DescribeSnapshots, owner self, filtered on the tracking tag and `pending`.
#[tokio::test]
async fn pending_limit_counts_the_deployments_copies_across_invocations() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    // 100 GiB: 4.2 s each, pending through the second invocation.
    let first_ids = emulator.sources(SOURCE, &[100; 8]);
    let second_ids = emulator.sources(SOURCE, &[100; 3]);
    let mut lambda = function(&emulator, &[]).await;
    // As the state machine sends them: `complete` once every copy has completed.
    let extra = json!({"pending_limit": 5, "max_wait_seconds": 0, "wait_for_completion": true});
    let first = request(&first_ids, extra.clone());
    let second = request(&second_ids, extra);

    let answer = lambda.invoke(&first, LONG).await.response();
    assert_eq!(answer["copies"].as_array().map(Vec::len), Some(5), "{answer}");
    assert_eq!(answer["complete"], false, "{answer}");
    let answer = lambda.invoke(&second, LONG).await.response();
    let record = emulator.record();
    assert_eq!(answer["copies"], json!([]), "started copies beyond the deployment's limit: {answer}");
    assert_eq!(record.copies().count(), 5, "{:?}", record.0["copies"]);
    let notes = answer["notes"].as_array().unwrap_or_else(|| panic!("no notes: {answer}"));
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("other invocations") && n.contains("pending_limit 5"))),
        "no note about other invocations' copies: {answer}"
    );
    // The count: owner self, this project's tag, pending.
    let counts: Vec<&Value> = record
        .describe_calls(TARGET)
        .into_iter()
        .filter(|c| c["filters"]["status"] == json!(["pending"]) && c["filters"]["tag-key"] == json!([TRACKING_TAG]))
        .collect();
    assert!(!counts.is_empty(), "no DescribeSnapshots counted the pending copies: {:?}", record.describe_calls(TARGET));
    assert!(counts.iter().all(|c| c["owners"] == json!(["self"])), "{counts:?}");

    // Both as the state machine loops them, until both are complete.
    let mut rounds = 0;
    let mut done = [false, false];
    while !done.iter().all(|d| *d) {
        rounds += 1;
        for (i, payload) in [&first, &second].into_iter().enumerate() {
            let answer = lambda.invoke(payload, LONG).await.response();
            done[i] = answer["complete"] == true;
        }
        assert!(rounds < 60, "never finished");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let record = emulator.record();
    report("pending_limit_5_across_invocations", &record, &format!("rounds={rounds}"));
    assert!(
        record.max_pending(TARGET) <= 5,
        "{} of the deployment's copies pending at once",
        record.max_pending(TARGET)
    );
    let mut all = first_ids.clone();
    all.extend(second_ids);
    assert_each_copied_once(&record, &all);

    // Three copies another deployment of this project started into the same region (tracked,
    // from another source region) hold three of the five slots: a new request starts two.
    let others = json!({TRACKING_TAG: "snap-0123456789abcdef0", "copy-snapshots:source-region": "us-west-2"});
    emulator.tagged_foreign_copies(TARGET, 3, 30.0, &others);
    let third_ids = emulator.sources(SOURCE, &[8, 8, 8, 8]);
    let answer =
        lambda.invoke(&request(&third_ids, json!({"pending_limit": 5, "max_wait_seconds": 0})), LONG).await.response();
    assert_eq!(answer["copies"].as_array().map(Vec::len), Some(2), "{answer}");
}

/// Two SQS batches in flight together, as the template's `MaximumConcurrency` of 2 allows, each
/// in its own function process with `PENDING_LIMIT` 5 and the stack's slot table (DynamoDB on
/// the emulator's endpoint): each reserves its slots in the table with a conditional write
/// before starting, so together they hold at most 5 (counting with one DescribeSnapshots each,
/// as a deployment without the table does, they held 10).
#[tokio::test]
async fn two_sqs_batches_in_flight_together_hold_at_most_pending_limit() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let table = emulator.create_slot_table().await;
    let env = [("PENDING_LIMIT", "5"), ("SLOT_TABLE", table.as_str())];
    let mut one = function(&emulator, &env).await;
    let mut two = function(&emulator, &env).await;
    let batch = |ids: &[String], prefix: &str| {
        let records: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| sqs_record(&format!("{prefix}-{i}"), &snapshot_notification(SOURCE, id).to_string()))
            .collect();
        serde_json::to_vec(&json!({ "Records": records })).expect("JSON")
    };
    let a = emulator.sources(SOURCE, &[100; 8]);
    let b = emulator.sources(SOURCE, &[100; 8]);
    let deadline = Duration::from_secs(20);
    let sent_a = one.send(batch(&a, "a"), deadline).await;
    let sent_b = two.send(batch(&b, "b"), deadline).await;
    let failed_a = batch_failures(one.answer(&sent_a, LONG).await);
    let failed_b = batch_failures(two.answer(&sent_b, LONG).await);
    let record = emulator.record();
    let item = emulator.slot_item(&table, TARGET).await.expect("the ledger's item");
    let version = item.get("version").and_then(|v| v.as_n().ok()).cloned().unwrap_or_default();
    report(
        "two_batches_in_flight_pending_limit_5_slot_table",
        &record,
        &format!("failed_a={} failed_b={} ledger_version={version}", failed_a.len(), failed_b.len()),
    );
    assert!(
        record.max_pending(TARGET) <= 5,
        "{} of the deployment's copies pending at once",
        record.max_pending(TARGET)
    );
    assert_eq!(record.copies().count(), 5, "the 5 slots were not all used");
    assert_eq!(failed_a.len() + failed_b.len(), 16 - 5, "exactly the unstarted records come back");
    let entries = item.get("entries").and_then(|e| e.as_m().ok()).map_or(0, |m| m.len());
    assert_eq!(entries, 5, "the ledger holds the 5 copies: {item:?}");
}

/// A `SLOT_TABLE` that names no table is a deployment to fix, said as such, with the table's
/// name: not a run that silently counts another way.
#[tokio::test]
async fn a_slot_table_that_does_not_exist_is_named_in_the_error() {
    let emulator = FaultEc2::start();
    let mut lambda = function(&emulator, &[("SLOT_TABLE", "no-such-table")]).await;
    let ids = emulator.sources(SOURCE, &[8]);
    let (error_type, message) = lambda.invoke(&request(&ids, json!({})), Duration::from_secs(30)).await.error();
    assert_eq!(error_type, "InvalidRequest", "{message}");
    assert!(message.contains("no-such-table") && message.contains("SLOT_TABLE"), "{message}");
    assert_eq!(emulator.record().calls("CopySnapshot"), 0);
}
