//! What a stateless proxy changes in a message it relays (RFC 3261 section 16.11), as pure
//! functions over bytes: sipguard relays the PBX's requests to carriers this way (the outbound
//! path, docs/design.md section 2, "Outbound path").
//!
//! A request loses the Route entries naming sipguard, gains sipguard's Via on top (its branch a
//! keyed hash of what identifies the PBX's transaction, so retransmissions, CANCEL and the ACK of
//! a failure get the same branch without any state), has the PBX's Via annotated with `received`
//! and `rport` (sections 18.2.1, RFC 3581), its Max-Forwards decremented, and, when it may create
//! a dialog, a double Record-Route (one entry facing each side). A response loses sipguard's Via
//! after its branch has been checked against the next one, so only answers to requests
//! sipguard sent reach the PBX. Every other byte, the body included, is copied as it came, so
//! Content-Length stays right. Next hops are IP literals: no name is resolved here.

use crate::field::{find_unquoted, first_value, is_lws, param, trim_lws};
use crate::method::Method;
use crate::view::{SipView, StartLine};
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

/// The start of every branch sipguard writes: RFC 3261's magic cookie, then sipguard's mark.
pub const BRANCH_MARK: &[u8] = b"z9hG4bK-sg-";

/// Max-Forwards written into a request that has none (RFC 3261 section 16.6, step 3).
const DEFAULT_MAX_FORWARDS: u32 = 70;

/// The default port of a `sip:` URI or a Via sent-by.
const SIP_PORT: u16 = 5060;

/// sipguard's two addresses as a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The address carriers see: Via sent-by, and the Record-Route entry facing them.
    pub public: SocketAddr,
    /// The loopback listener the PBX sends to: the Record-Route entry facing the PBX.
    pub inside: SocketAddr,
}

impl Identity {
    /// Whether `hop` is one of sipguard's own addresses.
    pub fn is_me(&self, hop: SocketAddr) -> bool {
        hop == self.public || hop == self.inside
    }
}

/// Why a request cannot be relayed: each is answered to the PBX with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Max-Forwards was 0 (483).
    TooManyHops,
    /// The next hop is sipguard itself (482).
    Loop,
    /// The next hop is not a `sip:` URI with an IP literal over UDP (502).
    Unroutable,
    /// A Route entry or Max-Forwards that does not parse (400).
    Malformed,
}

impl Refusal {
    /// The status and reason phrase of the answer.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Refusal::TooManyHops => (483, "Too Many Hops"),
            Refusal::Loop => (482, "Loop Detected"),
            Refusal::Unroutable => (502, "Bad Gateway"),
            Refusal::Malformed => (400, "Bad Request"),
        }
    }

    /// A short, bounded label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TooManyHops => "too_many_hops",
            Refusal::Loop => "loop",
            Refusal::Unroutable => "unroutable",
            Refusal::Malformed => "malformed",
        }
    }
}

/// A message rewritten for its next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// The message to send.
    pub message: Vec<u8>,
    /// Where to send it.
    pub to: SocketAddr,
}

/// Whether `view` is a response to a request sipguard relayed: its top Via carries sipguard's
/// branch mark. Cheap: a prefix comparison on the parsed view.
pub fn is_relayed_response(view: &SipView<'_>) -> bool {
    view.status().is_some() && view.via_branch.is_some_and(|b| b.starts_with(BRANCH_MARK))
}

