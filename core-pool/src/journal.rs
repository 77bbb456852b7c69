//! The shard journal: every share batch and block candidate an edge sent, durable before it is
//! acked, and the truth the ledger is rebuilt from.
//!
//! Exactly-once crediting rests on the key `(edge id, epoch, seq)`. An edge numbers its batches
//! and block candidates `1, 2, 3, …` within an epoch; the journal keeps, per edge and epoch, the
//! **high-water mark** — the highest `h` such that every seq in `1..=h` is journaled — plus the
//! journaled seqs above it (batches travel on separate QUIC streams, so seq 5 may land before
//! seq 4). The core acks `h`, cumulatively; the edge trims its spool through it. A record whose
//! key is already journaled is a replay: it is acked again and never credited twice, neither
//! live nor when the journal is replayed at start.
//!
//! The journal is a [`SegLog`] (the same segment format, checksums, group commit and torn-tail
//! recovery as the edge's spool). Each record's payload is
//!
//! ```text
//! format u8 (= 1) ‖ kind u8 (1 batch, 2 block) ‖ edge id (u8 len ‖ bytes) ‖ epoch u64
//!   ‖ seq u64 ‖ lease prefix (u8 len ‖ bytes) ‖ extranonce2_size u8
//!   ‖ rejected (u32 count ‖ count × u32 share index) ‖ journaled_at_ms u64
//!   ‖ message (u32 len ‖ the unidirectional stream's bytes as received, kind byte first)
//! ```
//!
//! (integers little-endian). The lease prefix and extranonce2 size are what the message needs to
//! be decoded ([`BatchContext`]); `rejected` lists the shares the core's audit refused: they are
//! journaled and acked (the edge must not resend them) but never credited.
//!
//! [`Journal::append`] only buffers; [`Journal::sync`] makes everything appended durable with one
//! fsync and only then indexes and credits it. A folder lock (`LOCK`, `flock`) keeps a second
//! process from writing the same journal; [`JournalReader`] reads a journal in use from a copy.

use crate::ledger::Ledger;
use bytes::{BufMut, Bytes};
use parking_lot::RwLock;
use relay::seglog::{Recovery, SegLog, SegLogConfig, SegLogError};
use relay::wire::{BatchContext, EdgeId, ShareData, UniMessage, WireError, STREAM_BATCH};
use relay::wire::{MAX_FRAME_LEN, STREAM_BLOCK};
use relay::work::Extranonce;
use serde_json::json;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Version byte at the start of every journal record payload.
pub const JOURNAL_FORMAT: u8 = 1;

/// Name of the lock file in the journal folder.
pub const LOCK_FILE: &str = "LOCK";

/// What a journal record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A share batch (stream kind [`STREAM_BATCH`]).
    Batch,
    /// A block candidate (stream kind [`STREAM_BLOCK`]).
    Block,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Batch => "batch",
            RecordKind::Block => "block",
        }
    }

    fn byte(self) -> u8 {
        match self {
            RecordKind::Batch => 1,
            RecordKind::Block => 2,
        }
    }

    fn stream_kind(self) -> u8 {
        match self {
            RecordKind::Batch => STREAM_BATCH,
            RecordKind::Block => STREAM_BLOCK,
        }
    }
}

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {}: {source}", dir.display())]
    Log {
        dir: PathBuf,
        #[source]
        source: SegLogError,
    },
    #[error("journal {}: {op}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {}: in use by another process (it holds {LOCK_FILE})", dir.display())]
    Locked { dir: PathBuf },
    #[error("journal record {index}: {reason}")]
    BadRecord { index: u64, reason: String },
    #[error("edge {edge} epoch {epoch} seq {seq}: {reason}")]
    BadMessage {
        edge: EdgeId,
        epoch: u64,
        seq: u64,
        reason: String,
    },
}

/// One journal entry: a batch or block candidate as an edge sent it, with what is needed to
/// decode it again.
#[derive(Clone, Debug, PartialEq)]
pub struct JournalRecord {
    pub edge: EdgeId,
    pub epoch: u64,
    pub seq: u64,
    pub kind: RecordKind,
    /// The edge's lease prefix when it sent the message (every share's extranonce1 starts with
    /// it; batches carry only the suffix).
    pub lease_prefix: Extranonce,
    pub extranonce2_size: u8,
    /// Share indexes (batch record order; 0 for a block) the core's audit refused.
    pub rejected: Vec<u32>,
    /// When the core journaled it, ms since the Unix epoch.
    pub journaled_at_ms: u64,
    /// The unidirectional stream's content as received, kind byte first.
    pub message: Bytes,
}

impl JournalRecord {
    /// What decoding `message` needs.
    pub fn context(&self) -> BatchContext {
        BatchContext {
            lease_prefix: self.lease_prefix,
            extranonce2_size: self.extranonce2_size,
        }
    }

