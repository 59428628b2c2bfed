//! Shared bans: the policy's bans and lifts published to the other sipguard nodes through Redis,
//! and theirs applied here (docs/design.md section 11).
//!
//! Redis holds, under the key prefix, a hash `bans` (field: the source as the journal writes it;
//! value: the [`Shared`] JSON of its last ban, or of the lift that ended it, a tombstone), a sorted
//! set `expiry` (the same fields, scored by when the ban ends, so entries are pruned once
//! expired), and the channel `events` carrying each [`Shared`] as it is written. A write is one
//! MULTI: HSET, ZADD, PUBLISH. Live events reach every node within a round trip; a node that
//! starts or reconnects subscribes first and then merges with the hash ([`Node::catch_up`]): it
//! writes the lifts it made while apart, adopts every ban that ends later than its own, lifts
//! what a tombstone says was lifted (a ban of its own ending no later), and writes its own bans
//! that Redis lacks or holds shorter. After an outage (or a Redis restarted empty) the nodes thus
//! converge on the union of their bans, each at the latest expiry.
//!
//! A remote ban goes in through [`Policy::adopt`], which re-checks this node's own allowlist and
//! tells the observers like any ban: the journal records it (so a restart without Redis still
//! enforces it; the journal is the record of what this node enforces), the kernel set takes it,
//! streams close. Changes made while applying a remote event are marked (a thread-local flag
//! around the synchronous policy call, read by [`ClusterSink`]), so they are never published back:
//! no echo loop. Events carrying this node's own name are ignored too.
//!
//! Redis never slows the packet path: [`ClusterSink`] only `try_send`s into a bounded queue (a
//! full queue is counted and answered by a merge). Every Redis call has a deadline; a failure
//! drops the connection, counts it, and the node keeps working alone, reconnecting with backoff
//! ([`MIN_BACKOFF`] doubling to [`MAX_BACKOFF`]). Bans it makes meanwhile are in its policy and
//! written at the merge; lifts are kept (up to [`PENDING_LIFTS`]) and written first.
//!
//! `rediss://` is Redis over TLS, on the process's rustls (ring): Redis's certificate is verified
//! against the system's CA roots, or only against `ca_file`'s, and a client certificate is shown
//! when configured. The files are read at every connection ([`client`]), so renewed ones are
//! taken at the next reconnect; verification cannot be turned off (`#insecure` is refused).

