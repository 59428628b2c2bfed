//! Kernel offload: the policy's bans and the blocklist feeds mirrored into an nftables table of
//! sipguard's own, so the kernel drops a banned or listed source's packets to the SIP ports
//! before any socket wakes up.
//!
//! The table (`inet <nftables.table>`) holds the bans in four sets with per-element timeouts,
//! `addr4` and `addr6` (hash sets of banned addresses) and `net4` and `net6` (interval sets of
//! banned prefixes: apart from the addresses, so an address inside a banned prefix never makes
//! an overlapping interval); the feeds' ranges in `feeds4` and `feeds6` (interval sets); two
//! exemption sets for the feeds, `allow4`/`allow6` (the allowlist, intervals) and
//! `trusted4`/`trusted6` (trusted sources, timeouts); and `ban_ports` and `feed_ports`, the
//! (protocol, port) of sipguard's own bound listeners, each element with a counter. One input
//! chain drops `saddr @set` to `@ban_ports` for each ban set, and `saddr @feeds`, not
//! `@allow` and not `@trusted`, to `@feed_ports`: ssh or anything else on the host is never
//! touched. A port set is the rules' last match before the drop, so its counters count the
//! drops, and `nft list set` reads them without dumping the address sets (listing a chain or
//! a named counter makes nft 1.0 fetch every element of the table: 0.5 s at 100,000 ranges).
//! Each ban element's timeout is the ban's remaining time rounded down, so the kernel never drops
//! longer than sipguard would.
//!
//! The shield, last in the chain: what sources neither allowlisted nor trusted send to the
//! listeners, all together, goes through one named limit (`nftables.untrusted_limit` a second,
//! shared by both families' rules) and the excess is dropped, counted by `shield_ports`. A flood
//! with a new forged source per packet cannot be banned; capped in the kernel, it leaves the
//! listener's buffer to the phones and carriers. A reload that changes the limit replaces the
//! chain's rules and the limit in one transaction.
//!
//! The policy stays the source of truth and still checks every packet that reaches it: the sets
//! are an accelerator. [`NftSink`] follows the policy's changes into a bounded queue (never
//! waiting, on the packet path); one task batches them (every [`BATCH`]) into one `nft -j -f -`
//! transaction. A ban is written as add (timeout 1 s), delete, add: adding an element that is
//! present is a no-op and deleting one that is absent an error, so this replaces the timeout of a
//! present one and removes an absent one without failing the transaction; trust is written the
//! same way. What never enters the ban sets: an address or prefix overlapping the allowlist, and
//! a prefix holding a trusted source (the policy lets those through; a source trusted later
//! takes its prefix out). A failed transaction, a full queue or a changed allowlist rebuild the
//! ban and trust sets from the policy's snapshot.
//!
//! The feeds' sets follow the policy's feed set (`Policy::feeds`, looked at every
//! [`CHECK_EVERY`]): when its spans (what is listed, whichever list says so) differ from what
//! was pushed, one transaction flushes the sets and adds every range, so the kernel holds the
//! old list or the new, never a mix. Userspace admits a listed source that is allowlisted or
//! trusted, and so must the kernel. The allowlist is an exemption set rather than cut out of
//! the ranges: a reload or a name's new address then rewrites a few elements, not the whole
//! list, and the feed sets stay the feeds' own. Trust changes with every phone that proves
//! itself, so it can only be a set of its own, kept current from the policy's changes; each
//! element outlives the trust it mirrors by the policy's slack in publishing it (an eighth of
//! `trust_for`), since letting through a source that is no longer trusted only hands it back
//! to sipguard's own check.
//!
//! The `nft` tool's JSON interface rather than a netlink crate: it is the interface nftables
//! documents as stable (libnftables-json), each batch is one atomic transaction, it needs no C
//! library at build time, and the nftnl/rustables crates trail the kernel's features (timeouts on
//! interval sets). The cost, a process per batch, is paid per batch, not per packet.

use crate::config::NftConfig;
use crate::Config;
use metrics::{counter, gauge, Counter, Gauge};
use serde_json::{json, Value};
use sipguard_policy::{Change, Feeds, IpNet, Observer, Policy, Spans, Timestamp};
use sipguard_relay::Clock;
use std::collections::HashSet;
use std::net::IpAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

/// How long updates gather before one transaction carries them.
const BATCH: Duration = Duration::from_millis(20);
/// Updates waiting beyond this are dropped and the sets rebuilt from the snapshot instead.
const QUEUE: usize = 16_384;
/// How often the task looks whether the allowlist or the feeds changed (a reload, a fetch).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Longest one `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a push of the feeds may take (100,000 ranges take under a second).
const LISTS_TIMEOUT: Duration = Duration::from_secs(60);
/// After a failed push of the feeds or the allowlist, the wait before the next try: the push is
/// the whole list.
const LISTS_RETRY: Duration = Duration::from_secs(30);
/// How often the drop counters are read into /metrics.
const COUNT_EVERY: Duration = Duration::from_secs(5);

/// A SIP listener's protocol, as nftables names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// UDP listeners.
    Udp,
    /// TCP and TLS listeners.
    Tcp,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// What the kernel drops, by the rule that drops it: the label of the drop counters, and the
/// port set whose counters count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drops {
    /// Banned sources (`addr4`, `addr6`, `net4`, `net6`).
    Bans,
    /// Sources a feed lists (`feeds4`, `feeds6`).
    Feeds,
    /// Untrusted packets past the shield's rate.
    Shield,
}

impl Drops {
    const ALL: [Drops; 3] = [Drops::Bans, Drops::Feeds, Drops::Shield];

