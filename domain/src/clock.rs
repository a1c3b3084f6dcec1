//! The time, as the rules that depend on it read it (sessions, rate limits, second-factor windows,
//! access tokens, signing keys): the system's clock in production, a clock a test moves by hand to
//! see a session, a ceremony, a code or a retired key run out without waiting. (Stores that keep
//! time on a server of their own, Redis's expiries and its rate-limit script, go by that server's
//! clock.) Aggregates never read it: their commands carry the time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;

    /// The time now in Unix milliseconds.
    fn now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system's clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that stands still until it is moved.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock showing the system's time now (to the millisecond), from then on moved by hand.
    pub fn starting_now() -> Arc<Self> {
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_default();
        Arc::new(Self { now: Mutex::new(now) })
    }

    /// Moves the clock on by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *now += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_moved() {
        let clock = ManualClock::starting_now();
        let start = clock.now();
        assert_eq!(clock.now(), start, "reading it does not move it");
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - start, chrono::Duration::seconds(90));
        assert_eq!(clock.now_ms() - start.timestamp_millis(), 90_000);
    }
}
