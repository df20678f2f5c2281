//! Payloads in: every bad input is an `InvalidRequest` naming the field before any EC2 call,
//! the environment's defaults apply only where the payload is silent, and every sample payload
//! under events/ parses as what it claims to be.

use std::collections::HashMap;

use crate::support::events::load_event;
use copy_snapshots::contract::event::{Invocation, parse_payload};
use copy_snapshots::contract::request::Settings;
use copy_snapshots::contract::retention::Retention;
use copy_snapshots::ids::{KmsKeyRef, Region};
use copy_snapshots::store::SourceSelector;
use copy_snapshots::store::simulated::SimulatedEc2;
use copy_snapshots::{CopySnapshotsError, handle};
use serde_json::{Value, json};

const ID_A: &str = "snap-0123456789abcdef0";
const ID_B: &str = "snap-0fedcba9876543210";
const KEY_ID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

fn settings() -> Settings {
    Settings { source_region: Region::parse("us-east-1").ok(), ..Settings::default() }
}

fn settings_with_target() -> Settings {
    Settings { target_region: Region::parse("eu-west-1").ok(), ..settings() }
}

fn valid() -> Value {
    json!({"snapshot_ids": [ID_A, ID_B], "target_region": "eu-west-1"})
}

fn with(field: &str, value: Value) -> Value {
    let mut payload = valid();
    payload[field] = value;
    payload
}

