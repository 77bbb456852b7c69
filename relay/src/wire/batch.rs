//! Share batches: the edge's accepted shares, compacted for the trip to the core.
//!
//! Each batch travels alone on its own QUIC unidirectional stream (one lost packet delays one
//! batch, not all of them) and is identified by `(edge id, epoch, seq)`, the key that makes
//! crediting exactly-once. Shares in a batch repeat a lot — the same few workers, one or two jobs,
//! one difficulty, times close together — so the header carries tables and each record only
//! indexes and deltas:
//!
//! ```text
//! kind 0x01 ‖ epoch ‖ seq ‖ base_received_ms                      (varints)
//! jobs:          n ‖ n × (id, base_ntime u32, base_version u32)
//! difficulties:  n ‖ n × f64
//! workers:       n ‖ n × name
//! sessions:      n ‖ n × (worker index, extranonce1 suffix)     (a miner connection)
//! records:       n ‖ n × (key varint ‖ extranonce2 ‖ ntime Δ ‖ nonce u32 ‖ [version xor] ‖ time Δ)
//! ```
//!
//! The record *key* packs session, job, difficulty and two flags (meets the upstream target;
//! version rolled) into one mixed-radix varint: with ten miners and two jobs it is one byte.
//! Extranonce1 is sent as the miner's slot bytes only (the core knows the lease prefix it gave
//! this edge, see [`BatchContext`]), and only once per session rather than once per share,
//! because a connection's extranonce1 never changes. The rolled version is sent as its XOR with
//! the job's version, rotated so the BIP310 mask bits (13..=28) land at the bottom of the varint.
//! Times are zigzag deltas: ntime against the job's, receive time against the previous record's.

use super::codec::{put_var_bytes, put_varint, put_zigzag, varint_len, Reader, WireError};
use super::{MAX_FRAME_LEN, STREAM_BATCH};
use crate::work::extranonce::MAX_EXTRANONCE_LEN;
use crate::work::{Difficulty, Extranonce, JobId};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The indexes a batch keeps while it is built and encoded are hashed for every share (its
/// job, worker and session): SipHash showed in the edge uplink's profile at 50,000 shares/s.
/// foldhash is several times cheaper on short keys and is seeded at random per process, so a
/// miner cannot choose worker names that collide in advance; a batch also bounds every index.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// Most share records in one batch.
pub const MAX_BATCH_RECORDS: usize = 65_535;
/// Most distinct jobs in one batch (record keys index them with a small radix).
pub const MAX_BATCH_JOBS: usize = 255;
/// Most distinct share difficulties in one batch.
pub const MAX_BATCH_DIFFICULTIES: usize = 255;
/// Most distinct worker names (and miner sessions) in one batch.
pub const MAX_BATCH_WORKERS: usize = 65_535;
/// Longest worker name (`account.worker`) on the wire; the edge itself allows far less.
pub const MAX_WORKER_NAME_LEN: usize = 255;

/// BIP310 version-rolling mask bits start at bit 13 (`0x1fffe000`): rotating the XOR right by 13
/// makes typical rolled versions 1–3 varint bytes instead of 4–5.
const VERSION_ROTATION: u32 = 13;

/// What both ends of one edge connection know, so batches need not repeat it: the lease prefix
/// the core gave the edge in `Welcome` (every miner's extranonce1 starts with it) and the size of
/// the miners' extranonce2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchContext {
    pub lease_prefix: Extranonce,
    pub extranonce2_size: u8,
}

impl BatchContext {
    fn check(&self) -> Result<(), WireError> {
        if self.extranonce2_size as usize > MAX_EXTRANONCE_LEN {
            return Err(WireError::TooLarge {
                what: "batch context extranonce2_size",
                len: self.extranonce2_size as usize,
                max: MAX_EXTRANONCE_LEN,
            });
        }
        Ok(())
    }
}

