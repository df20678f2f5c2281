//! The built binary as Lambda runs it: started with `AWS_LAMBDA_RUNTIME_API` pointing at a
//! runtime API in the test, handed the payloads under events/ (with ids of snapshots made in the
//! emulator), answering through the runtime API against moto.

use std::time::Duration;

use crate::support::events::load_event;
use crate::support::moto::{ec2_in, make_snapshot, make_volume, snapshot_volume};
use crate::support::runtime_api::LambdaHarness;
use serde_json::{Value, json};

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
const DEADLINE: Duration = Duration::from_secs(60);

async fn harness() -> LambdaHarness {
    LambdaHarness::start(&[("AWS_REGION", SOURCE), ("TARGET_REGION", TARGET), ("POLL_INTERVAL_SECONDS", "0.2")]).await
}

fn copied_sources(response: &Value) -> Vec<String> {
    copies(response).into_iter().map(|(source, _)| source).collect()
}

fn copies(response: &Value) -> Vec<(String, String)> {
    response["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["source_snapshot_id"].as_str().unwrap().to_owned(), c["snapshot_id"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn sample_payloads_through_the_binary() {
    let source = ec2_in(SOURCE).await;
    let target = ec2_in(TARGET).await;
    let mut lambda = harness().await;

    // Manual invoke: the sample with ids of real snapshots.
    let (a, b) = (make_snapshot(&source, 8, &[]).await, make_snapshot(&source, 20, &[]).await);
    let mut manual = load_event("manual.json");
    manual["snapshot_ids"] = json!([a, b]);
    manual["wait_for_completion"] = json!(true);
    let response = lambda.invoke(&manual, DEADLINE).await.response();
    assert_eq!(response["complete"], json!(true), "{response}");
    let made = copies(&response);
    assert_eq!(made.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), [a.as_str(), b.as_str()]);
    let found = target.describe_snapshots().snapshot_ids(&made[0].1).send().await.unwrap();
    assert_eq!(found.snapshots().len(), 1, "the copy exists in {TARGET}");

    // The same again: reused, nothing new.
    let again = lambda.invoke(&manual, DEADLINE).await.response();
    assert!(again["copies"].as_array().unwrap().iter().all(|c| c["reused"] == json!(true)), "{again}");
    assert_eq!(again["snapshot_ids"], response["snapshot_ids"]);

    // An EBS Snapshot Notification for a new snapshot: sources from the event, target from env.
    let c = make_snapshot(&source, 8, &[]).await;
    let mut notification = load_event("snapshot-notification.json");
    notification["detail"]["snapshot_id"] = json!(format!("arn:aws:ec2::{SOURCE}:snapshot/{c}"));
    let response = lambda.invoke(&notification, DEADLINE).await.response();
    assert_eq!(copied_sources(&response), [c]);

    // The multi-volume completion event: only the completed snapshots.
    let (d, e) = (make_snapshot(&source, 8, &[]).await, make_snapshot(&source, 8, &[]).await);
    let mut multi = load_event("multi-volume-completion.json");
    multi["detail"]["snapshots"][0]["snapshot_id"] = json!(format!("arn:aws:ec2:{SOURCE}::snapshot/{d}"));
    multi["detail"]["snapshots"][1]["snapshot_id"] = json!(format!("arn:aws:ec2:{SOURCE}::snapshot/{e}"));
    let response = lambda.invoke(&multi, DEADLINE).await.response();
    assert_eq!(copied_sources(&response), [d, e]);

    // The tag-filter schedule Input, with its own tag value so other tests do not interfere.
    let marker = format!("daily-{}", std::process::id());
    let tagged = make_snapshot(&source, 8, &[("Backup", &marker)]).await;
    let mut filter = load_event("tag-filter.json");
    filter["filters"][0]["values"] = json!([marker]);
    let response = lambda.invoke(&filter, DEADLINE).await.response();
    assert_eq!(copied_sources(&response), [tagged]);

    // The Step Functions input: max_wait_seconds 0 returns at once.
    let step = make_snapshot(&source, 8, &[("Backup", &format!("sfn-{marker}"))]).await;
    let mut sfn = load_event("step-functions.json");
    sfn["filters"][0]["values"] = json!([format!("sfn-{marker}")]);
    let response = lambda.invoke(&sfn, DEADLINE).await.response();
    assert_eq!(copies(&response)[0].0, step);

    // Logs are JSON lines (AWS_LAMBDA_LOG_FORMAT=JSON), one per copy started.
    let log = lambda.log();
    let lines: Vec<Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let started = lines.iter().filter(|l| l["fields"]["message"] == json!("copy started")).count();
    assert_eq!(started, 7, "{log}");
    // One CloudWatch EMF line per invocation, counting what it did.
    let metrics: Vec<&Value> = lines.iter().filter(|l| l["_aws"]["CloudWatchMetrics"].is_array()).collect();
    assert_eq!(metrics.len(), 6, "{log}");
    assert!(metrics.iter().all(|m| m["TargetRegion"] == TARGET));
    let started_metric: u64 = metrics.iter().map(|m| m["CopiesStarted"].as_u64().unwrap()).sum();
    assert_eq!(started_metric, 7);
    assert_eq!(metrics[1]["CopiesReused"], 2, "the second manual run reused both copies");
    // No payload at info level: the request is logged (as the `invocation` field, its Debug
    // form) only at debug level; `errors_come_back_with_their_error_type` shows it then is.
    let payloads: Vec<&Value> = lines.iter().filter(|l| !l["fields"]["invocation"].is_null()).collect();
    assert!(payloads.is_empty(), "a payload was logged at info level: {payloads:?}");
}

