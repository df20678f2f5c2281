//! The slot ledger's side of starting: reserves slots for a round, records what started and
//! gives back the rest, releases the slots of copies polls saw finish.
//! May change: the queue (requeues), `finished_copies`, the deployment's count
//! (`counted_deployment`),
//! `ledger_failures` and the backoff state.

use std::collections::HashSet;

use tokio::time::Instant;
use tracing::{debug, warn};

use crate::contract::error::CopySnapshotsError;
use crate::contract::response::plural;
use crate::engine::slots::{self, ReserveError};
use crate::store::ledger::{LedgerError, LedgerState, SlotKey, SlotLedger, Version};
use crate::store::{SnapshotStore, StoreError};

use super::fatal::fatal;
use super::state::{Run, Started};

impl<'a, S: SnapshotStore> Run<'a, S> {
    /// Start round with a slot ledger: reserves slots for the next `want` sources of the queue
    /// (one load and one conditional save, rebuilt from EC2 when stale), starts those granted,
    /// then records their copy ids and drops the reservations of those not started (one more
    /// load and save). A ledger that does not answer means no start this round, after a
    /// backoff, as a throttled count does; a ledger the role may not use ends the run.
    pub(super) async fn start_reserved<L: SlotLedger>(
        &mut self,
        ledger: &L,
        want: usize,
        work_until: Option<Instant>,
    ) -> Result<(), CopySnapshotsError> {
        let candidates: Vec<usize> = (0..want).map_while(|_| self.next_to_start()).collect();
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
            } else if self.held_until_next_poll() || !self.may_start(work_until) || round_began.elapsed() >= round_ends
            {
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
        let target = &self.target.place;
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

    /// The slot key of entry `i`'s copy-to-be.
    pub(super) fn slot_key(&self, i: usize) -> SlotKey {
        SlotKey::for_copy(&self.request.source_region, &self.entries[i].source.id, self.asked.tag_value())
    }

    /// One reservation round in the ledger. `Ok(None)`: nothing granted because the ledger
    /// or EC2's listing did not answer (no start this round, backing off).
    pub(super) async fn reserve_slots<L: SlotLedger>(
        &mut self,
        ledger: &L,
        keys: &[SlotKey],
    ) -> Result<Option<(Vec<SlotKey>, Option<(LedgerState, Version)>)>, CopySnapshotsError> {
        let own_pending: HashSet<String> = self.pending_copies().map(|c| c.id.to_string()).collect();
        let finished = std::mem::take(&mut self.finished_copies);
        let target = &self.target.place;
        let ask = slots::Ask {
            target,
            wanted: keys,
            limit: self.target.pending_limit,
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
                self.counted_deployment(granted.live, granted.others);
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
                Err(fatal(e, "listing this deployment's pending copies for the slot ledger", self.copies_started()))
            }
        }
    }

    /// A ledger error the deployment must fix (access denied, no such table) ends the run;
    /// any other is a round without a start.
    pub(super) fn fatal_ledger_error(&self, error: &LedgerError) -> Result<(), CopySnapshotsError> {
        let so_far = match self.copies_started() {
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

    /// Frees the ledger's slots of copies polls saw finish or vanish that no reservation has
    /// released yet (one write for all). A release that fails only leaves the slots counted
    /// until a refresh: never fewer counted than held.
    pub(super) async fn release_slots(&mut self) {
        let store = self.store;
        let Some(ledger) = store.slot_ledger() else {
            self.finished_copies.clear();
            return;
        };
        if self.finished_copies.is_empty() || !self.may_call() {
            return;
        }
        let copies = std::mem::take(&mut self.finished_copies);
        let target = &self.target.place;
        let result = slots::update(ledger, &self.timeline, target, None, |state| slots::release(state, &copies)).await;
        if let Err(error) = result {
            warn!(%error, copies = copies.len(), "could not release finished copies' slots in the slot ledger; a refresh will");
        }
    }
}
