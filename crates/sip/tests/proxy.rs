//! Properties of the stateless proxy's rewriting: it never panics on any message the view
//! accepts, whatever its Via, Route, Max-Forwards and Record-Route headers hold; what it relays
//! parses again with the same body, Call-ID and CSeq; and a carrier's response to what it relayed
//! comes back to the PBX's reply address with the PBX's Via on top.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use sipguard_sip::proxy::{forward_request, forward_response, strip_own_routes, Identity};
use sipguard_sip::SipView;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::net::SocketAddr;

type Key = BuildHasherDefault<DefaultHasher>;

fn me() -> Identity {
    Identity {
        public: "203.0.113.5:5060".parse().unwrap(),
        inside: "127.0.0.1:5070".parse().unwrap(),
    }
}

/// Header lines a proxy reads, in well- and ill-formed spellings.
fn proxy_header() -> impl Strategy<Value = String> {
    let route_entry = select(vec![
        "<sip:127.0.0.1:5070;lr>",
        "<sip:203.0.113.5;lr>",
        "<sip:203.0.113.5:5060;lr>",
        "<sip:192.0.2.9:5080;lr>",
        "<sip:[2001:db8::1]:5062;lr>",
        "<sip:carrier.example.com;lr>",
        "\"a, <b>\" <sip:192.0.2.1;lr>",
        "<sip:127.0.0.1:5070",
        "sip:192.0.2.3",
        "<>",
        "",
        "<sips:192.0.2.4>",
        "<sip:[::1>",
        "<sip:192.0.2.5:99999>",
    ]);
    prop_oneof![
        vec(route_entry, 0..4).prop_map(|entries| format!("Route: {}", entries.join(","))),
        "[ 0-9a-z]{0,6}".prop_map(|v| format!("Max-Forwards:{v}")),
        select(vec!["<sip:192.0.2.1;lr>", "x", ""]).prop_map(|v| format!("Record-Route: {v}")),
        select(vec![
            "SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-sg-0000000000000000",
            "SIP/2.0/UDP [2001:db8::2];rport;branch=a",
            "SIP/2.0/UDP host",
            "garbage",
            "SIP/2.0/UDP 1.2.3.4:0;received=;rport=x",
        ])
        .prop_map(|v| format!("Via: {v}")),
        "[ -~]{0,30}".prop_map(|v| format!("X-Any: {v}")),
    ]
}

/// A request or response with the mandatory headers, its own top Via, and arbitrary proxy headers.
fn message() -> impl Strategy<Value = Vec<u8>> {
    (
        select(vec![
            "INVITE sip:1@198.51.100.7 SIP/2.0",
            "REGISTER sip:198.51.100.7:5062 SIP/2.0",
            "INVITE sip:1@carrier.example SIP/2.0",
            "INVITE sip:1@127.0.0.1:5070 SIP/2.0",
            "SIP/2.0 200 OK",
        ]),
        select(vec![
            "SIP/2.0/UDP 127.0.0.1:5080;rport;branch=z9hG4bKPj1",
            "SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK-sg-0123456789abcdef, SIP/2.0/UDP 127.0.0.1:5080;received=127.0.0.1;rport=5080;branch=z9hG4bKPj1",
            "SIP/2.0/UDP 127.0.0.1;branch=\"q;uoted\"",
            "SIP/2.0/UDP [::1]:5080;rport",
            "SIP/2.0/UDP",
        ]),
        vec(proxy_header(), 0..6),
        "[ -~]{0,40}",
    )
        .prop_map(|(start, via, extra, body)| {
            let method = start.split(' ').next().unwrap();
            let cseq = if method == "SIP/2.0" { "INVITE" } else { method };
            let mut text = format!(
                "{start}\r\nVia: {via}\r\nFrom: <sip:100@127.0.0.1>;tag=f\r\n\
                 To: <sip:1@198.51.100.7>\r\nCall-ID: c1\r\nCSeq: 3 {cseq}\r\n"
            );
            for line in extra {
                text += &line;
                text += "\r\n";
            }
            text += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
            text.into_bytes()
        })
}

proptest! {
    #[test]
    fn rewriting_never_panics_and_what_it_relays_parses_with_the_same_body(
        bytes in message()
    ) {
        let Ok(view) = SipView::parse(&bytes) else { return Ok(()) };
        let source: SocketAddr = "127.0.0.1:5080".parse().unwrap();
        if let Some(stripped) = strip_own_routes(&bytes, &me()) {
            let stripped = SipView::parse(&stripped).expect("a request without sipguard's Routes parses");
            prop_assert_eq!(stripped.body, view.body);
        }
        if let Some(back) = forward_response(&view, &me(), &Key::default()) {
            SipView::parse(&back.message).expect("a relayed response parses");
        }
        if let Ok(out) = forward_request(&view, source, &me(), &Key::default()) {
            let relayed = SipView::parse(&out.message).expect("the relayed request parses");
            prop_assert_eq!(relayed.body, view.body);
            prop_assert_eq!(relayed.call_id, view.call_id);
            prop_assert_eq!(relayed.cseq, view.cseq);
            prop_assert!(!me().is_me(out.to));
            // A 200 copying its Via headers comes back to where the PBX asked.
            let text = String::from_utf8_lossy(&out.message).into_owned();
            let vias: String = text
                .split("\r\n")
                .filter(|l| l.starts_with("Via:"))
                .map(|l| format!("{l}\r\n"))
                .collect();
            let response = format!(
                "SIP/2.0 200 OK\r\n{vias}From: <sip:100@127.0.0.1>;tag=f\r\n\
                 To: <sip:1@198.51.100.7>;tag=t\r\nCall-ID: c1\r\nCSeq: 3 {}\r\n\
                 Content-Length: 0\r\n\r\n",
                String::from_utf8_lossy(view.cseq.method.as_bytes()),
            );
            let response_view = SipView::parse(response.as_bytes()).expect("response parses");
            let back = forward_response(&response_view, &me(), &Key::default())
                .expect("sipguard's own response is relayed");
            prop_assert_eq!(back.to.ip(), source.ip());
            let back_view = SipView::parse(&back.message).expect("relayed response parses");
            prop_assert_eq!(back_view.via_branch, view.via_branch);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..400)) {
        let _ = strip_own_routes(&bytes, &me());
        if let Ok(view) = SipView::parse(&bytes) {
            let source: SocketAddr = "127.0.0.1:5080".parse().unwrap();
            let _ = forward_request(&view, source, &me(), &Key::default());
            let _ = forward_response(&view, &me(), &Key::default());
        }
    }
}
