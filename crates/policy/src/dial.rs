//! Toll-fraud dial rules: the destination of an INVITE, read from its Request-URI user and
//! normalised by the operator's dialling plan, and the class it falls in (internal, national,
//! international, premium, special).
//!
//! Normalisation keeps one canonical form per number so that `+33…`, `0033…` and `9011 33…`
//! are judged alike: international numbers become their digits after the country calling code
//! marker (`+`), national ones are put in international form with the home country's code,
//! and anything else (an extension, a service code) stays as dialled. It works on at most
//! [`MAX_DIGITS`] digits on the stack, so an INVITE costs no allocation. The classes the
//! operator lists by prefix always win over the built-in rules; the built-in country calling
//! codes follow the structure of ITU-T E.164's assignment list, which is prefix-free: zones 1
//! and 7 have one-digit codes, [`TWO_DIGIT_CODES`] are the two-digit ones, every other code has
//! three digits. A table of that size needs no crate, and nothing in it changes with the yearly
//! list updates that reassign three-digit codes.

use std::fmt;

/// Digits of a number that are kept and judged; longer numbers are judged on these.
pub const MAX_DIGITS: usize = 32;

/// The two-digit country calling codes of ITU-T E.164; with 1 and 7 (one digit), every other
/// code has three digits.
pub const TWO_DIGIT_CODES: [u8; 44] = [
    20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55, 56,
    57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98,
];

/// How the operator's phones dial out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DialPlan {
    /// The home country calling code, digits only ("44"); empty: unknown, and numbers dialled
    /// with the national prefix stay as dialled.
    pub country_code: String,
    /// The national (trunk) prefix ("0"); empty: none. Needs `country_code`.
    pub national_prefix: String,
    /// International prefixes ("00", "011").
    pub international_prefixes: Vec<String>,
    /// The outside-line prefix ("9"); empty: none. Stripped only when an international or
    /// national prefix follows it.
    pub outside_line: String,
    /// Numbers dialled without any prefix and at least this long are national (a plan that
    /// dials national numbers without a trunk prefix); shorter ones are internal. 0: never.
    pub min_national_digits: usize,
}

/// A normalised destination.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Number {
    international: bool,
    len: u8,
    digits: [u8; MAX_DIGITS],
}

impl Number {
    /// The digits, ASCII (after the country code marker for an international number).
    pub fn digits(&self) -> &[u8] {
        &self.digits[..usize::from(self.len)]
    }

    /// Whether it is in international form (`+` and a country calling code).
    pub fn is_international(&self) -> bool {
        self.international
    }

    fn new(international: bool, digits: &[u8]) -> Self {
        let mut number = Number {
            international,
            len: 0,
            digits: [0; MAX_DIGITS],
        };
        number.push(digits);
        number
    }

    fn push(&mut self, digits: &[u8]) {
        for &digit in digits {
            if usize::from(self.len) == MAX_DIGITS {
                return;
            }
            self.digits[usize::from(self.len)] = digit;
            self.len += 1;
        }
    }

    /// Whether it starts with `prefix` (written as the canonical form: `+` for international).
    pub fn starts_with(&self, prefix: &Prefix) -> bool {
        self.international == prefix.international && self.digits().starts_with(&prefix.digits)
    }

    /// The country calling code of an international number, by the built-in table.
    pub fn country_code(&self) -> Option<&[u8]> {
        if !self.international {
            return None;
        }
        let digits = self.digits();
        let len = match digits {
            [b'1' | b'7', ..] => 1,
            [a, b, ..] if TWO_DIGIT_CODES.contains(&((a - b'0') * 10 + (b - b'0'))) => 2,
            _ => 3,
        };
        (digits.len() >= len).then(|| &digits[..len])
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.international {
            f.write_str("+")?;
        }
        f.write_str(std::str::from_utf8(self.digits()).unwrap_or_default())
    }
}

impl fmt::Debug for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Number({self})")
    }
}

/// A number prefix an operator lists, in the canonical form: `+` then digits for international
/// numbers (`+449`, `+1900`), digits alone for numbers dialled as they are (`118`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    international: bool,
    digits: Vec<u8>,
}