#[tokio::test]
async fn errors_come_back_with_their_error_type() {
    let source = ec2_in(SOURCE).await;
    let mut lambda = harness().await;

    let (error_type, message) = lambda.invoke(&json!({"snapshot_id": ["snap-0123abcd"]}), DEADLINE).await.error();
    assert_eq!(error_type, "InvalidRequest");
    assert!(message.contains("unknown field `snapshot_id`"), "{message}");

    let (error_type, message) =
        lambda.invoke(&json!({"snapshot_ids": ["snap-0123abcd"], "kms_key_id": "alias/dr"}), DEADLINE).await.error();
    assert_eq!(error_type, "InvalidRequest");
    assert!(message.contains("kms_key_id"), "{message}");

    let present = make_snapshot(&source, 8, &[]).await;
    let missing = "snap-0ffffffffffffffff";
    let (error_type, message) = lambda.invoke(&json!({"snapshot_ids": [present, missing]}), DEADLINE).await.error();
    assert_eq!(error_type, "SourceNotFound");
    assert!(message.contains(missing), "{message}");

    // The function keeps serving after errors.
    let ok = lambda.invoke(&json!({"snapshot_ids": [present]}), DEADLINE).await.response();
    assert_eq!(ok["complete"], json!(true));

    // `debug: true` raises this invocation's logs to debug, and only this one's.
    let debug_lines =
        |log: &str, skip: usize| log.lines().skip(skip).filter(|l| l.contains(r#""level":"DEBUG""#)).count();
    let before = lambda.log().lines().count();
    lambda.invoke(&json!({"snapshot_ids": [present], "debug": true}), DEADLINE).await.response();
    let log = lambda.log();
    assert!(debug_lines(&log, before) > 0, "{log}");
    let request_logged = log.lines().skip(before).any(|l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["fields"]["invocation"].as_str().is_some_and(|i| i.contains(&present)))
    });
    assert!(request_logged, "at debug level the request is logged: {log}");
    let before = log.lines().count();
    lambda.invoke(&json!({"snapshot_ids": [present]}), DEADLINE).await.response();
    assert_eq!(debug_lines(&lambda.log(), before), 0);
}

