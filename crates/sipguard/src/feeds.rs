//! Blocklist feeds (docs/design.md section 10): fetching them, and sharing sipguard's own bans.
//!
//! [`Feeds`] owns every configured list's last good copy and fetches each on its interval: a
//! file is read, a URL fetched with a conditional request (`If-None-Match` /
//! `If-Modified-Since`, so an unchanged list costs a 304), APIBAN walked batch by batch from the
//! last ID it gave. Whenever a list changes, every list's networks are merged into one
//! [`sipguard_policy::Feeds`] and handed to the policy whole (an `ArcSwap` store there: a packet
//! sees the old set or the new, never a half-built one, and the lookup takes no lock). A list
//! that cannot be fetched, or that no longer reads as a list (an error page served with 200),
//! keeps its last good copy; the failure is counted and logged. An entry leaves the set when its
//! list stops naming it. A reload re-reads files at once and takes new, changed or removed lists.
//!
//! [`BansFeed`] follows the policy's changes as the journal does, and keeps a file of the bans
//! in force in the same plain format, rewritten by rename so a reader never sees half of it.
//!
//! Metrics carry the list's configured name, a bounded label.

use crate::config::{FeedOrigin, FeedSource, FeedsConfig};
use ipnet::IpNet;
use metrics::{counter, gauge};
use sipguard_policy::{Change, FeedTally, Observer, Policy, Timestamp};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The largest list body read: VoIPBL's full list is a few MiB.
const MAX_BODY: usize = 64 << 20;
/// One fetch (connect, request, body) must finish within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The most APIBAN batches one poll walks, so a server that never says `none` cannot hold
/// the loop.
const MAX_APIBAN_BATCHES: usize = 1000;
/// APIBAN says nothing of entries it drops: its whole list is fetched again this often, and
/// what it no longer holds expires.
const APIBAN_FULL_EVERY: Duration = Duration::from_secs(24 * 3600);
/// A failed fetch is tried again after this, or the list's interval if shorter.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// How often the per-list counters are published.
const PUBLISH_EVERY: Duration = Duration::from_secs(5);

/// What one list holds and how its fetches went.
struct List {
    source: FeedSource,
    tally: Arc<FeedTally>,
    entries: Arc<BTreeSet<IpNet>>,
    /// For conditional requests.
    etag: Option<String>,
    last_modified: Option<String>,
    /// APIBAN: the ID to ask for next, and when the whole list was last fetched.
    apiban_id: Option<String>,
    apiban_full: Option<Instant>,
    last_ok: Option<SystemTime>,
    last_error: Option<String>,
    failures: u64,
    due: Instant,
}

impl List {
    fn new(source: FeedSource, tally: Arc<FeedTally>) -> Self {
        List {
            source,
            tally,
            entries: Arc::default(),
            etag: None,
            last_modified: None,
            apiban_id: None,
            apiban_full: None,
            last_ok: None,
            last_error: None,
            failures: 0,
            due: Instant::now(),
        }
    }

    fn kind(&self) -> &'static str {
        match self.source.origin {
            FeedOrigin::File(_) => "file",
            FeedOrigin::Url(_) => "url",
            FeedOrigin::Apiban { .. } => "apiban",
        }
    }
}

/// What a fetch brought.
enum Fetched {
    /// A whole new list.
    Replace(BTreeSet<IpNet>),
    /// Entries to add (an APIBAN increment).
    Add(Vec<IpNet>),
    /// Nothing changed since the last fetch.
    Unchanged,
}

/// Every configured blocklist, fetched on its interval into the policy.
pub struct Feeds {
    policy: Arc<Policy>,
    lists: Mutex<Vec<List>>,
    /// Tallies by list name, kept across reloads so counters do not reset.
    tallies: Mutex<HashMap<String, Arc<FeedTally>>>,
    client: reqwest::Client,
    wake: Notify,
}

