//! Asterisk's configuration file syntax, read without I/O: files come from a [`Source`], so the
//! parser is tested on strings and the audit's edge alone touches the disk.
//!
//! It follows what Asterisk's own loader does with the constructs the audited files use: `[name]`
//! sections with `(!)` (template), `(tpl1,tpl2)` (inherit, in order, from sections defined
//! earlier) and `(+)` (append to the last section of that name); `key = value` and `key => value`
//! (split at the first `=`); `;` comments, `;-- … --;` block comments (nested), `\;` for a
//! literal semicolon; `#include` and `#tryinclude` (relative names from the config directory,
//! `*` and `?` in the file name), continuing the current section. A section name may repeat
//! (pjsip's `[1001]` endpoint and `[1001]` aor), so sections are a list, and keys may repeat
//! (`match`, `exten`), so entries are too. A line it cannot read is a finding naming the file,
//! line and reason, never its text: it may hold a secret.

use super::{Finding, Severity};

/// A place in the configuration: a file as named from the config directory, and a line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub file: String,
    pub line: u32,
}

/// One `key = value`, where it was written (for an inherited entry, in the template).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub pos: Pos,
}

/// A `[section]` with its own entries after the inherited ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub pos: Pos,
    /// `(!)`: a template, not an object Asterisk creates.
    pub template: bool,
    pub entries: Vec<Entry>,
}

impl Section {
    /// The entry for `key` that Asterisk uses: the last one written (own entries follow
    /// inherited ones, so they override).
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.key.eq_ignore_ascii_case(key))
    }

    /// The value of `key`, or "" when it is not set.
    pub fn value(&self, key: &str) -> &str {
        self.get(key).map_or("", |e| e.value.as_str())
    }

    /// Every entry for `key`, in order (for keys that repeat).
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.key.eq_ignore_ascii_case(key))
    }
}

/// One configuration file with everything it includes, in reading order.
#[derive(Debug, Default)]
pub struct Config {
    pub sections: Vec<Section>,
}

impl Config {
    /// The sections Asterisk makes objects of: all but templates.
    pub fn objects(&self) -> impl Iterator<Item = &Section> {
        self.sections.iter().filter(|s| !s.template)
    }
}

/// Why a file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    NotFound,
    /// Any other failure, as the OS words it (it names no content).
    Other(String),
}

/// Where configuration files come from: the disk at the edge, a map in tests.
pub trait Source {
    /// The text of the file `name` (relative to the config directory, or absolute).
    fn read(&self, name: &str) -> Result<String, ReadError>;
    /// The files matching `pattern` (wildcards in its file name only), sorted.
    fn glob(&self, pattern: &str) -> Vec<String>;
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters and `?` for one.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer match with one backtrack point for the last `*`.
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Includes nested deeper than this are refused (a loop, or a tree no one maintains).
const MAX_INCLUDE_DEPTH: usize = 16;

/// What one line holds, once comments are gone.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Section { name: String, options: Vec<String> },
    Entry { key: String, value: String },
    Include { target: String, optional: bool },
    Exec,
}

/// Splits `text` into meaningful lines, numbered from 1; a line that means nothing to Asterisk
/// comes back as the reason it is malformed.
fn lines(text: &str) -> Vec<(u32, Result<Line, &'static str>)> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut last = 0u32;
    for (index, raw) in text.lines().enumerate() {
        let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
        last = number;
        let stripped = strip_comments(raw, &mut depth);
        let stripped = stripped.trim();
        if stripped.is_empty() {
            continue;
        }
        out.push((number, classify(stripped)));
    }
    if depth > 0 {
        out.push((last, Err("block comment `;--` is never closed with `--;`")));
    }
    out
}

/// The line without its comments; `depth` carries open `;--` block comments between lines.
fn strip_comments(raw: &str, depth: &mut usize) -> String {
    let bytes = raw.as_bytes();
    let mut kept = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if *depth > 0 {
            if rest.starts_with(b"--;") {
                *depth -= 1;
                i += 3;
            } else if rest.starts_with(b";--") {
                *depth += 1;
                i += 3;
            } else {
                i += 1;
            }
        } else if rest.starts_with(b"\\;") {
            kept.push(b';');
            i += 2;
        } else if rest.starts_with(b";--") {
            *depth += 1;
            i += 3;
        } else if rest[0] == b';' {
            break;
        } else {
            kept.push(rest[0]);
            i += 1;
        }
    }
    // Only ASCII was removed, at character boundaries, so the rest is still UTF-8.
    String::from_utf8_lossy(&kept).into_owned()
}

