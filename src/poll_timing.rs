//! When to poll next. EC2 reports a copy's progress in whole percent; assuming a steady rate,
//! two observations bracket when the copy completes ([`CompletionEstimate`]). [`next_wait`]
//! wakes when the soonest pending copy is likely done (or an unsure start is due for a look),
//! never sooner than the poll interval, never later than the longest poll interval: one poll
//! per round, few rounds, and a slot idles only as long as the bracket is wide.
//!
//! EC2 often reports a cross-region copy at 0% for its first minutes, and a small incremental
//! copy may go from 0% to completed. So a reading that brackets nothing (0%, or the first
//! reading above 0% after one, which says nothing of how fast the copy moves) bounds the wait
//! by what is known instead ([`bounded_wake`]): not before the copy could be done at the
//! fastest speed known, and after that at most [`BACKOFF_SHARE`] of its age past the reading.
//! Once such a copy has moved, the bracket since its first reading above 0% (which holds the
//! completion, where the bracket from its start is late) wakes at its end when it is narrow.

use std::time::Duration;

use tokio::time::Instant;

use crate::plan::CopyTimeModel;

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
mod tests {
    use super::*;

    /// A copy that really takes `total` seconds, progressing steadily, observed as EC2 reports
    /// it (whole percent, rounded down).
    fn observed(total: f64, at: &[f64]) -> (Instant, CompletionEstimate) {
        let start = Instant::now();
        let mut estimate = CompletionEstimate::started_at(start);
        for t in at {
            let percent = (t / total * 100.0).floor() as u8;
            estimate.observe(start + Duration::from_secs_f64(*t), percent);
        }
        (start, estimate)
    }

    #[test]
    fn the_completion_window_always_holds_the_true_completion() {
        for total in [280.0, 1_400.0, 41_080.0] {
            for fraction in [0.02, 0.1, 0.5, 0.9, 0.99] {
                let (start, estimate) = observed(total, &[total * fraction]);
                let truth = start + Duration::from_secs_f64(total);
                let (earliest, latest) = estimate.window().expect("a window after one observation");
                assert!(earliest <= truth, "total {total}, at {fraction}: earliest after the truth");
                if let Some(latest) = latest {
                    assert!(
                        truth <= latest + Duration::from_millis(1),
                        "total {total}, at {fraction}: latest before the truth"
                    );
                }
            }
        }
    }

    #[test]
    fn the_window_narrows_as_progress_grows() {
        let width = |at: f64| {
            let (_, estimate) = observed(1_400.0, &[at]);
            let (earliest, latest) = estimate.window().unwrap();
            latest.unwrap().duration_since(earliest)
        };
        assert!(width(1_260.0) < width(140.0));
    }

    #[test]
    fn nothing_is_known_before_a_first_observation_or_at_zero_percent() {
        let (_, estimate) = observed(1_400.0, &[]);
        assert!(estimate.window().is_none());
        let (start, estimate) = observed(1_400.0, &[10.0]);
        let (earliest, latest) = estimate.window().unwrap();
        assert!(latest.is_none(), "0% gives no upper bound");
        assert!(earliest >= start + Duration::from_secs(990), "at 0% after 10 s, at least 99 × 10 s remain");
    }

    const MAX_POLL_INTERVAL: Duration = crate::request::DEFAULT_MAX_POLL_INTERVAL;

    fn context() -> WaitContext {
        WaitContext {
            poll_interval: Duration::from_secs(15),
            max_poll_interval: MAX_POLL_INTERVAL,
            fastest_gib_per_second: None,
            prior: CopyTimeModel::DEFAULT,
            next_unsure_look: None,
            region_full_rounds: None,
        }
    }

    #[test]
    fn with_nothing_pending_it_waits_the_longest() {
        assert_eq!(next_wait(Instant::now(), &context(), std::iter::empty()), MAX_POLL_INTERVAL);
    }

    #[test]
    fn a_copy_never_observed_is_looked_at_after_one_interval_unless_a_speed_is_known() {
        let now = Instant::now();
        let estimate = CompletionEstimate::started_at(now);
        assert_eq!(next_wait(now, &context(), [(100, &estimate)].into_iter()), Duration::from_secs(15));
        // 100 GiB at the fastest speed seen, 0.1 GiB/s: not done before 1,000 s.
        let known = WaitContext { fastest_gib_per_second: Some(0.1), ..context() };
        assert_eq!(
            next_wait(now, &known, [(100, &estimate)].into_iter()),
            MAX_POLL_INTERVAL.min(Duration::from_secs(1000))
        );
    }

