//! `sipguard audit`: reads the configuration of the Asterisk sipguard protects (pjsip.conf and
//! its includes, sip.conf, voicemail.conf, extensions.conf) and reports what the hardening guides
//! warn about, each finding with file, line and severity (docs/design.md §9).
//!
//! sipguard cannot see passwords on the wire, but it sits on the same host as the PBX. The audit
//! is pure down to [`audit`], which reads files through a [`Source`]; [`audit_dir`] is the one
//! place that touches the disk. No finding, in text or JSON, ever carries a password or PIN, its
//! length or any part of it: the checks' messages are written without them, and a line the parser
//! cannot read is reported by number and reason, not text.

mod accounts;
mod conf;
mod dialplan;
mod secrets;

pub use conf::{ReadError, Source};

use serde::Serialize;
use std::path::{Path, PathBuf};

/// How much a finding matters. Any `High` makes `sipguard audit` exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing: something the audit could not judge.
    Info,
    Low,
    Medium,
    /// An account or door an attacker can use now.
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// One thing the audit reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The file, as named from the config directory (an `#include` may name an absolute path).
    pub file: String,
    /// The line, when the finding is about one.
    pub line: Option<u32>,
    pub severity: Severity,
    /// A stable name for the rule, for tools: `password-length`, `dial-international`, ...
    pub check: &'static str,
    /// The `[section]` the finding is about.
    pub section: Option<String>,
    pub message: String,
}

impl Finding {
    fn file(severity: Severity, check: &'static str, file: &str, message: String) -> Finding {
        Finding {
            file: file.to_owned(),
            line: None,
            severity,
            check,
            section: None,
            message,
        }
    }

    fn at(
        severity: Severity,
        check: &'static str,
        pos: conf::Pos,
        section: Option<&str>,
        message: String,
    ) -> Finding {
        Finding {
            file: pos.file,
            line: Some(pos.line),
            severity,
            check,
            section: section.map(str::to_owned),
            message,
        }
    }
}

/// Everything the audit found, sorted by file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether any finding is high (the command then exits non-zero).
    pub fn has_high(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::High)
    }

    fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    fn summary(&self) -> String {
        let n = self.findings.len();
        format!(
            "{n} finding{}: {} high, {} medium, {} low, {} info",
            if n == 1 { "" } else { "s" },
            self.count(Severity::High),
            self.count(Severity::Medium),
            self.count(Severity::Low),
            self.count(Severity::Info),
        )
    }

    /// For people: `FILE:LINE: SEVERITY: CHECK: [SECTION] MESSAGE`, one a line, file names
    /// joined to `dir`, then a count by severity.
    pub fn text(&self, dir: &Path) -> String {
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&shown(dir, &f.file).display().to_string());
            if let Some(line) = f.line {
                out.push_str(&format!(":{line}"));
            }
            out.push_str(&format!(": {}: {}: ", f.severity.as_str(), f.check));
            if let Some(section) = &f.section {
                out.push_str(&format!("[{section}] "));
            }
            out.push_str(&f.message);
            out.push('\n');
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// For tools: `{"dir", "findings": [{file, line, severity, check, section, message}],
    /// "counts": {high, medium, low, info}}`, file names joined to `dir`.
    pub fn json(&self, dir: &Path) -> String {
        let findings: Vec<Finding> = self
            .findings
            .iter()
            .map(|f| Finding {
                file: shown(dir, &f.file).display().to_string(),
                ..f.clone()
            })
            .collect();
        serde_json::json!({
            "dir": dir.display().to_string(),
            "findings": findings,
            "counts": {
                "high": self.count(Severity::High),
                "medium": self.count(Severity::Medium),
                "low": self.count(Severity::Low),
                "info": self.count(Severity::Info),
            },
        })
        .to_string()
    }
}

fn shown(dir: &Path, file: &str) -> PathBuf {
    dir.join(file)
}

