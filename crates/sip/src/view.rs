//! The borrowed view over one SIP message and the single pass that builds it, including the
//! fixed-size record of every User-Agent header (no allocation however many there are).

use crate::error::{Header, ParseError};
use crate::field::{
    find_byte, first_value, is_lws, is_token, is_token_byte, param, trim_lws, Challenge,
    Credentials, NameAddr,
};
use crate::method::Method;

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// `METHOD Request-URI SIP/2.0`
    Request {
        /// The request method.
        method: Method<'a>,
        /// The Request-URI as written.
        uri: &'a [u8],
    },
    /// `SIP/2.0 code reason`
    Response {
        /// The status code, 100 to 699.
        code: u16,
    },
}

/// The CSeq header: sequence number and the method it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// The sequence number (at most 2^32-1).
    pub seq: u32,
    /// The method: for a response, the method of the request it answers.
    pub method: Method<'a>,
}

/// Every User-Agent value of a message, in order, without allocating: the first
/// [`UserAgents::KEPT`] values are kept and the rest only counted, so a matcher can still tell
/// that values went unseen ([`UserAgents::is_truncated`]). RFC 3261 allows one User-Agent
/// header; a second one is no reason to refuse the message, but it may hide a scanner's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserAgents<'a> {
    kept: [&'a [u8]; UserAgents::KEPT],
    count: u32,
}

impl<'a> UserAgents<'a> {
    /// How many values are kept: more than any real client sends.
    pub const KEPT: usize = 4;

    /// Adds the next User-Agent value, or only counts it once the array is full.
    fn push(&mut self, value: &'a [u8]) {
        if let Some(slot) = self.kept.get_mut(self.count as usize) {
            *slot = value;
        }
        self.count = self.count.saturating_add(1);
    }

    /// The kept values in header order, each without surrounding LWS.
    pub fn values(&self) -> &[&'a [u8]] {
        &self.kept[..self.len_kept()]
    }

    /// How many User-Agent headers the message has, kept or not.
    pub fn count(&self) -> usize {
        self.count as usize
    }

    /// Whether the message has more User-Agent headers than [`UserAgents::values`] holds.
    pub fn is_truncated(&self) -> bool {
        self.count() > Self::KEPT
    }

    fn len_kept(&self) -> usize {
        self.count().min(Self::KEPT)
    }
}

/// What sipguard reads from one SIP message. Every slice borrows from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipView<'a> {
    /// The message as it must be forwarded: leading CRLFs and any bytes beyond Content-Length
    /// are excluded (RFC 3261 sections 7.5 and 18.3).
    pub message: &'a [u8],
    /// Request or status line.
    pub start: StartLine<'a>,
    /// The topmost Via value (`SIP/2.0/UDP host;params`).
    pub via: &'a [u8],
    /// The `branch` parameter of the topmost Via.
    pub via_branch: Option<&'a [u8]>,
    /// The From header.
    pub from: NameAddr<'a>,
    /// The To header.
    pub to: NameAddr<'a>,
    /// The Call-ID.
    pub call_id: &'a [u8],
    /// The CSeq.
    pub cseq: CSeq<'a>,
    /// The first User-Agent value (for responses, Server is not read: the policy judges
    /// requests).
    pub user_agent: Option<&'a [u8]>,
    /// Every User-Agent value: a scanner's name may follow an innocent first one.
    pub user_agents: UserAgents<'a>,
    /// The first Authorization header.
    pub authorization: Option<Credentials<'a>>,
    /// The first Proxy-Authorization header.
    pub proxy_authorization: Option<Credentials<'a>>,
    /// The first WWW-Authenticate challenge, else the first Proxy-Authenticate one (a response
    /// may carry one per realm or algorithm).
    pub challenge: Option<Challenge<'a>>,
    /// The first Contact value, as written.
    pub contact: Option<&'a [u8]>,
    /// Content-Length when the header is present.
    pub content_length: Option<usize>,
    /// The body (Content-Length bytes, or the rest of the datagram without the header).
    pub body: &'a [u8],
}

