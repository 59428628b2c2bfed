//! sipguard as the binary runs it: the relay plus the operator's side, i.e. the ban journal
//! (replayed before the first packet), `/metrics`, the admin API and reload on SIGHUP.
//!
//! Kept apart from [`crate::run`], which tests start in-process many times over: everything here
//! is once per process (a journal file, the global metrics recorder, signal handlers).

use crate::admin::{replayed_reason, Admin};
use crate::config::{Config, Overrides};
use crate::feeds::Feeds;
use crate::journal::{Journal, Snapshot, Source};
use crate::reload::{ReloadHook, Reloader};
use crate::resolve::Names;
use crate::sessions::SessionFile;
use crate::Sockets;
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use sipguard_policy::{Policy, Timestamp};
use sipguard_relay::TlsReload;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::Poll;
use std::time::SystemTime;
use tokio::signal::unix::Signal;

/// The operator's listeners, bound before [`serve`] like the SIP ones.
#[derive(Debug)]
pub struct OpsSockets {
    metrics: Option<std::net::TcpListener>,
    admin: Option<std::net::TcpListener>,
}

impl OpsSockets {
    /// The address `/metrics` is served on, if on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// The admin API's address, if on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|s| s.local_addr().ok())
    }
}

/// Binds the metrics and admin listeners the config names.
pub fn bind_ops(config: &Config) -> anyhow::Result<OpsSockets> {
    let bind = |addr: Option<SocketAddr>, what: &str| {
        addr.map(|addr| {
            std::net::TcpListener::bind(addr).with_context(|| format!("cannot bind {what} {addr}"))
        })
        .transpose()
    };
    Ok(OpsSockets {
        metrics: bind(config.ops.metrics, "metrics.listen")?,
        admin: bind(config.ops.admin, "admin.listen")?,
    })
}

/// Everything [`serve`] runs with.
pub struct Daemon {
    /// The validated config.
    pub config: Config,
    /// The file it came from (`None`: the built-in default), re-read on reload.
    pub config_path: Option<PathBuf>,
    /// The command-line settings applied on every reload too.
    pub overrides: Overrides,
    /// The SIP listeners.
    pub sockets: Sockets,
    /// The metrics and admin listeners.
    pub ops: OpsSockets,
    /// Where the ban journal is.
    pub journal: PathBuf,
    /// The installed recorder, when metrics are on.
    pub metrics: Option<PrometheusHandle>,
    /// What else to reload on SIGHUP and `POST /reload` (the TLS front's certificates).
    pub reload_hooks: Vec<ReloadHook>,
}

/// Replays the journal, then runs the relay and the operator's services until `shutdown`;
/// each signal on `hangups` reloads the config.
pub async fn serve(
    daemon: Daemon,
    mut hangups: Signal,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Daemon {
        config,
        config_path,
        overrides,
        sockets,
        ops,
        journal,
        metrics,
        reload_hooks,
    } = daemon;
    let policy = crate::policy(&config)?;
    let now = Timestamp::from_system(SystemTime::now());
    let journal = open_journal(&journal, &policy, now)?;
    metrics::counter!("sipguard_journal_errors_total").increment(0);
    metrics::gauge!("sipguard_bans_active").set(policy.stats().bans as f64);

    let reloader = Arc::new(Reloader::new(
        config_path,
        overrides,
        config.clone(),
        Arc::clone(&policy),
    ));
    if let Some(certificate) = sockets.tls_reload() {
        reloader.on_reload(tls_reload_hook(certificate));
    }
    for hook in reload_hooks {
        reloader.on_reload(hook);
    }
    let token_file = crate::admin::token_file(&config.ops, journal.path());
    let (feeds, names, bans_file) = follow_feeds_and_names(&config, &policy, &reloader).await?;
    let context = crate::RelayContext {
        sessions: Some(Arc::new(SessionFile::beside(journal.path()))),
        ..crate::RelayContext::new(Arc::clone(&policy))
    };
    let directory = Arc::clone(&context.directory);
    let (reloaded, reloads) = tokio::sync::watch::channel(config.clone());
    reloader.on_reload(Box::new(move |config: &Config| {
        reloaded.send_replace(config.clone());
        Ok(())
    }));
    let mut relay = std::pin::pin!(crate::run_reloading(
        config, sockets, context, reloads, shutdown
    ));
    // The relay's first step registers its metrics and subscribes them to the policy. The
    // operator's services start after it: /metrics has every family from its first scrape, and
    // a ban by the admin API, however early, is counted like any other.
    let first_step = std::future::poll_fn(|cx| Poll::Ready(relay.as_mut().poll(cx)));
    if let Poll::Ready(result) = first_step.await {
        return result;
    }
    let mut services = tokio::task::JoinSet::new();
    if let (Some(listener), Some(handle)) = (ops.metrics, metrics) {
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
        let upkeep = handle.clone();
        services.spawn(async move {
            let mut ticks = tokio::time::interval(crate::exporter::UPKEEP_EVERY);
            loop {
                ticks.tick().await;
                upkeep.run_upkeep();
            }
        });
        services.spawn(crate::http::serve(listener, move |call| {
            let handle = handle.clone();
            async move { metrics_reply(&handle, &call) }
        }));
    }
    services.spawn(Arc::clone(&feeds).run());
    services.spawn(names.run());
    if let Some(path) = bans_file {
        services.spawn(crate::feeds::BansFeed::follow(&policy, path));
    }
    if let Some(listener) = ops.admin {
        let admin = Admin::new(
            Arc::clone(&policy),
            journal,
            Arc::clone(&reloader),
            directory,
        )
        .with_feeds(feeds);
        services.spawn(admin.serve(listener, &token_file)?);
    }
    let reload_on_hangup = Arc::clone(&reloader);
    services.spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", "reloading the configuration");
            let reloader = Arc::clone(&reload_on_hangup);
            let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
        }
        Ok(())
    });

    let result = relay.await;
    services.shutdown().await;
    result
}

