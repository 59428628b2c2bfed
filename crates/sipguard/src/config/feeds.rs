//! The `feeds` section (blocklists to follow, and where sipguard shares its own bans) and the
//! resolver keys of `allowlist` (names in the allowlist file): raw shape and validation, apart
//! from the rest so the sections stay small to read (docs/design.md section 10).

use super::error::{quote, Problem, ProblemKind};
use super::raw::expected_at;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `feeds` section as written.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawFeeds {
    pub lists: Option<Vec<RawFeed>>,
    pub bans_file: Option<String>,
}

/// One blocklist as written: a name and exactly one of `file`, `url`, `apiban_key`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawFeed {
    pub name: Option<String>,
    pub file: Option<String>,
    pub url: Option<String>,
    pub apiban_key: Option<String>,
    pub apiban_url: Option<String>,
    pub interval: Option<String>,
}

/// Validated `feeds`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedsConfig {
    /// The blocklists, in file order (at most [`sipguard_policy::MAX_FEEDS`]).
    pub lists: Vec<FeedSource>,
    /// Where sipguard keeps its own bans as a plain list; `None` when off.
    pub bans_file: Option<PathBuf>,
}

/// One blocklist to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSource {
    /// The operator's name for it: the metric label and the listing key.
    pub name: String,
    /// Where its entries come from.
    pub origin: FeedOrigin,
    /// How often it is fetched (a file: re-read; also at every reload).
    pub interval: Duration,
}

/// Where a feed's entries come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedOrigin {
    /// A local file, one address or network a line, `#` comments.
    File(PathBuf),
    /// The same format over HTTP(S), fetched with conditional requests.
    Url(String),
    /// APIBAN's incremental JSON API: `{url}/{key}/banned/{id}`.
    Apiban {
        /// The API's base, `https://apiban.org/api` unless set.
        url: String,
        /// The subscriber's key (never logged).
        key: String,
    },
}

/// How names in the allowlist file are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamesConfig {
    /// Host names and SRV names (`_sip._udp.example.net`) from the allowlist file, each with
    /// the group that lists it (group name, DNS name): its addresses join that group.
    pub names: Vec<(String, String)>,
    /// The DNS servers asked; empty for the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// The shortest and longest wait before a name is asked again, whatever its TTL says.
    pub min_ttl: Duration,
    /// See `min_ttl`.
    pub max_ttl: Duration,
    /// How long an address a name no longer resolves to stays admitted.
    pub grace: Duration,
}

impl Default for NamesConfig {
    fn default() -> Self {
        NamesConfig {
            names: Vec::new(),
            nameservers: Vec::new(),
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            grace: DEFAULT_GRACE,
        }
    }
}

/// VoIPBL refreshes every few hours; APIBAN asks for no more than a poll every few minutes.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
const DEFAULT_APIBAN_URL: &str = "https://apiban.org/api";
/// A carrier's DNS with a TTL of a few seconds would otherwise be asked that often.
const DEFAULT_MIN_TTL: Duration = Duration::from_secs(30);
/// A long TTL would leave a carrier's move unseen for a day.
const DEFAULT_MAX_TTL: Duration = Duration::from_secs(3600);
/// Calls set up to the old address finish, and a DNS change propagating slowly does no harm.
const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

fn problem(origin: &str, path: String, value: Option<&str>, expected: &str) -> Problem {
    Problem {
        kind: ProblemKind::InvalidValue,
        origin: origin.to_owned(),
        location: None,
        path,
        value: value.map(quote),
        message: format!("expected {expected}"),
    }
}

fn duration(
    origin: &str,
    path: String,
    text: Option<&str>,
    default: Duration,
    min: Duration,
    problems: &mut Vec<Problem>,
) -> Option<Duration> {
    let Some(text) = text else {
        return Some(default);
    };
    match humantime::parse_duration(text) {
        Ok(duration) if duration >= min && !duration.is_zero() => Some(duration),
        _ => {
            let expected = format!(
                "a duration of at least {}, such as 1h",
                humantime::format_duration(min.max(Duration::from_secs(1)))
            );
            problems.push(problem(origin, path, Some(text), &expected));
            None
        }
    }
}

