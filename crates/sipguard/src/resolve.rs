//! Names in the allowlist (docs/design.md section 10): a carrier publishes host names and SRV
//! names, not address lists, and moves its addresses.
//!
//! [`Names`] resolves each name at start and again when its answer's TTL runs out (clamped to
//! `allowlist.min_ttl` .. `allowlist.max_ttl`), with hickory-resolver against the system's DNS
//! or `allowlist.nameservers`. An SRV name (`_sip._udp.carrier.example`) is resolved to its
//! targets and they to addresses. An address a name no longer resolves to stays admitted for
//! `allowlist.grace`; a name that does not resolve is a warning and is asked again after
//! `min_ttl`, keeping what it resolved to before (a DNS outage must not lock a carrier out).
//!
//! The policy knows only networks: the allowlist it runs with is the file's networks plus the
//! addresses resolved now. [`Names::apply`] is the one place that puts them together, under one
//! lock, both for a reload (a new file, the same resolved addresses) and for a resolution that
//! changed the addresses (the same file): neither can undo the other.

use crate::config::NamesConfig;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use ipnet::IpNet;
use sipguard_policy::{AllowGroup, BuildError, Policy, PolicyConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One name's addresses: when each was last in an answer (`None`: in the latest one).
#[derive(Debug, Default)]
struct Resolved {
    addresses: BTreeMap<IpAddr, Option<Instant>>,
    due: Option<Instant>,
}

struct State {
    config: NamesConfig,
    /// The policy config as the file has it, before resolved addresses are added.
    base: PolicyConfig,
    names: BTreeMap<String, Resolved>,
    /// The addresses last handed to the policy.
    applied: BTreeSet<IpAddr>,
}

impl State {
    /// Every address some name stands for now (in its answer, or in its grace period).
    fn current(&self) -> BTreeSet<IpAddr> {
        self.names
            .values()
            .flat_map(|resolved| resolved.addresses.keys().copied())
            .collect()
    }
}

/// The allowlist's names, kept resolved into the policy's allowlist.
pub struct Names {
    policy: Arc<Policy>,
    state: Mutex<State>,
    /// The resolver, and the nameservers it was built for.
    resolver: Mutex<Option<(Vec<std::net::SocketAddr>, TokioResolver)>>,
    wake: Notify,
}

impl Names {
    /// Names of `config`, none resolved yet; `base` is the policy config in force.
    pub fn new(policy: Arc<Policy>, config: NamesConfig, base: PolicyConfig) -> Arc<Self> {
        let names = config
            .names
            .iter()
            .map(|(_, name)| (name.clone(), Resolved::default()))
            .collect();
        Arc::new(Names {
            policy,
            state: Mutex::new(State {
                config,
                base,
                names,
                applied: BTreeSet::new(),
            }),
            resolver: Mutex::new(None),
            wake: Notify::new(),
        })
    }

    /// Puts `base` (a reloaded config's policy settings) in force with the addresses the names
    /// resolve to now.
    pub fn apply(&self, base: PolicyConfig) -> Result<(), BuildError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.base = base;
        self.reconfigure(&mut state)
    }

    /// Takes a reloaded config's names and resolver settings: new names are resolved at once,
    /// names no longer listed are forgotten (without grace: the operator removed them).
    pub fn reload(&self, config: &NamesConfig) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names = std::mem::take(&mut state.names);
        state.names = config
            .names
            .iter()
            .map(|(_, name)| (name.clone(), names.remove(name).unwrap_or_default()))
            .collect();
        if state.config.nameservers != config.nameservers {
            for resolved in state.names.values_mut() {
                resolved.due = None;
            }
        }
        state.config = config.clone();
        self.wake.notify_one();
    }

    /// Each name's addresses join the group that lists the name (and so its identity).
    fn reconfigure(&self, state: &mut State) -> Result<(), BuildError> {
        let current = state.current();
        let mut config = state.base.clone();
        for (group, name) in &state.config.names {
            let Some(resolved) = state.names.get(name) else {
                continue;
            };
            let addresses = resolved.addresses.keys().map(|&ip| IpNet::from(ip));
            match config.allowlist.iter_mut().find(|g| g.name == *group) {
                Some(group) => group.networks.extend(addresses),
                None => config.allowlist.push(AllowGroup::new(group, addresses)),
            }
        }
        self.policy.reconfigure(config)?;
        state.applied = current;
        Ok(())
    }

    /// Resolves every name when due, and drops addresses past their grace, forever. The first
    /// round is [`Names::round`], which the daemon runs before the first packet.
    pub async fn run(self: Arc<Self>) -> std::io::Result<()> {
        loop {
            let wake_at = self.round().await;
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// Resolves the names that are due, drops addresses past their grace, applies what
    /// changed, and says when the next round is due.
    pub async fn round(&self) -> Option<Instant> {
        let (due, config) = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let due: Vec<String> = state
                .names
                .iter()
                .filter(|(_, resolved)| resolved.due.is_none_or(|at| at <= now))
                .map(|(name, _)| name.clone())
                .collect();
            (due, state.config.clone())
        };
        if due.is_empty() {
            return self.expire();
        }
        let resolver = {
            let mut cached = self.resolver.lock().unwrap_or_else(PoisonError::into_inner);
            match &*cached {
                Some((servers, resolver)) if *servers == config.nameservers => Ok(resolver.clone()),
                _ => build_resolver(&config.nameservers).inspect(|resolver| {
                    *cached = Some((config.nameservers.clone(), resolver.clone()));
                }),
            }
        };
        let resolver = match resolver {
            Ok(resolver) => resolver,
            Err(error) => {
                for name in due {
                    self.settle(
                        &name,
                        Err(format!("cannot set up the DNS resolver: {error}")),
                    );
                }
                return self.expire();
            }
        };
        // Every due name at once: one slow name does not hold the others up.
        let mut lookups = tokio::task::JoinSet::new();
        for name in due {
            let resolver = resolver.clone();
            lookups.spawn(async move {
                let answer = lookup(&resolver, &name).await;
                (name, answer)
            });
        }
        while let Some(done) = lookups.join_next().await {
            if let Ok((name, answer)) = done {
                self.settle(&name, answer);
            }
        }
        self.expire()
    }

    /// Drops addresses past their grace and applies the addresses if they changed; returns
    /// when the next name is due or the next grace ends.
    fn expire(&self) -> Option<Instant> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let grace = state.config.grace;
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for resolved in state.names.values_mut() {
            resolved
                .addresses
                .retain(|_, gone| gone.is_none_or(|since| since + grace > now));
            let ends = resolved
                .addresses
                .values()
                .flatten()
                .map(|since| *since + grace);
            for at in ends.chain(resolved.due) {
                next = Some(next.map_or(at, |next| next.min(at)));
            }
        }
        let current = state.current();
        if current != state.applied {
            match self.reconfigure(&mut state) {
                Ok(()) => tracing::info!(addresses = current.len(), "allowlist names applied"),
                Err(error) => {
                    tracing::error!(%error, "cannot apply the allowlist's resolved names")
                }
            }
        }
        next
    }

    /// Records one name's answer: its addresses and TTL, or a failure that keeps what it had.
    fn settle(&self, name: &str, answer: Result<(BTreeSet<IpAddr>, Duration), String>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (min, max) = (state.config.min_ttl, state.config.max_ttl);
        let Some(resolved) = state.names.get_mut(name) else {
            return;
        };
        let now = Instant::now();
        match answer {
            Ok((addresses, ttl)) => {
                if addresses.is_empty() {
                    tracing::warn!(%name, "allowlist name resolves to no address");
                }
                for (address, gone) in resolved.addresses.iter_mut() {
                    if addresses.contains(address) {
                        *gone = None;
                    } else if gone.is_none() {
                        *gone = Some(now);
                        tracing::info!(%name, %address, "allowlist name no longer resolves to this address; it stays admitted for the grace period");
                    }
                }
                for address in addresses {
                    resolved.addresses.insert(address, None);
                }
                resolved.due = Some(now + ttl.clamp(min, max));
            }
            Err(error) => {
                metrics::counter!("sipguard_allowlist_resolve_errors_total").increment(1);
                tracing::warn!(%name, %error, kept = resolved.addresses.len(), "allowlist name did not resolve; asked again later");
                resolved.due = Some(now + min);
            }
        }
    }
}

