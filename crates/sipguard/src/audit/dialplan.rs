//! Which phone contexts can dial abroad: extensions.conf contexts reached from an endpoint's,
//! peer's or guests' `context=` (and everything they `include =>`), searched for pattern
//! extensions that match an international number (`00…`, `011…`, `+…`) and place a call with
//! nothing in the way.
//!
//! A pattern is tested against sample numbers, with Asterisk's own pattern rules (`X`, `Z`, `N`,
//! `[…]`, `-` ignored, `.` one or more characters and `!` zero or more, each ending the pattern),
//! so `_X.`, `_0.` and `_00XXXXXXXXXX` are all found. An extension counts as restricted when it
//! asks for a PIN (`Authenticate`, `VMAuthenticate`) and as harmless when all it does is
//! answer, play or hang up; `Goto`s into other contexts are not followed.

use super::accounts::Caller;
use super::conf::{Config, Pos};
use super::{Finding, Severity};
use std::collections::{BTreeMap, BTreeSet};

/// International dialling prefixes: most of the world, North America, and E.164 `+`.
const PREFIXES: [&str; 3] = ["00", "011", "+"];
/// Digits after the prefix: a country code and a subscriber number, cut at every length from
/// 8 to 15 (the E.164 maximum); shorter cuts would take national patterns such as
/// `_0[1-9]XXXXXXXX` for international ones.
const SAMPLE: &str = "442079460958123";

/// Applications that place no call (an extension made only of these is harmless).
const HARMLESS: &[&str] = &[
    "answer",
    "busy",
    "congestion",
    "hangup",
    "log",
    "noop",
    "playback",
    "playtones",
    "progress",
    "ringing",
    "set",
    "verbose",
    "wait",
];
/// Applications that ask the caller for a PIN before going on.
const RESTRICTING: &[&str] = &["authenticate", "vmauthenticate"];

/// One extension of a context: its name and the applications of its priorities.
struct Extension<'a> {
    name: &'a str,
    pos: &'a Pos,
    apps: Vec<String>,
}

/// A context's extensions and includes, gathered from every section of that name.
#[derive(Default)]
struct Context<'a> {
    extensions: Vec<Extension<'a>>,
    includes: Vec<&'a str>,
}

fn contexts(config: &Config) -> BTreeMap<&str, Context<'_>> {
    let mut contexts: BTreeMap<&str, Context> = BTreeMap::new();
    for section in config
        .objects()
        .filter(|s| s.name != "general" && s.name != "globals")
    {
        let context = contexts.entry(section.name.as_str()).or_default();
        let mut last: Option<&str> = None;
        for entry in &section.entries {
            let key = entry.key.to_ascii_lowercase();
            let (name, rest) = match key.as_str() {
                "exten" => match entry.value.split_once(',') {
                    Some((name, rest)) => (name.trim(), rest),
                    None => continue,
                },
                "same" => match last {
                    Some(name) => (name, entry.value.as_str()),
                    None => continue,
                },
                "include" => {
                    let target = entry.value.split(',').next().unwrap_or("").trim();
                    context.includes.push(target);
                    continue;
                }
                _ => continue,
            };
            last = Some(name);
            let (priority, app) = rest.split_once(',').unwrap_or((rest, ""));
            if priority.trim().eq_ignore_ascii_case("hint") {
                continue;
            }
            let app = app
                .split(['(', ','])
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            match context.extensions.iter_mut().find(|e| e.name == name) {
                Some(extension) => extension.apps.push(app),
                None => context.extensions.push(Extension {
                    name,
                    pos: &entry.pos,
                    apps: vec![app],
                }),
            }
        }
    }
    contexts
}

/// One element of an extension pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Element {
    /// A set of characters, as ranges (`X` is `0-9`, a literal `5` is `5-5`).
    Set(Vec<(char, char)>),
    /// `.` (one or more) or `!` (zero or more): the rest of the number, whatever it is.
    Rest { at_least: usize },
}

