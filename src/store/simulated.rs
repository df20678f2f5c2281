//! An in-memory EC2 that implements [`SnapshotStore`] on tokio's clock, for the engine tests and
//! the `simulate` benchmark. It models what the real service does that matters to the engine:
//! copies take time (120 s + 20 s per GiB by default) and report whole-percent progress, each
//! region allows a limited number of pending copies (foreign copies included) and answers
//! ResourceLimitExceeded beyond it, and chosen copies end in `error`. Faults the real service
//! shows rarely (refusals, unanswered calls, throttling, access denied, a listing that lags
//! behind new copies, copies that stall or whose speed does not follow their size, copies that
//! sit at 0% for the first part of their duration) can be
//! injected, and every call is counted. Like the deployed role, it deletes only snapshots
//! carrying the tracking tags; chosen snapshots refuse deletion (in use by an AMI, locked).
//! For retention: sources of chosen volumes and ages, sources that vanish from the source
//! region, and a calendar ([`SnapshotStore::wall_clock`]) that follows tokio's paused clock, so a
//! month of daily runs takes no time. [`MemoryLedger`] is the deployment's slot table beside
//! it: conditional writes, a latency that lets invocations interleave, injected failures.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::ids::{Place, Region, SnapshotId};
use crate::store::ledger::{LedgerError, LedgerState, Saved, SlotLedger, Version};
use crate::store::{
    CopySpec, CopyStatus, DeleteOutcome, ENCRYPTION_TAG, KeyDescription, SOURCE_ACCOUNT_TAG, SOURCE_REGION_TAG,
    SOURCE_SNAPSHOT_TAG, SnapshotState, SnapshotStore, SourceSelector, SourceSnapshot, StoreError, Tag, find_tag,
    is_copy_from, source_origin,
};

/// AWS's default quota of concurrent copies per destination region.
pub const DEFAULT_REGION_COPY_LIMIT: usize = 20;
/// The most snapshots one DescribeSnapshots page holds (MaxResults).
const PAGE_SIZE: usize = 1000;
/// The most values one DescribeSnapshots filter takes.
const FILTER_VALUES: usize = 200;

/// How long a simulated copy takes: the plan's model (`fixed + per_gib × size`). Its
/// `DEFAULT` is the benchmark's copy time too, so the plan's assumed speed and the figures of
/// `make simulate` move together.
pub use crate::store::copy_time::CopyTimeModel;

impl CopyTimeModel {
    /// Copies complete at once: for tests about everything but timing.
    pub const INSTANT: Self = Self { fixed: Duration::ZERO, per_gib: Duration::ZERO };
}

/// Calls the engine made, by operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    pub describe_sources: usize,
    pub find_copies: usize,
    pub start_copy: usize,
    pub describe_copies: usize,
    pub delete_copy: usize,
    pub list_copies: usize,
    /// Counts of this deployment's pending copies (before starting any).
    pub list_pending_copies: usize,
    /// DescribeVolumes calls (is a gone source's volume gone too?).
    pub describe_volumes: usize,
    /// DescribeImages calls (does an AMI use a copy about to be deleted?).
    pub describe_images: usize,
    /// kms:DescribeKey calls (KMS, not EC2: not in [`total`](Self::total) or `requests`).
    pub describe_key: usize,
    /// DescribeSnapshotAttribute, ModifySnapshotAttribute and DescribeSnapshots by
    /// RestorableByUserIds: sharing sources with other accounts.
    pub sharing: usize,
    /// Look-ups answered with throttling (counted in their operation too).
    pub throttled_looks: usize,
    /// The HTTP requests those calls would be to EC2, which pages DescribeSnapshots (1,000 a
    /// page) and takes at most 200 values a filter, as the aws-sdk-ec2 store asks it.
    pub requests: usize,
}

impl CallCounts {
    /// Store calls, each one logical call however many pages it reads.
    pub fn total(&self) -> usize {
        self.describe_sources
            + self.find_copies
            + self.start_copy
            + self.describe_copies
            + self.delete_copy
            + self.list_copies
            + self.list_pending_copies
            + self.describe_volumes
            + self.describe_images
            + self.sharing
    }
}

/// Requests for a DescribeSnapshots of `values` filter values answering `found` snapshots: one
/// paginated call per 200 values, one request per page of each.
fn describe_requests(values: usize, found: usize) -> usize {
    values.div_ceil(FILTER_VALUES).max(1) + found.saturating_sub(1) / PAGE_SIZE
}

/// Copies that do not progress as the copy-time model says: each stalls at 0% for up to
/// `max_stall`, then runs at its own speed, `slowest`..`fastest` times the model's.
#[derive(Debug, Clone, Copy)]
pub struct Irregularity {
    pub max_stall: Duration,
    pub slowest: f64,
    pub fastest: f64,
}

/// Copies that report 0% for the first `quiet_share` of their duration, then progress steadily,
/// and take `shortest`..`longest` times the model's time, whatever their size: small
/// incremental copies, and the long 0% phase EC2 often reports for a cross-region copy. With an
/// [`Irregularity`] too, its stall and speed apply on top.
#[derive(Debug, Clone, Copy)]
pub struct QuietStart {
    pub quiet_share: f64,
    pub shortest: f64,
    pub longest: f64,
}

/// splitmix64: a deterministic spread of per-copy draws without a random-number dependency.
fn spread(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / u64::MAX as f64
}

/// A snapshot in the simulated world, source or copy.
#[derive(Debug, Clone)]
struct Snapshot {
    id: SnapshotId,
    size_gib: u64,
    encrypted: bool,
    kms_key_id: Option<String>,
    tags: Vec<Tag>,
    /// Fixed state for sources; copies derive theirs from time.
    fixed_state: Option<SnapshotState>,
    archived: bool,
    started: Instant,
    /// Stuck at 0% this long after `started`, then `duration` to complete.
    stall: Duration,
    /// EC2's StartTime, on the wall clock (tokio's paused clock has no calendar).
    start_time: SystemTime,
    duration: Duration,
    /// Ends in `error` with this message halfway through.
    fails_with: Option<String>,
    /// The volume a source was taken of; copies have none of their own (EC2's placeholder).
    volume_id: Option<String>,
    /// The accounts a source is shared with (`createVolumePermission`).
    shared_with: HashSet<String>,
}

impl Snapshot {
    fn state_at(&self, now: Instant) -> (SnapshotState, Option<u8>, Option<String>) {
        if let Some(state) = &self.fixed_state {
            let progress = if *state == SnapshotState::Completed { 100 } else { 0 };
            return (state.clone(), Some(progress), None);
        }
        let elapsed = now.saturating_duration_since(self.started + self.stall);
        if let Some(message) = &self.fails_with
            && elapsed >= self.duration / 2
        {
            return (SnapshotState::Error, Some(0), Some(message.clone()));
        }
        if elapsed >= self.duration {
            return (SnapshotState::Completed, Some(100), None);
        }
        // EC2 reports whole percent, rounded down.
        let percent = (elapsed.as_secs_f64() / self.duration.as_secs_f64() * 100.0).floor() as u8;
        (SnapshotState::Pending, Some(percent.min(99)), None)
    }

    /// The snapshot as DescribeSnapshots describes a source at `now`.
    fn source_at(&self, now: Instant) -> SourceSnapshot {
        SourceSnapshot {
            id: self.id.clone(),
            state: self.state_at(now).0,
            size_gib: self.size_gib,
            encrypted: self.encrypted,
            archived: self.archived,
            tags: self.tags.clone(),
            start_time: Some(self.start_time),
            volume_id: self.volume_id.clone(),
            kms_key_id: self.kms_key_id.clone(),
        }
    }

    fn is_pending_at(&self, now: Instant) -> bool {
        self.state_at(now).0 == SnapshotState::Pending
    }

