//! Why a datagram was not accepted as SIP. Every variant is a bounded label (`as_str`) so the
//! relay can count drops by kind without ever putting packet bytes into a metric.

use thiserror::Error;

/// A header the inspector checks for presence or uniqueness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// `Via` / `v`
    Via,
    /// `From` / `f`
    From,
    /// `To` / `t`
    To,
    /// `Call-ID` / `i`
    CallId,
    /// `CSeq`
    CSeq,
    /// `Content-Length` / `l`
    ContentLength,
}

impl Header {
    /// The header's canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            Header::Via => "Via",
            Header::From => "From",
            Header::To => "To",
            Header::CallId => "Call-ID",
            Header::CSeq => "CSeq",
            Header::ContentLength => "Content-Length",
        }
    }
}

impl std::fmt::Display for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why [`crate::SipView::parse`] refused a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The first line is neither a SIP request line nor a SIP status line.
    #[error("not SIP: the first line is not a SIP/2.0 request or status line")]
    NotSip,
    /// A header line has no colon, or the header block has a bare CR or NUL where a line belongs.
    #[error("malformed header line")]
    BadHeaderLine,
    /// The header block never ends with an empty line.
    #[error("header block not terminated by an empty line")]
    Unterminated,
    /// A mandatory header is absent.
    #[error("mandatory header {0} missing")]
    MissingHeader(Header),
    /// A header that may appear once appears twice.
    #[error("header {0} appears more than once")]
    DuplicateHeader(Header),
    /// A header value the policy relies on does not parse (From/To URI, empty Call-ID).
    #[error("header {0} has an invalid value")]
    BadValue(Header),
    /// Content-Length is not a non-negative decimal that fits in memory.
    #[error("Content-Length is not a valid length")]
    BadContentLength,
    /// Content-Length announces more body than the datagram holds.
    #[error("Content-Length exceeds the bytes in the datagram")]
    ContentLengthBeyondDatagram,
    /// CSeq is not `number method`, or its number exceeds 2^32-1.
    #[error("CSeq is not a 32-bit sequence number and a method")]
    BadCSeq,
    /// A request whose CSeq method differs from its request-line method.
    #[error("CSeq method differs from the request method")]
    CSeqMethodMismatch,
}

impl ParseError {
    /// A short, bounded label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ParseError::NotSip => "not_sip",
            ParseError::BadHeaderLine => "bad_header_line",
            ParseError::Unterminated => "unterminated",
            ParseError::MissingHeader(_) => "missing_header",
            ParseError::DuplicateHeader(_) => "duplicate_header",
            ParseError::BadValue(_) => "bad_value",
            ParseError::BadContentLength => "bad_content_length",
            ParseError::ContentLengthBeyondDatagram => "content_length_beyond_datagram",
            ParseError::BadCSeq => "bad_cseq",
            ParseError::CSeqMethodMismatch => "cseq_method_mismatch",
        }
    }
}