/// Each case: the payload, and a text the error must contain (the field, or what is valid).
fn bad_inputs() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        ("no sources", json!({"target_region": "eu-west-1"}), "snapshot_ids or filters"),
        ("empty ids", with("snapshot_ids", json!([])), "snapshot_ids: the list is empty"),
        ("ids not a list", with("snapshot_ids", json!(ID_A)), "snapshot_ids"),
        ("id of wrong shape", with("snapshot_ids", json!(["snap-XYZ"])), "snapshot_ids[0]"),
        ("volume id", with("snapshot_ids", json!([ID_A, "vol-0123abcd"])), "8 or 17 lowercase hex"),
        ("upper-case hex", with("snapshot_ids", json!(["snap-0123ABCD"])), "snapshot_ids[0]"),
        ("id not a string", with("snapshot_ids", json!([12345678])), "snapshot_ids[0]"),
        ("duplicate ids", with("snapshot_ids", json!([ID_A, ID_B, ID_A])), "listed twice"),
        ("ids and filters", with("filters", json!([{"name": "tag:Backup", "values": ["daily"]}])), "not both"),
        ("empty filters", json!({"filters": [], "target_region": "eu-west-1"}), "filters: the list is empty"),
        (
            "filter without values",
            json!({"filters": [{"name": "tag:Backup", "values": []}], "target_region": "eu-west-1"}),
            "filters[0].values",
        ),
        (
            "filter typo",
            json!({"filters": [{"Name": "tag:Backup", "values": ["x"]}], "target_region": "eu-west-1"}),
            "unknown field `Name`",
        ),
        ("bad target region", with("target_region", json!("eu-west")), "target_region: `eu-west` is not a region name"),
        ("bad source region", with("region", json!("US-EAST-1")), "region: `US-EAST-1` is not a region name"),
        ("region not a string", with("region", json!(1)), "region: invalid type: integer `1`"),
        ("pending_limit 0", with("pending_limit", json!(0)), "pending_limit"),
        ("pending_limit negative", with("pending_limit", json!(-3)), "pending_limit"),
        ("pending_limit fraction", with("pending_limit", json!(2.5)), "pending_limit"),
        ("pending_limit string", with("pending_limit", json!("5")), "an integer ≥ 1"),
        ("key without encrypt", with("kms_key_id", json!(KEY_ID)), "kms_key_id: given without `encrypt: true`"),
        (
            "key with encrypt false",
            {
                let mut p = with("kms_key_id", json!(KEY_ID));
                p["encrypt"] = json!(false);
                p
            },
            "kms_key_id: given without `encrypt: true`",
        ),
        (
            "malformed key",
            {
                let mut p = with("kms_key_id", json!("my-key"));
                p["encrypt"] = json!(true);
                p
            },
            "alias ARN",
        ),
        (
            "key in another region",
            {
                let mut p = with("kms_key_id", json!(format!("arn:aws:kms:us-west-2:111122223333:key/{KEY_ID}")));
                p["encrypt"] = json!(true);
                p
            },
            "target region eu-west-1",
        ),
        (
            "encrypt as string",
            with("encrypt", json!("yes")),
            "encrypt: invalid type: string \"yes\", expected a boolean",
        ),
        ("unknown field", with("snapshot_id", json!(ID_A)), "unknown field `snapshot_id`"),
        ("aws: tag", with("tags", json!({"aws:backup": "x"})), "aws:"),
        ("reserved tag", with("tags", json!({"copy-snapshots:source-region": "x"})), "copy-snapshots:"),
        ("tag value not a string", with("tags", json!({"team": 7})), "tags"),
        (
            "too many tags",
            with("tags", Value::Object((0..46).map(|i| (format!("k{i}"), json!("v"))).collect())),
            "at most 45 (EC2 allows 50 per snapshot, 5 are this function's)",
        ),
        ("duration not a multiple of 15", with("completion_duration_minutes", json!(20)), "multiple of 15"),
        ("duration too long", with("completion_duration_minutes", json!(2895)), "completion_duration_minutes"),
        ("negative max wait", with("max_wait_seconds", json!(-1)), "max_wait_seconds"),
        (
            "201 values in one filter",
            json!({"filters": [{"name": "volume-id", "values": (0..201).map(|i| format!("vol-{i:08x}")).collect::<Vec<_>>()}],
                   "target_region": "eu-west-1"}),
            "filters[0].values: 201 values for `volume-id`; valid: at most 200",
        ),
        ("retain_days 0", with("retain_days", json!(0)), "retain_days: 0 is not a retention"),
        ("retain_count 0", with("retain_count", json!(0)), "retain_count: 0 is not a retention"),
        ("retain_days negative", with("retain_days", json!(-7)), "retain_days: invalid value"),
        ("retain_count as string", with("retain_count", json!("3")), "retain_count: invalid type"),
        ("retain_days fraction", with("retain_days", json!(1.5)), "an integer ≥ 1: sources started within"),
        ("orphan grace negative", with("delete_orphans_after_days", json!(-1)), "delete_orphans_after_days"),
        ("orphan grace as string", with("delete_orphans_after_days", json!("30")), "an integer ≥ 0"),
        (
            "dry_run as string",
            with("dry_run", json!("yes")),
            "dry_run: invalid type: string \"yes\", expected a boolean",
        ),
        ("retention misspelled", with("retention_days", json!(7)), "unknown field `retention_days`"),
        ("unknown response format", with("response_format", json!("brief")), "\"full\""),
        ("response format not a string", with("response_format", json!(true)), "response_format"),
        ("payload is a list", json!([ID_A]), "must be a JSON object"),
        ("payload is a string", json!("copy everything"), "must be a JSON object"),
        (
            "bare scheduled event",
            json!({
                "version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events",
                "account": "111122223333", "time": "2026-11-25T10:00:00Z", "region": "us-east-1",
                "resources": [], "detail": {}
            }),
            "schedule an Input",
        ),
        (
            "event with a bad ARN",
            json!({
                "detail-type": "EBS Snapshot Notification", "source": "aws.ec2",
                "detail": {"event": "createSnapshot", "result": "succeeded", "snapshot_id": "arn:aws:ec2::us-east-1:volume/vol-1"}
            }),
            "detail.snapshot_id",
        ),
    ]
}

