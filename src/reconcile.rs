//! The engine: converges the target region towards "every source has a copy" and reports where
//! things stand. Look (sources, and copies an earlier invocation made, found by their tags),
//! start (largest first, within `pending_limit`), wait (one poll per round, as long as progress
//! says is useful, never past the deadline), report. Generic over [`SnapshotStore`]; knows no
//! SDK. Driven by tokio's clock, so tests run it on paused time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::CopySnapshotsError;
use crate::ids::SnapshotId;
use crate::request::CopyRequest;
use crate::response::{CopyReport, FailureReport, Response};
use crate::store::{
    CopySpec, CopyStatus, RESERVED_TAG_PREFIX, SOURCE_REGION_TAG, SOURCE_SNAPSHOT_TAG, SnapshotState, SnapshotStore,
    SourceSelector, SourceSnapshot, StoreError, Tag,
};

/// How long before the invocation's deadline the engine stops, so its last calls (each bounded
/// by the SDK's operation timeout) and the response fit in the time left. A short-lived
/// invocation keeps a quarter of its time instead, so it still gets work done.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(30);
/// The longest wait between two polls, however far progress says the next completion is.
/// EC2's progress is not quite linear, so estimates are re-checked at least this often; 15
/// minutes is also the longest a Lambda invocation lives.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(900);
/// EC2's tag limit per snapshot.
const MAX_TAGS_PER_SNAPSHOT: usize = 50;

/// Time limits of one invocation.
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    /// The invocation's deadline (Lambda's `Context::deadline`); `None` runs until done.
    pub deadline: Option<Instant>,
    /// The shortest wait between two polls (`POLL_INTERVAL_SECONDS`).
    pub poll_interval: Duration,
}

/// Runs one invocation of `request` against `store`.
pub async fn reconcile<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    limits: RunLimits,
) -> Result<Response, CopySnapshotsError> {
    let started = Instant::now();
    let mut run = Run::look(store, request, limits).await?;
    // Starting copies may go on until the margin before the deadline; waiting also ends at
    // `max_wait_seconds`.
    let work_until = limits.deadline.map(|deadline| {
        let margin = DEADLINE_MARGIN.min(deadline.saturating_duration_since(started) / 4);
        deadline.checked_sub(margin).unwrap_or(started)
    });
    let wait_until = match (work_until, request.max_wait) {
        (Some(w), Some(max)) => Some(w.min(started + max)),
        (Some(w), None) => Some(w),
        (None, Some(max)) => Some(started + max),
        (None, None) => None,
    };
    loop {
        run.resolve_unsure().await?;
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
        tokio::time::sleep_until(wake).await;
        run.poll().await?;
    }
    run.finish()
}

/// Where one source stands.
#[derive(Debug)]
enum Progress {
    /// No copy yet; in the start queue.
    Waiting,
    /// A filter matched it but it is not `completed` yet; a later invocation copies it.
    NotReady,
    /// A CopySnapshot call failed without a definite answer: a copy may exist. It is looked
    /// up by its tags before any new attempt, and holds a slot meanwhile.
    Unsure,
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
    progress: Progress,
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

/// Brackets a copy's completion time from EC2's whole-percent progress, assuming a steady rate.
#[derive(Debug, Clone, Copy)]
struct CompletionEstimate {
    /// First known point: (time, progress ≥ lo, progress < hi), in percent.
    baseline: Option<(Instant, f64, f64)>,
    /// Latest observation: (time, whole percent).
    latest: Option<(Instant, u8)>,
}

impl CompletionEstimate {
    fn started_at(at: Instant) -> Self {
        Self { baseline: Some((at, 0.0, 0.0)), latest: None }
    }

    fn started(&self) -> Instant {
        self.baseline.map_or_else(Instant::now, |(t0, _, _)| t0)
    }

    fn unknown() -> Self {
        Self { baseline: None, latest: None }
    }

    fn observe(&mut self, at: Instant, percent: u8) {
        if self.baseline.is_none() {
            let p = f64::from(percent);
            self.baseline = Some((at, p, p + 1.0));
        }
        self.latest = Some((at, percent));
    }

