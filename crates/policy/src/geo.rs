//! The country filter: sources geolocated from a MaxMind-format country database
//! (GeoLite2-Country, DB-IP Lite), read with the `maxminddb` crate, and the countries allowed
//! to register and to call.
//!
//! The policy stays I/O-free: the daemon reads the file and hands over its bytes, and a reload
//! hands over new ones with the rest of the config. Only REGISTERs and INVITEs that start a call
//! are looked up (a walk of the database's search tree, no allocation), never other requests.
//! Private and loopback addresses have a setting of their own: allowed, denied, or looked up like
//! any other (for a database that maps an operator's own networks, or a test's).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// A country database, loaded. Cheap to clone; two are equal when they are the same load.
#[derive(Clone)]
pub struct CountryDb(Arc<maxminddb::Reader<Vec<u8>>>);

/// Why bytes are not a country database.
#[derive(Debug, thiserror::Error)]
#[error("not a MaxMind-format database: {0}")]
pub struct GeoError(String);

#[derive(serde::Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<Iso<'a>>,
    #[serde(borrow)]
    registered_country: Option<Iso<'a>>,
}

#[derive(serde::Deserialize)]
struct Iso<'a> {
    iso_code: Option<&'a str>,
}

/// An ISO 3166-1 alpha-2 country code, upper case.
pub type Country = [u8; 2];

/// Reads `XX` (any case) as a country code.
pub fn country(text: &str) -> Option<Country> {
    match text.as_bytes() {
        &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

impl CountryDb {
    /// Opens a database from its bytes (the whole file).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GeoError> {
        let reader = maxminddb::Reader::from_source(bytes).map_err(|e| GeoError(e.to_string()))?;
        // A city or ASN database opens too, and would locate nobody.
        let kind = &reader.metadata.database_type;
        if !kind.to_ascii_lowercase().contains("country") && !kind.contains("City") {
            return Err(GeoError(format!(
                "database type {kind:?} has no countries (GeoLite2-Country or DB-IP country lite)"
            )));
        }
        Ok(CountryDb(Arc::new(reader)))
    }

    /// The country `address` is in, by its `country` record (else `registered_country`).
    pub fn country(&self, address: IpAddr) -> Option<Country> {
        let record = self.0.lookup::<Record<'_>>(address).ok()??;
        let iso = record.country.or(record.registered_country)?.iso_code?;
        country(iso)
    }

    /// When the database was built (seconds since the epoch), to tell a reload took.
    pub fn build_epoch(&self) -> u64 {
        self.0.metadata.build_epoch
    }
}

impl PartialEq for CountryDb {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CountryDb {}

impl std::fmt::Debug for CountryDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let meta = &self.0.metadata;
        write!(
            f,
            "CountryDb({}, built {})",
            meta.database_type, meta.build_epoch
        )
    }
}

/// Which countries may do something.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Countries {
    /// Every country.
    #[default]
    Any,
    /// Only these.
    Only(Vec<Country>),
    /// All but these.
    Except(Vec<Country>),
}

impl Countries {
    fn admits(&self, country: Country) -> bool {
        match self {
            Countries::Any => true,
            Countries::Only(list) => list.contains(&country),
            Countries::Except(list) => !list.contains(&country),
        }
    }
}

/// What becomes of a source the database cannot place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unplaced {
    /// Let it through.
    Allow,
    /// Refuse it.
    Deny,
}

/// How private, loopback and link-local sources are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateSources {
    /// Let them through unlooked-up (phones on the LAN).
    Allow,
    /// Refuse them.
    Deny,
    /// Look them up like any address (a database that maps the operator's own networks).
    Lookup,
}

/// The country filter's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoConfig {
    /// What happens to a refused request (threshold and window unused).
    pub rule: crate::Rule,
    /// The database; `None`: the filter is off.
    pub db: Option<CountryDb>,
    /// Countries that may register.
    pub register: Countries,
    /// Countries that may place calls.
    pub invite: Countries,
    /// Private, loopback and link-local sources.
    pub private: PrivateSources,
    /// Sources the database has no country for.
    pub unknown: Unplaced,
}

