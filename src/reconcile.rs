//! The engine: converges the target region towards "every source has a copy" and reports where
//! things stand. Look (sources, and copies an earlier invocation made, found by their tags),
//! start (largest first, within `pending_limit`), wait (one poll per round, as long as progress
//! says is useful, never past the deadline), report. Generic over [`SnapshotStore`]; knows no
//! SDK. Driven by tokio's clock, so tests run it on paused time. What it does as it goes is
//! told to an [`Observer`]; [`plan`] is the look alone, answered as a [`Plan`].
//!
//! With a retention ([`crate::retention`]) the look also judges every copy this request made
//! from the source region: sources out of retention are skipped, not copied, and their copies
//! (and, opted in, copies whose source is gone past a grace) are deleted in the time the run
//! would otherwise spend waiting, never past the deadline. A dry run is the look alone.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::CopySnapshotsError;
use crate::ids::{SnapshotId, shorten};
use crate::ownership::{AskedEncryption, Claim, same_ask_and_key};
use crate::plan::{CopyTimeModel, Plan, PlannedDeletion};
use crate::poll_timing::{self, CompletionEstimate, WaitContext};
use crate::progress::{LogObserver, LookedSource, Observer, RunEvent, SourceStatus, StopSignal};
use crate::request::CopyRequest;
use crate::response::{
    CopyReport, DeletedCopy, DeletionBreaker, FailureReport, NotDeletedCopy, RecoveryPoint, RemovedCopy, Response,
    SkippedSource, plural,
};
use crate::retention::{self, Member};
use crate::slots::{self, LedgerError, LedgerState, ReserveError, SlotKey, SlotLedger, Version};
use crate::store::{
    CopySpec, CopyStatus, DeleteOutcome, ENCRYPTION_TAG, RESERVED_TAG_PREFIX, SOURCE_REGION_TAG, SOURCE_SNAPSHOT_TAG,
    SOURCE_START_TIME_TAG, SOURCE_VOLUME_TAG, SnapshotState, SnapshotStore, SourceSelector, SourceSnapshot, StoreError,
    Tag, format_start_time,
};
use crate::timeline::{Timeline, jittered};

/// The deletion breaker holds a run that would delete more than this many copies …
pub const BREAKER_MIN_DELETIONS: usize = 20;
/// … and more than 1/this of the copies it manages.
pub const BREAKER_SHARE_DENOMINATOR: usize = 4;
/// How a source without a volume names its group of one in [`volume_group`].
const SOURCE_GROUP_PREFIX: &str = "source:";

/// EC2's tag limit per snapshot.
const MAX_TAGS_PER_SNAPSHOT: usize = 50;
/// The most copies of one source that may end in `error` before the source is failed. Counted
/// from EC2 (the error copies stay), so the bound holds across invocations: a cause that
/// persists (a key policy, a deleted key) costs three copies, not one per round forever.
pub const MAX_ATTEMPTS: usize = 3;
/// How often an unsure start is looked up (backing off from the poll interval: 1, 2, 4, 8
/// intervals, 225 s at the default 15 s) before the source is started again. AWS advises
/// backing off for up to minutes before trusting a DescribeSnapshots that lacks a new copy.
pub const UNSURE_LOOKS: u32 = 4;

/// Time limits of one invocation.
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    /// The invocation's deadline (Lambda's `Context::deadline`); `None` runs until done.
    pub deadline: Option<Instant>,
    /// The shortest wait between two polls (`POLL_INTERVAL_SECONDS`).
    pub poll_interval: Duration,
    /// The longest wait between two polls (`MAX_POLL_INTERVAL_SECONDS`).
    pub max_poll_interval: Duration,
    /// The longest one store call may take (the SDK's operation timeout): after the look, no
    /// call starts unless it fits before the deadline.
    pub call_timeout: Duration,
}

/// Runs one invocation of `request` against `store`, logging what it does.
pub async fn reconcile<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    limits: RunLimits,
) -> Result<Response, CopySnapshotsError> {
    reconcile_observed(store, request, limits, &LogObserver, StopSignal::never()).await
}

/// Runs one invocation, telling `observer` what it does; once `stop` is set it makes no new
/// call and answers with what it got to (copies already started go on in EC2).
pub async fn reconcile_observed<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    limits: RunLimits,
    observer: &dyn Observer,
    stop: StopSignal,
) -> Result<Response, CopySnapshotsError> {
    if request.dry_run {
        let plan = plan_observed(store, request, CopyTimeModel::DEFAULT, observer).await?;
        return Ok(Response::dry_run(&plan, request.wait_for_completion));
    }
    let started = Instant::now();
    let timeline = Timeline::new(started, limits.deadline, limits.call_timeout);
    let mut run = Run::look(store, request, limits, timeline, observer, stop.clone()).await?;
    let mut stop = stop;
    // Starting copies may go on until the margin before the deadline; waiting also ends at
    // `max_wait_seconds`.
    let work_until = timeline.work_until();
    let wait_until = [work_until, request.max_wait.map(|max| started + max)].into_iter().flatten().min();
    loop {
        if stop.is_set() {
            break;
        }
        run.resolve_unsure().await?;
        // Second live copies found by the look, or by a look for an unsure start.
        run.remove_duplicates().await;
        run.start_what_fits(work_until).await?;
        if !run.work_left() {
            break;
        }
        let now = Instant::now();
        if wait_until.is_some_and(|until| now >= until) {
            break;
        }
        let mut wait = run.next_wait(now);
        if run.backing_off() {
            // Invocations throttled or refused a slot together come back apart, not in step.
            wait = jittered(wait);
        }
        let wake = now + wait;
        let wake = wait_until.map_or(wake, |until| wake.min(until));
        // Retention's deletions fill the wait for the next poll.
        run.prune(Some(wake)).await;
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = stop.wait() => {}
        }
        if stop.is_set() || !run.may_call() {
            break;
        }
        run.poll().await?;
    }
    // Copies the last poll saw finish, before the answer.
    run.release_slots().await;
    if stop.is_set() {
        observer.observe(RunEvent::Stopped);
    } else {
        // What is left of the deletions, while the work may go on; the next run continues.
        run.prune(work_until).await;
    }
    run.finish()
}

/// What `request` would do now, without copying or deleting anything: the look alone (one
/// DescribeSnapshots of the sources, one for their copies, and with a retention one by id for
/// sources its copies name that the first did not find), with the start order the engine would
/// use and the time it would take under `model`. A `dry_run` request is answered from it.
pub async fn plan<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    model: CopyTimeModel,
) -> Result<Plan, CopySnapshotsError> {
    plan_observed(store, request, model, &LogObserver).await
}

/// [`plan`], telling `observer` what the look found. With a retention, the plan also lists the
/// copies a run would delete (`delete`) and those it would delete later (`delete_later`).
pub async fn plan_observed<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    model: CopyTimeModel,
    observer: &dyn Observer,
) -> Result<Plan, CopySnapshotsError> {
    let call_timeout = crate::request::DEFAULT_CALL_TIMEOUT;
    let limits =
        RunLimits { deadline: None, poll_interval: Duration::ZERO, max_poll_interval: Duration::ZERO, call_timeout };
    let run =
        Run::look(store, request, limits, Timeline::unbounded(call_timeout), observer, StopSignal::never()).await?;
    let mut queue = run.queue.clone();
    let mut start_order = Vec::with_capacity(queue.len());
    while let Some((_, Reverse(i))) = queue.pop() {
        start_order.push(i);
    }
    Ok(Plan::new(
        request.source_region.to_string(),
        request.target_region.to_string(),
        request.pending_limit,
        &run.looked_sources(),
        &start_order,
        model,
    )
    .with_deletions(&run.planned_deletions())
    .with_breaker(run.breaker.clone()))
}

/// Where one source stands.
#[derive(Debug)]
enum Stage {
    /// No copy yet; in the start queue.
    Waiting,
    /// A filter matched it but it is not `completed` yet; a later invocation copies it.
    NotReady,
    /// A CopySnapshot call failed without a definite answer, or a copy being watched vanished:
    /// a copy may exist that EC2 does not list yet (it is eventually consistent). It is looked
    /// up by its tags, with backoff, [`UNSURE_LOOKS`] times before a new attempt, and holds a
    /// slot meanwhile.
    Unsure {
        misses: u32,
        next_look: Instant,
    },
    Copying {
        copy: TrackedCopy,
        reused: bool,
    },
    Failed {
        copy_id: Option<SnapshotId>,
        reason: String,
    },
}

#[derive(Debug)]
struct Entry {
    source: SourceSnapshot,
    stage: Stage,
    /// This project's copies of the source that ended in `error` (or under another key than
    /// the request's), found by their tags or seen failing: the source's attempts so far, kept
    /// in EC2 itself.
    error_copies: Vec<ErrorCopy>,
}

impl Entry {
    fn new(source: SourceSnapshot, stage: Stage) -> Self {
        Self { source, stage, error_copies: Vec::new() }
    }
}

/// A copy that ended in `error`, with EC2's `StateMessage`.
#[derive(Debug)]
struct ErrorCopy {
    id: SnapshotId,
    message: String,
}

/// A copy retention deletes.
#[derive(Debug)]
struct Deletion {
    copy: SnapshotId,
    source: SnapshotId,
    size_gib: u64,
    /// As the look saw it: a `pending` copy is never deleted (a later run does, once completed).
    state: SnapshotState,
    reason: String,
    /// The copy's volume (see [`volume_group`]): the newest completed copy of each stays.
    group: String,
    /// DescribeVolumes said the source's volume no longer exists: the orphan rule may take
    /// the volume's last copy.
    volume_gone: bool,
    outcome: DeletionOutcome,
}

/// The group a source's copies are counted in to keep each volume's newest: its volume, or,
/// without one (EC2's placeholder), the source alone.
fn volume_group(volume: Option<&str>, source: &SnapshotId) -> String {
    volume.map_or_else(|| format!("{SOURCE_GROUP_PREFIX}{source}"), str::to_owned)
}

#[derive(Debug, PartialEq)]
enum DeletionOutcome {
    Due,
    Deleted,
    /// InvalidSnapshot.NotFound: gone before this run deleted it.
    AlreadyGone,
    /// A registered AMI uses it (DescribeImages): never deleted; the AMI's id.
    InUse(String),
    /// EC2 refused (locked, in use, …), with its answer.
    Refused(String),
    /// AccessDenied / UnauthorizedOperation: the role may not delete it (CopiesNotDeleted).
    Denied(String),
    /// No definite answer (timeout, 5xx): the next run sees whether it went.
    Unsure,
}

/// A copy being watched, with what is known of its speed.
#[derive(Debug)]
struct TrackedCopy {
    id: SnapshotId,
    state: SnapshotState,
    progress: Option<u8>,
    estimate: CompletionEstimate,
    /// Seen in at least one answer; a seen copy that vanishes was deleted.
    seen: bool,
}