/// How long a start waits for the allowlist's names.
const FIRST_RESOLUTION: std::time::Duration = std::time::Duration::from_secs(10);

/// The blocklist feeds and the allowlist's names, both following reloads; the names resolved
/// once before the first packet. Also where the bans feed file goes, if anywhere.
async fn follow_feeds_and_names(
    config: &Config,
    policy: &Arc<Policy>,
    reloader: &Arc<Reloader>,
) -> anyhow::Result<(Arc<Feeds>, Arc<Names>, Option<PathBuf>)> {
    let feeds = Feeds::new(Arc::clone(policy), &config.feeds)
        .context("cannot set up the HTTP client for the blocklist feeds")?;
    let names = Names::new(
        Arc::clone(policy),
        config.names.clone(),
        config.policy.clone(),
    );
    // Resolved before the first packet, unless the DNS is slow: the rest follows in the
    // background.
    let _ = tokio::time::timeout(FIRST_RESOLUTION, names.round()).await;
    let (followed_feeds, followed_names) = (Arc::clone(&feeds), Arc::clone(&names));
    reloader.on_reload(Box::new(move |config: &Config| {
        followed_feeds.reconfigure(&config.feeds);
        followed_names.reload(&config.names);
        Ok(())
    }));
    let applying = Arc::clone(&names);
    reloader.apply_policy_with(Box::new(move |base| applying.apply(base)));
    Ok((feeds, names, config.feeds.bans_file.clone()))
}

/// Opens the ban journal at `path`, puts back into `policy` the bans and trust it holds (as of
/// `now`), and subscribes the journal to the policy's changes from then on: the policy owns the
/// bans, the journal follows them, and compacts to the policy's snapshot.
fn open_journal(path: &Path, policy: &Arc<Policy>, now: Timestamp) -> anyhow::Result<Journal> {
    let followed = Arc::downgrade(policy);
    let snapshot: Snapshot = Arc::new(move |now| {
        let policy = followed.upgrade()?;
        Some(crate::journal::snapshot_of(&policy, now))
    });
    let (journal, replay) = Journal::open(path, now, snapshot)
        .with_context(|| format!("cannot open the ban journal {}", path.display()))?;
    if replay.torn_tail {
        tracing::warn!(path = %path.display(), "the ban journal's last record was cut short (a crash mid-write) and is skipped");
    }
    for line in &replay.corrupt {
        tracing::warn!(path = %path.display(), line, "damaged ban journal record skipped");
    }
    let mut restored = 0;
    for entry in &replay.bans {
        let Some(mut ban) = entry.ban() else {
            tracing::warn!(source = %Source(entry.ip), rule = %entry.rule, "journalled ban with an unknown rule skipped");
            continue;
        };
        // Bounded and cleaned as a new one is.
        ban.note = ban
            .note
            .as_deref()
            .and_then(replayed_reason)
            .map(Into::into);
        if policy.restore(entry.ip, ban, now) {
            restored += 1;
        }
    }
    let trusted = replay
        .trusted
        .iter()
        .filter(|&&(source, until)| policy.restore_trust(source, until, now))
        .count();
    tracing::info!(path = %path.display(), restored, trusted, expired = replay.expired, "ban journal replayed");
    policy.subscribe(Arc::new(journal.sink()));
    Ok(journal)
}

