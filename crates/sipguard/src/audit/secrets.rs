//! What makes a SIP password or a voicemail PIN weak, judged on the secret alone: pure functions
//! returning typed weaknesses, whose messages never quote the secret, its length or the part of
//! it that is weak (a finding must not narrow an attacker's search).
//!
//! Thresholds (docs/design.md §9 explains them): a password under 8 characters (ScopTEL's
//! minimum, the lowest any guide allows) is high, under 12 (MOR's) medium; a missing character
//! class is medium, or low from 16 characters on, where length makes up for it; a password that is
//! a common word once its leading and trailing digits and symbols are dropped and look-alike
//! characters read back (`P@ssw0rd1!`) is high, one that merely contains such a word medium. A PIN
//! is trivial when it is shorter than 4 digits, one digit repeated, a repeated group (`1212`), or a
//! run up or down the keypad digits (`1234`, `7654321`, `8901`): all high.

use super::conf::Pos;
use super::{Finding, Severity};

/// A weakness of a password, with its severity and a message free of the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weakness {
    pub severity: Severity,
    pub check: &'static str,
    pub message: String,
}

impl Weakness {
    /// The finding for the secret written at `pos` in `section`.
    pub fn at(self, pos: &Pos, section: &str) -> Finding {
        Finding::at(
            self.severity,
            self.check,
            pos.clone(),
            Some(section),
            self.message,
        )
    }
}

fn weakness(severity: Severity, check: &'static str, message: impl Into<String>) -> Weakness {
    Weakness {
        severity,
        check,
        message: message.into(),
    }
}

/// ScopTEL's minimum: anything shorter is high.
pub const MIN_LENGTH: usize = 8;
/// MOR's minimum: anything shorter is medium.
pub const GOOD_LENGTH: usize = 12;
/// From this length a missing character class is low rather than medium.
pub const LONG_LENGTH: usize = 16;
/// Names (user names, extensions) shorter than this are not looked for inside a password: two
/// digits turn up in random strings.
const MIN_NAME_IN_PASSWORD: usize = 3;

/// Words people build passwords from, written for this audit: defaults, placeholders, keyboard
/// runs, the telephony and office words a PBX's users reach for, and everyday favourites. At least
/// four letters each, lower case; matching reads look-alike digits and symbols back as letters.
#[rustfmt::skip]
const WORDS: &[&str] = &[
    // Defaults and placeholders.
    "password", "passwd", "secret", "admin", "administrator", "root", "default",
    "changeme", "change", "temp", "temporary", "test", "testing", "guest", "user", "login",
    "letmein", "welcome", "access", "master", "private", "public", "example", "sample", "demo",
    "nopass", "blank", "unknown", "random", "token", "server", "system", "service", "support",
    "manager",
    // Keyboard runs and alphabet runs.
    "qwerty", "qwertz", "azerty", "asdf", "asdfgh", "zxcv", "zxcvbn", "qazwsx", "abcd", "abcdef",
    "wasd",
    // Telephony and the office.
    "asterisk", "freepbx", "voip", "phone", "telephone", "extension", "voicemail", "trunk",
    "sipphone", "softphone", "office", "company", "reception", "sales", "billing", "account",
    "accounts", "helpdesk", "operator", "provider", "telecom", "call", "calls", "dial", "hello",
    "line", "mobile",
    // Everyday favourites: seasons, months, weekdays, pets, sports, sentiments.
    "spring", "summer", "autumn", "winter", "january", "february", "march", "april", "june", "july",
    "august", "september", "october", "november", "december", "monday", "tuesday", "wednesday",
    "thursday", "friday", "saturday", "sunday", "love", "lover", "loveyou", "iloveyou", "friend",
    "family", "baby", "angel", "sunshine", "shadow", "dragon", "monkey", "tiger", "lion", "eagle",
    "falcon", "horse", "puppy", "kitty", "kitten", "football", "soccer", "baseball", "hockey",
    "tennis", "golf", "player", "killer", "ninja", "pirate", "batman", "superman", "starwars",
    "pokemon", "computer", "internet", "freedom", "liberty", "trust", "trustno", "whatever",
    "nothing", "money", "dollar", "lucky", "magic", "power", "purple", "orange", "yellow", "green",
    "silver", "golden", "diamond", "cookie", "chocolate", "coffee", "cheese", "pepper", "banana",
    "apple", "cherry", "flower", "princess", "prince", "queen", "king", "hunter", "ranger",
    "soldier", "heaven", "secure", "security", "business", "london", "paris", "berlin", "madrid",
];