    /// Bounds on the copy's speed, in percent per second: (slowest, fastest).
    fn speed(&self) -> Option<(f64, f64)> {
        let (t0, lo0, hi0) = self.baseline?;
        let (t1, percent) = self.latest?;
        let elapsed = t1.checked_duration_since(t0)?.as_secs_f64();
        if elapsed <= 0.0 {
            return None;
        }
        let percent = f64::from(percent);
        Some(((percent - hi0).max(0.0) / elapsed, (percent + 1.0 - lo0) / elapsed))
    }

    /// The earliest and latest moments the copy can complete (latest `None`: no bound yet).
    fn window(&self) -> Option<(Instant, Option<Instant>)> {
        let (slowest, fastest) = self.speed()?;
        let (t1, percent) = self.latest?;
        let percent = f64::from(percent);
        let after = |remaining: f64, speed: f64| t1 + Duration::from_secs_f64((remaining.max(0.0) / speed).min(1e9));
        let earliest = after(100.0 - (percent + 1.0), fastest);
        let latest = (slowest > 0.0).then(|| after(100.0 - percent, slowest));
        Some((earliest, latest))
    }
}

struct Run<'a, S> {
    store: &'a S,
    request: &'a CopyRequest,
    limits: RunLimits,
    entries: Vec<Entry>,
    /// Sources without a copy, largest first; ties in request order.
    queue: BinaryHeap<(u64, Reverse<usize>)>,
    /// Copies of this request pending, plus unsure starts: what counts against `pending_limit`.
    slots_held: usize,
    /// EC2 answered ResourceLimitExceeded since the last poll: no start until then.
    region_full: bool,
    /// Consecutive rounds the region was full with none of our copies pending: backs off.
    full_rounds: u32,
    copies_started: usize,
    /// The fastest copy speed measured in this run, GiB per second: a prior for copies not
    /// observed yet.
    fastest_gib_per_second: Option<f64>,
}

impl<'a, S: SnapshotStore> Run<'a, S> {
    /// Resolves the sources and finds the copies earlier invocations made.
    async fn look(store: &'a S, request: &'a CopyRequest, limits: RunLimits) -> Result<Self, CopySnapshotsError> {
        let region = &request.source_region;
        let found = store
            .describe_sources(region, &request.sources)
            .await
            .map_err(|e| fatal(e, &format!("looking up the sources in {region}"), 0))?;
        let entries = match &request.sources {
            SourceSelector::Ids(ids) => entries_for_ids(ids, found, request)?,
            SourceSelector::Filters(_) => entries_for_filters(found, request),
        };
        debug!(sources = entries.len(), "sources resolved");

        let mut run = Self {
            store,
            request,
            limits,
            entries,
            queue: BinaryHeap::new(),
            slots_held: 0,
            region_full: false,
            full_rounds: 0,
            copies_started: 0,
            fastest_gib_per_second: None,
        };
        let wanted: Vec<SnapshotId> = run
            .entries
            .iter()
            .filter(|e| matches!(e.progress, Progress::Waiting))
            .map(|e| e.source.id.clone())
            .collect();
        if !wanted.is_empty() {
            let existing = store
                .find_copies(&request.target_region, region, &wanted)
                .await
                .map_err(|e| fatal(e, &format!("looking for earlier copies in {}", request.target_region), 0))?;
            run.adopt(existing, true);
        }
        for (i, entry) in run.entries.iter().enumerate() {
            if matches!(entry.progress, Progress::Waiting) {
                run.queue.push((entry.source.size_gib, Reverse(i)));
            }
        }
        info!(
            sources = run.entries.len(),
            reused = run.entries.iter().filter(|e| matches!(e.progress, Progress::Copying { .. })).count(),
            to_copy = run.queue.len(),
            "looked"
        );
        Ok(run)
    }

