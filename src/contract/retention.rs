//! Retention: one rule says which sources are kept, and it decides both what a run copies and
//! which of this project's copies it deletes, so no run deletes what the next would copy again.
//!
//! - `retain_days: D`: a source started within the last D days is in retention;
//! - `retain_count: N`: so are the N newest sources of each volume;
//! - both: in retention if either says so; neither: every source is (nothing is deleted by
//!   age or count, today's behaviour);
//! - the newest source of each volume the request selects is always in retention, so every
//!   volume keeps a recovery copy.
//!
//! A volume's sources are the completed ones the request selects and those known only from the
//! tags of their copies (gone from the source region, e.g. pruned there by Data Lifecycle
//! Manager): retention in the recovery region outlives the source region's own. A source with
//! no volume (EC2's placeholder) is a group of its own, so it is always the newest of its group.
//!
//! `delete_orphans_after_days: G` (opt-in) is a second, separate rule: a copy whose source no
//! longer exists is deleted once its source started more than G days ago.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::ids::SnapshotId;

const DAY: Duration = Duration::from_secs(86_400);

/// A request's retention; all `None` keeps everything.
/// What `retain_days` accepts, for messages.
pub const RETAIN_DAYS_VALID: &str = "an integer ≥ 1: sources started within that many days are kept";
/// What `retain_count` accepts, for messages.
pub const RETAIN_COUNT_VALID: &str = "an integer ≥ 1: the newest that many sources of each volume are kept";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// `retain_days`.
    pub days: Option<u32>,
    /// `retain_count`.
    pub count: Option<u32>,
    /// `delete_orphans_after_days`.
    pub orphans_after_days: Option<u32>,
}

impl Retention {
    /// Whether the request asks for any pruning at all.
    pub fn is_set(&self) -> bool {
        self.days.is_some() || self.count.is_some() || self.orphans_after_days.is_some()
    }

    /// Whether some sources can be out of retention (`retain_days` or `retain_count`).
    pub fn limits_sources(&self) -> bool {
        self.days.is_some() || self.count.is_some()
    }

    /// The rule in the request's words, e.g. `retain_days 7, retain_count 3`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [("retain_days", self.days), ("retain_count", self.count)]
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| format!("{name} {v}")))
            .collect();
        parts.join(", ")
    }

    /// Why a copy whose source no longer exists is deleted now, if it is: its source (or,
    /// without the tag, the copy itself) started more than `delete_orphans_after_days` ago.
    pub fn orphan_due(&self, now: SystemTime, started: SystemTime) -> Option<String> {
        let grace = self.orphans_after_days?;
        let age = now.duration_since(started).unwrap_or_default();
        (age > DAY * grace)
            .then(|| format!("started {} ago, more than delete_orphans_after_days {grace}", age_text(age)))
    }
}

