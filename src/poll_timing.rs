//! When to poll next. EC2 reports a copy's progress in whole percent; assuming a steady rate,
//! two observations bracket when the copy completes ([`CompletionEstimate`]). [`next_wait`]
//! wakes when the soonest pending copy is likely done (or an unsure start is due for a look),
//! never sooner than the poll interval, never later than [`MAX_POLL_INTERVAL`]: one poll per
//! round, few rounds, and a slot idles only as long as the bracket is wide.

use std::time::Duration;

use tokio::time::Instant;

/// The longest wait between two polls, however far progress says the next completion is.
/// EC2's progress is not quite linear, so estimates are re-checked at least this often; 15
/// minutes is also the longest a Lambda invocation lives.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(900);

/// What the wait depends on besides the pending copies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WaitContext {
    /// The shortest wait (`POLL_INTERVAL_SECONDS`).
    pub poll_interval: Duration,
    /// The fastest copy speed measured in this run, GiB per second: a prior for copies not
    /// observed yet.
    pub fastest_gib_per_second: Option<f64>,
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
    let mut wake: Option<Instant> = context.next_unsure_look;
    for (size_gib, estimate) in pending {
        let candidate = match estimate.window() {
            // When the bounds are close (within 2% of the copy's age, or four poll
            // intervals), wake at the later one: one poll then surely sees the completion,
            // and the slot idles at most `gap`. When they are far apart, wake halfway to
            // narrow them first.
            Some((earliest, Some(latest))) => {
                let gap = latest.saturating_duration_since(earliest);
                let age = now.saturating_duration_since(estimate.started());
                let tolerance = (floor * 4).max(age / 50);
                if gap <= tolerance { latest } else { earliest + (gap / 2).max(floor) }
            }
            Some((earliest, None)) => earliest,
            // Not observed yet: the fastest speed seen in this run says how soon it could
            // be done at best; with none seen, look soon to learn one.
            None => match (context.fastest_gib_per_second, estimate.baseline) {
                (Some(speed), Some((t0, _, _))) => t0 + Duration::from_secs_f64(size_gib as f64 / speed),
                _ => now + floor,
            },
        };
        wake = Some(wake.map_or(candidate, |w| w.min(candidate)));
    }
    let mut wait = wake.map_or(MAX_POLL_INTERVAL, |w| w.saturating_duration_since(now));
    if let Some(rounds) = context.region_full_rounds {
        // Another account's copies hold the region's slots: retry, backing off while
        // none of ours is running to free one.
        let backoff = floor * 2u32.saturating_pow(rounds.min(4));
        wait = wait.min(backoff);
    }
    wait.clamp(floor, MAX_POLL_INTERVAL)
}

/// Brackets a copy's completion time from EC2's whole-percent progress, assuming a steady rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CompletionEstimate {
    /// First known point: (time, progress ≥ lo, progress < hi), in percent.
    pub(crate) baseline: Option<(Instant, f64, f64)>,
    /// Latest observation: (time, whole percent).
    latest: Option<(Instant, u8)>,
}

impl CompletionEstimate {
    pub(crate) fn started_at(at: Instant) -> Self {
        Self { baseline: Some((at, 0.0, 0.0)), latest: None }
    }

    pub(crate) fn started(&self) -> Instant {
        self.baseline.map_or_else(Instant::now, |(t0, _, _)| t0)
    }

    pub(crate) fn unknown() -> Self {
        Self { baseline: None, latest: None }
    }

    pub(crate) fn observe(&mut self, at: Instant, percent: u8) {
        if self.baseline.is_none() {
            let p = f64::from(percent);
            self.baseline = Some((at, p, p + 1.0));
        }
        self.latest = Some((at, percent));
    }

    /// Bounds on the copy's speed, in percent per second: (slowest, fastest).
    pub(crate) fn speed(&self) -> Option<(f64, f64)> {
        let (t0, lo0, hi0) = self.baseline?;
        let (t1, percent) = self.latest?;
        let elapsed = t1.checked_duration_since(t0)?.as_secs_f64();
        if elapsed <= 0.0 {
            return None;
        }
        let percent = f64::from(percent);
        Some(((percent - hi0).max(0.0) / elapsed, (percent + 1.0 - lo0) / elapsed))
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

    fn context() -> WaitContext {
        WaitContext {
            poll_interval: Duration::from_secs(15),
            fastest_gib_per_second: None,
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
}
