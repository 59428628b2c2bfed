//! The ban journal: every ban and unban made durable before it is acknowledged, replayed at start.
//!
//! An append-only file of one record per line, `CRC32 JSON`, the checksum over the JSON text, so
//! each record checks itself: a record torn by a crash mid-write (the last one) or damaged in the
//! middle is skipped with a warning, and the rest still counts. One writer thread owns the file
//! and commits in groups: it takes every record waiting, writes them, `fdatasync`s once, and only
//! then acknowledges them and logs the `banned` / `unbanned` lines, so a line in the log means the
//! ban survives `kill -9`. The thread keeps the live set too, and now and then (and at every
//! start) rewrites the file to just the bans in force: a temporary file, fsync, rename, fsync of
//! the directory, so a crash at any point leaves either the old file or the new one.
//!
//! A flood from spoofed addresses can ban a new source with every packet, so the journal is
//! bounded like the policy's tables: its live set keeps at most the policy's cap (the bans with
//! the longest to run), and the ban and unban lines are logged one by one up to
//! [`LOG_PER_SECOND`] a second, the rest summed up in one line per second.
//!
//! No record stops the writer: every time is formatted clamped to what RFC 3339 can write, and
//! the replay skips what it cannot read. Should the writer thread panic all the same (a bug), it
//! is opened afresh from the file and goes on, counted in
//! `sipguard_journal_writer_restarts_total`; only the records it was writing at that moment may
//! miss the journal (their bans stay in force, and an admin request waiting on one gets an
//! error).

use metrics::{counter, Counter};
use serde::{Deserialize, Serialize};
use sipguard_policy::{Ban, RuleId, Timestamp};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Records waiting for the writer beyond this are refused (and counted as journal errors): a
/// burst of bans from a spoofed flood must not grow memory without bound.
const QUEUE: usize = 65_536;
/// How often the writer looks for bans that ran out, to log each one's end.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);
/// Most records written per `fdatasync`.
const GROUP: usize = 4096;
/// Ban and unban lines logged one by one per second; beyond that they are counted and summed up.
pub const LOG_PER_SECOND: u32 = 100;
/// The file is compacted once it holds this many records more than the live bans, and at least
/// twice as many.
const COMPACT_SLACK: usize = 10_000;
/// A writer that panicked is opened afresh after this pause, so a fault that recurs costs one
/// restart a second rather than a busy loop.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// The last millisecond RFC 3339 can write, 9999-12-31T23:59:59.999Z; later times are shown as it.
const LAST_FORMATTABLE_MILLIS: u64 = 253_402_300_799_999;

/// Where the writer reads the time: the system clock, or a test's own.
type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// One ban as the journal keeps it: everything needed to restore it as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanEntry {
    /// The banned source.
    pub ip: IpAddr,
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
    /// The operator's words for a manual ban.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl BanEntry {
    /// The journal's form of a ban the policy issued.
    pub fn new(ip: IpAddr, ban: &Ban, reason: Option<String>) -> Self {
        BanEntry {
            ip,
            rule: ban.rule.as_str().to_owned(),
            evidence: ban.evidence,
            first_seen: ban.first_seen.as_millis(),
            last_seen: ban.last_seen.as_millis(),
            expires: ban.expires.as_millis(),
            offence: ban.offence,
            reason,
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
        })
    }
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    /// A source banned (or its ban extended).
    Ban(BanEntry),
    /// A ban lifted by hand.
    Unban {
        /// The source let through again.
        ip: IpAddr,
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
}

/// What reading a journal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Bans in force at the time of reading, in the order they were last written.
    pub bans: Vec<BanEntry>,
    /// Bans in the file that had expired and were left out.
    pub expired: usize,
    /// The last record was cut short (a crash mid-write) and was skipped.
    pub torn_tail: bool,
    /// Line numbers (1-based) of damaged records before the last, each skipped.
    pub corrupt: Vec<usize>,
}

/// Replays the journal's bytes: the live bans at `now`, and what was skipped.
pub fn replay(bytes: &[u8], now: Timestamp) -> Replay {
    let mut live: HashMap<IpAddr, (usize, BanEntry)> = HashMap::new();
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
    report
}

