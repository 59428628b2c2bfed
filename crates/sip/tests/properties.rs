//! Properties of the view: it never panics, it only ever hands out slices of its input, it reads
//! back every field of a generated request (every User-Agent, every digest parameter) and the
//! challenge of a generated 401 however they are spelled (header order, compact names, case,
//! LWS and folding, quoting), and it agrees with rsip wherever rsip accepts a request.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sipguard_sip::{strict, Method, SipView, StartLine, UserAgents};

/// Whether `part` lies within `whole` by address: proves the view borrowed instead of copying.
fn within(whole: &[u8], part: &[u8]) -> bool {
    let start = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    part.is_empty() || (start <= p && p + part.len() <= start + whole.len())
}

/// Every slice in `view` lies inside `input`, and `message` is `input` after its leading CRLFs,
/// cut at the end of the body.
fn check_borrows(input: &[u8], view: &SipView<'_>) -> Result<(), TestCaseError> {
    let skip = input
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    prop_assert_eq!(view.message.as_ptr(), input[skip..].as_ptr());
    prop_assert!(view.message.len() <= input.len() - skip);
    prop_assert!(view.message.ends_with(view.body) && within(view.message, view.body));
    if let Some(len) = view.content_length {
        prop_assert_eq!(view.body.len(), len);
    }
    let mut slices = vec![view.via, view.from.uri, view.to.uri, view.call_id];
    let optional = [
        view.via_branch,
        view.from.user,
        view.from.tag,
        view.to.user,
        view.to.tag,
        view.user_agent,
        view.contact,
    ];
    slices.extend(optional.into_iter().flatten());
    prop_assert_eq!(view.user_agent, view.user_agents.values().first().copied());
    prop_assert_eq!(
        view.user_agents.values().len(),
        view.user_agents.count().min(UserAgents::KEPT)
    );
    slices.extend(view.user_agents.values());
    for creds in [view.authorization, view.proxy_authorization]
        .into_iter()
        .flatten()
    {
        slices.push(creds.scheme);
        let params = [
            creds.username,
            creds.realm,
            creds.nonce,
            creds.response,
            creds.cnonce,
            creds.nc,
        ];
        slices.extend(params.into_iter().flatten());
    }
    if let Some(challenge) = view.challenge {
        slices.push(challenge.scheme);
        slices.extend([challenge.realm, challenge.nonce].into_iter().flatten());
    }
    if let StartLine::Request { method, uri } = view.start {
        slices.push(uri);
        slices.extend(extension(method));
    }
    slices.extend(extension(view.cseq.method));
    for slice in slices {
        prop_assert!(
            within(view.message, slice),
            "{:?} lies outside the message",
            String::from_utf8_lossy(slice)
        );
    }
    Ok(())
}

/// The bytes of an extension method (known methods are static names, not input slices).
fn extension(method: Method<'_>) -> Option<&[u8]> {
    match method {
        Method::Other(token) => Some(token),
        _ => None,
    }
}

