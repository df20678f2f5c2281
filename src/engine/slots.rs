//! This deployment's copy slots in a target region, held in a ledger that every invocation
//! writes with a condition on its version (a conditional-write semaphore), so two invocations
//! that reserve at the same moment cannot both take the last slots of `pending_limit`.
//!
//! This module owns the accounting, free of any SDK: the pure rules over the ledger's state
//! ([`needs_refresh`], [`refreshed`], [`grant`], [`settle`], [`release`]) and the load → decide
//! → conditional save loop ([`reserve`], [`update`]) the engine calls. The state and the port an
//! adapter implements are [`crate::store::ledger`]'s.
//!
//! The ledger is a cache of EC2's truth, never the truth itself: entries are reserved before a
//! start, get their copy id after it, and are released when a poll sees the copy finished; an
//! invocation that dies, a write that fails or a batch that never polls leaves entries behind,
//! and a refresh rebuilds the ledger from EC2's listing of this project's pending copies.
//! Every rule errs on counting a slot too many for a while, never one too few.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::{Duration, SystemTime};

use tracing::{debug, warn};

use crate::engine::timeline::{Timeline, jittered};
use crate::ids::{Place, SnapshotId};
use crate::store::StoreError;
use crate::store::ledger::{LedgerError, LedgerState, Saved, SlotEntry, SlotKey, SlotLedger, Version};

/// A reservation without a copy id older than this is dead (its invocation died between
/// reserving and starting, or its start's outcome stayed unknown): the ledger is refreshed.
pub const RESERVATION_TTL: Duration = Duration::from_secs(120);
/// A start round begins no start that could still be running when its reservations turn
/// [`RESERVATION_TTL`] old less this (clock skew between instances, the record's write): the
/// rest of the round is given back, so no other invocation takes a live round's slots for dead.
pub const ROUND_MARGIN: Duration = Duration::from_secs(20);
/// A copy id recorded this recently is kept by a refresh even when EC2 does not list it yet:
/// DescribeSnapshots is eventually consistent. Once a refresh has seen the copy listed, the
/// listing alone decides.
pub const RECORD_GRACE: Duration = Duration::from_secs(180);
/// A ledger that would refuse slots is rebuilt from EC2 when its last refresh is older than
/// this (and entries this invocation cannot vouch for hold slots): how long a slot can stay
/// counted after its copy finished unseen (a batch never polls its copies).
pub const REFRESH_AFTER: Duration = Duration::from_secs(60);
/// The most tries of one load → save cycle that keeps losing to other invocations' writes.
pub const SAVE_TRIES: u32 = 6;
/// The first pause after a lost conditional write; it doubles per try, with jitter.
const FIRST_CONFLICT_PAUSE: Duration = Duration::from_millis(50);

fn is_dead_reservation(entry: &SlotEntry, now: SystemTime) -> bool {
    entry.copy_id.is_none() && age(now, entry.reserved_at) >= RESERVATION_TTL
}

fn age(now: SystemTime, then: SystemTime) -> Duration {
    // A time ahead of this clock (another instance's skew) is young: kept, counted.
    now.duration_since(then).unwrap_or_default()
}

/// How many of `wanted` [`grant`] would give.
fn grantable(state: &LedgerState, wanted: &[SlotKey], limit: usize) -> usize {
    let free = limit.saturating_sub(state.entries.len());
    wanted.iter().filter(|key| !state.entries.contains_key(*key)).take(free).count()
}

/// Whether the ledger must be rebuilt from EC2 before slots are granted: never refreshed; a
/// dead reservation in it; or granting `wanted` would take its last free slots (or more), its
/// last refresh is older than [`REFRESH_AFTER`], and some slot is held by an entry this
/// invocation cannot vouch for (anything but its own copies it polls as pending,
/// `own_pending`). The last slots, not only a refusal: copies the ledger does not know (the
/// command line's, another stack's, those started before the ledger existed) are found before
/// the limit is reached with them, not after.
pub fn needs_refresh(
    state: &LedgerState,
    now: SystemTime,
    wanted: &[SlotKey],
    limit: usize,
    own_pending: &HashSet<String>,
) -> bool {
    let Some(refreshed_at) = state.refreshed_at else { return true };
    if state.entries.values().any(|e| is_dead_reservation(e, now)) {
        return true;
    }
    age(now, refreshed_at) >= REFRESH_AFTER
        && !wanted.is_empty()
        && state.entries.len() + grantable(state, wanted, limit) >= limit
        && state.entries.values().any(|e| e.copy_id.as_ref().is_none_or(|id| !own_pending.contains(id)))
}

