//! Scanner signatures: what SIP attack tools leave in a request. The User-Agent patterns are data
//! the operator extends: a plain pattern is a case-insensitive substring of any User-Agent value,
//! and one written `=VALUE` must be a whole value (case-insensitive, surrounding LWS ignored), for
//! names such as `VOIP` that legitimate phones carry inside longer strings. Each kind is one
//! automaton, so the cost per packet does not grow with the number of patterns. Beside the list
//! sit fixed markers that a changed User-Agent does not remove: names in From, sipvicious's From
//! tag and SIPPTS's Via branch.

pub use aho_corasick::BuildError;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, Anchored, Input, MatchKind, StartKind};
use sipguard_sip::SipView;

/// User agents of SIP scanners and attack tools (DESIGN.md section 3: MOR's list and Kamailio's
/// default configuration; nmap's SIP library, nselib/sip.lua, sends `Nmap NSE`; `pplsip` is
/// SIPPTS's default and `sipptk` that of its older Perl tools). `=VOIP` is a whole value: a bare
/// `VOIP` is a scanner's, "VoIP" inside a longer string is not.
pub const DEFAULT_USER_AGENTS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipsak",
    "sundayddr",
    "sundayaddr",
    "iWar",
    "CSipSimple",
    "SIVuS",
    "Gulp",
    "sipv",
    "smap",
    "friendly-request",
    "VaxIPUserAgent",
    "VaxSIPUserAgent",
    "siparmyknife",
    "Test Agent",
    "pplsip",
    "sipptk",
    "Nmap NSE",
    "=VOIP",
];

/// Markers sipvicious writes into From even when its User-Agent is changed: svmap's default
/// display name is `sipvicious`, and its tools share the `friendly-scanner` default.
const FROM_MARKERS: &[&str] = &["sipvicious", "friendly-scanner"];

/// Quoted From display names of scanners, compared whole (case-insensitive): nmap's SIP library
/// writes `From: "Nmap NSE" <sip:...>` (nselib/sip.lua, `SessionData:getName`). Kept out of
/// [`FROM_MARKERS`]: a third marker there costs the automaton its prefilter, and the From check
/// every packet pays went from 10 to 44 ns.
const FROM_DISPLAY_NAMES: &[&[u8]] = &[b"Nmap NSE"];

/// Where a scanner signature was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureSite {
    /// In a User-Agent header, or more User-Agent headers than the view keeps.
    UserAgent,
    /// In the From header: a display name or sipvicious's tag.
    From,
    /// In the top Via's branch: SIPPTS's.
    Via,
}

/// The compiled signatures.
#[derive(Debug, Clone)]
pub struct ScannerSignatures {
    /// Plain patterns: case-insensitive substrings.
    user_agent: AhoCorasick,
    /// `=` patterns: anchored and leftmost-longest, so a match ending at the end of a value
    /// means some pattern is that whole value.
    whole_user_agent: AhoCorasick,
    from: AhoCorasick,
}

impl ScannerSignatures {
    /// Compiles the user-agent patterns (usually the defaults plus the operator's own): one
    /// written `=VALUE` matches a whole User-Agent value equal to `VALUE` (its own surrounding
    /// white space ignored; a bare `=` matches an empty User-Agent), any other a substring. Fails
    /// only when the patterns exceed the automaton's size limits.
    pub fn new<P: AsRef<[u8]>>(
        user_agents: impl IntoIterator<Item = P>,
    ) -> Result<Self, BuildError> {
        let (mut plain, mut whole) = (Vec::new(), Vec::new());
        for pattern in user_agents {
            match pattern.as_ref().strip_prefix(b"=") {
                Some(value) => whole.push(value.trim_ascii().to_vec()),
                None => plain.push(pattern.as_ref().to_vec()),
            }
        }
        Ok(ScannerSignatures {
            user_agent: automaton(plain)?,
            whole_user_agent: AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostLongest)
                .start_kind(StartKind::Anchored)
                .build(whole)?,
            from: automaton(FROM_MARKERS)?,
        })
    }

    /// Where `view` carries a scanner signature, if anywhere. Every User-Agent value is read,
    /// not only the first; a request with more of them than the view keeps matches as well, since
    /// no client sends five and the ones past the fourth would go unread.
    pub fn find(&self, view: &SipView<'_>) -> Option<SignatureSite> {
        let user_agents = &view.user_agents;
        if user_agents.is_truncated()
            || user_agents
                .values()
                .iter()
                .any(|ua| self.is_scanner_user_agent(ua))
        {
            return Some(SignatureSite::UserAgent);
        }
        let from = &view.from;
        if self.from.is_match(from.value)
            || quoted_display_name(from.value).is_some_and(|name| {
                FROM_DISPLAY_NAMES
                    .iter()
                    .any(|known| name.eq_ignore_ascii_case(known))
            })
            || from.tag.is_some_and(is_sipvicious_tag)
        {
            return Some(SignatureSite::From);
        }
        if view.via_branch.is_some_and(is_sippts_branch) {
            return Some(SignatureSite::Via);
        }
        None
    }

    /// `ua` comes LWS-trimmed from the view.
    fn is_scanner_user_agent(&self, ua: &[u8]) -> bool {
        self.user_agent.is_match(ua)
            || self
                .whole_user_agent
                .find(Input::new(ua).anchored(Anchored::Yes))
                .is_some_and(|m| m.end() == ua.len())
    }
}

