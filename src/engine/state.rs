//! One target's run state: where each source stands ([`Entry`], [`Stage`]), the copies being
//! watched ([`TrackedCopy`]), the start queue, and what counts against `pending_limit`. Stages
//! change only through the methods here (`queue_or_fail`, `requeue`, `track_started`,
//! `adopt_copy`, `mark_unsure`, `fail`, and `Entry::fail_with`, `Entry::record_error_copy`);
//! the queue, `region_full` and the slot counts (`copies_started`, `full_rounds`,
//! `deployment_pending`) are private to this module and read and changed through its methods
//! (`next_to_start`, `waiting_count`, `held_until_next_poll`, `no_slot_until_next_poll`,
//! `poll_began`, `counted_deployment`, …). What one step finds for another (retention's
//! deletions and breaker, the duplicates to heal, the ledger's finished copies) is that step's
//! own; each step's header says what it may change.
//!
//! Invariants it keeps:
//! - an entry is in the queue only while its stage is `Waiting`, and at most once: it is
//!   pushed by `queue_or_fail` or `requeue` and popped before its start is tried;
//! - a slot is held (`slots_held`) by a pending copy this run tracks or an unsure start, and by
//!   nothing else: `start_one` checks (debug builds) that a start which holds one adds exactly
//!   one;
//! - `region_full` is set by `no_slot_until_next_poll` (no slot in the region or this
//!   deployment's share, throttling, a ledger without an answer) and cleared only by
//!   `poll_began`: no start in between.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::SystemTime;

use tokio::time::Instant;
use tracing::warn;

use crate::contract::request::CopyRequest;
use crate::contract::response::{DeletionBreaker, RemovedCopy};
use crate::contract::targets::Target;
use crate::engine::ownership::AskedEncryption;
use crate::engine::poll_timing::CompletionEstimate;
use crate::engine::progress::{LookedSource, Observer, RunEvent, StopSignal};
use crate::engine::timeline::Timeline;
use crate::ids::SnapshotId;
use crate::store::{SnapshotState, SnapshotStore};

use super::deletion::Deletion;
use super::entry::{Entry, Stage, TrackedCopy};
use super::limits::{MAX_ATTEMPTS, RunLimits};

/// What one start attempt came to, as far as slots go.
#[derive(Debug, Clone)]
pub(super) enum Started {
    /// EC2 accepted the copy.
    Copy(SnapshotId),
    /// No definite answer: a copy may exist; it holds a slot.
    Unsure,
    /// EC2 definitely made no copy (refused, no slot, throttled), or no call was made.
    No,
}

/// One target's run in an invocation: what it shares with the request's other targets (the
/// store, the request, the clock, the observer) and what is its own — its entries (where each
/// source stands *in this target*), start queue, slot bookkeeping, polls and retention's
/// findings. A request with several targets runs one of these per target side by side.
pub(super) struct Run<'a, S> {
    pub(super) store: &'a S,
    pub(super) request: &'a CopyRequest,
    /// Where this run's copies go: region, encryption, `pending_limit`, retention.
    pub(super) target: &'a Target,
    /// The span its steps log in: names the target when the request has several.
    pub(super) span: tracing::Span,
    /// The request's encryption, its key resolved: which copies are the request's.
    pub(super) asked: AskedEncryption,
    pub(super) observer: &'a dyn Observer,
    pub(super) stop: StopSignal,
    pub(super) limits: RunLimits,
    /// How long each call may take, and until when.
    pub(super) timeline: Timeline,
    pub(super) entries: Vec<Entry>,
    /// Snapshots the filters matched that can never be copied, with why (for the look's report).
    pub(super) skipped: Vec<LookedSource>,
    /// Sources without a copy, largest first; ties in request order.
    queue: BinaryHeap<(u64, Reverse<usize>)>,
    /// EC2 answered ResourceLimitExceeded, or throttled a call beyond the SDK's retries, since
    /// the last poll: no start until then, and the wait before it backs off with jitter.
    region_full: bool,
    /// Calls EC2 throttled beyond the SDK's retries in this run (each backed off, none fatal).
    pub(super) throttled_calls: usize,
    /// What the last count of this deployment's pending copies found: (all, of them others').
    deployment_pending: Option<(usize, usize)>,
    /// Rounds the slot ledger did not answer (each started nothing and backed off).
    pub(super) ledger_failures: usize,
    /// Copies polls saw finish (or vanish) whose slots the ledger still holds: released by the
    /// next reservation's write, or by a write of their own after the start round.
    pub(super) finished_copies: Vec<SnapshotId>,
    /// Consecutive rounds the region was full with none of our copies pending: backs off.
    full_rounds: u32,
    copies_started: usize,
    /// The fastest copy speed measured in this run, GiB per second: a prior for copies not
    /// observed yet.
    pub(super) fastest_gib_per_second: Option<f64>,
    /// Second live copies found (entry, copy id), to delete.
    pub(super) duplicates: Vec<(usize, SnapshotId)>,
    pub(super) duplicates_removed: Vec<RemovedCopy>,
    /// Copies retention deletes, found by the look, deleted as time allows.
    pub(super) deletions: Vec<Deletion>,
    /// The newest completed copy of each volume group the look found (source start, copy id).
    pub(super) newest_completed: HashMap<String, (Option<SystemTime>, SnapshotId)>,
    /// The deletion breaker held this run's deletions.
    pub(super) breaker: Option<DeletionBreaker>,
    /// DescribeImages gave no answer: no deletion this run.
    pub(super) images_unknown: Option<String>,
    /// Source keys asked about for sharing: AWS managed or not (`None`: could not tell).
    pub(super) source_keys: HashMap<String, Option<bool>>,
}

