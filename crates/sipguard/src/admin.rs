//! The admin API, on loopback only: list, add and lift bans, and reload the configuration.
//!
//! | request                  | body                                   | reply                       |
//! |--------------------------|----------------------------------------|-----------------------------|
//! | `GET /bans`              |                                        | `{"bans": [BAN, ...]}`      |
//! | `POST /bans`             | `{"ip", "duration"?, "reason"?}`       | 201 `BAN`                   |
//! | `DELETE /bans/SOURCE`    |                                        | 200 `BAN`, 404 if none      |
//! | `POST /reload`           |                                        | 200 or 422 with the problems|
//! | `GET /feeds`             |                                        | `{"feeds": [FEED, ...]}`    |
//! | `GET /feeds/bans`        |                                        | the bans, one a line (text) |
//!
//! A source (`ip`) is an address, or an IPv6 network at the length the policy bans prefixes at
//! (`rules.ipv6_prefix.length`, such as `2001:db8:1:2::/64`); a ban is `{ip, rule, reason,
//! evidence, first_seen, last_seen, expires, expires_ms, offence}` (times RFC 3339, UTC), its
//! `ip` a bare address or `address/length`. The API keeps nothing of its own: it lists the
//! policy's bans, the operator's words being the ban's note, and its bans and lifts are made by
//! the policy, which publishes them to the journal; the reply waits on the journal's barrier, so
//! an acknowledged change is durable and survives a crash.
//!
//! Every request passes the [`gate`] first: it must carry the token the daemon writes to its
//! token file at start (`Authorization: Bearer TOKEN`), and nothing a web page would send (an
//! `Origin`, another `Host`, a body that is not JSON); a refused request does nothing. Input is
//! bounded before it is acted on, each bound a 400 naming it: a manual ban lasts 1 s to a year
//! ([`MAX_MANUAL_BAN`]), a reason is at most [`MAX_REASON_CHARS`] characters with control
//! characters taken out, and the body at most [`crate::http::MAX_BODY`] bytes.

pub mod gate;

use crate::config::OpsConfig;
use crate::http::{Call, Reply};
use crate::journal::{format_millis, parse_source, Journal, Source};
use crate::reload::{Outcome, Reloader};
use anyhow::Context;
use gate::Gate;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Deserializer};
use serde_json::json;
use sipguard_policy::{Ban, IpNet, Policy, RuleId, Timestamp};
use sipguard_relay::Directory;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A manual ban's length when the request names none.
pub const DEFAULT_BAN: Duration = Duration::from_secs(3600);
/// The shortest manual ban.
pub const MIN_MANUAL_BAN: Duration = Duration::from_secs(1);
/// The longest manual ban: a year as `1y` means it (365.25 days). Longer is a mistake, or an
/// attempt to make a ban that outlives every calendar; a source to keep out for good belongs in
/// the config's `deny` list.
pub const MAX_MANUAL_BAN: Duration = Duration::from_secs(31_557_600);
/// The longest reason kept, in characters: a line of a `sipguard bans list` table.
pub const MAX_REASON_CHARS: usize = 256;
/// The token file's name beside the journal, when `admin.token_file` is not set.
pub const TOKEN_FILE_NAME: &str = "admin.token";
/// Where the packaged systemd unit's sipguard writes its token (`StateDirectory=sipguard`, no
/// `admin.token_file`). `sipguard bans` runs from a shell without the unit's `$STATE_DIRECTORY`,
/// so it looks here after its own default.
pub const SERVICE_TOKEN_FILE: &str = "/var/lib/sipguard/admin.token";

/// Where the daemon writes the admin token: `admin.token_file`, else `admin.token` beside the
/// `journal` (the one the daemon uses). `sipguard bans` finds it by the same rule.
pub fn token_file(ops: &OpsConfig, journal: &Path) -> PathBuf {
    ops.admin_token
        .clone()
        .unwrap_or_else(|| journal.with_file_name(TOKEN_FILE_NAME))
}

