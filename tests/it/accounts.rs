//! Copies into another account (a target with `role_arn`): on the in-memory EC2, which keeps
//! each account's regions apart and refuses a copy of a source not shared with the copying
//! account, as EC2 does; and through aws-sdk-ec2 against the fault emulator, where moto maps
//! the credentials of sts:AssumeRole to the role's account.

use std::time::Duration;

use crate::support::engine_world::{live_copies_per_source, no_deadline};
use crate::support::fault_ec2::FaultEc2;
use copy_snapshots::contract::request::{CopyRequest, Settings};
use copy_snapshots::engine::reconcile;
use copy_snapshots::ids::{Region, SnapshotId};
use copy_snapshots::store::simulated::{CopyTimeModel, SimulatedEc2};
use copy_snapshots::store::{SHARED_WITH_TAG_PREFIX, SOURCE_ACCOUNT_TAG, find_tag};
use serde_json::{Value, json};

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
const RECOVERY_ACCOUNT: &str = "444455556666";
const ROLE: &str = "arn:aws:iam::444455556666:role/copy-snapshots-recovery";
/// The simulator's key of the target region in the recovery account.
const RECOVERY_TARGET: &str = "eu-west-1@444455556666";
/// The simulator's own account, which copies in another account name as their source.
const SIMULATED_ACCOUNT: &str = "111122223333";

/// The tag on a source recording this function's share with the recovery account.
fn share_record() -> String {
    format!("{SHARED_WITH_TAG_PREFIX}{RECOVERY_ACCOUNT}")
}

fn request(payload: Value) -> CopyRequest {
    let settings = Settings { source_region: Region::parse(SOURCE).ok(), ..Settings::default() };
    CopyRequest::from_json(payload, &settings).expect("a valid request")
}

/// The same region in this account and in the recovery account.
fn both_accounts(ids: &[SnapshotId], extra: Value) -> CopyRequest {
    let mut payload = json!({
        "snapshot_ids": ids,
        "targets": [{"region": TARGET}, {"region": TARGET, "role_arn": ROLE}],
    });
    payload.as_object_mut().expect("an object").extend(extra.as_object().expect("an object").clone());
    request(payload)
}

#[test]
fn a_key_of_another_account_than_the_targets_is_refused() {
    let settings = Settings { source_region: Region::parse(SOURCE).ok(), ..Settings::default() };
    let production_key = "arn:aws:kms:eu-west-1:111122223333:key/1111aaaa-2222-3333-4444-555566667777";
    let payload = json!({
        "snapshot_ids": ["snap-0123abcd"],
        "targets": [{"region": TARGET, "role_arn": ROLE, "encrypt": true, "kms_key_id": production_key}],
    });
    let Err(copy_snapshots::CopySnapshotsError::InvalidRequest(message)) = CopyRequest::from_json(payload, &settings)
    else {
        panic!("refused")
    };
    assert!(message.contains("targets[0].kms_key_id") && message.contains("account 111122223333"), "{message}");
    assert!(message.contains(RECOVERY_ACCOUNT), "{message}");
    // The recovery account's own key, or an alias it resolves, is fine.
    for key in ["arn:aws:kms:eu-west-1:444455556666:key/1111aaaa-2222-3333-4444-555566667777", "alias/dr"] {
        let payload = json!({
            "snapshot_ids": ["snap-0123abcd"],
            "targets": [{"region": TARGET, "role_arn": ROLE, "encrypt": true, "kms_key_id": key}],
        });
        CopyRequest::from_json(payload, &settings).expect("a key of the recovery account");
    }
}

