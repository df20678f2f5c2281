//! Retention judging, part of the look: which sources are out of retention (left out of the
//! entries, reported as skipped) and which of the request's copies are deletions (the checks
//! that may hold them are in `prune`).
//! May change: the entries (sources out of retention leave), the skipped sources, the
//! deletions, the newest completed copy of each volume.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use tracing::{debug, info, warn};

use crate::contract::retention::{self, Member};
use crate::engine::ownership::Claim;
use crate::engine::progress::{LookedSource, SourceStatus};
use crate::ids::SnapshotId;
use crate::store::{CopyStatus, SnapshotState, SnapshotStore, SourceSelector};

use super::deletion::{Deletion, DeletionOutcome, volume_group};
use super::state::Run;

/// What the look knows of each source: its volume and start time.
type Origins = HashMap<SnapshotId, (Option<String>, Option<SystemTime>)>;

/// What retention is judged from ([`Run::find_out`]).
struct Findings<'c> {
    /// The wall clock when judging.
    now: SystemTime,
    /// The request's copies from the source region, by the one ownership rule.
    ours: Vec<&'c CopyStatus>,
    /// The volumes of the sources the request selects.
    selected_volumes: HashSet<String>,
    /// Each source's volume and start time: from the source when the look found it, else from
    /// its copy's tags.
    origin_of: Origins,
    /// Sources of the request's copies that are gone from the source region.
    gone: HashSet<SnapshotId>,
    /// Gone sources of a selected volume: ranked by the rule with the selected ones.
    gone_members: HashSet<&'c SnapshotId>,
    /// Sources out of retention, with why.
    out: HashMap<SnapshotId, String>,
}

impl<'a, S: SnapshotStore> Run<'a, S> {
    /// Applies the request's retention to the look: a source out of retention leaves the entries
    /// (reported as skipped, never copied), and this request's copies become deletions when
    /// their source is out of retention, or gone from the source region longer than the orphan
    /// grace. Only copies this request would have made (encrypted as it asks) are judged:
    /// another request's copies of the same snapshots follow that request's rule. Copies whose
    /// source still exists but is not selected (another request's) are neither counted nor
    /// touched.
    ///
    /// What protects the recovery copies from an incident in the source region (ransomware,
    /// a mistaken clean-up deleting the sources):
    /// - the newest completed copy of every volume is never deleted ([`held_back`]), except by
    ///   the orphan rule once DescribeVolumes says the volume itself no longer exists;
    /// - the orphan rule never deletes a copy this request's retention keeps, nor any copy of
    ///   a volume that still exists but that the request selects no snapshot of (another
    ///   request's volume, or one whose snapshots were all deleted);
    /// - a look that fails (DescribeSnapshots by id, DescribeVolumes, DescribeImages) leads to
    ///   no deletion: what it would have told stays unknown, and unknown is kept;
    /// - a copy an AMI uses is never deleted;
    /// - the deletion breaker: a run that would delete more than [`BREAKER_MIN_DELETIONS`] and
    ///   more than a quarter of the copies it judges deletes none, unless the request says
    ///   `allow_mass_deletion`.
    ///
    /// [`held_back`]: Self::held_back
    pub(super) async fn judge_retention(&mut self, copies: &[CopyStatus]) {
        let rule = self.target.retention;
        let findings = self.find_out(copies).await;
        // Sources out of retention are not copied.
        self.skip_out_of_retention(&findings.out);
        // The newest completed copy of each volume as the look found it: kept whatever the
        // rules say (see `held_back`).
        self.note_newest_completed(&findings);
        // Their copies, and the copies of gone sources out of retention or past the grace, go.
        // Orphans of a volume the request does not select wait for DescribeVolumes.
        let orphans_of_other_volumes = self.judge_copies(&findings);
        self.judge_orphans_of_other_volumes(orphans_of_other_volumes, &findings.origin_of).await;
        self.keep_newest_without_successor();
        self.check_images().await;
        self.check_breaker(findings.ours.len());
        if !self.deletions.is_empty() || !findings.out.is_empty() {
            info!(
                out_of_retention = findings.out.len(),
                gone = findings.gone.len(),
                deletions = self.deletions.len(),
                rule = %rule.describe(),
                breaker = self.breaker.is_some(),
                "retention judged"
            );
        }
    }