    fn as_str(self) -> &'static str {
        match self {
            Drops::Bans => "bans",
            Drops::Feeds => "feeds",
            Drops::Shield => "shield",
        }
    }

    fn ports_set(self) -> &'static str {
        match self {
            Drops::Bans => "ban_ports",
            Drops::Feeds => "feed_ports",
            Drops::Shield => "shield_ports",
        }
    }
}

/// The shield's named limit: one token bucket for both families' rules.
const SHIELD: &str = "shield";
/// The listeners' (protocol, port) without counters: what the shield's limit looks at, so no
/// other port's traffic spends its budget.
const SIP_PORTS: &str = "sip_ports";

/// The shield's burst for a rate of `limit` packets a second: a hundredth of a second's worth, so
/// packets a NIC hands over in one batch pass, and at least nft's default of 5.
fn shield_burst(limit: u32) -> u32 {
    (limit / 100).max(5)
}

/// One change for the kernel sets.
#[derive(Debug, Clone, Copy)]
enum Update {
    Ban(IpNet, Timestamp),
    Unban(IpNet),
    Trusted(IpAddr, Timestamp),
    Distrusted(IpAddr),
}

/// The offload's metrics, registered where the caller says (the relay's recorder).
pub struct Metrics {
    active: Gauge,
    ok: Counter,
    failed: Counter,
    /// Packets and bytes the kernel dropped, by [`Drops`] in order.
    dropped: [(Counter, Counter); 3],
}

impl Metrics {
    /// Registers the families, at 0.
    pub fn register() -> Self {
        let transactions = |result: &'static str| {
            let counter = counter!("sipguard_nftables_transactions_total", "result" => result);
            counter.increment(0);
            counter
        };
        let dropped = Drops::ALL.map(|drops| {
            let packets =
                counter!("sipguard_kernel_dropped_packets_total", "set" => drops.as_str());
            let bytes = counter!("sipguard_kernel_dropped_bytes_total", "set" => drops.as_str());
            packets.increment(0);
            bytes.increment(0);
            (packets, bytes)
        });
        let active = gauge!("sipguard_nftables_active");
        active.set(0.0);
        Metrics {
            active,
            ok: transactions("ok"),
            failed: transactions("error"),
            dropped,
        }
    }
}

/// The running offload; [`Offload::stop`] removes the table.
pub struct Offload {
    table: String,
    task: tokio::task::JoinHandle<()>,
    counting: tokio::task::JoinHandle<()>,
}

/// The policy's observer: queues each change for the offload task, never waits.
struct NftSink {
    queue: mpsc::Sender<Update>,
    resync: Arc<AtomicBool>,
}

impl Observer for NftSink {
    fn changed(&self, change: &Change) {
        let update = match change {
            Change::Banned { source, ban } | Change::Announced { source, ban } if !ban.quiet => {
                Update::Ban(*source, ban.expires)
            }
            // Pushed when it is announced: a forged source that never comes back would cost a
            // set update for nothing.
            Change::Banned { .. } | Change::Announced { .. } => return,
            Change::Lifted { source, .. } | Change::Expired { source, .. } => {
                Update::Unban(*source)
            }
            Change::Trusted { source, until } => Update::Trusted(*source, *until),
            Change::Distrusted { source } => Update::Distrusted(*source),
        };
        if self.queue.try_send(update).is_err() {
            self.resync.store(true, Ordering::Relaxed);
        }
    }
}

impl Offload {
    /// Creates the table for the listeners on `ports` (replacing one left by an unclean stop),
    /// fills it from the policy's bans, trust, allowlist and feeds and follows the policy from
    /// then on, and the shield's limit through `reloads` (the config in force after each
    /// reload). `None`, after one warning, when nftables cannot be used (no `nft`, no
    /// CAP_NET_ADMIN): sipguard then drops banned and listed sources itself, as it always does.
    pub async fn start(
        config: NftConfig,
        reloads: watch::Receiver<Config>,
        ports: Vec<(Proto, u16)>,
        policy: Arc<Policy>,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
    ) -> Option<Offload> {
        let NftConfig {
            table,
            untrusted_limit,
        } = config;
        if let Err(reason) = nft(&setup(&table, &ports, untrusted_limit), NFT_TIMEOUT).await {
            tracing::warn!(table = %table, %reason, "kernel offload of bans is off (it needs the nft tool and CAP_NET_ADMIN); sipguard drops banned sources itself");
            return None;
        }
        metrics.active.set(1.0);
        tracing::info!(table = %table, untrusted_limit, "bans are offloaded to nftables");
        let (queue, updates) = mpsc::channel(QUEUE);
        let resync = Arc::new(AtomicBool::new(true));
        policy.subscribe(Arc::new(NftSink {
            queue,
            resync: Arc::clone(&resync),
        }));
        let counting = tokio::spawn(count_drops(table.clone(), metrics.dropped.clone()));
        let worker = Worker {
            table: table.clone(),
            policy,
            clock,
            resync,
            pushed_nets: HashSet::new(),
            allowlist: Vec::new(),
            lists: Lists::default(),
            reloads,
            shield: untrusted_limit,
            shield_retry_at: None,
            metrics,
        };
        let task = tokio::spawn(worker.run(updates));
        Some(Offload {
            table,
            task,
            counting,
        })
    }

    /// Stops following the policy and removes the table.
    pub async fn stop(self) {
        self.task.abort();
        self.counting.abort();
        let _ = self.task.await;
        let _ = self.counting.await;
        let delete =
            json!({"nftables": [{"delete": {"table": {"family": "inet", "name": self.table}}}]});
        match nft(&delete, NFT_TIMEOUT).await {
            Ok(()) => tracing::info!(table = %self.table, "nftables table removed"),
            Err(reason) => {
                tracing::warn!(table = %self.table, %reason, "cannot remove the nftables table")
            }
        }
    }
}