#[tokio::test(start_paused = true)]
async fn every_bad_input_is_invalid_request_and_ec2_is_never_called() {
    for (case, payload, expected) in bad_inputs() {
        let ec2 = SimulatedEc2::new();
        let result = handle(payload, &settings(), &ec2, None).await;
        match result {
            Err(CopySnapshotsError::InvalidRequest(message)) => {
                assert!(message.contains(expected), "{case}: message {message:?} should mention {expected:?}");
            }
            other => panic!("{case}: expected InvalidRequest, got {other:?}"),
        }
        assert_eq!(ec2.calls().total(), 0, "{case}: EC2 was called");
    }
}

#[tokio::test(start_paused = true)]
async fn missing_target_region_without_default_is_invalid() {
    let ec2 = SimulatedEc2::new();
    let result = handle(json!({"snapshot_ids": [ID_A]}), &settings(), &ec2, None).await;
    let Err(CopySnapshotsError::InvalidRequest(message)) = result else { panic!("{result:?}") };
    assert!(message.contains("target_region") && message.contains("TARGET_REGION"), "{message}");
    assert_eq!(ec2.calls().total(), 0);
}

#[test]
fn environment_fills_only_what_the_payload_leaves_out() {
    let env: HashMap<&str, &str> = HashMap::from([
        ("AWS_REGION", "us-east-1"),
        ("TARGET_REGION", "eu-west-1"),
        ("PENDING_LIMIT", "7"),
        ("ENCRYPT", "true"),
        ("KMS_KEY_ID", "alias/dr"),
        ("COPY_TAGS", "TRUE"),
        ("POLL_INTERVAL_SECONDS", "2.5"),
        ("MAX_POLL_INTERVAL_SECONDS", "60"),
    ]);
    let settings = Settings::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
    assert_eq!(settings.poll_interval.as_secs_f64(), 2.5);
    assert_eq!(settings.max_poll_interval.as_secs_f64(), 60.0);

    let Invocation::Copy(request) = parse_payload(json!({"snapshot_ids": [ID_A]}), &settings).unwrap() else {
        panic!("a copy")
    };
    assert_eq!(request.targets[0].place.region.as_str(), "eu-west-1");
    assert_eq!(request.source_region.as_str(), "us-east-1");
    assert_eq!(request.targets[0].pending_limit, 7);
    assert!(request.targets[0].encrypt && request.copy_tags);
    assert_eq!(request.targets[0].kms_key, Some(KmsKeyRef::AliasName("alias/dr".into())));

    let payload = json!({"snapshot_ids": [ID_A], "target_region": "ap-south-1", "region": "eu-central-1",
                         "pending_limit": 3, "encrypt": false, "copy_tags": false});
    let Invocation::Copy(request) = parse_payload(payload, &settings).unwrap() else { panic!("a copy") };
    assert_eq!(request.targets[0].place.region.as_str(), "ap-south-1");
    assert_eq!(request.source_region.as_str(), "eu-central-1");
    assert_eq!(request.targets[0].pending_limit, 3);
    assert!(!request.targets[0].encrypt && !request.copy_tags);
    assert_eq!(request.targets[0].kms_key, None, "KMS_KEY_ID applies only to encrypted copies");
}

#[test]
fn a_request_may_lower_the_deployments_pending_limit_but_not_raise_it() {
    let env: HashMap<&str, &str> =
        HashMap::from([("AWS_REGION", "us-east-1"), ("TARGET_REGION", "eu-west-1"), ("PENDING_LIMIT", "15")]);
    let deployed = Settings::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
    let lower = parse_payload(json!({"snapshot_ids": [ID_A], "pending_limit": 5}), &deployed).unwrap();
    let Invocation::Copy(lower) = lower else { panic!("a copy") };
    assert_eq!(lower.targets[0].pending_limit, 5);
    let Err(CopySnapshotsError::InvalidRequest(message)) =
        parse_payload(json!({"snapshot_ids": [ID_A], "pending_limit": 20}), &deployed)
    else {
        panic!("20 over a deployment's 15 must be refused")
    };
    assert!(message.contains("pending_limit") && message.contains("1 to 15"), "{message}");
    // Without PENDING_LIMIT in the environment (a terminal, the tests) nothing caps a request:
    // an account whose copy quota was raised may ask for more than 20.
    let free =
        parse_payload(json!({"snapshot_ids": [ID_A], "pending_limit": 50, "target_region": "eu-west-1"}), &settings());
    let Ok(Invocation::Copy(free)) = free else { panic!("{free:?}") };
    assert_eq!(free.targets[0].pending_limit, 50);
}

