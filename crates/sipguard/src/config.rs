//! sipguard's configuration: YAML in, a validated [`Config`] out, or every problem at once.
//!
//! Two stages (docs/design.md section 4): `raw` reads the file into a loose shape that keeps each
//! value as written and collects unknown keys with their paths; `validate` turns that into typed
//! settings (`SocketAddr`, `Duration`, `IpNet`), filling in defaults and gathering every problem,
//! each naming file, key path, value and what was expected. `sipguard check-config` and `run`
//! share this code, and a reload will too, so a file that checks clean also starts.
//!
//! The allowlist is a file of its own (`allowlist.file`, relative to the main file), read and
//! validated as part of the main file's validation: one run reports the problems of both, each
//! under its own file name.
//!
//! YAML is read with serde-saphyr: serde_yaml is archived and serde_yml unmaintained and unsound,
//! while serde-saphyr is maintained and does not panic on hostile input (it has budgets against
//! alias bombs), which matters for a file that a reload reads while traffic flows.

mod allowlist;
mod error;
mod feeds;
mod raw;
mod validate;

pub use error::{ConfigErrors, Problem, ProblemKind};
pub use feeds::{FeedOrigin, FeedSource, FeedsConfig, NamesConfig};

use sipguard_policy::PolicyConfig;
use sipguard_relay::{RelayConfig, StreamConfig, TlsFiles};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The built-in configuration, used when no file is given; `config/default.yaml` in the source.
pub const DEFAULT_YAML: &str = include_str!("../../../config/default.yaml");

/// How the built-in configuration is named in messages.
pub const DEFAULT_ORIGIN: &str = "built-in default config";

/// Validated configuration: every address parsed, every number in range, every default filled
/// in. Holding one means the settings are usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// UDP listeners, in the order given (port 0 allowed, for tests).
    pub listen_udp: Vec<SocketAddr>,
    /// Plain TCP listeners (often the UDP addresses again); none turns TCP off.
    pub listen_tcp: Vec<SocketAddr>,
    /// TLS listeners; when there are any, `tls` names the certificate.
    pub listen_tls: Vec<SocketAddr>,
    /// Limits of TCP and TLS connections.
    pub streams: StreamConfig,
    /// The TLS certificate and key files, checked readable and usable by validation.
    pub tls: Option<TlsFiles>,
    /// Relay settings.
    pub relay: RelayConfig,
    /// Policy settings.
    pub policy: PolicyConfig,
    /// The metrics exporter, the admin API and the ban journal.
    pub ops: OpsConfig,
    /// Blocklists followed, and the file sipguard shares its own bans in.
    pub feeds: FeedsConfig,
    /// Names in the allowlist and how they are resolved.
    pub names: NamesConfig,
    /// The outbound path (the PBX's requests to carriers through sipguard); `None`: off.
    pub outbound: Option<OutboundConfig>,
    /// Bans offloaded into the kernel's nftables; `None` when off.
    pub nftables: Option<NftConfig>,
    /// Bans shared with other nodes through Redis; `None` when off.
    pub cluster: Option<ClusterConfig>,
}

/// The outbound path's addresses (docs/design.md, "Outbound path").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundConfig {
    /// The loopback listener the PBX names as its outbound proxy.
    pub listen: SocketAddr,
    /// The address carriers see in Via and Record-Route, one a UDP listener receives on;
    /// `None`: the first UDP listener's address, which is then not a wildcard.
    pub public: Option<SocketAddr>,
}

/// The kernel offload of bans (`crate::nft`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftConfig {
    /// The `inet` table sipguard owns: created at start, removed at a clean stop.
    pub table: String,
    /// The shield: packets a second that sources neither allowlisted nor trusted may send to
    /// sipguard's ports together, the excess dropped in the kernel, so a flood of forged sources
    /// (which no ban can catch) never crowds the listener's buffer; 0: no limit. A reload
    /// changes it.
    pub untrusted_limit: u32,
}

impl Default for NftConfig {
    fn default() -> Self {
        NftConfig {
            table: "sipguard".to_owned(),
            untrusted_limit: 50_000,
        }
    }
}

/// Bans shared through Redis (`crate::cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Where Redis (or Valkey) is; `rediss://` for TLS.
    pub redis_url: String,
    /// `rediss://` only: the PEM file of the CA that signed Redis's certificate, trusted in place
    /// of the system's roots (a private CA); `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `rediss://` only: the certificate and key this node shows a Redis that asks clients for
    /// one (`tls-auth-clients yes`); `None`: none shown.
    pub client_identity: Option<TlsFiles>,
    /// This node's name, carried by the bans it shares so it ignores its own.
    pub node: String,
    /// Put before every key and the channel, so several clusters can share one Redis.
    pub key_prefix: String,
}

/// Where the operator's services are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsConfig {
    /// Where `/metrics` is served; `None` when `off`.
    pub metrics: Option<SocketAddr>,
    /// Where the admin API listens, always a loopback address; `None` when `off`.
    pub admin: Option<SocketAddr>,
    /// The file the daemon writes the admin API's token to at each start; `None` for
    /// `admin.token` beside the journal (`admin::token_file`), found at start like the journal.
    pub admin_token: Option<PathBuf>,
    /// The ban journal; `None` for the default place, which depends on the environment the
    /// program starts in (`journal::default_path`), so it is found at start, not here.
    pub journal: Option<PathBuf>,
}

impl Default for Config {
    /// The built-in configuration ([`DEFAULT_YAML`]), parsed by the same code as any file. A unit
    /// test checks that it validates, so this does not fail in a built binary.
    fn default() -> Self {
        from_yaml(DEFAULT_YAML, DEFAULT_ORIGIN)
            .unwrap_or_else(|errors| panic!("the built-in default config is invalid:\n{errors}"))
    }
}

/// Settings given on the command line; each replaces the file's value and is validated with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen`: when not empty, replaces `listen.udp` and `listen.tcp`.
    pub listen_udp: Vec<String>,
    /// `--pbx`: replaces `pbx.address`.
    pub pbx: Option<String>,
    /// `--metrics`: replaces `metrics.listen`.
    pub metrics: Option<String>,
    /// `--admin`: replaces `admin.listen`.
    pub admin: Option<String>,
    /// `--journal`: replaces `journal.path` (relative to the working directory).
    pub journal: Option<String>,
}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(Some(path), &Overrides::default())
}