/// What the kernel's allowlist and feed sets hold (both empty in a new table).
#[derive(Default)]
struct Lists {
    /// The allowlist's networks in `allow4`/`allow6`.
    allowlist: Vec<IpNet>,
    /// The policy's feed set last looked at, so an unchanged one costs a pointer comparison.
    feeds_seen: Option<Arc<Feeds>>,
    /// The ranges in `feeds4`/`feeds6`.
    feeds: Spans,
    /// No push before this, after a failed one.
    retry_at: Option<Instant>,
}

/// One push of the allowlist's or the feeds' sets: the commands, and what the sets then hold.
struct ListPush {
    commands: Vec<Value>,
    allowlist: Option<Vec<IpNet>>,
    feeds: Option<Spans>,
}

struct Worker {
    table: String,
    policy: Arc<Policy>,
    clock: Arc<dyn Clock>,
    resync: Arc<AtomicBool>,
    /// Prefixes in the `net` sets, to take out the one a newly trusted source lies in.
    pushed_nets: HashSet<IpNet>,
    /// The allowlist the ban sets were last built against.
    allowlist: Vec<IpNet>,
    lists: Lists,
    /// The config in force, for the shield's limit.
    reloads: watch::Receiver<Config>,
    /// The shield's limit the chain holds.
    shield: u32,
    /// No change of the shield before this, after a failed one.
    shield_retry_at: Option<Instant>,
    metrics: Metrics,
}