/// What one start attempt came to, as far as slots go.
#[derive(Debug)]
enum Started {
    /// EC2 accepted the copy.
    Copy(SnapshotId),
    /// No definite answer: a copy may exist; it holds a slot.
    Unsure,
    /// EC2 definitely made no copy (refused, no slot, throttled), or no call was made.
    No,
}

struct Run<'a, S> {
    store: &'a S,
    request: &'a CopyRequest,
    /// The request's encryption, its key resolved: which copies are the request's.
    asked: AskedEncryption,
    observer: &'a dyn Observer,
    stop: StopSignal,
    limits: RunLimits,
    /// How long each call may take, and until when.
    timeline: Timeline,
    entries: Vec<Entry>,
    /// Snapshots the filters matched that can never be copied, with why (for the look's report).
    skipped: Vec<LookedSource>,
    /// Sources without a copy, largest first; ties in request order.
    queue: BinaryHeap<(u64, Reverse<usize>)>,
    /// EC2 answered ResourceLimitExceeded, or throttled a call beyond the SDK's retries, since
    /// the last poll: no start until then, and the wait before it backs off with jitter.
    region_full: bool,
    /// Calls EC2 throttled beyond the SDK's retries in this run (each backed off, none fatal).
    throttled_calls: usize,
    /// What the last count of this deployment's pending copies found: (all, of them others').
    deployment_pending: Option<(usize, usize)>,
    /// Rounds the slot ledger did not answer (each started nothing and backed off).
    ledger_failures: usize,
    /// Copies polls saw finish (or vanish) whose slots the ledger still holds: released by the
    /// next reservation's write, or by a write of their own after the start round.
    finished_copies: Vec<SnapshotId>,
    /// Consecutive rounds the region was full with none of our copies pending: backs off.
    full_rounds: u32,
    copies_started: usize,
    /// The fastest copy speed measured in this run, GiB per second: a prior for copies not
    /// observed yet.
    fastest_gib_per_second: Option<f64>,
    /// Second live copies found (entry, copy id), to delete.
    duplicates: Vec<(usize, SnapshotId)>,
    duplicates_removed: Vec<RemovedCopy>,
    /// Copies retention deletes, found by the look, deleted as time allows.
    deletions: Vec<Deletion>,
    /// The newest completed copy of each volume group the look found (source start, copy id).
    newest_completed: HashMap<String, (Option<SystemTime>, SnapshotId)>,
    /// The deletion breaker held this run's deletions.
    breaker: Option<DeletionBreaker>,
    /// DescribeImages gave no answer: no deletion this run.
    images_unknown: Option<String>,
}

impl<'a, S: SnapshotStore> Run<'a, S> {
    /// Resolves the sources and finds the copies earlier invocations made, live and failed.
    async fn look(
        store: &'a S,
        request: &'a CopyRequest,
        limits: RunLimits,
        timeline: Timeline,
        observer: &'a dyn Observer,
        stop: StopSignal,
    ) -> Result<Self, CopySnapshotsError> {
        let asked = resolve_encryption(store, request, &timeline).await?;
        let region = &request.source_region;
        let doing = format!("looking up {} in {region}", describe_selector(&request.sources));
        let found = timeline.call_retrying(|| store.describe_sources(region, &request.sources)).await;
        let found = found.map_err(|e| match e {
            // A definite refusal of the request's own filters or ids (a misspelled filter
            // name, a bad value) fails the same way on every retry: the request must change.
            StoreError::Refused { code, message } => CopySnapshotsError::InvalidRequest(format!(
                "EC2 refused {doing}: {code}: {message}; valid: DescribeSnapshots filter names (`tag:<key>`, \
                 `tag-key`, `volume-id`, `status`, … as the EC2 API reference lists them), at most 200 values each; \
                 nothing was copied"
            )),
            other => look_failed(other, &doing, &timeline),
        })?;
        let (entries, skipped) = match &request.sources {
            SourceSelector::Ids(ids) => entries_for_ids(ids, found, request)?,
            SourceSelector::Filters(_) => entries_for_filters(found),
        };
        debug!(sources = entries.len(), "sources resolved");

        let mut run = Self {
            store,
            request,
            asked,
            observer,
            stop,
            limits,
            timeline,
            entries,
            skipped,
            queue: BinaryHeap::new(),
            region_full: false,
            throttled_calls: 0,
            deployment_pending: None,
            ledger_failures: 0,
            finished_copies: Vec::new(),
            full_rounds: 0,
            copies_started: 0,
            fastest_gib_per_second: None,
            duplicates: Vec::new(),
            duplicates_removed: Vec::new(),
            deletions: Vec::new(),
            newest_completed: HashMap::new(),
            breaker: None,
            images_unknown: None,
        };
        let doing = format!("looking for earlier copies in {}", request.target_region);
        if request.retention.is_set() {
            // Retention judges every copy from this region, whatever its source: one listing
            // serves that and the look for earlier copies alike.
            let copies = timeline
                .call_retrying(|| store.list_copies(&request.target_region, region))
                .await
                .map_err(|e| look_failed(e, &doing, &timeline))?;
            run.judge_retention(&copies).await;
            let wanted: HashSet<&SnapshotId> =
                run.entries.iter().filter(|e| matches!(e.stage, Stage::Waiting)).map(|e| &e.source.id).collect();
            let existing = copies.iter().filter(|c| wanted.contains(&c.source_id)).cloned().collect();
            run.adopt(existing, true);
        } else {
            let wanted: Vec<SnapshotId> =
                run.entries.iter().filter(|e| matches!(e.stage, Stage::Waiting)).map(|e| e.source.id.clone()).collect();
            if !wanted.is_empty() {
                let existing = timeline
                    .call_retrying(|| store.find_copies(&request.target_region, region, &wanted))
                    .await
                    .map_err(|e| look_failed(e, &doing, &timeline))?;
                run.adopt(existing, true);
            }
        }
        for i in 0..run.entries.len() {
            if matches!(run.entries[i].stage, Stage::Waiting) {
                run.queue_or_fail(i);
            }
        }
        run.observer.observe(RunEvent::Looked { sources: run.looked_sources() });
        Ok(run)
    }

    /// Applies the request's retention to the look: a source out of retention leaves the entries
    /// (reported as skipped, never copied), and this request's copies become deletions when
    /// their source is out of retention, or gone from the source region longer than the orphan
    /// grace. Only copies this request would have made (encrypted as it asks) are judged:
    /// another request's copies of the same snapshots follow that request's rule. Copies whose
    /// source still exists but is not selected (another request's) are neither counted nor
    /// touched.
    ///
    /// What protects the recovery copies from an incident in the source region (ransomware,
    /// a mistaken clean-up deleting the sources):
    /// - the newest completed copy of every volume is never deleted ([`held_back`]), except by
    ///   the orphan rule once DescribeVolumes says the volume itself no longer exists;
    /// - the orphan rule never deletes a copy this request's retention keeps, nor any copy of
    ///   a volume that still exists but that the request selects no snapshot of (another
    ///   request's volume, or one whose snapshots were all deleted);
    /// - a look that fails (DescribeSnapshots by id, DescribeVolumes, DescribeImages) leads to
    ///   no deletion: what it would have told stays unknown, and unknown is kept;
    /// - a copy an AMI uses is never deleted;
    /// - the deletion breaker: a run that would delete more than [`BREAKER_MIN_DELETIONS`] and
    ///   more than a quarter of the copies it judges deletes none, unless the request says
    ///   `allow_mass_deletion`.
    ///
    /// [`held_back`]: Self::held_back
    async fn judge_retention(&mut self, copies: &[CopyStatus]) {
        let request = self.request;
        let rule = request.retention;
        let region = &request.source_region;
        let now = self.store.wall_clock();
        // The request's copies by the one ownership rule: a copy made for another ask, or under
        // another key than this request's, is never judged (nor deleted) by it.
        let ours: Vec<&CopyStatus> = copies.iter().filter(|c| self.asked.claim(c) == Claim::Ours).collect();
        let mut members: Vec<Member> = self
            .entries
            .iter()
            .filter(|e| e.source.state == SnapshotState::Completed)
            .map(|e| Member {
                source: e.source.id.clone(),
                volume: e.source.volume_id.clone(),
                start_time: e.source.start_time,
                selected: true,
            })
            .collect();
        let selected_volumes: HashSet<String> = members.iter().filter_map(|m| m.volume.clone()).collect();
        let in_entries: HashSet<&SnapshotId> = self.entries.iter().map(|e| &e.source.id).collect();
        // What the look knows of each source: its volume and start time (from the source
        // itself when the look found it, else from its copy's tags).
        let mut origin_of: HashMap<SnapshotId, (Option<String>, Option<SystemTime>)> = self
            .entries
            .iter()
            .map(|e| (e.source.id.clone(), (e.source.volume_id.clone(), e.source.start_time)))
            .collect();
        for copy in &ours {
            origin_of
                .entry(copy.source_id.clone())
                .or_insert_with(|| (copy.source_volume_id.clone(), copy.source_start_time));
        }

        // Copies of sources the look did not resolve: either gone from the source region, or
        // there but not selected by this request. One look by id tells them apart.
        let mut unresolved: Vec<SnapshotId> = ours
            .iter()
            .filter(|c| !in_entries.contains(&c.source_id))
            .filter(|c| {
                rule.orphans_after_days.is_some()
                    || c.source_volume_id.as_ref().is_some_and(|v| selected_volumes.contains(v))
            })
            .map(|c| c.source_id.clone())
            .collect();
        unresolved.sort();
        unresolved.dedup();
        let gone: HashSet<SnapshotId> = if unresolved.is_empty() {
            HashSet::new()
        } else {
            let by_id = SourceSelector::Ids(unresolved.clone());
            match self.timeline.call_retrying(|| self.store.describe_sources(region, &by_id)).await {
                Ok(found) => {
                    let exists: HashSet<SnapshotId> = found.into_iter().map(|s| s.id).collect();
                    unresolved.into_iter().filter(|id| !exists.contains(id)).collect()
                }
                Err(error) => {
                    // Without knowing which sources are gone, none is taken for gone: nothing
                    // of theirs is deleted, and the rule ranks only the selected sources,
                    // which keeps more, never less.
                    warn!(%error, "could not tell which sources are gone; their copies are left for a later run");
                    HashSet::new()
                }
            }
        };
        let mut gone_members: HashSet<&SnapshotId> = HashSet::new();
        for copy in &ours {
            if !gone.contains(&copy.source_id) || gone_members.contains(&copy.source_id) {
                continue;
            }
            if let Some(volume) = copy.source_volume_id.as_ref().filter(|v| selected_volumes.contains(*v)) {
                gone_members.insert(&copy.source_id);
                members.push(Member {
                    source: copy.source_id.clone(),
                    volume: Some(volume.clone()),
                    start_time: copy.source_start_time,
                    selected: false,
                });
            }
        }
        let out = retention::out_of_retention(&rule, now, &members);

        // Sources out of retention are not copied.
        let mut kept = Vec::with_capacity(self.entries.len());
        for entry in std::mem::take(&mut self.entries) {
            match out.get(&entry.source.id) {
                Some(reason) => {
                    debug!(source = %entry.source.id, %reason, "skipping a source out of retention");
                    self.skipped.push(LookedSource {
                        source: entry.source.id.clone(),
                        size_gib: entry.source.size_gib,
                        status: SourceStatus::Skipped { reason: reason.clone() },
                    });
                }
                None => kept.push(entry),
            }
        }
        self.entries = kept;

        // The newest completed copy of each volume as the look found it: kept whatever the
        // rules say (see `held_back`).
        for copy in ours.iter().filter(|c| c.state == SnapshotState::Completed) {
            let (volume, source_start) = origin_of.get(&copy.source_id).cloned().unwrap_or_default();
            let group = volume_group(volume.as_deref(), &copy.source_id);
            let rank = (source_start.or(copy.start_time), copy.id.clone());
            match self.newest_completed.get(&group) {
                Some(newest) if *newest >= rank => {}
                _ => {
                    self.newest_completed.insert(group, rank);
                }
            }
        }

        // Their copies, and the copies of gone sources out of retention or past the grace, go.
        // Orphans of a volume the request does not select wait for DescribeVolumes.
        let mut orphans_of_other_volumes: Vec<(&CopyStatus, String, String)> = Vec::new();
        for copy in &ours {
            let (volume, _) = origin_of.get(&copy.source_id).cloned().unwrap_or_default();
            let reason = if let Some(out_reason) = out.get(&copy.source_id) {
                if gone.contains(&copy.source_id) {
                    format!("its source is gone from {region} and {out_reason}")
                } else {
                    format!("its source is {out_reason}")
                }
            } else if gone.contains(&copy.source_id) {
                if rule.limits_sources() && gone_members.contains(&copy.source_id) {
                    // In this request's retention: the orphan rule does not override it.
                    continue;
                }
                let started = copy.source_start_time.or(copy.start_time);
                let Some(why) = started.and_then(|started| rule.orphan_due(now, started)) else { continue };
                match volume.as_deref() {
                    Some(v) if selected_volumes.contains(v) => format!("its source is gone from {region} and {why}"),
                    Some(v) => {
                        orphans_of_other_volumes.push((copy, v.to_owned(), why));
                        continue;
                    }
                    None => {
                        debug!(copy = %copy.id, "an orphan whose volume is unknown is kept: nothing can show its volume is gone");
                        continue;
                    }
                }
            } else {
                continue;
            };
            self.push_deletion(copy, reason, &origin_of, false);
        }
        if !orphans_of_other_volumes.is_empty() {
            let mut volumes: Vec<String> = orphans_of_other_volumes.iter().map(|(_, v, _)| v.clone()).collect();
            volumes.sort();
            volumes.dedup();
            let existing = self.timeline.call_retrying(|| self.store.existing_volumes(region, &volumes)).await;
            match existing {
                Ok(existing) => {
                    for (copy, volume, why) in orphans_of_other_volumes {
                        if existing.contains(&volume) {
                            debug!(copy = %copy.id, %volume, "an orphan of a volume that still exists is kept");
                            continue;
                        }
                        let reason = format!("its source and its volume {volume} are gone from {region}, and {why}");
                        self.push_deletion(copy, reason, &origin_of, true);
                    }
                }
                Err(error) => {
                    warn!(%error, "could not tell whether the volumes of gone sources still exist; their copies are kept");
                }
            }
        }
        self.keep_newest_without_successor();
        self.check_images().await;
        self.check_breaker(ours.len());
        if !self.deletions.is_empty() || !out.is_empty() {
            info!(
                out_of_retention = out.len(),
                gone = gone.len(),
                deletions = self.deletions.len(),
                rule = %rule.describe(),
                breaker = self.breaker.is_some(),
                "retention judged"
            );
        }
    }

