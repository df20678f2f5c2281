//! Starting: pops the queue largest first while this deployment has free slots (counted from
//! EC2, or reserved in the slot ledger, see [`super::ledger`]) and the region has room, and
//! records each start's outcome. May change: the queue, the entries' stages, the slot
//! bookkeeping, through the state's methods (`track_started`, `counted_deployment`,
//! `no_slot_until_next_poll`).

use std::collections::{BTreeMap, HashSet};

use tokio::time::Instant;
use tracing::{debug, warn};

use crate::contract::error::CopySnapshotsError;
use crate::contract::request::CopyRequest;
use crate::contract::targets::Target;
use crate::engine::ownership::AskedEncryption;
use crate::engine::progress::RunEvent;
use crate::ids::SnapshotId;
use crate::store::{
    CopySpec, ENCRYPTION_TAG, RESERVED_TAG_PREFIX, SOURCE_REGION_TAG, SOURCE_SNAPSHOT_TAG, SOURCE_START_TIME_TAG,
    SOURCE_VOLUME_TAG, SnapshotState, SnapshotStore, SourceSnapshot, StoreError, Tag, format_start_time,
};

use super::entry::Stage;
use super::fatal::fatal;
use super::sharing::Sharing;
use super::state::{Run, Started};

/// EC2's tag limit per snapshot.
pub(super) const MAX_TAGS_PER_SNAPSHOT: usize = 50;

impl<'a, S: SnapshotStore> Run<'a, S> {
    /// Starts copies, largest first, while this deployment has fewer than `pending_limit` copies
    /// pending in the target region, whichever invocation started them, and the region has
    /// room. With a slot ledger the slots are reserved in it first (atomic across invocations)
    /// and only the sources granted start; without one, the deployment's pending copies are
    /// counted just before (one DescribeSnapshots, which two invocations can pass together).
    /// A refusal that concerns one source fails that source; EC2 throttling requeues it and
    /// backs off; neither stops the run.
    pub(super) async fn start_what_fits(&mut self, work_until: Option<Instant>) -> Result<(), CopySnapshotsError> {
        self.start_round(work_until).await?;
        // Finished copies a round without a reservation did not release.
        self.release_slots().await;
        Ok(())
    }

    /// [`start_what_fits`](Self::start_what_fits) but the releases left over.
    pub(super) async fn start_round(&mut self, work_until: Option<Instant>) -> Result<(), CopySnapshotsError> {
        let limit = self.target.pending_limit;
        let slots_held = self.slots_held();
        if self.waiting_count() == 0
            || slots_held >= limit
            || self.held_until_next_poll()
            || !self.may_start(work_until)
        {
            return Ok(());
        }
        let store = self.store;
        if let Some(ledger) = store.slot_ledger() {
            return self.start_reserved(ledger, limit - slots_held, work_until).await;
        }
        let Some(mut free) = self.free_deployment_slots().await? else { return Ok(()) };
        if free == 0 {
            // Other invocations' copies fill this deployment's share: a full region as far as
            // this run is concerned, so the next look comes after a backoff with jitter, not
            // after the longest poll interval.
            self.no_slot_until_next_poll();
            return Ok(());
        }
        while free > 0 && !self.held_until_next_poll() && self.may_start(work_until) {
            let Some(i) = self.next_to_start() else { break };
            match self.start_one(i).await {
                Started::Copy(_) | Started::Unsure => free = free.saturating_sub(1),
                Started::No => {}
            }
        }
        Ok(())
    }

    /// Starts the copy of entry `i` (popped from the queue) and records the outcome.
    pub(super) async fn start_one(&mut self, i: usize) -> Started {
        // Into another account: the source is shared with it first.
        match self.share_for_copy(i).await {
            None | Some(Sharing::Shared) => {}
            Some(Sharing::Impossible(reason)) => {
                self.fail(i, reason);
                return Started::No;
            }
            Some(Sharing::Later(error)) => {
                self.requeue(&[i]);
                self.throttled_now(&error.to_string(), "sharing a source with the target account");
                return Started::No;
            }
        }
        let spec = match copy_spec(&self.entries[i].source, self.request, self.target, &self.asked) {
            Ok(spec) => spec,
            Err(reason) => {
                self.fail(i, reason);
                return Started::No;
            }
        };
        let result = self.timeline.call(self.store.start_copy(&spec)).await;
        let source = &self.entries[i].source;
        let slots_held = self.slots_held();
        let outcome = match result {
            Ok(copy_id) => {
                let (source, copy, size_gib) = (source.id.clone(), copy_id.clone(), source.size_gib);
                self.observer.observe(RunEvent::CopyStarted { source, copy, size_gib });
                self.track_started(i, copy_id.clone());
                Started::Copy(copy_id)
            }
            Err(StoreError::NoSlot(message)) => {
                debug!(%message, "region's copy quota is full; waiting for a slot");
                self.requeue(&[i]);
                self.no_slot_until_next_poll();
                Started::No
            }
            Err(StoreError::Throttled(message)) => {
                self.requeue(&[i]);
                self.throttled_now(&message, "starting a copy");
                Started::No
            }
            Err(StoreError::Unknown(message)) => {
                self.observer.observe(RunEvent::StartUnsure { source: source.id.clone(), message });
                self.count_own_start();
                self.mark_unsure(i, Instant::now());
                Started::Unsure
            }
            Err(StoreError::Refused { code, message }) => {
                self.fail(i, format!("EC2 refused the copy: {code}: {message}"));
                Started::No
            }
            Err(StoreError::NotFound(message) | StoreError::NotReady(message)) => {
                self.fail(i, format!("EC2 refused the copy: {message}"));
                Started::No
            }
            Err(StoreError::AccessDenied(message)) => {
                // One snapshot an SCP denies, one key disabled: that source fails, the
                // others go on. A role that may copy nothing fails every source this way,
                // each named in CopyFailed.
                self.fail(i, format!("access denied starting the copy: {message}"));
                Started::No
            }
        };
        let holds = matches!(outcome, Started::Copy(_) | Started::Unsure);
        debug_assert_eq!(slots_held + usize::from(holds), self.slots_held(), "slot count drifted");
        outcome
    }