    /// Every share the message carries, in order, after checking that the message agrees with
    /// the record's key and kind.
    pub fn shares(&self) -> Result<Vec<ShareData>, JournalError> {
        let bad = |reason: String| JournalError::BadMessage {
            edge: self.edge.clone(),
            epoch: self.epoch,
            seq: self.seq,
            reason,
        };
        let wire = |e: WireError| bad(e.to_string());
        let (epoch, seq, shares) =
            match UniMessage::decode(&self.message, &self.context()).map_err(wire)? {
                UniMessage::Batch(b) if self.kind == RecordKind::Batch => {
                    (b.epoch, b.seq, b.shares(&self.context()).map_err(wire)?)
                }
                UniMessage::Block(b) if self.kind == RecordKind::Block => {
                    (b.epoch, b.seq, vec![b.share])
                }
                _ => {
                    return Err(bad(format!(
                        "record says {} but the message is of another kind",
                        self.kind.as_str()
                    )))
                }
            };
        if (epoch, seq) != (self.epoch, self.seq) {
            return Err(bad(format!(
                "the message says epoch {epoch} seq {seq}, the record epoch {} seq {}",
                self.epoch, self.seq
            )));
        }
        Ok(shares)
    }

    /// The shares to credit: all of them but the rejected ones, with their index.
    pub fn credited_shares(&self) -> Result<Vec<(u32, ShareData)>, JournalError> {
        let rejected: HashSet<u32> = self.rejected.iter().copied().collect();
        Ok(self
            .shares()?
            .into_iter()
            .enumerate()
            .map(|(i, s)| (i as u32, s))
            .filter(|(i, _)| !rejected.contains(i))
            .collect())
    }

    /// The record's payload (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let edge = self.edge.as_str().as_bytes();
        let mut out = Vec::with_capacity(64 + edge.len() + self.message.len());
        out.put_u8(JOURNAL_FORMAT);
        out.put_u8(self.kind.byte());
        // EdgeId is at most 64 bytes, an extranonce at most 16: both fit a u8 length.
        out.put_u8(edge.len() as u8);
        out.put_slice(edge);
        out.put_u64_le(self.epoch);
        out.put_u64_le(self.seq);
        out.put_u8(self.lease_prefix.len() as u8);
        out.put_slice(self.lease_prefix.as_bytes());
        out.put_u8(self.extranonce2_size);
        out.put_u32_le(self.rejected.len() as u32);
        for r in &self.rejected {
            out.put_u32_le(*r);
        }
        out.put_u64_le(self.journaled_at_ms);
        out.put_u32_le(self.message.len() as u32);
        out.put_slice(&self.message);
        out
    }

    /// Decodes a payload written by [`JournalRecord::encode`]; `index` is the log record index,
    /// for the error.
    pub fn decode(payload: &[u8], index: u64) -> Result<JournalRecord, JournalError> {
        let bad = |reason: String| JournalError::BadRecord { index, reason };
        let mut r = Cursor { buf: payload };
        let format = r.u8("format").map_err(bad)?;
        if format != JOURNAL_FORMAT {
            return Err(bad(format!(
                "format {format}, this build reads {JOURNAL_FORMAT}"
            )));
        }
        let kind = match r.u8("kind").map_err(bad)? {
            1 => RecordKind::Batch,
            2 => RecordKind::Block,
            other => return Err(bad(format!("unknown kind {other}"))),
        };
        let edge_len = r.u8("edge id length").map_err(bad)? as usize;
        let edge = r.take(edge_len, "edge id").map_err(bad)?;
        let edge = std::str::from_utf8(edge)
            .map_err(|_| bad("edge id is not UTF-8".into()))
            .and_then(|s| EdgeId::new(s).map_err(|e| bad(e.to_string())))?;
        let epoch = r.u64("epoch").map_err(bad)?;
        let seq = r.u64("seq").map_err(bad)?;
        let prefix_len = r.u8("lease prefix length").map_err(bad)? as usize;
        let lease_prefix = Extranonce::from_slice(r.take(prefix_len, "lease prefix").map_err(bad)?)
            .map_err(|e| bad(format!("lease prefix: {e}")))?;
        let extranonce2_size = r.u8("extranonce2 size").map_err(bad)?;
        let n_rejected = r.u32("rejected count").map_err(bad)? as usize;
        if n_rejected.saturating_mul(4) > r.buf.len() {
            return Err(bad(format!(
                "{n_rejected} rejected shares do not fit in the record"
            )));
        }
        let mut rejected = Vec::with_capacity(n_rejected);
        for _ in 0..n_rejected {
            rejected.push(r.u32("rejected share").map_err(bad)?);
        }
        let journaled_at_ms = r.u64("journaled_at_ms").map_err(bad)?;
        let message_len = r.u32("message length").map_err(bad)? as usize;
        let message = Bytes::copy_from_slice(r.take(message_len, "message").map_err(bad)?);
        if !r.buf.is_empty() {
            return Err(bad(format!(
                "{} bytes after the end of the record",
                r.buf.len()
            )));
        }
        if message.first() != Some(&kind.stream_kind()) {
            return Err(bad(format!(
                "a {} record whose message does not start with stream kind {:#04x}",
                kind.as_str(),
                kind.stream_kind()
            )));
        }
        Ok(JournalRecord {
            edge,
            epoch,
            seq,
            kind,
            lease_prefix,
            extranonce2_size,
            rejected,
            journaled_at_ms,
            message,
        })
    }
}

