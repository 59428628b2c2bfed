//! A SIP user agent of the tests' own, for what SIPp cannot script: thirty phones of one office
//! driven in step (their first REGISTERs within a millisecond), a phone that subscribes to sixty
//! BLF keys the moment it has registered, and password crackers that answer each challenge with a
//! real MD5 digest (support/cracker.rs).
//!
//! Over UDP a caller may ask for RFC 3261's retransmissions (Timer E: 500 ms, doubling up to 4 s),
//! as a phone does; a cracker never retransmits. Over TCP it is one connection, messages framed by
//! Content-Length. Only what the tests read is parsed: status, Call-ID, CSeq, digest challenge.

use anyhow::{bail, Context};
use md5::{Digest, Md5};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// RFC 3261's T1, the first retransmission interval, and T2, where its doubling stops.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

/// A string no other call of this test process has: Call-IDs, tags, branches, cnonces.
pub fn unique(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Call-ID no other call of this test process has.
pub fn call_id(what: &str) -> String {
    format!("{}@sipguard-e2e", unique(what))
}

/// One request this client sends, kept for retransmission and for matching its answer.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method.
    pub method: String,
    /// Call-ID.
    pub call_id: String,
    /// CSeq number.
    pub cseq: u32,
    /// The Request-URI, which the digest covers.
    uri: String,
    text: String,
}

impl Request {
    /// Reads a request written by hand (a phone's in-dialog BYE); `None` without a request line,
    /// Call-ID or CSeq.
    pub fn from_text(text: &str) -> Option<Self> {
        let mut line = text.lines().next()?.split(' ');
        let (method, uri) = (line.next()?, line.next()?);
        let (cseq, _) = header(text, "CSeq")?.split_once(' ')?;
        Some(Request {
            method: method.to_owned(),
            call_id: header(text, "Call-ID")?.to_owned(),
            cseq: cseq.trim().parse().ok()?,
            uri: uri.to_owned(),
            text: text.to_owned(),
        })
    }

    /// The whole message.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The request in the dialog a call's answer opened: `to_tag` added to its To.
    pub fn with_to_tag(mut self, to_tag: &str) -> Self {
        if let Some(start) = self.text.find("\r\nTo: ") {
            let end = start + 2 + self.text[start + 2..].find("\r\n").unwrap_or(0);
            self.text.insert_str(end, &format!(";tag={to_tag}"));
        }
        self
    }
}

/// A final response, as much of it as the tests read.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Call-ID.
    pub call_id: String,
    /// CSeq number and method.
    pub cseq: (u32, String),
    text: String,
}

impl Response {
    /// Reads a response; `None` for a request or anything unreadable.
    pub fn parse(text: &str) -> Option<Self> {
        let status = text.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()?;
        let call_id = header(text, "Call-ID")?.to_owned();
        let (number, method) = header(text, "CSeq")?.split_once(' ')?;
        Some(Response {
            status,
            call_id,
            cseq: (number.trim().parse().ok()?, method.trim().to_owned()),
            text: text.to_owned(),
        })
    }

    /// The digest challenge it carries (WWW-Authenticate or Proxy-Authenticate).
    pub fn challenge(&self) -> Option<Challenge> {
        header(&self.text, "WWW-Authenticate")
            .or_else(|| header(&self.text, "Proxy-Authenticate"))
            .and_then(Challenge::parse)
    }

    /// The tag of its To header (a dialog's remote tag).
    pub fn to_tag(&self) -> Option<&str> {
        let to = header(&self.text, "To")?;
        let (_, tag) = to.split_once(";tag=")?;
        Some(tag.split(';').next().unwrap_or(tag).trim())
    }

    /// The reason phrase of its status line.
    pub fn reason(&self) -> &str {
        let line = self.text.lines().next().unwrap_or_default();
        line.get(12..).unwrap_or_default().trim()
    }

    /// Whether it is the final answer to `request` (same Call-ID, CSeq and method).
    pub fn answers(&self, request: &Request) -> bool {
        self.call_id == request.call_id && self.cseq == (request.cseq, request.method.clone())
    }
}

/// The value of the first header `name` (case-insensitive) in a message's head.
pub fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split("\r\n")
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
}

