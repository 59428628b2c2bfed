//! The `dial`, `call_rates` and `country_filter` sections: the toll-fraud rules of
//! docs/design.md ("Toll fraud"). The country database the filter names is read here, so a file that
//! is missing or no database is a problem of this key, and a reload reads it again.

use super::super::raw::{
    self, RawCallRates, RawClass, RawCountries, RawCountryFilter, RawDial, RawDialPlan,
};
use super::Validator;
use sipguard_policy::geo::{self, Countries, PrivateSources, Unplaced};
use sipguard_policy::{
    Access, CallRates, ClassRule, CountryDb, DialConfig, DialPlan, GeoConfig, Prefix, Rule,
    MAX_CONCURRENT,
};
use std::path::Path;
use std::time::Duration;

impl Validator<'_, '_> {
    /// The `dial` section; `groups` are the allowlist's group names, which `allow` may name.
    pub(super) fn dial(
        &mut self,
        raw: RawDial,
        groups: &[&str],
        max_ban: Option<Duration>,
    ) -> Option<DialConfig> {
        let default = DialConfig::default();
        let rule = self.call_rule("dial", raw.mode, raw.ban_for, &default.rule, max_ban);
        let plan = self.plan(raw.plan.unwrap_or_default(), &default.plan);
        let mut countries = Some(Vec::new());
        let international = raw.international.map(|mut class| {
            countries = self.calling_codes(class.countries.take().unwrap_or_default());
            class
        });
        let mut class = |name: &str, raw: Option<RawClass>, default: &ClassRule| {
            let raw = raw.unwrap_or_default();
            if raw.countries.is_some() {
                let key = self.key(format!("dial.{name}.countries"));
                self.problem(key.invalid("…", "countries under dial.international only"));
            }
            self.class(&format!("dial.{name}"), raw, default, groups)
        };
        let national = class("national", raw.national, &default.national);
        let international = class("international", international, &default.international);
        let premium = class("premium", raw.premium, &default.premium);
        let special = class("special", raw.special, &default.special);
        Some(DialConfig {
            rule: rule?,
            plan: plan?,
            national: national?,
            international: international?,
            countries: countries?,
            premium: premium?,
            special: special?,
        })
    }

    /// A rule's mode and `ban_for`, which must not pass `max_ban` (repeat offenders' cap, when it
    /// validated).
    fn call_rule(
        &mut self,
        at: &str,
        mode: Option<String>,
        ban_for: Option<String>,
        default: &Rule,
        max_ban: Option<Duration>,
    ) -> Option<Rule> {
        let mode = self.mode(&format!("{at}.mode"), mode.as_deref(), default.mode);
        let path = format!("{at}.ban_for");
        let written = ban_for;
        let mut ban_for = self.duration(&path, written.as_deref(), default.ban_for);
        if let (Some(duration), Some(max_ban), Some(written)) = (ban_for, max_ban, &written) {
            if duration > max_ban {
                let key = self.key(path);
                let expected = format_args!(
                    "at most rules.repeat_offenders.max_ban ({}), which caps every ban",
                    humantime::format_duration(max_ban)
                );
                self.problem(key.invalid(written, expected));
                ban_for = None;
            }
        }
        Some(Rule {
            mode: mode?,
            ban_for: ban_for?,
            ..*default
        })
    }

    fn plan(&mut self, raw: RawDialPlan, default: &DialPlan) -> Option<DialPlan> {
        let before = self.problems.len();
        let country_code = self.digits(
            "dial.plan.country_code",
            raw.country_code,
            &default.country_code,
        );
        let national_prefix = self.digits(
            "dial.plan.national_prefix",
            raw.national_prefix,
            &default.national_prefix,
        );
        let outside_line = self.digits(
            "dial.plan.outside_line",
            raw.outside_line,
            &default.outside_line,
        );
        let international_prefixes = match raw.international_prefixes {
            None => default.international_prefixes.clone(),
            Some(list) => list
                .into_iter()
                .enumerate()
                .map(|(i, text)| {
                    let path = format!("dial.plan.international_prefixes[{i}]");
                    let text = self.digits(&path, Some(text), "");
                    if text.is_empty() {
                        let key = self.key(path);
                        self.problem(key.invalid("", "at least one digit, such as 00"));
                    }
                    text
                })
                .collect(),
        };
        if !national_prefix.is_empty() && country_code.is_empty() {
            let key = self.key("dial.plan.national_prefix");
            self.problem(key.invalid(
                &national_prefix,
                "no national prefix unless dial.plan.country_code names the home country",
            ));
        }
        let min_national_digits = match raw.min_national_digits {
            None => Some(default.min_national_digits),
            Some(text) => self
                .limit("dial.plan.min_national_digits", &text, 32)
                .map(|n| n as usize),
        };
        (self.problems.len() == before).then_some(())?;
        Some(DialPlan {
            country_code,
            national_prefix,
            international_prefixes,
            outside_line,
            min_national_digits: min_national_digits?,
        })
    }