    /// How many more copies this deployment may have pending in the target region: the request's
    /// `pending_limit` less this deployment's pending copies, as one DescribeSnapshots counts
    /// them now (with this run's own starts not listed yet). `None`: unknown this round
    /// (throttled, no answer); nothing starts until the next.
    pub(super) async fn free_deployment_slots(&mut self) -> Result<Option<usize>, CopySnapshotsError> {
        let target = &self.target.place;
        let listed = match self.timeline.call(self.store.list_pending_copies(target)).await {
            Ok(listed) => listed,
            Err(StoreError::Throttled(message)) => {
                self.throttled_now(&message, "counting this deployment's pending copies");
                return Ok(None);
            }
            Err(StoreError::Unknown(message)) => {
                warn!(%message, "could not count this deployment's pending copies; starting none this round");
                return Ok(None);
            }
            Err(e) => return Err(fatal(e, "counting this deployment's pending copies", self.copies_started())),
        };
        let listed: HashSet<SnapshotId> = listed.into_iter().map(|c| c.id).collect();
        let own_unlisted = self
            .entries
            .iter()
            .filter(|e| match &e.stage {
                Stage::Copying { copy, .. } => copy.state == SnapshotState::Pending && !listed.contains(&copy.id),
                Stage::Unsure { .. } => true,
                _ => false,
            })
            .count();
        let own_listed = self.pending_copies().filter(|c| listed.contains(&c.id)).count();
        let pending = listed.len() + own_unlisted;
        self.counted_deployment(pending, listed.len() - own_listed);
        let free = self.target.pending_limit.saturating_sub(pending);
        if free == 0 {
            debug!(pending, limit = self.target.pending_limit, "this deployment's copies fill pending_limit");
        }
        Ok(Some(free))
    }
}

/// The CopySnapshot call for one source: description, encryption, and the tags, tracking tags
/// last so nothing overrides them.
pub(super) fn copy_spec(
    source: &SourceSnapshot,
    request: &CopyRequest,
    target: &Target,
    asked: &AskedEncryption,
) -> Result<CopySpec, String> {
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
    let start_time = source.start_time.map(format_start_time);
    let before = tags.len();
    tags.insert(SOURCE_SNAPSHOT_TAG, source.id.as_str());
    tags.insert(SOURCE_REGION_TAG, request.source_region.as_str());
    tags.insert(ENCRYPTION_TAG, asked.tag_value());
    // What retention needs to judge the copy even once its source is gone.
    if let Some(volume) = &source.volume_id {
        tags.insert(SOURCE_VOLUME_TAG, volume);
    }
    if let Some(start_time) = &start_time {
        tags.insert(SOURCE_START_TIME_TAG, start_time);
    }
    // A copy in another account carries its source account too (the store adds it).
    let total = tags.len() + usize::from(target.place.role.is_some());
    if total > MAX_TAGS_PER_SNAPSHOT {
        return Err(format!(
            "the copy would carry {total} tags (the source's, `tags` and {} of this function's); EC2 allows {MAX_TAGS_PER_SNAPSHOT}",
            total - before
        ));
    }
    Ok(CopySpec {
        source_id: source.id.clone(),
        source_region: request.source_region.clone(),
        target: target.place.clone(),
        description: format!("Copy of {} from {}", source.id, request.source_region),
        encrypted: target.encrypt,
        // The key's ARN, as resolved: the key verified is the key EC2 is asked for, even if
        // the alias is moved meanwhile.
        kms_key_id: asked.key_arn().map(str::to_owned),
        tags: tags.into_iter().map(|(k, v)| Tag::new(k, v)).collect(),
        completion_duration_minutes: request.completion_duration_minutes,
    })
}
