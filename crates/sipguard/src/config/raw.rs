//! Stage one: the file as written, read from YAML into [`RawConfig`].
//!
//! Every leaf is kept as the text the operator wrote (`Option<String>`), so a bad address or
//! duration is a validation problem that names its value and is reported alongside all the
//! others, instead of a parse error that stops at the first. Only a wrongly shaped value (a list
//! where an address belongs, a section that is not a mapping) or broken YAML stops this stage.
//!
//! Unknown keys are collected with `serde_ignored` rather than rejected with
//! `deny_unknown_fields`, which would stop at the first one: a file with three typos gets three
//! lines. `serde_path_to_error` names the key path of a wrongly shaped value.

use super::error::{quote, Problem, ProblemKind};
use serde::Deserialize;

/// The configuration file as written. Every key is optional; validation fills in defaults.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawConfig {
    pub listen: Option<RawListen>,
    pub pbx: Option<RawPbx>,
    pub sessions: Option<RawSessions>,
    pub limits: Option<RawLimits>,
    pub deny: Option<Vec<String>>,
    pub allowlist: Option<RawAllowlistRef>,
    pub rules: Option<RawRules>,
    pub trust_for: Option<String>,
    pub tcp: Option<RawTcp>,
    pub tls: Option<RawTls>,
    pub metrics: Option<RawListenOne>,
    pub admin: Option<RawAdmin>,
    pub journal: Option<RawJournal>,
    pub dial: Option<RawDial>,
    pub call_rates: Option<RawCallRates>,
    pub country_filter: Option<RawCountryFilter>,
    pub feeds: Option<super::feeds::RawFeeds>,
    pub outbound: Option<RawOutbound>,
    pub nftables: Option<RawNftables>,
    pub cluster: Option<RawCluster>,
}

/// The outbound path: the PBX's loopback outbound proxy, and the address carriers see.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawOutbound {
    pub listen: Option<String>,
    pub public: Option<String>,
}

/// Kernel offload of bans into an nftables table of sipguard's own.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawNftables {
    pub enabled: Option<String>,
    pub table: Option<String>,
    pub untrusted_limit: Option<String>,
}

/// Bans shared with other nodes through Redis.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCluster {
    pub redis: Option<RawRedis>,
    pub node: Option<String>,
    pub key_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRedis {
    pub url: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

/// The admin API: its address, and the file holding the token every request must carry.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
    pub token_file: Option<String>,
}

/// A service on one TCP address (the metrics exporter), or `off`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawListenOne {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawJournal {
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawListen {
    pub udp: Option<Vec<String>>,
    pub tcp: Option<Vec<String>>,
    pub tls: Option<Vec<String>>,
}

/// Limits of the TCP and TLS connections.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawTcp {
    pub max_connections: Option<String>,
    pub max_connections_per_ip: Option<String>,
    pub idle_timeout: Option<String>,
    pub message_timeout: Option<String>,
}

/// The TLS listeners' certificate.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawTls {
    pub certificate: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawPbx {
    pub address: Option<String>,
    pub upstream_bind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawSessions {
    pub idle_timeout: Option<String>,
    pub max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawLimits {
    pub max_message_size: Option<String>,
    pub max_tracked_sources: Option<String>,
}

/// Where the allowlist file is and whether it is enforced; the file itself is [`RawAllowlist`].
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAllowlistRef {
    pub file: Option<String>,
    pub mode: Option<String>,
    pub nameservers: Option<Vec<String>>,
    pub min_ttl: Option<String>,
    pub max_ttl: Option<String>,
    pub grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRules {
    pub scanner: Option<RawScannerRule>,
    pub register_failures: Option<RawRule>,
    pub invite_failures: Option<RawRule>,
    pub enumeration: Option<RawRule>,
    pub flood: Option<RawFloodRule>,
    pub garbage: Option<RawRule>,
    pub ipv6_prefix: Option<RawIpv6Prefix>,
    pub repeat_offenders: Option<RawRepeat>,
}

/// The flood rule: a [`RawRule`] with a higher threshold for sources that authenticated.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawFloodRule {
    pub mode: Option<String>,
    pub threshold: Option<String>,
    pub trusted_threshold: Option<String>,
    pub window: Option<String>,
    pub ban_for: Option<String>,
}

/// How evidence against IPv6 addresses aggregates to their prefix.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawIpv6Prefix {
    pub length: Option<String>,
    pub offenders: Option<String>,
}

/// A rule that trips at a count of events within a window.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRule {
    pub mode: Option<String>,
    pub threshold: Option<String>,
    pub window: Option<String>,
    pub ban_for: Option<String>,
}