    /// A volume's newest completed copy that no newer source of the volume in retention will
    /// replace is simply kept: not a deletion waiting for anything (which would leave the run
    /// incomplete forever). The orphan rule's deletions of a gone volume stay.
    fn keep_newest_without_successor(&mut self) {
        let newest = &self.newest_completed;
        let entries = &self.entries;
        self.deletions.retain(|d| {
            let Some((start, copy)) = newest.get(&d.group) else { return true };
            if d.volume_gone || *copy != d.copy {
                return true;
            }
            let successor = entries.iter().any(|e| {
                volume_group(e.source.volume_id.as_deref(), &e.source.id) == d.group
                    && e.source.id != d.source
                    && e.source.start_time > *start
            });
            if !successor {
                debug!(copy = %d.copy, group = %d.group, "kept: the newest completed copy of its volume");
            }
            successor
        });
    }

    /// Queues `copy` for deletion, unless it is in a state that is never deleted.
    fn push_deletion(
        &mut self,
        copy: &CopyStatus,
        reason: String,
        origin_of: &HashMap<SnapshotId, (Option<String>, Option<SystemTime>)>,
        volume_gone: bool,
    ) {
        if !matches!(copy.state, SnapshotState::Completed | SnapshotState::Error | SnapshotState::Pending) {
            debug!(copy = %copy.id, state = copy.state.as_str(), "a copy in this state is not deleted");
            return;
        }
        let (volume, _) = origin_of.get(&copy.source_id).cloned().unwrap_or_default();
        self.deletions.push(Deletion {
            copy: copy.id.clone(),
            source: copy.source_id.clone(),
            size_gib: copy.size_gib,
            state: copy.state.clone(),
            reason,
            group: volume_group(volume.as_deref(), &copy.source_id),
            volume_gone,
            outcome: DeletionOutcome::Due,
        });
    }

    /// One DescribeImages for every copy that may be deleted: a copy a registered AMI uses
    /// stays (reported in `not_deleted` with the AMI). Without an answer, nothing is deleted.
    async fn check_images(&mut self) {
        let candidates: Vec<SnapshotId> = self
            .deletions
            .iter()
            .filter(|d| d.outcome == DeletionOutcome::Due && d.state != SnapshotState::Pending)
            .map(|d| d.copy.clone())
            .collect();
        if candidates.is_empty() {
            return;
        }
        let target = &self.request.target_region;
        match self.timeline.call_retrying(|| self.store.images_using(target, &candidates)).await {
            Ok(using) => {
                for deletion in &mut self.deletions {
                    if let Some(image) = using.get(&deletion.copy) {
                        deletion.outcome = DeletionOutcome::InUse(image.clone());
                    }
                }
            }
            Err(error) => {
                warn!(%error, "could not tell which copies an AMI uses; none is deleted this run");
                self.images_unknown = Some(error.to_string());
            }
        }
    }

    /// The deletion breaker: more than [`BREAKER_MIN_DELETIONS`] and more than a quarter of
    /// the `managed` copies (this request's, from this source region) is not what a schedule
    /// does; it is what a source-side incident or a wrong request looks like. None is deleted,
    /// unless the request says `allow_mass_deletion`.
    fn check_breaker(&mut self, managed: usize) {
        let would_delete = self.deletions.iter().filter(|d| d.outcome == DeletionOutcome::Due).count();
        if would_delete <= BREAKER_MIN_DELETIONS || would_delete * BREAKER_SHARE_DENOMINATOR <= managed {
            return;
        }
        if self.request.allow_mass_deletion {
            warn!(would_delete, managed, "a mass deletion, allowed by the request");
            return;
        }
        let message = format!(
            "deletion breaker: this run would delete {would_delete} of the {managed} copies it manages (more than \
             {BREAKER_MIN_DELETIONS} and more than 1/{BREAKER_SHARE_DENOMINATOR} of them), so it deletes none; if that \
             is meant (a retention turned on over a backlog), check the list with `dry_run: true` and \
             `allow_mass_deletion: true`, then run with `allow_mass_deletion: true`"
        );
        warn!(would_delete, managed, "{message}");
        self.breaker = Some(DeletionBreaker { would_delete, managed, message });
    }

