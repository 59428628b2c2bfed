//! SIP inspection for sipguard, with no I/O.
//!
//! [`SipView::parse`] reads a datagram in one pass and returns a view that borrows every field
//! the policy needs (start line, top Via branch, From/To user and tag, Call-ID, CSeq, every
//! User-Agent, credentials, a response's challenge, Contact, Content-Length) from the packet
//! itself: nothing is allocated per packet.
//! It is deliberately narrower than a SIP parser: it checks what a filter must be able to trust
//! and leaves the rest of the message untouched, because sipguard forwards the original bytes.
//! [`proxy`] holds what sipguard changes in the messages it relays as a stateless proxy
//! (the PBX's outbound requests). [`strict`] runs a full parse through `rsip` where a complete
//! message tree is wanted, and [`reply`] builds the few responses sipguard sends itself (a
//! refused call's 403).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod field;
pub mod framing;
mod method;
pub mod proxy;
mod reply;
pub mod strict;
mod view;

pub use error::{Header, ParseError};
pub use field::{Challenge, Credentials, NameAddr};
pub use framing::{next_frame, Frame, FrameError};
pub use method::Method;
pub use reply::{acknowledges_own_reply, reply};
pub use view::{is_keepalive, CSeq, SipView, StartLine, UserAgents};