/// Collapses every run of LWS (folding included) to one space: how SIP reads a folded value.
fn unfold(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .split([' ', '\t', '\r', '\n'])
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Rendering choices drawn from a fixed pool of random bytes. `plain` spells the message the
/// way strict parsers expect (long names, no LWS before colons, no folding, no leading CRLF).
struct Dice {
    rolls: Vec<u8>,
    next: usize,
    plain: bool,
}

impl Dice {
    fn roll(&mut self) -> u8 {
        let r = self.rolls[self.next % self.rolls.len()];
        self.next += 1;
        r
    }

    fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        options[usize::from(self.roll()) % options.len()]
    }

    fn chance(&mut self, percent: u8) -> bool {
        self.roll() % 100 < percent
    }

    /// Optional white space where the grammar has SWS: around `;`, `=`, `,`, `/` and `<`.
    fn sws(&mut self) -> &'static str {
        if self.plain {
            return "";
        }
        self.pick(&["", "", " ", "\t", "  ", "\r\n ", " \r\n\t"])
    }

    /// Mandatory white space (LWS), possibly folded onto a new line.
    fn lws(&mut self) -> &'static str {
        if self.plain {
            return " ";
        }
        self.pick(&[" ", " ", "\t", "   ", "\r\n ", " \r\n\t"])
    }

    /// A header line: name (long or compact, any case), optional SP/HTAB before the colon,
    /// optional LWS after it, the value, CRLF.
    fn header(&mut self, long: &str, compact: Option<&str>, value: &str) -> String {
        let name = match compact {
            Some(short) if !self.plain && self.chance(40) => short,
            _ => long,
        };
        let name: String = name
            .chars()
            .map(|c| {
                if self.chance(30) {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        let (before, after) = match self.plain {
            true => ("", self.pick(&["", " "])),
            false => (
                self.pick(&["", "", " ", "\t", "  "]),
                self.pick(&["", " ", " ", "\t", "\r\n ", "  \r\n\t"]),
            ),
        };
        format!("{name}{before}:{after}{value}\r\n")
    }
}

/// A display name, as SIP allows it before `<uri>`.
#[derive(Debug, Clone)]
enum Display {
    None,
    /// Unquoted words.
    Tokens(String),
    /// A quoted string, with escapes and separators inside.
    Quoted(String),
}

/// A party in From or To.
#[derive(Debug, Clone)]
struct Party {
    display: Display,
    user: String,
    password: Option<String>,
    host: &'static str,
    tag: Option<String>,
}

impl Party {
    fn render(&self, dice: &mut Dice) -> String {
        let userinfo = match &self.password {
            Some(pw) => format!("{}:{pw}@", self.user),
            None => format!("{}@", self.user),
        };
        let display = match &self.display {
            Display::None => String::new(),
            Display::Tokens(words) => format!("{words}{}", dice.sws()),
            Display::Quoted(text) => format!("\"{text}\"{}", dice.sws()),
        };
        // A display name needs angle brackets; without one, the addr-spec form is allowed.
        let named = !matches!(self.display, Display::None);
        let mut out = if named || dice.chance(60) {
            let uri_param = if dice.chance(30) {
                ";transport=udp"
            } else {
                ""
            };
            format!("{display}<sip:{userinfo}{}{uri_param}>", self.host)
        } else {
            format!("sip:{userinfo}{}", self.host)
        };
        if dice.chance(20) {
            out += &format!(
                "{};{}x-extra{}={}1",
                dice.sws(),
                dice.sws(),
                dice.sws(),
                dice.sws()
            );
        }
        if let Some(tag) = &self.tag {
            let name = if dice.plain {
                "tag"
            } else {
                dice.pick(&["tag", "TAG", "Tag"])
            };
            out += &format!(
                "{};{}{name}{}={}{tag}",
                dice.sws(),
                dice.sws(),
                dice.sws(),
                dice.sws()
            );
        }
        out
    }
}

/// A request with every field the view reads, before it is spelled out.
#[derive(Debug, Clone)]
struct Request {
    method: &'static str,
    call_id: String,
    cseq: u32,
    branch: String,
    from: Party,
    to: Party,
    /// One entry per User-Agent header, each a list of words (folded apart when spelled).
    user_agents: Vec<Vec<String>>,
    /// Authorization (or Proxy-Authorization).
    auth: Option<Auth>,
    body: Vec<u8>,
    with_content_length: bool,
    /// Bytes after the message in the same datagram (only with Content-Length).
    trailing: Vec<u8>,
}

/// The digest parameters of one credential attempt; `qop` adds `cnonce` and `nc`.
#[derive(Debug, Clone)]
struct Auth {
    user: String,
    realm: String,
    nonce: String,
    response: String,
    qop: Option<(String, String)>,
}

/// A request spelled out, and where its message lies within the datagram.
struct Rendered {
    datagram: Vec<u8>,
    message: std::ops::Range<usize>,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} (message at {:?})",
            String::from_utf8_lossy(&self.datagram),
            self.message
        )
    }
}

