//! Who can reach Asterisk and with what: pjsip auths, endpoints, identifies and transports,
//! chan_sip's `[general]` and peers, and voicemail mailboxes. Each check reads the parsed
//! [`Config`] and adds findings; the passwords it meets are collected first and judged together,
//! so a password used by two accounts is found wherever it appears. Every endpoint, peer and guest
//! door is also returned as a [`Caller`] whose context the dial-plan check follows.

use super::conf::{Config, Pos, Section};
use super::secrets;
use super::{Finding, Severity};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// The ports sipguard owns (SIP, and SIP over TLS): Asterisk must not listen there except on
/// loopback.
pub const SIP_PORTS: [u16; 2] = [5060, 5061];

/// A way into the dial plan: the context a request lands in and who sends it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub context: String,
    /// "pjsip endpoint 2001", "chan_sip peer trunk", "chan_sip guests".
    pub who: String,
}

/// A password met in the configuration, judged once everything is read. No `Debug`: nothing may
/// print it by accident.
pub struct Password {
    pub secret: String,
    pub pos: Pos,
    pub section: String,
    /// The user name and extensions it must not equal or contain.
    pub names: Vec<String>,
}

fn kind(section: &Section) -> String {
    section.value("type").to_ascii_lowercase()
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn at(
    severity: Severity,
    check: &'static str,
    pos: &Pos,
    section: &Section,
    message: String,
) -> Finding {
    Finding::at(severity, check, pos.clone(), Some(&section.name), message)
}

/// pjsip.conf: auths, endpoints, identifies and transports.
pub fn pjsip(
    config: &Config,
    passwords: &mut Vec<Password>,
    callers: &mut Vec<Caller>,
    findings: &mut Vec<Finding>,
) {
    let of = |t: &'static str| config.objects().filter(move |s| kind(s) == t);
    let has_auth = |endpoint: &str| {
        of("endpoint").any(|e| e.name == endpoint && list(e.value("auth")).next().is_some())
    };
    for auth in of("auth") {
        let auth_type = auth.value("auth_type").to_ascii_lowercase();
        if !matches!(auth_type.as_str(), "" | "userpass" | "digest" | "md5") {
            continue;
        }
        match auth.get("password") {
            Some(entry) if auth_type != "md5" => {
                let users: Vec<String> = of("endpoint")
                    .filter(|e| list(e.value("auth")).any(|a| a == auth.name))
                    .map(|e| e.name.clone())
                    .collect();
                if users.len() > 1 {
                    findings.push(at(
                        Severity::High,
                        "password-reused",
                        &entry.pos,
                        auth,
                        format!(
                            "one auth for endpoints {}: each extension needs its own password",
                            users.join(", ")
                        ),
                    ));
                }
                let mut names = vec![auth.value("username").to_owned(), auth.name.clone()];
                names.extend(users);
                passwords.push(Password {
                    secret: entry.value.clone(),
                    pos: entry.pos.clone(),
                    section: auth.name.clone(),
                    names,
                });
            }
            _ => match auth.get("md5_cred").or_else(|| auth.get("password_digest")) {
                Some(entry) => findings.push(at(
                    Severity::Info,
                    "password-hashed",
                    &entry.pos,
                    auth,
                    format!(
                        "{} is a hash: its password's strength cannot be checked",
                        entry.key
                    ),
                )),
                None => findings.push(at(
                    Severity::High,
                    "password-empty",
                    &auth.pos,
                    auth,
                    "auth has no password".to_owned(),
                )),
            },
        }
    }
    // pjsip's default order; without `username` only identify (or a header) names an endpoint.
    let order = of("global")
        .last()
        .map_or("", |g| g.value("endpoint_identifier_order"));
    let by_username = order.is_empty() || list(order).any(|m| m.eq_ignore_ascii_case("username"));
    for endpoint in of("endpoint") {
        callers.push(Caller {
            context: context(endpoint, "default"),
            who: format!("pjsip endpoint {}", endpoint.name),
        });
        if endpoint.name == "anonymous" {
            findings.push(at(
                Severity::Medium,
                "anonymous-endpoint",
                &endpoint.pos,
                endpoint,
                "takes calls from anyone, without a password; its context must reach only your \
                 own numbers"
                    .to_owned(),
            ));
        } else if list(endpoint.value("auth")).next().is_none() {
            findings.push(no_auth(
                endpoint,
                by_username,
                &of("identify").collect::<Vec<_>>(),
            ));
        }
    }
    for identify in of("identify") {
        let endpoint = identify.value("endpoint");
        for entry in identify.all("match") {
            if list(&entry.value).any(covers_loopback) {
                let severity = if has_auth(endpoint) {
                    Severity::Medium
                } else {
                    Severity::High
                };
                findings.push(at(
                    severity,
                    "identify-loopback",
                    &entry.pos,
                    identify,
                    format!(
                        "match covers 127.0.0.1: behind sipguard every request comes from \
                         loopback, so every caller is identified as endpoint {endpoint}"
                    ),
                ));
            }
        }
    }
    for transport in of("transport") {
        let protocol = transport.value("protocol").to_ascii_lowercase();
        let default_port = match protocol.as_str() {
            "" | "udp" | "tcp" => 5060,
            "tls" => 5061,
            // WebSockets ride on Asterisk's HTTP server, whose address http.conf sets.
            _ => continue,
        };
        if let Some(bind) = transport.get("bind") {
            if let Some((severity, message)) = exposure(&bind.value, default_port, "bind") {
                findings.push(at(
                    severity,
                    "transport-exposed",
                    &bind.pos,
                    transport,
                    message,
                ));
            }
        }
    }
}

/// The finding for an endpoint without inbound auth: high while any caller can be identified as
/// it by writing its name in From (pjsip's default `endpoint_identifier_order`); medium when only
/// its identify's addresses reach it (an IP trunk: pjsip's insecure=invite, right only for a
/// carrier on an address no one else arrives from); low when nothing identifies it.
fn no_auth(endpoint: &Section, by_username: bool, identifies: &[&Section]) -> Finding {
    let identified: Vec<String> = identifies
        .iter()
        .filter(|i| i.value("endpoint") == endpoint.name)
        .map(|i| format!("[{}]", i.name))
        .collect();
    let (severity, message) = match (by_username, identified.is_empty()) {
        (true, true) => (
            Severity::High,
            "endpoint without auth: requests naming it in From are taken without a password"
                .to_owned(),
        ),
        (true, false) => (
            Severity::High,
            format!(
                "endpoint without auth: requests naming it in From, or from the addresses \
                 identify {} matches, are taken without a password (pjsip's insecure=invite)",
                identified.join(", ")
            ),
        ),
        (false, false) => (
            Severity::Medium,
            format!(
                "endpoint without auth: requests from the addresses identify {} matches are \
                 taken without a password (pjsip's insecure=invite); right only for a carrier \
                 whose address no one else arrives from",
                identified.join(", ")
            ),
        ),
        (false, true) => (
            Severity::Low,
            "endpoint without auth that nothing identifies: unreachable until an identify \
             names it"
                .to_owned(),
        ),
    };
    at(
        severity,
        "endpoint-no-auth",
        &endpoint.pos,
        endpoint,
        message,
    )
}

fn context(section: &Section, default: &str) -> String {
    match section.value("context") {
        "" => default.to_owned(),
        context => context.to_owned(),
    }
}

/// Whether an identify `match` item covers the loopback address every phone arrives from behind
/// sipguard (`pbx.upstream_bind`, 127.0.0.1 by default): 127.0.0.1, ::1, a network holding them,
/// or `localhost`. Another loopback address, such as an allowlist group's carrier `identity`
/// (127.0.1.1), is what a carrier's identify should match.
fn covers_loopback(item: &str) -> bool {
    let item = item.trim();
    if item.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let loopback = |net: ipnet::IpNet| {
        net.contains(&IpAddr::from([127, 0, 0, 1]))
            || net.contains(&IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]))
    };
    if let Ok(net) = item.parse::<ipnet::IpNet>() {
        return loopback(net);
    }
    if let Ok(addr) = item.trim_matches(['[', ']']).parse::<IpAddr>() {
        return loopback(addr.into());
    }
    // The dotted netmask form, 127.0.0.0/255.0.0.0.
    item.split_once('/')
        .and_then(|(addr, mask)| Some((addr.parse().ok()?, mask.parse().ok()?)))
        .and_then(|(addr, mask)| ipnet::Ipv4Net::with_netmask(addr, mask).ok())
        .is_some_and(|net| loopback(net.into()))
}

