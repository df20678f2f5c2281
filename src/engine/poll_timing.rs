//! When to poll next. EC2 reports a copy's progress in whole percent; assuming a steady rate,
//! two observations bracket when the copy completes (`CompletionEstimate`). `next_wait`
//! wakes when the soonest pending copy is likely done (or an unsure start is due for a look),
//! never sooner than the poll interval, never later than the longest poll interval: one poll
//! per round, few rounds, and a slot idles only as long as the bracket is wide.
//!
//! EC2 often reports a cross-region copy at 0% for its first minutes, and a small incremental
//! copy may go from 0% to completed. So a reading that brackets nothing (0%, or the first
//! reading above 0% after one, which says nothing of how fast the copy moves) bounds the wait
//! by what is known instead (`bounded_wake`): not before the copy could be done at the
//! fastest speed known, and after that at most `BACKOFF_SHARE` of its age past the reading.
//! Once such a copy has moved, the bracket since its first reading above 0% (which holds the
//! completion, where the bracket from its start is late) wakes at its end when it is narrow.

use std::time::Duration;

use tokio::time::Instant;

use crate::store::copy_time::CopyTimeModel;

/// After a reading that brackets nothing, the next poll comes at most this share of the copy's
/// age later (once the copy could be done): a copy that completes while it reads 0% idles its
/// slot at most this share of its duration, and a copy that keeps reading 0% costs a poll each
/// time its age doubles.
pub(crate) const BACKOFF_SHARE: f64 = 1.0;

/// How much faster than the prior (the plan's copy-time model) a copy may run, until this run
/// has measured a speed: an incremental copy of a large volume moves little data.
pub(crate) const PRIOR_SPEEDUP: f64 = 10.0;

/// What the wait depends on besides the pending copies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WaitContext {
    /// The shortest wait (`POLL_INTERVAL_SECONDS`).
    pub poll_interval: Duration,
    /// The longest wait (`MAX_POLL_INTERVAL_SECONDS`).
    pub max_poll_interval: Duration,
    /// The fastest copy speed measured in this run, GiB per second: a prior for copies not
    /// observed yet.
    pub fastest_gib_per_second: Option<f64>,
    /// The copy time assumed until a speed is measured (the plan's model).
    pub prior: CopyTimeModel,
    /// When the earliest unsure start is due for a look.
    pub next_unsure_look: Option<Instant>,
    /// `Some(rounds)` when EC2 answered ResourceLimitExceeded since the last poll: how many
    /// rounds in a row the region was full with none of this request's copies pending.
    pub region_full_rounds: Option<u32>,
}

/// How long to wait before the next poll, given the pending copies as (size in GiB, estimate).
pub(crate) fn next_wait<'a>(
    now: Instant,
    context: &WaitContext,
    pending: impl Iterator<Item = (u64, &'a CompletionEstimate)>,
) -> Duration {
    let floor = context.poll_interval;
    // A bracket is narrow within 2% of the copy's age, or four poll intervals.
    let tolerance = |now: Instant, estimate: &CompletionEstimate| {
        (floor * 4).max(now.saturating_duration_since(estimate.started()) / 50)
    };
    let ceiling = context.max_poll_interval.max(floor);
    let mut wake: Option<Instant> = context.next_unsure_look;
    for (size_gib, estimate) in pending {
        let candidate = match estimate.window() {
            // When the bounds are close (within 2% of the copy's age, or four poll
            // intervals), wake at the later one: one poll then surely sees the completion,
            // and the slot idles at most `gap`. When they are far apart, wake halfway to
            // narrow them first.
            Some((earliest, Some(latest))) => {
                let gap = latest.saturating_duration_since(earliest);
                if gap <= tolerance(now, estimate) { latest } else { earliest + (gap / 2).max(floor) }
            }
            Some((earliest, None)) => earliest,
            // Not observed yet: the fastest speed seen in this run says how soon it could
            // be done at best; with none seen, look soon to learn one.
            None => match (context.fastest_gib_per_second, estimate.baseline) {
                (Some(speed), Some((t0, _, _))) => t0 + Duration::from_secs_f64(size_gib as f64 / speed),
                _ => now + floor,
            },
        };
        // A copy that sat at 0% completes sooner than the bracket from its start says; once the
        // bracket since it moved is narrow, its end is surely past the completion.
        let candidate = match estimate.window_since_moving() {
            Some((earliest, latest)) if latest.saturating_duration_since(earliest) <= tolerance(now, estimate) => {
                candidate.min(latest)
            }
            _ => candidate,
        };
        let candidate = match estimate.uninformative() {
            Some((read_at, percent)) => candidate.min(bounded_wake(context, size_gib, estimate, read_at, percent)),
            None => candidate,
        };
        wake = Some(wake.map_or(candidate, |w| w.min(candidate)));
    }
    let mut wait = wake.map_or(ceiling, |w| w.saturating_duration_since(now));
    if let Some(rounds) = context.region_full_rounds {
        // Another account's copies hold the region's slots: retry, backing off while
        // none of ours is running to free one.
        let backoff = floor * 2u32.saturating_pow(rounds.min(4));
        wait = wait.min(backoff);
    }
    wait.clamp(floor, ceiling)
}

