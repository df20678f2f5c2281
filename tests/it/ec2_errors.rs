//! How the aws-sdk-ec2 store reads EC2's answers, on a mocked client (aws-smithy-mocks): error
//! codes the emulator cannot produce map to the engine's outcomes, throttling is retried by the
//! SDK, and a CopySnapshot that may have reached EC2 is never retried blindly.

use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{Credentials, Region as SdkRegion};
use aws_sdk_ec2::error::ErrorMetadata;
use aws_sdk_ec2::operation::copy_snapshot::{CopySnapshotError, CopySnapshotOutput};
use aws_sdk_ec2::operation::describe_snapshots::{DescribeSnapshotsError, DescribeSnapshotsOutput};
use aws_sdk_ec2::types::{Snapshot, SnapshotState as SdkState, Tag};
use aws_smithy_mocks::{MockResponseInterceptor, Rule, RuleMode, create_mock_http_client, mock};
use aws_smithy_runtime_api::http::{Response as HttpResponse, StatusCode};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::RetryConfig;
use copy_snapshots::ec2::Ec2Store;
use copy_snapshots::ids::{Region, SnapshotId};
use copy_snapshots::store::{
    CopySpec, SOURCE_REGION_TAG, SOURCE_SNAPSHOT_TAG, SnapshotState, SnapshotStore, StoreError,
};

const MAX_ATTEMPTS: u32 = 3;

/// An EC2 store whose HTTP answers come from `rules`, with the retry policy of production
/// (standard mode) but millisecond backoff.
fn store(rules: &[&Rule]) -> Ec2Store {
    let interceptor =
        rules.iter().fold(MockResponseInterceptor::new().rule_mode(RuleMode::Sequential), |i, r| i.with_rule(r));
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version_latest()
        .region(SdkRegion::new("us-east-1"))
        .credentials_provider(Credentials::new("akid", "secret", None, None, "test"))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(1))
                .with_max_backoff(Duration::from_millis(5)),
        )
        .http_client(create_mock_http_client())
        .interceptor(interceptor)
        .build();
    Ec2Store::from_config(config)
}

fn spec() -> CopySpec {
    CopySpec {
        source_id: SnapshotId::parse("snap-0123456789abcdef0").unwrap(),
        source_region: Region::parse("us-east-1").unwrap(),
        target_region: Region::parse("eu-west-1").unwrap(),
        description: "Copy of snap-0123456789abcdef0 from us-east-1".into(),
        encrypted: true,
        kms_key_id: None,
        tags: vec![],
        completion_duration_minutes: None,
    }
}

fn copy_error(code: &str) -> CopySnapshotError {
    CopySnapshotError::generic(ErrorMetadata::builder().code(code).message(format!("{code} says no")).build())
}

/// An EC2 XML error answer with an HTTP status, as the service sends it.
fn http_error(status: u16, code: &str) -> HttpResponse {
    let body = format!(
        "<Response><Errors><Error><Code>{code}</Code><Message>{code} happened</Message></Error></Errors>\
         <RequestID>req-1</RequestID></Response>"
    );
    HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::from(body))
}

#[tokio::test]
async fn copy_snapshot_error_codes_map_to_engine_outcomes() {
    type Expectation = fn(&StoreError) -> bool;
    let cases: [(&str, Expectation); 7] = [
        ("ResourceLimitExceeded", |e| matches!(e, StoreError::NoSlot(_))),
        ("IncorrectState", |e| matches!(e, StoreError::NotReady(_))),
        ("InvalidSnapshot.NotFound", |e| matches!(e, StoreError::NotFound(_))),
        ("UnauthorizedOperation", |e| matches!(e, StoreError::AccessDenied(_))),
        ("KMS.DisabledException", |e| matches!(e, StoreError::AccessDenied(_))),
        ("InvalidParameterValue", |e| matches!(e, StoreError::Refused { code, .. } if code == "InvalidParameterValue")),
        ("RequestLimitExceeded", |e| matches!(e, StoreError::Throttled(_))),
    ];
    for (code, expected) in cases {
        let rule = mock!(Client::copy_snapshot).then_error(move || copy_error(code));
        let result = store(&[&rule]).start_copy(&spec()).await;
        let error = result.expect_err(code);
        assert!(expected(&error), "{code} → {error:?}");
        assert!(error.to_string().contains(code), "{error}");
    }
}

