//! Reliability scenarios through the built binary, as Lambda runs it, against the
//! fault-injecting EC2 (tests/fault_ec2.py): throttling, a full region, a process killed
//! mid-run, deadlines too short for the job, failing copies, and bad or hostile input. Each
//! scenario prints its figures (copies, duplicates, most pending at once, EC2 calls); `make
//! test` shows them.

use std::time::{Duration, Instant};

use crate::support::events::snapshot_notification;
use crate::support::fault_ec2::{FaultEc2, Record};
use crate::support::runtime_api::{Answer, LambdaHarness};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
/// Simulated copy time is (120 s + 20 s/GiB) × this: a 100 GiB copy takes 4.2 s.
const TIME_SCALE: f64 = 0.002;
const LONG: Duration = Duration::from_secs(600);

async fn function(emulator: &FaultEc2) -> LambdaHarness {
    // The emulator answers in milliseconds; the engine starts no call that could end past the
    // deadline, so a 25 s timeout would leave a short invocation idle.
    function_with_call_timeout(emulator, "2").await
}

async fn function_with_call_timeout(emulator: &FaultEc2, seconds: &str) -> LambdaHarness {
    let endpoint = emulator.endpoint();
    LambdaHarness::start(&[
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", SOURCE),
        ("TARGET_REGION", TARGET),
        ("POLL_INTERVAL_SECONDS", "0.05"),
        ("EC2_CALL_TIMEOUT_SECONDS", seconds),
    ])
    .await
}

fn request(ids: &[String], extra: Value) -> Value {
    let mut request = json!({"snapshot_ids": ids});
    if let (Some(r), Some(e)) = (request.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    request
}

fn sizes(rng: &mut StdRng, count: usize) -> Vec<u64> {
    (0..count)
        .map(|_| if rng.random_bool(0.8) { rng.random_range(8..64) } else { rng.random_range(100..400) })
        .collect()
}

/// Prints the scenario's figures, and checks what every scenario must hold: no CopySnapshot
/// sent `Encrypted=false` (the API reference: omit it unless true), and every one sent a
/// PresignedUrl the emulator accepts.
fn report(scenario: &str, record: &Record, extra: &str) {
    println!(
        "scenario={scenario} copies={} duplicates={} deleted={} max_pending={} ec2_calls={} copy_calls={} throttled={} \
         lost_answers={} {extra}",
        record.copies().count(),
        record.duplicates(),
        record.deleted(),
        record.max_pending(TARGET),
        record.all_calls(),
        record.calls("CopySnapshot"),
        record.throttled(),
        record.lost_answers(),
    );
    assert_eq!(record.explicit_encrypted_false(), 0, "{scenario}: a CopySnapshot sent Encrypted=false");
    assert_eq!(record.presigned_url_problems(), [], "{scenario}: the emulator refused a PresignedUrl");
}

/// Each source has exactly one live copy, and none was made twice and healed: for the
/// scenarios where no answer is lost, so duplicates have no excuse.
fn assert_each_copied_once_without_healing(record: &Record, ids: &[String]) {
    assert_each_copied_once(record, ids);
    assert_eq!(record.deleted(), 0, "a duplicate was made (and deleted)");
}

fn assert_each_copied_once(record: &Record, ids: &[String]) {
    for id in ids {
        assert_eq!(record.good_copies_of(id), 1, "{id}: {:?}", record.0["copies"]);
    }
    assert_eq!(record.duplicates(), 0);
}

fn copied_sources(response: &Value) -> Vec<String> {
    let copies = response["copies"].as_array().expect("copies");
    copies.iter().map(|c| c["source_snapshot_id"].as_str().expect("a source").to_owned()).collect()
}

#[tokio::test]
async fn throttled_calls_still_copy_everything_once_within_the_limit() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE, "throttle_rate": 0.3}));
    let ids = emulator.sources(SOURCE, &sizes(&mut StdRng::seed_from_u64(45), 45));
    // The SDK's retries back off for seconds when a third of the calls are throttled: give
    // them the room they have in Lambda.
    let mut lambda = function_with_call_timeout(&emulator, "25").await;
    let started = Instant::now();
    let response =
        lambda.invoke(&request(&ids, json!({"pending_limit": 10, "wait_for_completion": true})), LONG).await.response();
    let record = emulator.record();
    report("throttled_30pct_45_sources", &record, &format!("seconds={:.1}", started.elapsed().as_secs_f64()));

    assert_eq!(response["complete"], true);
    assert_eq!(copied_sources(&response), ids, "all 45, in request order");
    assert_eq!(response["snapshot_ids"].as_array().unwrap().len(), 45);
    assert_each_copied_once_without_healing(&record, &ids);
    assert!(record.max_pending(TARGET) <= 10, "more than 10 pending: {}", record.max_pending(TARGET));
    assert!(record.throttled() > 0, "the scenario throttled nothing");
}

