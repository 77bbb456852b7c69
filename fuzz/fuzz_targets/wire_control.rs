//! Control-stream frames: whole frames, and the streaming decoder fed the same bytes. Any frame
//! that decodes must encode again.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use relay::wire::ControlFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = ControlFrame::decode(data) {
        let again = frame.to_bytes().expect("a decoded frame encodes");
        assert_eq!(ControlFrame::decode(&again).ok(), Some(frame));
    }
    let _ = ControlFrame::decode_payload(data);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = ControlFrame::take_from(&mut buf) {}
});