/// Reads and validates the file at `path` (the built-in default when `None`) with `overrides`
/// applied: what `sipguard run` does.
pub fn load_with(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    let Some(path) = path else {
        return from_yaml_with(DEFAULT_YAML, DEFAULT_ORIGIN, overrides);
    };
    let origin = path.display().to_string();
    let text = read_text(path).map_err(|err| {
        let (kind, message) = match err {
            ReadError::Io(err) => (ProblemKind::Unreadable, format!("cannot read: {err}")),
            err @ ReadError::NotUtf8 { .. } => {
                (ProblemKind::Syntax, format!("not valid YAML: {err}"))
            }
        };
        ConfigErrors::new(vec![Problem {
            kind,
            origin: origin.clone(),
            location: None,
            path: String::new(),
            value: None,
            message,
        }])
    })?;
    let dir = path.parent().unwrap_or(Path::new(""));
    check(&text, &origin, dir, overrides)
}

/// Validates YAML `text`; `origin` names it in messages (usually the file name). A relative
/// allowlist file name is taken from the current directory.
pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    from_yaml_with(text, origin, &Overrides::default())
}

/// Validates YAML `text` with `overrides` applied.
pub fn from_yaml_with(
    text: &str,
    origin: &str,
    overrides: &Overrides,
) -> Result<Config, ConfigErrors> {
    check(text, origin, Path::new(""), overrides)
}

/// Both stages; `dir` is where relative file names in `text` are taken from.
fn check(
    text: &str,
    origin: &str,
    dir: &Path,
    overrides: &Overrides,
) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let config = raw::parse(text, origin, &mut problems)
        .and_then(|raw| validate::validate(raw, origin, dir, overrides, &mut problems));
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigErrors::new(problems)),
    }
}

/// Why a configuration file's text could not be had.
#[derive(Debug)]
enum ReadError {
    Io(std::io::Error),
    NotUtf8 { at: usize },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(err) => write!(f, "{err}"),
            ReadError::NotUtf8 { at } => write!(f, "not UTF-8 text (bad byte at offset {at})"),
        }
    }
}