/// Where `sipguard bans` looks for the token when told nothing, in order: beside the journal's
/// default place in its own environment (`journal`, from [`crate::journal::default_path`]), as
/// a `sipguard run` by the same user puts it, then [`SERVICE_TOKEN_FILE`].
pub fn default_token_files(journal: Option<&Path>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = journal
        .map(|journal| journal.with_file_name(TOKEN_FILE_NAME))
        .into_iter()
        .collect();
    if !files
        .iter()
        .any(|file| file == Path::new(SERVICE_TOKEN_FILE))
    {
        files.push(PathBuf::from(SERVICE_TOKEN_FILE));
    }
    files
}

/// What the admin API works on.
pub struct Admin {
    policy: Arc<Policy>,
    journal: Journal,
    reloader: Arc<Reloader>,
    /// The relay's live client bindings.
    directory: Arc<Directory>,
    /// The IPv6 prefix length the policy's ban table was built with: a ban on a network of any
    /// other length would be listed but never match a packet.
    prefix_len: u8,
    /// The blocklist feeds, listed at `GET /feeds`.
    feeds: Option<Arc<crate::feeds::Feeds>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBan {
    #[serde(deserialize_with = "source")]
    ip: IpNet,
    duration: Option<String>,
    reason: Option<String>,
}

fn source<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_source(&text).ok_or_else(|| {
        serde::de::Error::custom(format_args!("{text:?} is not an address or a network"))
    })
}

/// A `POST /bans` that passed every bound.
#[derive(Debug, PartialEq, Eq)]
struct ManualBan {
    ip: IpNet,
    duration: Duration,
    reason: Option<String>,
}

/// An upstream port (any address) or address with port.
fn parse_upstream(text: &str) -> Option<SocketAddr> {
    if let Ok(port) = text.parse::<u16>() {
        return Some(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    text.parse().ok()
}

/// Reads a `POST /bans` body, or says which part is wrong and what was expected; a network
/// must be an IPv6 prefix of `prefix_len`.
fn parse_add(body: &[u8], prefix_len: u8) -> Result<ManualBan, String> {
    let request: AddBan = serde_json::from_slice(body).map_err(|err| {
        format!("expected {{\"ip\": ADDRESS or NETWORK, \"duration\": \"1h\", \"reason\": TEXT}}: {err}")
    })?;
    let ip = bannable(request.ip, prefix_len)?;
    let duration = match request.duration.as_deref() {
        None => DEFAULT_BAN,
        Some(text) => ban_duration(text)?,
    };
    let reason = match request.reason.as_deref().map(clean_reason) {
        Some(reason) if reason.chars().count() > MAX_REASON_CHARS => {
            return Err(format!(
                "reason: expected at most {MAX_REASON_CHARS} characters, got {}",
                reason.chars().count()
            ))
        }
        reason => reason.filter(|reason| !reason.is_empty()),
    };
    Ok(ManualBan {
        ip,
        duration,
        reason,
    })
}

/// `source` if the policy can ban it: an address, or an IPv6 network of `prefix_len` (the
/// length the ban table looks prefixes up at).
fn bannable(source: IpNet, prefix_len: u8) -> Result<IpNet, String> {
    match source {
        _ if source.prefix_len() == source.max_prefix_len() => Ok(source),
        IpNet::V6(net) if net.prefix_len() == prefix_len => Ok(source),
        IpNet::V6(_) => Err(format!(
            "ip: {source}: an IPv6 network is banned as a /{prefix_len} \
             (rules.ipv6_prefix.length); give an address or a /{prefix_len}"
        )),
        IpNet::V4(_) => Err(format!(
            "ip: {source}: IPv4 is banned one address at a time; a network to keep out \
             belongs in the config's deny list"
        )),
    }
}

/// A manual ban's length, from [`MIN_MANUAL_BAN`] to [`MAX_MANUAL_BAN`].
fn ban_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if (MIN_MANUAL_BAN..=MAX_MANUAL_BAN).contains(&duration) => Ok(duration),
        _ => Err(format!(
            "duration: {text:?}: expected a duration from 1s to 1y, such as 30m, 2h, 7d"
        )),
    }
}