/// The elements of `pattern` (`_` already removed); `None` for a pattern Asterisk would reject
/// (an unclosed `[`).
fn compile(pattern: &str) -> Option<Vec<Element>> {
    let mut elements = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        let set = match c.to_ascii_uppercase() {
            'X' => vec![('0', '9')],
            'Z' => vec![('1', '9')],
            'N' => vec![('2', '9')],
            '-' => continue,
            '.' | '!' => {
                elements.push(Element::Rest {
                    at_least: usize::from(c == '.'),
                });
                break;
            }
            '[' => {
                let inside: Vec<char> = chars.by_ref().take_while(|&c| c != ']').collect();
                let mut ranges = Vec::new();
                let mut i = 0;
                while i < inside.len() {
                    if i + 2 < inside.len() && inside[i + 1] == '-' {
                        ranges.push((inside[i], inside[i + 2]));
                        i += 3;
                    } else {
                        ranges.push((inside[i], inside[i]));
                        i += 1;
                    }
                }
                if ranges.is_empty() {
                    return None;
                }
                ranges
            }
            _ => vec![(c, c)],
        };
        elements.push(Element::Set(set));
    }
    Some(elements)
}

fn matches(elements: &[Element], number: &str) -> bool {
    let mut chars = number.chars();
    for element in elements {
        match element {
            Element::Rest { at_least } => return chars.count() >= *at_least,
            Element::Set(ranges) => match chars.next() {
                Some(c) if ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) => {}
                _ => return false,
            },
        }
    }
    chars.next().is_none()
}

/// Whether the extension `name` is a pattern that matches some international number.
fn international(name: &str) -> bool {
    let name = name.split('/').next().unwrap_or(name);
    let Some(pattern) = name.strip_prefix('_') else {
        return false;
    };
    let Some(elements) = compile(pattern) else {
        return false;
    };
    PREFIXES.iter().any(|prefix| {
        (8..=SAMPLE.len())
            .any(|digits| matches(&elements, &format!("{prefix}{}", &SAMPLE[..digits])))
    })
}

/// Reports every international pattern the callers' contexts reach, once per extension, naming
/// the callers that reach it.
pub fn check(config: &Config, callers: &[Caller], findings: &mut Vec<Finding>) {
    let contexts = contexts(config);
    // (file, line of the extension) -> (context, pattern, callers reaching it).
    let mut reached: BTreeMap<&Pos, (&str, &str, BTreeSet<&str>)> = BTreeMap::new();
    for caller in callers {
        let mut seen = BTreeSet::new();
        let mut queue = vec![caller.context.as_str()];
        while let Some(name) = queue.pop() {
            let Some(context) = contexts.get(name) else {
                continue;
            };
            if !seen.insert(name) {
                continue;
            }
            queue.extend(context.includes.iter().copied());
            for extension in &context.extensions {
                if !international(extension.name) || !places_calls(&extension.apps) {
                    continue;
                }
                reached
                    .entry(extension.pos)
                    .or_insert_with(|| (name, extension.name, BTreeSet::new()))
                    .2
                    .insert(caller.who.as_str());
            }
        }
    }
    for (pos, (context, pattern, who)) in reached {
        let who: Vec<&str> = who.into_iter().collect();
        let shown = if who.len() > 3 {
            format!("{} and {} more", who[..3].join(", "), who.len() - 3)
        } else {
            who.join(", ")
        };
        findings.push(Finding::at(
            Severity::High,
            "dial-international",
            pos.clone(),
            Some(context),
            format!(
                "{pattern} dials international numbers with nothing asking for a PIN, \
                 reachable by {shown}"
            ),
        ));
    }
}

fn places_calls(apps: &[String]) -> bool {
    !apps.iter().any(|a| RESTRICTING.contains(&a.as_str()))
        && !apps.iter().all(|a| HARMLESS.contains(&a.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn international_patterns_are_recognised() {
        for pattern in [
            "_00.",
            "_011.",
            "_+.",
            "_X.",
            "_.",
            "_!",
            "_0.",
            "_00XXXXXXXXXX",
            "_[0+].",
            "_00-X.",
            "_X./1001",
        ] {
            assert!(international(pattern), "{pattern}");
        }
    }

    #[test]
    fn local_and_national_patterns_are_not() {
        for pattern in [
            "_NXXNXXXXXX",
            "_1NXXNXXXXXX",
            "_2XXX",
            "_0[1-9]XXXXXXXX",
            "1001",
            "00",
            "_[",
            "_[]",
        ] {
            assert!(!international(pattern), "{pattern}");
        }
    }

    #[test]
    fn harmless_and_pin_protected_extensions_place_no_unrestricted_call() {
        let apps = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!places_calls(&apps(&["answer", "playback", "hangup"])));
        assert!(!places_calls(&apps(&["authenticate", "dial"])));
        assert!(places_calls(&apps(&["noop", "dial"])));
        assert!(places_calls(&apps(&["goto"])));
    }
}
