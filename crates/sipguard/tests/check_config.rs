//! The `sipguard` binary as operators use it: `check-config` on the shipped configs and on every
//! fixture in `config/invalid/`, `run` refusing bad settings, and `run` starting and stopping on
//! a signal.
//!
//! Each invalid fixture lists the exact lines `check-config` must print as `# expect: ` comments
//! (with `FILE` standing for its path), so a fixture documents its own diagnostics and adding one
//! needs no change here. Allowlist files that fixtures refer to live in `config/invalid/allowlists/`,
//! out of the fixtures' way; their problems are expected under their own paths.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{repo_root, sipguard, text};

#[test]
fn shipped_configs_check_ok_and_exit_0() {
    for file in ["config/default.yaml", "config/example.yaml"] {
        let out = sipguard(&["check-config", file]);
        assert_eq!(out.status.code(), Some(0), "{file}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{file}: ok\n"));
        assert_eq!(text(&out.stderr), "");
    }
}

#[test]
fn each_invalid_fixture_prints_exactly_its_expected_problems_and_exits_2() {
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(repo_root().join("config/invalid"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 10, "fixtures missing: {fixtures:?}");

    for fixture in fixtures {
        let name = format!(
            "config/invalid/{}",
            fixture.file_name().unwrap().to_str().unwrap()
        );
        let expected: Vec<String> = std::fs::read_to_string(&fixture)
            .unwrap()
            .lines()
            .filter_map(|line| line.strip_prefix("# expect: "))
            .map(|line| line.replacen("FILE", &name, 1))
            .collect();
        assert!(!expected.is_empty(), "{name} has no `# expect: ` lines");

        let out = sipguard(&["check-config", &name]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert_eq!(text(&out.stdout), "", "{name}");
        let printed: Vec<&str> = stderr.lines().collect();
        let (summary, problems) = printed.split_last().expect("stderr not empty");
        assert_eq!(problems, expected, "{name}");
        let noun = if expected.len() == 1 {
            "problem"
        } else {
            "problems"
        };
        assert_eq!(
            *summary,
            format!(
                "sipguard: configuration not valid ({} {noun})",
                expected.len()
            )
        );
    }
}

#[test]
fn allowlist_file_is_found_relative_to_the_config_file_not_the_working_directory() {
    let out = Command::new(env!("CARGO_BIN_EXE_sipguard"))
        .args(["check-config", "../config/example.yaml"])
        .current_dir(repo_root().join("crates"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "../config/example.yaml: ok\n");
}

#[test]
fn unreadable_file_exits_1_naming_it() {
    let out = sipguard(&["check-config", "config/no-such-file.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("config/no-such-file.yaml: cannot read: "),
        "{stderr}"
    );
}

#[test]
fn run_with_an_invalid_config_exits_2_before_binding_anything() {
    let out = sipguard(&["run", "--config", "config/invalid/bad-values.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "config/invalid/bad-values.yaml: sessions.idle_timeout: \"1 fortnight\": expected a duration"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn run_refuses_to_start_without_a_readable_tls_certificate_naming_the_file() {
    let out = sipguard(&["run", "--config", "config/invalid/tls-and-connections.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("tls.certificate")
            && stderr.contains("cannot read config/invalid/allowlists/no-such-certificate.pem"),
        "{stderr}"
    );
    assert!(stderr.contains("tls.key"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn run_flags_are_validated_with_the_file_and_named_in_problems() {
    let out = sipguard(&[
        "run",
        "--config",
        "config/default.yaml",
        "--listen",
        "0.0.0.0",
        "--pbx",
        "127.0.0.1:5060",
        "--listen",
        "127.0.0.1:5060",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "command line: --listen: \"0.0.0.0\": expected an address with a port, such as 0.0.0.0:5060\n\
         command line: --pbx: \"127.0.0.1:5060\": expected the PBX's address, not one sipguard \
         listens on itself (--listen is 127.0.0.1:5060): packets would loop\n\
         sipguard: configuration not valid (2 problems)\n"
    );
}

#[test]
fn bad_usage_exits_2() {
    let out = sipguard(&["run", "--log-format", "xml"]);
    assert_eq!(out.status.code(), Some(2));
    let out = sipguard(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Starts `sipguard run ARGS`, waits (with a deadline) for its log to show a listening address,
/// sends `signal`, and returns the exit status and the whole log.
fn run_until_signal(args: &[&str], signal: &str) -> (std::process::ExitStatus, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    // Services on port 0 and a journal of its own, so runs in parallel do not collide.
    let state = tempfile::tempdir().unwrap();
    let journal = state.path().join("bans.journal");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipguard"))
        .arg("run")
        .args([
            "--metrics",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--journal",
        ])
        .arg(&journal)
        .args(args)
        .current_dir(repo_root())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sipguard starts");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });

    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("listening on UDP")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("sipguard did not report listening in time; log: {log:#?}");
            }
        }
    }
    let kill = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());

    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sipguard did not stop on {signal}; log: {log:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    log.extend(rx.iter());
    (status, log)
}

#[test]
fn run_logs_its_bound_addresses_and_stops_cleanly_on_sigterm() {
    let (status, log) = run_until_signal(
        &["--listen", "127.0.0.1:0", "--pbx", "127.0.0.1:9"],
        "-TERM",
    );
    assert!(status.success(), "{status}; log: {log:#?}");
    let listening = log.iter().find(|l| l.contains("listening on UDP")).unwrap();
    assert!(listening.contains("127.0.0.1:"), "{listening}");
    assert!(
        !listening.contains("127.0.0.1:0 "),
        "should log the bound port: {listening}"
    );
    let tcp = log.iter().find(|l| l.contains("listening on TCP"));
    assert!(
        tcp.is_some_and(|l| l.contains("127.0.0.1:") && !l.contains("127.0.0.1:0 ")),
        "--listen binds TCP too: {log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("shutting down") && l.contains("SIGTERM")),
        "{log:#?}"
    );
}

#[test]
fn run_writes_json_logs_when_asked_and_stops_on_sigint() {
    let (status, log) = run_until_signal(
        &[
            "--listen",
            "127.0.0.1:0",
            "--pbx",
            "127.0.0.1:9",
            "--log-format",
            "json",
        ],
        "-INT",
    );
    assert!(status.success(), "{status}; log: {log:#?}");
    assert!(
        log.iter().all(|l| l.starts_with('{') && l.ends_with('}')),
        "{log:#?}"
    );
    assert!(log.iter().any(|l| l.contains("\"SIGINT\"")), "{log:#?}");
}