#[tokio::test]
async fn a_region_full_of_foreign_copies_makes_the_function_wait_not_fail() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE, "region_limit": 20}));
    // Measured from before the foreign copies exist: nothing of ours can complete sooner.
    let started = Instant::now();
    emulator.foreign_copies(TARGET, 20, 3.0);
    let ids = emulator.sources(SOURCE, &[8, 16, 32, 64, 8]);
    let mut lambda = function(&emulator).await;
    let response = lambda.invoke(&request(&ids, json!({"wait_for_completion": true})), LONG).await.response();
    let record = emulator.record();
    let waited = started.elapsed();
    report(
        "region_full_of_foreign_copies",
        &record,
        &format!("no_slot_answers={} seconds={:.1}", record.no_slot_answers(), waited.as_secs_f64()),
    );

    assert_eq!(response["complete"], true);
    assert!(record.no_slot_answers() > 0, "the region was never full");
    assert!(waited >= Duration::from_secs(3), "copies started before the foreign ones finished");
    // 3 s of foreign copies, at most 2.8 s for the largest copy, backoff of at most 16 polls
    // (0.8 s): anything much longer means the function was slow to notice free slots.
    assert!(waited <= Duration::from_secs(12), "took {waited:?} after the slots freed at 3 s");
    assert_each_copied_once_without_healing(&record, &ids);
}

/// Three target regions in one request, through the binary: each region's pending copies stay
/// within its own `pending_limit`, every source gets one copy in each, and a region whose quota
/// other services' copies hold holds back neither of the other two.
#[tokio::test]
async fn three_target_regions_each_within_its_limit_and_a_full_one_holds_back_none() {
    const REGIONS: [&str; 3] = ["eu-west-1", "us-west-2", "ap-southeast-2"];
    const HELD_SECONDS: f64 = 8.0;
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE, "region_limit": 20}));
    let started = Instant::now();
    emulator.foreign_copies(REGIONS[0], 20, HELD_SECONDS);
    let ids = emulator.sources(SOURCE, &[8, 16, 32, 64, 8, 24, 40]);
    let mut lambda = function(&emulator).await;
    let targets: Vec<Value> = REGIONS.iter().map(|region| json!({"region": region})).collect();
    let payload = request(&ids, json!({"targets": targets, "pending_limit": 3, "wait_for_completion": true}));
    let response = lambda.invoke(&payload, LONG).await.response();
    let record = emulator.record();
    report("three_target_regions", &record, &format!("seconds={:.1}", started.elapsed().as_secs_f64()));

    assert_eq!(response["complete"], true, "{response}");
    assert!(started.elapsed() >= Duration::from_secs_f64(HELD_SECONDS), "the first region was never held");
    let started_in = |region: &str| -> Vec<f64> {
        record.copies().filter(|c| c["region"] == region).filter_map(|c| c["started_at"].as_f64()).collect()
    };
    for (i, region) in REGIONS.iter().enumerate() {
        assert!(record.max_pending(region) <= 3, "{region}: {} pending at once", record.max_pending(region));
        let copied: Vec<&str> = response["targets"][i]["copies"]
            .as_array()
            .expect("copies")
            .iter()
            .filter_map(|c| c["source_snapshot_id"].as_str())
            .collect();
        assert_eq!(copied, ids, "{region}: one copy of each source, in request order");
        assert_eq!(started_in(region).len(), ids.len(), "{region}: each source copied once");
    }
    // The held region starts only once its quota frees; the free ones had started everything
    // by then.
    let first_in_held = started_in(REGIONS[0]).into_iter().fold(f64::INFINITY, f64::min);
    let last_in_free = REGIONS[1..].iter().flat_map(|r| started_in(r)).fold(0.0, f64::max);
    assert!(
        last_in_free < first_in_held,
        "a free region's copy started {:.1} s after the held region's first",
        last_in_free - first_in_held
    );
}

#[tokio::test]
async fn killed_mid_run_then_invoked_again_duplicates_nothing() {
    let mut rng = StdRng::seed_from_u64(11);
    for round in 0..4 {
        let emulator = FaultEc2::start();
        emulator.configure(json!({"time_scale": TIME_SCALE}));
        let ids = emulator.sources(SOURCE, &sizes(&mut rng, 24));
        let payload = request(&ids, json!({"pending_limit": 6, "wait_for_completion": true}));

        // Kill the process at a random moment of its run, then start a new one (as Lambda
        // would after a crash) and invoke again with the same request until it is done.
        let mut kills = 0;
        let response = loop {
            let mut lambda = function(&emulator).await;
            if kills < 2 {
                lambda.send(serde_json::to_vec(&payload).unwrap(), LONG).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..2500))).await;
                lambda.kill();
                kills += 1;
                continue;
            }
            break lambda.invoke(&payload, LONG).await.response();
        };
        let record = emulator.record();
        report(&format!("killed_mid_run_round_{round}"), &record, &format!("kills={kills}"));
        assert_eq!(response["complete"], true);
        assert_eq!(copied_sources(&response), ids);
        assert_each_copied_once_without_healing(&record, &ids);
        assert!(record.max_pending(TARGET) <= 6);
    }
}