impl Default for GeoConfig {
    fn default() -> Self {
        GeoConfig {
            rule: crate::Rule {
                mode: crate::Mode::Drop,
                threshold: 1,
                window: Duration::from_secs(60),
                ban_for: Duration::from_secs(3600),
            },
            db: None,
            register: Countries::Any,
            invite: Countries::Any,
            private: PrivateSources::Allow,
            unknown: Unplaced::Allow,
        }
    }
}

/// Whether `address` is one no public database places: private, loopback, link-local, unique
/// local, unspecified.
fn is_private(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Why the filter refused a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// In a country not admitted.
    Country(Country),
    /// A private address, and those are denied.
    Private,
    /// Not in the database, and those are denied.
    Unknown,
}

impl GeoConfig {
    /// Whether the filter judges anything.
    pub(crate) fn active(&self) -> bool {
        self.db.is_some()
    }

    /// Judges `source` against `countries`: `Err` says where it was placed.
    pub(crate) fn admit(&self, source: IpAddr, countries: &Countries) -> Result<(), Placed> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        if *countries == Countries::Any {
            return Ok(());
        }
        if is_private(source) {
            match self.private {
                PrivateSources::Allow => return Ok(()),
                PrivateSources::Deny => return Err(Placed::Private),
                PrivateSources::Lookup => {}
            }
        }
        match db.country(source) {
            Some(country) if countries.admits(country) => Ok(()),
            Some(country) => Err(Placed::Country(country)),
            None if self.unknown == Unplaced::Allow => Ok(()),
            None => Err(Placed::Unknown),
        }
    }
}