/// A digest challenge (RFC 2617, MD5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The realm.
    pub realm: String,
    /// The nonce the answer must use.
    pub nonce: String,
    /// Echoed back when present.
    pub opaque: Option<String>,
    /// Whether `qop=auth` was offered (then the answer carries nc and cnonce).
    pub qop_auth: bool,
}

impl Challenge {
    /// Reads `Digest realm="...", nonce="...", ...`.
    pub fn parse(value: &str) -> Option<Self> {
        let params = value.trim().strip_prefix("Digest")?;
        let mut realm = None;
        let mut nonce = None;
        let mut opaque = None;
        let mut qop_auth = false;
        for param in split_params(params) {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"').to_owned();
            match key.trim().to_ascii_lowercase().as_str() {
                "realm" => realm = Some(value),
                "nonce" => nonce = Some(value),
                "opaque" => opaque = Some(value),
                "qop" => qop_auth = value.split(',').any(|q| q.trim() == "auth"),
                _ => {}
            }
        }
        Some(Challenge {
            realm: realm?,
            nonce: nonce?,
            opaque,
            qop_auth,
        })
    }

    /// The `Authorization` header line answering this challenge for `method` on `uri` as
    /// `user` with `password` (`cnonce` is used only with qop).
    pub fn authorization(
        &self,
        method: &str,
        uri: &str,
        user: &str,
        password: &str,
        cnonce: &str,
    ) -> String {
        let ha1 = md5_hex(&format!("{user}:{}:{password}", self.realm));
        let ha2 = md5_hex(&format!("{method}:{uri}"));
        let (response, qop) = if self.qop_auth {
            let nc = "00000001";
            let response = md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce));
            (
                response,
                format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""),
            )
        } else {
            (
                md5_hex(&format!("{ha1}:{}:{ha2}", self.nonce)),
                String::new(),
            )
        };
        let opaque = self
            .opaque
            .as_ref()
            .map(|o| format!(", opaque=\"{o}\""))
            .unwrap_or_default();
        format!(
            "Authorization: Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5{qop}{opaque}",
            self.realm, self.nonce
        )
    }
}

/// Splits digest parameters at the commas outside quotes.
fn split_params(params: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in params.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&params[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&params[start..]);
    parts
}

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// How a registration ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// 200 to the credentials.
    Registered,
    /// A final answer other than 200 to the credentials, or to the first REGISTER.
    Refused(u16),
    /// No answer to a REGISTER in time (sipguard dropped it, or every retransmission).
    Unanswered,
}

/// What one wait for a message brought.
enum Incoming {
    Message(String),
    Nothing,
    Closed,
}

enum Link {
    Udp(UdpSocket),
    Tcp { stream: TcpStream, buffer: Vec<u8> },
}

/// One SIP client: a user (with its password) on a socket of its own, talking to `server`.
pub struct Ua {
    link: Link,
    local: SocketAddr,
    server: SocketAddr,
    user: String,
    password: String,
    user_agent: String,
    tag: String,
    /// The Call-ID and last CSeq of its registrations: a phone keeps both across them.
    register_call_id: String,
    cseq: u32,
}