/// One accepted share as the relay protocol carries it: enough, with its job, to rebuild the
/// header and re-check the proof of work, and to credit the worker. The edge converts its
/// `ShareRecord` to this (relay cannot depend on edge).
#[derive(Clone, Debug, PartialEq)]
pub struct ShareData {
    /// `account.worker` as authorized.
    pub worker: Arc<str>,
    pub job_id: JobId,
    /// The miner's full extranonce1 (it starts with the connection's lease prefix).
    pub extranonce1: Extranonce,
    pub extranonce2: Extranonce,
    pub ntime: u32,
    pub nonce: u32,
    /// Full header version after rolling.
    pub version: u32,
    /// The difficulty the share was judged at and is credited at.
    pub difficulty: Difficulty,
    /// When the edge received it, in milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    /// Meets the upstream pool's target in proxy mining: the core must forward it upstream.
    /// One bit in the record key, so it costs nothing at typical batch sizes, and it spares the
    /// core from rehashing every share to find the few worth forwarding.
    pub meets_upstream: bool,
}

/// The values a batch's job table records for one job, against which records are delta-coded.
/// Any values decode correctly; the job's own `ntime` and `version` make the deltas smallest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobBase {
    pub ntime: u32,
    pub version: u32,
}

/// An entry of a batch's job table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchJob {
    pub id: JobId,
    pub base_ntime: u32,
    pub base_version: u32,
}

/// One share record, as indexes into the batch's tables and deltas against their base values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareWire {
    /// Index into [`Batch::workers`].
    pub worker: u16,
    /// Index into [`Batch::jobs`].
    pub job: u8,
    /// The miner's slot: its extranonce1 with the connection's lease prefix removed.
    pub extranonce1_suffix: Extranonce,
    /// Exactly [`BatchContext::extranonce2_size`] bytes.
    pub extranonce2: Extranonce,
    /// `ntime - job.base_ntime`.
    pub ntime_delta: i64,
    pub nonce: u32,
    /// `version ^ job.base_version`: zero when the miner does not roll.
    pub version_xor: u32,
    /// Index into [`Batch::difficulties`].
    pub difficulty: u8,
    /// `received_at_ms - batch.base_received_ms`.
    pub received_delta_ms: u64,
    pub meets_upstream: bool,
}

/// A decoded (or about to be encoded) share batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub epoch: u64,
    pub seq: u64,
    pub base_received_ms: u64,
    pub jobs: Vec<BatchJob>,
    pub difficulties: Vec<Difficulty>,
    pub workers: Vec<Arc<str>>,
    pub records: Vec<ShareWire>,
}

/// Bytes a batch header can take at most before its tables (kind, three varints, four counts).
const HEADER_BOUND: usize = 1 + 3 * 10 + 4 * 3 + 3;

/// Worst-case bytes of one record besides its extranonce2: key (≤ 35 bits → 5), ntime Δ (5),
/// nonce (4), version (5), time Δ (10).
const RECORD_BOUND: usize = 5 + 5 + 4 + 5 + 10;

/// Worst-case bytes of one session entry: worker index (3), suffix length (1) and bytes.
const SESSION_BOUND: usize = 3 + 1 + MAX_EXTRANONCE_LEN;