/// True for a datagram of only CR and LF: the keep-alive phones send to hold a NAT binding
/// open (RFC 5626 section 4.4.1). It is not SIP and not garbage either.
pub fn is_keepalive(datagram: &[u8]) -> bool {
    !datagram.is_empty() && datagram.iter().all(|&b| b == b'\r' || b == b'\n')
}

impl<'a> SipView<'a> {
    /// Parses one message from a datagram. Size limits are the caller's: this reads the whole
    /// slice it is given.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, ParseError> {
        let skip = datagram
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        let buf = &datagram[skip..];
        let mut lines = Lines { buf, pos: 0 };
        let first = lines.next_line().ok_or(ParseError::NotSip)?;
        let start = parse_start_line(first)?;

        let mut found = Found::default();
        let body_start = loop {
            let Some(line) = lines.next_line() else {
                return Err(ParseError::Unterminated);
            };
            if line.is_empty() {
                break lines.pos;
            }
            if matches!(line[0], b' ' | b'\t') {
                // A continuation with no header before it.
                return Err(ParseError::BadHeaderLine);
            }
            let value_end = lines.skip_continuations(line);
            let (name, colon) = header_name(line).ok_or(ParseError::BadHeaderLine)?;
            let value_start = line.as_ptr() as usize - buf.as_ptr() as usize + colon + 1;
            found.record(name, &buf[value_start..value_end])?;
        };

        let rest = &buf[body_start..];
        let content_length = match found.content_length {
            Some(raw) => Some(parse_content_length(raw)?),
            None => None,
        };
        let body = match content_length {
            Some(len) if len > rest.len() => return Err(ParseError::ContentLengthBeyondDatagram),
            Some(len) => &rest[..len],
            None => rest,
        };

        let via = found.via.ok_or(ParseError::MissingHeader(Header::Via))?;
        let via = first_value(via);
        let via_branch = memchr::memchr(b';', via).and_then(|semi| param(&via[semi..], b"branch"));
        let from = NameAddr::parse(
            found.from.ok_or(ParseError::MissingHeader(Header::From))?,
            Header::From,
        )?;
        let to = NameAddr::parse(
            found.to.ok_or(ParseError::MissingHeader(Header::To))?,
            Header::To,
        )?;
        let call_id = trim_lws(
            found
                .call_id
                .ok_or(ParseError::MissingHeader(Header::CallId))?,
        );
        if call_id.is_empty() {
            return Err(ParseError::BadValue(Header::CallId));
        }
        let cseq = parse_cseq(found.cseq.ok_or(ParseError::MissingHeader(Header::CSeq))?)?;
        if let StartLine::Request { method, .. } = start {
            if method != cseq.method {
                return Err(ParseError::CSeqMethodMismatch);
            }
        }

        Ok(SipView {
            message: &buf[..body_start + body.len()],
            start,
            via,
            via_branch,
            from,
            to,
            call_id,
            cseq,
            user_agent: found.user_agents.values().first().copied(),
            user_agents: found.user_agents,
            authorization: found.authorization.map(Credentials::parse),
            proxy_authorization: found.proxy_authorization.map(Credentials::parse),
            challenge: found
                .www_authenticate
                .or(found.proxy_authenticate)
                .map(Challenge::parse),
            contact: found.contact.map(first_value),
            content_length,
            body,
        })
    }

    /// The request method, or `None` for a response.
    pub fn method(&self) -> Option<Method<'a>> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, or `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// Credentials from Authorization, else from Proxy-Authorization.
    pub fn credentials(&self) -> Option<Credentials<'a>> {
        self.authorization.or(self.proxy_authorization)
    }
}

