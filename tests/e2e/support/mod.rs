//! What the end-to-end tests stand on: free ports, waiting with a deadline, child processes
//! stopped on drop, and the peers (Kamailio, SIPp, sipvicious, an in-process sipguard, a phone
//! that keeps registering, the sipguard binary as a child process with a /metrics scraper), and
//! what no packaged peer does: a scriptable SIP client with digest auth, a phone on it that
//! answers calls and qualify, password crackers built on it, datagrams with forged sources, and a
//! network namespace for more IPv6 addresses.

pub mod asterisk;
mod cracker;
mod daemon;
mod dnsmasq;
mod feed_server;
mod kamailio;
mod netns;
mod phone;
mod process;
mod redis;
mod sipguard;
mod sipp;
mod sipvicious;
mod softphone;
mod spoof;
mod stunnel;
mod ua;
mod wait;

/// Test certificates, shared with the relay's TLS tests.
#[path = "../../../crates/relay/tests/support/certs.rs"]
pub mod certs;
/// Counters read in-process, shared with the relay's tests.
#[path = "../../../crates/relay/tests/support/metrics.rs"]
pub mod metrics;

pub use cracker::{Cracked, Cracker, Style};
pub use daemon::{http_exchange, Daemon, DaemonConfig, HttpReply, Scrape};
pub use dnsmasq::Dnsmasq;
pub use feed_server::FeedServer;
pub use kamailio::{Kamailio, PbxRequest, USERS};
pub use netns::in_private_namespace;
pub use phone::Phone;
pub use redis::{Redis, RedisTls};
pub use sipguard::Sipguard;
pub use sipp::{qualify, Sipp, SippProcess, SippRun};
pub use sipvicious::{SipVicious, Tool};
pub use softphone::{Call, Softphone};
pub use spoof::Spoofer;
pub use stunnel::Stunnel;
pub use ua::{call_id, Registration, Ua};
pub use wait::{
    free_tcp_addr, free_udp_addr, free_udp_port, poll_until, tcp_port_listening, udp_port_bound,
};

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