/// How `password` falls short of the guides, given the names it must not equal or contain (its
/// user name and the extensions that use it). Empty when it is fine.
pub fn password(password: &str, names: &[&str]) -> Vec<Weakness> {
    let mut found = Vec::new();
    let length = password.chars().count();
    if length == 0 {
        found.push(weakness(
            Severity::High,
            "password-empty",
            "the password is empty",
        ));
        return found;
    }
    if length < MIN_LENGTH {
        found.push(weakness(
            Severity::High,
            "password-length",
            format!("password shorter than {MIN_LENGTH} characters (ScopTEL's minimum, the lowest any guide allows)"),
        ));
    } else if length < GOOD_LENGTH {
        found.push(weakness(
            Severity::Medium,
            "password-length",
            format!("password shorter than {GOOD_LENGTH} characters (MOR's minimum)"),
        ));
    }
    let missing = missing_classes(password);
    if !missing.is_empty() {
        let severity = if length < LONG_LENGTH {
            Severity::Medium
        } else {
            Severity::Low
        };
        found.push(weakness(
            severity,
            "password-classes",
            format!("password has no {}", missing.join(", no ")),
        ));
    }
    match dictionary(password) {
        Some(Dictionary::Is) => found.push(weakness(
            Severity::High,
            "password-dictionary",
            "password is a common word with digits or symbols around it",
        )),
        Some(Dictionary::Contains) => found.push(weakness(
            Severity::Medium,
            "password-dictionary",
            "password contains a common word",
        )),
        None => {}
    }
    let lower = password.to_lowercase();
    let names: Vec<String> = names
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| n.to_lowercase())
        .collect();
    if names.contains(&lower) {
        found.push(weakness(
            Severity::High,
            "password-is-name",
            "password equals its user name or extension",
        ));
    } else if names
        .iter()
        .any(|n| n.chars().count() >= MIN_NAME_IN_PASSWORD && lower.contains(n.as_str()))
    {
        found.push(weakness(
            Severity::Medium,
            "password-has-name",
            "password contains its user name or extension",
        ));
    }
    found
}

fn missing_classes(password: &str) -> Vec<&'static str> {
    let has = |f: fn(&char) -> bool| password.chars().any(|c| f(&c));
    let mut missing = Vec::new();
    if !has(char::is_ascii_uppercase) {
        missing.push("upper-case letter");
    }
    if !has(char::is_ascii_lowercase) {
        missing.push("lower-case letter");
    }
    if !has(char::is_ascii_digit) {
        missing.push("digit");
    }
    if !has(|c| !c.is_ascii_alphanumeric()) {
        missing.push("symbol");
    }
    missing
}

#[derive(Debug, PartialEq, Eq)]
enum Dictionary {
    /// A word, with only digits and symbols around it.
    Is,
    /// A word somewhere inside.
    Contains,
}

fn dictionary(password: &str) -> Option<Dictionary> {
    // Look-alikes read back as letters; `1` may stand for either `i` or `l`.
    let readings = [read_back(password, 'i'), read_back(password, 'l')];
    let mut contains = false;
    for reading in &readings {
        // The core: what is left once digits and symbols at both ends are dropped (in the
        // password as written, so `4dmin` keeps its look-alike `4`).
        let core = core(password, reading);
        if WORDS.iter().any(|w| core == *w) {
            return Some(Dictionary::Is);
        }
        // Only letters count inside: `pass-word` contains "password" once the `-` is gone.
        let letters: String = reading.chars().filter(char::is_ascii_lowercase).collect();
        contains |= WORDS.iter().any(|w| letters.contains(w));
    }
    contains.then_some(Dictionary::Contains)
}

/// `password` lower-cased with look-alike digits and symbols as letters (`one` for `1`).
fn read_back(password: &str, one: char) -> String {
    password
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            '0' => 'o',
            '1' => one,
            '3' => 'e',
            '4' | '@' => 'a',
            '5' | '$' => 's',
            '7' | '+' => 't',
            '!' | '|' => 'i',
            other => other,
        })
        .collect()
}

/// The part of `reading` that lies between the first and last letters of `password`, or failing
/// a letter, between its first and last look-alike.
fn core(password: &str, reading: &str) -> String {
    let chars: Vec<char> = password.chars().collect();
    let read: Vec<char> = reading.chars().collect();
    let letter = |i: &usize| chars[*i].is_alphabetic();
    let start = (0..chars.len()).find(letter);
    let end = (0..chars.len()).rev().find(letter);
    match (start, end) {
        // A look-alike next to the letters belongs to the word (`p4ss` keeps its `4`, `s3cret`
        // its `3`) only inside: digits at the ends are the decoration.
        (Some(start), Some(end)) => read[start..=end].iter().collect(),
        _ => String::new(),
    }
}

