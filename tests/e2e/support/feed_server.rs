//! A real HTTP/1.1 server on 127.0.0.1 and a free port, serving blocklists the test sets (a
//! VoIPBL-style text list, or APIBAN's JSON batches), with an `ETag` per version so sipguard's
//! conditional requests get 304s. One thread accepts, one request per connection; it stops
//! (and its port goes dead) when the handle drops, as a list server that goes away would.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Default)]
struct Shared {
    /// Path to (body, content type, version).
    routes: Mutex<HashMap<String, (String, &'static str, u64)>>,
    version: AtomicUsize,
    /// Requests answered 304 because their If-None-Match named the current version.
    not_modified: AtomicUsize,
    /// Requests by path.
    hits: Mutex<HashMap<String, usize>>,
    stop: AtomicBool,
}

/// The running server.
pub struct FeedServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl FeedServer {
    /// Starts serving nothing yet (404 to every path).
    pub fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let serving = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if serving.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = answer(&serving, stream);
                }
            }
        });
        Ok(FeedServer {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Serves `body` as plain text at `path`, as a new version.
    pub fn set(&self, path: &str, body: &str) {
        self.set_as(path, body, "text/plain");
    }

    /// Serves `body` as JSON at `path`.
    pub fn set_json(&self, path: &str, body: &str) {
        self.set_as(path, body, "application/json");
    }

    fn set_as(&self, path: &str, body: &str, content_type: &'static str) {
        let version = self.shared.version.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        self.shared
            .routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), (body.to_owned(), content_type, version));
    }

    /// How many requests were answered 304 Not Modified.
    pub fn not_modified(&self) -> usize {
        self.shared.not_modified.load(Ordering::SeqCst)
    }

    /// How many requests asked for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.shared
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag and closes the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(shared: &Shared, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut if_none_match = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("if-none-match") {
                if_none_match = Some(value.trim().to_owned());
            }
        }
    }
    *shared.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let route = shared.routes.lock().unwrap().get(&path).cloned();
    let mut stream = stream;
    let reply = match route {
        None => {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        }
        Some((_, _, version)) if if_none_match.as_deref() == Some(&format!("\"v{version}\"")) => {
            shared.not_modified.fetch_add(1, Ordering::SeqCst);
            format!(
                "HTTP/1.1 304 Not Modified\r\nETag: \"v{version}\"\r\nConnection: close\r\n\r\n"
            )
        }
        Some((body, content_type, version)) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nETag: \"v{version}\"\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    };
    stream.write_all(reply.as_bytes())
}