/// The scanner rule trips on one packet, so it has no threshold or window; it has patterns.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawScannerRule {
    pub mode: Option<String>,
    pub ban_for: Option<String>,
    pub user_agents: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRepeat {
    pub within: Option<String>,
    pub max_ban: Option<String>,
}

/// The allowlist file as written: categories named by the operator (`carriers`, `offices`), in
/// file order, each a list of groups. A plain map would lose the order problems are reported in.
#[derive(Debug, Default)]
pub(crate) struct RawAllowlist {
    pub categories: Vec<(String, Option<Vec<RawGroup>>)>,
}

impl<'de> Deserialize<'de> for RawAllowlist {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Categories;
        impl<'de> serde::de::Visitor<'de> for Categories {
            type Value = RawAllowlist;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping of group categories")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawAllowlist, A::Error> {
                let mut categories = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    categories.push(entry);
                }
                Ok(RawAllowlist { categories })
            }
        }
        deserializer.deserialize_map(Categories)
    }
}

/// One named group of networks in the allowlist file.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawGroup {
    pub name: Option<String>,
    pub cidrs: Option<Vec<String>>,
    pub names: Option<Vec<String>>,
    pub identity: Option<String>,
}

/// The `dial` section: the dialling plan and who may dial each class.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawDial {
    pub mode: Option<String>,
    pub ban_for: Option<String>,
    pub plan: Option<RawDialPlan>,
    pub national: Option<RawClass>,
    pub international: Option<RawClass>,
    pub premium: Option<RawClass>,
    pub special: Option<RawClass>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawDialPlan {
    pub country_code: Option<String>,
    pub national_prefix: Option<String>,
    pub international_prefixes: Option<Vec<String>>,
    pub outside_line: Option<String>,
    pub min_national_digits: Option<String>,
}