#[tokio::test(start_paused = true)]
async fn copies_into_another_account_are_made_there_with_the_source_shared_only_while_copying() {
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT);
    let ids: Vec<SnapshotId> = [200, 100, 50].iter().map(|gib| ec2.add_source(SOURCE, *gib, &[])).collect();

    // Started, not waited for: the sources are shared with the recovery account while its
    // copies run.
    let started = reconcile(&ec2, &both_accounts(&ids, json!({})), no_deadline()).await.expect("started");
    assert!(started.targets.iter().all(|t| t.response.copies.iter().all(|c| c.state == "pending")), "{started:?}");
    assert_eq!(ec2.unshared_copies(), 0, "every copy into the recovery account was of a shared source");
    for id in &ids {
        assert_eq!(ec2.shares_of(SOURCE, id), vec![RECOVERY_ACCOUNT.to_owned()], "{id} shared while copying");
        assert!(find_tag(&ec2.tags_of(SOURCE, id), &share_record()).is_some(), "{id}: the share is recorded");
    }
    let account = &started.targets[1];
    assert_eq!((account.target_region.as_str(), account.account.as_deref()), (TARGET, Some(RECOVERY_ACCOUNT)));

    // Waited for: each account's region has exactly one copy of each source, the recovery
    // account's tagged as shared for it, and no share is left.
    let done =
        reconcile(&ec2, &both_accounts(&ids, json!({"wait_for_completion": true})), no_deadline()).await.expect("done");
    assert!(done.complete, "{done:?}");
    for place in [TARGET, RECOVERY_TARGET] {
        let live = live_copies_per_source(&ec2, place);
        assert!(ids.iter().all(|id| live.get(id) == Some(&1)), "{place}: one copy each: {live:?}");
    }
    for copy in ec2.tracked_copies(RECOVERY_TARGET) {
        let tags = ec2.tags_of(RECOVERY_TARGET, &copy.id);
        assert_eq!(find_tag(&tags, SOURCE_ACCOUNT_TAG), Some(SIMULATED_ACCOUNT), "{}: whose copy", copy.id);
    }
    for copy in ec2.tracked_copies(TARGET) {
        assert_eq!(find_tag(&ec2.tags_of(TARGET, &copy.id), SOURCE_ACCOUNT_TAG), None, "a local copy");
    }
    for id in &ids {
        assert!(ec2.shares_of(SOURCE, id).is_empty(), "{id} unshared once its copy completed");
        assert!(find_tag(&ec2.tags_of(SOURCE, id), &share_record()).is_none(), "{id}: the record goes with the share");
    }
    // Again: nothing copied, nothing shared.
    let sharing_before = ec2.calls().sharing;
    let again = reconcile(&ec2, &both_accounts(&ids, json!({"wait_for_completion": true})), no_deadline())
        .await
        .expect("again");
    assert!(again.targets.iter().all(|t| t.response.copies.iter().all(|c| c.reused)));
    assert!(ids.iter().all(|id| ec2.shares_of(SOURCE, id).is_empty()));
    assert!(ec2.calls().sharing - sharing_before <= 1, "one listing of the shares, no share made");
}

