//! A flood with a new forged source address per packet, driven through the public API: the
//! per-source tables stay under their cap, inserting into them once full allocates nothing, and
//! what a forged packet cannot produce (trust, bans earned on the PBX's answers) outlives the
//! flood.
//!
//! This file counts the allocations made on its test's own thread, so it is a test binary of
//! its own: the counting allocator wraps the system one and changes nothing else.

use sipguard_policy::{Ban, Policy, RuleId, Timestamp, Transport, Verdict};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

mod support;
use support::{at, ip, policy};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed to the system allocator unchanged; the only addition is a
// counter in a const-initialised thread local, which itself never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout, through `alloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: as for `dealloc`, and the caller guarantees `new_size` is valid.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const SCANNER: &[u8] = include_bytes!("../../sip/benches/datagrams/scanner.sip");
const REGISTER: &[u8] = include_bytes!("../../sip/benches/datagrams/register.sip");

/// The cap of every per-source table in these tests.
const CAP: usize = 10_000;

/// The n-th forged source: IPv4 mostly, every fourth one IPv6 (each in a /64 of its own).
fn forged(n: u32) -> IpAddr {
    if n % 4 == 3 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            (n >> 16) as u16,
            n as u16,
            0,
            0,
            0,
            1,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(0x6440_0000 + n))
    }
}

/// One forged packet: half are scanner probes (banned at first sight), half REGISTERs (counted
/// by the flood rule).
fn forge(policy: &Policy, n: u32, now: Timestamp) {
    let packet = if n.is_multiple_of(2) {
        SCANNER
    } else {
        REGISTER
    };
    let checked = policy.check(packet, forged(n), Transport::Datagram, now);
    assert!(
        n % 2 == 1 || matches!(checked.verdict, Verdict::Drop(_)),
        "a scanner probe is dropped"
    );
}

fn capped() -> Policy {
    policy(|config| config.max_tracked_sources = CAP)
}

/// The tables are capped per shard, rounded up.
fn assert_bounded(policy: &Policy) {
    let stats = policy.stats();
    let bound = CAP.div_ceil(64) * 64;
    assert!(stats.bans <= bound, "bans {}", stats.bans);
    assert!(stats.sources <= bound, "sources {}", stats.sources);
    assert!(stats.trusted <= bound, "trusted {}", stats.trusted);
}

#[test]
fn trust_and_earned_bans_outlive_a_million_forged_sources() {
    let policy = capped();
    let now = at(0);
    let phones: Vec<IpAddr> = (1..=200u8)
        .map(|i| IpAddr::from([203, 0, 113, i]))
        .collect();
    for &phone in &phones {
        assert!(policy.restore_trust(phone, at(3600), now));
    }
    // Crackers banned on refused credentials: evidence no spoofer can forge in bulk.
    let crackers: Vec<IpAddr> = (1..=200u8)
        .map(|i| IpAddr::from([198, 51, 100, i]))
        .collect();
    for &cracker in &crackers {
        let ban = Ban {
            rule: RuleId::RegisterFailures,
            note: None,
            evidence: 5,
            first_seen: now,
            last_seen: now,
            expires: at(600),
            offence: 1,
            quiet: false,
        };
        assert!(policy.restore(cracker.into(), ban, now));
    }

    for n in 0..1_000_000 {
        forge(&policy, n, at(u64::from(n / 100_000)));
    }

    let later = at(10);
    assert_bounded(&policy);
    assert!(policy.stats().evictions > 0, "the flood filled the tables");
    for &phone in &phones {
        assert!(policy.is_trusted(phone, later), "{phone} lost its trust");
        let checked = policy.check(REGISTER, phone, Transport::Datagram, later);
        assert!(matches!(checked.verdict, Verdict::Forward(_)));
    }
    for &cracker in &crackers {
        let ban = policy.ban_of(cracker, later);
        assert_eq!(ban.map(|ban| ban.rule), Some(RuleId::RegisterFailures));
    }
}