#[tokio::test]
async fn a_deadline_too_short_returns_in_time_and_repeated_invocations_finish() {
    let emulator = FaultEc2::start();
    // Copies that stall at 0% for up to a second and run at half to twice the size-based
    // speed: the poll timing must not trust progress to follow size.
    emulator.configure(json!({"time_scale": TIME_SCALE, "stall_seconds": 1.0, "speed_spread": [0.5, 2.0]}));
    let ids = emulator.sources(SOURCE, &sizes(&mut StdRng::seed_from_u64(20), 20));
    let payload = request(&ids, json!({"pending_limit": 4, "wait_for_completion": true}));
    let mut lambda = function(&emulator).await;
    // Its margin is a quarter, 3 s: roomy enough for a busy machine.
    let deadline = Duration::from_secs(12);
    let mut invocations = 0;
    let response = loop {
        invocations += 1;
        let started = Instant::now();
        let response = lambda.invoke(&payload, deadline).await.response();
        assert!(started.elapsed() < deadline, "invocation {invocations} answered after its deadline");
        if response["complete"] == true {
            break response;
        }
        assert!(invocations < 50, "never finished");
        // The state machine's Wait state.
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let record = emulator.record();
    report("deadline_12s", &record, &format!("invocations={invocations}"));
    assert!(invocations > 1, "the job fit in one invocation; the scenario tests nothing");
    assert_eq!(copied_sources(&response), ids);
    assert_each_copied_once_without_healing(&record, &ids);
    assert!(record.max_pending(TARGET) <= 4);
}

#[tokio::test]
async fn two_failing_copies_leave_the_rest_copied_and_end_in_copy_failed() {
    let emulator = FaultEc2::start();
    let ids = emulator.sources(SOURCE, &[8, 16, 24, 32, 40, 48, 56, 64]);
    let failing =
        json!({ids[2].clone(): "Given key ID is not accessible", ids[5].clone(): "Given key ID is not accessible"});
    emulator.configure(json!({"time_scale": TIME_SCALE, "failing_sources": failing}));
    let mut lambda = function(&emulator).await;
    let (error_type, message) =
        lambda.invoke(&request(&ids, json!({"pending_limit": 3, "wait_for_completion": true})), LONG).await.error();
    let record = emulator.record();
    report("two_failing_copies", &record, "");

    assert_eq!(error_type, "CopyFailed");
    assert!(message.contains(&ids[2]) && message.contains(&ids[5]), "{message}");
    assert!(message.contains("Given key ID is not accessible"), "{message}");
    for (i, id) in ids.iter().enumerate() {
        let expected = if i == 2 || i == 5 { 0 } else { 1 };
        assert_eq!(record.good_copies_of(id), expected, "{id}");
    }
    for copy in record.copies().filter(|c| c["fails_with"].is_null()) {
        assert!(message.contains(copy["snapshot_id"].as_str().unwrap()), "the message names every copy made");
    }
    for id in [&ids[2], &ids[5]] {
        assert_eq!(record.error_copies_of(id), 3, "{id}: three attempts");
    }
    for copy in record.copies().filter(|c| !c["fails_with"].is_null()) {
        assert!(message.contains(copy["snapshot_id"].as_str().unwrap()), "the message names each error copy");
    }
}

#[tokio::test]
async fn bad_input_through_the_binary_copies_nothing() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let present = emulator.sources(SOURCE, &[8]);
    let pending = emulator.snapshots(SOURCE, &[8], "pending");
    let id = present[0].clone();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("unknown field", json!({"snapshot_id": [id]}), "InvalidRequest"),
        (
            "both ids and filters",
            json!({"snapshot_ids": [id], "filters": [{"name": "tag:a", "values": ["b"]}]}),
            "InvalidRequest",
        ),
        ("neither ids nor filters", json!({"target_region": TARGET}), "InvalidRequest"),
        ("malformed id", json!({"snapshot_ids": ["snap-XYZ"]}), "InvalidRequest"),
        ("duplicate ids", json!({"snapshot_ids": [id, id]}), "InvalidRequest"),
        ("bad region", json!({"snapshot_ids": [id], "target_region": "mars-1"}), "InvalidRequest"),
        ("pending_limit 0", json!({"snapshot_ids": [id], "pending_limit": 0}), "InvalidRequest"),
        ("key without encrypt", json!({"snapshot_ids": [id], "kms_key_id": "alias/dr"}), "InvalidRequest"),
        ("malformed key", json!({"snapshot_ids": [id], "encrypt": true, "kms_key_id": "not a key"}), "InvalidRequest"),
        ("aws: tag", json!({"snapshot_ids": [id], "tags": {"aws:x": "y"}}), "InvalidRequest"),
        ("wrong type", json!({"snapshot_ids": [id], "encrypt": "yes"}), "InvalidRequest"),
        ("bad duration", json!({"snapshot_ids": [id], "completion_duration_minutes": 7}), "InvalidRequest"),
        ("missing source", json!({"snapshot_ids": [id, "snap-0123456789abcdef0"]}), "SourceNotFound"),
        ("source not ready", json!({"snapshot_ids": [id, pending[0]]}), "SourceNotReady"),
        (
            "a filter name EC2 does not know",
            json!({"filters": [{"name": "tags:Backup", "values": ["daily"]}]}),
            "InvalidRequest",
        ),
        (
            "201 values in one filter",
            json!({"filters": [{"name": "volume-id", "values": (0..201).map(|i| format!("vol-{i:08x}")).collect::<Vec<_>>()}]}),
            "InvalidRequest",
        ),
    ];
    let mut lambda = function(&emulator).await;
    for (case, payload, expected) in &cases {
        let (error_type, message) = lambda.invoke(payload, LONG).await.error();
        assert_eq!(&error_type, expected, "{case}: {message}");
        assert!(!message.is_empty(), "{case}");
        // The message names what to change.
        let names = match *case {
            "a filter name EC2 does not know" => "tags:Backup",
            "201 values in one filter" => "201 values",
            _ => "",
        };
        assert!(message.contains(names), "{case}: {message}");
    }
    let record = emulator.record();
    report("bad_input_matrix", &record, &format!("cases={}", cases.len()));
    assert_eq!(record.calls("CopySnapshot"), 0, "a bad request reached CopySnapshot");
    assert_eq!(record.copies().count(), 0);
}

