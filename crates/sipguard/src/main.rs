//! The `sipguard` command: `run` the proxy, or `check-config` a file.
//!
//! This file owns the process: arguments, logging, the open-file limit, signals and exit codes.
//! Everything else is in the library, which tests drive in-process: here the config is loaded,
//! the sockets bound (so bind errors surface before any traffic), and `run` is handed a shutdown
//! future that completes on SIGINT or SIGTERM.
//!
//! Exit codes: 0 success; 1 failure at run time, or a config file that cannot be read; 2 an
//! invalid configuration (every problem printed, one per line) or bad command-line usage.
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
                  configuration or usage."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Validate a configuration file: print every problem, or `FILE: ok`.
    CheckConfig {
        /// The YAML configuration file.
        file: PathBuf,
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
    /// Log line format. The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
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
    };
    let config = config::load_with(args.config.as_deref(), &overrides)?;
    let origin = args.config.as_deref().map_or_else(
        || config::DEFAULT_ORIGIN.to_owned(),
        |p| p.display().to_string(),
    );
    tracing::info!(config = %origin, version = env!("CARGO_PKG_VERSION"), "starting sipguard");
    // One descriptor per UDP session; two per TCP/TLS connection (its own and the upstream's).
    raise_open_file_limit(config.relay.max_sessions + 2 * config.streams.max_connections);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal().context("cannot install signal handlers")?;
        let sockets = sipguard::bind(&config).context("cannot bind the listening sockets")?;
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
        sipguard::run(config, sockets, shutdown).await
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