#[test]
fn retention_comes_from_the_payload_else_from_the_environment_field_by_field() {
    let env: HashMap<&str, &str> = HashMap::from([
        ("AWS_REGION", "us-east-1"),
        ("TARGET_REGION", "eu-west-1"),
        ("RETAIN_DAYS", "30"),
        ("DELETE_ORPHANS_AFTER_DAYS", "0"),
    ]);
    let settings = Settings::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
    let request = |payload: Value| match parse_payload(payload, &settings).unwrap() {
        Invocation::Copy(request) => request,
        other => panic!("a copy, not {other:?}"),
    };
    let plain = request(json!({"snapshot_ids": [ID_A]}));
    assert_eq!(plain.targets[0].retention, Retention { days: Some(30), count: None, orphans_after_days: Some(0) });
    assert!(!plain.dry_run);
    let asked = request(json!({"snapshot_ids": [ID_A], "retain_days": 7, "retain_count": 3, "dry_run": true}));
    assert_eq!(asked.targets[0].retention, Retention { days: Some(7), count: Some(3), orphans_after_days: Some(0) });
    assert!(asked.dry_run);
    // An event takes its retention from the environment, like everything but its sources.
    let mut event = load_event("snapshot-notification.json");
    event["detail"]["snapshot_id"] = json!(format!("arn:aws:ec2::us-east-1:snapshot/{ID_A}"));
    assert_eq!(request(event).targets[0].retention.days, Some(30));
    // Without any of it, nothing is pruned.
    let none = Settings::from_lookup(|k| (k == "AWS_REGION").then(|| "us-east-1".to_owned())).unwrap();
    assert!(!none.retention.is_set());
}

#[test]
fn bad_environment_names_the_variable() {
    for (name, value) in [
        ("PENDING_LIMIT", "0"),
        ("PENDING_LIMIT", "many"),
        ("ENCRYPT", "yes please"),
        ("TARGET_REGION", "europe"),
        ("KMS_KEY_ID", "my key"),
        ("POLL_INTERVAL_SECONDS", "-1"),
        ("MAX_POLL_INTERVAL_SECONDS", "0"),
        ("MAX_POLL_INTERVAL_SECONDS", "soon"),
        ("MAX_POLL_INTERVAL_SECONDS", "1e30"),
        ("ALLOWED_SOURCE_REGIONS", "us-east-1,Europe"),
        ("ALLOWED_TARGET_REGIONS", "eu-west-1;us-east-1"),
        ("RETAIN_DAYS", "0"),
        ("RETAIN_COUNT", "three"),
        ("DELETE_ORPHANS_AFTER_DAYS", "-1"),
    ] {
        let err = Settings::from_lookup(|k| (k == name).then(|| value.to_owned())).unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
    }
    // The longest wait may not be shorter than the shortest.
    let env = HashMap::from([("POLL_INTERVAL_SECONDS", "30"), ("MAX_POLL_INTERVAL_SECONDS", "20")]);
    let err = Settings::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap_err().to_string();
    assert!(err.contains("MAX_POLL_INTERVAL_SECONDS") && err.contains("at least POLL_INTERVAL_SECONDS (30)"), "{err}");
    // CloudFormation passes an unset optional parameter as "".
    let settings = Settings::from_lookup(|k| {
        [
            "KMS_KEY_ID",
            "PENDING_LIMIT",
            "MAX_POLL_INTERVAL_SECONDS",
            "ALLOWED_SOURCE_REGIONS",
            "ALLOWED_TARGET_REGIONS",
            "RETAIN_DAYS",
            "RETAIN_COUNT",
            "DELETE_ORPHANS_AFTER_DAYS",
        ]
        .contains(&k)
        .then(String::new)
    })
    .unwrap();
    assert_eq!(settings, Settings::default());
}