    fn copy_status(&self, now: Instant) -> Option<CopyStatus> {
        let source_id = SnapshotId::parse(find_tag(&self.tags, SOURCE_SNAPSHOT_TAG)?).ok()?;
        let (source_volume_id, source_start_time) = source_origin(&self.tags);
        let (state, progress, state_message) = self.state_at(now);
        Some(CopyStatus {
            id: self.id.clone(),
            source_id,
            state,
            progress,
            encrypted: self.encrypted,
            kms_key_id: self.kms_key_id.clone(),
            state_message,
            start_time: Some(self.start_time),
            requested_encryption: find_tag(&self.tags, ENCRYPTION_TAG).map(str::to_owned),
            source_volume_id,
            source_start_time,
            size_gib: self.size_gib,
        })
    }

    /// Listed by DescribeSnapshots at `now`, given how far the listing lags behind new copies.
    fn listed_at(&self, now: Instant, lag: Duration) -> bool {
        self.fixed_state.is_some() || now.saturating_duration_since(self.started) >= lag
    }
}

#[derive(Debug, Default)]
struct RegionState {
    snapshots: HashMap<SnapshotId, Snapshot>,
    /// Insertion order, so listings are stable.
    order: Vec<SnapshotId>,
    /// Copies that were pending when last looked at; pruned lazily.
    maybe_pending: Vec<SnapshotId>,
}

impl RegionState {
    fn insert(&mut self, snapshot: Snapshot) {
        self.order.push(snapshot.id.clone());
        self.snapshots.insert(snapshot.id.clone(), snapshot);
    }

    /// Every snapshot, in creation order.
    fn in_order(&self) -> impl Iterator<Item = &Snapshot> {
        self.order.iter().filter_map(|id| self.snapshots.get(id))
    }

    fn pending_now(&mut self, now: Instant) -> Vec<&Snapshot> {
        let snapshots = &self.snapshots;
        self.maybe_pending.retain(|id| snapshots.get(id).is_some_and(|s| s.is_pending_at(now)));
        self.maybe_pending.iter().filter_map(|id| snapshots.get(id)).collect()
    }
}

/// A fault to answer one CopySnapshot call with.
#[derive(Debug, Clone)]
enum StartFault {
    /// The call reaches EC2 (or not) but the answer is lost.
    Unanswered {
        created: bool,
    },
    Refused {
        code: String,
        message: String,
    },
}

/// A fault to answer one DeleteSnapshot call with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteFault {
    /// Throttled beyond the SDK's retries; nothing deleted.
    Throttled,
    /// No definite answer; `deleted` says whether EC2 deleted the snapshot anyway.
    Unanswered { deleted: bool },
    /// AccessDenied (a role without the permission, or a tag condition it fails).
    Denied,
    /// Someone else deleted the snapshot just before: InvalidSnapshot.NotFound.
    GoneBefore,
}

#[derive(Debug)]
struct World {
    regions: HashMap<String, RegionState>,
    region_copy_limit: usize,
    model: CopyTimeModel,
    next_id: u64,
    calls: CallCounts,
    /// Copies of these sources end in `error` with the message.
    failing_sources: HashMap<SnapshotId, String>,
    /// One-shot faults for the next CopySnapshot of a source.
    start_faults: HashMap<SnapshotId, Vec<StartFault>>,
    /// The next this many CopySnapshot calls are throttled beyond retries.
    throttled_starts: usize,
    /// The next this many look-ups (DescribeSnapshots of any kind) are throttled beyond retries.
    throttled_looks: usize,
    /// Every DescribeSnapshots is denied (a role without it).
    deny_looks: bool,
    /// Regions where every call is denied (an opt-in region not enabled, an SCP).
    denied_regions: HashSet<String>,
    deny_starts: bool,
    /// CopySnapshot of these sources is denied (an SCP on the snapshot, a key it may not use).
    denied_sources: HashMap<SnapshotId, String>,
    /// Highest number of tracked (this function's) copies pending at once, per target region.
    max_tracked_pending: HashMap<String, usize>,
    no_slot_answers: usize,
    /// After `finds_before_loss` more find_copies calls, this many get no definite answer.
    finds_before_loss: usize,
    unanswered_finds: usize,
    /// New copies are missing from listings this long (EC2's eventual consistency).
    visibility_lag: Duration,
    irregularity: Option<Irregularity>,
    quiet_start: Option<QuietStart>,
    /// CopySnapshot calls that made a copy but whose caller went away before the answer.
    orphaned_starts: usize,
    /// Maps simulated instants to wall-clock start times.
    epoch: (Instant, SystemTime),
    next_volume: u64,
    /// DeleteSnapshot of these is refused with (code, message), as EC2 refuses a snapshot in
    /// use by an AMI or locked.
    refused_deletes: HashMap<SnapshotId, (String, String)>,
    /// Snapshots DeleteSnapshot removed, in order.
    deleted: Vec<SnapshotId>,
    /// DeleteSnapshot calls on a snapshot that was still pending.
    pending_deletes: usize,
    /// Volumes that exist (every source's volume, until [`SimulatedEc2::remove_volume`]).
    volumes: HashSet<String>,
    /// Snapshot → the AMI that uses it.
    images: HashMap<SnapshotId, String>,
    /// DescribeVolumes and DescribeImages get no definite answer.
    volume_looks_fail: bool,
    image_looks_fail: bool,
    /// One-shot faults for the next DeleteSnapshot calls, in order.
    delete_faults: Vec<DeleteFault>,
    /// After `source_looks_before_failure` more describe_sources calls, this many get no
    /// definite answer.
    source_looks_before_failure: usize,
    failing_source_looks: usize,
    /// KMS keys (see [`SimulatedEc2::add_key`]).
    keys: Vec<SimulatedKey>,
    /// CopySnapshot ignores KmsKeyId: copies go under the region's default EBS key.
    keys_ignored: bool,
    /// EBS encryption by default: every copy is encrypted, under the default key unless the
    /// call names one.
    encryption_by_default: bool,
    /// The next DescribeKey calls fail with these, in order.
    key_lookup_faults: Vec<StoreError>,
    /// The KmsKeyId each CopySnapshot sent, in order.
    kms_keys_sent: Vec<Option<String>>,
    /// CopySnapshot calls into another account of a source not shared with it.
    unshared_copies: usize,
}

/// A KMS key of the simulated account.
#[derive(Debug, Clone)]
struct SimulatedKey {
    region: String,
    arn: String,
    id: String,
    aliases: Vec<String>,
    state: String,
    spec: String,
}

/// The simulated account's id, in the ARNs it makes.
const ACCOUNT: &str = "111122223333";

const SYMMETRIC: &str = "SYMMETRIC_DEFAULT";

/// A region as the simulator keys it ([`Place::key`]: `REGION@ACCOUNT` in another account),
/// split into the region's name and the account.
fn region_and_account(place_key: &str) -> (&str, &str) {
    place_key.split_once('@').unwrap_or((place_key, ACCOUNT))
}

impl World {
    /// The key `key` (key id, key ARN, alias name or alias ARN) names in `region` (a place's
    /// key: `REGION@ACCOUNT` in another account).
    fn key(&self, region: &str, key: &str) -> Option<&SimulatedKey> {
        let (name_region, account) = region_and_account(region);
        let alias_prefix = format!("arn:aws:kms:{name_region}:{account}:");
        let name = key.strip_prefix(&alias_prefix).unwrap_or(key);
        self.keys
            .iter()
            .find(|k| k.region == region && (k.arn == key || k.id == name || k.aliases.iter().any(|a| a == name)))
    }

    /// Denies a call in `region` if the test denied the region.
    fn region_allowed(&self, region: &str) -> Result<(), StoreError> {
        if self.denied_regions.contains(region) {
            return Err(StoreError::AccessDenied(format!(
                "UnauthorizedOperation: You are not authorized to perform this operation in {region}"
            )));
        }
        Ok(())
    }