/// Relays a request `source` sent to sipguard's loopback listener: see the module comment.
/// `key` keys the branch hash.
pub fn forward_request(
    view: &SipView<'_>,
    source: SocketAddr,
    me: &Identity,
    key: &impl BuildHasher,
) -> Result<Relayed, Refusal> {
    let StartLine::Request { method, uri } = view.start else {
        return Err(Refusal::Malformed);
    };
    let message = view.message;
    let head = Head::read(message);
    let max_forwards = match head.first(b"max-forwards") {
        Some(header) => match parse_u32(trim_lws(&message[header.value.clone()])) {
            Some(0) => return Err(Refusal::TooManyHops),
            Some(n) => Some((header, n - 1)),
            None => return Err(Refusal::Malformed),
        },
        None => None,
    };
    let routes = own_routes(message, &head, me);
    let next = match routes.next_entry {
        Some(entry) => hop(entry)?,
        None => hop(uri)?,
    };
    if me.is_me(next) {
        return Err(Refusal::Loop);
    }
    let first_via = head.first(b"via").ok_or(Refusal::Malformed)?;
    let pbx_via = first_value_range(message, &first_via.value);
    let annotated = annotate_via(&message[pbx_via.clone()], source);
    let reply_to = via_reply_to(&annotated).ok_or(Refusal::Malformed)?;
    let branch = branch(key, view, &annotated, reply_to);

    let mut out = Vec::with_capacity(message.len() + 256);
    out.extend_from_slice(&message[..head.start]);
    // Inserted where the PBX's Via was: Record-Route (unless another one is there to go above)
    // and Max-Forwards (when absent) first, so that the two Via headers stay together.
    let mut record_route = matches!(method, Method::Invite | Method::Subscribe | Method::Refer)
        .then(|| {
            format!(
                "Record-Route: <sip:{};lr>, <sip:{};lr>\r\n",
                me.public, me.inside
            )
        });
    let first_rr = head.first(b"record-route").map(|h| h.line.start);
    let mut inserted = String::new();
    if first_rr.is_none() {
        inserted.push_str(&record_route.take().unwrap_or_default());
    }
    if max_forwards.is_none() {
        let _ = write!(inserted, "Max-Forwards: {DEFAULT_MAX_FORWARDS}\r\n");
    }
    let _ = write!(
        inserted,
        "Via: SIP/2.0/UDP {};branch={}{branch:016x};rport\r\n",
        me.public,
        String::from_utf8_lossy(BRANCH_MARK),
    );
    let mut at = head.start;
    for header in &head.headers {
        out.extend_from_slice(&message[at..header.line.start]);
        at = header.line.end;
        if header.line.start == first_via.line.start {
            out.extend_from_slice(inserted.as_bytes());
            out.extend_from_slice(&message[header.line.start..pbx_via.start]);
            out.extend_from_slice(&annotated);
            out.extend_from_slice(&message[pbx_via.end..header.line.end]);
            continue;
        }
        if Some(header.line.start) == first_rr {
            out.extend_from_slice(record_route.take().unwrap_or_default().as_bytes());
        }
        if let Some((mf, n)) = &max_forwards {
            if mf.line.start == header.line.start {
                out.extend_from_slice(&message[header.line.start..header.value.start]);
                let _ = write!(Bytes(&mut out), " {n}");
                out.extend_from_slice(line_ending(message, header));
                continue;
            }
        }
        match routes.rewrite(header) {
            RouteLine::Keep => out.extend_from_slice(&message[header.line.clone()]),
            RouteLine::Drop => {}
            RouteLine::From(kept) => {
                out.extend_from_slice(b"Route: ");
                out.extend_from_slice(trim_lws(&message[kept..header.value.end]));
                out.extend_from_slice(line_ending(message, header));
            }
        }
    }
    out.extend_from_slice(&message[at..]);
    Ok(Relayed {
        message: out,
        to: next,
    })
}

/// Relays a response to a request sipguard relayed: removes sipguard's Via, after checking
/// that it names sipguard and that its branch is the one sipguard gave the request the next
/// Via belongs to, and returns it with the next Via's reply address. `None` for anything else
/// (a response not meant for sipguard, or forged).
pub fn forward_response(
    view: &SipView<'_>,
    me: &Identity,
    key: &impl BuildHasher,
) -> Option<Relayed> {
    if !is_relayed_response(view) {
        return None;
    }
    let message = view.message;
    let head = Head::read(message);
    let vias: Vec<&Header> = head.named(b"via").collect();
    let first = *vias.first()?;
    let ours = first_value_range(message, &first.value);
    let ours_via = Via::parse(&message[ours.clone()])?;
    if ours_via.sent_by()? != me.public {
        return None;
    }
    // The next Via: after a comma in the same header, else the next Via header.
    let after = &message[ours.end..first.value.end];
    let (next_range, drop_line) = match find_unquoted(after, b',') {
        Some(comma) => {
            let start = ours.end + comma + 1;
            (first_value_range(message, &(start..first.value.end)), false)
        }
        None => {
            let second = vias.get(1)?;
            (first_value_range(message, &second.value), true)
        }
    };
    let next_via = &message[next_range.clone()];
    let reply_to = via_reply_to(next_via)?;
    let expected = branch(key, view, next_via, reply_to);
    let written = ours_via.branch()?.strip_prefix(BRANCH_MARK)?;
    if written != format!("{expected:016x}").as_bytes() {
        return None;
    }
    let mut out = Vec::with_capacity(message.len());
    out.extend_from_slice(&message[..first.line.start]);
    if !drop_line {
        out.extend_from_slice(&message[first.line.start..first.value.start]);
        out.push(b' ');
        out.extend_from_slice(trim_lws(&message[next_range.start..first.value.end]));
        out.extend_from_slice(line_ending(message, first));
    }
    out.extend_from_slice(&message[first.line.end..]);
    Some(Relayed {
        message: out,
        to: reply_to,
    })
}