impl Prefix {
    /// Reads `+DIGITS` or `DIGITS`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (international, digits) = match text.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| Prefix {
            international,
            digits: digits.as_bytes().to_vec(),
        })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.international { "+" } else { "" };
        write!(f, "{sign}{}", String::from_utf8_lossy(&self.digits))
    }
}

/// The user part of a `sip:`, `sips:` or `tel:` URI, without parameters or password.
fn uri_user(uri: &[u8]) -> Option<&[u8]> {
    let colon = memchr::memchr(b':', uri)?;
    let (scheme, rest) = (&uri[..colon], &uri[colon + 1..]);
    let user = if scheme.eq_ignore_ascii_case(b"tel") {
        rest
    } else if scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips") {
        &rest[..memchr::memchr(b'@', rest)?]
    } else {
        return None;
    };
    let end = user
        .iter()
        .position(|&b| b == b';' || b == b':' || b == b'?')
        .unwrap_or(user.len());
    Some(&user[..end])
}

fn hex(byte: u8) -> Option<u8> {
    char::from(byte).to_digit(16).map(|d| d as u8)
}

/// Reads a dialled string: `%`-escapes decoded (a PBX decodes them too, so `%30` is a 0),
/// visual separators (`-`, `.`, `(`, `)`, space) skipped, a leading `+` noted. `None` unless
/// what is left is digits.
fn dialled(user: &[u8]) -> Option<(bool, Number)> {
    let mut number = Number::new(false, &[]);
    let mut plus = false;
    let mut seen = false;
    let mut i = 0;
    while i < user.len() {
        let mut byte = user[i];
        i += 1;
        if byte == b'%' {
            byte = hex(*user.get(i)?)? << 4 | hex(*user.get(i + 1)?)?;
            i += 2;
        }
        match byte {
            b'0'..=b'9' => {
                seen = true;
                number.push(&[byte]);
            }
            b'+' if !seen && !plus => plus = true,
            b'-' | b'.' | b'(' | b')' | b' ' => {}
            _ => return None,
        }
    }
    seen.then_some((plus, number))
}

impl DialPlan {
    /// The destination a Request-URI dials, normalised; `None` when its user is not a number (a
    /// name, a service code with `*` or `#`) or there is none.
    pub fn normalise(&self, uri: &[u8]) -> Option<Number> {
        let (plus, dialled) = dialled(uri_user(uri)?)?;
        if plus {
            return Some(Number {
                international: true,
                ..dialled
            });
        }
        let digits = dialled.digits();
        let after_line = digits
            .strip_prefix(self.outside_line.as_bytes())
            .filter(|_| !self.outside_line.is_empty());
        for candidate in after_line.into_iter().chain([digits]) {
            if let Some(rest) = self
                .international_prefixes
                .iter()
                .find_map(|p| candidate.strip_prefix(p.as_bytes()))
            {
                return Some(Number::new(true, rest));
            }
            if let Some(rest) = candidate
                .strip_prefix(self.national_prefix.as_bytes())
                .filter(|_| !self.national_prefix.is_empty() && !self.country_code.is_empty())
            {
                let mut number = Number::new(true, self.country_code.as_bytes());
                number.push(rest);
                return Some(number);
            }
        }
        Some(dialled)
    }
}

/// What a destination is. A metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// An extension or a name: never judged.
    Internal,
    /// A number in the home country.
    National,
    /// A number abroad.
    International,
    /// A premium-rate range the operator lists.
    Premium,
    /// Another range the operator lists (satellite, personal numbering, ...).
    Special,
}

impl Class {
    /// Every class, for pre-registering metrics.
    pub const ALL: [Class; 5] = [
        Class::Internal,
        Class::National,
        Class::International,
        Class::Premium,
        Class::Special,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Internal => "internal",
            Class::National => "national",
            Class::International => "international",
            Class::Premium => "premium",
            Class::Special => "special",
        }
    }
}

