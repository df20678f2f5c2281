//! The sample payloads under events/, which the tests use as fixtures.

use serde_json::Value;

/// `events/NAME`, parsed.
pub fn load_event(name: &str) -> Value {
    let path = format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The sample `EBS Snapshot Notification` (a succeeded createSnapshot), for snapshot `id` in
/// `region`.
pub fn snapshot_notification(region: &str, id: &str) -> Value {
    let mut event = load_event("snapshot-notification.json");
    event["region"] = region.into();
    event["detail"]["snapshot_id"] = format!("arn:aws:ec2::{region}:snapshot/{id}").into();
    event
}
