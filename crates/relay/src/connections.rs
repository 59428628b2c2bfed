//! The registry of open client connections (TCP and TLS), by source IP.
//!
//! It enforces the limits on connections in total and per source address at accept time, and it
//! is how a connection is told to close from outside its own task: it follows the policy's ban
//! events and closes a banned source's connections the moment the ban is made. A connection
//! is registered by an [`Admission`], which takes it out of the registry when dropped, so no
//! path out of a connection task can leak a slot.

use crate::Binding;
use sipguard_policy::{Change, IpNet, Observer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use tokio::sync::Notify;

/// Why a new connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Connections in total are at their maximum.
    Total,
    /// This source address holds its maximum already.
    PerIp,
}

/// One open connection as the registry sees it.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    close: Notify,
    /// Set once its upstream connection is made.
    binding: OnceLock<Binding>,
}

impl Entry {
    /// Publishes the connection's binding, for the operator.
    pub fn bound(&self, binding: Binding) {
        let _ = self.binding.set(binding);
    }

    /// Completes once the registry has asked this connection to close (a permit is stored, so
    /// a request made while the task was busy elsewhere is not lost).
    pub async fn closed(&self) {
        self.close.notified().await;
    }
}

#[derive(Debug)]
pub(crate) struct Registry {
    by_ip: Mutex<HashMap<IpAddr, Vec<Arc<Entry>>>>,
    total: AtomicUsize,
    max_total: usize,
    max_per_ip: usize,
}

/// A connection's slot in the registry, given back when dropped.
#[derive(Debug)]
pub(crate) struct Admission {
    registry: Arc<Registry>,
    ip: IpAddr,
    entry: Arc<Entry>,
}

impl Admission {
    pub fn entry(&self) -> &Entry {
        &self.entry
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut by_ip = self.registry.lock();
        if let Some(entries) = by_ip.get_mut(&self.ip) {
            entries.retain(|entry| !Arc::ptr_eq(entry, &self.entry));
            if entries.is_empty() {
                by_ip.remove(&self.ip);
            }
        }
        self.registry.total.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Registry {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Registry {
            by_ip: Mutex::default(),
            total: AtomicUsize::new(0),
            max_total,
            max_per_ip,
        }
    }

    /// Registers a new connection from `ip`, unless a limit is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let mut by_ip = self.lock();
        if self.total.load(Ordering::Acquire) >= self.max_total {
            return Err(Refusal::Total);
        }
        let entries = by_ip.entry(ip).or_default();
        if entries.len() >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        let entry = Arc::new(Entry::default());
        entries.push(Arc::clone(&entry));
        self.total.fetch_add(1, Ordering::AcqRel);
        Ok(Admission {
            registry: Arc::clone(self),
            ip,
            entry,
        })
    }

    /// Asks every connection from `source` (an address, or every address of a network) to
    /// close; returns how many were asked.
    pub fn close(&self, source: IpNet) -> usize {
        let by_ip = self.lock();
        let close = |entries: &Vec<Arc<Entry>>| {
            for entry in entries {
                entry.close.notify_one();
            }
            entries.len()
        };
        if source.prefix_len() == source.max_prefix_len() {
            return by_ip.get(&source.addr()).map_or(0, close);
        }
        by_ip
            .iter()
            .filter(|(ip, _)| source.contains(*ip))
            .map(|(_, entries)| close(entries))
            .sum()
    }

    /// The bindings of the connections whose upstream connection is made.
    pub fn bindings(&self) -> Vec<Binding> {
        let by_ip = self.lock();
        let entries = by_ip.values().flatten();
        entries
            .filter_map(|entry| entry.binding.get().copied())
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Vec<Arc<Entry>>>> {
        self.by_ip.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Observer for Registry {
    fn changed(&self, event: &Change) {
        if let Change::Banned { source, .. } = event {
            let asked = self.close(*source);
            if asked > 0 {
                tracing::debug!(%source, asked, "closing the connections of a banned source");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_and_total_limits_refuse_and_slots_come_back_on_drop() {
        let registry = Arc::new(Registry::new(3, 2));
        let a1 = registry.admit(ip("192.0.2.1")).unwrap();
        let _a2 = registry.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(registry.admit(ip("192.0.2.1")).unwrap_err(), Refusal::PerIp);
        let _b = registry.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(registry.admit(ip("192.0.2.3")).unwrap_err(), Refusal::Total);
        drop(a1);
        assert!(
            registry.admit(ip("192.0.2.3")).is_ok(),
            "a closed slot counts no more"
        );
    }

    #[tokio::test]
    async fn close_reaches_every_connection_of_the_banned_source_and_no_other() {
        let registry = Arc::new(Registry::new(10, 10));
        let banned = [
            registry.admit(ip("192.0.2.66")).unwrap(),
            registry.admit(ip("192.0.2.66")).unwrap(),
        ];
        let innocent = registry.admit(ip("192.0.2.7")).unwrap();
        let asked = registry.close(ip("192.0.2.66").into());
        assert_eq!(asked, 2);
        for admission in &banned {
            admission.entry().closed().await;
        }
        let untouched =
            tokio::time::timeout(std::time::Duration::ZERO, innocent.entry().closed()).await;
        assert!(
            untouched.is_err(),
            "an innocent connection was told to close"
        );
    }
}
