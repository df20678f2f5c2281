//! What the engine tests on the in-memory EC2 share: a request with extra fields, limits
//! without a deadline, and the live copies per source a region holds.

use std::collections::HashMap;
use std::time::Duration;

use copy_snapshots::contract::request::{CopyRequest, DEFAULT_MAX_POLL_INTERVAL, Settings};
use copy_snapshots::engine::RunLimits;
use copy_snapshots::ids::SnapshotId;
use copy_snapshots::store::SnapshotState;
use copy_snapshots::store::simulated::SimulatedEc2;
use serde_json::Value;

/// `base` with the fields of `extra` added (or replaced), checked as a request against the
/// default settings.
pub fn request_with(mut base: Value, extra: Value) -> CopyRequest {
    if let (Some(payload), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        payload.extend(extra.clone());
    }
    CopyRequest::from_json(base, &Settings::default()).expect("a valid request")
}

/// A run without a deadline: polls every 15 s (backing off to the default longest interval),
/// each call given 1 s.
pub fn no_deadline() -> RunLimits {
    RunLimits {
        deadline: None,
        poll_interval: Duration::from_secs(15),
        max_poll_interval: DEFAULT_MAX_POLL_INTERVAL,
        call_timeout: Duration::from_secs(1),
    }
}

/// Live (not `error`) copies per source in `region`.
pub fn live_copies_per_source(ec2: &SimulatedEc2, region: &str) -> HashMap<SnapshotId, usize> {
    let mut counts = HashMap::new();
    for copy in ec2.tracked_copies(region) {
        if copy.state != SnapshotState::Error {
            *counts.entry(copy.source_id).or_insert(0) += 1;
        }
    }
    counts
}
