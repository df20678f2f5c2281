//! The real aws-sdk-ec2 store against a real EC2 emulator (moto server on loopback, started by
//! `make test`). moto completes copies at once and ignores `Encrypted` on CopySnapshot, so these
//! tests assert what it records — the copies, their KmsKeyId, tags and description — and leave
//! time, limits and faults to the engine tests.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::fault_ec2::FaultEc2;
use crate::support::moto::{ec2_in, make_snapshot, sdk_config};
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::Credentials;
use aws_sdk_ec2::types;
use copy_snapshots::contract::request::Settings;
use copy_snapshots::ids::{Place, Region, SnapshotId};
use copy_snapshots::store::ec2::Ec2Store;
use copy_snapshots::store::presign::{CopySnapshotUrl, EXPIRES_IN};
use copy_snapshots::store::{
    CopySpec, CopyStatus, DeleteOutcome, ENCRYPTION_TAG, KeyDescription, SOURCE_REGION_TAG, SOURCE_SNAPSHOT_TAG,
    SOURCE_START_TIME_TAG, SOURCE_VOLUME_TAG, SnapshotStore, SourceSelector, SourceSnapshot, StoreError, Tag,
    parse_start_time,
};
use copy_snapshots::{CopySnapshotsError, handle};
use serde_json::{Value, json};

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";

/// moto completes copies at once; a short poll keeps `wait_for_completion` tests quick.
fn settings() -> Settings {
    Settings {
        source_region: Region::parse(SOURCE).ok(),
        poll_interval: std::time::Duration::from_millis(200),
        ..Settings::default()
    }
}

/// A unique marker so tests sharing one emulator never see each other's snapshots.
fn unique(name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{name}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn describe(ec2: &Client, id: &str) -> types::Snapshot {
    let found = ec2.describe_snapshots().snapshot_ids(id).send().await.unwrap();
    found.snapshots()[0].clone()
}

fn tag<'a>(snapshot: &'a types::Snapshot, key: &str) -> Option<&'a str> {
    snapshot.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// Copies in the target region made from `source`.
async fn copies_of(target: &Client, source: &str) -> Vec<types::Snapshot> {
    let filter = types::Filter::builder().name(format!("tag:{SOURCE_SNAPSHOT_TAG}")).values(source).build();
    target.describe_snapshots().owner_ids("self").filters(filter).send().await.unwrap().snapshots().to_vec()
}

/// The real store, counting CopySnapshot calls.
struct CountingStore {
    inner: Ec2Store,
    copies: AtomicUsize,
}

impl CountingStore {
    async fn new() -> Self {
        Self { inner: Ec2Store::new(&sdk_config().await), copies: AtomicUsize::new(0) }
    }
}

impl SnapshotStore for CountingStore {
    async fn describe_sources(
        &self,
        region: &Region,
        selector: &SourceSelector,
    ) -> Result<Vec<SourceSnapshot>, StoreError> {
        self.inner.describe_sources(region, selector).await
    }
    async fn find_copies(
        &self,
        target: &Place,
        source: &Region,
        ids: &[SnapshotId],
    ) -> Result<Vec<CopyStatus>, StoreError> {
        self.inner.find_copies(target, source, ids).await
    }
    async fn list_copies(&self, target: &Place, source: &Region) -> Result<Vec<CopyStatus>, StoreError> {
        self.inner.list_copies(target, source).await
    }
    async fn list_pending_copies(&self, target: &Place) -> Result<Vec<CopyStatus>, StoreError> {
        self.inner.list_pending_copies(target).await
    }
    async fn start_copy(&self, spec: &CopySpec) -> Result<SnapshotId, StoreError> {
        self.copies.fetch_add(1, Ordering::Relaxed);
        self.inner.start_copy(spec).await
    }
    async fn describe_copies(&self, target: &Place, ids: &[SnapshotId]) -> Result<Vec<CopyStatus>, StoreError> {
        self.inner.describe_copies(target, ids).await
    }
    async fn delete_copy(&self, target: &Place, id: &SnapshotId) -> Result<DeleteOutcome, StoreError> {
        self.inner.delete_copy(target, id).await
    }
    async fn existing_volumes(&self, region: &Region, ids: &[String]) -> Result<HashSet<String>, StoreError> {
        self.inner.existing_volumes(region, ids).await
    }
    async fn images_using(&self, place: &Place, ids: &[SnapshotId]) -> Result<HashMap<SnapshotId, String>, StoreError> {
        self.inner.images_using(place, ids).await
    }
    async fn describe_key(&self, place: &Place, key: &str) -> Result<KeyDescription, StoreError> {
        self.inner.describe_key(place, key).await
    }
    async fn shared_with(&self, region: &Region, source: &SnapshotId) -> Result<Vec<String>, StoreError> {
        self.inner.shared_with(region, source).await
    }
    async fn sources_shared_with(&self, region: &Region, account: &str) -> Result<Vec<SourceSnapshot>, StoreError> {
        self.inner.sources_shared_with(region, account).await
    }
    async fn tag_source(&self, region: &Region, source: &SnapshotId, tag: &Tag) -> Result<(), StoreError> {
        self.inner.tag_source(region, source, tag).await
    }
    async fn untag_source(&self, region: &Region, source: &SnapshotId, key: &str) -> Result<(), StoreError> {
        self.inner.untag_source(region, source, key).await
    }
    async fn share(&self, region: &Region, source: &SnapshotId, account: &str) -> Result<(), StoreError> {
        self.inner.share(region, source, account).await
    }
    async fn unshare(&self, region: &Region, source: &SnapshotId, account: &str) -> Result<(), StoreError> {
        self.inner.unshare(region, source, account).await
    }
}