impl Feeds {
    /// The lists of `config`, none fetched yet; [`Feeds::run`] fetches them.
    pub fn new(policy: Arc<Policy>, config: &FeedsConfig) -> anyhow::Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("sipguard/", env!("CARGO_PKG_VERSION")))
            .timeout(FETCH_TIMEOUT)
            .build()?;
        let feeds = Arc::new(Feeds {
            policy,
            lists: Mutex::new(Vec::new()),
            tallies: Mutex::new(HashMap::new()),
            client,
            wake: Notify::new(),
        });
        feeds.reconfigure(config);
        Ok(feeds)
    }

    /// Takes the lists of a reloaded config: a list whose name and source are unchanged keeps
    /// its copy (a file is re-read at once), others start empty and are fetched at once.
    pub fn reconfigure(&self, config: &FeedsConfig) {
        let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        let mut old: Vec<List> = std::mem::take(&mut *lists);
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        for source in &config.lists {
            let tally = Arc::clone(tallies.entry(source.name.clone()).or_default());
            let kept = old
                .iter()
                .position(|list| {
                    list.source.name == source.name && list.source.origin == source.origin
                })
                .map(|at| old.swap_remove(at));
            let mut list = kept.unwrap_or_else(|| List::new(source.clone(), tally));
            list.source.interval = source.interval;
            if matches!(list.source.origin, FeedOrigin::File(_)) {
                list.due = Instant::now();
            }
            lists.push(list);
        }
        drop(tallies);
        let removed = !old.is_empty();
        drop(lists);
        if removed {
            self.publish_set();
        }
        self.wake.notify_one();
    }

    /// Fetches every list when due, forever; publishes the per-list counters meanwhile.
    pub async fn run(self: Arc<Self>) -> std::io::Result<()> {
        loop {
            let now = Instant::now();
            let due: Vec<(usize, List)> = {
                let lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
                lists
                    .iter()
                    .enumerate()
                    .filter(|(_, list)| list.due <= now)
                    .map(|(at, list)| (at, list.snapshot()))
                    .collect()
            };
            let mut changed = false;
            for (at, mut list) in due {
                let result = self.fetch(&mut list).await;
                changed |= self.settle(at, list, result);
            }
            if changed {
                self.publish_set();
            }
            self.publish_counters();
            let next = {
                let lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
                lists.iter().map(|list| list.due).min()
            };
            let until = next.map_or(now + PUBLISH_EVERY, |due| {
                due.min(Instant::now() + PUBLISH_EVERY)
            });
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// Records the outcome of fetching the list that was at `at`; true when its entries
    /// changed. A list reconfigured away meanwhile is left alone.
    fn settle(&self, at: usize, fetched: List, result: Result<Fetched, String>) -> bool {
        let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(list) = lists.get_mut(at).filter(|list| {
            list.source.name == fetched.source.name && list.source.origin == fetched.source.origin
        }) else {
            return false;
        };
        let name = list.source.name.clone();
        let now = Instant::now();
        match result {
            Ok(outcome) => {
                let result = match &outcome {
                    Fetched::Unchanged => "unchanged",
                    _ => "ok",
                };
                counter!("sipguard_feed_fetches_total", "feed" => name.clone(), "result" => result)
                    .increment(1);
                let changed = match outcome {
                    Fetched::Replace(entries) => {
                        let changed = *list.entries != entries;
                        list.entries = Arc::new(entries);
                        changed
                    }
                    Fetched::Add(added) if !added.is_empty() => {
                        let mut entries = BTreeSet::clone(&list.entries);
                        entries.extend(added);
                        list.entries = Arc::new(entries);
                        true
                    }
                    Fetched::Add(_) | Fetched::Unchanged => false,
                };
                list.etag = fetched.etag;
                list.last_modified = fetched.last_modified;
                list.apiban_id = fetched.apiban_id;
                list.apiban_full = fetched.apiban_full;
                list.last_ok = Some(SystemTime::now());
                list.last_error = None;
                list.due = now + list.source.interval;
                if changed {
                    tracing::info!(feed = %name, entries = list.entries.len(), "blocklist updated");
                }
                changed
            }
            Err(error) => {
                counter!("sipguard_feed_fetches_total", "feed" => name.clone(), "result" => "error")
                    .increment(1);
                tracing::warn!(feed = %name, %error, kept = list.entries.len(), "blocklist not fetched; its last good copy stays");
                list.failures += 1;
                list.last_error = Some(error);
                list.due = now + list.source.interval.min(RETRY_AFTER);
                false
            }
        }
    }

    /// Merges every list into one set and hands it to the policy.
    fn publish_set(&self) {
        let lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        let set = sipguard_policy::Feeds::new(
            lists
                .iter()
                .map(|list| {
                    (
                        Arc::clone(&list.tally),
                        list.entries.iter().copied().collect(),
                    )
                })
                .collect(),
        );
        for list in lists.iter() {
            gauge!("sipguard_feed_entries", "feed" => list.source.name.clone())
                .set(list.entries.len() as f64);
        }
        drop(lists);
        self.policy.set_feeds(set);
    }

    fn publish_counters(&self) {
        let lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        for list in lists.iter() {
            let name = list.source.name.clone();
            counter!("sipguard_feed_dropped_total", "feed" => name.clone())
                .absolute(list.tally.dropped());
            counter!("sipguard_feed_admitted_total", "feed" => name.clone())
                .absolute(list.tally.admitted());
            counter!("sipguard_feed_failures_total", "feed" => name.clone())
                .absolute(list.failures);
            gauge!("sipguard_feed_entries", "feed" => name).set(list.entries.len() as f64);
        }
    }

    /// Each list's state, for the admin API.
    pub fn listing(&self) -> serde_json::Value {
        let lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        let millis = |time: Option<SystemTime>| {
            time.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
        };
        let feeds: Vec<_> = lists
            .iter()
            .map(|list| {
                serde_json::json!({
                    "name": list.source.name,
                    "kind": list.kind(),
                    "entries": list.entries.len(),
                    "last_ok_ms": millis(list.last_ok),
                    "last_error": list.last_error,
                    "failures": list.failures,
                    "dropped": list.tally.dropped(),
                    "admitted": list.tally.admitted(),
                })
            })
            .collect();
        serde_json::json!({ "feeds": feeds })
    }

    /// One fetch of `list`, updating its request state (validators, APIBAN ID) on success.
    async fn fetch(&self, list: &mut List) -> Result<Fetched, String> {
        match list.source.origin.clone() {
            FeedOrigin::File(path) => read_file(&path).await,
            FeedOrigin::Url(url) => self.fetch_url(list, &url).await,
            FeedOrigin::Apiban { url, key } => self.fetch_apiban(list, &url, &key).await,
        }
    }

    async fn fetch_url(&self, list: &mut List, url: &str) -> Result<Fetched, String> {
        use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
        // The validators of the last good copy: there are none before the first.
        let mut request = self.client.get(url);
        if let Some(etag) = &list.etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        if let Some(since) = &list.last_modified {
            request = request.header(IF_MODIFIED_SINCE, since);
        }
        let response = request.send().await.map_err(|err| error_chain(&err))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::Unchanged);
        }
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let (etag, last_modified) = (header(ETAG), header(LAST_MODIFIED));
        let body = read_body(response).await?;
        let entries = parse_list(&String::from_utf8_lossy(&body))?;
        list.etag = etag;
        list.last_modified = last_modified;
        Ok(Fetched::Replace(entries))
    }

    /// Walks APIBAN from the last ID it gave (or from the start, for the whole list, at first
    /// and once a day) until it answers `"ID": "none"`.
    async fn fetch_apiban(&self, list: &mut List, url: &str, key: &str) -> Result<Fetched, String> {
        let full = list.apiban_id.is_none()
            || list
                .apiban_full
                .is_none_or(|at| at.elapsed() >= APIBAN_FULL_EVERY);
        let mut id = if full { None } else { list.apiban_id.clone() };
        let mut found = Vec::new();
        for _ in 0..MAX_APIBAN_BATCHES {
            let address = match &id {
                None => format!("{url}/{key}/banned"),
                Some(id) => format!("{url}/{key}/banned/{id}"),
            };
            let response = self
                .client
                .get(&address)
                .send()
                .await
                .map_err(|err| error_chain(&err).replace(key, "KEY"))?;
            let status = response.status();
            let body = read_body(response).await?;
            let batch: ApibanBatch = match serde_json::from_slice(&body) {
                Ok(batch) => batch,
                Err(_) if !status.is_success() => return Err(format!("HTTP {status}")),
                Err(err) => return Err(format!("not an APIBAN batch: {err}")),
            };
            // The ID comes as a string, though some answers give a number.
            let next = match batch.id {
                serde_json::Value::String(text) => text,
                other => other.to_string(),
            };
            if next == "none" {
                break;
            }
            if !status.is_success() {
                return Err(format!("HTTP {status}"));
            }
            found.extend(batch.ipaddress.iter().filter_map(|text| parse_entry(text)));
            id = Some(next);
        }
        list.apiban_id = id.or(list.apiban_id.take());
        if full {
            list.apiban_full = Some(Instant::now());
            Ok(Fetched::Replace(found.into_iter().collect()))
        } else {
            Ok(Fetched::Add(found))
        }
    }
}