impl Request {
    fn render(&self, dice: &mut Dice) -> Rendered {
        let host = self.to.host;
        let ruri = match self.method {
            "REGISTER" => format!("sip:{host}"),
            _ => format!("sip:{}@{host}", self.to.user),
        };
        let mut headers: Vec<String> = Vec::new();
        let via = format!(
            "SIP{s1}/{s2}2.0{s3}/{s4}{transport}{lws}192.0.2.{port}{semi}branch{eq}z9hG4bK{branch}{rport}{second}",
            s1 = dice.sws(),
            s2 = dice.sws(),
            s3 = dice.sws(),
            s4 = dice.sws(),
            transport = dice.pick(&["UDP", "TCP", "udp"]),
            lws = dice.lws(),
            port = dice.roll(),
            semi = format_args!("{};{}", dice.sws(), dice.sws()),
            eq = format_args!("{}={}", dice.sws(), dice.sws()),
            branch = self.branch,
            rport = if dice.chance(30) { ";rport" } else { "" },
            second = if dice.chance(30) { ", SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKsecond" } else { "" },
        );
        headers.push(dice.header("Via", Some("v"), &via));
        let from = self.from.render(dice);
        headers.push(dice.header("From", Some("f"), &from));
        let to = self.to.render(dice);
        headers.push(dice.header("To", Some("t"), &to));
        headers.push(dice.header("Call-ID", Some("i"), &self.call_id));
        let zeros = if !dice.plain && dice.chance(20) {
            "00"
        } else {
            ""
        };
        let cseq = format!("{zeros}{}{}{}", self.cseq, dice.lws(), self.method);
        headers.push(dice.header("CSeq", None, &cseq));
        headers.push(dice.header("Max-Forwards", None, "70"));
        // The User-Agent lines stay together and in order when the headers are shuffled.
        let mut user_agents = String::new();
        for words in &self.user_agents {
            let mut ua = words[0].clone();
            for word in &words[1..] {
                ua += dice.lws();
                ua += word;
            }
            user_agents += &dice.header("User-Agent", None, &ua);
        }
        if !user_agents.is_empty() {
            headers.push(user_agents);
        }
        if let Some(auth) = &self.auth {
            let quoted = |dice: &mut Dice, name: &str, value: &str| {
                format!("{name}{}={}\"{value}\"", dice.sws(), dice.sws())
            };
            let mut params = vec![
                quoted(dice, "username", &auth.user),
                quoted(dice, "realm", &auth.realm),
                quoted(dice, "nonce", &auth.nonce),
                format!("uri=\"sip:{host}\""),
                quoted(dice, "response", &auth.response),
                "algorithm=MD5".to_owned(),
            ];
            if let Some((cnonce, nc)) = &auth.qop {
                params.push(quoted(dice, "cnonce", cnonce));
                params.push(format!("nc{}={}{nc}", dice.sws(), dice.sws()));
                params.push("qop=auth".to_owned());
            }
            let turn = usize::from(dice.roll()) % params.len();
            params.rotate_left(turn);
            let mut value = format!("Digest{}", dice.lws());
            for (i, param) in params.iter().enumerate() {
                if i > 0 {
                    value += &format!("{},{}", dice.sws(), dice.sws());
                }
                value += param;
            }
            let name = if dice.chance(70) {
                "Authorization"
            } else {
                "Proxy-Authorization"
            };
            headers.push(dice.header(name, None, &value));
        }
        if dice.chance(50) {
            let contact = format!(
                "<sip:{}@192.0.2.{}:5060>{};expires=3600",
                self.from.user,
                dice.roll(),
                dice.sws()
            );
            headers.push(dice.header("Contact", Some("m"), &contact));
        }
        if !dice.plain && dice.chance(30) {
            headers.push(dice.header("Subject", Some("s"), ""));
        }
        if dice.chance(30) {
            headers.push(dice.header("X-Noise", None, ";;,,;; <sip:x@y> \"q,;\""));
        }
        if !self.body.is_empty() {
            headers.push(dice.header("Content-Type", Some("c"), "application/octet-stream"));
        }
        if self.with_content_length {
            let value = format!("{}{}", dice.sws(), self.body.len());
            headers.push(dice.header("Content-Length", Some("l"), &value));
        }
        // Random header order, by sort keys drawn from the dice.
        let mut keyed: Vec<(u8, String)> = headers.into_iter().map(|h| (dice.roll(), h)).collect();
        keyed.sort_by_key(|(key, _)| *key);

        let leading = if dice.plain {
            ""
        } else {
            dice.pick(&["", "", "\r\n", "\r\n\r\n"])
        };
        let mut datagram = leading.as_bytes().to_vec();
        datagram.extend(format!("{} {ruri} SIP/2.0\r\n", self.method).bytes());
        for (_, header) in keyed {
            datagram.extend(header.bytes());
        }
        datagram.extend(b"\r\n");
        datagram.extend(&self.body);
        let message = leading.len()..datagram.len();
        if self.with_content_length {
            datagram.extend(&self.trailing);
        }
        Rendered { datagram, message }
    }
}

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9.!%*_+`'~-]{1,16}"
}

fn party(with_tag: bool) -> impl Strategy<Value = Party> {
    let display = prop_oneof![
        Just(Display::None),
        "[A-Za-z]{1,8}( [A-Za-z]{1,8}){0,2}".prop_map(Display::Tokens),
        "([A-Za-z0-9 <>,;:@]|\\\\\"|\\\\\\\\){0,12}".prop_map(Display::Quoted),
    ];
    let host = select(
        &[
            "example.com",
            "pbx.example.net",
            "192.0.2.10",
            "[2001:db8::10]",
            "example.com:5060",
        ][..],
    );
    let tag = if with_tag {
        token().prop_map(Some).boxed()
    } else {
        proptest::option::of(token()).boxed()
    };
    (
        display,
        "[a-zA-Z0-9][a-zA-Z0-9._!~*'+-]{0,15}",
        proptest::option::of("[a-z0-9]{1,8}"),
        host,
        tag,
    )
        .prop_map(|(display, user, password, host, tag)| Party {
            display,
            user,
            password,
            host,
            tag,
        })
}

/// Digest parameters as clients send them, with commas, `=` and escaped quotes in the quoted
/// values that must not split or end them (`realm` and `nonce` may be empty).
fn auth() -> impl Strategy<Value = Auth> {
    let quoted = "([a-zA-Z0-9 ,=@.:/+]|\\\\\"){0,24}";
    (
        "[a-zA-Z0-9._+-]{1,12}",
        quoted,
        quoted,
        "[0-9a-f]{32}",
        proptest::option::of(("[0-9a-zA-Z+/=]{8,16}", "[0-9a-f]{8}")),
    )
        .prop_map(|(user, realm, nonce, response, qop)| Auth {
            user,
            realm,
            nonce,
            response,
            qop,
        })
}

fn request() -> impl Strategy<Value = Request> {
    let word = "[a-zA-Z0-9.!%*_+`'~()<>:/?{}\\[\\]\\\\\"-]{1,20}";
    let call_id = (word, proptest::option::of(word)).prop_map(|(a, b)| match b {
        Some(b) => format!("{a}@{b}"),
        None => a,
    });
    let fields = (
        select(&["REGISTER", "INVITE", "OPTIONS", "BYE", "NEWMETHOD"][..]),
        call_id,
        any::<u32>(),
        "[a-zA-Z0-9.-]{1,16}",
        party(true),
        party(false),
    );
    let extras = (
        vec(vec("[A-Za-z0-9._!~*'+/()-]{1,12}", 1..4), 0..7),
        proptest::option::of(auth()),
        vec(any::<u8>(), 0..48),
        any::<bool>(),
        vec(any::<u8>(), 0..16),
    );
    (fields, extras).prop_map(
        |((method, call_id, cseq, branch, from, to), (user_agents, auth, body, cl, trailing))| {
            Request {
                method,
                call_id,
                cseq,
                branch,
                from,
                to,
                user_agents,
                auth,
                body,
                with_content_length: cl || !trailing.is_empty(),
                trailing,
            }
        },
    )
}