#[tokio::test]
async fn encrypted_cross_region_copy_with_a_kms_key_carries_tracking_tags_and_description() {
    let config = sdk_config().await;
    let kms = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::config::Builder::from(&config).region(aws_sdk_kms::config::Region::new(TARGET)).build(),
    );
    let key = kms.create_key().description("DR key").send().await.unwrap();
    let key_arn = key.key_metadata().unwrap().arn().unwrap().to_owned();

    let source_ec2 = ec2_in(SOURCE).await;
    let target_ec2 = ec2_in(TARGET).await;
    let a = make_snapshot(&source_ec2, 8, &[]).await;
    let b = make_snapshot(&source_ec2, 16, &[]).await;
    let store = Ec2Store::new(&config);
    let payload = json!({"snapshot_ids": [a, b], "target_region": TARGET, "encrypt": true, "kms_key_id": key_arn});
    let response = handle(payload, &settings(), &store, None).await.unwrap();

    assert!(response.complete, "{response:?}");
    assert_eq!(response.copies.len(), 2);
    for (copy, source) in response.copies.iter().zip([&a, &b]) {
        assert_eq!(&copy.source_snapshot_id, source);
        assert!(!copy.reused);
        let made = describe(&target_ec2, &copy.snapshot_id).await;
        assert_eq!(made.kms_key_id(), Some(key_arn.as_str()));
        assert_eq!(tag(&made, SOURCE_SNAPSHOT_TAG), Some(source.as_str()));
        assert_eq!(tag(&made, SOURCE_REGION_TAG), Some(SOURCE));
        assert_eq!(made.description(), Some(format!("Copy of {source} from {SOURCE}").as_str()));
    }
    // The copies are in the target region, not the source region.
    let in_source = source_ec2.describe_snapshots().owner_ids("self").send().await.unwrap();
    assert!(in_source.snapshots().iter().all(|s| Some(response.snapshot_ids[0].as_str()) != s.snapshot_id()));
}

#[tokio::test]
async fn the_same_request_again_reuses_every_copy_without_calling_copy_snapshot() {
    let source_ec2 = ec2_in(SOURCE).await;
    let ids = [make_snapshot(&source_ec2, 8, &[]).await, make_snapshot(&source_ec2, 30, &[]).await];
    let store = CountingStore::new().await;
    let payload = json!({"snapshot_ids": ids, "target_region": TARGET, "wait_for_completion": true});

    let first = handle(payload.clone(), &settings(), &store, None).await.unwrap();
    assert_eq!(store.copies.load(Ordering::Relaxed), 2);
    assert!(first.complete && first.copies.iter().all(|c| c.state == "completed" && !c.reused));

    let second = handle(payload, &settings(), &store, None).await.unwrap();
    assert_eq!(store.copies.load(Ordering::Relaxed), 2, "no new CopySnapshot call");
    assert!(second.copies.iter().all(|c| c.reused));
    assert_eq!(first.snapshot_ids, second.snapshot_ids);

    let target_ec2 = ec2_in(TARGET).await;
    for id in &ids {
        assert_eq!(copies_of(&target_ec2, id).await.len(), 1, "one copy of {id}");
    }
}

#[tokio::test]
async fn filters_select_sources_by_tag_and_copy_tags_carries_them() {
    let marker = unique("nightly");
    let source_ec2 = ec2_in(SOURCE).await;
    let wanted = make_snapshot(&source_ec2, 8, &[("Backup", &marker), ("team", "storage")]).await;
    let other = make_snapshot(&source_ec2, 8, &[("Backup", "not-this-one")]).await;
    let store = Ec2Store::new(&sdk_config().await);
    let payload = json!({
        "filters": [{"name": "tag:Backup", "values": [marker]}],
        "target_region": TARGET,
        "copy_tags": true,
        "tags": {"purpose": "dr"}
    });
    let response = handle(payload, &settings(), &store, None).await.unwrap();
    assert_eq!(response.copies.len(), 1, "{response:?}");
    assert_eq!(response.copies[0].source_snapshot_id, wanted);

    let target_ec2 = ec2_in(TARGET).await;
    let made = describe(&target_ec2, &response.copies[0].snapshot_id).await;
    assert_eq!(tag(&made, "Backup"), Some(marker.as_str()));
    assert_eq!(tag(&made, "team"), Some("storage"));
    assert_eq!(tag(&made, "purpose"), Some("dr"));
    assert_eq!(tag(&made, SOURCE_SNAPSHOT_TAG), Some(wanted.as_str()));
    assert!(copies_of(&target_ec2, &other).await.is_empty());
}