/// A request to the writer thread.
struct Pending {
    record: Record,
    done: Option<oneshot::Sender<io::Result<()>>>,
}

/// The handle on the journal: cheap to clone, sends records to the writer thread.
#[derive(Clone)]
pub struct Journal {
    queue: mpsc::SyncSender<Pending>,
    path: PathBuf,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

/// Why a record could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Too many records waiting for the writer.
    #[error("the ban journal's queue is full")]
    Full,
    /// The writer thread failed before the record was durable (it restarts on its own).
    #[error("the ban journal writer failed before the record was durable")]
    Stopped,
    /// Writing or syncing failed.
    #[error("cannot write the ban journal: {0}")]
    Io(#[from] io::Error),
}

impl Journal {
    /// Opens (or creates) the journal at `path`, replays it, rewrites it to the bans still in
    /// force, and starts the writer thread. The replay says what the caller should restore.
    /// At most `cap` bans are kept live (the policy's `max_tracked_sources`).
    pub fn open(path: &Path, now: Timestamp, cap: usize) -> io::Result<(Journal, Replay)> {
        Journal::start(
            path,
            now,
            cap,
            Arc::new(|| Timestamp::from_system(SystemTime::now())),
        )
    }

    /// [`Journal::open`] with the writer reading the time from `clock`.
    fn start(
        path: &Path,
        now: Timestamp,
        cap: usize,
        clock: Clock,
    ) -> io::Result<(Journal, Replay)> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let (writer, replay) = Writer::open(path, now, cap, clock)?;
        // Registered here, on the caller's thread, so it is exported (at 0) from the start.
        let restarts = counter!("sipguard_journal_writer_restarts_total");
        let (queue, requests) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("ban-journal".to_owned())
            .spawn(move || supervise(writer, &requests, &restarts))?;
        Ok((
            Journal {
                queue,
                path: path.to_owned(),
            },
            replay,
        ))
    }

    /// Where the journal is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record without waiting (the relay's bans: the ban is in force already, the log
    /// line follows once it is durable).
    pub fn record(&self, record: Record) -> Result<(), JournalError> {
        self.send(Pending { record, done: None })
    }

    fn send(&self, pending: Pending) -> Result<(), JournalError> {
        self.queue.try_send(pending).map_err(|err| match err {
            mpsc::TrySendError::Full(_) => JournalError::Full,
            mpsc::TrySendError::Disconnected(_) => JournalError::Stopped,
        })
    }

    /// Writes a record and waits until it is durable (the admin API's bans and unbans).
    pub async fn commit(&self, record: Record) -> Result<(), JournalError> {
        let (done, durable) = oneshot::channel();
        self.send(Pending {
            record,
            done: Some(done),
        })?;
        match durable.await {
            Ok(result) => result.map_err(JournalError::Io),
            Err(_) => Err(JournalError::Stopped),
        }
    }
}