    /// Takes over copies found by their tags, for sources that have none yet. Among several
    /// copies of one source, the most advanced counts.
    fn adopt(&mut self, copies: Vec<CopyStatus>, reused: bool) {
        let index: HashMap<&SnapshotId, usize> =
            self.entries.iter().enumerate().map(|(i, e)| (&e.source.id, i)).collect();
        let mut best: BTreeMap<usize, CopyStatus> = BTreeMap::new();
        for copy in copies {
            let Some(&i) = index.get(&copy.source_id) else { continue };
            if !copy_counts(&copy, self.request) {
                debug!(copy = %copy.id, source = %copy.source_id, state = copy.state.as_str(), "earlier copy does not count");
                continue;
            }
            match best.get(&i) {
                Some(current) if rank(current) >= rank(&copy) => {
                    warn!(source = %copy.source_id, kept = %current.id, also = %copy.id, "source has more than one copy");
                }
                Some(current) => {
                    warn!(source = %copy.source_id, kept = %copy.id, also = %current.id, "source has more than one copy");
                    best.insert(i, copy);
                }
                None => {
                    best.insert(i, copy);
                }
            }
        }
        let now = Instant::now();
        for (i, copy) in best {
            let mut estimate = CompletionEstimate::unknown();
            if let Some(percent) = copy.progress {
                estimate.observe(now, percent);
            }
            if copy.state == SnapshotState::Pending {
                self.slots_held += 1;
            }
            self.entries[i].progress = Progress::Copying {
                copy: TrackedCopy { id: copy.id, state: copy.state, progress: copy.progress, estimate, seen: true },
                reused,
            };
        }
    }

    /// Looks up, by their tags, the copies whose start had no definite answer: adopts those
    /// that exist and queues the others again. Never calls CopySnapshot twice blindly.
    async fn resolve_unsure(&mut self) -> Result<(), CopySnapshotsError> {
        let unsure: Vec<SnapshotId> = self
            .entries
            .iter()
            .filter(|e| matches!(e.progress, Progress::Unsure))
            .map(|e| e.source.id.clone())
            .collect();
        if unsure.is_empty() {
            return Ok(());
        }
        let found =
            match self.store.find_copies(&self.request.target_region, &self.request.source_region, &unsure).await {
                Ok(found) => found,
                Err(StoreError::Unknown(message)) => {
                    warn!(%message, "could not look for copies of unsure starts; trying again next round");
                    return Ok(());
                }
                Err(e) => return Err(fatal(e, "looking for copies of unsure starts", self.copies_started)),
            };
        // Those slots are re-counted below from what was found.
        self.slots_held -= unsure.len();
        self.adopt(found, false);
        for (i, entry) in self.entries.iter_mut().enumerate() {
            if matches!(entry.progress, Progress::Unsure) {
                info!(source = %entry.source.id, "no copy found after an unsure start; queued again");
                entry.progress = Progress::Waiting;
                self.queue.push((entry.source.size_gib, Reverse(i)));
            }
        }
        Ok(())
    }