/// A checked reader over a record payload; every read names its field.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!("{what}: needs {n} bytes, {} left", self.buf.len()));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
}

/// The journaled seqs of one edge and epoch: everything in `1..=high_water`, and some above.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqSet {
    /// 0 while seq 1 is missing.
    high_water: u64,
    above: BTreeSet<u64>,
}

impl SeqSet {
    pub fn contains(&self, seq: u64) -> bool {
        (seq != 0 && seq <= self.high_water) || self.above.contains(&seq)
    }

    /// Adds `seq`; false if it was there already. Seq 0 is never journaled (seqs start at 1).
    pub fn insert(&mut self, seq: u64) -> bool {
        if seq == 0 || self.contains(seq) {
            return false;
        }
        if seq == self.high_water + 1 {
            self.high_water = seq;
            while self.above.remove(&(self.high_water + 1)) {
                self.high_water += 1;
            }
        } else {
            self.above.insert(seq);
        }
        true
    }

    /// The highest `h` with every seq in `1..=h` present; `None` while seq 1 is missing.
    pub fn high_water(&self) -> Option<u64> {
        (self.high_water > 0).then_some(self.high_water)
    }

    /// Seqs present above the high-water mark (waiting for a gap to fill).
    pub fn above(&self) -> impl Iterator<Item = u64> + '_ {
        self.above.iter().copied()
    }
}

/// What is journaled, per edge and epoch. Shared read-only with the gateway's connection tasks
/// (duplicate checks, `Welcome.acked_through`); written only by [`Journal::sync`] and replay.
#[derive(Debug, Default)]
pub struct JournalIndex {
    edges: HashMap<EdgeId, HashMap<u64, SeqSet>>,
}

impl JournalIndex {
    pub fn contains(&self, edge: &EdgeId, epoch: u64, seq: u64) -> bool {
        self.seqs(edge, epoch).is_some_and(|s| s.contains(seq))
    }

    pub fn high_water(&self, edge: &EdgeId, epoch: u64) -> Option<u64> {
        self.seqs(edge, epoch).and_then(SeqSet::high_water)
    }

    pub fn seqs(&self, edge: &EdgeId, epoch: u64) -> Option<&SeqSet> {
        self.edges.get(edge).and_then(|e| e.get(&epoch))
    }

    /// The newest epoch journaled for `edge`.
    pub fn latest_epoch(&self, edge: &EdgeId) -> Option<u64> {
        self.edges.get(edge).and_then(|e| e.keys().max().copied())
    }

    fn insert(&mut self, edge: &EdgeId, epoch: u64, seq: u64) -> bool {
        if let Some(e) = self.edges.get_mut(edge) {
            return e.entry(epoch).or_default().insert(seq);
        }
        let mut set = SeqSet::default();
        let new = set.insert(seq);
        self.edges
            .insert(edge.clone(), HashMap::from([(epoch, set)]));
        new
    }
}

/// What [`Journal::open`] found.
#[derive(Clone, Debug)]
pub struct JournalRecovery {
    /// What the segment log found and truncated.
    pub log: Recovery,
    /// Records read.
    pub records: u64,
    /// Records whose key was already journaled (a replay journaled twice): not credited again.
    pub duplicates: u64,
    /// Records that could not be decoded (logged; not credited).
    pub undecodable: u64,
    /// Shares credited to the ledger.
    pub credited_shares: u64,
}

/// The outcome of [`Journal::append`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Buffered; durable and credited at the next [`Journal::sync`].
    New { shares: usize },
    /// The key is journaled (or pending) already: nothing was written.
    Duplicate,
}

/// One record made durable by [`Journal::sync`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Synced {
    pub edge: EdgeId,
    pub epoch: u64,
    pub seq: u64,
    /// Shares credited for it.
    pub shares: u64,
}

struct Pending {
    edge: EdgeId,
    epoch: u64,
    seq: u64,
    credits: Vec<(Arc<str>, f64, bool)>,
}