/// The writer thread's body: runs `writer` until every [`Journal`] handle is gone. A writer that
/// panics is counted in `restarts`, logged, and replaced by one opened afresh from the file,
/// which holds every record made durable.
fn supervise(mut writer: Writer, requests: &mpsc::Receiver<Pending>, restarts: &Counter) {
    loop {
        let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| writer.run(requests))) else {
            return;
        };
        restarts.increment(1);
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("no message");
        tracing::error!(path = %writer.path.display(), panic = message, "the ban journal writer failed; it restarts from the file, and the bans it was writing may not survive a restart");
        writer = writer.reopen();
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    live: HashMap<IpAddr, BanEntry>,
    /// Records in the file now.
    written: usize,
    /// Most bans kept in `live`.
    cap: usize,
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
    /// Replays the journal at `path` as of `now`, rewrites it to the bans still in force, and
    /// opens it for appending.
    fn open(path: &Path, now: Timestamp, cap: usize, clock: Clock) -> io::Result<(Writer, Replay)> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err),
        };
        let replay = replay(&bytes, now);
        let live: HashMap<IpAddr, BanEntry> = replay
            .bans
            .iter()
            .map(|entry| (entry.ip, entry.clone()))
            .collect();
        compact(path, live.values())?;
        let file = OpenOptions::new().append(true).open(path)?;
        let writer = Writer {
            path: path.to_owned(),
            file,
            written: live.len(),
            live,
            cap,
            log: LogBudget::default(),
            clock,
        };
        Ok((writer, replay))
    }

    /// A new writer over the same file, after this one failed: tried every [`RESTART_DELAY`]
    /// until the file can be opened again.
    fn reopen(&self) -> Writer {
        loop {
            std::thread::sleep(RESTART_DELAY);
            match Writer::open(&self.path, self.now(), self.cap, Arc::clone(&self.clock)) {
                Ok((writer, replay)) => {
                    tracing::info!(path = %self.path.display(), bans = replay.bans.len(), "ban journal writer restarted");
                    return writer;
                }
                Err(err) => {
                    counter!("sipguard_journal_errors_total").increment(1);
                    tracing::error!(path = %self.path.display(), %err, "cannot reopen the ban journal; trying again");
                }
            }
        }
    }

    fn now(&self) -> Timestamp {
        (self.clock)()
    }

    fn run(&mut self, requests: &mpsc::Receiver<Pending>) {
        let mut next_expiry = Instant::now() + EXPIRY_CHECK;
        loop {
            if Instant::now() >= next_expiry {
                self.expire(self.now().as_millis());
                next_expiry = Instant::now() + EXPIRY_CHECK;
            }
            let wait = next_expiry.saturating_duration_since(Instant::now());
            let first = match requests.recv_timeout(wait) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut group = vec![first];
            group.extend(requests.try_iter().take(GROUP - 1));
            let text: String = group.iter().map(|w| w.record.encode()).collect();
            let result = self
                .file
                .write_all(text.as_bytes())
                .and_then(|()| self.file.sync_data());
            let now = self.now().as_millis();
            match &result {
                Ok(()) => {
                    self.written += group.len();
                    for write in &group {
                        self.apply(&write.record, now);
                    }
                }
                Err(err) => {
                    metrics::counter!("sipguard_journal_errors_total").increment(1);
                    tracing::error!(path = %self.path.display(), %err, records = group.len(), "cannot write the ban journal; these bans are in force but will not survive a restart");
                }
            }
            for write in group {
                if let Some(done) = write.done {
                    let _ = done.send(match &result {
                        Ok(()) => Ok(()),
                        Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
                    });
                }
            }
            if self.live.len() > self.cap + self.cap / 8 {
                self.keep_longest(now);
            }
            if self.written > (self.live.len() * 2).max(self.live.len() + COMPACT_SLACK) {
                self.compact(now);
            }
            self.log.roll();
        }
    }

    /// Logs and forgets the bans that ran out by `now` (the policy drops them on its own; nothing
    /// is written, since a replay skips expired bans anyway).
    fn expire(&mut self, now: u64) {
        let log = &mut self.log;
        self.live.retain(|ip, entry| {
            let live = entry.expires > now;
            if !live && log.allow() {
                tracing::info!(source = %ip, rule = %entry.rule, evidence = entry.evidence, offence = entry.offence, expired = %format_millis(entry.expires), how = "expired", "unbanned");
            }
            live
        });
    }

    /// Takes a record made durable at `now` into the live set and logs it.
    fn apply(&mut self, record: &Record, now: u64) {
        match record {
            Record::Ban(entry) => {
                if self.log.allow() {
                    tracing::info!(
                    source = %entry.ip,
                    rule = %entry.rule,
                    evidence = entry.evidence,
                    offence = entry.offence,
                    expires = %format_millis(entry.expires),
                    expires_in_s = entry.expires.saturating_sub(now) / 1000,
                    reason = entry.reason.as_deref().unwrap_or(""),
                    "banned"
                    );
                }
                self.live.insert(entry.ip, entry.clone());
            }
            Record::Unban { ip } => {
                if self.log.allow() {
                    tracing::info!(source = %ip, how = "manual", "unbanned");
                }
                self.live.remove(ip);
            }
        }
    }

    /// Brings the live set back to the cap once it is an eighth over it (so the cost is spread
    /// over that many bans): expired bans go first, then those with the least time to run, as
    /// the policy's table evicts them.
    fn keep_longest(&mut self, now: u64) {
        self.expire(now);
        let dropped = keep_longest(&mut self.live, self.cap);
        if dropped > 0 {
            tracing::debug!(
                dropped,
                kept = self.live.len(),
                "ban journal at its cap: the shortest bans are no longer kept"
            );
        }
    }

    fn compact(&mut self, now: u64) {
        self.expire(now);
        let result = compact(&self.path, self.live.values())
            .and_then(|()| OpenOptions::new().append(true).open(&self.path));
        match result {
            Ok(file) => {
                self.file = file;
                self.written = self.live.len();
                tracing::debug!(path = %self.path.display(), bans = self.live.len(), "ban journal compacted");
            }
            Err(err) => {
                metrics::counter!("sipguard_journal_errors_total").increment(1);
                tracing::warn!(path = %self.path.display(), %err, "cannot compact the ban journal; it keeps growing");
                // Try again after as many records again.
                self.written = self.live.len();
            }
        }
    }
}