impl Worker {
    async fn run(mut self, mut updates: mpsc::Receiver<Update>) {
        let mut batch = Vec::new();
        loop {
            let groups = self.policy.config().allowlist;
            let allowlist: Vec<IpNet> = groups
                .iter()
                .flat_map(|group| group.networks.iter().copied())
                .collect();
            if allowlist != self.allowlist {
                self.allowlist = allowlist;
                self.resync.store(true, Ordering::Relaxed);
            }
            self.follow_lists().await;
            self.follow_shield().await;
            let commands = if self.resync.swap(false, Ordering::Relaxed) {
                while updates.try_recv().is_ok() {}
                self.rebuild()
            } else {
                match tokio::time::timeout(CHECK_EVERY, updates.recv()).await {
                    Ok(Some(first)) => batch.push(first),
                    Ok(None) => return,
                    Err(_) => continue,
                }
                tokio::time::sleep(BATCH).await;
                while batch.len() < QUEUE {
                    match updates.try_recv() {
                        Ok(update) => batch.push(update),
                        Err(_) => break,
                    }
                }
                self.apply(batch.drain(..))
            };
            if commands.is_empty() {
                continue;
            }
            match nft(&json!({ "nftables": commands }), NFT_TIMEOUT).await {
                Ok(()) => self.metrics.ok.increment(1),
                Err(reason) => {
                    self.metrics.failed.increment(1);
                    tracing::warn!(table = %self.table, %reason, "nftables update failed; rebuilding the sets from the bans in force");
                    self.resync.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Pushes the allowlist's and the feeds' sets when they changed, in one transaction.
    async fn follow_lists(&mut self) {
        let now = Instant::now();
        let feeds = self.policy.feeds();
        let Some(push) = self.lists.push(&self.table, &self.allowlist, feeds, now) else {
            return;
        };
        let ranges = push.feeds.as_ref().map(Spans::len);
        match nft(&json!({ "nftables": push.commands }), LISTS_TIMEOUT).await {
            Ok(()) => {
                self.metrics.ok.increment(1);
                self.lists.pushed(push.allowlist, push.feeds);
                if let Some(ranges) = ranges {
                    let took_ms = now.elapsed().as_millis() as u64;
                    tracing::info!(table = %self.table, ranges, took_ms, "blocklist feeds pushed to nftables");
                }
            }
            Err(reason) => {
                self.metrics.failed.increment(1);
                tracing::warn!(table = %self.table, %reason, retry_in = ?LISTS_RETRY, "nftables update of the feeds or the allowlist failed");
                self.lists.failed(now);
            }
        }
    }

    /// Replaces the chain's rules when a reload changed the shield's limit.
    async fn follow_shield(&mut self) {
        let now = Instant::now();
        let wanted = match &self.reloads.borrow().nftables {
            Some(config) => config.untrusted_limit,
            None => self.shield,
        };
        if wanted == self.shield || self.shield_retry_at.is_some_and(|at| now < at) {
            return;
        }
        match nft(&reshield(&self.table, wanted), NFT_TIMEOUT).await {
            Ok(()) => {
                self.metrics.ok.increment(1);
                tracing::info!(table = %self.table, untrusted_limit = wanted, was = self.shield, "the shield's limit changed");
                self.shield = wanted;
                self.shield_retry_at = None;
            }
            Err(reason) => {
                self.metrics.failed.increment(1);
                tracing::warn!(table = %self.table, %reason, retry_in = ?LISTS_RETRY, "nftables update of the shield's limit failed");
                self.shield_retry_at = Some(now + LISTS_RETRY);
            }
        }
    }

    /// The commands that empty the ban and trust sets and fill them with every ban and trusted
    /// source in force.
    fn rebuild(&mut self) -> Vec<Value> {
        self.pushed_nets.clear();
        let now = self.clock.now();
        let mut commands: Vec<Value> = ["addr4", "addr6", "net4", "net6", "trusted4", "trusted6"]
            .into_iter()
            .map(|set| flush(&self.table, set))
            .collect();
        let mut bans = self.policy.bans(now);
        // Widest first, so a prefix inside one already pushed is left out (no overlap).
        bans.sort_by_key(|(source, _)| source.prefix_len());
        for (source, ban) in bans {
            let inside = self.pushed_nets.iter().any(|net| net.contains(&source));
            if !inside && self.admitted(source, now) {
                commands.push(self.ban_element("add", source, ban.expires.since(now)));
                if !is_host(source) {
                    self.pushed_nets.insert(source);
                }
            }
        }
        let slack = self.trust_slack();
        for (source, until) in self.policy.trusted_sources(now) {
            commands.push(self.trust_element("add", source, trust_left(until, now, slack)));
        }
        commands
    }

    /// The commands carrying `updates`.
    fn apply(&mut self, updates: impl Iterator<Item = Update>) -> Vec<Value> {
        let now = self.clock.now();
        let slack = self.trust_slack();
        let mut commands = Vec::new();
        for update in updates {
            let (source, ban) = match update {
                Update::Ban(source, expires) => (source, Some(expires)),
                Update::Unban(source) => (source, None),
                Update::Trusted(address, until) => {
                    commands.extend(self.trust(address, Some(trust_left(until, now, slack))));
                    let Some(net) = self
                        .pushed_nets
                        .iter()
                        .copied()
                        .find(|n| n.contains(&address))
                    else {
                        continue;
                    };
                    (net, None)
                }
                Update::Distrusted(address) => {
                    commands.extend(self.trust(address, None));
                    continue;
                }
            };
            let remaining = ban
                .map(|expires| expires.since(now))
                .filter(|left| left.as_secs() > 0 && self.admitted(source, now));
            self.pushed_nets.remove(&source);
            commands.extend(self.replace(source, remaining));
            if remaining.is_some() && !is_host(source) {
                self.pushed_nets.insert(source);
            }
        }
        commands
    }

    /// Whether a ban of `source` may enter the kernel: not overlapping the allowlist, an address
    /// or a prefix of the length the policy bans, and (a prefix) holding no trusted source.
    fn admitted(&self, source: IpNet, now: Timestamp) -> bool {
        let overlaps = |net: &IpNet| net.contains(&source.addr()) || source.contains(net);
        if self.allowlist.iter().any(overlaps) {
            return false;
        }
        if is_host(source) {
            return true;
        }
        let prefix_len = self.policy.config().ipv6_prefix_len;
        source.addr().is_ipv6()
            && source.prefix_len() == prefix_len
            && !self
                .policy
                .trusted_sources(now)
                .iter()
                .any(|(trusted, _)| source.contains(trusted))
    }

    /// How much longer a trust may run than the policy last said: it publishes a later expiry
    /// only once the expiry moved by an eighth of `trust_for`.
    fn trust_slack(&self) -> Duration {
        self.policy.config().trust_for / 8
    }

    /// The ban element of `source` replaced: with a timeout of `remaining`, or gone.
    fn replace(&self, source: IpNet, remaining: Option<Duration>) -> Vec<Value> {
        replaced(
            |op, timeout| self.ban_element(op, source, timeout),
            remaining,
        )
    }

    /// The trusted set's element of `address` replaced: with a timeout of `left`, or gone.
    fn trust(&self, address: IpAddr, left: Option<Duration>) -> Vec<Value> {
        replaced(|op, timeout| self.trust_element(op, address, timeout), left)
    }

    /// One element command on the ban set `source` belongs in; `timeout` (whole seconds,
    /// rounded down) for an add.
    fn ban_element(&self, op: &str, source: IpNet, timeout: Duration) -> Value {
        let v4 = source.addr().is_ipv4();
        let set = match (is_host(source), v4) {
            (true, true) => "addr4",
            (true, false) => "addr6",
            (false, true) => "net4",
            (false, false) => "net6",
        };
        let value = if is_host(source) {
            json!(source.addr().to_string())
        } else {
            json!({"prefix": {"addr": source.network().to_string(), "len": source.prefix_len()}})
        };
        element(&self.table, op, set, value, timeout)
    }

    /// One element command on the trusted set of `address`'s family.
    fn trust_element(&self, op: &str, address: IpAddr, timeout: Duration) -> Value {
        let address = address.to_canonical();
        let set = if address.is_ipv4() {
            "trusted4"
        } else {
            "trusted6"
        };
        element(&self.table, op, set, json!(address.to_string()), timeout)
    }
}

impl Lists {
    /// The transaction that brings the allowlist's and the feeds' sets to `allowlist` and
    /// `feeds`, with what they then hold; `None` when they hold that already, or while a failed
    /// push waits for its retry.
    fn push(
        &mut self,
        table: &str,
        allowlist: &[IpNet],
        feeds: Arc<Feeds>,
        now: Instant,
    ) -> Option<ListPush> {
        if self.retry_at.is_some_and(|at| now < at) {
            return None;
        }
        let mut push = ListPush {
            commands: Vec::new(),
            allowlist: None,
            feeds: None,
        };
        if self.allowlist != allowlist {
            let allowed = Spans::of(allowlist.iter().copied());
            push.commands.extend(fill(table, "allow", &allowed));
            push.allowlist = Some(allowlist.to_vec());
        }
        let seen = self
            .feeds_seen
            .as_ref()
            .is_some_and(|seen| Arc::ptr_eq(seen, &feeds));
        if !seen {
            let spans = feeds.spans();
            self.feeds_seen = Some(feeds);
            if spans != self.feeds {
                push.commands.extend(fill(table, "feeds", &spans));
                push.feeds = Some(spans);
            }
        }
        (!push.commands.is_empty()).then_some(push)
    }

    /// A push went through: the sets hold what it carried.
    fn pushed(&mut self, allowlist: Option<Vec<IpNet>>, feeds: Option<Spans>) {
        self.retry_at = None;
        if let Some(allowlist) = allowlist {
            self.allowlist = allowlist;
        }
        if let Some(feeds) = feeds {
            self.feeds = feeds;
        }
    }

    /// A push failed, changing nothing (a transaction is whole or nothing): the next try, after
    /// [`LISTS_RETRY`], looks at the feeds afresh.
    fn failed(&mut self, now: Instant) {
        self.feeds_seen = None;
        self.retry_at = Some(now + LISTS_RETRY);
    }
}

/// Add with a 1 s timeout, delete, and add again for `timeout` (if any), each command made by
/// `element(op, timeout)`: the element ends up with exactly that timeout, or gone, whether it
/// was present or not.
fn replaced(element: impl Fn(&str, Duration) -> Value, timeout: Option<Duration>) -> Vec<Value> {
    let mut commands = vec![
        element("add", Duration::from_secs(1)),
        element("delete", Duration::ZERO),
    ];
    commands.extend(timeout.map(|timeout| element("add", timeout)));
    commands
}

/// How long the kernel exempts a source trusted until `until`: the time left, rounded up, and
/// the policy's `slack` in publishing a later expiry, so the element never ends before the trust.
fn trust_left(until: Timestamp, now: Timestamp, slack: Duration) -> Duration {
    Duration::from_secs(until.since(now).as_secs() + 1) + slack
}

fn is_host(source: IpNet) -> bool {
    source.prefix_len() == source.max_prefix_len()
}

fn flush(table: &str, set: &str) -> Value {
    json!({"flush": {"set": {"family": "inet", "table": table, "name": set}}})
}

/// One element command; `timeout` (whole seconds, at least 1) for an add.
fn element(table: &str, op: &str, set: &str, value: Value, timeout: Duration) -> Value {
    let elem = if op == "add" {
        json!({"elem": {"val": value, "timeout": timeout.as_secs().max(1)}})
    } else {
        value
    };
    json!({ op: {"element": {"family": "inet", "table": table, "name": set, "elem": [elem]}}})
}

/// Flushes the interval sets `{name}4` and `{name}6` and adds `spans` to them: in one
/// transaction, the sets go from their old contents to the new at once.
fn fill(table: &str, name: &str, spans: &Spans) -> Vec<Value> {
    fn range<A: ToString + PartialEq>((first, last): &(A, A)) -> Value {
        if first == last {
            json!(first.to_string())
        } else {
            json!({"range": [first.to_string(), last.to_string()]})
        }
    }
    let families = [
        (
            format!("{name}4"),
            spans.v4.iter().map(range).collect::<Vec<_>>(),
        ),
        (
            format!("{name}6"),
            spans.v6.iter().map(range).collect::<Vec<_>>(),
        ),
    ];
    let mut commands = Vec::new();
    for (set, elements) in families {
        commands.push(flush(table, &set));
        if !elements.is_empty() {
            commands.push(json!({"add": {"element": {"family": "inet", "table": table, "name": set, "elem": elements}}}));
        }
    }
    commands
}

/// The table, created afresh: its sets, the ports of sipguard's listeners, and the chain with
/// the shield at `untrusted_limit`.
fn setup(table: &str, ports: &[(Proto, u16)], untrusted_limit: u32) -> Value {
    let family = "inet";
    let set = |name: &str, kind: &str, flags: &[&str]| json!({"add": {"set": {"family": family, "table": table, "name": name, "type": kind, "flags": flags}}});
    let port_elements: Vec<Value> = ports
        .iter()
        .map(|(proto, port)| json!({"concat": [proto.as_str(), port]}))
        .collect();
    let table_ref = json!({"table": {"family": family, "name": table}});
    let mut commands = vec![
        // Add, then delete: a table left by an unclean stop is replaced, and none is no error.
        json!({ "add": table_ref }),
        json!({ "delete": table_ref }),
        json!({ "add": table_ref }),
        set("addr4", "ipv4_addr", &["timeout"]),
        set("addr6", "ipv6_addr", &["timeout"]),
        set("net4", "ipv4_addr", &["interval", "timeout"]),
        set("net6", "ipv6_addr", &["interval", "timeout"]),
        set("feeds4", "ipv4_addr", &["interval"]),
        set("feeds6", "ipv6_addr", &["interval"]),
        set("allow4", "ipv4_addr", &["interval"]),
        set("allow6", "ipv6_addr", &["interval"]),
        set("trusted4", "ipv4_addr", &["timeout"]),
        set("trusted6", "ipv6_addr", &["timeout"]),
    ];
    let ports_set = |name: &str, counted: bool| {
        let stmt = if counted {
            json!([{"counter": null}])
        } else {
            json!([])
        };
        json!({"add": {"set": {"family": family, "table": table, "name": name, "type": ["inet_proto", "inet_service"], "stmt": stmt}}})
    };
    // Each element of a drop's port set counts what the rules using the set drop to its port.
    let port_sets = Drops::ALL
        .map(|drops| (drops.ports_set(), true))
        .into_iter()
        .chain([(SIP_PORTS, false)]);
    for (name, counted) in port_sets {
        commands.push(ports_set(name, counted));
        if !port_elements.is_empty() {
            commands.push(json!({"add": {"element": {"family": family, "table": table, "name": name, "elem": port_elements}}}));
        }
    }
    commands.extend(chain(table, untrusted_limit));
    json!({ "nftables": commands })
}

/// The input chain and its rules: the bans' drops, the feeds', and the shield's at
/// `untrusted_limit` (none at 0), after them, with its named limit.
fn chain(table: &str, untrusted_limit: u32) -> Vec<Value> {
    let family = "inet";
    let saddr = |protocol: &str, op: &str, set: &str| json!({"match": {"op": op, "left": {"payload": {"protocol": protocol, "field": "saddr"}}, "right": format!("@{set}")}});
    let ports = |set: &str| json!({"match": {"op": "==", "left": {"concat": [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "right": format!("@{set}")}});
    let rule = |comment: String, mut matches: Vec<Value>, drops: Drops| {
        matches.extend([
            ports(drops.ports_set()),
            json!({"counter": null}),
            json!({"drop": null}),
        ]);
        json!({"add": {"rule": {"family": family, "table": table, "chain": "input", "comment": comment, "expr": matches}}})
    };
    let mut commands = vec![
        json!({"add": {"chain": {"family": family, "table": table, "name": "input", "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}}}),
    ];
    if untrusted_limit > 0 {
        commands.push(json!({"add": {"limit": {"family": family, "table": table, "name": SHIELD, "rate": untrusted_limit, "per": "second", "burst": shield_burst(untrusted_limit), "inv": true}}}));
    }
    for (protocol, set) in [
        ("ip", "addr4"),
        ("ip", "net4"),
        ("ip6", "addr6"),
        ("ip6", "net6"),
    ] {
        let matches = vec![saddr(protocol, "==", set)];
        commands.push(rule(format!("sipguard bans: {set}"), matches, Drops::Bans));
    }
    for (protocol, family_bits) in [("ip", "4"), ("ip6", "6")] {
        let matches = vec![
            saddr(protocol, "==", &format!("feeds{family_bits}")),
            saddr(protocol, "!=", &format!("allow{family_bits}")),
            saddr(protocol, "!=", &format!("trusted{family_bits}")),
        ];
        commands.push(rule(
            format!("sipguard feeds: feeds{family_bits}"),
            matches,
            Drops::Feeds,
        ));
    }
    if untrusted_limit > 0 {
        // The listeners' ports first, so only their packets spend the limit's tokens; the
        // counting port set after the limit, so its counters count the drops.
        for (protocol, family_bits) in [("ip", "4"), ("ip6", "6")] {
            let matches = vec![
                ports(SIP_PORTS),
                saddr(protocol, "!=", &format!("allow{family_bits}")),
                saddr(protocol, "!=", &format!("trusted{family_bits}")),
                json!({ "limit": SHIELD }),
            ];
            commands.push(rule(
                format!("sipguard shield: untrusted{family_bits}"),
                matches,
                Drops::Shield,
            ));
        }
    }
    commands
}

/// The transaction that sets the shield's limit to `untrusted_limit` (0: none): the chain's
/// rules replaced whole, and the limit object with them (a limit cannot be changed in place, nor
/// deleted while a rule uses it). One transaction, so the kernel goes from the old rules to the
/// new at once; the sets and their counters stay.
fn reshield(table: &str, untrusted_limit: u32) -> Value {
    let limit = json!({"limit": {"family": "inet", "table": table, "name": SHIELD}});
    let mut commands = vec![
        json!({"flush": {"chain": {"family": "inet", "table": table, "name": "input"}}}),
        // Add (any rate: a present one is left as it is), then delete: gone, whether it was
        // there or not.
        json!({"add": {"limit": {"family": "inet", "table": table, "name": SHIELD, "rate": 1, "per": "second"}}}),
        json!({ "delete": limit }),
    ];
    commands.extend(chain(table, untrusted_limit));
    json!({ "nftables": commands })
}

/// Reads the drop counters every [`COUNT_EVERY`] into `dropped` (by [`Drops`]), off the packet
/// path. The kernel's counters start again at 0 when the table is made afresh; a reading below
/// the last one counts from there.
async fn count_drops(table: String, dropped: [(Counter, Counter); 3]) {
    let mut last = [(0u64, 0u64); 3];
    let mut ticks = tokio::time::interval(COUNT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for (at, drops) in Drops::ALL.into_iter().enumerate() {
            let read = match port_counters(&table, drops.ports_set()).await {
                Ok(read) => read,
                Err(reason) => {
                    tracing::debug!(table = %table, %reason, "cannot read the kernel's drop counters");
                    continue;
                }
            };
            let (packets, bytes) = &dropped[at];
            let (last_packets, last_bytes) = last[at];
            packets.increment(since(last_packets, read.0));
            bytes.increment(since(last_bytes, read.1));
            last[at] = read;
        }
    }
}

/// What a counter that read `last` before and `now` now has counted meanwhile.
fn since(last: u64, now: u64) -> u64 {
    now.checked_sub(last).unwrap_or(now)
}

/// The packets and bytes counted by the elements of the port set `set`.
async fn port_counters(table: &str, set: &str) -> Result<(u64, u64), String> {
    let listed = run_nft(
        &["-j", "list", "set", "inet", table, set],
        None,
        NFT_TIMEOUT,
    )
    .await?;
    let listed: Value =
        serde_json::from_slice(&listed).map_err(|err| format!("nft printed no JSON: {err}"))?;
    Ok(sum_counters(&listed))
}

/// The sum of the element counters in `nft -j list set` output.
fn sum_counters(listed: &Value) -> (u64, u64) {
    let counters = listed["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["set"]["elem"].as_array())
        .flatten()
        .map(|elem| &elem["elem"]["counter"]);
    counters.fold((0, 0), |(packets, bytes), counter| {
        (
            packets + counter["packets"].as_u64().unwrap_or(0),
            bytes + counter["bytes"].as_u64().unwrap_or(0),
        )
    })
}

/// Where Debian installs `nft` (/usr/sbin, which a user's PATH may lack).
fn nft_command() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or("nft")
}

/// Runs one JSON transaction through `nft -j -f -`; the error is nft's own message.
async fn nft(batch: &Value, timeout: Duration) -> Result<(), String> {
    let text = batch.to_string();
    run_nft(&["-j", "-f", "-"], Some(text.as_bytes()), timeout)
        .await
        .map(drop)
}

/// Runs `nft args`, with `input` on its stdin; its stdout, or the first line of its error.
async fn run_nft(
    args: &[&str],
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let run = async {
        let mut child = tokio::process::Command::new(nft_command())
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| format!("cannot run nft: {err}"))?;
        if let Some(input) = input {
            let mut stdin = child.stdin.take().ok_or("nft has no stdin")?;
            stdin
                .write_all(input)
                .await
                .map_err(|err| format!("cannot write to nft: {err}"))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|err| format!("nft failed: {err}"))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(stderr.lines().next().unwrap_or("nft failed").to_owned())
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| Err("nft did not finish in time".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipguard_policy::FeedTally;

    fn feeds(nets: &[&str]) -> Arc<Feeds> {
        let nets = nets.iter().map(|net| net.parse().unwrap()).collect();
        Arc::new(Feeds::new(vec![(Arc::<FeedTally>::default(), nets)]))
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|net| net.parse().unwrap()).collect()
    }

    /// The sets a push's commands flush and fill, as `op set`.
    fn touched(push: &ListPush) -> Vec<String> {
        push.commands
            .iter()
            .map(|command| {
                let (op, body) = command.as_object().unwrap().iter().next().unwrap();
                let object = body.get("set").or(body.get("element")).unwrap();
                format!("{op} {}", object["name"].as_str().unwrap())
            })
            .collect()
    }

    #[test]
    fn the_feed_sets_are_pushed_whole_when_what_is_listed_changes_and_never_when_it_does_not() {
        let now = Instant::now();
        let mut lists = Lists::default();
        // A new table: empty sets, and nothing listed yet.
        assert!(lists.push("sg", &[], feeds(&[]), now).is_none());

        let first = feeds(&["192.0.2.0/24", "198.51.100.7/32"]);
        let push = lists
            .push("sg", &[], Arc::clone(&first), now)
            .expect("a new list");
        assert_eq!(
            touched(&push),
            ["flush feeds4", "add feeds4", "flush feeds6"],
            "one transaction empties the sets and fills them"
        );
        assert_eq!(
            push.commands[1]["add"]["element"]["elem"],
            json!([{"range": ["192.0.2.0", "192.0.2.255"]}, "198.51.100.7"])
        );
        lists.pushed(push.allowlist, push.feeds);
        assert!(lists.push("sg", &[], first, now).is_none(), "the same set");
        // A refetch that changed nothing, and two lists naming what one did: the same ranges.
        assert!(lists
            .push("sg", &[], feeds(&["198.51.100.7/32", "192.0.2.0/24"]), now)
            .is_none());
        let split = Arc::new(Feeds::new(vec![
            (Arc::default(), nets(&["192.0.2.0/25", "198.51.100.7/32"])),
            (Arc::default(), nets(&["192.0.2.128/25"])),
        ]));
        assert!(lists.push("sg", &[], split, now).is_none());

        let grown = feeds(&["192.0.2.0/24", "198.51.100.7/32", "2001:db8::/32"]);
        let push = lists.push("sg", &[], grown, now).expect("a changed list");
        assert_eq!(
            touched(&push),
            ["flush feeds4", "add feeds4", "flush feeds6", "add feeds6"]
        );
        assert_eq!(push.feeds.as_ref().map(Spans::len), Some(3));
    }

    #[test]
    fn an_allowlist_change_pushes_the_exemption_set_alone() {
        let now = Instant::now();
        let mut lists = Lists::default();
        let listed = feeds(&["192.0.2.0/24"]);
        let push = lists.push("sg", &[], Arc::clone(&listed), now).unwrap();
        lists.pushed(push.allowlist, push.feeds);

        let allowlist = nets(&["192.0.2.0/28", "192.0.2.8/29", "2001:db8::1/128"]);
        let push = lists
            .push("sg", &allowlist, Arc::clone(&listed), now)
            .expect("a new allowlist");
        assert_eq!(
            touched(&push),
            ["flush allow4", "add allow4", "flush allow6", "add allow6"]
        );
        // Overlapping networks go in as one interval (nftables refuses overlaps).
        assert_eq!(
            push.commands[1]["add"]["element"]["elem"],
            json!([{"range": ["192.0.2.0", "192.0.2.15"]}])
        );
        assert!(push.feeds.is_none());
        lists.pushed(push.allowlist, push.feeds);
        assert!(lists.push("sg", &allowlist, listed, now).is_none());
    }

    #[test]
    fn a_failed_push_is_tried_again_after_a_pause_with_the_lists_as_they_are_then() {
        let now = Instant::now();
        let mut lists = Lists::default();
        let listed = feeds(&["192.0.2.0/24"]);
        let push = lists.push("sg", &[], Arc::clone(&listed), now).unwrap();
        assert!(push.feeds.is_some());
        lists.failed(now);
        assert!(
            lists.push("sg", &[], Arc::clone(&listed), now).is_none(),
            "not at once: the push is the whole list"
        );
        let later = now + LISTS_RETRY;
        let push = lists.push("sg", &[], listed, later).expect("the retry");
        assert_eq!(
            touched(&push),
            ["flush feeds4", "add feeds4", "flush feeds6"]
        );
    }

    #[test]
    fn a_trusted_source_stays_exempt_until_its_trust_could_have_ended() {
        let now = Timestamp::from_millis(1_000_000);
        let slack = Duration::from_secs(3 * 3600);
        // 10.2 s left: 11 s, plus what a re-registration may have added unpublished.
        let until = now + Duration::from_millis(10_200);
        assert_eq!(
            trust_left(until, now, slack),
            Duration::from_secs(11) + slack
        );
        assert_eq!(trust_left(now, now, Duration::ZERO), Duration::from_secs(1));
    }

    /// The comments of the rules `commands` add, in order.
    fn rules(commands: &[Value]) -> Vec<&str> {
        commands
            .iter()
            .filter_map(|command| command["add"]["rule"]["comment"].as_str())
            .collect()
    }

    /// The limit objects `commands` add.
    fn limits(commands: &[Value]) -> Vec<&Value> {
        commands
            .iter()
            .filter_map(|command| command["add"].get("limit"))
            .collect()
    }

    #[test]
    fn the_shield_drops_after_the_bans_and_feeds_and_spares_the_allowlist_and_trusted() {
        let ports = [(Proto::Udp, 5060), (Proto::Tcp, 5061)];
        let setup = setup("sg", &ports, 200);
        let commands = setup["nftables"].as_array().unwrap();
        assert_eq!(
            rules(commands),
            [
                "sipguard bans: addr4",
                "sipguard bans: net4",
                "sipguard bans: addr6",
                "sipguard bans: net6",
                "sipguard feeds: feeds4",
                "sipguard feeds: feeds6",
                "sipguard shield: untrusted4",
                "sipguard shield: untrusted6",
            ]
        );
        assert_eq!(
            limits(commands),
            [
                &json!({"family": "inet", "table": "sg", "name": "shield", "rate": 200,
                     "per": "second", "burst": 5, "inv": true})
            ],
            "one bucket for both families, dropping what goes over the rate"
        );
        let shield = commands
            .iter()
            .find(|command| command["add"]["rule"]["comment"] == "sipguard shield: untrusted4")
            .unwrap();
        let expr = shield["add"]["rule"]["expr"].as_array().unwrap();
        let right: Vec<&str> = expr
            .iter()
            .map(|e| {
                e["match"]["right"]
                    .as_str()
                    .or(e["limit"].as_str())
                    .unwrap_or("-")
            })
            .collect();
        // Only the listeners' packets reach the limit; the counting ports after it count drops.
        assert_eq!(
            right,
            [
                "@sip_ports",
                "@allow4",
                "@trusted4",
                "shield",
                "@shield_ports",
                "-",
                "-"
            ]
        );
        assert_eq!(expr[1]["match"]["op"], "!=");
        assert_eq!(expr[2]["match"]["op"], "!=");
        // Both port sets hold the listeners, the shield's counting each element.
        for set in ["shield_ports", "sip_ports"] {
            let elements = commands
                .iter()
                .find(|c| c["add"]["element"]["name"] == set)
                .unwrap();
            assert_eq!(
                elements["add"]["element"]["elem"],
                json!([{"concat": ["udp", 5060]}, {"concat": ["tcp", 5061]}])
            );
        }
        let counted = |set: &str| {
            commands
                .iter()
                .find(|c| c["add"]["set"]["name"] == set)
                .map(|c| c["add"]["set"]["stmt"].clone())
        };
        assert_eq!(counted("shield_ports"), Some(json!([{"counter": null}])));
        assert_eq!(counted("sip_ports"), Some(json!([])));
    }

    #[test]
    fn a_limit_of_0_makes_no_shield_rule_and_no_limit() {
        let setup = setup("sg", &[(Proto::Udp, 5060)], 0);
        let commands = setup["nftables"].as_array().unwrap();
        assert!(limits(commands).is_empty());
        assert!(rules(commands).iter().all(|rule| !rule.contains("shield")));
        assert_eq!(rules(commands).len(), 6, "the bans' and feeds' rules stay");
    }

    #[test]
    fn a_new_limit_replaces_the_chains_rules_and_the_limit_in_one_transaction() {
        let batch = reshield("sg", 30_000);
        let commands = batch["nftables"].as_array().unwrap();
        assert_eq!(
            commands[..3],
            [
                json!({"flush": {"chain": {"family": "inet", "table": "sg", "name": "input"}}}),
                json!({"add": {"limit": {"family": "inet", "table": "sg", "name": "shield", "rate": 1, "per": "second"}}}),
                json!({"delete": {"limit": {"family": "inet", "table": "sg", "name": "shield"}}}),
            ],
            "the old rules and limit go, whatever the kernel held"
        );
        let added = limits(&commands[3..]);
        assert_eq!(added.len(), 1);
        assert_eq!(
            (&added[0]["rate"], &added[0]["burst"]),
            (&json!(30_000), &json!(300))
        );
        assert_eq!(rules(commands).len(), 8);

        let off = reshield("sg", 0);
        let commands = off["nftables"].as_array().unwrap();
        assert!(limits(&commands[3..]).is_empty());
        assert_eq!(rules(commands).len(), 6);
    }

    #[test]
    fn the_shields_burst_is_a_hundredth_of_a_second_and_at_least_five_packets() {
        assert_eq!(shield_burst(50_000), 500);
        assert_eq!(shield_burst(200), 5);
        assert_eq!(shield_burst(1), 5);
    }

    #[test]
    fn the_drop_counters_are_the_sum_of_the_port_elements_and_survive_a_new_table() {
        // `nft -j list set inet sg feed_ports`, as nftables 1.0.6 prints it.
        let listed: Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"set": {"family": "inet", "name": "feed_ports", "table": "sg",
             "type": ["inet_proto", "inet_service"], "handle": 12,
             "elem": [{"elem": {"val": {"concat": ["udp", 5060]}, "counter": {"packets": 5, "bytes": 190}}},
                      {"elem": {"val": {"concat": ["tcp", 5061]}, "counter": {"packets": 2, "bytes": 120}}}],
             "stmt": [{"counter": null}]}}]}"#,
        )
        .unwrap();
        assert_eq!(sum_counters(&listed), (7, 310));
        assert_eq!(since(7, 10), 3);
        assert_eq!(since(7, 2), 2, "a table made afresh counts from 0");
    }
}