    /// Denies or throttles this look-up in `region` if the test asked for it.
    fn throttle_look(&mut self, region: &str) -> Result<(), StoreError> {
        self.region_allowed(region)?;
        if self.deny_looks {
            return Err(StoreError::AccessDenied(
                "UnauthorizedOperation: You are not authorized to perform: ec2:DescribeSnapshots".to_owned(),
            ));
        }
        if self.throttled_looks == 0 {
            return Ok(());
        }
        self.throttled_looks -= 1;
        self.calls.throttled_looks += 1;
        Err(StoreError::Throttled("RequestLimitExceeded: Request limit exceeded.".to_owned()))
    }

    /// The calendar time at `now` on tokio's clock.
    fn wall_at(&self, now: Instant) -> SystemTime {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0)
    }
}

/// The simulated EC2. Cheap to share by reference; all state sits behind one mutex that is
/// never held across an await.
#[derive(Debug)]
pub struct SimulatedEc2 {
    world: Mutex<World>,
    latency: Duration,
    /// The deployment's slot ledger, when the simulated deployment has one.
    ledger: Option<MemoryLedger>,
}

/// Calls the engine made to the slot ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerCalls {
    pub loads: usize,
    pub saves: usize,
    /// Saves refused because another invocation wrote first.
    pub conflicts: usize,
    /// Calls answered with an injected failure.
    pub failed: usize,
}

impl LedgerCalls {
    pub fn total(&self) -> usize {
        self.loads + self.saves
    }
}

#[derive(Debug, Default)]
struct LedgerWorld {
    items: HashMap<String, (LedgerState, Version)>,
    calls: LedgerCalls,
    /// The next this many calls fail as throttled.
    failing: usize,
    denied: bool,
}

/// The slot ledger in memory, as the DynamoDB table behaves: a load is strongly consistent,
/// a save lands only on the version it expects. Each call takes `latency` (simulated), the
/// load before it reads and the save before it writes, so invocations running together
/// interleave between a load and its save as they do against the real table.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    world: Mutex<LedgerWorld>,
    latency: Duration,
}

impl MemoryLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call takes this long (simulated): two invocations that reserve together both
    /// load the same version before either saves.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    fn lock(&self) -> MutexGuard<'_, LedgerWorld> {
        self.world.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn calls(&self) -> LedgerCalls {
        self.lock().calls
    }

    /// The next `count` calls fail as a throttled table answers (after the SDK's retries).
    pub fn fail_next_calls(&self, count: usize) {
        self.lock().failing = count;
    }

    /// Every call is refused as a role without the table's permissions is.
    pub fn deny(&self) {
        self.lock().denied = true;
    }

    /// The ledger of `target_region` as stored, and its version.
    pub fn state(&self, target_region: &str) -> Option<(LedgerState, Version)> {
        self.lock().items.get(target_region).cloned()
    }

    /// Stores `state` as the ledger of `target_region` (a new version), as an invocation
    /// that then died would have left it.
    pub fn put(&self, target_region: &str, state: LedgerState) {
        let mut world = self.lock();
        let version = world.items.get(target_region).map_or(0, |(_, v)| *v) + 1;
        world.items.insert(target_region.to_owned(), (state, version));
    }

    fn fault(world: &mut LedgerWorld) -> Result<(), LedgerError> {
        if world.denied {
            world.calls.failed += 1;
            return Err(LedgerError::AccessDenied(
                "AccessDeniedException: not authorized to perform dynamodb:GetItem on the simulated table".to_owned(),
            ));
        }
        if world.failing > 0 {
            world.failing -= 1;
            world.calls.failed += 1;
            return Err(LedgerError::Unavailable(
                "ProvisionedThroughputExceededException: the simulated table throttled the call".to_owned(),
            ));
        }
        Ok(())
    }
}

impl SlotLedger for MemoryLedger {
    fn describe(&self) -> String {
        "the simulated slot table".to_owned()
    }

    async fn load(&self, target: &Place) -> Result<(LedgerState, Version), LedgerError> {
        tokio::time::sleep(self.latency).await;
        let mut world = self.lock();
        world.calls.loads += 1;
        Self::fault(&mut world)?;
        Ok(world.items.get(&target.key()).cloned().unwrap_or_default())
    }

    async fn save(&self, target: &Place, state: &LedgerState, expected: Version) -> Result<Saved, LedgerError> {
        tokio::time::sleep(self.latency).await;
        let mut world = self.lock();
        world.calls.saves += 1;
        Self::fault(&mut world)?;
        let stored = world.items.get(&target.key()).map_or(0, |(_, v)| *v);
        if stored != expected {
            world.calls.conflicts += 1;
            return Ok(Saved::Conflict);
        }
        world.items.insert(target.key(), (state.clone(), expected + 1));
        Ok(Saved::Saved)
    }
}

impl Default for SimulatedEc2 {
    fn default() -> Self {
        Self::new()
    }
}

impl SimulatedEc2 {
    pub fn new() -> Self {
        Self {
            world: Mutex::new(World {
                regions: HashMap::new(),
                region_copy_limit: DEFAULT_REGION_COPY_LIMIT,
                model: CopyTimeModel::DEFAULT,
                next_id: 0,
                calls: CallCounts::default(),
                failing_sources: HashMap::new(),
                start_faults: HashMap::new(),
                throttled_starts: 0,
                throttled_looks: 0,
                deny_looks: false,
                denied_regions: HashSet::new(),
                deny_starts: false,
                denied_sources: HashMap::new(),
                max_tracked_pending: HashMap::new(),
                no_slot_answers: 0,
                finds_before_loss: 0,
                unanswered_finds: 0,
                visibility_lag: Duration::ZERO,
                irregularity: None,
                quiet_start: None,
                orphaned_starts: 0,
                epoch: (Instant::now(), SystemTime::now()),
                next_volume: 0,
                refused_deletes: HashMap::new(),
                deleted: Vec::new(),
                pending_deletes: 0,
                volumes: HashSet::new(),
                images: HashMap::new(),
                volume_looks_fail: false,
                image_looks_fail: false,
                delete_faults: Vec::new(),
                source_looks_before_failure: 0,
                failing_source_looks: 0,
                keys: Vec::new(),
                keys_ignored: false,
                encryption_by_default: false,
                key_lookup_faults: Vec::new(),
                kms_keys_sent: Vec::new(),
                unshared_copies: 0,
            }),
            latency: Duration::ZERO,
            ledger: None,
        }
    }

    /// The simulated deployment with a slot ledger (the deployed stack's table).
    pub fn with_slot_ledger(mut self, ledger: MemoryLedger) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// The slot ledger, if the simulated deployment has one.
    pub fn ledger(&self) -> Option<&MemoryLedger> {
        self.ledger.as_ref()
    }

    /// Every call takes this long (simulated).
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    pub fn with_region_copy_limit(self, limit: usize) -> Self {
        self.lock().region_copy_limit = limit;
        self
    }

    pub fn with_copy_time(self, model: CopyTimeModel) -> Self {
        self.lock().model = model;
        self
    }

    /// EBS encryption by default is on in every region: copies are encrypted whatever the
    /// call asks, under the region's default key unless it names one.
    pub fn with_encryption_by_default(self) -> Self {
        self.lock().encryption_by_default = true;
        self
    }

    /// Copies stall and run at speeds that do not follow their size.
    pub fn with_irregular_copies(self, irregularity: Irregularity) -> Self {
        self.lock().irregularity = Some(irregularity);
        self
    }

    /// Copies sit at 0% for a share of their duration, which varies whatever their size.
    pub fn with_quiet_start_copies(self, quiet_start: QuietStart) -> Self {
        self.lock().quiet_start = Some(quiet_start);
        self
    }

    /// New copies are left out of DescribeSnapshots answers for `lag`.
    pub fn with_visibility_lag(self, lag: Duration) -> Self {
        self.lock().visibility_lag = lag;
        self
    }

    /// After `skip` more looks for copies by tag, the next `count` get no definite answer.
    pub fn lose_finds(&self, skip: usize, count: usize) {
        let mut world = self.lock();
        world.finds_before_loss = skip;
        world.unanswered_finds = count;
    }

