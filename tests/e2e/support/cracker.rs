//! Password crackers written for the tests, each guessing one extension's password from a
//! wordlist with real digest answers (support/ua.rs), in one of the ways crackers vary what
//! identifies an attempt:
//!
//! - [`Style::Svcrack`]: what svcrack does. A bare REGISTER (a new Call-ID, `CSeq: 1`) fetches a
//!   challenge; every guess then answers the challenge of the 401 the last request got, with that
//!   request's Call-ID and `CSeq: 2`, so that every guess looks like a retransmission of one
//!   request.
//! - [`Style::NewCallId`]: each guess fetches its own challenge on a Call-ID of its own (bare
//!   REGISTER CSeq 1, the guess CSeq 2), as a tool that starts every attempt afresh.
//! - [`Style::IncrementingCSeq`]: one Call-ID, the CSeq going up with every request, each guess
//!   answering the last 401's challenge, as a phone retrying would.
//!
//! Like svcrack with `-t`, a cracker sends its next request `pace` after the last answer, waits
//! `ANSWER_TIMEOUT` for an answer and never retransmits. After an unanswered request it fetches a
//! fresh challenge; it stops at the password, at the end of the wordlist, after `GIVE_UP`
//! unanswered requests in a row, or when its connection is closed.

use super::ua::{call_id, Ua};
use std::time::Duration;

/// How long a cracker waits for each answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Unanswered requests in a row after which it gives up.
const GIVE_UP: usize = 3;

/// How a cracker lays out its attempts (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// One Call-ID, `CSeq: 2` for every guess.
    Svcrack,
    /// A fresh challenge and a new Call-ID for every guess.
    NewCallId,
    /// One Call-ID, CSeq incremented on every request.
    IncrementingCSeq,
}

/// What a cracking run came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cracked {
    /// Guesses sent (REGISTERs with credentials).
    pub guesses: usize,
    /// Guesses the PBX refused (a 401 or 403 came back).
    pub refused: usize,
    /// The password, when a guess got a 200.
    pub found: Option<String>,
    /// Why it stopped.
    pub stopped: String,
}

/// A cracker for the user of `ua`, trying `words` in order.
#[derive(Debug)]
pub struct Cracker {
    ua: Ua,
    style: Style,
    words: Vec<String>,
    pace: Duration,
}

impl Cracker {
    /// A cracker sending through `ua` (its user is the extension attacked).
    pub fn new(ua: Ua, style: Style, words: Vec<String>, pace: Duration) -> Self {
        Cracker {
            ua,
            style,
            words,
            pace,
        }
    }

    /// Runs until the password is found, the words run out, or the target stops answering.
    pub fn run(mut self) -> anyhow::Result<Cracked> {
        let mut cracked = Cracked {
            guesses: 0,
            refused: 0,
            found: None,
            stopped: "the wordlist ran out".to_owned(),
        };
        let mut words = std::mem::take(&mut self.words).into_iter().peekable();
        let mut call_id = call_id("crack");
        let mut cseq = 0;
        let mut challenge = None;
        let mut silent = 0;
        while words.peek().is_some() {
            let (request, word) = match challenge.take() {
                None => {
                    if self.style != Style::IncrementingCSeq {
                        call_id = super::ua::call_id("crack");
                    }
                    cseq = match self.style {
                        Style::IncrementingCSeq => cseq + 1,
                        Style::Svcrack | Style::NewCallId => 1,
                    };
                    (self.ua.register_request(&call_id, cseq, None), None)
                }
                Some(challenge) => {
                    let word = words.next().unwrap_or_default();
                    cseq = match self.style {
                        Style::IncrementingCSeq => cseq + 1,
                        Style::Svcrack | Style::NewCallId => 2,
                    };
                    let unsigned = self.ua.register_request(&call_id, cseq, None);
                    let authorization = self.ua.authorization(&unsigned, &challenge, &word);
                    let request = self
                        .ua
                        .register_request(&call_id, cseq, Some(&authorization));
                    cracked.guesses += 1;
                    (request, Some(word))
                }
            };
            let answer = match self.ua.transact(&request, false, ANSWER_TIMEOUT) {
                Ok(answer) => answer,
                Err(e) => {
                    cracked.stopped = format!("{e:#}");
                    break;
                }
            };
            let Some(answer) = answer else {
                silent += 1;
                if silent == GIVE_UP {
                    cracked.stopped = format!("{GIVE_UP} requests in a row went unanswered");
                    break;
                }
                continue;
            };
            silent = 0;
            match answer.status {
                200 if word.is_some() => {
                    cracked.found = word;
                    cracked.stopped = "found the password".to_owned();
                    break;
                }
                401 | 403 | 407 if word.is_some() => cracked.refused += 1,
                _ => {}
            }
            // A tool starting each attempt afresh ignores the refusal's challenge.
            if self.style != Style::NewCallId || word.is_none() {
                challenge = answer.challenge();
            }
            // The pace is the tool's own rate (svcrack's -t), not a wait for anything.
            std::thread::sleep(self.pace);
        }
        Ok(cracked)
    }
}
