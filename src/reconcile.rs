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
use crate::plan::{CopyTimeModel, Plan, PlannedDeletion};
use crate::poll_timing::{self, CompletionEstimate, WaitContext};
use crate::progress::{LogObserver, LookedSource, Observer, RunEvent, SourceStatus, StopSignal};
use crate::request::CopyRequest;
use crate::response::{
    CopyReport, DeletedCopy, FailureReport, NotDeletedCopy, RecoveryPoint, RemovedCopy, Response, SkippedSource, plural,
};
use crate::retention::{self, Member};
use crate::store::{
    CopySpec, CopyStatus, ENCRYPTION_TAG, RESERVED_TAG_PREFIX, SOURCE_REGION_TAG, SOURCE_SNAPSHOT_TAG,
    SOURCE_START_TIME_TAG, SOURCE_VOLUME_TAG, SnapshotState, SnapshotStore, SourceSelector, SourceSnapshot, StoreError,
    Tag, format_start_time,
};

/// How long before the invocation's deadline the engine stops, so its last calls (each bounded
/// by the SDK's operation timeout) and the response fit in the time left. A short-lived
/// invocation keeps a quarter of its time instead, so it still gets work done.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(30);
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
/// Time kept after the last call for building and returning the answer.
pub const RESPONSE_RESERVE: Duration = Duration::from_secs(2);

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
    // A call may start only while its longest duration, and the answer after it, still fit
    // before the deadline.
    let last_call = limits
        .deadline
        .map(|deadline| deadline.checked_sub(limits.call_timeout + RESPONSE_RESERVE).unwrap_or(started).max(started));
    let mut run = Run::look(store, request, limits, last_call, observer, stop.clone()).await?;
    let mut stop = stop;
    // Starting copies may go on until the margin before the deadline; waiting also ends at
    // `max_wait_seconds`.
    let work_until = limits.deadline.map(|deadline| {
        let margin = DEADLINE_MARGIN.min(deadline.saturating_duration_since(started) / 4);
        deadline.checked_sub(margin).unwrap_or(started)
    });
    let wait_until = [work_until, request.max_wait.map(|max| started + max), last_call].into_iter().flatten().min();
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
        let wake = now + run.next_wait(now);
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
    let limits = RunLimits {
        deadline: None,
        poll_interval: Duration::ZERO,
        max_poll_interval: Duration::ZERO,
        call_timeout: Duration::ZERO,
    };
    let run = Run::look(store, request, limits, None, observer, StopSignal::never()).await?;
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
    .with_deletions(&run.planned_deletions()))
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
    /// This project's copies of the source that ended in `error`, found by their tags or seen
    /// failing: the source's attempts so far, kept in EC2 itself.
    error_copies: Vec<ErrorCopy>,
    /// Earlier copies that do not serve the request (encrypted otherwise), for the plan.
    unfit_copies: Vec<SnapshotId>,
}

