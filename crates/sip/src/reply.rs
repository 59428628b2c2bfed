//! Responses sipguard sends itself: a final answer to a request it refuses on behalf of the
//! PBX (a call to a barred destination), built from the request alone as RFC 3261 section 8.2.6
//! says a UAS builds one: every Via in order, From, To (with a tag added when it has none),
//! Call-ID and CSeq copied, no body.

use crate::view::{header_name, Lines};
use crate::{ParseError, SipView};

/// Builds the `code` response with `reason` to `request` (a whole message); an error when it is
/// no valid request. The To tag sipguard adds is derived from the Call-ID, so a retransmitted
/// request gets the same response.
pub fn reply(request: &[u8], code: u16, reason: &str) -> Result<Vec<u8>, ParseError> {
    let view = SipView::parse(request)?;
    if view.method().is_none() {
        return Err(ParseError::NotSip);
    }
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(format!("SIP/2.0 {code} {reason}\r\n").as_bytes());
    let mut lines = Lines {
        buf: view.message,
        pos: 0,
    };
    lines.next_line();
    let mut copying = false;
    while let Some(line) = lines.next_line() {
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            if copying {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            continue;
        }
        let name = header_name(line).map_or(&b""[..], |(name, _)| name);
        let is = |long: &[u8], short: &[u8]| {
            name.eq_ignore_ascii_case(long) || name.eq_ignore_ascii_case(short)
        };
        copying =
            is(b"via", b"v") || is(b"from", b"f") || is(b"call-id", b"i") || is(b"cseq", b"cseq");
        if is(b"to", b"t") {
            copying = false;
            out.extend_from_slice(b"To: ");
            out.extend_from_slice(view.to.value);
            if view.to.tag.is_none() {
                out.extend_from_slice(format!(";tag=sg{:x}", fnv(view.call_id)).as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        } else if copying {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Server: sipguard\r\nContent-Length: 0\r\n\r\n");
    Ok(out)
}

/// Whether `request` is the ACK to a response [`reply`] made (its To tag is the one `reply`
/// derives from the Call-ID): the end of a transaction the PBX never saw, so nothing to relay.
pub fn acknowledges_own_reply(request: &SipView<'_>) -> bool {
    request.method() == Some(crate::Method::Ack)
        && request
            .to
            .tag
            .and_then(|tag| tag.strip_prefix(b"sg"))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            == Some(fnv(request.call_id))
}

/// FNV-1a: a stable tag from the Call-ID.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:+33123@pbx SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport\r\n\
v: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK0\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:1001@pbx>;tag=abc\r\n\
To: <sip:+33123@pbx>\r\n\
Call-ID: c1@x\r\n\
CSeq: 2 INVITE\r\n\
Contact: <sip:1001@192.0.2.1>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

    #[test]
    fn a_403_copies_the_vias_from_call_id_and_cseq_and_tags_the_to() {
        let out = reply(
            INVITE.as_bytes(),
            403,
            "Forbidden by sipguard rule dial premium",
        )
        .unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        let view = SipView::parse(&out).expect("the response parses");
        assert_eq!(view.status(), Some(403));
        assert!(text.starts_with("SIP/2.0 403 Forbidden by sipguard rule dial premium\r\n"));
        assert!(text.contains("Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport\r\nv: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK0\r\n"));
        assert_eq!(view.call_id, b"c1@x");
        assert_eq!(view.cseq.seq, 2);
        assert_eq!(view.from.tag, Some(&b"abc"[..]));
        assert!(view.to.tag.is_some());
        assert!(!text.contains("Contact") && !text.contains("v=0"));
        assert_eq!(
            reply(INVITE.as_bytes(), 403, "x").unwrap(),
            reply(INVITE.as_bytes(), 403, "x").unwrap()
        );
    }

    #[test]
    fn the_ack_to_a_403_is_known_by_its_to_tag_and_no_other_request_is() {
        let response = reply(INVITE.as_bytes(), 403, "x").unwrap();
        let tag = SipView::parse(&response).unwrap().to.tag.unwrap().to_vec();
        let ack = |tag: &[u8], method: &str| {
            let mut ack = format!(
                "{method} sip:+33123@pbx SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport\r\n\
From: \"Alice\" <sip:1001@pbx>;tag=abc\r\n\
To: <sip:+33123@pbx>;tag="
            )
            .into_bytes();
            ack.extend_from_slice(tag);
            ack.extend_from_slice(
                format!(
                    "\r\nCall-ID: c1@x\r\nCSeq: 2 {method}\r\nMax-Forwards: 70\r\n\
Content-Length: 0\r\n\r\n"
                )
                .as_bytes(),
            );
            ack
        };
        let is_own = |message: Vec<u8>| acknowledges_own_reply(&SipView::parse(&message).unwrap());
        assert!(is_own(ack(&tag, "ACK")));
        assert!(
            !is_own(ack(b"pbx-tag-1", "ACK")),
            "the PBX's own answer's ACK"
        );
        assert!(!is_own(ack(b"sg1234", "ACK")), "a tag of another Call-ID");
        assert!(
            !is_own(ack(&tag, "BYE")),
            "only the ACK ends the transaction"
        );
    }

    #[test]
    fn responses_and_garbage_get_no_reply() {
        assert!(reply(b"SIP/2.0 200 OK\r\n\r\n", 403, "x").is_err());
        assert!(reply(b"\x00\x01", 403, "x").is_err());
    }
}
