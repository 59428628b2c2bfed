//! The ban journal: follows the policy's ban and trust changes into a file, replayed at start.
//!
//! The policy owns every ban and every grant of trust; the journal owns none. [`JournalSink`],
//! which the daemon subscribes to the policy, queues a record for each change as it is made (a
//! ban by any rule or by the operator, a lift, trust granted) and a writer thread makes them
//! durable. A ban that runs out is logged, not written: a replay skips expired bans anyway.
//!
//! An append-only file of one record per line, `CRC32 JSON`, the checksum over the JSON text, so
//! each record checks itself: a record torn by a crash mid-write (the last one) or damaged in the
//! middle is skipped with a warning, and the rest still counts. The writer commits in groups: it
//! takes every job waiting, writes the records, `fdatasync`s once, and only then logs the
//! `banned` / `unbanned` lines and acknowledges the barriers among them, so a line in the log
//! means the ban survives `kill -9`. The operator's changes wait on such a barrier
//! ([`Journal::sync`]): queued behind the change's own record, its acknowledgement means the
//! record is durable, and it fails if any record since the [`Mark`] taken before the change
//! was refused or failed to write (conservative: it may be another's).
//!
//! The file is rewritten (compacted) from a snapshot of the policy, its live bans and trusted
//! sources, which the daemon hands over at open: once as many records have been written since
//! the last compaction as it wrote (and at least `COMPACT_SLACK`), after a failed write (which
//! may have torn a line), and after a writer restart. At open it is rewritten to what the
//! replay found. A temporary file, fsync, rename, fsync of
//! the directory, so a crash at any point leaves either the old file or the new one.
//!
//! A flood from spoofed addresses can ban a new source with every packet, so everything here is
//! bounded: the queue (`QUEUE` jobs; a record refused is counted as a journal error), the file
//! (the policy's tables are capped, and the file is compacted to them), and the log: ban and
//! unban lines are logged one by one up to [`LOG_PER_SECOND`] a second, the rest summed up in
//! one line per second.
//!
//! No record stops the writer: every time is formatted clamped to what RFC 3339 can write, and
//! the replay skips what it cannot read. Should the writer thread panic all the same (a bug), a
//! new one rewrites the file from the policy's snapshot and goes on, counted in
//! `sipguard_journal_writer_restarts_total`; the records it was writing are in the snapshot, and
//! only an admin request waiting on them gets an error.

use metrics::{counter, Counter};
use serde::{Deserialize, Serialize};
use sipguard_policy::{Ban, Change, IpNet, Observer, Policy, RuleId, Timestamp};
use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Jobs waiting for the writer beyond this are refused (records among them counted as journal
/// errors): a burst of bans from a spoofed flood must not grow memory without bound.
const QUEUE: usize = 65_536;
/// How often an idle writer wakes to sum up the log lines it did not write.
const LOG_TICK: Duration = Duration::from_secs(1);
/// How long a barrier waits for room in a full queue (an operator's request during a flood of
/// bans) before the request fails, and how often it looks.
pub const SYNC_WAIT: Duration = Duration::from_secs(2);
const SYNC_RETRY: Duration = Duration::from_millis(5);
/// Most jobs taken per `fdatasync`.
const GROUP: usize = 4096;
/// Ban and unban lines logged one by one per second; beyond that they are counted and summed up.
pub const LOG_PER_SECOND: u32 = 100;
/// Expiries waiting for the writer beyond this are only counted, for the summary line: a sweep
/// may end a whole flood's bans at once, and their log lines must not crowd the records out of
/// the queue.
const EXPIRIES_WAITING: usize = 2 * LOG_PER_SECOND as usize;
/// The file is compacted once this many records, and at least as many as the last compaction
/// wrote, have been written since.
const COMPACT_SLACK: usize = 10_000;
/// A writer that panicked is opened afresh after this pause, so a fault that recurs costs one
/// restart a second rather than a busy loop.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// The last millisecond RFC 3339 can write, 9999-12-31T23:59:59.999Z; later times are shown as it.
const LAST_FORMATTABLE_MILLIS: u64 = 253_402_300_799_999;

/// Where the writer reads the time: the system clock, or a test's own.
type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What the file is compacted to: the records of everything live at the given time (the
/// policy's bans and trusted sources, see [`snapshot_of`]). `None` once there is nothing to ask
/// (the policy is gone, the daemon stopping): the file is then left as it is.
pub type Snapshot = Arc<dyn Fn(Timestamp) -> Option<Vec<Record>> + Send + Sync>;

/// The records of what `policy` holds at `now`: its bans, then its trusted sources.
pub fn snapshot_of(policy: &Policy, now: Timestamp) -> Vec<Record> {
    let bans = policy
        .bans(now)
        .into_iter()
        .map(|(source, ban)| Record::Ban(BanEntry::new(source, &ban)));
    let trusted = policy
        .trusted_sources(now)
        .into_iter()
        .map(|(ip, until)| Record::Trust {
            ip,
            until: until.as_millis(),
        });
    bans.chain(trusted).collect()
}

/// A banned source as the journal, the log and the admin API write it: a bare address for a
/// single address (as journals from before network bans have it), `address/length` for a
/// network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source(pub IpNet);

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let net = self.0;
        if net.prefix_len() == net.max_prefix_len() {
            net.addr().fmt(f)
        } else {
            net.fmt(f)
        }
    }
}

/// Reads a source as [`Source`] writes it: an address (a network of one), or a network,
/// truncated to its prefix (`2001:db8::1/64` is `2001:db8::/64`).
pub fn parse_source(text: &str) -> Option<IpNet> {
    match text.parse::<IpNet>() {
        Ok(net) => Some(net.trunc()),
        Err(_) => text.parse::<IpAddr>().ok().map(IpNet::from),
    }
}

