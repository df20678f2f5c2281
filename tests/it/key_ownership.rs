//! Issue 16 §2 and §3 on the in-memory EC2 (with its KMS keys) and tokio's paused clock: which
//! copies are a request's, decided one way everywhere (the encryption tag and the key the copy
//! is really under): an alias names one key, not any; a key that does not exist or is disabled
//! is refused before any copy; a copy EC2 makes under another key fails its source and is
//! never adopted; and under EBS encryption by default a plain request and an `encrypt: true`
//! request, both with retention, never delete each other's copies.

use std::time::Duration;

use copy_snapshots::CopySnapshotsError;
use copy_snapshots::contract::request::CopyRequest;
use copy_snapshots::engine::{MAX_ATTEMPTS, RunLimits, reconcile};
use copy_snapshots::ids::{Place, Region, SnapshotId};
use copy_snapshots::store::simulated::SimulatedEc2;
use copy_snapshots::store::{
    CopySpec, ENCRYPTION_TAG, SOURCE_REGION_TAG, SOURCE_SNAPSHOT_TAG, SnapshotState, StoreError, Tag,
};
use serde_json::{Value, json};

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
const DAY: Duration = Duration::from_secs(86_400);

fn request(ids: &[SnapshotId], extra: Value) -> CopyRequest {
    crate::support::engine_world::request_with(
        json!({"snapshot_ids": ids, "region": SOURCE, "target_region": TARGET}),
        extra,
    )
}

fn limits() -> RunLimits {
    crate::support::engine_world::no_deadline()
}

