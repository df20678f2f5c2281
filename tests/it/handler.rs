//! `answer_lambda_event` in-process, as the Lambda runtime's own examples test handlers
//! (`LambdaEvent::new(payload, Context)`), on the in-memory EC2 and tokio's paused clock: the
//! deadline from the context (and the fallback when it is not in the future), an unreadable
//! payload, and the EMF line's counts for a success and for each errorType.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::support::events::snapshot_notification;
use copy_snapshots::contract::response::Answer;
use copy_snapshots::entry::handler::{Payload, answer_lambda_event};
use copy_snapshots::entry::logging::{self, LogLevel};
use copy_snapshots::ids::{Region, SnapshotId};
use copy_snapshots::store::SnapshotState;
use copy_snapshots::store::simulated::SimulatedEc2;
use copy_snapshots::{CopySnapshotsError, Settings};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use tokio::time::Instant;

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";

/// The global subscriber can be installed once per process.
fn log_level() -> &'static LogLevel {
    static LEVEL: OnceLock<LogLevel> = OnceLock::new();
    LEVEL.get_or_init(logging::init)
}

fn settings() -> Settings {
    Settings {
        source_region: Some(Region::parse(SOURCE).unwrap()),
        target_region: Some(Region::parse(TARGET).unwrap()),
        ..Settings::default()
    }
}

/// A context whose deadline is `remaining` from now (`None`: the runtime sent none).
fn context(remaining: Option<Duration>) -> Context {
    let mut context = Context::default();
    if let Some(remaining) = remaining {
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis();
        context.deadline = u64::try_from(now_ms + remaining.as_millis()).unwrap();
    }
    context
}

async fn invoke(
    ec2: &SimulatedEc2,
    payload: Value,
    remaining: Option<Duration>,
) -> (Result<Answer, CopySnapshotsError>, Value) {
    let event = LambdaEvent::new(Payload::Json(payload), context(remaining));
    answer_lambda_event(event, &settings(), ec2, log_level()).await
}

fn full(answer: Result<Answer, CopySnapshotsError>) -> copy_snapshots::Response {
    match answer {
        Ok(Answer::Full(response)) => response,
        other => panic!("expected a full answer, got {other:?}"),
    }
}

fn count(metrics: &Value, name: &str) -> u64 {
    metrics[name].as_u64().unwrap_or_else(|| panic!("{name} missing: {metrics}"))
}

#[tokio::test(start_paused = true)]
async fn a_context_without_a_future_deadline_falls_back_to_fifteen_minutes() {
    // Copies of 8 GiB take 280 s: done well within 15 minutes, impossible with no time at all.
    let ec2 = SimulatedEc2::new();
    let ids: Vec<SnapshotId> = (0..3).map(|_| ec2.add_source(SOURCE, 8, &[])).collect();
    let started = Instant::now();
    let (answer, _) = invoke(&ec2, json!({"snapshot_ids": ids, "wait_for_completion": true}), None).await;
    let response = full(answer);
    assert!(response.complete, "{response:?}");
    assert!(response.copies.iter().all(|c| c.state == "completed"));
    assert!(started.elapsed() < Duration::from_secs(900));
}