/// What a run is given: shared with the request's other targets, or (the key resolved) this
/// target's own, fixed for the run.
pub(super) struct Shared<'a, S> {
    pub(super) store: &'a S,
    pub(super) request: &'a CopyRequest,
    pub(super) target: &'a Target,
    pub(super) asked: AskedEncryption,
    pub(super) observer: &'a dyn Observer,
    pub(super) stop: StopSignal,
    pub(super) limits: RunLimits,
    pub(super) timeline: Timeline,
}

impl<'a, S: SnapshotStore> Run<'a, S> {
    /// A run at the end of the look: its entries, and what the look skipped; nothing queued,
    /// started, counted or judged yet.
    pub(super) fn new(
        shared: Shared<'a, S>,
        entries: Vec<Entry>,
        skipped: Vec<LookedSource>,
        span: tracing::Span,
    ) -> Self {
        let Shared { store, request, target, asked, observer, stop, limits, timeline } = shared;
        Self {
            store,
            request,
            target,
            asked,
            observer,
            stop,
            limits,
            timeline,
            span,
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
            source_keys: HashMap::new(),
        }
    }

    /// How many sources wait in the start queue.
    pub(super) fn waiting_count(&self) -> usize {
        self.queue.len()
    }

    /// The next source to try to start, largest first, taken out of the queue: the caller
    /// starts it, fails it, or gives it back with [`requeue`](Self::requeue).
    pub(super) fn next_to_start(&mut self) -> Option<usize> {
        self.queue.pop().map(|(_, Reverse(i))| i)
    }

    /// The order the queue would start its sources in, leaving it as it is (the plan's).
    pub(super) fn start_order(&self) -> Vec<usize> {
        let mut queue = self.queue.clone();
        std::iter::from_fn(|| queue.pop().map(|(_, Reverse(i))| i)).collect()
    }

    /// Whether starts are held back until the next poll (see
    /// [`no_slot_until_next_poll`](Self::no_slot_until_next_poll)): the wait before it is a
    /// backoff, with jitter.
    pub(super) fn held_until_next_poll(&self) -> bool {
        self.region_full
    }

    /// The look found copy `copy` of entry `i` (`reused`: made by an earlier invocation): it is
    /// tracked from what the look saw.
    pub(super) fn adopt_copy(&mut self, i: usize, copy: TrackedCopy, reused: bool) {
        self.entries[i].stage = Stage::Copying { copy, reused };
    }

