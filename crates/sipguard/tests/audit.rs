//! `sipguard audit` as an operator runs it, over the fixture Asterisk configurations in
//! `tests/fixtures/audit/`: each directory `NAME/` is audited and must print exactly the lines of
//! `NAME.expected` (file names there are relative to the directory), as text and as JSON, with
//! the exit code its findings call for. No password, secret, hash or voicemail PIN written in any
//! fixture may appear anywhere in what the command prints.

mod support;

use std::path::Path;
use support::{repo_root, sipguard, text};

/// The fixtures and the exit code each must give: 4 when a finding is high.
const FIXTURES: [(&str, i32); 3] = [("weak", 4), ("strong", 0), ("broken", 4)];

fn fixture_dir(name: &str) -> String {
    format!("tests/fixtures/audit/{name}")
}

/// The lines `sipguard audit` must print for fixture `name`: its findings, file names joined to
/// its directory, then the count.
fn expected(name: &str) -> Vec<String> {
    let dir = fixture_dir(name);
    let body = std::fs::read_to_string(repo_root().join(format!("{dir}.expected"))).unwrap();
    let mut lines: Vec<String> = body.lines().map(str::to_owned).collect();
    let count = lines.len() - 1;
    for line in &mut lines[..count] {
        *line = format!("{dir}/{line}");
    }
    lines
}

#[test]
fn each_fixture_prints_exactly_its_expected_findings_and_exit_code() {
    for (name, code) in FIXTURES {
        let out = sipguard(&["audit", &fixture_dir(name)]);
        assert_eq!(text(&out.stderr), "", "{name}");
        let printed: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
        assert_eq!(printed, expected(name), "{name}");
        assert_eq!(out.status.code(), Some(code), "{name}");
    }
}

#[test]
fn the_weak_fixture_shows_every_check() {
    let printed = text(&sipguard(&["audit", &fixture_dir("weak")]).stdout);
    for check in [
        "password-length",
        "password-classes",
        "password-dictionary",
        "password-is-name",
        "password-has-name",
        "password-reused",
        "password-hashed",
        "pin-weak",
        "insecure-invite",
        "insecure-port",
        "guest-calls",
        "anonymous-endpoint",
        "endpoint-no-auth",
        "peer-no-secret",
        "identify-loopback",
        "transport-exposed",
        "dial-international",
        "missing-include",
        "malformed",
    ] {
        assert!(printed.contains(&format!(": {check}: ")), "{check} missing");
    }
}

/// A JSON finding written as the text line says it.
fn as_line(finding: &serde_json::Value) -> String {
    let mut line = finding["file"].as_str().unwrap().to_owned();
    if let Some(number) = finding["line"].as_u64() {
        line.push_str(&format!(":{number}"));
    }
    line.push_str(&format!(
        ": {}: {}: ",
        finding["severity"].as_str().unwrap(),
        finding["check"].as_str().unwrap()
    ));
    if let Some(section) = finding["section"].as_str() {
        line.push_str(&format!("[{section}] "));
    }
    line.push_str(finding["message"].as_str().unwrap());
    line
}

#[test]
fn json_carries_the_same_findings_counts_and_exit_code() {
    for (name, code) in FIXTURES {
        let out = sipguard(&["audit", "--json", &fixture_dir(name)]);
        assert_eq!(out.status.code(), Some(code), "{name}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let findings = json["findings"].as_array().unwrap();
        let lines: Vec<String> = findings.iter().map(as_line).collect();
        let expected = expected(name);
        let (summary, rest) = expected.split_last().unwrap();
        assert_eq!(&lines[..], rest, "{name}");
        let high = findings.iter().filter(|f| f["severity"] == "high").count();
        assert_eq!(json["counts"]["high"], high, "{name}");
        assert!(
            summary.starts_with(&format!("{} finding", findings.len())),
            "{name}: {summary}"
        );
        assert_eq!(json["dir"], fixture_dir(name));
    }
}

/// Every secret written in the files under `dir`: the values of password, secret, md5secret and
/// md5_cred, and the PIN of each voicemail box.
fn secrets(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let body = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            let voicemail = path.file_name().unwrap() == "voicemail.conf";
            let mut section = String::new();
            for line in body.lines() {
                let line = line.split(';').next().unwrap().trim();
                if let Some(name) = line.strip_prefix('[') {
                    section = name.split(']').next().unwrap().to_owned();
                    continue;
                }
                let Some((key, value)) = line.split_once('=') else {
                    continue;
                };
                let (key, value) = (key.trim(), value.trim_start_matches('>').trim());
                if ["password", "secret", "md5secret", "md5_cred"].contains(&key) {
                    found.push(value.to_owned());
                } else if voicemail && section != "general" && section != "zonemessages" {
                    let pin = value.split(',').next().unwrap().trim();
                    found.push(pin.trim_start_matches('-').to_owned());
                }
            }
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

#[test]
fn no_secret_from_any_fixture_is_printed_as_text_or_json() {
    // How many each fixture writes, so a change to the reading above cannot make this vacuous.
    for (name, count) in [("weak", 15), ("strong", 5), ("broken", 1)] {
        let dir = fixture_dir(name);
        let secrets = secrets(&repo_root().join(&dir));
        assert_eq!(secrets.len(), count, "{name}: {} secrets", secrets.len());
        for args in [vec!["audit", &dir], vec!["audit", "--json", &dir]] {
            let out = sipguard(&args);
            let printed = format!("{}{}", text(&out.stdout), text(&out.stderr)).to_lowercase();
            for secret in &secrets {
                assert!(
                    !printed.contains(&secret.to_lowercase()),
                    "{args:?} printed a secret of the fixture"
                );
            }
        }
    }
}

#[test]
fn the_deploy_template_has_no_high_finding() {
    let out = sipguard(&["audit", "deploy/asterisk"]);
    let printed = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{printed}");
    assert!(printed.contains(" 0 high,"), "{printed}");
    assert!(!printed.contains(": high: "), "{printed}");
}

#[test]
fn a_directory_that_cannot_be_read_exits_1_naming_it() {
    let out = sipguard(&["audit", "tests/fixtures/audit/no-such-dir"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr)
            .starts_with("sipguard: tests/fixtures/audit/no-such-dir: cannot read the directory: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_default_directory_is_etc_asterisk() {
    let out = sipguard(&["audit", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("[default: /etc/asterisk]"),
        "{}",
        text(&out.stdout)
    );
}
