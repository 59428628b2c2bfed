//! Feeds arbitrary bytes to the stream framer (`next_frame`, what every TCP and TLS client's
//! bytes go through) and checks its promises: no panic; a frame never claims more than the
//! input holds or the size limit allows; a verdict on a prefix stands when more bytes arrive
//! (a message split across reads frames the same as in one read); and a waiting framer never
//! holds more than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipguard_sip::{next_frame, Frame};

fuzz_target!(|input: (u16, &[u8])| {
    let (max, data) = input;
    let max = usize::from(max);
    let whole = next_frame(data, max);
    if let Ok(Some(frame)) = whole {
        let len = frame.byte_len();
        assert!(len <= data.len(), "a frame lies inside the input");
        if let Frame::Message(len) = frame {
            assert!(len <= max, "a message within the size limit");
        }
    }
    if whole == Ok(None) {
        assert!(data.len() <= max.max(3), "waiting holds at most the size limit");
    }
    // Every prefix either waits for more, or already reaches the whole input's verdict.
    for cut in 0..data.len() {
        match next_frame(&data[..cut], max) {
            Ok(None) => {}
            early => assert_eq!(early, whole, "a verdict on {cut} bytes changed with more"),
        }
    }
});