/// The settings a deployed stack in us-east-1 with TargetRegion eu-west-1 gives the function.
fn deployed() -> Settings {
    let env: HashMap<&str, &str> = HashMap::from([
        ("AWS_REGION", "us-east-1"),
        ("TARGET_REGION", "eu-west-1"),
        ("ALLOWED_SOURCE_REGIONS", "us-east-1,eu-west-1"),
        ("ALLOWED_TARGET_REGIONS", "eu-west-1"),
    ]);
    Settings::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap()
}

#[tokio::test(start_paused = true)]
async fn regions_the_deployment_cannot_reach_are_refused_before_any_call() {
    let arn_event = |region: &str| {
        json!({
            "detail-type": "EBS Snapshot Notification", "source": "aws.ec2",
            "detail": {"event": "createSnapshot", "result": "succeeded",
                       "snapshot_id": format!("arn:aws:ec2::{region}:snapshot/{ID_A}")}
        })
    };
    let cases = [
        (
            "another target",
            json!({"snapshot_ids": [ID_A], "target_region": "eu-central-1"}),
            "target_region: eu-central-1",
            "valid: eu-west-1",
        ),
        (
            "another source",
            json!({"snapshot_ids": [ID_A], "region": "ap-south-1"}),
            "region: ap-south-1",
            "us-east-1 or eu-west-1",
        ),
        ("an event from another region", arn_event("ap-south-1"), "region: ap-south-1", "ALLOWED_SOURCE_REGIONS"),
    ];
    for (case, payload, field, valid) in cases {
        let ec2 = SimulatedEc2::new();
        match handle(payload, &deployed(), &ec2, None).await {
            Err(CopySnapshotsError::InvalidRequest(message)) => {
                assert!(message.contains(field) && message.contains(valid), "{case}: {message}");
            }
            other => panic!("{case}: expected InvalidRequest, got {other:?}"),
        }
        assert_eq!(ec2.calls().total(), 0, "{case}: EC2 was called");
    }
    // The pair the role allows, and a copy within the target region, pass.
    for payload in [
        json!({"snapshot_ids": [ID_A]}),
        json!({"snapshot_ids": [ID_A], "region": "eu-west-1", "target_region": "eu-west-1"}),
    ] {
        assert!(parse_payload(payload.clone(), &deployed()).is_ok(), "{payload}");
    }
    assert!(parse_payload(arn_event("us-east-1"), &deployed()).is_ok());
    // Outside Lambda (no ALLOWED_* variables) nothing is restricted.
    let anywhere = json!({"snapshot_ids": [ID_A], "region": "ap-south-1", "target_region": "eu-central-1"});
    assert!(parse_payload(anywhere, &settings()).is_ok());
}

#[test]
fn response_format_defaults_to_full() {
    use copy_snapshots::contract::response::ResponseFormat;
    let format = |payload: Value| match parse_payload(payload, &settings_with_target()).unwrap() {
        Invocation::Copy(request) => request.response_format,
        other => panic!("{other:?}"),
    };
    assert_eq!(format(json!({"snapshot_ids": [ID_A]})), ResponseFormat::Full);
    assert_eq!(format(json!({"snapshot_ids": [ID_A], "response_format": "summary"})), ResponseFormat::Summary);
    assert_eq!(format(json!({"snapshot_ids": [ID_A], "response_format": "full"})), ResponseFormat::Full);
}

fn ids_of(invocation: &Invocation) -> Vec<String> {
    match invocation {
        Invocation::Copy(request) => match &request.sources {
            SourceSelector::Ids(ids) => ids.iter().map(ToString::to_string).collect(),
            SourceSelector::Filters(_) => Vec::new(),
        },
        Invocation::Ignore { reason } => panic!("ignored: {reason}"),
    }
}

