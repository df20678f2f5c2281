//! The invocation's time: until when the engine starts work, how long each store call may take,
//! and the backoff (with jitter) after throttling or a full region. Every call gets the time
//! that is left before the deadline, less what the answer needs, capped at the SDK's operation
//! timeout: a short invocation still makes calls, and no call can end past the deadline.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::StoreError;

/// How long before the invocation's deadline the engine stops starting work and waiting, so its
/// last calls and the answer fit. A short invocation keeps a quarter of its time instead.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(30);
/// Time kept after the last call for building and returning the answer (a fifth of a short
/// invocation's time).
pub const RESPONSE_RESERVE: Duration = Duration::from_secs(2);
/// The least time worth giving one EC2 call: a DescribeSnapshots or CopySnapshot answers in a
/// fraction of a second; a call cut off sooner would mostly leave an unsure start behind.
pub const MIN_CALL_TIME: Duration = Duration::from_secs(1);
/// The first backoff after EC2 throttled a call beyond the SDK's retries; it doubles per try.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The longest backoff between two tries of a throttled call.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The most tries of one look-up (about 6 minutes of backing off), deadline or not.
pub const LOOK_TRIES: u32 = 10;

/// When an invocation must be done, and what that leaves each call.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    started: Instant,
    /// `None`: no deadline (the command line without a time limit, the benchmark).
    deadline: Option<Instant>,
    /// No call may end after this: the deadline less the answer's reserve.
    calls_end: Option<Instant>,
    /// No copy starts and no wait begins after this.
    work_until: Option<Instant>,
    /// The SDK's operation timeout: no call is given longer.
    call_timeout: Duration,
}

impl Timeline {
    pub fn new(started: Instant, deadline: Option<Instant>, call_timeout: Duration) -> Self {
        let total = deadline.map(|d| d.saturating_duration_since(started));
        let before = |d: Instant, margin: Duration| d.checked_sub(margin).unwrap_or(started).max(started);
        let calls_end = deadline.zip(total).map(|(d, total)| before(d, RESPONSE_RESERVE.min(total / 5)));
        let work_until = deadline.zip(total).map(|(d, total)| before(d, DEADLINE_MARGIN.min(total / 4)));
        Self { started, deadline, calls_end, work_until, call_timeout }
    }

    /// No deadline: every call gets the operation timeout.
    pub fn unbounded(call_timeout: Duration) -> Self {
        Self::new(Instant::now(), None, call_timeout)
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The invocation's whole time, if it has a deadline.
    pub fn total(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(self.started))
    }

    /// Until when copies may be started and waits may last.
    pub fn work_until(&self) -> Option<Instant> {
        self.work_until
    }

    /// How long a call started now may take: the time left before the answer's reserve, at
    /// most the operation timeout; `None` when that is less than [`MIN_CALL_TIME`].
    pub fn call_budget(&self) -> Option<Duration> {
        let Some(end) = self.calls_end else { return Some(self.call_timeout) };
        let left = end.saturating_duration_since(Instant::now()).min(self.call_timeout);
        (left >= MIN_CALL_TIME.min(self.call_timeout)).then_some(left)
    }

    /// Whether a call may start now.
    pub fn may_call(&self) -> bool {
        self.call_budget().is_some()
    }

    /// Runs any call (the slot ledger's) within the budget a store call gets; `None` when no
    /// time is left for it or it did not answer in that time.
    pub async fn within_budget<T>(&self, call: impl Future<Output = T>) -> Option<T> {
        tokio::time::timeout(self.call_budget()?, call).await.ok()
    }

    /// Runs one store call within its budget. A call cut off by the deadline had no definite
    /// answer (it may have reached EC2), exactly as if the SDK's own timeout had ended it.
    pub async fn call<T>(&self, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let Some(budget) = self.call_budget() else {
            return Err(StoreError::Unknown(
                "no time left before the invocation's deadline to make the call".to_owned(),
            ));
        };
        match tokio::time::timeout(budget, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unknown(format!(
                "no answer within {:.1} s, the time the invocation's deadline left for the call",
                budget.as_secs_f64()
            ))),
        }
    }

    /// Runs a look-up (a call that changes nothing, so safe to repeat), trying again with
    /// backoff and jitter while EC2 throttles it beyond the SDK's retries or leaves it without
    /// an answer (a timeout, a 5xx: with throttling past the SDK's backoff, its operation
    /// timeout often ends the call first), as long as time is left, at most [`LOOK_TRIES`]
    /// times.
    pub async fn call_retrying<T, F, Fut>(&self, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 1;
        loop {
            match self.call(call()).await {
                Err(error @ (StoreError::Throttled(_) | StoreError::Unknown(_))) => {
                    let pause = jittered(backoff);
                    let resume = Instant::now() + pause;
                    let fits = self.calls_end.is_none_or(|end| resume + MIN_CALL_TIME <= end);
                    if !fits || tries >= LOOK_TRIES {
                        return Err(error);
                    }
                    tracing::warn!(%error, pause_ms = pause.as_millis(), "a look-up failed without a definite answer; trying again");
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tries += 1;
                }
                other => return other,
            }
        }
    }
}