    /// Makes copy `id` in `region` complete now (a copy that ran faster than the model).
    pub fn complete_now(&self, region: &str, id: &SnapshotId) {
        let now = Instant::now();
        if let Some(s) = self.lock().regions.get_mut(region).and_then(|r| r.snapshots.get_mut(id)) {
            s.duration = now.saturating_duration_since(s.started + s.stall);
        }
    }

    /// CopySnapshot calls that made a copy whose caller was cut off before hearing of it.
    pub fn orphaned_starts(&self) -> usize {
        self.lock().orphaned_starts
    }

    /// Starts a copy made by this function (tracking tags) as an earlier invocation would
    /// have, bypassing the engine: for duplicates and error copies found at the look.
    pub fn add_tracked_copy(&self, spec: &CopySpec, fails_with: Option<&str>) -> SnapshotId {
        let mut world = self.lock();
        if let Some(message) = fails_with {
            world.failing_sources.insert(spec.source_id.clone(), message.to_owned());
        }
        drop(world);
        let id = self.start_copy_now(spec).unwrap_or_else(|e| panic!("simulator could not add a copy: {e}"));
        let mut world = self.lock();
        world.calls.start_copy -= 1;
        world.calls.requests -= 1;
        if fails_with.is_some() {
            world.failing_sources.remove(&spec.source_id);
        }
        id
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        // A panic while holding the lock can only come from a test assertion; the data is
        // still consistent enough to report.
        self.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn new_id(world: &mut World) -> SnapshotId {
        world.next_id += 1;
        // Ids EC2 would hand out: snap- + 17 hex digits.
        SnapshotId::parse(&format!("snap-{:017x}", 0x5_0000_0000_0000u64 + world.next_id))
            .unwrap_or_else(|e| panic!("simulator made a bad id: {e}"))
    }

    /// Adds a completed, unencrypted source snapshot of a new volume; returns its id.
    pub fn add_source(&self, region: &str, size_gib: u64, tags: &[(&str, &str)]) -> SnapshotId {
        self.add_snapshot(region, size_gib, SnapshotState::Completed, false, tags)
    }

    /// Adds a completed source snapshot of `volume`, started `age` ago on the simulated
    /// calendar: the daily snapshots of one volume, say.
    pub fn add_volume_snapshot(
        &self,
        region: &str,
        volume: &str,
        size_gib: u64,
        age: Duration,
        tags: &[(&str, &str)],
    ) -> SnapshotId {
        let id = self.add_source(region, size_gib, tags);
        let mut world = self.lock();
        let start_time = world.wall_at(Instant::now()) - age;
        world.volumes.insert(volume.to_owned());
        if let Some(s) = world.regions.get_mut(region).and_then(|r| r.snapshots.get_mut(&id)) {
            s.volume_id = Some(volume.to_owned());
            s.start_time = start_time;
        }
        id
    }

    /// Adds a completed source snapshot that EC2 reports with no volume (its placeholder
    /// `vol-ffffffff`: a snapshot that is itself a copy), started `age` ago.
    pub fn add_snapshot_without_volume(
        &self,
        region: &str,
        size_gib: u64,
        age: Duration,
        tags: &[(&str, &str)],
    ) -> SnapshotId {
        let id = self.add_source(region, size_gib, tags);
        let mut world = self.lock();
        let start_time = world.wall_at(Instant::now()) - age;
        if let Some(s) = world.regions.get_mut(region).and_then(|r| r.snapshots.get_mut(&id)) {
            s.volume_id = None;
            s.start_time = start_time;
        }
        id
    }

    /// Deletes a volume: DescribeVolumes no longer lists it. Its snapshots stay.
    pub fn remove_volume(&self, volume: &str) {
        self.lock().volumes.remove(volume);
    }

    /// Creates an enabled symmetric KMS key in `region`, with `alias` (`alias/NAME`) when
    /// given; returns its ARN, which copies under it report.
    pub fn add_key(&self, region: &str, alias: Option<&str>) -> String {
        let mut world = self.lock();
        let id = format!("{:08x}-0000-4000-8000-{:012x}", world.keys.len() + 1, world.keys.len() + 1);
        let (name_region, account) = region_and_account(region);
        let arn = format!("arn:aws:kms:{name_region}:{account}:key/{id}");
        let aliases = alias.map(|a| vec![a.to_owned()]).unwrap_or_default();
        world.keys.push(SimulatedKey {
            region: region.to_owned(),
            arn: arn.clone(),
            id,
            aliases,
            state: "Enabled".to_owned(),
            spec: SYMMETRIC.to_owned(),
        });
        arn
    }

    /// Points `alias` in `region` at the key `arn` (UpdateAlias), away from any other.
    pub fn move_alias(&self, region: &str, alias: &str, arn: &str) {
        let mut world = self.lock();
        for key in world.keys.iter_mut().filter(|k| k.region == region) {
            key.aliases.retain(|a| a != alias);
            if key.arn == arn {
                key.aliases.push(alias.to_owned());
            }
        }
    }

    /// Sets the state DescribeKey reports for the key `arn` (`Disabled`, `PendingDeletion`).
    pub fn set_key_state(&self, arn: &str, state: &str) {
        if let Some(key) = self.lock().keys.iter_mut().find(|k| k.arn == arn) {
            key.state = state.to_owned();
        }
    }

    /// Sets the key spec DescribeKey reports for the key `arn` (`RSA_2048`, `HMAC_256`, …).
    pub fn set_key_spec(&self, arn: &str, spec: &str) {
        if let Some(key) = self.lock().keys.iter_mut().find(|k| k.arn == arn) {
            key.spec = spec.to_owned();
        }
    }

    /// The next DescribeKey calls fail with `errors`, one each, in order.
    pub fn fail_key_lookups(&self, errors: Vec<StoreError>) {
        self.lock().key_lookup_faults = errors;
    }

    /// The KmsKeyId sent with each CopySnapshot that made a copy (`None`: none), in order.
    pub fn kms_keys_sent(&self) -> Vec<Option<String>> {
        self.lock().kms_keys_sent.clone()
    }

    /// From now on CopySnapshot ignores KmsKeyId, as EC2 was reported to without a
    /// PresignedUrl: copies go under the region's default EBS key.
    pub fn ignore_requested_keys(&self) {
        self.lock().keys_ignored = true;
    }

    /// The ARN EC2 would report for a copy in `region` encrypted under the region's default
    /// EBS key.
    pub fn default_key_arn(region: &str) -> String {
        let (region, account) = region_and_account(region);
        format!("arn:aws:kms:{region}:{account}:key/aws-managed-ebs-key")
    }

    /// Registers an AMI whose block device mappings use `snapshot`.
    pub fn register_image(&self, image_id: &str, snapshot: &SnapshotId) {
        self.lock().images.insert(snapshot.clone(), image_id.to_owned());
    }

    /// Every DescribeVolumes (`volumes`) or DescribeImages (`images`) gets no definite answer.
    pub fn fail_volume_looks(&self, fail: bool) {
        self.lock().volume_looks_fail = fail;
    }

    pub fn fail_image_looks(&self, fail: bool) {
        self.lock().image_looks_fail = fail;
    }

    /// After `skip` more looks for sources (DescribeSnapshots in the source region: by
    /// filters, or by id), the next `count` get no definite answer.
    pub fn fail_source_looks(&self, skip: usize, count: usize) {
        let mut world = self.lock();
        world.source_looks_before_failure = skip;
        world.failing_source_looks = count;
    }

    /// The next DeleteSnapshot calls are answered with `faults`, one each, in order.
    pub fn fault_next_deletes(&self, faults: &[DeleteFault]) {
        self.lock().delete_faults = faults.to_vec();
    }

    /// Removes a snapshot as someone else would (Data Lifecycle Manager pruning the source
    /// region, a person), whatever its tags: its copies become orphans.
    pub fn remove_snapshot(&self, region: &str, id: &SnapshotId) {
        if let Some(state) = self.lock().regions.get_mut(region) {
            state.snapshots.remove(id);
            state.order.retain(|other| other != id);
            state.maybe_pending.retain(|other| other != id);
        }
    }

    /// DeleteSnapshot of `id` is refused with `code` until [`allow_delete`](Self::allow_delete),
    /// as EC2 refuses a snapshot an AMI uses (`InvalidSnapshot.InUse`) or a locked one.
    pub fn refuse_delete(&self, id: &SnapshotId, code: &str, message: &str) {
        self.lock().refused_deletes.insert(id.clone(), (code.to_owned(), message.to_owned()));
    }

    pub fn allow_delete(&self, id: &SnapshotId) {
        self.lock().refused_deletes.remove(id);
    }

    /// How long after `since` the last copy carrying the tracking tags in `region` started.
    pub fn last_copy_started_after(&self, region: &str, since: Instant) -> Duration {
        let world = self.lock();
        let Some(state) = world.regions.get(region) else { return Duration::ZERO };
        state
            .in_order()
            .filter(|s| find_tag(&s.tags, SOURCE_SNAPSHOT_TAG).is_some())
            .map(|s| s.started.saturating_duration_since(since))
            .max()
            .unwrap_or_default()
    }

    /// How long after `since` the first copy this function made in `region` since then started.
    pub fn first_copy_started_after(&self, region: &str, since: Instant) -> Duration {
        let world = self.lock();
        let Some(state) = world.regions.get(region) else { return Duration::ZERO };
        state
            .in_order()
            .filter(|s| find_tag(&s.tags, SOURCE_SNAPSHOT_TAG).is_some() && s.started >= since)
            .map(|s| s.started.saturating_duration_since(since))
            .min()
            .unwrap_or_default()
    }

    /// Snapshots DeleteSnapshot removed, in order.
    pub fn deleted(&self) -> Vec<SnapshotId> {
        self.lock().deleted.clone()
    }

    /// DeleteSnapshot calls that found the snapshot still pending (the engine must make none).
    pub fn pending_deletes(&self) -> usize {
        self.lock().pending_deletes
    }

    /// The simulated calendar's now.
    pub fn now(&self) -> SystemTime {
        self.lock().wall_at(Instant::now())
    }

    /// Adds a source snapshot in any state.
    pub fn add_snapshot(
        &self,
        region: &str,
        size_gib: u64,
        state: SnapshotState,
        encrypted: bool,
        tags: &[(&str, &str)],
    ) -> SnapshotId {
        let mut world = self.lock();
        let id = Self::new_id(&mut world);
        world.next_volume += 1;
        let volume_id = format!("vol-{:017x}", 0x7_0000_0000_0000u64 + world.next_volume);
        world.volumes.insert(volume_id.clone());
        let now = Instant::now();
        let snapshot = Snapshot {
            id: id.clone(),
            size_gib,
            encrypted,
            kms_key_id: None,
            tags: tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect(),
            fixed_state: Some(state),
            archived: false,
            started: now,
            stall: Duration::ZERO,
            start_time: world.wall_at(now),
            duration: Duration::ZERO,
            fails_with: None,
            volume_id: Some(volume_id),
            shared_with: HashSet::new(),
        };
        world.regions.entry(region.to_owned()).or_default().insert(snapshot);
        id
    }

    /// Encrypts a source under `key_arn` (as it was taken of an encrypted volume); the
    /// region's default key ([`Self::default_key_arn`]) is AWS managed.
    pub fn encrypt_source(&self, region: &str, id: &SnapshotId, key_arn: &str) {
        if let Some(s) = self.lock().regions.get_mut(region).and_then(|r| r.snapshots.get_mut(id)) {
            s.encrypted = true;
            s.kms_key_id = Some(key_arn.to_owned());
        }
    }

    /// The accounts a source is shared with now, sorted.
    pub fn shares_of(&self, region: &str, id: &SnapshotId) -> Vec<String> {
        let world = self.lock();
        let shared = world.regions.get(region).and_then(|r| r.snapshots.get(id)).map(|s| s.shared_with.clone());
        let mut accounts: Vec<String> = shared.unwrap_or_default().into_iter().collect();
        accounts.sort();
        accounts
    }

    /// Shares a source with `account` as someone else would (not this function).
    pub fn share_by_hand(&self, region: &str, id: &SnapshotId, account: &str) {
        if let Some(s) = self.lock().regions.get_mut(region).and_then(|r| r.snapshots.get_mut(id)) {
            s.shared_with.insert(account.to_owned());
        }
    }

    /// CopySnapshot calls into another account of a source not shared with it (EC2 answers
    /// them InvalidSnapshot.NotFound).
    pub fn unshared_copies(&self) -> usize {
        self.lock().unshared_copies
    }

    /// Sets a snapshot's StartTime (by default, the wall-clock moment it was added).
    pub fn set_start_time(&self, region: &str, id: &SnapshotId, start_time: SystemTime) {
        if let Some(s) = self.lock().regions.get_mut(region).and_then(|r| r.snapshots.get_mut(id)) {
            s.start_time = start_time;
        }
    }

    /// Marks a source as moved to the archive tier.
    pub fn archive(&self, region: &str, id: &SnapshotId) {
        if let Some(s) = self.lock().regions.get_mut(region).and_then(|r| r.snapshots.get_mut(id)) {
            s.archived = true;
        }
    }

    /// Adds `count` pending copies made by someone else, each taking `duration`.
    pub fn add_foreign_pending(&self, region: &str, count: usize, duration: Duration) {
        let mut world = self.lock();
        for _ in 0..count {
            let id = Self::new_id(&mut world);
            let now = Instant::now();
            let snapshot = Snapshot {
                id: id.clone(),
                size_gib: 100,
                encrypted: false,
                kms_key_id: None,
                tags: Vec::new(),
                fixed_state: None,
                archived: false,
                started: now,
                stall: Duration::ZERO,
                start_time: world.wall_at(now),
                duration,
                fails_with: None,
                volume_id: None,
                shared_with: HashSet::new(),
            };
            let region = world.regions.entry(region.to_owned()).or_default();
            region.insert(snapshot);
            region.maybe_pending.push(id);
        }
    }

    /// Copies of `source` will end in `error` with `message` (as EC2 does for an inaccessible key).
    pub fn fail_copies_of(&self, source: &SnapshotId, message: &str) {
        self.lock().failing_sources.insert(source.clone(), message.to_owned());
    }

    /// The next CopySnapshot of `source` is refused with `code`.
    pub fn refuse_next_copy_of(&self, source: &SnapshotId, code: &str, message: &str) {
        let fault = StartFault::Refused { code: code.to_owned(), message: message.to_owned() };
        self.lock().start_faults.entry(source.clone()).or_default().push(fault);
    }

    /// The next CopySnapshot of `source` gets no answer; `created` says whether EC2 made the copy.
    pub fn lose_answer_to_next_copy_of(&self, source: &SnapshotId, created: bool) {
        self.lock().start_faults.entry(source.clone()).or_default().push(StartFault::Unanswered { created });
    }

    /// The next `count` CopySnapshot calls are throttled beyond the SDK's retries.
    pub fn throttle_next_starts(&self, count: usize) {
        self.lock().throttled_starts = count;
    }

    /// Every CopySnapshot is denied.
    pub fn deny_copies(&self) {
        self.lock().deny_starts = true;
    }

    /// CopySnapshot of `source` is denied with `message` (AccessDenied, a disabled key, …).
    pub fn deny_copies_of(&self, source: &SnapshotId, message: &str) {
        self.lock().denied_sources.insert(source.clone(), message.to_owned());
    }

    /// Every DescribeSnapshots is denied, as for a role without `ec2:DescribeSnapshots`.
    /// Denies every call in `region` from now on.
    pub fn deny_region(&self, region: &str) {
        self.lock().denied_regions.insert(region.to_owned());
    }

    pub fn deny_looks(&self) {
        self.lock().deny_looks = true;
    }

    /// The next `count` DescribeSnapshots calls (looks, polls, counts) are throttled beyond the
    /// SDK's retries.
    pub fn throttle_next_looks(&self, count: usize) {
        self.lock().throttled_looks = count;
    }

    pub fn calls(&self) -> CallCounts {
        self.lock().calls
    }

    /// How often CopySnapshot was answered ResourceLimitExceeded.
    pub fn no_slot_answers(&self) -> usize {
        self.lock().no_slot_answers
    }

    /// The most copies made by this function pending at once in `region`, at any moment.
    pub fn max_tracked_pending(&self, region: &str) -> usize {
        self.lock().max_tracked_pending.get(region).copied().unwrap_or(0)
    }

    /// Every copy this function made in `region` (any state), in creation order.
    pub fn tracked_copies(&self, region: &str) -> Vec<CopyStatus> {
        let now = Instant::now();
        let world = self.lock();
        let Some(state) = world.regions.get(region) else { return Vec::new() };
        state.in_order().filter_map(|s| s.copy_status(now)).collect()
    }

    /// How long each copy this function made in `region` takes from its start to completion
    /// (stall included), in creation order: what a schedule's lower bound is computed from.
    pub fn copy_durations(&self, region: &str) -> Vec<Duration> {
        let world = self.lock();
        let Some(state) = world.regions.get(region) else { return Vec::new() };
        state
            .in_order()
            .filter(|s| s.fixed_state.is_none() && find_tag(&s.tags, SOURCE_SNAPSHOT_TAG).is_some())
            .map(|s| s.stall + s.duration)
            .collect()
    }

    /// The tags on snapshot `id` in `region`.
    pub fn tags_of(&self, region: &str, id: &SnapshotId) -> Vec<Tag> {
        let world = self.lock();
        world.regions.get(region).and_then(|r| r.snapshots.get(id)).map(|s| s.tags.clone()).unwrap_or_default()
    }

    fn start_copy_now(&self, spec: &CopySpec) -> Result<SnapshotId, StoreError> {
        let now = Instant::now();
        let mut world = self.lock();
        let world = &mut *world;
        world.calls.start_copy += 1;
        world.calls.requests += 1;
        world.region_allowed(spec.target.region.as_str())?;
        if world.deny_starts {
            return Err(StoreError::AccessDenied(
                "UnauthorizedOperation: You are not authorized to perform this operation.".to_owned(),
            ));
        }
        if world.throttled_starts > 0 {
            world.throttled_starts -= 1;
            return Err(StoreError::Throttled("RequestLimitExceeded: Request limit exceeded.".to_owned()));
        }
        if let Some(message) = world.denied_sources.get(&spec.source_id) {
            return Err(StoreError::AccessDenied(message.clone()));
        }
        let fault = world
            .start_faults
            .get_mut(&spec.source_id)
            .and_then(|faults| if faults.is_empty() { None } else { Some(faults.remove(0)) });
        if let Some(StartFault::Refused { code, message }) = &fault {
            return Err(StoreError::Refused { code: code.clone(), message: message.clone() });
        }
        let source = world
            .regions
            .get(spec.source_region.as_str())
            .and_then(|r| r.snapshots.get(&spec.source_id))
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("The snapshot '{}' does not exist.", spec.source_id)))?;
        // Another account sees the source only once it is shared with it, as EC2 answers.
        if let Some(account) = spec.target.account()
            && !source.shared_with.contains(account)
        {
            world.unshared_copies += 1;
            return Err(StoreError::NotFound(format!("The snapshot '{}' does not exist.", spec.source_id)));
        }
        if source.fixed_state != Some(SnapshotState::Completed) {
            return Err(StoreError::NotReady(format!("Snapshot '{}' is not in a completed state", spec.source_id)));
        }
        let limit = world.region_copy_limit;
        let target = world.regions.entry(spec.target.key()).or_default();
        if target.pending_now(now).len() >= limit {
            world.no_slot_answers += 1;
            return Err(StoreError::NoSlot(format!(
                "ResourceLimitExceeded: You have reached the limit of {limit} concurrent snapshot copies"
            )));
        }
        if matches!(fault, Some(StartFault::Unanswered { created: false })) {
            return Err(StoreError::Unknown("timeout waiting for CopySnapshot's answer".to_owned()));
        }
        let id = Self::new_id(world);
        let (mut stall, speed) = match world.irregularity {
            Some(irregular) => {
                let draw = world.next_id.wrapping_mul(2);
                let stall = irregular.max_stall.mul_f64(spread(draw));
                (stall, irregular.slowest + (irregular.fastest - irregular.slowest) * spread(draw + 1))
            }
            None => (Duration::ZERO, 1.0),
        };
        let mut duration = world.model.duration(source.size_gib).div_f64(speed);
        if let Some(quiet) = world.quiet_start {
            // Its own draw, apart from the irregularity's.
            let factor = quiet.shortest + (quiet.longest - quiet.shortest) * spread(world.next_id ^ 0x5157_4945_5400);
            let total = duration.mul_f64(factor);
            let quiet_phase = total.mul_f64(quiet.quiet_share.clamp(0.0, 1.0));
            stall += quiet_phase;
            duration = total - quiet_phase;
        }
        let encrypted = spec.encrypted || source.encrypted || world.encryption_by_default;
        let target = spec.target.key();
        let target = target.as_str();
        world.kms_keys_sent.push(spec.kms_key_id.clone());
        let kms_key_id = encrypted.then(|| {
            // EC2 reports the key's ARN whatever form was sent; a key the account does not
            // have is reported as sent (and a test that uses one expects the copy to fail).
            match spec.kms_key_id.as_deref().filter(|_| !world.keys_ignored) {
                Some(key) => world.key(target, key).map_or_else(|| key.to_owned(), |k| k.arn.clone()),
                None => Self::default_key_arn(target),
            }
        });
        let mut tags = spec.tags.clone();
        if spec.target.role.is_some() && find_tag(&tags, SOURCE_ACCOUNT_TAG).is_none() {
            // As the SDK store tags a copy in another account.
            tags.push(Tag::new(SOURCE_ACCOUNT_TAG, ACCOUNT));
        }
        let copy = Snapshot {
            id: id.clone(),
            size_gib: source.size_gib,
            encrypted,
            kms_key_id,
            tags,
            fixed_state: None,
            archived: false,
            started: now,
            stall,
            start_time: world.wall_at(now),
            duration,
            fails_with: world.failing_sources.get(&spec.source_id).cloned(),
            volume_id: None,
            shared_with: HashSet::new(),
        };
        let target_name = spec.target.key();
        let target = world.regions.entry(target_name.clone()).or_default();
        target.insert(copy);
        target.maybe_pending.push(id.clone());
        let tracked_pending =
            target.pending_now(now).iter().filter(|s| find_tag(&s.tags, SOURCE_SNAPSHOT_TAG).is_some()).count();
        let max = world.max_tracked_pending.entry(target_name).or_default();
        *max = (*max).max(tracked_pending);
        if matches!(fault, Some(StartFault::Unanswered { created: true })) {
            return Err(StoreError::Unknown("timeout waiting for CopySnapshot's answer".to_owned()));
        }
        Ok(id)
    }

    /// CreateTags (`value`) or DeleteTags (`None`) of one tag on a snapshot in `region`.
    async fn change_source_tag(
        &self,
        region: &Region,
        source: &SnapshotId,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        self.change_source(region, source, |snapshot| {
            snapshot.tags.retain(|t| t.key != key);
            if let Some(value) = value {
                snapshot.tags.push(Tag::new(key, value));
            }
        })
        .await
    }

    /// ModifySnapshotAttribute `createVolumePermission` add or remove, for one account.
    async fn change_share(
        &self,
        region: &Region,
        source: &SnapshotId,
        account: &str,
        add: bool,
    ) -> Result<(), StoreError> {
        self.change_source(region, source, |snapshot| {
            if add {
                snapshot.shared_with.insert(account.to_owned());
            } else {
                snapshot.shared_with.remove(account);
            }
        })
        .await
    }

    /// One call that changes a snapshot of this account in `region` (sharing, tagging).
    async fn change_source(
        &self,
        region: &Region,
        source: &SnapshotId,
        change: impl FnOnce(&mut Snapshot),
    ) -> Result<(), StoreError> {
        self.call_latency().await;
        let mut world = self.lock();
        world.calls.requests += 1;
        world.calls.sharing += 1;
        world.region_allowed(region.as_str())?;
        let snapshot = world.regions.get_mut(region.as_str()).and_then(|r| r.snapshots.get_mut(source));
        change(snapshot.ok_or_else(|| StoreError::NotFound(format!("The snapshot '{source}' does not exist.")))?);
        Ok(())
    }

    async fn call_latency(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }
}