impl List {
    /// A copy of the request state, for a fetch made without the lock.
    fn snapshot(&self) -> List {
        List {
            source: self.source.clone(),
            tally: Arc::clone(&self.tally),
            entries: Arc::clone(&self.entries),
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
            apiban_id: self.apiban_id.clone(),
            apiban_full: self.apiban_full,
            last_ok: self.last_ok,
            last_error: None,
            failures: self.failures,
            due: self.due,
        }
    }
}

#[derive(serde::Deserialize)]
struct ApibanBatch {
    #[serde(default)]
    ipaddress: Vec<String>,
    #[serde(rename = "ID")]
    id: serde_json::Value,
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|err| error_chain(&err))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("longer than {} MiB", MAX_BODY >> 20));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn read_file(path: &Path) -> Result<Fetched, String> {
    let text = tokio::fs::read(path)
        .await
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    parse_list(&String::from_utf8_lossy(&text)).map(Fetched::Replace)
}

/// One entry: an address, or a network (host bits dropped, as lists are not all careful).
fn parse_entry(text: &str) -> Option<IpNet> {
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .or_else(|_| text.parse::<IpNet>().map(|net| net.trunc()))
        .ok()
}

/// Reads the plain format: an address or network a line (the first word of it), `#` starts a
/// comment. Lines that are neither are skipped; a text with more of them than entries is not
/// a list at all (an error page served with 200) and is refused, so the last good copy stays.
pub fn parse_list(text: &str) -> Result<BTreeSet<IpNet>, String> {
    let mut entries = BTreeSet::new();
    let mut unreadable = 0usize;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let Some(word) = line.split_whitespace().next() else {
            continue;
        };
        match parse_entry(word) {
            Some(net) => {
                entries.insert(net);
            }
            None => unreadable += 1,
        }
    }
    if unreadable > entries.len() {
        return Err(format!(
            "not a list: {unreadable} lines are no address or network, {} are",
            entries.len()
        ));
    }
    Ok(entries)
}

