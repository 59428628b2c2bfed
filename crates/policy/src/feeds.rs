//! Blocklist feeds as one lookup (docs/design.md section 10): every feed's networks merged into
//! sorted, disjoint address ranges per family, each carrying the bit mask of the feeds that list
//! it. A lookup is one binary search over a contiguous array (17 steps for 100,000 ranges), not
//! one hash probe per prefix length as in [`crate::CidrSet`]: community lists mix many lengths,
//! and a source that no feed lists must cost as little as one that a feed does.
//!
//! The set is built off the packet path (by the binary, whenever a feed changes) and handed to
//! [`crate::Policy::set_feeds`] whole. Each feed's counters ([`FeedTally`]) belong to the
//! caller, which keeps them across rebuilds so its metrics do not reset.
//!
//! [`Spans`] is the same sweep without the feeds' bits: listed or not, as a firewall's interval
//! set wants it (the kernel offload pushes the feeds' spans, and the allowlist's, into nftables).

use crate::cidr::canonical;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The most feeds one set holds: a range's feeds are the bits of a `u64`.
pub const MAX_FEEDS: usize = 64;

/// What the policy did with sources a feed lists, counted per feed.
#[derive(Debug, Default)]
pub struct FeedTally {
    dropped: AtomicU64,
    admitted: AtomicU64,
}

impl FeedTally {
    /// Messages and connections dropped because this feed lists their source.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Messages and connections from a source this feed lists that were let through anyway:
    /// the source is allowlisted, or trusted (it authenticated, which no feed can undo).
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }
}

/// Sorted disjoint ranges of one address family: `starts[i]..=ends[i]` is listed by the feeds
/// whose bits are set in `masks[i]`.
#[derive(Debug, Clone, Default)]
struct Ranges<T> {
    starts: Vec<T>,
    ends: Vec<T>,
    masks: Vec<u64>,
}

/// An address type the ranges are built over.
trait Bits: Copy + Ord {
    const MAX: Self;
    fn next(self) -> Option<Self>;
    fn prev(self) -> Self;
}

impl Bits for u32 {
    const MAX: Self = u32::MAX;
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn prev(self) -> Self {
        self - 1
    }
}

impl Bits for u128 {
    const MAX: Self = u128::MAX;
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn prev(self) -> Self {
        self - 1
    }
}

impl<T: Bits> Ranges<T> {
    /// The ranges with adjacent ones joined whatever their masks: what is listed at all.
    fn spans(&self) -> Vec<(T, T)> {
        let mut spans: Vec<(T, T)> = Vec::with_capacity(self.starts.len());
        for (&start, &end) in self.starts.iter().zip(&self.ends) {
            match spans.last_mut() {
                Some(last) if last.1.next() == Some(start) => last.1 = end,
                _ => spans.push((start, end)),
            }
        }
        spans
    }

    fn find(&self, addr: T) -> u64 {
        let after = self.starts.partition_point(|&start| start <= addr);
        match after.checked_sub(1) {
            Some(i) if self.ends[i] >= addr => self.masks[i],
            _ => 0,
        }
    }

    /// Sweeps the start and end-plus-one of every (first, last, feed) range in address order,
    /// keeping how many ranges of each feed are open: between two points the open feeds are
    /// constant, and adjacent stretches with the same feeds merge.
    fn build(ranges: Vec<(T, T, usize)>, feeds: usize) -> Self {
        let mut points: Vec<(T, usize, bool)> = Vec::with_capacity(ranges.len() * 2);
        for (first, last, feed) in ranges {
            points.push((first, feed, true));
            if let Some(after) = last.next() {
                points.push((after, feed, false));
            }
        }
        points.sort_unstable_by_key(|&(point, _, _)| point);
        let mut open = vec![0u32; feeds];
        let mut mask = 0u64;
        let mut out: Ranges<T> = Ranges {
            starts: Vec::new(),
            ends: Vec::new(),
            masks: Vec::new(),
        };
        let mut i = 0;
        while i < points.len() {
            let point = points[i].0;
            while let Some(&(_, feed, opens)) = points.get(i).filter(|p| p.0 == point) {
                if opens {
                    open[feed] += 1;
                    mask |= 1 << feed;
                } else {
                    open[feed] -= 1;
                    if open[feed] == 0 {
                        mask &= !(1 << feed);
                    }
                }
                i += 1;
            }
            if mask == 0 {
                continue;
            }
            let end = points.get(i).map_or(T::MAX, |next| next.0.prev());
            let joins = out.ends.last().and_then(|last: &T| last.next()) == Some(point)
                && out.masks.last() == Some(&mask);
            if joins {
                *out.ends.last_mut().expect("joined a range") = end;
            } else {
                out.starts.push(point);
                out.ends.push(end);
                out.masks.push(mask);
            }
        }
        out
    }
}