/// The operator's words as kept, logged and listed: line breaks and tabs become spaces, other
/// control characters (terminal escapes) and bidirectional overrides go, the ends are trimmed.
fn clean_reason(text: &str) -> String {
    let bidi = |c: char| matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    text.chars()
        .filter_map(|c| match c {
            '\t' | '\n' | '\r' => Some(' '),
            c if c.is_control() || bidi(c) => None,
            c => Some(c),
        })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// A reason read back from the journal, bounded as a new one is (a longer one is cut).
pub(crate) fn replayed_reason(text: &str) -> Option<String> {
    let reason: String = clean_reason(text).chars().take(MAX_REASON_CHARS).collect();
    (!reason.is_empty()).then_some(reason)
}

impl Admin {
    /// The API over `policy`, whose changes `journal` follows (as the daemon subscribes it), and
    /// over the relay's client bindings in `directory`.
    pub fn new(
        policy: Arc<Policy>,
        journal: Journal,
        reloader: Arc<Reloader>,
        directory: Arc<Directory>,
    ) -> Self {
        let prefix_len = policy.config().ipv6_prefix_len;
        Admin {
            policy,
            journal,
            reloader,
            directory,
            prefix_len,
            feeds: None,
        }
    }

    /// Lists `feeds` at `GET /feeds`.
    pub fn with_feeds(self, feeds: Arc<crate::feeds::Feeds>) -> Self {
        Admin {
            feeds: Some(feeds),
            ..self
        }
    }

    /// Writes a new token to `token_file` and returns the server of the API on `listener`,
    /// every request checked by the gate first. Logs `admin API listening` once the token is
    /// in place, so a client that waits for that line finds it.
    pub fn serve(
        self,
        listener: std::net::TcpListener,
        token_file: &Path,
    ) -> anyhow::Result<impl Future<Output = std::io::Result<()>> + Send + 'static> {
        let addr = listener.local_addr()?;
        let gate = Gate::create(addr, token_file).with_context(|| {
            format!(
                "cannot write the admin API token to {} (admin.token_file)",
                token_file.display()
            )
        })?;
        tracing::info!(%addr, token_file = %token_file.display(), "admin API listening");
        let api = Arc::new((gate, self));
        Ok(crate::http::serve(listener, move |call| {
            let api = Arc::clone(&api);
            async move {
                let (gate, admin) = &*api;
                match gate.check(&call) {
                    Ok(()) => admin.handle(call).await,
                    Err(refusal) => {
                        tracing::warn!(method = %call.method, path = %call.path, ?refusal, "admin API request refused");
                        gate.refuse(&refusal)
                    }
                }
            }
        }))
    }

    /// Answers one request that passed the gate.
    async fn handle(&self, call: Call) -> Reply {
        let path = call.path.trim_end_matches('/');
        match (&call.method, path) {
            (&Method::GET, "/bans") => self.list(now()),
            (&Method::POST, "/bans") => self.add(&call.body).await,
            (&Method::DELETE, _) if path.starts_with("/bans/") => {
                self.remove(&path["/bans/".len()..]).await
            }
            (&Method::POST, "/reload") => self.reload().await,
            (&Method::GET, "/sessions") => self.sessions(None),
            (&Method::GET, _) if path.starts_with("/sessions/") => {
                self.sessions(Some(&path["/sessions/".len()..]))
            }
            (&Method::GET, "/feeds") => Reply::json(
                StatusCode::OK,
                &self
                    .feeds
                    .as_ref()
                    .map_or_else(|| json!({ "feeds": [] }), |feeds| feeds.listing()),
            ),
            (&Method::GET, "/feeds/bans") => Reply {
                status: StatusCode::OK,
                content_type: "text/plain; charset=utf-8",
                body: crate::feeds::bans_text(&self.policy, now()),
            },
            (_, "/bans" | "/reload" | "/sessions" | "/feeds" | "/feeds/bans") => {
                Reply::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => Reply::error(
                StatusCode::NOT_FOUND,
                "no such endpoint; try GET /bans, POST /bans, DELETE /bans/SOURCE, POST /reload, \
                 GET /sessions, GET /sessions/UPSTREAM, GET /feeds, GET /feeds/bans",
            ),
        }
    }

    /// The relay's client bindings; with `upstream` (a port, or an address and port, as the
    /// PBX logs a peer), only the ones behind it.
    fn sessions(&self, upstream: Option<&str>) -> Reply {
        let bindings = match upstream {
            None => self.directory.bindings(),
            Some(text) => match parse_upstream(text) {
                Some(upstream) => self.directory.by_upstream(upstream),
                None => {
                    return Reply::error(
                        StatusCode::BAD_REQUEST,
                        format_args!(
                            "{text:?} is not an upstream port or address, such as 40312 or \
                             127.0.0.1:40312"
                        ),
                    )
                }
            },
        };
        let sessions: Vec<serde_json::Value> = bindings
            .iter()
            .map(|binding| {
                json!({
                    "transport": binding.transport.to_string(),
                    "client": binding.client.to_string(),
                    "local": binding.local.to_string(),
                    "upstream": binding.upstream.to_string(),
                })
            })
            .collect();
        Reply::json(StatusCode::OK, &json!({ "sessions": sessions }))
    }

    /// The policy's bans at `now`, the soonest to end first.
    fn list(&self, now: Timestamp) -> Reply {
        let mut bans = self.policy.bans(now);
        bans.sort_by(|(a, x), (b, y)| (x.expires, a).cmp(&(y.expires, b)));
        let bans: Vec<serde_json::Value> = bans
            .iter()
            .map(|(source, ban)| ban_json(*source, ban))
            .collect();
        Reply::json(StatusCode::OK, &json!({ "bans": bans }))
    }

    async fn add(&self, body: &[u8]) -> Reply {
        let request = match parse_add(body, self.prefix_len) {
            Ok(request) => request,
            Err(message) => return Reply::error(StatusCode::BAD_REQUEST, message),
        };
        let since = self.journal.mark();
        let Some(ban) = self.policy.ban_manually(
            request.ip,
            request.duration,
            request.reason.map(Into::into),
            now(),
        ) else {
            return Reply::error(
                StatusCode::CONFLICT,
                format_args!("{} is allowlisted and is never banned", Source(request.ip)),
            );
        };
        if let Err(err) = self.journal.sync(since).await {
            return Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format_args!("banned, but not journalled (lost on restart): {err}"),
            );
        }
        Reply::json(StatusCode::CREATED, &ban_json(request.ip, &ban))
    }

    async fn remove(&self, text: &str) -> Reply {
        let Some(source) = parse_source(text) else {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                format_args!("{text:?} is not an address or a network"),
            );
        };
        let since = self.journal.mark();
        let Some(ban) = self.policy.lift(source) else {
            return Reply::error(StatusCode::NOT_FOUND, self.not_banned(source));
        };
        if let Err(err) = self.journal.sync(since).await {
            return Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format_args!("lifted, but not journalled (back after a restart): {err}"),
            );
        }
        Reply::json(StatusCode::OK, &ban_json(source, &ban))
    }

    /// Why there is no ban on `source` to lift: none at all, or only its network's.
    fn not_banned(&self, source: IpNet) -> String {
        let covering = self
            .policy
            .bans(now())
            .into_iter()
            .map(|(banned, _)| banned)
            .find(|banned| *banned != source && banned.contains(&source));
        match covering {
            Some(network) => format!(
                "{} is not banned itself; the ban on {} covers it",
                Source(source),
                Source(network)
            ),
            None => format!("{} is not banned", Source(source)),
        }
    }

    async fn reload(&self) -> Reply {
        let reloader = Arc::clone(&self.reloader);
        let outcome = match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(outcome) => outcome,
            Err(err) => return Reply::error(StatusCode::INTERNAL_SERVER_ERROR, err),
        };
        match outcome {
            Outcome::Applied { restart_required } => Reply::json(
                StatusCode::OK,
                &json!({ "result": "ok", "restart_required": restart_required }),
            ),
            Outcome::Rejected { problems } => Reply::json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({ "result": "error", "problems": problems }),
            ),
        }
    }
}

