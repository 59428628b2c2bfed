//! Full validation through `rsip`: a complete, allocating parse into a message tree.
//!
//! The relay does not need it per packet (the view carries every field the policy reads); it is
//! the reference the zero-copy view is checked against in property tests and benchmarks, and the
//! way to get an owned message where one is wanted.

/// Parses `bytes` completely, or says why not.
pub fn parse(bytes: &[u8]) -> Result<rsip::SipMessage, rsip::Error> {
    rsip::SipMessage::try_from(bytes)
}
