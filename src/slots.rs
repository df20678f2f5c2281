//! This deployment's copy slots in a target region, held in a ledger that every invocation
//! writes with a condition on its version (a conditional-write semaphore), so two invocations
//! that reserve at the same moment cannot both take the last slots of `pending_limit`.
//!
//! This module owns the accounting, free of any SDK: the ledger's state ([`LedgerState`]),
//! the pure rules over it ([`needs_refresh`], [`refreshed`], [`grant`], [`settle`],
//! [`release`]), the [`SlotLedger`] port an adapter implements (DynamoDB in
//! `dynamo_slots.rs`, memory in the simulator), and the load → decide → conditional save loop
//! ([`reserve`], [`update`]) the engine calls.
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

use crate::ids::{Region, SnapshotId};
use crate::store::StoreError;
use crate::timeline::{Timeline, jittered};

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

/// What identifies a copy-to-be: source region, source snapshot and the encryption asked
/// (`us-east-1/snap-…/none`), so a second reservation of the same copy is refused instead of
/// counted twice (an event delivered twice, an invocation retried), and a copy another
/// invocation is starting is not started again. Entries a refresh adds for copies EC2 lists
/// but the ledger did not know are keyed `copy/snap-…`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotKey(String);

impl SlotKey {
    pub fn for_copy(source_region: &Region, source: &SnapshotId, encryption: &str) -> Self {
        Self(format!("{source_region}/{source}/{encryption}"))
    }

    fn listed(copy_id: &str) -> Self {
        Self(format!("copy/{copy_id}"))
    }

    /// A key as an adapter stored it.
    pub fn stored(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One slot held: reserved, then (once started) with its copy's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotEntry {
    pub copy_id: Option<String>,
    pub reserved_at: SystemTime,
    /// When the copy id was recorded, until a refresh has seen the copy in EC2's listing (see
    /// [`RECORD_GRACE`]); `None` once seen, or for an entry a refresh made from the listing.
    pub recorded_at: Option<SystemTime>,
}

impl SlotEntry {
    fn reservation(now: SystemTime) -> Self {
        Self { copy_id: None, reserved_at: now, recorded_at: None }
    }

    fn is_dead_reservation(&self, now: SystemTime) -> bool {
        self.copy_id.is_none() && age(now, self.reserved_at) >= RESERVATION_TTL
    }
}

/// The ledger of one target region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerState {
    pub entries: BTreeMap<SlotKey, SlotEntry>,
    /// When the entries were last rebuilt from EC2's listing; `None`: never (a new ledger, or
    /// one an adapter could not read whole).
    pub refreshed_at: Option<SystemTime>,
}

/// The version a conditional save expects: 0 when the ledger has no item yet.
pub type Version = u64;

/// What a conditional save came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    Saved,
    /// Another invocation wrote the ledger since this one loaded it: nothing was written.
    Conflict,
}

/// What can go wrong asking the ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// Throttled, a 5xx, a timeout: no start this round, try again after a backoff.
    #[error("{0}")]
    Unavailable(String),
    /// The role may not read or write the ledger: a deployment to fix.
    #[error("{0}")]
    AccessDenied(String),
    /// The ledger does not exist or refuses the request as malformed: a deployment to fix.
    #[error("{0}")]
    Misconfigured(String),
}

/// The ledger's storage: one record per target region, loaded strongly consistent and saved
/// only if its version is still the one loaded. `Sync` because concurrent invocations' futures
/// share it.
pub trait SlotLedger: Sync {
    /// Names the ledger for messages ("DynamoDB table copy-snapshots-Slots…").
    fn describe(&self) -> String;

    /// The ledger of `target_region` and its version (an empty state, version 0, when none).
    fn load(&self, target_region: &Region) -> impl Future<Output = Result<(LedgerState, Version), LedgerError>> + Send;

    /// Writes `state` as version `expected + 1`, only if the stored version is `expected`.
    fn save(
        &self,
        target_region: &Region,
        state: &LedgerState,
        expected: Version,
    ) -> impl Future<Output = Result<Saved, LedgerError>> + Send;
}