/// Removes the Route entries naming sipguard from the top of a request's route set (the
/// carrier's in-dialog requests, routed by sipguard's Record-Route); `None` when there are none,
/// so the request goes on as it came. Only leading entries go: RFC 3261 section 16.4.
pub fn strip_own_routes(message: &[u8], me: &Identity) -> Option<Vec<u8>> {
    if !has_route_header(message) {
        return None;
    }
    let head = Head::read(message);
    let routes = own_routes(message, &head, me);
    if routes.removed == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(message.len());
    let mut at = 0;
    for header in &head.headers {
        match routes.rewrite(header) {
            RouteLine::Keep => {}
            RouteLine::Drop => {
                out.extend_from_slice(&message[at..header.line.start]);
                at = header.line.end;
            }
            RouteLine::From(kept) => {
                out.extend_from_slice(&message[at..header.line.start]);
                out.extend_from_slice(b"Route: ");
                out.extend_from_slice(trim_lws(&message[kept..header.value.end]));
                out.extend_from_slice(line_ending(message, header));
                at = header.line.end;
            }
        }
    }
    out.extend_from_slice(&message[at..]);
    Some(out)
}

/// A final response sipguard itself gives to a request it will not relay (RFC 3261 section
/// 8.2.6): its Via headers, From, Call-ID and CSeq copied, To with a tag added if it had none.
/// `None` for an ACK, which is never answered.
pub fn answer(view: &SipView<'_>, status: u16, reason: &str, tag: u64) -> Option<Vec<u8>> {
    if view.method()? == Method::Ack {
        return None;
    }
    let message = view.message;
    let head = Head::read(message);
    let mut out = Vec::with_capacity(512);
    let _ = write!(Bytes(&mut out), "SIP/2.0 {status} {reason}\r\n");
    for header in &head.headers {
        let name = &message[header.name.clone()];
        let copy = [&b"via"[..], b"v", b"from", b"f", b"call-id", b"i", b"cseq"]
            .iter()
            .any(|known| name.eq_ignore_ascii_case(known));
        let to = name.eq_ignore_ascii_case(b"to") || name.eq_ignore_ascii_case(b"t");
        if copy || (to && view.to.tag.is_some()) {
            out.extend_from_slice(&message[header.line.clone()]);
        } else if to {
            out.extend_from_slice(&message[header.line.start..header.value.start]);
            out.extend_from_slice(trim_lws(&message[header.value.clone()]));
            let _ = write!(Bytes(&mut out), ";tag=sg{tag:016x}");
            out.extend_from_slice(line_ending(message, header));
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    Some(out)
}

/// The branch sipguard gives a request whose previous hop's Via (annotated) is `via`: a keyed
/// hash of that Via's branch and reply address and of Call-ID and CSeq number, which a
/// retransmission, the CANCEL and the ACK of a failure share with the request.
fn branch(key: &impl BuildHasher, view: &SipView<'_>, via: &[u8], reply_to: SocketAddr) -> u64 {
    let branch = Via::parse(via)
        .and_then(|via| via.branch())
        .unwrap_or_default();
    key.hash_one((branch, reply_to, view.call_id, view.cseq.seq))
}

/// The PBX's top Via value with `received` set to the source address, and `rport` given the
/// source port when present (RFC 3261 section 18.2.1, RFC 3581 section 4).
fn annotate_via(via: &[u8], source: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(via.len() + 40);
    let params_at = crate::field::find_byte(b';', via).unwrap_or(via.len());
    out.extend_from_slice(trim_lws(&via[..params_at]));
    let mut rport = false;
    let mut params = &via[params_at..];
    while let Some(rest) = params.strip_prefix(b";") {
        let end = find_unquoted(rest, b';').unwrap_or(rest.len());
        let item = &rest[..end];
        let key = trim_lws(&item[..crate::field::find_byte(b'=', item).unwrap_or(item.len())]);
        if key.eq_ignore_ascii_case(b"rport") {
            rport = true;
        } else if !key.eq_ignore_ascii_case(b"received") {
            out.push(b';');
            out.extend_from_slice(trim_lws(item));
        }
        params = &rest[end..];
    }
    let _ = write!(Bytes(&mut out), ";received={}", source.ip());
    if rport {
        let _ = write!(Bytes(&mut out), ";rport={}", source.port());
    }
    out
}

/// Where a response goes back to for Via value `via`: `received` (else the sent-by host) and
/// `rport` (else the sent-by port, else 5060). IP literals only.
fn via_reply_to(via: &[u8]) -> Option<SocketAddr> {
    let via = Via::parse(via)?;
    let ip = match param(via.params, b"received") {
        Some(received) => parse_ip(received)?,
        None => via.sent_by()?.ip(),
    };
    let port = match param(via.params, b"rport").filter(|p| !p.is_empty()) {
        Some(rport) => parse_port(rport)?,
        None => via.port.unwrap_or(SIP_PORT),
    };
    Some(SocketAddr::new(ip, port))
}

/// One Via value: `SIP/2.0/UDP host[:port] *(;param)`.
struct Via<'a> {
    host: &'a [u8],
    port: Option<u16>,
    params: &'a [u8],
}

impl<'a> Via<'a> {
    fn parse(value: &'a [u8]) -> Option<Self> {
        let value = trim_lws(value);
        let protocol_end = value.iter().position(|&b| is_lws(b))?;
        let rest = &value[protocol_end..];
        let params_at = crate::field::find_byte(b';', rest).unwrap_or(rest.len());
        let (host, port) = split_hostport(trim_lws(&rest[..params_at]))?;
        Some(Via {
            host,
            port,
            params: &rest[params_at..],
        })
    }

    fn sent_by(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            parse_ip(self.host)?,
            self.port.unwrap_or(SIP_PORT),
        ))
    }

    fn branch(&self) -> Option<&'a [u8]> {
        param(self.params, b"branch")
    }
}