#[test]
fn every_sample_event_parses() {
    let settings = settings_with_target();
    let dir = format!("{}/events", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert!(names.len() >= 5, "events/ holds {names:?}");
    for name in &names {
        let event = load_event(name);
        if copy_snapshots::entry::batch::is_sqs_event(&event) {
            // A batch from the queue: each record's body is one of the events below.
            let body = event["Records"][0]["body"].as_str().unwrap_or_else(|| panic!("{name}: a record body"));
            let inner: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: {e}"));
            let invocation = parse_payload(inner, &settings).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(matches!(invocation, Invocation::Copy(_)), "{name}: {invocation:?}");
            continue;
        }
        let invocation = parse_payload(event, &settings).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(matches!(invocation, Invocation::Copy(_)), "{name}: {invocation:?}");
    }

    let manual = parse_payload(load_event("manual.json"), &settings).unwrap();
    assert_eq!(ids_of(&manual), [ID_A, ID_B]);

    let Invocation::Copy(encrypted) = parse_payload(load_event("encrypted-kms.json"), &settings).unwrap() else {
        panic!()
    };
    assert!(encrypted.targets[0].encrypt);
    assert!(matches!(encrypted.targets[0].kms_key, Some(KmsKeyRef::KeyArn { .. })));

    let Invocation::Copy(filter) = parse_payload(load_event("tag-filter.json"), &settings).unwrap() else { panic!() };
    assert!(matches!(&filter.sources, SourceSelector::Filters(f) if f[0].name == "tag:Backup"));

    let Invocation::Copy(loop_input) = parse_payload(load_event("step-functions.json"), &settings).unwrap() else {
        panic!()
    };
    assert_eq!(loop_input.max_wait, Some(std::time::Duration::ZERO));

    let single = parse_payload(load_event("snapshot-notification.json"), &settings).unwrap();
    assert_eq!(ids_of(&single), [ID_A]);

    let multi = parse_payload(load_event("multi-volume-completion.json"), &settings).unwrap();
    assert_eq!(ids_of(&multi), [ID_A, ID_B], "only completed snapshots are copied");
}

#[test]
fn snapshot_events_take_the_region_from_the_arn_in_both_spellings() {
    let settings = settings_with_target();
    for arn in
        [format!("arn:aws:ec2::ap-southeast-2:snapshot/{ID_A}"), format!("arn:aws:ec2:ap-southeast-2::snapshot/{ID_A}")]
    {
        let mut event = load_event("snapshot-notification.json");
        event["detail"]["snapshot_id"] = json!(arn);
        let Invocation::Copy(request) = parse_payload(event, &settings).unwrap() else { panic!() };
        assert_eq!(request.source_region.as_str(), "ap-southeast-2");
        assert_eq!(request.targets[0].place.region.as_str(), "eu-west-1");
    }
}

#[tokio::test(start_paused = true)]
async fn events_that_ask_for_no_copy_get_an_empty_complete_answer() {
    let mut failed = load_event("snapshot-notification.json");
    failed["detail"]["result"] = json!("failed");
    let mut copy_event = load_event("snapshot-notification.json");
    copy_event["detail"]["event"] = json!("copySnapshot");
    let mut none_completed = load_event("multi-volume-completion.json");
    for snapshot in none_completed["detail"]["snapshots"].as_array_mut().unwrap() {
        snapshot["status"] = json!("failed");
    }
    let other = json!({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
                       "detail": {"instance-id": "i-0123", "state": "running"}});
    for (case, event) in
        [("failed", failed), ("copySnapshot", copy_event), ("none completed", none_completed), ("other", other)]
    {
        let ec2 = SimulatedEc2::new();
        let response =
            handle(event, &settings_with_target(), &ec2, None).await.unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(response.complete && response.copies.is_empty() && response.snapshot_ids.is_empty(), "{case}");
        assert_eq!(ec2.calls().total(), 0, "{case}");
    }
}