/// A backoff spread over its upper half ("equal jitter"): invocations that were throttled or
/// found the region full together come back apart, not in step, and none comes back sooner
/// than half the backoff.
pub fn jittered(backoff: Duration) -> Duration {
    backoff / 2 + backoff.mul_f64(0.5 * random_fraction())
}

/// A number in [0, 1), different in every process and every call: std's per-process random
/// hash keys over a counter (no random-number crate needed for a jitter).
fn random_fraction() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_six_second_invocation_gives_its_calls_the_time_that_is_left() {
        let started = Instant::now();
        let timeline = Timeline::new(started, Some(started + Duration::from_secs(6)), Duration::from_secs(25));
        // 6 s: the answer keeps 1.2 s, so a call now may take 4.8 s, not the 25 s timeout.
        let budget = timeline.call_budget().expect("time for a call");
        assert_eq!(budget, Duration::from_millis(4_800));
        assert_eq!(timeline.work_until(), Some(started + Duration::from_millis(4_500)));
        tokio::time::advance(Duration::from_millis(4_000)).await;
        assert!(!timeline.may_call(), "0.8 s left is less than a call's minimum");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_is_cut_off_at_its_budget_as_an_unsure_answer() {
        let started = Instant::now();
        let timeline = Timeline::new(started, Some(started + Duration::from_secs(10)), Duration::from_secs(25));
        let slow = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<(), StoreError>(())
        };
        let result = timeline.call(slow).await;
        assert!(matches!(result, Err(StoreError::Unknown(_))), "{result:?}");
        assert_eq!(Instant::now(), started + Duration::from_secs(8), "cut off at the deadline less the reserve");
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_look_up_is_tried_again_until_it_answers() {
        let timeline = Timeline::unbounded(Duration::from_secs(25));
        let mut tries = 0;
        let result = timeline
            .call_retrying(|| {
                tries += 1;
                let answer =
                    if tries < 4 { Err(StoreError::Throttled("RequestLimitExceeded".to_owned())) } else { Ok(tries) };
                async move { answer }
            })
            .await;
        assert_eq!(result, Ok(4));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_look_up_is_tried_again_at_most_look_tries_times() {
        let timeline = Timeline::unbounded(Duration::from_secs(25));
        let mut tries = 0;
        let result = timeline
            .call_retrying(|| {
                tries += 1;
                async { Err::<(), _>(StoreError::Unknown("timeout".to_owned())) }
            })
            .await;
        assert!(matches!(result, Err(StoreError::Unknown(_))), "{result:?}");
        assert_eq!(tries, LOOK_TRIES);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_look_up_gives_up_when_the_deadline_leaves_no_time() {
        let started = Instant::now();
        let timeline = Timeline::new(started, Some(started + Duration::from_secs(20)), Duration::from_secs(25));
        let result = timeline
            .call_retrying(|| async { Err::<(), _>(StoreError::Throttled("RequestLimitExceeded".to_owned())) })
            .await;
        assert!(matches!(result, Err(StoreError::Throttled(_))), "{result:?}");
        assert!(Instant::now() <= started + Duration::from_secs(16), "gave up in time");
    }

    #[test]
    fn jitter_spreads_over_the_upper_half_of_the_backoff() {
        let backoff = Duration::from_secs(10);
        let draws: Vec<Duration> = (0..200).map(|_| jittered(backoff)).collect();
        assert!(draws.iter().all(|d| *d >= backoff / 2 && *d < backoff), "{draws:?}");
        let distinct: std::collections::HashSet<Duration> = draws.iter().copied().collect();
        assert!(distinct.len() > 150, "not spread: {} distinct of 200", distinct.len());
    }
}