/// Holds `LOCK` exclusively while alive (released when the file closes).
#[derive(Debug)]
struct DirLock {
    _file: File,
}

impl DirLock {
    /// `Ok(None)` when another process holds the lock.
    fn try_acquire(dir: &Path) -> Result<Option<DirLock>, JournalError> {
        fs::create_dir_all(dir).map_err(|source| JournalError::Io {
            op: "create folder",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| JournalError::Io {
                op: "open",
                path: path.clone(),
                source,
            })?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on a file descriptor we own and keep open; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::WouldBlock {
                    return Ok(None);
                }
                return Err(JournalError::Io {
                    op: "lock",
                    path,
                    source: err,
                });
            }
        }
        Ok(Some(DirLock { _file: file }))
    }
}

/// The default log settings of a journal: 64 MiB segments, fsync on. The journal is not trimmed
/// yet (the SQL ledger will trim what it has ingested), so the cap is effectively off: refusing
/// a share the edge cannot spool forever is worse than a full disk, which alerts anyway.
pub fn default_log_config() -> SegLogConfig {
    SegLogConfig {
        segment_bytes: 64 << 20,
        max_total_bytes: 1 << 50,
        fsync: true,
    }
}

/// The open journal of this shard. Single writer: the gateway's journal thread owns it.
pub struct Journal {
    dir: PathBuf,
    log: SegLog,
    ledger: Arc<Ledger>,
    index: Arc<RwLock<JournalIndex>>,
    pending: Vec<Pending>,
    pending_keys: HashSet<(EdgeId, u64, u64)>,
    _lock: DirLock,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("log", &self.log)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, replays it — rebuilding the high-water
    /// marks and crediting `ledger` once per `(edge, epoch, seq)` — and locks the folder.
    pub fn open(
        dir: &Path,
        ledger: Arc<Ledger>,
    ) -> Result<(Journal, JournalRecovery), JournalError> {
        Self::open_with(dir, default_log_config(), ledger)
    }