#[tokio::test]
async fn hostile_payloads_get_clear_errors_and_memory_stays_bounded() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let mut lambda = function(&emulator).await;
    let mut rng = StdRng::seed_from_u64(1);

    // 1 MB of garbage: not JSON at all.
    let garbage: Vec<u8> = (0..1_000_000).map(|_| rng.random_range(0x20u8..0x7f)).collect();
    let (error_type, message) = lambda.invoke_raw(garbage, LONG).await.error();
    assert_eq!(error_type, "InvalidRequest");
    assert!(message.contains("not readable JSON") && message.len() < 1000, "{}", &message[..200.min(message.len())]);

    // Deeply nested JSON.
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    let (error_type, message) = lambda.invoke_raw(nested, LONG).await.error();
    assert_eq!(error_type, "InvalidRequest");
    assert!(message.contains("recursion limit"), "{message}");

    // A large but well-formed object in a field: still an InvalidRequest naming the field.
    let (error_type, message) = lambda.invoke(&json!({"snapshot_ids": ["x".repeat(1_000_000)]}), LONG).await.error();
    assert_eq!(error_type, "InvalidRequest");
    assert!(message.len() < 1000 && message.contains("snapshot_ids[0]"), "{}", &message[..200.min(message.len())]);

    // 10,000 well-formed ids that do not exist: one clear error naming them, nothing copied.
    let ids: Vec<String> = (0..10_000).map(|i| format!("snap-{:017x}", 0xabc0_0000_0000u64 + i)).collect();
    let started = Instant::now();
    let (error_type, message) = lambda.invoke(&json!({"snapshot_ids": ids}), LONG).await.error();
    assert_eq!(error_type, "SourceNotFound");
    assert!(message.contains("10000 snapshots not found") && message.contains(&ids[9_999]), "{}", &message[..200]);
    let seconds = started.elapsed().as_secs_f64();

    // Still serving, and still small.
    let present = emulator.sources(SOURCE, &[8]);
    let ok = lambda.invoke(&json!({"snapshot_ids": present}), LONG).await.response();
    assert_eq!(ok["complete"], true);
    assert!(lambda.is_running());
    let peak = lambda.peak_rss_mib();
    let record = emulator.record();
    report("hostile_payloads", &record, &format!("peak_rss_mib={peak:.1} seconds_10000_ids={seconds:.1}"));
    assert!(peak < 64.0, "peak RSS {peak:.1} MiB; the function is deployed with 128 MB");
    assert_eq!(record.calls("CopySnapshot"), 1);
}

#[tokio::test]
async fn copies_are_encrypted_under_the_key_an_alias_names_and_a_key_that_is_not_there_copies_nothing() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let kms = emulator.kms_in(TARGET).await;
    let key = kms.create_key().send().await.unwrap().key_metadata().unwrap().arn().unwrap().to_owned();
    kms.create_alias().alias_name("alias/dr").target_key_id(&key).send().await.unwrap();
    let ids = emulator.sources(SOURCE, &[8, 16, 24]);
    let mut lambda = function(&emulator).await;

    // The alias is resolved (kms:DescribeKey) to the key's ARN; EC2 reports the copy under it.
    let payload = request(&ids[..1], json!({"encrypt": true, "kms_key_id": "alias/dr", "wait_for_completion": true}));
    let response = lambda.invoke(&payload, LONG).await.response();
    assert_eq!(response["complete"], true, "{response}");
    let again = lambda.invoke(&payload, LONG).await.response();
    assert_eq!(again["copies"][0]["reused"], true, "{again}");

    // A key that is not there: refused before any copy, naming the field.
    let unknown_key = format!("arn:aws:kms:{TARGET}:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab");
    let payload = request(&ids[1..2], json!({"encrypt": true, "kms_key_id": unknown_key, "wait_for_completion": true}));
    let (error_type, message) = lambda.invoke(&payload, LONG).await.error();
    assert_eq!(error_type, "InvalidRequest", "{message}");
    assert!(message.starts_with("kms_key_id: ") && message.contains(&unknown_key), "{message}");

    // A key that is there but EC2 cannot use (a grant or key policy missing): the copy fails
    // asynchronously, as EC2 says, and is tried again up to the bound.
    emulator.configure(json!({"failing_sources": {ids[2].as_str(): "Given key ID is not accessible"}}));
    let payload = request(&ids[2..], json!({"encrypt": true, "kms_key_id": key, "wait_for_completion": true}));
    let (error_type, message) = lambda.invoke(&payload, LONG).await.error();
    let record = emulator.record();
    report("encryption", &record, "");

    let copies: Vec<&Value> = record.copies().collect();
    assert_eq!(copies.len(), 4, "one good copy, none with the unknown key, three attempts with the unusable one");
    assert_eq!(copies[0]["encrypted"], true);
    assert_eq!(copies[0]["kms_key_id"], key.as_str());
    assert_eq!(copies[0]["tags"]["copy-snapshots:encryption"], key.as_str(), "tagged with the key's ARN");
    assert!(copies.iter().all(|c| c["source_snapshot_id"] != ids[1].as_str()));
    assert_eq!(error_type, "CopyFailed");
    assert!(message.contains(&ids[2]) && message.contains("Given key ID is not accessible"), "{message}");
}

