//! The engine: converges the target region towards "every source has a copy" and reports where
//! things stand. Look (sources, and copies an earlier invocation made, found by their tags),
//! start (largest first, within `pending_limit`), wait (one poll per round, as long as progress
//! says is useful, never past the deadline), report. Generic over [`SnapshotStore`]; knows no
//! SDK. Driven by tokio's clock, so tests run it on paused time. What it does as it goes is
//! told to an [`Observer`]; [`plan()`] is the look alone, answered as a [`Plan`].
//!
//! With a retention ([`crate::contract::retention`]) the look also judges every copy this request made
//! from the source region: sources out of retention are skipped, not copied, and their copies
//! (and, opted in, copies whose source is gone past a grace) are deleted in the time the run
//! would otherwise spend waiting, never past the deadline. A dry run is the look alone.
//!
//! The engine is a folder of steps over one state (`state`): `look` (with `judge` for
//! retention and `adopt` for the copies found), then rounds of `unsure`, `duplicates`,
//! `start` (with `ledger`), `prune` and `poll`, and `finish`, the answer.
//! [`reconcile_observed`] is the loop that calls them.

pub mod ownership;
pub mod plan;
pub mod poll_timing;
pub mod progress;
pub mod slots;
pub mod timeline;

mod adopt;
mod deletion;
mod duplicates;
mod fatal;
mod finish;
mod judge;
mod ledger;
mod limits;
mod look;
mod poll;
mod prune;
mod start;
mod state;
mod unsure;

use std::time::Duration;

use tokio::time::Instant;

use crate::contract::error::CopySnapshotsError;
use crate::contract::request::CopyRequest;
use crate::contract::response::Response;
use crate::engine::plan::Plan;
use crate::engine::progress::{LogObserver, Observer, RunEvent, StopSignal};
use crate::engine::timeline::{Timeline, jittered};
use crate::store::SnapshotStore;
use crate::store::copy_time::CopyTimeModel;

use state::Run;

pub use limits::{BREAKER_MIN_DELETIONS, BREAKER_SHARE_DENOMINATOR, MAX_ATTEMPTS, RunLimits, UNSURE_LOOKS};

/// Runs one invocation of `request` against `store`, logging what it does.
pub async fn reconcile<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    limits: RunLimits,
) -> Result<Response, CopySnapshotsError> {
    reconcile_observed(store, request, limits, &LogObserver, StopSignal::never()).await
}

/// Runs one invocation, telling `observer` what it does; once `stop` is set it makes no new
/// call and answers with what it got to (copies already started go on in EC2).
pub async fn reconcile_observed<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    limits: RunLimits,
    observer: &dyn Observer,
    stop: StopSignal,
) -> Result<Response, CopySnapshotsError> {
    if request.dry_run {
        let plan = plan_observed(store, request, CopyTimeModel::DEFAULT, observer).await?;
        return Ok(plan.dry_run_response(request.wait_for_completion));
    }
    let started = Instant::now();
    let timeline = Timeline::new(started, limits.deadline, limits.call_timeout);
    let target = request.target();
    let mut run = Run::look(store, request, &target, limits, timeline, observer, stop.clone()).await?;
    let mut stop = stop;
    // Starting copies may go on until the margin before the deadline; waiting also ends at
    // `max_wait_seconds`.
    let work_until = timeline.work_until();
    let wait_until = [work_until, request.max_wait.map(|max| started + max)].into_iter().flatten().min();
    loop {
        if stop.is_set() {
            break;
        }
        run.resolve_unsure().await?;
        // Second live copies found by the look, or by a look for an unsure start.
        run.remove_duplicates().await;
        run.start_what_fits(work_until).await?;
        if !run.work_left() {
            break;
        }
        let now = Instant::now();
        if wait_until.is_some_and(|until| now >= until) {
            break;
        }
        let mut wait = run.next_wait(now);
        if run.held_until_next_poll() {
            // Invocations throttled or refused a slot together come back apart, not in step.
            wait = jittered(wait);
        }
        let wake = now + wait;
        let wake = wait_until.map_or(wake, |until| wake.min(until));
        // Retention's deletions fill the wait for the next poll.
        run.prune(Some(wake)).await;
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = stop.wait() => {}
        }
        if stop.is_set() || !run.may_call() {
            break;
        }
        run.poll().await?;
    }
    // Copies the last poll saw finish, before the answer.
    run.release_slots().await;
    if stop.is_set() {
        observer.observe(RunEvent::Stopped);
    } else {
        // What is left of the deletions, while the work may go on; the next run continues.
        run.prune(work_until).await;
    }
    run.finish()
}

/// What `request` would do now, without copying or deleting anything: the look alone (one
/// DescribeSnapshots of the sources, one for their copies, and with a retention one by id for
/// sources its copies name that the first did not find), with the start order the engine would
/// use and the time it would take under `model`. A `dry_run` request is answered from it.
pub async fn plan<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    model: CopyTimeModel,
) -> Result<Plan, CopySnapshotsError> {
    plan_observed(store, request, model, &LogObserver).await
}

/// [`plan()`], telling `observer` what the look found. With a retention, the plan also lists the
/// copies a run would delete (`delete`) and those it would delete later (`delete_later`).
pub async fn plan_observed<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    model: CopyTimeModel,
    observer: &dyn Observer,
) -> Result<Plan, CopySnapshotsError> {
    let call_timeout = crate::contract::request::DEFAULT_CALL_TIMEOUT;
    let limits =
        RunLimits { deadline: None, poll_interval: Duration::ZERO, max_poll_interval: Duration::ZERO, call_timeout };
    let target = request.target();
    let timeline = Timeline::unbounded(call_timeout);
    let run = Run::look(store, request, &target, limits, timeline, observer, StopSignal::never()).await?;
    let start_order = run.start_order();
    Ok(Plan::new(
        request.source_region.to_string(),
        target.region.to_string(),
        target.pending_limit,
        &run.looked_sources(),
        &start_order,
        model,
    )
    .with_deletions(&run.planned_deletions())
    .with_breaker(run.breaker.clone()))
}