/// What a listening address Asterisk is given (`value`, with `default_port` when it has none)
/// exposes, unless it is loopback: high on sipguard's ports when public or every address, medium
/// when private there, low on another port or when it is not an address.
fn exposure(value: &str, default_port: u16, key: &str) -> Option<(Severity, String)> {
    let Some(addr) = listen_address(value, default_port) else {
        return Some((
            Severity::Low,
            format!("{key} is not an IP address: cannot tell what it exposes"),
        ));
    };
    let ip = addr.ip();
    let port = addr.port();
    if ip.is_loopback() {
        None
    } else if !SIP_PORTS.contains(&port) {
        Some((
            Severity::Low,
            format!(
                "{key} {addr} is not loopback: what arrives at port {port} reaches Asterisk \
                 without passing sipguard; firewall it to your carriers"
            ),
        ))
    } else if ip.is_unspecified() || !is_private(ip) {
        let what = if ip.is_unspecified() {
            "every address"
        } else {
            "a public address"
        };
        Some((
            Severity::High,
            format!(
                "{key} {addr}: Asterisk listens on {what} at the SIP port sipguard owns; bind \
                 it to 127.0.0.1 on another port (deploy/asterisk/pjsip.conf)"
            ),
        ))
    } else {
        Some((
            Severity::Medium,
            format!(
                "{key} {addr}: the local network reaches Asterisk at the SIP port without \
                 passing sipguard; bind it to 127.0.0.1"
            ),
        ))
    }
}

