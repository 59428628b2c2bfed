//! sipguard's load harness (benches/README.md): `sipguard-bench run [--quick] [--runs N]
//! [--only PART,..] [--half RATE]` starts
//! the stand-in PBX and measures, side by side in one run, the direct path, a bare relay, a
//! Kamailio edge and sipguard: CPU per clean transaction, success and the highest clean rate,
//! latency at half load, floods of scanner and banned-source packets under clean traffic, and
//! sipguard's memory under a million spoofed sources. It prints Markdown tables of medians.
//! `sipguard-bench relay LISTEN PBX` is the bare relay the runner starts as its own process;
//! `load TARGET RATE SECONDS` and `flood TARGET SECONDS` send clean traffic or the scanner flood
//! alone, to profile an edge by hand.

mod load;
mod peers;
mod procfs;
mod relay;
mod report;
mod sendmmsg;
mod sip;

use anyhow::{bail, Context};
use load::{clean_load, flood, Client, Sources};
use peers::{free_port, Peer};
use report::Table;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Clean traffic comes from 8,192 addresses (127.2.0.0/19): at the highest rates tried each
/// sends fewer than 8 requests a second, under the flood rule (64 in 2 s; the Kamailio edge's
/// pike at 16), with no allowlisting, so every edge runs all of its rules on every clean packet.
const CLEAN: Sources = Sources {
    first: Ipv4Addr::new(127, 2, 0, 0),
    count: 8192,
};
/// Scanner floods: 4,096 addresses (127.3.0.0/20); after its first packet each is banned.
const SCANNERS: Sources = Sources {
    first: Ipv4Addr::new(127, 3, 0, 0),
    count: 4096,
};
/// Banned-source floods: 4,096 addresses, banned first by one scanner packet each.
const BANNED: Sources = Sources {
    first: Ipv4Addr::new(127, 1, 0, 0),
    count: 4096,
};
/// The worst scanner flood and the memory test: 2^20 addresses (127.16.0.0/12), a new one per
/// packet, more than any table holds.
const SPOOFED: Sources = Sources {
    first: Ipv4Addr::new(127, 16, 0, 0),
    count: 1 << 20,
};
/// A transaction not answered within this long has failed.
const TIMEOUT: Duration = Duration::from_millis(500);
/// Clean rate while a flood runs.
const FLOOD_CLEAN_RATE: u32 = 2_000;

/// The paced spoofed flood's rate: issue 15's target, with clean traffic kept at >= 99.9%.
const SPOOFED_PACED_RATE: u32 = 500_000;

#[derive(Clone, Copy)]
enum Flood {
    Scanner,
    ScannerSpoofed,
    /// A new source per packet at [`SPOOFED_PACED_RATE`].
    ScannerSpoofedPaced,
    Banned,
}

/// The parts of a run, for `--only` (comma-separated): all of them by default.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The rate sweep: CPU, success, highest clean rate.
    Sweep,
    /// Latency at half load.
    Latency,
    Floods,
    Memory,
    /// The Kamailio edge among the paths.
    Kamailio,
    /// The banned-source flood against sipguard with its bans in nftables (needs root), beside
    /// sipguard dropping them itself.
    Kernel,
}

impl Part {
    const ALL: [Part; 6] = [
        Part::Sweep,
        Part::Latency,
        Part::Floods,
        Part::Memory,
        Part::Kamailio,
        Part::Kernel,
    ];