    /// Deletions that must wait: the newest completed copy of each volume (of this request,
    /// counting copies that completed during this run) is never deleted, so a volume always
    /// keeps a recovery copy, whatever happened to its snapshots in the source region. Only the
    /// orphan rule, once DescribeVolumes has said the volume itself is gone, may take it.
    /// Indexes into `deletions`.
    fn held_back(&self) -> HashSet<usize> {
        let mut newest = self.newest_completed.clone();
        for entry in &self.entries {
            let Stage::Copying { copy, .. } = &entry.stage else { continue };
            if copy.state != SnapshotState::Completed {
                continue;
            }
            let group = volume_group(entry.source.volume_id.as_deref(), &entry.source.id);
            let rank = (entry.source.start_time, copy.id.clone());
            if newest.get(&group).is_none_or(|n| *n < rank) {
                newest.insert(group, rank);
            }
        }
        self.deletions
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                d.outcome == DeletionOutcome::Due
                    && !d.volume_gone
                    && newest.get(&d.group).is_some_and(|(_, copy)| *copy == d.copy)
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Why this run deletes nothing at all, if it does not: the breaker holds, or DescribeImages
    /// did not answer.
    fn deletions_blocked(&self) -> Option<String> {
        if let Some(breaker) = &self.breaker {
            return Some(breaker.message.clone());
        }
        self.images_unknown.as_ref().map(|error| {
            format!("could not tell which copies an AMI uses ({error}); no copy was deleted, the next run tries again")
        })
    }

    /// Deletes what retention deletes, until `until` (the next poll; the end of the work), the
    /// stop signal or the last moment a call may start: whatever is left, the next run deletes.
    /// A refusal (locked, access denied) is reported and skipped; throttling ends this round of
    /// deletions; none of it fails the run.
    async fn prune(&mut self, until: Option<Instant>) {
        if !self.deletions.iter().any(|d| d.outcome == DeletionOutcome::Due) || self.deletions_blocked().is_some() {
            return;
        }
        let held = self.held_back();
        for i in 0..self.deletions.len() {
            let deletion = &self.deletions[i];
            let deletable = matches!(deletion.state, SnapshotState::Completed | SnapshotState::Error);
            if deletion.outcome != DeletionOutcome::Due || !deletable || held.contains(&i) {
                continue;
            }
            if until.is_some_and(|until| Instant::now() >= until) || !self.may_call() || self.stop.is_set() {
                break;
            }
            let result = self.timeline.call(self.store.delete_copy(&self.request.target_region, &deletion.copy)).await;
            let deletion = &mut self.deletions[i];
            let (source, copy) = (deletion.source.clone(), deletion.copy.clone());
            match result {
                Ok(DeleteOutcome::Deleted) => {
                    self.observer.observe(RunEvent::CopyDeleted { source, copy, reason: deletion.reason.clone() });
                    deletion.outcome = DeletionOutcome::Deleted;
                }
                Ok(DeleteOutcome::AlreadyGone) => {
                    info!(%copy, "the copy was already gone (InvalidSnapshot.NotFound); not a deletion of this run");
                    deletion.outcome = DeletionOutcome::AlreadyGone;
                }
                Err(StoreError::Throttled(message)) => {
                    warn!(%copy, %message, "EC2 throttled a deletion; the rest wait for the next round");
                    break;
                }
                Err(StoreError::Unknown(message)) => {
                    warn!(%copy, %message, "a deletion had no definite answer; the next run sees whether it went");
                    deletion.outcome = DeletionOutcome::Unsure;
                }
                Err(StoreError::AccessDenied(message)) => {
                    let error = format!("access denied: {message}");
                    warn!(%copy, %error, "the role may not delete this copy; CopiesNotDeleted counts it");
                    self.observer.observe(RunEvent::DeleteRefused { source, copy, error: error.clone() });
                    deletion.outcome = DeletionOutcome::Denied(error);
                }
                Err(refusal) => {
                    let error = refusal.to_string();
                    self.observer.observe(RunEvent::DeleteRefused { source, copy, error: error.clone() });
                    deletion.outcome = DeletionOutcome::Refused(error);
                }
            }
        }
    }

    /// The deletions a run would make now, and those it would make later, for the plan.
    fn planned_deletions(&self) -> Vec<PlannedDeletion> {
        let held = self.held_back();
        let blocked = self.deletions_blocked();
        self.deletions
            .iter()
            .enumerate()
            .filter(|(_, d)| d.outcome == DeletionOutcome::Due)
            .map(|(i, d)| PlannedDeletion {
                copy: d.copy.clone(),
                source: d.source.clone(),
                size_gib: d.size_gib,
                state: d.state.as_str().to_owned(),
                reason: d.reason.clone(),
                later: if let Some(why) = &blocked {
                    Some(why.clone())
                } else if d.state == SnapshotState::Pending {
                    Some("the copy is still pending: a run after it completes deletes it".to_owned())
                } else if held.contains(&i) {
                    Some(format!(
                        "the newest completed copy of {}, kept until a newer copy of it completes",
                        d.group.strip_prefix(SOURCE_GROUP_PREFIX).map_or(d.group.as_str(), |_| "its source")
                    ))
                } else {
                    None
                },
            })
            .collect()
    }

    /// Takes over copies found by their tags, by the one ownership rule ([`AskedEncryption::claim`]):
    /// of the request's copies, one in `error` counts as an attempt, and so does one under
    /// another key than the request's (never adopted, whatever its tags say); of the live ones,
    /// a completed copy is tracked over a pending one. Duplicates heal only between completed
    /// copies: deleting a pending copy frees no slot until it completes anyway, and if the
    /// copy kept then ended in `error` no good copy would be left.
    fn adopt(&mut self, copies: Vec<CopyStatus>, reused: bool) {
        let index: HashMap<SnapshotId, usize> =
            self.entries.iter().enumerate().map(|(i, e)| (e.source.id.clone(), i)).collect();
        let mut live: BTreeMap<usize, Vec<CopyStatus>> = BTreeMap::new();
        for copy in copies {
            let Some(&i) = index.get(&copy.source_id) else { continue };
            let alive = matches!(copy.state, SnapshotState::Pending | SnapshotState::Completed);
            match self.asked.claim(&copy) {
                Claim::Foreign => {
                    debug!(copy = %copy.id, source = %copy.source_id, "copy made for a request asking other encryption");
                }
                Claim::WrongKey { actual } if alive => {
                    let message = self.asked.wrong_key_reason(&copy, actual.as_deref());
                    warn!(copy = %copy.id, source = %copy.source_id, %message, "earlier copy under another key; not adopted");
                    let errors = &mut self.entries[i].error_copies;
                    if !errors.iter().any(|e| e.id == copy.id) {
                        errors.push(ErrorCopy { id: copy.id, message });
                    }
                }
                Claim::WrongKey { .. } => {}
                Claim::Ours if copy.state == SnapshotState::Error => {
                    let errors = &mut self.entries[i].error_copies;
                    if !errors.iter().any(|e| e.id == copy.id) {
                        let message = copy.state_message.unwrap_or_else(|| "EC2 gave no reason".to_owned());
                        errors.push(ErrorCopy { id: copy.id, message });
                    }
                }
                Claim::Ours if alive => live.entry(i).or_default().push(copy),
                Claim::Ours => {
                    debug!(copy = %copy.id, source = %copy.source_id, state = copy.state.as_str(), "earlier copy does not count");
                }
            }
        }
        let now = Instant::now();
        for (i, copies) in live {
            let (mut completed, mut pending): (Vec<_>, Vec<_>) =
                copies.into_iter().partition(|c| c.state == SnapshotState::Completed);
            completed.sort_by_key(|c| Reverse(keep_rank(c)));
            pending.sort_by_key(|c| Reverse(keep_rank(c)));
            let mut completed = completed.into_iter();
            let kept = match completed.next() {
                Some(kept) => {
                    // Only a copy made for the same ask and under the same key as the one kept:
                    // an older-tagged copy may be another request's too.
                    for extra in completed.filter(|c| same_ask_and_key(c, &kept)) {
                        warn!(source = %kept.source_id, kept = %kept.id, duplicate = %extra.id, "source has a second completed copy; removing it");
                        self.duplicates.push((i, extra.id));
                    }
                    if !pending.is_empty() {
                        let ids: Vec<&str> = pending.iter().map(|c| c.id.as_str()).collect();
                        debug!(source = %kept.source_id, kept = %kept.id, pending = ?ids, "a second copy is still pending; judged once it completes");
                    }
                    kept
                }
                None => {
                    let mut pending = pending.into_iter();
                    let Some(kept) = pending.next() else { continue };
                    for other in pending {
                        debug!(source = %kept.source_id, kept = %kept.id, other = %other.id, "two copies pending; neither is removed while pending");
                    }
                    kept
                }
            };
            let mut estimate = CompletionEstimate::unknown();
            if let Some(percent) = kept.progress {
                estimate.observe(now, percent);
            }
            self.entries[i].stage = Stage::Copying {
                copy: TrackedCopy { id: kept.id, state: kept.state, progress: kept.progress, estimate, seen: true },
                reused,
            };
        }
    }

    /// Queues a source with no copy for a new attempt, or fails it once [`MAX_ATTEMPTS`] of its
    /// copies have ended in `error`.
    fn queue_or_fail(&mut self, i: usize) {
        let entry = &mut self.entries[i];
        if entry.error_copies.len() >= MAX_ATTEMPTS {
            let attempts: Vec<String> =
                entry.error_copies.iter().map(|e| format!("{} ({})", e.id, e.message)).collect();
            let reason = format!(
                "{} of its copies ended in error, the most this function makes of one source: {}; \
                 fix the cause, then delete those copies to try again",
                entry.error_copies.len(),
                attempts.join(", ")
            );
            self.observer.observe(RunEvent::SourceFailed { source: entry.source.id.clone(), reason: reason.clone() });
            let copy_id = entry.error_copies.last().map(|e| e.id.clone());
            entry.stage = Stage::Failed { copy_id, reason };
        } else {
            entry.stage = Stage::Waiting;
            self.queue.push((entry.source.size_gib, Reverse(i)));
        }
    }

    /// Whether a store call started now would end before the deadline.
    fn may_call(&self) -> bool {
        self.timeline.may_call()
    }

    /// Deletes the second live copies [`adopt`](Self::adopt) found. A failure only leaves the
    /// duplicate for a later invocation; it never fails this one.
    async fn remove_duplicates(&mut self) {
        for (i, copy_id) in std::mem::take(&mut self.duplicates) {
            let source = &self.entries[i].source.id;
            if !self.may_call() {
                warn!(%source, copy = %copy_id, "no time left to remove a duplicate copy; a later invocation will");
                continue;
            }
            match self.timeline.call(self.store.delete_copy(&self.request.target_region, &copy_id)).await {
                Ok(DeleteOutcome::AlreadyGone) => {
                    info!(%source, copy = %copy_id, "the duplicate copy was already gone");
                }
                Ok(DeleteOutcome::Deleted) => {
                    self.observer.observe(RunEvent::DuplicateRemoved { source: source.clone(), copy: copy_id.clone() });
                    self.duplicates_removed
                        .push(RemovedCopy { source_snapshot_id: source.to_string(), snapshot_id: copy_id.to_string() });
                }
                Err(error) => {
                    warn!(%source, copy = %copy_id, %error, "could not remove a duplicate copy; a later invocation will try again")
                }
            }
        }
    }

    /// Looks up, by their tags, the copies of unsure starts that are due for a look: adopts
    /// those that exist; a source whose copy is still missing after [`UNSURE_LOOKS`] looks,
    /// backed off, is queued again. Never calls CopySnapshot twice on one look.
    async fn resolve_unsure(&mut self) -> Result<(), CopySnapshotsError> {
        let now = Instant::now();
        let due: Vec<usize> = (0..self.entries.len())
            .filter(|&i| matches!(self.entries[i].stage, Stage::Unsure { next_look, .. } if next_look <= now))
            .collect();
        if due.is_empty() || !self.may_call() {
            return Ok(());
        }
        let ids: Vec<SnapshotId> = due.iter().map(|&i| self.entries[i].source.id.clone()).collect();
        let attempts_before: Vec<usize> = due.iter().map(|&i| self.entries[i].error_copies.len()).collect();
        let (target, source) = (&self.request.target_region, &self.request.source_region);
        let found = match self.timeline.call(self.store.find_copies(target, source, &ids)).await {
            Ok(found) => found,
            Err(StoreError::Unknown(message)) => {
                warn!(%message, "could not look for copies of unsure starts; trying again next round");
                return Ok(());
            }
            Err(StoreError::Throttled(message)) => {
                self.throttled_now(&message, "looking for copies of unsure starts");
                return Ok(());
            }
            Err(e) => return Err(fatal(e, "looking for copies of unsure starts", self.copies_started)),
        };
        self.adopt(found, false);
        let now = Instant::now();
        for (i, attempts_before) in due.into_iter().zip(attempts_before) {
            let entry = &mut self.entries[i];
            let Stage::Unsure { misses, next_look } = &mut entry.stage else { continue };
            if entry.error_copies.len() > attempts_before {
                // The unsure start made a copy, and it has already ended in `error`.
                self.queue_or_fail(i);
                continue;
            }
            *misses += 1;
            if *misses >= UNSURE_LOOKS {
                info!(source = %entry.source.id, looks = *misses, "no copy found after an unsure start; queued again");
                self.queue_or_fail(i);
            } else {
                *next_look = now + self.limits.poll_interval * 2u32.pow(*misses);
            }
        }
        Ok(())
    }

    /// Starts copies, largest first, while this deployment has fewer than `pending_limit` copies
    /// pending in the target region, whichever invocation started them, and the region has
    /// room. With a slot ledger the slots are reserved in it first (atomic across invocations)
    /// and only the sources granted start; without one, the deployment's pending copies are
    /// counted just before (one DescribeSnapshots, which two invocations can pass together).
    /// A refusal that concerns one source fails that source; EC2 throttling requeues it and
    /// backs off; neither stops the run.
    async fn start_what_fits(&mut self, work_until: Option<Instant>) -> Result<(), CopySnapshotsError> {
        self.start_round(work_until).await?;
        // Finished copies a round without a reservation did not release.
        self.release_slots().await;
        Ok(())
    }

    /// [`start_what_fits`](Self::start_what_fits) but the releases left over.
    async fn start_round(&mut self, work_until: Option<Instant>) -> Result<(), CopySnapshotsError> {
        let limit = self.request.pending_limit;
        let slots_held = self.slots_held();
        if self.queue.is_empty() || slots_held >= limit || self.region_full || !self.may_start(work_until) {
            return Ok(());
        }
        let store = self.store;
        if let Some(ledger) = store.slot_ledger() {
            return self.start_reserved(ledger, limit - slots_held, work_until).await;
        }
        let Some(mut free) = self.free_deployment_slots().await? else { return Ok(()) };
        if free == 0 {
            // Other invocations' copies fill this deployment's share: a full region as far as
            // this run is concerned, so the next look comes after a backoff with jitter, not
            // after the longest poll interval.
            self.no_slot_until_next_poll();
            return Ok(());
        }
        while free > 0 && !self.region_full && self.may_start(work_until) {
            let Some((_, Reverse(i))) = self.queue.pop() else { break };
            match self.start_one(i).await {
                Started::Copy(_) | Started::Unsure => free = free.saturating_sub(1),
                Started::No => {}
            }
        }
        Ok(())
    }

    /// Start round with a slot ledger: reserves slots for the next `want` sources of the queue
    /// (one load and one conditional save, rebuilt from EC2 when stale), starts those granted,
    /// then records their copy ids and drops the reservations of those not started (one more
    /// load and save). A ledger that does not answer means no start this round, after a
    /// backoff, as a throttled count does; a ledger the role may not use ends the run.
    async fn start_reserved<L: SlotLedger>(
        &mut self,
        ledger: &L,
        want: usize,
        work_until: Option<Instant>,
    ) -> Result<(), CopySnapshotsError> {
        let candidates: Vec<usize> = (0..want).map_while(|_| self.queue.pop().map(|(_, Reverse(i))| i)).collect();
        let keys: Vec<SlotKey> = candidates.iter().map(|&i| self.slot_key(i)).collect();
        let (granted, saved) = match self.reserve_slots(ledger, &keys).await {
            Ok(Some((granted, saved))) if !granted.is_empty() => (granted.into_iter().collect::<HashSet<_>>(), saved),
            Ok(Some(_)) => {
                // This deployment's share is full (or every source is being started elsewhere):
                // as a full region, the next round comes after a backoff with jitter.
                self.requeue(&candidates);
                self.no_slot_until_next_poll();
                return Ok(());
            }
            Ok(None) => {
                self.requeue(&candidates);
                return Ok(());
            }
            Err(error) => {
                self.requeue(&candidates);
                return Err(error);
            }
        };
        let (mut started, mut not_started) = (Vec::new(), Vec::new());
        let mut left = Vec::new();
        // The round's reservations must not look dead to another invocation while a start of
        // this round may still be running: a long round gives back what it has not started.
        let round_began = Instant::now();
        let round_ends = slots::RESERVATION_TTL.saturating_sub(slots::ROUND_MARGIN + self.limits.call_timeout);
        for (&i, key) in candidates.iter().zip(keys) {
            if !granted.contains(&key) {
                left.push(i);
            } else if self.region_full || !self.may_start(work_until) || round_began.elapsed() >= round_ends {
                left.push(i);
                not_started.push(key);
            } else {
                match self.start_one(i).await {
                    Started::Copy(copy) => started.push((key, copy)),
                    // The start may have made a copy: the reservation stays, and a refresh
                    // replaces it with the copy EC2 lists, or drops it after its TTL.
                    Started::Unsure => {}
                    Started::No => not_started.push(key),
                }
            }
        }
        self.requeue(&left);
        if started.is_empty() && not_started.is_empty() {
            return Ok(());
        }
        let request = self.request;
        let target = &request.target_region;
        let now = self.store.wall_clock();
        let settle = |state: &mut LedgerState| slots::settle(state, now, &started, &not_started);
        let settled = slots::update(ledger, &self.timeline, target, saved, settle).await;
        if let Err(error) = settled {
            // Not fatal, whatever the error: the copies are started and must be reported.
            // Never fewer slots counted than held: an unrecorded start stays a reservation
            // until a refresh finds its copy, an undropped one counts until its TTL.
            warn!(%error, started = started.len(), "could not record this round's starts in the slot ledger; a refresh repairs it");
        }
        Ok(())
    }

    /// Puts sources back in the start queue.
    fn requeue(&mut self, entries: &[usize]) {
        for &i in entries {
            self.queue.push((self.entries[i].source.size_gib, Reverse(i)));
        }
    }

    /// The slot key of entry `i`'s copy-to-be.
    fn slot_key(&self, i: usize) -> SlotKey {
        SlotKey::for_copy(&self.request.source_region, &self.entries[i].source.id, self.asked.tag_value())
    }

    /// One reservation round in the ledger. `Ok(None)`: nothing granted because the ledger
    /// or EC2's listing did not answer (no start this round, backing off).
    async fn reserve_slots<L: SlotLedger>(
        &mut self,
        ledger: &L,
        keys: &[SlotKey],
    ) -> Result<Option<(Vec<SlotKey>, Option<(LedgerState, Version)>)>, CopySnapshotsError> {
        let own_pending: HashSet<String> = self.pending_copies().map(|c| c.id.to_string()).collect();
        let finished = std::mem::take(&mut self.finished_copies);
        let request = self.request;
        let target = &request.target_region;
        let ask = slots::Ask {
            target_region: target,
            wanted: keys,
            limit: self.request.pending_limit,
            own_pending: &own_pending,
            finished: &finished,
        };
        let (store, timeline) = (self.store, self.timeline);
        let list_pending = || async move {
            let listed = timeline.call(store.list_pending_copies(target)).await?;
            Ok(listed.into_iter().map(|c| c.id).collect())
        };
        match slots::reserve(ledger, &self.timeline, || store.wall_clock(), ask, list_pending).await {
            Ok(granted) => {
                self.deployment_pending = Some((granted.live, granted.others));
                debug!(
                    granted = granted.keys.len(),
                    wanted = keys.len(),
                    live = granted.live,
                    refreshed = granted.refreshed,
                    "slots reserved"
                );
                Ok(Some((granted.keys, granted.saved)))
            }
            Err(ReserveError::Ledger(error)) => {
                self.finished_copies = finished;
                self.fatal_ledger_error(&error)?;
                warn!(%error, ledger = ledger.describe(), "the slot ledger did not answer; starting none this round");
                self.ledger_failures += 1;
                self.no_slot_until_next_poll();
                Ok(None)
            }
            Err(ReserveError::Listing(StoreError::Throttled(message))) => {
                self.finished_copies = finished;
                self.throttled_now(&message, "listing this deployment's pending copies for the slot ledger");
                Ok(None)
            }
            Err(ReserveError::Listing(StoreError::Unknown(message))) => {
                self.finished_copies = finished;
                warn!(%message, "could not list this deployment's pending copies for the slot ledger; starting none this round");
                Ok(None)
            }
            Err(ReserveError::Listing(e)) => {
                Err(fatal(e, "listing this deployment's pending copies for the slot ledger", self.copies_started))
            }
        }
    }

    /// A ledger error the deployment must fix (access denied, no such table) ends the run;
    /// any other is a round without a start.
    fn fatal_ledger_error(&self, error: &LedgerError) -> Result<(), CopySnapshotsError> {
        let so_far = match self.copies_started {
            0 => "no copy was started".to_owned(),
            n => format!("{} started before this", plural(n, "copy")),
        };
        match error {
            LedgerError::Unavailable(_) => Ok(()),
            LedgerError::AccessDenied(message) => {
                Err(CopySnapshotsError::AccessDenied(format!("access denied to the slot ledger: {message}; {so_far}")))
            }
            LedgerError::Misconfigured(message) => Err(CopySnapshotsError::InvalidRequest(format!(
                "the slot ledger is misconfigured: {message}; {so_far}"
            ))),
        }
    }

    /// Starts the copy of entry `i` (popped from the queue) and records the outcome.
    async fn start_one(&mut self, i: usize) -> Started {
        let spec = match copy_spec(&self.entries[i].source, self.request, &self.asked) {
            Ok(spec) => spec,
            Err(reason) => {
                self.fail(i, reason);
                return Started::No;
            }
        };
        let result = self.timeline.call(self.store.start_copy(&spec)).await;
        let source = &self.entries[i].source;
        let slots_held = self.slots_held();
        let outcome = match result {
            Ok(copy_id) => {
                let (source, copy, size_gib) = (source.id.clone(), copy_id.clone(), source.size_gib);
                self.observer.observe(RunEvent::CopyStarted { source, copy, size_gib });
                self.copies_started += 1;
                self.count_own_start();
                self.full_rounds = 0;
                self.entries[i].stage = Stage::Copying {
                    copy: TrackedCopy {
                        id: copy_id.clone(),
                        state: SnapshotState::Pending,
                        progress: None,
                        estimate: CompletionEstimate::started_at(Instant::now()),
                        seen: false,
                    },
                    reused: false,
                };
                Started::Copy(copy_id)
            }
            Err(StoreError::NoSlot(message)) => {
                debug!(%message, "region's copy quota is full; waiting for a slot");
                self.queue.push((source.size_gib, Reverse(i)));
                self.no_slot_until_next_poll();
                Started::No
            }
            Err(StoreError::Throttled(message)) => {
                self.queue.push((source.size_gib, Reverse(i)));
                self.throttled_now(&message, "starting a copy");
                Started::No
            }
            Err(StoreError::Unknown(message)) => {
                self.observer.observe(RunEvent::StartUnsure { source: source.id.clone(), message });
                self.count_own_start();
                self.entries[i].stage = self.unsure(Instant::now());
                Started::Unsure
            }
            Err(StoreError::Refused { code, message }) => {
                self.fail(i, format!("EC2 refused the copy: {code}: {message}"));
                Started::No
            }
            Err(StoreError::NotFound(message) | StoreError::NotReady(message)) => {
                self.fail(i, format!("EC2 refused the copy: {message}"));
                Started::No
            }
            Err(StoreError::AccessDenied(message)) => {
                // One snapshot an SCP denies, one key disabled: that source fails, the
                // others go on. A role that may copy nothing fails every source this way,
                // each named in CopyFailed.
                self.fail(i, format!("access denied starting the copy: {message}"));
                Started::No
            }
        };
        let holds = matches!(outcome, Started::Copy(_) | Started::Unsure);
        debug_assert_eq!(slots_held + usize::from(holds), self.slots_held(), "slot count drifted");
        outcome
    }

    /// Whether a copy may start now: before `work_until`, with time for the call, not stopped.
    fn may_start(&self, work_until: Option<Instant>) -> bool {
        work_until.is_none_or(|until| Instant::now() < until) && self.may_call() && !self.stop.is_set()
    }

    /// How many more copies this deployment may have pending in the target region: the request's
    /// `pending_limit` less this deployment's pending copies, as one DescribeSnapshots counts
    /// them now (with this run's own starts not listed yet). `None`: unknown this round
    /// (throttled, no answer); nothing starts until the next.
    async fn free_deployment_slots(&mut self) -> Result<Option<usize>, CopySnapshotsError> {
        let target = &self.request.target_region;
        let listed = match self.timeline.call(self.store.list_pending_copies(target)).await {
            Ok(listed) => listed,
            Err(StoreError::Throttled(message)) => {
                self.throttled_now(&message, "counting this deployment's pending copies");
                return Ok(None);
            }
            Err(StoreError::Unknown(message)) => {
                warn!(%message, "could not count this deployment's pending copies; starting none this round");
                return Ok(None);
            }
            Err(e) => return Err(fatal(e, "counting this deployment's pending copies", self.copies_started)),
        };
        let listed: HashSet<SnapshotId> = listed.into_iter().map(|c| c.id).collect();
        let own_unlisted = self
            .entries
            .iter()
            .filter(|e| match &e.stage {
                Stage::Copying { copy, .. } => copy.state == SnapshotState::Pending && !listed.contains(&copy.id),
                Stage::Unsure { .. } => true,
                _ => false,
            })
            .count();
        let own_listed = self.pending_copies().filter(|c| listed.contains(&c.id)).count();
        let pending = listed.len() + own_unlisted;
        self.deployment_pending = Some((pending, listed.len() - own_listed));
        let free = self.request.pending_limit.saturating_sub(pending);
        if free == 0 {
            debug!(pending, limit = self.request.pending_limit, "this deployment's copies fill pending_limit");
        }
        Ok(Some(free))
    }

    /// A copy this run started (or may have) since the last count holds one of the deployment's
    /// slots too.
    fn count_own_start(&mut self) {
        if let Some((pending, _)) = &mut self.deployment_pending {
            *pending += 1;
        }
    }

    /// EC2 throttled a call beyond the SDK's retries: no start until the next poll, which comes
    /// after a backoff with jitter (see [`backing_off`](Self::backing_off)).
    fn throttled_now(&mut self, message: &str, doing: &str) {
        warn!(%message, doing, "EC2 throttled beyond the SDK's retries; backing off");
        self.throttled_calls += 1;
        self.no_slot_until_next_poll();
    }

    /// No start until the next poll (the region is full, this deployment's share is, or EC2
    /// throttles): the wait before it is a backoff, longer each round none of this run's copies
    /// is pending to free a slot.
    fn no_slot_until_next_poll(&mut self) {
        self.region_full = true;
        if self.pending_copies().next().is_none() {
            self.full_rounds += 1;
        }
    }

    /// Whether the next wait is a backoff (region full, throttled), which gets jitter.
    fn backing_off(&self) -> bool {
        self.region_full
    }

    /// Fails a source this run will not copy (no copy of it was made).
    fn fail(&mut self, i: usize, reason: String) {
        self.observer
            .observe(RunEvent::SourceFailed { source: self.entries[i].source.id.clone(), reason: reason.clone() });
        self.entries[i].stage = Stage::Failed { copy_id: None, reason };
    }

    /// Where each source stands, as the look's report and the plan show it.
    fn looked_sources(&self) -> Vec<LookedSource> {
        let looked = self.entries.iter().map(|entry| {
            let status = match &entry.stage {
                Stage::Copying { copy, .. } => SourceStatus::HasCopy {
                    copy: copy.id.clone(),
                    state: copy.state.as_str().to_owned(),
                    progress: copy.progress,
                },
                Stage::Waiting | Stage::Unsure { .. } => SourceStatus::ToCopy { note: to_copy_note(entry) },
                Stage::NotReady => SourceStatus::NotReady {
                    reason: format!("is {}; a later run copies it once it is completed", entry.source.state.as_str()),
                },
                Stage::Failed { reason, .. } => SourceStatus::Failed { reason: reason.clone() },
            };
            LookedSource { source: entry.source.id.clone(), size_gib: entry.source.size_gib, status }
        });
        looked.chain(self.skipped.iter().cloned()).collect()
    }

    /// A fresh unsure stage: first look one poll interval after `now`.
    fn unsure(&self, now: Instant) -> Stage {
        Stage::Unsure { misses: 0, next_look: now + self.limits.poll_interval }
    }

    /// What counts against `pending_limit`: this request's pending copies and unsure starts.
    fn slots_held(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| match &e.stage {
                Stage::Copying { copy, .. } => copy.state == SnapshotState::Pending,
                Stage::Unsure { .. } => true,
                _ => false,
            })
            .count()
    }