/// Validates `feeds`; relative file names are taken from `dir`.
pub(crate) fn validate_feeds(
    raw: RawFeeds,
    origin: &str,
    dir: &Path,
    problems: &mut Vec<Problem>,
) -> Option<FeedsConfig> {
    let before = problems.len();
    let raw_lists = raw.lists.unwrap_or_default();
    if raw_lists.len() > sipguard_policy::MAX_FEEDS {
        problems.push(problem(
            origin,
            "feeds.lists".into(),
            Some(&format!("[{} lists]", raw_lists.len())),
            &format!("at most {} lists", sipguard_policy::MAX_FEEDS),
        ));
    }
    let mut lists: Vec<FeedSource> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, feed) in raw_lists.into_iter().enumerate() {
        let at = format!("feeds.lists[{i}]");
        let name = match feed.name {
            Some(name) if valid_label(&name) => {
                if names.contains(&name) {
                    problems.push(problem(
                        origin,
                        format!("{at}.name"),
                        Some(&name),
                        "each name once",
                    ));
                }
                names.push(name.clone());
                Some(name)
            }
            other => {
                problems.push(problem(
                    origin,
                    format!("{at}.name"),
                    other.as_deref(),
                    expected_at("feeds.lists[].name").unwrap_or_default(),
                ));
                None
            }
        };
        let origin_of = match (feed.file, feed.url, feed.apiban_key) {
            (Some(file), None, None) if !file.trim().is_empty() => {
                Some(FeedOrigin::File(dir.join(file)))
            }
            (None, Some(url), None) if is_http(&url) => Some(FeedOrigin::Url(url)),
            (None, None, Some(key)) if !key.trim().is_empty() && !key.contains('/') => {
                let url = feed
                    .apiban_url
                    .unwrap_or_else(|| DEFAULT_APIBAN_URL.to_owned());
                if is_http(&url) {
                    Some(FeedOrigin::Apiban {
                        url: url.trim_end_matches('/').to_owned(),
                        key,
                    })
                } else {
                    problems.push(problem(
                        origin,
                        format!("{at}.apiban_url"),
                        Some(&url),
                        expected_at("feeds.lists[].apiban_url").unwrap_or_default(),
                    ));
                    None
                }
            }
            (None, Some(url), None) => {
                problems.push(problem(
                    origin,
                    format!("{at}.url"),
                    Some(&url),
                    expected_at("feeds.lists[].url").unwrap_or_default(),
                ));
                None
            }
            _ => {
                problems.push(problem(
                    origin,
                    at.clone(),
                    None,
                    "exactly one of file, url, apiban_key (with a value)",
                ));
                None
            }
        };
        let interval = duration(
            origin,
            format!("{at}.interval"),
            feed.interval.as_deref(),
            DEFAULT_INTERVAL,
            Duration::from_secs(1),
            problems,
        );
        if let (Some(name), Some(origin), Some(interval)) = (name, origin_of, interval) {
            lists.push(FeedSource {
                name,
                origin,
                interval,
            });
        }
    }
    let bans_file = match raw.bans_file {
        None => None,
        Some(text) if text == "off" => None,
        Some(text) if text.trim().is_empty() => {
            problems.push(problem(
                origin,
                "feeds.bans_file".into(),
                Some(&text),
                expected_at("feeds.bans_file").unwrap_or_default(),
            ));
            None
        }
        Some(text) => Some(dir.join(text)),
    };
    (problems.len() == before).then_some(FeedsConfig { lists, bans_file })
}

/// The resolver keys of `allowlist`, for the `names` the allowlist file holds.
pub(crate) struct RawResolver<'a> {
    pub nameservers: Option<&'a [String]>,
    pub min_ttl: Option<&'a str>,
    pub max_ttl: Option<&'a str>,
    pub grace: Option<&'a str>,
}

/// Validates the resolver keys of `allowlist`.
pub(crate) fn validate_names(
    raw: RawResolver<'_>,
    names: Vec<(String, String)>,
    origin: &str,
    problems: &mut Vec<Problem>,
) -> Option<NamesConfig> {
    let before = problems.len();
    let mut nameservers = Vec::new();
    for (i, text) in raw.nameservers.unwrap_or_default().iter().enumerate() {
        let parsed = text.parse::<SocketAddr>().or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Ok(addr) => nameservers.push(addr),
            Err(_) => problems.push(problem(
                origin,
                format!("allowlist.nameservers[{i}]"),
                Some(text),
                expected_at("allowlist.nameservers[]").unwrap_or_default(),
            )),
        }
    }
    let second = Duration::from_secs(1);
    let path = |key: &str| format!("allowlist.{key}");
    let min_ttl = duration(
        origin,
        path("min_ttl"),
        raw.min_ttl,
        DEFAULT_MIN_TTL,
        second,
        problems,
    );
    let max_ttl = duration(
        origin,
        path("max_ttl"),
        raw.max_ttl,
        DEFAULT_MAX_TTL,
        second,
        problems,
    );
    let grace = duration(
        origin,
        path("grace"),
        raw.grace,
        DEFAULT_GRACE,
        second,
        problems,
    );
    if let (Some(min), Some(max)) = (min_ttl, max_ttl) {
        if max < min {
            problems.push(problem(
                origin,
                path("max_ttl"),
                raw.max_ttl,
                "a duration at least allowlist.min_ttl",
            ));
        }
    }
    (problems.len() == before).then(|| NamesConfig {
        names,
        nameservers,
        min_ttl: min_ttl.unwrap_or(DEFAULT_MIN_TTL),
        max_ttl: max_ttl.unwrap_or(DEFAULT_MAX_TTL),
        grace: grace.unwrap_or(DEFAULT_GRACE),
    })
}

