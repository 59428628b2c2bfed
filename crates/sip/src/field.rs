//! Header value grammar the policy needs: LWS trimming, parameters, name-addr (From/To/Contact),
//! credentials and challenges. Each function returns sub-slices of its input; none allocates.

use crate::error::{Header, ParseError};

/// Bytes that may appear in a SIP token (RFC 3261 section 25.1), one table lookup per byte.
const TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        b += 1;
    }
    table
};

/// Whether `b` may appear in a SIP token (RFC 3261 section 25.1).
pub(crate) fn is_token_byte(b: u8) -> bool {
    TOKEN_BYTES[usize::from(b)]
}

pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token_byte(b))
}

pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Trims linear white space, including folded line breaks, from both ends.
pub(crate) fn trim_lws(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_lws(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_lws(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// Below this length a plain loop finds a byte faster than `memchr`, whose vector search costs
/// more to set up than it saves; most parameters and URI parts are this short.
const SHORT: usize = 16;

/// `memchr` for the short slices header values are made of.
#[inline]
pub(crate) fn find_byte(needle: u8, s: &[u8]) -> Option<usize> {
    if s.len() < SHORT {
        s.iter().position(|&b| b == needle)
    } else {
        memchr::memchr(needle, s)
    }
}

/// `memchr2` for short slices, as [`find_byte`].
#[inline]
fn find_any2(a: u8, b: u8, s: &[u8]) -> Option<usize> {
    if s.len() < SHORT {
        s.iter().position(|&x| x == a || x == b)
    } else {
        memchr::memchr2(a, b, s)
    }
}

/// `memchr3` for short slices, as [`find_byte`].
#[inline]
fn find_any3(a: u8, b: u8, c: u8, s: &[u8]) -> Option<usize> {
    if s.len() < SHORT {
        s.iter().position(|&x| x == a || x == b || x == c)
    } else {
        memchr::memchr3(a, b, c, s)
    }
}

/// Index of the first `needle` in `s` that is outside a quoted string and outside `<...>`.
/// Jumps from one significant byte to the next with `memchr`: quotes open a quoted string
/// (backslash escapes inside), `<` opens an angle section that only `>` closes, and a quote
/// inside it still opens a quoted string. An unclosed quote or angle hides the rest.
pub(crate) fn find_unquoted(s: &[u8], needle: u8) -> Option<usize> {
    let mut i = 0;
    loop {
        i += find_any3(needle, b'"', b'<', &s[i..])?;
        match s[i] {
            b'"' => i = after_quoted(s, i)?,
            b'<' => loop {
                i += 1 + memchr::memchr2(b'"', b'>', &s[i + 1..])?;
                if s[i] == b'>' {
                    i += 1;
                    break;
                }
                i = after_quoted(s, i)? - 1;
            },
            _ => return Some(i),
        }
    }
}

/// For a quoted string opening at `s[open]`, the index just past its closing quote.
fn after_quoted(s: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', &s[i..])?;
        if s[i] == b'"' {
            return Some(i + 1);
        }
        // An escaped byte, whatever it is (a quote included), does not end the string.
        i += 2;
        if i > s.len() {
            return None;
        }
    }
}

/// The first value of a comma-separated header such as Via.
pub(crate) fn first_value(value: &[u8]) -> &[u8] {
    trim_lws(&value[..find_unquoted(value, b',').unwrap_or(value.len())])
}

/// Looks up `name` (case-insensitive) among `;`-separated parameters. A parameter present
/// without `=value` yields an empty slice.
pub(crate) fn param<'a>(mut params: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    while !params.is_empty() {
        let end = find_unquoted(params, b';').unwrap_or(params.len());
        let item = &params[..end];
        let (key, value) = match find_byte(b'=', item) {
            Some(eq) => (trim_lws(&item[..eq]), trim_lws(&item[eq + 1..])),
            None => (trim_lws(item), &item[item.len()..]),
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(value);
        }
        params = params.get(end + 1..).unwrap_or_default();
    }
    None
}

/// From, To or Contact: the URI's user part and the `tag` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NameAddr<'a> {
    /// The whole header value, display name and parameters included.
    pub value: &'a [u8],
    /// The URI as written, without angle brackets.
    pub uri: &'a [u8],
    /// The user part of a `sip:`/`sips:` URI (without password), or a `tel:` number. Raw bytes:
    /// %-escapes are left as they are.
    pub user: Option<&'a [u8]>,
    /// The `tag` header parameter, when present.
    pub tag: Option<&'a [u8]>,
}

