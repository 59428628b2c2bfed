//! Kernel offload: the policy's bans mirrored into an nftables table of sipguard's own, so the
//! kernel drops a banned source's packets to the SIP ports before any socket wakes up.
//!
//! The table (`inet <nftables.table>`) holds four sets with per-element timeouts, `addr4` and
//! `addr6` (hash sets of banned addresses) and `net4` and `net6` (interval sets of banned
//! prefixes: apart from the addresses, so an address inside a banned prefix never makes an
//! overlapping interval), a `ports` set of (protocol, port) for sipguard's own bound listeners,
//! and one input chain whose four rules drop `saddr @set` to `@ports` only, with a counter each:
//! ssh or anything else on the host is never touched. Each element's timeout is the ban's
//! remaining time rounded down, so the kernel never drops longer than sipguard would.
//!
//! The policy stays the source of truth and still checks every packet that reaches it: the set is
//! an accelerator. [`NftSink`] follows the policy's changes into a bounded queue (never waiting,
//! on the packet path); one task batches them (every [`BATCH`]) into one `nft -j -f -`
//! transaction. A ban is written as add (timeout 1 s), delete, add: adding an element that is
//! present is a no-op and deleting one that is absent an error, so this replaces the timeout of a
//! present one and removes an absent one without failing the transaction. What never enters the
//! set: an address or prefix overlapping the allowlist, and a prefix holding a trusted source
//! (the policy lets those through; a source trusted later takes its prefix out). A failed
//! transaction, a full queue or a changed allowlist rebuild the sets from the policy's snapshot.
//!
//! The `nft` tool's JSON interface rather than a netlink crate: it is the interface nftables
//! documents as stable (libnftables-json), each batch is one atomic transaction, it needs no C
//! library at build time, and the nftnl/rustables crates trail the kernel's features (timeouts on
//! interval sets). The cost, a process per batch, is paid per batch, not per packet.

use crate::config::NftConfig;
use metrics::{counter, gauge, Counter, Gauge};
use serde_json::{json, Value};
use sipguard_policy::{Change, IpNet, Observer, Policy, Timestamp};
use sipguard_relay::Clock;
use std::collections::HashSet;
use std::net::IpAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// How long updates gather before one transaction carries them.
const BATCH: Duration = Duration::from_millis(20);
/// Updates waiting beyond this are dropped and the sets rebuilt from the snapshot instead.
const QUEUE: usize = 16_384;
/// How often the task looks whether the allowlist changed (a reload).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Longest one `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// One change for the kernel set.
#[derive(Debug, Clone, Copy)]
enum Update {
    Ban(IpNet, Timestamp),
    Unban(IpNet),
    Trusted(IpAddr),
}

/// The offload's metrics, registered where the caller says (the relay's recorder).
pub struct Metrics {
    active: Gauge,
    ok: Counter,
    failed: Counter,
}

impl Metrics {
    /// Registers the families, at 0.
    pub fn register() -> Self {
        let transactions = |result: &'static str| {
            let counter = counter!("sipguard_nftables_transactions_total", "result" => result);
            counter.increment(0);
            counter
        };
        let active = gauge!("sipguard_nftables_active");
        active.set(0.0);
        Metrics {
            active,
            ok: transactions("ok"),
            failed: transactions("error"),
        }
    }
}

/// The running offload; [`Offload::stop`] removes the table.
pub struct Offload {
    table: String,
    task: tokio::task::JoinHandle<()>,
}

/// The policy's observer: queues each change for the offload task, never waits.
struct NftSink {
    queue: mpsc::Sender<Update>,
    resync: Arc<AtomicBool>,
}

impl Observer for NftSink {
    fn changed(&self, change: &Change) {
        let update = match change {
            Change::Banned {
                source,
                ban,
                quiet: false,
            } => Update::Ban(*source, ban.expires),
            // One of a flood of forged sources: each would be a set update for a packet that
            // does not come back.
            Change::Banned { quiet: true, .. } => return,
            Change::Lifted { source, .. } | Change::Expired { source, .. } => {
                Update::Unban(*source)
            }
            Change::Trusted { source, .. } => Update::Trusted(*source),
            Change::Distrusted { .. } => return,
        };
        if self.queue.try_send(update).is_err() {
            self.resync.store(true, Ordering::Relaxed);
        }
    }
}

