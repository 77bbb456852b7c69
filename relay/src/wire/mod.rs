//! The edge ↔ core relay protocol: compact binary messages over QUIC (ALPN `quarry/1`).
//!
//! An edge keeps one QUIC connection to its shard. On it:
//!
//! - one long-lived **bidirectional control stream** of length-prefixed [`ControlFrame`]s: the
//!   edge says [`Hello`], the core answers [`Welcome`] with the edge's extranonce lease, then
//!   pushes jobs and cumulative [`Ack`]s; either side pings;
//! - one **unidirectional stream per share [`Batch`]**, so a lost packet delays one batch rather
//!   than everything behind it;
//! - one unidirectional stream per **[`BlockFound`]**, sent alone, at once, at top priority.
//!
//! A unidirectional stream's first byte says what it carries ([`STREAM_BATCH`],
//! [`STREAM_BLOCK`]); its end (FIN) delimits the message, which is capped at
//! [`MAX_FRAME_LEN`]. A later layout gets a new kind byte or frame type rather than a silent
//! change, and [`Hello::protocol_version`] lets the core refuse an edge it cannot understand.
//!
//! Exactly-once crediting rests on `(edge id, epoch, seq)`: the core acks a sequence only once it
//! is durable, the edge trims its spool only through an ack, and a replay at or below the core's
//! high-water mark is acked and dropped.
//!
//! Every decoder checks every length, count and index before using it, caps every allocation,
//! and returns a [`WireError`] naming the field at fault. None of them panics on any input; the
//! proptests below and the `fuzz/` targets exist to keep it that way.

mod batch;
mod block;
pub mod close_code;
mod codec;
mod control;
#[cfg(test)]
mod tests;

pub use batch::{
    Batch, BatchBuilder, BatchContext, BatchJob, JobBase, PushError, Rejected, ShareData,
    ShareWire, MAX_BATCH_DIFFICULTIES, MAX_BATCH_JOBS, MAX_BATCH_RECORDS, MAX_BATCH_WORKERS,
    MAX_WORKER_NAME_LEN,
};
pub use block::BlockFound;
pub use codec::WireError;
pub use control::{
    Ack, ControlFrame, EdgeId, ErrorFrame, Hello, JobMsg, Policies, ResumeState, Welcome,
    FRAME_HEADER_LEN, MAX_EDGE_ID_LEN, MAX_ERROR_MESSAGE_LEN, MAX_JOB_ID_LEN, MAX_MERKLE_BRANCH,
    MAX_SOFTWARE_LEN,
};

/// QUIC ALPN of this protocol; the version in it changes only with an incompatible handshake.
pub const ALPN: &[u8] = b"quarry/1";

/// The protocol version an edge states in [`Hello`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest control frame body or unidirectional stream message: 1 MiB. Bounds what a peer can
/// make us buffer before we have decoded anything.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// First byte of a unidirectional stream carrying a share [`Batch`].
pub const STREAM_BATCH: u8 = 0x01;
/// First byte of a unidirectional stream carrying a [`BlockFound`].
pub const STREAM_BLOCK: u8 = 0x02;

/// What a unidirectional stream carried.
#[derive(Clone, Debug, PartialEq)]
pub enum UniMessage {
    Batch(Batch),
    Block(Box<BlockFound>),
}

impl UniMessage {
    /// Decodes the whole content of a unidirectional stream, dispatching on its kind byte.
    pub fn decode(bytes: &[u8], ctx: &BatchContext) -> Result<UniMessage, WireError> {
        match bytes.first() {
            None => Err(WireError::Truncated {
                what: "stream kind",
                needed: 1,
                remaining: 0,
            }),
            Some(&STREAM_BATCH) => Batch::decode(bytes, ctx).map(UniMessage::Batch),
            Some(&STREAM_BLOCK) => {
                BlockFound::decode(bytes).map(|b| UniMessage::Block(Box::new(b)))
            }
            Some(&other) => Err(WireError::UnknownStreamKind(other)),
        }
    }
}

/// The overhead model behind the "under 24 bytes per share on the wire" target.
///
/// QUIC (RFC 9000) sends stream data in UDP datagrams of at most ~1200 bytes until path MTU
/// discovery raises that (quinn starts at 1200), so we assume:
///
/// - per packet, inside the 1200: short header (1 flags byte + 8-byte connection id + 2-byte
///   packet number = 11), AEAD tag (16) and STREAM frame header (type, stream id, offset, length
///   ≈ 5): [`QUIC_PACKET_OVERHEAD`] = 32, leaving 1168 bytes of stream data;
/// - per packet, outside: IPv4 (20) + UDP (8) = [`IP_UDP_OVERHEAD`] = 28 (so ~60 per packet all
///   told);
/// - per stream: [`STREAM_OPEN_FIN_OVERHEAD`] = 30, for the stream's share of the ACK and
///   MAX_STREAMS credit the peer sends back and a FIN that may ride alone.
///
/// Not counted: the core's acks on the control stream (cumulative, one per many batches) and
/// IPv6's extra 20 bytes per packet.
pub fn estimated_wire_bytes(payload_len: usize) -> usize {
    let per_packet_data = UDP_PAYLOAD - QUIC_PACKET_OVERHEAD;
    let packets = payload_len.div_ceil(per_packet_data).max(1);
    payload_len + packets * (QUIC_PACKET_OVERHEAD + IP_UDP_OVERHEAD) + STREAM_OPEN_FIN_OVERHEAD
}

/// Largest UDP payload assumed by [`estimated_wire_bytes`] (QUIC's minimum datagram size).
pub const UDP_PAYLOAD: usize = 1200;
/// QUIC bytes per packet inside the UDP payload: short header, AEAD tag, STREAM frame header.
pub const QUIC_PACKET_OVERHEAD: usize = 32;
/// IPv4 and UDP headers per packet.
pub const IP_UDP_OVERHEAD: usize = 28;
/// Per-stream cost of opening and finishing a unidirectional stream.
pub const STREAM_OPEN_FIN_OVERHEAD: usize = 30;