#[tokio::test]
async fn a_copy_ec2_makes_under_another_key_than_asked_fails_naming_both_keys() {
    let emulator = FaultEc2::start();
    // EC2 ignores KmsKeyId (reported when the PresignedUrl was missing): the copy goes under the
    // region's default key, and completes.
    emulator.configure(json!({"time_scale": TIME_SCALE, "ignore_kms_key": true}));
    let kms = emulator.kms_in(TARGET).await;
    let key = kms.create_key().send().await.unwrap().key_metadata().unwrap().arn().unwrap().to_owned();
    let ids = emulator.sources(SOURCE, &[8]);
    let mut lambda = function(&emulator).await;
    let payload = request(&ids, json!({"encrypt": true, "kms_key_id": key, "wait_for_completion": true}));
    let (error_type, message) = lambda.invoke(&payload, LONG).await.error();
    let record = emulator.record();
    report("ignored_key", &record, "");
    let copies: Vec<&Value> = record.copies().collect();
    assert_eq!(copies.len(), 1, "one copy in this run");
    let actual = copies[0]["kms_key_id"].as_str().expect("the copy is encrypted");
    assert_ne!(actual, key.as_str());
    assert_eq!(error_type, "CopyFailed", "{message}");
    assert!(message.contains(&ids[0]) && message.contains(&key) && message.contains(actual), "{message}");
    assert_eq!(record.deleted(), 0, "the copy is left for a person to judge");
}