use crate::admin::replayed_reason;
use crate::config::ClusterConfig;
use crate::journal::{BanEntry, Source};
use futures_util::StreamExt;
use metrics::{counter, gauge, Counter, Gauge};
use serde::{Deserialize, Serialize};
use sipguard_policy::{Ban, Change, IpNet, Observer, Policy, Timestamp};
use sipguard_relay::Clock;
use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Longest any one Redis call may take before the connection counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest the read of the whole hash may take at a merge (it grows with the cluster's bans).
const READ_ALL_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before reconnecting; doubled per failure.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before reconnecting.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Changes waiting to be published beyond this are dropped and a merge scheduled instead.
const QUEUE: usize = 16_384;
/// Most changes in one MULTI.
const BATCH: usize = 512;
/// Lifts kept while Redis is away; beyond this they stay local.
const PENDING_LIFTS: usize = 4096;
/// How often expired entries are pruned from Redis.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Removes the entries of the hash (KEYS[1]) whose score in the sorted set (KEYS[2]) is at most
/// ARGV[1] (now, ms), and those scores, in one step: a ban renewed meanwhile is never lost.
const PRUNE: &str = r"
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, field in ipairs(gone) do redis.call('HDEL', KEYS[1], field) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
return #gone
";

thread_local! {
    /// Set while this thread applies a remote event to the policy: the changes it causes came
    /// from the cluster and are not published back.
    static APPLYING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `apply` with the policy's changes marked as the cluster's own.
fn applying<T>(apply: impl FnOnce() -> T) -> T {
    APPLYING.with(|flag| flag.set(true));
    let result = apply();
    APPLYING.with(|flag| flag.set(false));
    result
}

/// One ban or lift as Redis keeps and carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shared {
    /// The node that wrote it.
    pub node: String,
    /// A lift (a tombstone, until the lifted ban would have ended) rather than a ban.
    #[serde(default)]
    pub lifted: bool,
    /// The ban (or the lifted one), as the journal writes it.
    #[serde(flatten)]
    pub entry: BanEntry,
}

/// A change to publish.
enum Outgoing {
    Ban(IpNet, Ban),
    Lift(IpNet, Ban),
}

/// The policy's observer: queues this node's own bans and lifts for publishing, never waits.
struct ClusterSink {
    queue: mpsc::Sender<Outgoing>,
    merge: Arc<AtomicBool>,
    dropped: Counter,
}

impl Observer for ClusterSink {
    fn changed(&self, change: &Change) {
        if APPLYING.with(Cell::get) {
            return;
        }
        let outgoing = match change {
            Change::Banned { source, ban } | Change::Announced { source, ban } if !ban.quiet => {
                Outgoing::Ban(*source, ban.clone())
            }
            Change::Lifted { source, ban } => Outgoing::Lift(*source, ban.clone()),
            _ => return,
        };
        if self.queue.try_send(outgoing).is_err() {
            self.dropped.increment(1);
            self.merge.store(true, Ordering::Relaxed);
        }
    }
}

/// The running cluster follower; it stops when dropped.
pub struct Cluster {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts sharing `policy`'s bans through the Redis of `config`; the node keeps working alone
/// whenever Redis is away.
pub fn start(
    config: ClusterConfig,
    policy: Arc<Policy>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
) -> Cluster {
    let (queue, outgoing) = mpsc::channel(QUEUE);
    let merge = Arc::new(AtomicBool::new(false));
    policy.subscribe(Arc::new(ClusterSink {
        queue,
        merge: Arc::clone(&merge),
        dropped: metrics.dropped.clone(),
    }));
    let prefix = &config.key_prefix;
    let node = Node {
        bans_key: format!("{prefix}bans"),
        expiry_key: format!("{prefix}expiry"),
        channel: format!("{prefix}events"),
        config,
        policy,
        clock,
        merge,
        pending_lifts: HashMap::new(),
        metrics,
    };
    Cluster {
        task: tokio::spawn(node.run(outgoing)),
    }
}

/// The cluster's metrics, registered where the caller says (the relay's recorder).
pub struct Metrics {
    connected: Gauge,
    published: Counter,
    applied: Counter,
    ignored: Counter,
    invalid: Counter,
    errors: Counter,
    dropped: Counter,
}

impl Metrics {
    /// Registers the families, at 0.
    pub fn register() -> Self {
        let received =
            |result: &'static str| counter!("sipguard_cluster_received_total", "result" => result);
        let metrics = Metrics {
            connected: gauge!("sipguard_cluster_connected"),
            published: counter!("sipguard_cluster_published_total"),
            applied: received("applied"),
            ignored: received("ignored"),
            invalid: received("invalid"),
            errors: counter!("sipguard_cluster_errors_total"),
            dropped: counter!("sipguard_cluster_dropped_total"),
        };
        for counter in [
            &metrics.published,
            &metrics.applied,
            &metrics.ignored,
            &metrics.invalid,
            &metrics.errors,
            &metrics.dropped,
        ] {
            counter.increment(0);
        }
        metrics.connected.set(0.0);
        metrics
    }
}

/// Why no client could be made for a configuration: a file it names, or the URL.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no {what} in {}", path.display())]
    Empty {
        key: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{source}")]
    Redis {
        key: &'static str,
        /// The file at fault; `None` for the URL.
        path: Option<PathBuf>,
        source: redis::RedisError,
    },
}

impl ClientError {
    /// The configuration key whose value is at fault, such as `cluster.redis.ca_file`.
    pub fn key(&self) -> &'static str {
        match self {
            ClientError::Unreadable { key, .. }
            | ClientError::Empty { key, .. }
            | ClientError::Redis { key, .. } => key,
        }
    }

    /// The file at fault; `None` when it is the URL.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ClientError::Unreadable { path, .. } | ClientError::Empty { path, .. } => Some(path),
            ClientError::Redis { path, .. } => path.as_deref(),
        }
    }
}