/// Whether `snapshot` in `place` is this account's copy, as the SDK store tells: in another
/// account, only copies tagged with this account as their source account; here, only copies
/// not tagged with any (another account's deployment made those into this one).
fn own_copy_in(place: &Place, snapshot: &Snapshot) -> bool {
    let account = find_tag(&snapshot.tags, SOURCE_ACCOUNT_TAG);
    if place.role.is_some() { account == Some(ACCOUNT) } else { account.is_none() }
}

/// Every snapshot in `state` tagged as this function's copy from `source_region`.
fn copies_from<'a>(state: &'a RegionState, source_region: &'a Region) -> impl Iterator<Item = &'a Snapshot> {
    state.in_order().filter(move |s| {
        find_tag(&s.tags, SOURCE_REGION_TAG) == Some(source_region.as_str())
            && find_tag(&s.tags, SOURCE_SNAPSHOT_TAG).is_some()
    })
}

fn matches_filters(snapshot: &Snapshot, filters: &[crate::store::Filter]) -> Result<bool, StoreError> {
    for filter in filters {
        let hit = if let Some(key) = filter.name.strip_prefix("tag:") {
            find_tag(&snapshot.tags, key).is_some_and(|v| filter.values.iter().any(|want| want == v))
        } else if filter.name == "tag-key" {
            snapshot.tags.iter().any(|t| filter.values.contains(&t.key))
        } else if filter.name == "snapshot-id" {
            filter.values.iter().any(|v| v == snapshot.id.as_str())
        } else if filter.name == "volume-id" {
            snapshot.volume_id.as_ref().is_some_and(|volume| filter.values.contains(volume))
        } else {
            return Err(StoreError::Refused {
                code: "InvalidParameterValue".to_owned(),
                message: format!("The filter '{}' is invalid", filter.name),
            });
        };
        if !hit {
            return Ok(false);
        }
    }
    Ok(true)
}

