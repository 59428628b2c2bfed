//! Cost of the toll-fraud rules in the policy check: the same messages through a policy with
//! the defaults (no dialling plan, no country database) and through one with a dialling plan,
//! listed countries and premium ranges, call rates, and a country database of 20,000 networks
//! loaded. An OPTIONS shows what other requests pay for them (one method comparison); a REGISTER
//! pays a database lookup; an INVITE that starts a call pays normalisation, classification, the
//! lookup and the rate tables.

use criterion::{criterion_group, criterion_main, Criterion};
use sipguard_policy::geo::{write_country_db, Countries};
use sipguard_policy::{
    Access, ClassRule, CountryDb, DialPlan, Policy, PolicyConfig, Prefix, Timestamp, Transport,
};
use std::hint::black_box;
use std::net::IpAddr;

const REGISTER: &[u8] = include_bytes!("../../sip/benches/datagrams/register.sip");
const INVITE: &str = include_str!("../../sip/benches/datagrams/invite-sdp.sip");

/// 20,000 /24 networks spread over the IPv4 space, in five countries; the phone's among them.
fn database() -> CountryDb {
    let mut nets: Vec<(ipnet::IpNet, &str)> = (0..20_000u32)
        .map(|i| {
            let base = i.wrapping_mul(2_654_435_761) & 0xffff_ff00;
            let net = ipnet::Ipv4Net::new(base.into(), 24).unwrap();
            (net.into(), ["FR", "DE", "GB", "NG", "US"][i as usize % 5])
        })
        .collect();
    nets.push(("203.0.113.0/24".parse().unwrap(), "GB"));
    CountryDb::from_bytes(write_country_db(&nets, 1)).unwrap()
}

fn policies() -> (Policy, Policy) {
    let mut plain = PolicyConfig::default();
    // Benchmarks repeat one source thousands of times a second: no flood, no rate limits.
    plain.flood.threshold = u32::MAX;
    plain.calls.per_source_per_minute = 0;
    plain.calls.per_user_per_minute = 0;
    plain.calls.per_user_per_hour = 0;
    plain.calls.same_prefix = 0;
    plain.calls.concurrent_per_user = 0;
    let mut dial = plain.clone();
    dial.dial.plan = DialPlan {
        country_code: "44".into(),
        national_prefix: "0".into(),
        international_prefixes: vec!["00".into(), "011".into()],
        outside_line: "9".into(),
        min_national_digits: 0,
    };
    dial.dial.countries = vec!["33".into(), "49".into(), "1".into()];
    dial.dial.premium = ClassRule {
        prefixes: ["+449", "+4487", "+1900", "+881", "+882"]
            .iter()
            .map(|p| Prefix::parse(p).unwrap())
            .collect(),
        ..ClassRule::open_to(Access::NOBODY)
    };
    dial.geo.db = Some(database());
    dial.geo.register = Countries::Except(vec![*b"NG"]);
    dial.geo.invite = Countries::Only(vec![*b"GB", *b"FR"]);
    (Policy::new(plain).unwrap(), Policy::new(dial).unwrap())
}

fn bench(c: &mut Criterion) {
    let (plain, dial) = policies();
    let now = Timestamp::from_millis(1_700_000_000_000);
    let phone: IpAddr = "203.0.113.7".parse().unwrap();
    for policy in [&plain, &dial] {
        policy.restore_trust(phone, Timestamp::from_millis(1_800_000_000_000), now);
    }
    let options = String::from_utf8_lossy(REGISTER).replace("REGISTER", "OPTIONS");
    // Calls abroad, each with a Call-ID of its own, and the clock moved past the ring timeout
    // between two uses of one: each iteration is a new call.
    let invites: Vec<String> = (0..4096)
        .map(|i| {
            INVITE
                .replace("sip:1002@", "sip:90033123456789@")
                .replace("a84b4c76e66710", &format!("call{i}"))
        })
        .collect();

    let mut group = c.benchmark_group("dial");
    for (name, policy) in [("defaults", &plain), ("dial rules + country db", &dial)] {
        group.bench_function(format!("OPTIONS, {name}"), |b| {
            b.iter(|| {
                policy
                    .check(
                        black_box(options.as_bytes()),
                        phone,
                        Transport::Datagram,
                        now,
                    )
                    .verdict
            })
        });
        group.bench_function(format!("REGISTER, {name}"), |b| {
            b.iter(|| {
                policy
                    .check(black_box(REGISTER), phone, Transport::Datagram, now)
                    .verdict
            })
        });
        group.bench_function(format!("INVITE abroad, new call, {name}"), |b| {
            let mut i = 0;
            b.iter(|| {
                let invite = invites[i % invites.len()].as_bytes();
                let at = now + std::time::Duration::from_secs(181 * (i / invites.len()) as u64);
                i += 1;
                let checked = policy.check(black_box(invite), phone, Transport::Datagram, at);
                let forwarded = matches!(checked.verdict, sipguard_policy::Verdict::Forward(_));
                black_box(forwarded)
            })
        });
    }
    // The two parts on their own, which the load on a shared machine blurs less.
    let config = dial.config();
    let db = config.geo.db.clone().unwrap();
    group.bench_function("part: country database lookup", |b| {
        b.iter(|| db.country(black_box(phone)))
    });
    group.bench_function("part: normalise and classify 9011 33 ...", |b| {
        b.iter(|| {
            let number = config
                .dial
                .plan
                .normalise(black_box(b"sip:901133123456789@pbx.example.com"));
            number.map(|n| config.dial.classify(&n))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
