//! IPv4/IPv6 networks, each with a value, with a lookup cost bounded by the number of distinct
//! prefix lengths (at most 33 + 129), not by the number of networks: one hash probe per length,
//! longest first, so the most specific network answers.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;

/// Networks with a value each, grouped by prefix length; each group maps the masked network
/// addresses to their values.
#[derive(Debug, Clone)]
pub struct CidrMap<V> {
    /// (prefix length, networks of that length), longest first so specific matches come early.
    v4: Vec<(u8, HashMap<u32, V>)>,
    v6: Vec<(u8, HashMap<u128, V>)>,
}

/// Networks without values: the deny list.
pub type CidrSet = CidrMap<()>;

impl<V> Default for CidrMap<V> {
    fn default() -> Self {
        CidrMap {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

impl<V> CidrMap<V> {
    /// The value of the most specific network `addr` lies in. IPv4-mapped IPv6 addresses match
    /// IPv4 networks, since a dual-stack socket reports IPv4 clients that way.
    pub fn get(&self, addr: IpAddr) -> Option<&V> {
        match canonical(addr) {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                self.v4
                    .iter()
                    .find_map(|(len, nets)| nets.get(&mask32(bits, *len)))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                self.v6
                    .iter()
                    .find_map(|(len, nets)| nets.get(&mask128(bits, *len)))
            }
        }
    }

    /// True when `addr` lies in one of the networks.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.get(addr).is_some()
    }

    /// True when the map holds no network.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

impl<V> FromIterator<(IpNet, V)> for CidrMap<V> {
    /// Of two equal networks, the first keeps its value.
    fn from_iter<I: IntoIterator<Item = (IpNet, V)>>(nets: I) -> Self {
        let mut v4: HashMap<u8, HashMap<u32, V>> = HashMap::new();
        let mut v6: HashMap<u8, HashMap<u128, V>> = HashMap::new();
        for (net, value) in nets {
            match net {
                IpNet::V4(net) => {
                    let len = net.prefix_len();
                    v4.entry(len)
                        .or_default()
                        .entry(mask32(u32::from(net.addr()), len))
                        .or_insert(value);
                }
                IpNet::V6(net) => {
                    let len = net.prefix_len();
                    v6.entry(len)
                        .or_default()
                        .entry(mask128(u128::from(net.addr()), len))
                        .or_insert(value);
                }
            }
        }
        let mut v4: Vec<_> = v4.into_iter().collect();
        let mut v6: Vec<_> = v6.into_iter().collect();
        v4.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        v6.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        CidrMap { v4, v6 }
    }
}

impl FromIterator<IpNet> for CidrSet {
    fn from_iter<I: IntoIterator<Item = IpNet>>(nets: I) -> Self {
        nets.into_iter().map(|net| (net, ())).collect()
    }
}

pub(crate) fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

fn mask32(bits: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        bits & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask128(bits: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> CidrSet {
        nets.iter()
            .map(|net| net.parse::<IpNet>().unwrap())
            .collect()
    }

    #[test]
    fn matches_by_prefix_for_both_families() {
        let s = set(&["198.51.100.0/28", "2001:db8:10::/48", "203.0.113.5/32"]);
        assert!(s.contains("198.51.100.15".parse().unwrap()));
        assert!(!s.contains("198.51.100.16".parse().unwrap()));
        assert!(s.contains("203.0.113.5".parse().unwrap()));
        assert!(s.contains("2001:db8:10:ffff::1".parse().unwrap()));
        assert!(!s.contains("2001:db8:11::1".parse().unwrap()));
    }

    #[test]
    fn ipv4_mapped_ipv6_source_matches_ipv4_network() {
        let s = set(&["192.0.2.0/24"]);
        assert!(s.contains("::ffff:192.0.2.44".parse().unwrap()));
    }

    #[test]
    fn the_most_specific_network_gives_the_value() {
        let map: CidrMap<&str> = [
            ("198.51.100.0/24".parse().unwrap(), "wide"),
            ("198.51.100.8/29".parse().unwrap(), "narrow"),
        ]
        .into_iter()
        .collect();
        assert_eq!(map.get("198.51.100.9".parse().unwrap()), Some(&"narrow"));
        assert_eq!(map.get("198.51.100.99".parse().unwrap()), Some(&"wide"));
        assert_eq!(map.get("198.51.101.1".parse().unwrap()), None);
    }

    #[test]
    fn zero_length_prefix_matches_everything_of_its_family() {
        let s = set(&["0.0.0.0/0"]);
        assert!(s.contains("203.0.113.1".parse().unwrap()));
        assert!(!s.contains("2001:db8::1".parse().unwrap()));
        assert!(set(&[]).is_empty());
    }
}