/// How `pin` (a voicemail PIN, its no-change `-` already removed) falls short, given the mailbox
/// it protects. `None` when it is fine.
pub fn pin(pin: &str, mailbox: &str) -> Option<Weakness> {
    let digits: Vec<u8> = pin.bytes().collect();
    let message = if pin.is_empty() {
        "mailbox has no PIN"
    } else if pin == mailbox {
        "PIN equals the mailbox number"
    } else if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    } else if digits.len() < 4 {
        "PIN shorter than 4 digits"
    } else if repeats_a_group(&digits) {
        "PIN is trivial: one digit or group of digits repeated"
    } else if runs(&digits, 1) || runs(&digits, 9) {
        "PIN is trivial: a run of consecutive digits"
    } else {
        return None;
    };
    Some(weakness(Severity::High, "pin-weak", message))
}

/// Whether `digits` is a shorter group written more than once (`1111`, `1212`, `123123`).
fn repeats_a_group(digits: &[u8]) -> bool {
    (1..=digits.len() / 2).any(|size| {
        digits.len().is_multiple_of(size)
            && digits.chunks(size).all(|chunk| chunk == &digits[..size])
    })
}

/// Whether each digit is the one before plus `step`, modulo 10 (1 is up, 9 is down; `8901` and
/// `2109` are runs).
fn runs(digits: &[u8], step: u8) -> bool {
    digits
        .windows(2)
        .all(|w| (w[0] - b'0' + step) % 10 == w[1] - b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(secret: &str, names: &[&str]) -> Vec<(&'static str, Severity)> {
        password(secret, names)
            .into_iter()
            .map(|w| (w.check, w.severity))
            .collect()
    }

    #[test]
    fn a_long_random_password_passes() {
        assert_eq!(checks("T7#kq9!Vz2@mWp4s", &["2001"]), []);
        assert_eq!(checks("Rq8%xw3Jv!Ye", &[]), []);
    }

    #[test]
    fn length_thresholds_are_8_high_and_12_medium() {
        assert!(checks("Aa1!xQ9", &[]).contains(&("password-length", Severity::High)));
        assert!(checks("Aa1!xQ9z", &[]).contains(&("password-length", Severity::Medium)));
        assert!(checks("Aa1!xQ9zKv7%", &[]).is_empty());
    }

    #[test]
    fn missing_classes_are_medium_below_16_and_low_above() {
        assert_eq!(
            checks("rqxwjvyezkfm", &[]),
            [("password-classes", Severity::Medium)]
        );
        let long = password("rqxwjvyezkfmtgbh", &[]);
        assert_eq!(long.len(), 1);
        assert_eq!(long[0].severity, Severity::Low);
        assert_eq!(
            long[0].message,
            "password has no upper-case letter, no digit, no symbol"
        );
    }

    #[test]
    fn a_decorated_word_is_high_and_a_word_inside_is_medium() {
        for secret in ["Password1!", "P@ssw0rd2024#", "!!Asterisk99", "S3cr3t!!"] {
            assert!(
                checks(secret, &[]).contains(&("password-dictionary", Severity::High)),
                "{secret}"
            );
        }
        assert!(
            checks("Xq9!summerTq7#Lw", &[]).contains(&("password-dictionary", Severity::Medium))
        );
        assert!(checks("change-me-to-a-long-random-secret", &[])
            .contains(&("password-dictionary", Severity::Medium)));
    }

    #[test]
    fn the_user_name_equal_is_high_and_contained_is_medium() {
        assert!(checks("2001", &["2001"]).contains(&("password-is-name", Severity::High)));
        assert!(checks("Xq9!2001Tq7#Lwzz", &["2001"])
            .contains(&("password-has-name", Severity::Medium)));
        assert!(
            checks("Xq9!20Tq7#Lwzzkk", &["20"]).is_empty(),
            "two-character names are not looked for inside"
        );
    }

    #[test]
    fn messages_never_quote_the_password() {
        let secret = "Password1!";
        for weakness in password(secret, &["x"]) {
            assert!(!weakness.message.contains(secret));
            assert!(!weakness.message.to_lowercase().contains("password1"));
        }
    }

    #[test]
    fn trivial_pins_are_high() {
        for trivial in [
            "0000", "1234", "1111", "4321", "123456", "7654321", "8901", "1212", "123123", "98",
        ] {
            assert!(pin(trivial, "2001").is_some(), "{trivial}");
        }
        assert!(pin("", "2001").is_some());
        assert_eq!(
            pin("2001", "2001").unwrap().message,
            "PIN equals the mailbox number"
        );
    }

    #[test]
    fn an_unremarkable_pin_passes() {
        for fine in ["8253", "402917", "1235", "90210"] {
            assert_eq!(pin(fine, "2001"), None, "{fine}");
        }
    }
}
