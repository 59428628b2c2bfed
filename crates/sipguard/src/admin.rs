//! The admin API, on loopback only: list, add and lift bans, and reload the configuration.
//!
//! | request                  | body                                   | reply                       |
//! |--------------------------|----------------------------------------|-----------------------------|
//! | `GET /bans`              |                                        | `{"bans": [BAN, ...]}`      |
//! | `POST /bans`             | `{"ip", "duration"?, "reason"?}`       | 201 `BAN`                   |
//! | `DELETE /bans/IP`        |                                        | 200 `BAN`, 404 if none      |
//! | `POST /reload`           |                                        | 200 or 422 with the problems|
//!
//! A ban is `{ip, rule, reason, evidence, first_seen, last_seen, expires, expires_ms, offence}`
//! (times RFC 3339, UTC). Bans and unbans are journalled and durable before the reply, so an
//! acknowledged change survives a crash.
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
use crate::journal::{format_millis, BanEntry, Journal, Record};
use crate::reload::{Outcome, Reloader};
use anyhow::Context;
use gate::Gate;
use hyper::{Method, StatusCode};
use metrics::{counter, Counter};
use serde::Deserialize;
use serde_json::json;
use sipguard_policy::{Ban, Policy, RuleId, Timestamp};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
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
    /// The operator's words for manual bans, by source.
    reasons: Mutex<HashMap<IpAddr, String>>,
    manual_unbans: Counter,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBan {
    ip: IpAddr,
    duration: Option<String>,
    reason: Option<String>,
}

/// A `POST /bans` that passed every bound.
#[derive(Debug, PartialEq, Eq)]
struct ManualBan {
    ip: IpAddr,
    duration: Duration,
    reason: Option<String>,
}

/// Reads a `POST /bans` body, or says which part is wrong and what was expected.
fn parse_add(body: &[u8]) -> Result<ManualBan, String> {
    let request: AddBan = serde_json::from_slice(body).map_err(|err| {
        format!("expected {{\"ip\": ADDRESS, \"duration\": \"1h\", \"reason\": TEXT}}: {err}")
    })?;
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
        ip: request.ip,
        duration,
        reason,
    })
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
fn replayed_reason(text: &str) -> Option<String> {
    let reason: String = clean_reason(text).chars().take(MAX_REASON_CHARS).collect();
    (!reason.is_empty()).then_some(reason)
}

impl Admin {
    /// The API over `policy`, journalling to `journal`; `reasons` are those of the manual bans
    /// the journal replayed (bounded and cleaned here, as new ones are).
    pub fn new(
        policy: Arc<Policy>,
        journal: Journal,
        reloader: Arc<Reloader>,
        reasons: HashMap<IpAddr, String>,
    ) -> Self {
        let reasons = reasons
            .into_iter()
            .filter_map(|(ip, reason)| Some((ip, replayed_reason(&reason)?)))
            .collect();
        Admin {
            policy,
            journal,
            reloader,
            reasons: Mutex::new(reasons),
            manual_unbans: counter!("sipguard_unbans_total", "how" => "manual"),
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
            (&Method::GET, "/bans") => self.list(),
            (&Method::POST, "/bans") => self.add(&call.body).await,
            (&Method::DELETE, _) if path.starts_with("/bans/") => {
                self.remove(&path["/bans/".len()..]).await
            }
            (&Method::POST, "/reload") => self.reload().await,
            (_, "/bans" | "/reload") => {
                Reply::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => Reply::error(
                StatusCode::NOT_FOUND,
                "no such endpoint; try GET /bans, POST /bans, DELETE /bans/IP, POST /reload",
            ),
        }
    }

    fn list(&self) -> Reply {
        let mut bans = self.policy.bans(now());
        bans.sort_by_key(|(ip, ban)| (ban.expires, *ip));
        let reasons = self.reasons.lock().unwrap_or_else(PoisonError::into_inner);
        let bans: Vec<serde_json::Value> = bans
            .iter()
            .map(|(ip, ban)| ban_json(*ip, ban, reasons.get(ip).map(String::as_str)))
            .collect();
        Reply::json(StatusCode::OK, &json!({ "bans": bans }))
    }

    async fn add(&self, body: &[u8]) -> Reply {
        let request = match parse_add(body) {
            Ok(request) => request,
            Err(message) => return Reply::error(StatusCode::BAD_REQUEST, message),
        };
        let Some(ban) = self.policy.ban_manually(
            request.ip,
            request.duration,
            request.reason.as_deref().map(Into::into),
            now(),
        ) else {
            return Reply::error(
                StatusCode::CONFLICT,
                format_args!("{} is allowlisted and is never banned", request.ip),
            );
        };
        counter!("sipguard_bans_total", "rule" => RuleId::Manual.as_str()).increment(1);
        let reason = request.reason;
        {
            let mut reasons = self.reasons.lock().unwrap_or_else(PoisonError::into_inner);
            match &reason {
                Some(reason) => reasons.insert(request.ip, reason.clone()),
                None => reasons.remove(&request.ip),
            };
        }
        let entry = BanEntry::new(request.ip, &ban, reason.clone());
        if let Err(err) = self.journal.commit(Record::Ban(entry)).await {
            counter!("sipguard_journal_errors_total").increment(1);
            return Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format_args!("banned, but not journalled (lost on restart): {err}"),
            );
        }
        Reply::json(
            StatusCode::CREATED,
            &ban_json(request.ip, &ban, reason.as_deref()),
        )
    }

    async fn remove(&self, ip: &str) -> Reply {
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                format_args!("{ip:?} is not an IP address"),
            );
        };
        let Some(ban) = self.policy.lift(ip) else {
            return Reply::error(StatusCode::NOT_FOUND, format_args!("{ip} is not banned"));
        };
        let reason = self
            .reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&ip);
        self.manual_unbans.increment(1);
        if let Err(err) = self.journal.commit(Record::Unban { ip }).await {
            counter!("sipguard_journal_errors_total").increment(1);
            return Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format_args!("lifted, but not journalled (back after a restart): {err}"),
            );
        }
        Reply::json(StatusCode::OK, &ban_json(ip, &ban, reason.as_deref()))
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
        RuleId::Manual => "banned by the operator",
    }
}

fn ban_json(ip: IpAddr, ban: &Ban, reason: Option<&str>) -> serde_json::Value {
    json!({
        "ip": ip,
        "rule": ban.rule.as_str(),
        "reason": reason.unwrap_or(rule_reason(ban.rule)),
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

    fn add(body: &str) -> Result<ManualBan, String> {
        parse_add(body.as_bytes())
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
                ip: "192.0.2.66".parse().unwrap(),
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
