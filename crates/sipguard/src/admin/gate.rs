//! Who may use the admin API: a program run by someone who can read the token file, never a web
//! page.
//!
//! The token is 32 random bytes from the operating system, in hex, written anew at every start
//! to a file of mode 0640 (`admin.token_file`, by default `admin.token` beside the journal), so
//! the file's permissions decide who may ban, lift and reload: the service's user and group, and
//! root. Every request carries it as `Authorization: Bearer TOKEN`, compared in constant time.
//!
//! A web page the operator opens can send requests to loopback, and under a DNS-rebound name
//! even read the replies. So, before the token is looked at, requests with a browser's marks are
//! refused: any `Origin`, a `Sec-Fetch-Site` other than `none`, a `Host` other than the API's
//! own address (or `localhost` with its port: no page but one this API served, and it serves
//! none, has that origin), and a body that is not `application/json` (the content types a page
//! may send without the browser asking first are all others).

use crate::http::{Call, Reply};
use hyper::header::{HeaderMap, HeaderName, AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use hyper::{Method, StatusCode};
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

/// Random bytes in a token: as many as a TLS session key, beyond guessing.
const TOKEN_BYTES: usize = 32;
/// The token file's mode: the service's user writes it, its group (and root) read it.
pub const TOKEN_FILE_MODE: u32 = 0o640;
/// The header browsers add to every request, naming where it comes from (`none`: the user
/// typed the address).
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// The admin API's secret: what a client shows to prove it could read the token file.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A new token from the operating system's random source.
    pub fn generate() -> io::Result<Token> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)
            .map_err(|err| io::Error::other(format!("no random bytes: {err}")))?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// Reads a token file, as `write` left it.
    pub fn read(path: &Path) -> io::Result<Token> {
        let text = std::fs::read_to_string(path)?;
        let token = text.trim();
        if token.len() != 2 * TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a sipguard admin token (64 hex digits)",
            ));
        }
        Ok(Token(token.to_owned()))
    }

    /// Writes the token to `path` with mode 0640 whatever the umask: a new file beside it (never
    /// through a link left there), renamed over the old one, so a reader finds the old token or
    /// the new one, never part of one. The directory is created private when missing.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        crate::journal::create_private_dir(dir)?;
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(".new");
        let temporary = dir.join(name);
        match std::fs::remove_file(&temporary) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(format!("{}\n", self.0).as_bytes())?;
        file.set_permissions(std::fs::Permissions::from_mode(TOKEN_FILE_MODE))?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    }

    /// The token as sent: `Authorization: Bearer <this>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// Why a request was refused, before anything was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Host` header, or several.
    NoHost,
    /// A `Host` that is not the API's address: a DNS-rebound name, most likely.
    OtherHost(String),
    /// A browser's mark: the header named.
    FromWebPage(&'static str),
    /// No `Authorization: Bearer` header (or several).
    NoToken,
    /// A token that is not this start's.
    WrongToken,
    /// A body, or a POST, without `Content-Type: application/json`.
    NotJson,
}

/// The checks every admin request passes before it is handled.
#[derive(Debug)]
pub struct Gate {
    /// The API's own address, the only `Host` it answers to (with `localhost:PORT`).
    addr: SocketAddr,
    token: Token,
    /// Where the token is, for messages.
    token_file: PathBuf,
}

impl Gate {
    /// A gate for the API at `addr` with a new token, written to `token_file`.
    pub fn create(addr: SocketAddr, token_file: &Path) -> io::Result<Gate> {
        let token = Token::generate()?;
        token.write(token_file)?;
        Ok(Gate {
            addr,
            token,
            token_file: token_file.to_owned(),
        })
    }

    /// Lets `call` through, or says why not: first a browser's marks, then the token, then
    /// the body's type.
    pub fn check(&self, call: &Call) -> Result<(), Refusal> {
        let headers = &call.headers;
        let host = single(headers, &HOST).ok_or(Refusal::NoHost)?;
        if !self.is_own_host(host) {
            return Err(Refusal::OtherHost(
                String::from_utf8_lossy(host).into_owned(),
            ));
        }
        if headers.contains_key(ORIGIN) {
            return Err(Refusal::FromWebPage("Origin"));
        }
        if headers
            .get_all(SEC_FETCH_SITE)
            .iter()
            .any(|site| site.as_bytes() != b"none")
        {
            return Err(Refusal::FromWebPage("Sec-Fetch-Site"));
        }
        let authorization = single(headers, &AUTHORIZATION)
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .ok_or(Refusal::NoToken)?;
        if !self.token.matches(authorization.1.trim()) {
            return Err(Refusal::WrongToken);
        }
        if (call.method == Method::POST || !call.body.is_empty()) && !is_json(headers) {
            return Err(Refusal::NotJson);
        }
        Ok(())
    }

