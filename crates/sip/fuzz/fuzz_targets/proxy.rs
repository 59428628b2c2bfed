//! Feeds arbitrary bytes the view accepts to the stateless proxy's rewriting (what the PBX's
//! outbound requests and the carriers' answers and in-dialog requests go through) and checks its
//! promises: no panic; a relayed request parses again with its body, Call-ID and CSeq unchanged
//! and is never sent back to sipguard itself; a relayed response or a request with sipguard's
//! Route entries removed parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipguard_sip::proxy::{forward_request, forward_response, strip_own_routes, Identity};
use sipguard_sip::SipView;
use std::hash::{BuildHasherDefault, DefaultHasher};

fuzz_target!(|data: &[u8]| {
    let me = Identity {
        public: "203.0.113.5:5060".parse().unwrap(),
        inside: "127.0.0.1:5070".parse().unwrap(),
    };
    let key = BuildHasherDefault::<DefaultHasher>::default();
    if let Some(stripped) = strip_own_routes(data, &me) {
        if SipView::parse(data).is_ok() {
            SipView::parse(&stripped).expect("a request without sipguard's Routes parses");
        }
    }
    let Ok(view) = SipView::parse(data) else {
        return;
    };
    if let Ok(out) = forward_request(&view, "127.0.0.1:5080".parse().unwrap(), &me, &key) {
        let relayed = SipView::parse(&out.message).expect("a relayed request parses");
        assert_eq!(relayed.body, view.body);
        assert_eq!((relayed.call_id, relayed.cseq), (view.call_id, view.cseq));
        assert!(!me.is_me(out.to));
    }
    if let Some(back) = forward_response(&view, &me, &key) {
        SipView::parse(&back.message).expect("a relayed response parses");
    }
});