/// Every feed's networks, ready for lookup.
#[derive(Debug, Clone, Default)]
pub struct Feeds {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
    tallies: Vec<Arc<FeedTally>>,
    entries: usize,
}

impl Feeds {
    /// Merges the networks of each feed, in order; a feed's tally counts what its listing
    /// caused. Feeds past [`MAX_FEEDS`] are left out (configuration refuses more).
    pub fn new(feeds: Vec<(Arc<FeedTally>, Vec<IpNet>)>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut tallies = Vec::new();
        let mut entries = 0;
        for (feed, (tally, nets)) in feeds.into_iter().take(MAX_FEEDS).enumerate() {
            entries += nets.len();
            for net in nets {
                match net {
                    IpNet::V4(net) => {
                        v4.push((u32::from(net.network()), u32::from(net.broadcast()), feed))
                    }
                    IpNet::V6(net) => {
                        v6.push((u128::from(net.network()), u128::from(net.broadcast()), feed))
                    }
                }
            }
            tallies.push(tally);
        }
        Feeds {
            v4: Ranges::build(v4, tallies.len()),
            v6: Ranges::build(v6, tallies.len()),
            tallies,
            entries,
        }
    }

    /// The feeds (bits by position in [`Feeds::new`]) that list `addr`; 0 for none.
    /// IPv4-mapped IPv6 addresses match IPv4 entries.
    pub fn lookup(&self, addr: IpAddr) -> u64 {
        match canonical(addr) {
            IpAddr::V4(v4) => self.v4.find(u32::from(v4)),
            IpAddr::V6(v6) => self.v6.find(u128::from(v6)),
        }
    }

    /// How many networks the feeds listed, duplicates included.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// How many disjoint ranges the lookup searches.
    pub fn ranges(&self) -> usize {
        self.v4.starts.len() + self.v6.starts.len()
    }

    /// What the feeds list, whichever feed lists it.
    pub fn spans(&self) -> Spans {
        Spans::from_ranges(&self.v4, &self.v6)
    }