    fn is_own_host(&self, host: &[u8]) -> bool {
        let own = self.addr.to_string();
        let localhost = format!("localhost:{}", self.addr.port());
        host.eq_ignore_ascii_case(own.as_bytes()) || host.eq_ignore_ascii_case(localhost.as_bytes())
    }

    /// The reply to a refused request, saying what to do instead.
    pub fn refuse(&self, refusal: &Refusal) -> Reply {
        let file = self.token_file.display();
        let (status, message) = match refusal {
            Refusal::NoHost => (
                StatusCode::BAD_REQUEST,
                format!("one Host header is required: {}", self.addr),
            ),
            Refusal::OtherHost(host) => (
                StatusCode::FORBIDDEN,
                format!(
                    "Host {host:?} is not this API's address ({} or localhost:{})",
                    self.addr,
                    self.addr.port()
                ),
            ),
            Refusal::FromWebPage(header) => (
                StatusCode::FORBIDDEN,
                format!("requests from web pages are refused (the request has {header})"),
            ),
            Refusal::NoToken => (
                StatusCode::UNAUTHORIZED,
                format!("send Authorization: Bearer TOKEN, with the token in {file}"),
            ),
            Refusal::WrongToken => (
                StatusCode::UNAUTHORIZED,
                format!("wrong token: sipguard writes a new one to {file} at every start"),
            ),
            Refusal::NotJson => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as Content-Type: application/json".to_owned(),
            ),
        };
        Reply::error(status, message)
    }
}

/// The value of `name` when the request has exactly one.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a [u8]> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value.as_bytes()),
        _ => None,
    }
}