/// The state machine's loop: the same request every round with `max_wait_seconds: 0`, a short
/// Wait between rounds. One source's copies always end in `error`.
#[tokio::test]
async fn the_state_machine_loop_with_a_failing_source_ends_in_copy_failed() {
    let emulator = FaultEc2::start();
    let ids = emulator.sources(SOURCE, &[8, 16, 24, 32, 40, 48]);
    let failing = json!({ids[3].clone(): "Given key ID is not accessible"});
    emulator.configure(json!({"time_scale": TIME_SCALE, "failing_sources": failing}));
    let mut lambda = function(&emulator).await;
    let payload = request(&ids, json!({"wait_for_completion": true, "max_wait_seconds": 0}));
    let mut rounds = 0;
    let message = loop {
        rounds += 1;
        match lambda.invoke(&payload, LONG).await {
            Answer::Response(response) => assert_eq!(response["complete"], false, "round {rounds}"),
            Answer::Error { error_type, message } => {
                assert_eq!(error_type, "CopyFailed", "round {rounds}: {message}");
                break message;
            }
        }
        assert!(rounds < 60, "the loop never ended: {:?}", emulator.record().0["copies"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let record = emulator.record();
    report("state_machine_loop_one_failing_source", &record, &format!("rounds={rounds}"));
    assert!(message.contains(&ids[3]) && message.contains("Given key ID is not accessible"), "{message}");
    assert_eq!(record.error_copies_of(&ids[3]), 3, "attempts are bounded");
    for copy in record.copies().filter(|c| !c["fails_with"].is_null()) {
        assert!(message.contains(copy["snapshot_id"].as_str().unwrap()), "names each error copy: {message}");
    }
    let others: Vec<String> = ids.iter().filter(|id| **id != ids[3]).cloned().collect();
    assert_each_copied_once_without_healing(&record, &others);
}

/// Six runs of a plain request, as a daily schedule sends it, one source failing.
#[tokio::test]
async fn scheduled_runs_with_a_failing_source_report_it_and_bound_the_error_copies() {
    let emulator = FaultEc2::start();
    let ids = emulator.sources(SOURCE, &[8, 16, 24, 32, 40, 48]);
    let failing = json!({ids[0].clone(): "Given key ID is not accessible"});
    emulator.configure(json!({"time_scale": TIME_SCALE, "failing_sources": failing}));
    let mut lambda = function(&emulator).await;
    let payload = request(&ids, json!({}));
    let mut reports = 0;
    for run in 0..6 {
        match lambda.invoke(&payload, LONG).await {
            Answer::Response(response) => assert_eq!(response["failed"], json!([]), "run {run}"),
            Answer::Error { error_type, message } => {
                assert_eq!(error_type, "CopyFailed", "run {run}: {message}");
                assert!(message.contains(&ids[0]), "{message}");
                reports += 1;
            }
        }
        // A day, scaled: every copy of the run has ended by the next.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let record = emulator.record();
    report("six_scheduled_runs_one_failing_source", &record, &format!("runs_reporting_it={reports}"));
    assert!(reports > 0, "no run reported the failing source");
    assert!(record.error_copies_of(&ids[0]) <= 3, "{} error copies", record.error_copies_of(&ids[0]));
    assert_each_copied_once_without_healing(&record, &ids[1..]);
}

/// Lambda's handling of a failed asynchronous invocation, scaled: the first attempt, then two
/// retries, a minute (here 1 s) and two minutes (2 s) later; after the third failure the event
/// goes to the on-failure destination (the template's dead-letter queue).
async fn deliver_as_lambda_does(lambda: &mut LambdaHarness, event: &Value, deadline: Duration) -> Vec<Answer> {
    let mut answers = Vec::new();
    for wait_before in [0, 1, 2] {
        tokio::time::sleep(Duration::from_secs(wait_before)).await;
        let answer = lambda.invoke(event, deadline).await;
        let done = matches!(answer, Answer::Response(_));
        answers.push(answer);
        if done {
            break;
        }
    }
    answers
}

/// An `EBS Snapshot Notification` while the region's copy quota stays full for longer than
/// one invocation: each invocation that cannot start the copy fails (`SourcesPending`), so
/// Lambda retries the event; once the quota frees, a retry copies it once. And when the quota
/// stays full through all three attempts, every one fails: the event is dead-lettered, never
/// acknowledged.
#[tokio::test]
async fn an_event_is_never_acknowledged_before_its_snapshot_is_copied() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE, "region_limit": 20}));
    let ids = emulator.sources(SOURCE, &[8, 8]);
    let mut lambda = function(&emulator).await;

    // Each 8 s invocation works 4 s (2 s margin, 2 s call timeout + 2 s for the answer): the
    // first attempt runs out, the second, from about 5 s, sees the slots free at 7 s.
    emulator.foreign_copies(TARGET, 20, 7.0);
    let answers =
        deliver_as_lambda_does(&mut lambda, &snapshot_notification(SOURCE, &ids[0]), Duration::from_secs(8)).await;
    let attempts = answers.len();
    let Some(Answer::Response(response)) = answers.last() else { panic!("never copied: {answers:?}") };
    for answer in &answers[..attempts - 1] {
        let Answer::Error { error_type, message } = answer else { unreachable!() };
        assert_eq!(error_type, "SourcesPending", "{message}");
        assert!(message.contains(&ids[0]), "{message}");
    }
    assert!(attempts > 1, "the quota was free at once; the scenario tests nothing");
    assert_eq!(response["complete"], true);
    assert_eq!(copied_sources(response), std::slice::from_ref(&ids[0]));

    // A quota full for longer than Lambda's three attempts: all three fail.
    tokio::time::sleep(Duration::from_secs(4)).await;
    emulator.foreign_copies(TARGET, 20, 40.0);
    let answers =
        deliver_as_lambda_does(&mut lambda, &snapshot_notification(SOURCE, &ids[1]), Duration::from_secs(6)).await;
    assert_eq!(answers.len(), 3, "{answers:?}");
    for answer in &answers {
        assert!(matches!(answer, Answer::Error { error_type, .. } if error_type == "SourcesPending"), "{answer:?}");
    }
    let record = emulator.record();
    report(
        "event_while_quota_full",
        &record,
        &format!("attempts_when_it_frees={attempts} attempts_when_it_stays_full=3"),
    );
    assert_each_copied_once_without_healing(&record, &ids[..1]);
    assert_eq!(record.good_copies_of(&ids[1]), 0);
}

/// CopySnapshot answers lost after the copy exists (a 500), and new copies missing from
/// DescribeSnapshots for a while: the function may start a source twice, and heals it.
#[tokio::test]
async fn lost_answers_and_a_lagging_listing_end_with_one_copy_per_source() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE, "lost_answer_rate": 0.4, "visibility_lag_seconds": 1.5}));
    let ids = emulator.sources(SOURCE, &sizes(&mut StdRng::seed_from_u64(3), 12));
    let mut lambda = function(&emulator).await;
    let payload = request(&ids, json!({"pending_limit": 6, "wait_for_completion": true}));
    let mut invocations = 0;
    let mut removed = 0;
    loop {
        invocations += 1;
        let response = lambda.invoke(&payload, LONG).await.response();
        removed += response["duplicates_removed"].as_array().map_or(0, Vec::len);
        // Done when a run finds every copy in place and starts none: nothing left to heal.
        let all_reused = response["copies"].as_array().is_some_and(|c| c.iter().all(|c| c["reused"] == true));
        if response["complete"] == true && all_reused {
            break;
        }
        assert!(invocations < 10, "never finished");
        // The listing's lag passes before the next look, as it would between schedule runs.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let record = emulator.record();
    report("lost_answers_and_listing_lag", &record, &format!("invocations={invocations} duplicates_removed={removed}"));
    assert!(record.lost_answers() > 0, "no answer was lost");
    assert!(removed > 0, "no duplicate was made and healed; the scenario tests nothing");
    assert_eq!(record.deleted(), removed, "every deletion is reported");
    assert_each_copied_once(&record, &ids);
}

