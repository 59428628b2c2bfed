//! Header value grammar the policy needs: LWS trimming, parameters, name-addr (From/To/Contact)
//! and credentials. Each function returns sub-slices of its input; none allocates.

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
fn find_unquoted(s: &[u8], needle: u8) -> Option<usize> {
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

/// Authorization or Proxy-Authorization: the scheme and the `username` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// The authentication scheme, usually `Digest`.
    pub scheme: &'a [u8],
    /// The `username` parameter without its quotes, when present.
    pub username: Option<&'a [u8]>,
}

impl<'a> Credentials<'a> {
    pub(crate) fn parse(value: &'a [u8]) -> Self {
        let value = trim_lws(value);
        let end = value.iter().position(|&b| is_lws(b)).unwrap_or(value.len());
        let mut params = &value[end..];
        let mut username = None;
        while !params.is_empty() {
            let stop = find_unquoted(params, b',').unwrap_or(params.len());
            let item = &params[..stop];
            if let Some(eq) = find_byte(b'=', item) {
                if trim_lws(&item[..eq]).eq_ignore_ascii_case(b"username") {
                    username = Some(unquote(trim_lws(&item[eq + 1..])));
                    break;
                }
            }
            params = params.get(stop + 1..).unwrap_or_default();
        }
        Credentials {
            scheme: &value[..end],
            username,
        }
    }
}

fn unquote(s: &[u8]) -> &[u8] {
    match s {
        [b'"', inner @ .., b'"'] => inner,
        _ => s,
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
    fn param_lookup_is_case_insensitive_and_tolerates_lws() {
        assert_eq!(
            param(b";Branch = z9hG4bK1 ;rport", b"branch"),
            Some(&b"z9hG4bK1"[..])
        );
        assert_eq!(param(b";branch=x;rport", b"rport"), Some(&b""[..]));
        assert_eq!(param(b";branch=x", b"received"), None);
    }
}