/// Audits the configuration `source` holds: pure, so tests hand it files from memory.
pub fn audit(source: &impl Source) -> Report {
    let mut findings = Vec::new();
    let mut passwords = Vec::new();
    let mut callers = Vec::new();
    let pjsip = conf::load(source, "pjsip.conf", &mut findings);
    let sip = conf::load(source, "sip.conf", &mut findings);
    if let Some(config) = &pjsip {
        accounts::pjsip(config, &mut passwords, &mut callers, &mut findings);
    }
    if let Some(config) = &sip {
        accounts::chan_sip(config, &mut passwords, &mut callers, &mut findings);
    }
    if pjsip.is_none() && sip.is_none() {
        findings.push(Finding::file(
            Severity::Info,
            "not-found",
            "pjsip.conf",
            "neither pjsip.conf nor sip.conf exists: no SIP account audited".to_owned(),
        ));
    }
    accounts::passwords(&passwords, &mut findings);
    match conf::load(source, "voicemail.conf", &mut findings) {
        Some(config) => accounts::voicemail(&config, &mut findings),
        None => findings.push(Finding::file(
            Severity::Info,
            "not-found",
            "voicemail.conf",
            "no voicemail.conf: no voicemail PIN audited".to_owned(),
        )),
    }
    match conf::load(source, "extensions.conf", &mut findings) {
        Some(config) => dialplan::check(&config, &callers, &mut findings),
        None => findings.push(Finding::file(
            Severity::Info,
            "not-found",
            "extensions.conf",
            "no extensions.conf: what phones can dial was not audited".to_owned(),
        )),
    }
    findings.sort_by(|a, b| {
        (&a.file, a.line, b.severity, a.check, &a.section)
            .cmp(&(&b.file, b.line, a.severity, b.check, &b.section))
    });
    findings.dedup();
    Report { findings }
}

/// Audits the Asterisk configuration directory `dir`: the I/O edge of the audit. An error only
/// when `dir` itself cannot be listed; every unreadable file in it is a finding.
pub fn audit_dir(dir: &Path) -> Result<Report, String> {
    std::fs::read_dir(dir).map_err(|err| format!("cannot read the directory: {err}"))?;
    Ok(audit(&Disk { dir }))
}

/// Files under the config directory (Asterisk reads relative `#include`s from there).
struct Disk<'a> {
    dir: &'a Path,
}