    /// At most 8 digits at `path` (or none); `default` when left out.
    fn digits(&mut self, path: &str, text: Option<String>, default: &str) -> String {
        let text = text.unwrap_or_else(|| default.to_owned());
        if text.len() > 8 || !text.bytes().all(|b| b.is_ascii_digit()) {
            let key = self.key(path);
            let expected = raw::expected_at(path).unwrap_or("digits");
            self.problem(key.invalid(&text, format_args!("{expected}: at most 8 digits")));
        }
        text
    }

    fn class(
        &mut self,
        at: &str,
        raw: RawClass,
        default: &ClassRule,
        groups: &[&str],
    ) -> Option<ClassRule> {
        let mut ok = true;
        let prefixes = match raw.prefixes {
            None => default.prefixes.clone(),
            Some(list) => list
                .into_iter()
                .enumerate()
                .filter_map(|(i, text)| {
                    let parsed = Prefix::parse(text.trim());
                    if parsed.is_none() {
                        let key = self.key(format!("{at}.prefixes[{i}]"));
                        self.problem(key.invalid(&text, raw::PREFIX));
                        ok = false;
                    }
                    parsed
                })
                .collect(),
        };
        let (access, named) = match raw.allow {
            None => (default.access, default.groups.clone()),
            Some(list) => {
                let mut access = Access::NOBODY;
                let mut named = Vec::new();
                for (i, text) in list.iter().enumerate() {
                    match text.as_str() {
                        "allowlisted" => access.allowlisted = true,
                        "phones" => access.phones = true,
                        "others" => access.others = true,
                        "pbx" => access.pbx = true,
                        group if groups.contains(&group) => named.push(group.to_owned()),
                        _ => {
                            let key = self.key(format!("{at}.allow[{i}]"));
                            self.problem(key.invalid(
                                text,
                                format_args!(
                                    "{}, or a group name of the allowlist file",
                                    raw::CALLER
                                ),
                            ));
                            ok = false;
                        }
                    }
                }
                (access, named)
            }
        };
        ok.then_some(ClassRule {
            prefixes,
            access,
            groups: named,
        })
    }

    fn calling_codes(&mut self, list: Vec<String>) -> Option<Vec<String>> {
        let mut ok = true;
        let codes = list
            .into_iter()
            .enumerate()
            .map(|(i, text)| {
                let code = text.trim().trim_start_matches('+').to_owned();
                if code.is_empty() || code.len() > 8 || !code.bytes().all(|b| b.is_ascii_digit()) {
                    let key = self.key(format!("dial.international.countries[{i}]"));
                    self.problem(key.invalid(&text, "a country calling code, such as 33 or +33"));
                    ok = false;
                }
                code
            })
            .collect();
        ok.then_some(codes)
    }

    /// A whole number from 0 to `max` at `path`.
    fn limit(&mut self, path: &str, text: &str, max: u32) -> Option<u32> {
        match text.parse::<u32>() {
            Ok(n) if n <= max => Some(n),
            _ => {
                let key = self.key(path);
                let expected = raw::expected_at(path).unwrap_or_default();
                self.problem(key.invalid(text, format_args!("{expected}, at most {max}")));
                None
            }
        }
    }