#[tokio::test(start_paused = true)]
async fn a_source_under_the_aws_managed_key_fails_in_the_other_account_only() {
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT);
    let plain = ec2.add_source(SOURCE, 8, &[]);
    let default_key = ec2.add_source(SOURCE, 8, &[]);
    ec2.encrypt_source(SOURCE, &default_key, &SimulatedEc2::default_key_arn(SOURCE));
    let ids = [plain.clone(), default_key.clone()];
    let response = reconcile(&ec2, &both_accounts(&ids, json!({"wait_for_completion": true})), no_deadline()).await;
    let response = match response {
        Ok(response) => response,
        Err(error) => error.response().cloned().unwrap_or_else(|| panic!("an answer: {error:?}")),
    };
    let here = &response.targets[0].response;
    assert_eq!(here.copies.len(), 2, "this account copies both: {here:?}");
    let there = &response.targets[1].response;
    assert_eq!(there.copies.len(), 1, "{there:?}");
    let [failure] = &there.failed[..] else { panic!("one failure: {there:?}") };
    assert_eq!(failure.source_snapshot_id, default_key.as_str());
    for needed in ["AWS managed key", "aws/ebs", "customer managed key", "kms:CreateGrant", RECOVERY_ACCOUNT] {
        assert!(failure.error.contains(needed), "{needed}: {}", failure.error);
    }
    assert!(ec2.shares_of(SOURCE, &default_key).is_empty(), "never shared");
    assert_eq!(ec2.unshared_copies(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_source_someone_else_shared_with_the_account_stays_shared() {
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT);
    let id = ec2.add_source(SOURCE, 8, &[]);
    ec2.share_by_hand(SOURCE, &id, RECOVERY_ACCOUNT);
    let response =
        reconcile(&ec2, &both_accounts(std::slice::from_ref(&id), json!({"wait_for_completion": true})), no_deadline())
            .await
            .expect("done");
    assert!(response.complete);
    assert_eq!(ec2.shares_of(SOURCE, &id), vec![RECOVERY_ACCOUNT.to_owned()], "a share this function did not make");
    assert!(find_tag(&ec2.tags_of(SOURCE, &id), &share_record()).is_none(), "not recorded as this function's");
}

#[tokio::test(start_paused = true)]
async fn another_accounts_full_region_holds_back_neither_this_accounts_copies_nor_counts_against_them() {
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT).with_region_copy_limit(20);
    let ids: Vec<SnapshotId> = [100, 80, 60].iter().map(|gib| ec2.add_source(SOURCE, *gib, &[])).collect();
    // The recovery account's region is full of its own copies for two hours.
    ec2.add_foreign_pending(RECOVERY_TARGET, 20, Duration::from_secs(7200));
    let response =
        reconcile(&ec2, &both_accounts(&ids, json!({"max_wait_seconds": 3600, "pending_limit": 20})), no_deadline())
            .await
            .expect("an answer");
    assert!(response.targets[0].response.complete, "this account's region is its own quota");
    assert!(response.targets[1].response.copies.is_empty(), "the full one waits");
    assert_eq!(ec2.tracked_copies(RECOVERY_TARGET).len(), 0);
    // Shared for copies that could not start yet: the record stays with each share, so the
    // run that copies them removes the shares.
    for id in &ids {
        if !ec2.shares_of(SOURCE, id).is_empty() {
            assert!(find_tag(&ec2.tags_of(SOURCE, id), &share_record()).is_some(), "{id}: recorded");
        }
    }
    let done = reconcile(&ec2, &both_accounts(&ids, json!({"wait_for_completion": true})), no_deadline())
        .await
        .expect("done once the region frees");
    assert!(done.complete);
    for id in &ids {
        assert!(ec2.shares_of(SOURCE, id).is_empty(), "{id}: the share made while the region was full is gone");
    }
}

/// A copy in `place` that another account's deployment (999988887777) made: the tracking tags
/// of a source gone from the source region, its volume gone, from long ago, an orphan any
/// retention would delete were it this deployment's. (Made by copying `carrier`, a source of
/// this account, as the simulator makes copies.)
fn another_deployments_copy(ec2: &SimulatedEc2, carrier: &SnapshotId, place: copy_snapshots::ids::Place) -> SnapshotId {
    use copy_snapshots::store::{CopySpec, Tag};
    let tags = vec![
        Tag::new("copy-snapshots:source-snapshot-id", "snap-0fffffffffffffff1"),
        Tag::new("copy-snapshots:source-region", SOURCE),
        Tag::new("copy-snapshots:encryption", "none"),
        Tag::new("copy-snapshots:source-volume-id", "vol-0ccccccccccccccc1"),
        Tag::new("copy-snapshots:source-start-time", "2026-01-01T00:00:00.000Z"),
        Tag::new(SOURCE_ACCOUNT_TAG, "999988887777"),
    ];
    let spec = CopySpec {
        source_id: carrier.clone(),
        source_region: Region::parse(SOURCE).expect("a region"),
        target: place,
        description: "another deployment's copy".into(),
        encrypted: false,
        kms_key_id: None,
        tags,
        completion_duration_minutes: None,
    };
    let copy = ec2.add_tracked_copy(&spec, None);
    ec2.remove_volume("vol-0ccccccccccccccc1");
    copy
}

