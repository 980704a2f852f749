//! Reconnect delays: exponential growth with full jitter. Pure: the random source is a
//! small seeded generator, so the schedule is testable.

use std::time::Duration;

use crate::random::SplitMix64;

/// How long the listener waits between reconnect attempts.
///
/// The first attempt after a lost connection is made at once. Before attempt `n + 1`
/// the listener waits a random delay between zero and `min(max, initial * 2^(n-1))`
/// ("full jitter"), so a fleet of listeners that lost the same server does not
/// reconnect in lockstep. The schedule starts over only after a connection was
/// established *and* LISTEN was active again.
///
/// By default the listener never gives up. With [`max_attempts`](Backoff::max_attempts)
/// or [`give_up_after`](Backoff::give_up_after) it stops after that many failed attempts
/// or that long without a connection: every subscription then receives a final
/// [`Event::Error`](crate::Event::Error) of kind [`ErrorKind::Closed`](crate::ErrorKind::Closed)
/// and ends.
///
/// Defaults: `initial` 100 ms, `max` 10 s, never give up.
///
/// ```
/// use std::time::Duration;
/// use pglisten::Backoff;
///
/// let backoff = Backoff::new()
///     .initial(Duration::from_millis(250))
///     .max(Duration::from_secs(30));
/// assert_eq!(backoff.initial_delay(), Duration::from_millis(250));
/// # let _ = pglisten::Listener::builder("postgres://app@db/app").backoff(backoff);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    max_attempts: Option<u32>,
    give_up_after: Option<Duration>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            max_attempts: None,
            give_up_after: None,
        }
    }
}

impl Backoff {
    /// The default policy: 100 ms first delay, growing to at most 10 s.
    ///
    /// ```
    /// assert_eq!(pglisten::Backoff::new(), pglisten::Backoff::default());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The upper bound of the first delay (before the second attempt).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = pglisten::Backoff::new().initial(Duration::from_millis(10));
    /// assert_eq!(b.initial_delay(), Duration::from_millis(10));
    /// ```
    #[must_use]
    pub fn initial(mut self, delay: Duration) -> Self {
        self.initial = delay;
        self
    }

    /// The cap of every delay. A cap below `initial` is raised to `initial`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = pglisten::Backoff::new().max(Duration::from_secs(60));
    /// assert_eq!(b.max_delay(), Duration::from_secs(60));
    /// ```
    #[must_use]
    pub fn max(mut self, delay: Duration) -> Self {
        self.max = delay;
        self
    }

    /// Gives up after `attempts` failed connection attempts in a row (at least 1).
    ///
    /// ```
    /// let b = pglisten::Backoff::new().max_attempts(20);
    /// # let _ = b;
    /// ```
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// Gives up once the listener has been without a working connection for `limit`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = pglisten::Backoff::new().give_up_after(Duration::from_secs(300));
    /// # let _ = b;
    /// ```
    #[must_use]
    pub fn give_up_after(mut self, limit: Duration) -> Self {
        self.give_up_after = Some(limit);
        self
    }

    /// Whether to stop trying, after `failed` attempts and `outage` without a connection.
    /// Returns a description of the limit reached.
    pub(crate) fn gives_up(&self, failed: u32, outage: Duration) -> Option<String> {
        if let Some(max) = self.max_attempts
            && failed >= max
        {
            return Some(format!(
                "{failed} failed connection attempts (max_attempts {max})"
            ));
        }
        if let Some(limit) = self.give_up_after
            && outage >= limit
        {
            return Some(format!(
                "{outage:?} without a connection (give_up_after {limit:?})"
            ));
        }
        None
    }

    /// The configured first delay bound.
    ///
    /// ```
    /// # use std::time::Duration;
    /// assert_eq!(pglisten::Backoff::new().initial_delay(), Duration::from_millis(100));
    /// ```
    pub fn initial_delay(&self) -> Duration {
        self.initial
    }

    /// The configured cap.
    ///
    /// ```
    /// # use std::time::Duration;
    /// assert_eq!(pglisten::Backoff::new().max_delay(), Duration::from_secs(10));
    /// ```
    pub fn max_delay(&self) -> Duration {
        self.max.max(self.initial)
    }

    /// The bound of the delay before attempt number `attempt` (1-based) after a loss:
    /// zero for the first attempt, then `initial`, doubling up to `max`.
    pub(crate) fn ceiling(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let doublings = (attempt - 2).min(32);
        self.initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(Duration::MAX)
            .min(self.max_delay())
    }
}