impl SnapshotStore for SimulatedEc2 {
    fn slot_ledger(&self) -> Option<&impl SlotLedger> {
        self.ledger.as_ref()
    }

    async fn describe_sources(
        &self,
        region: &Region,
        selector: &SourceSelector,
    ) -> Result<Vec<SourceSnapshot>, StoreError> {
        self.call_latency().await;
        let now = Instant::now();
        let mut world = self.lock();
        world.calls.describe_sources += 1;
        world.throttle_look(region.as_str())?;
        if world.source_looks_before_failure > 0 {
            world.source_looks_before_failure -= 1;
        } else if world.failing_source_looks > 0 {
            world.failing_source_looks -= 1;
            return Err(StoreError::Unknown("timeout waiting for DescribeSnapshots' answer".to_owned()));
        }
        let Some(state) = world.regions.get(region.as_str()) else { return Ok(Vec::new()) };
        let to_source = |s: &Snapshot| s.source_at(now);
        let (found, values) = match selector {
            SourceSelector::Ids(ids) => {
                (ids.iter().filter_map(|id| state.snapshots.get(id)).map(to_source).collect::<Vec<_>>(), ids.len())
            }
            SourceSelector::Filters(filters) => {
                let mut found = Vec::new();
                for snapshot in state.in_order() {
                    if matches_filters(snapshot, filters)? {
                        found.push(to_source(snapshot));
                    }
                }
                (found, 1)
            }
        };
        let requests = describe_requests(values, found.len());
        world.calls.requests += requests;
        Ok(found)
    }

