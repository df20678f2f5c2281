//! The unit tests of [`super`].

use super::*;
use crate::ids::Region;

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