/// The running schedule of one outage: counts attempts and draws jittered delays.
#[derive(Debug)]
pub(crate) struct BackoffSchedule {
    policy: Backoff,
    attempt: u32,
    rng: SplitMix64,
}

impl BackoffSchedule {
    pub(crate) fn new(policy: Backoff, seed: u64) -> Self {
        BackoffSchedule {
            policy,
            attempt: 0,
            rng: SplitMix64::new(seed),
        }
    }

    /// Counts one more attempt and returns how long to wait before making it.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.policy.ceiling(self.attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.rng.up_to(nanos))
    }

    /// Attempts made since the last reset.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over: called once LISTEN is active again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_attempt_is_immediate_then_ceiling_doubles_to_the_cap() {
        let b = Backoff::new().initial(100 * MS).max(MS * 1000);
        let ceilings: Vec<_> = (1..=7).map(|n| b.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [0, 100, 200, 400, 800, 1000, 1000].map(|m| m * MS)
        );
        assert_eq!(b.ceiling(u32::MAX), 1000 * MS);
    }

    #[test]
    fn cap_below_initial_is_raised() {
        let b = Backoff::new().initial(500 * MS).max(10 * MS);
        assert_eq!(b.max_delay(), 500 * MS);
        assert_eq!(b.ceiling(5), 500 * MS);
    }

    #[test]
    fn huge_initial_does_not_overflow() {
        let b = Backoff::new().initial(Duration::MAX).max(Duration::MAX);
        assert_eq!(b.ceiling(40), Duration::MAX);
        let mut s = BackoffSchedule::new(b, 1);
        for _ in 0..40 {
            s.next_delay();
        }
    }

    #[test]
    fn delays_stay_within_ceiling_and_are_jittered() {
        let policy = Backoff::new().initial(100 * MS).max(2000 * MS);
        let mut s = BackoffSchedule::new(policy, 42);
        assert_eq!(s.next_delay(), Duration::ZERO);
        let mut seen = Vec::new();
        for attempt in 2..=12 {
            let d = s.next_delay();
            assert!(d <= policy.ceiling(attempt), "attempt {attempt}: {d:?}");
            seen.push(d);
        }
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 5, "jitter should spread delays: {seen:?}");
        assert_eq!(s.attempts(), 12);
    }

    #[test]
    fn mean_delay_grows_with_attempts() {
        let policy = Backoff::new().initial(100 * MS).max(10_000 * MS);
        let mean = |attempt: u32| {
            let mut total = Duration::ZERO;
            for seed in 0..400 {
                let mut s = BackoffSchedule::new(policy, seed);
                for _ in 1..attempt {
                    s.next_delay();
                }
                total += s.next_delay();
            }
            total / 400
        };
        let (m2, m4, m6) = (mean(2), mean(4), mean(6));
        assert!(m2 < m4 && m4 < m6, "{m2:?} {m4:?} {m6:?}");
        // Full jitter: the mean is about half the ceiling (1600 ms for attempt 6).
        assert!(m6 > 650 * MS && m6 < 950 * MS, "{m6:?}");
    }

    #[test]
    fn reset_starts_over() {
        let mut s = BackoffSchedule::new(Backoff::new(), 7);
        for _ in 0..5 {
            s.next_delay();
        }
        s.reset();
        assert_eq!(s.attempts(), 0);
        assert_eq!(s.next_delay(), Duration::ZERO);
    }

    #[test]
    fn never_gives_up_by_default() {
        let b = Backoff::new();
        assert_eq!(b.gives_up(u32::MAX, Duration::MAX), None);
    }

    #[test]
    fn gives_up_at_the_configured_limits() {
        let b = Backoff::new().max_attempts(3);
        assert_eq!(b.gives_up(2, Duration::ZERO), None);
        assert!(b.gives_up(3, Duration::ZERO).unwrap().contains("3 failed"));
        let b = Backoff::new().give_up_after(Duration::from_secs(5));
        assert_eq!(b.gives_up(100, Duration::from_secs(4)), None);
        assert!(b.gives_up(1, Duration::from_secs(5)).is_some());
        assert_eq!(
            Backoff::new().max_attempts(0).gives_up(0, Duration::ZERO),
            None
        );
        assert!(
            Backoff::new()
                .max_attempts(0)
                .gives_up(1, Duration::ZERO)
                .is_some()
        );
    }
}
