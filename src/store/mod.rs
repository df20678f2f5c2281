//! What the engine asks of EC2 (and of KMS, for the key a request names), in the engine's own
//! words: the [`SnapshotStore`] trait and the domain types it speaks (and, through
//! [`SnapshotStore::slot_ledger`], the deployment's slot ledger, whose port lives in
//! [`crate::engine::slots`]). No SDK type appears here; `ec2.rs` translates, and the in-memory
//! simulator implements the same trait for tests and the benchmark.

pub mod copy_time;
pub mod dynamo_slots;
pub mod ec2;
pub mod kms;
pub mod ledger;
pub mod presign;
pub mod sdk;
#[cfg(feature = "simulated")]
pub mod simulated;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::ids::{Place, Region, SnapshotId};
use crate::store::ledger::{NoLedger, SlotLedger};

/// EC2 accepts at most 200 values in one DescribeSnapshots filter.
pub const MAX_FILTER_VALUES: usize = 200;

/// Tag on every copy naming the snapshot it was copied from.
pub const SOURCE_SNAPSHOT_TAG: &str = "copy-snapshots:source-snapshot-id";
/// Tag on every copy naming the region it was copied from.
pub const SOURCE_REGION_TAG: &str = "copy-snapshots:source-region";
/// Tag on every copy saying how its request asked for encryption: `none`, `default` (the
/// target region's default key) or the key's ARN (copies made before keys were resolved: the
/// key as the request gave it). Which copies are a request's is this tag *and* the key the
/// copy is really under (see [`crate::engine::ownership`]). A source's attempts (its
/// copies in `error`) are counted among those of requests that asked alike, so a check with an
/// unusable key does not fail the plain schedule of the same source.
pub const ENCRYPTION_TAG: &str = "copy-snapshots:encryption";
/// Tag on every copy naming the volume its source was taken of: retention counts a volume's
/// copies by it, even once their sources are gone from the source region. Left out when EC2
/// reports no volume, or its placeholder [`NO_VOLUME`].
pub const SOURCE_VOLUME_TAG: &str = "copy-snapshots:source-volume-id";
/// Tag on every copy with its source's StartTime (RFC 3339, UTC, milliseconds): a copy's age
/// is its source's age, as AWS Backup counts it, whether or not the source still exists.
pub const SOURCE_START_TIME_TAG: &str = "copy-snapshots:source-start-time";
/// Tag on every copy in another account naming the account it was copied from (this one): a
/// recovery account may hold several production accounts' copies, and each deployment looks at,
/// counts and deletes only its own (the stores filter on it; the recovery role's
/// DeleteSnapshot requires it).
pub const SOURCE_ACCOUNT_TAG: &str = "copy-snapshots:source-account";
/// Prefix of the tag on a *source* this function shared with another account for a copy
/// there (`copy-snapshots:shared-with:ACCOUNT`), set before the share and removed with it: the
/// record that the share is this function's to remove. A share without it (someone else's) is
/// never removed.
pub const SHARED_WITH_TAG_PREFIX: &str = "copy-snapshots:shared-with:";
/// Prefix of the tags this function owns; users may not set them.
pub const RESERVED_TAG_PREFIX: &str = "copy-snapshots:";
/// How many tags this function puts on every copy (the five above; a copy in another account
/// carries [`SOURCE_ACCOUNT_TAG`] too, which the start checks against EC2's limit).
pub const OWN_TAGS: usize = 5;
/// The volume id EC2 reports for snapshots made by CopySnapshot (and some others): "an arbitrary
/// volume ID that should not be used for any purpose", says the API reference. Such a source
/// has no volume to group it by.
pub const NO_VOLUME: &str = "vol-ffffffff";

/// A snapshot's lifecycle state, as EC2 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotState {
    Pending,
    Completed,
    Error,
    /// `recoverable`, `recovering`, or a state EC2 adds later.
    Other(String),
}