/// A request and a datagram that spells it; `plain` chooses the strict spelling (see [`Dice`]).
fn rendered(plain: impl Strategy<Value = bool>) -> impl Strategy<Value = (Request, Rendered)> {
    (request(), vec(any::<u8>(), 64..128), plain).prop_map(|(mut req, rolls, plain)| {
        if plain {
            // Strict parsers want Content-Length and no bytes beyond it.
            req.with_content_length = true;
            req.trailing.clear();
        }
        let rendered = req.render(&mut Dice {
            rolls,
            next: 0,
            plain,
        });
        (req, rendered)
    })
}

/// One WWW-Authenticate (`www`) or Proxy-Authenticate challenge of a 401/407 response.
#[derive(Debug, Clone)]
struct Challenged {
    www: bool,
    realm: String,
    nonce: String,
    /// How `stale` is written, if at all, and whether that spelling means true.
    stale: Option<(&'static str, bool)>,
}

/// A 401 response carrying `challenges` (several WWW-Authenticate headers are legal: one per
/// realm or algorithm), spelled with the dice.
fn challenge_response(challenges: &[Challenged], dice: &mut Dice) -> Vec<u8> {
    let mut out = String::from("SIP/2.0 401 Unauthorized\r\n");
    out += &dice.header("Via", Some("v"), "SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK7");
    out += &dice.header("From", Some("f"), "<sip:1001@example.com>;tag=f7");
    out += &dice.header("To", Some("t"), "<sip:1001@example.com>;tag=t7");
    out += &dice.header("Call-ID", Some("i"), "c7@192.0.2.7");
    out += &dice.header("CSeq", None, "7 REGISTER");
    for c in challenges {
        let mut params = vec![
            format!("realm{}={}\"{}\"", dice.sws(), dice.sws(), c.realm),
            format!("nonce{}={}\"{}\"", dice.sws(), dice.sws(), c.nonce),
            "algorithm=MD5".to_owned(),
        ];
        if let Some((spelling, _)) = c.stale {
            params.push(spelling.to_owned());
        }
        let turn = usize::from(dice.roll()) % params.len();
        params.rotate_left(turn);
        let separator = format!("{},{}", dice.sws(), dice.sws());
        let value = format!("Digest{}{}", dice.lws(), params.join(&separator));
        let name = if c.www {
            dice.pick(&["WWW-Authenticate", "www-authenticate"])
        } else {
            dice.pick(&["Proxy-Authenticate", "PROXY-AUTHENTICATE"])
        };
        out += &dice.header(name, None, &value);
    }
    out += &dice.header("Content-Length", Some("l"), "0");
    out += "\r\n";
    out.into_bytes()
}

fn challenged() -> impl Strategy<Value = Challenged> {
    let quoted = "([a-zA-Z0-9 ,=@.:/+]|\\\\\"){0,24}";
    let stale = proptest::option::of(select(
        &[
            ("stale=true", true),
            ("stale=TRUE", true),
            ("stale=\"true\"", true),
            ("Stale = \"True\"", true),
            ("stale=false", false),
            ("stale=\"FALSE\"", false),
        ][..],
    ));
    (any::<bool>(), quoted, quoted, stale).prop_map(|(www, realm, nonce, stale)| Challenged {
        www,
        realm,
        nonce,
        stale,
    })
}

/// Bytes shaped like SIP: one line per header the view reads, each usually well formed, now and
/// then separator soup, absent, or with a broken line end, in random order. Reaches far deeper
/// than uniform bytes, and a fair share of it parses.
fn sip_shaped() -> impl Strategy<Value = Vec<u8>> {
    const START: &[&str] = &[
        "INVITE sip:a@b SIP/2.0",
        "INVITE sip:a@b SIP/2.0",
        "SIP/2.0 401 Unauthorized",
        "ACK x:y SIP/2.0",
    ];
    const SLOTS: &[&[&str]] = &[
        &[
            "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
            "v:SIP/2.0/TCP [2001:db8::1]:5060 ; branch = z9hG4bK2 , SIP/2.0/UDP x",
        ],
        &[
            "From: \"A \\\" <b>\" <sip:a:pw@example.com>;tag=f1",
            "f: sip:a@example.com;tag=f2",
        ],
        &[
            "To: <sip:b@example.com>",
            "t: tel:+4930123;tag=t1",
            "TO : B <sips:b@[2001:db8::2]>",
        ],
        &["Call-ID: c1@192.0.2.1", "i:c2"],
        &["CSeq: 1 INVITE", "CSeq: 4294967295 INVITE", "cseq: 2 ACK"],
        &["Content-Length: 4", "l: 0", "Content-Length:\r\n 2"],
        &["User-Agent: friendly-scanner", "User-Agent:"],
        &["User-Agent: Yealink", "user-agent: VOIP \r\n sipcli"],
        &[
            "Authorization: Digest realm=\"a,username=x\", username=\"1001\"",
            "Authorization: Basic",
            "Authorization: Digest nonce=\"n\\\"x\", response=r, nc=1, cnonce=\"",
        ],
        &[
            "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"a,b\", stale=TRUE",
            "Proxy-Authenticate: Digest nonce=, stale=\"true",
        ],
        &[
            "Proxy-Authorization: Digest username=1002",
            "Proxy-Authorization: ,",
        ],
        &["Contact: <sip:a@192.0.2.1>;expires=60, <sip:b@x>", "m: *"],
        &["X-Other:", "s: ;;,,"],
    ];
    let junk = "[ \t\r\n\"\\\\<>;,=:@a-zA-Z0-9-]{0,24}";
    let bad_eol = select(&["\n", "\r", "\r\n ", ""][..]);
    // Per slot: a well-formed variant, junk to use instead, a broken line end, a die for which
    // damage (if any) the slot takes, and a sort key for the header order.
    let slots: Vec<_> = SLOTS
        .iter()
        .map(|variants| {
            (
                select(*variants),
                junk,
                bad_eol.clone(),
                0u8..8,
                any::<u8>(),
            )
        })
        .collect();
    (select(START), slots, any::<bool>(), vec(any::<u8>(), 0..8)).prop_map(
        |(start, mut slots, damaged, body)| {
            slots.sort_by_key(|slot| slot.4);
            let mut out = format!("{start}\r\n").into_bytes();
            for (line, junk, bad_eol, die, _) in slots {
                let (line, eol) = match (damaged, die) {
                    (true, 0) => (junk.as_str(), "\r\n"),
                    (true, 1) => continue,
                    (true, 2) => (line, bad_eol),
                    _ => (line, "\r\n"),
                };
                out.extend(line.bytes());
                out.extend(eol.bytes());
            }
            out.extend(b"\r\n");
            out.extend(body);
            out
        },
    )
}

/// One edit to a datagram: replace, insert or delete one byte at a position (taken modulo).
fn mutation() -> impl Strategy<Value = (usize, u8, u8)> {
    let byte = prop_oneof![any::<u8>(), select(&b"\r\n :;,=\"\\<>@0\t/"[..])];
    (any::<usize>(), 0u8..3, byte)
}

fn apply(mut bytes: Vec<u8>, mutations: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, op, byte) in mutations {
        let at = at % (bytes.len() + 1);
        match op {
            0 if at < bytes.len() => bytes[at] = byte,
            2 if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => bytes.insert(at, byte),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..1024)) {
        if let Ok(view) = SipView::parse(&bytes) {
            check_borrows(&bytes, &view)?;
        }
    }

