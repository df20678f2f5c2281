//! How the aws-sdk-ec2 store reads EC2's answers, on a scripted endpoint
//! (support::scripted_ec2): error codes the emulator cannot produce map to the engine's
//! outcomes, throttling is retried by the SDK, and a CopySnapshot that may have reached EC2 is
//! never retried blindly. The slot table's adapter likewise: DynamoDB's refusals map to what
//! the engine does about them, each naming the table.

use std::time::Duration;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region as SdkRegion, SharedCredentialsProvider};
use copy_snapshots::ids::{Place, Region, SnapshotId};
use copy_snapshots::store::dynamo_slots::DynamoSlotLedger;
use copy_snapshots::store::ec2::Ec2Store;
use copy_snapshots::store::ledger::{LedgerError, LedgerState, Saved, SlotLedger};
use copy_snapshots::store::{
    CopySpec, SOURCE_REGION_TAG, SOURCE_SNAPSHOT_TAG, SnapshotState, SnapshotStore, StoreError,
};

use crate::support::scripted_ec2::{Reply, ScriptedEc2};

const MAX_ATTEMPTS: u32 = 3;

/// The SDK configuration of production's retry policy (standard mode) but millisecond
/// backoff, pointed at `endpoint`.
fn scripted_config(endpoint: &ScriptedEc2) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(SdkRegion::new("us-east-1"))
        .endpoint_url(endpoint.endpoint())
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new("akid", "secret", None, None, "test")))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(1))
                .with_max_backoff(Duration::from_millis(5)),
        )
        .build()
}

/// An EC2 store talking to `ec2`.
fn store(ec2: &ScriptedEc2) -> Ec2Store {
    Ec2Store::new(&scripted_config(ec2))
}

fn spec() -> CopySpec {
    CopySpec {
        source_id: SnapshotId::parse("snap-0123456789abcdef0").unwrap(),
        source_region: Region::parse("us-east-1").unwrap(),
        target: Place::here(Region::parse("eu-west-1").unwrap()),
        description: "Copy of snap-0123456789abcdef0 from us-east-1".into(),
        encrypted: true,
        kms_key_id: None,
        tags: vec![],
        completion_duration_minutes: None,
    }
}

fn copies(count: usize) -> Vec<String> {
    vec!["CopySnapshot".to_owned(); count]
}

#[tokio::test]
async fn copy_snapshot_error_codes_map_to_engine_outcomes() {
    type Expectation = fn(&StoreError) -> bool;
    // The HTTP statuses EC2 answers these codes with.
    let cases: [(u16, &str, Expectation); 7] = [
        (400, "ResourceLimitExceeded", |e| matches!(e, StoreError::NoSlot(_))),
        (400, "IncorrectState", |e| matches!(e, StoreError::NotReady(_))),
        (400, "InvalidSnapshot.NotFound", |e| matches!(e, StoreError::NotFound(_))),
        (403, "UnauthorizedOperation", |e| matches!(e, StoreError::AccessDenied(_))),
        (400, "KMS.DisabledException", |e| matches!(e, StoreError::AccessDenied(_))),
        (
            400,
            "InvalidParameterValue",
            |e| matches!(e, StoreError::Refused { code, .. } if code == "InvalidParameterValue"),
        ),
        (503, "RequestLimitExceeded", |e| matches!(e, StoreError::Throttled(_))),
    ];
    for (status, code, expected) in cases {
        let replies = (0..MAX_ATTEMPTS).map(|_| Reply::error(status, code)).collect();
        let ec2 = ScriptedEc2::start(replies);
        let error = store(&ec2).start_copy(&spec()).await.expect_err(code);
        assert!(expected(&error), "{code} → {error:?}");
        assert!(error.to_string().contains(code), "{error}");
        // Only throttling is retried (by the SDK); a definite refusal is final.
        let calls = if code == "RequestLimitExceeded" { MAX_ATTEMPTS as usize } else { 1 };
        assert_eq!(ec2.actions(), copies(calls), "{code}");
    }
}

