//! A desk phone for the deployment tests: one [`Ua`] (UDP, TCP, or TCP into a TLS tunnel) run by
//! a thread of its own that answers whatever the PBX sends it, as a phone does, while the test
//! asks it to register or to hang up. It answers OPTIONS (qualify) with 200, every INVITE at once
//! with 200 and an SDP (auto-answer), BYE with 200, and keeps a record of each call and of
//! every request line and status line it sent and received (its trace, for reports).
//!
//! Over UDP its own requests are retransmitted every 500 ms until answered; over a connection
//! they are sent once. In-dialog requests go to the server it talks to (sipguard), with the
//! Request-URI the PBX's Contact gave.

use super::ua::{header, unique, Registration, Request, Response, Ua};
use anyhow::{anyhow, bail, Context};
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the thread waits for a message before it looks at the test's commands again.
const TICK: Duration = Duration::from_millis(20);
/// The interval of its own retransmissions over UDP.
const RESEND: Duration = Duration::from_millis(500);

/// One call the phone took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The Call-ID of the INVITE.
    pub call_id: String,
    /// The Contact of the INVITE: where the PBX wants the phone's requests in the call.
    pub contact: String,
    /// Whether the ACK of its 200 came.
    pub acked: bool,
    /// Whether the PBX ended it with a BYE.
    pub bye_received: bool,
}

/// What the phone's thread shares with the test.
#[derive(Debug, Default)]
struct Shared {
    calls: Vec<Call>,
    /// Dialog state of each call: the INVITE's text and the tag the phone gave it.
    dialogs: Vec<(String, String, String)>,
    options_answered: usize,
    trace: Vec<String>,
    errors: Vec<String>,
}

/// What the test asks of the thread.
enum Command {
    Register(mpsc::Sender<anyhow::Result<Registration>>),
    HangUp(String, mpsc::Sender<anyhow::Result<u16>>),
}

/// A request the phone sent and waits on.
struct Pending {
    request: Request,
    resend_at: Instant,
    deadline: Instant,
    purpose: Purpose,
}

enum Purpose {
    Register {
        answered_challenge: bool,
        reply: mpsc::Sender<anyhow::Result<Registration>>,
    },
    Bye {
        reply: mpsc::Sender<anyhow::Result<u16>>,
    },
}

/// How long one registration or BYE may take.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// A running phone, its thread stopped on drop.
pub struct Softphone {
    user: String,
    local: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Softphone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Softphone")
            .field("user", &self.user)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Softphone {
    /// Starts the phone on `ua` (it answers from now on) without registering it.
    pub fn start(ua: Ua) -> anyhow::Result<Self> {
        let user = ua.user().to_owned();
        let local = ua.local();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (commands, received) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("softphone-{user}"))
            .spawn({
                let shared = Arc::clone(&shared);
                move || Runner::new(ua, shared).run(&received)
            })?;
        Ok(Softphone {
            user,
            local,
            shared,
            commands: Some(commands),
            thread: Some(thread),
        })
    }

    /// Starts the phone on `ua` and registers it: an error unless the PBX accepts it.
    pub fn registered(ua: Ua) -> anyhow::Result<Self> {
        let phone = Self::start(ua)?;
        match phone.register()? {
            Registration::Registered => Ok(phone),
            other => bail!(
                "{} at {} did not register: {other:?}; its trace:\n{}",
                phone.user,
                phone.local,
                phone.trace()
            ),
        }
    }

    /// Registers (or registers again, on the same Call-ID): challenge, credentials, verdict.
    pub fn register(&self) -> anyhow::Result<Registration> {
        let (reply, answer) = mpsc::channel();
        self.command(Command::Register(reply))?;
        answer
            .recv_timeout(TRANSACTION_TIMEOUT * 2)
            .map_err(|_| anyhow!("the phone's thread did not answer"))?
    }

