//! End-to-end tests: sipguard in-process on port 0, between real SIP peers over loopback.
//!
//! SIPp plays the phones and callers, Kamailio (tests/fixtures/kamailio/pbx.cfg) the PBX, a bare
//! UDP socket the PBX tap where the exact bytes forwarded matter. Every test starts its own
//! peers on free ports and 127.0.0.x addresses, so the tests run in parallel. `deploy` checks
//! deploy/ with the tools that read it (systemd-analyze, promtool); `deployment` runs a real
//! Asterisk configured with deploy/asterisk behind sipguard.

mod support;

mod asterisk;
mod attacks;
mod cluster;
mod deploy;
mod deployment;
mod detection;
mod dial;
mod feeds;
mod inspection;
mod kernel;
mod ops;
mod outbound;
mod relay;
mod tcp;