    #[test]
    fn a_narrow_window_wakes_at_its_end_so_one_poll_sees_the_completion() {
        let (start, estimate) = observed(1_400.0, &[1_260.0]);
        let now = start + Duration::from_secs(1_260);
        let wait = next_wait(now, &context(), [(50, &estimate)].into_iter());
        assert!(now + wait >= start + Duration::from_secs(1_400), "woke before the copy is surely done");
        assert!(now + wait <= start + Duration::from_secs(1_400 + 60), "the slot idles more than four intervals");
    }

    #[test]
    fn a_wide_window_wakes_halfway_to_narrow_it() {
        // An 11-hour copy seen at 10%: the bounds are hours apart.
        let (start, estimate) = observed(41_080.0, &[4_108.0]);
        let now = start + Duration::from_secs(4_108);
        let (earliest, latest) = estimate.window().unwrap();
        let wait = next_wait(now, &context(), [(2048, &estimate)].into_iter());
        assert!(now + wait < latest.unwrap(), "waited to the far end of a wide window");
        assert!(now + wait >= earliest.min(now + MAX_POLL_INTERVAL), "woke before the copy could be done");
    }

    #[test]
    fn an_unsure_look_due_sooner_than_any_copy_comes_first() {
        let (start, estimate) = observed(41_080.0, &[4_108.0]);
        let now = start + Duration::from_secs(4_108);
        let unsure = WaitContext { next_unsure_look: Some(now + Duration::from_secs(30)), ..context() };
        assert_eq!(next_wait(now, &unsure, [(2048, &estimate)].into_iter()), Duration::from_secs(30));
        let overdue = WaitContext { next_unsure_look: Some(now - Duration::from_secs(5)), ..context() };
        assert_eq!(next_wait(now, &overdue, std::iter::empty()), Duration::from_secs(15), "never under the interval");
    }

    #[test]
    fn a_full_region_backs_off_doubling_up_to_sixteen_intervals() {
        for (rounds, seconds) in [(0, 15), (1, 30), (2, 60), (3, 120), (4, 240), (9, 240)] {
            let full = WaitContext { region_full_rounds: Some(rounds), ..context() };
            assert_eq!(next_wait(Instant::now(), &full, std::iter::empty()), Duration::from_secs(seconds), "{rounds}");
        }
    }

    /// A copy that really takes `total` seconds and reads 0% for its first `quiet` share of
    /// them, then progresses steadily, as EC2 reports it at `t` seconds.
    fn quiet_percent(total: f64, quiet: f64, t: f64) -> u8 {
        let moving = total * (1.0 - quiet);
        (((t - total * quiet).max(0.0) / moving * 100.0).floor() as u8).min(100)
    }

    /// Polls a copy of `size_gib` that takes `total` seconds, quiet for its first `quiet` share,
    /// as the engine does (each wait from [`next_wait`]); returns (seconds when a poll first saw
    /// it complete, polls made).
    fn poll_until_complete(context: &WaitContext, size_gib: u64, total: f64, quiet: f64) -> (f64, usize) {
        let start = Instant::now();
        let mut estimate = CompletionEstimate::started_at(start);
        let mut now = start;
        for polls in 1..=1_000 {
            now += next_wait(now, context, [(size_gib, &estimate)].into_iter());
            let t = now.duration_since(start).as_secs_f64();
            let percent = quiet_percent(total, quiet, t);
            if percent >= 100 {
                return (t, polls);
            }
            estimate.observe(now, percent);
        }
        panic!("a copy of {total} s never seen complete");
    }