impl Batch {
    /// Builds a batch from shares; `job_base` gives each job's base ntime and version (`None`:
    /// the first share of that job supplies them). Checks every share against `ctx` and every
    /// table against its cap.
    pub fn from_shares(
        epoch: u64,
        seq: u64,
        shares: &[ShareData],
        ctx: &BatchContext,
        mut job_base: impl FnMut(&JobId) -> Option<JobBase>,
    ) -> Result<Batch, WireError> {
        ctx.check()?;
        if shares.len() > MAX_BATCH_RECORDS {
            return Err(WireError::TooLarge {
                what: "batch.records",
                len: shares.len(),
                max: MAX_BATCH_RECORDS,
            });
        }
        let base_received_ms = shares.iter().map(|s| s.received_at_ms).min().unwrap_or(0);
        let mut jobs: Vec<BatchJob> = Vec::new();
        let mut job_index: FastMap<&JobId, u8> = FastMap::default();
        let mut difficulties: Vec<Difficulty> = Vec::new();
        let mut workers: Vec<Arc<str>> = Vec::new();
        let mut worker_index: FastMap<&str, u16> = FastMap::default();
        let mut records = Vec::with_capacity(shares.len());
        for (i, s) in shares.iter().enumerate() {
            let rec = (|| {
                let suffix = share_suffix(s, ctx)?;
                let job = match job_index.entry(&s.job_id) {
                    Entry::Occupied(e) => *e.get(),
                    Entry::Vacant(e) => {
                        if jobs.len() >= MAX_BATCH_JOBS {
                            return Err(WireError::TooLarge {
                                what: "batch.jobs",
                                len: jobs.len() + 1,
                                max: MAX_BATCH_JOBS,
                            });
                        }
                        let base = job_base(&s.job_id).unwrap_or(JobBase {
                            ntime: s.ntime,
                            version: s.version,
                        });
                        jobs.push(BatchJob {
                            id: s.job_id.clone(),
                            base_ntime: base.ntime,
                            base_version: base.version,
                        });
                        *e.insert((jobs.len() - 1) as u8)
                    }
                };
                let difficulty = match difficulties
                    .iter()
                    .position(|d| d.value().to_bits() == s.difficulty.value().to_bits())
                {
                    Some(i) => i as u8,
                    None => {
                        check_difficulty(s.difficulty.value(), "share.difficulty")?;
                        if difficulties.len() >= MAX_BATCH_DIFFICULTIES {
                            return Err(WireError::TooLarge {
                                what: "batch.difficulties",
                                len: difficulties.len() + 1,
                                max: MAX_BATCH_DIFFICULTIES,
                            });
                        }
                        difficulties.push(s.difficulty);
                        (difficulties.len() - 1) as u8
                    }
                };
                let worker = match worker_index.entry(&s.worker) {
                    Entry::Occupied(e) => *e.get(),
                    Entry::Vacant(e) => {
                        check_worker_name(&s.worker)?;
                        // Cannot overflow: there are at most MAX_BATCH_RECORDS shares.
                        workers.push(s.worker.clone());
                        *e.insert((workers.len() - 1) as u16)
                    }
                };
                let job_entry = &jobs[job as usize];
                Ok(ShareWire {
                    worker,
                    job,
                    extranonce1_suffix: suffix,
                    extranonce2: s.extranonce2,
                    ntime_delta: i64::from(s.ntime) - i64::from(job_entry.base_ntime),
                    nonce: s.nonce,
                    version_xor: s.version ^ job_entry.base_version,
                    difficulty,
                    received_delta_ms: s.received_at_ms - base_received_ms,
                    meets_upstream: s.meets_upstream,
                })
            })()
            .map_err(|e| e.in_record(i))?;
            records.push(rec);
        }
        Ok(Batch {
            epoch,
            seq,
            base_received_ms,
            jobs,
            difficulties,
            workers,
            records,
        })
    }

    /// The shares this batch carries, in order, with full values restored.
    pub fn shares(&self, ctx: &BatchContext) -> Result<Vec<ShareData>, WireError> {
        ctx.check()?;
        self.records
            .iter()
            .enumerate()
            .map(|(i, r)| self.share(r, ctx).map_err(|e| e.in_record(i)))
            .collect()
    }

    fn share(&self, r: &ShareWire, ctx: &BatchContext) -> Result<ShareData, WireError> {
        let job = self
            .jobs
            .get(r.job as usize)
            .ok_or(WireError::IndexOutOfRange {
                what: "record.job",
                index: u64::from(r.job),
                len: self.jobs.len() as u64,
            })?;
        let worker = self
            .workers
            .get(r.worker as usize)
            .ok_or(WireError::IndexOutOfRange {
                what: "record.worker",
                index: u64::from(r.worker),
                len: self.workers.len() as u64,
            })?;
        let difficulty =
            self.difficulties
                .get(r.difficulty as usize)
                .ok_or(WireError::IndexOutOfRange {
                    what: "record.difficulty",
                    index: u64::from(r.difficulty),
                    len: self.difficulties.len() as u64,
                })?;
        let extranonce1 = ctx
            .lease_prefix
            .concat(&r.extranonce1_suffix)
            .map_err(|e| WireError::invalid("record.extranonce1", e.to_string()))?;
        check_extranonce2(&r.extranonce2, ctx)?;
        Ok(ShareData {
            worker: worker.clone(),
            job_id: job.id.clone(),
            extranonce1,
            extranonce2: r.extranonce2,
            ntime: apply_ntime_delta(job.base_ntime, r.ntime_delta)?,
            nonce: r.nonce,
            version: job.base_version ^ r.version_xor,
            difficulty: *difficulty,
            received_at_ms: self
                .base_received_ms
                .checked_add(r.received_delta_ms)
                .ok_or(WireError::OutOfRange {
                    what: "record.received_at_ms",
                    value: i128::from(self.base_received_ms) + i128::from(r.received_delta_ms),
                    bits: 64,
                })?,
            meets_upstream: r.meets_upstream,
        })
    }

