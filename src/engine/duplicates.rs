//! Duplicate healing: deletes the second completed copies adoption found.
//! May change: the duplicates to remove and those removed.

use tracing::{info, warn};

use crate::contract::response::RemovedCopy;
use crate::engine::progress::RunEvent;
use crate::store::{DeleteOutcome, SnapshotStore};

use super::state::Run;

impl<'a, S: SnapshotStore> Run<'a, S> {
    /// Deletes the second live copies [`adopt`](Self::adopt) found. A failure only leaves the
    /// duplicate for a later invocation; it never fails this one.
    pub(super) async fn remove_duplicates(&mut self) {
        for (i, copy_id) in std::mem::take(&mut self.duplicates) {
            let source = &self.entries[i].source.id;
            if !self.may_call() {
                warn!(%source, copy = %copy_id, "no time left to remove a duplicate copy; a later invocation will");
                continue;
            }
            match self.timeline.call(self.store.delete_copy(&self.target.place, &copy_id)).await {
                Ok(DeleteOutcome::AlreadyGone) => {
                    info!(%source, copy = %copy_id, "the duplicate copy was already gone");
                }
                Ok(DeleteOutcome::Deleted) => {
                    self.observer.observe(RunEvent::DuplicateRemoved { source: source.clone(), copy: copy_id.clone() });
                    self.duplicates_removed
                        .push(RemovedCopy { source_snapshot_id: source.to_string(), snapshot_id: copy_id.to_string() });
                }
                Err(error) => {
                    warn!(%source, copy = %copy_id, %error, "could not remove a duplicate copy; a later invocation will try again")
                }
            }
        }
    }
}
