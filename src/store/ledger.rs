//! The slot ledger's port: what the engine's slot accounting ([`crate::engine::slots`]) reads
//! and writes, and what an adapter stores (DynamoDB in [`super::dynamo_slots`], memory in the
//! simulator) — one record per target region, saved only if its version is unchanged.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::SystemTime;

use crate::ids::{Place, Region, SnapshotId};

/// What identifies a copy-to-be: source region, source snapshot and the encryption asked
/// (`us-east-1/snap-…/none`), so a second reservation of the same copy is refused instead of
/// counted twice (an event delivered twice, an invocation retried), and a copy another
/// invocation is starting is not started again. Entries a refresh adds for copies EC2 lists
/// but the ledger did not know are keyed `copy/snap-…`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotKey(String);

impl SlotKey {
    pub fn for_copy(source_region: &Region, source: &SnapshotId, encryption: &str) -> Self {
        Self(format!("{source_region}/{source}/{encryption}"))
    }

    /// The key a refresh gives a copy EC2 lists that the ledger did not know.
    pub fn listed(copy_id: &str) -> Self {
        Self(format!("copy/{copy_id}"))
    }

    /// A key as an adapter stored it.
    pub fn stored(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One slot held: reserved, then (once started) with its copy's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotEntry {
    pub copy_id: Option<String>,
    pub reserved_at: SystemTime,
    /// When the copy id was recorded, until a refresh has seen the copy in EC2's listing (see
    /// [`RECORD_GRACE`](crate::engine::slots::RECORD_GRACE)); `None` once seen, or for an entry a refresh made from the listing.
    pub recorded_at: Option<SystemTime>,
}

impl SlotEntry {
    /// A slot reserved at `now`, its copy not started yet.
    pub fn reservation(now: SystemTime) -> Self {
        Self { copy_id: None, reserved_at: now, recorded_at: None }
    }
}

/// The ledger of one target region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerState {
    pub entries: BTreeMap<SlotKey, SlotEntry>,
    /// When the entries were last rebuilt from EC2's listing; `None`: never (a new ledger, or
    /// one an adapter could not read whole).
    pub refreshed_at: Option<SystemTime>,
}

/// The version a conditional save expects: 0 when the ledger has no item yet.
pub type Version = u64;

/// What a conditional save came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    Saved,
    /// Another invocation wrote the ledger since this one loaded it: nothing was written.
    Conflict,
}

/// What can go wrong asking the ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// Throttled, a 5xx, a timeout: no start this round, try again after a backoff.
    #[error("{0}")]
    Unavailable(String),
    /// The role may not read or write the ledger: a deployment to fix.
    #[error("{0}")]
    AccessDenied(String),
    /// The ledger does not exist or refuses the request as malformed: a deployment to fix.
    #[error("{0}")]
    Misconfigured(String),
}

/// The ledger's storage: one record per target region, loaded strongly consistent and saved
/// only if its version is still the one loaded. `Sync` because concurrent invocations' futures
/// share it.
pub trait SlotLedger: Sync {
    /// Names the ledger for messages ("DynamoDB table copy-snapshots-Slots…").
    fn describe(&self) -> String;

    /// The ledger of `target` (its region, in its account) and its version (an empty state,
    /// version 0, when none).
    fn load(&self, target: &Place) -> impl Future<Output = Result<(LedgerState, Version), LedgerError>> + Send;

    /// Writes `state` as version `expected + 1`, only if the stored version is `expected`.
    fn save(
        &self,
        target: &Place,
        state: &LedgerState,
        expected: Version,
    ) -> impl Future<Output = Result<Saved, LedgerError>> + Send;
}

/// The type of "no ledger configured" ([`crate::store::SnapshotStore::slot_ledger`]'s
/// default): uninhabited, so it is never called.
#[derive(Debug)]
pub enum NoLedger {}

impl SlotLedger for NoLedger {
    fn describe(&self) -> String {
        match *self {}
    }

    async fn load(&self, _: &Place) -> Result<(LedgerState, Version), LedgerError> {
        match *self {}
    }

    async fn save(&self, _: &Place, _: &LedgerState, _: Version) -> Result<Saved, LedgerError> {
        match *self {}
    }
}