#[tokio::test(start_paused = true)]
async fn the_context_deadline_bounds_the_invocation() {
    let ec2 = SimulatedEc2::new();
    let ids: Vec<SnapshotId> = (0..3).map(|_| ec2.add_source(SOURCE, 8, &[])).collect();
    let started = Instant::now();
    let (answer, _) =
        invoke(&ec2, json!({"snapshot_ids": ids, "wait_for_completion": true}), Some(Duration::from_secs(60))).await;
    let response = full(answer);
    assert!(!response.complete, "280 s copies cannot complete in a 60 s invocation");
    assert!(started.elapsed() < Duration::from_secs(60), "answered after the deadline: {:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_payload_is_an_invalid_request_and_counted_as_an_error() {
    let ec2 = SimulatedEc2::new();
    let event = LambdaEvent::new(Payload::Unreadable("expected value at line 1 column 1".into()), context(None));
    let (answer, metrics) = answer_lambda_event(event, &settings(), &ec2, log_level()).await;
    let Err(err @ CopySnapshotsError::InvalidRequest(_)) = answer else { panic!("{answer:?}") };
    assert!(err.to_string().contains("not readable JSON"), "{err}");
    assert_eq!(count(&metrics, "InvocationErrors"), 1);
    assert_eq!(metrics["TargetRegion"], TARGET, "counted where the alarms look");
    assert_eq!(ec2.calls().total(), 0, "no EC2 call for a payload that is not JSON");
}

#[tokio::test(start_paused = true)]
async fn a_success_reports_what_it_started_and_reused() {
    let ec2 = SimulatedEc2::new();
    let ids: Vec<SnapshotId> = (0..3).map(|_| ec2.add_source(SOURCE, 8, &[])).collect();
    let (_, metrics) = invoke(&ec2, json!({"snapshot_ids": ids[..2]}), Some(Duration::from_secs(900))).await;
    assert_eq!((count(&metrics, "CopiesStarted"), count(&metrics, "CopiesReused")), (2, 0));
    let (answer, metrics) = invoke(&ec2, json!({"snapshot_ids": ids}), Some(Duration::from_secs(900))).await;
    assert!(full(answer).complete);
    assert_eq!((count(&metrics, "CopiesStarted"), count(&metrics, "CopiesReused")), (1, 2));
    assert_eq!(count(&metrics, "InvocationErrors"), 0);
    assert_eq!(metrics["_aws"]["CloudWatchMetrics"][0]["Namespace"], "CopySnapshots");
}

#[tokio::test(start_paused = true)]
async fn each_error_type_is_counted_as_documented() {
    let remaining = Some(Duration::from_secs(900));
    let expect = |answer: &Result<Answer, CopySnapshotsError>, error_type: &str| match answer {
        Err(e) => assert_eq!(e.error_type(), error_type, "{e}"),
        Ok(a) => panic!("expected {error_type}, got {a:?}"),
    };

    // Refused before any call, or by the look: an invocation error, nothing else.
    let ec2 = SimulatedEc2::new();
    let present = ec2.add_source(SOURCE, 8, &[]);
    let pending = ec2.add_snapshot(SOURCE, 8, SnapshotState::Pending, false, &[]);
    for (payload, error_type) in [
        (json!({"snapshot_ids": [present], "pending_limit": 0}), "InvalidRequest"),
        (json!({"snapshot_ids": [present, "snap-0000000000000dead"]}), "SourceNotFound"),
        (json!({"snapshot_ids": [present, pending]}), "SourceNotReady"),
    ] {
        let (answer, metrics) = invoke(&ec2, payload, remaining).await;
        expect(&answer, error_type);
        assert_eq!(count(&metrics, "InvocationErrors"), 1, "{error_type}");
        assert_eq!(count(&metrics, "CopiesStarted"), 0, "{error_type}");
    }

    // AccessDenied, Throttled, Ec2Error of the look: invocation errors, safe to retry. (A
    // refusal of one source's copy fails that source, and throttling of a start backs off:
    // see the scale tests.)
    let ec2 = SimulatedEc2::new();
    let id = ec2.add_source(SOURCE, 8, &[]);
    ec2.deny_looks();
    let (answer, metrics) = invoke(&ec2, json!({"snapshot_ids": [id]}), remaining).await;
    expect(&answer, "AccessDenied");
    assert_eq!(count(&metrics, "InvocationErrors"), 1);
    let ec2 = SimulatedEc2::new();
    let id = ec2.add_source(SOURCE, 8, &[]);
    // Throttled for longer than the invocation's 15 minutes of backing off.
    ec2.throttle_next_looks(10_000);
    let (answer, metrics) = invoke(&ec2, json!({"snapshot_ids": [id]}), remaining).await;
    expect(&answer, "Throttled");
    assert_eq!(count(&metrics, "InvocationErrors"), 1);
    let ec2 = SimulatedEc2::new();
    let id = ec2.add_source(SOURCE, 8, &[]);
    // Never answered, through every try of the look.
    ec2.lose_finds(0, 1_000);
    let (answer, metrics) = invoke(&ec2, json!({"snapshot_ids": [id]}), remaining).await;
    expect(&answer, "Ec2Error");
    assert_eq!(count(&metrics, "InvocationErrors"), 1);

    // CopyFailed reports its work: the failure in CopiesFailed, the rest as usual.
    let ec2 = SimulatedEc2::new();
    let ids: Vec<SnapshotId> = (0..2).map(|_| ec2.add_source(SOURCE, 8, &[])).collect();
    ec2.fail_copies_of(&ids[0], "Given key ID is not accessible");
    let (answer, metrics) = invoke(&ec2, json!({"snapshot_ids": ids, "wait_for_completion": true}), remaining).await;
    expect(&answer, "CopyFailed");
    assert_eq!(count(&metrics, "CopiesFailed"), 1);
    assert_eq!(count(&metrics, "CopiesStarted"), 1);
    assert_eq!(count(&metrics, "InvocationErrors"), 0);

    // SourcesPending (an event whose snapshot could not start) reports it pending; Lambda
    // retries it, so it is not an invocation error in the metrics.
    let ec2 = SimulatedEc2::new();
    ec2.add_foreign_pending(TARGET, 20, Duration::from_secs(3600));
    let id = ec2.add_source(SOURCE, 8, &[]);
    let event = snapshot_notification(SOURCE, id.as_str());
    let (answer, metrics) = invoke(&ec2, event, Some(Duration::from_secs(120))).await;
    expect(&answer, "SourcesPending");
    assert_eq!(count(&metrics, "PendingSources"), 1);
    assert_eq!(count(&metrics, "InvocationErrors"), 0);
}