/// One class of destinations: its prefixes and who may dial it (`countries` is for
/// international only).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawClass {
    pub prefixes: Option<Vec<String>>,
    pub allow: Option<Vec<String>>,
    pub countries: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCallRates {
    pub mode: Option<String>,
    pub ban_for: Option<String>,
    pub per_source_per_minute: Option<String>,
    pub per_user_per_minute: Option<String>,
    pub per_user_per_hour: Option<String>,
    pub concurrent_per_user: Option<String>,
    pub same_prefix: Option<String>,
    pub same_prefix_digits: Option<String>,
    pub call_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCountryFilter {
    pub database: Option<String>,
    pub mode: Option<String>,
    pub ban_for: Option<String>,
    pub register: Option<RawCountries>,
    pub invite: Option<RawCountries>,
    pub private: Option<String>,
    pub unknown: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCountries {
    pub only: Option<Vec<String>>,
    pub except: Option<Vec<String>>,
}

/// What a rule's `mode` accepts, in messages.
pub(crate) const MODES: &str = "one of observe, drop, ban";
/// What a duration key accepts, in messages.
pub(crate) const DURATION: &str = "a duration such as 30s, 10m, 1h";
/// A network in `deny` or the allowlist, in messages.
pub(crate) const NETWORK: &str =
    "a network such as 192.0.2.0/24 or 2001:db8::/32, or a single address";
const THRESHOLD: &str = "a whole number of at least 1";
const PREFIXES: &str = "a list of number prefixes, such as [\"+449\", \"+1900\"]";
/// A number prefix of the dial rules, in messages.
pub(crate) const PREFIX: &str =
    "a number prefix: + and digits for an international number (+449), digits for one dialled as is (118)";
const CALLERS: &str = "a list of callers, such as [allowlisted, phones, pbx]";
/// A kind of caller of the dial rules, in messages.
pub(crate) const CALLER: &str = "one of allowlisted, phones, others, pbx";
const LIMIT: &str = "a whole number (0: off)";
const COUNTRIES: &str = "a mapping with only or except, such as {except: [XX]}";
const COUNTRY_LIST: &str = "a list of ISO country codes, such as [FR, DE]";
/// A country of the country filter, in messages.
pub(crate) const COUNTRY: &str = "a two-letter ISO country code, such as FR";

/// The keys a file may hold, with what belongs at each, in the words messages use. Unknown keys
/// list their known siblings from here, and a wrongly shaped value says what was expected. A
/// `[]` suffix stands for any item of a list, a `*` segment for any key the operator names; a
/// mapping's keys are the entries below it. Unit tests check that each key of both is accepted.
pub(crate) struct Schema(&'static [(&'static str, &'static str)]);

/// The main configuration file.
pub(crate) const SCHEMA: Schema = Schema(&[
    ("", "a mapping"),
    ("listen", "a mapping"),
    (
        "listen.udp",
        "a list of addresses with ports, such as [\"0.0.0.0:5060\", \"[::]:5060\"]",
    ),
    (
        "listen.udp[]",
        "an address with a port, such as 0.0.0.0:5060",
    ),
    (
        "listen.tcp",
        "a list of addresses with ports, such as [\"0.0.0.0:5060\"], or [] for no TCP",
    ),
    (
        "listen.tcp[]",
        "an address with a port, such as 0.0.0.0:5060",
    ),
    (
        "listen.tls",
        "a list of addresses with ports, such as [\"0.0.0.0:5061\"], or [] for no TLS",
    ),
    (
        "listen.tls[]",
        "an address with a port, such as 0.0.0.0:5061",
    ),
    ("pbx", "a mapping"),
    (
        "pbx.address",
        "an address with a port, such as 127.0.0.1:5080",
    ),
    ("pbx.upstream_bind", "an IP address, such as 127.0.0.1"),
    ("sessions", "a mapping"),
    ("sessions.idle_timeout", "a duration such as 30s, 10m, 1h"),
    (
        "sessions.max",
        "a whole number greater than 0, such as 20000",
    ),
    ("limits", "a mapping"),
    (
        "limits.max_message_size",
        "a number of bytes from 512 to 65535",
    ),
    (
        "limits.max_tracked_sources",
        "a whole number of at least 1000, such as 100000",
    ),
    (
        "deny",
        "a list of networks, such as [\"192.0.2.0/24\", \"2001:db8::/32\"]",
    ),
    ("deny[]", NETWORK),
    ("allowlist", "a mapping"),
    (
        "allowlist.file",
        "a file name, such as allowlist.yaml (relative to this file's directory)",
    ),
    ("allowlist.mode", "off or enforce"),
    (
        "allowlist.nameservers",
        "a list of DNS servers, such as [\"127.0.0.1:53\"], or [] for the system's",
    ),
    (
        "allowlist.nameservers[]",
        "an IP address, with a port if not 53, such as 192.0.2.53 or 127.0.0.1:5353",
    ),
    ("allowlist.min_ttl", DURATION),
    ("allowlist.max_ttl", DURATION),
    ("allowlist.grace", DURATION),
    ("rules", "a mapping"),
    ("rules.scanner", "a mapping"),
    ("rules.scanner.mode", MODES),
    ("rules.scanner.ban_for", DURATION),
    (
        "rules.scanner.user_agents",
        "a list of User-Agent patterns, such as [\"MyOwnBadTool\"]",
    ),
    (
        "rules.scanner.user_agents[]",
        "a User-Agent pattern, such as MyOwnBadTool",
    ),
    ("rules.register_failures", "a mapping"),
    ("rules.register_failures.mode", MODES),
    ("rules.register_failures.threshold", THRESHOLD),
    ("rules.register_failures.window", DURATION),
    ("rules.register_failures.ban_for", DURATION),
    ("rules.invite_failures", "a mapping"),
    ("rules.invite_failures.mode", MODES),
    ("rules.invite_failures.threshold", THRESHOLD),
    ("rules.invite_failures.window", DURATION),
    ("rules.invite_failures.ban_for", DURATION),
    ("rules.enumeration", "a mapping"),
    ("rules.enumeration.mode", MODES),
    ("rules.enumeration.threshold", THRESHOLD),
    ("rules.enumeration.window", DURATION),
    ("rules.enumeration.ban_for", DURATION),
    ("rules.flood", "a mapping"),
    ("rules.flood.mode", MODES),
    ("rules.flood.threshold", THRESHOLD),
    ("rules.flood.window", DURATION),
    ("rules.flood.ban_for", DURATION),
    ("rules.flood.trusted_threshold", THRESHOLD),
    ("rules.garbage", "a mapping"),
    ("rules.garbage.mode", MODES),
    ("rules.garbage.threshold", THRESHOLD),
    ("rules.garbage.window", DURATION),
    ("rules.garbage.ban_for", DURATION),
    ("rules.ipv6_prefix", "a mapping"),
    (
        "rules.ipv6_prefix.length",
        "a prefix length from 1 to 128, such as 64",
    ),
    (
        "rules.ipv6_prefix.offenders",
        "a whole number of banned addresses, such as 4 (0: never ban a prefix)",
    ),
    ("rules.repeat_offenders", "a mapping"),
    ("rules.repeat_offenders.within", DURATION),
    ("rules.repeat_offenders.max_ban", DURATION),
    ("trust_for", DURATION),
    ("tcp", "a mapping"),
    (
        "tcp.max_connections",
        "a whole number greater than 0, such as 10000",
    ),
    (
        "tcp.max_connections_per_ip",
        "a whole number greater than 0, such as 100",
    ),
    ("tcp.idle_timeout", DURATION),
    ("tcp.message_timeout", DURATION),
    ("tls", "a mapping"),
    (
        "tls.certificate",
        "a PEM file of the certificate chain, such as cert.pem (relative to this file's directory)",
    ),
    (
        "tls.key",
        "a PEM file of the private key, such as key.pem (relative to this file's directory)",
    ),
    ("metrics", "a mapping"),
    (
        "metrics.listen",
        "an address with a port, such as 127.0.0.1:9464, or off",
    ),
    ("admin", "a mapping"),
    (
        "admin.listen",
        "a loopback address with a port, such as 127.0.0.1:9465, or off",
    ),
    (
        "admin.token_file",
        "a file name, such as /var/lib/sipguard/admin.token (relative to this file's directory)",
    ),
    ("journal", "a mapping"),
    (
        "journal.path",
        "a file name, such as /var/lib/sipguard/bans.journal (relative to this file's directory)",
    ),
    ("dial", "a mapping"),
    ("dial.mode", MODES),
    ("dial.ban_for", DURATION),
    ("dial.plan", "a mapping"),
    ("dial.plan.country_code", "the home country calling code, such as \"44\""),
    ("dial.plan.national_prefix", "the national (trunk) prefix, such as \"0\""),
    ("dial.plan.international_prefixes", "a list of international prefixes, such as [\"00\"]"),
    ("dial.plan.international_prefixes[]", "an international prefix, such as \"00\" or \"011\""),
    ("dial.plan.outside_line", "the outside-line prefix, such as \"9\""),
    ("dial.plan.min_national_digits", "a whole number of digits, such as 10 (0: off)"),
    ("dial.national", "a mapping"),
    ("dial.national.prefixes", PREFIXES),
    ("dial.national.prefixes[]", PREFIX),
    ("dial.national.allow", CALLERS),
    ("dial.national.allow[]", CALLER),
    ("dial.international", "a mapping"),
    ("dial.international.prefixes", PREFIXES),
    ("dial.international.prefixes[]", PREFIX),
    ("dial.international.allow", CALLERS),
    ("dial.international.allow[]", CALLER),
    ("dial.premium", "a mapping"),
    ("dial.premium.prefixes", PREFIXES),
    ("dial.premium.prefixes[]", PREFIX),
    ("dial.premium.allow", CALLERS),
    ("dial.premium.allow[]", CALLER),
    ("dial.special", "a mapping"),
    ("dial.special.prefixes", PREFIXES),
    ("dial.special.prefixes[]", PREFIX),
    ("dial.special.allow", CALLERS),
    ("dial.special.allow[]", CALLER),
    ("dial.international.countries", "a list of country calling codes, such as [\"33\", \"49\"]"),
    ("dial.international.countries[]", "a country calling code, such as 33"),
    ("call_rates", "a mapping"),
    ("call_rates.mode", MODES),
    ("call_rates.ban_for", DURATION),
    ("call_rates.per_source_per_minute", LIMIT),
    ("call_rates.per_user_per_minute", LIMIT),
    ("call_rates.per_user_per_hour", LIMIT),
    ("call_rates.concurrent_per_user", "a whole number from 0 (off) to 16"),
    ("call_rates.same_prefix", LIMIT),
    ("call_rates.same_prefix_digits", "a number of digits from 1 to 15, such as 6"),
    ("call_rates.call_timeout", DURATION),
    ("country_filter", "a mapping"),
    ("country_filter.database", "a MaxMind-format country database, such as /var/lib/GeoIP/GeoLite2-Country.mmdb (relative to this file's directory)"),
    ("country_filter.mode", MODES),
    ("country_filter.ban_for", DURATION),
    ("country_filter.register", COUNTRIES),
    ("country_filter.register.only", COUNTRY_LIST),
    ("country_filter.register.only[]", COUNTRY),
    ("country_filter.register.except", COUNTRY_LIST),
    ("country_filter.register.except[]", COUNTRY),
    ("country_filter.invite", COUNTRIES),
    ("country_filter.invite.only", COUNTRY_LIST),
    ("country_filter.invite.only[]", COUNTRY),
    ("country_filter.invite.except", COUNTRY_LIST),
    ("country_filter.invite.except[]", COUNTRY),
    ("country_filter.private", "one of allow, deny, lookup"),
    ("country_filter.unknown", "one of allow, deny"),
    ("feeds", "a mapping"),
    ("feeds.lists", "a list of blocklists"),
    ("feeds.lists[]", "a mapping"),
    (
        "feeds.lists[].name",
        "a name of letters, digits, - and _ (a metric label), such as voipbl",
    ),
    (
        "feeds.lists[].file",
        "a file name, such as blocklist.txt (relative to this file's directory)",
    ),
    ("feeds.lists[].url", "an http:// or https:// URL"),
    ("feeds.lists[].apiban_key", "an APIBAN key"),
    ("feeds.lists[].apiban_url", "an http:// or https:// URL"),
    ("feeds.lists[].interval", DURATION),
    (
        "feeds.bans_file",
        "a file name, such as /var/lib/sipguard/bans.txt (relative to this file's directory), or off",
    ),
    ("outbound", "a mapping"),
    (
        "outbound.listen",
        "a loopback address with a port, such as 127.0.0.1:5070",
    ),
    (
        "outbound.public",
        "the public address a UDP listener receives on, such as 203.0.113.10:5060",
    ),
    ("nftables", "a mapping"),
    ("nftables.enabled", "true or false"),
    (
        "nftables.table",
        "a table name of letters, digits and _, at most 32, such as sipguard",
    ),
    (
        "nftables.untrusted_limit",
        "a whole number of packets a second, such as 50000 (0: off)",
    ),
    ("cluster", "a mapping"),
    ("cluster.redis", "a mapping"),
    (
        "cluster.redis.url",
        "a Redis URL, such as redis://10.0.0.5:6379/0, rediss://redis.example.net:6380/0 (TLS) \
         or unix:///run/redis/redis.sock",
    ),
    (
        "cluster.redis.ca_file",
        "a PEM file of the CA certificates that sign Redis's, such as redis-ca.pem (relative to \
         this file's directory), with a rediss:// URL",
    ),
    (
        "cluster.redis.client_cert",
        "a PEM file of this node's client certificate chain, such as node.crt (relative to this \
         file's directory), with a rediss:// URL and client_key",
    ),
    (
        "cluster.redis.client_key",
        "a PEM file of the client certificate's private key, such as node.key (relative to this \
         file's directory), with a rediss:// URL and client_cert",
    ),
    (
        "cluster.node",
        "a node name of 1 to 64 printable characters without spaces, such as pbx-edge-1",
    ),
    (
        "cluster.key_prefix",
        "a key prefix of at most 64 printable characters without spaces, such as sipguard:",
    ),
]);

/// The allowlist file: categories of the operator's naming, each a list of named groups.
pub(crate) const ALLOWLIST_SCHEMA: Schema = Schema(&[
    (
        "",
        "a mapping of categories to lists of groups, such as \
         carriers: [{name: example-carrier, cidrs: [198.51.100.0/28]}]",
    ),
    (
        "*",
        "a list of groups, such as [{name: example-carrier, cidrs: [198.51.100.0/28]}]",
    ),
    ("*[]", "a mapping"),
    ("*[].name", "a name, such as example-carrier"),
    (
        "*[].cidrs",
        "a list of networks, such as [\"198.51.100.0/28\", \"2001:db8:10::/48\"]",
    ),
    ("*[].cidrs[]", NETWORK),
    (
        "*[].names",
        "a list of DNS names, such as [sip.carrier.example, _sip._udp.carrier.example]",
    ),
    (
        "*[].names[]",
        "a host name or an SRV name, such as sip.carrier.example",
    ),
    ("*[].identity", IDENTITY),
]);

/// What an allowlist group's `identity` accepts, in messages.
pub(crate) const IDENTITY: &str =
    "a loopback address of the group's own, such as 127.0.1.1, that the PBX knows the group by";

impl Schema {
    /// The keys a mapping at `parent` accepts, in schema order (names of the operator's choosing
    /// are not listed: any goes there).
    pub(crate) fn known_keys(&self, parent: &str) -> Vec<&'static str> {
        let parent = self.generic(parent);
        self.0
            .iter()
            .filter_map(|(path, _)| {
                let name = if parent.is_empty() {
                    *path
                } else {
                    path.strip_prefix(parent.as_str())?.strip_prefix('.')?
                };
                let is_child = !name.is_empty() && !name.contains(['.', '[']) && name != "*";
                is_child.then_some(name)
            })
            .collect()
    }

    /// What belongs at `path`.
    pub(crate) fn expected_at(&self, path: &str) -> Option<&'static str> {
        let generic = self.generic(path);
        self.0
            .iter()
            .find(|(key, _)| *key == generic)
            .map(|(_, expected)| *expected)
    }

    /// `path` as the schema writes it: list indices dropped (`udp[1]` is `udp[]`), and where the
    /// schema takes any top-level key, that key written `*`.
    fn generic(&self, path: &str) -> String {
        let mut generic = String::with_capacity(path.len());
        let mut in_index = false;
        for c in path.chars() {
            match c {
                '[' => {
                    in_index = true;
                    generic.push_str("[]");
                }
                ']' => in_index = false,
                _ if in_index => {}
                _ => generic.push(c),
            }
        }
        let named_top_level = self.0.iter().any(|(key, _)| *key == "*");
        if named_top_level && !generic.is_empty() {
            let end = generic.find(['.', '[']).unwrap_or(generic.len());
            generic.replace_range(..end, "*");
        }
        generic
    }
}

/// What belongs at `path` of the main file, from [`SCHEMA`].
pub(crate) fn expected_at(path: &str) -> Option<&'static str> {
    SCHEMA.expected_at(path)
}