#[test]
fn a_source_banned_during_the_flood_stays_banned_for_its_next_packets() {
    let policy = capped();
    let scanner = ip("192.0.2.66");
    for n in 0..3 * CAP as u32 {
        forge(&policy, n, at(0));
    }
    let checked = policy.check(SCANNER, scanner, Transport::Datagram, at(1));
    assert!(matches!(checked.verdict, Verdict::Drop(_)));
    // The flood goes on at its pace; the scanner's next packets find its ban.
    for n in 3 * CAP as u32..3 * CAP as u32 + 1_000 {
        forge(&policy, n, at(1));
    }
    assert!(policy.is_banned(scanner, at(1)));
}

#[test]
fn new_forged_sources_allocate_nothing_once_the_tables_are_full() {
    let policy = capped();
    let now = at(0);
    // Fill every table past its cap: from here on each new source takes an old one's place.
    let warm = 4 * CAP as u32;
    for n in 0..warm {
        forge(&policy, n, now);
    }
    let before = allocations();
    for n in warm..warm + 200_000 {
        forge(&policy, n, now);
    }
    assert_eq!(
        allocations() - before,
        0,
        "allocations for 200,000 new sources"
    );
    assert_bounded(&policy);
    // Later, with the old entries expired, the same holds.
    let later = at(3600) + Duration::from_millis(1);
    let before = allocations();
    for n in warm + 200_000..warm + 300_000 {
        forge(&policy, n, later);
    }
    assert_eq!(allocations() - before, 0);
}

#[test]
fn bans_of_forged_sources_past_the_budget_are_quiet_until_their_source_comes_back() {
    use sipguard_policy::{
        Change, Observer, ANNOUNCED_BANS_PER_SECOND, ANNOUNCED_COMEBACKS_PER_SECOND,
    };
    use std::sync::atomic::{AtomicU64, Ordering};
    /// Bans heard loud (new, or announced later) and quiet.
    #[derive(Default)]
    struct Heard {
        loud: AtomicU64,
        quiet: AtomicU64,
    }
    impl Observer for Heard {
        fn changed(&self, change: &Change) {
            let count = match change {
                Change::Banned { ban, .. } if ban.quiet => &self.quiet,
                Change::Banned { .. } | Change::Announced { .. } => &self.loud,
                _ => return,
            };
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
    let heard = |h: &Heard| {
        (
            h.loud.load(Ordering::Relaxed),
            h.quiet.load(Ordering::Relaxed),
        )
    };
    let policy = capped();
    let observer = std::sync::Arc::new(Heard::default());
    policy.subscribe(observer.clone());
    let budget = u64::from(ANNOUNCED_BANS_PER_SECOND);

    // Three times the budget of scanner probes within one second, each from a new source.
    let probes = 3 * budget as u32;
    for n in 0..probes {
        forge(&policy, 2 * n, at(5));
    }
    assert_eq!(heard(&observer), (budget, 2 * budget));
    for n in 0..probes {
        assert!(policy.is_banned(forged(2 * n), at(5)), "{n}: not banned");
    }

    // The operator's ban in the same second is announced: the budget is for forgeable evidence.
    assert!(policy
        .ban_manually(ip("192.0.2.9"), Duration::from_secs(60), None, at(5))
        .is_some());
    assert_eq!(heard(&observer), (budget + 1, 2 * budget));

    // A quiet ban's source sending again is announced, once: a source that comes back is a
    // real one, and comebacks have a budget of their own.
    let comeback = forged(2 * (probes - 1));
    let quiet = |source| policy.ban_of(source, at(5)).map(|ban| ban.quiet);
    assert_eq!(quiet(comeback), Some(true));
    forge(&policy, 2 * (probes - 1), at(5));
    forge(&policy, 2 * (probes - 1), at(5) + Duration::from_millis(1));
    assert_eq!(heard(&observer), (budget + 2, 2 * budget));
    assert_eq!(quiet(comeback), Some(false));
    // Every quiet ban whose source comes back is announced, within the comebacks' budget.
    assert!(2 * budget < u64::from(ANNOUNCED_COMEBACKS_PER_SECOND));
    for n in 0..probes {
        forge(&policy, 2 * n, at(5));
    }
    assert_eq!(heard(&observer), (budget + 1 + 2 * budget, 2 * budget));

    // A new forged source in the next second is announced: the budget is per second.
    forge(&policy, 2 * probes, at(6));
    assert_eq!(heard(&observer), (budget + 2 + 2 * budget, 2 * budget));
}
