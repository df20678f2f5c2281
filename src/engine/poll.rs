//! Polling and waiting: one DescribeSnapshots for every pending copy, recording progress,
//! completion, errors and vanished copies; and how long to wait before the next poll.
//! May change: the tracked copies and the entries' stages, the queue (a copy in error is
//! attempted again), `finished_copies`, the measured speed, `region_full`.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use crate::contract::error::CopySnapshotsError;
use crate::engine::ownership::{AskedEncryption, Claim};
use crate::engine::poll_timing::{self, WaitContext};
use crate::engine::progress::{Observer, RunEvent};
use crate::ids::SnapshotId;
use crate::store::copy_time::CopyTimeModel;
use crate::store::{CopyStatus, SnapshotState, SnapshotStore, StoreError};

use super::entry::{Entry, Stage};
use super::fatal::fatal;
use super::limits::unsure_window;
use super::state::Run;

impl<'a, S: SnapshotStore> Run<'a, S> {
    /// Polls every pending copy of this request in one call and records what changed.
    pub(super) async fn poll(&mut self) -> Result<(), CopySnapshotsError> {
        self.poll_began();
        let pending: Vec<SnapshotId> = self.pending_copies().map(|c| c.id.clone()).collect();
        if pending.is_empty() {
            return Ok(());
        }
        let answer = match self.timeline.call(self.store.describe_copies(&self.target.place, &pending)).await {
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
            Err(e) => return Err(fatal(e, "polling the copies", self.copies_started())),
        };
        let by_id: HashMap<SnapshotId, CopyStatus> = answer.into_iter().map(|c| (c.id.clone(), c)).collect();
        let now = Instant::now();
        let (requeue, vanished) = self.record_answer(&by_id, now);
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
            self.mark_unsure(i, now);
        }
        for i in requeue {
            self.queue_or_fail(i);
        }
        self.finished_copies.extend(finished);
        Ok(())
    }

    /// Records what one poll's answer says of each pending copy this run tracks: progress and
    /// speed, and the end states (through [`record_state`]). Returns the entries whose copy
    /// ended in `error` (to queue again or fail) and those whose copy vanished.
    fn record_answer(&mut self, by_id: &HashMap<SnapshotId, CopyStatus>, now: Instant) -> (Vec<usize>, Vec<usize>) {
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
            if record_state(entry, status, self.observer, &self.asked) {
                requeue.push(i);
            }
        }
        (requeue, vanished)
    }

    /// How long to wait before the next poll (see [`poll_timing::next_wait`]).
    pub(super) fn next_wait(&self, now: Instant) -> Duration {
        let context = WaitContext {
            poll_interval: self.limits.poll_interval,
            max_poll_interval: self.limits.max_poll_interval,
            fastest_gib_per_second: self.fastest_gib_per_second,
            prior: CopyTimeModel::DEFAULT,
            next_unsure_look: self.next_unsure_look(),
            region_full_rounds: self.full_rounds_while_held(),
        };
        poll_timing::next_wait(
            now,
            &context,
            self.pending_copies_with_size().map(|(size, copy)| (size, &copy.estimate)),
        )
    }
}

/// Records the state a poll found a tracked copy in: completed, in `error` (an attempt; returns
/// true: the source is queued again or failed), in another key than asked (failed, the copy
/// left in place), or in a state that never completes (failed).
fn record_state(entry: &mut Entry, status: &CopyStatus, observer: &dyn Observer, asked: &AskedEncryption) -> bool {
    let Stage::Copying { copy, .. } = &mut entry.stage else { return false };
    // (A pending copy whose key is not reported yet is undecided: see `claim`.)
    let wrong_key = match asked.claim(status) {
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
                asked.wrong_key_reason(status, actual.as_deref())
            );
            observer.observe(RunEvent::SourceFailed { source: entry.source.id.clone(), reason: reason.clone() });
            let copy_id = copy.id.clone();
            entry.record_error_copy(copy_id.clone(), reason.clone());
            entry.fail_with(Some(copy_id), reason);
        }
        SnapshotState::Pending => {}
        SnapshotState::Completed => {
            observer.observe(RunEvent::CopyCompleted { source: entry.source.id.clone(), copy: copy.id.clone() });
        }
        SnapshotState::Error => {
            let message = status.state_message.clone().unwrap_or_else(|| "EC2 gave no reason".to_owned());
            let (source, copy_id) = (entry.source.id.clone(), copy.id.clone());
            observer.observe(RunEvent::CopyErrored { source, copy: copy_id.clone(), message: message.clone() });
            entry.record_error_copy(copy_id, message);
            return true;
        }
        SnapshotState::Other(state) => {
            let message = status.state_message.as_deref().unwrap_or("EC2 gave no reason");
            let reason = format!("copy {} ended in {state}: {message}", copy.id);
            observer.observe(RunEvent::SourceFailed { source: entry.source.id.clone(), reason: reason.clone() });
            let copy_id = copy.id.clone();
            entry.fail_with(Some(copy_id), reason);
        }
    }
    false
}