    pub fn open_with(
        dir: &Path,
        cfg: SegLogConfig,
        ledger: Arc<Ledger>,
    ) -> Result<(Journal, JournalRecovery), JournalError> {
        let lock = DirLock::try_acquire(dir)?.ok_or_else(|| JournalError::Locked {
            dir: dir.to_path_buf(),
        })?;
        let (log, recovery) = SegLog::open(dir, cfg).map_err(|source| JournalError::Log {
            dir: dir.to_path_buf(),
            source,
        })?;
        if let Some((path, offset, reason)) = &recovery.truncated_at {
            tracing::warn!(
                file = %path.display(),
                offset,
                reason,
                bytes = recovery.truncated_bytes,
                "journal: cut a torn tail (records never acked)"
            );
        }
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            log,
            ledger,
            index: Arc::new(RwLock::new(JournalIndex::default())),
            pending: Vec::new(),
            pending_keys: HashSet::new(),
            _lock: lock,
        };
        let report = journal.replay(recovery)?;
        Ok((journal, report))
    }

    /// Indexes and credits every record not indexed yet (all of them at open).
    fn replay(&mut self, log_recovery: Recovery) -> Result<JournalRecovery, JournalError> {
        let mut report = JournalRecovery {
            log: log_recovery,
            records: 0,
            duplicates: 0,
            undecodable: 0,
            credited_shares: 0,
        };
        let dir = self.dir.clone();
        let mut index = self.index.write();
        let iter = self.log.iter_from(1).map_err(|source| JournalError::Log {
            dir: dir.clone(),
            source,
        })?;
        for item in iter {
            let (i, payload) = item.map_err(|source| JournalError::Log {
                dir: dir.clone(),
                source,
            })?;
            report.records += 1;
            let record = match JournalRecord::decode(&payload, i) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "journal: undecodable record, not credited");
                    report.undecodable += 1;
                    continue;
                }
            };
            if record.seq == 0 || index.contains(&record.edge, record.epoch, record.seq) {
                report.duplicates += u64::from(record.seq != 0);
                continue;
            }
            match record.credited_shares() {
                Ok(shares) => {
                    index.insert(&record.edge, record.epoch, record.seq);
                    let block = record.kind == RecordKind::Block;
                    self.ledger.credit_all(
                        shares
                            .iter()
                            .map(|(_, s)| (&s.worker, s.difficulty.value(), block)),
                    );
                    report.credited_shares += shares.len() as u64;
                }
                Err(e) => {
                    tracing::error!(record = i, error = %e, "journal: undecodable message");
                    report.undecodable += 1;
                }
            }
        }
        Ok(report)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The index, shared for reads (duplicate checks and high-water marks from other threads).
    /// It holds durable records only.
    pub fn index(&self) -> Arc<RwLock<JournalIndex>> {
        self.index.clone()
    }

    /// Whether the key is journaled, or appended and waiting for [`Journal::sync`].
    pub fn contains(&self, edge: &EdgeId, epoch: u64, seq: u64) -> bool {
        self.pending_keys.contains(&(edge.clone(), epoch, seq))
            || self.index.read().contains(edge, epoch, seq)
    }

    /// The durable high-water mark of `edge` in `epoch`: every seq in `1..=h` is journaled.
    pub fn high_water(&self, edge: &EdgeId, epoch: u64) -> Option<u64> {
        self.index.read().high_water(edge, epoch)
    }

    /// Buffers a record. Refuses seq 0 and a message that does not decode with the record's
    /// context (nothing undecodable is ever journaled). A key already journaled or pending is
    /// not written again.
    pub fn append(&mut self, record: &JournalRecord) -> Result<Appended, JournalError> {
        if record.seq == 0 {
            return Err(JournalError::BadMessage {
                edge: record.edge.clone(),
                epoch: record.epoch,
                seq: 0,
                reason: "sequence numbers start at 1".into(),
            });
        }
        if self.contains(&record.edge, record.epoch, record.seq) {
            return Ok(Appended::Duplicate);
        }
        if record.message.len() > MAX_FRAME_LEN {
            return Err(JournalError::BadMessage {
                edge: record.edge.clone(),
                epoch: record.epoch,
                seq: record.seq,
                reason: format!(
                    "message of {} bytes is over {MAX_FRAME_LEN}",
                    record.message.len()
                ),
            });
        }
        let block = record.kind == RecordKind::Block;
        let credits: Vec<(Arc<str>, f64, bool)> = record
            .credited_shares()?
            .into_iter()
            .map(|(_, s)| (s.worker, s.difficulty.value(), block))
            .collect();
        self.log
            .append(&record.encode())
            .map_err(|source| JournalError::Log {
                dir: self.dir.clone(),
                source,
            })?;
        let shares = credits.len();
        self.pending_keys
            .insert((record.edge.clone(), record.epoch, record.seq));
        self.pending.push(Pending {
            edge: record.edge.clone(),
            epoch: record.epoch,
            seq: record.seq,
            credits,
        });
        Ok(Appended::New { shares })
    }

    /// Makes everything appended durable (one write, one fsync), then indexes and credits it.
    ///
    /// On failure nothing pending is indexed or credited (so nothing is acked); the log refuses
    /// further writes until [`Journal::recover`].
    pub fn sync(&mut self) -> Result<Vec<Synced>, JournalError> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.log.sync();
        let pending = std::mem::take(&mut self.pending);
        self.pending_keys.clear();
        result.map_err(|source| JournalError::Log {
            dir: self.dir.clone(),
            source,
        })?;
        let mut index = self.index.write();
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            index.insert(&p.edge, p.epoch, p.seq);
            self.ledger
                .credit_all(p.credits.iter().map(|(w, d, b)| (w, *d, *b)));
            out.push(Synced {
                edge: p.edge,
                epoch: p.epoch,
                seq: p.seq,
                shares: p.credits.len() as u64,
            });
        }
        Ok(out)
    }

    /// After a failed write: reopens the log (cutting a torn tail) and indexes and credits any
    /// record that reached the disk without being reported durable.
    pub fn recover(&mut self, cfg: SegLogConfig) -> Result<JournalRecovery, JournalError> {
        self.pending.clear();
        self.pending_keys.clear();
        let (log, recovery) = SegLog::open(&self.dir, cfg).map_err(|source| JournalError::Log {
            dir: self.dir.clone(),
            source,
        })?;
        self.log = log;
        self.replay(recovery)
    }

    /// Every credited share in the journal, oldest first, each record once.
    pub fn shares(&mut self) -> Result<SharesIter<'_>, JournalError> {
        SharesIter::new(&mut self.log, &self.dir)
    }
}

/// A journaled, credited share with its identity.
#[derive(Clone, Debug, PartialEq)]
pub struct JournaledShare {
    pub edge: EdgeId,
    pub epoch: u64,
    pub seq: u64,
    pub kind: RecordKind,
    /// Position in its batch (0 for a block).
    pub index: u32,
    pub share: ShareData,
}

impl JournaledShare {
    /// One JSON object: `worker, job_id, extranonce1, extranonce2` (hex), `ntime, nonce,
    /// version` (8 hex digits, as in `mining.submit`), `difficulty` (number), `edge, epoch, seq,
    /// kind, index, received_at_ms`.
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.share;
        json!({
            "worker": &*s.worker,
            "job_id": s.job_id.as_str(),
            "extranonce1": s.extranonce1.to_hex(),
            "extranonce2": s.extranonce2.to_hex(),
            "ntime": format!("{:08x}", s.ntime),
            "nonce": format!("{:08x}", s.nonce),
            "version": format!("{:08x}", s.version),
            "difficulty": s.difficulty.value(),
            "edge": self.edge.as_str(),
            "epoch": self.epoch,
            "seq": self.seq,
            "kind": self.kind.as_str(),
            "index": self.index,
            "received_at_ms": s.received_at_ms,
        })
    }
}