#[tokio::test]
async fn throttled_copy_snapshot_is_retried_by_the_sdk() {
    let ec2 = ScriptedEc2::start(vec![
        Reply::error(503, "RequestLimitExceeded"),
        Reply::error(503, "RequestLimitExceeded"),
        Reply::copy_started("snap-0aaaaaaaaaaaaaaaa"),
    ]);
    let id = store(&ec2).start_copy(&spec()).await.unwrap();
    assert_eq!(id.as_str(), "snap-0aaaaaaaaaaaaaaaa");
    assert_eq!(ec2.actions(), copies(3));
}

#[tokio::test]
async fn throttling_that_outlasts_the_retries_is_throttled() {
    let ec2 = ScriptedEc2::start((0..=MAX_ATTEMPTS).map(|_| Reply::error(503, "RequestLimitExceeded")).collect());
    let error = store(&ec2).start_copy(&spec()).await.unwrap_err();
    assert!(matches!(error, StoreError::Throttled(_)), "{error:?}");
    assert_eq!(ec2.actions(), copies(MAX_ATTEMPTS as usize));
}

#[tokio::test]
async fn a_server_error_on_copy_snapshot_is_not_retried_and_reported_as_unknown() {
    // A 5xx may come after EC2 made the copy: retrying would make a second one.
    for (status, code) in [(503, "Unavailable"), (500, "InternalError"), (502, "SomethingUnlisted")] {
        let ec2 = ScriptedEc2::start(vec![Reply::error(status, code), Reply::copy_started("snap-0bbbbbbbbbbbbbbbb")]);
        let error = store(&ec2).start_copy(&spec()).await.unwrap_err();
        assert!(matches!(error, StoreError::Unknown(_)), "{code} → {error:?}");
        assert_eq!(ec2.actions(), copies(1), "CopySnapshot must not be retried after a {status}");
    }
}

#[tokio::test]
async fn a_server_error_on_describe_is_retried() {
    let copy = format!(
        "<item><snapshotId>snap-0cccccccccccccccc</snapshotId><status>pending</status><progress>42%</progress>\
         <encrypted>true</encrypted><kmsKeyId>arn:aws:kms:eu-west-1:111122223333:key/k</kmsKeyId><tagSet>\
         <item><key>{SOURCE_SNAPSHOT_TAG}</key><value>snap-0123456789abcdef0</value></item>\
         <item><key>{SOURCE_REGION_TAG}</key><value>us-east-1</value></item></tagSet></item>"
    );
    let ec2 = ScriptedEc2::start(vec![Reply::error(500, "InternalError"), Reply::snapshots(&copy)]);
    let ids = [SnapshotId::parse("snap-0cccccccccccccccc").unwrap()];
    let found = store(&ec2).describe_copies(&Place::here(Region::parse("eu-west-1").unwrap()), &ids).await.unwrap();
    assert_eq!(ec2.actions(), vec!["DescribeSnapshots"; 2]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].state, SnapshotState::Pending);
    assert_eq!(found[0].progress, Some(42));
    assert_eq!(found[0].source_id.as_str(), "snap-0123456789abcdef0");
    assert!(found[0].encrypted);
}

#[tokio::test]
async fn access_denied_on_describe_is_access_denied() {
    let ec2 = ScriptedEc2::start(vec![Reply::error(403, "UnauthorizedOperation")]);
    let ids = [SnapshotId::parse("snap-0cccccccccccccccc").unwrap()];
    let error = store(&ec2).describe_copies(&Place::here(Region::parse("eu-west-1").unwrap()), &ids).await.unwrap_err();
    assert!(matches!(error, StoreError::AccessDenied(_)), "{error:?}");
    assert_eq!(ec2.actions(), vec!["DescribeSnapshots"], "a refusal is not retried");
}

/// A slot ledger on `endpoint` with the same retry policy as [`store`].
fn ledger(endpoint: &ScriptedEc2) -> DynamoSlotLedger {
    DynamoSlotLedger::new(&scripted_config(endpoint), "copy-snapshots-SlotTable-1")
}