#[tokio::test]
async fn without_copy_tags_only_tracking_and_request_tags_are_set() {
    let source_ec2 = ec2_in(SOURCE).await;
    let id = make_snapshot(&source_ec2, 8, &[("team", "storage")]).await;
    let store = Ec2Store::new(&sdk_config().await);
    let payload = json!({"snapshot_ids": [id], "target_region": TARGET, "tags": {"purpose": "dr"}});
    let response = handle(payload, &settings(), &store, None).await.unwrap();
    let made = describe(&ec2_in(TARGET).await, &response.copies[0].snapshot_id).await;
    assert_eq!(tag(&made, "team"), None);
    assert_eq!(tag(&made, "purpose"), Some("dr"));
    let mut keys: Vec<&str> = made.tags().iter().filter_map(|t| t.key()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "copy-snapshots:encryption",
            "copy-snapshots:source-region",
            "copy-snapshots:source-snapshot-id",
            "copy-snapshots:source-start-time",
            "copy-snapshots:source-volume-id",
            "purpose"
        ]
    );
    assert_eq!(tag(&made, ENCRYPTION_TAG), Some("none"), "a plain request's copy says so");
    // What retention judges the copy by once its source is gone: the source's volume and age.
    let source = describe(&source_ec2, &id).await;
    assert_eq!(tag(&made, SOURCE_VOLUME_TAG), source.volume_id());
    let start = tag(&made, SOURCE_START_TIME_TAG).and_then(parse_start_time).expect("an RFC 3339 start time");
    let source_start = std::time::SystemTime::try_from(*source.start_time().unwrap()).unwrap();
    assert!(
        source_start.duration_since(start).unwrap_or_else(|e| e.duration()) < std::time::Duration::from_millis(1),
        "{start:?} is the source's {source_start:?}, to the millisecond"
    );
}

#[tokio::test]
async fn a_missing_source_is_source_not_found_and_nothing_is_copied() {
    let source_ec2 = ec2_in(SOURCE).await;
    let present = make_snapshot(&source_ec2, 8, &[]).await;
    let missing = "snap-0123456789abcdef0";
    let store = CountingStore::new().await;
    let payload: Value = json!({"snapshot_ids": [present, missing], "target_region": TARGET});
    let result = handle(payload, &settings(), &store, None).await;
    let Err(CopySnapshotsError::SourceNotFound(message)) = result else { panic!("{result:?}") };
    assert!(message.contains(missing), "{message}");
    assert_eq!(store.copies.load(Ordering::Relaxed), 0);
    assert!(copies_of(&ec2_in(TARGET).await, &present).await.is_empty());
}

#[tokio::test]
async fn many_sources_are_looked_up_in_chunks_and_found_again() {
    let source_ec2 = ec2_in(SOURCE).await;
    let mut ids = Vec::new();
    for _ in 0..210 {
        ids.push(make_snapshot(&source_ec2, 1, &[]).await);
    }
    let store = CountingStore::new().await;
    let payload =
        json!({"snapshot_ids": ids, "target_region": TARGET, "pending_limit": 210, "wait_for_completion": true});
    let first = handle(payload.clone(), &settings(), &store, None).await.unwrap();
    assert!(first.complete);
    assert_eq!(first.copies.len(), 210);
    let second = handle(payload, &settings(), &store, None).await.unwrap();
    assert!(second.copies.iter().all(|c| c.reused), "copies past the first 200 are found too");
    assert_eq!(store.copies.load(Ordering::Relaxed), 210);
}

#[tokio::test]
async fn sources_carry_their_start_time_for_the_recovery_point() {
    let source_ec2 = ec2_in(SOURCE).await;
    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
    let id = make_snapshot(&source_ec2, 8, &[]).await;
    let store = Ec2Store::new(&sdk_config().await);
    let selector = SourceSelector::Ids(vec![SnapshotId::parse(&id).unwrap()]);
    let found: Vec<SourceSnapshot> = store.describe_sources(&Region::parse(SOURCE).unwrap(), &selector).await.unwrap();
    let start = found[0].start_time.expect("EC2's StartTime is read");
    let after = std::time::SystemTime::now() + std::time::Duration::from_secs(120);
    assert!(before <= start && start <= after, "{start:?} is not the creation time");
}