fn classify(line: &str) -> Result<Line, &'static str> {
    if let Some(rest) = line.strip_prefix('[') {
        let Some((name, after)) = rest.split_once(']') else {
            return Err("section header without a closing `]`");
        };
        let name = name.trim();
        if name.is_empty() {
            return Err("section header without a name");
        }
        let after = after.trim();
        let options = if after.is_empty() {
            Vec::new()
        } else if let Some(inner) = after.strip_prefix('(').and_then(|a| a.strip_suffix(')')) {
            inner.split(',').map(|o| o.trim().to_owned()).collect()
        } else {
            return Err("text after the section header that is not `(options)`");
        };
        return Ok(Line::Section {
            name: name.to_owned(),
            options,
        });
    }
    if let Some(directive) = line.strip_prefix('#') {
        let (word, arg) = directive
            .split_once(|c: char| c.is_whitespace() || c == '"' || c == '<')
            .map_or((directive, ""), |(w, _)| (w, &directive[w.len()..]));
        let target = arg
            .trim()
            .trim_matches(|c| c == '"' || c == '<' || c == '>')
            .trim();
        return match word.to_ascii_lowercase().as_str() {
            "include" | "tryinclude" if target.is_empty() => Err("#include without a file name"),
            "include" | "tryinclude" => Ok(Line::Include {
                target: target.to_owned(),
                optional: word.eq_ignore_ascii_case("tryinclude"),
            }),
            "exec" | "tryexec" => Ok(Line::Exec),
            _ => Err("unknown `#` directive"),
        };
    }
    let Some((key, value)) = line.split_once('=') else {
        return Err("neither a section, an `=` entry nor a directive");
    };
    let key = key.trim();
    if key.is_empty() {
        return Err("entry without a key before `=`");
    }
    let value = value.strip_prefix('>').unwrap_or(value).trim();
    Ok(Line::Entry {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

/// Reads `name` and its includes from `source`. `None` when `name` does not exist (whether that
/// matters is the caller's to say); every other problem is a finding in `findings`.
pub fn load(source: &impl Source, name: &str, findings: &mut Vec<Finding>) -> Option<Config> {
    let text = match source.read(name) {
        Ok(text) => text,
        Err(ReadError::NotFound) => return None,
        Err(ReadError::Other(reason)) => {
            findings.push(unreadable(name, None, &reason));
            return Some(Config::default());
        }
    };
    let mut loader = Loader {
        source,
        findings,
        config: Config::default(),
        current: None,
        stack: vec![name.to_owned()],
    };
    loader.file(name, &text);
    Some(loader.config)
}

fn unreadable(name: &str, at: Option<&Pos>, reason: &str) -> Finding {
    let included = at.map_or(String::new(), |at| {
        format!(" (included from {}:{})", at.file, at.line)
    });
    Finding::file(
        Severity::High,
        "unreadable",
        name,
        format!("cannot read{included}: {reason}; what it holds was not audited"),
    )
}

struct Loader<'a, S> {
    source: &'a S,
    findings: &'a mut Vec<Finding>,
    config: Config,
    /// The section entries go to (an index into `config.sections`).
    current: Option<usize>,
    /// The files being read, outermost first, to refuse include loops.
    stack: Vec<String>,
}

impl<S: Source> Loader<'_, S> {
    fn file(&mut self, name: &str, text: &str) {
        for (line, parsed) in lines(text) {
            let pos = Pos {
                file: name.to_owned(),
                line,
            };
            match parsed {
                Err(reason) => self.problem(pos, Severity::Low, "malformed", reason.to_owned()),
                Ok(Line::Section { name, options }) => self.section(name, &options, pos),
                Ok(Line::Entry { key, value }) => match self.current {
                    Some(index) => {
                        self.config.sections[index]
                            .entries
                            .push(Entry { key, value, pos })
                    }
                    None => self.problem(
                        pos,
                        Severity::Low,
                        "malformed",
                        "entry before any section: Asterisk refuses the file".to_owned(),
                    ),
                },
                Ok(Line::Include { target, optional }) => self.include(&target, optional, &pos),
                Ok(Line::Exec) => self.problem(
                    pos,
                    Severity::Info,
                    "exec",
                    "#exec output is not audited (the audit runs no commands)".to_owned(),
                ),
            }
        }
    }

    fn problem(&mut self, pos: Pos, severity: Severity, check: &'static str, message: String) {
        self.findings
            .push(Finding::at(severity, check, pos, None, message));
    }

    fn section(&mut self, name: String, options: &[String], pos: Pos) {
        if options.iter().any(|o| o == "+") {
            match self.config.sections.iter().rposition(|s| s.name == name) {
                Some(index) => {
                    self.current = Some(index);
                    return;
                }
                None => self.problem(
                    pos.clone(),
                    Severity::Low,
                    "malformed",
                    format!("`(+)` adds to [{name}], which is not defined before"),
                ),
            }
        }
        let mut section = Section {
            name,
            pos: pos.clone(),
            template: false,
            entries: Vec::new(),
        };
        for option in options.iter().filter(|o| !o.is_empty() && *o != "+") {
            if option == "!" {
                section.template = true;
                continue;
            }
            match self.config.sections.iter().find(|s| &s.name == option) {
                Some(template) => section.entries.extend(template.entries.iter().cloned()),
                None => self.problem(
                    pos.clone(),
                    Severity::Low,
                    "malformed",
                    format!(
                        "[{}] inherits from [{option}], which is not defined before: Asterisk \
                         refuses the file",
                        section.name
                    ),
                ),
            }
        }
        self.config.sections.push(section);
        self.current = Some(self.config.sections.len() - 1);
    }

    fn include(&mut self, target: &str, optional: bool, at: &Pos) {
        let names = if target.contains(['*', '?']) {
            self.source.glob(target)
        } else {
            vec![target.to_owned()]
        };
        if names.is_empty() && !optional {
            self.missing(target, at);
        }
        for name in names {
            if self.stack.contains(&name) || self.stack.len() >= MAX_INCLUDE_DEPTH {
                self.problem(
                    at.clone(),
                    Severity::Low,
                    "malformed",
                    format!("#include {name} loops back or nests too deep; not followed"),
                );
                continue;
            }
            match self.source.read(&name) {
                Ok(text) => {
                    self.stack.push(name.clone());
                    self.file(&name, &text);
                    self.stack.pop();
                }
                Err(ReadError::NotFound) if optional => {}
                Err(ReadError::NotFound) => self.missing(&name, at),
                Err(ReadError::Other(reason)) => {
                    self.findings.push(unreadable(&name, Some(at), &reason))
                }
            }
        }
    }

    fn missing(&mut self, name: &str, at: &Pos) {
        self.problem(
            at.clone(),
            Severity::Medium,
            "missing-include",
            format!("#include {name}: no such file; Asterisk refuses to load this file with it"),
        );
    }
}