#[tokio::test]
async fn the_slot_tables_refusals_say_what_to_fix_and_name_the_table() {
    let target = Place::here(Region::parse("eu-west-1").unwrap());
    let table = ScriptedEc2::start(vec![Reply::dynamodb_error(400, "AccessDeniedException")]);
    let Err(LedgerError::AccessDenied(message)) = ledger(&table).load(&target).await else {
        panic!("not AccessDenied")
    };
    assert!(message.contains("copy-snapshots-SlotTable-1") && message.contains("dynamodb:GetItem"), "{message}");

    let table = ScriptedEc2::start(vec![Reply::dynamodb_error(400, "ResourceNotFoundException")]);
    let Err(LedgerError::Misconfigured(message)) = ledger(&table).load(&target).await else {
        panic!("not Misconfigured")
    };
    assert!(message.contains("copy-snapshots-SlotTable-1") && message.contains("SLOT_TABLE"), "{message}");

    // Throttling outlasting the SDK's retries: a round without a start, not a failure.
    let throttled = (0..MAX_ATTEMPTS).map(|_| Reply::dynamodb_error(400, "ProvisionedThroughputExceededException"));
    let table = ScriptedEc2::start(throttled.collect());
    let result = ledger(&table).load(&target).await;
    assert!(matches!(result, Err(LedgerError::Unavailable(_))), "{result:?}");
    assert_eq!(table.actions().len(), MAX_ATTEMPTS as usize, "the SDK retried the throttled read");

    // Another invocation wrote first: a conflict to retry, not an error.
    let table = ScriptedEc2::start(vec![Reply::dynamodb_error(400, "ConditionalCheckFailedException")]);
    let saved = ledger(&table).save(&target, &LedgerState::default(), 4).await;
    assert_eq!(saved, Ok(Saved::Conflict));
}

/// A target in another account whose role cannot be assumed (its trust policy does not name
/// this function's role): every call there is access denied, with STS's reason, and none is
/// sent to EC2 — never a call that "may have happened".
#[tokio::test]
async fn a_role_that_cannot_be_assumed_is_access_denied_before_any_ec2_call() {
    let (error, actions) = describe_copies_through_a_role(vec![Reply::sts_error(403, "AccessDenied")]).await;
    let StoreError::AccessDenied(message) = &error else { panic!("access denied: {error:?}") };
    assert!(message.contains("AccessDenied"), "STS's reason: {message}");
    assert_eq!(actions, vec!["AssumeRole"], "nothing sent to EC2");
}

/// STS failing (a 5xx after the SDK's retries) kept the credentials away: nothing was sent, so
/// the call is tried again later (throttled), never a call that may have happened, nor a denial.
#[tokio::test]
async fn sts_failing_to_answer_is_a_later_try_not_a_denial() {
    let failures = (0..MAX_ATTEMPTS).map(|_| Reply::sts_error(500, "InternalFailure")).collect();
    let (error, actions) = describe_copies_through_a_role(failures).await;
    assert!(matches!(error, StoreError::Throttled(_)), "{error:?}");
    assert!(actions.iter().all(|a| a == "AssumeRole"), "nothing sent to EC2: {actions:?}");
}

/// DescribeSnapshots through a role in another account, STS answering with `sts`: the error
/// and the actions the endpoint saw.
async fn describe_copies_through_a_role(sts: Vec<Reply>) -> (StoreError, Vec<String>) {
    let ec2 = ScriptedEc2::start(sts);
    // As `load_sdk_config` loads it (the STS provider needs the loader's time source).
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(SdkRegion::new("us-east-1"))
        .endpoint_url(ec2.endpoint())
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new("akid", "secret", None, None, "test")))
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .load()
        .await;
    let role = copy_snapshots::ids::RoleArn::parse("arn:aws:iam::444455556666:role/copy-snapshots-recovery").unwrap();
    let place = Place { region: Region::parse("eu-west-1").unwrap(), role: Some(role) };
    let ids = [SnapshotId::parse("snap-0cccccccccccccccc").unwrap()];
    let error = Ec2Store::new(&config).describe_copies(&place, &ids).await.unwrap_err();
    (error, ec2.actions())
}