    /// Hangs up the call `call_id` with a BYE; the status the PBX answered it with.
    pub fn hang_up(&self, call_id: &str) -> anyhow::Result<u16> {
        let (reply, answer) = mpsc::channel();
        self.command(Command::HangUp(call_id.to_owned(), reply))?;
        answer
            .recv_timeout(TRANSACTION_TIMEOUT * 2)
            .map_err(|_| anyhow!("the phone's thread did not answer"))?
    }

    fn command(&self, command: Command) -> anyhow::Result<()> {
        self.commands
            .as_ref()
            .context("stopped")?
            .send(command)
            .map_err(|_| anyhow!("the phone's thread has ended: {:?}", self.errors()))
    }

    /// The user it registers as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The address it sends from (for a TLS phone, its end of the connection to its tunnel).
    pub fn addr(&self) -> SocketAddr {
        self.local
    }

    /// The calls it took so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared).calls.clone()
    }

    /// How many OPTIONS it answered.
    pub fn options_answered(&self) -> usize {
        lock(&self.shared).options_answered
    }

    /// What went wrong on its thread (a connection closed, a send failed).
    pub fn errors(&self) -> Vec<String> {
        lock(&self.shared).errors.clone()
    }

    /// Every request line and status line it sent (`->`) and received (`<-`), in order.
    pub fn trace(&self) -> String {
        lock(&self.shared).trace.join("\n")
    }

    fn shutdown(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Softphone {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The phone's thread.
struct Runner {
    ua: Ua,
    shared: Arc<Mutex<Shared>>,
    pending: Option<Pending>,
    /// The CSeq of its in-dialog requests.
    cseq: u32,
}

impl Runner {
    fn new(ua: Ua, shared: Arc<Mutex<Shared>>) -> Self {
        Runner {
            ua,
            shared,
            pending: None,
            cseq: 100,
        }
    }

    fn run(mut self, commands: &mpsc::Receiver<Command>) {
        loop {
            if self.pending.is_none() {
                match commands.try_recv() {
                    Ok(command) => self.start(command),
                    Err(mpsc::TryRecvError::Empty) => {}
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            if let Err(error) = self.step() {
                lock(&self.shared).errors.push(format!("{error:#}"));
                self.fail_pending(&error);
                return;
            }
        }
    }

    /// One wait for a message, and what follows from it.
    fn step(&mut self) -> anyhow::Result<()> {
        self.resend()?;
        let Some(text) = self.ua.receive_message(TICK)? else {
            return Ok(());
        };
        let first = text.lines().next().unwrap_or_default().to_owned();
        lock(&self.shared).trace.push(format!("<- {first}"));
        if first.starts_with("SIP/2.0 ") {
            if let Some(response) = Response::parse(&text) {
                self.on_response(&response)?;
            }
            return Ok(());
        }
        let method = first.split(' ').next().unwrap_or_default().to_owned();
        self.on_request(&method, &text)
    }

    fn start(&mut self, command: Command) {
        let (request, purpose) = match command {
            Command::Register(reply) => (
                self.ua.next_register(),
                Purpose::Register {
                    answered_challenge: false,
                    reply,
                },
            ),
            Command::HangUp(call_id, reply) => match self.bye(&call_id) {
                Ok(request) => (request, Purpose::Bye { reply }),
                Err(error) => {
                    let _ = reply.send(Err(error));
                    return;
                }
            },
        };
        let deadline = Instant::now() + TRANSACTION_TIMEOUT;
        self.send_request(request, deadline, purpose);
    }

    fn send_request(&mut self, request: Request, deadline: Instant, purpose: Purpose) {
        let sent = self.send(request.text());
        self.pending = Some(Pending {
            request,
            resend_at: Instant::now() + RESEND,
            deadline,
            purpose,
        });
        if let Err(error) = sent {
            self.fail_pending(&error);
        }
    }

    /// Retransmits the pending request over UDP, or gives up on it at its deadline.
    fn resend(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let Some(pending) = self.pending.as_mut() else {
            return Ok(());
        };
        if now >= pending.deadline {
            let error = anyhow!("no answer to {} in time", pending.request.method);
            self.fail_pending(&error);
            return Ok(());
        }
        if !self.ua.is_stream() && now >= pending.resend_at {
            pending.resend_at = now + RESEND;
            let text = pending.request.text().to_owned();
            self.send(&text)?;
        }
        Ok(())
    }

    fn fail_pending(&mut self, error: &anyhow::Error) {
        match self.pending.take().map(|p| p.purpose) {
            Some(Purpose::Register { reply, .. }) => {
                let _ = reply.send(Err(anyhow!("{error:#}")));
            }
            Some(Purpose::Bye { reply, .. }) => {
                let _ = reply.send(Err(anyhow!("{error:#}")));
            }
            None => {}
        }
    }

    fn on_response(&mut self, response: &Response) -> anyhow::Result<()> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        if !response.answers(&pending.request) || response.status < 200 {
            self.pending = Some(pending);
            return Ok(());
        }
        match pending.purpose {
            Purpose::Register {
                answered_challenge,
                reply,
            } => match (response.status, response.challenge()) {
                (200, _) => {
                    let _ = reply.send(Ok(Registration::Registered));
                }
                (401 | 407, Some(challenge)) if !answered_challenge => {
                    let request = self.ua.answer_register(&challenge);
                    let purpose = Purpose::Register {
                        answered_challenge: true,
                        reply,
                    };
                    self.send_request(request, pending.deadline, purpose);
                }
                (status, _) => {
                    let _ = reply.send(Ok(Registration::Refused(status)));
                }
            },
            Purpose::Bye { reply } => {
                let _ = reply.send(Ok(response.status));
            }
        }
        Ok(())
    }

    fn on_request(&mut self, method: &str, text: &str) -> anyhow::Result<()> {
        let call_id = header(text, "Call-ID")
            .or_else(|| header(text, "i"))
            .unwrap_or_default()
            .to_owned();
        match method {
            "OPTIONS" => {
                let tag = unique("opt");
                self.respond(text, "200 OK", &tag, None)?;
                lock(&self.shared).options_answered += 1;
            }
            "INVITE" => {
                // Answered at once, with no 180 before: a proxy with several workers (Kamailio)
                // may relay a 180 sent just before the 200 after it, which a caller refuses.
                let tag = self.dialog_tag(&call_id, text);
                self.respond(text, "200 OK", &tag, Some(&self.sdp()))?;
            }
            "ACK" => self.update_call(&call_id, |call| call.acked = true),
            "BYE" => {
                let tag = self.known_tag(&call_id).unwrap_or_else(|| unique("tag"));
                self.respond(text, "200 OK", &tag, None)?;
                self.update_call(&call_id, |call| call.bye_received = true);
            }
            "CANCEL" => {
                let tag = self.known_tag(&call_id).unwrap_or_else(|| unique("tag"));
                self.respond(text, "200 OK", &tag, None)?;
            }
            _ => {
                let tag = unique("tag");
                self.respond(text, "501 Not Implemented", &tag, None)?;
            }
        }
        Ok(())
    }

    /// Changes the record of the call `call_id`, if the phone took one.
    fn update_call(&self, call_id: &str, change: impl FnOnce(&mut Call)) {
        if let Some(call) = lock(&self.shared)
            .calls
            .iter_mut()
            .find(|call| call.call_id == call_id)
        {
            change(call);
        }
    }

    /// The tag the phone gives the call `call_id`, recorded with the call the first time.
    fn dialog_tag(&mut self, call_id: &str, invite: &str) -> String {
        if let Some(tag) = self.known_tag(call_id) {
            return tag;
        }
        let tag = unique("tag");
        let mut shared = lock(&self.shared);
        shared
            .dialogs
            .push((call_id.to_owned(), invite.to_owned(), tag.clone()));
        shared.calls.push(Call {
            call_id: call_id.to_owned(),
            contact: header(invite, "Contact")
                .or_else(|| header(invite, "m"))
                .unwrap_or_default()
                .to_owned(),
            acked: false,
            bye_received: false,
        });
        tag
    }

    fn known_tag(&self, call_id: &str) -> Option<String> {
        lock(&self.shared)
            .dialogs
            .iter()
            .find(|(id, _, _)| id == call_id)
            .map(|(_, _, tag)| tag.clone())
    }

    /// The phone's BYE for the call `call_id`: From and To of the INVITE swapped, to the
    /// PBX's Contact.
    fn bye(&mut self, call_id: &str) -> anyhow::Result<Request> {
        let (invite, tag) = lock(&self.shared)
            .dialogs
            .iter()
            .find(|(id, _, _)| id == call_id)
            .map(|(_, invite, tag)| (invite.clone(), tag.clone()))
            .with_context(|| format!("no call {call_id}"))?;
        let target = header(&invite, "Contact")
            .or_else(|| header(&invite, "m"))
            .and_then(|contact| {
                let start = contact.find('<')? + 1;
                let end = contact[start..].find('>')? + start;
                Some(contact[start..end].to_owned())
            })
            .context("the INVITE had no Contact")?;
        let from = header(&invite, "From").or_else(|| header(&invite, "f"));
        let to = header(&invite, "To").or_else(|| header(&invite, "t"));
        let (Some(caller), Some(callee)) = (from, to) else {
            bail!("the INVITE had no From or To");
        };
        self.cseq += 1;
        let transport = if self.ua.is_stream() { "TCP" } else { "UDP" };
        let text = format!(
            "BYE {target} SIP/2.0\r\n\
             Via: SIP/2.0/{transport} {local};branch=z9hG4bK-{branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: {callee};tag={tag}\r\n\
             To: {caller}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} BYE\r\n\
             Content-Length: 0\r\n\r\n",
            local = self.ua.local(),
            branch = unique("branch"),
            cseq = self.cseq,
        );
        Request::from_text(&text).context("the BYE it wrote")
    }

    /// An answer to `request` with `status`, the phone's `tag` on To unless it has one, and
    /// `sdp` as its body.
    fn respond(
        &mut self,
        request: &str,
        status: &str,
        tag: &str,
        sdp: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut head = format!("SIP/2.0 {status}\r\n");
        for line in request.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim().to_ascii_lowercase();
            match name.as_str() {
                "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" | "record-route" => {
                    head.push_str(line);
                    head.push_str("\r\n");
                }
                "to" | "t" if !value.contains(";tag=") => {
                    head.push_str(&format!("{line};tag={tag}\r\n"));
                }
                "to" | "t" => {
                    head.push_str(line);
                    head.push_str("\r\n");
                }
                _ => {}
            }
        }
        let contact_param = if self.ua.is_stream() {
            ";transport=tcp"
        } else {
            ""
        };
        head.push_str(&format!(
            "Contact: <sip:{}@{}{contact_param}>\r\n",
            self.ua.user(),
            self.ua.local()
        ));
        let body = sdp.unwrap_or_default();
        if sdp.is_some() {
            head.push_str("Content-Type: application/sdp\r\n");
        }
        let text = format!("{head}Content-Length: {}\r\n\r\n{body}", body.len());
        self.send(&text)
    }

    fn sdp(&self) -> String {
        let ip = self.ua.local().ip();
        // The media port is never listened on: media does not pass through sipguard.
        let port = self.ua.local().port().wrapping_add(2) & !1;
        format!(
            "v=0\r\no=phone 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        )
    }

    fn send(&mut self, text: &str) -> anyhow::Result<()> {
        let first = text.lines().next().unwrap_or_default();
        lock(&self.shared).trace.push(format!("-> {first}"));
        self.ua.send_text(text)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
