//! Control-stream frames: the long-lived bidirectional stream between an edge and its shard.
//!
//! The edge opens the stream with [`Hello`] (who it is, and where it left off if it is resuming a
//! session); the core answers [`Welcome`] (the edge's extranonce lease, its shard, the policies it
//! must follow). From then on the core pushes jobs and cumulative acks, either side may ping, and
//! either side may send an error before closing.
//!
//! Each frame is `u32 LE length ‖ u8 type ‖ body`, where the length counts the type byte and
//! the body. Fixed-width integers are little-endian; control frames are rare, so they favour
//! simplicity over the byte-shaving of share batches.

use super::codec::{put_var_bytes, Reader, WireError};
use super::MAX_FRAME_LEN;
use crate::work::extranonce::MAX_EXTRANONCE_LEN;
use crate::work::{CompactTarget, Extranonce, Job, JobId, PrevHash, Target, VersionMask};
use crate::Hash256;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// Longest edge id: ids name edges in logs, metrics labels and the ledger's unique key.
pub const MAX_EDGE_ID_LEN: usize = 64;
/// Longest software string in [`Hello`].
pub const MAX_SOFTWARE_LEN: usize = 255;
/// Longest job id on the wire (upstream pools choose their own; real ones are a few bytes).
pub const MAX_JOB_ID_LEN: usize = 255;
/// Deepest merkle branch accepted: 2^32 transactions is far beyond any block.
pub const MAX_MERKLE_BRANCH: usize = 32;
/// Longest error message in an [`ErrorFrame`].
pub const MAX_ERROR_MESSAGE_LEN: usize = 4096;

/// Bytes before a control frame's type: the `u32` length.
pub const FRAME_HEADER_LEN: usize = 4;

const T_HELLO: u8 = 0x01;
const T_WELCOME: u8 = 0x02;
const T_JOB: u8 = 0x03;
const T_ACK: u8 = 0x04;
const T_PING: u8 = 0x05;
const T_PONG: u8 = 0x06;
const T_ERROR: u8 = 0x07;

/// An edge's stable name, chosen by the operator. It picks the edge's shard (rendezvous hashing)
/// and, with epoch and sequence, keys every batch in the ledger — so it is short, printable and
/// free of separators that would make log lines or metric labels ambiguous.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeId(String);

impl EdgeId {
    /// 1 to 64 ASCII letters, digits or `-_.:`.
    pub fn new(s: impl Into<String>) -> Result<Self, WireError> {
        let s = s.into();
        if s.is_empty() || s.len() > MAX_EDGE_ID_LEN {
            return Err(WireError::invalid(
                "edge_id",
                format!("must be 1-{MAX_EDGE_ID_LEN} bytes, got {}", s.len()),
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(*c)))
        {
            return Err(WireError::invalid(
                "edge_id",
                format!("character {c:?} is not a letter, digit or -_.:"),
            ));
        }
        Ok(EdgeId(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EdgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EdgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EdgeId({})", self.0)
    }
}

/// Where a reconnecting edge left off: the epoch its unacked spool records belong to and the
/// sequence number it will use next. The core answers with its high-water mark for that epoch so
/// the edge can trim what is already durable and replay only the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeState {
    pub epoch: u64,
    pub next_seq: u64,
}

/// Edge → core, first frame on the control stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// [`super::PROTOCOL_VERSION`] of the sender; the core refuses versions it cannot speak.
    pub protocol_version: u16,
    pub edge_id: EdgeId,
    /// Free text for logs (`quarry-edge/0.1.0`).
    pub software: String,
    pub resume: Option<ResumeState>,
}

/// How the core wants this edge to behave; sent in [`Welcome`] so operators change them in one
/// place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policies {
    /// Shares per thousand the core re-validates (trust, but verify). At most 1000.
    pub audit_per_mille: u16,
    /// Most shares in one batch. At least 1.
    pub max_batch_shares: u16,
    /// Longest a share may wait in the batcher before its batch is sent.
    pub max_batch_delay_ms: u32,
}

/// Core → edge, the answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub shard_id: u8,
    /// The edge's extranonce1 prefix (upstream prefix ‖ shard ‖ lease); miner slots go under it.
    pub lease_prefix: Extranonce,
    /// Bytes of extranonce2 the miners get.
    pub extranonce2_size: u8,
    /// The epoch the edge must stamp on batches from now on.
    pub epoch: u64,
    /// The core's high-water mark for this edge and epoch: everything at or below it is durable.
    pub acked_through: Option<u64>,
    pub policies: Policies,
}