/// The text of the file at `path` (the main config or the allowlist).
fn read_text(path: &Path) -> Result<String, ReadError> {
    let bytes = std::fs::read(path).map_err(ReadError::Io)?;
    String::from_utf8(bytes).map_err(|err| ReadError::NotUtf8 {
        at: err.utf8_error().valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipguard_policy::{AllowlistMode, Mode, Rule};
    use std::net::IpAddr;
    use std::time::Duration;

    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn problems(text: &str) -> Vec<Problem> {
        from_yaml(text, "config.yaml")
            .expect_err("config should be invalid")
            .problems()
            .to_vec()
    }

    /// Each problem as `path: value: message`, for compact assertions.
    fn lines(text: &str) -> Vec<String> {
        let errors = from_yaml(text, "config.yaml").expect_err("config should be invalid");
        errors
            .to_string()
            .lines()
            .map(|line| line.strip_prefix("config.yaml").unwrap().to_owned())
            .collect()
    }

    fn repo_file(path: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(path)
    }

    #[test]
    fn built_in_default_validates_with_the_documented_values() {
        let config = from_yaml(DEFAULT_YAML, DEFAULT_ORIGIN).expect("built-in default is valid");
        assert_eq!(config.listen_udp, ["0.0.0.0:5060".parse().unwrap()]);
        assert_eq!(config.relay.pbx, "127.0.0.1:5080".parse().unwrap());
        assert_eq!(
            config.relay.upstream_bind,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(config.relay.session_idle, Duration::from_secs(7200));
        assert_eq!(config.relay.max_sessions, 20_000);
        assert_eq!(config.policy.max_message_size, 16_384);
        assert!(config.policy.deny.is_empty());
        assert_eq!(Config::default(), config);
    }

    #[test]
    fn built_in_default_spells_out_the_policy_crates_rule_defaults() {
        // default.yaml writes every rule out for operators; it must say what the code does.
        let config = from_yaml(DEFAULT_YAML, DEFAULT_ORIGIN).unwrap();
        assert_eq!(config.policy, PolicyConfig::default());
        assert_eq!(config.policy.allowlist_mode, AllowlistMode::Off);
        assert!(config.policy.allowlist.is_empty());
        for key in [
            "scanner:",
            "register_failures:",
            "invite_failures:",
            "enumeration:",
            "flood:",
            "repeat_offenders:",
            "trust_for:",
            "max_tracked_sources:",
        ] {
            assert!(
                DEFAULT_YAML.contains(key),
                "default.yaml does not set {key}"
            );
        }
    }

    #[test]
    fn keys_left_out_take_the_same_defaults_as_the_built_in_file() {
        assert_eq!(from_yaml("", "empty.yaml").unwrap(), Config::default());
        assert_eq!(
            from_yaml("# nothing set\n", "c.yaml").unwrap(),
            Config::default()
        );
        assert_eq!(
            from_yaml("pbx:\nsessions: ~\n", "c.yaml").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn outbound_is_off_by_default_and_on_with_a_loopback_listener() {
        assert_eq!(Config::default().outbound, None);
        let config = from_yaml(
            "listen:\n  udp: [\"192.0.2.1:5060\"]\noutbound:\n  listen: 127.0.0.1:5070\n",
            "config.yaml",
        )
        .unwrap();
        assert_eq!(
            config.outbound,
            Some(OutboundConfig {
                listen: "127.0.0.1:5070".parse().unwrap(),
                public: None,
            })
        );
        let example = load(&repo_file("config/example.yaml")).unwrap();
        assert_eq!(
            example.outbound.and_then(|o| o.public),
            Some("203.0.113.10:5060".parse().unwrap())
        );
    }

    #[test]
    fn outbound_refuses_an_open_relay_a_wildcard_without_public_and_a_public_nobody_receives_on() {
        assert_eq!(
            lines("outbound:\n  listen: 0.0.0.0:5070\n  public: 192.0.2.1:5060\n"),
            [
                ": outbound.listen: \"0.0.0.0:5070\": expected a loopback address such as \
              127.0.0.1:5070: the PBX sends there, and anywhere else it would relay requests \
              for anyone who reaches it"
            ]
        );
        let found = problems("outbound:\n  listen: 127.0.0.1:5070\n");
        assert_eq!(found.len(), 1);
        assert!(
            found[0].message.contains("outbound.public beside it"),
            "{found:?}"
        );
        let found = problems(
            "listen:\n  udp: [\"192.0.2.1:5060\"]\noutbound:\n  listen: 127.0.0.1:5070\n  \
             public: 192.0.2.2:5060\n",
        );
        assert_eq!(found[0].path, "outbound.public");
        let found = problems("outbound:\n  listen: 127.0.0.1:5080\n  public: 192.0.2.1:5060\n");
        assert_eq!(found[0].path, "outbound.listen");
        let found = problems("outbound:\n  public: 192.0.2.1:5060\n");
        assert_eq!(found[0].path, "outbound.public");
    }

    #[test]
    fn example_config_validates_with_its_allowlist_pattern_and_observed_rule() {
        let config = load(&repo_file("config/example.yaml")).expect("example is valid");
        assert!(config.listen_udp.iter().any(SocketAddr::is_ipv6));
        assert!(!config.policy.deny.is_empty());
        let policy = &config.policy;
        let mut networks = policy.allowlist.iter().flat_map(|group| &group.networks);
        assert!(networks
            .clone()
            .any(|net| net.to_string() == "203.0.113.0/24"));
        assert!(networks.any(|net| matches!(net, ipnet::IpNet::V6(_))));
        assert_eq!(policy.scanner_user_agents.last().unwrap(), "MyOwnBadTool");
        assert_eq!(policy.invite_failures.mode, Mode::Observe);
        assert_eq!(config.feeds.lists.len(), 2);
        assert!(config.feeds.bans_file.is_some());
        assert!(config
            .names
            .names
            .iter()
            .any(|(_, name)| name == "_sip._udp.carrier.example"));
        sipguard_policy::Policy::new(config.policy).expect("example builds a policy");
    }

    fn networks_in(config: &Config) -> usize {
        let groups = &config.policy.allowlist;
        groups.iter().map(|group| group.networks.len()).sum()
    }

    #[test]
    fn shipped_example_allowlist_validates() {
        let path = repo_file("config/allowlist.example.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut problems = Vec::new();
        let networks = allowlist::from_yaml(&text, "allowlist.example.yaml", &mut problems);
        assert_eq!(problems, []);
        assert!(networks.unwrap().0.len() >= 4);
    }

    #[test]
    fn tcp_and_tls_keys_are_read_and_tcp_defaults_to_the_udp_port() {
        let defaults = Config::default();
        assert_eq!(defaults.listen_tcp, ["0.0.0.0:5060".parse().unwrap()]);
        assert!(defaults.listen_tls.is_empty() && defaults.tls.is_none());
        assert_eq!(defaults.streams.max_connections, 10_000);
        assert_eq!(defaults.streams.max_connections_per_ip, 100);
        assert_eq!(defaults.streams.idle_timeout, Duration::from_secs(7200));
        assert_eq!(defaults.streams.message_timeout, Duration::from_secs(10));

        let config = from_yaml(
            "listen:\n  tcp: []\ntcp:\n  max_connections: 50\n  max_connections_per_ip: 5\n  \
             idle_timeout: 5m\n  message_timeout: 3s\n",
            "c.yaml",
        )
        .unwrap();
        assert!(config.listen_tcp.is_empty(), "[] turns TCP off");
        assert_eq!(
            config.streams,
            sipguard_relay::StreamConfig {
                max_connections: 50,
                max_connections_per_ip: 5,
                idle_timeout: Duration::from_secs(300),
                message_timeout: Duration::from_secs(3),
            }
        );
    }

    #[test]
    fn tls_files_that_hold_no_certificate_or_key_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
        std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
        let file = dir.path().join("sipguard.yaml");
        std::fs::write(
            &file,
            "listen:\n  tls: [\"127.0.0.1:5061\"]\ntls:\n  certificate: cert.pem\n  key: key.pem\n",
        )
        .unwrap();
        let errors = load(&file).unwrap_err().to_string();
        let cert = dir.path().join("cert.pem");
        assert!(
            errors.contains("tls.certificate")
                && errors.contains(&format!("no PEM certificate in {}", cert.display())),
            "{errors}"
        );
        // Without TLS listeners the section may stay out.
        assert!(from_yaml("listen:\n  tls: []\n", "c.yaml").is_ok());
    }

    #[test]
    fn every_key_is_read_into_its_typed_value() {
        let config = from_yaml(
            "listen:\n  udp: [\"203.0.113.1:5060\", \"[2001:db8::1]:5060\"]\n\
             pbx:\n  address: \"[::1]:5080\"\n  upstream_bind: \"::1\"\n\
             sessions:\n  idle_timeout: 90m\n  max: 500\n\
             limits:\n  max_message_size: 8192\n\
             deny: [192.0.2.0/24, 198.51.100.7, \"2001:db8:bad::/48\", \"2001:db8::9\"]\n",
            "c.yaml",
        )
        .unwrap();
        assert_eq!(
            config.listen_udp,
            [
                "203.0.113.1:5060".parse().unwrap(),
                "[2001:db8::1]:5060".parse().unwrap()
            ]
        );
        assert_eq!(config.relay.pbx, "[::1]:5080".parse().unwrap());
        assert_eq!(config.relay.upstream_bind, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(config.relay.session_idle, Duration::from_secs(90 * 60));
        assert_eq!(config.relay.max_sessions, 500);
        assert_eq!(config.policy.max_message_size, 8192);
        let deny: Vec<String> = config.policy.deny.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            deny,
            [
                "192.0.2.0/24",
                "198.51.100.7/32",
                "2001:db8:bad::/48",
                "2001:db8::9/128"
            ]
        );
    }

    #[test]
    fn problem_line_names_file_key_value_and_expectation() {
        assert_eq!(
            from_yaml("sessions:\n  idle_timeout: 1 fortnight\n", "config.yaml")
                .unwrap_err()
                .to_string(),
            "config.yaml: sessions.idle_timeout: \"1 fortnight\": expected a duration such as 30s, 10m, 1h"
        );
    }

    #[test]
    fn every_value_problem_is_reported_at_once() {
        let found = lines(
            "listen:\n  udp: [\"0.0.0.0\", \"::1:5060\"]\n\
             pbx:\n  address: pbx.example.net:5080\n  upstream_bind: 127.0.0.1:0\n\
             sessions:\n  idle_timeout: 0s\n  max: 0\n\
             limits:\n  max_message_size: 100\n\
             deny: [192.0.2.7/24, 198.51.100.0/33, nonsense]\n",
        );
        assert_eq!(
            found,
            [
                ": listen.udp[0]: \"0.0.0.0\": expected an address with a port, such as 0.0.0.0:5060",
                ": listen.udp[1]: \"::1:5060\": expected an address with a port, IPv6 in brackets, such as [::1]:5060",
                ": pbx.address: \"pbx.example.net:5080\": expected an IP address with a port, such as 127.0.0.1:5080; host names are not looked up",
                ": pbx.upstream_bind: \"127.0.0.1:0\": expected an IP address without a port, such as 127.0.0.1",
                ": sessions.idle_timeout: \"0s\": expected a duration greater than 0, such as 2h",
                ": sessions.max: \"0\": expected a whole number greater than 0, such as 20000",
                ": limits.max_message_size: \"100\": expected a number of bytes from 512 to 65535",
                ": deny[0]: \"192.0.2.7/24\": expected a network address with no host bits set, such as 192.0.2.0/24",
                ": deny[1]: \"198.51.100.0/33\": expected a network such as 192.0.2.0/24 or 2001:db8::/32, or a single address",
                ": deny[2]: \"nonsense\": expected a network such as 192.0.2.0/24 or 2001:db8::/32, or a single address",
            ]
        );
    }

    #[test]
    fn unknown_keys_at_every_depth_are_all_named_with_their_paths() {
        let found = problems(
            "telemetry:\n  listen: 127.0.0.1:9464\n\
             listen:\n  udp: [\"0.0.0.0:5060\"]\n  sctp: [\"0.0.0.0:5060\"]\n\
             pbx:\n  adress: 127.0.0.1:5080\n\
             sessions:\n  idle: 1h\n  max: 10\n",
        );
        assert!(found.iter().all(|p| p.kind == ProblemKind::UnknownKey));
        let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["telemetry", "listen.sctp", "pbx.adress", "sessions.idle"]
        );
        assert_eq!(
            found[2].to_string(),
            "config.yaml: pbx.adress: unknown key, expected one of: address, upstream_bind"
        );
        assert_eq!(
            found[0].message,
            "unknown key, expected one of: listen, pbx, sessions, limits, deny, allowlist, rules, \
             trust_for, tcp, tls, metrics, admin, journal, dial, call_rates, country_filter, feeds, outbound, nftables, cluster"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported_together() {
        let found = lines("sesions:\n  max: 10\nlimits:\n  max_message_size: huge\n");
        assert_eq!(
            found,
            [
                ": sesions: unknown key, expected one of: listen, pbx, sessions, limits, deny, \
                 allowlist, rules, trust_for, tcp, tls, metrics, admin, journal, dial, call_rates, country_filter, feeds, outbound, nftables, cluster",
                ": limits.max_message_size: \"huge\": expected a number of bytes from 512 to 65535",
            ]
        );
    }

    #[test]
    fn wrongly_shaped_value_names_its_key_path_line_and_what_belongs_there() {
        let found = problems("listen:\n  udp: 0.0.0.0:5060 # one address\n");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, ProblemKind::WrongShape);
        assert_eq!(
            found[0].to_string(),
            "config.yaml:2:8: listen.udp: \"0.0.0.0:5060\": expected a list of addresses with \
             ports, such as [\"0.0.0.0:5060\", \"[::]:5060\"]"
        );

        let found = problems("deny:\n  - 192.0.2.0/24\n  - {net: 198.51.100.0/24}\n");
        assert_eq!(found[0].path, "deny[1]");
        assert_eq!(found[0].location, Some((3, 5)));
        assert_eq!(
            found[0].message,
            "expected a network such as 192.0.2.0/24 or 2001:db8::/32, or a single address"
        );

        let found = problems("sessions: 20000\n");
        assert_eq!(found[0].path, "sessions");
        assert_eq!(
            found[0].message,
            "expected a mapping with the keys idle_timeout, max"
        );
    }

    #[test]
    fn unknown_keys_before_a_wrongly_shaped_value_are_still_reported() {
        let found = problems("pbx:\n  adress: 127.0.0.1:5080\nsessions:\n  max: [1, 2]\n");
        let kinds: Vec<_> = found.iter().map(|p| (p.kind, p.path.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (ProblemKind::UnknownKey, "pbx.adress"),
                (ProblemKind::WrongShape, "sessions.max")
            ]
        );
    }

    #[test]
    fn broken_yaml_is_reported_with_line_and_column() {
        let found = problems("pbx:\n  address: 127.0.0.1:5080\n bad: indent\n");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, ProblemKind::Syntax);
        assert_eq!(found[0].location.map(|(line, _)| line), Some(3));
        assert!(
            found[0].message.starts_with("not valid YAML: "),
            "{}",
            found[0]
        );

        let found = problems("sessions:\n  max: 1\n  max: 2\n");
        assert_eq!(found[0].kind, ProblemKind::Syntax);
        assert!(found[0].message.contains("duplicate"), "{}", found[0]);

        let found = problems("sessions: {}\n---\nsessions: {}\n");
        assert_eq!(found[0].kind, ProblemKind::Syntax);
    }

    #[test]
    fn top_level_that_is_not_a_mapping_is_refused() {
        let found = problems("- 0.0.0.0:5060\n");
        assert_eq!(found[0].kind, ProblemKind::WrongShape);
        assert_eq!(
            found[0].message,
            "expected a mapping with the keys listen, pbx, sessions, limits, deny, allowlist, \
             rules, trust_for, tcp, tls, metrics, admin, journal, dial, call_rates, country_filter, feeds, outbound, nftables, cluster"
        );
    }

    #[test]
    fn pbx_on_an_address_sipguard_listens_on_is_refused_as_a_loop() {
        let found =
            lines("listen:\n  udp: [\"127.0.0.1:5060\"]\npbx:\n  address: 127.0.0.1:5060\n");
        assert_eq!(
            found,
            [
                ": pbx.address: \"127.0.0.1:5060\": expected the PBX's address, not one sipguard \
                listens on itself (listen.udp[0] is 127.0.0.1:5060): packets would loop"
            ]
        );
        // A wildcard listener receives what is sent to loopback on its port.
        let found = problems("pbx:\n  address: 127.0.0.1:5060\n");
        assert_eq!(found[0].path, "pbx.address");
        // The same port elsewhere may be another host: allowed.
        assert!(from_yaml("pbx:\n  address: 192.0.2.10:5060\n", "c.yaml").is_ok());
        // `[::]` is IPv6-only, so it does not cover an IPv4 PBX.
        assert!(from_yaml(
            "listen:\n  udp: [\"[::]:5060\"]\n  tcp: []\npbx:\n  address: 127.0.0.1:5060\n",
            "c.yaml"
        )
        .is_ok());
    }

    #[test]
    fn pbx_address_must_be_concrete() {
        let found = lines("pbx:\n  address: 0.0.0.0:5080\n");
        assert_eq!(
            found,
            [": pbx.address: \"0.0.0.0:5080\": expected the address the PBX listens on, such as \
                127.0.0.1:5080, not a wildcard"]
        );
        let found = lines("pbx:\n  address: 127.0.0.1:0\n");
        assert_eq!(
            found,
            [": pbx.address: \"127.0.0.1:0\": expected a port from 1 to 65535"]
        );
    }

    #[test]
    fn listeners_may_not_repeat_or_overlap() {
        let found = lines(
            "listen:\n  udp: [\"0.0.0.0:5060\", \"[::]:5060\", \"0.0.0.0:5060\", \"192.0.2.1:5060\", \"127.0.0.1:0\", \"127.0.0.2:0\"]\n",
        );
        assert_eq!(
            found,
            [
                ": listen.udp[2]: \"0.0.0.0:5060\": expected each address once, and listen.udp[0] is the same",
                ": listen.udp[3]: \"192.0.2.1:5060\": expected an address not covered by listen.udp[0] (0.0.0.0:5060)",
            ]
        );
        let found = lines("listen:\n  udp: []\n");
        assert_eq!(
            found,
            [": listen.udp: []: expected at least one address, such as 0.0.0.0:5060"]
        );
    }

    #[test]
    fn upstream_bind_follows_the_pbx_address_family() {
        let v6 = from_yaml("pbx:\n  address: \"[::1]:5080\"\n", "c.yaml").unwrap();
        assert_eq!(v6.relay.upstream_bind, "::1".parse::<IpAddr>().unwrap());
        let remote = from_yaml("pbx:\n  address: 192.0.2.10:5080\n", "c.yaml").unwrap();
        assert_eq!(
            remote.relay.upstream_bind,
            "0.0.0.0".parse::<IpAddr>().unwrap()
        );
        let found = lines("pbx:\n  address: \"[::1]:5080\"\n  upstream_bind: 127.0.0.1\n");
        assert_eq!(
            found,
            [
                ": pbx.upstream_bind: \"127.0.0.1\": expected an IPv6 address, as the PBX's \
                address [::1]:5080 is IPv6"
            ]
        );
    }

    #[test]
    fn flags_replace_file_values_and_their_problems_name_the_flag() {
        let file = "listen:\n  udp: [\"0.0.0.0:5060\"]\npbx:\n  address: 127.0.0.1:5080\n";
        let overrides = Overrides {
            listen_udp: vec!["127.0.0.1:0".into(), "[::1]:0".into()],
            pbx: Some("127.0.0.1:5090".into()),
            ..Overrides::default()
        };
        let config = from_yaml_with(file, "c.yaml", &overrides).unwrap();
        assert_eq!(
            config.listen_udp,
            ["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()]
        );
        assert_eq!(config.relay.pbx, "127.0.0.1:5090".parse().unwrap());
        assert_eq!(
            config.listen_tcp, config.listen_udp,
            "--listen is for UDP and TCP"
        );

        let overrides = Overrides {
            listen_udp: vec!["127.0.0.1".into()],
            pbx: Some("127.0.0.1".into()),
            ..Overrides::default()
        };
        let errors = from_yaml_with(file, "c.yaml", &overrides).unwrap_err();
        assert_eq!(
            errors.to_string(),
            "command line: --listen: \"127.0.0.1\": expected an address with a port, such as 127.0.0.1:5060\n\
             command line: --pbx: \"127.0.0.1\": expected an address with a port, such as 127.0.0.1:5080"
        );
    }

    #[test]
    fn without_flags_the_file_values_are_kept() {
        let file = "listen:\n  udp: [\"127.0.0.1:5070\"]\npbx:\n  address: 127.0.0.1:5081\n";
        let config = from_yaml_with(file, "c.yaml", &Overrides::default()).unwrap();
        assert_eq!(config, from_yaml(file, "c.yaml").unwrap());
        assert_eq!(config.listen_udp, ["127.0.0.1:5070".parse().unwrap()]);
        assert_eq!(config.relay.pbx, "127.0.0.1:5081".parse().unwrap());
    }

    #[test]
    fn flags_apply_to_the_built_in_default_too() {
        let overrides = Overrides {
            listen_udp: vec!["127.0.0.1:0".into()],
            ..Overrides::default()
        };
        let config = load_with(None, &overrides).unwrap();
        assert_eq!(config.listen_udp, ["127.0.0.1:0".parse().unwrap()]);
        assert_eq!(config.relay, Config::default().relay);
    }

    #[test]
    fn ops_defaults_are_loopback_and_the_journal_place_is_left_to_start() {
        let config = Config::default();
        assert_eq!(config.ops.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(config.ops.admin, Some("127.0.0.1:9465".parse().unwrap()));
        assert_eq!(config.ops.admin_token, None);
        assert_eq!(config.ops.journal, None);
    }

    #[test]
    fn ops_services_can_be_off_and_the_journal_is_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sipguard.yaml");
        std::fs::write(
            &file,
            "metrics:\n  listen: off\nadmin:\n  listen: \"[::1]:9000\"\n  token_file: run/admin.token\n\
             journal:\n  path: state/bans.journal\n",
        )
        .unwrap();
        let config = load(&file).unwrap();
        assert_eq!(config.ops.metrics, None);
        assert_eq!(config.ops.admin, Some("[::1]:9000".parse().unwrap()));
        assert_eq!(
            config.ops.admin_token,
            Some(dir.path().join("run/admin.token"))
        );
        assert_eq!(
            config.ops.journal,
            Some(dir.path().join("state/bans.journal"))
        );
    }

    #[test]
    fn admin_api_refuses_a_non_loopback_address_and_files_need_names() {
        assert_eq!(
            lines("admin:\n  listen: 0.0.0.0:9465\n  token_file: \"\"\nmetrics:\n  listen: localhost:9464\njournal:\n  path: \"\"\n"),
            [
                ": metrics.listen: \"localhost:9464\": expected an IP address with a port, such as \
                 127.0.0.1:9464; host names are not looked up, or off",
                ": admin.listen: \"0.0.0.0:9465\": expected a loopback address such as \
                 127.0.0.1:9465, or off: the admin API is for this host's operators and must \
                 not be reachable from the network",
                ": admin.token_file: \"\": expected a file name, such as \
                 /var/lib/sipguard/admin.token (relative to this file's directory)",
                ": journal.path: \"\": expected a file name, such as \
                 /var/lib/sipguard/bans.journal (relative to this file's directory)",
            ]
        );
    }

    #[test]
    fn ops_flags_replace_the_file_values() {
        let overrides = Overrides {
            metrics: Some("127.0.0.1:0".into()),
            admin: Some("off".into()),
            journal: Some("j/bans".into()),
            ..Overrides::default()
        };
        let config =
            from_yaml_with("admin:\n  listen: 127.0.0.1:1\n", "c.yaml", &overrides).unwrap();
        assert_eq!(config.ops.metrics, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(config.ops.admin, None);
        assert_eq!(config.ops.journal, Some(PathBuf::from("j/bans")));
    }

    #[test]
    fn every_schema_key_is_accepted() {
        // Builds a file naming every key in SCHEMA at every depth (null values keep the
        // defaults) and checks none is unknown: the schema table and the raw structs cannot
        // drift apart unnoticed.
        fn write(parent: &str, depth: usize, text: &mut String) {
            for key in raw::SCHEMA.known_keys(parent) {
                let path = if parent.is_empty() {
                    key.to_owned()
                } else {
                    format!("{parent}.{key}")
                };
                let indent = "  ".repeat(depth);
                if raw::SCHEMA.known_keys(&path).is_empty() {
                    text.push_str(&format!("{indent}{key}: ~\n"));
                } else {
                    text.push_str(&format!("{indent}{key}:\n"));
                    write(&path, depth + 1, text);
                }
            }
        }
        let mut text = String::new();
        write("", 0, &mut text);
        assert!(text.contains("    max_ban: ~\n"), "{text}");
        assert_eq!(
            from_yaml(&text, "all-keys.yaml"),
            Ok(Config::default()),
            "{text}"
        );
    }

    #[test]
    fn rule_settings_are_read_into_the_policy_config() {
        let config = from_yaml(
            "rules:\n\
             \x20 scanner: {mode: drop, ban_for: 2h}\n\
             \x20 register_failures: {mode: observe, threshold: 3, window: 5m, ban_for: 20m}\n\
             \x20 invite_failures: {mode: ban, threshold: 7, window: 1h, ban_for: 6h}\n\
             \x20 enumeration: {mode: drop, threshold: 30, window: 30m, ban_for: 2h}\n\
             \x20 flood: {mode: observe, threshold: 100, window: 1s, ban_for: 1m}\n\
             \x20 repeat_offenders: {within: 48h, max_ban: 30d}\n\
             trust_for: 8h\n\
             limits:\n  max_tracked_sources: 5000\n",
            "c.yaml",
        )
        .unwrap();
        let policy = config.policy;
        assert_eq!(
            policy.scanner,
            Rule {
                mode: Mode::Drop,
                ban_for: 2 * HOUR,
                ..PolicyConfig::default().scanner
            }
        );
        assert_eq!(
            policy.register_failures,
            Rule {
                mode: Mode::Observe,
                threshold: 3,
                window: 5 * MINUTE,
                ban_for: 20 * MINUTE
            }
        );
        assert_eq!(
            policy.invite_failures,
            Rule {
                mode: Mode::Ban,
                threshold: 7,
                window: HOUR,
                ban_for: 6 * HOUR
            }
        );
        assert_eq!(
            policy.enumeration,
            Rule {
                mode: Mode::Drop,
                threshold: 30,
                window: 30 * MINUTE,
                ban_for: 2 * HOUR
            }
        );
        assert_eq!(
            policy.flood,
            Rule {
                mode: Mode::Observe,
                threshold: 100,
                window: Duration::from_secs(1),
                ban_for: MINUTE
            }
        );
        assert_eq!(policy.repeat.within, 48 * HOUR);
        assert_eq!(policy.repeat.max_ban, 30 * 24 * HOUR);
        assert_eq!(policy.trust_for, 8 * HOUR);
        assert_eq!(policy.max_tracked_sources, 5000);
    }

    #[test]
    fn keys_left_out_of_a_rule_keep_that_rules_defaults() {
        let config = from_yaml("rules:\n  flood:\n    threshold: 50\n", "c.yaml").unwrap();
        let defaults = PolicyConfig::default();
        assert_eq!(
            config.policy.flood,
            Rule {
                threshold: 50,
                ..defaults.flood
            }
        );
        assert_eq!(config.policy.register_failures, defaults.register_failures);
        assert_eq!(
            config.policy.scanner_user_agents,
            defaults.scanner_user_agents
        );
    }

    #[test]
    fn scanner_user_agents_are_added_to_the_built_in_list() {
        let config = from_yaml(
            "rules:\n  scanner:\n    user_agents: [\"MyOwnBadTool\", \"evil dialer 2.0\"]\n",
            "c.yaml",
        )
        .unwrap();
        let mut expected: Vec<String> = sipguard_policy::DEFAULT_USER_AGENTS
            .iter()
            .map(|ua| ua.to_string())
            .collect();
        expected.extend(["MyOwnBadTool".to_owned(), "evil dialer 2.0".to_owned()]);
        assert_eq!(config.policy.scanner_user_agents, expected);
    }

    #[test]
    fn user_agent_patterns_must_have_text_stay_short_and_be_few() {
        let long = "x".repeat(257);
        let found = problems(&format!(
            "rules:\n  scanner:\n    user_agents: [\"ok\", \"\", \" \", \"{long}\"]\n"
        ));
        let paths: Vec<_> = found.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "rules.scanner.user_agents[1]",
                "rules.scanner.user_agents[2]",
                "rules.scanner.user_agents[3]"
            ]
        );
        assert_eq!(found[2].message, "expected a pattern of at most 256 bytes");

        let many = vec!["\"p\""; 1001].join(", ");
        let found = lines(&format!("rules:\n  scanner:\n    user_agents: [{many}]\n"));
        assert_eq!(
            found,
            [": rules.scanner.user_agents: [1001 patterns]: expected at most 1000 patterns"]
        );
    }

    #[test]
    fn the_largest_accepted_user_agent_list_still_builds_a_policy() {
        let patterns: Vec<String> = (0..1000).map(|i| format!("\"{i:0>256}\"")).collect();
        let config = from_yaml(
            &format!(
                "rules:\n  scanner:\n    user_agents: [{}]\n",
                patterns.join(", ")
            ),
            "c.yaml",
        )
        .expect("1000 patterns of 256 bytes are accepted");
        sipguard_policy::Policy::new(config.policy).expect("and compile");
    }

    #[test]
    fn every_rule_problem_is_reported_at_once() {
        let found = lines(
            "rules:\n\
             \x20 scanner: {mode: block, ban_for: 0s}\n\
             \x20 register_failures: {mode: Ban, threshold: 0, window: 10 minutes please}\n\
             \x20 invite_failures: {threshold: 99999999999}\n\
             \x20 flood: {threshold: many}\n\
             \x20 repeat_offenders: {within: 0s}\n\
             trust_for: never\n\
             limits:\n  max_tracked_sources: 999\n",
        );
        assert_eq!(
            found,
            [
                ": limits.max_tracked_sources: \"999\": expected a whole number of at least 1000, such as 100000",
                ": rules.scanner.mode: \"block\": expected one of observe, drop, ban",
                ": rules.scanner.ban_for: \"0s\": expected a duration greater than 0, such as 1h",
                ": rules.register_failures.mode: \"Ban\": expected one of observe, drop, ban",
                ": rules.register_failures.threshold: \"0\": expected a whole number of at least 1, such as 5",
                ": rules.register_failures.window: \"10 minutes please\": expected a duration such as 30s, 10m, 1h",
                ": rules.invite_failures.threshold: \"99999999999\": expected a whole number from 1 to 4294967295",
                ": rules.flood.threshold: \"many\": expected a whole number of at least 1, such as 64",
                ": rules.repeat_offenders.within: \"0s\": expected a duration greater than 0, such as 24h",
                ": trust_for: \"never\": expected a duration such as 30s, 10m, 1h",
            ]
        );
    }

    #[test]
    fn max_ban_shorter_than_a_ban_is_reported_at_max_ban_when_the_file_sets_it() {
        let found = lines("rules:\n  flood: {ban_for: 3h}\n  repeat_offenders: {max_ban: 2h}\n");
        assert_eq!(
            found,
            [": rules.repeat_offenders.max_ban: \"2h\": expected a duration at least as long as \
              every rule's ban_for (rules.flood.ban_for is 3h)"]
        );
        // A default ban_for is named as such.
        let found = lines("rules:\n  repeat_offenders: {max_ban: 30m}\n");
        assert_eq!(
            found,
            [": rules.repeat_offenders.max_ban: \"30m\": expected a duration at least as long as \
              every rule's ban_for (rules.scanner.ban_for is 1h by default)"]
        );
        // Equal is fine: the first ban is already the longest.
        assert!(from_yaml("rules:\n  repeat_offenders: {max_ban: 1h}\n", "c.yaml").is_ok());
    }

    #[test]
    fn a_ban_longer_than_the_default_max_ban_is_reported_at_the_ban() {
        let found = lines("rules:\n  scanner: {ban_for: 2w}\n  flood: {ban_for: 8d}\n");
        assert_eq!(
            found,
            [
                ": rules.scanner.ban_for: \"2w\": expected a duration no longer than \
                 rules.repeat_offenders.max_ban (1w), or a longer max_ban",
                ": rules.flood.ban_for: \"8d\": expected a duration no longer than \
                 rules.repeat_offenders.max_ban (1w), or a longer max_ban",
            ]
        );
        assert!(from_yaml(
            "rules:\n  scanner: {ban_for: 2w}\n  repeat_offenders: {max_ban: 4w}\n",
            "c.yaml"
        )
        .is_ok());
    }

    #[test]
    fn unknown_keys_inside_rules_name_the_keys_allowed_there() {
        let found =
            lines("rules:\n  scanner: {threshold: 2}\n  flood: {treshold: 2}\n  flod: {}\n");
        assert_eq!(
            found,
            [
                ": rules.scanner.threshold: unknown key, expected one of: mode, ban_for, user_agents",
                ": rules.flood.treshold: unknown key, expected one of: mode, threshold, window, ban_for, trusted_threshold",
                ": rules.flod: unknown key, expected one of: scanner, register_failures, \
                 invite_failures, enumeration, flood, garbage, ipv6_prefix, repeat_offenders",
            ]
        );
    }

    /// Writes `files` (name, text) into a fresh directory; the main config is `config.yaml`.
    fn config_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    const ALLOWLIST: &str = "carriers:\n  - name: example-carrier\n    cidrs: [198.51.100.0/28, \
                             2001:db8:10::/48]\noffices:\n  - name: hq\n    cidrs: [203.0.113.7]\n";

    #[test]
    fn allowlist_file_is_read_relative_to_the_config_files_directory() {
        let dir = config_dir(&[
            (
                "config.yaml",
                "allowlist:\n  file: lists/allowlist.yaml\n  mode: enforce\n",
            ),
            ("lists/allowlist.yaml", ALLOWLIST),
        ]);
        let config = load(&dir.path().join("config.yaml")).unwrap();
        let networks: Vec<String> = config
            .policy
            .allowlist
            .iter()
            .flat_map(|group| &group.networks)
            .map(|net| net.to_string())
            .collect();
        assert_eq!(
            networks,
            ["198.51.100.0/28", "2001:db8:10::/48", "203.0.113.7/32"]
        );
        assert_eq!(config.policy.allowlist_mode, AllowlistMode::Enforce);
    }

    #[test]
    fn allowlist_mode_off_keeps_the_networks_so_they_are_never_banned() {
        // `off` unquoted is a boolean in YAML 1.1; it must still read as the word.
        let dir = config_dir(&[
            (
                "config.yaml",
                "allowlist:\n  file: allowlist.yaml\n  mode: off\n",
            ),
            ("allowlist.yaml", ALLOWLIST),
        ]);
        let config = load(&dir.path().join("config.yaml")).unwrap();
        assert_eq!(config.policy.allowlist_mode, AllowlistMode::Off);
        assert_eq!(networks_in(&config), 3);
    }

    #[test]
    fn an_identity_shared_with_every_other_client_is_refused() {
        let dir = config_dir(&[
            (
                "config.yaml",
                "pbx:\n  upstream_bind: 127.0.1.1\nallowlist:\n  file: allowlist.yaml\n",
            ),
            (
                "allowlist.yaml",
                "carriers:\n  - {name: c, cidrs: [198.51.100.0/28], identity: 127.0.1.1}\n",
            ),
        ]);
        let errors = load(&dir.path().join("config.yaml")).unwrap_err();
        let found: Vec<String> = errors.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains(
                "pbx.upstream_bind: \"127.0.1.1\": expected an address apart from \
                               allowlist group c's identity"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn an_absolute_allowlist_path_is_used_as_is() {
        let lists = config_dir(&[("allowlist.yaml", ALLOWLIST)]);
        let absolute = lists.path().join("allowlist.yaml");
        let text = format!("allowlist:\n  file: {:?}\n", absolute.display().to_string());
        let config = from_yaml(&text, "c.yaml").unwrap();
        assert_eq!(networks_in(&config), 3);
    }

    #[test]
    fn allowlist_problems_name_the_allowlist_file_and_come_with_the_main_files() {
        let dir = config_dir(&[
            (
                "config.yaml",
                "allowlist:\n  file: allowlist.yaml\nrules:\n  flood: {mode: block}\n",
            ),
            (
                "allowlist.yaml",
                "carriers:\n  - name: c\n    cidrs: [198.51.100.0/28, 198.51.100.1/24]\n    \
                 note: x\n",
            ),
        ]);
        let main = dir.path().join("config.yaml").display().to_string();
        let list = dir.path().join("allowlist.yaml").display().to_string();
        let errors = load(&dir.path().join("config.yaml")).unwrap_err();
        let found: Vec<String> = errors.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            found,
            [
                format!(
                    "{list}: carriers[0].note: unknown key, expected one of: name, cidrs, names, identity"
                ),
                format!(
                    "{list}: carriers[0].cidrs[1]: \"198.51.100.1/24\": expected a network \
                     address with no host bits set, such as 198.51.100.0/24"
                ),
                format!("{main}: rules.flood.mode: \"block\": expected one of observe, drop, ban"),
            ]
        );
        assert!(!errors.is_unreadable());
    }

    #[test]
    fn missing_allowlist_file_is_a_problem_naming_where_it_was_looked_for() {
        let dir = config_dir(&[("config.yaml", "allowlist:\n  file: nope.yaml\n")]);
        let errors = load(&dir.path().join("config.yaml")).unwrap_err();
        let problem = &errors.problems()[0];
        assert_eq!(errors.problems().len(), 1);
        assert_eq!(problem.path, "allowlist.file");
        assert_eq!(problem.value.as_deref(), Some("\"nope.yaml\""));
        let looked_at = dir.path().join("nope.yaml").display().to_string();
        assert!(
            problem.message.starts_with(&format!(
                "expected a readable allowlist file: cannot read {looked_at}: "
            )),
            "{problem}"
        );
        // The main file was read: a missing allowlist is an invalid setting, not exit code 1.
        assert!(!errors.is_unreadable());
    }

    #[test]
    fn allowlist_file_that_is_not_text_is_a_syntax_problem_of_that_file() {
        let dir = config_dir(&[
            ("config.yaml", "allowlist:\n  file: allowlist.yaml\n"),
            ("allowlist.yaml", "carriers: \u{0}"),
        ]);
        std::fs::write(dir.path().join("allowlist.yaml"), b"carriers: \xff\n").unwrap();
        let errors = load(&dir.path().join("config.yaml")).unwrap_err();
        let problem = &errors.problems()[0];
        assert_eq!(problem.kind, ProblemKind::Syntax);
        assert!(problem.origin.ends_with("allowlist.yaml"), "{problem}");
        assert_eq!(
            problem.message,
            "not valid YAML: not UTF-8 text (bad byte at offset 10)"
        );
    }

    #[test]
    fn enforcing_without_an_allowlist_file_is_refused_as_it_would_drop_everyone() {
        assert_eq!(
            lines("allowlist:\n  mode: enforce\n"),
            [": allowlist.mode: \"enforce\": expected off unless allowlist.file names the sources \
              to admit: enforcing no allowlist would drop every source"]
        );
    }

    #[test]
    fn enforcing_an_allowlist_that_lists_nobody_is_refused() {
        let dir = config_dir(&[
            (
                "config.yaml",
                "allowlist:\n  file: allowlist.yaml\n  mode: enforce\n",
            ),
            ("allowlist.yaml", "carriers: []\noffices:\n"),
        ]);
        let errors = load(&dir.path().join("config.yaml")).unwrap_err();
        let list = dir.path().join("allowlist.yaml").display().to_string();
        assert_eq!(errors.problems().len(), 1);
        assert_eq!(
            errors.problems()[0].message,
            format!(
                "expected off while {list} lists no networks: enforcing it would drop every source"
            )
        );
        // Off with the same empty file is fine: nobody listed, everyone admitted.
        std::fs::write(
            dir.path().join("config.yaml"),
            "allowlist:\n  file: allowlist.yaml\n",
        )
        .unwrap();
        assert!(load(&dir.path().join("config.yaml")).is_ok());
    }

    #[test]
    fn allowlist_mode_is_off_or_enforce() {
        assert_eq!(
            lines("allowlist:\n  mode: on\n"),
            [": allowlist.mode: \"on\": expected off or enforce"]
        );
    }

    #[test]
    fn unreadable_file_is_told_apart_from_an_invalid_one() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.yaml");
        let errors = load(&missing).unwrap_err();
        assert!(errors.is_unreadable());
        assert!(errors.to_string().contains("missing.yaml: cannot read: "));

        let binary = dir.path().join("binary.yaml");
        std::fs::write(&binary, b"pbx:\n  address: \xff\n").unwrap();
        let errors = load(&binary).unwrap_err();
        assert!(!errors.is_unreadable());
        assert_eq!(errors.problems()[0].kind, ProblemKind::Syntax);
    }

    #[test]
    fn long_values_are_cut_short_in_messages() {
        let long = "x".repeat(500);
        let found = problems(&format!("sessions:\n  max: {long}\n"));
        let value = found[0].value.as_deref().unwrap();
        assert!(value.len() < 100 && value.ends_with("..."), "{value}");
    }

    #[test]
    fn control_characters_in_values_are_escaped() {
        let found = problems("sessions:\n  max: \"1\\e[2J\"\n");
        assert_eq!(found[0].value.as_deref(), Some("\"1\\u{1b}[2J\""));
    }
}
