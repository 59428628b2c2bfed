//! Stage two: [`RawConfig`] to the typed [`Config`], every problem gathered before failing.
//!
//! Defaults for keys the file leaves out live here, as constants, or for the detection rules in
//! `PolicyConfig::default()` (which holds the table of docs/design.md section 3); `config/default.yaml` spells the
//! same values out for operators, and a unit test keeps the two equal.
//!
//! Validation reads the allowlist file the config names, so its problems are reported with the
//! main file's in one run.

mod calls;

use super::error::{quote, Problem, ProblemKind};
use super::raw::{
    self, expected_at, RawAllowlistRef, RawConfig, RawRepeat, RawRule, RawRules, RawScannerRule,
    RawTcp, RawTls,
};
use super::{allowlist, read_text, Config, OpsConfig, OutboundConfig, Overrides, ReadError};
use ipnet::IpNet;
use sipguard_policy::{AllowGroup, AllowlistMode, Mode, PolicyConfig, RepeatConfig, Rule};
use sipguard_relay::{RelayConfig, StreamConfig, TlsFiles, TlsReload};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod offload;

/// Where settings given as flags come from, in messages.
pub(crate) const COMMAND_LINE: &str = "command line";

/// UDP and TCP alike: SIP's port on every IPv4 address.
const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5060);
const DEFAULT_PBX: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5080);
/// Two hours: far longer than any phone's re-registration interval (typically 1 h at most), so
/// an idle registered phone keeps its session and stays reachable for incoming calls.
const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
const DEFAULT_MAX_SESSIONS: usize = 20_000;
/// Each client connection costs two descriptors (its own and its upstream's).
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// An office of TCP phones behind one NAT address fits; a single attacker's pile does not.
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 100;
/// Two hours, as for UDP sessions: a TCP registration lives as long as its connection, so the
/// connection must outlast the phone's re-registration interval.
const DEFAULT_CONNECTION_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
/// A phone writes a message in one go; ten seconds leave room for a slow link, not for a client
/// that trickles bytes to hold a connection (Kamailio's tcp_msg_read_timeout is 20 s).
const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024;
/// Smaller than any real INVITE with SDP; a limit below it would drop legitimate calls.
const MIN_MESSAGE_SIZE: usize = 512;
/// The largest UDP payload; nothing bigger can arrive in one datagram.
const MAX_MESSAGE_SIZE: usize = 65_535;
/// Below this, a scan from a few thousand addresses would evict the evidence and bans it needs
/// (each table evicts its oldest entries when full).
const MIN_TRACKED_SOURCES: usize = 1000;
/// Longest scanner pattern: real User-Agent values are far shorter, and the automaton's size
/// grows with the patterns' total length.
const MAX_USER_AGENT_BYTES: usize = 256;
/// Most scanner patterns an operator may add to the built-in list.
const MAX_USER_AGENTS: usize = 1000;
const DEFAULT_METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);
const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9465);

/// Where one setting came from: the file and key, or the flag that replaced it.
#[derive(Clone)]
struct Key<'a> {
    origin: &'a str,
    path: String,
}

impl Key<'_> {
    fn invalid(&self, value: &str, expected: impl std::fmt::Display) -> Problem {
        Problem {
            kind: ProblemKind::InvalidValue,
            origin: self.origin.to_owned(),
            location: None,
            path: self.path.clone(),
            value: Some(quote(value)),
            message: format!("expected {expected}"),
        }
    }
}