/// Who places a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A source on the allowlist (a carrier, an office).
    Allowlisted,
    /// A source that authenticated (trusted by the policy: a 2xx to its credentials, no run of
    /// failures): a phone.
    Phone,
    /// Anyone else.
    Other,
    /// The PBX itself, calling out through a carrier.
    Pbx,
}

/// Who may dial a class: one switch per kind of caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Allowlisted sources.
    pub allowlisted: bool,
    /// Sources that authenticated.
    pub phones: bool,
    /// Everyone else.
    pub others: bool,
    /// The PBX calling out.
    pub pbx: bool,
}

impl Access {
    /// Everyone may dial.
    pub const EVERYONE: Access = Access {
        allowlisted: true,
        phones: true,
        others: true,
        pbx: true,
    };
    /// Nobody may dial.
    pub const NOBODY: Access = Access {
        allowlisted: false,
        phones: false,
        others: false,
        pbx: false,
    };

    /// Whether `caller` may dial.
    pub fn allows(self, caller: Caller) -> bool {
        match caller {
            Caller::Allowlisted => self.allowlisted,
            Caller::Phone => self.phones,
            Caller::Other => self.others,
            Caller::Pbx => self.pbx,
        }
    }
}

/// One class's operator-listed prefixes and who may dial it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRule {
    /// Prefixes of the class, in canonical form; they win over the built-in rules.
    pub prefixes: Vec<Prefix>,
    /// Who may dial it.
    pub access: Access,
    /// Allowlist groups, by name, that may dial it when allowlisted sources as a whole may not
    /// (an office may call abroad, a carrier may not).
    pub groups: Vec<String>,
}

impl ClassRule {
    /// A class with no prefixes of its own, open to `access`.
    pub fn open_to(access: Access) -> Self {
        ClassRule {
            prefixes: Vec::new(),
            access,
            groups: Vec::new(),
        }
    }
}

/// The dial rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialConfig {
    /// What happens to a call to a destination its caller may not dial (threshold and window
    /// unused).
    pub rule: crate::Rule,
    /// How numbers are dialled.
    pub plan: DialPlan,
    /// National numbers.
    pub national: ClassRule,
    /// International numbers.
    pub international: ClassRule,
    /// Country calling codes (digits) international calls may go to; empty: any.
    pub countries: Vec<String>,
    /// Premium-rate ranges.
    pub premium: ClassRule,
    /// Other ranges.
    pub special: ClassRule,
}

impl Default for DialConfig {
    fn default() -> Self {
        DialConfig {
            rule: crate::Rule {
                mode: crate::Mode::Drop,
                threshold: 1,
                window: std::time::Duration::from_secs(60),
                ban_for: std::time::Duration::from_secs(3600),
            },
            plan: DialPlan {
                international_prefixes: vec!["00".to_owned()],
                ..DialPlan::default()
            },
            national: ClassRule::open_to(Access::EVERYONE),
            international: ClassRule::open_to(Access::EVERYONE),
            countries: Vec::new(),
            premium: ClassRule::open_to(Access::NOBODY),
            special: ClassRule::open_to(Access::EVERYONE),
        }
    }
}

/// Why a destination may not be dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barred {
    /// Its class.
    pub class: Class,
    /// The class is open to the caller, the country is not listed.
    pub country: bool,
}

impl DialConfig {
    fn classes(&self) -> [(Class, &ClassRule); 4] {
        [
            (Class::National, &self.national),
            (Class::International, &self.international),
            (Class::Premium, &self.premium),
            (Class::Special, &self.special),
        ]
    }

    /// The class of `number`: the longest prefix the operator lists, else the built-in rules.
    pub fn classify(&self, number: &Number) -> Class {
        let listed = self
            .classes()
            .into_iter()
            .flat_map(|(class, rule)| rule.prefixes.iter().map(move |p| (class, p)))
            .filter(|(_, prefix)| number.starts_with(prefix))
            .max_by_key(|(_, prefix)| prefix.digits.len());
        if let Some((class, _)) = listed {
            return class;
        }
        if number.is_international() {
            let home = self.plan.country_code.as_bytes();
            if !home.is_empty() && number.country_code() == Some(home) {
                return Class::National;
            }
            return Class::International;
        }
        let min = self.plan.min_national_digits;
        if min > 0 && number.digits().len() >= min {
            Class::National
        } else {
            Class::Internal
        }
    }