#[tokio::test]
async fn throttled_copy_snapshot_is_retried_by_the_sdk() {
    let rule = mock!(Client::copy_snapshot)
        .sequence()
        .error(|| copy_error("RequestLimitExceeded"))
        .times(2)
        .output(|| CopySnapshotOutput::builder().snapshot_id("snap-0aaaaaaaaaaaaaaaa").build())
        .build();
    let id = store(&[&rule]).start_copy(&spec()).await.unwrap();
    assert_eq!(id.as_str(), "snap-0aaaaaaaaaaaaaaaa");
    assert_eq!(rule.num_calls(), 3);
}

#[tokio::test]
async fn throttling_that_outlasts_the_retries_is_throttled() {
    let rule = mock!(Client::copy_snapshot)
        .sequence()
        .error(|| copy_error("RequestLimitExceeded"))
        .times(MAX_ATTEMPTS as usize + 1)
        .build();
    let error = store(&[&rule]).start_copy(&spec()).await.unwrap_err();
    assert!(matches!(error, StoreError::Throttled(_)), "{error:?}");
    assert_eq!(rule.num_calls(), MAX_ATTEMPTS as usize);
}

#[tokio::test]
async fn a_server_error_on_copy_snapshot_is_not_retried_and_reported_as_unknown() {
    // A 5xx may come after EC2 made the copy: retrying would make a second one.
    let rule = mock!(Client::copy_snapshot)
        .sequence()
        .http_response(|| http_error(503, "Unavailable"))
        .output(|| CopySnapshotOutput::builder().snapshot_id("snap-0bbbbbbbbbbbbbbbb").build())
        .build();
    let error = store(&[&rule]).start_copy(&spec()).await.unwrap_err();
    assert!(matches!(error, StoreError::Unknown(_)), "{error:?}");
    assert_eq!(rule.num_calls(), 1, "CopySnapshot must not be retried after a 5xx");
}

#[tokio::test]
async fn a_server_error_on_describe_is_retried() {
    let copy = Snapshot::builder()
        .snapshot_id("snap-0cccccccccccccccc")
        .state(SdkState::Pending)
        .progress("42%")
        .encrypted(true)
        .kms_key_id("arn:aws:kms:eu-west-1:111122223333:key/k")
        .tags(Tag::builder().key(SOURCE_SNAPSHOT_TAG).value("snap-0123456789abcdef0").build())
        .tags(Tag::builder().key(SOURCE_REGION_TAG).value("us-east-1").build())
        .build();
    let rule = mock!(Client::describe_snapshots)
        .sequence()
        .http_response(|| http_error(500, "InternalError"))
        .output(move || DescribeSnapshotsOutput::builder().snapshots(copy.clone()).build())
        .build();
    let ids = [SnapshotId::parse("snap-0cccccccccccccccc").unwrap()];
    let found = store(&[&rule]).describe_copies(&Region::parse("eu-west-1").unwrap(), &ids).await.unwrap();
    assert_eq!(rule.num_calls(), 2);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].state, SnapshotState::Pending);
    assert_eq!(found[0].progress, Some(42));
    assert_eq!(found[0].source_id.as_str(), "snap-0123456789abcdef0");
    assert!(found[0].encrypted);
}

#[tokio::test]
async fn access_denied_on_describe_is_access_denied() {
    let rule = mock!(Client::describe_snapshots).then_error(|| {
        DescribeSnapshotsError::generic(ErrorMetadata::builder().code("UnauthorizedOperation").message("no").build())
    });
    let ids = [SnapshotId::parse("snap-0cccccccccccccccc").unwrap()];
    let error = store(&[&rule]).describe_copies(&Region::parse("eu-west-1").unwrap(), &ids).await.unwrap_err();
    assert!(matches!(error, StoreError::AccessDenied(_)), "{error:?}");
}