impl SnapshotState {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::Error => "error",
            Self::Other(state) => state,
        }
    }

    pub fn parse(text: &str) -> Self {
        match text {
            "pending" => Self::Pending,
            "completed" => Self::Completed,
            "error" => Self::Error,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// A key/value tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

impl Tag {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self { key: key.into(), value: value.into() }
    }
}

/// A snapshot to copy, as seen in the source region.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSnapshot {
    pub id: SnapshotId,
    pub state: SnapshotState,
    pub size_gib: u64,
    pub encrypted: bool,
    /// In the archive storage tier: must be restored before it can be copied.
    pub archived: bool,
    pub tags: Vec<Tag>,
    /// When the snapshot was taken (EC2's StartTime): how old the data a copy would protect is.
    pub start_time: Option<SystemTime>,
    /// The volume it was taken of; `None` when EC2 reports none or [`NO_VOLUME`].
    pub volume_id: Option<String>,
    /// The key an encrypted snapshot is under (its ARN, as EC2 reports it).
    pub kms_key_id: Option<String>,
}

impl SourceSnapshot {
    pub fn tag(&self, key: &str) -> Option<&str> {
        find_tag(&self.tags, key)
    }
}

/// A copy this function made, as seen in the target region.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyStatus {
    pub id: SnapshotId,
    /// From the copy's source-snapshot tag.
    pub source_id: SnapshotId,
    pub state: SnapshotState,
    /// Whole percent, as EC2 reports it (`"45%"` → 45).
    pub progress: Option<u8>,
    pub encrypted: bool,
    /// The key ARN EC2 reports for an encrypted copy.
    pub kms_key_id: Option<String>,
    /// EC2's explanation of an `error` state, e.g. "Given key ID is not accessible".
    pub state_message: Option<String>,
    /// When EC2 started the copy: of two live copies of one source, the older is kept.
    pub start_time: Option<SystemTime>,
    /// The copy's [`ENCRYPTION_TAG`]; absent on copies made before the tag existed.
    pub requested_encryption: Option<String>,
    /// The copy's [`SOURCE_VOLUME_TAG`]; absent on copies made before retention existed.
    pub source_volume_id: Option<String>,
    /// The copy's [`SOURCE_START_TIME_TAG`]; absent on copies made before retention existed.
    pub source_start_time: Option<SystemTime>,
    /// The copy's size (its source volume's), GiB.
    pub size_gib: u64,
}

/// Which snapshots a request is about.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSelector {
    Ids(Vec<SnapshotId>),
    /// DescribeSnapshots filters, owner self.
    Filters(Vec<Filter>),
}

/// One DescribeSnapshots filter, e.g. `tag:Backup` = `["daily"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

/// Everything EC2 needs to start one copy. The engine fills in the description and the
/// tracking tags, so the adapter only translates.
#[derive(Debug, Clone, PartialEq)]
pub struct CopySpec {
    pub source_id: SnapshotId,
    pub source_region: Region,
    /// Where the copy is made: the target region, in this account or (the source shared with
    /// it) another.
    pub target: Place,
    pub description: String,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    /// Put on the copy at creation (TagSpecifications), tracking tags included.
    pub tags: Vec<Tag>,
    pub completion_duration_minutes: Option<u32>,
}

/// A KMS key, as kms:DescribeKey describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDescription {
    /// The key's ARN: what EC2 reports as a copy's KmsKeyId, whatever form the request used.
    pub arn: String,
    /// `Enabled`, `Disabled`, `PendingDeletion`, …: only an enabled key can encrypt a copy.
    pub state: String,
    /// `SYMMETRIC_DEFAULT` for the keys EBS can use; asymmetric and HMAC keys it cannot.
    pub spec: String,
    /// KeyManager `AWS`: an AWS managed key such as `aws/ebs`, whose key policy no one can
    /// change, so a snapshot under it cannot be shared with another account.
    pub aws_managed: bool,
}

impl KeyDescription {
    /// Why EBS cannot encrypt a copy under this key (`is Disabled …`), if it cannot: the one
    /// rule the engine and `verify-aws` both apply before anything is made.
    pub fn unusable_reason(&self) -> Option<String> {
        if self.state != "Enabled" {
            return Some(format!("is {} (EC2 cannot encrypt a copy under it)", self.state));
        }
        // A symmetric encryption key is always for ENCRYPT_DECRYPT.
        (!self.spec.is_empty() && self.spec != "SYMMETRIC_DEFAULT")
            .then(|| format!("is a {} key (EBS encrypts only under symmetric encryption keys)", self.spec))
    }
}

/// What a DeleteSnapshot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// This call deleted the snapshot.
    Deleted,
    /// InvalidSnapshot.NotFound: the snapshot was already gone (deleted by someone else, or by
    /// an earlier attempt of this call that the SDK retried): not a deletion this run made.
    AlreadyGone,
}