impl std::fmt::Debug for Ua {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ua")
            .field("user", &self.user)
            .field("local", &self.local)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Ua {
    /// A client for `user` on a UDP socket bound to `local` (port 0 for a free one).
    pub fn udp(
        local: SocketAddr,
        server: SocketAddr,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(local).with_context(|| format!("cannot bind {local}"))?;
        let local = socket.local_addr()?;
        Ok(Self::new(Link::Udp(socket), local, server, user, password))
    }

    /// A client for `user` on one TCP connection from `ip` to `server`.
    pub fn tcp(ip: IpAddr, server: SocketAddr, user: &str, password: &str) -> anyhow::Result<Self> {
        let domain = socket2::Domain::for_address(server);
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        socket.bind(&SocketAddr::new(ip, 0).into())?;
        socket
            .connect(&server.into())
            .with_context(|| format!("cannot connect to {server}"))?;
        let stream = TcpStream::from(socket);
        let local = stream.local_addr()?;
        let link = Link::Tcp {
            stream,
            buffer: Vec::new(),
        };
        Ok(Self::new(link, local, server, user, password))
    }

    fn new(link: Link, local: SocketAddr, server: SocketAddr, user: &str, password: &str) -> Self {
        Ua {
            link,
            local,
            server,
            user: user.to_owned(),
            password: password.to_owned(),
            user_agent: "sipguard-e2e-ua".to_owned(),
            tag: unique("tag"),
            register_call_id: call_id("reg"),
            cseq: 0,
        }
    }

    /// Sends `user_agent` as its User-Agent.
    pub fn with_user_agent(mut self, user_agent: &str) -> Self {
        self.user_agent = user_agent.to_owned();
        self
    }

    /// The user it registers as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// A request from this client. `target` names the user of the Request-URI and To (a BLF
    /// key); `None` makes it about the client's own user with the server's URI (a REGISTER).
    pub fn request(
        &self,
        method: &str,
        target: Option<&str>,
        call_id: &str,
        cseq: u32,
        extra: &[String],
    ) -> Request {
        let host = self.server.ip();
        let host = match host {
            IpAddr::V4(_) => host.to_string(),
            IpAddr::V6(_) => format!("[{host}]"),
        };
        let (uri, to) = match target {
            Some(user) => (format!("sip:{user}@{}", self.server), user),
            None => (format!("sip:{}", self.server), self.user.as_str()),
        };
        let (transport, contact_param) = match self.link {
            Link::Udp(_) => ("UDP", ""),
            Link::Tcp { .. } => ("TCP", ";transport=tcp"),
        };
        let extra: String = extra.iter().map(|line| format!("{line}\r\n")).collect();
        let text = format!(
            "{method} {uri} SIP/2.0\r\n\
             Via: SIP/2.0/{transport} {local};branch=z9hG4bK-{branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{host}>;tag={tag}\r\n\
             To: <sip:{to}@{host}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:{user}@{local}{contact_param}>\r\n\
             User-Agent: {user_agent}\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n",
            local = self.local,
            branch = unique("branch"),
            user = self.user,
            tag = self.tag,
            user_agent = self.user_agent,
        );
        Request {
            method: method.to_owned(),
            call_id: call_id.to_owned(),
            cseq,
            uri,
            text,
        }
    }

    /// A REGISTER of its own user, with the given credentials line if any.
    pub fn register_request(
        &self,
        call_id: &str,
        cseq: u32,
        authorization: Option<&str>,
    ) -> Request {
        let mut extra = vec!["Expires: 600".to_owned()];
        extra.extend(authorization.map(str::to_owned));
        self.request("REGISTER", None, call_id, cseq, &extra)
    }

    /// The credentials answering `challenge` with `password` for `request`'s method and URI.
    pub fn authorization(
        &self,
        request: &Request,
        challenge: &Challenge,
        password: &str,
    ) -> String {
        challenge.authorization(
            &request.method,
            &request.uri,
            &self.user,
            password,
            &unique("cnonce"),
        )
    }

    /// Sends `request` once.
    pub fn send(&mut self, request: &Request) -> anyhow::Result<()> {
        self.send_text(&request.text)
    }

    /// Waits up to `timeout` for the final responses to `requests` (provisional ones and
    /// anything else are read and passed over), retransmitting the unanswered ones over UDP when
    /// `retransmit` is set. One answer per request, `None` where none came.
    pub fn responses(
        &mut self,
        requests: &[Request],
        retransmit: bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Option<Response>>> {
        let retransmit = retransmit && matches!(self.link, Link::Udp(_));
        let deadline = Instant::now() + timeout;
        let mut answers: Vec<Option<Response>> = vec![None; requests.len()];
        let mut interval = T1;
        let mut resend_at = Instant::now() + interval;
        while answers.iter().any(Option::is_none) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if retransmit && now >= resend_at {
                for (request, _) in requests.iter().zip(&answers).filter(|(_, a)| a.is_none()) {
                    self.send(request)?;
                }
                interval = (interval * 2).min(T2);
                resend_at = now + interval;
            }
            let until = if retransmit {
                deadline.min(resend_at)
            } else {
                deadline
            };
            match self.receive(until.saturating_duration_since(now))? {
                Incoming::Message(text) => {
                    let Some(response) = Response::parse(&text).filter(|r| r.status >= 200) else {
                        continue;
                    };
                    if let Some(slot) =
                        requests
                            .iter()
                            .zip(answers.iter_mut())
                            .find_map(|(req, slot)| {
                                (response.answers(req) && slot.is_none()).then_some(slot)
                            })
                    {
                        *slot = Some(response);
                    }
                }
                Incoming::Nothing => {}
                Incoming::Closed => bail!("{} closed the connection", self.server),
            }
        }
        Ok(answers)
    }

    /// Sends `request` and waits for its final response (see [`Ua::responses`]).
    pub fn transact(
        &mut self,
        request: &Request,
        retransmit: bool,
        timeout: Duration,
    ) -> anyhow::Result<Option<Response>> {
        self.send(request)?;
        Ok(self
            .responses(std::slice::from_ref(request), retransmit, timeout)?
            .remove(0))
    }

    /// The first REGISTER of its next registration (no credentials), to send with [`Ua::send`]
    /// and finish with [`Ua::finish_register`]: many phones can send theirs in one burst.
    pub fn next_register(&mut self) -> Request {
        self.cseq += 1;
        self.register_request(&self.register_call_id, self.cseq, None)
    }

    /// Finishes a registration whose first REGISTER `first` was sent: waits for the challenge, answers it with the
    /// password, waits for the verdict, all within `timeout` and retransmitting as a phone does.
    pub fn finish_register(
        &mut self,
        first: &Request,
        timeout: Duration,
    ) -> anyhow::Result<Registration> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let Some(challenged) = self
            .responses(std::slice::from_ref(first), true, left())?
            .remove(0)
        else {
            return Ok(Registration::Unanswered);
        };
        let challenge = match (challenged.status, challenged.challenge()) {
            (200, _) => return Ok(Registration::Registered),
            (401 | 407, Some(challenge)) => challenge,
            (status, _) => return Ok(Registration::Refused(status)),
        };
        let request = self.answer_register(&challenge);
        Ok(match self.transact(&request, true, left())? {
            Some(response) if response.status == 200 => Registration::Registered,
            Some(response) => Registration::Refused(response.status),
            None => Registration::Unanswered,
        })
    }