/// The bans in force in the plain format, one a line, addresses bare and networks as
/// `addr/len`, sorted.
pub fn bans_text(policy: &Policy, now: Timestamp) -> String {
    let mut sources: Vec<IpNet> = policy.bans(now).into_iter().map(|(net, _)| net).collect();
    sources.sort();
    let mut text = String::from("# sipguard: addresses and networks banned here now\n");
    for net in sources {
        if net.prefix_len() == net.max_prefix_len() {
            text.push_str(&net.addr().to_string());
        } else {
            text.push_str(&net.to_string());
        }
        text.push('\n');
    }
    text
}

/// Keeps `path` listing the policy's bans: follows its changes (as the journal does) and
/// rewrites the file on a task of its own, at most once a second, by rename.
pub struct BansFeed {
    dirty: Arc<Notify>,
}

impl Observer for BansFeed {
    fn changed(&self, change: &Change) {
        let listed = match change {
            Change::Banned { ban, .. } => !ban.quiet,
            Change::Announced { .. } | Change::Lifted { .. } | Change::Expired { .. } => true,
            Change::Trusted { .. } | Change::Distrusted { .. } => false,
        };
        if listed {
            self.dirty.notify_one();
        }
    }
}

impl BansFeed {
    /// Subscribes to `policy` and returns the task that keeps `path` current.
    pub fn follow(
        policy: &Arc<Policy>,
        path: PathBuf,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send + 'static {
        let dirty = Arc::new(Notify::new());
        policy.subscribe(Arc::new(BansFeed {
            dirty: Arc::clone(&dirty),
        }));
        let followed = Arc::downgrade(policy);
        async move {
            loop {
                let Some(policy) = followed.upgrade() else {
                    return Ok(());
                };
                let text = bans_text(&policy, Timestamp::from_system(SystemTime::now()));
                drop(policy);
                let target = path.clone();
                let written = tokio::task::spawn_blocking(move || write_by_rename(&target, &text))
                    .await
                    .unwrap_or_else(|err| Err(std::io::Error::other(err)));
                if let Err(error) = written {
                    counter!("sipguard_feed_bans_file_errors_total").increment(1);
                    tracing::warn!(path = %path.display(), %error, "cannot write the bans feed file");
                }
                dirty.notified().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn write_by_rename(path: &Path, text: &str) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(text: &str) -> Vec<String> {
        parse_list(text)
            .unwrap()
            .iter()
            .map(IpNet::to_string)
            .collect()
    }

    #[test]
    fn the_plain_format_takes_addresses_networks_and_comments() {
        let text = "# VoIPBL-style list\n192.0.2.7\n198.51.100.0/24 # a range\n\n\
                    2001:db8::/32\n203.0.113.9/24\n  192.0.2.7  \n; not an entry\n";
        assert_eq!(
            listed(text),
            [
                "192.0.2.7/32",
                "198.51.100.0/24",
                "203.0.113.0/24",
                "2001:db8::/32"
            ]
        );
        assert_eq!(listed("# nothing listed today\n"), Vec::<String>::new());
    }

    #[test]
    fn an_error_page_is_not_taken_for_an_empty_list() {
        let page = "<html>\n<body>\n<h1>502 Bad Gateway</h1>\n</body>\n</html>\n";
        assert!(parse_list(page).unwrap_err().contains("not a list"));
    }
}