    /// Starts copies, largest first, while this request holds fewer than `pending_limit`
    /// slots and the region has room.
    async fn start_what_fits(&mut self, work_until: Option<Instant>) -> Result<(), CopySnapshotsError> {
        while self.slots_held < self.request.pending_limit && !self.region_full {
            if work_until.is_some_and(|until| Instant::now() >= until) {
                break;
            }
            let Some((_, Reverse(i))) = self.queue.pop() else { break };
            let spec = match copy_spec(&self.entries[i].source, self.request) {
                Ok(spec) => spec,
                Err(reason) => {
                    self.entries[i].progress = Progress::Failed { copy_id: None, reason };
                    continue;
                }
            };
            let result = self.store.start_copy(&spec).await;
            let source = &self.entries[i].source;
            match result {
                Ok(copy_id) => {
                    info!(source = %source.id, copy = %copy_id, size_gib = source.size_gib, "copy started");
                    self.slots_held += 1;
                    self.copies_started += 1;
                    self.full_rounds = 0;
                    self.entries[i].progress = Progress::Copying {
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
                    warn!(source = %source.id, %message, "copy start had no definite answer; will look for the copy");
                    self.slots_held += 1;
                    self.entries[i].progress = Progress::Unsure;
                }
                Err(StoreError::Refused { code, message }) => {
                    warn!(source = %source.id, %code, %message, "EC2 refused the copy");
                    let reason = format!("EC2 refused the copy: {code}: {message}");
                    self.entries[i].progress = Progress::Failed { copy_id: None, reason };
                }
                Err(StoreError::NotFound(message) | StoreError::NotReady(message)) => {
                    warn!(source = %source.id, %message, "EC2 refused the copy");
                    let reason = format!("EC2 refused the copy: {message}");
                    self.entries[i].progress = Progress::Failed { copy_id: None, reason };
                }
                Err(e @ (StoreError::AccessDenied(_) | StoreError::Throttled(_))) => {
                    let doing = format!("starting the copy of {}", source.id);
                    return Err(fatal(e, &doing, self.copies_started));
                }
            }
        }
        Ok(())
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
        let mut freed = 0;
        for entry in &mut self.entries {
            let Progress::Copying { copy, .. } = &mut entry.progress else { continue };
            if copy.state != SnapshotState::Pending {
                continue;
            }
            let Some(status) = by_id.get(&copy.id) else {
                if copy.seen {
                    warn!(source = %entry.source.id, copy = %copy.id, "copy vanished before completing");
                    let reason = format!("copy {} disappeared before completing (deleted?)", copy.id);
                    entry.progress = Progress::Failed { copy_id: Some(copy.id.clone()), reason };
                    freed += 1;
                }
                // Never seen: EC2's eventual consistency; it shows up in a later round.
                continue;
            };
            copy.seen = true;
            copy.state = status.state.clone();
            copy.progress = status.progress;
            if let Some(percent) = status.progress {
                copy.estimate.observe(now, percent);
                // Only a speed known within ±10% is good enough to plan other copies by.
                if let Some((slowest, fastest)) = copy.estimate.speed() {
                    if slowest >= fastest * 0.8 {
                        let gib_per_second = fastest * entry.source.size_gib as f64 / 100.0;
                        self.fastest_gib_per_second =
                            Some(self.fastest_gib_per_second.map_or(gib_per_second, |s| s.max(gib_per_second)));
                    }
                }
            }
            match &status.state {
                SnapshotState::Pending => {}
                SnapshotState::Completed => {
                    info!(source = %entry.source.id, copy = %copy.id, "copy completed");
                    freed += 1;
                }
                SnapshotState::Error | SnapshotState::Other(_) => {
                    let message = status.state_message.as_deref().unwrap_or("EC2 gave no reason");
                    warn!(source = %entry.source.id, copy = %copy.id, state = status.state.as_str(), %message, "copy failed");
                    let reason = format!("copy {} ended in {}: {message}", copy.id, status.state.as_str());
                    entry.progress = Progress::Failed { copy_id: Some(copy.id.clone()), reason };
                    freed += 1;
                }
            }
        }
        self.slots_held -= freed;
        Ok(())
    }

    fn pending_copies(&self) -> impl Iterator<Item = &TrackedCopy> {
        self.pending_copies_with_size().map(|(_, copy)| copy)
    }

    fn pending_copies_with_size(&self) -> impl Iterator<Item = (u64, &TrackedCopy)> {
        self.entries.iter().filter_map(|e| match &e.progress {
            Progress::Copying { copy, .. } if copy.state == SnapshotState::Pending => Some((e.source.size_gib, copy)),
            _ => None,
        })
    }

    fn any_unsure(&self) -> bool {
        self.entries.iter().any(|e| matches!(e.progress, Progress::Unsure))
    }

    /// Whether this invocation still has something to start, resolve or wait for.
    fn work_left(&self) -> bool {
        !self.queue.is_empty()
            || self.any_unsure()
            || (self.request.wait_for_completion && self.pending_copies().next().is_some())
    }

    /// How long to wait before the next poll: until the soonest copy is likely done, at least
    /// `poll_interval`, at most [`MAX_POLL_INTERVAL`].
    fn next_wait(&self, now: Instant) -> Duration {
        let floor = self.limits.poll_interval;
        if self.any_unsure() {
            return floor;
        }
        let mut wake: Option<Instant> = None;
        for (size_gib, copy) in self.pending_copies_with_size() {
            let candidate = match copy.estimate.window() {
                // When the bounds are close (within 2% of the copy's age, or four poll
                // intervals), wake at the later one: one poll then surely sees the completion,
                // and the slot idles at most `gap`. When they are far apart, wake halfway to
                // narrow them first.
                Some((earliest, Some(latest))) => {
                    let gap = latest.saturating_duration_since(earliest);
                    let age = now.saturating_duration_since(copy.estimate.started());
                    let tolerance = (floor * 4).max(age / 50);
                    if gap <= tolerance { latest } else { earliest + (gap / 2).max(floor) }
                }
                Some((earliest, None)) => earliest,
                // Not observed yet: the fastest speed seen in this run says how soon it could
                // be done at best; with none seen, look soon to learn one.
                None => match (self.fastest_gib_per_second, copy.estimate.baseline) {
                    (Some(speed), Some((t0, _, _))) => t0 + Duration::from_secs_f64(size_gib as f64 / speed),
                    _ => now + floor,
                },
            };
            wake = Some(wake.map_or(candidate, |w| w.min(candidate)));
        }
        let mut wait = wake.map_or(MAX_POLL_INTERVAL, |w| w.saturating_duration_since(now));
        if self.region_full {
            // Another account's copies hold the region's slots: retry, backing off while
            // none of ours is running to free one.
            let backoff = floor * 2u32.saturating_pow(self.full_rounds.min(4));
            wait = wait.min(backoff);
        }
        wait.clamp(floor, MAX_POLL_INTERVAL)
    }

    /// The response, or `CopyFailed` when failures remain and nothing else is left to do.
    fn finish(self) -> Result<Response, CopySnapshotsError> {
        let mut response = Response::default();
        for entry in &self.entries {
            let source_id = entry.source.id.to_string();
            match &entry.progress {
                Progress::Copying { copy, reused } => {
                    response.snapshot_ids.push(copy.id.to_string());
                    response.copies.push(CopyReport {
                        source_snapshot_id: source_id,
                        snapshot_id: copy.id.to_string(),
                        state: copy.state.as_str().to_owned(),
                        progress: copy.progress.map(|p| format!("{p}%")),
                        reused: *reused,
                    });
                }
                Progress::Failed { copy_id, reason } => response.failed.push(FailureReport {
                    source_snapshot_id: source_id,
                    snapshot_id: copy_id.as_ref().map(ToString::to_string),
                    error: reason.clone(),
                }),
                Progress::Waiting | Progress::NotReady | Progress::Unsure => response.pending_sources.push(source_id),
            }
        }
        // For the recovery-point metric: a source counts as copied once its copy is completed.
        response.oldest_uncopied_start = crate::response::oldest_uncopied(self.entries.iter().map(|e| {
            (
                e.source.start_time,
                matches!(&e.progress, Progress::Copying { copy, .. } if copy.state == SnapshotState::Completed),
            )
        }));
        let all_done = !self.request.wait_for_completion || self.pending_copies().next().is_none();
        response.complete = response.pending_sources.is_empty() && response.failed.is_empty() && all_done;
        info!(
            copies = response.copies.len(),
            started = self.copies_started,
            pending_sources = response.pending_sources.len(),
            failed = response.failed.len(),
            complete = response.complete,
            "done"
        );
        if !response.failed.is_empty() && response.pending_sources.is_empty() && all_done {
            let message = copy_failed_message(&response, &self.request.target_region.to_string());
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
    Ok(ids
        .iter()
        .filter_map(|id| by_id.remove(id))
        .map(|source| Entry { source, progress: Progress::Waiting })
        .collect())
}

/// Entries for what the filters matched, sorted by id for a stable order. Snapshots not yet
/// completed wait for a later invocation; ones that never will be are left out.
fn entries_for_filters(mut found: Vec<SourceSnapshot>, request: &CopyRequest) -> Vec<Entry> {
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found.dedup_by(|a, b| a.id == b.id);
    found
        .into_iter()
        .filter_map(|source| {
            // Copying within one region, this function's own copies match the same filters
            // (with copy_tags): copying them again would never end.
            if request.source_region == request.target_region && source.tag(SOURCE_SNAPSHOT_TAG).is_some() {
                debug!(snapshot = %source.id, "skipping a copy this function made");
                return None;
            }
            match (&source.state, source.archived) {
                (SnapshotState::Completed, false) => Some(Entry { source, progress: Progress::Waiting }),
                (SnapshotState::Pending, _) => Some(Entry { source, progress: Progress::NotReady }),
                _ => {
                    warn!(snapshot = %source.id, state = source.state.as_str(), archived = source.archived, "skipping a snapshot that cannot be copied");
                    None
                }
            }
        })
        .collect()
}

fn not_ready_reason(source: &SourceSnapshot) -> Option<String> {
    if source.archived {
        return Some("is in the archive tier; restore it first".to_owned());
    }
    (source.state != SnapshotState::Completed).then(|| format!("is {}", source.state.as_str()))
}

/// Whether an earlier copy satisfies the request: not failed, and encrypted as asked.
fn copy_counts(copy: &CopyStatus, request: &CopyRequest) -> bool {
    let alive = matches!(copy.state, SnapshotState::Pending | SnapshotState::Completed);
    let encryption_ok = !request.encrypt || copy.encrypted;
    let key_ok = request.kms_key.as_ref().is_none_or(|key| key.matches(copy.kms_key_id.as_deref()));
    alive && encryption_ok && key_ok
}

/// Orders copies of one source: completed first, then by progress, then by id for stability.
fn rank(copy: &CopyStatus) -> (bool, u8, Reverse<SnapshotId>) {
    (copy.state == SnapshotState::Completed, copy.progress.unwrap_or(0), Reverse(copy.id.clone()))
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
    tags.insert(SOURCE_SNAPSHOT_TAG, source.id.as_str());
    tags.insert(SOURCE_REGION_TAG, request.source_region.as_str());
    if tags.len() > MAX_TAGS_PER_SNAPSHOT {
        return Err(format!(
            "the copy would carry {} tags (the source's, `tags` and 2 tracking tags); EC2 allows {MAX_TAGS_PER_SNAPSHOT}",
            tags.len()
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

fn copy_failed_message(response: &Response, target_region: &str) -> String {
    let failures: Vec<String> =
        response.failed.iter().map(|f| format!("{}: {}", f.source_snapshot_id, f.error)).collect();
    let made: Vec<String> =
        response.copies.iter().map(|c| format!("{} → {} ({})", c.source_snapshot_id, c.snapshot_id, c.state)).collect();
    format!(
        "{} of {} failed to copy to {target_region}: {}. Copies made: {}",
        response.failed.len(),
        plural(response.failed.len() + response.copies.len(), "source"),
        failures.join("; "),
        if made.is_empty() { "none".to_owned() } else { made.join(", ") }
    )
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy that really takes `total` seconds, progressing steadily, observed as EC2 reports
    /// it (whole percent, rounded down).
    fn observed(total: f64, at: &[f64]) -> (Instant, CompletionEstimate) {
        let start = Instant::now();
        let mut estimate = CompletionEstimate::started_at(start);
        for t in at {
            let percent = (t / total * 100.0).floor() as u8;
            estimate.observe(start + Duration::from_secs_f64(*t), percent);
        }
        (start, estimate)
    }

    #[test]
    fn the_completion_window_always_holds_the_true_completion() {
        for total in [280.0, 1_400.0, 41_080.0] {
            for fraction in [0.02, 0.1, 0.5, 0.9, 0.99] {
                let (start, estimate) = observed(total, &[total * fraction]);
                let truth = start + Duration::from_secs_f64(total);
                let (earliest, latest) = estimate.window().expect("a window after one observation");
                assert!(earliest <= truth, "total {total}, at {fraction}: earliest after the truth");
                if let Some(latest) = latest {
                    assert!(
                        truth <= latest + Duration::from_millis(1),
                        "total {total}, at {fraction}: latest before the truth"
                    );
                }
            }
        }
    }

    #[test]
    fn the_window_narrows_as_progress_grows() {
        let width = |at: f64| {
            let (_, estimate) = observed(1_400.0, &[at]);
            let (earliest, latest) = estimate.window().unwrap();
            latest.unwrap().duration_since(earliest)
        };
        assert!(width(1_260.0) < width(140.0));
    }

    #[test]
    fn nothing_is_known_before_a_first_observation_or_at_zero_percent() {
        let (_, estimate) = observed(1_400.0, &[]);
        assert!(estimate.window().is_none());
        let (start, estimate) = observed(1_400.0, &[10.0]);
        let (earliest, latest) = estimate.window().unwrap();
        assert!(latest.is_none(), "0% gives no upper bound");
        assert!(earliest >= start + Duration::from_secs(990), "at 0% after 10 s, at least 99 × 10 s remain");
    }
}
