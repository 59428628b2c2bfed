//! Blocklist feeds in the request check: a listed source is dropped before its message is
//! parsed, like a banned one; an allowlisted or trusted source a feed lists is still admitted,
//! and either way the listing feed counts it; a new set replaces the old whole.

use sipguard_policy::{AllowGroup, DropReason, FeedTally, Feeds, IpNet, Transport, Verdict};
use std::sync::Arc;
use std::time::Duration;

mod support;
use support::{at, ip, policy};

const SCANNER: &str = "192.0.2.66";
const CARRIER: &str = "198.51.100.9";
const OFFICE: &str = "203.0.113.7";

const OPTIONS: &[u8] = b"OPTIONS sip:pbx.example.com SIP/2.0\r\n\
    Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nFrom: <sip:a@example.com>;tag=f\r\n\
    To: <sip:b@example.com>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nUser-Agent: Yealink\r\n\
    Content-Length: 0\r\n\r\n";

fn feed(nets: &[&str]) -> (Arc<FeedTally>, Vec<IpNet>) {
    (
        Arc::default(),
        nets.iter()
            .map(|net| net.parse().unwrap_or_else(|_| ip(net).into()))
            .collect(),
    )
}

#[test]
fn a_listed_source_is_dropped_before_parsing_and_counted_by_its_feed() {
    let p = policy(|_| {});
    let voipbl = feed(&["192.0.2.0/24"]);
    let tally = Arc::clone(&voipbl.0);
    p.set_feeds(Feeds::new(vec![voipbl]));
    for message in [&b"junk"[..], OPTIONS] {
        assert_eq!(
            p.check(message, ip(SCANNER), Transport::Datagram, at(0))
                .verdict,
            Verdict::Drop(DropReason::Feed),
            "not parsed, so not garbage either"
        );
    }
    assert_eq!(p.check_source(ip(SCANNER), at(0)), Err(DropReason::Feed));
    assert_eq!((tally.dropped(), tally.admitted()), (3, 0));
    // Nothing counted against the source: it is not banned, and no rule saw it.
    assert!(!p.is_banned(ip(SCANNER), at(1)));
    assert_eq!(p.stats().sources, 0);
    // An unlisted neighbour goes on.
    assert!(matches!(
        p.check(OPTIONS, ip(OFFICE), Transport::Datagram, at(0))
            .verdict,
        Verdict::Forward(_)
    ));
}

#[test]
fn an_allowlisted_carrier_a_feed_lists_is_admitted_and_counted() {
    let p = policy(|c| {
        c.allowlist = vec![AllowGroup::new(
            "listed",
            ["198.51.100.0/28".parse().unwrap()],
        )]
    });
    let (community, other) = (feed(&["198.51.100.0/24"]), feed(&["198.51.100.9"]));
    let tallies = [Arc::clone(&community.0), Arc::clone(&other.0)];
    p.set_feeds(Feeds::new(vec![community, other]));
    assert!(matches!(
        p.check(OPTIONS, ip(CARRIER), Transport::Datagram, at(0))
            .verdict,
        Verdict::Forward(_)
    ));
    assert_eq!(p.check_source(ip(CARRIER), at(0)), Ok(()));
    for tally in tallies {
        assert_eq!((tally.dropped(), tally.admitted()), (0, 2));
    }
}

#[test]
fn a_trusted_source_a_feed_lists_is_admitted() {
    let p = policy(|_| {});
    p.set_feeds(Feeds::new(vec![feed(&[OFFICE])]));
    assert_eq!(
        p.check(OPTIONS, ip(OFFICE), Transport::Datagram, at(0))
            .verdict,
        Verdict::Drop(DropReason::Feed)
    );
    assert!(p.restore_trust(ip(OFFICE), at(3600), at(1)));
    assert!(matches!(
        p.check(OPTIONS, ip(OFFICE), Transport::Datagram, at(2))
            .verdict,
        Verdict::Forward(_)
    ));
}

#[test]
fn a_new_set_replaces_the_old_and_an_entry_it_drops_is_admitted_again() {
    let p = policy(|_| {});
    p.set_feeds(Feeds::new(vec![feed(&[SCANNER, "2001:db8::/32"])]));
    assert_eq!(p.feeds().entries(), 2);
    assert_eq!(
        p.check_source(ip("2001:db8::7"), at(0)),
        Err(DropReason::Feed)
    );
    p.set_feeds(Feeds::new(vec![feed(&["2001:db8::/32"])]));
    assert_eq!(p.check_source(ip(SCANNER), at(1)), Ok(()));
    assert_eq!(
        p.check_source(ip("2001:db8::7"), at(1)),
        Err(DropReason::Feed)
    );
    // A ban still comes first, and outlasts the feed.
    assert!(p
        .ban_manually(ip(SCANNER), Duration::from_secs(60), None, at(2))
        .is_some());
    assert_eq!(p.check_source(ip(SCANNER), at(3)), Err(DropReason::Banned));
}