/// What the rule that banned means, for the `reason` of bans no operator wrote one for.
fn rule_reason(rule: RuleId) -> &'static str {
    match rule {
        RuleId::Scanner => "scanner signature",
        RuleId::RegisterFailures => "failed registrations",
        RuleId::InviteFailures => "failed calls",
        RuleId::Enumeration => "extension enumeration",
        RuleId::Flood => "request flood",
        RuleId::Garbage => "garbage (not SIP, malformed or oversized) flood",
        RuleId::Manual => "banned by the operator",
        RuleId::Dial => "calls to barred destinations",
        RuleId::CallRate => "calls past the call rate limits",
        RuleId::Country => "requests from a country not admitted",
    }
}

/// A ban as the API shows it: the operator's words as its reason, else what its rule means.
fn ban_json(source: IpNet, ban: &Ban) -> serde_json::Value {
    json!({
        "ip": Source(source).to_string(),
        "rule": ban.rule.as_str(),
        "reason": ban.note.as_deref().unwrap_or(rule_reason(ban.rule)),
        "evidence": ban.evidence,
        "first_seen": format_millis(ban.first_seen.as_millis()),
        "last_seen": format_millis(ban.last_seen.as_millis()),
        "expires": format_millis(ban.expires.as_millis()),
        "expires_ms": ban.expires.as_millis(),
        "offence": ban.offence,
    })
}