/// `addr`, `addr:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
fn listen_address(value: &str, default_port: u16) -> Option<SocketAddr> {
    let value = value.trim();
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Some(addr);
    }
    value
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_link_local()
                || (v4.octets()[0] == 100 && v4.octets()[1] & 0xc0 == 64)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80
        }
    }
}

fn yes(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "yes" | "true" | "y" | "t" | "1" | "on"
    )
}

/// sip.conf (chan_sip): guests, its listening addresses, and each peer's secret and `insecure`.
pub fn chan_sip(
    config: &Config,
    passwords: &mut Vec<Password>,
    callers: &mut Vec<Caller>,
    findings: &mut Vec<Finding>,
) {
    let general = config.objects().find(|s| s.name == "general");
    let general_context = general.map_or("default".to_owned(), |g| context(g, "default"));
    match general.map(|g| (g, g.get("allowguest"))) {
        Some((g, Some(entry))) if yes(&entry.value) => findings.push(at(
            Severity::High,
            "guest-calls",
            &entry.pos,
            g,
            format!("allowguest = yes: chan_sip takes calls from anyone, without a password, into context {general_context}"),
        )),
        Some((_, Some(_))) => {}
        missing => {
            let message = format!(
                "allowguest is not set and chan_sip's default is yes: calls from anyone, \
                 without a password, go to context {general_context}; set allowguest = no"
            );
            findings.push(match missing {
                Some((g, None)) => at(Severity::Medium, "guest-calls", &g.pos, g, message),
                _ => Finding::file(Severity::Medium, "guest-calls", "sip.conf", message),
            });
        }
    }
    let guests = general
        .and_then(|g| g.get("allowguest"))
        .is_none_or(|e| yes(&e.value));
    if guests {
        callers.push(Caller {
            context: general_context.clone(),
            who: "chan_sip guests".to_owned(),
        });
    }
    chan_sip_binds(general, findings);

    for peer in config
        .objects()
        .filter(|s| s.name != "general" && s.name != "authentication")
    {
        callers.push(Caller {
            context: context(peer, &general_context),
            who: format!("chan_sip peer {}", peer.name),
        });
        match (peer.get("secret"), peer.get("md5secret")) {
            (Some(secret), _) => passwords.push(Password {
                secret: secret.value.clone(),
                pos: secret.pos.clone(),
                section: peer.name.clone(),
                names: [
                    &peer.name[..],
                    peer.value("defaultuser"),
                    peer.value("username"),
                ]
                .map(str::to_owned)
                .to_vec(),
            }),
            (None, Some(md5)) => findings.push(at(
                Severity::Info,
                "password-hashed",
                &md5.pos,
                peer,
                "md5secret is a hash: its password's strength cannot be checked".to_owned(),
            )),
            (None, None) => findings.push(at(
                Severity::High,
                "peer-no-secret",
                &peer.pos,
                peer,
                "peer without a secret: requests matched to it are taken without a password"
                    .to_owned(),
            )),
        }
        if let Some(insecure) = peer.get("insecure") {
            let value = insecure.value.to_ascii_lowercase();
            if value == "very" || list(&value).any(|v| v == "invite") {
                findings.push(at(
                    Severity::High,
                    "insecure-invite",
                    &insecure.pos,
                    peer,
                    "insecure includes invite: INVITEs matched to this peer are taken without a \
                     password (MOR warns against insecure=port,invite)"
                        .to_owned(),
                ));
            } else if list(&value).any(|v| v == "port") {
                findings.push(at(
                    Severity::Low,
                    "insecure-port",
                    &insecure.pos,
                    peer,
                    "insecure = port: the peer is matched by address alone, any source port"
                        .to_owned(),
                ));
            }
        }
    }
}