    /// Queues a source with no copy for a new attempt, or fails it once [`MAX_ATTEMPTS`] of its
    /// copies have ended in `error`.
    pub(super) fn queue_or_fail(&mut self, i: usize) {
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

    /// Queues every source still waiting (after the look), or fails it (see
    /// [`queue_or_fail`](Self::queue_or_fail)).
    pub(super) fn queue_waiting(&mut self) {
        for i in 0..self.entries.len() {
            if matches!(self.entries[i].stage, Stage::Waiting) {
                self.queue_or_fail(i);
            }
        }
    }

    /// The ids of the sources with no copy yet.
    pub(super) fn waiting_sources(&self) -> impl Iterator<Item = &SnapshotId> {
        self.entries.iter().filter(|e| matches!(e.stage, Stage::Waiting)).map(|e| &e.source.id)
    }

    /// Puts sources back in the start queue.
    pub(super) fn requeue(&mut self, entries: &[usize]) {
        for &i in entries {
            self.queue.push((self.entries[i].source.size_gib, Reverse(i)));
        }
    }

    /// Fails a source this run will not copy (no copy of it was made).
    pub(super) fn fail(&mut self, i: usize, reason: String) {
        self.observer
            .observe(RunEvent::SourceFailed { source: self.entries[i].source.id.clone(), reason: reason.clone() });
        self.entries[i].stage = Stage::Failed { copy_id: None, reason };
    }

    /// Entry `i`'s start (or its vanished copy) is unsure: a fresh unsure stage, first looked
    /// up one poll interval after `now`. It holds a slot.
    pub(super) fn mark_unsure(&mut self, i: usize, now: Instant) {
        self.entries[i].stage = Stage::Unsure { misses: 0, next_look: now + self.limits.poll_interval };
    }

    /// EC2 accepted the copy of entry `i`: it is tracked, pending, from now, and counted. It
    /// holds a slot.
    pub(super) fn track_started(&mut self, i: usize, id: SnapshotId) {
        self.copies_started += 1;
        self.count_own_start();
        self.full_rounds = 0;
        self.entries[i].stage = Stage::Copying {
            copy: TrackedCopy {
                id,
                state: SnapshotState::Pending,
                progress: None,
                estimate: CompletionEstimate::started_at(Instant::now()),
                seen: false,
            },
            reused: false,
        };
    }

    /// A poll is due: what kept starts back until it (a full region, throttling) is over.
    pub(super) fn poll_began(&mut self) {
        self.region_full = false;
    }

    /// Whether a store call started now would end before the deadline.
    pub(super) fn may_call(&self) -> bool {
        self.timeline.may_call()
    }

    /// Whether a copy may start now: before `work_until`, with time for the call, not stopped.
    pub(super) fn may_start(&self, work_until: Option<Instant>) -> bool {
        work_until.is_none_or(|until| Instant::now() < until) && self.may_call() && !self.stop.is_set()
    }

    /// What counts against `pending_limit`: this request's pending copies and unsure starts.
    pub(super) fn slots_held(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| match &e.stage {
                Stage::Copying { copy, .. } => copy.state == SnapshotState::Pending,
                Stage::Unsure { .. } => true,
                _ => false,
            })
            .count()
    }

    pub(super) fn pending_copies(&self) -> impl Iterator<Item = &TrackedCopy> {
        self.pending_copies_with_size().map(|(_, copy)| copy)
    }

    pub(super) fn pending_copies_with_size(&self) -> impl Iterator<Item = (u64, &TrackedCopy)> {
        self.entries.iter().filter_map(|e| match &e.stage {
            Stage::Copying { copy, .. } if copy.state == SnapshotState::Pending => Some((e.source.size_gib, copy)),
            _ => None,
        })
    }

    /// When the earliest unsure start is due for a look, if there is one.
    pub(super) fn next_unsure_look(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|e| match e.stage {
                Stage::Unsure { next_look, .. } => Some(next_look),
                _ => None,
            })
            .min()
    }

    /// Whether this invocation still has something to start, resolve or wait for.
    pub(super) fn work_left(&self) -> bool {
        !self.queue.is_empty()
            || self.next_unsure_look().is_some()
            || (self.request.wait_for_completion && self.pending_copies().next().is_some())
    }

    /// Copies this run started.
    pub(super) fn copies_started(&self) -> usize {
        self.copies_started
    }

    /// Rounds in a row the region was full with none of this run's copies pending, while it is
    /// held until the next poll: how far the poll backs off.
    pub(super) fn full_rounds_while_held(&self) -> Option<u32> {
        self.region_full.then_some(self.full_rounds)
    }

    /// What the last count of this deployment's pending copies found: (all, of them others').
    pub(super) fn deployment_pending(&self) -> Option<(usize, usize)> {
        self.deployment_pending
    }

    /// A count of this deployment's pending copies (from EC2 or the slot ledger): (all, of them
    /// others').
    pub(super) fn counted_deployment(&mut self, pending: usize, others: usize) {
        self.deployment_pending = Some((pending, others));
    }

    /// A copy this run started (or may have) since the last count holds one of the deployment's
    /// slots too.
    pub(super) fn count_own_start(&mut self) {
        if let Some((pending, _)) = &mut self.deployment_pending {
            *pending += 1;
        }
    }

    /// EC2 throttled a call beyond the SDK's retries: no start until the next poll, which comes
    /// after a backoff with jitter (see [`held_until_next_poll`](Self::held_until_next_poll)).
    pub(super) fn throttled_now(&mut self, message: &str, doing: &str) {
        warn!(%message, doing, "EC2 throttled beyond the SDK's retries; backing off");
        self.throttled_calls += 1;
        self.no_slot_until_next_poll();
    }

    /// No start until the next poll (the region is full, this deployment's share is, or EC2
    /// throttles): the wait before it is a backoff, longer each round none of this run's copies
    /// is pending to free a slot.
    pub(super) fn no_slot_until_next_poll(&mut self) {
        self.region_full = true;
        if self.pending_copies().next().is_none() {
            self.full_rounds += 1;
        }
    }
}
