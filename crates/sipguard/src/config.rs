//! sipguard's configuration: YAML in, a validated [`Config`] out, or every problem at once.
//!
//! Two stages (DESIGN.md section 4): `raw` reads the file into a loose shape that keeps each
//! value as written and collects unknown keys with their paths; `validate` turns that into typed
//! settings (`SocketAddr`, `Duration`, `IpNet`), filling in defaults and gathering every problem,
//! each naming file, key path, value and what was expected. `sipguard check-config` and `run`
//! share this code, and a reload will too, so a file that checks clean also starts.
//!
//! YAML is read with serde-saphyr: serde_yaml is archived and serde_yml unmaintained and unsound,
//! while serde-saphyr is maintained and does not panic on hostile input (it has budgets against
//! alias bombs), which matters for a file that a reload reads while traffic flows.

mod error;
mod raw;
mod validate;

pub use error::{ConfigErrors, Problem, ProblemKind};

use sipguard_policy::PolicyConfig;
use sipguard_relay::RelayConfig;
use std::net::SocketAddr;
use std::path::Path;

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
    /// Relay settings.
    pub relay: RelayConfig,
    /// Policy settings.
    pub policy: PolicyConfig,
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
    /// `--listen`: when not empty, replaces `listen.udp`.
    pub listen_udp: Vec<String>,
    /// `--pbx`: replaces `pbx.address`.
    pub pbx: Option<String>,
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
    let problem = |kind, message: String| {
        ConfigErrors::new(vec![Problem {
            kind,
            origin: origin.clone(),
            location: None,
            path: String::new(),
            value: None,
            message,
        }])
    };
    let bytes = std::fs::read(path)
        .map_err(|err| problem(ProblemKind::Unreadable, format!("cannot read: {err}")))?;
    let text = String::from_utf8(bytes).map_err(|err| {
        let at = err.utf8_error().valid_up_to();
        let message = format!("not valid YAML: not UTF-8 text (bad byte at offset {at})");
        problem(ProblemKind::Syntax, message)
    })?;
    from_yaml_with(&text, &origin, overrides)
}

/// Validates YAML `text`; `origin` names it in messages (usually the file name).
pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    from_yaml_with(text, origin, &Overrides::default())
}

/// Validates YAML `text` with `overrides` applied.
pub fn from_yaml_with(
    text: &str,
    origin: &str,
    overrides: &Overrides,
) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let config = raw::parse(text, origin, &mut problems)
        .and_then(|raw| validate::validate(raw, origin, overrides, &mut problems));
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigErrors::new(problems)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::time::Duration;

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
    fn example_config_validates() {
        let config = load(&repo_file("config/example.yaml")).expect("example is valid");
        assert!(config.listen_udp.iter().any(SocketAddr::is_ipv6));
        assert!(!config.policy.deny.is_empty());
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
            "metrics:\n  listen: 127.0.0.1:9464\n\
             listen:\n  udp: [\"0.0.0.0:5060\"]\n  tcp: [\"0.0.0.0:5060\"]\n\
             pbx:\n  adress: 127.0.0.1:5080\n\
             sessions:\n  idle: 1h\n  max: 10\n",
        );
        assert!(found.iter().all(|p| p.kind == ProblemKind::UnknownKey));
        let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["metrics", "listen.tcp", "pbx.adress", "sessions.idle"]
        );
        assert_eq!(
            found[2].to_string(),
            "config.yaml: pbx.adress: unknown key, expected one of: address, upstream_bind"
        );
        assert_eq!(
            found[0].message,
            "unknown key, expected one of: listen, pbx, sessions, limits, deny"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported_together() {
        let found = lines("sesions:\n  max: 10\nlimits:\n  max_message_size: huge\n");
        assert_eq!(
            found,
            [
                ": sesions: unknown key, expected one of: listen, pbx, sessions, limits, deny",
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
            "expected a mapping with the keys listen, pbx, sessions, limits, deny"
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
            "listen:\n  udp: [\"[::]:5060\"]\npbx:\n  address: 127.0.0.1:5060\n",
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
        };
        let config = from_yaml_with(file, "c.yaml", &overrides).unwrap();
        assert_eq!(
            config.listen_udp,
            ["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()]
        );
        assert_eq!(config.relay.pbx, "127.0.0.1:5090".parse().unwrap());

        let overrides = Overrides {
            listen_udp: vec!["127.0.0.1".into()],
            pbx: Some("127.0.0.1".into()),
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
            pbx: None,
        };
        let config = load_with(None, &overrides).unwrap();
        assert_eq!(config.listen_udp, ["127.0.0.1:0".parse().unwrap()]);
        assert_eq!(config.relay, Config::default().relay);
    }

    #[test]
    fn every_schema_key_is_accepted() {
        // Builds a file naming every key in SCHEMA (null values keep the defaults) and checks
        // none is unknown: the schema table and the raw structs cannot drift apart unnoticed.
        let mut text = String::new();
        for section in raw::known_keys("") {
            let children = raw::known_keys(section);
            if children.is_empty() {
                text.push_str(&format!("{section}: ~\n"));
            } else {
                text.push_str(&format!("{section}:\n"));
                for child in children {
                    text.push_str(&format!("  {child}: ~\n"));
                }
            }
        }
        assert_eq!(
            from_yaml(&text, "all-keys.yaml"),
            Ok(Config::default()),
            "{text}"
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
