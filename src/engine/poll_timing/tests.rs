//! The unit tests of [`super`].

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

const MAX_POLL_INTERVAL: Duration = crate::contract::request::DEFAULT_MAX_POLL_INTERVAL;

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