#[tokio::test]
async fn log_lines_carry_no_terminal_colour_codes_in_either_log_format() {
    // CloudWatch shows an escape code as text (`[31mERROR[0m`), and a Logs Insights query for
    // `ERROR` would have to match around it. Warnings, errors and info lines, in Lambda's
    // text and JSON formats.
    let source = ec2_in(SOURCE).await;
    let present = make_snapshot(&source, 8, &[]).await;
    for format in ["Text", "JSON"] {
        let mut lambda = LambdaHarness::start(&[
            ("AWS_REGION", SOURCE),
            ("TARGET_REGION", TARGET),
            ("POLL_INTERVAL_SECONDS", "0.2"),
            ("AWS_LAMBDA_LOG_FORMAT", format),
        ])
        .await;
        let (error_type, _) =
            lambda.invoke(&json!({"snapshot_ids": ["snap-0ffffffffffffffff"]}), DEADLINE).await.error();
        assert_eq!(error_type, "SourceNotFound");
        lambda.invoke(&json!({"snapshot_ids": [present]}), DEADLINE).await.response();
        let log = lambda.log();
        assert!(log.lines().count() >= 3, "{format}: too few lines to judge: {log}");
        assert!(log.contains("ERROR") || log.contains("WARN"), "{format}: no error or warning logged: {log}");
        let coloured: Vec<&str> = log.lines().filter(|l| l.contains('\u{1b}')).collect();
        assert!(coloured.is_empty(), "{format}: escape codes in {coloured:?}");
    }
}

#[tokio::test]
async fn deployed_settings_summary_answers_and_the_recovery_point_metric() {
    let source = ec2_in(SOURCE).await;
    // What template.yaml sets for a stack in us-east-1 with TargetRegion eu-west-1.
    let mut lambda = LambdaHarness::start(&[
        ("AWS_REGION", SOURCE),
        ("TARGET_REGION", TARGET),
        ("POLL_INTERVAL_SECONDS", "0.2"),
        ("ALLOWED_SOURCE_REGIONS", &format!("{SOURCE},{TARGET}")),
        ("ALLOWED_TARGET_REGIONS", TARGET),
    ])
    .await;

    // The state machine's request: a summary, not the list.
    let marker = format!("summary-{}", std::process::id());
    let tagged = make_snapshot(&source, 8, &[("Backup", &marker)]).await;
    let request = json!({"filters": [{"name": "tag:Backup", "values": [marker]}],
                         "max_wait_seconds": 0, "response_format": "summary"});
    let answer = lambda.invoke(&request, DEADLINE).await.response();
    let keys: Vec<&String> = answer.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["complete", "summary"], "{answer}");
    assert_eq!(answer["summary"]["copies"], 1, "{answer}");
    assert!(!answer.to_string().contains(&tagged), "a summary lists no sources: {answer}");

    // A region the role cannot reach is refused, naming the allowed one.
    let (error_type, message) =
        lambda.invoke(&json!({"snapshot_ids": [tagged], "target_region": "eu-central-1"}), DEADLINE).await.error();
    assert_eq!(error_type, "InvalidRequest");
    assert!(message.contains("target_region: eu-central-1") && message.contains(TARGET), "{message}");

    // The metrics line carries the recovery point; the refused request is counted under the
    // stack's target region, where the alarms look.
    let log = lambda.log();
    let metrics = lambda.metrics_lines();
    assert_eq!(metrics.len(), 2, "{log}");
    assert!(metrics[0]["OldestUncopiedSourceSeconds"].is_u64(), "{}", metrics[0]);
    assert_eq!(metrics[1]["InvocationErrors"], 1);
    assert_eq!(metrics[1]["TargetRegion"], TARGET);
    assert!(metrics[1].get("OldestUncopiedSourceSeconds").is_none(), "unknown, not reported: {}", metrics[1]);
}