/// `host[:port]`, the host an IPv6 reference in brackets or anything else up to the colon.
fn split_hostport(hostport: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let (host, rest) = match hostport.strip_prefix(b"[") {
        Some(v6) => {
            let close = crate::field::find_byte(b']', v6)?;
            (&hostport[..close + 2], &v6[close + 1..])
        }
        None => {
            let colon = crate::field::find_byte(b':', hostport).unwrap_or(hostport.len());
            (&hostport[..colon], &hostport[colon..])
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match rest {
        [] => None,
        [b':', digits @ ..] => Some(parse_port(digits)?),
        _ => return None,
    };
    Some((host, port))
}

/// An IP literal, an IPv6 one in brackets or bare.
fn parse_ip(host: &[u8]) -> Option<IpAddr> {
    let host = host
        .strip_prefix(b"[")
        .and_then(|h| h.strip_suffix(b"]"))
        .unwrap_or(host);
    std::str::from_utf8(host).ok()?.parse().ok()
}

fn parse_u32(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn parse_port(digits: &[u8]) -> Option<u16> {
    parse_u32(digits)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&p| p != 0)
}

/// The address a `sip:` URI (or a Route entry `<sip:...>`) sends to: its host, an IP literal,
/// and port (5060 when absent), over UDP.
fn hop(entry: &[u8]) -> Result<SocketAddr, Refusal> {
    let uri = route_uri(entry).ok_or(Refusal::Malformed)?;
    let colon = crate::field::find_byte(b':', uri).ok_or(Refusal::Malformed)?;
    if !uri[..colon].eq_ignore_ascii_case(b"sip") {
        return Err(Refusal::Unroutable);
    }
    let rest = &uri[colon + 1..];
    let end = rest
        .iter()
        .position(|&b| b == b';' || b == b'?')
        .unwrap_or(rest.len());
    let (hostport, params) = rest.split_at(end);
    let hostport = match memchr::memrchr(b'@', hostport) {
        Some(at) => &hostport[at + 1..],
        None => hostport,
    };
    if param(params, b"transport").is_some_and(|t| !t.eq_ignore_ascii_case(b"udp")) {
        return Err(Refusal::Unroutable);
    }
    let (host, port) = split_hostport(hostport).ok_or(Refusal::Malformed)?;
    let ip = parse_ip(host).ok_or(Refusal::Unroutable)?;
    Ok(SocketAddr::new(ip, port.unwrap_or(SIP_PORT)))
}

/// The URI of a Route entry: inside its angle brackets, else the entry itself (a Request-URI).
fn route_uri(entry: &[u8]) -> Option<&[u8]> {
    let entry = trim_lws(entry);
    match crate::field::find_byte(b'<', entry) {
        Some(open) => {
            let inner = &entry[open + 1..];
            Some(trim_lws(&inner[..crate::field::find_byte(b'>', inner)?]))
        }
        None => Some(entry),
    }
}

/// Whether any header line starts with `Route:` (any case): the cheap test before reading the
/// header block.
fn has_route_header(message: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', message).any(|lf| {
        message
            .get(lf + 1..lf + 6)
            .is_some_and(|name| name.eq_ignore_ascii_case(b"route"))
            && message
                .get(lf + 6..)
                .and_then(|rest| rest.iter().find(|&&b| !is_lws(b)))
                == Some(&b':')
    })
}