impl<'a> NameAddr<'a> {
    /// Parses `[display-name] <uri> *(;param)` or `uri *(;param)`.
    pub(crate) fn parse(value: &'a [u8], header: Header) -> Result<Self, ParseError> {
        let bad = ParseError::BadValue(header);
        let value = trim_lws(value);
        let mut rest = value;
        if rest.first() == Some(&b'"') {
            let close = closing_quote(rest).ok_or(bad)?;
            rest = &rest[close + 1..];
        }
        let (uri, params) = match find_byte(b'<', rest) {
            Some(open) => {
                let inner = &rest[open + 1..];
                let close = find_byte(b'>', inner).ok_or(bad)?;
                (trim_lws(&inner[..close]), &inner[close + 1..])
            }
            None => {
                let end = find_byte(b';', rest).unwrap_or(rest.len());
                (trim_lws(&rest[..end]), &rest[end..])
            }
        };
        let colon = find_byte(b':', uri).ok_or(bad)?;
        if !is_token(&uri[..colon]) {
            return Err(bad);
        }
        let tag = param(params, b"tag");
        if tag.is_some_and(|tag| !is_token(tag)) {
            return Err(bad);
        }
        Ok(NameAddr {
            value,
            uri,
            user: uri_user(&uri[..colon], &uri[colon + 1..]),
            tag,
        })
    }
}

/// Index of the quote closing the quoted string that starts at `s[0]`.
fn closing_quote(s: &[u8]) -> Option<usize> {
    after_quoted(s, 0).map(|end| end - 1)
}

fn uri_user<'a>(scheme: &[u8], rest: &'a [u8]) -> Option<&'a [u8]> {
    if scheme.eq_ignore_ascii_case(b"tel") {
        let end = find_byte(b';', rest).unwrap_or(rest.len());
        return Some(&rest[..end]).filter(|user| !user.is_empty());
    }
    if !(scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips")) {
        return None;
    }
    let at = find_byte(b'@', rest)?;
    let userinfo = &rest[..at];
    let user = &userinfo[..find_byte(b':', userinfo).unwrap_or(userinfo.len())];
    Some(user).filter(|user| !user.is_empty())
}

/// The scheme of an `Authorization`, `Proxy-Authorization`, `WWW-Authenticate` or
/// `Proxy-Authenticate` value, and an iterator over its `name=value` parameters (RFC 3261
/// section 25.1, `credentials` and `challenge`).
fn auth_params(value: &[u8]) -> (&[u8], AuthParams<'_>) {
    let value = trim_lws(value);
    let end = value.iter().position(|&b| is_lws(b)).unwrap_or(value.len());
    (
        &value[..end],
        AuthParams {
            rest: &value[end..],
        },
    )
}

/// The comma-separated `name=value` parameters after an authentication scheme, read in one
/// pass from left to right that jumps from one `=`, `,` or quote to the next. A value in quotes
/// comes without them (escapes inside left as written; unterminated, it runs to the end as
/// written), and what follows its closing quote up to the next comma is ignored; any other
/// value runs to the next comma, LWS trimmed. A comma inside a quoted string does not split,
/// and an item without `=` is skipped.
struct AuthParams<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AuthParams<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.rest;
        let (mut start, mut i) = (0, 0);
        let eq = loop {
            let Some(at) = find_any3(b'=', b',', b'"', &s[i..]) else {
                self.rest = &[];
                return None;
            };
            i += at;
            match s[i] {
                b'=' => break i,
                b',' => {
                    i += 1;
                    start = i;
                }
                _ => match after_quoted(s, i) {
                    Some(end) => i = end,
                    None => {
                        self.rest = &[];
                        return None;
                    }
                },
            }
        };
        let name = trim_lws(&s[start..eq]);
        let open = eq + 1 + s[eq + 1..].iter().take_while(|&&b| is_lws(b)).count();
        let (value, end) = match s.get(open) {
            Some(b'"') => match after_quoted(s, open) {
                Some(close) => (&s[open + 1..close - 1], item_end(s, close)),
                None => (&s[open..], s.len()),
            },
            _ => {
                let end = find_any2(b',', b'"', &s[open..]).map_or(s.len(), |at| open + at);
                (trim_lws(&s[open..end]), item_end(s, end))
            }
        };
        self.rest = s.get(end + 1..).unwrap_or_default();
        Some((name, value))
    }
}

