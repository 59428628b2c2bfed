//! Cost of one packet from a new source once every per-source table is full, against the same
//! packet from a known source, in the same run: a flood with a new forged address per packet
//! must cost about what traffic from known sources does. Tables at the default cap (100,000),
//! filled twice over before measuring, so every new source makes its table evict.

use criterion::{criterion_group, criterion_main, Criterion};
use sipguard_policy::{Policy, PolicyConfig, Timestamp, Transport};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

const REGISTER: &[u8] = include_bytes!("../../sip/benches/datagrams/register.sip");

const SCANNER: &[u8] = include_bytes!("../../sip/benches/datagrams/scanner.sip");

/// Source number `n`: distinct for every `n` below 2^32.
fn source(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

fn bench(c: &mut Criterion) {
    let mut config = PolicyConfig::default();
    // A known source repeats thousands of times a second: no flood bans here.
    config.flood.threshold = u32::MAX;
    let cap = config.max_tracked_sources as u32;
    let policy = Policy::new(config).unwrap();
    let now = Timestamp::from_millis(1_700_000_000_000);
    let known: IpAddr = "203.0.113.7".parse().unwrap();
    let scanner: IpAddr = "192.0.2.66".parse().unwrap();
    // Full tables: the sources (REGISTERs) and the bans and offences (scanner packets).
    let mut next = 1u32 << 24;
    for _ in 0..2 * cap {
        let _ = policy.check(REGISTER, source(next), Transport::Datagram, now);
        let _ = policy.check(SCANNER, source(next + 1), Transport::Datagram, now);
        next += 2;
    }
    let _ = policy.check(SCANNER, scanner, Transport::Datagram, now);

    let mut group = c.benchmark_group("full tables");
    let cases = [
        ("REGISTER, known source", REGISTER, Some(known)),
        ("REGISTER, a new source per packet", REGISTER, None),
        ("scanner, known source (banned)", SCANNER, Some(scanner)),
        ("scanner, a new source per packet (bans)", SCANNER, None),
    ];
    for (name, datagram, from) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                let from = from.unwrap_or_else(|| {
                    next = next.wrapping_add(1);
                    source(next)
                });
                policy
                    .check(black_box(datagram), from, Transport::Datagram, now)
                    .verdict
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