/// Serde for a source field: written as [`Source`], read by [`parse_source`].
mod source {
    use serde::{Deserialize, Deserializer, Serializer};
    use sipguard_policy::IpNet;

    pub fn serialize<S: Serializer>(net: &IpNet, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&super::Source(*net))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_source(&text).ok_or_else(|| {
            serde::de::Error::custom(format_args!("{text:?}: expected an address or a network"))
        })
    }
}

/// One ban as the journal keeps it: everything needed to restore it as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanEntry {
    /// The banned source: one address, written bare, or a network, written `address/length`.
    #[serde(with = "source")]
    pub ip: IpNet,
    /// The rule's label (`RuleId::as_str`).
    pub rule: String,
    /// Pieces of evidence that tripped the rule.
    pub evidence: u32,
    /// When the evidence started, milliseconds since the epoch.
    pub first_seen: u64,
    /// The last evidence, milliseconds since the epoch.
    pub last_seen: u64,
    /// When the ban lifts, milliseconds since the epoch.
    pub expires: u64,
    /// 1 for a first ban, n for the n-th within the repeat window.
    pub offence: u32,
    /// The operator's words for a manual ban (the ban's `note`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl BanEntry {
    /// The journal's form of a ban of the policy's.
    pub fn new(ip: IpNet, ban: &Ban) -> Self {
        BanEntry {
            ip,
            rule: ban.rule.as_str().to_owned(),
            evidence: ban.evidence,
            first_seen: ban.first_seen.as_millis(),
            last_seen: ban.last_seen.as_millis(),
            expires: ban.expires.as_millis(),
            offence: ban.offence,
            reason: ban.note.as_deref().map(str::to_owned),
        }
    }

    /// The ban as the policy holds it; `None` for a rule this version does not know.
    pub fn ban(&self) -> Option<Ban> {
        let rule = RuleId::ALL
            .into_iter()
            .find(|rule| rule.as_str() == self.rule)?;
        Some(Ban {
            rule,
            note: self.reason.as_deref().map(Into::into),
            evidence: self.evidence,
            first_seen: Timestamp::from_millis(self.first_seen),
            last_seen: Timestamp::from_millis(self.last_seen),
            expires: Timestamp::from_millis(self.expires),
            offence: self.offence,
            quiet: false,
        })
    }
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    /// A source banned (or its ban replaced).
    Ban(BanEntry),
    /// A ban lifted by hand.
    Unban {
        /// The source let through again, written as in [`BanEntry::ip`].
        #[serde(with = "source")]
        ip: IpNet,
    },
    /// A source authenticated and is trusted.
    Trust {
        /// The trusted address.
        ip: IpAddr,
        /// Until when, milliseconds since the epoch.
        until: u64,
    },
}

impl Record {
    /// The record as one line: checksum, space, JSON, newline.
    pub fn encode(&self) -> String {
        let json = serde_json::to_string(self).expect("a record always serialises");
        format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()))
    }

    /// Reads one line (without its newline); `None` when the checksum or the JSON is wrong.
    pub fn decode(line: &[u8]) -> Option<Record> {
        let text = std::str::from_utf8(line).ok()?;
        let (crc, json) = text.split_once(' ')?;
        let crc = u32::from_str_radix(crc, 16).ok()?;
        if crc != crc32fast::hash(json.as_bytes()) {
            return None;
        }
        serde_json::from_str(json).ok()
    }

    /// Whom the record is about.
    fn source(&self) -> Source {
        match self {
            Record::Ban(entry) => Source(entry.ip),
            Record::Unban { ip } => Source(*ip),
            Record::Trust { ip, .. } => Source(IpNet::from(*ip)),
        }
    }
}

/// What reading a journal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Bans in force at the time of reading, one per source (address or network), in the order
    /// they were last written.
    pub bans: Vec<BanEntry>,
    /// Sources trusted at the time of reading, each until the last expiry written for it,
    /// by address.
    pub trusted: Vec<(IpAddr, Timestamp)>,
    /// Bans in the file that had expired and were left out.
    pub expired: usize,
    /// The last record was cut short (a crash mid-write) and was skipped.
    pub torn_tail: bool,
    /// Line numbers (1-based) of damaged records before the last, each skipped.
    pub corrupt: Vec<usize>,
}

impl Replay {
    /// What the file holds live, as the records a compaction writes.
    fn records(&self) -> Vec<Record> {
        let bans = self.bans.iter().cloned().map(Record::Ban);
        let trusted = self.trusted.iter().map(|&(ip, until)| Record::Trust {
            ip,
            until: until.as_millis(),
        });
        bans.chain(trusted).collect()
    }
}

/// Replays the journal's bytes: the live bans and trust at `now`, and what was skipped.
pub fn replay(bytes: &[u8], now: Timestamp) -> Replay {
    let mut live: HashMap<IpNet, (usize, BanEntry)> = HashMap::new();
    let mut trusted: HashMap<IpAddr, u64> = HashMap::new();
    let mut report = Replay::default();
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    for (index, line) in lines.iter().enumerate() {
        let last = index + 1 == lines.len();
        let complete = line.ends_with(b"\n");
        let record = complete
            .then(|| Record::decode(&line[..line.len() - 1]))
            .flatten();
        match record {
            Some(Record::Ban(entry)) => {
                live.insert(entry.ip, (index, entry));
            }
            Some(Record::Unban { ip }) => {
                live.remove(&ip);
            }
            // The last record stands: trust is only ever extended, or withdrawn (until 0).
            Some(Record::Trust { ip, until }) => {
                trusted.insert(ip, until);
            }
            None if last => report.torn_tail = true,
            None => report.corrupt.push(index + 1),
        }
    }
    let mut bans: Vec<(usize, BanEntry)> = live.into_values().collect();
    bans.sort_by_key(|(index, _)| *index);
    for (_, entry) in bans {
        if Timestamp::from_millis(entry.expires) > now {
            report.bans.push(entry);
        } else {
            report.expired += 1;
        }
    }
    report.trusted = trusted
        .into_iter()
        .map(|(ip, until)| (ip, Timestamp::from_millis(until)))
        .filter(|&(_, until)| until > now)
        .collect();
    report.trusted.sort_unstable();
    report
}

