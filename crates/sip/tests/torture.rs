//! The RFC 4475 and RFC 5118 torture messages (tests/fixtures, exact bytes with their
//! manifests) against the view: what a proxy must forward parses and frames to the bytes it
//! forwards; what the view drops is pinned in one table; nothing panics.

use sipguard_sip::{Header, ParseError, SipView, StartLine};
use std::path::{Path, PathBuf};

/// One fixture and its manifest row.
struct Case {
    name: String,
    /// `forward` (a proxy must relay it), `either` (only liveness matters) or `drop`.
    expected: String,
    /// `valid` or `invalid`, as the RFC classifies it.
    validity: String,
    bytes: Vec<u8>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every message listed in both manifests (`name validity expected ...`, tab separated).
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for set in ["rfc4475", "rfc5118"] {
        let dir = fixtures().join(set);
        let manifest = std::fs::read_to_string(dir.join("manifest.tsv")).expect("manifest.tsv");
        for row in manifest
            .lines()
            .skip(1)
            .filter(|row| !row.trim().is_empty())
        {
            let cols: Vec<&str> = row.split('\t').collect();
            let bytes =
                std::fs::read(dir.join(cols[0])).unwrap_or_else(|e| panic!("{}: {e}", cols[0]));
            cases.push(Case {
                name: cols[0].to_owned(),
                validity: cols[1].to_owned(),
                expected: cols[2].to_owned(),
                bytes,
            });
        }
    }
    assert_eq!(cases.len(), 49 + 12, "both manifests are read in full");
    cases
}

