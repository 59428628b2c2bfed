//! The loopback HTTP listeners (`/metrics`, the admin API) and the client `sipguard bans` uses.
//!
//! hyper rather than hand-written HTTP: it is already in the tree (the Prometheus exporter's
//! listener is built on it), and it parses requests (chunked bodies, pipelining, header limits,
//! slow clients) correctly, which a few lines over a `TcpStream` would not. HTTP/1.1 only, one
//! task per connection; a bad connection ends that task and nothing else. Bodies are read whole
//! up to [`MAX_BODY`] and refused beyond it; who may send what is the handler's to judge (the
//! admin API's gate), from the headers handed over with the body.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Largest request body read: an admin API call is a few hundred bytes, at most about 3 KiB
/// with the longest reason written in escapes.
pub const MAX_BODY: usize = 8 * 1024;
/// A client that has not sent its request head by then is dropped.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A request as the handlers see it: method, path, headers and the whole body.
#[derive(Debug)]
pub struct Call {
    /// The HTTP method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The request's headers, for the handler's checks.
    pub headers: HeaderMap,
    /// The body, read whole.
    pub body: Bytes,
}

/// A reply: status, and a body (JSON or text).
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The content type.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        Reply {
            status,
            content_type: "application/json",
            body: format!("{value}\n"),
        }
    }

    /// A JSON `{"error": message}` reply.
    pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Self {
        Reply::json(status, &serde_json::json!({ "error": message.to_string() }))
    }
}

/// Serves `handler` on `listener` until the task is dropped.
pub async fn serve<H, F>(listener: std::net::TcpListener, handler: H) -> std::io::Result<()>
where
    H: Fn(Call) -> F + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let handler = Arc::new(handler);
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "accept failed");
                continue;
            }
        };
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let handler = Arc::clone(&handler);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let handler = Arc::clone(&handler);
                async move {
                    let reply = match read(request).await {
                        Ok(call) => handler(call).await,
                        Err(reply) => reply,
                    };
                    let response = Response::builder()
                        .status(reply.status)
                        .header(CONTENT_TYPE, reply.content_type);
                    // The one scheme these listeners know; RFC 9110 wants it named on a 401.
                    let response = if reply.status == StatusCode::UNAUTHORIZED {
                        response.header(WWW_AUTHENTICATE, "Bearer")
                    } else {
                        response
                    };
                    response.body(Full::new(Bytes::from(reply.body)))
                }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "http connection failed");
            }
        });
    }
}

async fn read(request: Request<Incoming>) -> Result<Call, Reply> {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|err| {
            Reply::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format_args!("a request body is at most {MAX_BODY} bytes ({err})"),
            )
        })?
        .to_bytes();
    Ok(Call {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
    })
}

/// Sends one request to `addr` with `token` as its bearer token, and returns the status and
/// body.
pub async fn request(
    addr: SocketAddr,
    token: &str,
    method: Method,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<(StatusCode, String)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
