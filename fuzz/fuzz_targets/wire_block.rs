//! Block candidates: fixed layout with varint lengths, so a decoded one re-encodes byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::wire::BlockFound;

fuzz_target!(|data: &[u8]| {
    if let Ok(block) = BlockFound::decode(data) {
        let again = block.to_bytes().expect("a decoded block encodes");
        assert_eq!(&again[..], data);
    }
});