/// The latest wake after a reading (`percent` at `read_at`) that brackets nothing: not before
/// the copy could be done at the fastest speed known (measured in this run, else the prior's
/// sped up [`PRIOR_SPEEDUP`] times), and past that at most [`BACKOFF_SHARE`] of its age later.
fn bounded_wake(
    context: &WaitContext,
    size_gib: u64,
    estimate: &CompletionEstimate,
    read_at: Instant,
    percent: u8,
) -> Instant {
    let started = estimate.started();
    let soonest_done = match context.fastest_gib_per_second {
        Some(speed) if speed > 0.0 => {
            let left = f64::from(100 - percent.min(100)) / 100.0;
            read_at + Duration::from_secs_f64((size_gib as f64 * left / speed).min(1e9))
        }
        _ => started + context.prior.duration(size_gib).div_f64(PRIOR_SPEEDUP),
    };
    let age = read_at.saturating_duration_since(started);
    let backoff = read_at + age.mul_f64(BACKOFF_SHARE).max(context.poll_interval);
    backoff.max(soonest_done)
}

/// Brackets a copy's completion time from EC2's whole-percent progress, assuming a steady rate.
/// A copy that sat at 0% for a while completes sooner than the bracket's earliest bound; its
/// latest bound still holds (the rate since the start is below the rate since it moves).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CompletionEstimate {
    /// First known point: (time, progress ≥ lo, progress < hi), in percent.
    pub(crate) baseline: Option<(Instant, f64, f64)>,
    /// Latest observation: (time, whole percent).
    latest: Option<(Instant, u8)>,
    /// It has read 0%: progress may have begun any time since.
    read_zero: bool,
    /// When it first read above 0% after reading 0%, and what.
    first_moving: Option<(Instant, u8)>,
}

impl CompletionEstimate {
    pub(crate) fn started_at(at: Instant) -> Self {
        Self { baseline: Some((at, 0.0, 0.0)), latest: None, read_zero: false, first_moving: None }
    }

    pub(crate) fn started(&self) -> Instant {
        self.baseline.map_or_else(Instant::now, |(t0, _, _)| t0)
    }

    pub(crate) fn unknown() -> Self {
        Self { baseline: None, latest: None, read_zero: false, first_moving: None }
    }

    pub(crate) fn observe(&mut self, at: Instant, percent: u8) {
        if self.baseline.is_none() {
            let p = f64::from(percent);
            self.baseline = Some((at, p, p + 1.0));
        }
        if percent == 0 {
            self.read_zero = true;
        } else if self.read_zero && self.first_moving.is_none() {
            self.first_moving = Some((at, percent));
        }
        self.latest = Some((at, percent));
    }

    /// The latest reading, when it brackets nothing: 0%, or the first reading above 0% after
    /// one (the copy may have begun to move just before it).
    fn uninformative(&self) -> Option<(Instant, u8)> {
        let (at, percent) = self.latest?;
        (percent == 0 || self.first_moving == Some((at, percent))).then_some((at, percent))
    }

    /// For a copy that read 0%, the bracket from its first reading above 0% to its latest: it
    /// holds the completion of a copy that sat at 0% and then moved steadily.
    fn window_since_moving(&self) -> Option<(Instant, Instant)> {
        let (t1, p1) = self.first_moving?;
        let (t, p) = self.latest?;
        let between = t.checked_duration_since(t1)?.as_secs_f64();
        if between <= 0.0 {
            return None;
        }
        let (p1, p) = (f64::from(p1), f64::from(p));
        let (slowest, fastest) = ((p - p1 - 1.0) / between, (p + 1.0 - p1) / between);
        if slowest <= 0.0 {
            return None;
        }
        let after = |remaining: f64, speed: f64| t + Duration::from_secs_f64((remaining.max(0.0) / speed).min(1e9));
        Some((after(99.0 - p, fastest), after(100.0 - p, slowest)))
    }

    /// Bounds on the copy's speed, in percent per second: (slowest, fastest).
    pub(crate) fn speed(&self) -> Option<(f64, f64)> {
        let (t0, lo0, hi0) = self.baseline?;
        let (t1, percent) = self.latest?;
        let elapsed = t1.checked_duration_since(t0)?.as_secs_f64();
        if elapsed <= 0.0 {
            return None;
        }
        let first_after_zero = self.first_moving == self.latest;
        let percent = f64::from(percent);
        let slowest = (percent - hi0).max(0.0) / elapsed;
        // Having sat at 0%, it may have begun to move just before this reading: nothing bounds
        // how fast it moves (the rate since the start understates it).
        let fastest = if first_after_zero { f64::INFINITY } else { (percent + 1.0 - lo0) / elapsed };
        Some((slowest, fastest))
    }

    /// The earliest and latest moments the copy can complete (latest `None`: no bound yet).
    pub(crate) fn window(&self) -> Option<(Instant, Option<Instant>)> {
        let (slowest, fastest) = self.speed()?;
        let (t1, percent) = self.latest?;
        let percent = f64::from(percent);
        let after = |remaining: f64, speed: f64| t1 + Duration::from_secs_f64((remaining.max(0.0) / speed).min(1e9));
        let earliest = after(100.0 - (percent + 1.0), fastest);
        let latest = (slowest > 0.0).then(|| after(100.0 - percent, slowest));
        Some((earliest, latest))
    }
}

#[cfg(test)]
mod tests;
