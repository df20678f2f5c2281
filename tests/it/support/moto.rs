//! The plain moto server `make test` starts (scripts/with-moto): SDK clients pointed at it the
//! way the function points itself, and source snapshots to copy.

use aws_config::BehaviorVersion;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{self, ResourceType, TagSpecification};

/// Loads the SDK configuration exactly as the function does: endpoint and credentials come
/// from the environment `make test` sets (AWS_ENDPOINT_URL); nothing is hard-wired here.
pub async fn sdk_config() -> aws_config::SdkConfig {
    assert!(
        std::env::var("MOTO_ENDPOINT").is_ok(),
        "these tests need the EC2 emulator: run them with `make test` (scripts/with-moto cargo test)"
    );
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

pub async fn ec2_in(region: &str) -> Client {
    let config = sdk_config().await;
    Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&config).region(aws_sdk_ec2::config::Region::new(region.to_owned())).build(),
    )
}

/// A completed snapshot of a new volume in the client's region.
pub async fn make_snapshot(ec2: &Client, size_gib: i32, tags: &[(&str, &str)]) -> String {
    let volume = make_volume(ec2, size_gib).await;
    snapshot_volume(ec2, &volume, tags).await
}

/// A new volume in the client's region; returns its id.
pub async fn make_volume(ec2: &Client, size_gib: i32) -> String {
    let region = ec2.config().region().map(ToString::to_string).unwrap_or_default();
    let volume = ec2.create_volume().availability_zone(format!("{region}a")).size(size_gib).send().await.unwrap();
    volume.volume_id().unwrap().to_owned()
}

/// A completed snapshot of `volume`. moto's StartTime has whole seconds: snapshots of one
/// volume meant to have different ages must be made a second apart.
pub async fn snapshot_volume(ec2: &Client, volume: &str, tags: &[(&str, &str)]) -> String {
    // EC2 refuses an empty tag specification.
    let spec = tags.iter().fold(
        TagSpecification::builder()
            .resource_type(ResourceType::Snapshot)
            .tags(types::Tag::builder().key("created-by").value("copy-snapshots-tests").build()),
        |spec, (key, value)| spec.tags(types::Tag::builder().key(*key).value(*value).build()),
    );
    let snapshot = ec2.create_snapshot().volume_id(volume).tag_specifications(spec.build()).send().await.unwrap();
    snapshot.snapshot_id().unwrap().to_owned()
}