#[cfg(test)]
pub(super) use tests::Files;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Files in memory, for tests here and in the sibling modules.
    #[derive(Default)]
    pub struct Files(pub BTreeMap<String, Result<String, ReadError>>);

    impl Files {
        pub fn with(files: &[(&str, &str)]) -> Self {
            Files(
                files
                    .iter()
                    .map(|(n, t)| (n.to_string(), Ok(t.to_string())))
                    .collect(),
            )
        }
    }

    impl Source for Files {
        fn read(&self, name: &str) -> Result<String, ReadError> {
            self.0
                .get(name)
                .cloned()
                .unwrap_or(Err(ReadError::NotFound))
        }
        fn glob(&self, pattern: &str) -> Vec<String> {
            self.0
                .keys()
                .filter(|k| wildcard_match(pattern, k))
                .cloned()
                .collect()
        }
    }

    fn parse(files: &[(&str, &str)]) -> (Config, Vec<Finding>) {
        let mut findings = Vec::new();
        let config = load(&Files::with(files), "a.conf", &mut findings).unwrap();
        (config, findings)
    }

    fn at(f: &Finding) -> (String, u32, &'static str) {
        (f.file.clone(), f.line.unwrap_or(0), f.check)
    }

    #[test]
    fn sections_entries_arrows_and_comments() {
        let (config, findings) = parse(&[(
            "a.conf",
            "; top\n[one] ; c\nkey = value ; c\nexten => _X.,1,Set(A=B)\n;-- block\n[hidden]\n--; \
             x = y\nescaped = a\\;b\n",
        )]);
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(config.sections.len(), 1);
        let one = &config.sections[0];
        assert_eq!(one.value("key"), "value");
        assert_eq!(one.value("exten"), "_X.,1,Set(A=B)");
        assert_eq!(one.value("x"), "y");
        assert_eq!(one.value("escaped"), "a;b");
        assert_eq!(one.get("x").unwrap().pos.line, 7);
    }

    #[test]
    fn nested_block_comments_close_in_order() {
        let (config, findings) = parse(&[("a.conf", "[s]\n;-- a ;-- b --; c\nk=v --; real=1\n")]);
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(config.sections[0].value("real"), "1");
        assert_eq!(config.sections[0].value("k"), "");
    }

    #[test]
    fn templates_inherit_in_order_and_own_entries_override() {
        let (config, findings) = parse(&[(
            "a.conf",
            "[t1](!)\na=1\nb=1\n[t2](!)\nb=2\nc=2\n[obj](t1,t2)\nc=3\n",
        )]);
        assert!(findings.is_empty(), "{findings:?}");
        let objects: Vec<&Section> = config.objects().collect();
        assert_eq!(objects.len(), 1);
        let obj = objects[0];
        assert_eq!(
            (obj.value("a"), obj.value("b"), obj.value("c")),
            ("1", "2", "3")
        );
        assert_eq!(
            obj.get("a").unwrap().pos.line,
            2,
            "inherited entries keep their line"
        );
        assert!(config.sections[0].template);
    }

    #[test]
    fn template_and_inheritance_combine_and_plus_appends() {
        let (config, findings) = parse(&[(
            "a.conf",
            "[base](!)\nx=1\n[mid](!,base)\ny=2\n[same]\na=1\n[same]\nb=1\n[same](+)\nc=1\n[o](mid)\n",
        )]);
        assert!(findings.is_empty(), "{findings:?}");
        assert!(config.sections[1].template);
        let same: Vec<&Section> = config
            .sections
            .iter()
            .filter(|s| s.name == "same")
            .collect();
        assert_eq!(same.len(), 2, "a repeated name is a new section");
        assert_eq!(same[1].value("c"), "1");
        let o = config.sections.last().unwrap();
        assert_eq!((o.value("x"), o.value("y")), ("1", "2"));
    }

    #[test]
    fn includes_continue_the_section_and_globs_are_sorted() {
        let (config, findings) = parse(&[
            (
                "a.conf",
                "[s]\n#include \"inc.conf\"\n#include <d/*.conf>\n#tryinclude gone.conf\n",
            ),
            ("inc.conf", "k=1\n"),
            ("d/2.conf", "[two]\n"),
            ("d/1.conf", "[one]\n"),
            ("d/x.txt", "[nope]\n"),
        ]);
        assert!(findings.is_empty(), "{findings:?}");
        let names: Vec<&str> = config.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s", "one", "two"]);
        assert_eq!(
            config.sections[0].get("k").unwrap().pos,
            Pos {
                file: "inc.conf".into(),
                line: 1
            }
        );
    }

    #[test]
    fn missing_unreadable_and_looping_includes_are_findings() {
        let mut files = Files::with(&[(
            "a.conf",
            "[s]\n#include gone.conf\n#include locked.conf\n#include a.conf\n#include d/*.x\n",
        )]);
        files.0.insert(
            "locked.conf".into(),
            Err(ReadError::Other("Permission denied (os error 13)".into())),
        );
        let mut findings = Vec::new();
        load(&files, "a.conf", &mut findings).unwrap();
        let seen: Vec<(String, u32, &str)> = findings.iter().map(at).collect();
        assert_eq!(
            seen,
            [
                ("a.conf".into(), 2, "missing-include"),
                ("locked.conf".into(), 0, "unreadable"),
                ("a.conf".into(), 4, "malformed"),
                ("a.conf".into(), 5, "missing-include"),
            ]
        );
        assert_eq!(findings[1].severity, Severity::High);
        assert!(findings[1].message.contains("included from a.conf:3"));
    }

    #[test]
    fn malformed_lines_are_reported_without_their_text() {
        let (config, findings) = parse(&[(
            "a.conf",
            "orphan=hunter2\n[ok]\njustaword hunter2\n[broken\n[x] junk\n= nokey\n#frobnicate\n\
             #include\n[]\n;-- open",
        )]);
        assert_eq!(config.sections.len(), 1);
        let lines: Vec<u32> = findings.iter().map(|f| at(f).1).collect();
        assert_eq!(lines, [1, 3, 4, 5, 6, 7, 8, 9, 10]);
        for f in &findings {
            assert!(!f.message.contains("hunter2") && !f.message.contains("nokey"));
        }
    }

    #[test]
    fn wildcards_match_like_a_shell() {
        assert!(wildcard_match("d/*.conf", "d/a.conf"));
        assert!(wildcard_match("d/?.conf", "d/a.conf"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("d/*.conf", "d/a.conf.bak"));
        assert!(wildcard_match("*a*b", "xxaxxb"));
        assert!(!wildcard_match("a?", "a"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(text in "(\\PC|[\\[\\]()!=>;\\\\#\n-])*") {
            let mut findings = Vec::new();
            let files = Files::with(&[("a.conf", &text), ("b.conf", &text)]);
            let _ = load(&files, "a.conf", &mut findings);
        }
    }
}