fn automaton<P: AsRef<[u8]>>(
    patterns: impl IntoIterator<Item = P>,
) -> Result<AhoCorasick, BuildError> {
    AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostFirst)
        .build(patterns)
}

/// The display name of a From value that starts with a quoted one, without the quotes.
fn quoted_display_name(value: &[u8]) -> Option<&[u8]> {
    let name = value.strip_prefix(b"\"")?;
    Some(&name[..name.iter().position(|&b| b == b'"')?])
}

/// Fewest decimal digits after the 0x01 in a sipvicious tag: its random number is a 32-bit one,
/// below 10^6 once in four thousand tags, while demanding six keeps a phone's random tag from
/// passing for one by chance (it would need six bytes in `0`-`9` after a 0x01).
const SIPVICIOUS_TAG_DIGITS: usize = 6;

/// sipvicious (svmap, svwar, svcrack: `createTag` in its svhelper.py) writes its From tag as the
/// lowercase hex of what it is trying (target, extension, `user:password`), a 0x01 byte, and a
/// random 32-bit number in decimal; it reads the tag back from the answers to pair them with
/// its guesses. The tag stays when the User-Agent is changed or left out (`-c`, compact mode).
fn is_sipvicious_tag(tag: &[u8]) -> bool {
    if !tag.len().is_multiple_of(2) {
        return false;
    }
    let byte = |i: usize| Some(nibble(tag[2 * i])? << 4 | nibble(tag[2 * i + 1])?);
    let len = tag.len() / 2;
    let digits = (0..len)
        .rev()
        .take_while(|&i| byte(i).is_some_and(|b| b.is_ascii_digit()))
        .count();
    // At least one byte of what was tried, then the 0x01, then the number.
    if !(SIPVICIOUS_TAG_DIGITS..=10).contains(&digits) || digits + 2 > len {
        return false;
    }
    let separator = len - digits - 1;
    byte(separator) == Some(0x01)
        && (0..separator).all(|i| byte(i).is_some_and(|b| matches!(b, b' '..=b'~')))
}

/// The value of one lowercase hex digit (Python's `b2a_hex` writes no capitals).
fn nibble(hex: u8) -> Option<u8> {
    match hex {
        b'0'..=b'9' => Some(hex - b'0'),
        b'a'..=b'f' => Some(hex - b'a' + 10),
        _ => None,
    }
}