/// A recovery account may hold several production accounts' copies: this deployment neither
/// counts nor judges nor deletes another's, though they carry the same tracking tags.
#[tokio::test(start_paused = true)]
async fn another_production_accounts_copies_in_the_recovery_account_are_not_this_deployments() {
    use copy_snapshots::ids::{Place, RoleArn};
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT);
    let id = ec2.add_volume_snapshot(SOURCE, "vol-0bbbbbbbbbbbbbbbb", 8, Duration::from_secs(86_400), &[]);
    let place = Place { region: Region::parse(TARGET).unwrap(), role: Some(RoleArn::parse(ROLE).unwrap()) };
    ec2.share_by_hand(SOURCE, &id, RECOVERY_ACCOUNT);
    let foreign = another_deployments_copy(&ec2, &id, place);
    let request = request(json!({
        "snapshot_ids": [id],
        "targets": [{"region": TARGET, "role_arn": ROLE, "retain_count": 1}],
        "delete_orphans_after_days": 0,
        "wait_for_completion": true,
    }));
    let response = reconcile(&ec2, &request, no_deadline()).await.expect("done");
    assert!(response.complete, "{response:?}");
    assert!(ec2.deleted().is_empty(), "another account's copy is never this deployment's to delete");
    assert!(ec2.tracked_copies(RECOVERY_TARGET).iter().any(|c| c.id == foreign));
}

