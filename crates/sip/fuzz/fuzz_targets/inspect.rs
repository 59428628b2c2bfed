//! Feeds arbitrary bytes to `SipView::parse` and checks the view's promises: no panic, and
//! when it accepts, every field (every User-Agent, digest parameter and challenge included) is a
//! slice of the input and the framing adds up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipguard_sip::{is_keepalive, Method, SipView, StartLine, UserAgents};

/// Whether `part` lies within `whole` (pointer ranges, so it proves the view did not copy).
fn within(whole: &[u8], part: &[u8]) -> bool {
    let (start, end) = (
        whole.as_ptr() as usize,
        whole.as_ptr() as usize + whole.len(),
    );
    let p = part.as_ptr() as usize;
    part.is_empty() || (start <= p && p + part.len() <= end)
}

fn method_within(whole: &[u8], method: Method<'_>) -> bool {
    match method {
        Method::Other(token) => within(whole, token),
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = SipView::parse(data);
    if is_keepalive(data) {
        assert!(parsed.is_err(), "a CRLF keep-alive is not a message");
    }
    let Ok(view) = parsed else { return };

    // `message` starts right after the leading CRLFs and is a prefix of what follows.
    let skip = data
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    assert!(skip < data.len());
    assert_eq!(view.message.as_ptr(), data[skip..].as_ptr());
    assert!(view.message.len() <= data.len() - skip);

    // The body ends the message, and is exactly Content-Length long when that is present.
    assert!(view.message.ends_with(view.body));
    assert_eq!(
        view.body.as_ptr() as usize + view.body.len(),
        view.message.as_ptr() as usize + view.message.len()
    );
    if let Some(len) = view.content_length {
        assert_eq!(view.body.len(), len);
    } else {
        assert_eq!(view.message.len(), data.len() - skip);
    }

    // Every field borrows from the message's header block.
    let m = view.message;
    match view.start {
        StartLine::Request { method, uri } => {
            assert!(within(m, uri) && method_within(m, method));
            assert_eq!(Some(method), view.method());
            assert_eq!(method, view.cseq.method, "request and CSeq methods agree");
        }
        StartLine::Response { code } => assert!((100..=699).contains(&code)),
    }
    assert!(within(m, view.via) && view.via_branch.is_none_or(|b| within(m, b)));
    for addr in [view.from, view.to] {
        assert!(within(m, addr.uri));
        assert!(addr.user.is_none_or(|u| within(m, u)) && addr.tag.is_none_or(|t| within(m, t)));
    }
    assert!(!view.call_id.is_empty() && within(m, view.call_id));
    assert!(method_within(m, view.cseq.method));
    assert!(view.user_agent.is_none_or(|ua| within(m, ua)));
    assert_eq!(view.user_agent, view.user_agents.values().first().copied());
    assert_eq!(
        view.user_agents.values().len(),
        view.user_agents.count().min(UserAgents::KEPT)
    );
    assert!(view.user_agents.values().iter().all(|ua| within(m, ua)));
    assert!(view.contact.is_none_or(|c| within(m, c)));
    for creds in [view.authorization, view.proxy_authorization]
        .into_iter()
        .flatten()
    {
        let params = [
            creds.username,
            creds.realm,
            creds.nonce,
            creds.response,
            creds.cnonce,
            creds.nc,
        ];
        assert!(within(m, creds.scheme) && params.iter().flatten().all(|p| within(m, p)));
    }
    if let Some(challenge) = view.challenge {
        let params = [challenge.realm, challenge.nonce];
        assert!(within(m, challenge.scheme) && params.iter().flatten().all(|p| within(m, p)));
    }
});