/// DescribeSnapshots pages its answers (EC2 may return fewer than MaxResults, with a token):
/// every page is read, for the sources and for the earlier copies.
#[tokio::test]
async fn paged_answers_are_read_to_the_end() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE, "page_size": 2}));
    let mut lambda = function(&emulator).await;
    let ids = emulator.sources(SOURCE, &[8, 8, 8, 8, 8, 8, 8]);
    let payload = request(&ids, json!({"wait_for_completion": true}));
    let first = lambda.invoke(&payload, LONG).await.response();
    assert_eq!(copied_sources(&first), ids);
    let second = lambda.invoke(&payload, LONG).await.response();
    let record = emulator.record();
    report("paged_describe_snapshots", &record, "");
    assert_eq!(second["copies"].as_array().unwrap().iter().filter(|c| c["reused"] == true).count(), 7);
    assert_each_copied_once_without_healing(&record, &ids);
    assert!(record.calls("DescribeSnapshots") >= 4 * 3, "pages were not fetched");
}

#[tokio::test]
async fn retention_by_age_deletes_old_copies_reports_refused_ones_and_a_second_run_only_retries_those() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let tags = json!({"Backup": "retention"});
    let ages = [0.0, 1.0, 2.0, 3.0, 4.0];
    let (a, _) = emulator.volume_snapshots(SOURCE, 8, &ages, &tags);
    let (b, _) = emulator.volume_snapshots(SOURCE, 16, &ages, &tags);
    let mut lambda = function(&emulator).await;
    let filters = json!([{"name": "tag:Backup", "values": ["retention"]}]);
    // Copies made before any retention was configured.
    let first = lambda.invoke(&json!({"filters": filters, "wait_for_completion": true}), LONG).await.response();
    assert_eq!(first["copies"].as_array().unwrap().len(), 10, "{first}");
    let copy_of = |source: &str| {
        let copies = first["copies"].as_array().unwrap();
        let copy = copies.iter().find(|c| c["source_snapshot_id"] == source).expect("a copy");
        copy["snapshot_id"].as_str().unwrap().to_owned()
    };
    // An AMI uses one old copy, another is locked; one old source is gone from the region.
    let (in_use, locked) = (copy_of(&a[3]), copy_of(&b[4]));
    emulator.refuse_delete(&in_use, "in-use");
    emulator.refuse_delete(&locked, "locked");
    emulator.forget(SOURCE, &[a[4].as_str()]);

    let retention = json!({"filters": filters, "retain_days": 2});
    let pruned = lambda.invoke(&retention, LONG).await.response();
    let record = emulator.record();
    report("retention_2_days_10_copies_2_refused", &record, &format!("refused_deletes={}", record.refused_deletes()));
    // Out of retention: ages 2, 3 and 4 of each volume (a[4] gone, judged by its copy's tags).
    let deleted: Vec<&str> =
        pruned["deleted"].as_array().unwrap().iter().map(|d| d["source_snapshot_id"].as_str().unwrap()).collect();
    let mut expected = vec![a[2].as_str(), a[4].as_str(), b[2].as_str(), b[3].as_str()];
    let mut deleted_sorted = deleted.clone();
    deleted_sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(deleted_sorted, expected, "{pruned}");
    let refused: Vec<(&str, &str)> = pruned["not_deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["snapshot_id"].as_str().unwrap(), n["error"].as_str().unwrap()))
        .collect();
    assert_eq!(refused.len(), 2, "{pruned}");
    assert!(refused.iter().any(|(id, e)| *id == in_use && e.starts_with("InvalidSnapshot.InUse")), "{refused:?}");
    assert!(refused.iter().any(|(id, e)| *id == locked && e.starts_with("SnapshotLocked")), "{refused:?}");
    assert_eq!(pruned["complete"], true, "refusals are reported, not left as work: {pruned}");
    assert_eq!(pruned["skipped"].as_array().unwrap().len(), 5, "a[2..4] and b[2..5] are not copied: {pruned}");
    assert_eq!(record.deleted(), 4);
    assert_eq!(record.pending_deletes(), 0);
    // The metrics line counts the deletions.
    let log = lambda.log();
    let emf = lambda.metrics_lines();
    assert_eq!(emf.last().unwrap()["CopiesDeleted"], 4, "{log}");

    // The same request again: no copy, and DeleteSnapshot only for the two refused ones.
    let copies_before = record.calls("CopySnapshot");
    let deletes_before = record.calls("DeleteSnapshot");
    let again = lambda.invoke(&retention, LONG).await.response();
    let record = emulator.record();
    assert_eq!(record.calls("CopySnapshot"), copies_before);
    assert_eq!(record.calls("DeleteSnapshot"), deletes_before + 2, "{again}");
    assert!(again["deleted"].is_null(), "{again}");
    assert_eq!(again["not_deleted"].as_array().unwrap().len(), 2);
}