/// What can go wrong asking EC2, sorted by what the engine does about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// ResourceLimitExceeded: the region's concurrent-copy quota is full. Wait for a slot.
    #[error("no copy slot free in the target region: {0}")]
    NoSlot(String),
    /// InvalidSnapshot.NotFound.
    #[error("not found: {0}")]
    NotFound(String),
    /// IncorrectState: the source is not ready to be copied.
    #[error("not ready: {0}")]
    NotReady(String),
    /// A definite refusal that created nothing (bad parameter, unusable key, …).
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
    /// Timeout, connection failure or 5xx: the call may have reached EC2 and taken effect.
    #[error("no definite answer: {0}")]
    Unknown(String),
    /// UnauthorizedOperation, AccessDenied*, KMS refusals.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// Throttling left after the SDK's retries.
    #[error("throttled: {0}")]
    Throttled(String),
}

/// The EC2 operations the engine needs. Each method is one logical call: implementations
/// paginate inside it. `Sync` because one store serves concurrent invocations' futures.
pub trait SnapshotStore: Sync {
    /// The sources in `region`: by id (those that exist and are visible; the engine reports
    /// the missing ones) or by filters (owner self).
    fn describe_sources(
        &self,
        region: &Region,
        selector: &SourceSelector,
    ) -> impl Future<Output = Result<Vec<SourceSnapshot>, StoreError>> + Send;

    /// Copies in `target_region` that carry this function's tracking tags for `source_region`
    /// and one of `source_ids`, in any state.
    fn find_copies(
        &self,
        target: &Place,
        source_region: &Region,
        source_ids: &[SnapshotId],
    ) -> impl Future<Output = Result<Vec<CopyStatus>, StoreError>> + Send;

    /// Every copy in `target` carrying this function's tracking tags for `source_region`,
    /// in any state, whatever its source: what retention judges. One paginated call.
    fn list_copies(
        &self,
        target: &Place,
        source_region: &Region,
    ) -> impl Future<Output = Result<Vec<CopyStatus>, StoreError>> + Send;

    /// This project's copies pending in `target_region`, whatever invocation, request or source
    /// region started them (every snapshot carrying [`SOURCE_SNAPSHOT_TAG`], owner self): what
    /// `pending_limit` bounds, so the events, the schedule and the state machine together leave
    /// the rest of the region's copy quota to Data Lifecycle Manager and AWS Backup. One
    /// paginated call.
    fn list_pending_copies(&self, target: &Place) -> impl Future<Output = Result<Vec<CopyStatus>, StoreError>> + Send;

    /// Starts one copy; returns the new snapshot's id.
    fn start_copy(&self, spec: &CopySpec) -> impl Future<Output = Result<SnapshotId, StoreError>> + Send;

    /// Current state of the given copies, in one call. A copy not (yet) visible is left out.
    fn describe_copies(
        &self,
        target: &Place,
        copy_ids: &[SnapshotId],
    ) -> impl Future<Output = Result<Vec<CopyStatus>, StoreError>> + Send;

    /// Deletes one copy this function made (the engine passes only ids that [`find_copies`]
    /// returned, i.e. snapshots carrying the tracking tags). A copy already gone is
    /// [`DeleteOutcome::AlreadyGone`], not an error.
    ///
    /// [`find_copies`]: SnapshotStore::find_copies
    fn delete_copy(
        &self,
        target: &Place,
        copy_id: &SnapshotId,
    ) -> impl Future<Output = Result<DeleteOutcome, StoreError>> + Send;

    /// Which of `volume_ids` still exist in `region` (DescribeVolumes; a volume `deleting` or
    /// `deleted` does not). Only a definite answer says a volume is gone: any failure is an
    /// error, never an empty set.
    fn existing_volumes(
        &self,
        region: &Region,
        volume_ids: &[String],
    ) -> impl Future<Output = Result<HashSet<String>, StoreError>> + Send;

    /// The AMIs (the place's account's, in its region) whose block device mappings use any of
    /// `snapshot_ids`: snapshot id → image id. One DescribeImages, at most 200 ids a filter.
    fn images_using(
        &self,
        place: &Place,
        snapshot_ids: &[SnapshotId],
    ) -> impl Future<Output = Result<HashMap<SnapshotId, String>, StoreError>> + Send;

