//! What the policy's test files share: addresses from text, a clock in seconds, a policy with
//! one setting changed.

use sipguard_policy::{Policy, PolicyConfig, Timestamp};
use std::net::IpAddr;
use std::time::Duration;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `secs` seconds after a fixed instant.
pub fn at(secs: u64) -> Timestamp {
    Timestamp::from_millis(1_700_000_000_000) + Duration::from_secs(secs)
}

/// The default policy with `tune` applied.
pub fn policy(tune: impl FnOnce(&mut PolicyConfig)) -> Policy {
    let mut config = PolicyConfig::default();
    tune(&mut config);
    Policy::new(config).unwrap()
}