    /// What retention is judged from: the request's copies, what is known of their sources
    /// (which are gone from the source region), and which sources are out of retention.
    async fn find_out<'c>(&self, copies: &'c [CopyStatus]) -> Findings<'c> {
        let rule = self.target.retention;
        let now = self.store.wall_clock();
        // The request's copies by the one ownership rule: a copy made for another ask, or under
        // another key than this request's, is never judged (nor deleted) by it.
        let ours: Vec<&CopyStatus> = copies.iter().filter(|c| self.asked.claim(c) == Claim::Ours).collect();
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
        // What the look knows of each source: its volume and start time (from the source
        // itself when the look found it, else from its copy's tags).
        let mut origin_of: Origins = self
            .entries
            .iter()
            .map(|e| (e.source.id.clone(), (e.source.volume_id.clone(), e.source.start_time)))
            .collect();
        for copy in &ours {
            origin_of
                .entry(copy.source_id.clone())
                .or_insert_with(|| (copy.source_volume_id.clone(), copy.source_start_time));
        }
        let gone = self.gone_sources(&ours, &selected_volumes).await;
        let mut gone_members: HashSet<&SnapshotId> = HashSet::new();
        for &copy in &ours {
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
        Findings { now, ours, selected_volumes, origin_of, gone, gone_members, out }
    }

    /// Which sources of the request's copies are gone from the source region, of those the look
    /// did not resolve (and that the rule could judge). Unknown when the look by id fails: then
    /// none is taken for gone.
    async fn gone_sources(&self, ours: &[&CopyStatus], selected_volumes: &HashSet<String>) -> HashSet<SnapshotId> {
        let rule = self.target.retention;
        let region = &self.request.source_region;
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
        if unresolved.is_empty() {
            return HashSet::new();
        }
        let by_id = SourceSelector::Ids(unresolved.clone());
        match self.timeline.call_retrying(|| self.store.describe_sources(region, &by_id)).await {
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
    }

    /// Takes the sources out of retention out of the entries: reported as skipped, not copied.
    fn skip_out_of_retention(&mut self, out: &HashMap<SnapshotId, String>) {
        let mut kept = Vec::with_capacity(self.entries.len());
        for entry in std::mem::take(&mut self.entries) {
            match out.get(&entry.source.id) {
                Some(reason) => {
                    debug!(source = %entry.source.id, %reason, "skipping a source out of retention");
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
    }

    /// Notes the newest completed copy of each volume group among the request's copies.
    fn note_newest_completed(&mut self, findings: &Findings<'_>) {
        for copy in findings.ours.iter().filter(|c| c.state == SnapshotState::Completed) {
            let (volume, source_start) = findings.origin_of.get(&copy.source_id).cloned().unwrap_or_default();
            let group = volume_group(volume.as_deref(), &copy.source_id);
            let rank = (source_start.or(copy.start_time), copy.id.clone());
            match self.newest_completed.get(&group) {
                Some(newest) if *newest >= rank => {}
                _ => {
                    self.newest_completed.insert(group, rank);
                }
            }
        }
    }

    /// Makes deletions of the request's copies whose source is out of retention, or gone past
    /// the orphan grace; returns the orphans of volumes the request does not select (copy,
    /// volume, why), which wait for DescribeVolumes.
    fn judge_copies<'c>(&mut self, findings: &Findings<'c>) -> Vec<(&'c CopyStatus, String, String)> {
        let rule = self.target.retention;
        let region = &self.request.source_region;
        let Findings { now, ours, selected_volumes, origin_of, gone, gone_members, out } = findings;
        let mut orphans_of_other_volumes: Vec<(&CopyStatus, String, String)> = Vec::new();
        for &copy in ours {
            let (volume, _) = origin_of.get(&copy.source_id).cloned().unwrap_or_default();
            let reason = if let Some(out_reason) = out.get(&copy.source_id) {
                if gone.contains(&copy.source_id) {
                    format!("its source is gone from {region} and {out_reason}")
                } else {
                    format!("its source is {out_reason}")
                }
            } else if gone.contains(&copy.source_id) {
                if rule.limits_sources() && gone_members.contains(&copy.source_id) {
                    // In this request's retention: the orphan rule does not override it.
                    continue;
                }
                let started = copy.source_start_time.or(copy.start_time);
                let Some(why) = started.and_then(|started| rule.orphan_due(*now, started)) else { continue };
                match volume.as_deref() {
                    Some(v) if selected_volumes.contains(v) => format!("its source is gone from {region} and {why}"),
                    Some(v) => {
                        orphans_of_other_volumes.push((copy, v.to_owned(), why));
                        continue;
                    }
                    None => {
                        debug!(copy = %copy.id, "an orphan whose volume is unknown is kept: nothing can show its volume is gone");
                        continue;
                    }
                }
            } else {
                continue;
            };
            self.push_deletion(copy, reason, origin_of, false);
        }
        orphans_of_other_volumes
    }

    /// Orphans of volumes the request does not select: deleted only once DescribeVolumes says
    /// their volume is gone too; without an answer, kept.
    async fn judge_orphans_of_other_volumes(
        &mut self,
        orphans: Vec<(&CopyStatus, String, String)>,
        origin_of: &Origins,
    ) {
        if orphans.is_empty() {
            return;
        }
        let request = self.request;
        let region = &request.source_region;
        let mut volumes: Vec<String> = orphans.iter().map(|(_, v, _)| v.clone()).collect();
        volumes.sort();
        volumes.dedup();
        let existing = self.timeline.call_retrying(|| self.store.existing_volumes(region, &volumes)).await;
        match existing {
            Ok(existing) => {
                for (copy, volume, why) in orphans {
                    if existing.contains(&volume) {
                        debug!(copy = %copy.id, %volume, "an orphan of a volume that still exists is kept");
                        continue;
                    }
                    let reason = format!("its source and its volume {volume} are gone from {region}, and {why}");
                    self.push_deletion(copy, reason, origin_of, true);
                }
            }
            Err(error) => {
                warn!(%error, "could not tell whether the volumes of gone sources still exist; their copies are kept");
            }
        }
    }

    /// A volume's newest completed copy that no newer source of the volume in retention will
    /// replace is simply kept: not a deletion waiting for anything (which would leave the run
    /// incomplete forever). The orphan rule's deletions of a gone volume stay.
    pub(super) fn keep_newest_without_successor(&mut self) {
        let newest = &self.newest_completed;
        let entries = &self.entries;
        self.deletions.retain(|d| {
            let Some((start, copy)) = newest.get(&d.group) else { return true };
            if d.volume_gone || *copy != d.copy {
                return true;
            }
            let successor = entries.iter().any(|e| {
                volume_group(e.source.volume_id.as_deref(), &e.source.id) == d.group
                    && e.source.id != d.source
                    && e.source.start_time > *start
            });
            if !successor {
                debug!(copy = %d.copy, group = %d.group, "kept: the newest completed copy of its volume");
            }
            successor
        });
    }

    /// Queues `copy` for deletion, unless it is in a state that is never deleted.
    pub(super) fn push_deletion(&mut self, copy: &CopyStatus, reason: String, origin_of: &Origins, volume_gone: bool) {
        if !matches!(copy.state, SnapshotState::Completed | SnapshotState::Error | SnapshotState::Pending) {
            debug!(copy = %copy.id, state = copy.state.as_str(), "a copy in this state is not deleted");
            return;
        }
        let (volume, _) = origin_of.get(&copy.source_id).cloned().unwrap_or_default();
        self.deletions.push(Deletion {
            copy: copy.id.clone(),
            source: copy.source_id.clone(),
            size_gib: copy.size_gib,
            state: copy.state.clone(),
            reason,
            group: volume_group(volume.as_deref(), &copy.source_id),
            volume_gone,
            outcome: DeletionOutcome::Due,
        });
    }
}