/// The leading Route entries naming sipguard, and what follows them.
struct OwnRoutes<'a> {
    /// Entries removed.
    removed: usize,
    /// Where the first kept entry starts, when it is inside a Route header some of whose
    /// entries go (the header is rewritten from there).
    cut: Option<(usize, usize)>,
    /// Route headers dropped whole (by the start of their line).
    dropped: Vec<usize>,
    /// The first entry kept: the next hop.
    next_entry: Option<&'a [u8]>,
}

enum RouteLine {
    Keep,
    Drop,
    /// Rewrite the header from this offset of the message.
    From(usize),
}

impl OwnRoutes<'_> {
    fn rewrite(&self, header: &Header) -> RouteLine {
        if self.dropped.contains(&header.line.start) {
            RouteLine::Drop
        } else if let Some((_, from)) = self.cut.filter(|(line, _)| *line == header.line.start) {
            RouteLine::From(from)
        } else {
            RouteLine::Keep
        }
    }
}

fn own_routes<'a>(message: &'a [u8], head: &Head<'_>, me: &Identity) -> OwnRoutes<'a> {
    let mut routes = OwnRoutes {
        removed: 0,
        cut: None,
        dropped: Vec::new(),
        next_entry: None,
    };
    for header in head.named(b"route") {
        let mut at = header.value.start;
        while at < header.value.end {
            let rest = &message[at..header.value.end];
            let end = find_unquoted(rest, b',').unwrap_or(rest.len());
            let entry = &rest[..end];
            if trim_lws(entry).is_empty() {
                at += end + 1;
                continue;
            }
            let mine = matches!(hop(entry), Ok(addr) if me.is_me(addr));
            if !mine {
                routes.next_entry = Some(trim_lws(entry));
                if at > header.value.start {
                    routes.cut = Some((header.line.start, at));
                }
                return routes;
            }
            routes.removed += 1;
            at += end + 1;
        }
        routes.dropped.push(header.line.start);
    }
    routes
}

/// Where the first value of a comma-separated header (Via) lies in the message, LWS trimmed.
fn first_value_range(message: &[u8], value: &Range<usize>) -> Range<usize> {
    let raw = &message[value.clone()];
    let first = first_value(raw);
    let start = value.start + (first.as_ptr() as usize - raw.as_ptr() as usize);
    start..start + first.len()
}

/// The line ending of `header` (CRLF, or a bare LF as written).
fn line_ending<'m>(message: &'m [u8], header: &Header) -> &'m [u8] {
    &message[header.value.end..header.line.end]
}

/// One header of the message: its whole line(s), name and value as offsets into the message.
struct Header {
    /// From the name to past the line ending of its last continuation line.
    line: Range<usize>,
    name: Range<usize>,
    /// After the colon, up to the last line ending.
    value: Range<usize>,
}

/// The header block of a message that parsed as a [`SipView`].
struct Head<'m> {
    message: &'m [u8],
    /// Where the first header starts (after the start line).
    start: usize,
    headers: Vec<Header>,
}

impl<'m> Head<'m> {
    fn read(message: &'m [u8]) -> Self {
        let mut pos = memchr::memchr(b'\n', message).map_or(message.len(), |lf| lf + 1);
        let start = pos;
        let mut headers: Vec<Header> = Vec::with_capacity(16);
        while pos < message.len() {
            let lf = memchr::memchr(b'\n', &message[pos..]).map_or(message.len(), |i| pos + i);
            let content_end = if lf > pos && message[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            let line_end = (lf + 1).min(message.len());
            if content_end == pos {
                break;
            }
            if matches!(message[pos], b' ' | b'\t') {
                if let Some(last) = headers.last_mut() {
                    last.line.end = line_end;
                    last.value.end = content_end;
                }
            } else if let Some(colon) = memchr::memchr(b':', &message[pos..content_end]) {
                let name = trim_lws(&message[pos..pos + colon]);
                let name_start = name.as_ptr() as usize - message.as_ptr() as usize;
                headers.push(Header {
                    line: pos..line_end,
                    name: name_start..name_start + name.len(),
                    value: pos + colon + 1..content_end,
                });
            }
            pos = line_end;
        }
        Head {
            message,
            start,
            headers,
        }
    }

    /// The headers named `name` (or its compact form), in order.
    fn named<'h>(&'h self, name: &'static [u8]) -> impl Iterator<Item = &'h Header> + 'h {
        let compact: &'static [u8] = match name {
            b"via" => b"v",
            _ => b"",
        };
        self.headers.iter().filter(move |h| {
            let written = &self.message[h.name.clone()];
            written.eq_ignore_ascii_case(name)
                || (!compact.is_empty() && written.eq_ignore_ascii_case(compact))
        })
    }

    fn first(&self, name: &'static [u8]) -> Option<&Header> {
        self.named(name).next()
    }
}