/// Iterator over the credited shares of a journal (see [`Journal::shares`]).
pub struct SharesIter<'a> {
    inner: relay::seglog::Iter<'a>,
    dir: PathBuf,
    seen: HashSet<(EdgeId, u64, u64)>,
    buf: VecDeque<JournaledShare>,
    failed: bool,
}

impl<'a> SharesIter<'a> {
    fn new(log: &'a mut SegLog, dir: &Path) -> Result<Self, JournalError> {
        let inner = log.iter_from(1).map_err(|source| JournalError::Log {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(SharesIter {
            inner,
            dir: dir.to_path_buf(),
            seen: HashSet::new(),
            buf: VecDeque::new(),
            failed: false,
        })
    }
}

impl Iterator for SharesIter<'_> {
    type Item = Result<JournaledShare, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(s) = self.buf.pop_front() {
                return Some(Ok(s));
            }
            if self.failed {
                return None;
            }
            let (i, payload) = match self.inner.next()? {
                Ok(r) => r,
                Err(source) => {
                    self.failed = true;
                    return Some(Err(JournalError::Log {
                        dir: self.dir.clone(),
                        source,
                    }));
                }
            };
            let record = match JournalRecord::decode(&payload, i) {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            if record.seq == 0
                || !self
                    .seen
                    .insert((record.edge.clone(), record.epoch, record.seq))
            {
                continue;
            }
            match record.credited_shares() {
                Ok(shares) => {
                    self.buf
                        .extend(shares.into_iter().map(|(index, share)| JournaledShare {
                            edge: record.edge.clone(),
                            epoch: record.epoch,
                            seq: record.seq,
                            kind: record.kind,
                            index,
                            share,
                        }))
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Read access to a journal, also while a running core holds it: then a snapshot copy of its
/// files is read, never the live files (opening a log cuts a torn tail, which must not happen
/// under a writer).
pub struct JournalReader {
    dir: PathBuf,
    log: SegLog,
    /// The snapshot folder to remove when done, if one was made.
    copy: Option<PathBuf>,
    _lock: Option<DirLock>,
}

impl JournalReader {
    pub fn open(dir: &Path) -> Result<JournalReader, JournalError> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| JournalError::Io { op, path, source }
        };
        // Not a journal (no segment file): refuse rather than create one there.
        let mut has_segment = false;
        for entry in fs::read_dir(dir).map_err(io("open folder", dir))? {
            let entry = entry.map_err(io("list", dir))?;
            has_segment |= entry.file_name().to_string_lossy().ends_with(".seg");
        }
        if !has_segment {
            return Err(JournalError::Io {
                op: "open",
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no journal segment (*.seg) in this folder",
                ),
            });
        }
        let (lock, read_dir, copy) = match DirLock::try_acquire(dir)? {
            Some(lock) => (Some(lock), dir.to_path_buf(), None),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let snap = std::env::temp_dir().join(format!(
                    "quarry-journal-snapshot-{}-{nanos}",
                    std::process::id()
                ));
                fs::create_dir_all(&snap).map_err(io("create folder", &snap))?;
                for entry in fs::read_dir(dir).map_err(io("list", dir))? {
                    let entry = entry.map_err(io("list", dir))?;
                    let name = entry.file_name();
                    let name_str = name.to_string_lossy();
                    if name_str.ends_with(".seg") || name_str == "trim" {
                        fs::copy(entry.path(), snap.join(&name))
                            .map_err(io("copy", &entry.path()))?;
                    }
                }
                (None, snap.clone(), Some(snap))
            }
        };
        let cfg = SegLogConfig {
            fsync: false,
            ..default_log_config()
        };
        let log = match SegLog::open(&read_dir, cfg) {
            Ok((log, _)) => log,
            Err(source) => {
                if let Some(c) = &copy {
                    let _ = fs::remove_dir_all(c);
                }
                return Err(JournalError::Log {
                    dir: dir.to_path_buf(),
                    source,
                });
            }
        };
        Ok(JournalReader {
            dir: dir.to_path_buf(),
            log,
            copy,
            _lock: lock,
        })
    }

    /// Whether this reader reads a snapshot copy (the journal was in use).
    pub fn is_snapshot(&self) -> bool {
        self.copy.is_some()
    }

    pub fn shares(&mut self) -> Result<SharesIter<'_>, JournalError> {
        SharesIter::new(&mut self.log, &self.dir)
    }
}