fn now() -> Timestamp {
    Timestamp::from_system(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use sipguard_policy::{DropReason, Transport, Verdict};

    fn add(body: &str) -> Result<ManualBan, String> {
        parse_add(body.as_bytes(), 64)
    }

    fn net(text: &str) -> IpNet {
        parse_source(text).unwrap()
    }

    #[test]
    fn a_manual_ban_lasts_one_second_to_a_year() {
        for (text, seconds) in [
            ("1s", 1),
            ("30m", 1800),
            ("7d", 7 * 86_400),
            ("365d", 365 * 86_400),
            ("1y", 31_557_600),
        ] {
            assert_eq!(
                ban_duration(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
        for text in [
            "0s",
            "999ms",
            "1y 1s",
            "366d",
            "580000y",
            "99999999999999999999y",
            "",
            "forever",
            "-1h",
        ] {
            let err = ban_duration(text).unwrap_err();
            assert_eq!(
                err,
                format!(
                    "duration: {text:?}: expected a duration from 1s to 1y, such as 30m, 2h, 7d"
                )
            );
        }
    }

    /// Regression: `"duration": "580000y"` made a ban whose expiry no log line could format.
    #[test]
    fn the_reported_huge_duration_is_refused_before_anything_is_banned() {
        let err = add(r#"{"ip": "192.0.2.66", "duration": "580000y"}"#).unwrap_err();
        assert!(err.starts_with("duration: \"580000y\""), "{err}");
    }

    #[test]
    fn a_ban_request_takes_its_defaults_and_refuses_what_it_does_not_know() {
        assert_eq!(
            add(r#"{"ip": "192.0.2.66"}"#),
            Ok(ManualBan {
                ip: net("192.0.2.66"),
                duration: DEFAULT_BAN,
                reason: None,
            })
        );
        for body in [
            r#"{"ip": "192.0.2.300"}"#,
            r#"{"ip": "192.0.2.66", "until": "1h"}"#,
            r#"{"ip": "192.0.2.66", "duration": 3600}"#,
            r#"{"duration": "1h"}"#,
            "",
            "ip=192.0.2.66",
        ] {
            let err = add(body).unwrap_err();
            assert!(
                err.starts_with("expected {\"ip\": ADDRESS"),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn a_ban_request_takes_an_address_or_an_ipv6_network_of_the_prefix_length() {
        for (ip, source) in [
            ("192.0.2.66/32", "192.0.2.66"),
            ("2001:db8::7", "2001:db8::7"),
            ("2001:db8::7/128", "2001:db8::7"),
            ("2001:db8:1:2::/64", "2001:db8:1:2::/64"),
            ("2001:db8:1:2::99/64", "2001:db8:1:2::/64"),
        ] {
            let ban = add(&format!("{{\"ip\": \"{ip}\"}}")).unwrap();
            assert_eq!(ban.ip, net(source), "{ip}");
        }
        assert_eq!(
            add(r#"{"ip": "2001:db8::/48"}"#).unwrap_err(),
            "ip: 2001:db8::/48: an IPv6 network is banned as a /64 (rules.ipv6_prefix.length); \
             give an address or a /64"
        );
        assert_eq!(
            add(r#"{"ip": "192.0.2.0/24"}"#).unwrap_err(),
            "ip: 192.0.2.0/24: IPv4 is banned one address at a time; a network to keep out \
             belongs in the config's deny list"
        );
        for ip in ["2001:db8::/129", "192.0.2.0/", "::/x"] {
            let err = add(&format!("{{\"ip\": \"{ip}\"}}")).unwrap_err();
            assert!(
                err.contains("is not an address or a network"),
                "{ip}: {err}"
            );
        }
    }

    #[test]
    fn a_reason_loses_its_control_characters_and_is_bounded() {
        let ban = add(
            "{\"ip\": \"192.0.2.66\", \"reason\": \" toll fraud\\nat night\\u001b[2J\\u202e \\t\"}",
        )
        .unwrap();
        assert_eq!(ban.reason.as_deref(), Some("toll fraud at night[2J"));
        // Nothing left but control characters: no reason.
        let blank = add("{\"ip\": \"192.0.2.66\", \"reason\": \"\\u0007\\n \"}").unwrap();
        assert_eq!(blank.reason, None);

        let longest = "é".repeat(MAX_REASON_CHARS);
        let ok = add(&format!(
            "{{\"ip\": \"192.0.2.66\", \"reason\": \"{longest}\"}}"
        ))
        .unwrap();
        assert_eq!(ok.reason, Some(longest.clone()));
        let err = add(&format!(
            "{{\"ip\": \"192.0.2.66\", \"reason\": \"{longest}x\"}}"
        ))
        .unwrap_err();
        assert_eq!(
            err,
            format!("reason: expected at most {MAX_REASON_CHARS} characters, got 257")
        );
    }

    #[test]
    fn the_longest_request_fits_the_body_limit() {
        // Every character of the longest reason written as a JSON escape pair.
        let reason = "\\ud83d\\ude00".repeat(MAX_REASON_CHARS);
        let body = format!(
            "{{\"ip\": \"2001:db8:ffff:ffff:ffff:ffff:ffff:ffff\", \"duration\": \"52w 1d 5h 49m 12s\", \"reason\": \"{reason}\"}}"
        );
        assert!(body.len() <= crate::http::MAX_BODY, "{}", body.len());
        assert_eq!(
            add(&body).unwrap().reason.unwrap().chars().count(),
            MAX_REASON_CHARS
        );
    }

    #[test]
    fn replayed_reasons_are_cleaned_and_cut_to_the_bound() {
        assert_eq!(
            replayed_reason("seen probing \"extensions\"\nall night").as_deref(),
            Some("seen probing \"extensions\" all night")
        );
        let long = "x".repeat(MAX_REASON_CHARS + 10);
        assert_eq!(
            replayed_reason(&long).map(|r| r.len()),
            Some(MAX_REASON_CHARS)
        );
        assert_eq!(replayed_reason("\u{1b}\n"), None);
    }

    /// An API over a policy of the default config, the journal following it in a directory
    /// of its own.
    struct Api {
        admin: Admin,
        policy: Arc<Policy>,
        journal: PathBuf,
        _dir: tempfile::TempDir,
    }

    fn api() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::Config::default();
        let policy = crate::policy(&config).unwrap();
        let path = dir.path().join("bans.journal");
        let (journal, _) = Journal::open(&path, now(), Arc::new(|_| None)).unwrap();
        policy.subscribe(Arc::new(journal.sink()));
        let reloader = Arc::new(Reloader::new(
            None,
            crate::config::Overrides::default(),
            config,
            Arc::clone(&policy),
        ));
        Api {
            admin: Admin::new(Arc::clone(&policy), journal, reloader, Arc::default()),
            policy,
            journal: path,
            _dir: dir,
        }
    }

    impl Api {
        async fn call(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
            let call = Call {
                method,
                path: path.to_owned(),
                headers: hyper::HeaderMap::new(),
                body: hyper::body::Bytes::from(body.to_owned()),
            };
            let reply = self.admin.handle(call).await;
            (reply.status, serde_json::from_str(&reply.body).unwrap())
        }

        /// `(ip, rule, reason)` of every ban listed at `now`.
        fn listed(&self, now: Timestamp) -> Vec<(String, String, String)> {
            let reply = self.admin.list(now);
            let list: Value = serde_json::from_str(&reply.body).unwrap();
            let text = |ban: &Value, key: &str| ban[key].as_str().unwrap().to_owned();
            list["bans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|ban| (text(ban, "ip"), text(ban, "rule"), text(ban, "reason")))
                .collect()
        }

        /// A scanner's OPTIONS from `source` at `now`: banned by the scanner rule.
        fn scan(&self, source: &str, now: Timestamp) {
            let text = "OPTIONS sip:100@pbx.example.com SIP/2.0\r\n\
                        Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
                        From: <sip:100@pbx.example.com>;tag=f\r\nTo: <sip:100@pbx.example.com>\r\n\
                        Call-ID: c1\r\nCSeq: 1 OPTIONS\r\nUser-Agent: friendly-scanner\r\n\
                        Content-Length: 0\r\n\r\n";
            let source = source.parse().unwrap();
            let checked = self
                .policy
                .check(text.as_bytes(), source, Transport::Datagram, now);
            assert_eq!(checked.verdict, Verdict::Drop(DropReason::Scanner));
            assert!(self.policy.is_banned(source, now));
        }

        fn ban_by_hand(&self, source: &str, seconds: u64, note: Option<&str>, now: Timestamp) {
            let source: IpNet = net(source);
            self.policy
                .ban_manually(
                    source,
                    Duration::from_secs(seconds),
                    note.map(Into::into),
                    now,
                )
                .unwrap();
        }
    }

    fn row(ip: &str, rule: &str, reason: &str) -> (String, String, String) {
        (ip.to_owned(), rule.to_owned(), reason.to_owned())
    }

    #[test]
    fn the_listing_gives_the_operators_words_and_otherwise_what_the_rule_means() {
        let api = api();
        let at = now();
        api.ban_by_hand("192.0.2.10", 60, Some("toll fraud at night"), at);
        api.ban_by_hand("192.0.2.11", 120, None, at);
        api.ban_by_hand("2001:db8:1:2::/64", 180, Some("a /64 of scanners"), at);
        api.scan("192.0.2.12", at);
        assert_eq!(
            api.listed(at),
            [
                row("192.0.2.10", "manual", "toll fraud at night"),
                row("192.0.2.11", "manual", "banned by the operator"),
                row("2001:db8:1:2::/64", "manual", "a /64 of scanners"),
                row("192.0.2.12", "scanner", "scanner signature"),
            ]
        );
        assert_eq!(
            rule_reason(RuleId::Garbage),
            "garbage (not SIP, malformed or oversized) flood"
        );
    }

    /// Regression: the API kept the operator's words in a map of its own, cleared on a lift but
    /// not when the hand ban ran out, so the rule ban that followed was listed with them.
    #[test]
    fn a_rule_ban_after_a_hand_ban_ran_out_is_listed_with_the_rules_meaning() {
        let api = api();
        let at = now();
        api.ban_by_hand("192.0.2.20", 1, Some("probing at night"), at);
        api.ban_by_hand("192.0.2.21", 600, Some("lifted soon"), at);
        api.policy.lift(net("192.0.2.21")).unwrap();
        let later = at + Duration::from_secs(2);
        api.scan("192.0.2.20", later);
        api.scan("192.0.2.21", later);
        let mut listed = api.listed(later);
        listed.sort();
        assert_eq!(
            listed,
            [
                row("192.0.2.20", "scanner", "scanner signature"),
                row("192.0.2.21", "scanner", "scanner signature"),
            ]
        );
    }

    #[tokio::test]
    async fn a_network_ban_by_the_api_is_journalled_before_the_reply_and_lifted_the_same_way() {
        let api = api();
        let (status, ban) = api
            .call(
                Method::POST,
                "/bans",
                r#"{"ip": "2001:db8:1:2::99/64", "duration": "2h", "reason": "a /64 of scanners"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{ban}");
        assert_eq!(ban["ip"], "2001:db8:1:2::/64");
        assert_eq!(ban["reason"], "a /64 of scanners");
        assert!(api
            .policy
            .ban_of("2001:db8:1:2::5".parse().unwrap(), now())
            .is_some());
        // Durable when the reply comes: in the file already, nothing waited for.
        let journalled = crate::journal::replay(&std::fs::read(&api.journal).unwrap(), now());
        assert_eq!(journalled.bans.len(), 1);
        assert_eq!(journalled.bans[0].ip, net("2001:db8:1:2::/64"));
        assert_eq!(
            journalled.bans[0].reason.as_deref(),
            Some("a /64 of scanners")
        );

        let (status, refused) = api.call(Method::DELETE, "/bans/2001:db8:1:2::5", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            refused["error"],
            "2001:db8:1:2::5 is not banned itself; the ban on 2001:db8:1:2::/64 covers it"
        );
        let (status, lifted) = api
            .call(Method::DELETE, "/bans/2001:db8:1:2::/64", "")
            .await;
        assert_eq!(status, StatusCode::OK, "{lifted}");
        assert_eq!(lifted["ip"], "2001:db8:1:2::/64");
        let journal = std::fs::read_to_string(&api.journal).unwrap();
        assert!(
            journal.contains(r#"{"op":"unban","ip":"2001:db8:1:2::/64"}"#),
            "{journal}"
        );
        assert!(crate::journal::replay(journal.as_bytes(), now())
            .bans
            .is_empty());
        let (status, _) = api
            .call(Method::DELETE, "/bans/2001:db8:1:2::/64", "")
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// The policy on `detect` lists and publishes a prefix ban but never matches a packet
    /// against it: `BanTable::prefixes_end` is never moved past 0, so `cover` stops at the
    /// address's own ban.
    #[tokio::test]
    async fn a_network_banned_by_the_api_drops_its_members() {
        let api = api();
        let (status, _) = api
            .call(Method::POST, "/bans", r#"{"ip": "2001:db8:1:2::/64"}"#)
            .await;
        assert_eq!(status, StatusCode::CREATED);
        assert!(api
            .policy
            .is_banned("2001:db8:1:2::5".parse().unwrap(), now()));
    }

    #[test]
    fn the_token_file_is_configured_or_beside_the_journal() {
        let mut ops = crate::Config::default().ops;
        let journal = Path::new("/var/lib/sipguard/bans.journal");
        assert_eq!(
            token_file(&ops, journal),
            Path::new("/var/lib/sipguard/admin.token")
        );
        ops.admin_token = Some(PathBuf::from("/run/sipguard/token"));
        assert_eq!(token_file(&ops, journal), Path::new("/run/sipguard/token"));
    }

    #[test]
    fn the_cli_looks_beside_its_default_journal_then_where_the_service_writes() {
        let own = Path::new("/home/op/.local/state/sipguard/bans.journal");
        assert_eq!(
            default_token_files(Some(own)),
            [
                PathBuf::from("/home/op/.local/state/sipguard/admin.token"),
                PathBuf::from(SERVICE_TOKEN_FILE)
            ]
        );
        let service = Path::new("/var/lib/sipguard/bans.journal");
        assert_eq!(
            default_token_files(Some(service)),
            [PathBuf::from(SERVICE_TOKEN_FILE)]
        );
        assert_eq!(
            default_token_files(None),
            [PathBuf::from(SERVICE_TOKEN_FILE)]
        );
    }
}