/// Through the SDK store: the credentials of sts:AssumeRole (moto maps them to the role's
/// account), the share, the copy in the recovery account signed (PresignedUrl) with the
/// assumed credentials, then the share removed; the source account sees no copy and cannot
/// delete one.
#[tokio::test]
async fn through_the_sdk_copies_land_in_the_recovery_account_and_the_share_goes() {
    use aws_sdk_ec2::Client;
    use copy_snapshots::store::ec2::Ec2Store;

    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": 0.002, "role_regions": null}));
    let sources = emulator.sources(SOURCE, &[8, 16]);
    let default_key = emulator.made_snapshots(&json!({"region": SOURCE, "sizes": [8], "kms_key": "alias/aws/ebs"}));
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(emulator.endpoint())
        .region(aws_config::Region::new(SOURCE))
        .load()
        .await;
    let store = Ec2Store::new(&config);
    let ids: Vec<&String> = sources.iter().chain(&default_key).collect();
    let copying = request(json!({
        "snapshot_ids": ids,
        "targets": [{"region": TARGET, "role_arn": ROLE}],
        "wait_for_completion": true,
    }));
    let limits = copy_snapshots::engine::RunLimits {
        deadline: None,
        poll_interval: Duration::from_millis(200),
        max_poll_interval: Duration::from_secs(1),
        call_timeout: Duration::from_secs(10),
    };
    let error = reconcile(&store, &copying, limits).await.expect_err("the default-key source fails");
    let response = error.response().unwrap_or_else(|| panic!("an answer with the failure: {error:?}")).clone();

    let record = emulator.record();
    let copies: Vec<&Value> = record.copies().collect();
    assert_eq!(copies.len(), 2, "{copies:?}");
    for copy in &copies {
        assert_eq!((copy["account"].as_str(), copy["region"].as_str()), (Some(RECOVERY_ACCOUNT), Some(TARGET)));
        assert!(copy["presigned_url_problem"].is_null(), "signed with the assumed credentials: {copy}");
        assert_eq!(copy["tags"][SOURCE_ACCOUNT_TAG], "123456789012", "whose copy: {copy}");
    }
    let [failure] = &response.failed[..] else { panic!("one failure: {response:?}") };
    assert_eq!(failure.source_snapshot_id, default_key[0]);
    assert!(failure.error.contains("aws/ebs"), "{}", failure.error);

    // Each source shared once before its copy, and unshared after it completed.
    let shares = record.0["shares"].as_array().expect("shares").clone();
    for source in &sources {
        let changes: Vec<&str> = shares
            .iter()
            .filter(|s| s["snapshot_id"] == source.as_str())
            .filter_map(|s| s["operation"].as_str())
            .collect();
        assert_eq!(changes, ["add", "remove"], "{source}: {shares:?}");
    }
    assert!(shares.iter().all(|s| s["user_ids"] == json!([RECOVERY_ACCOUNT])), "{shares:?}");
    assert_eq!(record.0["unshared_copies"], 0);

    // The source account: no copy in its own target region, and none it can delete.
    let source_account = Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&config).region(aws_sdk_ec2::config::Region::new(TARGET)).build(),
    );
    let own = source_account.describe_snapshots().owner_ids("self").send().await.expect("a listing");
    assert!(own.snapshots().is_empty(), "no copy in the source account: {:?}", own.snapshots());
    let copy_id = copies[0]["snapshot_id"].as_str().expect("an id");
    let deleted = source_account.delete_snapshot().snapshot_id(copy_id).send().await;
    assert!(deleted.is_err(), "the source account cannot delete the recovery copy");
    for source in &sources {
        let attribute = source_account_in(&config, SOURCE)
            .describe_snapshot_attribute()
            .snapshot_id(source)
            .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
            .send()
            .await
            .expect("the attribute");
        assert!(attribute.create_volume_permissions().is_empty(), "{source} no longer shared");
    }

    // Another production account's copy in the recovery account, from the same source region,
    // of a source this account does not have: retention here must neither judge nor delete it.
    let foreign = emulator.made_snapshots(&json!({
        "region": TARGET, "sizes": [8], "account": RECOVERY_ACCOUNT,
        "tags": {"copy-snapshots:source-snapshot-id": "snap-0fffffffffffffff1", "copy-snapshots:source-region": SOURCE,
                 "copy-snapshots:encryption": "none", "copy-snapshots:source-volume-id": "vol-0ccccccccccccccc1",
                 "copy-snapshots:source-start-time": "2026-01-01T00:00:00.000Z", SOURCE_ACCOUNT_TAG: "999988887777"},
    }));
    // And the other way round: a copy another deployment made into this account, for which
    // this one is the recovery account.
    let made_here = emulator.made_snapshots(&json!({
        "region": TARGET, "sizes": [8],
        "tags": {"copy-snapshots:source-snapshot-id": "snap-0fffffffffffffff2", "copy-snapshots:source-region": SOURCE,
                 "copy-snapshots:encryption": "none", "copy-snapshots:source-volume-id": "vol-0ccccccccccccccc2",
                 "copy-snapshots:source-start-time": "2026-01-01T00:00:00.000Z", SOURCE_ACCOUNT_TAG: "999988887777"},
    }));
    let deletes_before = emulator.record().calls("DeleteSnapshot");
    let pruning = request(json!({
        "snapshot_ids": sources,
        "targets": [{"region": TARGET, "role_arn": ROLE, "retain_count": 1}, {"region": TARGET, "retain_count": 1}],
        "delete_orphans_after_days": 0,
    }));
    let response = reconcile(&store, &pruning, limits).await.expect("a pruning run");
    assert!(response.complete, "{response:?}");
    let deletes = emulator.record().calls("DeleteSnapshot") - deletes_before;
    assert_eq!(deletes, 0, "never asked to delete {foreign:?} nor {made_here:?}: {response:?}");
}

fn source_account_in(config: &aws_config::SdkConfig, region: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(config).region(aws_sdk_ec2::config::Region::new(region.to_owned())).build(),
    )
}