    async fn find_copies(
        &self,
        target: &Place,
        source_region: &Region,
        source_ids: &[SnapshotId],
    ) -> Result<Vec<CopyStatus>, StoreError> {
        self.call_latency().await;
        let now = Instant::now();
        let mut world = self.lock();
        world.calls.find_copies += 1;
        world.throttle_look(target.region.as_str())?;
        if world.finds_before_loss > 0 {
            world.finds_before_loss -= 1;
        } else if world.unanswered_finds > 0 {
            world.unanswered_finds -= 1;
            return Err(StoreError::Unknown("timeout waiting for DescribeSnapshots' answer".to_owned()));
        }
        let wanted: HashSet<&str> = source_ids.iter().map(SnapshotId::as_str).collect();
        let Some(state) = world.regions.get(&target.key()) else { return Ok(Vec::new()) };
        let found: Vec<CopyStatus> = state
            .in_order()
            .filter(|s| s.listed_at(now, world.visibility_lag) && is_copy_from(&s.tags, source_region, &wanted))
            .filter(|s| own_copy_in(target, s))
            .filter_map(|s| s.copy_status(now))
            .collect();
        // More than 200 ids: the store lists every copy from the region in one paginated call.
        let requests = if source_ids.len() > FILTER_VALUES {
            describe_requests(1, copies_from(state, source_region).count())
        } else {
            describe_requests(source_ids.len(), found.len())
        };
        world.calls.requests += requests;
        Ok(found)
    }

    async fn list_copies(&self, target: &Place, source_region: &Region) -> Result<Vec<CopyStatus>, StoreError> {
        self.call_latency().await;
        let now = Instant::now();
        let mut world = self.lock();
        world.calls.list_copies += 1;
        world.throttle_look(target.region.as_str())?;
        let found: Vec<CopyStatus> = match world.regions.get(&target.key()) {
            Some(state) => copies_from(state, source_region)
                .filter(|s| s.listed_at(now, world.visibility_lag) && own_copy_in(target, s))
                .filter_map(|s| s.copy_status(now))
                .collect(),
            None => Vec::new(),
        };
        world.calls.requests += describe_requests(1, found.len());
        Ok(found)
    }

    async fn list_pending_copies(&self, target: &Place) -> Result<Vec<CopyStatus>, StoreError> {
        self.call_latency().await;
        let now = Instant::now();
        let mut world = self.lock();
        let world = &mut *world;
        world.calls.list_pending_copies += 1;
        world.throttle_look(target.region.as_str())?;
        let lag = world.visibility_lag;
        let found: Vec<CopyStatus> = match world.regions.get_mut(&target.key()) {
            Some(state) => state
                .pending_now(now)
                .into_iter()
                .filter(|s| s.listed_at(now, lag) && find_tag(&s.tags, SOURCE_SNAPSHOT_TAG).is_some())
                .filter(|s| own_copy_in(target, s))
                .filter_map(|s| s.copy_status(now))
                .collect(),
            None => Vec::new(),
        };
        world.calls.requests += describe_requests(1, found.len());
        Ok(found)
    }

    async fn start_copy(&self, spec: &CopySpec) -> Result<SnapshotId, StoreError> {
        // The copy is made when the call arrives; the answer takes the latency to come back,
        // so an invocation cut off meanwhile leaves a copy it never heard of, as in AWS.
        let answer = self.start_copy_now(spec);
        let mut orphan = OrphanGuard { ec2: self, armed: answer.is_ok() };
        self.call_latency().await;
        orphan.armed = false;
        answer
    }

