//! The session table: one upstream socket per client address, bounded in size, idle-expired.
//!
//! Activity is kept as milliseconds since the table's epoch in an atomic, so the front loop can
//! mark a session active without a lock; the session's own task reads it when its timer fires.
//!
//! A table full of forged one-packet sources must not lock out the phones: when it is full, the
//! oldest session that was never established (its client never answered a challenge sent to
//! it, and the PBX never accepted its registration) makes room for the newcomer. Sessions are
//! queued in the order they opened; an established one leaves the queue for good when it comes
//! up, so it is never evicted for anyone, and each opening looks at a bounded number of entries.

use crate::{Binding, Transport};
use dashmap::DashMap;
use sipguard_policy::Exchange;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Queue entries looked at per opening of a session into a full table.
const EVICTION_SCAN: usize = 16;

/// One client's binding to the PBX.
pub(crate) struct Session {
    /// The client's public address: where everything the PBX sends on `upstream` goes.
    pub client: SocketAddr,
    /// The sipguard address the client sent to: where what goes back to it leaves from.
    pub local: SocketAddr,
    /// `local`'s address when the listener is a wildcard one: replies name it as their source.
    pub reply_from: Option<IpAddr>,
    /// Connected to the PBX; its local port is the client's identity at the PBX.
    pub upstream: UdpSocket,
    /// `upstream`'s local address: what the PBX knows the client as.
    pub upstream_addr: SocketAddr,
    /// What the policy keeps of this client's exchange with the PBX (requests awaiting their
    /// answers), so the PBX's responses can be judged.
    exchange: Mutex<Exchange>,
    last_active_ms: AtomicU64,
    /// Told when the session was evicted to make room: its task closes it.
    evicted: Notify,
}

impl Session {
    /// How the client reaches the PBX, for the operator.
    pub fn binding(&self) -> Binding {
        Binding {
            transport: Transport::Udp,
            client: self.client,
            local: self.local,
            upstream: self.upstream_addr,
        }
    }

    pub fn exchange(&self) -> MutexGuard<'_, Exchange> {
        self.exchange.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Completes once the session has been evicted (a permit is stored, so an eviction while
    /// the task was busy is not lost).
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

/// Why no session could be had for a new client.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The table holds its configured maximum.
    Full,
    /// The upstream socket could not be opened (out of descriptors or ports).
    Socket(std::io::Error),
}

pub(crate) struct SessionTable {
    sessions: DashMap<SocketAddr, Arc<Session>>,
    /// Sessions in the order they opened, minus the established ones already looked at: the
    /// candidates for eviction, oldest first.
    unproven: Mutex<VecDeque<Weak<Session>>>,
    /// Kept beside the map so the limit check is one atomic load, exact under concurrency.
    active: AtomicUsize,
    max: usize,
    epoch: Instant,
}

impl SessionTable {
    pub fn new(max: usize) -> Self {
        SessionTable {
            sessions: DashMap::new(),
            unproven: Mutex::default(),
            active: AtomicUsize::new(0),
            max,
            epoch: Instant::now(),
        }
    }

    pub fn get(&self, client: &SocketAddr) -> Option<Arc<Session>> {
        self.sessions
            .get(client)
            .map(|entry| Arc::clone(entry.value()))
    }

    pub fn len(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Opens a session for a client that has none, starting from `exchange`. Returns the
    /// session and whether this call created it (another task may have raced us to the same
    /// client).
    /// `reached` is the address the client sent to, and the source address replies must name
    /// (on a wildcard listener).
    pub fn open(
        &self,
        client: SocketAddr,
        reached: (SocketAddr, Option<IpAddr>),
        exchange: Exchange,
        connect: impl FnOnce() -> std::io::Result<UdpSocket>,
    ) -> Result<(Arc<Session>, bool), Refusal> {
        if let Some(existing) = self.get(&client) {
            return Ok((existing, false));
        }
        if self.active.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            if !self.evict_one() {
                return Err(Refusal::Full);
            }
            return self.open(client, reached, exchange, connect);
        }
        let connected = connect().and_then(|socket| Ok((socket.local_addr()?, socket)));
        let (upstream_addr, upstream) = match connected {
            Ok(connected) => connected,
            Err(error) => {
                self.active.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::Socket(error));
            }
        };
        let (local, reply_from) = reached;
        let session = Arc::new(Session {
            client,
            local,
            reply_from,
            upstream,
            upstream_addr,
            exchange: Mutex::new(exchange),
            last_active_ms: AtomicU64::new(self.now_ms()),
            evicted: Notify::new(),
        });
        match self.sessions.entry(client) {
            dashmap::Entry::Occupied(entry) => {
                self.active.fetch_sub(1, Ordering::AcqRel);
                Ok((Arc::clone(entry.get()), false))
            }
            dashmap::Entry::Vacant(entry) => {
                entry.insert(Arc::clone(&session));
                self.queue().push_back(Arc::downgrade(&session));
                Ok((session, true))
            }
        }
    }

    pub fn touch(&self, session: &Session) {
        session
            .last_active_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// When `session` becomes idle if nothing happens meanwhile.
    pub fn idle_deadline(&self, session: &Session, idle: Duration) -> Instant {
        self.epoch + Duration::from_millis(session.last_active_ms.load(Ordering::Relaxed)) + idle
    }

    /// Removes `session` if it has been idle for `idle`; true when it was removed.
    pub fn remove_if_idle(&self, session: &Arc<Session>, idle: Duration) -> bool {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let now = self.now_ms();
        let removed = self.sessions.remove_if(&session.client, |_, current| {
            Arc::ptr_eq(current, session)
                && now.saturating_sub(current.last_active_ms.load(Ordering::Relaxed)) >= idle_ms
        });
        if removed.is_some() {
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
        removed.is_some()
    }

    /// Removes `session` now, if it is still the one in the table for its client.
    pub fn remove(&self, session: &Arc<Session>) {
        self.remove_if_idle(session, Duration::ZERO);
    }

    /// Evicts the oldest session that never proved anything, looking at no more than
    /// [`EVICTION_SCAN`] queued entries; false when none of them could go.
    fn evict_one(&self) -> bool {
        let mut queue = self.queue();
        for _ in 0..EVICTION_SCAN {
            let Some(candidate) = queue.pop_front() else {
                return false;
            };
            // Gone already (expired or evicted), or established: out of the queue for good.
            let Some(session) = candidate.upgrade() else {
                continue;
            };
            if session.exchange().is_established() {
                continue;
            }
            let removed = self
                .sessions
                .remove_if(&session.client, |_, current| Arc::ptr_eq(current, &session));
            if removed.is_some() {
                self.active.fetch_sub(1, Ordering::AcqRel);
                session.evicted.notify_one();
                return true;
            }
        }
        false
    }

    /// Every session, in no particular order.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.sessions
            .iter()
            .map(|entry| Arc::clone(entry.value()))
            .collect()
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Weak<Session>>> {
        self.unproven.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