    /// The `call_rates` section.
    pub(super) fn call_rates(
        &mut self,
        raw: RawCallRates,
        max_ban: Option<Duration>,
    ) -> Option<CallRates> {
        let default = CallRates::default();
        let rule = self.call_rule("call_rates", raw.mode, raw.ban_for, &default.rule, max_ban);
        let mut limit = |name: &str, text: Option<String>, default: u32, max: u32| match text {
            None => Some(default),
            Some(text) => self.limit(&format!("call_rates.{name}"), &text, max),
        };
        let per_source_per_minute = limit(
            "per_source_per_minute",
            raw.per_source_per_minute,
            default.per_source_per_minute,
            u32::MAX,
        );
        let per_user_per_minute = limit(
            "per_user_per_minute",
            raw.per_user_per_minute,
            default.per_user_per_minute,
            u32::MAX,
        );
        let per_user_per_hour = limit(
            "per_user_per_hour",
            raw.per_user_per_hour,
            default.per_user_per_hour,
            u32::MAX,
        );
        let concurrent_per_user = limit(
            "concurrent_per_user",
            raw.concurrent_per_user,
            default.concurrent_per_user,
            MAX_CONCURRENT,
        );
        let same_prefix = limit(
            "same_prefix",
            raw.same_prefix,
            default.same_prefix,
            u32::MAX,
        );
        let same_prefix_digits = limit(
            "same_prefix_digits",
            raw.same_prefix_digits,
            u32::from(default.same_prefix_digits),
            15,
        );
        let call_timeout = self.duration(
            "call_rates.call_timeout",
            raw.call_timeout.as_deref(),
            default.call_timeout,
        );
        Some(CallRates {
            rule: rule?,
            per_source_per_minute: per_source_per_minute?,
            per_user_per_minute: per_user_per_minute?,
            per_user_per_hour: per_user_per_hour?,
            concurrent_per_user: concurrent_per_user?,
            same_prefix: same_prefix?,
            same_prefix_digits: u8::try_from(same_prefix_digits?).ok()?.max(1),
            call_timeout: call_timeout?,
        })
    }