    /// Whether `caller` may dial `number`: `Err` says why not. `in_group` tells whether an
    /// allowlisted caller is in the allowlist group of that name.
    pub fn judge(
        &self,
        number: &Number,
        caller: Caller,
        in_group: impl Fn(&str) -> bool,
    ) -> Result<Class, Barred> {
        let class = self.classify(number);
        let rule = match class {
            Class::Internal => return Ok(class),
            Class::National => &self.national,
            Class::International => &self.international,
            Class::Premium => &self.premium,
            Class::Special => &self.special,
        };
        let by_group = || caller == Caller::Allowlisted && rule.groups.iter().any(|g| in_group(g));
        if !rule.access.allows(caller) && !by_group() {
            return Err(Barred {
                class,
                country: false,
            });
        }
        let listed = |code: &String| number.digits().starts_with(code.as_bytes());
        if class == Class::International
            && !self.countries.is_empty()
            && !(number.is_international() && self.countries.iter().any(listed))
        {
            return Err(Barred {
                class,
                country: true,
            });
        }
        Ok(class)
    }

    /// Whether the rules can refuse anything: when not, INVITEs skip them. Premium and special
    /// numbers exist only by the operator's prefixes.
    pub(crate) fn restricts(&self) -> bool {
        let closed = |rule: &ClassRule| rule.access != Access::EVERYONE;
        !self.countries.is_empty()
            || closed(&self.national)
            || closed(&self.international)
            || [&self.premium, &self.special]
                .iter()
                .any(|rule| closed(rule) && !rule.prefixes.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uk() -> DialConfig {
        DialConfig {
            plan: DialPlan {
                country_code: "44".into(),
                national_prefix: "0".into(),
                international_prefixes: vec!["00".into(), "011".into()],
                outside_line: "9".into(),
                min_national_digits: 0,
            },
            countries: vec!["33".into(), "49".into()],
            premium: ClassRule {
                prefixes: vec![
                    Prefix::parse("+449").unwrap(),
                    Prefix::parse("+881").unwrap(),
                ],
                ..ClassRule::open_to(Access::NOBODY)
            },
            international: ClassRule {
                prefixes: vec![Prefix::parse("+441481").unwrap()],
                ..ClassRule::open_to(Access {
                    others: false,
                    ..Access::EVERYONE
                })
            },
            ..DialConfig::default()
        }
    }

    fn norm(config: &DialConfig, uri: &str) -> String {
        config
            .plan
            .normalise(uri.as_bytes())
            .map_or("-".into(), |n| n.to_string())
    }

    #[test]
    fn plus_zero_zero_and_outside_line_forms_of_one_number_normalise_alike() {
        let config = uk();
        for uri in [
            "sip:+33123456789@pbx",
            "sip:0033123456789@pbx;user=phone",
            "sip:90033123456789@pbx",
            "sip:9011-33-1-23-45-67-89@pbx",
            "sip:011%2033%20123456789@pbx",
            "tel:+33-1-23-45-67-89",
            "sips:%30%30%33%33123456789@pbx",
        ] {
            assert_eq!(norm(&config, uri), "+33123456789", "{uri}");
        }
    }

    #[test]
    fn national_numbers_take_the_home_country_code_and_extensions_stay_as_dialled() {
        let config = uk();
        assert_eq!(norm(&config, "sip:02079460000@pbx"), "+442079460000");
        assert_eq!(norm(&config, "sip:902079460000@pbx"), "+442079460000");
        assert_eq!(norm(&config, "sip:1001@pbx"), "1001");
        assert_eq!(norm(&config, "sip:9123@pbx"), "9123");
        assert_eq!(norm(&config, "sip:alice@pbx"), "-");
        assert_eq!(norm(&config, "sip:*67@pbx"), "-");
        assert_eq!(norm(&config, "sip:pbx"), "-");
        assert_eq!(norm(&config, "sip:1+1@pbx"), "-");
    }

    #[test]
    fn classes_follow_the_country_code_and_listed_prefixes_win() {
        let config = uk();
        let class = |uri: &str| config.classify(&config.plan.normalise(uri.as_bytes()).unwrap());
        assert_eq!(class("sip:02079460000@x"), Class::National);
        assert_eq!(class("sip:09011234567@x"), Class::Premium);
        assert_eq!(class("sip:01481123456@x"), Class::International);
        assert_eq!(class("sip:+8816123@x"), Class::Premium);
        assert_eq!(class("sip:0033123@x"), Class::International);
        assert_eq!(class("sip:1001@x"), Class::Internal);
    }

    #[test]
    fn country_codes_have_the_length_e164_assigns() {
        let code = |digits: &str| {
            Number::new(true, digits.as_bytes())
                .country_code()
                .map(|c| String::from_utf8(c.to_vec()).unwrap())
        };
        assert_eq!(code("12125550100").as_deref(), Some("1"));
        assert_eq!(code("74951234567").as_deref(), Some("7"));
        assert_eq!(code("447700900000").as_deref(), Some("44"));
        assert_eq!(code("2348012345678").as_deref(), Some("234"));
        assert_eq!(code("37061234567").as_deref(), Some("370"));
        assert_eq!(code("88").as_deref(), None);
    }

    #[test]
    fn international_goes_only_to_listed_countries_and_premium_to_nobody() {
        let config = uk();
        let judge = |uri: &str, caller| {
            config.judge(
                &config.plan.normalise(uri.as_bytes()).unwrap(),
                caller,
                |_| false,
            )
        };
        assert_eq!(
            judge("sip:0033123456@x", Caller::Phone),
            Ok(Class::International)
        );
        assert_eq!(
            judge("sip:00234123456@x", Caller::Phone),
            Err(Barred {
                class: Class::International,
                country: true
            })
        );
        assert_eq!(
            judge("sip:0033123456@x", Caller::Other),
            Err(Barred {
                class: Class::International,
                country: false
            })
        );
        for caller in [
            Caller::Phone,
            Caller::Allowlisted,
            Caller::Other,
            Caller::Pbx,
        ] {
            assert!(judge("sip:0906123456@x", caller).is_err());
            assert_eq!(judge("sip:02079460000@x", caller), Ok(Class::National));
        }
    }

    #[test]
    fn plans_dialling_national_numbers_without_a_prefix_count_them_by_length() {
        let config = DialConfig {
            plan: DialPlan {
                min_national_digits: 10,
                ..DialPlan::default()
            },
            ..DialConfig::default()
        };
        let class = |uri: &str| config.classify(&config.plan.normalise(uri.as_bytes()).unwrap());
        assert_eq!(class("sip:2125550100@x"), Class::National);
        assert_eq!(class("sip:5550100@x"), Class::Internal);
    }

    #[test]
    fn defaults_refuse_nothing_until_the_operator_lists_something() {
        assert!(!DialConfig::default().restricts());
        assert!(uk().restricts());
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent_and_never_panics(
            uri in prop_oneof![
                any::<Vec<u8>>(),
                "(sip|sips|tel|SIP):[-+0-9%().a-f ;*#]{0,48}(@[a-z.]{0,8})?(;[a-z=]{0,8})?"
                    .prop_map(String::into_bytes),
            ],
            line in "[0-9]{0,2}",
            national in "[0-9]{0,1}",
            country in "[0-9]{0,3}",
        ) {
            let plan = DialPlan {
                country_code: country,
                national_prefix: national,
                international_prefixes: vec!["00".into(), "011".into()],
                outside_line: line,
                min_national_digits: 8,
            };
            if let Some(number) = plan.normalise(&uri) {
                let again = plan.normalise(format!("sip:{number}@pbx").as_bytes());
                prop_assert_eq!(again, Some(number));
            }
        }
    }
}