/// Keeps the `cap` bans of `live` with the longest to run (exactly `cap`, ties at the cut
/// included as they come); returns how many were dropped.
fn keep_longest(live: &mut HashMap<IpAddr, BanEntry>, cap: usize) -> usize {
    let Some(cut) = live.len().checked_sub(cap).filter(|&cut| cut > 0) else {
        return 0;
    };
    let mut expiries: Vec<u64> = live.values().map(|entry| entry.expires).collect();
    let (_, &mut threshold, longer) = expiries.select_nth_unstable(cut);
    let mut ties_kept = cap - longer.iter().filter(|&&e| e > threshold).count();
    let before = live.len();
    live.retain(|_, entry| match entry.expires.cmp(&threshold) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal if ties_kept > 0 => {
            ties_kept -= 1;
            true
        }
        std::cmp::Ordering::Equal => false,
    });
    before - live.len()
}

/// Rewrites the journal at `path` to hold just `bans`: a temporary file beside it, fsync,
/// rename over the old one, fsync of the directory.
fn compact<'a>(path: &Path, bans: impl Iterator<Item = &'a BanEntry>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".compact");
    let temporary = dir.join(name);
    let text: String = bans
        .map(|entry| Record::Ban(entry.clone()).encode())
        .collect();
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

    const NOW: Timestamp = Timestamp::from_millis(1_700_000_000_000);

    fn entry(ip: &str, expires_in_s: u64) -> BanEntry {
        BanEntry {
            ip: ip.parse().unwrap(),
            rule: "scanner".to_owned(),
            evidence: 1,
            first_seen: NOW.as_millis() - 5_000,
            last_seen: NOW.as_millis(),
            expires: NOW.as_millis() + expires_in_s * 1000,
            offence: 2,
            reason: None,
        }
    }

    #[test]
    fn the_live_set_keeps_the_longest_bans_up_to_the_cap_even_with_ties() {
        let mut live: HashMap<IpAddr, BanEntry> = (0..200u32)
            .map(|i| {
                // 100 bans with 60 s to run, then 100 with 61 s..160 s.
                let ip = format!("198.51.{}.{}", i / 256, i % 256);
                let seconds = if i < 100 { 60 } else { u64::from(i) - 39 };
                let entry = entry(&ip, seconds);
                (entry.ip, entry)
            })
            .collect();
        assert_eq!(keep_longest(&mut live, 150), 50);
        assert_eq!(live.len(), 150);
        let shortest = live.values().map(|e| e.expires).min().unwrap();
        assert_eq!(
            shortest,
            NOW.as_millis() + 60_000,
            "ties at the cut fill the cap"
        );
        assert_eq!(
            live.values().filter(|e| e.expires > shortest).count(),
            100,
            "every longer ban is kept"
        );
        assert_eq!(keep_longest(&mut live, 150), 0);
    }

    fn text(records: &[Record]) -> String {
        records.iter().map(Record::encode).collect()
    }

    #[test]
    fn replay_keeps_live_bans_and_applies_unbans_in_order() {
        let journal = text(&[
            Record::Ban(entry("192.0.2.1", 600)),
            Record::Ban(entry("192.0.2.2", 600)),
            Record::Unban {
                ip: "192.0.2.1".parse().unwrap(),
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
    fn replay_restores_the_exact_expiry_and_offence() {
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
        for junk in [
            &b"\n\n"[..],
            b"zz {}\n",
            b"00000000 \n",
            b"\xff\xfe\n",
            b"1234",
        ] {
            let replay = replay(junk, NOW);
            assert!(replay.bans.is_empty());
        }
    }

    #[tokio::test]
    async fn open_compacts_to_the_live_bans_and_appends_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/bans.journal");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut expired = entry("192.0.2.9", 0);
        expired.expires = NOW.as_millis() - 1;
        let mut old = text(&[
            Record::Ban(entry("192.0.2.1", 600)),
            Record::Ban(expired),
            Record::Ban(entry("192.0.2.2", 600)),
            Record::Unban {
                ip: "192.0.2.2".parse().unwrap(),
            },
        ]);
        old.push_str("0badc0de {\"op\":\"ba");
        std::fs::write(&path, old).unwrap();

        let (journal, replay) = Journal::open(&path, NOW, 1000).unwrap();
        assert_eq!(replay.bans, [entry("192.0.2.1", 600)]);
        assert!(replay.torn_tail);
        let compacted = std::fs::read_to_string(&path).unwrap();
        assert_eq!(compacted, text(&[Record::Ban(entry("192.0.2.1", 600))]));

        journal
            .commit(Record::Ban(entry("192.0.2.3", 600)))
            .await
            .unwrap();
        journal
            .commit(Record::Unban {
                ip: "192.0.2.1".parse().unwrap(),
            })
            .await
            .unwrap();
        let reread = replay_file(&path);
        assert_eq!(reread.bans, [entry("192.0.2.3", 600)]);
        assert!(!reread.torn_tail);
    }

    #[tokio::test]
    async fn the_writer_compacts_once_the_file_outgrows_the_live_bans() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let (journal, _) = Journal::open(&path, NOW, 1000).unwrap();
        let ip = "192.0.2.1".parse().unwrap();
        // Far in the future, so the compaction (which reads the real clock) keeps it.
        let mut ban = entry("192.0.2.1", 0);
        ban.expires = u64::MAX / 2;
        for _ in 0..COMPACT_SLACK + 10 {
            journal.record(Record::Ban(ban.clone())).unwrap();
            journal.record(Record::Unban { ip }).unwrap();
        }
        journal.commit(Record::Ban(ban.clone())).await.unwrap();
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < COMPACT_SLACK, "{lines} records after compaction");
        assert_eq!(replay_file(&path).bans, [ban]);
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
    async fn a_writer_that_panics_is_restarted_from_the_file_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        // The writer reads the clock once a group of records is durable (and once a second to
        // expire bans): the first read once armed panics, whichever it is.
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clock: Clock = {
            let armed = Arc::clone(&armed);
            Arc::new(move || {
                if armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    panic!("a fault injected by the test");
                }
                NOW
            })
        };
        let (journal, _) =
            metrics::with_local_recorder(&recorder, || Journal::start(&path, NOW, 1000, clock))
                .unwrap();
        assert!(metrics
            .render()
            .contains("sipguard_journal_writer_restarts_total 0"));
        journal
            .commit(Record::Ban(entry("192.0.2.1", 600)))
            .await
            .unwrap();
        armed.store(true, std::sync::atomic::Ordering::SeqCst);
        // Durable either way: written before the panic, or by the writer that took over. Only
        // its acknowledgement may be lost.
        let _ = journal.commit(Record::Ban(entry("192.0.2.2", 600))).await;
        journal
            .commit(Record::Ban(entry("192.0.2.3", 600)))
            .await
            .expect("the restarted writer takes new records");
        assert!(!armed.load(std::sync::atomic::Ordering::SeqCst));
        // The restart compacted the file, in no particular order.
        let mut bans = replay_file(&path).bans;
        bans.sort_by_key(|entry| entry.ip);
        assert_eq!(
            bans,
            [
                entry("192.0.2.1", 600),
                entry("192.0.2.2", 600),
                entry("192.0.2.3", 600)
            ]
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
