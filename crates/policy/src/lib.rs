//! sipguard's decisions, pure and I/O-free.
//!
//! [`Policy::check_datagram`] runs the request pipeline of DESIGN.md section 2 over one received
//! datagram, cheapest check first, and returns a [`Verdict`]. Nothing here reads a clock, touches
//! a socket or records a metric: time comes in as a [`Timestamp`], and the caller turns verdicts
//! into I/O and counters. That keeps every rule testable with time passed in.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cidr;
mod time;
mod verdict;

pub use cidr::CidrSet;
pub use time::Timestamp;
pub use verdict::{DropReason, Verdict};

use ipnet::IpNet;
use sipguard_sip::{is_keepalive, SipView};
use std::net::IpAddr;

/// Validated policy settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Sources that are never let through, whatever they send.
    pub deny: Vec<IpNet>,
    /// Datagrams longer than this are dropped before parsing.
    pub max_message_size: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig { deny: Vec::new(), max_message_size: 16 * 1024 }
    }
}

/// The request pipeline with its configuration.
#[derive(Debug)]
pub struct Policy {
    deny: CidrSet,
    max_message_size: usize,
}

impl Policy {
    /// Builds the pipeline from validated settings.
    pub fn new(config: &PolicyConfig) -> Self {
        Policy { deny: config.deny.iter().copied().collect(), max_message_size: config.max_message_size }
    }

    /// Judges one datagram from `source`: the source checks before any parsing, then framing
    /// and inspection.
    pub fn check_datagram<'a>(&self, datagram: &'a [u8], source: IpAddr, _now: Timestamp) -> Verdict<'a> {
        if self.deny.contains(source) {
            return Verdict::Drop(DropReason::Denied);
        }
        if datagram.len() > self.max_message_size {
            return Verdict::Drop(DropReason::TooLarge);
        }
        if is_keepalive(datagram) {
            return Verdict::Keepalive;
        }
        match SipView::parse(datagram) {
            Ok(view) => Verdict::Forward(view),
            Err(sipguard_sip::ParseError::NotSip) => Verdict::Drop(DropReason::NotSip),
            Err(_) => Verdict::Drop(DropReason::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &[u8] = b"REGISTER sip:192.0.2.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-1;rport\r\n\
From: <sip:1001@192.0.2.1>;tag=a1\r\n\
To: <sip:1001@192.0.2.1>\r\n\
Call-ID: reg-1@198.51.100.7\r\n\
CSeq: 1 REGISTER\r\n\
Content-Length: 0\r\n\r\n";

    fn policy(deny: &[&str]) -> Policy {
        Policy::new(&PolicyConfig {
            deny: deny.iter().map(|net| net.parse().unwrap()).collect(),
            ..PolicyConfig::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn clean_register_is_forwarded_with_its_view() {
        let verdict = policy(&[]).check_datagram(REGISTER, ip("198.51.100.7"), Timestamp::ZERO);
        let Verdict::Forward(view) = verdict else { panic!("expected Forward, got {verdict:?}") };
        assert_eq!(view.from.user, Some(&b"1001"[..]));
    }

    #[test]
    fn denied_source_is_dropped_before_parsing() {
        let p = policy(&["198.51.100.0/24", "2001:db8::/32"]);
        assert_eq!(p.check_datagram(REGISTER, ip("198.51.100.7"), Timestamp::ZERO), Verdict::Drop(DropReason::Denied));
        assert_eq!(p.check_datagram(b"junk", ip("2001:db8::1"), Timestamp::ZERO), Verdict::Drop(DropReason::Denied));
        assert!(matches!(p.check_datagram(REGISTER, ip("203.0.113.1"), Timestamp::ZERO), Verdict::Forward(_)));
    }

    #[test]
    fn garbage_and_broken_sip_are_dropped_with_distinct_reasons() {
        let p = policy(&[]);
        let src = ip("203.0.113.9");
        assert_eq!(p.check_datagram(b"\x16\x03\x01 hello", src, Timestamp::ZERO), Verdict::Drop(DropReason::NotSip));
        let no_call_id = String::from_utf8_lossy(REGISTER).replace("Call-ID: reg-1@198.51.100.7\r\n", "");
        assert_eq!(p.check_datagram(no_call_id.as_bytes(), src, Timestamp::ZERO), Verdict::Drop(DropReason::Malformed));
    }

    #[test]
    fn oversized_datagram_is_dropped_and_crlf_is_a_keepalive() {
        let p = Policy::new(&PolicyConfig { max_message_size: 64, ..PolicyConfig::default() });
        let src = ip("203.0.113.9");
        assert_eq!(p.check_datagram(REGISTER, src, Timestamp::ZERO), Verdict::Drop(DropReason::TooLarge));
        assert_eq!(p.check_datagram(b"\r\n\r\n", src, Timestamp::ZERO), Verdict::Keepalive);
    }
}