    /// Counts a source the feeds in `mask` list as dropped, or as admitted anyway.
    pub(crate) fn count(&self, mask: u64, dropped: bool) {
        for (feed, tally) in self.tallies.iter().enumerate() {
            if mask & (1 << feed) != 0 {
                let counter = if dropped {
                    &tally.dropped
                } else {
                    &tally.admitted
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Addresses as sorted, disjoint and non-adjacent inclusive ranges, per family: networks that
/// overlap or touch are joined. Equal spans hold the same addresses, so comparing two tells
/// whether a firewall set built from one needs rebuilding for the other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spans {
    /// IPv4 ranges, first and last address.
    pub v4: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// IPv6 ranges, first and last address.
    pub v6: Vec<(Ipv6Addr, Ipv6Addr)>,
}

impl Spans {
    /// The addresses of `nets`, joined.
    pub fn of(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(net) => {
                    v4.push((u32::from(net.network()), u32::from(net.broadcast()), 0))
                }
                IpNet::V6(net) => {
                    v6.push((u128::from(net.network()), u128::from(net.broadcast()), 0))
                }
            }
        }
        Spans::from_ranges(&Ranges::build(v4, 1), &Ranges::build(v6, 1))
    }

    fn from_ranges(v4: &Ranges<u32>, v6: &Ranges<u128>) -> Self {
        let v4 = v4.spans();
        let v6 = v6.spans();
        Spans {
            v4: v4.into_iter().map(|(a, b)| (a.into(), b.into())).collect(),
            v6: v6.into_iter().map(|(a, b)| (a.into(), b.into())).collect(),
        }
    }

    /// How many ranges, both families.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether no address is in them.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feeds(lists: &[&[&str]]) -> (Feeds, Vec<Arc<FeedTally>>) {
        let tallies: Vec<_> = lists.iter().map(|_| Arc::default()).collect();
        let feeds = Feeds::new(
            lists
                .iter()
                .zip(&tallies)
                .map(|(nets, tally)| {
                    (
                        Arc::clone(tally),
                        nets.iter().map(|net| net.parse().unwrap()).collect(),
                    )
                })
                .collect(),
        );
        (feeds, tallies)
    }

    fn at(feeds: &Feeds, addr: &str) -> u64 {
        feeds.lookup(addr.parse().unwrap())
    }

    #[test]
    fn overlapping_networks_of_two_feeds_split_into_ranges_that_name_each_feed() {
        let (set, _) = feeds(&[
            &["198.51.100.0/24", "192.0.2.7/32"],
            &["198.51.100.128/25", "198.51.100.200/32", "2001:db8::/32"],
        ]);
        assert_eq!(at(&set, "198.51.100.0"), 0b01);
        assert_eq!(at(&set, "198.51.100.127"), 0b01);
        assert_eq!(at(&set, "198.51.100.128"), 0b11);
        assert_eq!(at(&set, "198.51.100.200"), 0b11);
        assert_eq!(at(&set, "198.51.100.255"), 0b11);
        assert_eq!(at(&set, "198.51.101.0"), 0);
        assert_eq!(at(&set, "192.0.2.7"), 0b01);
        assert_eq!(at(&set, "192.0.2.6"), 0);
        assert_eq!(at(&set, "192.0.2.8"), 0);
        assert_eq!(at(&set, "2001:db8:ffff::1"), 0b10);
        assert_eq!(at(&set, "2001:db9::"), 0);
        assert_eq!(at(&set, "::ffff:192.0.2.7"), 0b01, "IPv4-mapped");
        assert_eq!(set.entries(), 5);
        // 198.51.100.0/25, .128-.255 (the /32 inside merges away), 192.0.2.7, one IPv6 range.
        assert_eq!(set.ranges(), 4);
    }

    #[test]
    fn a_network_listed_twice_by_one_feed_stays_listed_until_both_end() {
        let (set, _) = feeds(&[&["203.0.113.0/24", "203.0.113.0/28", "203.0.113.16/28"]]);
        assert_eq!(set.ranges(), 1, "adjacent stretches of one feed merge");
        assert_eq!(at(&set, "203.0.113.15"), 1);
        assert_eq!(at(&set, "203.0.113.255"), 1);
    }

    #[test]
    fn the_ends_of_the_address_space_and_empty_sets_look_up_safely() {
        let (set, _) = feeds(&[&["0.0.0.0/0", "::/0"]]);
        assert_eq!(at(&set, "0.0.0.0"), 1);
        assert_eq!(at(&set, "255.255.255.255"), 1);
        assert_eq!(at(&set, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 1);
        let (empty, _) = feeds(&[&[]]);
        assert_eq!(at(&empty, "192.0.2.1"), 0);
        assert_eq!(Feeds::default().lookup("2001:db8::1".parse().unwrap()), 0);
    }

    #[test]
    fn counts_go_to_every_feed_in_the_mask() {
        let (set, tallies) = feeds(&[&["192.0.2.0/24"], &["192.0.2.9/32"], &[]]);
        set.count(at(&set, "192.0.2.9"), true);
        set.count(at(&set, "192.0.2.1"), false);
        let seen: Vec<_> = tallies
            .iter()
            .map(|t| (t.dropped(), t.admitted()))
            .collect();
        assert_eq!(seen, [(1, 1), (1, 0), (0, 0)]);
    }

    fn spans_v4(spans: &Spans) -> Vec<String> {
        spans
            .v4
            .iter()
            .map(|(first, last)| format!("{first}-{last}"))
            .collect()
    }

    #[test]
    fn spans_join_what_several_feeds_list_side_by_side_and_keep_gaps() {
        // Two feeds split 198.51.100.0/24 into three ranges by mask; listed or not, it is one.
        let (set, _) = feeds(&[
            &["198.51.100.0/24", "192.0.2.7/32", "192.0.2.9/32"],
            &["198.51.100.128/25", "2001:db8::/33", "2001:db8:8000::/33"],
        ]);
        assert_eq!(set.ranges(), 5);
        let spans = set.spans();
        assert_eq!(
            spans_v4(&spans),
            [
                "192.0.2.7-192.0.2.7",
                "192.0.2.9-192.0.2.9",
                "198.51.100.0-198.51.100.255"
            ]
        );
        assert_eq!(
            spans.v6,
            [(
                "2001:db8::".parse().unwrap(),
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()
            )]
        );
        assert_eq!(spans.len(), 4);
        assert_eq!(Feeds::default().spans(), Spans::default());
    }

    #[test]
    fn spans_of_overlapping_networks_are_disjoint_and_equal_for_the_same_addresses() {
        let nets =
            |list: &[&str]| -> Vec<IpNet> { list.iter().map(|n| n.parse().unwrap()).collect() };
        let spans = Spans::of(nets(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "11.0.0.0/8",
            "192.0.2.1/32",
        ]));
        assert_eq!(
            spans_v4(&spans),
            ["10.0.0.0-11.255.255.255", "192.0.2.1-192.0.2.1"]
        );
        assert_eq!(spans, Spans::of(nets(&["192.0.2.1/32", "10.0.0.0/7"])));
        assert_ne!(spans, Spans::of(nets(&["10.0.0.0/7"])));
        assert!(Spans::of([]).is_empty());
    }
}