/// This function's copies of `sources` in the target region (snapshot ids), any state.
async fn copies_in_target(target: &aws_sdk_ec2::Client, sources: &[String]) -> Vec<String> {
    let found = target
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:copy-snapshots:source-snapshot-id")
                .set_values(Some(sources.to_vec()))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut ids: Vec<String> = found.snapshots().iter().filter_map(|s| s.snapshot_id().map(str::to_owned)).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn retention_prunes_copies_made_before_it_was_configured_and_a_dry_run_changes_nothing() {
    let source = ec2_in(SOURCE).await;
    let target = ec2_in(TARGET).await;
    let mut lambda = harness().await;
    let marker = format!("retention-{}", std::process::id());
    let tags = [("Backup", marker.as_str())];
    // Four snapshots of one volume, a second apart, oldest first.
    let volume = make_volume(&source, 8).await;
    let mut snapshots = Vec::new();
    for _ in 0..4 {
        snapshots.push(snapshot_volume(&source, &volume, &tags).await);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // The oldest was copied by a version without the volume and start-time tags.
    let legacy = target
        .copy_snapshot()
        .source_region(SOURCE)
        .source_snapshot_id(&snapshots[0])
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Snapshot)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("copy-snapshots:source-snapshot-id")
                        .value(&snapshots[0])
                        .build(),
                )
                .tags(aws_sdk_ec2::types::Tag::builder().key("copy-snapshots:source-region").value(SOURCE).build())
                .build(),
        )
        .send()
        .await
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_owned();
    // The schedule without a retention copies the other three.
    let filters = json!([{"name": "tag:Backup", "values": [marker]}]);
    let plain = lambda.invoke(&json!({"filters": filters, "wait_for_completion": true}), DEADLINE).await.response();
    assert_eq!(copies(&plain).len(), 4, "{plain}");
    let legacy_report = plain["copies"].as_array().unwrap().iter().find(|c| c["source_snapshot_id"] == snapshots[0]);
    assert_eq!(
        legacy_report.map(|c| c["reused"].clone()),
        Some(json!(true)),
        "the legacy copy serves its source: {plain}"
    );
    let newest = snapshot_volume(&source, &volume, &tags).await;
    let mut all = snapshots.clone();
    all.push(newest.clone());
    let before = copies_in_target(&target, &all).await;
    assert_eq!(before.len(), 4);

    // A dry run with retain_count 1: it would copy the newest and delete three copies now; the
    // next-newest copy is the volume's last completed one until the newest's completes.
    let dry = json!({"filters": filters, "retain_count": 1, "dry_run": true});
    let answer = lambda.invoke(&dry, DEADLINE).await.response();
    assert_eq!(answer["dry_run"], true, "{answer}");
    assert_eq!(answer["to_copy"], json!([newest]), "{answer}");
    let would: Vec<&str> =
        answer["deleted"].as_array().unwrap().iter().map(|d| d["source_snapshot_id"].as_str().unwrap()).collect();
    let mut expected: Vec<&str> = snapshots[..3].iter().map(String::as_str).collect();
    let mut would = would;
    would.sort_unstable();
    expected.sort_unstable();
    assert_eq!(would, expected, "{answer}");
    assert_eq!(answer["deletions_left"], 1, "{answer}");
    assert_eq!(answer["skipped"].as_array().unwrap().len(), 4, "{answer}");
    assert_eq!(copies_in_target(&target, &all).await, before, "the dry run changed nothing");

    // The real run copies the newest, then deletes every older copy, the legacy one included.
    let run = json!({"filters": filters, "retain_count": 1, "wait_for_completion": true});
    let pruned = lambda.invoke(&run, DEADLINE).await.response();
    assert_eq!(pruned["complete"], true, "{pruned}");
    let deleted: Vec<&str> =
        pruned["deleted"].as_array().unwrap().iter().map(|d| d["snapshot_id"].as_str().unwrap()).collect();
    assert_eq!(deleted.len(), 4, "{pruned}");
    assert!(deleted.contains(&legacy.as_str()), "the copy made before the tags existed: {pruned}");
    let left = copies_in_target(&target, &all).await;
    assert_eq!(left.len(), 1);
    assert_eq!(copies(&pruned), [(newest.clone(), left[0].clone())]);

    // Once more: nothing to do.
    let again = lambda.invoke(&run, DEADLINE).await.response();
    assert!(again["deleted"].is_null() && again["copies"][0]["reused"] == json!(true), "{again}");
    let log = lambda.log();
    let metrics = lambda.metrics_lines();
    let deleted_metric: Vec<u64> = metrics.iter().map(|m| m["CopiesDeleted"].as_u64().unwrap()).collect();
    assert_eq!(deleted_metric, [0, 0, 4, 0], "the dry run deleted nothing: {log}");
    assert!(log.contains("\"copy deleted\""), "a log line per deletion: {log}");
}
