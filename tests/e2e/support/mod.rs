//! What the end-to-end tests stand on: free ports, waiting with a deadline, child processes
//! stopped on drop, and the peers (Kamailio, SIPp, an in-process sipguard).

mod kamailio;
mod process;
mod sipguard;
mod sipp;
mod wait;

pub use kamailio::{Kamailio, USERS};
pub use sipguard::Sipguard;
pub use sipp::Sipp;
pub use wait::{free_udp_addr, free_udp_port, poll_until, udp_port_bound};

use std::path::PathBuf;

/// A file under tests/fixtures.
pub fn fixture(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative)
}