impl Offload {
    /// Creates the table for the listeners on `ports` (replacing one left by an unclean stop),
    /// fills it from the policy's bans and follows the policy from then on. `None`, after one
    /// warning, when nftables cannot be used (no `nft`, no CAP_NET_ADMIN): sipguard then drops
    /// banned sources itself, as it always does.
    pub async fn start(
        config: NftConfig,
        ports: Vec<(Proto, u16)>,
        policy: Arc<Policy>,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
    ) -> Option<Offload> {
        let table = config.table;
        if let Err(reason) = nft(&setup(&table, &ports)).await {
            tracing::warn!(table = %table, %reason, "kernel offload of bans is off (it needs the nft tool and CAP_NET_ADMIN); sipguard drops banned sources itself");
            return None;
        }
        metrics.active.set(1.0);
        tracing::info!(table = %table, "bans are offloaded to nftables");
        let (queue, updates) = mpsc::channel(QUEUE);
        let resync = Arc::new(AtomicBool::new(true));
        policy.subscribe(Arc::new(NftSink {
            queue,
            resync: Arc::clone(&resync),
        }));
        let worker = Worker {
            table: table.clone(),
            policy,
            clock,
            resync,
            pushed_nets: HashSet::new(),
            allowlist: Vec::new(),
            metrics,
        };
        let task = tokio::spawn(worker.run(updates));
        Some(Offload { table, task })
    }

    /// Stops following the policy and removes the table.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        let delete =
            json!({"nftables": [{"delete": {"table": {"family": "inet", "name": self.table}}}]});
        match nft(&delete).await {
            Ok(()) => tracing::info!(table = %self.table, "nftables table removed"),
            Err(reason) => {
                tracing::warn!(table = %self.table, %reason, "cannot remove the nftables table")
            }
        }
    }
}