/// The key each live copy of `source` is under.
fn keys_of_copies(ec2: &SimulatedEc2, source: &SnapshotId) -> Vec<(SnapshotId, Option<String>)> {
    ec2.tracked_copies(TARGET)
        .into_iter()
        .filter(|c| c.source_id == *source && c.state != SnapshotState::Error)
        .map(|c| (c.id, c.kms_key_id))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_alias_adopts_only_a_copy_under_the_key_it_names() {
    let ec2 = SimulatedEc2::new();
    let dr_key = ec2.add_key(TARGET, Some("alias/dr"));
    let source = ec2.add_source(SOURCE, 8, &[]);
    // An earlier copy tagged as made for `alias/dr`, but under the region's default key (made
    // before the alias pointed at the DR key, or by EC2 ignoring it).
    let under_default = ec2.add_tracked_copy(
        &CopySpec {
            source_id: source.clone(),
            source_region: Region::parse(SOURCE).expect("a region"),
            target: Place::here(Region::parse(TARGET).expect("a region")),
            description: "an earlier copy".into(),
            encrypted: true,
            kms_key_id: None,
            tags: vec![
                Tag::new(SOURCE_SNAPSHOT_TAG, source.as_str()),
                Tag::new(SOURCE_REGION_TAG, SOURCE),
                Tag::new(ENCRYPTION_TAG, "alias/dr"),
            ],
            completion_duration_minutes: None,
        },
        None,
    );
    tokio::time::sleep(DAY).await;

    let keyed = request(
        std::slice::from_ref(&source),
        json!({"encrypt": true, "kms_key_id": "alias/dr", "wait_for_completion": true}),
    );
    let response = reconcile(&ec2, &keyed, limits()).await.expect("the run succeeds");
    assert!(response.complete, "{response:?}");
    assert!(!response.copies[0].reused, "the copy under the default key was adopted: {response:?}");
    assert_ne!(response.copies[0].snapshot_id, under_default.as_str());
    let copies = keys_of_copies(&ec2, &source);
    let new_copy = copies.iter().find(|(id, _)| *id != under_default).expect("a new copy");
    assert_eq!(new_copy.1.as_deref(), Some(dr_key.as_str()), "copied under the alias's key");
    // CopySnapshot is asked for the key resolved, not the alias: the key checked is the key
    // used, even if the alias moves meanwhile.
    assert_eq!(ec2.kms_keys_sent().last(), Some(&Some(dr_key.clone())), "the earlier copy's, then this run's");
    assert_eq!(ec2.calls().delete_copy, 0, "the other copy is not this request's to delete");
    assert_eq!(ec2.calls().describe_key, 1, "the key is resolved once per run");

    // The key's ARN names the same key: the same request, and the same copy.
    let by_arn = request(
        std::slice::from_ref(&source),
        json!({"encrypt": true, "kms_key_id": dr_key, "wait_for_completion": true}),
    );
    let again = reconcile(&ec2, &by_arn, limits()).await.expect("the run succeeds");
    assert!(again.copies[0].reused, "{again:?}");
    assert_eq!(again.copies[0].snapshot_id, new_copy.0.as_str());
    assert_eq!(ec2.calls().start_copy, 1);
}

/// An earlier copy of `source` made by this project, tagged `encryption` (none: before the
/// tag existed), under `key` (none: unencrypted), completed.
fn earlier_copy(ec2: &SimulatedEc2, source: &SnapshotId, encryption: Option<&str>, key: Option<&str>) -> SnapshotId {
    let mut tags = vec![Tag::new(SOURCE_SNAPSHOT_TAG, source.as_str()), Tag::new(SOURCE_REGION_TAG, SOURCE)];
    tags.extend(encryption.map(|e| Tag::new(ENCRYPTION_TAG, e)));
    let spec = CopySpec {
        source_id: source.clone(),
        source_region: Region::parse(SOURCE).expect("a region"),
        target: Place::here(Region::parse(TARGET).expect("a region")),
        description: "an earlier copy".into(),
        encrypted: key.is_some(),
        kms_key_id: key.map(str::to_owned),
        tags,
        completion_duration_minutes: None,
    };
    let id = ec2.add_tracked_copy(&spec, None);
    ec2.complete_now(TARGET, &id);
    id
}

#[tokio::test(start_paused = true)]
async fn one_key_named_two_ways_claims_the_same_copies_and_deletes_none() {
    // A copy tagged before keys were resolved (with the alias as written), and two requests
    // naming the key by its alias and by its ARN, run in turn as a schedule and a CLI would.
    let ec2 = SimulatedEc2::new();
    let dr_key = ec2.add_key(TARGET, Some("alias/dr"));
    let source = ec2.add_source(SOURCE, 8, &[]);
    let old = earlier_copy(&ec2, &source, Some("alias/dr"), Some(&dr_key));
    tokio::time::sleep(DAY).await;
    let ids = std::slice::from_ref(&source);
    let by_alias = request(ids, json!({"encrypt": true, "kms_key_id": "alias/dr", "wait_for_completion": true}));
    let by_arn = request(ids, json!({"encrypt": true, "kms_key_id": dr_key, "wait_for_completion": true}));
    for req in [&by_arn, &by_alias, &by_arn, &by_alias] {
        let response = reconcile(&ec2, req, limits()).await.expect("the run succeeds");
        assert_eq!(response.snapshot_ids, [old.to_string()], "{response:?}");
        assert!(response.copies[0].reused && response.duplicates_removed.is_empty(), "{response:?}");
    }
    assert_eq!(ec2.calls().start_copy, 0);
    assert_eq!(ec2.calls().delete_copy, 0);
}

#[tokio::test(start_paused = true)]
async fn a_copy_from_before_the_tag_is_never_deleted_as_a_duplicate_of_a_tagged_one() {
    // An untagged copy under the DR key (an old keyed request's, which a plain request may
    // claim too) and the plain request's own tagged copy: neither request deletes either.
    let ec2 = SimulatedEc2::new();
    let dr_key = ec2.add_key(TARGET, Some("alias/dr"));
    let source = ec2.add_source(SOURCE, 8, &[]);
    let untagged = earlier_copy(&ec2, &source, None, Some(&dr_key));
    tokio::time::sleep(DAY).await;
    let plain_copy = earlier_copy(&ec2, &source, Some("none"), None);
    tokio::time::sleep(DAY).await;
    let ids = std::slice::from_ref(&source);
    let plain = request(ids, json!({"wait_for_completion": true}));
    let keyed = request(ids, json!({"encrypt": true, "kms_key_id": "alias/dr", "wait_for_completion": true}));
    for req in [&plain, &keyed, &plain, &keyed] {
        let response = reconcile(&ec2, req, limits()).await.expect("the run succeeds");
        assert!(response.duplicates_removed.is_empty(), "{response:?}");
    }
    let keyed_answer = reconcile(&ec2, &keyed, limits()).await.expect("the run succeeds");
    assert_eq!(keyed_answer.snapshot_ids, [untagged.to_string()], "the keyed request keeps its copy");
    assert_eq!(ec2.calls().delete_copy, 0);
    assert_eq!(ec2.calls().start_copy, 0);
    assert_eq!(keys_of_copies(&ec2, &source).len(), 2, "{plain_copy} and {untagged} both kept");
}

#[tokio::test(start_paused = true)]
async fn the_key_lookup_sorts_kms_answers_and_retries_what_may_pass() {
    let ec2 = SimulatedEc2::new();
    let dr_key = ec2.add_key(TARGET, Some("alias/dr"));
    let source = ec2.add_source(SOURCE, 8, &[]);
    let ids = std::slice::from_ref(&source);
    let keyed = request(ids, json!({"encrypt": true, "kms_key_id": "alias/dr", "wait_for_completion": true}));

    // One unanswered and one throttled lookup are retried; the run goes on.
    ec2.fail_key_lookups(vec![
        StoreError::Unknown("timeout".into()),
        StoreError::Throttled("ThrottlingException: slow".into()),
    ]);
    let response = reconcile(&ec2, &keyed, limits()).await.expect("transient KMS failures are retried");
    assert!(response.complete, "{response:?}");

    let cases: Vec<(Vec<StoreError>, &str)> = vec![
        // KMS never answers: not the request's fault.
        (vec![StoreError::Unknown("timeout".into()); 20], "Ec2Error"),
        (vec![StoreError::Throttled("ThrottlingException: slow".into()); 20], "Throttled"),
        // The key policy or role denies DescribeKey: the key is not one this stack may use.
        (vec![StoreError::AccessDenied("AccessDeniedException: not allowed".into())], "InvalidRequest"),
        // The function's credentials are not accepted: not the key's fault.
        (vec![StoreError::AccessDenied("ExpiredTokenException: expired".into())], "AccessDenied"),
    ];
    for (faults, expected) in cases {
        ec2.fail_key_lookups(faults);
        let error = reconcile(&ec2, &keyed, limits()).await.expect_err("the lookup fails");
        assert_eq!(error.error_type(), expected, "{error}");
        ec2.fail_key_lookups(Vec::new());
    }
    // An asymmetric key cannot encrypt a volume.
    ec2.set_key_spec(&dr_key, "RSA_2048");
    let result = reconcile(&ec2, &keyed, limits()).await;
    let Err(CopySnapshotsError::InvalidRequest(message)) = result else { panic!("{result:?}") };
    assert!(message.contains("RSA_2048") && message.contains("symmetric"), "{message}");
    assert_eq!(ec2.calls().start_copy, 1, "only the first run copied");
}

#[tokio::test(start_paused = true)]
async fn a_copy_reported_under_another_key_while_pending_fails_before_it_completes() {
    let ec2 = SimulatedEc2::new();
    ec2.add_key(TARGET, Some("alias/dr"));
    ec2.ignore_requested_keys();
    // 4 TiB: hours of copying, far beyond this invocation's 10 minutes.
    let source = ec2.add_source(SOURCE, 4096, &[]);
    let keyed = request(
        std::slice::from_ref(&source),
        json!({"encrypt": true, "kms_key_id": "alias/dr", "wait_for_completion": true}),
    );
    let limits = RunLimits { deadline: Some(tokio::time::Instant::now() + Duration::from_secs(600)), ..limits() };
    let result = reconcile(&ec2, &keyed, limits).await;
    let Err(CopySnapshotsError::CopyFailed { message, .. }) = result else { panic!("{result:?}") };
    assert!(message.contains(&SimulatedEc2::default_key_arn(TARGET)), "{message}");
    let copies = ec2.tracked_copies(TARGET);
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].state, SnapshotState::Pending, "decided while the copy was pending");
}

