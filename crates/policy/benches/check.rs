//! Cost of the full policy check per datagram: a clean REGISTER, a scanner packet, a packet from
//! a banned source, and an allowlisted carrier's INVITE. The baseline in the same run is the
//! inspection alone (`SipView::parse`), so the figure for the rules is the difference.

use criterion::{criterion_group, criterion_main, Criterion};
use sipguard_policy::{
    AllowGroup, Policy, PolicyConfig, Timestamp, Transport, DEFAULT_USER_AGENTS,
};
use sipguard_sip::SipView;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

const REGISTER: &[u8] = include_bytes!("../../sip/benches/datagrams/register.sip");

const SCANNER: &[u8] = include_bytes!("../../sip/benches/datagrams/scanner.sip");

fn bench(c: &mut Criterion) {
    // A hundred user-agent patterns: the automaton's cost must not grow with them.
    let mut config = PolicyConfig::default();
    config
        .scanner_user_agents
        .extend((DEFAULT_USER_AGENTS.len()..100).map(|i| format!("bad-tool-{i}")));
    config.allowlist = vec![AllowGroup::new(
        "listed",
        ["198.51.100.0/24".parse().unwrap()],
    )];
    // Benchmarks repeat one source thousands of times a second: no flood bans here.
    config.flood.threshold = u32::MAX;
    let policy = Policy::new(config).unwrap();
    let now = Timestamp::from_millis(1_700_000_000_000);
    let phone: IpAddr = "203.0.113.7".parse().unwrap();
    let banned: IpAddr = "203.0.113.200".parse().unwrap();
    let carrier: IpAddr = "198.51.100.9".parse().unwrap();
    policy.ban_manually(banned, Duration::from_secs(3600), None, now);
    let scanners: Vec<IpAddr> = (0..=255u8).map(|i| IpAddr::from([192, 0, 2, i])).collect();

    let mut group = c.benchmark_group("policy");
    group.bench_function("inspection only (baseline)", |b| {
        b.iter(|| SipView::parse(black_box(REGISTER)).is_ok())
    });
    group.bench_function("clean REGISTER", |b| {
        b.iter(|| {
            policy
                .check(black_box(REGISTER), phone, Transport::Datagram, now)
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
                .check(black_box(SCANNER), source, Transport::Datagram, now)
                .verdict;
            policy.lift(source);
            verdict
        })
    });
    group.bench_function("banned source", |b| {
        b.iter(|| {
            policy
                .check(black_box(REGISTER), banned, Transport::Datagram, now)
                .verdict
        })
    });
    group.bench_function("allowlisted carrier", |b| {
        b.iter(|| {
            policy
                .check(black_box(REGISTER), carrier, Transport::Datagram, now)
                .verdict
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