fn case(name: &str) -> Case {
    cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

/// Every torture message the view drops, and why; everything not listed parses. Each is
/// `invalid` in its manifest.
const DROPPED: &[(&str, ParseError)] = &[
    ("clerr.dat", ParseError::ContentLengthBeyondDatagram),
    ("ncl.dat", ParseError::BadContentLength),
    ("scalar02.dat", ParseError::BadCSeq),
    ("scalarlg.dat", ParseError::BadCSeq),
    ("quotbal.dat", ParseError::BadValue(Header::To)),
    ("ltgtruri.dat", ParseError::NotSip),
    ("lwsruri.dat", ParseError::NotSip),
    ("lwsstart.dat", ParseError::NotSip),
    ("trws.dat", ParseError::NotSip),
    ("baddn.dat", ParseError::Unterminated),
    ("badvers.dat", ParseError::NotSip),
    ("mismatch01.dat", ParseError::CSeqMethodMismatch),
    ("mismatch02.dat", ParseError::CSeqMethodMismatch),
    ("bigcode.dat", ParseError::NotSip),
    ("insuf.dat", ParseError::MissingHeader(Header::From)),
    ("multi01.dat", ParseError::DuplicateHeader(Header::CSeq)),
    (
        "mcl01.dat",
        ParseError::DuplicateHeader(Header::ContentLength),
    ),
];

/// Invalid messages a filter must not pass on, whatever else it accepts: a PBX behind it would
/// otherwise have to cope with ambiguous framing, missing dialog identifiers or foreign versions.
const MUST_DROP: &[&str] = &[
    "insuf.dat",
    "ncl.dat",
    "clerr.dat",
    "mcl01.dat",
    "multi01.dat",
    "badvers.dat",
    "bigcode.dat",
    "mismatch01.dat",
];

/// Forward messages whose datagram holds more than the message: dblreq.dat carries a spurious
/// INVITE after the REGISTER, and the RFC 5118 SDP messages announce a Content-Length a few
/// bytes short of their body (RFC 3261 section 18.3: the excess is discarded).
const FRAMED_SHORT: &[&str] = &[
    "dblreq.dat",
    "mult-ip-in-sdp.dat",
    "ipv4-mapped-ipv6.dat",
    "ipv6-in-sdp.dat",
];

/// The bytes a proxy forwards, computed independently of the view: leading CRLFs skipped, the
/// header block up to the first empty line, then Content-Length bytes (or the rest).
fn expected_message(datagram: &[u8], content_length: Option<usize>) -> &[u8] {
    let skip = datagram
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let msg = &datagram[skip..];
    let headers_end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header block ends")
        + 4;
    let end = content_length.map_or(msg.len(), |len| headers_end + len);
    &msg[..end]
}

#[test]
fn every_torture_message_is_forwarded_or_dropped_as_pinned() {
    for c in cases() {
        let pinned = DROPPED
            .iter()
            .find(|(name, _)| *name == c.name)
            .map(|(_, err)| *err);
        match (SipView::parse(&c.bytes), pinned) {
            (Ok(_), None) => {}
            (Err(got), Some(want)) => {
                assert_eq!(got, want, "{}: dropped for another reason", c.name);
                assert_eq!(
                    c.validity, "invalid",
                    "{}: only invalid messages are dropped",
                    c.name
                );
            }
            (Ok(_), Some(want)) => panic!("{}: parsed, expected a drop ({want:?})", c.name),
            (Err(got), None) => panic!("{}: dropped ({got:?}), expected to parse", c.name),
        }
    }
}

#[test]
fn invalid_messages_a_filter_must_not_pass_are_dropped() {
    for name in MUST_DROP {
        let c = case(name);
        assert!(SipView::parse(&c.bytes).is_err(), "{name} must be dropped");
    }
}

#[test]
fn forward_messages_parse_and_frame_to_the_bytes_a_proxy_forwards() {
    let mut forwarded = 0;
    for c in cases().into_iter().filter(|c| c.expected == "forward") {
        let view = SipView::parse(&c.bytes).unwrap_or_else(|e| panic!("{}: {e:?}", c.name));
        assert!(
            matches!(view.start, StartLine::Request { .. }),
            "{}",
            c.name
        );
        assert_eq!(
            view.message,
            expected_message(&c.bytes, view.content_length),
            "{}",
            c.name
        );
        assert!(view.message.ends_with(view.body), "{}", c.name);
        if !FRAMED_SHORT.contains(&c.name.as_str()) {
            assert_eq!(
                view.message,
                &c.bytes[..],
                "{}: the whole datagram is the message",
                c.name
            );
        }
        forwarded += 1;
    }
    assert_eq!(forwarded, 19 + 9, "every forward message of both RFCs");
}

#[test]
fn accepted_messages_of_any_expectation_frame_by_content_length() {
    for c in cases() {
        if let Ok(view) = SipView::parse(&c.bytes) {
            assert_eq!(
                view.message,
                expected_message(&c.bytes, view.content_length),
                "{}",
                c.name
            );
        }
    }
}

#[test]
fn every_prefix_of_every_torture_message_is_handled_without_panic() {
    for c in cases() {
        for end in 0..=c.bytes.len() {
            if let Ok(view) = SipView::parse(&c.bytes[..end]) {
                assert!(view.message.len() <= end, "{} cut at {end}", c.name);
            }
        }
    }
}

#[test]
fn double_request_datagram_forwards_only_the_register() {
    let c = case("dblreq.dat");
    let view = SipView::parse(&c.bytes).unwrap();
    let register_end = c.bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(view.message, &c.bytes[..register_end]);
    assert!(view.message.starts_with(b"REGISTER "));
    assert!(
        !view.message.windows(6).any(|w| w == b"INVITE"),
        "the trailing INVITE is not forwarded"
    );
    assert_eq!(view.content_length, Some(0));
    assert!(view.body.is_empty());
    assert_eq!(view.call_id, b"dblreq.0ha0isndaksdj99sdfafnl3lk233412");
}

#[test]
fn whitespace_torture_invite_fields_are_read_through_folding_and_lws() {
    let c = case("wsinv.dat");
    let view = SipView::parse(&c.bytes).unwrap();
    assert_eq!(view.method().map(|m| m.as_bytes()), Some(&b"INVITE"[..]));
    assert_eq!(view.call_id, b"wsinv.ndaksdj@192.0.2.1");
    assert_eq!(view.cseq.seq, 9);
    assert_eq!(view.cseq.method.as_bytes(), b"INVITE");
    assert_eq!(
        view.via_branch,
        Some(&b"390skdjuw"[..]),
        "the top Via, not the compact v: below it"
    );
    assert_eq!(view.from.user, Some(&b"jdrosen"[..]));
    assert_eq!(view.from.tag, Some(&b"98asjd8"[..]));
    assert_eq!(view.to.user, Some(&b"vivekg"[..]));
    assert_eq!(view.to.tag, Some(&b"1918181833n"[..]));
    assert_eq!(view.content_length, Some(150));
    assert!(view.body.starts_with(b"v=0\r\n"));
}

#[test]
fn unknown_authorization_scheme_yields_credentials_without_username() {
    let c = case("regaut01.dat");
    let view = SipView::parse(&c.bytes).unwrap();
    let creds = view.authorization.expect("Authorization is read");
    assert_eq!(creds.scheme, b"NoOneKnowsThisScheme");
    assert_eq!(creds.username, None);
    assert_eq!(view.credentials(), Some(creds));
}

#[test]
fn rfc2543_invite_without_branch_cookie_or_content_length_parses() {
    let c = case("inv2543.dat");
    let view = SipView::parse(&c.bytes).unwrap();
    assert_eq!(view.via_branch, None);
    assert_eq!(view.from.tag, None);
    assert_eq!(view.from.user, Some(&b"+13035551111"[..]));
    assert_eq!(view.content_length, None);
    assert_eq!(
        view.message,
        &c.bytes[..],
        "without Content-Length the datagram is the message"
    );
}

/// Advisory crash reproducers and third-party fuzz seeds are not committed here; where the
/// shared corpus sits beside the repository (as in CI), run them too. Absent: nothing to do.
#[test]
fn public_malformed_corpus_never_panics_when_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/malformed-public");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        for input in [&bytes[..], &bytes[..bytes.len() / 2]] {
            if let Ok(view) = SipView::parse(input) {
                let offset = view.message.as_ptr() as usize - input.as_ptr() as usize;
                assert!(
                    offset + view.message.len() <= input.len(),
                    "{:?}",
                    entry.path()
                );
            }
        }
    }
}