    /// The next REGISTER of its registration, answering `challenge` with its password.
    pub fn answer_register(&mut self, challenge: &Challenge) -> Request {
        self.cseq += 1;
        let unsigned = self.register_request(&self.register_call_id, self.cseq, None);
        let authorization = self.authorization(&unsigned, challenge, &self.password.clone());
        self.register_request(&self.register_call_id, self.cseq, Some(&authorization))
    }

    /// The address it sends from.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Whether it speaks over a connection (TCP, or TCP into a TLS tunnel).
    pub fn is_stream(&self) -> bool {
        matches!(self.link, Link::Tcp { .. })
    }

    /// Sends `text` (a whole message, such as a response it wrote) once.
    pub fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        match &mut self.link {
            Link::Udp(socket) => {
                socket
                    .send_to(text.as_bytes(), self.server)
                    .with_context(|| format!("send to {}", self.server))?;
            }
            Link::Tcp { stream, .. } => stream
                .write_all(text.as_bytes())
                .with_context(|| format!("write to {}", self.server))?,
        }
        Ok(())
    }

    /// Waits up to `timeout` for one message, request or response; `None` if none came, an
    /// error if the connection closed.
    pub fn receive_message(&mut self, timeout: Duration) -> anyhow::Result<Option<String>> {
        match self.receive(timeout)? {
            Incoming::Message(text) => Ok(Some(text)),
            Incoming::Nothing => Ok(None),
            Incoming::Closed => bail!("{} closed the connection", self.server),
        }
    }

    /// Registers (challenge, credentials, verdict) within `timeout`.
    pub fn register(&mut self, timeout: Duration) -> anyhow::Result<Registration> {
        let first = self.next_register();
        self.send(&first)?;
        self.finish_register(&first, timeout)
    }

    /// Sends a SUBSCRIBE for BLF key `key` (the dialog event package, a dialog of its own) and
    /// returns it; [`Ua::responses`] collects the answers.
    pub fn subscribe(&mut self, key: &str) -> anyhow::Result<Request> {
        let extra = [
            "Event: dialog".to_owned(),
            "Accept: application/dialog-info+xml".to_owned(),
            "Expires: 600".to_owned(),
        ];
        let request = self.request("SUBSCRIBE", Some(key), &call_id("blf"), 1, &extra);
        self.send(&request)?;
        Ok(request)
    }

    /// Waits up to `timeout` for one message.
    fn receive(&mut self, timeout: Duration) -> anyhow::Result<Incoming> {
        let timeout = timeout.max(Duration::from_millis(1));
        match &mut self.link {
            Link::Udp(socket) => {
                socket.set_read_timeout(Some(timeout))?;
                let mut buf = vec![0u8; 65536];
                match socket.recv_from(&mut buf) {
                    Ok((n, _)) => Ok(Incoming::Message(
                        String::from_utf8_lossy(&buf[..n]).into_owned(),
                    )),
                    Err(e) if is_timeout(&e) => Ok(Incoming::Nothing),
                    // An ICMP error from an earlier send: nothing to read.
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Incoming::Nothing),
                    Err(e) => Err(e).context("recv"),
                }
            }
            Link::Tcp { stream, buffer } => {
                let deadline = Instant::now() + timeout;
                loop {
                    if let Some(message) = take_frame(buffer) {
                        return Ok(Incoming::Message(message));
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Incoming::Nothing);
                    }
                    stream.set_read_timeout(Some(left))?;
                    let mut chunk = [0u8; 8192];
                    match stream.read(&mut chunk) {
                        Ok(0) => return Ok(Incoming::Closed),
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        Err(e) if is_timeout(&e) => return Ok(Incoming::Nothing),
                        Err(e)
                            if matches!(
                                e.kind(),
                                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                            ) =>
                        {
                            return Ok(Incoming::Closed)
                        }
                        Err(e) => return Err(e).context("read"),
                    }
                }
            }
        }
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Takes one message framed by Content-Length off the front of `buffer` (keep-alive CRLFs
/// before it are dropped); `None` until a whole one is there.
fn take_frame(buffer: &mut Vec<u8>) -> Option<String> {
    let start = buffer
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buffer.len());
    buffer.drain(..start);
    let head_end = buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let body: usize = header(&head, "Content-Length")
        .or_else(|| header(&head, "l"))
        .and_then(|len| len.parse().ok())
        .unwrap_or(0);
    if buffer.len() < head_end + body {
        return None;
    }
    let message: Vec<u8> = buffer.drain(..head_end + body).collect();
    Some(String::from_utf8_lossy(&message).into_owned())
}

