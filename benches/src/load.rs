//! The load client and the flood generator.
//!
//! The client sends clean transactions at a fixed rate from a range of 127.x source addresses on
//! one socket (see [`crate::sendmmsg`]), and a second thread reads the responses, matching each to
//! its request by the Via branch and recording the round trip in a histogram (nanoseconds, so
//! microseconds are exact). The flood generator sends one payload from a range of sources as
//! fast as one thread can, or at a set rate, for a bounded count and time.

use crate::sendmmsg::{any_source_socket, send_batch, Outgoing, BATCH};
use crate::sip::{answered_transaction, clean_request};
use hdrhistogram::Histogram;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A block of consecutive IPv4 source addresses, used round robin.
#[derive(Debug, Clone, Copy)]
pub struct Sources {
    pub first: Ipv4Addr,
    pub count: u32,
}

impl Sources {
    pub fn nth(&self, i: u64) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.first) + (i % u64::from(self.count)) as u32)
    }

    /// An allowlist file naming these addresses as one group (their count a power of two, the
    /// first aligned to it).
    pub fn allowlist(&self) -> String {
        let prefix = 32 - self.count.trailing_zeros();
        format!(
            "bench:\n  - name: clean-sources\n    cidrs: [{}/{prefix}]\n",
            self.first
        )
    }
}

/// The load client's socket, kept from one run to the next.
pub struct Client {
    socket: std::net::UdpSocket,
    next_seq: AtomicU64,
}

impl Client {
    pub fn new() -> std::io::Result<Self> {
        Ok(Client {
            socket: any_source_socket()?,
            next_seq: AtomicU64::new(1),
        })
    }
}

/// What a paced run of clean transactions produced.
pub struct LoadReport {
    pub sent: u64,
    pub answered: u64,
    /// Round trips of answered transactions, in nanoseconds.
    pub latency: Histogram<u64>,
}

impl LoadReport {
    pub fn success(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.answered as f64 / self.sent as f64
        }
    }

    /// A latency quantile in microseconds.
    pub fn latency_us(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Sends `rate` clean transactions a second for `duration` to `target` from `sources`; waits
/// up to `timeout` after the last one for its answer. A transaction counts as answered when its
/// final response arrives within `timeout`.
///
/// Every run goes out from the same port of `client`, so each source address stays one client
/// (one session at a relay) from one run to the next; transaction numbers continue across runs,
/// so a late answer to an earlier run is never taken for one of this run.
pub fn clean_load(
    client: &Client,
    target: SocketAddrV4,
    sources: Sources,
    rate: u32,
    duration: Duration,
    timeout: Duration,
) -> std::io::Result<LoadReport> {
    let socket = client.socket.try_clone()?;
    let port = socket.local_addr()?.port();
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let total = (f64::from(rate) * duration.as_secs_f64()) as u64;
    let first = client.next_seq.fetch_add(total, Ordering::Relaxed);
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let sending_done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();

    let receiver = {
        let socket = socket.try_clone()?;
        let sent_at = Arc::clone(&sent_at);
        let sending_done = Arc::clone(&sending_done);
        std::thread::spawn(move || {
            let mut latency = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)
                .expect("valid histogram bounds");
            let mut answered = vec![false; sent_at.len()];
            let mut count = 0u64;
            let mut buf = vec![0u8; 65_535];
            let mut done_at: Option<Instant> = None;
            loop {
                if let Ok(len) = socket.recv(&mut buf) {
                    let now = start.elapsed().as_nanos() as u64;
                    if let Some(seq) =
                        answered_transaction(&buf[..len]).and_then(|seq| seq.checked_sub(first))
                    {
                        let seq = seq as usize;
                        let sent = sent_at.get(seq).map_or(0, |s| s.load(Ordering::Acquire));
                        if sent != 0 && !answered[seq] {
                            let rtt = now.saturating_sub(sent - 1);
                            if rtt <= timeout.as_nanos() as u64 {
                                answered[seq] = true;
                                count += 1;
                                latency.saturating_record(rtt.max(1_000));
                            }
                        }
                    }
                }
                if sending_done.load(Ordering::Acquire) {
                    let done = *done_at.get_or_insert_with(Instant::now);
                    if count == sent_at.len() as u64 || done.elapsed() > timeout {
                        return (count, latency);
                    }
                }
            }
        })
    };

    let mut payloads: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(512)).collect();
    let mut seq = 0u64;
    let interval_ns = 1e9 / f64::from(rate);
    let send_deadline = duration * 2 + timeout;
    let mut failure = None;
    'sending: while seq < total {
        let due = ((start.elapsed().as_nanos() as f64 / interval_ns) as u64 + 1).min(total);
        if due <= seq {
            let next = Duration::from_nanos((seq as f64 * interval_ns) as u64);
            let wait = next.saturating_sub(start.elapsed());
            if wait > Duration::from_micros(200) {
                std::thread::sleep(wait - Duration::from_micros(100));
            } else {
                std::thread::yield_now();
            }
            continue;
        }
        let n = ((due - seq) as usize).min(BATCH);
        for (i, payload) in payloads.iter_mut().take(n).enumerate() {
            let s = seq + i as u64;
            clean_request(payload, first + s, sources.nth(s), port, target);
        }
        let now = start.elapsed().as_nanos() as u64 + 1;
        for s in seq..seq + n as u64 {
            sent_at[s as usize].store(now, Ordering::Release);
        }
        let batch: Vec<Outgoing<'_>> = payloads[..n]
            .iter()
            .enumerate()
            .map(|(i, payload)| Outgoing {
                payload,
                source: sources.nth(seq + i as u64),
                target,
            })
            .collect();
        let mut offset = 0;
        // A batch the kernel keeps refusing past this point counts as sent and unanswered.
        while offset < n && start.elapsed() < send_deadline {
            match send_batch(&socket, &batch[offset..]) {
                Ok(k) => offset += k.max(1),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(error) => {
                    failure = Some(error);
                    break 'sending;
                }
            }
        }
        seq += n as u64;
    }
    sending_done.store(true, Ordering::Release);
    let (answered, latency) = receiver.join().expect("receiver thread panicked");
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(LoadReport {
        sent: total,
        answered,
        latency,
    })
}

/// What a flood run sent.
pub struct FloodReport {
    pub sent: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sends `payloads` (round robin, one per source in turn) from `sources` to `target`: at most
/// `count` datagrams, for at most `duration`, paced at `rate` per second when given, else as
/// fast as this thread can.
pub fn flood(
    target: SocketAddrV4,
    sources: Sources,
    payloads: &[Vec<u8>],
    count: u64,
    duration: Duration,
    rate: Option<u32>,
) -> std::io::Result<FloodReport> {
    let socket = any_source_socket()?;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut batch: Vec<Outgoing<'_>> = Vec::with_capacity(BATCH);
    while sent < count && start.elapsed() < duration {
        if let Some(rate) = rate {
            let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
            if due <= sent {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        batch.clear();
        let n = (count - sent).min(BATCH as u64);
        for i in 0..n {
            let s = sent + i;
            batch.push(Outgoing {
                payload: &payloads[(s % payloads.len() as u64) as usize],
                source: sources.nth(s),
                target,
            });
        }
        match send_batch(&socket, &batch) {
            Ok(k) => sent += k as u64,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(FloodReport {
        sent,
        elapsed: start.elapsed(),
    })
}