    fn parse(name: &str) -> anyhow::Result<Part> {
        Ok(match name {
            "sweep" => Part::Sweep,
            "latency" => Part::Latency,
            "floods" => Part::Floods,
            "memory" => Part::Memory,
            "kamailio" => Part::Kamailio,
            "kernel" => Part::Kernel,
            _ => {
                bail!("--only takes sweep, latency, floods, memory, kamailio, kernel; not {name:?}")
            }
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Edge {
    Direct,
    Bare,
    Kamailio,
    Sipguard,
    /// Another sipguard build (`SIPGUARD_BASELINE=path[:path..]`, the n-th of them), to measure
    /// one change side by side.
    Baseline(usize),
    /// sipguard with its bans offloaded to nftables (needs root): banned-source floods only.
    Kernel,
    /// sipguard with the clean sources allowlisted (carriers, offices): spoofed floods only.
    Allowlisted,
    /// As [`Edge::Allowlisted`], with nftables on and its shield capping what reaches the socket
    /// from sources neither allowlisted nor trusted (needs root): spoofed floods only.
    Shield,
}

impl Edge {
    fn label(self) -> String {
        match self {
            Edge::Direct => "(a) direct to the PBX".into(),
            Edge::Bare => "(b) bare relay".into(),
            Edge::Kamailio => "(c) Kamailio edge".into(),
            Edge::Sipguard => "(d) sipguard".into(),
            Edge::Baseline(0) => "(d0) sipguard baseline build".into(),
            Edge::Baseline(n) => format!("(d{n}) sipguard baseline build {n}"),
            Edge::Kernel => "(e) sipguard, bans in nftables".into(),
            Edge::Allowlisted => "(f) sipguard, clean sources allowlisted".into(),
            Edge::Shield => "(g) sipguard, clean sources allowlisted, nftables shield".into(),
        }
    }
}

struct Settings {
    quick: bool,
    runs: usize,
    root: PathBuf,
    sipguard: PathBuf,
    /// Other builds to run beside this one.
    baselines: Vec<PathBuf>,
    parts: Vec<Part>,
    /// The half-load rate when the sweep does not run to find it.
    half: u32,
}

impl Settings {
    fn edges(&self) -> Vec<Edge> {
        let mut edges = vec![Edge::Direct, Edge::Bare];
        if self.has(Part::Kamailio) {
            edges.push(Edge::Kamailio);
        }
        edges.push(Edge::Sipguard);
        edges.extend((0..self.baselines.len()).map(Edge::Baseline));
        edges
    }

    fn has(&self, part: Part) -> bool {
        self.parts.contains(&part)
    }

    fn rates(&self) -> &'static [u32] {
        if self.quick {
            &[2_000, 5_000, 10_000, 20_000]
        } else {
            &[2_000, 5_000, 10_000, 15_000, 20_000, 25_000, 30_000, 40_000]
        }
    }
    fn step(&self) -> Duration {
        Duration::from_secs(if self.quick { 1 } else { 3 })
    }
    fn flood_time(&self) -> Duration {
        Duration::from_secs(if self.quick { 2 } else { 4 })
    }
    fn million(&self) -> u64 {
        if self.quick {
            200_000
        } else {
            1_000_000
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("relay") if args.len() == 3 => relay::run(args[1].parse()?, args[2].parse()?),
        Some("load") if args.len() == 4 => {
            // For profiling an edge by hand: clean transactions at a fixed rate.
            let (rate, seconds) = (args[2].parse()?, args[3].parse()?);
            let client = Client::new()?;
            let report = clean_load(&client, args[1].parse()?, CLEAN, rate, Duration::from_secs(seconds), TIMEOUT)?;
            println!(
                "{} sent, {:.3}% answered, p50 {:.1} us, p99 {:.1} us",
                report.sent,
                report.success() * 100.0,
                report.latency_us(0.5),
                report.latency_us(0.99)
            );
            Ok(())
        }
        Some("flood") if args.len() == 3 => {
            // For profiling an edge by hand: scanner packets from spoofed sources for N seconds.
            let duration = Duration::from_secs(args[2].parse()?);
            let sent = flood(args[1].parse()?, SPOOFED, &[sip::scanner_packet()], u64::MAX, duration, None)?;
            println!("{} packets, {:.0}/s", sent.sent, sent.rate());
            Ok(())
        }
        Some("run") => {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .context("benches/ has a parent")?
                .to_path_buf();
            let exe = std::env::current_exe()?;
            let option = |name: &str| {
                args.iter()
                    .position(|a| a == name)
                    .map(|i| args.get(i + 1).with_context(|| format!("{name} needs a value")))
                    .transpose()
            };
            let parts = match option("--only")? {
                Some(list) => list.split(',').map(Part::parse).collect::<Result<_, _>>()?,
                None => Part::ALL.to_vec(),
            };
            let half = option("--half")?.map_or(Ok(20_000), |rate| rate.parse())?;
            if args.iter().any(|a| a == "--pin") {
                // The last CPU for the edges; the harness and the PBX on the rest.
                let cpus = std::thread::available_parallelism().map_or(1, usize::from);
                anyhow::ensure!(cpus >= 2, "--pin needs two CPUs");
                let _ = peers::EDGE_CPU.set(cpus - 1);
                peers::pin(0..cpus - 1)?;
            }
            let settings = Settings {
                parts,
                half,
                quick: args.iter().any(|a| a == "--quick"),
                runs: match args.iter().position(|a| a == "--runs") {
                    Some(i) => args.get(i + 1).context("--runs N")?.parse()?,
                    None if args.iter().any(|a| a == "--quick") => 1,
                    None => 3,
                },
                sipguard: exe.with_file_name("sipguard"),
                baselines: std::env::var_os("SIPGUARD_BASELINE")
                    .map(|paths| std::env::split_paths(&paths).collect())
                    .unwrap_or_default(),
                root,
            };
            if !settings.sipguard.exists() {
                bail!(
                    "{} missing: build it first (benches/run.sh does)",
                    settings.sipguard.display()
                );
            }
            run(&settings)
        }
        _ => bail!(
            "usage: sipguard-bench run [--quick] [--runs N] [--only PART,..] [--half RATE] [--pin] | relay LISTEN PBX | load TARGET RATE SECONDS | flood TARGET SECONDS"
        ),
    }
}

fn localhost(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

/// Starts `edge` in front of `pbx`; returns the peer (none for the direct path) and where to send.
fn start_edge(
    settings: &Settings,
    edge: Edge,
    pbx: SocketAddrV4,
) -> anyhow::Result<(Option<Peer>, SocketAddrV4)> {
    if edge == Edge::Direct {
        return Ok((None, pbx));
    }
    let listen = localhost(free_port()?);
    let mut peer = match edge {
        Edge::Bare => peers::bare_relay(listen, pbx)?,
        Edge::Kamailio => peers::kamailio(
            "kamailio edge",
            &settings.root.join("benches/kamailio-edge.cfg"),
            listen,
            Some(pbx),
        )?,
        Edge::Sipguard => peers::sipguard(&settings.sipguard, listen, pbx, "", None)?,
        Edge::Baseline(n) => {
            let binary = settings.baselines.get(n).context("SIPGUARD_BASELINE")?;
            peers::sipguard(binary, listen, pbx, "", None)?
        }
        Edge::Kernel | Edge::Allowlisted | Edge::Shield => {
            let nftables = matches!(edge, Edge::Kernel | Edge::Shield);
            let extra = if nftables {
                "nftables:\n  enabled: true\n  table: sipguard_bench\n"
            } else {
                ""
            };
            let allowlist = (edge != Edge::Kernel).then(|| CLEAN.allowlist());
            peers::sipguard(&settings.sipguard, listen, pbx, extra, allowlist.as_deref())?
        }
        Edge::Direct => unreachable!(),
    };
    peer.wait_answering(listen)?;
    Ok((Some(peer), listen))
}

fn run(settings: &Settings) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut cpu = Table::new("CPU of the edge per clean transaction (us, utime+stime from /proc)");
    let mut success = Table::new("success of clean transactions (%)");
    let mut highest = Table::new("highest clean rate with >= 99.9% success (transactions/s)");
    let mut latency = Table::new("latency at half the direct path's highest rate (us)");
    let mut floods = Table::new("floods while clean traffic runs at 2,000 transactions/s");
    let mut memory = Table::new("sipguard RSS under one million spoofed sources (MiB)");
    let mut loads = Vec::new();

    for run in 1..=settings.runs {
        eprintln!(
            "run {run}/{}: load average {}",
            settings.runs,
            procfs::load_average()
        );
        loads.push(procfs::load_average());
        let pbx_addr = localhost(free_port()?);
        let mut pbx = peers::kamailio(
            peers::PBX,
            &settings.root.join("benches/pbx.cfg"),
            pbx_addr,
            None,
        )?;
        pbx.wait_answering(pbx_addr)?;

        let mut direct_highest = 2 * settings.half;
        let paths = settings.has(Part::Sweep) || settings.has(Part::Latency);
        for edge in settings.edges().into_iter().filter(|_| paths) {
            let (peer, target) = start_edge(settings, edge, pbx_addr)?;
            let client = Client::new()?;
            let mut best = 0;
            let rates = if settings.has(Part::Sweep) {
                settings.rates()
            } else {
                &[]
            };
            for &rate in rates {
                let cpu_before = peer.as_ref().map_or(0.0, Peer::cpu_seconds);
                let report = clean_load(&client, target, CLEAN, rate, settings.step(), TIMEOUT)?;
                let cpu_after = peer.as_ref().map_or(0.0, Peer::cpu_seconds);
                let column = format!("{rate}/s");
                success.record(&edge.label(), &column, report.success() * 100.0);
                if let Some(_peer) = &peer {
                    let per_tx = (cpu_after - cpu_before) * 1e6 / report.answered.max(1) as f64;
                    cpu.record(&edge.label(), &column, per_tx);
                }
                eprintln!(
                    "  {}: {rate}/s success {:.3}% p99 {:.0} us",
                    edge.label(),
                    report.success() * 100.0,
                    report.latency_us(0.99)
                );
                if report.success() < 0.999 {
                    break;
                }
                best = rate;
            }
            if settings.has(Part::Sweep) {
                highest.record(&edge.label(), "transactions/s", f64::from(best));
                if edge == Edge::Direct {
                    direct_highest = best;
                }
            }
            if !settings.has(Part::Latency) {
                continue;
            }
            let half = (direct_highest / 2).max(1_000);
            // Sleeps and wake-ups of the edge's threads: Kamailio's workers are processes of
            // their own, so only single-process edges are counted.
            let sleeps = peer
                .as_ref()
                .filter(|_| edge != Edge::Kamailio)
                .map(|peer| procfs::sleeps(peer.pid()));
            let report = clean_load(&client, target, CLEAN, half, settings.step() * 2, TIMEOUT)?;
            for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
                latency.record(&edge.label(), name, report.latency_us(q));
            }
            if let (Some(before), Some(peer)) = (sleeps, &peer) {
                let after = procfs::sleeps(peer.pid());
                let per_tx = after.saturating_sub(before) as f64 / report.answered.max(1) as f64;
                latency.record(&edge.label(), "thread sleeps per transaction", per_tx);
            }
            latency.record(&edge.label(), "rate/s", f64::from(half));
            drop(peer);
        }

        let mut flood_edges: Vec<Edge> = settings.edges().into_iter().skip(2).collect();
        flood_edges.retain(|_| settings.has(Part::Floods));
        if settings.has(Part::Kernel) {
            if !settings.has(Part::Floods) {
                flood_edges.push(Edge::Sipguard);
            }
            flood_edges.extend([Edge::Kernel, Edge::Allowlisted, Edge::Shield]);
        }
        for edge in flood_edges {
            let kinds: &[Flood] = if matches!(edge, Edge::Allowlisted | Edge::Shield) {
                &[Flood::ScannerSpoofedPaced]
            } else if settings.has(Part::Floods) && edge != Edge::Kernel {
                &[
                    Flood::Scanner,
                    Flood::ScannerSpoofed,
                    Flood::ScannerSpoofedPaced,
                    Flood::Banned,
                ]
            } else {
                &[Flood::Banned]
            };
            for &flood_kind in kinds {
                let (peer, target) = start_edge(settings, edge, pbx_addr)?;
                let client = Client::new()?;
                let mut rate = None;
                let (sources, kind, payloads) = match flood_kind {
                    Flood::Scanner => (
                        SCANNERS,
                        "scanner UA, 4,096 sources",
                        vec![sip::scanner_packet()],
                    ),
                    Flood::ScannerSpoofed => (
                        SPOOFED,
                        "scanner UA, a new source per packet",
                        vec![sip::scanner_packet()],
                    ),
                    Flood::ScannerSpoofedPaced => {
                        rate = Some(SPOOFED_PACED_RATE);
                        (
                            SPOOFED,
                            "scanner UA, a new source per packet, paced at 500,000/s",
                            vec![sip::scanner_packet()],
                        )
                    }
                    Flood::Banned => {
                        // Ban every flood source first, with one scanner packet each.
                        let scanner = vec![sip::scanner_packet()];
                        flood(
                            target,
                            BANNED,
                            &scanner,
                            u64::from(BANNED.count),
                            Duration::from_secs(5),
                            Some(50_000),
                        )?;
                        std::thread::sleep(Duration::from_millis(500));
                        let mut plain = Vec::new();
                        sip::clean_request(&mut plain, 1, BANNED.first, 5060, target);
                        (BANNED, "banned sources, 4,096", vec![plain])
                    }
                };
                let row = format!("{} / {kind}", edge.label());
                let drops_before = procfs::udp_receive_buffer_drops();
                let cpu_before = peer.as_ref().map_or(0.0, Peer::cpu_seconds);
                let duration = settings.flood_time();
                let flooder = std::thread::spawn(move || {
                    flood(target, sources, &payloads, u64::MAX, duration, rate)
                });
                let clean =
                    clean_load(&client, target, CLEAN, FLOOD_CLEAN_RATE, duration, TIMEOUT)?;
                let sent = flooder.join().expect("flood thread panicked")?;
                let kernel_drops = procfs::udp_receive_buffer_drops() - drops_before;
                let cpu_used = peer.as_ref().map_or(0.0, Peer::cpu_seconds) - cpu_before;
                let drained = sent.sent.saturating_sub(kernel_drops);
                let handled = drained as f64 / sent.elapsed.as_secs_f64();
                floods.record(&row, "flood sent (pkt/s)", sent.rate());
                floods.record(&row, "edge drained (pkt/s)", handled);
                floods.record(
                    &row,
                    "lost in socket buffers (%)",
                    kernel_drops as f64 * 100.0 / sent.sent.max(1) as f64,
                );
                floods.record(
                    &row,
                    "edge CPU (cores)",
                    cpu_used / sent.elapsed.as_secs_f64(),
                );
                floods.record(
                    &row,
                    "edge CPU per drained packet (us)",
                    cpu_used * 1e6 / drained.max(1) as f64,
                );
                floods.record(&row, "clean success (%)", clean.success() * 100.0);
                floods.record(&row, "clean p99 (us)", clean.latency_us(0.99));
                eprintln!(
                    "  {row}: flood {:.0}/s, drained {handled:.0}/s, clean success {:.3}%",
                    sent.rate(),
                    clean.success() * 100.0
                );
                drop(peer);
            }
        }

        if !settings.has(Part::Memory) {
            drop(pbx);
            continue;
        }
        let (peer, target) = start_edge(settings, Edge::Sipguard, pbx_addr)?;
        let peer = peer.context("sipguard runs as a process")?;
        let pid = peer.pid();
        memory.record("sipguard", "before", procfs::rss_mib(pid));
        let payloads = vec![sip::scanner_packet(), sip::failing_register(target)];
        let count = settings.million();
        let drops_before = procfs::udp_receive_buffer_drops();
        let sender = std::thread::spawn(move || {
            flood(
                target,
                SPOOFED,
                &payloads,
                count,
                Duration::from_secs(60),
                Some(100_000),
            )
        });
        let mut peak: f64 = 0.0;
        while !sender.is_finished() {
            peak = peak.max(procfs::rss_mib(pid));
            std::thread::sleep(Duration::from_millis(100));
        }
        let sent = sender.join().expect("memory flood thread panicked")?;
        let lost = procfs::udp_receive_buffer_drops() - drops_before;
        memory.record("sipguard", "peak during", peak);
        std::thread::sleep(Duration::from_secs(1));
        memory.record("sipguard", "1 s after", procfs::rss_mib(pid));
        std::thread::sleep(Duration::from_secs(6));
        memory.record("sipguard", "7 s after", procfs::rss_mib(pid));
        memory.record("sipguard", "sources sent", sent.sent as f64);
        memory.record(
            "sipguard",
            "lost in socket buffers (%)",
            lost as f64 * 100.0 / sent.sent.max(1) as f64,
        );
        drop(peer);
        drop(pbx);
    }

    println!(
        "Medians of {} run(s){}; load average at the start of each run: {}; {:.0} s in all.\n",
        settings.runs,
        if settings.quick { " (--quick)" } else { "" },
        loads.join(" / "),
        started.elapsed().as_secs_f64()
    );
    for table in [&cpu, &success, &highest, &latency, &floods, &memory] {
        println!("{table}");
    }
    Ok(())
}
