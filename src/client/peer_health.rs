//! When to (re)connect to a peer: exponential backoff and a circuit breaker, sans-IO.
//!
//! A peer that keeps failing is not hammered: each failed attempt doubles the wait before
//! the next (up to a cap), and after `PEER_BREAKER_FAILURES` consecutive failures the breaker
//! opens for `PEER_BREAKER_COOLDOWN`, during which sends to that peer fail fast. After the
//! cool-down one probe attempt is allowed (half-open): success closes the breaker, failure
//! opens it again. Time comes in as `now`; nothing here reads a clock.

use std::time::Duration;

use crate::constants::{
    PEER_BACKOFF_INITIAL, PEER_BACKOFF_MAX, PEER_BREAKER_COOLDOWN, PEER_BREAKER_FAILURES,
};
use crate::time::Time;

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts allowed (subject to backoff).
    Closed,
    /// Failing fast until the given time.
    Open { until: Time },
    /// One probe attempt is in flight.
    HalfOpen,
}

/// Whether an attempt may start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; report the outcome with `on_success` / `on_failure`.
    Attempt,
    /// Backing off: try again at this time.
    RetryAt(Time),
    /// The breaker is open (or its probe is in flight): fail fast.
    Open,
}

/// How quickly a failing peer is given up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    pub cooldown: Duration,
}

impl Default for HealthPolicy {
    /// The peer-to-peer policy (the original NodeDB's numbers).
    fn default() -> Self {
        HealthPolicy {
            backoff_initial: PEER_BACKOFF_INITIAL,
            backoff_max: PEER_BACKOFF_MAX,
            failures_to_open: PEER_BREAKER_FAILURES,
            cooldown: PEER_BREAKER_COOLDOWN,
        }
    }
}

impl HealthPolicy {
    /// Wait after `failures` consecutive failures: initial × 2^(failures − 1), capped.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(20);
        self.backoff_initial
            .saturating_mul(1 << exponent)
            .min(self.backoff_max)
    }
}

/// Backoff and breaker of one peer.
#[derive(Clone, Debug)]
pub struct PeerHealth {
    policy: HealthPolicy,
    state: BreakerState,
    consecutive_failures: u32,
    next_attempt: Time,
}

impl Default for PeerHealth {
    fn default() -> Self {
        PeerHealth::new()
    }
}

impl PeerHealth {
    pub fn new() -> PeerHealth {
        PeerHealth::with_policy(HealthPolicy::default())
    }

    pub fn with_policy(policy: HealthPolicy) -> PeerHealth {
        PeerHealth {
            policy,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            next_attempt: Time::ZERO,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Asks whether a connection attempt may start at `now`.
    pub fn admit(&mut self, now: Time) -> Admission {
        match self.state {
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Admission::Attempt
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => Admission::Open,
            BreakerState::Closed if now < self.next_attempt => {
                Admission::RetryAt(self.next_attempt)
            }
            BreakerState::Closed => Admission::Attempt,
        }
    }

    /// The attempt (or the connection it made) works.
    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed;
        self.consecutive_failures = 0;
        self.next_attempt = Time::ZERO;
    }

    /// The attempt failed, or an established connection was lost.
    pub fn on_failure(&mut self, now: Time) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.state == BreakerState::HalfOpen
            || self.consecutive_failures >= self.policy.failures_to_open
        {
            self.state = BreakerState::Open {
                until: now + self.policy.cooldown,
            };
        } else {
            self.next_attempt = now + self.policy.backoff(self.consecutive_failures);
        }
    }
}

/// The peer policy's wait after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    HealthPolicy::default().backoff(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_exponentially_then_open_the_breaker() {
        let mut h = PeerHealth::new();
        let mut now = Time::from_secs(100);
        for failure in 1..PEER_BREAKER_FAILURES {
            assert_eq!(h.admit(now), Admission::Attempt);
            h.on_failure(now);
            let wait = backoff(failure);
            assert_eq!(
                h.admit(now),
                Admission::RetryAt(now + wait),
                "failure {failure}"
            );
            now += wait;
        }
        assert_eq!(h.admit(now), Admission::Attempt);
        h.on_failure(now);
        assert_eq!(
            h.state(),
            BreakerState::Open {
                until: now + PEER_BREAKER_COOLDOWN
            }
        );
        assert_eq!(h.admit(now + PEER_BREAKER_COOLDOWN / 2), Admission::Open);
        // After the cool-down, exactly one probe.
        let later = now + PEER_BREAKER_COOLDOWN;
        assert_eq!(h.admit(later), Admission::Attempt);
        assert_eq!(h.admit(later), Admission::Open, "only one probe at a time");
        h.on_failure(later);
        assert!(
            matches!(h.state(), BreakerState::Open { .. }),
            "a failed probe reopens"
        );
        let probe = later + PEER_BREAKER_COOLDOWN;
        assert_eq!(h.admit(probe), Admission::Attempt);
        h.on_success();
        assert_eq!(h.state(), BreakerState::Closed);
        assert_eq!(h.admit(probe), Admission::Attempt);
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(1), PEER_BACKOFF_INITIAL);
        assert_eq!(backoff(2), PEER_BACKOFF_INITIAL * 2);
        assert_eq!(backoff(u32::MAX), PEER_BACKOFF_MAX);
    }
}
