//! What the end-to-end tests stand on: free ports, waiting with a deadline, child processes
//! stopped on drop, and the peers (Kamailio, SIPp, sipvicious, an in-process sipguard, a phone
//! that keeps registering, the sipguard binary as a child process with a /metrics scraper).

mod daemon;
mod kamailio;
mod phone;
mod process;
mod sipguard;
mod sipp;
mod sipvicious;
mod wait;

pub use daemon::{bans_cli, Daemon, DaemonConfig, Scrape};
pub use kamailio::{Kamailio, PbxRequest, USERS};
pub use phone::Phone;
pub use sipguard::Sipguard;
pub use sipp::Sipp;
pub use sipvicious::{SipVicious, Tool};
pub use wait::{free_udp_addr, free_udp_port, poll_until, udp_port_bound};

use std::path::PathBuf;

/// A file under tests/fixtures.
pub fn fixture(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative)
}

/// The password pbx.cfg has for `user`.
pub fn password(user: &str) -> &'static str {
    USERS
        .iter()
        .find(|(u, _)| *u == user)
        .map(|(_, p)| *p)
        .expect("a user pbx.cfg knows")
}
