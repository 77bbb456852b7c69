//! Block candidates: a share whose hash meets the network target.
//!
//! A block is worth more than everything else on the link put together, and every second of delay
//! raises the odds that another pool's block orphans it. So it travels alone, on its own
//! unidirectional stream opened at the highest priority, the moment the edge sees it, and carries
//! everything the core needs to submit it without looking anything up: the full share (no lease
//! context, no tables), the 80-byte header the miner hashed and the full coinbase transaction.
//! It takes a sequence number from the same space as batches, so the ordinary ack and replay
//! machinery makes it exactly-once too.
//!
//! ```text
//! kind 0x02 ‖ epoch u64 ‖ seq u64 ‖ worker ‖ job id ‖ extranonce1 ‖ extranonce2
//!   ‖ ntime u32 ‖ nonce u32 ‖ version u32 ‖ difficulty f64 ‖ received_at_ms u64
//!   ‖ meets_upstream u8 ‖ header [80] ‖ coinbase (varint length ‖ bytes)
//! ```

use super::batch::{ShareData, MAX_WORKER_NAME_LEN};
use super::codec::{put_var_bytes, Reader, WireError};
use super::{MAX_FRAME_LEN, MAX_JOB_ID_LEN, STREAM_BLOCK};
use crate::work::extranonce::MAX_EXTRANONCE_LEN;
use crate::work::{Difficulty, Extranonce, JobId};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;

/// A block candidate, the whole content of its stream.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockFound {
    pub epoch: u64,
    pub seq: u64,
    pub share: ShareData,
    /// The header as hashed (little-endian fields, as it goes into the block).
    pub header: [u8; 80],
    /// The coinbase transaction, non-witness serialization.
    pub coinbase: Vec<u8>,
}

impl BlockFound {
    /// Appends the message, stream kind first, to `out`. On error `out` is left as it was.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        let start = out.len();
        let result = self.encode_inner(out);
        let len = out.len() - start;
        if result.is_ok() && len > MAX_FRAME_LEN {
            out.truncate(start);
            return Err(WireError::TooLarge {
                what: "block",
                len,
                max: MAX_FRAME_LEN,
            });
        }
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    pub fn to_bytes(&self) -> Result<Bytes, WireError> {
        let mut out = BytesMut::with_capacity(200 + self.coinbase.len());
        self.encode(&mut out)?;
        Ok(out.freeze())
    }

    fn encode_inner(&self, out: &mut BytesMut) -> Result<(), WireError> {
        let s = &self.share;
        Difficulty::new(s.difficulty.value())
            .map_err(|e| WireError::invalid("block.share.difficulty", e.to_string()))?;
        out.put_u8(STREAM_BLOCK);
        out.put_u64_le(self.epoch);
        out.put_u64_le(self.seq);
        put_var_bytes(
            out,
            s.worker.as_bytes(),
            MAX_WORKER_NAME_LEN,
            "block.share.worker",
        )?;
        put_var_bytes(
            out,
            s.job_id.as_str().as_bytes(),
            MAX_JOB_ID_LEN,
            "block.share.job_id",
        )?;
        put_var_bytes(
            out,
            s.extranonce1.as_bytes(),
            MAX_EXTRANONCE_LEN,
            "block.share.extranonce1",
        )?;
        put_var_bytes(
            out,
            s.extranonce2.as_bytes(),
            MAX_EXTRANONCE_LEN,
            "block.share.extranonce2",
        )?;
        out.put_u32_le(s.ntime);
        out.put_u32_le(s.nonce);
        out.put_u32_le(s.version);
        out.put_f64_le(s.difficulty.value());
        out.put_u64_le(s.received_at_ms);
        out.put_u8(u8::from(s.meets_upstream));
        out.put_slice(&self.header);
        put_var_bytes(out, &self.coinbase, MAX_FRAME_LEN, "block.coinbase")
    }

    /// Decodes the whole content of a block stream (stream kind first).
    pub fn decode(bytes: &[u8]) -> Result<BlockFound, WireError> {
        if bytes.len() > MAX_FRAME_LEN {
            return Err(WireError::TooLarge {
                what: "block",
                len: bytes.len(),
                max: MAX_FRAME_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        let kind = r.u8("block.kind")?;
        if kind != STREAM_BLOCK {
            return Err(WireError::WrongStreamKind {
                what: "block.kind",
                expected: STREAM_BLOCK,
                found: kind,
            });
        }
        let epoch = r.u64("block.epoch")?;
        let seq = r.u64("block.seq")?;
        let worker = Arc::<str>::from(r.string(MAX_WORKER_NAME_LEN, "block.share.worker")?);
        let job_id = JobId::new(r.string(MAX_JOB_ID_LEN, "block.share.job_id")?);
        let extranonce1 = extranonce(&mut r, "block.share.extranonce1")?;
        let extranonce2 = extranonce(&mut r, "block.share.extranonce2")?;
        let ntime = r.u32("block.share.ntime")?;
        let nonce = r.u32("block.share.nonce")?;
        let version = r.u32("block.share.version")?;
        let difficulty = Difficulty::new(r.f64("block.share.difficulty")?)
            .map_err(|e| WireError::invalid("block.share.difficulty", e.to_string()))?;
        let received_at_ms = r.u64("block.share.received_at_ms")?;
        let meets_upstream = r.bool("block.share.meets_upstream")?;
        let header = r.array::<80>("block.header")?;
        let coinbase = r.var_bytes(MAX_FRAME_LEN, "block.coinbase")?.to_vec();
        r.finish("block")?;
        Ok(BlockFound {
            epoch,
            seq,
            share: ShareData {
                worker,
                job_id,
                extranonce1,
                extranonce2,
                ntime,
                nonce,
                version,
                difficulty,
                received_at_ms,
                meets_upstream,
            },
            header,
            coinbase,
        })
    }
}

fn extranonce(r: &mut Reader<'_>, what: &'static str) -> Result<Extranonce, WireError> {
    let b = r.var_bytes(MAX_EXTRANONCE_LEN, what)?;
    Extranonce::from_slice(b).map_err(|e| WireError::invalid(what, e.to_string()))
}