impl Drop for JournalReader {
    fn drop(&mut self) {
        if let Some(c) = self.copy.take() {
            let _ = fs::remove_dir_all(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::wire::{Batch, BlockFound};
    use relay::work::{Difficulty, JobId};

    fn edge(s: &str) -> EdgeId {
        EdgeId::new(s).expect("edge id")
    }

    fn ctx() -> BatchContext {
        BatchContext {
            lease_prefix: Extranonce::from_slice(&[0, 7]).expect("prefix"),
            extranonce2_size: 4,
        }
    }

    fn share(worker: &str, n: u32, difficulty: f64) -> ShareData {
        ShareData {
            worker: Arc::from(worker),
            job_id: JobId::new("1a"),
            extranonce1: Extranonce::from_slice(&[0, 7, 0, 1]).expect("e1"),
            extranonce2: Extranonce::from_counter(u64::from(n), 4).expect("e2"),
            ntime: 1_700_000_000,
            nonce: n,
            version: 0x2000_0000,
            difficulty: Difficulty::new(difficulty).expect("difficulty"),
            received_at_ms: 1_700_000_000_000 + u64::from(n),
            meets_upstream: false,
        }
    }

    fn batch_record(e: &str, epoch: u64, seq: u64, shares: &[ShareData]) -> JournalRecord {
        let batch = Batch::from_shares(epoch, seq, shares, &ctx(), |_| None).expect("batch");
        JournalRecord {
            edge: edge(e),
            epoch,
            seq,
            kind: RecordKind::Batch,
            lease_prefix: ctx().lease_prefix,
            extranonce2_size: 4,
            rejected: Vec::new(),
            journaled_at_ms: 1,
            message: batch.to_bytes(&ctx()).expect("encode"),
        }
    }

    fn open(dir: &Path) -> (Journal, JournalRecovery, Arc<Ledger>) {
        let ledger = Arc::new(Ledger::default());
        let (j, r) = Journal::open(dir, ledger.clone()).expect("open");
        (j, r, ledger)
    }

    #[test]
    fn seq_set_tracks_the_contiguous_prefix_from_one() {
        let mut s = SeqSet::default();
        assert_eq!(s.high_water(), None);
        assert!(!s.insert(0));
        assert!(s.insert(3));
        assert!(s.insert(2));
        assert_eq!(s.high_water(), None);
        assert!(s.insert(1));
        assert_eq!(s.high_water(), Some(3));
        assert!(!s.insert(2));
        assert!(s.insert(5));
        assert_eq!(s.high_water(), Some(3));
        assert_eq!(s.above().collect::<Vec<_>>(), vec![5]);
        assert!(s.contains(5) && !s.contains(4) && !s.contains(0));
        assert!(s.insert(4));
        assert_eq!(s.high_water(), Some(5));
        assert_eq!(s.above().count(), 0);
    }

    #[test]
    fn records_round_trip_and_refuse_damage() {
        let mut rec = batch_record("farm-1", 9, 4, &[share("a.w", 1, 0.5)]);
        rec.rejected = vec![0, 3];
        let bytes = rec.encode();
        assert_eq!(JournalRecord::decode(&bytes, 1).expect("decode"), rec);
        for cut in [0, 1, 5, bytes.len() - 1] {
            assert!(
                JournalRecord::decode(&bytes[..cut], 7).is_err(),
                "cut {cut}"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        let e = JournalRecord::decode(&extra, 7).expect_err("trailing");
        assert!(e.to_string().contains("record 7"), "{e}");
        let mut huge = bytes;
        // The rejected count sits after format, kind, edge id, epoch, seq, prefix, e2 size.
        let at = 2 + 1 + "farm-1".len() + 16 + 1 + 2 + 1;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(JournalRecord::decode(&huge, 7).is_err());
    }

    #[test]
    fn append_sync_credits_once_and_replay_rebuilds_marks_and_credits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut j, rec, ledger) = open(dir.path());
        assert_eq!(rec.records, 0);
        let e = edge("farm-1");
        let r1 = batch_record(
            "farm-1",
            5,
            1,
            &[share("a.w", 1, 2.0), share("b.w", 2, 3.0)],
        );
        let r3 = batch_record("farm-1", 5, 3, &[share("a.w", 3, 2.0)]);
        assert_eq!(j.append(&r1).expect("append"), Appended::New { shares: 2 });
        assert_eq!(j.append(&r1).expect("append"), Appended::Duplicate);
        assert_eq!(j.append(&r3).expect("append"), Appended::New { shares: 1 });
        // Not durable yet: not credited, no high-water mark.
        assert_eq!(ledger.total_shares(), 0);
        assert_eq!(j.high_water(&e, 5), None);
        assert!(j.contains(&e, 5, 1));
        let synced = j.sync().expect("sync");
        assert_eq!(synced.len(), 2);
        assert_eq!(ledger.total_shares(), 3);
        assert_eq!(j.high_water(&e, 5), Some(1));
        assert_eq!(j.append(&r3).expect("append"), Appended::Duplicate);
        let r2 = batch_record("farm-1", 5, 2, &[share("b.w", 4, 1.0)]);
        j.append(&r2).expect("append");
        j.sync().expect("sync");
        assert_eq!(j.high_water(&e, 5), Some(3));
        let mut rejected = batch_record(
            "farm-2",
            1,
            1,
            &[share("c.w", 5, 1.0), share("c.w", 6, 4.0)],
        );
        rejected.rejected = vec![1];
        j.append(&rejected).expect("append");
        j.sync().expect("sync");
        let before = ledger.snapshot();
        assert_eq!(before[&Arc::<str>::from("c.w")].work, 1.0);
        let dumped: Vec<JournaledShare> = j
            .shares()
            .expect("shares")
            .collect::<Result<_, _>>()
            .expect("decode");
        assert_eq!(dumped.len(), 5);
        assert_eq!(dumped[0].share.nonce, 1);
        assert_eq!(dumped[4].edge.as_str(), "farm-2");
        drop(j);

        let (j, rec, ledger) = open(dir.path());
        assert_eq!(
            (rec.records, rec.credited_shares, rec.duplicates),
            (4, 5, 0)
        );
        assert_eq!(ledger.snapshot(), before);
        assert_eq!(j.high_water(&e, 5), Some(3));
        assert_eq!(j.high_water(&edge("farm-2"), 1), Some(1));
        assert_eq!(j.index().read().latest_epoch(&e), Some(5));
    }

    #[test]
    fn a_record_journaled_twice_is_credited_once_on_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = batch_record("farm-1", 5, 1, &[share("a.w", 1, 2.0)]);
        // Write the same record twice under the journal's nose, as two shards' journals merged
        // or a crash between write and index could.
        let (mut log, _) = SegLog::open(dir.path(), default_log_config()).expect("log");
        log.append(&rec.encode()).expect("append");
        log.append(&rec.encode()).expect("append");
        log.sync().expect("sync");
        drop(log);
        let (_, report, ledger) = open(dir.path());
        assert_eq!((report.records, report.duplicates), (2, 1));
        assert_eq!(ledger.total_shares(), 1);
    }

    #[test]
    fn blocks_are_journaled_and_credited_as_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut j, _, ledger) = open(dir.path());
        let b = BlockFound {
            epoch: 2,
            seq: 1,
            share: share("a.w", 9, 8.0),
            header: [3; 80],
            coinbase: vec![1, 2, 3],
        };
        let rec = JournalRecord {
            edge: edge("farm-1"),
            epoch: 2,
            seq: 1,
            kind: RecordKind::Block,
            lease_prefix: ctx().lease_prefix,
            extranonce2_size: 4,
            rejected: vec![],
            journaled_at_ms: 5,
            message: b.to_bytes().expect("encode"),
        };
        j.append(&rec).expect("append");
        j.sync().expect("sync");
        assert_eq!(ledger.snapshot()[&Arc::<str>::from("a.w")].blocks, 1);
        let all: Vec<_> = j
            .shares()
            .expect("iter")
            .collect::<Result<_, _>>()
            .expect("ok");
        assert_eq!(all[0].kind, RecordKind::Block);
        assert_eq!(all[0].to_json()["nonce"], "00000009");
        // A record whose kind disagrees with its message is refused at append.
        let mut wrong = rec;
        wrong.kind = RecordKind::Batch;
        wrong.seq = 2;
        assert!(j.append(&wrong).is_err());
        // So is seq 0, and a key that disagrees with the message.
        let mut zero = batch_record("farm-1", 2, 0, &[share("a.w", 1, 1.0)]);
        assert!(j.append(&zero).is_err());
        zero.seq = 3;
        assert!(j.append(&zero).is_err());
    }

    #[test]
    fn a_second_writer_is_refused_and_a_reader_uses_a_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut j, _, _) = open(dir.path());
        j.append(&batch_record("farm-1", 1, 1, &[share("a.w", 1, 1.0)]))
            .expect("append");
        j.sync().expect("sync");
        let err = Journal::open(dir.path(), Arc::new(Ledger::default())).expect_err("locked");
        assert!(matches!(err, JournalError::Locked { .. }), "{err}");
        let mut reader = JournalReader::open(dir.path()).expect("reader");
        assert!(reader.is_snapshot());
        assert_eq!(reader.shares().expect("iter").count(), 1);
        drop(reader);
        drop(j);
        let mut reader = JournalReader::open(dir.path()).expect("reader");
        assert!(!reader.is_snapshot());
        assert_eq!(reader.shares().expect("iter").count(), 1);
    }
}