/// Where the comma-separated item around `s[from]` ends: the next comma outside a quoted
/// string, or the end of `s`. Usually that comma is the next byte after some LWS.
fn item_end(s: &[u8], mut from: usize) -> usize {
    from += s[from..].iter().take_while(|&&b| is_lws(b)).count();
    loop {
        match s.get(from) {
            None => return s.len(),
            Some(b',') => return from,
            Some(_) => match find_any2(b',', b'"', &s[from..]) {
                None => return s.len(),
                Some(at) if s[from + at] == b',' => return from + at,
                Some(at) => match after_quoted(s, from + at) {
                    Some(end) => from = end,
                    None => return s.len(),
                },
            },
        }
    }
}

/// Authorization or Proxy-Authorization: the scheme and the digest parameters that identify
/// one credential attempt. Parameter values come without their quotes (escapes inside are left
/// as written); a parameter given twice counts once, the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// The authentication scheme, usually `Digest`.
    pub scheme: &'a [u8],
    /// The `username` parameter: whose password is being tried.
    pub username: Option<&'a [u8]>,
    /// The `realm` parameter: which of the server's realms the attempt is for.
    pub realm: Option<&'a [u8]>,
    /// The `nonce` parameter: the challenge being answered, which ties a retry to the
    /// response that issued it.
    pub nonce: Option<&'a [u8]>,
    /// The `response` parameter: the digest itself; the same nonce with a new response is a
    /// new password guess.
    pub response: Option<&'a [u8]>,
    /// The `cnonce` parameter (with `qop`): the client's own nonce.
    pub cnonce: Option<&'a [u8]>,
    /// The `nc` parameter (with `qop`): how many times the client has used this nonce.
    pub nc: Option<&'a [u8]>,
}