/// Whether the body is declared JSON (`application/json`, parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    single(headers, &CONTENT_TYPE)
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Bytes;
    use hyper::header::HeaderValue;

    const ADDR: &str = "127.0.0.1:9465";

    fn gate() -> Gate {
        Gate {
            addr: ADDR.parse().unwrap(),
            token: Token("ab".repeat(TOKEN_BYTES)),
            token_file: PathBuf::from("/var/lib/sipguard/admin.token"),
        }
    }

    /// A call as `sipguard bans add` sends it, with `changes` applied to its headers (a value of
    /// `None` removes the header).
    fn call(method: Method, changes: &[(&str, Option<&str>)]) -> Call {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static(ADDR));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let bearer = format!("Bearer {}", "ab".repeat(TOKEN_BYTES));
        headers.insert(AUTHORIZATION, HeaderValue::from_str(&bearer).unwrap());
        for (name, value) in changes {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            match value {
                Some(value) => headers.append(name, HeaderValue::from_str(value).unwrap()),
                None => headers.remove(name).is_some(),
            };
        }
        let body = if method == Method::POST {
            Bytes::from_static(br#"{"ip": "192.0.2.66"}"#)
        } else {
            Bytes::new()
        };
        Call {
            method,
            path: "/bans".to_owned(),
            headers,
            body,
        }
    }

    fn check(method: Method, changes: &[(&str, Option<&str>)]) -> Result<(), Refusal> {
        gate().check(&call(method, changes))
    }

    #[test]
    fn the_cli_request_passes_with_the_address_or_localhost_as_host() {
        assert_eq!(check(Method::POST, &[]), Ok(()));
        assert_eq!(check(Method::GET, &[("content-type", None)]), Ok(()));
        assert_eq!(check(Method::DELETE, &[("content-type", None)]), Ok(()));
        let localhost = [("host", None), ("host", Some("LocalHost:9465"))];
        assert_eq!(check(Method::GET, &localhost), Ok(()));
        let typed = [("sec-fetch-site", Some("none"))];
        assert_eq!(check(Method::GET, &typed), Ok(()));
        let charset = [
            ("content-type", None),
            ("content-type", Some("Application/JSON; charset=utf-8")),
        ];
        assert_eq!(check(Method::POST, &charset), Ok(()));
    }

    #[test]
    fn a_host_other_than_the_apis_own_address_is_refused() {
        for host in [
            "evil.example",
            "evil.example:9465",
            "127.0.0.1",
            "127.0.0.1:9466",
            "localhost",
            "[::1]:9465",
        ] {
            assert_eq!(
                check(Method::GET, &[("host", None), ("host", Some(host))]),
                Err(Refusal::OtherHost(host.to_owned())),
                "{host}"
            );
        }
        assert_eq!(check(Method::GET, &[("host", None)]), Err(Refusal::NoHost));
        let twice = [("host", Some("evil.example"))];
        assert_eq!(check(Method::GET, &twice), Err(Refusal::NoHost));
    }

    #[test]
    fn a_browsers_marks_are_refused_even_with_the_token() {
        let origin = [("origin", Some("http://evil.example"))];
        assert_eq!(
            check(Method::POST, &origin),
            Err(Refusal::FromWebPage("Origin"))
        );
        let null_origin = [("origin", Some("null"))];
        assert_eq!(
            check(Method::GET, &null_origin),
            Err(Refusal::FromWebPage("Origin"))
        );
        for site in ["cross-site", "same-site", "same-origin"] {
            assert_eq!(
                check(Method::GET, &[("sec-fetch-site", Some(site))]),
                Err(Refusal::FromWebPage("Sec-Fetch-Site")),
                "{site}"
            );
        }
    }

    #[test]
    fn the_browser_style_cross_origin_post_of_the_report_is_refused() {
        // Origin, a text/plain body and the attacker's Host, as a page's fetch() sends them.
        let page = [
            ("origin", Some("http://evil.example")),
            ("content-type", None),
            ("content-type", Some("text/plain")),
            ("host", None),
            ("host", Some("evil.example")),
            ("authorization", None),
        ];
        assert!(check(Method::POST, &page).is_err());
        assert_eq!(
            check(Method::POST, &page[..3]),
            Err(Refusal::FromWebPage("Origin"))
        );
    }

    #[test]
    fn a_request_without_the_token_or_with_another_is_refused() {
        assert_eq!(
            check(Method::GET, &[("authorization", None)]),
            Err(Refusal::NoToken)
        );
        for value in [
            "Bearer",
            "Basic YWRtaW46YWRtaW4=",
            "Token abababab",
            "bearer",
        ] {
            let header = [("authorization", None), ("authorization", Some(value))];
            assert_eq!(
                check(Method::GET, &header),
                Err(Refusal::NoToken),
                "{value}"
            );
        }
        let wrong = format!("Bearer {}", "ab".repeat(TOKEN_BYTES - 1) + "ac");
        let short = "Bearer ab".to_owned();
        let empty = "Bearer ".to_owned();
        for value in [wrong, short, empty] {
            let header = [
                ("authorization", None),
                ("authorization", Some(value.as_str())),
            ];
            assert_eq!(
                check(Method::GET, &header),
                Err(Refusal::WrongToken),
                "{value}"
            );
        }
        let scheme_in_capitals = format!("BEARER {}", "ab".repeat(TOKEN_BYTES));
        let header = [
            ("authorization", None),
            ("authorization", Some(scheme_in_capitals.as_str())),
        ];
        assert_eq!(check(Method::GET, &header), Ok(()));
        let twice = format!("Bearer {}", "ab".repeat(TOKEN_BYTES));
        let header = [("authorization", Some(twice.as_str()))];
        assert_eq!(check(Method::GET, &header), Err(Refusal::NoToken));
    }

    #[test]
    fn a_post_or_a_body_must_be_declared_json() {
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonx"),
        ] {
            let header = [("content-type", None), ("content-type", content_type)];
            assert_eq!(
                check(Method::POST, &header),
                Err(Refusal::NotJson),
                "{content_type:?}"
            );
        }
        let mut reload = call(Method::POST, &[("content-type", None)]);
        reload.body = Bytes::new();
        assert_eq!(gate().check(&reload), Err(Refusal::NotJson));
        let mut get_with_body = call(Method::GET, &[("content-type", None)]);
        get_with_body.body = Bytes::from_static(b"{}");
        assert_eq!(gate().check(&get_with_body), Err(Refusal::NotJson));
    }

    #[test]
    fn refusals_say_what_to_do_with_their_status() {
        let gate = gate();
        let reply = gate.refuse(&Refusal::NoToken);
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert!(
            reply.body.contains("/var/lib/sipguard/admin.token"),
            "{}",
            reply.body
        );
        let reply = gate.refuse(&Refusal::OtherHost("evil.example".to_owned()));
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert!(
            reply.body.contains("127.0.0.1:9465 or localhost:9465"),
            "{}",
            reply.body
        );
        assert_eq!(
            gate.refuse(&Refusal::FromWebPage("Origin")).status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            gate.refuse(&Refusal::NotJson).status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn the_token_file_is_written_0640_whatever_the_umask_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/admin.token");
        let first = Token::generate().unwrap();
        first.write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, TOKEN_FILE_MODE);
        assert_eq!(Token::read(&path).unwrap().as_str(), first.as_str());
        assert_eq!(first.as_str().len(), 64);

        // A new start: a new token replaces the old one, even over a leftover temporary file.
        std::fs::write(dir.path().join("state/admin.token.new"), "leftover").unwrap();
        let second = Token::generate().unwrap();
        assert_ne!(second.as_str(), first.as_str());
        second.write(&path).unwrap();
        assert_eq!(Token::read(&path).unwrap().as_str(), second.as_str());

        std::fs::write(&path, "not a token\n").unwrap();
        assert_eq!(
            Token::read(&path).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(format!("{second:?}"), "Token(..)");
    }
}