/// Core → edge: a job to hand to miners.
#[derive(Clone, Debug, PartialEq)]
pub struct JobMsg {
    /// The job as miners will see it (its `nbits` is the network target).
    pub job: Job,
    /// In proxy mining, the upstream pool's share target: shares meeting it are forwarded.
    pub upstream_target: Option<Target>,
    /// In proxy mining, the version bits the upstream lets us roll (BIP310): miners' masks are
    /// narrowed to it, so no share rolls a bit the upstream would reject. `None`: no limit
    /// beyond the edge's own mask. The last field of the frame; a frame without it (a core
    /// from before it existed) reads as `None`.
    pub version_mask: Option<VersionMask>,
}

/// Core → edge: every batch with sequence ≤ `through_seq` in `epoch` is durable in the journal,
/// so the edge may trim its spool through it. Cumulative, so a lost ack is repaired by the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub epoch: u64,
    pub through_seq: u64,
}

/// Either way: a fatal or advisory error before closing, with a code for machines and a message
/// for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    pub code: u16,
    pub message: String,
}

/// One frame on the control stream.
#[derive(Clone, Debug, PartialEq)]
pub enum ControlFrame {
    Hello(Hello),
    Welcome(Welcome),
    Job(Box<JobMsg>),
    Ack(Ack),
    /// Liveness and RTT: the peer echoes the nonce in a `Pong`.
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    Error(ErrorFrame),
}

impl ControlFrame {
    fn frame_type(&self) -> u8 {
        match self {
            ControlFrame::Hello(_) => T_HELLO,
            ControlFrame::Welcome(_) => T_WELCOME,
            ControlFrame::Job(_) => T_JOB,
            ControlFrame::Ack(_) => T_ACK,
            ControlFrame::Ping { .. } => T_PING,
            ControlFrame::Pong { .. } => T_PONG,
            ControlFrame::Error(_) => T_ERROR,
        }
    }

    /// Appends the length-prefixed frame to `out`. On error `out` is left as it was.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        let start = out.len();
        out.put_u32_le(0);
        out.put_u8(self.frame_type());
        if let Err(e) = self.encode_body(out) {
            out.truncate(start);
            return Err(e);
        }
        let len = out.len() - start - FRAME_HEADER_LEN;
        if len > MAX_FRAME_LEN {
            out.truncate(start);
            return Err(WireError::TooLarge {
                what: "control frame",
                len,
                max: MAX_FRAME_LEN,
            });
        }
        out[start..start + FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(())
    }

    /// The frame as one buffer, ready to write to the stream.
    pub fn to_bytes(&self) -> Result<Bytes, WireError> {
        let mut out = BytesMut::new();
        self.encode(&mut out)?;
        Ok(out.freeze())
    }

    fn encode_body(&self, out: &mut BytesMut) -> Result<(), WireError> {
        match self {
            ControlFrame::Hello(h) => {
                out.put_u16_le(h.protocol_version);
                put_var_bytes(
                    out,
                    h.edge_id.0.as_bytes(),
                    MAX_EDGE_ID_LEN,
                    "hello.edge_id",
                )?;
                put_var_bytes(
                    out,
                    h.software.as_bytes(),
                    MAX_SOFTWARE_LEN,
                    "hello.software",
                )?;
                match h.resume {
                    None => out.put_u8(0),
                    Some(r) => {
                        out.put_u8(1);
                        out.put_u64_le(r.epoch);
                        out.put_u64_le(r.next_seq);
                    }
                }
            }
            ControlFrame::Welcome(w) => {
                check_policies(&w.policies)?;
                check_extranonce2_size(w.extranonce2_size)?;
                out.put_u8(w.shard_id);
                put_var_bytes(
                    out,
                    w.lease_prefix.as_bytes(),
                    MAX_EXTRANONCE_LEN,
                    "welcome.lease_prefix",
                )?;
                out.put_u8(w.extranonce2_size);
                out.put_u64_le(w.epoch);
                match w.acked_through {
                    None => out.put_u8(0),
                    Some(a) => {
                        out.put_u8(1);
                        out.put_u64_le(a);
                    }
                }
                out.put_u16_le(w.policies.audit_per_mille);
                out.put_u16_le(w.policies.max_batch_shares);
                out.put_u32_le(w.policies.max_batch_delay_ms);
            }
            ControlFrame::Job(m) => {
                let j = &m.job;
                put_var_bytes(out, j.id.as_str().as_bytes(), MAX_JOB_ID_LEN, "job.id")?;
                out.put_slice(&j.prev_hash.0 .0);
                put_var_bytes(out, &j.coinb1, MAX_FRAME_LEN, "job.coinb1")?;
                put_var_bytes(out, &j.coinb2, MAX_FRAME_LEN, "job.coinb2")?;
                if j.merkle_branch.len() > MAX_MERKLE_BRANCH {
                    return Err(WireError::TooLarge {
                        what: "job.merkle_branch",
                        len: j.merkle_branch.len(),
                        max: MAX_MERKLE_BRANCH,
                    });
                }
                out.put_u8(j.merkle_branch.len() as u8);
                for node in &j.merkle_branch {
                    out.put_slice(node);
                }
                out.put_u32_le(j.version);
                out.put_u32_le(j.nbits.0);
                out.put_u32_le(j.ntime);
                out.put_u8(u8::from(j.clean_jobs));
                match m.upstream_target {
                    None => out.put_u8(0),
                    Some(t) => {
                        out.put_u8(1);
                        out.put_slice(&t.to_le_bytes());
                    }
                }
                match m.version_mask {
                    None => out.put_u8(0),
                    Some(mask) => {
                        out.put_u8(1);
                        out.put_u32_le(mask.0);
                    }
                }
            }
            ControlFrame::Ack(a) => {
                out.put_u64_le(a.epoch);
                out.put_u64_le(a.through_seq);
            }
            ControlFrame::Ping { nonce } | ControlFrame::Pong { nonce } => out.put_u64_le(*nonce),
            ControlFrame::Error(e) => {
                out.put_u16_le(e.code);
                put_var_bytes(
                    out,
                    e.message.as_bytes(),
                    MAX_ERROR_MESSAGE_LEN,
                    "error.message",
                )?;
            }
        }
        Ok(())
    }

