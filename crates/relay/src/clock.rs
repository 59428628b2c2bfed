//! The relay's clock: the one place it learns the time, given to it so that tests can run the
//! relay on tokio's paused clock and never wait for a timer in real time.

use sipguard_policy::Timestamp;
use std::time::SystemTime;

/// Where the relay reads the time of day it hands the policy.
pub trait Clock: Send + Sync + 'static {
    /// Now, as wall-clock milliseconds (ban expiries are written to disk in these).
    fn now(&self) -> Timestamp;
}

/// The system's wall clock: what sipguard runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system(SystemTime::now())
    }
}

/// Wall-clock time that advances with tokio's clock: in a test with `start_paused`, it moves
/// only when the test advances tokio's time, together with every timer of the relay.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: Timestamp,
    instant: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads the wall time now and follows tokio's clock from here.
    pub fn new() -> Self {
        TokioClock {
            wall: Timestamp::from_system(SystemTime::now()),
            instant: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.wall + self.instant.elapsed()
    }
}
