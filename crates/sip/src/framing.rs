//! Stream framing (RFC 3261 section 18.3): where one message ends in the bytes of a TCP or TLS
//! connection, and the CRLF keep-alives of RFC 5626 section 4.4.1 between messages.
//!
//! On a stream the Content-Length header is the only way to find a message's end, so it is
//! mandatory: a message without one cannot be framed, and neither can anything after it. The
//! framer only reads the header block far enough to find Content-Length; judging the message is
//! left to [`SipView`](crate::SipView) and the policy. No I/O and no copying: the caller keeps a
//! buffer, asks for the next frame, and consumes that many bytes.

use crate::error::Header;
use crate::view::{parse_content_length, Lines};

/// What starts the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A whole SIP message of this many bytes (header block, blank line, Content-Length body).
    Message(usize),
    /// A double CRLF keep-alive ping (4 bytes), to be answered with a single CRLF pong.
    Ping,
    /// A lone CRLF (2 bytes): a pong, or blank lines before a start line (RFC 3261 section
    /// 7.5). Skipped.
    Blank,
}

impl Frame {
    /// How many bytes of the buffer the frame takes.
    pub fn byte_len(self) -> usize {
        match self {
            Frame::Message(len) => len,
            Frame::Ping => 4,
            Frame::Blank => 2,
        }
    }
}

/// Why the stream cannot be framed. The connection's bytes can no longer be split into
/// messages, so the only way on is to close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header block ended without Content-Length, mandatory on streams.
    #[error("no Content-Length on a stream")]
    MissingContentLength,
    /// Content-Length is not a decimal, or appears twice.
    #[error("Content-Length is not a single valid length")]
    BadContentLength,
    /// The message (or its header block, still unterminated) is longer than the limit.
    #[error("message longer than the limit")]
    TooLarge,
}

impl FrameError {
    /// A metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameError::MissingContentLength => "missing_content_length",
            FrameError::BadContentLength => "bad_content_length",
            FrameError::TooLarge => "too_large",
        }
    }
}

/// The frame at the start of `buf`, `Ok(None)` while more bytes are needed. A message longer
/// than `max_message` bytes is an error as soon as that is certain, so a peer cannot make the
/// caller buffer more than `max_message` bytes.
pub fn next_frame(buf: &[u8], max_message: usize) -> Result<Option<Frame>, FrameError> {
    match buf {
        [] | [b'\r'] | [b'\r', b'\n'] | [b'\r', b'\n', b'\r'] => return Ok(None),
        [b'\r', b'\n', b'\r', b'\n', ..] => return Ok(Some(Frame::Ping)),
        [b'\r', b'\n', ..] => return Ok(Some(Frame::Blank)),
        _ => {}
    }
    let mut lines = Lines { buf, pos: 0 };
    let mut content_length = None;
    let body_start = loop {
        let Some(line) = lines.next_line() else {
            if buf.len() > max_message {
                return Err(FrameError::TooLarge);
            }
            return Ok(None);
        };
        // A line that ends beyond the limit is too large whatever it says, as it would have
        // been had it arrived in pieces: the verdict must not depend on how bytes were split.
        if lines.pos > max_message {
            return Err(FrameError::TooLarge);
        }
        if line.is_empty() {
            break lines.pos;
        }
        if let Some(value) = content_length_value(line) {
            let length = parse_content_length(value).map_err(|_| FrameError::BadContentLength)?;
            if content_length.replace(length).is_some() {
                return Err(FrameError::BadContentLength);
            }
        }
    };
    let length = content_length.ok_or(FrameError::MissingContentLength)?;
    let total = body_start
        .checked_add(length)
        .filter(|&total| total <= max_message)
        .ok_or(FrameError::TooLarge)?;
    Ok((buf.len() >= total).then_some(Frame::Message(total)))
}