/// `fmt::Write` into a byte vector.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasherDefault;

    type Key = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

    const PBX: &str = "127.0.0.1:5080";

    fn me() -> Identity {
        Identity {
            public: "203.0.113.5:5060".parse().unwrap(),
            inside: "127.0.0.1:5070".parse().unwrap(),
        }
    }

    fn pbx() -> SocketAddr {
        PBX.parse().unwrap()
    }

    /// An INVITE as Asterisk sends it to its outbound proxy, with `extra` header lines.
    fn invite(extra: &[&str]) -> Vec<u8> {
        request(
            "INVITE sip:+15551234@198.51.100.7:5060 SIP/2.0",
            "INVITE",
            extra,
        )
    }

    fn request(start: &str, method: &str, extra: &[&str]) -> Vec<u8> {
        let body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n";
        let mut text = format!(
            "{start}\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;rport;branch=z9hG4bKPj1\r\n\
             From: <sip:100@127.0.0.1>;tag=f1\r\nTo: <sip:+15551234@198.51.100.7>\r\n\
             Call-ID: call-1\r\nCSeq: 7 {method}\r\n"
        );
        for line in extra {
            text += line;
            text += "\r\n";
        }
        text += &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        text.into_bytes()
    }

    fn forward(message: &[u8]) -> Result<Relayed, Refusal> {
        let view = SipView::parse(message).unwrap();
        forward_request(&view, pbx(), &me(), &Key::default())
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// The header lines named `name` (as written, any case).
    fn lines_named(message: &str, name: &str) -> Vec<String> {
        message
            .split("\r\n")
            .take_while(|line| !line.is_empty())
            .filter(|line| {
                line.split(':')
                    .next()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
            })
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn own_route_entries_go_and_the_request_uri_is_the_next_hop() {
        let out = forward(&invite(&[
            "Route: <sip:127.0.0.1:5070;lr>",
            "Max-Forwards: 70",
        ]))
        .unwrap();
        assert_eq!(out.to, "198.51.100.7:5060".parse().unwrap());
        let message = text(&out.message);
        assert!(lines_named(&message, "route").is_empty(), "{message}");
    }

    #[test]
    fn a_route_entry_after_sipguards_own_is_kept_and_is_the_next_hop() {
        let out = forward(&invite(&[
            "Route: <sip:127.0.0.1:5070;lr>, <sip:203.0.113.5;lr>,<sip:192.0.2.9:5080;lr;x=\"a,b\">",
            "Route: <sip:192.0.2.10;lr>",
        ]))
        .unwrap();
        assert_eq!(out.to, "192.0.2.9:5080".parse().unwrap());
        assert_eq!(
            lines_named(&text(&out.message), "route"),
            [
                "Route: <sip:192.0.2.9:5080;lr;x=\"a,b\">",
                "Route: <sip:192.0.2.10;lr>"
            ]
        );
    }

    #[test]
    fn sipguard_named_further_down_the_route_set_is_not_removed() {
        let out = forward(&invite(&[
            "Route: <sip:192.0.2.9;lr>",
            "Route: <sip:127.0.0.1:5070;lr>",
        ]))
        .unwrap();
        assert_eq!(out.to, "192.0.2.9:5060".parse().unwrap());
        assert_eq!(lines_named(&text(&out.message), "route").len(), 2);
    }

    #[test]
    fn sipguards_via_goes_on_top_and_the_pbxs_gets_received_and_rport() {
        let out = forward(&invite(&["Route: <sip:127.0.0.1:5070;lr>"])).unwrap();
        let message = text(&out.message);
        let vias = lines_named(&message, "via");
        assert_eq!(vias.len(), 2, "{message}");
        assert!(
            vias[0].starts_with("Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK-sg-"),
            "{}",
            vias[0]
        );
        assert!(vias[0].ends_with(";rport"));
        assert_eq!(
            vias[1],
            "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKPj1;received=127.0.0.1;rport=5080"
        );
        let view = SipView::parse(&out.message).unwrap();
        assert!(view.via_branch.unwrap().starts_with(BRANCH_MARK));
    }

    #[test]
    fn received_is_added_even_without_rport_and_rport_only_when_asked_for() {
        let message = invite(&[]);
        let message = text(&message).replace(";rport;branch=z9hG4bKPj1", ";branch=z9hG4bKPj1");
        let view = SipView::parse(message.as_bytes()).unwrap();
        let source: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let out = forward_request(&view, source, &me(), &Key::default()).unwrap();
        assert_eq!(
            lines_named(&text(&out.message), "via")[1],
            "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKPj1;received=127.0.0.1"
        );
    }

    #[test]
    fn the_branch_is_the_same_for_a_retransmission_and_the_cancel_and_differs_per_transaction() {
        let branch = |message: &[u8]| {
            let out = forward(message).unwrap();
            let view = SipView::parse(&out.message).unwrap();
            view.via_branch.unwrap().to_vec()
        };
        let first = branch(&invite(&[]));
        assert_eq!(first, branch(&invite(&[])));
        let cancel = request(
            "CANCEL sip:+15551234@198.51.100.7:5060 SIP/2.0",
            "CANCEL",
            &[],
        );
        assert_eq!(first, branch(&cancel));
        let other = text(&invite(&[])).replace("z9hG4bKPj1", "z9hG4bKPj2");
        assert_ne!(first, branch(other.as_bytes()));
    }

    #[test]
    fn max_forwards_is_decremented_added_when_absent_and_refused_at_zero() {
        let out = forward(&invite(&["Max-Forwards: 70"])).unwrap();
        assert_eq!(
            lines_named(&text(&out.message), "max-forwards"),
            ["Max-Forwards: 69"]
        );
        let out = forward(&invite(&[])).unwrap();
        assert_eq!(
            lines_named(&text(&out.message), "max-forwards"),
            ["Max-Forwards: 70"]
        );
        assert_eq!(
            forward(&invite(&["Max-Forwards: 0"])),
            Err(Refusal::TooManyHops)
        );
        assert_eq!(
            forward(&invite(&["Max-Forwards: many"])),
            Err(Refusal::Malformed)
        );
        assert_eq!(Refusal::TooManyHops.status().0, 483);
    }

    #[test]
    fn dialog_creating_requests_get_a_double_record_route_above_any_other() {
        let out = forward(&invite(&[])).unwrap();
        assert_eq!(
            lines_named(&text(&out.message), "record-route"),
            ["Record-Route: <sip:203.0.113.5:5060;lr>, <sip:127.0.0.1:5070;lr>"]
        );
        let out = forward(&invite(&["Record-Route: <sip:192.0.2.1;lr>"])).unwrap();
        assert_eq!(
            lines_named(&text(&out.message), "record-route"),
            [
                "Record-Route: <sip:203.0.113.5:5060;lr>, <sip:127.0.0.1:5070;lr>",
                "Record-Route: <sip:192.0.2.1;lr>"
            ]
        );
        let register = request("REGISTER sip:198.51.100.7 SIP/2.0", "REGISTER", &[]);
        let out = forward(&register).unwrap();
        assert!(lines_named(&text(&out.message), "record-route").is_empty());
        assert_eq!(out.to, "198.51.100.7:5060".parse().unwrap());
    }

    #[test]
    fn nothing_else_changes_and_the_body_matches_its_content_length() {
        let original = invite(&[
            "Route: <sip:127.0.0.1:5070;lr>",
            "Max-Forwards: 70",
            "X-Keep: as  written",
        ]);
        let out = forward(&original).unwrap();
        let view = SipView::parse(&out.message).unwrap();
        let before = SipView::parse(&original).unwrap();
        assert_eq!(view.body, before.body);
        assert_eq!(view.content_length, Some(before.body.len()));
        assert_eq!(view.message.len(), out.message.len());
        let kept = |m: &str| {
            m.split("\r\n")
                .filter(|l| {
                    let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
                    !["via", "route", "record-route", "max-forwards"].contains(&name.as_str())
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(kept(&text(&out.message)), kept(&text(&original)));
    }

    #[test]
    fn next_hops_that_are_names_other_schemes_or_sipguard_itself_are_refused() {
        let named = request("INVITE sip:1@carrier.example.com SIP/2.0", "INVITE", &[]);
        assert_eq!(forward(&named), Err(Refusal::Unroutable));
        let tcp = request(
            "INVITE sip:1@198.51.100.7;transport=tcp SIP/2.0",
            "INVITE",
            &[],
        );
        assert_eq!(forward(&tcp), Err(Refusal::Unroutable));
        let tel = request("INVITE tel:+15551234 SIP/2.0", "INVITE", &[]);
        assert_eq!(forward(&tel), Err(Refusal::Unroutable));
        let looped = request("INVITE sip:1@203.0.113.5 SIP/2.0", "INVITE", &[]);
        assert_eq!(forward(&looped), Err(Refusal::Loop));
        let v6 = request("INVITE sip:1@[2001:db8::7]:5062 SIP/2.0", "INVITE", &[]);
        assert_eq!(
            forward(&v6).unwrap().to,
            "[2001:db8::7]:5062".parse().unwrap()
        );
    }

    /// The response a carrier gives to `relayed`, its Via headers copied as RFC 3261 says.
    fn response_to(relayed: &[u8], status: &str) -> Vec<u8> {
        let message = text(relayed);
        let mut out = format!("SIP/2.0 {status}\r\n");
        for line in message.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
            let name = line.split(':').next().unwrap().to_ascii_lowercase();
            if ["via", "from", "call-id", "cseq"].contains(&name.as_str()) {
                out += line;
                out += "\r\n";
            } else if name == "to" {
                out += line;
                out += ";tag=carrier\r\n";
            }
        }
        out += "Content-Length: 0\r\n\r\n";
        out.into_bytes()
    }

    #[test]
    fn a_response_loses_sipguards_via_and_goes_to_the_pbxs_received_and_rport() {
        let out = forward(&invite(&[])).unwrap();
        let response = response_to(&out.message, "200 OK");
        let view = SipView::parse(&response).unwrap();
        assert!(is_relayed_response(&view));
        let back = forward_response(&view, &me(), &Key::default()).unwrap();
        assert_eq!(back.to, pbx());
        let message = text(&back.message);
        assert_eq!(
            lines_named(&message, "via"),
            ["Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKPj1;received=127.0.0.1;rport=5080"]
        );
        // Both Via values in one header, as a carrier may write them.
        let joined = text(&response)
            .replacen("\r\nVia: ", ", ", 2)
            .replacen(", ", "\r\nVia: ", 1);
        let view = SipView::parse(joined.as_bytes()).unwrap();
        let back = forward_response(&view, &me(), &Key::default()).unwrap();
        assert_eq!(
            lines_named(&text(&back.message), "via"),
            lines_named(&message, "via")
        );
    }

    #[test]
    fn a_response_with_a_branch_sipguard_did_not_give_is_not_relayed() {
        let out = forward(&invite(&[])).unwrap();
        let response = text(&response_to(&out.message, "200 OK"));
        // Another PBX transaction's Via under sipguard's: the hash no longer matches.
        let forged = response.replace("z9hG4bKPj1", "z9hG4bKPj9");
        let view = SipView::parse(forged.as_bytes()).unwrap();
        assert_eq!(forward_response(&view, &me(), &Key::default()), None);
        // Sent elsewhere: the next Via's reply address changed.
        let forged = response.replace("received=127.0.0.1", "received=192.0.2.66");
        let view = SipView::parse(forged.as_bytes()).unwrap();
        assert_eq!(forward_response(&view, &me(), &Key::default()), None);
        // Another key (another sipguard process) made it.
        let view = SipView::parse(response.as_bytes()).unwrap();
        let other = std::hash::RandomState::new();
        assert_eq!(forward_response(&view, &me(), &other), None);
    }

    #[test]
    fn the_carriers_in_dialog_request_loses_both_record_routed_entries() {
        let bye = request(
            "BYE sip:100@127.0.0.1:5080 SIP/2.0",
            "BYE",
            &["Route: <sip:203.0.113.5:5060;lr>, <sip:127.0.0.1:5070;lr>"],
        );
        let stripped = strip_own_routes(&bye, &me()).unwrap();
        let message = text(&stripped);
        assert!(lines_named(&message, "route").is_empty(), "{message}");
        assert_eq!(
            stripped.len(),
            bye.len() - "Route: <sip:203.0.113.5:5060;lr>, <sip:127.0.0.1:5070;lr>\r\n".len()
        );
        SipView::parse(&stripped).unwrap();
        let plain = request(
            "BYE sip:100@127.0.0.1:5080 SIP/2.0",
            "BYE",
            &["Record-Route: <sip:127.0.0.1:5070;lr>"],
        );
        assert_eq!(strip_own_routes(&plain, &me()), None);
        let foreign = request(
            "BYE sip:100@127.0.0.1:5080 SIP/2.0",
            "BYE",
            &["route : <sip:192.0.2.1;lr>"],
        );
        assert_eq!(strip_own_routes(&foreign, &me()), None);
    }

    #[test]
    fn sipguards_answer_copies_the_transaction_and_tags_to() {
        let original = invite(&["Route: <sip:127.0.0.1:5070;lr>"]);
        let view = SipView::parse(&original).unwrap();
        let reply = answer(&view, 403, "Forbidden", 0xabc).unwrap();
        let parsed = SipView::parse(&reply).unwrap();
        assert_eq!(parsed.status(), Some(403));
        assert_eq!(parsed.via, view.via);
        assert_eq!(parsed.call_id, view.call_id);
        assert_eq!(parsed.cseq, view.cseq);
        assert_eq!(parsed.to.tag, Some(&b"sg0000000000000abc"[..]));
        assert_eq!(parsed.body, b"");
        let ack = request("ACK sip:+15551234@198.51.100.7:5060 SIP/2.0", "ACK", &[]);
        assert_eq!(
            answer(&SipView::parse(&ack).unwrap(), 403, "Forbidden", 1),
            None
        );
    }
}