    /// Polls every pending copy of this request in one call and records what changed.
    async fn poll(&mut self) -> Result<(), CopySnapshotsError> {
        self.region_full = false;
        let pending: Vec<SnapshotId> = self.pending_copies().map(|c| c.id.clone()).collect();
        if pending.is_empty() {
            return Ok(());
        }
        let answer = match self.timeline.call(self.store.describe_copies(&self.request.target_region, &pending)).await {
            Ok(answer) => answer,
            Err(StoreError::Throttled(message)) => {
                self.throttled_now(&message, "polling the copies");
                return Ok(());
            }
            Err(StoreError::Unknown(message)) => {
                // Nothing changes by polling; the next round polls again.
                warn!(%message, "a poll had no answer; polling again next round");
                return Ok(());
            }
            Err(e) => return Err(fatal(e, "polling the copies", self.copies_started)),
        };
        let by_id: HashMap<SnapshotId, CopyStatus> = answer.into_iter().map(|c| (c.id.clone(), c)).collect();
        let now = Instant::now();
        let unlisted_limit = unsure_window(self.limits.poll_interval) * 2;
        let mut requeue = Vec::new();
        let mut vanished = Vec::new();
        for (i, entry) in self.entries.iter_mut().enumerate() {
            let Stage::Copying { copy, .. } = &mut entry.stage else { continue };
            if copy.state != SnapshotState::Pending {
                continue;
            }
            let Some(status) = by_id.get(&copy.id) else {
                // Seen before, or still unlisted long after EC2 confirmed it (twice the span an
                // unsure start is looked for, since here EC2 said it exists): deleted.
                let unlisted_too_long = now.saturating_duration_since(copy.estimate.started()) >= unlisted_limit;
                if copy.seen || unlisted_too_long {
                    // Deleted: by someone, or as a duplicate by an overlapping invocation that
                    // kept another copy. Look by the tags before copying again.
                    self.observer
                        .observe(RunEvent::CopyVanished { source: entry.source.id.clone(), copy: copy.id.clone() });
                    vanished.push(i);
                }
                // Never seen: EC2's eventual consistency; it shows up in a later round.
                continue;
            };
            copy.seen = true;
            if status.state == SnapshotState::Pending && status.progress.is_some() && status.progress != copy.progress {
                let (source, copy) = (entry.source.id.clone(), copy.id.clone());
                self.observer.observe(RunEvent::CopyProgress { source, copy, percent: status.progress.unwrap_or(0) });
            }
            copy.state = status.state.clone();
            copy.progress = status.progress;
            if let Some(percent) = status.progress {
                copy.estimate.observe(now, percent);
                // Only a speed known within ±10% is good enough to plan other copies by.
                if let Some((slowest, fastest)) = copy.estimate.speed()
                    && slowest >= fastest * 0.8
                {
                    let gib_per_second = fastest * entry.source.size_gib as f64 / 100.0;
                    self.fastest_gib_per_second =
                        Some(self.fastest_gib_per_second.map_or(gib_per_second, |s| s.max(gib_per_second)));
                }
            }
            // (A pending copy whose key is not reported yet is undecided: see `claim`.)
            let wrong_key = match self.asked.claim(status) {
                Claim::WrongKey { actual } if status.state != SnapshotState::Error => Some(actual),
                _ => None,
            };
            match &status.state {
                SnapshotState::Pending | SnapshotState::Completed if wrong_key.is_some() => {
                    // EC2 made the copy under another key than the one asked for (it reports
                    // the key from the start): not the copy the request asked for, whatever
                    // its state. Left in place, for a person to judge; never done.
                    let actual = wrong_key.flatten();
                    let reason = format!(
                        "{}; EC2 did not use the key asked for, so the copy does not count (it is left in place)",
                        self.asked.wrong_key_reason(status, actual.as_deref())
                    );
                    self.observer
                        .observe(RunEvent::SourceFailed { source: entry.source.id.clone(), reason: reason.clone() });
                    entry.error_copies.push(ErrorCopy { id: copy.id.clone(), message: reason.clone() });
                    entry.stage = Stage::Failed { copy_id: Some(copy.id.clone()), reason };
                }
                SnapshotState::Pending => {}
                SnapshotState::Completed => {
                    self.observer
                        .observe(RunEvent::CopyCompleted { source: entry.source.id.clone(), copy: copy.id.clone() });
                }
                SnapshotState::Error => {
                    let message = status.state_message.clone().unwrap_or_else(|| "EC2 gave no reason".to_owned());
                    let (source, copy_id) = (entry.source.id.clone(), copy.id.clone());
                    self.observer.observe(RunEvent::CopyErrored { source, copy: copy_id, message: message.clone() });
                    entry.error_copies.push(ErrorCopy { id: copy.id.clone(), message });
                    requeue.push(i);
                }
                SnapshotState::Other(state) => {
                    let message = status.state_message.as_deref().unwrap_or("EC2 gave no reason");
                    let reason = format!("copy {} ended in {state}: {message}", copy.id);
                    self.observer
                        .observe(RunEvent::SourceFailed { source: entry.source.id.clone(), reason: reason.clone() });
                    entry.stage = Stage::Failed { copy_id: Some(copy.id.clone()), reason };
                }
            }
        }
        let finished: Vec<SnapshotId> = pending
            .iter()
            .filter(|id| by_id.get(*id).is_some_and(|c| c.state != SnapshotState::Pending))
            .chain(vanished.iter().filter_map(|&i| match &self.entries[i].stage {
                Stage::Copying { copy, .. } => Some(&copy.id),
                _ => None,
            }))
            .cloned()
            .collect();
        for i in vanished {
            self.entries[i].stage = self.unsure(now);
        }
        for i in requeue {
            self.queue_or_fail(i);
        }
        self.finished_copies.extend(finished);
        Ok(())
    }

