//! A request's targets run side by side in one invocation: each round every target resolves
//! its unsure starts, heals its duplicates and starts what fits its own `pending_limit`, the
//! targets' calls in flight together; each keeps its own next poll, so the invocation wakes for
//! the soonest and polls only the targets that are due. A full, throttled or slow target holds
//! back no other, and one whose calls fail for good (access denied, an opt-in region) leaves
//! the rounds with its error while the others go on. Every step of a target runs in its span,
//! which names the target when there are several.
//! May change: each target's run, through its steps; its next poll; its error.

use futures::future::join_all;
use tokio::time::Instant;
use tracing::{Instrument, warn};

use crate::contract::error::CopySnapshotsError;
use crate::engine::timeline::jittered;
use crate::store::SnapshotStore;

use super::finish::TargetAnswer;
use super::state::Run;

/// One target's run, when it polls next, and the error that ended it.
struct Side<'a, S> {
    run: Run<'a, S>,
    /// Kept across rounds in which another target's poll came first.
    next_poll: Option<Instant>,
    ended: Option<CopySnapshotsError>,
}

/// The runs of a request's targets.
pub(super) struct SideBySide<'a, S> {
    sides: Vec<Side<'a, S>>,
}

impl<'a, S: SnapshotStore> SideBySide<'a, S> {
    /// The targets as their looks left them. One target's failed look is the invocation's
    /// error, as it always was; with several, that target's.
    pub(super) fn new(looked: Vec<(Run<'a, S>, Result<(), CopySnapshotsError>)>) -> Result<Self, CopySnapshotsError> {
        let several = looked.len() > 1;
        let mut sides = Vec::with_capacity(looked.len());
        for (run, outcome) in looked {
            let ended = match outcome {
                Ok(()) => None,
                Err(error) if several => Some(ended_with(&run, error)),
                Err(error) => return Err(error),
            };
            sides.push(Side { run, next_poll: None, ended });
        }
        Ok(Self { sides })
    }

    /// One round's work in every target, together: unsure starts looked up, duplicates
    /// healed, and the copies that fit started.
    pub(super) async fn work(&mut self, work_until: Option<Instant>) -> Result<(), CopySnapshotsError> {
        self.each(None, async |run: &mut Run<'a, S>| {
            let before = (run.copies_started(), run.held_until_next_poll(), run.slots_held(), run.next_unsure_look());
            run.resolve_unsure().await?;
            // Second live copies found by the look, or by a look for an unsure start.
            run.remove_duplicates().await;
            run.start_what_fits(work_until).await?;
            // A target that started copies, or was refused a slot, in a round another
            // target's poll began: its next poll is worked out afresh.
            Ok(before != (run.copies_started(), run.held_until_next_poll(), run.slots_held(), run.next_unsure_look()))
        })
        .await
        .map(|changed| {
            for (side, changed) in self.sides.iter_mut().zip(changed) {
                if changed {
                    side.next_poll = None;
                }
            }
        })
    }

    /// Whether any target still has something to start, resolve or wait for.
    pub(super) fn work_left(&self) -> bool {
        self.sides.iter().any(|side| side.ended.is_none() && side.run.work_left())
    }

    /// When the soonest target's next poll is due; a target without one gets it now from its
    /// copies' progress (a backoff, with jitter, when it is held until its next poll).
    pub(super) fn next_poll(&mut self, now: Instant) -> Option<Instant> {
        for side in &mut self.sides {
            if side.ended.is_some() || !side.run.work_left() {
                side.next_poll = None;
            } else if side.next_poll.is_none() {
                let mut wait = side.run.next_wait(now);
                if side.run.held_until_next_poll() {
                    // Invocations throttled or refused a slot together come back apart, not in step.
                    wait = jittered(wait);
                }
                side.next_poll = Some(now + wait);
            }
        }
        self.sides.iter().filter_map(|side| side.next_poll).min()
    }

    /// Polls the targets whose poll is due at `now`, together; with `every`, each target that
    /// has a next poll at all (the invocation's last wake: what it answers is seen now).
    pub(super) async fn poll_due(&mut self, now: Instant, every: bool) -> Result<(), CopySnapshotsError> {
        let due: Vec<bool> =
            self.sides.iter().map(|side| side.next_poll.is_some_and(|due| every || due <= now)).collect();
        for (side, due) in self.sides.iter_mut().zip(&due) {
            if *due {
                side.next_poll = None;
            }
        }
        self.each(Some(&due), async |run: &mut Run<'a, S>| run.poll().await).await.map(drop)
    }

    /// Retention's deletions of every target, together, until `until`: one target's backlog
    /// of deletions does not hold back another's.
    pub(super) async fn prune(&mut self, until: Option<Instant>) {
        let _ = self
            .each(None, async |run: &mut Run<'a, S>| {
                run.prune(until).await;
                Ok(())
            })
            .await;
    }

    /// Gives back the slots of copies the last polls saw finish, in every target (also one that
    /// ended: its copies finished all the same).
    pub(super) async fn release_slots(&mut self) {
        let runs = self.sides.iter_mut().map(|side| {
            let span = side.run.span.clone();
            side.run.release_slots().instrument(span)
        });
        join_all(runs).await;
    }

    /// Each target's answer, in the order of the request's targets.
    pub(super) fn answers(self) -> Vec<TargetAnswer> {
        self.sides.into_iter().map(|side| side.run.answer(side.ended)).collect()
    }

    /// Runs `step` in every target still going (of those `only` picks, when given), together,
    /// each in its span. A target whose step fails ends with the error (one target: the error
    /// is the invocation's, as it always was); the outcomes come back in target order
    /// (`T::default()` for a target not run).
    async fn each<T: Default>(
        &mut self,
        only: Option<&[bool]>,
        step: impl AsyncFn(&mut Run<'a, S>) -> Result<T, CopySnapshotsError>,
    ) -> Result<Vec<T>, CopySnapshotsError> {
        let several = self.sides.len() > 1;
        let step = &step;
        let steps = self.sides.iter_mut().enumerate().map(|(i, side)| {
            let span = side.run.span.clone();
            let going = side.ended.is_none() && only.is_none_or(|only| only.get(i).copied().unwrap_or(false));
            let future = going.then(|| step(&mut side.run).instrument(span));
            async move {
                match future {
                    Some(future) => future.await.map(Some),
                    None => Ok(None),
                }
            }
        });
        let outcomes = join_all(steps).await;
        let mut results = Vec::with_capacity(outcomes.len());
        for (side, outcome) in self.sides.iter_mut().zip(outcomes) {
            match outcome {
                Ok(value) => results.push(value.unwrap_or_default()),
                Err(error) if several => {
                    side.ended = Some(ended_with(&side.run, error));
                    side.next_poll = None;
                    results.push(T::default());
                }
                Err(error) => return Err(error),
            }
        }
        Ok(results)
    }
}

/// Logs a target's end: the other targets go on.
fn ended_with<S>(run: &Run<'_, S>, error: CopySnapshotsError) -> CopySnapshotsError {
    warn!(
        target = %run.target.place,
        error_type = error.error_type(),
        error_message = %error,
        "this target stops for this invocation; the others go on"
    );
    error
}