    /// The `country_filter` section, reading the database it names.
    pub(super) fn country_filter(
        &mut self,
        raw: RawCountryFilter,
        dir: &Path,
        max_ban: Option<Duration>,
    ) -> Option<GeoConfig> {
        let default = GeoConfig::default();
        let rule = self.call_rule(
            "country_filter",
            raw.mode,
            raw.ban_for,
            &default.rule,
            max_ban,
        );
        let db = match raw.database {
            None => Some(None),
            Some(name) => {
                let path = dir.join(&name);
                let opened = std::fs::read(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
                    .and_then(|bytes| {
                        CountryDb::from_bytes(bytes).map_err(|e| format!("{}: {e}", path.display()))
                    });
                match opened {
                    Ok(db) => Some(Some(db)),
                    Err(why) => {
                        let key = self.key("country_filter.database");
                        self.problem(key.invalid(&name, format_args!("a country database: {why}")));
                        None
                    }
                }
            }
        };
        let register = self.countries("country_filter.register", raw.register);
        let invite = self.countries("country_filter.invite", raw.invite);
        let private = match raw.private.as_deref() {
            None => Some(default.private),
            Some("allow") => Some(PrivateSources::Allow),
            Some("deny") => Some(PrivateSources::Deny),
            Some("lookup") => Some(PrivateSources::Lookup),
            Some(text) => {
                let key = self.key("country_filter.private");
                self.problem(key.invalid(text, "one of allow, deny, lookup"));
                None
            }
        };
        let unknown = match raw.unknown.as_deref() {
            None => Some(default.unknown),
            Some("allow") => Some(Unplaced::Allow),
            Some("deny") => Some(Unplaced::Deny),
            Some(text) => {
                let key = self.key("country_filter.unknown");
                self.problem(key.invalid(text, "one of allow, deny"));
                None
            }
        };
        Some(GeoConfig {
            rule: rule?,
            db: db?,
            register: register?,
            invite: invite?,
            private: private?,
            unknown: unknown?,
        })
    }

    fn countries(&mut self, at: &str, raw: Option<RawCountries>) -> Option<Countries> {
        let Some(raw) = raw else {
            return Some(Countries::Any);
        };
        let (which, list) = match (raw.only, raw.except) {
            (Some(_), Some(_)) => {
                let key = self.key(at);
                self.problem(key.invalid("only and except", "only or except, not both"));
                return None;
            }
            (Some(list), None) => ("only", list),
            (None, Some(list)) => ("except", list),
            (None, None) => return Some(Countries::Any),
        };
        let mut ok = true;
        let codes: Vec<geo::Country> = list
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                let code = geo::country(text.trim());
                if code.is_none() {
                    let key = self.key(format!("{at}.{which}[{i}]"));
                    self.problem(key.invalid(text, raw::COUNTRY));
                    ok = false;
                }
                code
            })
            .collect();
        ok.then_some(())?;
        Some(if which == "only" {
            Countries::Only(codes)
        } else {
            Countries::Except(codes)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{from_yaml, load};
    use sipguard_policy::geo::{write_country_db, Countries, PrivateSources};
    use sipguard_policy::{Mode, Prefix};

    fn lines(text: &str) -> Vec<String> {
        let errors = from_yaml(text, "config.yaml").expect_err("config should be invalid");
        errors.to_string().lines().map(str::to_owned).collect()
    }

    #[test]
    fn dial_call_rate_and_country_settings_are_read_into_the_policy_config() {
        let dir = tempfile::tempdir().unwrap();
        let nets = [("203.0.113.0/24".parse().unwrap(), "NG")];
        std::fs::write(dir.path().join("c.mmdb"), write_country_db(&nets, 3)).unwrap();
        std::fs::write(
            dir.path().join("allow.yaml"),
            "offices:\n  - {name: hq, cidrs: [192.0.2.0/28]}\ncarriers:\n  - {name: sip-co, cidrs: [198.51.100.1]}\n",
        )
        .unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "allowlist: {file: allow.yaml}\ndial:\n  mode: observe\n  plan: {country_code: \"44\", national_prefix: \"0\", \
             international_prefixes: [\"00\", \"011\"], outside_line: \"9\"}\n  \
             international: {countries: [\"+33\", \"49\"], allow: [phones, pbx, hq]}\n  \
             premium: {prefixes: [\"+449\"]}\n\
             call_rates: {per_user_per_hour: 20, concurrent_per_user: 2, call_timeout: 2h}\n\
             country_filter: {database: c.mmdb, mode: ban, register: {except: [ng]}, private: lookup}\n",
        )
        .unwrap();
        let policy = load(&path).expect("valid").policy;
        assert_eq!(policy.dial.rule.mode, Mode::Observe);
        assert_eq!(policy.dial.plan.international_prefixes, ["00", "011"]);
        assert_eq!(policy.dial.countries, ["33", "49"]);
        assert!(
            policy.dial.international.access.phones && !policy.dial.international.access.others
        );
        assert_eq!(
            policy.dial.premium.prefixes,
            [Prefix::parse("+449").unwrap()]
        );
        assert!(!policy.dial.premium.access.phones, "premium stays closed");
        assert_eq!(policy.calls.per_user_per_hour, 20);
        assert_eq!(policy.calls.concurrent_per_user, 2);
        assert_eq!(policy.calls.call_timeout.as_secs(), 7200);
        assert_eq!(policy.geo.rule.mode, Mode::Ban);
        assert_eq!(policy.geo.register, Countries::Except(vec![*b"NG"]));
        assert_eq!(policy.geo.private, PrivateSources::Lookup);
        assert_eq!(policy.geo.db.expect("database read").build_epoch(), 3);
    }

    #[test]
    fn bad_dial_call_rate_and_country_values_name_their_keys() {
        let found = lines(
            "dial:\n  plan: {national_prefix: \"0\", international_prefixes: [\"\"]}\n  \
             premium: {prefixes: [\"+44x\"], allow: [everyone]}\n\
             call_rates: {concurrent_per_user: 17, ban_for: 2w}\n\
             country_filter: {database: /nonexistent.mmdb, register: {only: [FRA]}, private: maybe}\n",
        );
        let keys = [
            "dial.plan.international_prefixes[0]",
            "dial.plan.national_prefix",
            "dial.premium.prefixes[0]",
            "dial.premium.allow[0]",
            "call_rates.concurrent_per_user",
            "call_rates.ban_for",
            "country_filter.database",
            "country_filter.register.only[0]",
            "country_filter.private",
        ];
        for key in keys {
            assert!(
                found
                    .iter()
                    .any(|line| line.contains(&format!(": {key}: "))),
                "{key} not named in {found:#?}"
            );
        }
    }
}
