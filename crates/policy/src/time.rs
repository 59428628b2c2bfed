//! Time as the policy sees it: a value passed in by the caller, never read from a clock here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. Wall-clock based so that ban expiries can be written to
/// disk and mean the same after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The epoch; a convenient origin in tests.
    pub const ZERO: Timestamp = Timestamp(0);

    /// A timestamp `millis` after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Converts a wall-clock reading; times before the epoch become the epoch.
    pub fn from_system(time: SystemTime) -> Self {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;

    fn add(self, rhs: Duration) -> Timestamp {
        let millis = u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(millis))
    }
}

/// A number of events allowed per wall-clock second, shared by threads without a lock: the
/// second and the count taken in it packed in one atomic word.
#[derive(Debug)]
pub struct PerSecond {
    limit: u32,
    /// The second in the high half, the events taken in it in the low half.
    taken: AtomicU64,
}

impl PerSecond {
    /// A budget of `limit` events a second.
    pub const fn new(limit: u32) -> Self {
        PerSecond {
            limit,
            taken: AtomicU64::new(0),
        }
    }

    /// Takes one event from the budget of the second `now` falls in; false when it is spent.
    /// Threads that see the second turn at once may each start it afresh, so a second can
    /// allow a few more than `limit`, never fewer.
    pub fn take(&self, now: Timestamp) -> bool {
        let second = now.as_millis() / 1000;
        let taken = self.taken.load(Ordering::Relaxed);
        if taken >> 32 == second {
            self.taken.fetch_add(1, Ordering::Relaxed) & u64::from(u32::MAX) < u64::from(self.limit)
        } else {
            self.taken.store(second << 32 | 1, Ordering::Relaxed);
            self.limit > 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_allows_its_limit_each_second_and_starts_afresh_in_the_next() {
        let budget = PerSecond::new(3);
        let second = |s: u64, ms: u64| Timestamp::from_millis(s * 1000 + ms);
        let taken: Vec<bool> = (0..5).map(|i| budget.take(second(7, i * 100))).collect();
        assert_eq!(taken, [true, true, true, false, false]);
        assert!(budget.take(second(8, 0)), "a new second has its own budget");
        assert!(
            !PerSecond::new(0).take(second(9, 0)),
            "a zero budget allows nothing"
        );
    }
}
