//! Cost of the full policy check per datagram: a clean REGISTER, a scanner packet, a packet from
//! a banned source, and an allowlisted carrier's INVITE. The baseline in the same run is the
//! inspection alone (`SipView::parse`), so the figure for the rules is the difference.

use criterion::{criterion_group, criterion_main, Criterion};
use sipguard_policy::{Policy, PolicyConfig, Timestamp};
use sipguard_sip::SipView;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

const REGISTER: &[u8] = b"REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.7:5060;branch=z9hG4bK-524287-1---a1b2c3d4;rport\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:1001@203.0.113.7:5060;rinstance=8f2a>\r\n\
To: <sip:1001@pbx.example.com>\r\n\
From: <sip:1001@pbx.example.com>;tag=5f3c2b1a\r\n\
Call-ID: 4f7d2a9c81e0b3d5@203.0.113.7\r\n\
CSeq: 2 REGISTER\r\n\
Expires: 3600\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Authorization: Digest username=\"1001\", realm=\"pbx\", nonce=\"6a7b8c9d\", uri=\"sip:pbx.example.com\", response=\"0123456789abcdef0123456789abcdef\", algorithm=MD5\r\n\
Content-Length: 0\r\n\r\n";

const SCANNER: &[u8] = b"OPTIONS sip:100@198.51.100.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.66:5060;branch=z9hG4bK-2874018223;rport\r\n\
Max-Forwards: 70\r\n\
To: \"sipvicious\"<sip:100@1.1.1.1>\r\n\
From: \"sipvicious\"<sip:100@1.1.1.1>;tag=6631326230376239\r\n\
User-Agent: friendly-scanner\r\n\
Call-ID: 612379384913283927181\r\n\
Contact: sip:100@192.0.2.66:5060\r\n\
CSeq: 1 OPTIONS\r\n\
Accept: application/sdp\r\n\
Content-Length: 0\r\n\r\n";

fn bench(c: &mut Criterion) {
    // A hundred user-agent patterns: the automaton's cost must not grow with them.
    let mut config = PolicyConfig::default();
    config
        .scanner_user_agents
        .extend((0..82).map(|i| format!("bad-tool-{i}")));
    config.allowlist = vec!["198.51.100.0/24".parse().unwrap()];
    // Benchmarks repeat one source thousands of times a second: no flood bans here.
    config.flood.threshold = u32::MAX;
    let policy = Policy::new(config).unwrap();
    let now = Timestamp::from_millis(1_700_000_000_000);
    let phone: IpAddr = "203.0.113.7".parse().unwrap();
    let banned: IpAddr = "203.0.113.200".parse().unwrap();
    let carrier: IpAddr = "198.51.100.9".parse().unwrap();
    policy.ban_manually(banned, Duration::from_secs(3600), now);
    let scanners: Vec<IpAddr> = (0..=255u8).map(|i| IpAddr::from([192, 0, 2, i])).collect();

    let mut group = c.benchmark_group("policy");
    group.bench_function("inspection only (baseline)", |b| {
        b.iter(|| SipView::parse(black_box(REGISTER)).is_ok())
    });
    group.bench_function("clean REGISTER", |b| {
        b.iter(|| {
            policy
                .check_datagram(black_box(REGISTER), phone, now)
                .verdict
        })
    });
    group.bench_function("scanner packet (first sight, bans)", |b| {
        // Each iteration a fresh source, lifted again so every packet goes the full way.
        let mut i = 0;
        b.iter(|| {
            let source = scanners[i % scanners.len()];
            i += 1;
            let verdict = policy
                .check_datagram(black_box(SCANNER), source, now)
                .verdict;
            policy.lift(source);
            verdict
        })
    });
    group.bench_function("banned source", |b| {
        b.iter(|| {
            policy
                .check_datagram(black_box(REGISTER), banned, now)
                .verdict
        })
    });
    group.bench_function("allowlisted carrier", |b| {
        b.iter(|| {
            policy
                .check_datagram(black_box(REGISTER), carrier, now)
                .verdict
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
