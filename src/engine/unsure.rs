//! Unsure starts: looks up, with backoff, the copies of starts that had no definite answer,
//! adopting what it finds and queuing again what stays missing.
//! May change: the entries' stages and the queue (through adoption and `queue_or_fail`), the
//! throttling count.

use tokio::time::Instant;
use tracing::{info, warn};

use crate::contract::error::CopySnapshotsError;
use crate::ids::SnapshotId;
use crate::store::{SnapshotStore, StoreError};

use super::entry::Stage;
use super::fatal::fatal;
use super::limits::UNSURE_LOOKS;
use super::state::Run;

impl<'a, S: SnapshotStore> Run<'a, S> {
    /// Looks up, by their tags, the copies of unsure starts that are due for a look: adopts
    /// those that exist; a source whose copy is still missing after [`UNSURE_LOOKS`] looks,
    /// backed off, is queued again. Never calls CopySnapshot twice on one look.
    pub(super) async fn resolve_unsure(&mut self) -> Result<(), CopySnapshotsError> {
        let now = Instant::now();
        let due: Vec<usize> = (0..self.entries.len())
            .filter(|&i| matches!(self.entries[i].stage, Stage::Unsure { next_look, .. } if next_look <= now))
            .collect();
        if due.is_empty() || !self.may_call() {
            return Ok(());
        }
        let ids: Vec<SnapshotId> = due.iter().map(|&i| self.entries[i].source.id.clone()).collect();
        let attempts_before: Vec<usize> = due.iter().map(|&i| self.entries[i].error_copies.len()).collect();
        let (target, source) = (&self.target.place, &self.request.source_region);
        let found = match self.timeline.call(self.store.find_copies(target, source, &ids)).await {
            Ok(found) => found,
            Err(StoreError::Unknown(message)) => {
                warn!(%message, "could not look for copies of unsure starts; trying again next round");
                return Ok(());
            }
            Err(StoreError::Throttled(message)) => {
                self.throttled_now(&message, "looking for copies of unsure starts");
                return Ok(());
            }
            Err(e) => return Err(fatal(e, "looking for copies of unsure starts", self.copies_started())),
        };
        self.adopt(found, false);
        let now = Instant::now();
        for (i, attempts_before) in due.into_iter().zip(attempts_before) {
            let entry = &mut self.entries[i];
            let Stage::Unsure { misses, next_look } = &mut entry.stage else { continue };
            if entry.error_copies.len() > attempts_before {
                // The unsure start made a copy, and it has already ended in `error`.
                self.queue_or_fail(i);
                continue;
            }
            *misses += 1;
            if *misses >= UNSURE_LOOKS {
                info!(source = %entry.source.id, looks = *misses, "no copy found after an unsure start; queued again");
                self.queue_or_fail(i);
            } else {
                *next_look = now + self.limits.poll_interval * 2u32.pow(*misses);
            }
        }
        Ok(())
    }
}
