//! Adoption: copies found by their tags become the entries' tracked copies or attempts, by the
//! one ownership rule; second completed copies become duplicates to heal.
//! May change: the entries' stages and error copies, the duplicates to remove.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{debug, warn};

use crate::engine::ownership::{Claim, same_ask_and_key};
use crate::engine::poll_timing::CompletionEstimate;
use crate::ids::SnapshotId;
use crate::store::{CopyStatus, SnapshotState, SnapshotStore};

use super::entry::{ErrorCopy, TrackedCopy};
use super::state::Run;

impl<'a, S: SnapshotStore> Run<'a, S> {
    /// Takes over copies found by their tags, by the one ownership rule ([`AskedEncryption::claim`]):
    /// of the request's copies, one in `error` counts as an attempt, and so does one under
    /// another key than the request's (never adopted, whatever its tags say); of the live ones,
    /// a completed copy is tracked over a pending one. Duplicates heal only between completed
    /// copies: deleting a pending copy frees no slot until it completes anyway, and if the
    /// copy kept then ended in `error` no good copy would be left.
    pub(super) fn adopt(&mut self, copies: Vec<CopyStatus>, reused: bool) {
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
            let copy = TrackedCopy { id: kept.id, state: kept.state, progress: kept.progress, estimate, seen: true };
            self.adopt_copy(i, copy, reused);
        }
    }
}

/// Which of two completed copies of one source to keep (the greater): the oldest, then the
/// lower id. Only what never changes ranks them, so overlapping invocations, looking at
/// different moments, never delete each other's keeper: a copy is deleted only when a copy
/// ranked above it is completed, so the best-ranked completed copy always survives. (Which
/// copy a run *tracks* may follow the state: a completed one over a pending one.)
pub(super) fn keep_rank(copy: &CopyStatus) -> (Reverse<SystemTime>, Reverse<SnapshotId>) {
    // A copy without a start time sorts as the newest.
    let started = copy.start_time.unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(u32::MAX.into()));
    (Reverse(started), Reverse(copy.id.clone()))
}