/// A job for the writer thread.
enum Job {
    /// A record to make durable, then log.
    Write(Record),
    /// A ban that ran out: only logged.
    Expired { source: IpNet, ban: Ban },
    /// A barrier: acknowledged once every record queued before it is durable, with an error
    /// when some record since the mark `since` (of [`Shared::lost`]) never reached the file.
    Sync {
        since: u64,
        done: oneshot::Sender<Result<(), JournalError>>,
    },
}

/// What the handles and the writer share.
#[derive(Debug, Default)]
struct Shared {
    /// Records that never reached the file since it was opened: refused at the full queue, or
    /// in a group whose write failed. A barrier fails when it moved since the barrier's mark.
    lost: AtomicU64,
    /// Expiries queued and not yet taken by the writer.
    expiries_waiting: AtomicUsize,
    /// Expiries never queued, for the writer's summary line.
    expiries_unlogged: AtomicU64,
    /// The second (since the epoch) a refused record was last warned of: under a flood that
    /// fills the queue, one warning a second.
    warned_at: AtomicU64,
}

/// The handle on the journal: cheap to clone, sends jobs to the writer thread.
#[derive(Clone)]
pub struct Journal {
    queue: mpsc::SyncSender<Job>,
    path: PathBuf,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

/// Where the journal stood before a change: what [`Journal::sync`] checks the change against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Mark(u64);

/// Why a change could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Too many jobs waiting for the writer.
    #[error("the ban journal's queue is full")]
    Full,
    /// The writer thread failed before the record was durable (it restarts on its own).
    #[error("the ban journal writer failed before the record was durable")]
    Stopped,
    /// Writing or syncing failed.
    #[error("cannot write the ban journal: {0}")]
    Io(#[from] io::Error),
    /// A record queued since the mark never reached the file: it may be the change's own.
    #[error(
        "a change since the request was not journalled (the queue was full or a write failed)"
    )]
    Lost,
}

/// The journal's observer of the policy: each change is queued for the writer at once, never
/// waited on (it runs on the packet path, while the change is made).
pub struct JournalSink(Journal);

impl Observer for JournalSink {
    fn changed(&self, change: &Change) {
        let journal = &self.0;
        match change {
            // A quiet ban is written when it is announced, or by the next compaction.
            Change::Banned { source, ban } | Change::Announced { source, ban } if !ban.quiet => {
                journal.record(Record::Ban(BanEntry::new(*source, ban)));
            }
            Change::Banned { .. } | Change::Announced { .. } => {}
            Change::Lifted { source, .. } => journal.record(Record::Unban { ip: *source }),
            Change::Trusted { source, until } => journal.record(Record::Trust {
                ip: *source,
                until: until.as_millis(),
            }),
            Change::Distrusted { source } => journal.record(Record::Trust {
                ip: *source,
                until: 0,
            }),
            Change::Expired { source, ban } => journal.expired(*source, ban),
        }
    }
}

impl Journal {
    /// Opens (or creates) the journal at `path`, replays it, rewrites it to the bans and trust
    /// still in force at `now`, and starts the writer thread, which compacts the file from
    /// `snapshot` from then on. The replay says what the caller should restore.
    pub fn open(path: &Path, now: Timestamp, snapshot: Snapshot) -> io::Result<(Journal, Replay)> {
        Journal::start(
            path,
            now,
            snapshot,
            Arc::new(|| Timestamp::from_system(SystemTime::now())),
        )
    }

