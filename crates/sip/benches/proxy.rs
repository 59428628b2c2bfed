//! Cost of the outbound path's rewriting (`sipguard_sip::proxy`) against the parse every message
//! gets anyway, in the same run: what turning the outbound path on adds to every inbound request
//! (the Route scan, `strip_own_routes`, on a REGISTER that has no Route), and what relaying an
//! INVITE for the PBX and its 200 costs.

use criterion::{criterion_group, criterion_main, Criterion};
use sipguard_sip::proxy::{forward_request, forward_response, strip_own_routes, Identity};
use sipguard_sip::SipView;
use std::hash::RandomState;
use std::hint::black_box;

const REGISTER: &[u8] = include_bytes!("datagrams/register.sip");

/// A softphone's INVITE with an SDP body (its Request-URI is made an IP address below).
const INVITE: &[u8] = include_bytes!("datagrams/invite-sdp.sip");

fn bench(c: &mut Criterion) {
    let me = Identity {
        public: "203.0.113.5:5060".parse().unwrap(),
        inside: "127.0.0.1:5070".parse().unwrap(),
    };
    let key = RandomState::new();
    let pbx = "127.0.0.1:5080".parse().unwrap();

    let mut group = c.benchmark_group("outbound on: an inbound REGISTER");
    group.bench_function("SipView::parse (baseline)", |b| {
        b.iter(|| SipView::parse(black_box(REGISTER)).is_ok())
    });
    group.bench_function("strip_own_routes (no Route)", |b| {
        b.iter(|| strip_own_routes(black_box(REGISTER), &me).is_none())
    });
    group.finish();

    // To a carrier by IP address, as the outbound path needs.
    let invite = String::from_utf8(INVITE.to_vec()).unwrap().replacen(
        "@pbx.example.com SIP/2.0",
        "@198.51.100.7 SIP/2.0",
        1,
    );
    let view = SipView::parse(invite.as_bytes()).unwrap();
    let relayed = forward_request(&view, pbx, &me, &key).expect("the INVITE relays");
    let ok = String::from_utf8(relayed.message.clone())
        .unwrap()
        .replacen("INVITE sip:", "SIP/2.0 200 OK\r\nX-Was: sip:", 1);
    let ok_view = SipView::parse(ok.as_bytes()).unwrap();
    assert!(forward_response(&ok_view, &me, &key).is_some());
    let mut group = c.benchmark_group("outbound: an INVITE with SDP and its 200");
    group.bench_function("SipView::parse (baseline)", |b| {
        b.iter(|| SipView::parse(black_box(invite.as_bytes())).is_ok())
    });
    group.bench_function("forward_request", |b| {
        b.iter(|| forward_request(black_box(&view), pbx, &me, &key).is_ok())
    });
    group.bench_function("forward_response", |b| {
        b.iter(|| forward_response(black_box(&ok_view), &me, &key).is_some())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
