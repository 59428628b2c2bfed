//! The `sipguard` command: `run` the proxy, `check-config` a file, or `bans list|add|remove`
//! against a running instance's admin API.
//!
//! This file owns the process: arguments, logging, the open-file limit, signals and exit codes.
//! Everything else is in the library, which tests drive in-process: here the config is loaded,
//! the sockets bound (so bind errors surface before any traffic), and `run` is handed a shutdown
//! future that completes on SIGINT or SIGTERM. The Prometheus recorder is installed here, once
//! per process; SIGHUP reloads the configuration.
//!
//! Exit codes: 0 success; 1 failure at run time, or a config file that cannot be read, or for
//! `bans` a token that cannot be read or is refused; 2 an invalid configuration (every problem
//! printed, one per line) or bad command-line usage; 3 for `bans` when no sipguard answers at
//! the admin address; 4 for `audit` when a finding is high severity.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sipguard::config::{self, ConfigErrors, Overrides};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Inline SIP filtering proxy in front of a PBX",
    after_help = "Exit codes: 0 ok; 1 runtime failure or unreadable config file; 2 invalid \
                  configuration or usage; 4 audit found a high-severity problem."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy until SIGINT or SIGTERM; SIGHUP reloads the config and allowlist.
    Run(RunArgs),
    /// List, add or lift bans of a running sipguard (over its admin API).
    Bans(BansArgs),
    /// Which client each upstream port belongs to, in a running sipguard (over its admin API):
    /// the PBX logs every client as a loopback address and port.
    Sessions(SessionsArgs),
    /// Validate a configuration file: print every problem, or `FILE: ok`.
    CheckConfig {
        /// The YAML configuration file.
        file: PathBuf,
    },
    /// Audit the Asterisk configuration behind sipguard: passwords, voicemail PINs, open doors,
    /// exposed transports, international dialling. Exit 4 when a finding is high, 1 when the
    /// directory cannot be read.
    Audit {
        /// Asterisk's configuration directory.
        #[arg(default_value = "/etc/asterisk")]
        dir: PathBuf,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// YAML configuration file; the built-in default when left out.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on for UDP and TCP, as IP:PORT or [IPv6]:PORT; repeatable, replaces
    /// listen.udp and listen.tcp.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Where the PBX listens, as IP:PORT; replaces pbx.address.
    #[arg(long, value_name = "ADDR")]
    pbx: Option<String>,
    /// Where to serve /metrics, as IP:PORT, or off; replaces metrics.listen.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Where the admin API listens (loopback), as IP:PORT, or off; replaces admin.listen.
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// The ban journal file; replaces journal.path.
    #[arg(long, value_name = "FILE")]
    journal: Option<String>,
    /// Log line format. The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "The admin API's token is read from the file the running sipguard \
                        wrote at start: --token-file; else admin.token_file of --config, or \
                        admin.token beside its journal.path; else admin.token beside the \
                        default journal (as `sipguard run` by this user puts it), then \
                        /var/lib/sipguard/admin.token (the systemd service's). Reading it \
                        takes root or the service's group."
)]
struct BansArgs {
    #[command(flatten)]
    target: AdminArgs,
    #[command(subcommand)]
    action: BansAction,
}

