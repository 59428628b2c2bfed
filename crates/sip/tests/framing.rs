//! Property tests of stream framing: however a stream of messages and keep-alives is cut into
//! reads, the framer hands back exactly the messages that were sent, and never buffers more than
//! the limit allows.

use proptest::prelude::*;
use sipguard_sip::{next_frame, Frame, FrameError, SipView};

const MAX: usize = 8192;

/// One item on the wire: a message with this body, or a keep-alive ping.
#[derive(Debug, Clone)]
enum Item {
    Message { body: Vec<u8>, compact: bool },
    Ping,
}

fn encode(index: usize, item: &Item) -> Vec<u8> {
    match item {
        Item::Ping => b"\r\n\r\n".to_vec(),
        Item::Message { body, compact } => {
            let name = if *compact { "l" } else { "Content-Length" };
            let mut bytes = format!(
                "MESSAGE sip:1001@192.0.2.1 SIP/2.0\r\n\
                 Via: SIP/2.0/TCP 192.0.2.7:5060;branch=z9hG4bK{index}\r\n\
                 From: <sip:a@192.0.2.7>;tag=1\r\nTo: <sip:1001@192.0.2.1>\r\n\
                 Call-ID: call-{index}\r\nCSeq: {index} MESSAGE\r\n{name}: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            bytes.extend_from_slice(body);
            bytes
        }
    }
}

fn items() -> impl Strategy<Value = Vec<Item>> {
    let item = prop_oneof![
        Just(Item::Ping),
        // Bodies hold anything, CRLFs and header-like text included: only the length counts.
        (prop::collection::vec(any::<u8>(), 0..300), any::<bool>())
            .prop_map(|(body, compact)| Item::Message { body, compact }),
        Just(Item::Message {
            body: b"\r\n\r\nContent-Length: 9\r\n\r\n".to_vec(),
            compact: false
        }),
    ];
    prop::collection::vec(item, 1..8)
}

/// Feeds `stream` in reads of the given sizes (cycled), framing after each read as a connection
/// does, and returns the frames in order.
fn frame_in_reads(stream: &[u8], reads: &[usize]) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut buffered = Vec::new();
    let mut frames = Vec::new();
    let mut at = 0;
    let mut sizes = reads.iter().cycle();
    while at < stream.len() {
        let size = (*sizes.next().unwrap()).clamp(1, stream.len() - at);
        buffered.extend_from_slice(&stream[at..at + size]);
        at += size;
        while let Some(frame) = next_frame(&buffered, MAX)? {
            frames.push(buffered.drain(..frame.byte_len()).collect());
            assert!(buffered.len() <= MAX);
        }
    }
    assert!(buffered.is_empty(), "bytes left over: {buffered:?}");
    Ok(frames)
}

proptest! {
    #[test]
    fn any_split_of_a_stream_yields_the_messages_sent(
        items in items(),
        reads in prop::collection::vec(1usize..64, 1..8),
    ) {
        let encoded: Vec<Vec<u8>> = items.iter().enumerate().map(|(i, item)| encode(i, item)).collect();
        let stream = encoded.concat();
        let frames = frame_in_reads(&stream, &reads).expect("a well-framed stream");
        prop_assert_eq!(&frames, &encoded);
        for (frame, item) in frames.iter().zip(&items) {
            if let Item::Message { body, .. } = item {
                let view = SipView::parse(frame).expect("a framed message parses");
                prop_assert_eq!(view.body, body.as_slice());
                prop_assert_eq!(view.message.len(), frame.len());
            } else {
                prop_assert_eq!(next_frame(frame, MAX), Ok(Some(Frame::Ping)));
            }
        }
    }

    #[test]
    fn byte_by_byte_delivery_yields_the_same_frames(items in items()) {
        let encoded: Vec<Vec<u8>> = items.iter().enumerate().map(|(i, item)| encode(i, item)).collect();
        let frames = frame_in_reads(&encoded.concat(), &[1]).expect("a well-framed stream");
        prop_assert_eq!(frames, encoded);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_frames_fit_the_buffer(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(Some(frame)) = next_frame(&bytes, 512) {
            prop_assert!(frame.byte_len() <= bytes.len());
            prop_assert!(frame.byte_len() <= 512);
        }
    }
}