/// One source as the rule sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub source: SnapshotId,
    /// The volume it was taken of; `None`: a group of its own.
    pub volume: Option<String>,
    /// Its StartTime; a source of unknown age is kept and not counted.
    pub start_time: Option<SystemTime>,
    /// Selected by the request (it exists and is completed): only these protect the newest of
    /// their volume. A member known only from its copies' tags does not.
    pub selected: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Group<'a> {
    Volume(&'a str),
    Alone(&'a SnapshotId),
}

/// The members out of retention under `rule` at `now`, each with why. Everything else is in.
pub fn out_of_retention(rule: &Retention, now: SystemTime, members: &[Member]) -> HashMap<SnapshotId, String> {
    let mut out = HashMap::new();
    if !rule.limits_sources() {
        return out;
    }
    let mut groups: HashMap<Group<'_>, Vec<&Member>> = HashMap::new();
    for member in members {
        let group = member.volume.as_deref().map_or(Group::Alone(&member.source), Group::Volume);
        groups.entry(group).or_default().push(member);
    }
    for (group, mut members) in groups {
        // Newest first; a tie in start time goes to the higher id, so every run ranks alike.
        members.retain(|m| m.start_time.is_some());
        members.sort_by(|a, b| (b.start_time, &b.source).cmp(&(a.start_time, &a.source)));
        members.dedup_by(|a, b| a.source == b.source);
        let protected = members.iter().find(|m| m.selected).map(|m| &m.source);
        for (rank, member) in members.iter().enumerate() {
            let Some(started) = member.start_time else { continue };
            let age = now.duration_since(started).unwrap_or_default();
            let by_days = rule.days.is_some_and(|days| age < DAY * days);
            let by_count = rule.count.is_some_and(|count| rank < count as usize);
            if by_days || by_count || protected == Some(&member.source) {
                continue;
            }
            let of = match group {
                Group::Volume(volume) => format!("of {volume}"),
                Group::Alone(_) => "of its own".to_owned(),
            };
            let reason = format!(
                "out of retention ({}): started {} ago, the {} newest snapshot {of}",
                rule.describe(),
                age_text(age),
                ordinal(rank + 1)
            );
            out.insert(member.source.clone(), reason);
        }
    }
    out
}

/// `12 days`, `5 hours`, `3 minutes`: an age as a person reads it, rounded down.
fn age_text(age: Duration) -> String {
    let (n, unit) = match age.as_secs() {
        s if s >= 2 * 86_400 => (s / 86_400, "day"),
        s if s >= 2 * 3_600 => (s / 3_600, "hour"),
        s => (s / 60, "minute"),
    };
    if n == 1 { format!("1 {unit}") } else { format!("{n} {unit}s") }
}

/// `1st`, `2nd`, `3rd`, `4th`, `11th`, `21st`, …
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> SnapshotId {
        SnapshotId::parse(&format!("snap-{n:017x}")).unwrap()
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + DAY * 20_000
    }

    /// A source of `volume` started `days` ago.
    fn member(n: u64, volume: &str, days: u32, selected: bool) -> Member {
        Member { source: id(n), volume: Some(volume.to_owned()), start_time: Some(now() - DAY * days), selected }
    }

    fn out_ids(rule: Retention, members: &[Member]) -> Vec<SnapshotId> {
        let mut out: Vec<SnapshotId> = out_of_retention(&rule, now(), members).into_keys().collect();
        out.sort();
        out
    }

    fn days(d: u32) -> Retention {
        Retention { days: Some(d), ..Retention::default() }
    }

    fn count(n: u32) -> Retention {
        Retention { count: Some(n), ..Retention::default() }
    }

    #[test]
    fn without_days_or_count_everything_is_in_retention() {
        let members = [member(1, "vol-a", 400, true), member(2, "vol-a", 0, true)];
        let orphans_only = Retention { orphans_after_days: Some(1), ..Retention::default() };
        assert!(out_ids(orphans_only, &members).is_empty());
    }

    #[test]
    fn days_keep_sources_started_within_them() {
        let members: Vec<Member> = (0..10).map(|d| member(u64::from(d) + 1, "vol-a", d, true)).collect();
        // Started 0..6 days ago are within 7 days; 7, 8 and 9 are not.
        assert_eq!(out_ids(days(7), &members), [id(8), id(9), id(10)]);
    }

    #[test]
    fn count_keeps_the_newest_of_each_volume() {
        let mut members: Vec<Member> = (0..5).map(|d| member(u64::from(d) + 1, "vol-a", d, true)).collect();
        members.extend((0..2).map(|d| member(u64::from(d) + 11, "vol-b", d + 30, true)));
        assert_eq!(out_ids(count(3), &members), [id(4), id(5)], "vol-b has only two");
    }

    #[test]
    fn either_rule_keeps_a_source() {
        let members: Vec<Member> = (0..6).map(|d| member(u64::from(d) + 1, "vol-a", d * 10, true)).collect();
        // Days keep 0 and 10 (within 15); count keeps the newest 3 (0, 10, 20).
        let both = Retention { days: Some(15), count: Some(3), orphans_after_days: None };
        assert_eq!(out_ids(both, &members), [id(4), id(5), id(6)]);
    }

    #[test]
    fn days_keep_more_than_count_when_they_reach_further() {
        // Days keep 0..25 (within 30), count keeps the newest 3: either keeps, so six stay.
        let members: Vec<Member> = [0, 5, 10, 15, 20, 25, 40]
            .iter()
            .enumerate()
            .map(|(i, d)| member(i as u64 + 1, "vol-a", *d, true))
            .collect();
        let both = Retention { days: Some(30), count: Some(3), orphans_after_days: None };
        assert_eq!(out_ids(both, &members), [id(7)]);
    }

    #[test]
    fn several_sources_without_a_volume_are_each_alone() {
        let alone: Vec<Member> =
            (1..=3).map(|n| Member { volume: None, ..member(n, "", 30 + 10 * n as u32, true) }).collect();
        assert!(out_ids(count(1), &alone).is_empty());
        assert!(out_ids(days(7), &alone).is_empty());
    }

    #[test]
    fn the_newest_selected_source_of_a_volume_is_always_kept() {
        let members = [member(1, "vol-a", 90, true), member(2, "vol-a", 100, true), member(3, "vol-b", 50, true)];
        assert_eq!(out_ids(days(7), &members), [id(2)]);
        // A newer source known only from its copy (gone from the source region) does not take
        // the protection away from the newest the request selects.
        let with_gone = [member(1, "vol-a", 90, true), member(4, "vol-a", 10, false)];
        assert_eq!(out_ids(days(7), &with_gone), [id(4)]);
    }

    #[test]
    fn sources_known_from_copies_count_in_their_volume() {
        // Two gone sources newer than the selected one: with retain_count 2 they are the two
        // newest, and the selected one is still kept as the newest the request selects.
        let members = [member(1, "vol-a", 5, true), member(2, "vol-a", 1, false), member(3, "vol-a", 2, false)];
        assert!(out_ids(count(2), &members).is_empty());
        let older = [member(1, "vol-a", 1, true), member(2, "vol-a", 5, false), member(3, "vol-a", 6, false)];
        assert_eq!(out_ids(count(2), &older), [id(3)]);
    }

    #[test]
    fn sources_without_a_volume_or_a_start_time_are_kept() {
        let alone = Member { volume: None, ..member(1, "", 400, true) };
        let unknown_age = Member { start_time: None, ..member(2, "vol-a", 0, true) };
        assert!(out_ids(count(1), &[alone, unknown_age.clone(), member(3, "vol-a", 9, true)]).is_empty());
    }

    #[test]
    fn ties_in_start_time_go_to_the_higher_id() {
        let members = [member(1, "vol-a", 3, true), member(2, "vol-a", 3, true)];
        assert_eq!(out_ids(count(1), &members), [id(1)]);
    }

    #[test]
    fn reasons_name_the_rule_the_age_and_the_rank() {
        let members = [member(1, "vol-a", 0, true), member(2, "vol-a", 12, true)];
        let out =
            out_of_retention(&Retention { days: Some(7), count: Some(1), orphans_after_days: None }, now(), &members);
        assert_eq!(
            out[&id(2)],
            "out of retention (retain_days 7, retain_count 1): started 12 days ago, the 2nd newest snapshot of vol-a"
        );
    }

    #[test]
    fn orphans_are_due_only_with_the_rule_and_after_the_grace() {
        let started = now() - DAY * 10;
        assert_eq!(Retention::default().orphan_due(now(), started), None);
        let rule = Retention { orphans_after_days: Some(10), ..Retention::default() };
        assert_eq!(rule.orphan_due(now(), started), None, "exactly the grace is not more than it");
        let rule = Retention { orphans_after_days: Some(9), ..Retention::default() };
        assert_eq!(
            rule.orphan_due(now(), started).as_deref(),
            Some("started 10 days ago, more than delete_orphans_after_days 9")
        );
    }

    #[test]
    fn ordinals_and_ages_read_well() {
        let ordinals: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111].into_iter().map(ordinal).collect();
        assert_eq!(ordinals, ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]);
        assert_eq!(age_text(Duration::from_secs(3 * 86_400 + 5)), "3 days");
        assert_eq!(age_text(Duration::from_secs(30 * 3_600)), "30 hours");
        assert_eq!(age_text(Duration::from_secs(90)), "1 minute");
    }
}