/// Raw values of the headers the view reads, gathered during the header pass.
#[derive(Default)]
struct Found<'a> {
    via: Option<&'a [u8]>,
    from: Option<&'a [u8]>,
    to: Option<&'a [u8]>,
    call_id: Option<&'a [u8]>,
    cseq: Option<&'a [u8]>,
    content_length: Option<&'a [u8]>,
    user_agents: UserAgents<'a>,
    authorization: Option<&'a [u8]>,
    proxy_authorization: Option<&'a [u8]>,
    www_authenticate: Option<&'a [u8]>,
    proxy_authenticate: Option<&'a [u8]>,
    contact: Option<&'a [u8]>,
}

impl<'a> Found<'a> {
    fn record(&mut self, name: &[u8], value: &'a [u8]) -> Result<(), ParseError> {
        /// Headers that may appear once: a second one makes the message ambiguous.
        fn once<'a>(
            slot: &mut Option<&'a [u8]>,
            value: &'a [u8],
            header: Header,
        ) -> Result<(), ParseError> {
            match slot.replace(value) {
                Some(_) => Err(ParseError::DuplicateHeader(header)),
                None => Ok(()),
            }
        }
        /// Headers that may repeat: the policy reads the first.
        fn first<'a>(slot: &mut Option<&'a [u8]>, value: &'a [u8]) -> Result<(), ParseError> {
            slot.get_or_insert(value);
            Ok(())
        }
        // Dispatch on length and first letter: one comparison for nearly every header, and
        // none at all for the many headers of lengths the view does not read.
        let first_letter = name[0].to_ascii_lowercase();
        let is = |long: &[u8]| name[1..].eq_ignore_ascii_case(&long[1..]);
        match (name.len(), first_letter) {
            (1, b'v') => first(&mut self.via, value),
            (3, b'v') if is(b"via") => first(&mut self.via, value),
            (1, b'f') => once(&mut self.from, value, Header::From),
            (4, b'f') if is(b"from") => once(&mut self.from, value, Header::From),
            (1, b't') => once(&mut self.to, value, Header::To),
            (2, b't') if is(b"to") => once(&mut self.to, value, Header::To),
            (1, b'i') => once(&mut self.call_id, value, Header::CallId),
            (7, b'c') if is(b"call-id") => once(&mut self.call_id, value, Header::CallId),
            (1, b'm') => first(&mut self.contact, value),
            (7, b'c') if is(b"contact") => first(&mut self.contact, value),
            (1, b'l') => once(&mut self.content_length, value, Header::ContentLength),
            (14, b'c') if is(b"content-length") => {
                once(&mut self.content_length, value, Header::ContentLength)
            }
            (4, b'c') if is(b"cseq") => once(&mut self.cseq, value, Header::CSeq),
            (10, b'u') if is(b"user-agent") => {
                self.user_agents.push(trim_lws(value));
                Ok(())
            }
            (13, b'a') if is(b"authorization") => first(&mut self.authorization, value),
            (19, b'p') if is(b"proxy-authorization") => first(&mut self.proxy_authorization, value),
            (16, b'w') if is(b"www-authenticate") => first(&mut self.www_authenticate, value),
            (18, b'p') if is(b"proxy-authenticate") => first(&mut self.proxy_authenticate, value),
            _ => Ok(()),
        }
    }
}

/// Physical lines of the header block. A line ends at LF; a CR before it is not part of it.
pub(crate) struct Lines<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Lines<'a> {
    pub(crate) fn next_line(&mut self) -> Option<&'a [u8]> {
        let rest = &self.buf[self.pos..];
        let lf = memchr::memchr(b'\n', rest)?;
        self.pos += lf + 1;
        let line = &rest[..lf];
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }

    /// Consumes folded continuation lines after `line` and returns where the logical value ends.
    fn skip_continuations(&mut self, line: &'a [u8]) -> usize {
        let mut end = line.as_ptr() as usize - self.buf.as_ptr() as usize + line.len();
        while matches!(self.buf.get(self.pos), Some(b' ' | b'\t')) {
            match self.next_line() {
                Some(next) => {
                    end = next.as_ptr() as usize - self.buf.as_ptr() as usize + next.len()
                }
                None => break,
            }
        }
        end
    }
}

