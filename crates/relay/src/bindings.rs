//! What the operator's side sees of the relay's clients: each client's binding (its address, the
//! sipguard address it reached, and the upstream address the PBX knows it by). The PBX logs every
//! peer as a loopback address and port; [`Directory`] maps that back to the client. A
//! [`SessionStore`] keeps the established UDP bindings across a restart, so the relay can rebind
//! the same upstream ports and the contacts the PBX holds stay valid (docs/design.md, section 8).

use crate::connections::Registry;
use crate::session::SessionTable;
use crate::Transport;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};

/// One client's way to the PBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Binding {
    /// How the client reaches sipguard.
    pub transport: Transport,
    /// The client's address.
    pub client: SocketAddr,
    /// The sipguard address the client sent to: where replies leave from.
    pub local: SocketAddr,
    /// The local address of the client's upstream socket or connection: the peer the PBX sees.
    pub upstream: SocketAddr,
}

/// Where the established UDP bindings are kept between runs.
pub trait SessionStore: Send + Sync {
    /// The bindings the last run saved (an empty list when there are none or they cannot be
    /// read; the store says why in its own log).
    fn load(&self) -> Vec<Binding>;
    /// Replaces what is saved with `bindings`. Called off the packet path, only when the set
    /// changed.
    fn save(&self, bindings: &[Binding]) -> io::Result<()>;
}

/// The live bindings of a running relay, for the admin API and the CLI. Empty until the relay
/// starts and after it stops.
#[derive(Debug, Default)]
pub struct Directory {
    sessions: OnceLock<Weak<SessionTable>>,
    connections: OnceLock<Weak<Registry>>,
}

impl Directory {
    /// Every client binding open now: UDP sessions and TCP or TLS connections (a connection
    /// whose upstream connection is not made yet is left out).
    pub fn bindings(&self) -> Vec<Binding> {
        let mut bindings = Vec::new();
        if let Some(sessions) = self.sessions.get().and_then(Weak::upgrade) {
            bindings.extend(sessions.sessions().iter().map(|session| session.binding()));
        }
        if let Some(connections) = self.connections.get().and_then(Weak::upgrade) {
            bindings.extend(connections.bindings());
        }
        bindings.sort_unstable();
        bindings
    }

    /// The binding whose upstream address is `upstream`, or whose upstream port is
    /// `upstream.port()` when its address is unspecified (a PBX log line names the port).
    pub fn by_upstream(&self, upstream: SocketAddr) -> Vec<Binding> {
        let any_address = upstream.ip().is_unspecified();
        self.bindings()
            .into_iter()
            .filter(|binding| {
                binding.upstream == upstream
                    || (any_address && binding.upstream.port() == upstream.port())
            })
            .collect()
    }

    pub(crate) fn attach(&self, sessions: &Arc<SessionTable>, connections: &Arc<Registry>) {
        let _ = self.sessions.set(Arc::downgrade(sessions));
        let _ = self.connections.set(Arc::downgrade(connections));
    }
}