/// SIPPTS (every tool of the suite: sipscan, sipexten, siprcrack, sipinvite, ...) draws its Via
/// branch as 71 random characters from `0-9a-z`, without RFC 3261's `z9hG4bK` cookie, whatever
/// User-Agent it is told to send. A conforming client's branch starts with the cookie, whose
/// capitals such a branch cannot hold.
fn is_sippts_branch(branch: &[u8]) -> bool {
    branch.len() == 71
        && branch
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OPTIONS request with `headers` (User-Agent lines and the like), a From display name
    /// and tag, and a top Via branch.
    struct Request<'a> {
        headers: &'a [&'a str],
        from: &'a str,
        tag: &'a str,
        branch: &'a str,
    }

    impl Default for Request<'_> {
        fn default() -> Self {
            Request {
                headers: &[],
                from: "\"1001\"",
                tag: "5f3c2b1a",
                branch: "z9hG4bK-524287-1---a1b2c3d4",
            }
        }
    }

    impl Request<'_> {
        fn bytes(&self) -> Vec<u8> {
            let mut text = format!(
                "OPTIONS sip:100@198.51.100.1 SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 192.0.2.66:5060;branch={};rport\r\n\
                 From: {} <sip:1001@198.51.100.1>;tag={}\r\n\
                 To: <sip:100@198.51.100.1>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n",
                self.branch, self.from, self.tag
            );
            for header in self.headers {
                text += header;
                text += "\r\n";
            }
            text += "Content-Length: 0\r\n\r\n";
            text.into_bytes()
        }
    }

    fn defaults() -> ScannerSignatures {
        ScannerSignatures::new(DEFAULT_USER_AGENTS).unwrap()
    }

    fn site(signatures: &ScannerSignatures, request: &Request<'_>) -> Option<SignatureSite> {
        let bytes = request.bytes();
        signatures.find(&SipView::parse(&bytes).unwrap())
    }

    /// Where `signatures` find a scanner in a request with only `headers` added.
    fn found(signatures: &ScannerSignatures, headers: &[&str]) -> Option<SignatureSite> {
        let request = Request {
            headers,
            ..Request::default()
        };
        site(signatures, &request)
    }

    /// Where the default signatures find `user_agent` sent as the only User-Agent.
    fn user_agent_site(user_agent: &str) -> Option<SignatureSite> {
        found(&defaults(), &[&format!("User-Agent: {user_agent}")])
    }

    #[test]
    fn every_default_pattern_is_found_in_a_user_agent() {
        for pattern in DEFAULT_USER_AGENTS {
            let user_agent = match pattern.strip_prefix('=') {
                Some(whole) => whole.to_owned(),
                None => format!("x {pattern}/1.0"),
            };
            assert_eq!(
                user_agent_site(&user_agent),
                Some(SignatureSite::UserAgent),
                "{user_agent}"
            );
        }
    }

    #[test]
    fn legitimate_phones_and_pbxs_are_not_scanners() {
        for user_agent in [
            "Yealink SIP-T46S",
            "Yealink SIP-T46S 66.86.0.15",
            "Grandstream GXP2170",
            "Linphone/5.0 (belle-sip)",
            "MicroSIP/3.21",
            "Zoiper rv2.10",
            "Asterisk PBX 22.10.1",
            "FPBX-16.0",
            "PolycomVVX",
            "Cisco-CP8845",
            "VoIP Phone 1.0",
            "MyVOIP",
            "VOIP/1.0",
        ] {
            assert_eq!(user_agent_site(user_agent), None, "{user_agent}");
        }
    }

    #[test]
    fn nmap_nse_user_agent_is_a_scanner() {
        assert_eq!(user_agent_site("Nmap NSE"), Some(SignatureSite::UserAgent));
    }

    #[test]
    fn nmap_nse_from_display_name_is_found_behind_an_innocent_user_agent() {
        let request = Request {
            headers: &["User-Agent: Linphone/5.0 (belle-sip)"],
            from: "\"Nmap NSE\"",
            ..Request::default()
        };
        assert_eq!(site(&defaults(), &request), Some(SignatureSite::From));
    }

    #[test]
    fn nmap_nse_display_name_is_matched_whole_in_any_case() {
        for from in ["\"nmap nse\"", "\"NMAP NSE\""] {
            let request = Request {
                from,
                ..Request::default()
            };
            assert_eq!(
                site(&defaults(), &request),
                Some(SignatureSite::From),
                "{from}"
            );
        }
        for from in ["\"Nmap NSE 2\"", "\"Nmap\"", "\"\"", "Nmap"] {
            let request = Request {
                from,
                ..Request::default()
            };
            assert_eq!(site(&defaults(), &request), None, "{from}");
        }
    }

    #[test]
    fn old_sippts_perl_user_agent_is_a_scanner() {
        assert_eq!(user_agent_site("sipptk"), Some(SignatureSite::UserAgent));
    }

    #[test]
    fn sundayaddr_and_sundayddr_are_both_scanners() {
        assert_eq!(user_agent_site("sundayddr"), Some(SignatureSite::UserAgent));
        assert_eq!(
            user_agent_site("SundayAddr 1.0"),
            Some(SignatureSite::UserAgent)
        );
    }

    #[test]
    fn bare_voip_matches_as_the_whole_value_in_any_case_and_lws() {
        for user_agent in ["VOIP", "voip", "VoIP", " \tVOIP  "] {
            assert_eq!(
                user_agent_site(user_agent),
                Some(SignatureSite::UserAgent),
                "{user_agent:?}"
            );
        }
        for user_agent in ["VoIP Phone 1.0", "VOIPX", "X VOIP", "VO IP", ""] {
            assert_eq!(user_agent_site(user_agent), None, "{user_agent:?}");
        }
    }

    #[test]
    fn operator_whole_value_patterns_match_only_whole_values() {
        let signatures = ScannerSignatures::new(["= EvilDialer ", "=Evil"]).unwrap();
        let site = |user_agent: &str| found(&signatures, &[&format!("User-Agent: {user_agent}")]);
        assert_eq!(site("evildialer"), Some(SignatureSite::UserAgent));
        assert_eq!(site("EVIL"), Some(SignatureSite::UserAgent));
        assert_eq!(site("EvilDialer 2"), None);
        assert_eq!(site("Evi"), None);
        assert_eq!(site("friendly-scanner"), None, "only the patterns given");
    }

    #[test]
    fn bare_equals_sign_matches_an_empty_user_agent_only() {
        let signatures = ScannerSignatures::new(["="]).unwrap();
        assert_eq!(
            found(&signatures, &["User-Agent:"]),
            Some(SignatureSite::UserAgent)
        );
        assert_eq!(found(&signatures, &["User-Agent: x"]), None);
        assert_eq!(
            found(&signatures, &[]),
            None,
            "no User-Agent is not an empty one"
        );
    }

    #[test]
    fn scanner_hiding_behind_a_second_user_agent_is_found() {
        let hidden = [
            "User-Agent: Yealink SIP-T46S",
            "User-Agent: friendly-scanner",
        ];
        assert_eq!(found(&defaults(), &hidden), Some(SignatureSite::UserAgent));
        let hidden = ["User-Agent: Grandstream GXP2170", "User-Agent: VOIP"];
        assert_eq!(found(&defaults(), &hidden), Some(SignatureSite::UserAgent));
    }

    #[test]
    fn more_user_agents_than_the_view_keeps_is_a_signature() {
        let phone = "User-Agent: Yealink SIP-T46S";
        assert_eq!(found(&defaults(), &[phone; 4]), None);
        assert_eq!(
            found(&defaults(), &[phone; 5]),
            Some(SignatureSite::UserAgent)
        );
    }

    /// What sipvicious's `createTag` makes of `tried`: the hex of it, 0x01 and the number.
    fn sipvicious_tag(tried: &str, number: u32) -> String {
        format!("{tried}\u{1}{number}")
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn sipvicious_from_tag_is_found_with_any_user_agent_or_none() {
        for tried in ["100", "1001:secret", "c633640113c4"] {
            let tag = sipvicious_tag(tried, 3_141_592_653);
            for headers in [&[][..], &["User-Agent: Zoiper rv2.10"][..]] {
                let request = Request {
                    headers,
                    tag: &tag,
                    ..Request::default()
                };
                let found = site(&defaults(), &request);
                assert_eq!(found, Some(SignatureSite::From), "{tag} {headers:?}");
            }
        }
        assert!(is_sipvicious_tag(
            &sipvicious_tag("7", 100_000).into_bytes()
        ));
    }

    #[test]
    fn phone_tags_are_not_taken_for_sipvicious_tags() {
        let capitals = sipvicious_tag("1001:secret", 3_141_592_653).to_ascii_uppercase();
        let short_number = sipvicious_tag("100", 99_999);
        let nothing_tried = sipvicious_tag("", 3_141_592_653);
        for tag in [
            "5f3c2b1a",
            "as3b2c1d4e",
            "1928301774",
            "12345678901234567890",
            "0123456789abcdef0123456789abcdef",
            "a1b2c3d4-e5f6-4789-a012-3456789abcde",
            "31303001313233343536373839303132",
            &capitals,
            &short_number,
            &nothing_tried,
            &sipvicious_tag("100", 3_141_592_653)[1..],
        ] {
            assert!(!is_sipvicious_tag(tag.as_bytes()), "{tag}");
        }
    }

    #[test]
    fn sippts_via_branch_is_found_with_any_user_agent() {
        let branch = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxy";
        assert_eq!(branch.len(), 71);
        let request = Request {
            headers: &["User-Agent: MicroSIP/3.21"],
            branch,
            ..Request::default()
        };
        assert_eq!(site(&defaults(), &request), Some(SignatureSite::Via));
    }

    #[test]
    fn conforming_branches_are_not_taken_for_sippts() {
        let cookie = format!("z9hG4bK{}", "a".repeat(64));
        let upper = "A".repeat(71);
        for branch in [
            &cookie,
            &upper,
            &"a".repeat(70),
            &"a".repeat(72),
            "z9hG4bK-524287-1---a1b2c3d4",
        ] {
            assert!(!is_sippts_branch(branch.as_bytes()), "{branch}");
        }
    }
}