/// Writes a small MaxMind-format country database (an IPv6 tree with IPv4 under `::/96`, 24-bit
/// records): for tests and benchmarks, which build their own rather than ship a third-party one.
#[cfg(any(test, feature = "test-db"))]
pub fn write_country_db(networks: &[(ipnet::IpNet, &str)], build_epoch: u64) -> Vec<u8> {
    use ipnet::IpNet;
    #[derive(Clone, Copy)]
    enum Slot {
        Empty,
        Node(usize),
        Data(usize),
    }
    fn map(out: &mut Vec<u8>, len: u8) {
        out.push(0xe0 | len);
    }
    fn string(out: &mut Vec<u8>, text: &str) {
        out.push(0x40 | text.len() as u8);
        out.extend_from_slice(text.as_bytes());
    }
    fn uint(out: &mut Vec<u8>, kind: u8, value: u64, width: u8) {
        let bytes = &value.to_be_bytes()[8 - usize::from(width)..];
        if kind < 8 {
            out.push(kind << 5 | width);
        } else {
            out.extend([width, kind - 7]);
        }
        out.extend_from_slice(bytes);
    }

    let mut data = Vec::new();
    let mut nodes: Vec<[Slot; 2]> = vec![[Slot::Empty; 2]];
    for (net, iso) in networks {
        let offset = data.len();
        map(&mut data, 1);
        string(&mut data, "country");
        map(&mut data, 1);
        string(&mut data, "iso_code");
        string(&mut data, iso);
        let (bits, len) = match net {
            IpNet::V4(v4) => (u128::from(v4.addr().to_bits()), 96 + v4.prefix_len()),
            IpNet::V6(v6) => (v6.addr().to_bits(), v6.prefix_len()),
        };
        let mut node = 0;
        for i in 0..usize::from(len) {
            let bit = ((bits >> (127 - i)) & 1) as usize;
            if i + 1 == usize::from(len) {
                nodes[node][bit] = Slot::Data(offset);
            } else {
                node = match nodes[node][bit] {
                    Slot::Node(next) => next,
                    _ => {
                        nodes.push([Slot::Empty; 2]);
                        let next = nodes.len() - 1;
                        nodes[node][bit] = Slot::Node(next);
                        next
                    }
                };
            }
        }
    }
    let count = nodes.len();
    let mut out = Vec::new();
    for node in &nodes {
        for slot in node {
            let value = match *slot {
                Slot::Empty => count,
                Slot::Node(next) => next,
                Slot::Data(offset) => count + 16 + offset,
            } as u32;
            out.extend_from_slice(&value.to_be_bytes()[1..]);
        }
    }
    out.extend([0; 16]);
    out.extend(data);
    out.extend(b"\xab\xcd\xefMaxMind.com");
    map(&mut out, 9);
    string(&mut out, "binary_format_major_version");
    uint(&mut out, 5, 2, 2);
    string(&mut out, "binary_format_minor_version");
    uint(&mut out, 5, 0, 2);
    string(&mut out, "build_epoch");
    uint(&mut out, 9, build_epoch, 8);
    string(&mut out, "database_type");
    string(&mut out, "sipguard-test-Country");
    string(&mut out, "description");
    map(&mut out, 0);
    string(&mut out, "ip_version");
    uint(&mut out, 5, 6, 2);
    string(&mut out, "languages");
    out.extend([0, 4]);
    string(&mut out, "node_count");
    uint(&mut out, 6, count as u64, 4);
    string(&mut out, "record_size");
    uint(&mut out, 5, 24, 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> CountryDb {
        let nets = [
            ("198.51.100.0/24".parse().unwrap(), "FR"),
            ("203.0.113.0/25".parse().unwrap(), "NG"),
            ("127.0.0.64/26".parse().unwrap(), "NG"),
            ("2001:db8:1::/48".parse().unwrap(), "DE"),
        ];
        CountryDb::from_bytes(write_country_db(&nets, 7)).expect("the test database opens")
    }

    #[test]
    fn addresses_are_placed_by_the_database_the_tests_write() {
        let db = db();
        let at = |a: &str| db.country(a.parse().unwrap());
        assert_eq!(at("198.51.100.7"), Some(*b"FR"));
        assert_eq!(at("203.0.113.1"), Some(*b"NG"));
        assert_eq!(at("203.0.113.200"), None);
        assert_eq!(at("2001:db8:1::5"), Some(*b"DE"));
        assert_eq!(at("192.0.2.1"), None);
        assert_eq!(db.build_epoch(), 7);
    }

    #[test]
    fn garbage_is_no_database() {
        assert!(CountryDb::from_bytes(b"not a database".to_vec()).is_err());
    }

    #[test]
    fn denied_countries_private_and_unknown_sources_follow_their_settings() {
        let mut config = GeoConfig {
            db: Some(db()),
            ..GeoConfig::default()
        };
        let only_fr = Countries::Only(vec![*b"FR"]);
        let admit = |c: &GeoConfig, a: &str| c.admit(a.parse().unwrap(), &only_fr);
        assert_eq!(admit(&config, "198.51.100.7"), Ok(()));
        assert_eq!(admit(&config, "203.0.113.1"), Err(Placed::Country(*b"NG")));
        assert_eq!(admit(&config, "192.0.2.1"), Ok(()));
        assert_eq!(admit(&config, "127.0.0.65"), Ok(()));
        config.unknown = Unplaced::Deny;
        assert_eq!(admit(&config, "192.0.2.1"), Err(Placed::Unknown));
        config.private = PrivateSources::Lookup;
        assert_eq!(admit(&config, "127.0.0.65"), Err(Placed::Country(*b"NG")));
        assert_eq!(admit(&config, "127.0.0.1"), Err(Placed::Unknown));
        config.private = PrivateSources::Deny;
        assert_eq!(admit(&config, "10.0.0.1"), Err(Placed::Private));
        let except_ng = Countries::Except(vec![*b"NG"]);
        config.private = PrivateSources::Allow;
        assert!(config
            .admit("198.51.100.7".parse().unwrap(), &except_ng)
            .is_ok());
        assert!(config
            .admit("203.0.113.1".parse().unwrap(), &except_ng)
            .is_err());
    }
}
