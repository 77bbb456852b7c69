//! Stratum lines from miners (the edge's most exposed input) and from upstream pools, through the
//! line framer first as the edge does, then each line on its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::stratum::{LineFramer, Request, ServerMessage};

fuzz_target!(|data: &[u8]| {
    let _ = Request::parse(data);
    let _ = ServerMessage::parse(data);
    let mut framer = LineFramer::new(4096);
    framer.push(data);
    while let Some(line) = framer.next_line() {
        if let Ok(line) = line {
            let _ = Request::parse(&line);
        }
    }
});