/// The Redis client of `config`: for `rediss://`, with the CA file and the client certificate
/// and key read now, each checked on its own so that a bad one is named by its key. Connecting
/// is left to the caller.
pub fn client(config: &ClusterConfig) -> Result<redis::Client, ClientError> {
    let url = config.redis_url.as_str();
    let redis = |key, path: Option<&Path>| {
        let path = path.map(Path::to_owned);
        move |source| ClientError::Redis { key, path, source }
    };
    let plain = redis::Client::open(url).map_err(redis("cluster.redis.url", None))?;
    if config.ca_file.is_none() && config.client_identity.is_none() {
        return Ok(plain);
    }
    let root_cert = config
        .ca_file
        .as_deref()
        .map(|path| pem("cluster.redis.ca_file", path, "CERTIFICATE", "certificate"))
        .transpose()?;
    let client_tls = match &config.client_identity {
        Some(files) => Some(redis::ClientTlsConfig {
            client_cert: pem(
                "cluster.redis.client_cert",
                &files.certificate,
                "CERTIFICATE",
                "certificate",
            )?,
            client_key: pem(
                "cluster.redis.client_key",
                &files.key,
                "PRIVATE KEY",
                "private key",
            )?,
        }),
        None => None,
    };
    let tls = |client_tls, root_cert| redis::TlsCertificates {
        client_tls,
        root_cert,
    };
    if root_cert.is_some() {
        redis::Client::build_with_tls(url, tls(None, root_cert.clone()))
            .map_err(redis("cluster.redis.ca_file", config.ca_file.as_deref()))?;
    }
    let certificate = config
        .client_identity
        .as_ref()
        .map(|f| f.certificate.as_path());
    redis::Client::build_with_tls(url, tls(client_tls, root_cert))
        .map_err(redis("cluster.redis.client_cert", certificate))
}

/// The bytes of the PEM file `path` (the value of `key`), which must hold a `label` block.
fn pem(
    key: &'static str,
    path: &Path,
    label: &str,
    what: &'static str,
) -> Result<Vec<u8>, ClientError> {
    let bytes = std::fs::read(path).map_err(|source| ClientError::Unreadable {
        key,
        path: path.to_owned(),
        source,
    })?;
    let boundary = format!("{label}-----");
    let holds = bytes
        .windows(boundary.len())
        .any(|window| window == boundary.as_bytes());
    if !holds {
        return Err(ClientError::Empty {
            key,
            path: path.to_owned(),
            what,
        });
    }
    Ok(bytes)
}

/// Why a session with Redis ended.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("no answer in time")]
    Timeout,
    #[error("the subscription ended")]
    Closed,
}