/// The emulator deletes only what the deployed role's DeleteOwnCopies statement allows, so a
/// store or engine change that deletes anything else fails here as it would in AWS; and the
/// store tells a deletion from a snapshot already gone, and an existing volume from a gone one.
#[tokio::test]
async fn delete_snapshot_is_allowed_only_as_the_roles_conditions_say() {
    use copy_snapshots::ids::{Place, Region, SnapshotId};
    use copy_snapshots::store::ec2::Ec2Store;
    use copy_snapshots::store::{DeleteOutcome, SnapshotStore, StoreError};

    let emulator = FaultEc2::start();
    let config =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).endpoint_url(emulator.endpoint()).load().await;
    let store = Ec2Store::new(&config);
    let (source, target) = (Region::parse(SOURCE).unwrap(), Place::here(Region::parse(TARGET).unwrap()));
    let tagged = |region: &str, from: &str, of: &str| {
        let tags = json!({"copy-snapshots:source-region": from, "copy-snapshots:source-snapshot-id": of});
        SnapshotId::parse(&emulator.tagged_snapshots(region, &[8], "completed", &tags)[0]).unwrap()
    };
    let cases = [
        ("a source region the stack does not copy from", TARGET, "ap-south-1", "snap-0123456789abcdef0"),
        ("a snapshot-id tag that is not snap-*", TARGET, SOURCE, "ami-0123456789abcdef0"),
        ("outside the target region", SOURCE, SOURCE, "snap-0123456789abcdef0"),
    ];
    for (case, region, from, of) in cases {
        let id = tagged(region, from, of);
        let region = Place::here(Region::parse(region).unwrap());
        let answer = store.delete_copy(&region, &id).await;
        assert!(matches!(answer, Err(StoreError::AccessDenied(_))), "{case}: {answer:?}");
    }
    for from in [SOURCE, TARGET] {
        let own = tagged(TARGET, from, "snap-0123456789abcdef0");
        assert_eq!(store.delete_copy(&target, &own).await, Ok(DeleteOutcome::Deleted));
        assert_eq!(store.delete_copy(&target, &own).await, Ok(DeleteOutcome::AlreadyGone), "NotFound is already gone");
    }

    let (_, volume) = emulator.volume_snapshots(SOURCE, 8, &[0.0], &json!({}));
    let missing = "vol-0123456789abcdef0".to_owned();
    let existing = store.existing_volumes(&source, &[volume.clone(), missing]).await.unwrap();
    assert_eq!(existing, std::collections::HashSet::from([volume]));
    let none = store.images_using(&target, &[SnapshotId::parse("snap-0123456789abcdef0").unwrap()]).await.unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn snapshots_another_account_owns_are_neither_sources_nor_copies() {
    // Another account shares a snapshot tagged like ours, and a snapshot in the target region
    // carrying this project's tracking tags for our source (its own deployment's copy, shared).
    // On EC2 a tag filter without `OwnerIds=self` lists both.
    const OTHER_ACCOUNT: &str = "210987654321";
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let daily = json!({"Backup": "daily"});
    let ours = emulator.tagged_snapshots(SOURCE, &[8], "completed", &daily);
    let theirs = emulator.snapshots_owned_by(SOURCE, &[8], OTHER_ACCOUNT, &daily);
    let their_copy = emulator.snapshots_owned_by(
        TARGET,
        &[8],
        OTHER_ACCOUNT,
        &json!({"copy-snapshots:source-snapshot-id": ours[0], "copy-snapshots:source-region": SOURCE,
                "copy-snapshots:encryption": "none"}),
    );
    let mut lambda = function(&emulator).await;
    // Without retention the look for earlier copies is by source id; with it, every copy from
    // the region: both must leave the other account's snapshot out.
    let daily_filter = json!([{"name": "tag:Backup", "values": ["daily"]}]);
    let payloads = [
        json!({"filters": daily_filter, "wait_for_completion": true}),
        json!({"filters": daily_filter, "retain_count": 1, "delete_orphans_after_days": 1, "wait_for_completion": true}),
    ];
    for (round, payload) in payloads.iter().enumerate() {
        let response = lambda.invoke(payload, LONG).await.response();
        assert_eq!(response["complete"], true, "{response}");
        let sources = copied_sources(&response);
        assert_eq!(sources, [ours[0].clone()], "round {round}: {response}");
        assert_ne!(response["copies"][0]["snapshot_id"], their_copy[0].as_str(), "another account's snapshot adopted");
        assert_eq!(response["copies"][0]["reused"], round == 1, "{response}");
    }
    let record = emulator.record();
    report("other_account", &record, "");
    assert_eq!(record.calls("CopySnapshot"), 1);
    assert!(record.copies().all(|c| c["source_snapshot_id"] != theirs[0].as_str()));
    assert_eq!(record.calls("DeleteSnapshot"), 0, "nothing of another account is judged");
}
