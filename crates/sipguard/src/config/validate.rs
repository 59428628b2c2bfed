//! Stage two: [`RawConfig`] to the typed [`Config`], every problem gathered before failing.
//!
//! Defaults for keys the file leaves out live here, as constants; `config/default.yaml` spells
//! the same values out for operators, and a unit test keeps the two equal.

use super::error::{quote, Problem, ProblemKind};
use super::raw::{expected_at, RawConfig};
use super::{Config, Overrides};
use ipnet::IpNet;
use sipguard_policy::PolicyConfig;
use sipguard_relay::RelayConfig;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Where settings given as flags come from, in messages.
pub(crate) const COMMAND_LINE: &str = "command line";

const DEFAULT_LISTEN_UDP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5060);
const DEFAULT_PBX: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5080);
/// Two hours: far longer than any phone's re-registration interval (typically 1 h at most), so
/// an idle registered phone keeps its session and stays reachable for incoming calls.
const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
const DEFAULT_MAX_SESSIONS: usize = 20_000;
const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024;
/// Smaller than any real INVITE with SDP; a limit below it would drop legitimate calls.
const MIN_MESSAGE_SIZE: usize = 512;
/// The largest UDP payload; nothing bigger can arrive in one datagram.
const MAX_MESSAGE_SIZE: usize = 65_535;

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
/// `problems`. Returns the config only when nothing was wrong.
#[allow(
    clippy::needless_update,
    reason = "PolicyConfig is growing rule settings the file does not set yet; defaults fill them"
)]
pub(crate) fn validate(
    raw: RawConfig,
    origin: &str,
    overrides: &Overrides,
    problems: &mut Vec<Problem>,
) -> Option<Config> {
    let before = problems.len();
    let mut v = Validator { origin, problems };

    let listen_udp = v.listen_udp(raw.listen.and_then(|l| l.udp), &overrides.listen_udp);
    let pbx = raw.pbx.unwrap_or_default();
    let (pbx_key, pbx_text) = match &overrides.pbx {
        Some(text) => (v.flag("--pbx"), Some(text.clone())),
        None => (v.key("pbx.address"), pbx.address),
    };
    let pbx_addr = v.pbx_address(&pbx_key, pbx_text.as_deref(), &listen_udp);
    let upstream_bind = v.upstream_bind(pbx.upstream_bind.as_deref(), pbx_addr.as_ref());

    let sessions = raw.sessions.unwrap_or_default();
    let session_idle = v.session_idle(sessions.idle_timeout.as_deref());
    let max_sessions = v.max_sessions(sessions.max.as_deref());
    let limits = raw.limits.unwrap_or_default();
    let max_message_size = v.max_message_size(limits.max_message_size.as_deref());
    let deny = v.deny(raw.deny);

    if problems.len() > before {
        return None;
    }
    let listen_udp: Option<Vec<SocketAddr>> =
        listen_udp.into_iter().map(|(_, addr)| addr).collect();
    Some(Config {
        listen_udp: listen_udp?,
        relay: RelayConfig {
            pbx: pbx_addr?,
            upstream_bind: upstream_bind?,
            session_idle: session_idle?,
            max_sessions: max_sessions?,
        },
        policy: PolicyConfig {
            deny: deny?,
            max_message_size: max_message_size?,
            ..PolicyConfig::default()
        },
    })
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

    /// Each listener with where it came from, for later messages; a `None` address has been
    /// reported already.
    fn listen_udp(
        &mut self,
        file: Option<Vec<String>>,
        flags: &[String],
    ) -> Vec<(Key<'a>, Option<SocketAddr>)> {
        let entries: Vec<(Key<'a>, String)> = if !flags.is_empty() {
            flags
                .iter()
                .map(|text| (self.flag("--listen"), text.clone()))
                .collect()
        } else {
            match file {
                None => return vec![(self.key("listen.udp"), Some(DEFAULT_LISTEN_UDP))],
                Some(list) if list.is_empty() => {
                    let key = self.key("listen.udp");
                    self.problem(Problem {
                        value: Some("[]".to_owned()),
                        ..key.invalid("", "at least one address, such as 0.0.0.0:5060")
                    });
                    return Vec::new();
                }
                Some(list) => list
                    .into_iter()
                    .enumerate()
                    .map(|(i, text)| (self.key(format!("listen.udp[{i}]")), text))
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

    fn session_idle(&mut self, text: Option<&str>) -> Option<Duration> {
        let Some(text) = text else {
            return Some(DEFAULT_SESSION_IDLE);
        };
        let key = self.key("sessions.idle_timeout");
        match humantime::parse_duration(text) {
            Ok(idle) if !idle.is_zero() => Some(idle),
            Ok(_) => {
                self.problem(key.invalid(text, "a duration greater than 0, such as 2h"));
                None
            }
            Err(_) => {
                self.problem(key.invalid(text, "a duration such as 30s, 10m, 1h"));
                None
            }
        }
    }

    fn max_sessions(&mut self, text: Option<&str>) -> Option<usize> {
        let Some(text) = text else {
            return Some(DEFAULT_MAX_SESSIONS);
        };
        match text.parse::<usize>() {
            Ok(max) if max > 0 => Some(max),
            _ => {
                let key = self.key("sessions.max");
                let expected = expected_at("sessions.max").unwrap_or_default();
                self.problem(key.invalid(text, expected));
                None
            }
        }
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
fn parse_net(text: &str) -> Result<IpNet, String> {
    let generic = || expected_at("deny[]").unwrap_or_default().to_owned();
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