    /// Decodes exactly one whole frame (length prefix included); anything after it is an error.
    pub fn decode(frame: &[u8]) -> Result<ControlFrame, WireError> {
        let mut r = Reader::new(frame);
        let len = r.u32("control frame length")? as usize;
        check_frame_len(len)?;
        let body = r.bytes(len, "control frame")?;
        r.finish("control frame")?;
        Self::decode_payload(body)
    }

    /// Takes one complete frame off the front of a receive buffer: `Ok(None)` while the frame is
    /// still incomplete. An oversized length is refused as soon as its 4 bytes arrive, before
    /// buffering any of it, so a peer cannot make us hold more than one frame's worth.
    pub fn take_from(buf: &mut BytesMut) -> Result<Option<ControlFrame>, WireError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let mut prefix = [0u8; FRAME_HEADER_LEN];
        prefix.copy_from_slice(&buf[..FRAME_HEADER_LEN]);
        let len = u32::from_le_bytes(prefix) as usize;
        check_frame_len(len)?;
        if buf.len() < FRAME_HEADER_LEN + len {
            buf.reserve(FRAME_HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        let payload = buf.split_to(len);
        Self::decode_payload(&payload).map(Some)
    }

    /// Decodes a frame's type byte and body (the bytes the length prefix counts).
    pub fn decode_payload(payload: &[u8]) -> Result<ControlFrame, WireError> {
        let mut r = Reader::new(payload);
        let frame_type = r.u8("control frame type")?;
        let frame = match frame_type {
            T_HELLO => {
                let protocol_version = r.u16("hello.protocol_version")?;
                let edge_id = r.string(MAX_EDGE_ID_LEN, "hello.edge_id")?;
                let edge_id = EdgeId::new(edge_id)?;
                let software = r.string(MAX_SOFTWARE_LEN, "hello.software")?.to_owned();
                let resume = if r.option_tag("hello.resume")? {
                    Some(ResumeState {
                        epoch: r.u64("hello.resume.epoch")?,
                        next_seq: r.u64("hello.resume.next_seq")?,
                    })
                } else {
                    None
                };
                r.finish("hello")?;
                ControlFrame::Hello(Hello {
                    protocol_version,
                    edge_id,
                    software,
                    resume,
                })
            }
            T_WELCOME => {
                let shard_id = r.u8("welcome.shard_id")?;
                let lease_prefix = r.var_bytes(MAX_EXTRANONCE_LEN, "welcome.lease_prefix")?;
                let lease_prefix = Extranonce::from_slice(lease_prefix)
                    .map_err(|e| WireError::invalid("welcome.lease_prefix", e.to_string()))?;
                let extranonce2_size = r.u8("welcome.extranonce2_size")?;
                check_extranonce2_size(extranonce2_size)?;
                let epoch = r.u64("welcome.epoch")?;
                let acked_through = if r.option_tag("welcome.acked_through")? {
                    Some(r.u64("welcome.acked_through")?)
                } else {
                    None
                };
                let policies = Policies {
                    audit_per_mille: r.u16("welcome.policies.audit_per_mille")?,
                    max_batch_shares: r.u16("welcome.policies.max_batch_shares")?,
                    max_batch_delay_ms: r.u32("welcome.policies.max_batch_delay_ms")?,
                };
                check_policies(&policies)?;
                r.finish("welcome")?;
                ControlFrame::Welcome(Welcome {
                    shard_id,
                    lease_prefix,
                    extranonce2_size,
                    epoch,
                    acked_through,
                    policies,
                })
            }
            T_JOB => {
                let id = JobId::new(r.string(MAX_JOB_ID_LEN, "job.id")?);
                let prev_hash = PrevHash(Hash256(r.array("job.prev_hash")?));
                let coinb1 = r.var_bytes(MAX_FRAME_LEN, "job.coinb1")?.to_vec();
                let coinb2 = r.var_bytes(MAX_FRAME_LEN, "job.coinb2")?.to_vec();
                let branch_len = r.u8("job.merkle_branch")? as usize;
                if branch_len > MAX_MERKLE_BRANCH {
                    return Err(WireError::TooLarge {
                        what: "job.merkle_branch",
                        len: branch_len,
                        max: MAX_MERKLE_BRANCH,
                    });
                }
                let mut merkle_branch = Vec::with_capacity(branch_len);
                for _ in 0..branch_len {
                    merkle_branch.push(r.array::<32>("job.merkle_branch")?);
                }
                let version = r.u32("job.version")?;
                let nbits = CompactTarget(r.u32("job.nbits")?);
                let ntime = r.u32("job.ntime")?;
                let clean_jobs = r.bool("job.clean_jobs")?;
                let upstream_target = if r.option_tag("job.upstream_target")? {
                    Some(Target::from_le_bytes(r.array("job.upstream_target")?))
                } else {
                    None
                };
                let version_mask = if r.remaining() > 0 && r.option_tag("job.version_mask")? {
                    Some(VersionMask(r.u32("job.version_mask")?))
                } else {
                    None
                };
                r.finish("job")?;
                ControlFrame::Job(Box::new(JobMsg {
                    job: Job::new(
                        id,
                        prev_hash,
                        coinb1,
                        coinb2,
                        merkle_branch,
                        version,
                        nbits,
                        ntime,
                        clean_jobs,
                    ),
                    upstream_target,
                    version_mask,
                }))
            }
            T_ACK => {
                let ack = Ack {
                    epoch: r.u64("ack.epoch")?,
                    through_seq: r.u64("ack.through_seq")?,
                };
                r.finish("ack")?;
                ControlFrame::Ack(ack)
            }
            T_PING => {
                let nonce = r.u64("ping.nonce")?;
                r.finish("ping")?;
                ControlFrame::Ping { nonce }
            }
            T_PONG => {
                let nonce = r.u64("pong.nonce")?;
                r.finish("pong")?;
                ControlFrame::Pong { nonce }
            }
            T_ERROR => {
                let code = r.u16("error.code")?;
                let message = r.string(MAX_ERROR_MESSAGE_LEN, "error.message")?.to_owned();
                r.finish("error")?;
                ControlFrame::Error(ErrorFrame { code, message })
            }
            other => return Err(WireError::UnknownFrameType(other)),
        };
        Ok(frame)
    }
}

fn check_frame_len(len: usize) -> Result<(), WireError> {
    if len == 0 {
        return Err(WireError::TooSmall {
            what: "control frame length",
            len,
            min: 1,
        });
    }
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge {
            what: "control frame length",
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(())
}

fn check_extranonce2_size(size: u8) -> Result<(), WireError> {
    if size as usize > MAX_EXTRANONCE_LEN {
        return Err(WireError::TooLarge {
            what: "welcome.extranonce2_size",
            len: size as usize,
            max: MAX_EXTRANONCE_LEN,
        });
    }
    Ok(())
}

fn check_policies(p: &Policies) -> Result<(), WireError> {
    if p.audit_per_mille > 1000 {
        return Err(WireError::TooLarge {
            what: "welcome.policies.audit_per_mille",
            len: p.audit_per_mille as usize,
            max: 1000,
        });
    }
    if p.max_batch_shares == 0 {
        return Err(WireError::TooSmall {
            what: "welcome.policies.max_batch_shares",
            len: 0,
            min: 1,
        });
    }
    Ok(())
}