    /// [`Journal::open`] with the writer reading the time from `clock`.
    fn start(
        path: &Path,
        now: Timestamp,
        snapshot: Snapshot,
        clock: Clock,
    ) -> io::Result<(Journal, Replay)> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err),
        };
        let replay = replay(&bytes, now);
        let shared = Arc::new(Shared::default());
        let records = replay.records();
        compact(path, &records)?;
        let writer = Writer {
            path: path.to_owned(),
            file: OpenOptions::new().append(true).open(path)?,
            written: 0,
            compacted: records.len(),
            snapshot,
            shared: Arc::clone(&shared),
            log: LogBudget::default(),
            clock,
        };
        // Registered here, on the caller's thread, so it is exported (at 0) from the start.
        let restarts = counter!("sipguard_journal_writer_restarts_total");
        let (queue, jobs) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("ban-journal".to_owned())
            .spawn(move || supervise(writer, &jobs, &restarts))?;
        let journal = Journal {
            queue,
            path: path.to_owned(),
            shared,
        };
        Ok((journal, replay))
    }

    /// Where the journal is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The observer to subscribe to the policy.
    pub fn sink(&self) -> JournalSink {
        JournalSink(self.clone())
    }

    /// Where the journal stands now: take it before a change, and [`Journal::sync`] on it after.
    pub fn mark(&self) -> Mark {
        Mark(self.shared.lost.load(Ordering::SeqCst))
    }

    /// Waits until every record queued so far is durable: a barrier behind them in the queue.
    /// The policy's observers run as the change is made, so after the change its record is
    /// queued already (or was refused). An error when the barrier finds no room in the queue
    /// within [`SYNC_WAIT`] or cannot be synced, or when any record since `since` never reached
    /// the file (which may be the change's own).
    pub async fn sync(&self, since: Mark) -> Result<(), JournalError> {
        let (done, synced) = oneshot::channel();
        let mut barrier = Job::Sync {
            since: since.0,
            done,
        };
        let deadline = tokio::time::Instant::now() + SYNC_WAIT;
        loop {
            match self.queue.try_send(barrier) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Full(job)) if tokio::time::Instant::now() < deadline => {
                    barrier = job;
                    tokio::time::sleep(SYNC_RETRY).await;
                }
                Err(mpsc::TrySendError::Full(_)) => return Err(JournalError::Full),
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(JournalError::Stopped),
            }
        }
        synced.await.unwrap_or(Err(JournalError::Stopped))
    }

    fn send(&self, job: Job) -> Result<(), JournalError> {
        self.queue.try_send(job).map_err(|err| match err {
            mpsc::TrySendError::Full(_) => JournalError::Full,
            mpsc::TrySendError::Disconnected(_) => JournalError::Stopped,
        })
    }

    /// Queues a record without waiting; one refused is counted as lost and a journal error.
    fn record(&self, record: Record) {
        let source = record.source();
        let Err(err) = self.send(Job::Write(record)) else {
            return;
        };
        self.shared.lost.fetch_add(1, Ordering::SeqCst);
        counter!("sipguard_journal_errors_total").increment(1);
        let second = Timestamp::from_system(SystemTime::now()).as_millis() / 1000;
        if self.shared.warned_at.swap(second, Ordering::Relaxed) != second {
            tracing::warn!(path = %self.path.display(), %source, %err, "a ban or trust is in force but not journalled: it will not survive a restart (more like it this second are only counted in sipguard_journal_errors_total)");
        }
    }

    /// Queues the log line of a ban that ran out, unless enough are waiting already.
    fn expired(&self, source: IpNet, ban: &Ban) {
        let shared = &self.shared;
        let queued = shared.expiries_waiting.fetch_add(1, Ordering::Relaxed) < EXPIRIES_WAITING
            && self
                .send(Job::Expired {
                    source,
                    ban: ban.clone(),
                })
                .is_ok();
        if !queued {
            shared.expiries_waiting.fetch_sub(1, Ordering::Relaxed);
            shared.expiries_unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread's body: runs `writer` until every [`Journal`] handle is gone. A writer that
/// panics is counted in `restarts`, logged, and replaced by one that rewrites the file from the
/// policy's snapshot, which holds whatever the failed one was writing.
fn supervise(mut writer: Writer, jobs: &mpsc::Receiver<Job>, restarts: &Counter) {
    loop {
        let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| writer.run(jobs))) else {
            return;
        };
        restarts.increment(1);
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("no message");
        tracing::error!(path = %writer.path.display(), panic = message, "the ban journal writer failed; it restarts from the policy's bans and trust");
        writer.reopen();
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    /// Records written since the file was last compacted.
    written: usize,
    /// Records the last compaction wrote.
    compacted: usize,
    snapshot: Snapshot,
    shared: Arc<Shared>,
    log: LogBudget,
    clock: Clock,
}

/// Lets [`LOG_PER_SECOND`] ban and unban lines a second through and counts the rest.
#[derive(Debug)]
struct LogBudget {
    second_started: Instant,
    logged: u32,
    suppressed: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            second_started: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }
}