/// Reads `text` into a [`RawConfig`], pushing every problem found onto `problems`. Returns `None`
/// when the YAML could not be read into shape; unknown keys alone still return the config, so
/// validation can report its own problems alongside them.
pub(crate) fn parse(text: &str, origin: &str, problems: &mut Vec<Problem>) -> Option<RawConfig> {
    parse_as(text, origin, &SCHEMA, problems)
}

/// Reads an allowlist file's `text` into a [`RawAllowlist`], as [`parse`] does the main file.
pub(crate) fn parse_allowlist(
    text: &str,
    origin: &str,
    problems: &mut Vec<Problem>,
) -> Option<RawAllowlist> {
    parse_as(text, origin, &ALLOWLIST_SCHEMA, problems)
}

fn parse_as<T: serde::de::DeserializeOwned + Default>(
    text: &str,
    origin: &str,
    schema: &Schema,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let mut unknown = Vec::new();
    let mut shape_path = None;
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        let mut on_unknown = |path: serde_ignored::Path| unknown.push(ignored_path(&path));
        let de = serde_ignored::Deserializer::new(de, &mut on_unknown);
        // An empty file (or one of comments only) is a null document: all defaults.
        serde_path_to_error::deserialize::<_, Option<T>>(de).map_err(|err| {
            shape_path = Some(error_path(err.path()));
            err.into_inner()
        })
    });
    for path in unknown {
        problems.push(unknown_key(origin, schema, path));
    }
    match result {
        Ok(raw) => Some(raw.unwrap_or_default()),
        Err(err) => {
            problems.push(yaml_problem(text, origin, schema, shape_path, &err));
            None
        }
    }
}

