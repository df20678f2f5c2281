//! The engine: converges the target region towards "every source has a copy" and reports where
//! things stand. Look (sources, and copies an earlier invocation made, found by their tags),
//! start (largest first, within `pending_limit`), wait (one poll per round, as long as progress
//! says is useful, never past the deadline), report. Generic over [`SnapshotStore`]; knows no
//! SDK. Driven by tokio's clock, so tests run it on paused time. What it does as it goes is
//! told to an [`Observer`]; [`plan`] is the look alone, answered as a [`Plan`].
//!
//! With a retention ([`crate::retention`]) the look also judges every copy this request made
//! from the source region: sources out of retention are skipped, not copied, and their copies
//! (and, opted in, copies whose source is gone past a grace) are deleted in the time the run
//! would otherwise spend waiting, never past the deadline. A dry run is the look alone.
//!
//! The engine is a folder of steps over one state (`state`): `look` (with `judge` for
//! retention and `adopt` for the copies found), then rounds of `unsure`, `duplicates`,
//! `start` (with `ledger`), `prune` and `poll`, and `finish`, the answer.
//! [`reconcile_observed`] is the loop that calls them.

mod adopt;
mod duplicates;
mod finish;
mod judge;
mod ledger;
mod look;
mod poll;
mod prune;
mod start;
mod state;
mod unsure;

use std::cmp::Reverse;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::CopySnapshotsError;
use crate::plan::{CopyTimeModel, Plan};
use crate::progress::{LogObserver, Observer, RunEvent, StopSignal};
use crate::request::CopyRequest;
use crate::response::{Response, plural};
use crate::store::{SnapshotStore, StoreError};
use crate::timeline::{Timeline, jittered};

use state::Run;

/// The deletion breaker holds a run that would delete more than this many copies …
pub const BREAKER_MIN_DELETIONS: usize = 20;

/// … and more than 1/this of the copies it manages.
pub const BREAKER_SHARE_DENOMINATOR: usize = 4;

/// The most copies of one source that may end in `error` before the source is failed. Counted
/// from EC2 (the error copies stay), so the bound holds across invocations: a cause that
/// persists (a key policy, a deleted key) costs three copies, not one per round forever.
pub const MAX_ATTEMPTS: usize = 3;

/// How often an unsure start is looked up (backing off from the poll interval: 1, 2, 4, 8
/// intervals, 225 s at the default 15 s) before the source is started again. AWS advises
/// backing off for up to minutes before trusting a DescribeSnapshots that lacks a new copy.
pub const UNSURE_LOOKS: u32 = 4;

/// Time limits of one invocation.
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    /// The invocation's deadline (Lambda's `Context::deadline`); `None` runs until done.
    pub deadline: Option<Instant>,
    /// The shortest wait between two polls (`POLL_INTERVAL_SECONDS`).
    pub poll_interval: Duration,
    /// The longest wait between two polls (`MAX_POLL_INTERVAL_SECONDS`).
    pub max_poll_interval: Duration,
    /// The longest one store call may take (the SDK's operation timeout): after the look, no
    /// call starts unless it fits before the deadline.
    pub call_timeout: Duration,
}

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
        return Ok(Response::dry_run(&plan, request.wait_for_completion));
    }
    let started = Instant::now();
    let timeline = Timeline::new(started, limits.deadline, limits.call_timeout);
    let mut run = Run::look(store, request, limits, timeline, observer, stop.clone()).await?;
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
        if run.backing_off() {
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

/// [`plan`], telling `observer` what the look found. With a retention, the plan also lists the
/// copies a run would delete (`delete`) and those it would delete later (`delete_later`).
pub async fn plan_observed<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    model: CopyTimeModel,
    observer: &dyn Observer,
) -> Result<Plan, CopySnapshotsError> {
    let call_timeout = crate::request::DEFAULT_CALL_TIMEOUT;
    let limits =
        RunLimits { deadline: None, poll_interval: Duration::ZERO, max_poll_interval: Duration::ZERO, call_timeout };
    let run =
        Run::look(store, request, limits, Timeline::unbounded(call_timeout), observer, StopSignal::never()).await?;
    let mut queue = run.queue.clone();
    let mut start_order = Vec::with_capacity(queue.len());
    while let Some((_, Reverse(i))) = queue.pop() {
        start_order.push(i);
    }
    Ok(Plan::new(
        request.source_region.to_string(),
        request.target_region.to_string(),
        request.pending_limit,
        &run.looked_sources(),
        &start_order,
        model,
    )
    .with_deletions(&run.planned_deletions())
    .with_breaker(run.breaker.clone()))
}

/// Maps a store error that ends the invocation to its errorType, saying how far it got.
fn fatal(error: StoreError, doing: &str, copies_started: usize) -> CopySnapshotsError {
    let so_far = match copies_started {
        0 => "no copy was started".to_owned(),
        n => format!("{} started before this; calling again with the same request continues", plural(n, "copy")),
    };
    match error {
        StoreError::AccessDenied(message) => {
            CopySnapshotsError::AccessDenied(format!("access denied {doing}: {message}; {so_far}"))
        }
        StoreError::Throttled(message) => {
            CopySnapshotsError::Throttled(format!("EC2 throttled {doing} beyond retries: {message}; {so_far}"))
        }
        StoreError::NotFound(message) => CopySnapshotsError::SourceNotFound(format!("{doing}: {message}; {so_far}")),
        StoreError::NotReady(message) => CopySnapshotsError::SourceNotReady(format!("{doing}: {message}; {so_far}")),
        other => CopySnapshotsError::Ec2Error(format!("EC2 failed {doing}: {other}; {so_far}")),
    }
}