/// The header name of `line` and the index of the colon after it: `LWS token LWS ":"`, read in
/// one pass over the name rather than a search for the colon and a second pass over the name.
pub(crate) fn header_name(line: &[u8]) -> Option<(&[u8], usize)> {
    let start = line.iter().position(|&b| !is_lws(b))?;
    let len = line[start..]
        .iter()
        .position(|&b| !is_token_byte(b))
        .unwrap_or(line.len() - start);
    let colon = start + len + line[start + len..].iter().position(|&b| !is_lws(b))?;
    (len > 0 && line[colon] == b':').then(|| (&line[start..start + len], colon))
}

fn parse_start_line(line: &[u8]) -> Result<StartLine<'_>, ParseError> {
    if line.len() >= 8 && line[..8].eq_ignore_ascii_case(b"SIP/2.0 ") {
        let code = &line[8..];
        let digits = code.get(..3).ok_or(ParseError::NotSip)?;
        if !digits.iter().all(u8::is_ascii_digit) || !matches!(code.get(3), None | Some(b' ')) {
            return Err(ParseError::NotSip);
        }
        let code = digits
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        if !(100..=699).contains(&code) {
            return Err(ParseError::NotSip);
        }
        return Ok(StartLine::Response { code });
    }
    let first_sp = find_byte(b' ', line).ok_or(ParseError::NotSip)?;
    let last_sp = memchr::memrchr(b' ', line).ok_or(ParseError::NotSip)?;
    let method = &line[..first_sp];
    let version = &line[last_sp + 1..];
    let uri = line.get(first_sp + 1..last_sp).ok_or(ParseError::NotSip)?;
    let uri_ok =
        uri.contains(&b':') && uri.iter().all(|&b| b > b' ' && b != 0x7f) && uri[0] != b'<';
    if !is_token(method) || !version.eq_ignore_ascii_case(b"SIP/2.0") || !uri_ok {
        return Err(ParseError::NotSip);
    }
    Ok(StartLine::Request {
        method: Method::from_token(method),
        uri,
    })
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

pub(crate) fn parse_content_length(raw: &[u8]) -> Result<usize, ParseError> {
    parse_decimal(trim_lws(raw))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or(ParseError::BadContentLength)
}