impl Source for Disk<'_> {
    fn read(&self, name: &str) -> Result<String, ReadError> {
        match std::fs::read(self.dir.join(name)) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(ReadError::NotFound),
            Err(err) => Err(ReadError::Other(err.to_string())),
        }
    }

    fn glob(&self, pattern: &str) -> Vec<String> {
        let (parent, file) = pattern.rsplit_once('/').unwrap_or(("", pattern));
        let Ok(entries) = std::fs::read_dir(self.dir.join(parent)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| conf::wildcard_match(file, name))
            .map(|name| match parent {
                "" => name,
                parent => format!("{parent}/{name}"),
            })
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(files: &[(&str, &str)]) -> Vec<(String, u32, Severity, &'static str)> {
        audit(&conf::Files::with(files))
            .findings
            .into_iter()
            .map(|f| (f.file, f.line.unwrap_or(0), f.severity, f.check))
            .collect()
    }

    fn checks(files: &[(&str, &str)]) -> Vec<&'static str> {
        lines(files).into_iter().map(|f| f.2).collect()
    }

    /// The findings as (line, severity, check), but for files that are not there.
    fn lines(files: &[(&str, &str)]) -> Vec<(u32, Severity, &'static str)> {
        run(files)
            .into_iter()
            .filter(|f| f.3 != "not-found")
            .map(|f| (f.1, f.2, f.3))
            .collect()
    }

    const STRONG_AUTH: &str =
        "[t](!)\ntype=auth\n[2001](t)\nusername=2001\npassword=T7#kq9!Vz2@mWp4s\n";

    #[test]
    fn an_empty_directory_says_what_was_not_audited() {
        assert_eq!(
            run(&[]),
            [
                ("extensions.conf".into(), 0, Severity::Info, "not-found"),
                ("pjsip.conf".into(), 0, Severity::Info, "not-found"),
                ("voicemail.conf".into(), 0, Severity::Info, "not-found"),
            ]
        );
    }

    #[test]
    fn a_strong_inherited_password_gives_no_finding() {
        assert_eq!(checks(&[("pjsip.conf", STRONG_AUTH)]), Vec::<&str>::new());
    }

    #[test]
    fn a_password_shared_by_two_auths_is_reported_at_both() {
        let text = format!("{STRONG_AUTH}[2002](t)\nusername=2002\npassword=T7#kq9!Vz2@mWp4s\n");
        let found = run(&[("pjsip.conf", &text)]);
        let reused: Vec<u32> = found
            .iter()
            .filter(|f| f.3 == "password-reused")
            .map(|f| f.1)
            .collect();
        assert_eq!(reused, [5, 8]);
    }

    #[test]
    fn a_password_inherited_from_a_template_by_two_auths_is_reused() {
        let text = "[t](!)\ntype=auth\npassword=T7#kq9!Vz2@mWp4s\n[a](t)\n[b](t)\n";
        let found = run(&[("pjsip.conf", text)]);
        assert_eq!(found.iter().filter(|f| f.3 == "password-reused").count(), 2);
    }

    #[test]
    fn endpoints_without_auth_and_loopback_identifies_are_high() {
        let text = "[trunk]\ntype=endpoint\n[trunk-id]\ntype=identify\nendpoint=trunk\n\
                    match=203.0.113.5,127.0.0.1\n[anonymous]\ntype=endpoint\n";
        let expected = [
            (1, Severity::High, "endpoint-no-auth"),
            (6, Severity::High, "identify-loopback"),
            (7, Severity::Medium, "anonymous-endpoint"),
        ];
        let got = lines(&[("pjsip.conf", text)]);
        assert_eq!(got, expected);
    }

    #[test]
    fn an_ip_trunk_without_auth_is_medium_when_no_one_can_name_it_in_from() {
        let text = "[global]\ntype=global\nendpoint_identifier_order=ip,anonymous\n\
                    [carrier]\ntype=endpoint\n[carrier-id]\ntype=identify\nendpoint=carrier\n\
                    match=127.0.1.1\n[orphan]\ntype=endpoint\n";
        let got = lines(&[("pjsip.conf", text)]);
        assert_eq!(
            got,
            [
                (4, Severity::Medium, "endpoint-no-auth"),
                (10, Severity::Low, "endpoint-no-auth")
            ]
        );
    }

    #[test]
    fn an_ip_trunk_without_auth_identified_by_ip_only_is_medium_under_the_default_order() {
        let text = "[carrier]\ntype=endpoint\nidentify_by=ip\n[carrier-id]\ntype=identify\n\
                    endpoint=carrier\nmatch=127.0.1.1\n[named]\ntype=endpoint\n\
                    identify_by=username,ip\n[named-id]\ntype=identify\nendpoint=named\n\
                    match=127.0.1.2\n";
        let got = lines(&[("pjsip.conf", text)]);
        assert_eq!(
            got,
            [
                (1, Severity::Medium, "endpoint-no-auth"),
                (8, Severity::High, "endpoint-no-auth")
            ]
        );
    }

    #[test]
    fn transports_on_loopback_pass_and_public_ones_on_the_sip_port_are_high() {
        let text =
            "[lo]\ntype=transport\nbind=127.0.0.1:5080\n[any]\ntype=transport\nbind=0.0.0.0\n\
                    [v6]\ntype=transport\nprotocol=tls\nbind=[::]\n[lan]\ntype=transport\n\
                    bind=192.168.1.2:5060\n[trunks]\ntype=transport\nbind=203.0.113.10:5070\n\
                    [ws]\ntype=transport\nprotocol=wss\nbind=0.0.0.0\n";
        let got: Vec<(u32, Severity)> = run(&[("pjsip.conf", text)])
            .into_iter()
            .filter(|f| f.3 == "transport-exposed")
            .map(|f| (f.1, f.2))
            .collect();
        assert_eq!(
            got,
            [
                (6, Severity::High),
                (10, Severity::High),
                (13, Severity::Medium),
                (16, Severity::Low)
            ]
        );
    }

    #[test]
    fn chan_sip_defaults_let_guests_in_on_every_address() {
        let got = lines(&[("sip.conf", "[general]\n")]);
        assert_eq!(
            got,
            [
                (1, Severity::High, "transport-exposed"),
                (1, Severity::Medium, "guest-calls")
            ]
        );
    }

    #[test]
    fn guests_reach_the_general_context_and_its_international_pattern() {
        let files = [
            (
                "sip.conf",
                "[general]\nallowguest=yes\ncontext=public\nbindaddr=127.0.0.1\nbindport=5080\n",
            ),
            (
                "extensions.conf",
                "[public]\nexten => _00.,1,Dial(PJSIP/${EXTEN}@trunk)\n",
            ),
        ];
        let found = audit(&conf::Files::with(&files)).findings;
        let dial = found
            .iter()
            .find(|f| f.check == "dial-international")
            .unwrap();
        assert!(dial.message.contains("chan_sip guests"), "{}", dial.message);
        assert!(found
            .iter()
            .any(|f| f.check == "guest-calls" && f.severity == Severity::High));
    }

    #[test]
    fn international_patterns_are_found_through_includes_only_from_caller_contexts() {
        let files = [
            (
                "pjsip.conf",
                "[2001]\ntype=endpoint\nauth=2001\ncontext=phones\n",
            ),
            (
                "extensions.conf",
                "[phones]\ninclude => intl,08:00-18:00\nexten => _X.,1,Hangup()\n\
                 [intl]\nexten => _011.,1,NoOp()\n same => n,Dial(PJSIP/${EXTEN}@trunk)\n\
                 [unused]\nexten => _00.,1,Dial(PJSIP/${EXTEN}@trunk)\n\
                 [pin]\nexten => _+.,1,Authenticate(1234)\n",
            ),
        ];
        let dial: Vec<u32> = run(&files)
            .into_iter()
            .filter(|f| f.3 == "dial-international")
            .map(|f| f.1)
            .collect();
        assert_eq!(dial, [5]);
    }

    #[test]
    fn voicemail_pins_are_judged_and_general_is_skipped() {
        let files = [(
            "voicemail.conf",
            "[general]\nformat=wav\n[default]\n3001 => 1234,A\n3002 => -3002,B\n3003 => 8253,C\n",
        )];
        let lines: Vec<u32> = run(&files)
            .into_iter()
            .filter(|f| f.3 == "pin-weak")
            .map(|f| f.1)
            .collect();
        assert_eq!(lines, [4, 5]);
    }

    #[test]
    fn text_and_json_show_file_line_severity_and_counts() {
        let report = audit(&conf::Files::with(&[(
            "pjsip.conf",
            "[a]\ntype=auth\npassword=Password1!\n",
        )]));
        let text = report.text(Path::new("/etc/asterisk"));
        assert!(text.contains(
            "/etc/asterisk/pjsip.conf:3: high: password-dictionary: [a] password is a common word"
        ), "{text}");
        assert!(
            text.ends_with("4 findings: 1 high, 1 medium, 0 low, 2 info\n"),
            "{text}"
        );
        assert!(!text.contains("Password1!"));
        let json: serde_json::Value =
            serde_json::from_str(&report.json(Path::new("/etc/asterisk"))).unwrap();
        assert_eq!(json["counts"]["high"], 1);
        assert_eq!(json["findings"][1]["file"], "/etc/asterisk/pjsip.conf");
        assert_eq!(json["findings"][1]["line"], 3);
        assert_eq!(json["findings"][1]["severity"], "high");
        assert!(!json.to_string().contains("Password1!"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_configs(
            pjsip in "(\\PC|[\\[\\]()!=>,;\\\\#_.\n-]|type=|auth|endpoint|transport|bind=|match=)*",
            sip in "(\\PC|[\\[\\]()!=>,;\n]|secret=|insecure=|general)*",
            voicemail in "(\\PC|[\\[\\]=>,\n-]|[0-9]{1,6})*",
            extensions in "(\\PC|[\\[\\]()!=>,;\n_.X-]|exten|same|include)*",
        ) {
            let report = audit(&conf::Files::with(&[
                ("pjsip.conf", &pjsip),
                ("sip.conf", &sip),
                ("voicemail.conf", &voicemail),
                ("extensions.conf", &extensions),
            ]));
            let _ = report.text(Path::new("/etc/asterisk"));
            let _ = report.json(Path::new("/etc/asterisk"));
        }
    }
}