struct Worker {
    table: String,
    policy: Arc<Policy>,
    clock: Arc<dyn Clock>,
    resync: Arc<AtomicBool>,
    /// Prefixes in the `net` sets, to take out the one a newly trusted source lies in.
    pushed_nets: HashSet<IpNet>,
    /// The allowlist the sets were last built against.
    allowlist: Vec<IpNet>,
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
            match nft(&json!({ "nftables": commands })).await {
                Ok(()) => self.metrics.ok.increment(1),
                Err(reason) => {
                    self.metrics.failed.increment(1);
                    tracing::warn!(table = %self.table, %reason, "nftables update failed; rebuilding the sets from the bans in force");
                    self.resync.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// The commands that empty the sets and fill them with every ban in force.
    fn rebuild(&mut self) -> Vec<Value> {
        self.pushed_nets.clear();
        let now = self.clock.now();
        let mut commands: Vec<Value> = ["addr4", "addr6", "net4", "net6"]
            .into_iter()
            .map(|set| json!({"flush": {"set": {"family": "inet", "table": self.table, "name": set}}}))
            .collect();
        let mut bans = self.policy.bans(now);
        // Widest first, so a prefix inside one already pushed is left out (no overlap).
        bans.sort_by_key(|(source, _)| source.prefix_len());
        for (source, ban) in bans {
            let inside = self.pushed_nets.iter().any(|net| net.contains(&source));
            if !inside && self.admitted(source, now) {
                commands.push(self.element("add", source, ban.expires.since(now)));
                if !is_host(source) {
                    self.pushed_nets.insert(source);
                }
            }
        }
        commands
    }

    /// The commands carrying `updates`.
    fn apply(&mut self, updates: impl Iterator<Item = Update>) -> Vec<Value> {
        let now = self.clock.now();
        let mut commands = Vec::new();
        for update in updates {
            let (source, ban) = match update {
                Update::Ban(source, expires) => (source, Some(expires)),
                Update::Unban(source) => (source, None),
                Update::Trusted(address) => {
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

    /// Add with a 1 s timeout, delete, and add again for `remaining` (if any): the element ends
    /// up with exactly that timeout, or gone, whether it was present or not.
    fn replace(&self, source: IpNet, remaining: Option<Duration>) -> Vec<Value> {
        let mut commands = vec![
            self.element("add", source, Duration::from_secs(1)),
            self.element("delete", source, Duration::ZERO),
        ];
        if let Some(remaining) = remaining {
            commands.push(self.element("add", source, remaining));
        }
        commands
    }

    /// One element command on the set `source` belongs in; `timeout` (whole seconds, rounded
    /// down) for an add.
    fn element(&self, op: &str, source: IpNet, timeout: Duration) -> Value {
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
        let elem = if op == "add" {
            json!({"elem": {"val": value, "timeout": timeout.as_secs().max(1)}})
        } else {
            value
        };
        json!({ op: {"element": {"family": "inet", "table": self.table, "name": set, "elem": [elem]}}})
    }
}

fn is_host(source: IpNet) -> bool {
    source.prefix_len() == source.max_prefix_len()
}

/// The table, created afresh: its sets, the ports of sipguard's listeners, and the chain.
fn setup(table: &str, ports: &[(Proto, u16)]) -> Value {
    let family = "inet";
    let set = |name: &str, kind: &str, interval: bool| {
        let flags = if interval {
            json!(["interval", "timeout"])
        } else {
            json!(["timeout"])
        };
        json!({"add": {"set": {"family": family, "table": table, "name": name, "type": kind, "flags": flags}}})
    };
    let port_elements: Vec<Value> = ports
        .iter()
        .map(|(proto, port)| json!({"concat": [proto.as_str(), port]}))
        .collect();
    let rule = |protocol: &str, set: &str| {
        json!({"add": {"rule": {"family": family, "table": table, "chain": "input", "comment": format!("sipguard bans: {set}"), "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": protocol, "field": "saddr"}}, "right": format!("@{set}")}},
            {"match": {"op": "==", "left": {"concat": [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "right": "@ports"}},
            {"counter": null},
            {"drop": null}
        ]}}})
    };
    let table_ref = json!({"table": {"family": family, "name": table}});
    let mut commands = vec![
        // Add, then delete: a table left by an unclean stop is replaced, and none is no error.
        json!({ "add": table_ref }),
        json!({ "delete": table_ref }),
        json!({ "add": table_ref }),
        set("addr4", "ipv4_addr", false),
        set("addr6", "ipv6_addr", false),
        set("net4", "ipv4_addr", true),
        set("net6", "ipv6_addr", true),
        json!({"add": {"set": {"family": family, "table": table, "name": "ports", "type": ["inet_proto", "inet_service"]}}}),
    ];
    if !port_elements.is_empty() {
        commands.push(json!({"add": {"element": {"family": family, "table": table, "name": "ports", "elem": port_elements}}}));
    }
    commands.push(json!({"add": {"chain": {"family": family, "table": table, "name": "input", "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}}}));
    for (protocol, set) in [
        ("ip", "addr4"),
        ("ip", "net4"),
        ("ip6", "addr6"),
        ("ip6", "net6"),
    ] {
        commands.push(rule(protocol, set));
    }
    json!({ "nftables": commands })
}

/// Where Debian installs `nft` (/usr/sbin, which a user's PATH may lack).
fn nft_command() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or("nft")
}

/// Runs one JSON transaction through `nft -j -f -`; the error is nft's own message.
async fn nft(batch: &Value) -> Result<(), String> {
    let run = async {
        let mut child = tokio::process::Command::new(nft_command())
            .args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| format!("cannot run nft: {err}"))?;
        let mut stdin = child.stdin.take().ok_or("nft has no stdin")?;
        stdin
            .write_all(batch.to_string().as_bytes())
            .await
            .map_err(|err| format!("cannot write to nft: {err}"))?;
        drop(stdin);
        let out = child
            .wait_with_output()
            .await
            .map_err(|err| format!("nft failed: {err}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(stderr.lines().next().unwrap_or("nft failed").to_owned())
        }
    };
    tokio::time::timeout(NFT_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| Err("nft did not finish in time".to_owned()))
}