fn parse_cseq(raw: &[u8]) -> Result<CSeq<'_>, ParseError> {
    let raw = trim_lws(raw);
    let digits_end = raw
        .iter()
        .position(|b| !b.is_ascii_digit())
        .ok_or(ParseError::BadCSeq)?;
    let seq = parse_decimal(&raw[..digits_end])
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(ParseError::BadCSeq)?;
    let separated = matches!(raw[digits_end], b' ' | b'\t' | b'\r' | b'\n');
    let method = trim_lws(&raw[digits_end..]);
    if !separated || !is_token(method) {
        return Err(ParseError::BadCSeq);
    }
    Ok(CSeq {
        seq,
        method: Method::from_token(method),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request or response with the mandatory headers and `extra` header lines.
    fn message(start: &str, extra: &[&str]) -> Vec<u8> {
        let mut text = format!(
            "{start}\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
             From: <sip:1001@example.com>;tag=f\r\nTo: <sip:1001@example.com>\r\n\
             Call-ID: c1\r\nCSeq: 1 REGISTER\r\n"
        );
        for line in extra {
            text += line;
            text += "\r\n";
        }
        text += "Content-Length: 0\r\n\r\n";
        text.into_bytes()
    }

    fn request(extra: &[&str]) -> Vec<u8> {
        message("REGISTER sip:example.com SIP/2.0", extra)
    }

    fn response(extra: &[&str]) -> Vec<u8> {
        message("SIP/2.0 401 Unauthorized", extra)
    }

    #[test]
    fn repeated_user_agent_is_not_malformed_and_every_value_is_seen() {
        let bytes = request(&[
            "User-Agent: Yealink SIP-T46S",
            "X-Other: 1",
            "user-agent :\t friendly-scanner \r\n\tv1 ",
        ]);
        let view = SipView::parse(&bytes).unwrap();
        assert_eq!(view.user_agent, Some(&b"Yealink SIP-T46S"[..]));
        assert_eq!(
            view.user_agents.values(),
            [&b"Yealink SIP-T46S"[..], &b"friendly-scanner \r\n\tv1"[..]]
        );
        assert_eq!(view.user_agents.count(), 2);
        assert!(!view.user_agents.is_truncated());
    }

    #[test]
    fn user_agents_beyond_the_kept_four_are_counted_and_flag_truncation() {
        let bytes = request(&[
            "User-Agent: a",
            "User-Agent: b",
            "User-Agent:",
            "User-Agent: d",
            "User-Agent: e",
            "User-Agent: f",
        ]);
        let view = SipView::parse(&bytes).unwrap();
        assert_eq!(
            view.user_agents.values(),
            [&b"a"[..], &b"b"[..], &b""[..], &b"d"[..]]
        );
        assert_eq!(view.user_agents.count(), 6);
        assert!(view.user_agents.is_truncated());
    }

    #[test]
    fn message_without_user_agent_has_no_values() {
        let bytes = request(&[]);
        let view = SipView::parse(&bytes).unwrap();
        assert_eq!(view.user_agent, None);
        assert!(view.user_agents.values().is_empty());
        assert_eq!(view.user_agents.count(), 0);
    }

    #[test]
    fn several_www_authenticate_headers_are_legal_and_the_first_is_read() {
        let bytes = response(&[
            "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n-md5\", algorithm=MD5",
            "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n-sha\", algorithm=SHA-256",
        ]);
        let challenge = SipView::parse(&bytes).unwrap().challenge.unwrap();
        assert_eq!(challenge.nonce, Some(&b"n-md5"[..]));
        assert_eq!(challenge.realm, Some(&b"pbx"[..]));
        assert!(!challenge.stale);
    }

    #[test]
    fn www_authenticate_wins_over_an_earlier_proxy_authenticate() {
        let bytes = response(&[
            "proxy-authenticate: Digest realm=\"proxy\", nonce=\"p1\"",
            "Proxy-Authenticate: Digest realm=\"proxy\", nonce=\"p2\"",
            "www-AUTHENTICATE: Digest realm=\"pbx\", nonce=\"w1\", stale=true",
        ]);
        let challenge = SipView::parse(&bytes).unwrap().challenge.unwrap();
        assert_eq!(challenge.nonce, Some(&b"w1"[..]));
        assert!(challenge.stale);
    }

    #[test]
    fn proxy_authenticate_alone_is_the_challenge() {
        let bytes = response(&["Proxy-Authenticate: Digest realm=\"proxy\", nonce=\"p1\""]);
        let challenge = SipView::parse(&bytes).unwrap().challenge.unwrap();
        assert_eq!(challenge.realm, Some(&b"proxy"[..]));
        assert_eq!(SipView::parse(&response(&[])).unwrap().challenge, None);
    }

    #[test]
    fn credentials_carry_nonce_and_response_through_the_view() {
        let bytes = request(&[
            "Authorization: Digest username=\"1001\", realm=\"pbx\", nonce=\"n1\", \
             uri=\"sip:example.com\", response=\"r1\"",
        ]);
        let creds = SipView::parse(&bytes).unwrap().credentials().unwrap();
        assert_eq!(creds.nonce, Some(&b"n1"[..]));
        assert_eq!(creds.response, Some(&b"r1"[..]));
        assert_eq!(creds.realm, Some(&b"pbx"[..]));
    }
}
