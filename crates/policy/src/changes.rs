//! The changes to the policy's lasting state, published to whoever follows it.
//!
//! The policy is the one owner of ban and trust state: the journal, the admin API's listing,
//! the stream front's connection registry and the metrics learn of bans only through
//! [`Change`]s, published to every [`Observer`] as the change is made.

use crate::bans::Ban;
use crate::time::Timestamp;
use ipnet::IpNet;
use std::net::IpAddr;

/// A change to the ban or trust table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `source` (an address, or an IPv6 prefix) was banned: a new ban, or the operator's ban
    /// replacing one. Followers that write down, push or share each ban pass over a quiet one
    /// ([`Ban::quiet`]; the table's snapshots still hold it) until it is [`Change::Announced`].
    Banned {
        /// The banned network.
        source: IpNet,
        /// The ban as it stands.
        ban: Ban,
    },
    /// A quiet ban is announced: its source came back while it was in force.
    Announced {
        /// The banned network.
        source: IpNet,
        /// The ban as it stands (no longer quiet).
        ban: Ban,
    },
    /// The operator lifted the ban early.
    Lifted {
        /// The network let through again.
        source: IpNet,
        /// The ban that was lifted.
        ban: Ban,
    },
    /// The ban ran out.
    Expired {
        /// The network let through again.
        source: IpNet,
        /// The ban that ran out.
        ban: Ban,
    },
    /// `source` authenticated, and is trusted until `until` (published when the expiry moves
    /// by more than an eighth of the trust period, not at every re-registration).
    Trusted {
        /// The trusted address.
        source: IpAddr,
        /// Until when.
        until: Timestamp,
    },
    /// `source` lost its trust: it failed across several usernames (cracking from behind a
    /// trusted address).
    Distrusted {
        /// The address trusted no more.
        source: IpAddr,
    },
}

/// Follows the ban and trust tables: the journal, the connection registry, the metrics. Called
/// on the packet path while the change is made, so it must only queue or notify, never wait,
/// and never call back into the policy.
pub trait Observer: Send + Sync {
    /// One change.
    fn changed(&self, change: &Change);
}