    /// Frees the ledger's slots of copies polls saw finish or vanish that no reservation has
    /// released yet (one write for all). A release that fails only leaves the slots counted
    /// until a refresh: never fewer counted than held.
    async fn release_slots(&mut self) {
        let store = self.store;
        let Some(ledger) = store.slot_ledger() else {
            self.finished_copies.clear();
            return;
        };
        if self.finished_copies.is_empty() || !self.may_call() {
            return;
        }
        let copies = std::mem::take(&mut self.finished_copies);
        let request = self.request;
        let target = &request.target_region;
        let result = slots::update(ledger, &self.timeline, target, None, |state| slots::release(state, &copies)).await;
        if let Err(error) = result {
            warn!(%error, copies = copies.len(), "could not release finished copies' slots in the slot ledger; a refresh will");
        }
    }

    fn pending_copies(&self) -> impl Iterator<Item = &TrackedCopy> {
        self.pending_copies_with_size().map(|(_, copy)| copy)
    }

    fn pending_copies_with_size(&self) -> impl Iterator<Item = (u64, &TrackedCopy)> {
        self.entries.iter().filter_map(|e| match &e.stage {
            Stage::Copying { copy, .. } if copy.state == SnapshotState::Pending => Some((e.source.size_gib, copy)),
            _ => None,
        })
    }