/// CopySnapshot's PresignedUrl through the real SDK, checked by the fault emulator as EC2
/// documents it (tests/fault_ec2.py, `_presigned_url_problem`: the source region's endpoint as
/// botocore resolves it, SigV4 for the source region and ec2 verified with the secret, the
/// call's parameters). A wrong URL is accepted and the copy ends in `error`, as on EC2.
#[tokio::test]
async fn the_presigned_url_is_accepted_and_copies_complete_and_a_wrong_one_fails_the_copy() {
    let emulator = FaultEc2::start();
    // Temporary credentials, as Lambda's: the session token is part of the signed URL.
    let credentials = Credentials::new("testing", "testing", Some("session/token+=".to_owned()), None, "test");
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(emulator.endpoint())
        .region(aws_config::Region::new(SOURCE))
        .credentials_provider(credentials.clone())
        .load()
        .await;
    let kms = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::config::Builder::from(&config).region(aws_sdk_kms::config::Region::new(TARGET)).build(),
    );
    let key = kms.create_key().description("DR key").send().await.unwrap();
    let key_arn = key.key_metadata().unwrap().arn().unwrap().to_owned();
    let sources = emulator.sources(SOURCE, &[8, 8, 8, 8]);
    let target = Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&config).region(aws_sdk_ec2::config::Region::new(TARGET)).build(),
    );

    // Through the store: plain, and encrypted under a key (Encrypted and KmsKeyId in the URL).
    let store = Ec2Store::new(&config);
    let spec = |source: &str, kms_key_id: Option<&str>| CopySpec {
        source_id: SnapshotId::parse(source).unwrap(),
        source_region: Region::parse(SOURCE).unwrap(),
        target: Place::here(Region::parse(TARGET).unwrap()),
        description: format!("Copy of {source} from {SOURCE}"),
        encrypted: kms_key_id.is_some(),
        kms_key_id: kms_key_id.map(str::to_owned),
        tags: vec![Tag::new(SOURCE_SNAPSHOT_TAG, source), Tag::new(SOURCE_REGION_TAG, SOURCE)],
        completion_duration_minutes: None,
    };
    let plain = store.start_copy(&spec(&sources[0], None)).await.unwrap();
    let encrypted = store.start_copy(&spec(&sources[1], Some(&key_arn))).await.unwrap();
    for copy in [&plain, &encrypted] {
        let settled = settled(&target, copy.as_str()).await;
        assert_eq!(settled.state(), Some(&types::SnapshotState::Completed), "{settled:?}");
    }
    assert_eq!(settled(&target, encrypted.as_str()).await.kms_key_id(), Some(key_arn.as_str()));
    assert_eq!(emulator.record().presigned_url_problems(), []);

    // The emulator's check is not vacuous: without a URL, or with one signed with another
    // secret, the call is accepted and the copy ends in `error`.
    let wrong_secret = presigned_with_secret(&sources[3], "not-the-secret");
    for (source, url) in [(&sources[2], None), (&sources[3], Some(wrong_secret))] {
        let started = target
            .copy_snapshot()
            .source_region(SOURCE)
            .source_snapshot_id(source)
            .destination_region(TARGET)
            .set_presigned_url(url)
            .send()
            .await
            .unwrap();
        let settled = settled(&target, started.snapshot_id().unwrap()).await;
        assert_eq!(settled.state(), Some(&types::SnapshotState::Error), "{settled:?}");
        assert!(settled.state_message().unwrap_or_default().contains("PresignedUrl"), "{settled:?}");
    }
    let problems = emulator.record().presigned_url_problems();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0], (sources[2].clone(), "no PresignedUrl".to_owned()));
    assert!(problems[1].1.contains("signature does not match"), "{problems:?}");
}

/// The snapshot once it is no longer `pending`.
async fn settled(ec2: &Client, id: &str) -> types::Snapshot {
    let started = std::time::Instant::now();
    loop {
        let snapshot = describe(ec2, id).await;
        if snapshot.state() != Some(&types::SnapshotState::Pending) {
            return snapshot;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{id} still pending: {snapshot:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A PresignedUrl for copying `source` as the function makes it, but signed with `secret`.
fn presigned_with_secret(source: &str, secret: &str) -> String {
    let url = CopySnapshotUrl {
        source_region: SOURCE,
        source_snapshot_id: source,
        destination_region: TARGET,
        encrypted: false,
        kms_key_id: None,
    };
    let credentials = Credentials::new("testing", secret, None, None, "test");
    let endpoint = format!("https://ec2.{SOURCE}.amazonaws.com");
    url.presign(&endpoint, &credentials, std::time::SystemTime::now(), EXPIRES_IN).unwrap()
}
