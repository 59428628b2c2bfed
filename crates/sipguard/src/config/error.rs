//! What is wrong with a configuration, one [`Problem`] per mistake, all reported together.
//!
//! Every problem renders as one line an operator can act on without opening the docs:
//! `FILE[:LINE:COLUMN]: KEY.PATH: "value": expected ...`, parts left out when they do not apply.

use std::fmt;

/// Everything wrong with one configuration, gathered before failing (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(.problems))]
pub struct ConfigErrors {
    problems: Vec<Problem>,
}

impl ConfigErrors {
    pub(crate) fn new(problems: Vec<Problem>) -> Self {
        debug_assert!(!problems.is_empty(), "ConfigErrors without a problem");
        ConfigErrors { problems }
    }

    /// The problems, in the order they appear in the file (unknown keys and the shape error
    /// first, as the parser meets them; then value problems key by key).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// True when the file could not be read at all, as opposed to read and found invalid.
    pub fn is_unreadable(&self) -> bool {
        self.problems
            .iter()
            .any(|p| p.kind == ProblemKind::Unreadable)
    }
}

struct Lines<'a>(&'a [Problem]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// One mistake in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What kind of mistake, for callers that treat them differently (exit codes, tests).
    pub kind: ProblemKind,
    /// Where the setting came from: the file name, `command line`, or the built-in default.
    pub origin: String,
    /// Line and column (1-based) when the YAML parser knows them; value problems found after
    /// parsing are located by `path` instead.
    pub location: Option<(u64, u64)>,
    /// The key, as `sessions.idle_timeout` or `listen.udp[1]`, or the flag (`--listen`); empty
    /// for the file as a whole.
    pub path: String,
    /// The offending value as written, quoted.
    pub value: Option<String>,
    /// What is wrong, usually `expected ...`.
    pub message: String,
}

/// The kinds of [`Problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The file could not be read.
    Unreadable,
    /// Not YAML, not UTF-8, a duplicate key, or more than one document.
    Syntax,
    /// A key this version does not know (often a typo).
    UnknownKey,
    /// A value of the wrong shape: a scalar where a list belongs, a list where an address does.
    WrongShape,
    /// A value of the right shape that does not make sense: a bad address, a zero timeout.
    InvalidValue,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        if let Some(value) = &self.value {
            write!(f, ": {value}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Longest value quoted in a message; a pasted blob should not flood the terminal.
const MAX_QUOTED_CHARS: usize = 80;

/// `value` as it appears in messages: in double quotes, control characters escaped, cut short
/// when long.
pub(crate) fn quote(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}