    #[test]
    fn sip_shaped_bytes_never_panic_and_borrow_from_input(bytes in sip_shaped()) {
        if let Ok(view) = SipView::parse(&bytes) {
            check_borrows(&bytes, &view)?;
        }
    }
}

proptest! {
    #![proptest_config(Config { cases: 256, failure_persistence: None, ..Config::default() })]

    #[test]
    fn generated_requests_round_trip_every_field((req, out) in rendered(any::<bool>())) {
        let view = SipView::parse(&out.datagram)
            .map_err(|e| TestCaseError::fail(format!("{e:?} on {:?}", String::from_utf8_lossy(&out.datagram))))?;
        check_borrows(&out.datagram, &view)?;
        prop_assert_eq!(view.message, &out.datagram[out.message.clone()]);
        prop_assert_eq!(view.body, &req.body[..]);
        prop_assert_eq!(view.content_length, req.with_content_length.then_some(req.body.len()));
        prop_assert_eq!(view.method().map(|m| m.as_bytes()), Some(req.method.as_bytes()));
        prop_assert_eq!(view.call_id, req.call_id.as_bytes());
        prop_assert_eq!(view.cseq.seq, req.cseq);
        prop_assert_eq!(view.cseq.method.as_bytes(), req.method.as_bytes());
        let branch = format!("z9hG4bK{}", req.branch);
        prop_assert_eq!(view.via_branch, Some(branch.as_bytes()));
        prop_assert_eq!(view.from.user, Some(req.from.user.as_bytes()));
        prop_assert_eq!(view.from.tag, req.from.tag.as_deref().map(str::as_bytes));
        prop_assert_eq!(view.to.user, Some(req.to.user.as_bytes()));
        prop_assert_eq!(view.to.tag, req.to.tag.as_deref().map(str::as_bytes));
        let user_agents: Vec<String> = req.user_agents.iter().map(|words| words.join(" ")).collect();
        prop_assert_eq!(view.user_agents.count(), user_agents.len());
        prop_assert_eq!(view.user_agents.is_truncated(), user_agents.len() > UserAgents::KEPT);
        let seen: Vec<String> = view.user_agents.values().iter().map(|ua| unfold(ua)).collect();
        prop_assert_eq!(&seen[..], &user_agents[..user_agents.len().min(UserAgents::KEPT)]);
        prop_assert_eq!(view.user_agent.map(unfold), user_agents.first().cloned());
        let creds = view.credentials();
        prop_assert_eq!(creds.is_some(), req.auth.is_some());
        if let (Some(creds), Some(auth)) = (creds, &req.auth) {
            prop_assert_eq!(creds.username, Some(auth.user.as_bytes()));
            prop_assert_eq!(creds.realm, Some(auth.realm.as_bytes()));
            prop_assert_eq!(creds.nonce, Some(auth.nonce.as_bytes()));
            prop_assert_eq!(creds.response, Some(auth.response.as_bytes()));
            let qop = auth.qop.as_ref();
            prop_assert_eq!(creds.cnonce, qop.map(|(cnonce, _)| cnonce.as_bytes()));
            prop_assert_eq!(creds.nc, qop.map(|(_, nc)| nc.as_bytes()));
        }
    }

    #[test]
    fn the_first_www_authenticate_else_proxy_authenticate_is_the_challenge(
        challenges in vec(challenged(), 0..4),
        rolls in vec(any::<u8>(), 64..128),
    ) {
        let bytes = challenge_response(&challenges, &mut Dice { rolls, next: 0, plain: false });
        let view = SipView::parse(&bytes)
            .map_err(|e| TestCaseError::fail(format!("{e:?} on {:?}", String::from_utf8_lossy(&bytes))))?;
        check_borrows(&bytes, &view)?;
        let expected = challenges
            .iter()
            .find(|c| c.www)
            .or_else(|| challenges.iter().find(|c| !c.www));
        prop_assert_eq!(view.challenge.is_some(), expected.is_some());
        if let (Some(challenge), Some(expected)) = (view.challenge, expected) {
            prop_assert_eq!(challenge.scheme, &b"Digest"[..]);
            prop_assert_eq!(challenge.realm, Some(expected.realm.as_bytes()));
            prop_assert_eq!(challenge.nonce, Some(expected.nonce.as_bytes()));
            prop_assert_eq!(challenge.stale, expected.stale.is_some_and(|(_, stale)| stale));
        }
    }

    #[test]
    fn mutated_requests_never_panic_and_borrow_from_input(
        (_, out) in rendered(any::<bool>()),
        mutations in vec(mutation(), 1..8),
    ) {
        let bytes = apply(out.datagram, &mutations);
        if let Ok(view) = SipView::parse(&bytes) {
            check_borrows(&bytes, &view)?;
        }
    }
}