#[tokio::test(start_paused = true)]
async fn a_key_that_does_not_exist_or_cannot_encrypt_is_refused_before_any_copy() {
    let ec2 = SimulatedEc2::new();
    let disabled = ec2.add_key(TARGET, Some("alias/retired"));
    ec2.set_key_state(&disabled, "Disabled");
    let source = ec2.add_source(SOURCE, 8, &[]);
    for (key, expected) in [("alias/missing", "no key `alias/missing` in eu-west-1"), ("alias/retired", "Disabled")] {
        let req = request(std::slice::from_ref(&source), json!({"encrypt": true, "kms_key_id": key}));
        let result = reconcile(&ec2, &req, limits()).await;
        let Err(CopySnapshotsError::InvalidRequest(message)) = result else { panic!("{key}: {result:?}") };
        assert!(message.starts_with("kms_key_id: ") && message.contains(expected), "{message}");
        assert!(message.contains("valid: ") && message.contains("nothing was copied"), "{message}");
    }
    assert_eq!(ec2.calls().start_copy, 0);
    assert_eq!(ec2.calls().describe_sources, 0, "refused before the look");
}

#[tokio::test(start_paused = true)]
async fn a_copy_ec2_makes_under_another_key_fails_its_source_and_never_counts() {
    let ec2 = SimulatedEc2::new();
    let dr_key = ec2.add_key(TARGET, Some("alias/dr"));
    let ids: Vec<SnapshotId> = [8, 16].iter().map(|gib| ec2.add_source(SOURCE, *gib, &[])).collect();
    // EC2 ignores the key of the second source's copies only after the first was made.
    let keyed = request(&ids[..1], json!({"encrypt": true, "kms_key_id": "alias/dr", "wait_for_completion": true}));
    reconcile(&ec2, &keyed, limits()).await.expect("the first copy is made under the key");
    ec2.ignore_requested_keys();
    let keyed = request(&ids, json!({"encrypt": true, "kms_key_id": "alias/dr", "wait_for_completion": true}));
    let result = reconcile(&ec2, &keyed, limits()).await;
    let Err(CopySnapshotsError::CopyFailed { response, message }) = result else { panic!("{result:?}") };
    let default_key = SimulatedEc2::default_key_arn(TARGET);
    assert!(message.contains(&dr_key) && message.contains(&default_key), "both keys named: {message}");
    assert_eq!(response.failed.len(), 1, "{response:?}");
    assert_eq!(response.failed[0].source_snapshot_id, ids[1].as_str());
    assert!(!response.complete);
    assert!(response.copies.iter().all(|c| c.source_snapshot_id != ids[1].as_str()), "not reported done");
    assert_eq!(ec2.calls().delete_copy, 0, "the copy is left for a person to judge");

    // Later runs never adopt it: each makes a new attempt, and the source fails for good
    // after MAX_ATTEMPTS copies under the wrong key.
    for _ in 0..MAX_ATTEMPTS + 1 {
        let result = reconcile(&ec2, &keyed, limits()).await;
        assert!(matches!(result, Err(CopySnapshotsError::CopyFailed { .. })), "{result:?}");
    }
    let wrong: Vec<_> = keys_of_copies(&ec2, &ids[1]);
    assert_eq!(wrong.len(), MAX_ATTEMPTS, "{wrong:?}");
    assert!(wrong.iter().all(|(_, key)| key.as_deref() == Some(default_key.as_str())));
    assert_eq!(ec2.calls().start_copy, 1 + MAX_ATTEMPTS);
}