fn build_resolver(nameservers: &[std::net::SocketAddr]) -> Result<TokioResolver, String> {
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|err| err.to_string())?
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.timeout = Duration::from_secs(5);
    builder.build().map_err(|err| err.to_string())
}

/// The addresses `name` stands for and how long the answer holds. An SRV name (first label
/// starting with `_`) is resolved to its targets' addresses; a name with no records resolves
/// to no address, which starts the grace period of what it had.
async fn lookup(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(BTreeSet<IpAddr>, Duration), String> {
    let fqdn = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    let now = std::time::Instant::now();
    let until = |valid: std::time::Instant| valid.saturating_duration_since(now);
    let targets: Vec<(String, Option<Duration>)> = if name.starts_with('_') {
        match resolver.srv_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let ttl = until(lookup.valid_until());
                lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::SRV(srv) => Some((srv.target.to_string(), Some(ttl))),
                        _ => None,
                    })
                    .collect()
            }
            Err(err) if err.is_no_records_found() || err.is_nx_domain() => Vec::new(),
            Err(err) => return Err(err.to_string()),
        }
    } else {
        vec![(fqdn, None)]
    };
    let mut addresses = BTreeSet::new();
    let mut ttl: Option<Duration> = None;
    let mut shorter = |candidate: Duration| ttl = Some(ttl.map_or(candidate, |t| t.min(candidate)));
    for (target, srv_ttl) in targets {
        if let Some(srv_ttl) = srv_ttl {
            shorter(srv_ttl);
        }
        match resolver.lookup_ip(target.as_str()).await {
            Ok(lookup) => {
                shorter(until(lookup.valid_until()));
                addresses.extend(lookup.iter());
            }
            Err(err) if err.is_no_records_found() || err.is_nx_domain() => {}
            Err(err) => return Err(err.to_string()),
        }
    }
    Ok((addresses, ttl.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARRIER: &str = "sip.carrier.example";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn setup() -> (Arc<Policy>, Arc<Names>) {
        let base = PolicyConfig {
            allowlist: vec![AllowGroup::new(
                "carrier",
                ["203.0.113.0/24".parse().unwrap()],
            )],
            ..PolicyConfig::default()
        };
        let policy = Arc::new(Policy::new(base.clone()).unwrap());
        let config = NamesConfig {
            names: vec![("carrier".to_owned(), CARRIER.to_owned())],
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(60),
            grace: Duration::from_secs(30),
            ..NamesConfig::default()
        };
        let names = Names::new(Arc::clone(&policy), config, base);
        (policy, names)
    }

    fn allowlisted(policy: &Policy, address: &str) -> bool {
        let address = ip(address);
        policy
            .config()
            .allowlist
            .iter()
            .flat_map(|group| &group.networks)
            .any(|net| net.contains(&address))
    }

    #[tokio::test(start_paused = true)]
    async fn a_moved_name_admits_its_new_address_and_keeps_the_old_one_for_the_grace_period() {
        let (policy, names) = setup();
        let answer =
            |address: &str, ttl: u64| Ok((BTreeSet::from([ip(address)]), Duration::from_secs(ttl)));
        names.settle(CARRIER, answer("198.51.100.7", 1));
        let next = names.expire().unwrap();
        assert!(allowlisted(&policy, "198.51.100.7"));
        assert!(
            allowlisted(&policy, "203.0.113.0"),
            "the file's networks stay"
        );
        assert_eq!(
            next - Instant::now(),
            Duration::from_secs(5),
            "a TTL of 1 s is held to min_ttl"
        );

        tokio::time::advance(Duration::from_secs(5)).await;
        names.settle(CARRIER, answer("198.51.100.8", 3600));
        let next = names.expire().unwrap();
        assert!(allowlisted(&policy, "198.51.100.8"));
        assert!(
            allowlisted(&policy, "198.51.100.7"),
            "within its grace period"
        );
        assert_eq!(
            next - Instant::now(),
            Duration::from_secs(30),
            "the grace ends first"
        );

        tokio::time::advance(Duration::from_secs(30)).await;
        names.expire();
        assert!(!allowlisted(&policy, "198.51.100.7"));
        assert!(allowlisted(&policy, "198.51.100.8"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_lookup_keeps_what_the_name_had_and_a_reload_keeps_the_resolved_addresses() {
        let (policy, names) = setup();
        names.settle(
            CARRIER,
            Ok((
                BTreeSet::from([ip("198.51.100.7")]),
                Duration::from_secs(60),
            )),
        );
        names.expire();
        tokio::time::advance(Duration::from_secs(61)).await;
        names.settle(CARRIER, Err("timed out".to_owned()));
        tokio::time::advance(Duration::from_secs(3600)).await;
        names.expire();
        assert!(
            allowlisted(&policy, "198.51.100.7"),
            "a DNS outage locks nobody out"
        );

        // A reloaded file (another network) keeps the resolved address beside it.
        let reloaded = PolicyConfig {
            allowlist: vec![AllowGroup::new(
                "carrier",
                ["192.0.2.0/24".parse().unwrap()],
            )],
            ..PolicyConfig::default()
        };
        names.apply(reloaded).unwrap();
        assert!(allowlisted(&policy, "198.51.100.7"));
        assert!(allowlisted(&policy, "192.0.2.0"));
        assert!(!allowlisted(&policy, "203.0.113.0"));
    }
}