/// Reloads the TLS front's certificate and key from the files the new config names: a new
/// certificate serves new handshakes, open connections keep theirs, and a file that cannot be
/// used fails the reload with the running certificate kept.
fn tls_reload_hook(certificate: TlsReload) -> ReloadHook {
    Box::new(move |config: &Config| match &config.tls {
        Some(files) => certificate
            .reload_from(files.clone())
            .map_err(|err| format!("tls: {err}")),
        None => Ok(()),
    })
}

fn metrics_reply(handle: &PrometheusHandle, call: &crate::http::Call) -> crate::http::Reply {
    use hyper::{Method, StatusCode};
    match (&call.method, call.path.as_str()) {
        (&Method::GET, "/metrics") => crate::http::Reply {
            status: StatusCode::OK,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: handle.render(),
        },
        _ => crate::http::Reply::error(StatusCode::NOT_FOUND, "try GET /metrics"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipguard_policy::{Exchange, IpNet, Transport, Verdict};
    use sipguard_sip::SipView;
    use std::net::IpAddr;
    use std::time::Duration;

    /// Registers 1001 from `source` over TCP, with credentials and a 200: it is trusted.
    fn authenticate(policy: &Policy, source: IpAddr, now: Timestamp) {
        let register = "REGISTER sip:pbx.example.com SIP/2.0\r\n\
                        Via: SIP/2.0/TCP 203.0.113.7;branch=z9hG4bK1\r\n\
                        From: <sip:1001@pbx.example.com>;tag=f\r\nTo: <sip:1001@pbx.example.com>\r\n\
                        Call-ID: c1\r\nCSeq: 1 REGISTER\r\nUser-Agent: Yealink SIP-T46S\r\n\
                        Authorization: Digest username=\"1001\", realm=\"pbx\", nonce=\"n\", \
                        uri=\"sip:pbx\", response=\"r\"\r\nContent-Length: 0\r\n\r\n";
        let checked = policy.check(register.as_bytes(), source, Transport::Stream, now);
        let Verdict::Forward(_) = checked.verdict else {
            panic!("a phone's REGISTER is forwarded");
        };
        let mut pending = Exchange::default();
        pending.remember(checked.memo.unwrap());
        let ok = "SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 203.0.113.7;branch=z9hG4bK1\r\n\
                  From: <sip:1001@pbx.example.com>;tag=f\r\nTo: <sip:1001@pbx.example.com>;tag=t\r\n\
                  Call-ID: c1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
        let response = SipView::parse(ok.as_bytes()).unwrap();
        let _ = policy.observe_response(source, &response, &mut pending, now);
        assert!(policy.is_trusted(source, now));
    }

    #[tokio::test]
    async fn trust_and_a_prefix_ban_are_journalled_and_restored_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let config = Config::default();
        let now = Timestamp::from_system(SystemTime::now());
        let phone: IpAddr = "203.0.113.7".parse().unwrap();
        let prefix: IpNet = "2001:db8:1:2::/64".parse().unwrap();

        let before = crate::policy(&config).unwrap();
        let journal = open_journal(&path, &before, now).unwrap();
        let since = journal.mark();
        authenticate(&before, phone, now);
        let ban = before
            .ban_manually(
                prefix,
                Duration::from_secs(3600),
                Some("scanners".into()),
                now,
            )
            .unwrap();
        journal.sync(since).await.unwrap();

        // A restart: a new policy from the same file.
        let later = now + Duration::from_secs(5);
        let after = crate::policy(&config).unwrap();
        open_journal(&path, &after, later).unwrap();
        assert!(after.is_trusted(phone, later));
        assert_eq!(
            after.trusted_sources(later),
            before.trusted_sources(later),
            "trusted until the same time"
        );
        assert_eq!(after.bans(later), [(prefix, ban.clone())]);
        assert_eq!(
            after.ban_of("2001:db8:1:2::5".parse().unwrap(), later),
            Some(ban)
        );
    }
}