    /// When the earliest unsure start is due for a look, if there is one.
    fn next_unsure_look(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|e| match e.stage {
                Stage::Unsure { next_look, .. } => Some(next_look),
                _ => None,
            })
            .min()
    }

    /// Whether this invocation still has something to start, resolve or wait for.
    fn work_left(&self) -> bool {
        !self.queue.is_empty()
            || self.next_unsure_look().is_some()
            || (self.request.wait_for_completion && self.pending_copies().next().is_some())
    }

    /// How long to wait before the next poll (see [`poll_timing::next_wait`]).
    fn next_wait(&self, now: Instant) -> Duration {
        let context = WaitContext {
            poll_interval: self.limits.poll_interval,
            max_poll_interval: self.limits.max_poll_interval,
            fastest_gib_per_second: self.fastest_gib_per_second,
            prior: CopyTimeModel::DEFAULT,
            next_unsure_look: self.next_unsure_look(),
            region_full_rounds: self.region_full.then_some(self.full_rounds),
        };
        poll_timing::next_wait(
            now,
            &context,
            self.pending_copies_with_size().map(|(size, copy)| (size, &copy.estimate)),
        )
    }

    /// Why sources were left waiting, when the reason is not the copy quota doing its job: the
    /// invocation was too short to start anything, EC2 throttled it, or other invocations'
    /// copies fill this deployment's `pending_limit`.
    fn notes_for(&self) -> Vec<String> {
        let waiting = self.queue.len();
        if waiting == 0 {
            return Vec::new();
        }
        let waiting_text = plural(waiting, "source");
        let mut notes = Vec::new();
        if self.throttled_calls > 0 {
            notes.push(format!(
                "EC2 throttled {} beyond the SDK's retries; this invocation backed off and left {waiting_text} for the next",
                plural(self.throttled_calls, "call")
            ));
        }
        if let Some((pending, others)) = self.deployment_pending
            && pending >= self.request.pending_limit
            && others > 0
        {
            notes.push(format!(
                "this deployment has {pending} copies pending in {} (pending_limit {}; {others} started by other \
                 invocations); {waiting_text} wait for a slot",
                self.request.target_region, self.request.pending_limit
            ));
        }
        if self.ledger_failures > 0 {
            notes.push(format!(
                "the slot ledger did not answer in {} (no copy starts without a reserved slot); {waiting_text} wait \
                 for the next",
                plural(self.ledger_failures, "round")
            ));
        }
        let ran_out =
            !self.timeline.may_call() || self.timeline.work_until().is_some_and(|until| Instant::now() >= until);
        if self.copies_started == 0 && ran_out && !self.region_full {
            let total = self.timeline.total().map_or(String::new(), |t| format!("'s {:.1} s", t.as_secs_f64()));
            notes.push(format!(
                "the invocation{total} left no time to start a copy after the look; {waiting_text} wait for the next \
                 invocation (a Lambda Timeout of 30 s or more lets every invocation start copies)"
            ));
        }
        notes
    }

    /// The response; `CopyFailed` when failures remain and nothing else is left to do;
    /// `SourcesPending` for an event whose sources are not all started.
    fn finish(self) -> Result<Response, CopySnapshotsError> {
        let mut response = Response::default();
        for entry in &self.entries {
            let source_id = entry.source.id.to_string();
            match &entry.stage {
                Stage::Copying { copy, reused } => {
                    response.snapshot_ids.push(copy.id.to_string());
                    response.copies.push(CopyReport {
                        source_snapshot_id: source_id,
                        snapshot_id: copy.id.to_string(),
                        state: copy.state.as_str().to_owned(),
                        progress: copy.progress.map(|p| format!("{p}%")),
                        reused: *reused,
                    });
                }
                Stage::Failed { copy_id, reason } => response.failed.push(FailureReport {
                    source_snapshot_id: source_id,
                    snapshot_id: copy_id.as_ref().map(ToString::to_string),
                    error_snapshot_ids: entry.error_copies.iter().map(|e| e.id.to_string()).collect(),
                    error: reason.clone(),
                }),
                Stage::Waiting | Stage::NotReady | Stage::Unsure { .. } => response.pending_sources.push(source_id),
            }
        }
        // For the recovery-point metric: a source counts as copied once its copy is completed.
        // Only a request by filters selects the whole set the metric is about.
        if let SourceSelector::Filters(_) = self.request.sources {
            let oldest = crate::response::oldest_uncopied(self.entries.iter().map(|e| {
                (
                    e.source.start_time,
                    matches!(&e.stage, Stage::Copying { copy, .. } if copy.state == SnapshotState::Completed),
                )
            }));
            response.recovery_point = oldest.map_or(RecoveryPoint::AllCopied, RecoveryPoint::OldestUncopied);
        }
        let all_done = !self.request.wait_for_completion || self.pending_copies().next().is_none();
        response.notes = self.notes_for();
        if let Some(why) = self.deletions_blocked()
            && self.breaker.is_none()
        {
            response.notes.push(why);
        }
        response.duplicates_removed = self.duplicates_removed;
        response.skipped = self
            .skipped
            .iter()
            .filter_map(|looked| match &looked.status {
                SourceStatus::Skipped { reason } => {
                    Some(SkippedSource { source_snapshot_id: looked.source.to_string(), reason: reason.clone() })
                }
                _ => None,
            })
            .collect();
        let held_by_breaker = self.breaker.is_some();
        response.deletion_breaker = self.breaker;
        for deletion in self.deletions {
            let (snapshot_id, source_snapshot_id) = (deletion.copy.to_string(), deletion.source.to_string());
            let not_deleted = |error: String, image_id: Option<String>| NotDeletedCopy {
                snapshot_id: snapshot_id.clone(),
                source_snapshot_id: source_snapshot_id.clone(),
                reason: deletion.reason.clone(),
                error,
                image_id,
            };
            match deletion.outcome {
                DeletionOutcome::Deleted => {
                    response.deleted.push(DeletedCopy { snapshot_id, source_snapshot_id, reason: deletion.reason });
                }
                DeletionOutcome::AlreadyGone => {}
                DeletionOutcome::InUse(image) => response.not_deleted.push(not_deleted(
                    format!("in use by {image}, a registered AMI; deregister it first"),
                    Some(image),
                )),
                DeletionOutcome::Refused(error) => response.not_deleted.push(not_deleted(error, None)),
                DeletionOutcome::Denied(error) => {
                    response.deletions_denied += 1;
                    response.not_deleted.push(not_deleted(error, None));
                }
                // Held by the breaker: not work a later run of the same request does, so not
                // left (a Step Functions loop would never end); the answer says why.
                DeletionOutcome::Due if held_by_breaker => {}
                DeletionOutcome::Due | DeletionOutcome::Unsure => response.deletions_left += 1,
            }
        }
        response.complete = response.pending_sources.is_empty()
            && response.failed.is_empty()
            && all_done
            && response.deletions_left == 0;
        info!(
            copies = response.copies.len(),
            started = self.copies_started,
            pending_sources = response.pending_sources.len(),
            failed = response.failed.len(),
            duplicates_removed = response.duplicates_removed.len(),
            skipped = response.skipped.len(),
            deleted = response.deleted.len(),
            not_deleted = response.not_deleted.len(),
            deletions_left = response.deletions_left,
            complete = response.complete,
            "done"
        );
        let target_region = self.request.target_region.to_string();
        for note in &response.notes {
            warn!(%note, "sources left for the next invocation");
        }
        if self.request.from_queue {
            // A batch answers per record (its handler turns pending and failed sources into
            // batch item failures); no error would say more.
            return Ok(response);
        }
        if self.request.from_event && !response.pending_sources.is_empty() {
            let message = response.sources_pending_message(&target_region);
            return Err(CopySnapshotsError::SourcesPending { message, response: Box::new(response) });
        }
        if !response.failed.is_empty() && response.pending_sources.is_empty() && all_done {
            let message = response.copy_failed_message(&target_region);
            return Err(CopySnapshotsError::CopyFailed { message, response: Box::new(response) });
        }
        Ok(response)
    }
}

/// Entries for requested ids, in request order; all must exist and be ready, except in a batch
/// of queued events, where a snapshot gone since its event is skipped and one not ready yet
/// waits. A snapshot that is itself one of this project's copies is never a source: skipped.
fn entries_for_ids(
    ids: &[SnapshotId],
    found: Vec<SourceSnapshot>,
    request: &CopyRequest,
) -> Result<(Vec<Entry>, Vec<LookedSource>), CopySnapshotsError> {
    let mut by_id: HashMap<SnapshotId, SourceSnapshot> = found.into_iter().map(|s| (s.id.clone(), s)).collect();
    let mut skipped = Vec::new();
    let missing: Vec<&SnapshotId> = ids.iter().filter(|id| !by_id.contains_key(*id)).collect();
    if request.from_queue {
        for id in missing {
            let reason = format!("not found in {} (deleted since its event, or not visible)", request.source_region);
            skipped.push(LookedSource { source: id.clone(), size_gib: 0, status: SourceStatus::Skipped { reason } });
        }
    } else if !missing.is_empty() {
        let missing: Vec<&str> = missing.into_iter().map(SnapshotId::as_str).collect();
        return Err(CopySnapshotsError::SourceNotFound(format!(
            "{} not found in {} (or not visible to this account): {}; nothing was copied",
            plural(missing.len(), "snapshot"),
            request.source_region,
            missing.join(", ")
        )));
    }
    let mut entries = Vec::with_capacity(ids.len());
    let mut not_ready = Vec::new();
    for id in ids {
        let Some(source) = by_id.remove(id) else { continue };
        if let Some(reason) = own_copy_reason(&source) {
            skipped.push(LookedSource {
                source: source.id.clone(),
                size_gib: source.size_gib,
                status: SourceStatus::Skipped { reason },
            });
            continue;
        }
        match not_ready_reason(&source) {
            None => entries.push(Entry::new(source, Stage::Waiting)),
            Some(_) if request.from_queue && source.state == SnapshotState::Pending => {
                entries.push(Entry::new(source, Stage::NotReady));
            }
            Some(why) if request.from_queue => {
                skipped.push(LookedSource {
                    source: source.id.clone(),
                    size_gib: source.size_gib,
                    status: SourceStatus::Skipped { reason: format!("cannot be copied: {why}") },
                });
            }
            Some(why) => not_ready.push(format!("{} {why}", source.id)),
        }
    }
    if !not_ready.is_empty() {
        return Err(CopySnapshotsError::SourceNotReady(format!(
            "{} not ready to copy: {}; copy once they are `completed` (and in the standard tier); nothing was copied",
            plural(not_ready.len(), "snapshot"),
            not_ready.join("; ")
        )));
    }
    Ok((entries, skipped))
}

