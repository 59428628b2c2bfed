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
//! acknowledged change survives a crash. No authentication: the address is checked to be
//! loopback when the config is validated.

use crate::http::{Call, Reply};
use crate::journal::{format_millis, BanEntry, Journal, Record};
use crate::reload::{Outcome, Reloader};
use hyper::{Method, StatusCode};
use metrics::{counter, Counter};
use serde::Deserialize;
use serde_json::json;
use sipguard_policy::{Ban, Policy, RuleId, Timestamp};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// A manual ban's length when the request names none.
pub const DEFAULT_BAN: Duration = Duration::from_secs(3600);

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

impl Admin {
    /// The API over `policy`, journalling to `journal`; `reasons` are those of the manual bans
    /// the journal replayed.
    pub fn new(
        policy: Arc<Policy>,
        journal: Journal,
        reloader: Arc<Reloader>,
        reasons: HashMap<IpAddr, String>,
    ) -> Self {
        Admin {
            policy,
            journal,
            reloader,
            reasons: Mutex::new(reasons),
            manual_unbans: counter!("sipguard_unbans_total", "how" => "manual"),
        }
    }

    /// Answers one request.
    pub async fn handle(&self, call: Call) -> Reply {
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
        let request: AddBan = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(err) => {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    format_args!(
                    "expected {{\"ip\": ADDRESS, \"duration\": \"1h\", \"reason\": TEXT}}: {err}"
                ),
                )
            }
        };
        let duration = match request.duration.as_deref().map(humantime::parse_duration) {
            None => DEFAULT_BAN,
            Some(Ok(duration)) if !duration.is_zero() => duration,
            Some(_) => {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    "duration: expected a duration greater than 0, such as 30m, 1h, 7d",
                )
            }
        };
        let Some(ban) = self.policy.ban_manually(
            request.ip,
            duration,
            request.reason.as_deref().map(Into::into),
            now(),
        ) else {
            return Reply::error(
                StatusCode::CONFLICT,
                format_args!("{} is allowlisted and is never banned", request.ip),
            );
        };
        counter!("sipguard_bans_total", "rule" => RuleId::Manual.as_str()).increment(1);
        let reason = request.reason.filter(|r| !r.is_empty());
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