/// Validates `raw` (read from `origin`) with `overrides` applied, pushing every problem onto
/// `problems`. A relative allowlist file name is taken from `dir`, the main file's directory.
/// Returns the config only when nothing was wrong.
pub(crate) fn validate(
    raw: RawConfig,
    origin: &str,
    dir: &Path,
    overrides: &Overrides,
    problems: &mut Vec<Problem>,
) -> Option<Config> {
    let before = problems.len();
    let mut v = Validator { origin, problems };
    let defaults = PolicyConfig::default();

    let listen = raw.listen.unwrap_or_default();
    let listen_udp = v.listen("udp", listen.udp, &overrides.listen_udp, &[DEFAULT_LISTEN]);
    // `--listen` stands for UDP and TCP together: SIP's two transports on the same addresses.
    let listen_tcp = if overrides.listen_udp.is_empty() {
        v.listen("tcp", listen.tcp, &[], &[DEFAULT_LISTEN])
    } else {
        listen_udp.clone()
    };
    let listen_tls = v.listen("tls", listen.tls, &[], &[]);
    v.tls_apart_from_tcp(&listen_tcp, &listen_tls);
    let pbx = raw.pbx.unwrap_or_default();
    let (pbx_key, pbx_text) = match &overrides.pbx {
        Some(text) => (v.flag("--pbx"), Some(text.clone())),
        None => (v.key("pbx.address"), pbx.address),
    };
    let every_listener: Vec<_> = [&listen_udp, &listen_tcp, &listen_tls]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let pbx_addr = v.pbx_address(&pbx_key, pbx_text.as_deref(), &every_listener);
    let streams = v.streams(raw.tcp.unwrap_or_default());
    let tls = v.tls(raw.tls.unwrap_or_default(), !listen_tls.is_empty(), dir);
    let upstream_bind = v.upstream_bind(pbx.upstream_bind.as_deref(), pbx_addr.as_ref());

    let sessions = raw.sessions.unwrap_or_default();
    let session_idle = v.duration(
        "sessions.idle_timeout",
        sessions.idle_timeout.as_deref(),
        DEFAULT_SESSION_IDLE,
    );
    let max_sessions = v.max_sessions(sessions.max.as_deref());
    let limits = raw.limits.unwrap_or_default();
    let max_message_size = v.max_message_size(limits.max_message_size.as_deref());
    let max_tracked_sources = v.max_tracked_sources(
        limits.max_tracked_sources.as_deref(),
        defaults.max_tracked_sources,
    );
    let deny = v.deny(raw.deny);
    let raw_allowlist = raw.allowlist.unwrap_or_default();
    let resolver = super::feeds::RawResolver {
        nameservers: raw_allowlist.nameservers.as_deref(),
        min_ttl: raw_allowlist.min_ttl.as_deref(),
        max_ttl: raw_allowlist.max_ttl.as_deref(),
        grace: raw_allowlist.grace.as_deref(),
    };
    let (listed, allowlist_mode) = v.allowlist(&raw_allowlist, dir);
    let (allowlist, names) = listed.map_or((None, None), |(nets, names)| {
        let names = super::feeds::validate_names(resolver, names, origin, v.problems);
        (Some(nets), names)
    });
    if let (Some(groups), Some(shared), Some(pbx)) = (&allowlist, upstream_bind, pbx_addr) {
        v.identities_apart(groups, shared, pbx);
    }
    let feeds =
        super::feeds::validate_feeds(raw.feeds.unwrap_or_default(), origin, dir, v.problems);
    let rules = v.rules(raw.rules.unwrap_or_default(), &defaults);
    let trust_for = v.duration("trust_for", raw.trust_for.as_deref(), defaults.trust_for);
    let ops = v.ops(&raw.metrics, &raw.admin, &raw.journal, dir, overrides);
    let groups: Vec<&str> = allowlist
        .iter()
        .flatten()
        .map(|g| g.name.as_str())
        .collect();
    // The toll-fraud rules' bans grow like the others', up to repeat_offenders.max_ban.
    let max_ban = rules.as_ref().map(|rules| rules.repeat.max_ban);
    let dial = v.dial(raw.dial.unwrap_or_default(), &groups, max_ban);
    let calls = v.call_rates(raw.call_rates.unwrap_or_default(), max_ban);
    let geo = v.country_filter(raw.country_filter.unwrap_or_default(), dir, max_ban);
    let outbound = v.outbound(raw.outbound.unwrap_or_default(), &listen_udp, pbx_addr);
    let nftables = v.nftables(raw.nftables.unwrap_or_default());
    let cluster = v.cluster(raw.cluster.unwrap_or_default(), dir);

    if problems.len() > before {
        return None;
    }
    let addrs = |listeners: Vec<(Key<'_>, Option<SocketAddr>)>| -> Option<Vec<SocketAddr>> {
        listeners.into_iter().map(|(_, addr)| addr).collect()
    };
    let rules = rules?;
    // Every field named: a setting added to PolicyConfig must be given a key here.
    Some(Config {
        listen_udp: addrs(listen_udp)?,
        listen_tcp: addrs(listen_tcp)?,
        listen_tls: addrs(listen_tls)?,
        streams: streams?,
        tls: tls?,
        relay: RelayConfig {
            pbx: pbx_addr?,
            upstream_bind: upstream_bind?,
            session_idle: session_idle?,
            max_sessions: max_sessions?,
        },
        policy: PolicyConfig {
            deny: deny?,
            allowlist: allowlist?,
            allowlist_mode: allowlist_mode?,
            max_message_size: max_message_size?,
            scanner_user_agents: rules.scanner_user_agents,
            scanner: rules.scanner,
            register_failures: rules.register_failures,
            invite_failures: rules.invite_failures,
            enumeration: rules.enumeration,
            flood: rules.flood,
            flood_trusted_threshold: rules.flood_trusted_threshold,
            garbage: rules.garbage,
            ipv6_prefix_len: rules.ipv6_prefix_len,
            ipv6_offenders: rules.ipv6_offenders,
            repeat: rules.repeat,
            trust_for: trust_for?,
            max_tracked_sources: max_tracked_sources?,
            dial: dial?,
            calls: calls?,
            geo: geo?,
        },
        ops: ops?,
        feeds: feeds?,
        names: names?,
        outbound: outbound?,
        nftables: nftables?,
        cluster: cluster?,
    })
}

/// The validated `rules` section.
struct Rules {
    scanner_user_agents: Vec<String>,
    scanner: Rule,
    register_failures: Rule,
    invite_failures: Rule,
    enumeration: Rule,
    flood: Rule,
    flood_trusted_threshold: u32,
    garbage: Rule,
    ipv6_prefix_len: u8,
    ipv6_offenders: u32,
    repeat: RepeatConfig,
}

/// A rule's `ban_for` as validated, kept to check it against `repeat_offenders.max_ban`.
struct BanFor {
    path: String,
    /// As written; `None` when the default applies.
    text: Option<String>,
    duration: Duration,
}

struct Validator<'a, 'p> {
    origin: &'a str,
    problems: &'p mut Vec<Problem>,
}