/// The type of "no ledger configured" ([`crate::store::SnapshotStore::slot_ledger`]'s
/// default): uninhabited, so it is never called.
#[derive(Debug)]
pub enum NoLedger {}

impl SlotLedger for NoLedger {
    fn describe(&self) -> String {
        match *self {}
    }

    async fn load(&self, _: &Region) -> Result<(LedgerState, Version), LedgerError> {
        match *self {}
    }

    async fn save(&self, _: &Region, _: &LedgerState, _: Version) -> Result<Saved, LedgerError> {
        match *self {}
    }
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
    if state.entries.values().any(|e| e.is_dead_reservation(now)) {
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
            None => !entry.is_dead_reservation(now),
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
    pub target_region: &'a Region,
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
        let (mut state, version) =
            bounded(timeline, ledger.load(ask.target_region)).await.map_err(ReserveError::Ledger)?;
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
        match bounded(timeline, ledger.save(ask.target_region, &state, version)).await.map_err(ReserveError::Ledger)? {
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
    target_region: &Region,
    mut known: Option<(LedgerState, Version)>,
    mut change: impl FnMut(&mut LedgerState) -> bool,
) -> Result<(), LedgerError> {
    for tries in 1..=SAVE_TRIES {
        let (mut state, version) = match known.take() {
            Some(known) => known,
            None => bounded(timeline, ledger.load(target_region)).await?,
        };
        if !change(&mut state) {
            return Ok(());
        }
        match bounded(timeline, ledger.save(target_region, &state, version)).await? {
            Saved::Saved => return Ok(()),
            Saved::Conflict => tokio::time::sleep(conflict_pause(tries)).await,
        }
    }
    warn!(tries = SAVE_TRIES, "every write to the slot ledger lost to another invocation's; left to a refresh");
    Err(LedgerError::Unavailable(format!("{SAVE_TRIES} writes to the slot ledger in a row lost to other invocations'")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 3;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn key(n: u8) -> SlotKey {
        let source = SnapshotId::parse(&format!("snap-{n:017x}")).unwrap();
        SlotKey::for_copy(&Region::parse("us-east-1").unwrap(), &source, "none")
    }

    fn copy(n: u8) -> SnapshotId {
        SnapshotId::parse(&format!("snap-0c{n:015x}")).unwrap()
    }

    fn fresh(now: SystemTime) -> LedgerState {
        LedgerState { entries: BTreeMap::new(), refreshed_at: Some(now) }
    }

    #[test]
    fn grants_up_to_the_limit_and_never_a_key_already_held() {
        let mut state = fresh(at(0));
        assert_eq!(grant(&mut state, at(0), &[key(1), key(2)], LIMIT), [key(1), key(2)]);
        // key(2) is held: granted are the new ones, up to the one slot left.
        assert_eq!(grant(&mut state, at(1), &[key(2), key(3), key(4)], LIMIT), [key(3)]);
        assert!(grant(&mut state, at(2), &[key(5)], LIMIT).is_empty());
        assert_eq!(state.entries.len(), LIMIT);
    }

    #[test]
    fn a_ledger_never_refreshed_or_with_a_dead_reservation_is_refreshed() {
        let none = HashSet::new();
        assert!(needs_refresh(&LedgerState::default(), at(0), &[key(1)], LIMIT, &none));
        let mut state = fresh(at(0));
        grant(&mut state, at(0), &[key(1)], LIMIT);
        assert!(!needs_refresh(&state, at(119), &[key(2)], LIMIT, &none));
        assert!(needs_refresh(&state, at(120), &[key(2)], LIMIT, &none), "a reservation past its TTL");
    }

    #[test]
    fn a_limiting_ledger_is_refreshed_once_a_minute_unless_it_holds_only_own_polled_copies() {
        let mut state = fresh(at(0));
        grant(&mut state, at(0), &[key(1), key(2), key(3)], LIMIT);
        settle(&mut state, at(1), &[(key(1), copy(1)), (key(2), copy(2)), (key(3), copy(3))], &[]);
        let none = HashSet::new();
        assert!(!needs_refresh(&state, at(59), &[key(4)], LIMIT, &none), "refreshed less than a minute ago");
        // Taking the last free slot is checked too: the ledger may not know every copy.
        let mut two = fresh(at(0));
        grant(&mut two, at(0), &[key(1), key(2)], LIMIT);
        settle(&mut two, at(1), &[(key(1), copy(1)), (key(2), copy(2))], &[]);
        assert!(needs_refresh(&two, at(60), &[key(4)], LIMIT, &none), "the last slot");
        assert!(!needs_refresh(&two, at(60), &[key(4)], LIMIT + 1, &none), "not the last slot");
        assert!(needs_refresh(&state, at(60), &[key(4)], LIMIT, &none));
        assert!(!needs_refresh(&state, at(60), &[], LIMIT, &none), "nothing wanted, nothing limited");
        let own: HashSet<String> = [copy(1), copy(2), copy(3)].iter().map(|c| c.to_string()).collect();
        assert!(!needs_refresh(&state, at(600), &[key(4)], LIMIT, &own), "this run polls every holder itself");
    }

    #[test]
    fn a_refresh_keeps_listed_copies_fresh_records_and_live_reservations_and_adds_unknown_copies() {
        let mut state = fresh(at(0));
        grant(&mut state, at(0), &[key(1), key(2), key(3), key(4)], 10);
        // 1: started, listed. 2: started just now, not listed yet. 3: started long ago, no
        // longer listed (finished). 4: reserved, not started, young.
        settle(&mut state, at(10), &[(key(1), copy(1)), (key(3), copy(3))], &[]);
        settle(&mut state, at(200), &[(key(2), copy(2))], &[]);
        let rebuilt = refreshed(&state, at(210), &[copy(1), copy(9)]);
        let kept: Vec<&str> = rebuilt.entries.keys().map(SlotKey::as_str).collect();
        let unknown = format!("copy/{}", copy(9));
        assert_eq!(kept, [unknown.as_str(), key(1).as_str(), key(2).as_str()]);
        assert_eq!(rebuilt.refreshed_at, Some(at(210)));
        assert_eq!(rebuilt.entries[&key(1)].recorded_at, None, "seen listed: the listing alone decides now");
        // The reservation of key(4) (at 0) is past its TTL at 210: dropped.
        assert!(!rebuilt.entries.contains_key(&key(4)));
        // Once seen listed, an unlisted copy goes at once, grace or not.
        let later = refreshed(&rebuilt, at(220), &[copy(2)]);
        assert!(!later.entries.contains_key(&key(1)));
        assert!(later.entries.contains_key(&key(2)));
    }

    #[test]
    fn settle_records_copies_drops_bare_reservations_only_and_release_frees_finished_copies() {
        let mut state = fresh(at(0));
        grant(&mut state, at(0), &[key(1), key(2)], LIMIT);
        assert!(settle(&mut state, at(1), &[(key(1), copy(1))], &[key(2)]));
        assert_eq!(state.entries.len(), 1);
        assert_eq!(state.entries[&key(1)].copy_id.as_deref(), Some(copy(1).as_str()));
        // Dropping a key whose copy exists changes nothing.
        assert!(!settle(&mut state, at(2), &[], &[key(1)]));
        // A record whose entry a refresh dropped meanwhile re-creates it, in place of the entry
        // that refresh made for the copy from the listing: one copy, one slot.
        let rebuilt = refreshed(&state, at(3), &[copy(1), copy(3)]);
        assert_eq!(rebuilt.entries.len(), 2);
        state = rebuilt;
        assert!(settle(&mut state, at(3), &[(key(3), copy(3))], &[]));
        assert_eq!(state.entries.len(), 2, "{state:?}");
        assert!(release(&mut state, &[copy(1), copy(7)]));
        assert_eq!(state.entries.keys().collect::<Vec<_>>(), [&key(3)]);
        assert!(!release(&mut state, &[copy(1)]));
    }
}