/// Why a snapshot is never a source: it carries this project's tracking tag, so it is a copy
/// some deployment of this function made. Copying it again would never end when two stacks
/// copy both ways (A to B and B to A), or within one region.
fn own_copy_reason(source: &SourceSnapshot) -> Option<String> {
    source.tag(SOURCE_SNAPSHOT_TAG).map(|of| {
        let from = source.tag(SOURCE_REGION_TAG).unwrap_or("another region");
        format!("a copy this function made (of {of} from {from}); copies are never copied again")
    })
}

/// Entries for what the filters matched, sorted by id for a stable order. Snapshots not yet
/// completed wait for a later invocation; ones that never will be are left out, and returned
/// with why.
fn entries_for_filters(mut found: Vec<SourceSnapshot>) -> (Vec<Entry>, Vec<LookedSource>) {
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found.dedup_by(|a, b| a.id == b.id);
    let mut skipped = Vec::new();
    let mut skip = |source: &SourceSnapshot, reason: String| {
        skipped.push(LookedSource {
            source: source.id.clone(),
            size_gib: source.size_gib,
            status: SourceStatus::Skipped { reason },
        });
    };
    let mut entries = Vec::new();
    for source in found {
        // This project's copies match the same filters (with copy_tags, or a filter on a tag
        // every snapshot carries): within one region, or with stacks copying both ways,
        // copying them again would never end.
        if let Some(reason) = own_copy_reason(&source) {
            debug!(snapshot = %source.id, "skipping a copy this function made");
            skip(&source, reason);
            continue;
        }
        match (&source.state, source.archived) {
            (SnapshotState::Completed, false) => entries.push(Entry::new(source, Stage::Waiting)),
            (SnapshotState::Pending, _) => entries.push(Entry::new(source, Stage::NotReady)),
            _ => {
                warn!(snapshot = %source.id, state = source.state.as_str(), archived = source.archived, "skipping a snapshot that cannot be copied");
                let reason = not_ready_reason(&source).unwrap_or_else(|| "cannot be copied".to_owned());
                skip(&source, reason);
            }
        }
    }
    (entries, skipped)
}

/// Why a source this run copies has no usable copy, when there is more to say than "none".
fn to_copy_note(entry: &Entry) -> Option<String> {
    (!entry.error_copies.is_empty())
        .then(|| format!("{} of {MAX_ATTEMPTS} attempts ended in error before", entry.error_copies.len()))
}

fn not_ready_reason(source: &SourceSnapshot) -> Option<String> {
    if source.archived {
        return Some("is in the archive tier; restore it first".to_owned());
    }
    (source.state != SnapshotState::Completed).then(|| format!("is {}", source.state.as_str()))
}

/// How long the looks for an unsure start span: 1 + 2 + 4 + 8 poll intervals. A copy EC2
/// confirmed but that is missing from every listing for twice that is taken as gone.
fn unsure_window(poll_interval: Duration) -> Duration {
    poll_interval * (2u32.pow(UNSURE_LOOKS) - 1)
}

/// Which of two completed copies of one source to keep (the greater): the oldest, then the
/// lower id. Only what never changes ranks them, so overlapping invocations, looking at
/// different moments, never delete each other's keeper: a copy is deleted only when a copy
/// ranked above it is completed, so the best-ranked completed copy always survives. (Which
/// copy a run *tracks* may follow the state: a completed one over a pending one.)
fn keep_rank(copy: &CopyStatus) -> (Reverse<SystemTime>, Reverse<SnapshotId>) {
    // A copy without a start time sorts as the newest.
    let started = copy.start_time.unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(u32::MAX.into()));
    (Reverse(started), Reverse(copy.id.clone()))
}

/// The CopySnapshot call for one source: description, encryption, and the tags, tracking tags
/// last so nothing overrides them.
fn copy_spec(source: &SourceSnapshot, request: &CopyRequest, asked: &AskedEncryption) -> Result<CopySpec, String> {
    let mut tags: BTreeMap<&str, &str> = BTreeMap::new();
    if request.copy_tags {
        for tag in &source.tags {
            if !tag.key.starts_with("aws:") && !tag.key.starts_with(RESERVED_TAG_PREFIX) {
                tags.insert(&tag.key, &tag.value);
            }
        }
    }
    for tag in &request.tags {
        tags.insert(&tag.key, &tag.value);
    }
    let start_time = source.start_time.map(format_start_time);
    let before = tags.len();
    tags.insert(SOURCE_SNAPSHOT_TAG, source.id.as_str());
    tags.insert(SOURCE_REGION_TAG, request.source_region.as_str());
    tags.insert(ENCRYPTION_TAG, asked.tag_value());
    // What retention needs to judge the copy even once its source is gone.
    if let Some(volume) = &source.volume_id {
        tags.insert(SOURCE_VOLUME_TAG, volume);
    }
    if let Some(start_time) = &start_time {
        tags.insert(SOURCE_START_TIME_TAG, start_time);
    }
    if tags.len() > MAX_TAGS_PER_SNAPSHOT {
        return Err(format!(
            "the copy would carry {} tags (the source's, `tags` and {} of this function's); EC2 allows {MAX_TAGS_PER_SNAPSHOT}",
            tags.len(),
            tags.len() - before
        ));
    }
    Ok(CopySpec {
        source_id: source.id.clone(),
        source_region: request.source_region.clone(),
        target_region: request.target_region.clone(),
        description: format!("Copy of {} from {}", source.id, request.source_region),
        encrypted: request.encrypt,
        // The key's ARN, as resolved: the key verified is the key EC2 is asked for, even if
        // the alias is moved meanwhile.
        kms_key_id: asked.key_arn().map(str::to_owned),
        tags: tags.into_iter().map(|(k, v)| Tag::new(k, v)).collect(),
        completion_duration_minutes: request.completion_duration_minutes,
    })
}

/// The request's encryption, its key resolved in the target region (kms:DescribeKey) to the
/// key ARN its copies must be under: an alias names one key, not any. A key that does not
/// exist, cannot be described, is not enabled or cannot encrypt a volume is a bad request,
/// refused before any copy.
async fn resolve_encryption<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    timeline: &Timeline,
) -> Result<AskedEncryption, CopySnapshotsError> {
    let key = match (&request.kms_key, request.encrypt) {
        (_, false) => return Ok(AskedEncryption::Plain),
        (None, true) => return Ok(AskedEncryption::DefaultKey),
        (Some(key), true) => key.as_str(),
    };
    let target = &request.target_region;
    let valid = format!(
        "valid: the key id, key ARN, alias name or alias ARN of an enabled symmetric encryption key in {target} \
         that this function's role may describe (kms:DescribeKey; the stack's KmsKeyArns); nothing was copied"
    );
    let invalid = |what: String| CopySnapshotsError::InvalidRequest(format!("kms_key_id: {what}; {valid}"));
    match timeline.call_retrying(|| store.describe_key(target, key)).await {
        Ok(found) if found.state != "Enabled" => Err(invalid(format!(
            "`{}` names the key {}, which is {} (EC2 cannot encrypt a copy under it)",
            shorten(key),
            found.arn,
            found.state
        ))),
        Ok(found) if !found.spec.is_empty() && found.spec != "SYMMETRIC_DEFAULT" => Err(invalid(format!(
            "`{}` names the key {}, a {} key; EBS encrypts only under symmetric encryption keys",
            shorten(key),
            found.arn,
            found.spec
        ))),
        Ok(found) => {
            debug!(key, arn = %found.arn, "KMS key resolved");
            Ok(AskedEncryption::Key { given: key.to_owned(), arn: found.arn })
        }
        Err(StoreError::NotFound(message)) => {
            Err(invalid(format!("no key `{}` in {target} ({message})", shorten(key))))
        }
        // The key policy or the role does not let this function describe the key: as the
        // issue asks, a bad request (the key must be one the stack allows). Expired or unknown
        // credentials are not the key's fault: AccessDenied, as for any other call.
        Err(StoreError::AccessDenied(message)) if message.starts_with("AccessDeniedException") => {
            Err(invalid(format!("`{}` cannot be described in {target} ({message})", shorten(key))))
        }
        Err(StoreError::Refused { code, message }) => {
            Err(invalid(format!("`{}` cannot be described in {target} ({code}: {message})", shorten(key))))
        }
        Err(other) => Err(look_failed(other, &format!("describing the KMS key {key} in {target}"), timeline)),
    }
}

/// Maps an error of the look (before any copy) to its errorType. A look cut off by the
/// deadline says that the invocation was too short, and what would do.
fn look_failed(error: StoreError, doing: &str, timeline: &Timeline) -> CopySnapshotsError {
    if let (StoreError::Unknown(message), Some(total)) = (&error, timeline.total())
        && !timeline.may_call()
    {
        return CopySnapshotsError::Ec2Error(format!(
            "the invocation's {:.1} s ran out {doing}: {message}; nothing was copied; give the function more time \
             (a Lambda Timeout of 30 s or more lets every invocation look and start copies)",
            total.as_secs_f64()
        ));
    }
    fatal(error, doing, 0)
}

/// Maps a store error that ends the invocation to its errorType, saying how far it got.
fn fatal(error: StoreError, doing: &str, copies_started: usize) -> CopySnapshotsError {
    let so_far = match copies_started {
        0 => "no copy was started".to_owned(),
        n => format!("{} started before this; calling again with the same request continues", plural(n, "copy")),
    };
    match error {
        StoreError::AccessDenied(message) => {
            CopySnapshotsError::AccessDenied(format!("access denied {doing}: {message}; {so_far}"))
        }
        StoreError::Throttled(message) => {
            CopySnapshotsError::Throttled(format!("EC2 throttled {doing} beyond retries: {message}; {so_far}"))
        }
        StoreError::NotFound(message) => CopySnapshotsError::SourceNotFound(format!("{doing}: {message}; {so_far}")),
        StoreError::NotReady(message) => CopySnapshotsError::SourceNotReady(format!("{doing}: {message}; {so_far}")),
        other => CopySnapshotsError::Ec2Error(format!("EC2 failed {doing}: {other}; {so_far}")),
    }
}

/// Names the request's sources for messages: its filters, or how many ids.
fn describe_selector(selector: &SourceSelector) -> String {
    match selector {
        SourceSelector::Ids(ids) => format!("the {}", plural(ids.len(), "requested snapshot")),
        SourceSelector::Filters(filters) => {
            let shown: Vec<String> =
                filters.iter().map(|f| format!("{}={}", shorten(&f.name), shorten(&f.values.join(",")))).collect();
            format!("the snapshots matching filters {}", shown.join(" "))
        }
    }
}