/// The value of a `Content-Length` (or compact `l`) header line, if `line` is one.
fn content_length_value(line: &[u8]) -> Option<&[u8]> {
    let colon = memchr::memchr(b':', line)?;
    let name = line[..colon].trim_ascii();
    let long = Header::ContentLength.as_str().as_bytes();
    (name.eq_ignore_ascii_case(long) || name.eq_ignore_ascii_case(b"l")).then(|| &line[colon + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 4096;

    fn message(body: &str) -> String {
        format!(
            "MESSAGE sip:1001@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.7:5060;branch=z9hG4bK1\r\n\
             Call-ID: a@b\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// Regression (found by the `frame` fuzz target): a header block longer than the limit
    /// and without Content-Length (or with a bad one) was `MissingContentLength` (or
    /// `BadContentLength`) when it arrived whole but `TooLarge` when it arrived in pieces, so
    /// the drop was counted under either reason.
    #[test]
    fn an_oversized_header_block_is_too_large_however_it_arrives() {
        let text = b"OPTIONS sip:a@b SIP/2.0\r\nSubject: x\r\n\r\n";
        let max = text.len() - 5;
        assert_eq!(next_frame(text, max), Err(FrameError::TooLarge));
        assert_eq!(next_frame(&text[..max + 1], max), Err(FrameError::TooLarge));
        let bad_length = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n";
        assert_eq!(next_frame(bad_length, 10), Err(FrameError::TooLarge));
    }

    #[test]
    fn a_whole_message_is_one_frame_with_its_body() {
        let text = message("hello body");
        assert_eq!(
            next_frame(text.as_bytes(), MAX),
            Ok(Some(Frame::Message(text.len())))
        );
    }

    #[test]
    fn bytes_after_the_body_belong_to_the_next_frame() {
        let first = message("one");
        let both = format!("{first}{}", message("two"));
        assert_eq!(
            next_frame(both.as_bytes(), MAX),
            Ok(Some(Frame::Message(first.len())))
        );
    }

    #[test]
    fn every_proper_prefix_of_a_message_is_incomplete() {
        let text = message("some body");
        for end in 0..text.len() {
            assert_eq!(next_frame(&text.as_bytes()[..end], MAX), Ok(None), "{end}");
        }
    }

    #[test]
    fn double_crlf_is_a_ping_and_single_crlf_a_blank() {
        assert_eq!(next_frame(b"\r\n\r\n", MAX), Ok(Some(Frame::Ping)));
        assert_eq!(next_frame(b"\r\n\r\nINVITE", MAX), Ok(Some(Frame::Ping)));
        assert_eq!(next_frame(b"\r\nINVITE", MAX), Ok(Some(Frame::Blank)));
        assert_eq!(next_frame(b"\r\n\r", MAX), Ok(None));
    }

    #[test]
    fn missing_content_length_is_refused_once_the_headers_end() {
        let text = "OPTIONS sip:a@192.0.2.1 SIP/2.0\r\nCall-ID: x\r\n";
        assert_eq!(next_frame(text.as_bytes(), MAX), Ok(None));
        let ended = format!("{text}\r\n");
        assert_eq!(
            next_frame(ended.as_bytes(), MAX),
            Err(FrameError::MissingContentLength)
        );
    }

    #[test]
    fn compact_and_spaced_content_length_names_count() {
        let compact = "OPTIONS sip:a@192.0.2.1 SIP/2.0\r\nl: 2\r\n\r\nab";
        assert_eq!(
            next_frame(compact.as_bytes(), MAX),
            Ok(Some(Frame::Message(compact.len())))
        );
        let spaced = "OPTIONS sip:a@192.0.2.1 SIP/2.0\r\ncontent-LENGTH : 0\r\n\r\n";
        assert_eq!(
            next_frame(spaced.as_bytes(), MAX),
            Ok(Some(Frame::Message(spaced.len())))
        );
    }

    #[test]
    fn two_or_invalid_content_lengths_are_refused() {
        let twice = "OPTIONS sip:a@192.0.2.1 SIP/2.0\r\nContent-Length: 0\r\nl: 5\r\n\r\n";
        assert_eq!(
            next_frame(twice.as_bytes(), MAX),
            Err(FrameError::BadContentLength)
        );
        let bad = "OPTIONS sip:a@192.0.2.1 SIP/2.0\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(
            next_frame(bad.as_bytes(), MAX),
            Err(FrameError::BadContentLength)
        );
    }

    #[test]
    fn oversized_messages_are_refused_before_they_are_buffered() {
        let text = message(&"x".repeat(200));
        assert_eq!(
            next_frame(text.as_bytes(), 150),
            Err(FrameError::TooLarge),
            "Content-Length announces more than the limit"
        );
        let endless = format!("OPTIONS sip:a@192.0.2.1 SIP/2.0\r\nX: {}", "y".repeat(300));
        assert_eq!(
            next_frame(endless.as_bytes(), 200),
            Err(FrameError::TooLarge)
        );
        let huge = "OPTIONS sip:a@192.0.2.1 SIP/2.0\r\nl: 99999999999999999999\r\n\r\n";
        assert!(next_frame(huge.as_bytes(), MAX).is_err());
    }
}