/// rsip is the full validator: wherever it accepts a generated request, the view must read the
/// same method, Call-ID and CSeq. Half the cases are spelled plainly so rsip accepts enough of
/// them for the comparison to mean something.
#[test]
fn view_agrees_with_rsip_where_rsip_accepts() {
    use rsip::prelude::{HeadersExt, UntypedHeader};

    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let compared = std::cell::Cell::new(0u32);
    runner
        .run(&rendered(any::<bool>()), |(_, out)| {
            let Ok(rsip::SipMessage::Request(strict)) = strict::parse(&out.datagram) else {
                return Ok(());
            };
            let view = SipView::parse(&out.datagram)
                .map_err(|e| TestCaseError::fail(format!("view: {e:?}")))?;
            prop_assert_eq!(
                view.method().map(|m| m.as_bytes().to_vec()),
                Some(strict.method().to_string().into_bytes())
            );
            if let (Ok(call_id), Ok(cseq)) = (strict.call_id_header(), strict.cseq_header()) {
                prop_assert_eq!(view.call_id, call_id.value().trim().as_bytes());
                prop_assert_eq!(Some(view.cseq.seq), cseq.seq().ok());
                let method = cseq.method().map(|m| m.to_string().into_bytes()).ok();
                prop_assert_eq!(Some(view.cseq.method.as_bytes().to_vec()), method);
                compared.set(compared.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    assert!(
        compared.get() >= 32,
        "rsip accepted only {} of 256 generated requests",
        compared.get()
    );
}