    async fn describe_copies(&self, target: &Place, copy_ids: &[SnapshotId]) -> Result<Vec<CopyStatus>, StoreError> {
        self.call_latency().await;
        let now = Instant::now();
        let mut world = self.lock();
        world.calls.describe_copies += 1;
        world.throttle_look(target.region.as_str())?;
        world.calls.requests += copy_ids.len().div_ceil(FILTER_VALUES).max(1);
        let Some(state) = world.regions.get(&target.key()) else { return Ok(Vec::new()) };
        Ok(copy_ids
            .iter()
            .filter_map(|id| state.snapshots.get(id))
            .filter(|s| s.listed_at(now, world.visibility_lag))
            .filter_map(|s| s.copy_status(now))
            .collect())
    }

    async fn delete_copy(&self, target: &Place, copy_id: &SnapshotId) -> Result<DeleteOutcome, StoreError> {
        self.call_latency().await;
        let now = Instant::now();
        let mut world = self.lock();
        let world = &mut *world;
        world.calls.delete_copy += 1;
        world.calls.requests += 1;
        let fault = if world.delete_faults.is_empty() { None } else { Some(world.delete_faults.remove(0)) };
        match fault {
            Some(DeleteFault::Throttled) => {
                return Err(StoreError::Throttled("RequestLimitExceeded: Request limit exceeded.".to_owned()));
            }
            Some(DeleteFault::Denied) => {
                return Err(StoreError::AccessDenied(format!(
                    "UnauthorizedOperation: You are not authorized to perform: ec2:DeleteSnapshot on {copy_id}"
                )));
            }
            Some(DeleteFault::Unanswered { deleted: false }) => {
                return Err(StoreError::Unknown("timeout waiting for DeleteSnapshot's answer".to_owned()));
            }
            Some(DeleteFault::GoneBefore) => {
                if let Some(state) = world.regions.get_mut(&target.key()) {
                    state.snapshots.remove(copy_id);
                    state.order.retain(|id| id != copy_id);
                }
            }
            Some(DeleteFault::Unanswered { deleted: true }) | None => {}
        }
        let Some(state) = world.regions.get_mut(&target.key()) else { return Ok(DeleteOutcome::AlreadyGone) };
        // InvalidSnapshot.NotFound: already gone.
        let Some(snapshot) = state.snapshots.get(copy_id) else { return Ok(DeleteOutcome::AlreadyGone) };
        // The deployed role may delete only snapshots carrying the tracking tags.
        if find_tag(&snapshot.tags, SOURCE_SNAPSHOT_TAG).is_none()
            || find_tag(&snapshot.tags, SOURCE_REGION_TAG).is_none()
        {
            return Err(StoreError::AccessDenied(format!(
                "UnauthorizedOperation: not authorized to delete {copy_id}, which lacks the tracking tags"
            )));
        }
        if let Some((code, message)) = world.refused_deletes.get(copy_id) {
            return Err(StoreError::Refused { code: code.clone(), message: message.clone() });
        }
        if snapshot.is_pending_at(now) {
            world.pending_deletes += 1;
        }
        state.snapshots.remove(copy_id);
        state.order.retain(|id| id != copy_id);
        state.maybe_pending.retain(|id| id != copy_id);
        world.deleted.push(copy_id.clone());
        if matches!(fault, Some(DeleteFault::Unanswered { deleted: true })) {
            return Err(StoreError::Unknown("timeout waiting for DeleteSnapshot's answer".to_owned()));
        }
        Ok(DeleteOutcome::Deleted)
    }

    async fn existing_volumes(&self, _region: &Region, volume_ids: &[String]) -> Result<HashSet<String>, StoreError> {
        self.call_latency().await;
        let mut world = self.lock();
        world.calls.describe_volumes += 1;
        world.calls.requests += volume_ids.len().div_ceil(FILTER_VALUES).max(1);
        if world.volume_looks_fail {
            return Err(StoreError::Unknown("timeout waiting for DescribeVolumes' answer".to_owned()));
        }
        Ok(volume_ids.iter().filter(|v| world.volumes.contains(*v)).cloned().collect())
    }

    async fn images_using(
        &self,
        _place: &Place,
        snapshot_ids: &[SnapshotId],
    ) -> Result<HashMap<SnapshotId, String>, StoreError> {
        self.call_latency().await;
        let mut world = self.lock();
        world.calls.describe_images += 1;
        world.calls.requests += snapshot_ids.len().div_ceil(FILTER_VALUES).max(1);
        if world.image_looks_fail {
            return Err(StoreError::Unknown("timeout waiting for DescribeImages' answer".to_owned()));
        }
        Ok(snapshot_ids.iter().filter_map(|id| world.images.get(id).map(|ami| (id.clone(), ami.clone()))).collect())
    }

    async fn describe_key(&self, place: &Place, key: &str) -> Result<KeyDescription, StoreError> {
        self.call_latency().await;
        let mut world = self.lock();
        world.calls.describe_key += 1;
        if !world.key_lookup_faults.is_empty() {
            return Err(world.key_lookup_faults.remove(0));
        }
        if key == Self::default_key_arn(&place.key()) {
            let arn = key.to_owned();
            return Ok(KeyDescription {
                arn,
                state: "Enabled".to_owned(),
                spec: SYMMETRIC.to_owned(),
                aws_managed: true,
            });
        }
        match world.key(&place.key(), key) {
            Some(found) => Ok(KeyDescription {
                arn: found.arn.clone(),
                state: found.state.clone(),
                spec: found.spec.clone(),
                aws_managed: false,
            }),
            None => Err(StoreError::NotFound(format!("NotFoundException: Key '{key}' does not exist"))),
        }
    }

    async fn shared_with(&self, region: &Region, source: &SnapshotId) -> Result<Vec<String>, StoreError> {
        self.call_latency().await;
        let mut world = self.lock();
        world.calls.requests += 1;
        world.calls.sharing += 1;
        world.region_allowed(region.as_str())?;
        let snapshot = world.regions.get(region.as_str()).and_then(|r| r.snapshots.get(source));
        let snapshot =
            snapshot.ok_or_else(|| StoreError::NotFound(format!("The snapshot '{source}' does not exist.")))?;
        let mut accounts: Vec<String> = snapshot.shared_with.iter().cloned().collect();
        accounts.sort();
        Ok(accounts)
    }

    async fn sources_shared_with(&self, region: &Region, account: &str) -> Result<Vec<SourceSnapshot>, StoreError> {
        self.call_latency().await;
        let now = Instant::now();
        let mut world = self.lock();
        world.calls.requests += 1;
        world.calls.sharing += 1;
        world.throttle_look(region.as_str())?;
        let Some(state) = world.regions.get(region.as_str()) else { return Ok(Vec::new()) };
        Ok(state.in_order().filter(|s| s.shared_with.contains(account)).map(|s| s.source_at(now)).collect())
    }

    async fn tag_source(&self, region: &Region, source: &SnapshotId, tag: &Tag) -> Result<(), StoreError> {
        self.change_source_tag(region, source, &tag.key, Some(&tag.value)).await
    }

    async fn untag_source(&self, region: &Region, source: &SnapshotId, key: &str) -> Result<(), StoreError> {
        self.change_source_tag(region, source, key, None).await
    }

    async fn share(&self, region: &Region, source: &SnapshotId, account: &str) -> Result<(), StoreError> {
        self.change_share(region, source, account, true).await
    }

    async fn unshare(&self, region: &Region, source: &SnapshotId, account: &str) -> Result<(), StoreError> {
        self.change_share(region, source, account, false).await
    }

    fn wall_clock(&self) -> SystemTime {
        self.now()
    }
}

/// Counts a CopySnapshot whose caller was cut off after EC2 made the copy, before the answer
/// arrived: the copy exists, and the engine never heard of it.
struct OrphanGuard<'a> {
    ec2: &'a SimulatedEc2,
    armed: bool,
}

impl Drop for OrphanGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.ec2.lock().orphaned_starts += 1;
        }
    }
}