#[tokio::test(start_paused = true)]
async fn under_encryption_by_default_a_plain_and_an_encrypting_request_keep_each_others_copies() {
    // Both requests' copies are under the region's default key; only the tags tell them apart.
    let ec2 = SimulatedEc2::new().with_encryption_by_default();
    let volume = "vol-0000000000000000a";
    let older = ec2.add_volume_snapshot(SOURCE, volume, 8, DAY, &[]);
    let plain = |ids: &[SnapshotId]| request(ids, json!({"retain_count": 1, "wait_for_completion": true}));
    let encrypting =
        |ids: &[SnapshotId]| request(ids, json!({"encrypt": true, "retain_count": 1, "wait_for_completion": true}));
    let ids = [older.clone()];
    for req in [plain(&ids), encrypting(&ids), plain(&ids), encrypting(&ids)] {
        let response = reconcile(&ec2, &req, limits()).await.expect("the run succeeds");
        assert!(response.duplicates_removed.is_empty() && response.deleted.is_empty(), "{response:?}");
    }
    assert_eq!(ec2.calls().start_copy, 2, "one copy for each request");
    let copies = keys_of_copies(&ec2, &older);
    assert_eq!(copies.len(), 2);
    assert!(copies.iter().all(|(_, key)| key.as_deref() == Some(SimulatedEc2::default_key_arn(TARGET).as_str())));

    // A newer snapshot of the volume: each request replaces its own copy, and only its own.
    tokio::time::sleep(DAY).await;
    let newer = ec2.add_volume_snapshot(SOURCE, volume, 8, Duration::ZERO, &[]);
    let ids = [older.clone(), newer.clone()];
    let mut deleted = Vec::new();
    for req in [plain(&ids), encrypting(&ids)] {
        let response = reconcile(&ec2, &req, limits()).await.expect("the run succeeds");
        assert!(response.duplicates_removed.is_empty(), "{response:?}");
        assert_eq!(response.deleted.len(), 1, "{response:?}");
        deleted.push(response.deleted[0].snapshot_id.clone());
    }
    assert_ne!(deleted[0], deleted[1], "each request deleted its own copy of the older source");
    assert!(keys_of_copies(&ec2, &older).is_empty());
    assert_eq!(keys_of_copies(&ec2, &newer).len(), 2);
}