#[test]
fn digest_answers_match_rfc_2617s_example() {
    // RFC 2617 section 3.5, with the method and URI of its example.
    let challenge = Challenge::parse(
        "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
         nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
    )
    .expect("a challenge");
    assert!(challenge.qop_auth);
    let line = challenge.authorization(
        "GET",
        "/dir/index.html",
        "Mufasa",
        "Circle Of Life",
        "0a4f113b",
    );
    assert!(
        line.contains("response=\"6629fae49393a05397450978507c4ef1\""),
        "{line}"
    );
    assert!(
        line.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""),
        "{line}"
    );
}

#[test]
fn responses_and_tcp_frames_are_read() {
    let text = "SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 127.0.0.1:5\r\n\
        Call-ID: abc@x\r\nCSeq: 2 REGISTER\r\n\
        WWW-Authenticate: Digest realm=\"sipguard.test\", nonce=\"n1\", qop=\"auth\"\r\n\
        Content-Length: 0\r\n\r\n";
    let response = Response::parse(text).expect("a response");
    assert_eq!(response.status, 401);
    assert_eq!(response.cseq, (2, "REGISTER".to_owned()));
    assert_eq!(response.challenge().map(|c| c.nonce), Some("n1".to_owned()));

    let mut buffer = format!("\r\n\r\n{text}{}", &text[..20]).into_bytes();
    assert_eq!(take_frame(&mut buffer).as_deref(), Some(text));
    assert_eq!(take_frame(&mut buffer), None);
    assert_eq!(buffer.len(), 20);
}