    /// Appends the batch, stream kind first, to `out`. On error `out` is left as it was.
    pub fn encode(&self, ctx: &BatchContext, out: &mut BytesMut) -> Result<(), WireError> {
        let start = out.len();
        let result = self.encode_inner(ctx, out);
        if result.is_err() {
            out.truncate(start);
        } else if out.len() - start > MAX_FRAME_LEN {
            let len = out.len() - start;
            out.truncate(start);
            return Err(WireError::TooLarge {
                what: "batch",
                len,
                max: MAX_FRAME_LEN,
            });
        }
        result
    }

    /// The batch as one buffer: the whole content of its unidirectional stream.
    pub fn to_bytes(&self, ctx: &BatchContext) -> Result<Bytes, WireError> {
        let mut out = BytesMut::with_capacity(self.encoded_len_hint(ctx));
        self.encode(ctx, &mut out)?;
        Ok(out.freeze())
    }

    fn encoded_len_hint(&self, ctx: &BatchContext) -> usize {
        64 + self.workers.iter().map(|w| w.len() + 4).sum::<usize>()
            + self
                .jobs
                .iter()
                .map(|j| j.id.as_str().len() + 10)
                .sum::<usize>()
            + self.records.len() * (12 + ctx.extranonce2_size as usize)
    }

    fn encode_inner(&self, ctx: &BatchContext, out: &mut BytesMut) -> Result<(), WireError> {
        ctx.check()?;
        check_count(self.jobs.len(), MAX_BATCH_JOBS, "batch.jobs")?;
        check_count(
            self.difficulties.len(),
            MAX_BATCH_DIFFICULTIES,
            "batch.difficulties",
        )?;
        check_count(self.workers.len(), MAX_BATCH_WORKERS, "batch.workers")?;
        check_count(self.records.len(), MAX_BATCH_RECORDS, "batch.records")?;

        out.put_u8(STREAM_BATCH);
        put_varint(out, self.epoch);
        put_varint(out, self.seq);
        put_varint(out, self.base_received_ms);

        put_varint(out, self.jobs.len() as u64);
        for j in &self.jobs {
            put_var_bytes(
                out,
                j.id.as_str().as_bytes(),
                super::MAX_JOB_ID_LEN,
                "batch.jobs.id",
            )?;
            out.put_u32_le(j.base_ntime);
            out.put_u32_le(j.base_version);
        }
        put_varint(out, self.difficulties.len() as u64);
        for d in &self.difficulties {
            check_difficulty(d.value(), "batch.difficulties")?;
            out.put_f64_le(d.value());
        }
        put_varint(out, self.workers.len() as u64);
        for w in &self.workers {
            check_worker_name(w)?;
            put_var_bytes(out, w.as_bytes(), MAX_WORKER_NAME_LEN, "batch.workers")?;
        }

        // Sessions: distinct (worker, extranonce1 suffix) pairs in order of first use.
        let mut sessions: Vec<(u16, Extranonce)> = Vec::new();
        let mut session_index: FastMap<(u16, Extranonce), u64> = FastMap::default();
        let mut keys = Vec::with_capacity(self.records.len());
        for (i, r) in self.records.iter().enumerate() {
            let check = || -> Result<(), WireError> {
                index_ok(u64::from(r.worker), self.workers.len(), "record.worker")?;
                index_ok(u64::from(r.job), self.jobs.len(), "record.job")?;
                index_ok(
                    u64::from(r.difficulty),
                    self.difficulties.len(),
                    "record.difficulty",
                )?;
                ctx.lease_prefix
                    .concat(&r.extranonce1_suffix)
                    .map_err(|e| WireError::invalid("record.extranonce1", e.to_string()))?;
                check_extranonce2(&r.extranonce2, ctx)?;
                Ok(())
            };
            check().map_err(|e| e.in_record(i))?;
            let session = *session_index
                .entry((r.worker, r.extranonce1_suffix))
                .or_insert_with(|| {
                    sessions.push((r.worker, r.extranonce1_suffix));
                    (sessions.len() - 1) as u64
                });
            keys.push(session);
        }
        put_varint(out, sessions.len() as u64);
        for (worker, suffix) in &sessions {
            put_varint(out, u64::from(*worker));
            out.put_u8(suffix.len() as u8);
            out.put_slice(suffix.as_bytes());
        }

        let n_jobs = self.jobs.len() as u64;
        let n_diffs = self.difficulties.len() as u64;
        put_varint(out, self.records.len() as u64);
        let mut prev_received = 0u64;
        for (r, session) in self.records.iter().zip(keys) {
            let key = record_key(
                session,
                u64::from(r.job),
                u64::from(r.difficulty),
                n_jobs,
                n_diffs,
            ) << 2
                | u64::from(r.meets_upstream) << 1
                | u64::from(r.version_xor != 0);
            put_varint(out, key);
            out.put_slice(r.extranonce2.as_bytes());
            put_zigzag(out, r.ntime_delta);
            out.put_u32_le(r.nonce);
            if r.version_xor != 0 {
                put_varint(out, u64::from(r.version_xor.rotate_right(VERSION_ROTATION)));
            }
            // Wrapping difference: a bijection on u64, so any pair of deltas round-trips.
            put_zigzag(out, r.received_delta_ms.wrapping_sub(prev_received) as i64);
            prev_received = r.received_delta_ms;
        }
        Ok(())
    }

