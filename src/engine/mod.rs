//! The engine: converges each target region towards "every source has a copy" and reports
//! where things stand. Look (sources, and copies an earlier invocation made, found by their tags),
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
//! The engine is a folder of steps over one target's state (`state`): `look` (with `judge` for
//! retention and `adopt` for the copies found), then rounds of `unsure`, `duplicates`,
//! `start` (with `ledger`), `prune` and `poll`, and `finish`, the answer. A request's targets
//! run side by side (`side_by_side`), each with its own state; [`reconcile_observed`] is the
//! loop that calls them.

pub mod ownership;
pub mod plan;
pub mod poll_timing;
pub mod progress;
pub mod slots;
pub mod timeline;

mod adopt;
mod deletion;
mod duplicates;
mod entry;
mod fatal;
mod finish;
mod judge;
mod ledger;
mod limits;
mod look;
mod poll;
mod prune;
mod sharing;
mod side_by_side;
mod start;
mod state;
mod unsure;

use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::contract::error::CopySnapshotsError;
use crate::contract::request::CopyRequest;
use crate::contract::response::Response;
use crate::engine::ownership::AskedEncryption;
use crate::engine::plan::Plan;
use crate::engine::progress::{LogObserver, Observer, RunEvent, StopSignal};
use crate::engine::timeline::Timeline;
use crate::store::SnapshotStore;
use crate::store::copy_time::CopyTimeModel;

use side_by_side::SideBySide;
use state::{Run, Shared};

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
///
/// One run per target, side by side: each round every target resolves its unsure starts,
/// heals its duplicates and starts what fits its own `pending_limit`; the invocation then
/// sleeps until the soonest target's next poll (retention's deletions fill the wait) and polls
/// the targets whose poll is due. A full or throttled target backs off alone.
pub async fn reconcile_observed<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    limits: RunLimits,
    observer: &dyn Observer,
    stop: StopSignal,
) -> Result<Response, CopySnapshotsError> {
    if request.dry_run {
        let plans = plan_observed(store, request, CopyTimeModel::DEFAULT, observer).await?;
        let answers = plans.iter().map(|plan| (plan.dry_run_response(request.wait_for_completion), None)).collect();
        return Ok(finish::combine(&request.targets, answers));
    }
    let started = Instant::now();
    let timeline = Timeline::new(started, limits.deadline, limits.call_timeout);
    let mut targets = SideBySide::new(look(store, request, limits, timeline, observer, &stop).await?)?;
    let mut stop = stop;
    // Starting copies may go on until the margin before the deadline; waiting also ends at
    // `max_wait_seconds`.
    let work_until = timeline.work_until();
    let wait_until = [work_until, request.max_wait.map(|max| started + max)].into_iter().flatten().min();
    loop {
        if stop.is_set() {
            break;
        }
        targets.work(work_until).await?;
        if !targets.work_left() {
            break;
        }
        let now = Instant::now();
        if wait_until.is_some_and(|until| now >= until) {
            break;
        }
        let Some(soonest) = targets.next_poll(now) else { break };
        let wake = wait_until.map_or(soonest, |until| soonest.min(until));
        // Woken by the end of the wait, not by a poll falling due: every target looks once
        // more, so the answer says where its copies are now.
        let last_wake = wake < soonest;
        // Retention's deletions fill the wait for the next poll.
        targets.prune(Some(wake)).await;
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = stop.wait() => {}
        }
        if stop.is_set() || !timeline.may_call() {
            break;
        }
        targets.poll_due(Instant::now(), last_wake).await?;
    }
    // Copies the last poll saw finish, before the answer.
    targets.release_slots().await;
    let mut share_problems: Vec<(String, String)> = Vec::new();
    if stop.is_set() {
        observer.observe(RunEvent::Stopped);
    } else {
        // What is left of the deletions, while the work may go on; the next run continues.
        targets.prune(work_until).await;
        // Shares with other accounts whose copies are all done.
        share_problems = sharing::sweep_shares(store, request, &timeline).await;
    }
    let mut answers = targets.answers();
    for (answer, target) in answers.iter_mut().zip(&request.targets) {
        let mine: Vec<String> = share_problems
            .iter()
            .filter(|(account, _)| target.place.account() == Some(account.as_str()))
            .map(|(_, why)| why.clone())
            .collect();
        answer.add_notes(&mine);
    }
    finish::conclude(request, answers)
}

