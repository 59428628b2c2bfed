//! sipguard as the binary runs it: the relay plus the operator's side, i.e. the ban journal
//! (replayed before the first packet), `/metrics`, the admin API and reload on SIGHUP.
//!
//! Kept apart from [`crate::run`], which tests start in-process many times over: everything here
//! is once per process (a journal file, the global metrics recorder, signal handlers).

use crate::admin::Admin;
use crate::config::{Config, Overrides};
use crate::journal::{BanEntry, Journal, Record};
use crate::reload::{ReloadHook, Reloader};
use crate::Sockets;
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use sipguard_policy::{Change, Observer, RuleId, Timestamp};
use sipguard_relay::TlsReload;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
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

/// Hands the rules' bans to the journal, which logs each once it is durable. The operator's
/// bans and lifts are journalled by the admin API, which waits for them to be durable.
struct JournalSink(Journal);

impl Observer for JournalSink {
    fn changed(&self, event: &Change) {
        let Change::Banned { source, ban } = event else {
            return;
        };
        if ban.rule == RuleId::Manual {
            return;
        }
        if let Err(err) = self
            .0
            .record(Record::Ban(BanEntry::new(*source, ban, None)))
        {
            metrics::counter!("sipguard_journal_errors_total").increment(1);
            tracing::warn!(%source, rule = ban.rule.as_str(), %err, "banned, but not journalled");
        }
    }
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
    let (journal, replay) = Journal::open(&journal, now, config.policy.max_tracked_sources)
        .with_context(|| format!("cannot open the ban journal {}", journal.display()))?;
    if replay.torn_tail {
        tracing::warn!(path = %journal.path().display(), "the ban journal's last record was cut short (a crash mid-write) and is skipped");
    }
    for line in &replay.corrupt {
        tracing::warn!(path = %journal.path().display(), line, "damaged ban journal record skipped");
    }
    let mut reasons = HashMap::new();
    let mut restored = 0;
    for entry in &replay.bans {
        let Some(ban) = entry.ban() else {
            tracing::warn!(source = %entry.ip, rule = %entry.rule, "journalled ban with an unknown rule skipped");
            continue;
        };
        if policy.restore(entry.ip, ban, now) {
            restored += 1;
            if let Some(reason) = &entry.reason {
                reasons.insert(entry.ip, reason.clone());
            }
        }
    }
    metrics::counter!("sipguard_journal_errors_total").increment(0);
    metrics::gauge!("sipguard_bans_active").set(policy.stats().bans as f64);
    tracing::info!(path = %journal.path().display(), restored, expired = replay.expired, "ban journal replayed");

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
    if let Some(listener) = ops.admin {
        let admin = Admin::new(
            Arc::clone(&policy),
            journal.clone(),
            Arc::clone(&reloader),
            reasons,
        );
        let token_file = crate::admin::token_file(&config.ops, journal.path());
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

    policy.subscribe(Arc::new(JournalSink(journal)));
    let result = crate::run_with_policy(config, sockets, policy, shutdown).await;
    services.shutdown().await;
    result
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