#[tokio::test(start_paused = true)]
async fn retention_in_the_other_account_deletes_there_by_the_same_tags() {
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT);
    let day = Duration::from_secs(86_400);
    let old = ec2.add_volume_snapshot(SOURCE, "vol-0aaaaaaaaaaaaaaaa", 8, 3 * day, &[]);
    let new = ec2.add_volume_snapshot(SOURCE, "vol-0aaaaaaaaaaaaaaaa", 8, day, &[]);
    let ids = [old.clone(), new.clone()];
    reconcile(&ec2, &both_accounts(&ids, json!({"wait_for_completion": true})), no_deadline()).await.expect("copied");
    let recovery_copy_of = |source: &SnapshotId| {
        ec2.tracked_copies(RECOVERY_TARGET).into_iter().find(|c| c.source_id == *source).map(|c| c.id)
    };
    let old_copy = recovery_copy_of(&old).expect("the old source's copy in the recovery account");

    // The recovery account keeps one copy per volume; this account keeps everything.
    let pruning = request(json!({
        "filters": [{"name": "volume-id", "values": ["vol-0aaaaaaaaaaaaaaaa"]}],
        "targets": [{"region": TARGET}, {"region": TARGET, "role_arn": ROLE, "retain_count": 1}],
        "wait_for_completion": true,
    }));
    let response = reconcile(&ec2, &pruning, no_deadline()).await.expect("pruned");
    let deleted: Vec<&str> = response.targets[1].response.deleted.iter().map(|d| d.snapshot_id.as_str()).collect();
    assert_eq!(deleted, [old_copy.as_str()], "{response:?}");
    assert!(response.targets[0].response.deleted.is_empty());
    assert_eq!(ec2.deleted(), vec![old_copy]);
    assert!(recovery_copy_of(&new).is_some(), "the newest copy stays");
    assert_eq!(ec2.tracked_copies(TARGET).len(), 2, "this account's copies untouched");
}

/// This account may itself be another deployment's recovery account: the copies that
/// deployment made here (carrying its source account) are never this deployment's, even from
/// the same source region.
#[tokio::test(start_paused = true)]
async fn copies_another_deployment_made_into_this_account_are_not_this_deployments() {
    use copy_snapshots::ids::Place;
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT);
    let id = ec2.add_volume_snapshot(SOURCE, "vol-0bbbbbbbbbbbbbbbb", 8, Duration::from_secs(86_400), &[]);
    let foreign = another_deployments_copy(&ec2, &id, Place::here(Region::parse(TARGET).unwrap()));
    let request = request(json!({
        "snapshot_ids": [id],
        "target_region": TARGET,
        "retain_count": 1,
        "delete_orphans_after_days": 0,
        "wait_for_completion": true,
    }));
    let response = reconcile(&ec2, &request, no_deadline()).await.expect("done");
    assert!(response.complete, "{response:?}");
    assert!(ec2.deleted().is_empty(), "another deployment's recovery copy is never this one's to delete");
    assert_eq!(response.copies.len(), 1, "its own copy, not the other's: {response:?}");
    assert!(ec2.tracked_copies(TARGET).iter().any(|c| c.id == foreign));
}

/// One of several targets whose key cannot be looked at (its account's role not assumed, say)
/// stops alone; the request's other targets copy.
#[tokio::test(start_paused = true)]
async fn a_target_whose_key_cannot_be_looked_at_stops_alone() {
    use copy_snapshots::store::StoreError;
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT);
    let ids: Vec<SnapshotId> = [8, 16].iter().map(|gib| ec2.add_source(SOURCE, *gib, &[])).collect();
    ec2.fail_key_lookups(vec![StoreError::AccessDenied(
        "no credentials for the call: AccessDenied: not authorized to perform sts:AssumeRole".to_owned(),
    )]);
    let request = request(json!({
        "snapshot_ids": ids,
        "targets": [{"region": TARGET}, {"region": TARGET, "role_arn": ROLE, "encrypt": true, "kms_key_id": "alias/dr"}],
        "wait_for_completion": true,
    }));
    let response = match reconcile(&ec2, &request, no_deadline()).await {
        Ok(response) => response,
        Err(error) => error.response().cloned().unwrap_or_else(|| panic!("an answer for every target: {error:?}")),
    };
    assert!(response.targets[0].response.complete, "{response:?}");
    assert_eq!(response.targets[0].response.copies.len(), 2);
    let stopped = &response.targets[1];
    assert!(stopped.error.as_ref().is_some_and(|e| e.error_message.contains("sts:AssumeRole")), "{stopped:?}");
    assert!(!response.complete);
}