    /// Decodes the whole content of a batch stream (stream kind first).
    pub fn decode(bytes: &[u8], ctx: &BatchContext) -> Result<Batch, WireError> {
        ctx.check()?;
        if bytes.len() > MAX_FRAME_LEN {
            return Err(WireError::TooLarge {
                what: "batch",
                len: bytes.len(),
                max: MAX_FRAME_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        let kind = r.u8("batch.kind")?;
        if kind != STREAM_BATCH {
            return Err(WireError::WrongStreamKind {
                what: "batch.kind",
                expected: STREAM_BATCH,
                found: kind,
            });
        }
        let epoch = r.varint("batch.epoch")?;
        let seq = r.varint("batch.seq")?;
        let base_received_ms = r.varint("batch.base_received_ms")?;

        // Smallest job entry: 1-byte length + 8 bytes of base values.
        let n_jobs = r.count(MAX_BATCH_JOBS, 9, "batch.jobs")?;
        let mut jobs = Vec::with_capacity(n_jobs);
        for _ in 0..n_jobs {
            let id = JobId::new(r.string(super::MAX_JOB_ID_LEN, "batch.jobs.id")?);
            jobs.push(BatchJob {
                id,
                base_ntime: r.u32("batch.jobs.base_ntime")?,
                base_version: r.u32("batch.jobs.base_version")?,
            });
        }
        let n_diffs = r.count(MAX_BATCH_DIFFICULTIES, 8, "batch.difficulties")?;
        let mut difficulties = Vec::with_capacity(n_diffs);
        for _ in 0..n_diffs {
            let d = r.f64("batch.difficulties")?;
            difficulties.push(check_difficulty(d, "batch.difficulties")?);
        }
        let n_workers = r.count(MAX_BATCH_WORKERS, 1, "batch.workers")?;
        let mut workers = Vec::with_capacity(n_workers);
        for _ in 0..n_workers {
            let w = r.string(MAX_WORKER_NAME_LEN, "batch.workers")?;
            workers.push(Arc::<str>::from(w));
        }
        let max_suffix = MAX_EXTRANONCE_LEN - ctx.lease_prefix.len();
        // Smallest session entry: worker index + suffix length.
        let n_sessions = r.count(MAX_BATCH_RECORDS, 2, "batch.sessions")?;
        let mut sessions = Vec::with_capacity(n_sessions);
        for _ in 0..n_sessions {
            let worker = r.varint("batch.sessions.worker")?;
            index_ok(worker, workers.len(), "batch.sessions.worker")?;
            let len = r.u8("batch.sessions.extranonce1_suffix")? as usize;
            if len > max_suffix {
                return Err(WireError::TooLarge {
                    what: "batch.sessions.extranonce1_suffix",
                    len,
                    max: max_suffix,
                });
            }
            let suffix = r.bytes(len, "batch.sessions.extranonce1_suffix")?;
            let suffix = Extranonce::from_slice(suffix).map_err(|e| {
                WireError::invalid("batch.sessions.extranonce1_suffix", e.to_string())
            })?;
            sessions.push((worker as u16, suffix));
        }

        let e2_len = ctx.extranonce2_size as usize;
        // Smallest record: key, extranonce2, ntime Δ, nonce, time Δ.
        let n_records = r.count(MAX_BATCH_RECORDS, 1 + e2_len + 1 + 4 + 1, "batch.records")?;
        let key_limit = (n_sessions as u64) * (n_jobs as u64) * (n_diffs as u64) * 4;
        let mut records = Vec::with_capacity(n_records);
        let mut prev_received = 0u64;
        for i in 0..n_records {
            let rec = (|| {
                let key = r.varint("record.key")?;
                if key >= key_limit {
                    return Err(WireError::IndexOutOfRange {
                        what: "record.key",
                        index: key,
                        len: key_limit,
                    });
                }
                let rolled = key & 1 == 1;
                let meets_upstream = key & 2 == 2;
                let rest = key >> 2;
                let difficulty = (rest % n_diffs as u64) as u8;
                let rest = rest / n_diffs as u64;
                let job = (rest % n_jobs as u64) as u8;
                let session = (rest / n_jobs as u64) as usize;
                let (worker, extranonce1_suffix) =
                    *sessions.get(session).ok_or(WireError::IndexOutOfRange {
                        what: "record.session",
                        index: session as u64,
                        len: sessions.len() as u64,
                    })?;
                let extranonce2 = Extranonce::from_slice(r.bytes(e2_len, "record.extranonce2")?)
                    .map_err(|e| WireError::invalid("record.extranonce2", e.to_string()))?;
                let ntime_delta = r.zigzag("record.ntime_delta")?;
                let base_ntime = jobs.get(job as usize).map_or(0, |j| j.base_ntime);
                apply_ntime_delta(base_ntime, ntime_delta)?;
                let nonce = r.u32("record.nonce")?;
                let version_xor = if rolled {
                    let v = r.varint("record.version_xor")?;
                    let v = u32::try_from(v).map_err(|_| WireError::OutOfRange {
                        what: "record.version_xor",
                        value: i128::from(v),
                        bits: 32,
                    })?;
                    if v == 0 {
                        return Err(WireError::invalid(
                            "record.version_xor",
                            "flagged as rolled but zero",
                        ));
                    }
                    v.rotate_left(VERSION_ROTATION)
                } else {
                    0
                };
                let step = r.zigzag("record.received_delta_ms")?;
                let received_delta_ms = prev_received.wrapping_add(step as u64);
                if base_received_ms.checked_add(received_delta_ms).is_none() {
                    return Err(WireError::OutOfRange {
                        what: "record.received_at_ms",
                        value: i128::from(base_received_ms) + i128::from(received_delta_ms),
                        bits: 64,
                    });
                }
                prev_received = received_delta_ms;
                Ok(ShareWire {
                    worker,
                    job,
                    extranonce1_suffix,
                    extranonce2,
                    ntime_delta,
                    nonce,
                    version_xor,
                    difficulty,
                    received_delta_ms,
                    meets_upstream,
                })
            })()
            .map_err(|e: WireError| e.in_record(i))?;
            records.push(rec);
        }
        r.finish("batch")?;
        Ok(Batch {
            epoch,
            seq,
            base_received_ms,
            jobs,
            difficulties,
            workers,
            records,
        })
    }
}

fn record_key(session: u64, job: u64, diff: u64, n_jobs: u64, n_diffs: u64) -> u64 {
    (session * n_jobs + job) * n_diffs + diff
}

fn check_count(len: usize, max: usize, what: &'static str) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::TooLarge { what, len, max });
    }
    Ok(())
}

fn index_ok(index: u64, len: usize, what: &'static str) -> Result<(), WireError> {
    if index >= len as u64 {
        return Err(WireError::IndexOutOfRange {
            what,
            index,
            len: len as u64,
        });
    }
    Ok(())
}

fn check_difficulty(d: f64, what: &'static str) -> Result<Difficulty, WireError> {
    Difficulty::new(d).map_err(|e| WireError::invalid(what, e.to_string()))
}

fn check_worker_name(w: &str) -> Result<(), WireError> {
    if w.len() > MAX_WORKER_NAME_LEN {
        return Err(WireError::TooLarge {
            what: "share.worker",
            len: w.len(),
            max: MAX_WORKER_NAME_LEN,
        });
    }
    Ok(())
}

fn check_extranonce2(e2: &Extranonce, ctx: &BatchContext) -> Result<(), WireError> {
    if e2.len() != ctx.extranonce2_size as usize {
        return Err(WireError::invalid(
            "share.extranonce2",
            format!(
                "has {} bytes, the connection's extranonce2_size is {}",
                e2.len(),
                ctx.extranonce2_size
            ),
        ));
    }
    Ok(())
}

/// The miner's slot bytes: extranonce1 after the lease prefix. A share whose extranonce1 does not
/// start with the prefix did not come from a miner of this lease; refuse it rather than send it.
fn share_suffix(s: &ShareData, ctx: &BatchContext) -> Result<Extranonce, WireError> {
    check_extranonce2(&s.extranonce2, ctx)?;
    let prefix = ctx.lease_prefix.as_bytes();
    match s.extranonce1.as_bytes().strip_prefix(prefix) {
        Some(suffix) => Extranonce::from_slice(suffix)
            .map_err(|e| WireError::invalid("share.extranonce1", e.to_string())),
        None => Err(WireError::invalid(
            "share.extranonce1",
            format!(
                "{} does not start with the lease prefix {}",
                s.extranonce1, ctx.lease_prefix
            ),
        )),
    }
}

fn apply_ntime_delta(base: u32, delta: i64) -> Result<u32, WireError> {
    let v = i128::from(base) + i128::from(delta);
    u32::try_from(v).map_err(|_| WireError::OutOfRange {
        what: "record.ntime",
        value: v,
        bits: 32,
    })
}

/// Accumulates shares for the next batch, refusing one that would push the batch past a cap
/// (records, jobs, difficulties, or the 1 MiB stream limit), so the caller knows to send what it
/// has and start a new batch — a batch that fails to encode would otherwise strand its shares.
#[derive(Debug)]
pub struct BatchBuilder {
    ctx: BatchContext,
    shares: Vec<ShareData>,
    jobs: FastMap<JobId, usize>,
    difficulties: Vec<u64>,
    workers: FastSet<Arc<str>>,
    /// Upper bound on the encoded size of what is held.
    bound: usize,
}

/// Why [`BatchBuilder::push`] refused a share.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PushError {
    /// The batch is full; send it and push the share into the next one.
    #[error("batch is full: {0}")]
    Full(WireError),
    /// The share itself can never be encoded (wrong extranonce sizes, bad difficulty, ...).
    #[error("share cannot be sent: {0}")]
    Invalid(WireError),
}

/// A share [`BatchBuilder::push`] refused, returned to the caller with the reason.
#[derive(Debug, PartialEq)]
pub struct Rejected {
    pub error: PushError,
    pub share: Box<ShareData>,
}

impl BatchBuilder {
    pub fn new(ctx: BatchContext) -> Self {
        BatchBuilder {
            ctx,
            shares: Vec::new(),
            jobs: FastMap::default(),
            difficulties: Vec::new(),
            workers: FastSet::default(),
            bound: HEADER_BOUND,
        }
    }