fn unknown_key(origin: &str, schema: &Schema, path: String) -> Problem {
    let parent = match path.rfind(['.', '[']) {
        Some(end) => &path[..end],
        None => "",
    };
    let known = schema.known_keys(parent);
    let message = if known.is_empty() {
        "unknown key".to_owned()
    } else {
        format!("unknown key, expected one of: {}", known.join(", "))
    };
    Problem {
        kind: ProblemKind::UnknownKey,
        origin: origin.to_owned(),
        location: None,
        path,
        value: None,
        message,
    }
}

/// Turns a YAML error into a problem: a wrongly shaped value says what belongs at its key;
/// anything else (broken YAML, a duplicate key, several documents) keeps the parser's words.
fn yaml_problem(
    text: &str,
    origin: &str,
    schema: &Schema,
    path: Option<String>,
    err: &serde_saphyr::Error,
) -> Problem {
    use serde_saphyr::MessageFormatter;
    let err = err.without_snippet();
    let location = err
        .location()
        .filter(|loc| loc.line() > 0)
        .map(|loc| (loc.line(), loc.column()));
    let path = path.unwrap_or_default();
    let is_shape = matches!(
        err,
        serde_saphyr::Error::Unexpected { .. } | serde_saphyr::Error::SerdeInvalidType { .. }
    );
    let shape_expected = is_shape
        .then(|| schema.expected_at(&path))
        .flatten()
        .map(|expected| {
            let keys = schema.known_keys(&path);
            if keys.is_empty() {
                expected.to_owned()
            } else {
                format!("{expected} with the keys {}", keys.join(", "))
            }
        });
    let (kind, value, message) = match shape_expected {
        Some(expected) => (
            ProblemKind::WrongShape,
            location.map(|(line, column)| quote(found_at(text, line, column))),
            format!("expected {expected}"),
        ),
        None => {
            // The formatter's text is for people; keep it on one line whatever the input was.
            let message = serde_saphyr::UserMessageFormatter.format_message(err);
            (
                ProblemKind::Syntax,
                None,
                format!("not valid YAML: {}", message.escape_debug()),
            )
        }
    };
    Problem {
        kind,
        origin: origin.to_owned(),
        location,
        path,
        value,
        message,
    }
}

/// The text at `line:column` (1-based) to the end of that line, without a trailing comment: what
/// the operator wrote where the parser wanted something else.
fn found_at(text: &str, line: u64, column: u64) -> &str {
    let Some(line) = text.lines().nth((line as usize).saturating_sub(1)) else {
        return "";
    };
    let start = line
        .char_indices()
        .nth((column as usize).saturating_sub(1))
        .map_or(line.len(), |(at, _)| at);
    let rest = &line[start..];
    let rest = rest.find(" #").map_or(rest, |end| &rest[..end]);
    rest.trim()
}

/// `listen.udp[0]` style, the way keys are written in messages and docs. Wrappers serde_ignored
/// inserts for `Option` and newtypes are not keys and are skipped.
fn ignored_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => join_key(ignored_path(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

fn error_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    path.iter()
        .fold(String::new(), |out, segment| match segment {
            Segment::Seq { index } => format!("{out}[{index}]"),
            Segment::Map { key } | Segment::Enum { variant: key } => join_key(out, key),
            Segment::Unknown => out,
        })
}

fn join_key(mut parent: String, key: &str) -> String {
    if !parent.is_empty() {
        parent.push('.');
    }
    parent.push_str(key);
    parent
}