/// chan_sip's UDP, TCP and TLS listeners, with its defaults (every address, 5060 and 5061).
fn chan_sip_binds(general: Option<&Section>, findings: &mut Vec<Finding>) {
    let get = |key: &str| general.and_then(|g| g.get(key));
    let port: u16 = get("bindport")
        .and_then(|e| e.value.parse().ok())
        .unwrap_or(5060);
    let udp = get("udpbindaddr").or_else(|| get("bindaddr"));
    let mut listeners = vec![(udp, port, "udpbindaddr")];
    if get("tcpenable").is_some_and(|e| yes(&e.value)) {
        listeners.push((get("tcpbindaddr").or(udp), port, "tcpbindaddr"));
    }
    if get("tlsenable").is_some_and(|e| yes(&e.value)) {
        listeners.push((get("tlsbindaddr"), 5061, "tlsbindaddr"));
    }
    for (entry, default_port, key) in listeners {
        let (value, key) = match entry {
            Some(entry) => (entry.value.as_str(), entry.key.clone()),
            None => ("0.0.0.0", format!("{key} (default)")),
        };
        let Some((severity, message)) = exposure(value, default_port, &key) else {
            continue;
        };
        findings.push(match (entry, general) {
            (Some(entry), Some(g)) => at(severity, "transport-exposed", &entry.pos, g, message),
            (None, Some(g)) => at(severity, "transport-exposed", &g.pos, g, message),
            _ => Finding::file(severity, "transport-exposed", "sip.conf", message),
        });
    }
}

/// Judges every password, and reports each one that more than one account uses.
pub fn passwords(passwords: &[Password], findings: &mut Vec<Finding>) {
    let mut users: BTreeMap<&str, Vec<&Password>> = BTreeMap::new();
    for password in passwords {
        users.entry(&password.secret).or_default().push(password);
        let names: Vec<&str> = password.names.iter().map(String::as_str).collect();
        for weakness in secrets::password(&password.secret, &names) {
            findings.push(weakness.at(&password.pos, &password.section));
        }
    }
    for sharing in users
        .values()
        .filter(|s| s.len() > 1 && !s[0].secret.is_empty())
    {
        for password in sharing {
            let others: Vec<String> = sharing
                .iter()
                .filter(|o| o.section != password.section || o.pos != password.pos)
                .map(|o| format!("[{}] {}:{}", o.section, o.pos.file, o.pos.line))
                .collect();
            findings.push(Finding::at(
                Severity::High,
                "password-reused",
                password.pos.clone(),
                Some(&password.section),
                format!("the same password is used by {}", others.join(", ")),
            ));
        }
    }
}

/// voicemail.conf: each mailbox's PIN (`mailbox => pin,name,...`, a leading `-` meaning the
/// user may not change it).
pub fn voicemail(config: &Config, findings: &mut Vec<Finding>) {
    for context in config
        .objects()
        .filter(|s| s.name != "general" && s.name != "zonemessages")
    {
        for entry in &context.entries {
            let pin = entry.value.split(',').next().unwrap_or("").trim();
            let pin = pin.strip_prefix('-').unwrap_or(pin);
            if let Some(weakness) = secrets::pin(pin, entry.key.trim()) {
                findings.push(weakness.at(&entry.pos, &context.name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_matches_are_recognised_in_every_spelling() {
        for item in [
            "127.0.0.1",
            "127.0.0.0/8",
            "0.0.0.0/0",
            "::1",
            "[::1]",
            "::/0",
            "localhost",
            "127.0.0.0/255.0.0.0",
        ] {
            assert!(covers_loopback(item), "{item}");
        }
        for item in [
            "192.0.2.10",
            "198.51.100.0/24",
            "carrier.example",
            "2001:db8::/32",
        ] {
            assert!(!covers_loopback(item), "{item}");
        }
    }

    #[test]
    fn listen_addresses_take_a_default_port() {
        let at = |v| listen_address(v, 5060);
        assert_eq!(at("0.0.0.0"), Some("0.0.0.0:5060".parse().unwrap()));
        assert_eq!(at("[::]"), Some("[::]:5060".parse().unwrap()));
        assert_eq!(at("::"), Some("[::]:5060".parse().unwrap()));
        assert_eq!(at("[::1]:5080"), Some("[::1]:5080".parse().unwrap()));
        assert_eq!(at("pbx.example"), None);
    }

    #[test]
    fn private_ranges_are_not_public() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["203.0.113.10", "2001:db8::1", "100.128.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
