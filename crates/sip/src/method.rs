//! SIP methods, with the common ones as variants so comparisons are cheap.

/// A request method. Unknown extension methods keep their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method<'a> {
    /// REGISTER
    Register,
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// OPTIONS
    Options,
    /// SUBSCRIBE
    Subscribe,
    /// NOTIFY
    Notify,
    /// PUBLISH
    Publish,
    /// INFO
    Info,
    /// REFER
    Refer,
    /// MESSAGE
    Message,
    /// UPDATE
    Update,
    /// PRACK
    Prack,
    /// Any other token (methods are case-sensitive in SIP).
    Other(&'a [u8]),
}

impl<'a> Method<'a> {
    /// Classifies a method token. The caller has checked that it is a token.
    pub fn from_token(token: &'a [u8]) -> Self {
        match token {
            b"REGISTER" => Method::Register,
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"PUBLISH" => Method::Publish,
            b"INFO" => Method::Info,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            other => Method::Other(other),
        }
    }

    /// The method as it appears on the wire.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Method::Register => b"REGISTER",
            Method::Invite => b"INVITE",
            Method::Ack => b"ACK",
            Method::Bye => b"BYE",
            Method::Cancel => b"CANCEL",
            Method::Options => b"OPTIONS",
            Method::Subscribe => b"SUBSCRIBE",
            Method::Notify => b"NOTIFY",
            Method::Publish => b"PUBLISH",
            Method::Info => b"INFO",
            Method::Refer => b"REFER",
            Method::Message => b"MESSAGE",
            Method::Update => b"UPDATE",
            Method::Prack => b"PRACK",
            Method::Other(token) => token,
        }
    }
}
