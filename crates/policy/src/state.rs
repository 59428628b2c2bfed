//! Per-source and per-(source, username) evidence, with windows opened by the first event.

use crate::bounded::Expiring;
use crate::time::Timestamp;
use std::time::Duration;

/// Counts events in a window that opens at the first event and closes `window` later; the next
/// event after that opens a new one.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Window {
    pub start: Timestamp,
    pub count: u32,
}

impl Window {
    /// Counts one event at `now` and returns the count in the current window.
    pub fn hit(&mut self, now: Timestamp, window: Duration) -> u32 {
        if self.count == 0 || now.since(self.start) >= window {
            *self = Window {
                start: now,
                count: 0,
            };
        }
        self.count = self.count.saturating_add(1);
        self.count
    }

    fn live(&self, now: Timestamp, window: Duration) -> bool {
        self.count > 0 && now.since(self.start) < window
    }
}

/// Distinct usernames a source was challenged or refused for, none of which succeeded.
#[derive(Debug, Clone, Default)]
pub(crate) struct Probes {
    pub start: Timestamp,
    /// Keyed hashes of the usernames; never more than the rule's threshold.
    users: Vec<u64>,
}

impl Probes {
    /// Adds a failing username and returns how many distinct ones the window holds.
    pub fn add(&mut self, user: u64, now: Timestamp, window: Duration, cap: usize) -> usize {
        if self.users.is_empty() || now.since(self.start) >= window {
            self.users.clear();
            self.start = now;
        }
        if !self.users.contains(&user) && self.users.len() < cap {
            self.users.push(user);
        }
        self.users.len()
    }

    /// A username that succeeded is no longer evidence of enumeration.
    pub fn succeeded(&mut self, user: u64) {
        self.users.retain(|&u| u != user);
    }
}

/// Evidence kept per source address.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceState {
    pub flood: Window,
    pub invite_failures: Window,
    pub probes: Probes,
    /// The longest window of any rule: past it, nothing here is evidence any more.
    pub horizon: Duration,
}

impl SourceState {
    pub fn new(horizon: Duration) -> Self {
        SourceState {
            horizon,
            ..SourceState::default()
        }
    }
}

impl Expiring for SourceState {
    fn expired(&self, now: Timestamp) -> bool {
        let last = self
            .flood
            .start
            .max(self.invite_failures.start)
            .max(self.probes.start);
        now.since(last) >= self.horizon
    }
    fn worth(&self, now: Timestamp) -> u64 {
        // Failures and probes are slow to gather and cheap to forge only in bulk; a flood
        // window from a spoofed address is the first thing to let go.
        let live = |w: &Window| {
            if w.live(now, self.horizon) {
                u64::from(w.count)
            } else {
                0
            }
        };
        live(&self.invite_failures) * 16 + self.probes.users.len() as u64 * 16 + live(&self.flood)
    }
}

/// Evidence kept per (source, username).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UserState {
    pub register_failures: Window,
    pub blocked_until: Timestamp,
    pub horizon: Duration,
}

impl Expiring for UserState {
    fn expired(&self, now: Timestamp) -> bool {
        now >= self.blocked_until && now.since(self.register_failures.start) >= self.horizon
    }
    fn worth(&self, now: Timestamp) -> u64 {
        self.blocked_until.since(now).as_secs() + u64::from(self.register_failures.count) * 16
    }
}

/// A source that authenticated successfully, until when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trust {
    pub until: Timestamp,
}

impl Expiring for Trust {
    fn expired(&self, now: Timestamp) -> bool {
        now >= self.until
    }
    fn worth(&self, now: Timestamp) -> u64 {
        self.until.since(now).as_secs()
    }
}