/// A feed's name is a metric label: short, and plain.
fn valid_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_http(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|url| matches!(url.scheme(), "http" | "https"))
}

/// Whether `text` is a DNS name an allowlist may hold: a host name, or an SRV name whose first
/// labels start with `_`.
pub(crate) fn is_dns_name(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    !name.is_empty()
        && name.len() <= 253
        && name.contains('.')
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feeds(yaml: &str) -> Result<FeedsConfig, Vec<String>> {
        crate::config::from_yaml(yaml, "c.yaml")
            .map(|config| config.feeds)
            .map_err(|errors| errors.to_string().lines().map(str::to_owned).collect())
    }

    #[test]
    fn each_kind_of_list_is_read_with_its_interval() {
        let config = feeds(
            "feeds:\n  lists:\n\
             \x20   - {name: local, file: block.txt, interval: 30s}\n\
             \x20   - {name: voipbl, url: \"https://voipbl.example/update/\"}\n\
             \x20   - {name: apiban, apiban_key: k3y, apiban_url: \"http://127.0.0.1:1/api/\", interval: 5m}\n\
             \x20 bans_file: bans.txt\n",
        )
        .unwrap();
        assert_eq!(
            config.lists,
            [
                FeedSource {
                    name: "local".into(),
                    origin: FeedOrigin::File("block.txt".into()),
                    interval: Duration::from_secs(30)
                },
                FeedSource {
                    name: "voipbl".into(),
                    origin: FeedOrigin::Url("https://voipbl.example/update/".into()),
                    interval: DEFAULT_INTERVAL
                },
                FeedSource {
                    name: "apiban".into(),
                    origin: FeedOrigin::Apiban {
                        url: "http://127.0.0.1:1/api".into(),
                        key: "k3y".into()
                    },
                    interval: Duration::from_secs(300)
                },
            ]
        );
        assert_eq!(config.bans_file, Some("bans.txt".into()));
    }

    #[test]
    fn every_bad_list_is_named_with_its_key() {
        let found = feeds(
            "feeds:\n  lists:\n\
             \x20   - {name: \"bad name\", file: a.txt}\n\
             \x20   - {name: a, url: \"ftp://x/\"}\n\
             \x20   - {name: b, file: a.txt, url: \"http://x/\"}\n\
             \x20   - {name: c, url: \"http://x/\", interval: 500ms}\n\
             \x20   - {name: c, file: b.txt}\n",
        )
        .unwrap_err();
        assert_eq!(
            found,
            [
                "c.yaml: feeds.lists[0].name: \"bad name\": expected a name of letters, digits, - and _ (a metric label), such as voipbl",
                "c.yaml: feeds.lists[1].url: \"ftp://x/\": expected an http:// or https:// URL",
                "c.yaml: feeds.lists[2]: expected exactly one of file, url, apiban_key (with a value)",
                "c.yaml: feeds.lists[3].interval: \"500ms\": expected a duration of at least 1s, such as 1h",
                "c.yaml: feeds.lists[4].name: \"c\": expected each name once",
            ]
        );
    }

    #[test]
    fn resolver_keys_default_and_are_checked() {
        let config = crate::config::from_yaml("", "c.yaml").unwrap();
        assert_eq!(config.names, NamesConfig::default());
        let config = crate::config::from_yaml(
            "allowlist:\n  nameservers: [\"127.0.0.1:5353\", \"::1\"]\n  min_ttl: 1s\n  max_ttl: 10s\n  grace: 2s\n",
            "c.yaml",
        )
        .unwrap();
        assert_eq!(
            config.names.nameservers,
            [
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(config.names.grace, Duration::from_secs(2));
        let errors = crate::config::from_yaml(
            "allowlist:\n  nameservers: [dns.example]\n  min_ttl: 1m\n  max_ttl: 10s\n",
            "c.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            errors.contains("allowlist.nameservers[0]: \"dns.example\""),
            "{errors}"
        );
        assert!(
            errors.contains(
                "allowlist.max_ttl: \"10s\": expected a duration at least allowlist.min_ttl"
            ),
            "{errors}"
        );
    }

    #[test]
    fn dns_names_are_told_from_addresses_and_junk() {
        for name in ["sip.carrier.example", "_sip._udp.carrier.example", "a.b."] {
            assert!(is_dns_name(name), "{name}");
        }
        for text in ["192.0.2.1", "localhost", "a..b", "bad name.example", ""] {
            assert!(!is_dns_name(text), "{text}");
        }
    }
}
