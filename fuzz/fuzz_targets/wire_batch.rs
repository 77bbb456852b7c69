//! Share batches. The first two bytes choose the connection context (lease prefix length and
//! extranonce2 size) so the fuzzer explores every layout; the rest is the stream content.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::wire::{Batch, BatchContext, UniMessage};
use relay::work::Extranonce;

fuzz_target!(|data: &[u8]| {
    let [prefix_len, e2, rest @ ..] = data else {
        return;
    };
    let prefix_len = (*prefix_len as usize % 9).min(rest.len());
    let (prefix, body) = rest.split_at(prefix_len);
    let Ok(lease_prefix) = Extranonce::from_slice(prefix) else {
        return;
    };
    let ctx = BatchContext {
        lease_prefix,
        extranonce2_size: e2 % 17,
    };
    if let Ok(batch) = Batch::decode(body, &ctx) {
        let shares = batch.shares(&ctx).expect("a decoded batch resolves");
        let again = batch.to_bytes(&ctx).expect("a decoded batch encodes");
        let decoded = Batch::decode(&again, &ctx).expect("a re-encoded batch decodes");
        assert_eq!(decoded.shares(&ctx).ok(), Some(shares));
    }
    let _ = UniMessage::decode(body, &ctx);
});
