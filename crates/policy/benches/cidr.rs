//! Lookup in 100,000 networks: the allowlist's `CidrSet` (one hash probe per distinct prefix
//! length), the blocklist feeds' `Feeds` (one binary search over merged ranges) and a linear
//! scan of the same networks, in the same run, for an address inside one of them and for one
//! outside all.

use criterion::{criterion_group, criterion_main, Criterion};
use ipnet::{IpNet, Ipv4Net};
use sipguard_policy::{CidrSet, Feeds};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

/// 100,000 IPv4 networks of lengths /16 to /32, spread over 10.0.0.0/8 by a fixed
/// pseudo-random sequence (a 32-bit LCG), so every run measures the same set.
fn networks() -> Vec<IpNet> {
    let mut state = 0x2545_f491_u32;
    (0..100_000)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let len = 16 + (state >> 27) as u8 % 17;
            let addr = Ipv4Addr::from(0x0a00_0000 | (state & 0x00ff_ffff));
            IpNet::V4(Ipv4Net::new(addr, len).unwrap().trunc())
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let nets = networks();
    let set: CidrSet = nets.iter().copied().collect();
    let feeds = Feeds::new(vec![(Default::default(), nets.clone())]);
    let inside = match nets[77_777] {
        IpNet::V4(net) => IpAddr::V4(net.addr()),
        IpNet::V6(_) => unreachable!(),
    };
    let outside: IpAddr = "203.0.113.9".parse().unwrap();
    assert!(set.contains(inside) && !set.contains(outside));
    assert!(feeds.lookup(inside) != 0 && feeds.lookup(outside) == 0);

    let mut group = c.benchmark_group("allowlist of 100k CIDRs");
    for (name, addr) in [("listed address", inside), ("unlisted address", outside)] {
        group.bench_function(format!("CidrSet, {name}"), |b| {
            b.iter(|| set.contains(black_box(addr)))
        });
        group.bench_function(format!("Feeds, {name}"), |b| {
            b.iter(|| feeds.lookup(black_box(addr)))
        });
        group.bench_function(format!("linear scan (baseline), {name}"), |b| {
            b.iter(|| nets.iter().any(|net| net.contains(&black_box(addr))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