impl LogBudget {
    /// Whether one more line may be logged now.
    fn allow(&mut self) -> bool {
        self.roll();
        if self.logged < LOG_PER_SECOND {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Starts a new second once the last one is over, summing up what it did not log.
    fn roll(&mut self) {
        if self.second_started.elapsed() < Duration::from_secs(1) {
            return;
        }
        if self.suppressed > 0 {
            tracing::info!(
                not_logged = self.suppressed,
                per_second = LOG_PER_SECOND,
                "more bans and unbans than are logged one by one; `sipguard bans list` and sipguard_bans_total have them all"
            );
        }
        *self = LogBudget::default();
    }
}

impl Writer {
    /// Makes this writer, whose run panicked, fit to run again: the file rewritten from the
    /// snapshot (tried every [`RESTART_DELAY`] until it works), or, the policy gone, just
    /// opened again for appending.
    fn reopen(&mut self) {
        loop {
            std::thread::sleep(RESTART_DELAY);
            let records = (self.snapshot)(self.now());
            let rewritten = match &records {
                Some(records) => compact(&self.path, records),
                None => Ok(()),
            };
            match rewritten.and_then(|()| OpenOptions::new().append(true).open(&self.path)) {
                Ok(file) => {
                    self.file = file;
                    self.written = 0;
                    self.compacted = records.as_ref().map_or(0, Vec::len);
                    tracing::info!(path = %self.path.display(), records = self.compacted, "ban journal writer restarted");
                    return;
                }
                Err(err) => {
                    counter!("sipguard_journal_errors_total").increment(1);
                    tracing::error!(path = %self.path.display(), %err, "cannot rewrite the ban journal; trying again");
                }
            }
        }
    }

    fn now(&self) -> Timestamp {
        (self.clock)()
    }

    fn run(&mut self, jobs: &mpsc::Receiver<Job>) {
        loop {
            let first = match jobs.recv_timeout(LOG_TICK) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.roll_log();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut group = vec![first];
            group.extend(jobs.try_iter().take(GROUP - 1));
            let expiries = group
                .iter()
                .filter(|job| matches!(job, Job::Expired { .. }))
                .count();
            self.shared
                .expiries_waiting
                .fetch_sub(expiries, Ordering::Relaxed);
            let (text, records) = group
                .iter()
                .filter_map(|job| match job {
                    Job::Write(record) => Some(record.encode()),
                    _ => None,
                })
                .fold((String::new(), 0), |(mut text, records), line| {
                    text.push_str(&line);
                    (text, records + 1)
                });
            let result = self.write(&text);
            let now = self.now();
            match &result {
                Ok(()) => self.written += records,
                Err(err) => {
                    self.shared.lost.fetch_add(records as u64, Ordering::SeqCst);
                    counter!("sipguard_journal_errors_total").increment(1);
                    tracing::error!(path = %self.path.display(), %err, records, "cannot write the ban journal; these bans are in force but may not survive a restart");
                }
            }
            let lost = self.shared.lost.load(Ordering::SeqCst);
            for job in group {
                match job {
                    Job::Write(record) if result.is_ok() => self.log_durable(&record, now),
                    Job::Write(_) => {}
                    Job::Expired { source, ban } => self.log_expired(source, &ban),
                    Job::Sync { since, done } => {
                        let _ = done.send(match &result {
                            Err(err) => Err(io::Error::new(err.kind(), err.to_string()).into()),
                            Ok(()) if lost > since => Err(JournalError::Lost),
                            Ok(()) => Ok(()),
                        });
                    }
                }
            }
            // A failed write may have left a torn line that would swallow the next: rewrite
            // the file at once.
            if result.is_err() || self.written > self.compacted.max(COMPACT_SLACK) {
                self.compact(now);
            }
            self.roll_log();
        }
    }

    /// Appends `text` and syncs it; nothing to do for none.
    fn write(&mut self, text: &str) -> io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()
    }

    /// Logs a record made durable at `now`.
    fn log_durable(&mut self, record: &Record, now: Timestamp) {
        match record {
            Record::Ban(entry) => {
                if self.log.allow() {
                    tracing::info!(
                        source = %Source(entry.ip),
                        rule = %entry.rule,
                        evidence = entry.evidence,
                        offence = entry.offence,
                        expires = %format_millis(entry.expires),
                        expires_in_s = entry.expires.saturating_sub(now.as_millis()) / 1000,
                        reason = entry.reason.as_deref().unwrap_or(""),
                        "banned"
                    );
                }
            }
            Record::Unban { ip } => {
                if self.log.allow() {
                    tracing::info!(source = %Source(*ip), how = "manual", "unbanned");
                }
            }
            Record::Trust { ip, until } => {
                tracing::debug!(source = %ip, until = %format_millis(*until), "trusted");
            }
        }
    }

    /// Logs a ban that ran out (nothing is written: a replay skips expired bans anyway).
    fn log_expired(&mut self, source: IpNet, ban: &Ban) {
        if self.log.allow() {
            tracing::info!(source = %Source(source), rule = %ban.rule.as_str(), evidence = ban.evidence, offence = ban.offence, expired = %format_millis(ban.expires.as_millis()), how = "expired", "unbanned");
        }
    }

    /// Ends the log's second if it is over, with the expiries that were never queued.
    fn roll_log(&mut self) {
        self.log.suppressed += self.shared.expiries_unlogged.swap(0, Ordering::Relaxed);
        self.log.roll();
    }

    /// Rewrites the file from the snapshot at `now`.
    fn compact(&mut self, now: Timestamp) {
        self.written = 0;
        let Some(records) = (self.snapshot)(now) else {
            return;
        };
        let result = compact(&self.path, &records);
        // Opened again whatever happened: once the rename is done, the old file is gone.
        match OpenOptions::new().append(true).open(&self.path) {
            Ok(file) => self.file = file,
            Err(err) => {
                counter!("sipguard_journal_errors_total").increment(1);
                tracing::error!(path = %self.path.display(), %err, "cannot reopen the ban journal after compacting it");
            }
        }
        match result {
            Ok(()) => {
                self.compacted = records.len();
                tracing::debug!(path = %self.path.display(), records = records.len(), "ban journal compacted");
            }
            Err(err) => {
                counter!("sipguard_journal_errors_total").increment(1);
                tracing::warn!(path = %self.path.display(), %err, "cannot compact the ban journal; it keeps growing");
            }
        }
    }
}

/// Rewrites the journal at `path` to hold just `records`: a temporary file beside it, fsync,
/// rename over the old one, fsync of the directory.
fn compact(path: &Path, records: &[Record]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".compact");
    let temporary = dir.join(name);
    let text: String = records.iter().map(Record::encode).collect();
    {
        let mut file = private_file(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    File::open(dir)?.sync_all()
}

fn private_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Creates `dir` and its missing parents, each new one readable by its owner only.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Where the journal goes when the config names no file: systemd's `StateDirectory=` when set,
/// else the XDG state directory (`$XDG_STATE_HOME`, or `~/.local/state`). `None` when neither
/// can be had (no `HOME`).
pub fn default_path() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(state) = var("STATE_DIRECTORY") {
        // systemd lists several directories separated by colons when the unit names several.
        let first = state.to_string_lossy().split(':').next()?.to_owned();
        return Some(PathBuf::from(first).join("bans.journal"));
    }
    let state_home = var("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".local/state")))?;
    Some(state_home.join("sipguard/bans.journal"))
}

/// A time in milliseconds since the epoch as RFC 3339 (UTC, seconds); a time after the year
/// 9999, which RFC 3339 cannot write, as the last second of 9999.
pub fn format_millis(millis: u64) -> String {
    let millis = millis.min(LAST_FORMATTABLE_MILLIS);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(millis)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    const NOW: Timestamp = Timestamp::from_millis(1_700_000_000_000);

    fn net(text: &str) -> IpNet {
        parse_source(text).unwrap()
    }

    fn entry(ip: &str, expires_in_s: u64) -> BanEntry {
        BanEntry {
            ip: net(ip),
            rule: "scanner".to_owned(),
            evidence: 1,
            first_seen: NOW.as_millis() - 5_000,
            last_seen: NOW.as_millis(),
            expires: NOW.as_millis() + expires_in_s * 1000,
            offence: 2,
            reason: None,
        }
    }

    fn trust(ip: &str, until_in_s: u64) -> Record {
        Record::Trust {
            ip: ip.parse().unwrap(),
            until: NOW.as_millis() + until_in_s * 1000,
        }
    }

    fn text(records: &[Record]) -> String {
        records.iter().map(Record::encode).collect()
    }

    /// A snapshot of fixed records, as a policy holding just them would give.
    fn fixed(records: Vec<Record>) -> Snapshot {
        Arc::new(move |_| Some(records.clone()))
    }

    /// A snapshot of `policy`, for as long as it lives (as the daemon's).
    fn following(policy: &Arc<Policy>) -> Snapshot {
        let policy = Arc::downgrade(policy);
        Arc::new(move |now| policy.upgrade().map(|policy| snapshot_of(&policy, now)))
    }

    fn policy() -> Arc<Policy> {
        Arc::new(Policy::new(sipguard_policy::PolicyConfig::default()).unwrap())
    }

    #[test]
    fn replay_keeps_live_bans_and_applies_unbans_in_order() {
        let journal = text(&[
            Record::Ban(entry("192.0.2.1", 600)),
            Record::Ban(entry("192.0.2.2", 600)),
            Record::Unban {
                ip: net("192.0.2.1"),
            },
            Record::Ban(entry("192.0.2.3", 60)),
        ]);
        let replay = replay(journal.as_bytes(), NOW);
        assert_eq!(
            replay.bans,
            [entry("192.0.2.2", 600), entry("192.0.2.3", 60)]
        );
        assert!(!replay.torn_tail);
        assert!(replay.corrupt.is_empty());
    }

    #[test]
    fn replay_restores_the_exact_expiry_offence_and_note() {
        let mut manual = entry("198.51.100.9", 3600);
        manual.rule = "manual".to_owned();
        manual.reason = Some("seen probing \"extensions\"\nall night".to_owned());
        let journal = text(&[Record::Ban(manual.clone())]);
        let restored = &replay(journal.as_bytes(), NOW).bans[0];
        assert_eq!(restored, &manual);
        let ban = restored.ban().expect("a known rule");
        assert_eq!(ban.rule, RuleId::Manual);
        assert_eq!(ban.expires, Timestamp::from_millis(manual.expires));
        assert_eq!(ban.offence, 2);
        assert_eq!(ban.note.as_deref(), manual.reason.as_deref());
        assert_eq!(BanEntry::new(restored.ip, &ban), manual);
    }

    #[test]
    fn a_prefix_ban_is_journalled_and_replayed_as_a_prefix() {
        let prefix = entry("2001:db8:1:2::/64", 600);
        let address = entry("2001:db8:1:2::7", 600);
        let line = Record::Ban(prefix.clone()).encode();
        assert!(line.contains(r#""ip":"2001:db8:1:2::/64""#), "{line}");
        let journal = text(&[
            Record::Ban(prefix.clone()),
            Record::Ban(address.clone()),
            Record::Unban {
                ip: net("2001:db8:1:2::7"),
            },
        ]);
        let replay = replay(journal.as_bytes(), NOW);
        assert_eq!(replay.bans, [prefix]);
        assert_eq!(
            replay.bans[0].ip,
            IpNet::V6("2001:db8:1:2::/64".parse().unwrap())
        );
        // Written by hand, a network with host bits is its prefix.
        assert_eq!(net("2001:db8:1:2::9/64"), net("2001:db8:1:2::/64"));
    }

    /// Journals written before bans were keyed by network: `ip` a bare address.
    #[test]
    fn lines_written_before_network_bans_still_replay_and_are_written_the_same() {
        let lines = [
            r#"b9914785 {"op":"ban","ip":"192.0.2.1","rule":"register_failures","evidence":5,"first_seen":1699999990000,"last_seen":1700000000000,"expires":1700000600000,"offence":1}"#,
            r#"a934a2c4 {"op":"ban","ip":"2001:db8::7","rule":"manual","evidence":0,"first_seen":1700000000000,"last_seen":1700000000000,"expires":1700003600000,"offence":1,"reason":"probing at night"}"#,
            r#"70cc3bc4 {"op":"ban","ip":"192.0.2.2","rule":"scanner","evidence":1,"first_seen":1700000000000,"last_seen":1700000000000,"expires":1700000600000,"offence":1}"#,
            r#"361d0369 {"op":"unban","ip":"192.0.2.2"}"#,
        ];
        let old = lines.map(|line| format!("{line}\n")).concat();
        let replay = replay(old.as_bytes(), NOW);
        assert!(replay.corrupt.is_empty() && !replay.torn_tail);
        let sources: Vec<IpNet> = replay.bans.iter().map(|entry| entry.ip).collect();
        assert_eq!(sources, [net("192.0.2.1/32"), net("2001:db8::7/128")]);
        assert_eq!(replay.bans[1].reason.as_deref(), Some("probing at night"));
        for line in lines {
            let record = Record::decode(line.as_bytes()).expect("an old line decodes");
            assert_eq!(record.encode(), format!("{line}\n"));
        }
    }

    #[test]
    fn trust_is_replayed_until_its_last_expiry_while_it_lasts_and_a_withdrawal_ends_it() {
        let journal = text(&[
            trust("192.0.2.10", 600),
            trust("192.0.2.10", 1200),
            trust("192.0.2.12", 1200),
            Record::Trust {
                ip: "192.0.2.12".parse().unwrap(),
                until: 0,
            },
            trust("2001:db8::10", 60),
            Record::Trust {
                ip: "192.0.2.11".parse().unwrap(),
                until: NOW.as_millis(),
            },
        ]);
        let line = trust("192.0.2.10", 600).encode();
        assert!(
            line.ends_with(&format!(
                " {{\"op\":\"trust\",\"ip\":\"192.0.2.10\",\"until\":{}}}\n",
                NOW.as_millis() + 600_000
            )),
            "{line}"
        );
        let replay = replay(journal.as_bytes(), NOW);
        assert_eq!(
            replay.trusted,
            [
                (
                    "192.0.2.10".parse().unwrap(),
                    NOW + Duration::from_secs(1200)
                ),
                (
                    "2001:db8::10".parse().unwrap(),
                    NOW + Duration::from_secs(60)
                ),
            ]
        );
        assert!(replay.bans.is_empty());
    }

    #[test]
    fn replay_skips_expired_bans() {
        let mut expired = entry("192.0.2.1", 0);
        expired.expires = NOW.as_millis() - 1;
        let journal = text(&[Record::Ban(expired), Record::Ban(entry("192.0.2.2", 1))]);
        let replay = replay(journal.as_bytes(), NOW);
        assert_eq!(replay.bans, [entry("192.0.2.2", 1)]);
        assert_eq!(replay.expired, 1);
    }

    #[test]
    fn a_later_ban_of_the_same_source_replaces_the_earlier() {
        let journal = text(&[
            Record::Ban(entry("192.0.2.1", 60)),
            Record::Ban(entry("192.0.2.1", 7200)),
        ]);
        assert_eq!(
            replay(journal.as_bytes(), NOW).bans,
            [entry("192.0.2.1", 7200)]
        );
    }

    #[test]
    fn torn_last_record_is_skipped_and_reported() {
        let whole = text(&[
            Record::Ban(entry("192.0.2.1", 600)),
            Record::Ban(entry("192.0.2.2", 600)),
        ]);
        // Every cut inside the last record, with and without its newline.
        let second_starts = whole.find('\n').unwrap() + 1;
        for cut in second_starts + 1..whole.len() {
            let replay = replay(&whole.as_bytes()[..cut], NOW);
            assert_eq!(replay.bans, [entry("192.0.2.1", 600)], "cut at {cut}");
            assert!(replay.torn_tail, "cut at {cut}");
            assert!(replay.corrupt.is_empty(), "cut at {cut}");
        }
    }

    #[test]
    fn corrupt_record_in_the_middle_is_skipped_and_the_rest_kept() {
        let mut lines: Vec<String> = [
            entry("192.0.2.1", 600),
            entry("192.0.2.2", 600),
            entry("192.0.2.3", 600),
        ]
        .into_iter()
        .map(|e| Record::Ban(e).encode())
        .collect();
        // One flipped digit: still JSON, wrong checksum.
        lines[1] = lines[1].replacen("192.0.2.2", "192.0.2.7", 1);
        let replay = replay(lines.concat().as_bytes(), NOW);
        assert_eq!(
            replay.bans,
            [entry("192.0.2.1", 600), entry("192.0.2.3", 600)]
        );
        assert_eq!(replay.corrupt, [2]);
        assert!(!replay.torn_tail);
    }

    #[test]
    fn garbage_lines_never_panic() {
        let bad_source = Record::Unban {
            ip: net("192.0.2.1"),
        }
        .encode()
        .replace("192.0.2.1", "192.0.2.0/33");
        for junk in [
            &b"\n\n"[..],
            b"zz {}\n",
            b"00000000 \n",
            b"\xff\xfe\n",
            b"1234",
            bad_source.as_bytes(),
        ] {
            let replay = replay(junk, NOW);
            assert!(replay.bans.is_empty());
        }
    }

    #[tokio::test]
    async fn open_compacts_to_the_live_bans_and_trust_and_appends_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/bans.journal");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut expired = entry("192.0.2.9", 0);
        expired.expires = NOW.as_millis() - 1;
        let mut old = text(&[
            Record::Ban(entry("192.0.2.1", 600)),
            trust("192.0.2.20", 60),
            Record::Ban(expired),
            Record::Ban(entry("192.0.2.2", 600)),
            Record::Unban {
                ip: net("192.0.2.2"),
            },
        ]);
        old.push_str("0badc0de {\"op\":\"ba");
        std::fs::write(&path, old).unwrap();

        let (journal, replay) = Journal::open(&path, NOW, fixed(Vec::new())).unwrap();
        assert_eq!(replay.bans, [entry("192.0.2.1", 600)]);
        assert!(replay.torn_tail);
        let compacted = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            compacted,
            text(&[
                Record::Ban(entry("192.0.2.1", 600)),
                trust("192.0.2.20", 60)
            ])
        );

        let mark = journal.mark();
        journal.record(Record::Ban(entry("192.0.2.3", 600)));
        journal.record(Record::Unban {
            ip: net("192.0.2.1"),
        });
        journal.sync(mark).await.unwrap();
        let reread = replay_file(&path);
        assert_eq!(reread.bans, [entry("192.0.2.3", 600)]);
        assert!(!reread.torn_tail);
    }

    #[tokio::test]
    async fn the_policys_changes_are_journalled_through_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let policy = policy();
        let (journal, _) = Journal::open(&path, NOW, following(&policy)).unwrap();
        policy.subscribe(Arc::new(journal.sink()));
        let host: IpAddr = "192.0.2.1".parse().unwrap();
        let prefix = net("2001:db8:1:2::/64");
        let mark = journal.mark();
        let hand = policy
            .ban_manually(
                host,
                Duration::from_secs(600),
                Some("toll fraud".into()),
                NOW,
            )
            .unwrap();
        let wide = policy
            .ban_manually(prefix, Duration::from_secs(900), None, NOW)
            .unwrap();
        policy.lift(prefix).unwrap();
        let again = policy
            .ban_manually(prefix, Duration::from_secs(1200), None, NOW)
            .unwrap();
        let trusted_until = NOW + Duration::from_secs(3600);
        journal.sink().changed(&Change::Trusted {
            source: "198.51.100.4".parse().unwrap(),
            until: trusted_until,
        });
        journal.sink().changed(&Change::Expired {
            source: prefix,
            ban: wide,
        });
        journal.sync(mark).await.unwrap();

        let replay = replay_file(&path);
        assert_eq!(
            replay.bans,
            [
                BanEntry::new(IpNet::from(host), &hand),
                BanEntry::new(prefix, &again)
            ]
        );
        assert_eq!(replay.bans[0].reason.as_deref(), Some("toll fraud"));
        assert_eq!(
            replay.trusted,
            [("198.51.100.4".parse().unwrap(), trusted_until)]
        );
        let file = std::fs::read_to_string(&path).unwrap();
        assert!(
            file.contains(r#"{"op":"unban","ip":"2001:db8:1:2::/64"}"#),
            "{file}"
        );
        assert!(
            file.contains(r#""ip":"192.0.2.1","rule":"manual""#),
            "{file}"
        );
    }

    #[tokio::test]
    async fn the_writer_compacts_to_the_snapshot_once_the_file_outgrows_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let live = entry("192.0.2.1", 600);
        let snapshot = vec![Record::Ban(live.clone()), trust("192.0.2.20", 60)];
        let (journal, _) = Journal::open(&path, NOW, fixed(snapshot)).unwrap();
        let mark = journal.mark();
        for _ in 0..COMPACT_SLACK + 10 {
            journal.record(Record::Ban(entry("192.0.2.2", 600)));
            journal.record(Record::Unban {
                ip: net("192.0.2.2"),
            });
        }
        journal.sync(mark).await.unwrap();
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < COMPACT_SLACK, "{lines} records after compaction");
        let replay = replay_file(&path);
        assert_eq!(replay.bans, [live]);
        assert_eq!(replay.trusted.len(), 1);
    }

    #[tokio::test]
    async fn a_barrier_fails_when_a_record_since_its_mark_was_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        // The writer stops at its first clock read (after its first group) while stalled: the
        // queue fills behind it.
        let stalled = Arc::new(AtomicBool::new(true));
        let clock: Clock = {
            let stalled = Arc::clone(&stalled);
            Arc::new(move || {
                while stalled.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                NOW
            })
        };
        let (journal, _) = Journal::start(&path, NOW, fixed(Vec::new()), clock).unwrap();
        let mark = journal.mark();
        let mut queued = 0;
        while journal.mark() == mark {
            journal.record(Record::Ban(entry("192.0.2.1", 600)));
            queued += 1;
            assert!(queued <= QUEUE + GROUP + 1, "the queue never filled");
        }
        // The barrier waits for room in the queue, which the writer makes once let go.
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            stalled.store(false, Ordering::SeqCst);
        });
        let synced = journal.sync(mark).await;
        assert!(matches!(synced, Err(JournalError::Lost)), "{synced:?}");
        release.join().unwrap();
        journal
            .sync(journal.mark())
            .await
            .expect("nothing lost since");
    }

    #[test]
    fn times_past_the_year_9999_are_formatted_as_its_last_second() {
        assert_eq!(format_millis(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_millis(LAST_FORMATTABLE_MILLIS),
            "9999-12-31T23:59:59Z"
        );
        for beyond in [LAST_FORMATTABLE_MILLIS + 1, u64::MAX / 2, u64::MAX] {
            assert_eq!(format_millis(beyond), "9999-12-31T23:59:59Z");
        }
    }

    #[tokio::test]
    async fn a_writer_that_panics_is_restarted_from_the_snapshot_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        // The writer reads the clock once a group of jobs is durable: the first read once armed
        // panics.
        let armed = Arc::new(AtomicBool::new(false));
        let clock: Clock = {
            let armed = Arc::clone(&armed);
            Arc::new(move || {
                if armed.swap(false, Ordering::SeqCst) {
                    panic!("a fault injected by the test");
                }
                NOW
            })
        };
        let policy = policy();
        let (journal, _) = metrics::with_local_recorder(&recorder, || {
            Journal::start(&path, NOW, following(&policy), clock)
        })
        .unwrap();
        policy.subscribe(Arc::new(journal.sink()));
        assert!(metrics
            .render()
            .contains("sipguard_journal_writer_restarts_total 0"));
        let ban = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            policy.ban_manually(ip, Duration::from_secs(600), None, NOW);
        };
        let mark = journal.mark();
        ban("192.0.2.1");
        journal.sync(mark).await.unwrap();
        armed.store(true, Ordering::SeqCst);
        // Durable either way: written before the panic, or by the restart's rewrite from the
        // policy. Only its acknowledgement may be lost.
        let mark = journal.mark();
        ban("192.0.2.2");
        let _ = journal.sync(mark).await;
        let mark = journal.mark();
        ban("192.0.2.3");
        journal
            .sync(mark)
            .await
            .expect("the restarted writer takes new records");
        assert!(!armed.load(Ordering::SeqCst));
        let mut sources: Vec<IpNet> = replay_file(&path)
            .bans
            .into_iter()
            .map(|entry| entry.ip)
            .collect();
        sources.sort();
        assert_eq!(
            sources,
            [net("192.0.2.1"), net("192.0.2.2"), net("192.0.2.3")]
        );
        assert!(
            metrics
                .render()
                .contains("sipguard_journal_writer_restarts_total 1"),
            "{}",
            metrics.render()
        );
    }

    #[test]
    fn default_path_prefers_systemd_state_directory() {
        // Only this test reads these variables in this process.
        std::env::set_var("STATE_DIRECTORY", "/var/lib/sipguard:/var/lib/other");
        assert_eq!(
            default_path(),
            Some(PathBuf::from("/var/lib/sipguard/bans.journal"))
        );
        std::env::remove_var("STATE_DIRECTORY");
        std::env::set_var("XDG_STATE_HOME", "/home/op/.state");
        assert_eq!(
            default_path(),
            Some(PathBuf::from("/home/op/.state/sipguard/bans.journal"))
        );
        std::env::remove_var("XDG_STATE_HOME");
    }

    fn replay_file(path: &Path) -> Replay {
        replay(&std::fs::read(path).unwrap(), NOW)
    }
}
