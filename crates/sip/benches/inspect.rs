//! Cost of inspecting typical datagrams (`SipView::parse`) against a full `rsip` parse of the same
//! bytes in the same run: a REGISTER with credentials, an INVITE with an SDP body, and a 200 OK.

use criterion::{criterion_group, criterion_main, Criterion};
use sipguard_sip::{strict, SipView};
use std::hint::black_box;

/// What a desk phone sends to refresh its registration after the challenge (640 bytes).
const REGISTER: &[u8] = include_bytes!("datagrams/register.sip");

const INVITE: &[u8] = include_bytes!("datagrams/invite-sdp.sip");

const OK: &[u8] = include_bytes!("datagrams/ok-200.sip");

fn bench(c: &mut Criterion) {
    for (name, datagram) in [
        ("REGISTER", REGISTER),
        ("INVITE with SDP", INVITE),
        ("200 OK", OK),
    ] {
        assert!(SipView::parse(datagram).is_ok(), "{name} must inspect");
        assert!(strict::parse(datagram).is_ok(), "{name} must parse fully");
        let mut group = c.benchmark_group(format!("inspect {name}"));
        group.bench_function("SipView::parse", |b| {
            b.iter(|| SipView::parse(black_box(datagram)).is_ok())
        });
        group.bench_function("rsip full parse (baseline)", |b| {
            b.iter(|| strict::parse(black_box(datagram)).is_ok())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