/// The ledger rebuilt from EC2's listing of this project's pending copies in the target
/// region (`listed`, taken after `state` was loaded): an entry stays if its copy is listed,
/// or its copy id was recorded within [`RECORD_GRACE`] and the listing has not shown it yet,
/// or it is a reservation younger than [`RESERVATION_TTL`]; a listed copy the ledger did not
/// know gets an entry of its own.
pub fn refreshed(state: &LedgerState, now: SystemTime, listed: &[SnapshotId]) -> LedgerState {
    let listed: HashSet<&str> = listed.iter().map(SnapshotId::as_str).collect();
    let mut known = HashSet::new();
    let mut entries = BTreeMap::new();
    for (key, entry) in &state.entries {
        let keep = match &entry.copy_id {
            Some(id) if listed.contains(id.as_str()) => {
                known.insert(id.as_str());
                let mut seen = entry.clone();
                seen.recorded_at = None;
                entries.insert(key.clone(), seen);
                continue;
            }
            Some(_) => entry.recorded_at.is_some_and(|at| age(now, at) < RECORD_GRACE),
            None => !is_dead_reservation(entry, now),
        };
        if keep {
            entries.insert(key.clone(), entry.clone());
        } else {
            debug!(key = key.as_str(), copy = ?entry.copy_id, "slot released by a refresh");
        }
    }
    for id in listed.into_iter().filter(|id| !known.contains(id)) {
        let entry = SlotEntry { copy_id: Some(id.to_owned()), reserved_at: now, recorded_at: None };
        entries.insert(SlotKey::listed(id), entry);
    }
    LedgerState { entries, refreshed_at: Some(now) }
}

/// Reserves slots for `wanted`, in order, while fewer than `limit` entries are live; a key
/// already in the ledger (its copy started or being started by another invocation) is not
/// granted. Returns the keys granted.
pub fn grant(state: &mut LedgerState, now: SystemTime, wanted: &[SlotKey], limit: usize) -> Vec<SlotKey> {
    let mut free = limit.saturating_sub(state.entries.len());
    let mut granted = Vec::new();
    for key in wanted {
        if free == 0 {
            break;
        }
        if state.entries.contains_key(key) {
            continue;
        }
        state.entries.insert(key.clone(), SlotEntry::reservation(now));
        granted.push(key.clone());
        free -= 1;
    }
    granted
}

/// After a start round: the copy id on each started entry (re-created if a refresh dropped it
/// meanwhile: the copy exists, and in place of the entry that refresh made for it from the
/// listing, so it is counted once), and the reservations of sources EC2 definitely did not
/// copy dropped. Returns whether anything changed.
pub fn settle(
    state: &mut LedgerState,
    now: SystemTime,
    started: &[(SlotKey, SnapshotId)],
    not_started: &[SlotKey],
) -> bool {
    let mut changed = false;
    for (key, copy) in started {
        let listed = SlotKey::listed(copy.as_str());
        if *key != listed && state.entries.remove(&listed).is_some() {
            changed = true;
        }
        let entry = state.entries.entry(key.clone()).or_insert_with(|| SlotEntry::reservation(now));
        if entry.copy_id.as_deref() != Some(copy.as_str()) {
            entry.copy_id = Some(copy.as_str().to_owned());
            entry.recorded_at = Some(now);
            changed = true;
        }
    }
    for key in not_started {
        // Only a bare reservation: an entry with a copy id is a copy, whoever made it.
        if state.entries.get(key).is_some_and(|e| e.copy_id.is_none()) {
            state.entries.remove(key);
            changed = true;
        }
    }
    changed
}

/// Releases the entries of copies a poll saw finish (completed, error) or vanish. Returns
/// whether anything changed.
pub fn release(state: &mut LedgerState, copies: &[SnapshotId]) -> bool {
    let done: HashSet<&str> = copies.iter().map(SnapshotId::as_str).collect();
    let before = state.entries.len();
    state.entries.retain(|_, e| e.copy_id.as_deref().is_none_or(|id| !done.contains(id)));
    state.entries.len() != before
}

/// One reservation round's question.
#[derive(Debug)]
pub struct Ask<'a> {
    pub target: &'a Place,
    /// The sources this invocation would start now, in start order.
    pub wanted: &'a [SlotKey],
    pub limit: usize,
    /// This invocation's own copies it polls as pending (copy ids).
    pub own_pending: &'a HashSet<String>,
    /// Copies this invocation saw finish since its last write, released in the same write.
    pub finished: &'a [SnapshotId],
}

/// What a reservation round came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub keys: Vec<SlotKey>,
    /// Live entries before this grant.
    pub live: usize,
    /// Of those, entries that are not this invocation's pending copies.
    pub others: usize,
    /// Whether this round rebuilt the ledger from EC2.
    pub refreshed: bool,
    /// The ledger as this round saved it, and its version: the next write of this invocation
    /// (the round's copy ids) tries it first, without a load.
    pub saved: Option<(LedgerState, Version)>,
}

