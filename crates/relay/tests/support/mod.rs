//! Helpers the relay's integration tests share.

pub mod certs;
pub mod metrics;