    #[test]
    fn the_brackets_of_a_copy_that_sat_at_zero_percent_hold_its_true_completion() {
        // The rate since the start understates the rate of a copy that sat at 0% first, so of
        // the bracket from its start only the latest bound holds; the bracket since it moved
        // holds both ways.
        for total in [180.0, 1_400.0, 41_080.0] {
            for quiet in [0.05, 0.3, 0.6] {
                for times in [[0.02, 0.3, 0.62, 0.9], [0.01, 0.25, 0.66, 0.99], [0.01, 0.04, 0.5, 0.8]] {
                    let start = Instant::now();
                    let truth = start + Duration::from_secs_f64(total);
                    let mut estimate = CompletionEstimate::started_at(start);
                    for fraction in times {
                        let t = total * fraction;
                        estimate.observe(start + Duration::from_secs_f64(t), quiet_percent(total, quiet, t));
                        if let Some((_, Some(latest))) = estimate.window() {
                            assert!(
                                truth <= latest + Duration::from_millis(1),
                                "{total} s, quiet {quiet}, at {fraction}: latest before the truth"
                            );
                        }
                        if let Some((earliest, latest)) = estimate.window_since_moving() {
                            assert!(
                                earliest <= truth && truth <= latest + Duration::from_millis(1),
                                "{total} s, quiet {quiet}, at {fraction}: the bracket since it moved misses the truth"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_first_reading_above_zero_after_zero_bounds_no_speed() {
        // 4% at 60 s after 0% at 30 s: it may have begun to move at 59 s, so no speed is
        // measured from it (the run would plan other copies by a rate the copy never had).
        let (start, mut estimate) = observed(10_000.0, &[30.0]);
        estimate.observe(start + Duration::from_secs(60), 4);
        let (slowest, fastest) = estimate.speed().unwrap();
        assert!(slowest > 0.0 && fastest.is_infinite(), "({slowest}, {fastest})");
        // A second reading above 0% bounds it again.
        estimate.observe(start + Duration::from_secs(120), 52);
        assert!(estimate.speed().unwrap().1.is_finite());
    }

    #[test]
    fn after_a_zero_percent_reading_the_wait_is_a_share_of_the_copys_age() {
        // 8 GiB read 0% at 60 s: the prior's tenth (28 s) is past, so at most 60 s more, not
        // the 99 × 60 s the reading alone allows (capped at 15 minutes).
        let (start, estimate) = observed(10_000.0, &[60.0]);
        let now = start + Duration::from_secs(60);
        let wait = next_wait(now, &context(), [(8, &estimate)].into_iter());
        assert!(wait <= Duration::from_secs_f64(60.0 * BACKOFF_SHARE), "waited {wait:?} after 0% at 60 s");
        assert!(wait >= Duration::from_secs(15), "under the interval");
    }

    #[test]
    fn a_copy_at_zero_percent_is_not_polled_before_it_could_be_done() {
        // 2 TiB at 0% after 15 s, no speed measured: the plan's model, ten times faster, says
        // not before 4,108 s, so the wait stays the longest.
        let (start, estimate) = observed(41_080.0, &[15.0]);
        let now = start + Duration::from_secs(15);
        assert_eq!(next_wait(now, &context(), [(2048, &estimate)].into_iter()), MAX_POLL_INTERVAL);
        // A measured 10 GiB/s says it could be done 205 s after the reading.
        let fast = WaitContext { fastest_gib_per_second: Some(10.0), ..context() };
        let wait = next_wait(now, &fast, [(2048, &estimate)].into_iter());
        assert!(wait >= Duration::from_secs(200) && wait <= Duration::from_secs(210), "{wait:?}");
    }

    #[test]
    fn a_small_copy_quiet_for_its_first_30_percent_is_seen_soon_after_it_completes() {
        // From 1 to 50 minutes, as small incremental copies take; 8 GiB (the prior: 280 s).
        for total in [60.0, 180.0, 400.0, 1_000.0, 3_000.0] {
            let (seen, polls) = poll_until_complete(&context(), 8, total, 0.3);
            assert!(seen <= total * 1.25 + 15.0, "{total} s copy seen complete at {seen:.0} s");
            assert!(polls <= 12, "{total} s copy: {polls} polls");
        }
        // One that sits at 0% until it completes idles at most BACKOFF_SHARE of its duration.
        for total in [60.0, 180.0, 1_000.0] {
            let (seen, _) = poll_until_complete(&context(), 8, total, 1.0);
            assert!(seen <= total * (1.0 + BACKOFF_SHARE) + 15.0, "{total} s copy seen complete at {seen:.0} s");
        }
    }

    #[test]
    fn a_steady_copy_is_polled_as_before() {
        // No 0% reading: the wait follows the window alone, as it always has.
        for (total, at) in [(1_400.0, 140.0), (41_080.0, 4_108.0), (280.0, 15.0)] {
            let (start, estimate) = observed(total, &[at]);
            let now = start + Duration::from_secs_f64(at);
            let (earliest, latest) = estimate.window().unwrap();
            let wait = next_wait(now, &context(), [(100, &estimate)].into_iter());
            let gap = latest.unwrap().duration_since(earliest);
            let age = Duration::from_secs_f64(at);
            let expected = if gap <= (Duration::from_secs(60)).max(age / 50) {
                latest.unwrap()
            } else {
                earliest + (gap / 2).max(Duration::from_secs(15))
            };
            let expected = expected.duration_since(now).clamp(Duration::from_secs(15), MAX_POLL_INTERVAL);
            assert_eq!(wait, expected, "{total} s at {at} s");
        }
    }

    #[test]
    fn the_longest_wait_is_the_setting() {
        let short = WaitContext { max_poll_interval: Duration::from_secs(60), ..context() };
        assert_eq!(next_wait(Instant::now(), &short, std::iter::empty()), Duration::from_secs(60));
        let (start, estimate) = observed(41_080.0, &[4_108.0]);
        let now = start + Duration::from_secs(4_108);
        assert_eq!(next_wait(now, &short, [(2048, &estimate)].into_iter()), Duration::from_secs(60));
    }
}