/// Why a reservation round granted nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum ReserveError {
    Ledger(LedgerError),
    /// EC2's listing, for a refresh, failed.
    Listing(StoreError),
}

/// One ledger call within the invocation's time: no answer in time is `Unavailable`.
async fn bounded<T>(timeline: &Timeline, call: impl Future<Output = Result<T, LedgerError>>) -> Result<T, LedgerError> {
    timeline.within_budget(call).await.unwrap_or_else(|| {
        Err(LedgerError::Unavailable("no answer from the slot ledger within the time the deadline left".to_owned()))
    })
}

/// The pause after the `tries`-th lost conditional write: backing off with jitter, so
/// invocations that collided do not collide again in step.
fn conflict_pause(tries: u32) -> Duration {
    jittered(FIRST_CONFLICT_PAUSE * 2u32.pow(tries.min(6)))
}

/// Reserves slots: load (strongly consistent), rebuild from EC2 (`list_pending`) when
/// [`needs_refresh`] says so, [`grant`], and save on the condition that nobody wrote since the
/// load; on a conflict, all again after a pause with jitter, at most [`SAVE_TRIES`] times.
/// Only the keys granted may start.
pub async fn reserve<L, F, Fut>(
    ledger: &L,
    timeline: &Timeline,
    clock: impl Fn() -> SystemTime,
    ask: Ask<'_>,
    mut list_pending: F,
) -> Result<Granted, ReserveError>
where
    L: SlotLedger,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<SnapshotId>, StoreError>>,
{
    for tries in 1..=SAVE_TRIES {
        let (mut state, version) = bounded(timeline, ledger.load(ask.target)).await.map_err(ReserveError::Ledger)?;
        let released = release(&mut state, ask.finished);
        let refresh = needs_refresh(&state, clock(), ask.wanted, ask.limit, ask.own_pending);
        if refresh {
            // Listed after the load: whatever the listing misses was recorded after it, and
            // the conditional save fails if anyone wrote since the load.
            let listed = list_pending().await.map_err(ReserveError::Listing)?;
            state = refreshed(&state, clock(), &listed);
        }
        let live = state.entries.len();
        let others = state
            .entries
            .values()
            .filter(|e| e.copy_id.as_ref().is_none_or(|id| !ask.own_pending.contains(id)))
            .count();
        let keys = grant(&mut state, clock(), ask.wanted, ask.limit);
        if keys.is_empty() && !refresh && !released {
            return Ok(Granted { keys, live, others, refreshed: false, saved: Some((state, version)) });
        }
        match bounded(timeline, ledger.save(ask.target, &state, version)).await.map_err(ReserveError::Ledger)? {
            Saved::Saved => {
                let saved = Some((state, version + 1));
                return Ok(Granted { keys, live, others, refreshed: refresh, saved });
            }
            Saved::Conflict => {
                debug!(tries, "another invocation wrote the slot ledger first; loading it again");
                tokio::time::sleep(conflict_pause(tries)).await;
            }
        }
    }
    Err(ReserveError::Ledger(LedgerError::Unavailable(format!(
        "{SAVE_TRIES} writes to the slot ledger in a row lost to other invocations' writes"
    ))))
}

/// Applies `change` to the ledger of `target_region` (load, change, conditional save, again on
/// a conflict): recording copy ids, dropping reservations, releasing finished copies. A change
/// that alters nothing writes nothing. `known`: the ledger as this invocation last saved it,
/// tried first without a load (most often nobody wrote since; if someone did, the save fails
/// on its version and the loop loads).
pub async fn update<L: SlotLedger>(
    ledger: &L,
    timeline: &Timeline,
    target: &Place,
    mut known: Option<(LedgerState, Version)>,
    mut change: impl FnMut(&mut LedgerState) -> bool,
) -> Result<(), LedgerError> {
    for tries in 1..=SAVE_TRIES {
        let (mut state, version) = match known.take() {
            Some(known) => known,
            None => bounded(timeline, ledger.load(target)).await?,
        };
        if !change(&mut state) {
            return Ok(());
        }
        match bounded(timeline, ledger.save(target, &state, version)).await? {
            Saved::Saved => return Ok(()),
            Saved::Conflict => tokio::time::sleep(conflict_pause(tries)).await,
        }
    }
    warn!(tries = SAVE_TRIES, "every write to the slot ledger lost to another invocation's; left to a refresh");
    Err(LedgerError::Unavailable(format!("{SAVE_TRIES} writes to the slot ledger in a row lost to other invocations'")))
}

#[cfg(test)]
mod tests;