    /// The key `key` (a key id, key ARN, alias name or alias ARN) names in `place`
    /// (kms:DescribeKey, as the place's account). A key that does not exist is
    /// [`StoreError::NotFound`].
    fn describe_key(&self, place: &Place, key: &str)
    -> impl Future<Output = Result<KeyDescription, StoreError>> + Send;

    /// The accounts a source in `region` (this account's) is shared with
    /// (DescribeSnapshotAttribute `createVolumePermission`; a public snapshot lists `all`).
    fn shared_with(
        &self,
        region: &Region,
        source: &SnapshotId,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// This account's snapshots in `region` that `account` may create volumes from (one
    /// paginated DescribeSnapshots, owner self, RestorableByUserIds): the sources shared with it,
    /// with their tags.
    fn sources_shared_with(
        &self,
        region: &Region,
        account: &str,
    ) -> impl Future<Output = Result<Vec<SourceSnapshot>, StoreError>> + Send;

    /// Tags a source in `region` (CreateTags): the record of a share this function makes.
    fn tag_source(
        &self,
        region: &Region,
        source: &SnapshotId,
        tag: &Tag,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes the tag `key` from a source in `region` (DeleteTags).
    fn untag_source(
        &self,
        region: &Region,
        source: &SnapshotId,
        key: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Shares a source in `region` with `account`, so a copy can be made there
    /// (ModifySnapshotAttribute, `createVolumePermission` add). Sharing it again is harmless.
    fn share(
        &self,
        region: &Region,
        source: &SnapshotId,
        account: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes the share of a source in `region` with `account` (`createVolumePermission`
    /// remove). Removing one that is not there is harmless.
    fn unshare(
        &self,
        region: &Region,
        source: &SnapshotId,
        account: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The deployment's slot ledger ([`crate::engine::slots`]), when one is configured (the deployed
    /// stack's `SLOT_TABLE`): `pending_limit` is then reserved atomically in it before each
    /// start round, instead of counted with one DescribeSnapshots that two invocations can
    /// both pass. Carried by the store so that one handle reaches the engine through every
    /// entry point (handler, SQS batch, command line); `None` (the command line, local runs)
    /// keeps the count.
    fn slot_ledger(&self) -> Option<&impl SlotLedger> {
        None::<&NoLedger>
    }

    /// The calendar time that sources' ages are measured against: the system clock. The
    /// simulator's calendar follows tokio's paused clock instead, so a test can run a month of
    /// schedules in no time.
    fn wall_clock(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Whether a snapshot carrying `tags` is this function's copy, from `source_region`, of one of
/// the `wanted` source ids: the rule every store applies when it looks for earlier copies.
pub fn is_copy_from(tags: &[Tag], source_region: &Region, wanted: &HashSet<&str>) -> bool {
    find_tag(tags, SOURCE_REGION_TAG) == Some(source_region.as_str())
        && find_tag(tags, SOURCE_SNAPSHOT_TAG).is_some_and(|id| wanted.contains(id))
}

/// A source volume id worth grouping by: not empty, not EC2's placeholder [`NO_VOLUME`].
pub fn real_volume(volume_id: Option<&str>) -> Option<String> {
    volume_id.filter(|v| !v.is_empty() && *v != NO_VOLUME).map(str::to_owned)
}

/// A [`SOURCE_START_TIME_TAG`] value: RFC 3339 in UTC, to the millisecond, as EC2 shows times.
pub fn format_start_time(time: SystemTime) -> String {
    DateTime::<Utc>::from(time).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Reads a [`SOURCE_START_TIME_TAG`] value; `None` when it is not RFC 3339 (a tag someone edited).
pub fn parse_start_time(text: &str) -> Option<SystemTime> {
    DateTime::parse_from_rfc3339(text.trim()).ok().map(SystemTime::from)
}

/// What a copy's own tags say of its source: its volume and its start time.
pub fn source_origin(tags: &[Tag]) -> (Option<String>, Option<SystemTime>) {
    (real_volume(find_tag(tags, SOURCE_VOLUME_TAG)), find_tag(tags, SOURCE_START_TIME_TAG).and_then(parse_start_time))
}

/// The value of tag `key`, if present.
pub fn find_tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key == key).map(|t| t.value.as_str())
}