    pub fn context(&self) -> &BatchContext {
        &self.ctx
    }

    pub fn len(&self) -> usize {
        self.shares.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shares.is_empty()
    }

    pub fn shares(&self) -> &[ShareData] {
        &self.shares
    }

    /// Adds a share, or hands it back with the reason it was refused, so a full batch can be
    /// sent and the same share pushed into the next one.
    pub fn push(&mut self, share: ShareData) -> Result<(), Rejected> {
        match self.admit(&share) {
            Ok(added) => {
                self.bound += added;
                if !self.jobs.contains_key(&share.job_id) {
                    self.jobs.insert(share.job_id.clone(), self.jobs.len());
                }
                let bits = share.difficulty.value().to_bits();
                if !self.difficulties.contains(&bits) {
                    self.difficulties.push(bits);
                }
                if !self.workers.contains(&share.worker) {
                    self.workers.insert(share.worker.clone());
                }
                self.shares.push(share);
                Ok(())
            }
            Err(error) => Err(Rejected {
                error,
                share: Box::new(share),
            }),
        }
    }

    /// Checks a share and returns the bytes it may add to the encoded batch.
    fn admit(&self, s: &ShareData) -> Result<usize, PushError> {
        self.ctx.check().map_err(PushError::Invalid)?;
        share_suffix(s, &self.ctx).map_err(PushError::Invalid)?;
        check_difficulty(s.difficulty.value(), "share.difficulty").map_err(PushError::Invalid)?;
        check_worker_name(&s.worker).map_err(PushError::Invalid)?;
        if s.job_id.as_str().len() > super::MAX_JOB_ID_LEN {
            return Err(PushError::Invalid(WireError::TooLarge {
                what: "share.job_id",
                len: s.job_id.as_str().len(),
                max: super::MAX_JOB_ID_LEN,
            }));
        }
        if self.shares.len() >= MAX_BATCH_RECORDS {
            return Err(PushError::Full(WireError::TooLarge {
                what: "batch.records",
                len: self.shares.len() + 1,
                max: MAX_BATCH_RECORDS,
            }));
        }
        let mut added = RECORD_BOUND + self.ctx.extranonce2_size as usize + SESSION_BOUND;
        if !self.jobs.contains_key(&s.job_id) {
            if self.jobs.len() >= MAX_BATCH_JOBS {
                return Err(PushError::Full(WireError::TooLarge {
                    what: "batch.jobs",
                    len: self.jobs.len() + 1,
                    max: MAX_BATCH_JOBS,
                }));
            }
            added += varint_len(s.job_id.as_str().len() as u64) + s.job_id.as_str().len() + 8;
        }
        if !self.difficulties.contains(&s.difficulty.value().to_bits()) {
            if self.difficulties.len() >= MAX_BATCH_DIFFICULTIES {
                return Err(PushError::Full(WireError::TooLarge {
                    what: "batch.difficulties",
                    len: self.difficulties.len() + 1,
                    max: MAX_BATCH_DIFFICULTIES,
                }));
            }
            added += 8;
        }
        if !self.workers.contains(&s.worker) {
            added += varint_len(s.worker.len() as u64) + s.worker.len();
        }
        if self.bound + added > MAX_FRAME_LEN {
            return Err(PushError::Full(WireError::TooLarge {
                what: "batch",
                len: self.bound + added,
                max: MAX_FRAME_LEN,
            }));
        }
        Ok(added)
    }

    /// Builds the batch from what is held, leaving the builder as it was.
    pub fn build(
        &self,
        epoch: u64,
        seq: u64,
        job_base: impl FnMut(&JobId) -> Option<JobBase>,
    ) -> Result<Batch, WireError> {
        Batch::from_shares(epoch, seq, &self.shares, &self.ctx, job_base)
    }

    /// Encodes what is held as the content of one batch stream and empties the builder. On error
    /// the shares stay in the builder.
    pub fn finish(
        &mut self,
        epoch: u64,
        seq: u64,
        job_base: impl FnMut(&JobId) -> Option<JobBase>,
    ) -> Result<Bytes, WireError> {
        let bytes = self.build(epoch, seq, job_base)?.to_bytes(&self.ctx)?;
        self.shares.clear();
        self.jobs.clear();
        self.difficulties.clear();
        self.workers.clear();
        self.bound = HEADER_BOUND;
        Ok(bytes)
    }
}