impl<'a> Validator<'a, '_> {
    fn key(&self, path: impl Into<String>) -> Key<'a> {
        Key {
            origin: self.origin,
            path: path.into(),
        }
    }

    fn flag(&self, flag: &str) -> Key<'a> {
        Key {
            origin: COMMAND_LINE,
            path: flag.to_owned(),
        }
    }

    fn problem(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// Each listener of `listen.<transport>` with where it came from, for later messages; a
    /// `None` address has been reported already. UDP needs at least one listener; TCP and TLS
    /// are off with an empty list.
    fn listen(
        &mut self,
        transport: &str,
        file: Option<Vec<String>>,
        flags: &[String],
        default: &[SocketAddr],
    ) -> Vec<(Key<'a>, Option<SocketAddr>)> {
        let at = format!("listen.{transport}");
        let entries: Vec<(Key<'a>, String)> = if !flags.is_empty() {
            flags
                .iter()
                .map(|text| (self.flag("--listen"), text.clone()))
                .collect()
        } else {
            match file {
                None => {
                    return default
                        .iter()
                        .map(|&addr| (self.key(at.clone()), Some(addr)))
                        .collect()
                }
                Some(list) if list.is_empty() && transport == "udp" => {
                    let key = self.key(at);
                    self.problem(Problem {
                        value: Some("[]".to_owned()),
                        ..key.invalid("", "at least one address, such as 0.0.0.0:5060")
                    });
                    return Vec::new();
                }
                Some(list) => list
                    .into_iter()
                    .enumerate()
                    .map(|(i, text)| (self.key(format!("{at}[{i}]")), text))
                    .collect(),
            }
        };
        let mut parsed: Vec<(Key<'a>, Option<SocketAddr>)> = Vec::with_capacity(entries.len());
        for (key, text) in entries {
            let addr = match parse_socket_addr(&text, 5060) {
                Ok(addr) => Some(addr),
                Err(expected) => {
                    self.problem(key.invalid(&text, expected));
                    None
                }
            };
            if let Some(addr) = addr {
                let earlier = parsed.iter().find_map(|(earlier_key, earlier)| {
                    let earlier = (*earlier)?;
                    let clash = earlier == addr || (addr.port() != 0 && covers(earlier, addr));
                    clash.then(|| (earlier_key.path.clone(), earlier))
                });
                if let Some((earlier_path, earlier)) = earlier {
                    let expected = if earlier == addr {
                        format!("each address once, and {earlier_path} is the same")
                    } else {
                        format!("an address not covered by {earlier_path} ({earlier})")
                    };
                    self.problem(key.invalid(&text, expected));
                }
            }
            parsed.push((key, addr));
        }
        parsed
    }

    fn pbx_address(
        &mut self,
        key: &Key<'a>,
        text: Option<&str>,
        listen: &[(Key<'a>, Option<SocketAddr>)],
    ) -> Option<SocketAddr> {
        let Some(text) = text else {
            return Some(DEFAULT_PBX);
        };
        let addr = match parse_socket_addr(text, 5080) {
            Ok(addr) => addr,
            Err(expected) => {
                self.problem(key.invalid(text, expected));
                return None;
            }
        };
        if addr.ip().is_unspecified() {
            self.problem(key.invalid(
                text,
                "the address the PBX listens on, such as 127.0.0.1:5080, not a wildcard",
            ));
            return None;
        }
        if addr.port() == 0 {
            self.problem(key.invalid(text, "a port from 1 to 65535"));
            return None;
        }
        let own = listen.iter().find_map(|(listen_key, listen_addr)| {
            let listen_addr = (*listen_addr)?;
            // A wildcard listener covers the PBX only if the PBX is on this host, which is
            // certain for loopback; another address on the same port may be another machine.
            let loops =
                listen_addr == addr || (covers(listen_addr, addr) && addr.ip().is_loopback());
            loops.then(|| (listen_key.path.clone(), listen_addr))
        });
        if let Some((listen_path, listen_addr)) = own {
            self.problem(key.invalid(
                text,
                format_args!(
                    "the PBX's address, not one sipguard listens on itself ({listen_path} is \
                     {listen_addr}): packets would loop"
                ),
            ));
            return None;
        }
        Some(addr)
    }

    /// Allowlist identities are worth something only if nobody else reaches the PBX from them:
    /// never the address every other client shares, and of the PBX's family.
    fn identities_apart(&mut self, groups: &[AllowGroup], shared: IpAddr, pbx: SocketAddr) {
        for group in groups {
            let Some(identity) = group.identity else {
                continue;
            };
            let name = &group.name;
            if identity == shared {
                let key = self.key("pbx.upstream_bind");
                self.problem(key.invalid(
                    &shared.to_string(),
                    format_args!(
                        "an address apart from allowlist group {name}'s identity: every other \
                         client would reach the PBX as that group"
                    ),
                ));
            } else if identity.is_ipv4() != pbx.is_ipv4() {
                let key = self.key("allowlist.file");
                self.problem(key.invalid(
                    &identity.to_string(),
                    format_args!(
                        "group {name}'s identity in the family of the PBX's address {pbx}"
                    ),
                ));
            }
        }
    }

    /// Unset: loopback of the PBX's family when the PBX is on loopback (the usual single-host
    /// setup), else the wildcard of that family so the kernel picks the route to the PBX.
    fn upstream_bind(&mut self, text: Option<&str>, pbx: Option<&SocketAddr>) -> Option<IpAddr> {
        let key = self.key("pbx.upstream_bind");
        let Some(text) = text else {
            let pbx = pbx?;
            return Some(match (pbx.ip().is_loopback(), pbx.is_ipv4()) {
                (true, true) => Ipv4Addr::LOCALHOST.into(),
                (true, false) => Ipv6Addr::LOCALHOST.into(),
                (false, true) => Ipv4Addr::UNSPECIFIED.into(),
                (false, false) => Ipv6Addr::UNSPECIFIED.into(),
            });
        };
        let ip = match text.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                let expected = match text.parse::<SocketAddr>() {
                    Ok(addr) => format!("an IP address without a port, such as {}", addr.ip()),
                    Err(_) => expected_at("pbx.upstream_bind")
                        .unwrap_or_default()
                        .to_owned(),
                };
                self.problem(key.invalid(text, expected));
                return None;
            }
        };
        if let Some(pbx) = pbx {
            if ip.is_ipv4() != pbx.is_ipv4() {
                let family = if pbx.is_ipv4() { "IPv4" } else { "IPv6" };
                self.problem(key.invalid(
                    text,
                    format_args!("an {family} address, as the PBX's address {pbx} is {family}"),
                ));
                return None;
            }
        }
        Some(ip)
    }

    /// A duration greater than zero at `path`; `default` when left out.
    fn duration(&mut self, path: &str, text: Option<&str>, default: Duration) -> Option<Duration> {
        let Some(text) = text else {
            return Some(default);
        };
        let key = self.key(path);
        match humantime::parse_duration(text) {
            Ok(duration) if !duration.is_zero() => Some(duration),
            Ok(_) => {
                self.problem(key.invalid(
                    text,
                    format_args!("a duration greater than 0, such as {}", example(default)),
                ));
                None
            }
            Err(_) => {
                self.problem(key.invalid(text, raw::DURATION));
                None
            }
        }
    }

    fn max_sessions(&mut self, text: Option<&str>) -> Option<usize> {
        self.count("sessions.max", text, DEFAULT_MAX_SESSIONS)
    }

    /// A whole number greater than 0 at `path`; `default` when left out.
    fn count(&mut self, path: &str, text: Option<&str>, default: usize) -> Option<usize> {
        let Some(text) = text else {
            return Some(default);
        };
        match text.parse::<usize>() {
            Ok(max) if max > 0 => Some(max),
            _ => {
                let key = self.key(path);
                let expected = expected_at(path).unwrap_or_default();
                self.problem(key.invalid(text, expected));
                None
            }
        }
    }

    /// A TLS listener on the same TCP address as a plain TCP listener could not be bound.
    fn tls_apart_from_tcp(
        &mut self,
        tcp: &[(Key<'a>, Option<SocketAddr>)],
        tls: &[(Key<'a>, Option<SocketAddr>)],
    ) {
        for (key, addr) in tls {
            let Some(addr) = *addr else { continue };
            let clash = tcp.iter().find_map(|(tcp_key, tcp_addr)| {
                let tcp_addr = (*tcp_addr)?;
                let clash = addr.port() != 0
                    && (tcp_addr == addr || covers(tcp_addr, addr) || covers(addr, tcp_addr));
                clash.then(|| (tcp_key.path.clone(), tcp_addr))
            });
            if let Some((tcp_path, tcp_addr)) = clash {
                self.problem(key.invalid(
                    &addr.to_string(),
                    format_args!(
                        "a TCP address apart from the plain TCP listener {tcp_path} ({tcp_addr}), \
                         such as port 5061"
                    ),
                ));
            }
        }
    }

    fn streams(&mut self, raw: RawTcp) -> Option<StreamConfig> {
        let max_connections = self.count(
            "tcp.max_connections",
            raw.max_connections.as_deref(),
            DEFAULT_MAX_CONNECTIONS,
        );
        let max_connections_per_ip = self.count(
            "tcp.max_connections_per_ip",
            raw.max_connections_per_ip.as_deref(),
            DEFAULT_MAX_CONNECTIONS_PER_IP,
        );
        let idle_timeout = self.duration(
            "tcp.idle_timeout",
            raw.idle_timeout.as_deref(),
            DEFAULT_CONNECTION_IDLE,
        );
        let message_timeout = self.duration(
            "tcp.message_timeout",
            raw.message_timeout.as_deref(),
            DEFAULT_MESSAGE_TIMEOUT,
        );
        Some(StreamConfig {
            max_connections: max_connections?,
            max_connections_per_ip: max_connections_per_ip?,
            idle_timeout: idle_timeout?,
            message_timeout: message_timeout?,
        })
    }

    /// The certificate and key, needed when TLS listeners are configured, and read here so that
    /// `check-config` and a start both name the file that is missing or wrong. `Some(None)`:
    /// no TLS.
    fn tls(&mut self, raw: RawTls, listening: bool, dir: &Path) -> Option<Option<TlsFiles>> {
        let before = self.problems.len();
        let mut file = |name: &str, text: Option<String>| -> Option<std::path::PathBuf> {
            let path = format!("tls.{name}");
            match text {
                Some(text) if !text.trim().is_empty() => {
                    let file = dir.join(&text);
                    if let Err(error) = std::fs::File::open(&file) {
                        let key = self.key(path.as_str());
                        self.problem(key.invalid(
                            &text,
                            format_args!(
                                "a readable file: cannot read {}: {error}",
                                file.display()
                            ),
                        ));
                        return None;
                    }
                    Some(file)
                }
                Some(text) => {
                    let key = self.key(path.as_str());
                    self.problem(key.invalid(&text, expected_at(&path).unwrap_or_default()));
                    None
                }
                None if listening => {
                    let key = self.key(path.as_str());
                    self.problem(Problem {
                        value: None,
                        ..key.invalid(
                            "",
                            format_args!(
                                "{}: listen.tls is set, and TLS needs a certificate and its key",
                                expected_at(&path).unwrap_or_default()
                            ),
                        )
                    });
                    None
                }
                None => None,
            }
        };
        let certificate = file("certificate", raw.certificate);
        let key = file("key", raw.key);
        let (Some(certificate), Some(key)) = (certificate, key) else {
            return (!listening && self.problems.len() == before).then_some(None);
        };
        let files = TlsFiles { certificate, key };
        if let Err(error) = TlsReload::load(files.clone()) {
            let (path, file) = match &error {
                sipguard_relay::TlsError::Unreadable { kind: "key", .. }
                | sipguard_relay::TlsError::NoKey(_) => ("tls.key", &files.key),
                _ => ("tls.certificate", &files.certificate),
            };
            let key = self.key(path);
            self.problem(key.invalid(
                &file.display().to_string(),
                format_args!("a usable PEM file: {error}"),
            ));
            return None;
        }
        Some(Some(files))
    }

    fn max_message_size(&mut self, text: Option<&str>) -> Option<usize> {
        let Some(text) = text else {
            return Some(DEFAULT_MAX_MESSAGE_SIZE);
        };
        match text.parse::<usize>() {
            Ok(size) if (MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&size) => Some(size),
            _ => {
                let key = self.key("limits.max_message_size");
                let expected = expected_at("limits.max_message_size").unwrap_or_default();
                self.problem(key.invalid(text, expected));
                None
            }
        }
    }

    fn max_tracked_sources(&mut self, text: Option<&str>, default: usize) -> Option<usize> {
        let Some(text) = text else {
            return Some(default);
        };
        match text.parse::<usize>() {
            Ok(max) if max >= MIN_TRACKED_SOURCES => Some(max),
            _ => {
                let key = self.key("limits.max_tracked_sources");
                let expected = expected_at("limits.max_tracked_sources").unwrap_or_default();
                self.problem(key.invalid(text, expected));
                None
            }
        }
    }

    fn deny(&mut self, list: Option<Vec<String>>) -> Option<Vec<IpNet>> {
        let mut ok = true;
        let mut deny = Vec::new();
        for (i, text) in list.unwrap_or_default().into_iter().enumerate() {
            match parse_net(&text) {
                Ok(net) => deny.push(net),
                Err(expected) => {
                    let key = self.key(format!("deny[{i}]"));
                    self.problem(key.invalid(&text, expected));
                    ok = false;
                }
            }
        }
        ok.then_some(deny)
    }

    /// Reads and validates the allowlist file, if one is named, and checks the mode against it:
    /// enforcing an allowlist that lists nobody would drop every source.
    fn allowlist(
        &mut self,
        raw: &RawAllowlistRef,
        dir: &Path,
    ) -> (Option<allowlist::Listed>, Option<AllowlistMode>) {
        let networks = match &raw.file {
            None => Some(Default::default()),
            Some(name) if name.trim().is_empty() => {
                let key = self.key("allowlist.file");
                self.problem(key.invalid(name, expected_at("allowlist.file").unwrap_or_default()));
                None
            }
            Some(name) => {
                let path = dir.join(name);
                let file_origin = path.display().to_string();
                match read_text(&path) {
                    Ok(text) => allowlist::from_yaml(&text, &file_origin, self.problems),
                    Err(ReadError::Io(err)) => {
                        let key = self.key("allowlist.file");
                        self.problem(key.invalid(
                            name,
                            format_args!(
                                "a readable allowlist file: cannot read {file_origin}: {err}"
                            ),
                        ));
                        None
                    }
                    Err(err @ ReadError::NotUtf8 { .. }) => {
                        self.problem(Problem {
                            kind: ProblemKind::Syntax,
                            origin: file_origin,
                            location: None,
                            path: String::new(),
                            value: None,
                            message: format!("not valid YAML: {err}"),
                        });
                        None
                    }
                }
            }
        };
        let mode = match raw.mode.as_deref() {
            None | Some("off") => Some(AllowlistMode::Off),
            Some("enforce") => {
                let key = self.key("allowlist.mode");
                match (&raw.file, &networks) {
                    (None, _) => {
                        self.problem(key.invalid(
                            "enforce",
                            "off unless allowlist.file names the sources to admit: enforcing no \
                             allowlist would drop every source",
                        ));
                        None
                    }
                    (Some(name), Some((groups, names)))
                        if groups.is_empty() && names.is_empty() =>
                    {
                        let file = dir.join(name);
                        self.problem(key.invalid(
                            "enforce",
                            format_args!(
                                "off while {} lists no networks: enforcing it would drop every \
                                 source",
                                file.display()
                            ),
                        ));
                        None
                    }
                    _ => Some(AllowlistMode::Enforce),
                }
            }
            Some(text) => {
                let key = self.key("allowlist.mode");
                self.problem(key.invalid(text, expected_at("allowlist.mode").unwrap_or_default()));
                None
            }
        };
        (networks, mode)
    }

    fn rules(&mut self, raw: RawRules, defaults: &PolicyConfig) -> Option<Rules> {
        let mut bans = Vec::new();
        let (scanner, scanner_user_agents) =
            self.scanner_rule(raw.scanner.unwrap_or_default(), defaults, &mut bans);
        let mut rule = |name: &str, raw: Option<RawRule>, default: &Rule| {
            self.rule(name, raw.unwrap_or_default(), default, &mut bans)
        };
        let register_failures = rule(
            "register_failures",
            raw.register_failures,
            &defaults.register_failures,
        );
        let invite_failures = rule(
            "invite_failures",
            raw.invite_failures,
            &defaults.invite_failures,
        );
        let enumeration = rule("enumeration", raw.enumeration, &defaults.enumeration);
        let garbage = rule("garbage", raw.garbage, &defaults.garbage);
        let raw_flood = raw.flood.unwrap_or_default();
        let flood_trusted_threshold = self.threshold(
            "rules.flood.trusted_threshold",
            raw_flood.trusted_threshold.as_deref(),
            defaults.flood_trusted_threshold,
        );
        let flood = self.rule(
            "flood",
            RawRule {
                mode: raw_flood.mode,
                threshold: raw_flood.threshold,
                window: raw_flood.window,
                ban_for: raw_flood.ban_for,
            },
            &defaults.flood,
            &mut bans,
        );
        let ipv6 = raw.ipv6_prefix.unwrap_or_default();
        let ipv6_prefix_len = self.prefix_len(ipv6.length.as_deref(), defaults.ipv6_prefix_len);
        let ipv6_offenders = match ipv6.offenders.as_deref() {
            None => Some(defaults.ipv6_offenders),
            Some(text) => text.parse::<u32>().ok().or_else(|| {
                let key = self.key("rules.ipv6_prefix.offenders");
                let expected = expected_at("rules.ipv6_prefix.offenders").unwrap_or_default();
                self.problem(key.invalid(text, expected));
                None
            }),
        };
        let repeat = self.repeat(raw.repeat_offenders.unwrap_or_default(), defaults, &bans);
        Some(Rules {
            scanner_user_agents: scanner_user_agents?,
            scanner: scanner?,
            register_failures: register_failures?,
            invite_failures: invite_failures?,
            enumeration: enumeration?,
            flood: flood?,
            flood_trusted_threshold: flood_trusted_threshold?,
            garbage: garbage?,
            ipv6_prefix_len: ipv6_prefix_len?,
            ipv6_offenders: ipv6_offenders?,
            repeat: repeat?,
        })
    }

    /// The scanner rule trips on one packet: only its mode and ban are set here. Its patterns
    /// are added to the built-in list, which cannot be shortened by mistake.
    fn scanner_rule(
        &mut self,
        raw: RawScannerRule,
        defaults: &PolicyConfig,
        bans: &mut Vec<BanFor>,
    ) -> (Option<Rule>, Option<Vec<String>>) {
        let default = &defaults.scanner;
        let mode = self.mode("rules.scanner.mode", raw.mode.as_deref(), default.mode);
        let ban_for = self.ban_for("rules.scanner", raw.ban_for, default.ban_for, bans);
        let rule = mode.zip(ban_for).map(|(mode, ban_for)| Rule {
            mode,
            ban_for,
            ..*default
        });

        let added = raw.user_agents.unwrap_or_default();
        let mut ok = true;
        if added.len() > MAX_USER_AGENTS {
            self.problem(Problem {
                kind: ProblemKind::InvalidValue,
                origin: self.origin.to_owned(),
                location: None,
                path: "rules.scanner.user_agents".to_owned(),
                value: Some(format!("[{} patterns]", added.len())),
                message: format!("expected at most {MAX_USER_AGENTS} patterns"),
            });
            ok = false;
        }
        for (i, pattern) in added.iter().enumerate() {
            let key = self.key(format!("rules.scanner.user_agents[{i}]"));
            if pattern.trim().is_empty() {
                // A blank pattern would match every User-Agent with a space in it.
                self.problem(
                    key.invalid(pattern, "a pattern with text in it, such as MyOwnBadTool"),
                );
                ok = false;
            } else if pattern.len() > MAX_USER_AGENT_BYTES {
                self.problem(key.invalid(
                    pattern,
                    format_args!("a pattern of at most {MAX_USER_AGENT_BYTES} bytes"),
                ));
                ok = false;
            }
        }
        let user_agents = ok.then(|| {
            let mut all = defaults.scanner_user_agents.clone();
            all.extend(added);
            all
        });
        (rule, user_agents)
    }

    fn rule(
        &mut self,
        name: &str,
        raw: RawRule,
        default: &Rule,
        bans: &mut Vec<BanFor>,
    ) -> Option<Rule> {
        let at = format!("rules.{name}");
        let mode = self.mode(&format!("{at}.mode"), raw.mode.as_deref(), default.mode);
        let threshold = self.threshold(
            &format!("{at}.threshold"),
            raw.threshold.as_deref(),
            default.threshold,
        );
        let window = self.duration(
            &format!("{at}.window"),
            raw.window.as_deref(),
            default.window,
        );
        let ban_for = self.ban_for(&at, raw.ban_for, default.ban_for, bans);
        Some(Rule {
            mode: mode?,
            threshold: threshold?,
            window: window?,
            ban_for: ban_for?,
        })
    }

    /// `rules.ipv6_prefix.length`: 1 to 128.
    fn prefix_len(&mut self, text: Option<&str>, default: u8) -> Option<u8> {
        let Some(text) = text else {
            return Some(default);
        };
        match text.parse::<u8>() {
            Ok(len) if (1..=128).contains(&len) => Some(len),
            _ => {
                let key = self.key("rules.ipv6_prefix.length");
                let expected = expected_at("rules.ipv6_prefix.length").unwrap_or_default();
                self.problem(key.invalid(text, expected));
                None
            }
        }
    }

    fn mode(&mut self, path: &str, text: Option<&str>, default: Mode) -> Option<Mode> {
        match text {
            None => Some(default),
            Some("observe") => Some(Mode::Observe),
            Some("drop") => Some(Mode::Drop),
            Some("ban") => Some(Mode::Ban),
            Some(text) => {
                let key = self.key(path);
                self.problem(key.invalid(text, raw::MODES));
                None
            }
        }
    }

    fn threshold(&mut self, path: &str, text: Option<&str>, default: u32) -> Option<u32> {
        let Some(text) = text else {
            return Some(default);
        };
        match text.parse::<u32>() {
            Ok(n) if n >= 1 => Some(n),
            parsed => {
                let key = self.key(path);
                let too_large = parsed.is_err() && text.parse::<u64>().is_ok();
                let expected = if too_large {
                    format!("a whole number from 1 to {}", u32::MAX)
                } else {
                    format!("a whole number of at least 1, such as {default}")
                };
                self.problem(key.invalid(text, expected));
                None
            }
        }
    }

    /// A rule's `ban_for`, noted in `bans` for the check against `repeat_offenders.max_ban`.
    fn ban_for(
        &mut self,
        rule: &str,
        text: Option<String>,
        default: Duration,
        bans: &mut Vec<BanFor>,
    ) -> Option<Duration> {
        let path = format!("{rule}.ban_for");
        let duration = self.duration(&path, text.as_deref(), default)?;
        bans.push(BanFor {
            path,
            text,
            duration,
        });
        Some(duration)
    }

    /// Repeat offenders' bans double up to `max_ban`, so a rule's first ban longer than that
    /// would be cut short on the second offence: refused, at whichever key the file sets.
    fn repeat(
        &mut self,
        raw: RawRepeat,
        defaults: &PolicyConfig,
        bans: &[BanFor],
    ) -> Option<RepeatConfig> {
        let default = &defaults.repeat;
        let at = "rules.repeat_offenders";
        let within = self.duration(
            &format!("{at}.within"),
            raw.within.as_deref(),
            default.within,
        );
        let max_ban_path = format!("{at}.max_ban");
        let max_ban = self.duration(&max_ban_path, raw.max_ban.as_deref(), default.max_ban)?;
        let mut ok = true;
        match raw.max_ban.as_deref() {
            Some(text) => {
                if let Some(longest) = bans.iter().rev().max_by_key(|ban| ban.duration) {
                    if longest.duration > max_ban {
                        let written = longest.text.as_deref().map_or_else(
                            || format!("{} by default", example(longest.duration)),
                            str::to_owned,
                        );
                        let key = self.key(max_ban_path.clone());
                        self.problem(key.invalid(
                            text,
                            format_args!(
                                "a duration at least as long as every rule's ban_for ({} is \
                                 {written})",
                                longest.path
                            ),
                        ));
                        ok = false;
                    }
                }
            }
            None => {
                for ban in bans.iter().filter(|ban| ban.duration > max_ban) {
                    // Only a ban_for the file sets can exceed the default max_ban.
                    let Some(text) = ban.text.as_deref() else {
                        continue;
                    };
                    let key = self.key(ban.path.clone());
                    self.problem(key.invalid(
                        text,
                        format_args!(
                            "a duration no longer than {max_ban_path} ({}), or a longer max_ban",
                            example(max_ban)
                        ),
                    ));
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        Some(RepeatConfig {
            within: within?,
            max_ban,
        })
    }
}

impl<'a> Validator<'a, '_> {
    /// The `metrics`, `admin` and `journal` sections, each address and the journal replaceable
    /// by its flag.
    fn ops(
        &mut self,
        metrics: &Option<raw::RawListenOne>,
        admin: &Option<raw::RawAdmin>,
        journal: &Option<raw::RawJournal>,
        dir: &Path,
        overrides: &Overrides,
    ) -> Option<OpsConfig> {
        let metrics = self.service(
            ("metrics.listen", "--metrics"),
            metrics.as_ref().and_then(|m| m.listen.clone()),
            overrides.metrics.clone(),
            DEFAULT_METRICS,
            false,
        );
        let admin_listen = self.service(
            ("admin.listen", "--admin"),
            admin.as_ref().and_then(|a| a.listen.clone()),
            overrides.admin.clone(),
            DEFAULT_ADMIN,
            true,
        );
        let token = admin.as_ref().and_then(|a| a.token_file.clone());
        let admin_token = self.file_name(
            (self.key("admin.token_file"), "admin.token_file"),
            token,
            dir,
        );
        let file = journal.as_ref().and_then(|j| j.path.clone());
        let journal = match &overrides.journal {
            Some(text) => self.file_name(
                (self.flag("--journal"), "journal.path"),
                Some(text.clone()),
                Path::new(""),
            ),
            None => self.file_name((self.key("journal.path"), "journal.path"), file, dir),
        };
        Some(OpsConfig {
            metrics: metrics?,
            admin: admin_listen?,
            admin_token: admin_token?,
            journal: journal?,
        })
    }

    /// A file name from `key`, which sets the file key `schema` (a flag replaces one), taken
    /// relative to `dir`; `None` inside when left out.
    fn file_name(
        &mut self,
        (key, schema): (Key<'a>, &str),
        text: Option<String>,
        dir: &Path,
    ) -> Option<Option<PathBuf>> {
        match text {
            None => Some(None),
            Some(text) if text.trim().is_empty() => {
                self.problem(key.invalid(&text, expected_at(schema).unwrap_or_default()));
                None
            }
            Some(text) => Some(Some(dir.join(text))),
        }
    }

    /// A TCP service's address from `(key, flag)`, `off` for none; `loopback_only` for one that
    /// must never be reachable from the network.
    fn service(
        &mut self,
        (path, flag): (&str, &str),
        file: Option<String>,
        flag_value: Option<String>,
        default: SocketAddr,
        loopback_only: bool,
    ) -> Option<Option<SocketAddr>> {
        let (key, text) = match flag_value {
            Some(text) => (self.flag(flag), text),
            None => match file {
                Some(text) => (self.key(path), text),
                None => return Some(Some(default)),
            },
        };
        if text == "off" {
            return Some(None);
        }
        match parse_socket_addr(&text, default.port()) {
            Ok(addr) if loopback_only && !addr.ip().is_loopback() => {
                self.problem(key.invalid(
                    &text,
                    format_args!(
                        "a loopback address such as {default}, or off: the admin API is for \
                         this host's operators and must not be reachable from the network"
                    ),
                ));
                None
            }
            Ok(addr) => Some(Some(addr)),
            Err(expected) => {
                self.problem(key.invalid(&text, format_args!("{expected}, or off")));
                None
            }
        }
    }
}

impl<'a> Validator<'a, '_> {
    /// The outbound path: a loopback listener (anywhere else it would relay for anyone who can
    /// reach it) that is not the PBX's address, and a public address a UDP listener receives on.
    fn outbound(
        &mut self,
        raw: raw::RawOutbound,
        udp: &[(Key<'a>, Option<SocketAddr>)],
        pbx: Option<SocketAddr>,
    ) -> Option<Option<OutboundConfig>> {
        let Some(text) = raw.listen else {
            if let Some(public) = raw.public {
                self.problem(
                    self.key("outbound.public")
                        .invalid(&public, "to be left out unless outbound.listen is set"),
                );
                return None;
            }
            return Some(None);
        };
        let key = self.key("outbound.listen");
        let listen = match parse_socket_addr(&text, 5070) {
            Ok(addr) if !addr.ip().is_loopback() => {
                self.problem(key.invalid(
                    &text,
                    "a loopback address such as 127.0.0.1:5070: the PBX sends there, and \
                     anywhere else it would relay requests for anyone who reaches it",
                ));
                None
            }
            Ok(addr) if Some(addr) == pbx => {
                self.problem(key.invalid(&text, "an address other than the PBX's own"));
                None
            }
            Ok(addr) => Some(addr),
            Err(expected) => {
                self.problem(key.invalid(&text, expected));
                None
            }
        };
        let receives = |addr: SocketAddr| {
            udp.iter()
                .filter_map(|(_, listener)| *listener)
                .any(|listener| listener == addr || covers(listener, addr))
        };
        let public = match raw.public {
            None => {
                let first = udp.first().and_then(|(_, addr)| *addr);
                if first.is_some_and(|addr| addr.ip().is_unspecified()) {
                    self.problem(key.invalid(
                        &text,
                        "outbound.public beside it, since the first of listen.udp is a \
                         wildcard and carriers must be told an address they can reach",
                    ));
                    return None;
                }
                None
            }
            Some(public_text) => {
                let public_key = self.key("outbound.public");
                match parse_socket_addr(&public_text, 5060) {
                    Ok(addr) if addr.ip().is_unspecified() || addr.port() == 0 => {
                        self.problem(public_key.invalid(
                            &public_text,
                            "the address carriers reach sipguard at, not a wildcard",
                        ));
                        return None;
                    }
                    Ok(addr) if !receives(addr) => {
                        self.problem(public_key.invalid(
                            &public_text,
                            "an address one of listen.udp receives on (carriers answer there)",
                        ));
                        return None;
                    }
                    Ok(addr) => Some(addr),
                    Err(expected) => {
                        self.problem(public_key.invalid(&public_text, expected));
                        return None;
                    }
                }
            }
        };
        Some(Some(OutboundConfig {
            listen: listen?,
            public,
        }))
    }
}

/// `duration` as an operator would write it in the file: in its largest whole unit of weeks,
/// hours, minutes or seconds (`24h` rather than humantime's `1day`).
fn example(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs == 0 || duration.subsec_nanos() != 0 {
        return humantime::format_duration(duration).to_string();
    }
    let (count, unit) = [(7 * 24 * 3600, "w"), (3600, "h"), (60, "m"), (1, "s")]
        .into_iter()
        .find(|(size, _)| secs.is_multiple_of(*size))
        .map_or((secs, "s"), |(size, unit)| (secs / size, unit));
    format!("{count}{unit}")
}

/// Whether a listener on `wide` already receives what is sent to `addr`: the same port on the
/// wildcard of the same family (IPv6 listeners are IPv6-only, so `[::]` does not cover IPv4).
fn covers(wide: SocketAddr, addr: SocketAddr) -> bool {
    wide.port() == addr.port() && wide.ip().is_unspecified() && wide.is_ipv4() == addr.is_ipv4()
}

/// Parses `ip:port` or `[ipv6]:port`; on failure, says what was expected as precisely as the
/// text allows (a missing port, unbracketed IPv6, a host name, a bad port).
fn parse_socket_addr(text: &str, example_port: u16) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let generic = || {
        format!("an IP address with a port, such as 0.0.0.0:{example_port} or [::]:{example_port}")
    };
    if let Ok(ip) = text.parse::<IpAddr>() {
        // `::1:5060` is a valid IPv6 address, but more likely `[::1]:5060` without brackets.
        let meant = text
            .rsplit_once(':')
            .and_then(|(head, port)| Some((head.parse::<Ipv6Addr>().ok()?, port.parse().ok()?)));
        let with_port = match meant {
            Some((head, port)) if ip.is_ipv6() => SocketAddr::new(head.into(), port),
            _ => SocketAddr::new(ip, example_port),
        };
        return Err(match ip {
            IpAddr::V4(_) => format!("an address with a port, such as {with_port}"),
            IpAddr::V6(_) => {
                format!("an address with a port, IPv6 in brackets, such as {with_port}")
            }
        });
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(generic());
    };
    let host_ip = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse::<IpAddr>();
    if host_ip.is_ok() && port.parse::<u16>().is_err() {
        return Err("a port from 0 to 65535 after the address".to_owned());
    }
    if !host.contains(':') && host.chars().any(|c| c.is_ascii_alphabetic()) {
        return Err(format!(
            "an IP address with a port, such as 127.0.0.1:{example_port}; host names are not looked up"
        ));
    }
    Err(generic())
}

/// Parses a CIDR, or a bare address meaning just that address (/32 or /128). A CIDR with host
/// bits set is refused: `192.0.2.7/24` is more likely a slip than a way to write 192.0.2.0/24.
pub(crate) fn parse_net(text: &str) -> Result<IpNet, String> {
    let generic = || raw::NETWORK.to_owned();
    if text.contains('/') {
        return match text.parse::<IpNet>() {
            Ok(net) if net.trunc() == net => Ok(net),
            Ok(net) => Err(format!(
                "a network address with no host bits set, such as {}",
                net.trunc()
            )),
            Err(_) => Err(generic()),
        };
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| generic())
}