impl Entry {
    fn new(source: SourceSnapshot, stage: Stage) -> Self {
        Self { source, stage, error_copies: Vec::new(), unfit_copies: Vec::new() }
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
    /// The volume the request selects that the copy belongs to: its last completed copy stays
    /// until a copy in retention of that volume has completed.
    volume: Option<String>,
    /// The source's start time, to tell which copy of a volume is its newest.
    source_start: Option<SystemTime>,
    outcome: DeletionOutcome,
}

#[derive(Debug, PartialEq)]
enum DeletionOutcome {
    Due,
    Deleted,
    /// EC2 refused (in use by an AMI, locked, …), with its answer.
    Refused(String),
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

struct Run<'a, S> {
    store: &'a S,
    request: &'a CopyRequest,
    observer: &'a dyn Observer,
    stop: StopSignal,
    limits: RunLimits,
    /// The last moment a store call may start (`None`: no deadline).
    last_call: Option<Instant>,
    entries: Vec<Entry>,
    /// Snapshots the filters matched that can never be copied, with why (for the look's report).
    skipped: Vec<LookedSource>,
    /// Sources without a copy, largest first; ties in request order.
    queue: BinaryHeap<(u64, Reverse<usize>)>,
    /// EC2 answered ResourceLimitExceeded since the last poll: no start until then.
    region_full: bool,
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
    /// Volumes the request selects with a completed copy in retention of a source gone from
    /// the source region: their other copies may go at once.
    volumes_with_kept_copy: HashSet<String>,
}

impl<'a, S: SnapshotStore> Run<'a, S> {
    /// Resolves the sources and finds the copies earlier invocations made, live and failed.
    async fn look(
        store: &'a S,
        request: &'a CopyRequest,
        limits: RunLimits,
        last_call: Option<Instant>,
        observer: &'a dyn Observer,
        stop: StopSignal,
    ) -> Result<Self, CopySnapshotsError> {
        let region = &request.source_region;
        let doing = format!("looking up {} in {region}", describe_selector(&request.sources));
        let found = store.describe_sources(region, &request.sources).await.map_err(|e| match e {
            // A definite refusal of the request's own filters or ids (a misspelled filter
            // name, a bad value) fails the same way on every retry: the request must change.
            StoreError::Refused { code, message } => CopySnapshotsError::InvalidRequest(format!(
                "EC2 refused {doing}: {code}: {message}; valid: DescribeSnapshots filter names (`tag:<key>`, \
                 `tag-key`, `volume-id`, `status`, … as the EC2 API reference lists them), at most 200 values each; \
                 nothing was copied"
            )),
            other => fatal(other, &doing, 0),
        })?;
        let (entries, skipped) = match &request.sources {
            SourceSelector::Ids(ids) => (entries_for_ids(ids, found, request)?, Vec::new()),
            SourceSelector::Filters(_) => entries_for_filters(found, request),
        };
        debug!(sources = entries.len(), "sources resolved");

        let mut run = Self {
            store,
            request,
            observer,
            stop,
            limits,
            last_call,
            entries,
            skipped,
            queue: BinaryHeap::new(),
            region_full: false,
            full_rounds: 0,
            copies_started: 0,
            fastest_gib_per_second: None,
            duplicates: Vec::new(),
            duplicates_removed: Vec::new(),
            deletions: Vec::new(),
            volumes_with_kept_copy: HashSet::new(),
        };
        let doing = format!("looking for earlier copies in {}", request.target_region);
        if request.retention.is_set() {
            // Retention judges every copy from this region, whatever its source: one listing
            // serves that and the look for earlier copies alike.
            let copies = store.list_copies(&request.target_region, region).await.map_err(|e| fatal(e, &doing, 0))?;
            run.judge_retention(&copies).await;
            let wanted: HashSet<&SnapshotId> =
                run.entries.iter().filter(|e| matches!(e.stage, Stage::Waiting)).map(|e| &e.source.id).collect();
            let existing = copies.iter().filter(|c| wanted.contains(&c.source_id)).cloned().collect();
            run.adopt(existing, true);
        } else {
            let wanted: Vec<SnapshotId> =
                run.entries.iter().filter(|e| matches!(e.stage, Stage::Waiting)).map(|e| e.source.id.clone()).collect();
            if !wanted.is_empty() {
                let existing = store
                    .find_copies(&request.target_region, region, &wanted)
                    .await
                    .map_err(|e| fatal(e, &doing, 0))?;
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
    async fn judge_retention(&mut self, copies: &[CopyStatus]) {
        let request = self.request;
        let rule = request.retention;
        let region = &request.source_region;
        let now = self.store.wall_clock();
        let asked = encryption_asked(request);
        let ours: Vec<&CopyStatus> = copies
            .iter()
            .filter(|c| match &c.requested_encryption {
                Some(tag) => *tag == asked,
                None => encrypted_as_asked(c, request),
            })
            .collect();
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
            match self.store.describe_sources(region, &SourceSelector::Ids(unresolved.clone())).await {
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
        // What the look knows of each skipped source: its volume and start time.
        let mut origin_of: HashMap<SnapshotId, (Option<String>, Option<SystemTime>)> = HashMap::new();
        for entry in std::mem::take(&mut self.entries) {
            match out.get(&entry.source.id) {
                Some(reason) => {
                    debug!(source = %entry.source.id, %reason, "skipping a source out of retention");
                    origin_of
                        .insert(entry.source.id.clone(), (entry.source.volume_id.clone(), entry.source.start_time));
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

        // Their copies, and the copies of gone sources out of retention or past the grace, go.
        for copy in &ours {
            let reason = if let Some(out_reason) = out.get(&copy.source_id) {
                if gone.contains(&copy.source_id) {
                    format!("its source is gone from {region} and {out_reason}")
                } else {
                    format!("its source is {out_reason}")
                }
            } else if gone.contains(&copy.source_id) {
                let started = copy.source_start_time.or(copy.start_time);
                match started.and_then(|started| rule.orphan_due(now, started)) {
                    Some(why) => format!("its source is gone from {region} and {why}"),
                    None => {
                        // A gone source in retention: its completed copy is one of its volume's
                        // recovery copies.
                        if copy.state == SnapshotState::Completed
                            && let Some(volume) =
                                copy.source_volume_id.as_ref().filter(|v| selected_volumes.contains(*v))
                        {
                            self.volumes_with_kept_copy.insert(volume.clone());
                        }
                        continue;
                    }
                }
            } else {
                continue;
            };
            if !matches!(copy.state, SnapshotState::Completed | SnapshotState::Error | SnapshotState::Pending) {
                debug!(copy = %copy.id, state = copy.state.as_str(), "a copy in this state is not deleted");
                continue;
            }
            // The source's own volume and start when the look saw it (a copy made before the
            // tags existed has neither), else the copy's tags, else the copy's own start.
            let (volume, source_start) = origin_of
                .get(&copy.source_id)
                .cloned()
                .unwrap_or_else(|| (copy.source_volume_id.clone(), copy.source_start_time));
            let volume = volume.filter(|v| selected_volumes.contains(v));
            self.deletions.push(Deletion {
                copy: copy.id.clone(),
                source: copy.source_id.clone(),
                size_gib: copy.size_gib,
                state: copy.state.clone(),
                reason,
                volume,
                source_start: source_start.or(copy.start_time),
                outcome: DeletionOutcome::Due,
            });
        }
        if !self.deletions.is_empty() || !out.is_empty() {
            info!(
                out_of_retention = out.len(),
                gone = gone.len(),
                deletions = self.deletions.len(),
                rule = %rule.describe(),
                "retention judged"
            );
        }
    }

    /// Whether a volume the request selects has a completed copy in retention (this request's).
    fn volume_has_copy_in_retention(&self, volume: &str) -> bool {
        self.volumes_with_kept_copy.contains(volume)
            || self.entries.iter().any(|e| {
                e.source.volume_id.as_deref() == Some(volume)
                    && matches!(&e.stage, Stage::Copying { copy, .. } if copy.state == SnapshotState::Completed)
            })
    }

    /// Deletions that must wait: of a volume with no completed copy in retention yet (its new
    /// copy is still pending, say), the newest completed copy due for deletion stays, so the
    /// volume never has no recovery copy at all. Indexes into `deletions`.
    fn held_back(&self) -> HashSet<usize> {
        let mut covered: HashMap<&str, bool> = HashMap::new();
        let mut newest: HashMap<&str, usize> = HashMap::new();
        for (i, deletion) in self.deletions.iter().enumerate() {
            if deletion.outcome != DeletionOutcome::Due || deletion.state != SnapshotState::Completed {
                continue;
            }
            let Some(volume) = deletion.volume.as_deref() else { continue };
            if *covered.entry(volume).or_insert_with(|| self.volume_has_copy_in_retention(volume)) {
                continue;
            }
            let rank = |d: &Deletion| (d.source_start, d.copy.clone());
            newest
                .entry(volume)
                .and_modify(|held| {
                    if rank(deletion) > rank(&self.deletions[*held]) {
                        *held = i;
                    }
                })
                .or_insert(i);
        }
        newest.into_values().collect()
    }

    /// Deletes what retention deletes, until `until` (the next poll; the end of the work), the
    /// stop signal or the last moment a call may start: whatever is left, the next run deletes.
    /// A refusal (in use by an AMI, locked, access denied) is reported and skipped; throttling
    /// ends this round of deletions; none of it fails the run.
    async fn prune(&mut self, until: Option<Instant>) {
        if !self.deletions.iter().any(|d| d.outcome == DeletionOutcome::Due) {
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
            let result = self.store.delete_copy(&self.request.target_region, &deletion.copy).await;
            let deletion = &mut self.deletions[i];
            let (source, copy) = (deletion.source.clone(), deletion.copy.clone());
            match result {
                Ok(()) => {
                    self.observer.observe(RunEvent::CopyDeleted { source, copy, reason: deletion.reason.clone() });
                    deletion.outcome = DeletionOutcome::Deleted;
                }
                Err(StoreError::Throttled(message)) => {
                    warn!(%copy, %message, "EC2 throttled a deletion; the rest wait for the next round");
                    break;
                }
                Err(StoreError::Unknown(message)) => {
                    warn!(%copy, %message, "a deletion had no definite answer; the next run sees whether it went");
                    deletion.outcome = DeletionOutcome::Unsure;
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
                later: if d.state == SnapshotState::Pending {
                    Some("the copy is still pending: a run after it completes deletes it".to_owned())
                } else if held.contains(&i) {
                    Some(format!(
                        "the last completed copy of {} until a copy in retention completes",
                        d.volume.as_deref().unwrap_or("its volume")
                    ))
                } else {
                    None
                },
            })
            .collect()
    }

    /// Takes over copies found by their tags: an `error` copy encrypted as asked counts as an
    /// attempt; of the live copies that satisfy the request, the oldest is tracked, and any
    /// other encrypted alike is queued for deletion, so duplicates heal.
    fn adopt(&mut self, copies: Vec<CopyStatus>, reused: bool) {
        let index: HashMap<SnapshotId, usize> =
            self.entries.iter().enumerate().map(|(i, e)| (e.source.id.clone(), i)).collect();
        let mut live: BTreeMap<usize, Vec<CopyStatus>> = BTreeMap::new();
        for copy in copies {
            let Some(&i) = index.get(&copy.source_id) else { continue };
            let alive = matches!(copy.state, SnapshotState::Pending | SnapshotState::Completed);
            if copy.state == SnapshotState::Error {
                // An attempt of this request only if it asked for encryption alike (copies made
                // before the encryption tag: if EC2 reports them encrypted as asked).
                let same_ask = match &copy.requested_encryption {
                    Some(asked) => *asked == encryption_asked(self.request),
                    None => encrypted_as_asked(&copy, self.request),
                };
                if !same_ask {
                    debug!(copy = %copy.id, source = %copy.source_id, "error copy of a request asking for other encryption");
                    continue;
                }
                let errors = &mut self.entries[i].error_copies;
                if !errors.iter().any(|e| e.id == copy.id) {
                    let message = copy.state_message.unwrap_or_else(|| "EC2 gave no reason".to_owned());
                    errors.push(ErrorCopy { id: copy.id, message });
                }
            } else if !encrypted_as_asked(&copy, self.request) {
                debug!(copy = %copy.id, source = %copy.source_id, "earlier copy is not encrypted as asked");
                if alive && !self.entries[i].unfit_copies.contains(&copy.id) {
                    self.entries[i].unfit_copies.push(copy.id);
                }
            } else if alive {
                live.entry(i).or_default().push(copy);
            } else {
                debug!(copy = %copy.id, source = %copy.source_id, state = copy.state.as_str(), "earlier copy does not count");
            }
        }
        let now = Instant::now();
        for (i, mut copies) in live {
            copies.sort_by_key(|c| Reverse(keep_rank(c)));
            let mut copies = copies.into_iter();
            let Some(kept) = copies.next() else { continue };
            for extra in copies.filter(|c| same_encryption(c, &kept)) {
                warn!(source = %kept.source_id, kept = %kept.id, duplicate = %extra.id, "source has a second live copy; removing it");
                self.duplicates.push((i, extra.id));
            }
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
        self.last_call.is_none_or(|last| Instant::now() <= last)
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
            match self.store.delete_copy(&self.request.target_region, &copy_id).await {
                Ok(()) => {
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
        let found = match self.store.find_copies(&self.request.target_region, &self.request.source_region, &ids).await {
            Ok(found) => found,
            Err(StoreError::Unknown(message)) => {
                warn!(%message, "could not look for copies of unsure starts; trying again next round");
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

    /// Starts copies, largest first, while this request holds fewer than `pending_limit`
    /// slots and the region has room.
    async fn start_what_fits(&mut self, work_until: Option<Instant>) -> Result<(), CopySnapshotsError> {
        let mut slots_held = self.slots_held();
        while slots_held < self.request.pending_limit && !self.region_full {
            if work_until.is_some_and(|until| Instant::now() >= until) || !self.may_call() || self.stop.is_set() {
                break;
            }
            let Some((_, Reverse(i))) = self.queue.pop() else { break };
            let spec = match copy_spec(&self.entries[i].source, self.request) {
                Ok(spec) => spec,
                Err(reason) => {
                    self.fail(i, reason);
                    continue;
                }
            };
            let result = self.store.start_copy(&spec).await;
            let source = &self.entries[i].source;
            match result {
                Ok(copy_id) => {
                    let (source, copy, size_gib) = (source.id.clone(), copy_id.clone(), source.size_gib);
                    self.observer.observe(RunEvent::CopyStarted { source, copy, size_gib });
                    slots_held += 1;
                    self.copies_started += 1;
                    self.full_rounds = 0;
                    self.entries[i].stage = Stage::Copying {
                        copy: TrackedCopy {
                            id: copy_id,
                            state: SnapshotState::Pending,
                            progress: None,
                            estimate: CompletionEstimate::started_at(Instant::now()),
                            seen: false,
                        },
                        reused: false,
                    };
                }
                Err(StoreError::NoSlot(message)) => {
                    debug!(%message, "region's copy quota is full; waiting for a slot");
                    self.region_full = true;
                    if self.pending_copies().next().is_none() {
                        self.full_rounds += 1;
                    }
                    self.queue.push((source.size_gib, Reverse(i)));
                }
                Err(StoreError::Unknown(message)) => {
                    self.observer.observe(RunEvent::StartUnsure { source: source.id.clone(), message });
                    slots_held += 1;
                    self.entries[i].stage = self.unsure(Instant::now());
                }
                Err(StoreError::Refused { code, message }) => {
                    self.fail(i, format!("EC2 refused the copy: {code}: {message}"));
                }
                Err(StoreError::NotFound(message) | StoreError::NotReady(message)) => {
                    self.fail(i, format!("EC2 refused the copy: {message}"));
                }
                Err(e @ (StoreError::AccessDenied(_) | StoreError::Throttled(_))) => {
                    let doing = format!("starting the copy of {}", source.id);
                    return Err(fatal(e, &doing, self.copies_started));
                }
            }
            debug_assert_eq!(slots_held, self.slots_held(), "slot count drifted");
        }
        Ok(())
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
        let answer = self
            .store
            .describe_copies(&self.request.target_region, &pending)
            .await
            .map_err(|e| fatal(e, "polling the copies", self.copies_started))?;
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
            match &status.state {
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
        for i in vanished {
            self.entries[i].stage = self.unsure(now);
        }
        for i in requeue {
            self.queue_or_fail(i);
        }
        Ok(())
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
        for deletion in self.deletions {
            let (snapshot_id, source_snapshot_id) = (deletion.copy.to_string(), deletion.source.to_string());
            match deletion.outcome {
                DeletionOutcome::Deleted => {
                    response.deleted.push(DeletedCopy { snapshot_id, source_snapshot_id, reason: deletion.reason });
                }
                DeletionOutcome::Refused(error) => response.not_deleted.push(NotDeletedCopy {
                    snapshot_id,
                    source_snapshot_id,
                    reason: deletion.reason,
                    error,
                }),
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

/// Entries for requested ids, in request order; all must exist and be ready.
fn entries_for_ids(
    ids: &[SnapshotId],
    found: Vec<SourceSnapshot>,
    request: &CopyRequest,
) -> Result<Vec<Entry>, CopySnapshotsError> {
    let mut by_id: HashMap<SnapshotId, SourceSnapshot> = found.into_iter().map(|s| (s.id.clone(), s)).collect();
    let missing: Vec<&str> = ids.iter().filter(|id| !by_id.contains_key(*id)).map(SnapshotId::as_str).collect();
    if !missing.is_empty() {
        return Err(CopySnapshotsError::SourceNotFound(format!(
            "{} not found in {} (or not visible to this account): {}; nothing was copied",
            plural(missing.len(), "snapshot"),
            request.source_region,
            missing.join(", ")
        )));
    }
    let not_ready: Vec<String> = ids
        .iter()
        .filter_map(|id| by_id.get(id))
        .filter_map(|s| not_ready_reason(s).map(|why| format!("{} {why}", s.id)))
        .collect();
    if !not_ready.is_empty() {
        return Err(CopySnapshotsError::SourceNotReady(format!(
            "{} not ready to copy: {}; copy once they are `completed` (and in the standard tier); nothing was copied",
            plural(not_ready.len(), "snapshot"),
            not_ready.join("; ")
        )));
    }
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).map(|source| Entry::new(source, Stage::Waiting)).collect())
}

/// Entries for what the filters matched, sorted by id for a stable order. Snapshots not yet
/// completed wait for a later invocation; ones that never will be are left out, and returned
/// with why.
fn entries_for_filters(mut found: Vec<SourceSnapshot>, request: &CopyRequest) -> (Vec<Entry>, Vec<LookedSource>) {
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
        // Copying within one region, this function's own copies match the same filters
        // (with copy_tags): copying them again would never end.
        if request.source_region == request.target_region && source.tag(SOURCE_SNAPSHOT_TAG).is_some() {
            debug!(snapshot = %source.id, "skipping a copy this function made");
            skip(&source, "a copy this function made".to_owned());
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
    let mut notes = Vec::new();
    if !entry.unfit_copies.is_empty() {
        let ids: Vec<&str> = entry.unfit_copies.iter().map(SnapshotId::as_str).collect();
        notes.push(format!("{} not encrypted as asked: {}", plural(ids.len(), "earlier copy"), ids.join(", ")));
    }
    if !entry.error_copies.is_empty() {
        notes.push(format!("{} of {MAX_ATTEMPTS} attempts ended in error before", entry.error_copies.len()));
    }
    (!notes.is_empty()).then(|| notes.join("; "))
}

fn not_ready_reason(source: &SourceSnapshot) -> Option<String> {
    if source.archived {
        return Some("is in the archive tier; restore it first".to_owned());
    }
    (source.state != SnapshotState::Completed).then(|| format!("is {}", source.state.as_str()))
}

/// The request's [`ENCRYPTION_TAG`] value.
fn encryption_asked(request: &CopyRequest) -> String {
    match (&request.kms_key, request.encrypt) {
        (_, false) => "none".to_owned(),
        (None, true) => "default".to_owned(),
        (Some(key), true) => key.as_str().to_owned(),
    }
}

/// Whether an earlier copy is encrypted as the request asks: only those serve it.
fn encrypted_as_asked(copy: &CopyStatus, request: &CopyRequest) -> bool {
    let encryption_ok = !request.encrypt || copy.encrypted;
    let key_ok = request.kms_key.as_ref().is_none_or(|key| key.matches(copy.kms_key_id.as_deref()));
    encryption_ok && key_ok
}

/// How long the looks for an unsure start span: 1 + 2 + 4 + 8 poll intervals. A copy EC2
/// confirmed but that is missing from every listing for twice that is taken as gone.
fn unsure_window(poll_interval: Duration) -> Duration {
    poll_interval * (2u32.pow(UNSURE_LOOKS) - 1)
}

/// Which of two live copies of one source to keep (the greater): the oldest, then the lower
/// id. Only what never changes counts, so overlapping invocations, looking at different
/// moments, all keep the same one: a rule on the state ("completed over pending") would let one
/// invocation keep a newer completed copy while another, a moment later, sees the older one
/// completed too and keeps that, and together they would delete both.
fn keep_rank(copy: &CopyStatus) -> (Reverse<SystemTime>, Reverse<SnapshotId>) {
    // A copy without a start time sorts as the newest.
    let started = copy.start_time.unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(u32::MAX.into()));
    (Reverse(started), Reverse(copy.id.clone()))
}

/// Two live copies of one source are duplicates only when they are encrypted alike: a plain
/// copy and one under a key serve different requests (a plain request accepts either), and
/// deleting one would make the other request copy it again, forever.
fn same_encryption(a: &CopyStatus, b: &CopyStatus) -> bool {
    a.encrypted == b.encrypted && a.kms_key_id == b.kms_key_id
}

/// The CopySnapshot call for one source: description, encryption, and the tags, tracking tags
/// last so nothing overrides them.
fn copy_spec(source: &SourceSnapshot, request: &CopyRequest) -> Result<CopySpec, String> {
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
    let encryption = encryption_asked(request);
    let start_time = source.start_time.map(format_start_time);
    let before = tags.len();
    tags.insert(SOURCE_SNAPSHOT_TAG, source.id.as_str());
    tags.insert(SOURCE_REGION_TAG, request.source_region.as_str());
    tags.insert(ENCRYPTION_TAG, &encryption);
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
        kms_key_id: request.kms_key.as_ref().map(|k| k.as_str().to_owned()),
        tags: tags.into_iter().map(|(k, v)| Tag::new(k, v)).collect(),
        completion_duration_minutes: request.completion_duration_minutes,
    })
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