/// How to reach a running sipguard's admin API.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The admin API's address; default: admin.listen of --config, else 127.0.0.1:9465.
    #[arg(long, global = true, value_name = "ADDR")]
    admin: Option<String>,
    /// The config file whose admin.listen and token file to use.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The file holding the admin API's token (see `sipguard bans --help` for where it is
    /// looked for).
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SessionsArgs {
    #[command(flatten)]
    target: AdminArgs,
    /// Only the client behind this upstream port, or upstream address (IP:PORT), as the PBX's
    /// log names it.
    #[arg(value_name = "UPSTREAM")]
    upstream: Option<String>,
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum BansAction {
    /// Every ban in force, as a table (or JSON with --json).
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ban a source by hand.
    Add {
        /// The address to ban, or an IPv6 network of the configured prefix length.
        #[arg(value_parser = source)]
        ip: String,
        /// How long, from 1s to 1y, e.g. 30m, 2h, 7d.
        #[arg(long = "for", value_name = "DURATION", default_value = "1h")]
        duration: String,
        /// Why, shown in listings (at most 256 characters).
        #[arg(long)]
        reason: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lift a ban: the source is let through at once, its counters cleared.
    Remove {
        /// The banned address or network.
        #[arg(value_parser = source)]
        ip: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// The blocklist feeds followed: entries, what they dropped or let through, failures.
    Feeds {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// The bans in force as a plain blocklist (one address or network a line), for others.
    Export,
}

/// An address or a network on the command line, as the admin API takes it.
fn source(text: &str) -> Result<String, String> {
    if let Ok(addr) = text.parse::<std::net::IpAddr>() {
        return Ok(addr.to_string());
    }
    text.parse::<ipnet::IpNet>()
        .map(|net| net.to_string())
        .map_err(|_| {
            format!("{text:?} is neither an IP address nor a network such as 2001:db8::/64")
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Exit code for an invalid configuration, distinct from run-time failures.
const EXIT_INVALID_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Run(args) => run(args),
        Command::Bans(args) => return admin_client::bans(args),
        Command::Sessions(args) => return admin_client::sessions(args),
        Command::Audit { dir, json } => return audit(&dir, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

/// Prints an error once and picks the exit code. Config problems are printed as they are, one
/// per line, each already naming its file and key.
fn report(err: &anyhow::Error) -> ExitCode {
    if let Some(errors) = err.downcast_ref::<ConfigErrors>() {
        eprintln!("{errors}");
        if errors.is_unreadable() {
            return ExitCode::FAILURE;
        }
        let count = errors.problems().len();
        let noun = if count == 1 { "problem" } else { "problems" };
        eprintln!("sipguard: configuration not valid ({count} {noun})");
        return ExitCode::from(EXIT_INVALID_CONFIG);
    }
    eprintln!("sipguard: error: {err:#}");
    ExitCode::FAILURE
}

/// Exit code of `audit` when any finding is high severity.
const EXIT_HIGH_FINDINGS: u8 = 4;

fn audit(dir: &Path, json: bool) -> ExitCode {
    let report = match sipguard::audit::audit_dir(dir) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("sipguard: {}: {err}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{}", report.json(dir));
    } else {
        print!("{}", report.text(dir));
    }
    if report.has_high() {
        ExitCode::from(EXIT_HIGH_FINDINGS)
    } else {
        ExitCode::SUCCESS
    }
}

fn check_config(file: &Path) -> anyhow::Result<()> {
    config::load(file)?;
    println!("{}: ok", file.display());
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let overrides = Overrides {
        listen_udp: args.listen,
        pbx: args.pbx,
        metrics: args.metrics,
        admin: args.admin,
        journal: args.journal,
    };
    let config = config::load_with(args.config.as_deref(), &overrides)?;
    let origin = args.config.as_deref().map_or_else(
        || config::DEFAULT_ORIGIN.to_owned(),
        |p| p.display().to_string(),
    );
    tracing::info!(config = %origin, version = env!("CARGO_PKG_VERSION"), "starting sipguard");
    // One descriptor per UDP session; two per TCP/TLS connection (its own and the upstream's).
    raise_open_file_limit(config.relay.max_sessions + 2 * config.streams.max_connections);
    let journal = match &config.ops.journal {
        Some(path) => path.clone(),
        None => sipguard::journal::default_path().context(
            "no place for the ban journal: set journal.path (or --journal), or HOME, \
             XDG_STATE_HOME or STATE_DIRECTORY",
        )?,
    };
    // Process-wide, so here and not in the library's `run`.
    let metrics = match config.ops.metrics {
        Some(_) => {
            Some(sipguard::exporter::install().context("cannot install the metrics recorder")?)
        }
        None => None,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal().context("cannot install signal handlers")?;
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler")?;
        let sockets = sipguard::bind(&config).context("cannot bind the listening sockets")?;
        let ops =
            sipguard::daemon::bind_ops(&config).context("cannot bind the listening sockets")?;
        for addr in sockets.udp_addrs() {
            tracing::info!(%addr, "listening on UDP");
        }
        for addr in sockets.tcp_addrs() {
            tracing::info!(%addr, "listening on TCP");
        }
        for addr in sockets.tls_addrs() {
            tracing::info!(%addr, "listening on TLS");
        }
        tracing::info!(pbx = %config.relay.pbx, "forwarding to the PBX");
        let daemon = sipguard::daemon::Daemon {
            config,
            config_path: args.config,
            overrides,
            sockets,
            ops,
            journal,
            metrics,
            reload_hooks: Vec::new(),
        };
        sipguard::daemon::serve(daemon, hangups, shutdown).await
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// Logs go to stderr (colours only on a terminal), leaving stdout for command output; the level comes from `RUST_LOG`
/// (invalid directives are ignored rather than fatal), `info` when unset.
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    // Colours only on a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Raises the soft open-file limit to the hard limit. sipguard holds one upstream socket per
/// client session (so the PBX sees each client as its own peer), and the usual soft limit of
/// 1024 would cap it far below `sessions.max`. Failing is not fatal: the limit is logged, and
/// the session table refuses new clients when sockets run out.
fn raise_open_file_limit(descriptors: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            // Headroom for the listeners, logs and the exporter.
            let wanted = descriptors as u64 + 64;
            if limit < wanted {
                tracing::warn!(
                    limit,
                    wanted,
                    "open-file limit is below what sessions.max and tcp.max_connections need; \
                     raise LimitNOFILE (systemd) or ulimit -n, or lower those limits"
                );
            } else {
                tracing::debug!(limit, "open-file limit");
            }
        }
        Err(err) => tracing::warn!(%err, "cannot raise the open-file limit"),
    }
}

/// Completes on the first SIGINT or SIGTERM. The handlers are installed before this returns, so a
/// signal that arrives while sockets are being set up is not lost.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "shutting down");
    })
}

/// `sipguard bans` and `sipguard sessions`: clients of the admin API.
mod admin_client {
    use super::{AdminArgs, BansAction, BansArgs, SessionsArgs};
    use hyper::{Method, StatusCode};
    use serde_json::Value;
    use sipguard::admin::gate::Token;
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::process::ExitCode;

    /// Exit code when no sipguard answers at the admin address.
    const EXIT_NOT_RUNNING: u8 = 3;
    const DEFAULT_ADMIN: &str = "127.0.0.1:9465";

    /// Where the requests go and the token they carry.
    struct Target {
        addr: SocketAddr,
        token: Token,
        token_file: PathBuf,
    }

    pub fn bans(args: BansArgs) -> ExitCode {
        let action = args.action;
        let (method, path, body, json) = match &action {
            BansAction::List { json } => (Method::GET, "/bans".to_owned(), None, *json),
            BansAction::Add {
                ip,
                duration,
                reason,
                json,
            } => (
                Method::POST,
                "/bans".to_owned(),
                Some(
                    serde_json::json!({ "ip": ip, "duration": duration, "reason": reason })
                        .to_string(),
                ),
                *json,
            ),
            BansAction::Remove { ip, json } => (Method::DELETE, format!("/bans/{ip}"), None, *json),
            BansAction::Feeds { json } => (Method::GET, "/feeds".to_owned(), None, *json),
            BansAction::Export => (Method::GET, "/feeds/bans".to_owned(), None, false),
        };
        let (status, value) = match call(args.target, method, &path, body) {
            Ok(reply) => reply,
            Err(code) => return code,
        };
        if json {
            println!("{value}");
            return ExitCode::SUCCESS;
        }
        match action {
            BansAction::List { .. } => {
                let bans = value
                    .get("bans")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                print!("{}", table(&BAN_COLUMNS, &bans, "no bans"));
            }
            BansAction::Add { .. } => {
                println!(
                    "banned {} until {}",
                    field(&value, "ip"),
                    field(&value, "expires")
                );
            }
            BansAction::Remove { .. } => {
                if status == StatusCode::OK {
                    println!("lifted the ban on {}", field(&value, "ip"));
                }
            }
            BansAction::Feeds { .. } => {
                let feeds = value
                    .get("feeds")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                print!("{}", table(&FEED_COLUMNS, &feeds, "no feeds configured"));
            }
            // Plain text, one address or network a line: what the API sent, as it was.
            BansAction::Export => print!("{}", value.as_str().unwrap_or_default()),
        }
        ExitCode::SUCCESS
    }

    pub fn sessions(args: SessionsArgs) -> ExitCode {
        let path = match &args.upstream {
            Some(upstream) => format!("/sessions/{upstream}"),
            None => "/sessions".to_owned(),
        };
        let value = match call(args.target, Method::GET, &path, None) {
            Ok((_, value)) => value,
            Err(code) => return code,
        };
        if args.json {
            println!("{value}");
            return ExitCode::SUCCESS;
        }
        let sessions = value
            .get("sessions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        print!("{}", table(&SESSION_COLUMNS, &sessions, "no sessions"));
        ExitCode::SUCCESS
    }

    /// One request to the admin API: its status and JSON on success, else the exit code after
    /// saying why.
    fn call(
        target: AdminArgs,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Value), ExitCode> {
        let target = match self::target(target.admin, target.config, target.token_file) {
            Ok(target) => target,
            Err((code, message)) => {
                eprintln!("sipguard: {message}");
                return Err(code);
            }
        };
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                eprintln!("sipguard: error: cannot start the async runtime: {err}");
                return Err(ExitCode::FAILURE);
            }
        };
        let addr = target.addr;
        let reply = runtime.block_on(sipguard::http::request(
            addr,
            target.token.as_str(),
            method,
            path,
            body,
        ));
        let (status, text) = match reply {
            Ok(reply) => reply,
            Err(err) => {
                eprintln!("sipguard: no sipguard answers at {addr} (is it running, with admin.listen there?): {err:#}");
                return Err(ExitCode::from(EXIT_NOT_RUNNING));
            }
        };
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            eprintln!("sipguard: {message} ({status})");
            if status == StatusCode::UNAUTHORIZED {
                eprintln!(
                    "sipguard: the token sent was read from {}",
                    target.token_file.display()
                );
            }
            return Err(ExitCode::FAILURE);
        }
        Ok((status, value))
    }

    /// The address and token from the flags and the config, or the exit code and message: 2 for
    /// bad usage or configuration, 1 for a token that cannot be had.
    fn target(
        admin: Option<String>,
        config: Option<PathBuf>,
        token_file: Option<PathBuf>,
    ) -> Result<Target, (ExitCode, String)> {
        let invalid = |message: String| (ExitCode::from(super::EXIT_INVALID_CONFIG), message);
        let config = config
            .map(|path| match sipguard::config::load(&path) {
                Ok(config) => Ok((path, config)),
                Err(errors) => Err(invalid(errors.to_string())),
            })
            .transpose()?;
        let addr = match (admin, &config) {
            (Some(text), _) => text.parse().map_err(|_| {
                invalid(format!(
                    "--admin: {text:?}: expected an address with a port, such as {DEFAULT_ADMIN}"
                ))
            })?,
            (None, Some((path, config))) => config
                .ops
                .admin
                .ok_or_else(|| invalid(format!("{}: admin.listen is off", path.display())))?,
            (None, None) => DEFAULT_ADMIN.parse().expect("a valid address"),
        };
        let files = match (token_file, &config) {
            (Some(file), _) => vec![file],
            (None, Some((_, config)))
                if config.ops.admin_token.is_some() || config.ops.journal.is_some() =>
            {
                let journal = config.ops.journal.clone().unwrap_or_default();
                vec![sipguard::admin::token_file(&config.ops, &journal)]
            }
            // The config leaves both to the daemon's environment: look where it would put them.
            (None, _) => {
                sipguard::admin::default_token_files(sipguard::journal::default_path().as_deref())
            }
        };
        let (token_file, token) =
            read_token(&files).map_err(|message| (ExitCode::FAILURE, message))?;
        Ok(Target {
            addr,
            token,
            token_file,
        })
    }

    /// The token in the first of `files` that exists; an error naming the file that cannot be
    /// read, or every file looked at.
    fn read_token(files: &[PathBuf]) -> Result<(PathBuf, Token), String> {
        for file in files {
            match Token::read(file) {
                Ok(token) => return Ok((file.clone(), token)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(format!(
                        "cannot read the admin token {}: {err}; it takes root (sudo) or the \
                         sipguard service's group",
                        file.display()
                    ))
                }
                Err(err) => {
                    return Err(format!(
                        "cannot read the admin token {}: {err}",
                        file.display()
                    ))
                }
            }
        }
        let tried: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        Err(format!(
            "no admin token at {}: sipguard writes it when it starts (is it running?); \
             --token-file or --config names another",
            tried.join(" or ")
        ))
    }

    fn field(value: &Value, key: &str) -> String {
        match value.get(key) {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }

    const SESSION_COLUMNS: [&str; 4] = ["transport", "client", "local", "upstream"];

    const BAN_COLUMNS: [&str; 8] = [
        "ip",
        "rule",
        "reason",
        "evidence",
        "offence",
        "first_seen",
        "last_seen",
        "expires",
    ];

    const FEED_COLUMNS: [&str; 7] = [
        "name",
        "kind",
        "entries",
        "dropped",
        "admitted",
        "failures",
        "last_error",
    ];

    /// `items` as an aligned table of `columns` with a header; `none` when there are none.
    fn table(columns: &[&str], items: &[Value], none: &str) -> String {
        if items.is_empty() {
            return format!("{none}\n");
        }
        let rows: Vec<Vec<String>> =
            std::iter::once(columns.iter().map(|c| c.to_uppercase()).collect())
                .chain(
                    items
                        .iter()
                        .map(|item| columns.iter().map(|c| field(item, c)).collect()),
                )
                .collect();
        let widths: Vec<usize> = (0..columns.len())
            .map(|i| {
                rows.iter()
                    .map(|row| row[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, &width)| format!("{cell:width$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}