/// Awaits one Redis call within [`CALL_TIMEOUT`].
async fn call<T>(
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Lost> {
    call_within(CALL_TIMEOUT, future).await
}

/// Awaits one Redis call within `limit`.
async fn call_within<T>(
    limit: Duration,
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Lost> {
    Ok(tokio::time::timeout(limit, future)
        .await
        .map_err(|_| Lost::Timeout)??)
}

struct Node {
    config: ClusterConfig,
    bans_key: String,
    expiry_key: String,
    channel: String,
    policy: Arc<Policy>,
    clock: Arc<dyn Clock>,
    /// Set when a change could not be queued: merge with Redis at the next chance.
    merge: Arc<AtomicBool>,
    /// Lifts made while Redis was away, by source, with the lifted ban's expiry.
    pending_lifts: HashMap<IpNet, Ban>,
    metrics: Metrics,
}

impl Node {
    async fn run(mut self, mut outgoing: mpsc::Receiver<Outgoing>) {
        let mut backoff = MIN_BACKOFF;
        let mut was_connected = true;
        loop {
            let lost = self.session(&mut outgoing, &mut backoff).await;
            self.metrics.connected.set(0.0);
            self.metrics.errors.increment(1);
            if was_connected || backoff == MIN_BACKOFF {
                tracing::warn!(url = %without_password(&self.config.redis_url), reason = %lost, "Redis is unreachable: bans are not shared until it is back; this node goes on alone");
            } else {
                tracing::debug!(reason = %lost, "Redis still unreachable");
            }
            was_connected = false;
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    change = outgoing.recv() => match change {
                        Some(change) => self.keep(change),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A change that could not be written: a lift is kept for the next merge (a ban need not
    /// be: the merge writes the policy's bans).
    fn keep(&mut self, change: Outgoing) {
        if let Outgoing::Lift(source, ban) = change {
            if self.pending_lifts.len() < PENDING_LIFTS {
                self.pending_lifts.insert(source, ban);
            } else {
                self.metrics.dropped.increment(1);
            }
        }
    }

    /// One connection: subscribe, merge, then publish and apply until something fails.
    async fn session(
        &mut self,
        outgoing: &mut mpsc::Receiver<Outgoing>,
        backoff: &mut Duration,
    ) -> Lost {
        let client = match client(&self.config) {
            Ok(client) => client,
            Err(err) => return err.into(),
        };
        let connected = async {
            let conn = call(client.get_multiplexed_async_connection()).await?;
            let mut pubsub = call(client.get_async_pubsub()).await?;
            call(pubsub.subscribe(&self.channel)).await?;
            Ok::<_, Lost>((conn, pubsub))
        };
        let (mut conn, mut pubsub) = match connected.await {
            Ok(pair) => pair,
            Err(lost) => return lost,
        };
        // Subscribed before reading the hash: nothing written from now on is missed.
        if let Err(lost) = self.catch_up(&mut conn).await {
            return lost;
        }
        self.metrics.connected.set(1.0);
        *backoff = MIN_BACKOFF;
        tracing::info!(url = %without_password(&self.config.redis_url), node = %self.config.node, "sharing bans through Redis");
        let mut messages = pubsub.on_message();
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        let mut batch = Vec::new();
        loop {
            let step = tokio::select! {
                message = messages.next() => match message {
                    Some(message) => {
                        self.receive(message.get_payload_bytes());
                        Ok(())
                    }
                    None => Err(Lost::Closed),
                },
                change = outgoing.recv() => {
                    let Some(change) = change else { return Lost::Closed };
                    batch.push(change);
                    while batch.len() < BATCH {
                        match outgoing.try_recv() {
                            Ok(change) => batch.push(change),
                            Err(_) => break,
                        }
                    }
                    let written = self.write(&mut conn, &batch).await;
                    if written.is_err() {
                        for change in batch.drain(..) {
                            self.keep(change);
                        }
                    }
                    batch.clear();
                    written
                }
                _ = prune.tick() => self.prune(&mut conn).await,
            };
            if let Err(lost) = step {
                return lost;
            }
            if self.merge.swap(false, Ordering::Relaxed) {
                if let Err(lost) = self.catch_up(&mut conn).await {
                    return lost;
                }
            }
        }
    }

    fn shared(&self, source: IpNet, ban: &Ban, lifted: bool) -> Shared {
        Shared {
            node: self.config.node.clone(),
            lifted,
            entry: BanEntry::new(source, ban),
        }
    }

    /// Writes bans and lifts in one MULTI: each into the hash and the expiry set, and onto the
    /// channel.
    async fn write(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        changes: &[Outgoing],
    ) -> Result<(), Lost> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for change in changes {
            let shared = match change {
                Outgoing::Ban(source, ban) => self.shared(*source, ban, false),
                Outgoing::Lift(source, ban) => self.shared(*source, ban, true),
            };
            let field = Source(shared.entry.ip).to_string();
            let value = serde_json::to_string(&shared).expect("a shared ban always serialises");
            pipe.hset(&self.bans_key, &field, &value)
                .ignore()
                .zadd(&self.expiry_key, &field, shared.entry.expires)
                .ignore()
                .publish(&self.channel, &value)
                .ignore();
        }
        call(pipe.query_async::<()>(conn)).await?;
        self.metrics
            .published
            .increment(u64::try_from(changes.len()).unwrap_or(u64::MAX));
        Ok(())
    }

    /// Drops what expired from the hash and the expiry set.
    async fn prune(&self, conn: &mut redis::aio::MultiplexedConnection) -> Result<(), Lost> {
        let now = self.clock.now().as_millis();
        let script = redis::Script::new(PRUNE);
        let mut invocation = script.key(&self.bans_key);
        invocation.key(&self.expiry_key).arg(now);
        call(invocation.invoke_async::<i64>(conn)).await?;
        Ok(())
    }

    /// Merges with what Redis holds (see the module's doc): the lifts made while apart first,
    /// then the hash read, applied here, and this node's bans that Redis lacks written.
    async fn catch_up(&mut self, conn: &mut redis::aio::MultiplexedConnection) -> Result<(), Lost> {
        let lifts: Vec<Outgoing> = self
            .pending_lifts
            .drain()
            .map(|(source, ban)| Outgoing::Lift(source, ban))
            .collect();
        for chunk in lifts.chunks(BATCH) {
            self.write(conn, chunk).await?;
        }
        let held: HashMap<String, String> = call_within(
            READ_ALL_TIMEOUT,
            redis::cmd("HGETALL").arg(&self.bans_key).query_async(conn),
        )
        .await?;
        let now = self.clock.now();
        let local: HashMap<IpNet, Ban> = self.policy.bans(now).into_iter().collect();
        let mut remote: HashMap<IpNet, (bool, Timestamp)> = HashMap::new();
        let mut adopted = 0;
        for value in held.values() {
            let Some((shared, source, ban)) = self.decode(value.as_bytes()) else {
                continue;
            };
            if ban.expires <= now {
                continue;
            }
            remote.insert(source, (shared.lifted, ban.expires));
            let mine = local.get(&source).map(|ban| ban.expires);
            if shared.lifted {
                if mine.is_some_and(|expires| expires <= ban.expires) {
                    applying(|| self.policy.lift(source));
                }
            } else if mine.is_none_or(|expires| expires < ban.expires)
                && applying(|| self.policy.adopt(source, ban, now))
            {
                adopted += 1;
            }
        }
        let missing: Vec<Outgoing> = local
            .into_iter()
            .filter(|(source, ban)| match remote.get(source) {
                None => true,
                Some(&(_, expires)) => expires < ban.expires,
            })
            .map(|(source, ban)| Outgoing::Ban(source, ban))
            .collect();
        for chunk in missing.chunks(BATCH) {
            self.write(conn, chunk).await?;
        }
        tracing::info!(
            held = held.len(),
            adopted,
            written = missing.len(),
            "caught up with the cluster's bans"
        );
        Ok(())
    }

    /// Reads one [`Shared`]; `None` (counted) when it is not one or names a rule this version
    /// does not know.
    fn decode(&self, bytes: &[u8]) -> Option<(Shared, IpNet, Ban)> {
        let Some((shared, mut ban)) = serde_json::from_slice::<Shared>(bytes)
            .ok()
            .and_then(|shared| shared.entry.ban().map(|ban| (shared, ban)))
        else {
            self.metrics.invalid.increment(1);
            return None;
        };
        // Bounded and cleaned as the journal's and the operator's are.
        ban.note = ban
            .note
            .as_deref()
            .and_then(replayed_reason)
            .map(Into::into);
        let source = shared.entry.ip;
        Some((shared, source, ban))
    }

    /// Applies one live event from another node.
    fn receive(&self, bytes: &[u8]) {
        let Some((shared, source, ban)) = self.decode(bytes) else {
            return;
        };
        if shared.node == self.config.node {
            return;
        }
        let now = self.clock.now();
        let applied = if shared.lifted {
            applying(|| self.policy.lift(source)).is_some()
        } else {
            applying(|| self.policy.adopt(source, ban, now))
        };
        if applied {
            self.metrics.applied.increment(1);
            tracing::info!(source = %Source(source), from = %shared.node, lifted = shared.lifted, rule = %shared.entry.rule, "applied a ban change from another node");
        } else {
            self.metrics.ignored.increment(1);
        }
    }
}

/// `url` fit for a log line: a password in it (`redis://user:secret@host`) shows as `***`.
pub(crate) fn without_password(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let authority_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.into();
    };
    let Some(colon) = authority[..at].find(':') else {
        return url.into();
    };
    let (start, end) = (scheme_end + colon + 1, scheme_end + at);
    format!("{}***{}", &url[..start], &url[end..]).into()
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn a_password_in_the_url_never_reaches_the_log() {
        let shown = |url| without_password(url).into_owned();
        assert_eq!(
            shown("redis://:s3cret@10.0.0.5:6379/0"),
            "redis://:***@10.0.0.5:6379/0"
        );
        assert_eq!(
            shown("rediss://sipguard:s3cret@redis.example"),
            "rediss://sipguard:***@redis.example"
        );
        assert_eq!(shown("redis://10.0.0.5:6379/0"), "redis://10.0.0.5:6379/0");
        assert_eq!(shown("redis://user@host/0"), "redis://user@host/0");
        assert_eq!(shown("not a url"), "not a url");
    }
}