impl<'a> Credentials<'a> {
    pub(crate) fn parse(value: &'a [u8]) -> Self {
        let (scheme, params) = auth_params(value);
        let mut creds = Credentials {
            scheme,
            username: None,
            realm: None,
            nonce: None,
            response: None,
            cnonce: None,
            nc: None,
        };
        for (name, value) in params {
            // Dispatch on length and first letter, as header names are: one comparison at most.
            let [first, rest @ ..] = name else { continue };
            let is = |known: &[u8]| rest.eq_ignore_ascii_case(known);
            let slot = match (rest.len(), first.to_ascii_lowercase()) {
                (1, b'n') if is(b"c") => &mut creds.nc,
                (4, b'r') if is(b"ealm") => &mut creds.realm,
                (4, b'n') if is(b"once") => &mut creds.nonce,
                (5, b'c') if is(b"nonce") => &mut creds.cnonce,
                (7, b'u') if is(b"sername") => &mut creds.username,
                (7, b'r') if is(b"esponse") => &mut creds.response,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        creds
    }
}

/// WWW-Authenticate or Proxy-Authenticate: the challenge a server answered a request with.
/// Values as in [`Credentials`]: unquoted, the first of a repeated parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge<'a> {
    /// The authentication scheme, usually `Digest`.
    pub scheme: &'a [u8],
    /// The `realm` parameter: which credentials the server wants.
    pub realm: Option<&'a [u8]>,
    /// The `nonce` parameter: what the next attempt must answer.
    pub nonce: Option<&'a [u8]>,
    /// `stale=true` (any case, quoted or not): the rejected request had the right password and
    /// an expired nonce, so it was no failed guess.
    pub stale: bool,
}

impl<'a> Challenge<'a> {
    pub(crate) fn parse(value: &'a [u8]) -> Self {
        let (scheme, params) = auth_params(value);
        let (mut realm, mut nonce, mut stale) = (None, None, None);
        for (name, value) in params {
            if name.eq_ignore_ascii_case(b"realm") {
                realm.get_or_insert(value);
            } else if name.eq_ignore_ascii_case(b"nonce") {
                nonce.get_or_insert(value);
            } else if name.eq_ignore_ascii_case(b"stale") {
                stale.get_or_insert(value.eq_ignore_ascii_case(b"true"));
            }
        }
        Challenge {
            scheme,
            realm,
            nonce,
            stale: stale.unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_reads_user_and_tag_through_display_name_and_lws() {
        let v = br#""J Rosenberg \\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8"#;
        let na = NameAddr::parse(v, Header::From).unwrap();
        assert_eq!(na.user, Some(&b"jdrosen"[..]));
        assert_eq!(na.tag, Some(&b"98asjd8"[..]));
    }

    #[test]
    fn addr_spec_params_belong_to_the_header() {
        let na =
            NameAddr::parse(b"sip:+1650@ss1.example.net;user=phone;tag=x1", Header::To).unwrap();
        assert_eq!(na.uri, b"sip:+1650@ss1.example.net");
        assert_eq!(na.user, Some(&b"+1650"[..]));
        assert_eq!(na.tag, Some(&b"x1"[..]));
    }

    #[test]
    fn name_addr_without_scheme_or_with_open_quote_is_rejected() {
        assert!(NameAddr::parse(b"0", Header::To).is_err());
        assert!(NameAddr::parse(b"\"unterminated <sip:a@b>", Header::To).is_err());
        assert!(NameAddr::parse(b"<sip:a@b>;tag=", Header::To).is_err());
    }

    #[test]
    fn user_strips_password_and_ignores_hostonly_uris() {
        let na = NameAddr::parse(b"<sip:alice:secret@example.com>", Header::From).unwrap();
        assert_eq!(na.user, Some(&b"alice"[..]));
        let na = NameAddr::parse(b"<sip:example.com>", Header::From).unwrap();
        assert_eq!(na.user, None);
        let na = NameAddr::parse(b"<tel:+4930123;phone-context=x>", Header::From).unwrap();
        assert_eq!(na.user, Some(&b"+4930123"[..]));
    }

    #[test]
    fn credentials_username_is_found_quoted_or_not() {
        let c = Credentials::parse(b"Digest realm=\"a,b\", username=\"1001\", nonce=\"x\"");
        assert_eq!(c.scheme, b"Digest");
        assert_eq!(c.username, Some(&b"1001"[..]));
        let c = Credentials::parse(b"NoOneKnowsThisScheme opaque-data=here");
        assert_eq!(c.scheme, b"NoOneKnowsThisScheme");
        assert_eq!(c.username, None);
    }

    #[test]
    fn credentials_read_every_digest_parameter_of_one_attempt() {
        let c = Credentials::parse(
            b"Digest username=\"1001\",realm=\"pbx\",nonce=\"6a7b8c9d\",uri=\"sip:pbx\",\
              response=\"0123456789abcdef0123456789abcdef\",algorithm=MD5,\
              cnonce=\"0a4f113b\",qop=auth,nc=00000001",
        );
        assert_eq!(c.scheme, b"Digest");
        assert_eq!(c.username, Some(&b"1001"[..]));
        assert_eq!(c.realm, Some(&b"pbx"[..]));
        assert_eq!(c.nonce, Some(&b"6a7b8c9d"[..]));
        assert_eq!(c.response, Some(&b"0123456789abcdef0123456789abcdef"[..]));
        assert_eq!(c.cnonce, Some(&b"0a4f113b"[..]));
        assert_eq!(c.nc, Some(&b"00000001"[..]));
    }

    #[test]
    fn credentials_tolerate_folded_lws_around_names_values_and_commas() {
        let c = Credentials::parse(
            b"  Digest\r\n\tUSERNAME =\t\"1001\" ,\r\n  Nonce= \"n1\"\t,,  RESPONSE\r\n =r1 , NC=01  ",
        );
        assert_eq!(c.scheme, b"Digest");
        assert_eq!(c.username, Some(&b"1001"[..]));
        assert_eq!(c.nonce, Some(&b"n1"[..]));
        assert_eq!(c.response, Some(&b"r1"[..]));
        assert_eq!(c.nc, Some(&b"01"[..]));
    }

    #[test]
    fn commas_and_parameter_names_inside_quoted_values_do_not_split_or_match() {
        let c = Credentials::parse(
            br#"Digest realm="a, nonce=fake, b", username="x\"y, response=z", nonce="real""#,
        );
        assert_eq!(c.realm, Some(&b"a, nonce=fake, b"[..]));
        assert_eq!(
            c.username,
            Some(&br#"x\"y, response=z"#[..]),
            "escapes stay as written"
        );
        assert_eq!(c.nonce, Some(&b"real"[..]));
        assert_eq!(c.response, None);
    }

    #[test]
    fn credentials_missing_parameters_are_none_and_empty_values_are_empty() {
        let c = Credentials::parse(b"Digest username=\"\", nonce=, opaque=\"o\"");
        assert_eq!(c.username, Some(&b""[..]));
        assert_eq!(c.nonce, Some(&b""[..]));
        assert_eq!(
            (c.realm, c.response, c.cnonce, c.nc),
            (None, None, None, None)
        );
        let c = Credentials::parse(b"Digest");
        assert_eq!(
            (c.scheme, c.username, c.nonce),
            (&b"Digest"[..], None, None)
        );
        let c = Credentials::parse(b"");
        assert_eq!((c.scheme, c.username), (&b""[..], None));
    }

    #[test]
    fn credentials_first_of_a_repeated_parameter_wins() {
        let c = Credentials::parse(
            b"Digest username=\"1001\", nonce=\"n1\", username=\"admin\", nonce=\"n2\", \
              response=\"r1\", response=\"r2\"",
        );
        assert_eq!(c.username, Some(&b"1001"[..]));
        assert_eq!(c.nonce, Some(&b"n1"[..]));
        assert_eq!(c.response, Some(&b"r1"[..]));
    }

    #[test]
    fn stray_or_unterminated_quotes_keep_bytes_as_written_and_hide_what_follows() {
        let c = Credentials::parse(b"Digest nonce=\"abc, username=1001");
        assert_eq!(c.nonce, Some(&b"\"abc, username=1001"[..]));
        assert_eq!(c.username, None, "an unterminated quote runs to the end");
        let c = Credentials::parse(b"Digest username=\"1001, nonce=\"n1, response=r");
        assert_eq!(
            c.username,
            Some(&b"1001, nonce="[..]),
            "the quote closes where it closes"
        );
        assert_eq!((c.nonce, c.response), (None, Some(&b"r"[..])));
        let c = Credentials::parse(b"Digest nonce=\"");
        assert_eq!(c.nonce, Some(&b"\""[..]));
    }

    #[test]
    fn challenge_reads_realm_nonce_and_stale_in_any_spelling() {
        let c = Challenge::parse(
            b"Digest realm=\"asterisk\", nonce=\"1a2b,3c\", algorithm=MD5, stale=TRUE",
        );
        assert_eq!(c.scheme, b"Digest");
        assert_eq!(c.realm, Some(&b"asterisk"[..]));
        assert_eq!(c.nonce, Some(&b"1a2b,3c"[..]));
        assert!(c.stale);
        assert!(Challenge::parse(b"Digest nonce=n, STALE = \"true\"").stale);
        assert!(Challenge::parse(b"Digest nonce=n,stale=\"True\"").stale);
    }

    #[test]
    fn challenge_is_not_stale_unless_the_first_stale_says_true() {
        assert!(!Challenge::parse(b"Digest realm=\"pbx\", nonce=\"n\"").stale);
        assert!(!Challenge::parse(b"Digest nonce=n, stale=false").stale);
        assert!(!Challenge::parse(b"Digest nonce=n, stale=\"truest\"").stale);
        assert!(!Challenge::parse(b"Digest nonce=n, stale=false, stale=true").stale);
        let c = Challenge::parse(b"Digest realm=a, realm=b, nonce=\"n1\", nonce=\"n2\"");
        assert_eq!((c.realm, c.nonce), (Some(&b"a"[..]), Some(&b"n1"[..])));
        let c = Challenge::parse(b"Basic");
        assert_eq!(
            (c.scheme, c.realm, c.nonce, c.stale),
            (&b"Basic"[..], None, None, false)
        );
    }

    #[test]
    fn param_lookup_is_case_insensitive_and_tolerates_lws() {
        assert_eq!(
            param(b";Branch = z9hG4bK1 ;rport", b"branch"),
            Some(&b"z9hG4bK1"[..])
        );
        assert_eq!(param(b";branch=x;rport", b"rport"), Some(&b""[..]));
        assert_eq!(param(b";branch=x", b"received"), None);
    }
}