/// The look of every target: each target's key resolved first (a bad key is refused before
/// anything else), the sources looked up once, then each target's earlier copies (a target
/// whose look fails comes back with its error).
async fn look<'a, S: SnapshotStore>(
    store: &'a S,
    request: &'a CopyRequest,
    limits: RunLimits,
    timeline: Timeline,
    observer: &'a dyn Observer,
    stop: &StopSignal,
) -> Result<Vec<(Run<'a, S>, Result<(), CopySnapshotsError>)>, CopySnapshotsError> {
    let mut asked = Vec::with_capacity(request.targets.len());
    for target in &request.targets {
        match look::resolve_encryption(store, target, &timeline).await {
            Ok(encryption) => asked.push(Ok(encryption)),
            // One of several targets whose key could not be looked at (no access to its
            // account, throttling): that target stops alone. A bad key is the request's fault,
            // refused before anything, everywhere.
            Err(error) if request.targets.len() > 1 && !matches!(error, CopySnapshotsError::InvalidRequest(_)) => {
                asked.push(Err(error));
            }
            Err(error) => return Err(error),
        }
    }
    let sources = look::look_sources(store, request, &timeline).await?;
    let mut runs = Vec::with_capacity(request.targets.len());
    for (target, asked) in request.targets.iter().zip(asked) {
        let (asked, key_error) = match asked {
            Ok(asked) => (asked, None),
            Err(error) => (AskedEncryption::Plain, Some(error)),
        };
        let shared = Shared { store, request, target, asked, observer, stop: stop.clone(), limits, timeline };
        // With several targets, every log line of a target's run names it; one target's lines
        // stay as they were.
        let span = if request.targets.len() > 1 {
            tracing::info_span!("target", target = %target.place)
        } else {
            tracing::Span::none()
        };
        match key_error {
            Some(error) => runs.push(Run::not_looked(shared, &sources, span, error)),
            None => runs.push(Run::look(shared, &sources, span.clone()).instrument(span).await),
        }
    }
    Ok(runs)
}

/// What `request` would do now, without copying or deleting anything, one plan per target:
/// the look alone (one DescribeSnapshots of the sources, one per target for their copies, and
/// with a retention one by id for sources its copies name that the first did not find), with
/// the start order the engine would use and the time it would take under `model`. A
/// `dry_run` request is answered from it.
pub async fn plan<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    model: CopyTimeModel,
) -> Result<Vec<Plan>, CopySnapshotsError> {
    plan_observed(store, request, model, &LogObserver).await
}

/// [`plan()`], telling `observer` what the look found. With a retention, a plan also lists the
/// copies a run would delete (`delete`) and those it would delete later (`delete_later`).
pub async fn plan_observed<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    model: CopyTimeModel,
    observer: &dyn Observer,
) -> Result<Vec<Plan>, CopySnapshotsError> {
    let call_timeout = crate::contract::request::DEFAULT_CALL_TIMEOUT;
    let limits =
        RunLimits { deadline: None, poll_interval: Duration::ZERO, max_poll_interval: Duration::ZERO, call_timeout };
    let timeline = Timeline::unbounded(call_timeout);
    let mut runs = Vec::new();
    for (run, looked) in look(store, request, limits, timeline, observer, &StopSignal::never()).await? {
        // A plan is the look: a target it cannot look at fails it.
        let several = request.targets.len() > 1;
        looked.map_err(|error| if several { finish::naming_target(error, &run.target.describe()) } else { error })?;
        runs.push(run);
    }
    Ok(runs
        .iter()
        .map(|run| {
            Plan::new(
                request.source_region.to_string(),
                run.target.place.region.to_string(),
                run.target.pending_limit,
                &run.looked_sources(),
                &run.start_order(),
                model,
            )
            .with_deletions(&run.planned_deletions())
            .with_breaker(run.breaker.clone())
        })
        .collect())
}
