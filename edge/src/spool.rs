//! The edge's spool: nothing a miner was told "accepted" is lost, even if the edge is killed
//! or its uplink is down for hours.
//!
//! Two layers, both on [`relay::seglog`] (the same record format as the core's journal):
//!
//! - **Lanes** (`lane-N/`), one per connector thread. A connector appends every share it
//!   accepts to its lane and hands the bytes to the kernel *before* it writes "accepted" to the
//!   miner, so a killed process loses nothing; fsync follows by group commit every few
//!   milliseconds, run by the [`LaneSyncer`] thread so that no connector ever waits on the disk.
//!   No lock: each lane has one writer.
//! - **Batches** (`batches/`): the uplink groups lane records into numbered batches
//!   `(epoch, seq)` and writes each batch — with how far into each lane it reaches — before it
//!   is sent. A batch is trimmed only after the core acks it as durable; lane records are
//!   trimmed once a durable batch covers them. After a crash, lane records beyond the covered
//!   marks are batched again; batches are replayed with their original `(epoch, seq)`, which
//!   the core deduplicates: credited once, lost never.

use crate::share::{BlockCandidate, ShareEvent, ShareRecord};
use bytes::{Buf, BufMut, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use relay::seglog::{PendingSync, PendingTrim, SegLog, SegLogConfig, SegLogError};
use relay::work::{Difficulty, Extranonce, JobId};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(transparent)]
    Log(#[from] SegLogError),
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("spool record {index} in {}: {reason}", dir.display())]
    BadRecord {
        dir: PathBuf,
        index: u64,
        reason: String,
    },
}

/// One lane's writer, owned by a connector thread.
pub struct LaneWriter {
    pub lane: u16,
    log: SegLog,
    unsynced: bool,
}

impl LaneWriter {
    pub fn open(dir: &Path, lane: u16, cfg: SegLogConfig) -> Result<LaneWriter, SpoolError> {
        let (log, recovery) = SegLog::open(dir.join(format!("lane-{lane}")), cfg)?;
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                lane,
                dropped_bytes = recovery.truncated_bytes,
                "spool lane had a torn tail (a write cut short by a crash); dropped it"
            );
        }
        Ok(LaneWriter {
            lane,
            log,
            unsynced: false,
        })
    }

    /// Appends a share and returns its lane index. Call [`LaneWriter::flush`] before answering.
    pub fn append(&mut self, ev: &ShareEvent) -> Result<u64, SpoolError> {
        let mut buf = BytesMut::with_capacity(160);
        encode_event(ev, &mut buf);
        let idx = self.log.append(&buf)?;
        self.unsynced = true;
        Ok(idx)
    }

    /// Hands appended records to the kernel: they survive the process being killed.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        Ok(self.log.flush()?)
    }

    /// Group commit for a thread that must not block: the fsync of everything appended since
    /// the last sync, for the [`LaneSyncer`] to run.
    pub fn detach_sync(&mut self) -> Result<Option<LaneDiskWork>, SpoolError> {
        if !self.unsynced {
            return Ok(None);
        }
        self.unsynced = false;
        Ok(self.log.detach_sync()?.map(|p| LaneDiskWork {
            lane: self.lane,
            work: DiskWork::Sync(p),
        }))
    }

    /// Forgets records through `index` at once; the files go when the [`LaneSyncer`] runs the
    /// returned work.
    pub fn detach_trim(&mut self, index: u64) -> Result<Option<LaneDiskWork>, SpoolError> {
        Ok(self.log.detach_trim(index)?.map(|p| LaneDiskWork {
            lane: self.lane,
            work: DiskWork::Trim(p),
        }))
    }

    pub fn usage(&self) -> (u64, u64) {
        self.log.usage()
    }

    /// Records not yet covered by a batch (after a restart).
    pub fn pending_after(
        &mut self,
        mark: Option<u64>,
    ) -> Result<Vec<(u64, ShareEvent)>, SpoolError> {
        let from = mark.map_or(0, |m| m + 1);
        let dir = self.log.dir().to_path_buf();
        let mut out = Vec::new();
        for item in self.log.iter_from(from)? {
            let (index, payload) = item?;
            let ev = decode_event(&payload).map_err(|reason| SpoolError::BadRecord {
                dir: dir.clone(),
                index,
                reason,
            })?;
            out.push((index, ev));
        }
        Ok(out)
    }
}

enum DiskWork {
    Sync(PendingSync),
    Trim(PendingTrim),
}

/// A lane's fsync or trim, detached from the connector that owns the lane.
pub struct LaneDiskWork {
    lane: u16,
    work: DiskWork,
}

impl LaneDiskWork {
    /// Does the work; a failure is logged loudly and counted, as nobody waits for the result.
    pub fn run(&self) {
        match &self.work {
            DiskWork::Sync(p) => {
                let started = Instant::now();
                let result = p.run();
                metrics::histogram!("quarry_edge_spool_fsync_seconds")
                    .record(started.elapsed().as_secs_f64());
                if let Err(e) = result {
                    metrics::counter!("quarry_edge_spool_errors_total").increment(1);
                    tracing::error!(lane = self.lane, error = %e, "SPOOL FSYNC FAILED: shares since the last good fsync survive a killed edge but maybe not a power loss");
                }
            }
            DiskWork::Trim(p) => {
                if let Err(e) = p.run() {
                    metrics::counter!("quarry_edge_spool_errors_total").increment(1);
                    tracing::error!(lane = self.lane, error = %e, "spool trim failed: the lane keeps records a batch already covers");
                }
            }
        }
    }
}

/// The thread that makes spool lanes durable, so that a connector thread (which answers miners)
/// never waits on the disk: an fsync costs ~1 ms on a quiet disk and tens or hundreds on a busy
/// one, and every miner of the connector would wait with it. Connectors still write each share
/// to the kernel before answering (a killed process loses nothing); only the group commit's
/// fsync and the trims' file work come here, and run in the order they were sent.
pub struct LaneSyncer {
    tx: Sender<LaneDiskWork>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LaneSyncer {
    pub fn start() -> std::io::Result<LaneSyncer> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("spool-sync".into())
            .spawn(move || Self::run(rx))?;
        Ok(LaneSyncer {
            tx,
            thread: Some(thread),
        })
    }

    /// Where connectors send their lanes' disk work.
    pub fn sender(&self) -> Sender<LaneDiskWork> {
        self.tx.clone()
    }

    fn run(rx: Receiver<LaneDiskWork>) {
        for w in rx {
            w.run();
        }
    }

    /// Runs everything sent so far, once every sender is gone (the connectors have stopped).
    pub fn join(mut self) {
        let (tx, _) = crossbeam_channel::unbounded();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lists the lanes present in a spool folder.
pub fn existing_lanes(dir: &Path) -> Vec<u16> {
    let mut lanes: Vec<u16> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("lane-")?.parse().ok())
        .collect();
    lanes.sort();
    lanes
}

/// A batch as the spool keeps it until the core acks it.
#[derive(Clone, Debug, PartialEq)]
pub struct SpooledBatch {
    pub seq: u64,
    /// How far into each lane this batch reaches.
    pub marks: Vec<(u16, u64)>,
    /// The unidirectional stream's bytes, sent as is (and again after a reconnect).
    pub stream: Vec<u8>,
}

impl SpooledBatch {
    fn encode(&self) -> Vec<u8> {
        let mut b = BytesMut::with_capacity(self.stream.len() + 16 + self.marks.len() * 10);
        b.put_u64_le(self.seq);
        b.put_u16_le(self.marks.len() as u16);
        for (lane, idx) in &self.marks {
            b.put_u16_le(*lane);
            b.put_u64_le(*idx);
        }
        b.put_slice(&self.stream);
        b.to_vec()
    }

    fn decode(mut b: &[u8]) -> Result<SpooledBatch, String> {
        if b.remaining() < 10 {
            return Err("batch record shorter than its header".into());
        }
        let seq = b.get_u64_le();
        let n = b.get_u16_le() as usize;
        if b.remaining() < n * 10 {
            return Err(format!("batch record claims {n} lane marks, too few bytes"));
        }
        let marks = (0..n).map(|_| (b.get_u16_le(), b.get_u64_le())).collect();
        Ok(SpooledBatch {
            seq,
            marks,
            stream: b.to_vec(),
        })
    }
}

/// The uplink's batch log plus the persisted lane marks and epoch.
pub struct BatchSpool {
    dir: PathBuf,
    log: SegLog,
    /// Log index of each unacked batch, by seq.
    unacked: BTreeMap<u64, (u64, SpooledBatch)>,
    /// Highest lane index covered by a durable batch, per lane (persisted in `marks`).
    pub marks: BTreeMap<u16, u64>,
    pub epoch: Option<u64>,
    pub next_seq: u64,
    /// Batch log index through which acked batches may go, not yet trimmed on disk.
    trim_due: Option<u64>,
    last_persist: Option<Instant>,
}

/// How often acks reach the disk. Persisting an ack (marks, next_seq, the log's trim point) is
/// six fsyncs; one per batch capped the uplink near 100 acks/s (~10,000 shares/s) and left a
/// steady 40,000 shares/s unacked. An ack not persisted yet is harmless: after a crash the
/// batch is still in the log and the core's `Welcome` (`acked_through`) trims it at once.
pub const ACK_PERSIST_EVERY: Duration = Duration::from_millis(100);

impl BatchSpool {
    pub fn open(dir: &Path, cfg: SegLogConfig) -> Result<BatchSpool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| SpoolError::File {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let (mut log, recovery) = SegLog::open(dir.join("batches"), cfg)?;
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                dropped_bytes = recovery.truncated_bytes,
                "batch spool had a torn tail; dropped it (its shares are still in the lanes)"
            );
        }
        let mut marks = read_marks(&dir.join("marks"))?;
        let epoch = read_u64_file(&dir.join("epoch"))?;
        let mut next_seq = read_u64_file(&dir.join("next_seq"))?.unwrap_or(1);
        let mut unacked = BTreeMap::new();
        let log_dir = log.dir().to_path_buf();
        for item in log.iter_from(0)? {
            let (index, payload) = item?;
            let b = SpooledBatch::decode(&payload).map_err(|reason| SpoolError::BadRecord {
                dir: log_dir.clone(),
                index,
                reason,
            })?;
            for (lane, idx) in &b.marks {
                let m = marks.entry(*lane).or_insert(*idx);
                *m = (*m).max(*idx);
            }
            next_seq = next_seq.max(b.seq + 1);
            unacked.insert(b.seq, (index, b));
        }
        Ok(BatchSpool {
            dir: dir.to_path_buf(),
            log,
            unacked,
            marks,
            epoch,
            next_seq,
            trim_due: None,
            last_persist: None,
        })
    }

    /// Fixes the epoch (the core's answer to a Hello without one) for good.
    pub fn set_epoch(&mut self, epoch: u64) -> Result<(), SpoolError> {
        write_atomic(&self.dir.join("epoch"), epoch.to_string().as_bytes())?;
        self.epoch = Some(epoch);
        Ok(())
    }

    /// Durably records a batch (fsync) before it may be sent.
    pub fn append(&mut self, batch: SpooledBatch) -> Result<(), SpoolError> {
        let index = self.log.append(&batch.encode())?;
        self.log.sync()?;
        for (lane, idx) in &batch.marks {
            let m = self.marks.entry(*lane).or_insert(*idx);
            *m = (*m).max(*idx);
        }
        self.next_seq = self.next_seq.max(batch.seq + 1);
        self.unacked.insert(batch.seq, (index, batch));
        Ok(())
    }

    /// Takes the next sequence number (persisted at each ack, so a fully acked spool continues
    /// its sequence). A number taken but not spooled must be given back with
    /// [`BatchSpool::give_back_seq`]: the core acks only contiguous sequences.
    pub fn take_seq(&mut self) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Returns the number just taken when its batch could not be spooled.
    pub fn give_back_seq(&mut self, seq: u64) {
        if self.next_seq == seq + 1 {
            self.next_seq = seq;
        }
    }

    /// The core's high-water mark is a floor for our sequence (a lost spool must not reuse it).
    pub fn raise_next_seq(&mut self, at_least: u64) {
        self.next_seq = self.next_seq.max(at_least);
    }

    /// The core acked everything through `seq`: the batches leave memory now and the disk at
    /// the next [`BatchSpool::persist_acks_if_due`] (at most [`ACK_PERSIST_EVERY`] later).
    pub fn ack_through(&mut self, seq: u64) -> Result<usize, SpoolError> {
        let acked: Vec<u64> = self.unacked.range(..=seq).map(|(s, _)| *s).collect();
        if acked.is_empty() {
            return Ok(0);
        }
        let mut last_index = None;
        for s in &acked {
            if let Some((index, _)) = self.unacked.remove(s) {
                last_index = Some(last_index.map_or(index, |l: u64| l.max(index)));
            }
        }
        // Log indexes of unacked batches below the newest acked one stay (out-of-order acks
        // are cumulative, so this only happens when older batches are still unacked).
        let oldest_unacked = self.unacked.values().map(|(i, _)| *i).min();
        if let Some(last) = last_index {
            let through = match oldest_unacked {
                Some(o) if o <= last => o.checked_sub(1),
                _ => Some(last),
            };
            if let Some(t) = through {
                // Valid later too: the unacked set only loses members or gains later indexes.
                self.trim_due = Some(self.trim_due.map_or(t, |d| d.max(t)));
            }
        }
        self.persist_acks_if_due(Instant::now())?;
        Ok(acked.len())
    }

    /// Persists the acks received since the last time if [`ACK_PERSIST_EVERY`] has passed.
    pub fn persist_acks_if_due(&mut self, now: Instant) -> Result<(), SpoolError> {
        if self.trim_due.is_none()
            || self
                .last_persist
                .is_some_and(|t| now.duration_since(t) < ACK_PERSIST_EVERY)
        {
            return Ok(());
        }
        self.last_persist = Some(now);
        self.persist_acks()
    }

    /// Trims acked batches from the disk. Lane marks are persisted first, so no lane record
    /// covered by a trimmed batch can ever be batched again.
    pub fn persist_acks(&mut self) -> Result<(), SpoolError> {
        let Some(t) = self.trim_due else {
            return Ok(());
        };
        write_marks(&self.dir.join("marks"), &self.marks)?;
        write_atomic(
            &self.dir.join("next_seq"),
            self.next_seq.to_string().as_bytes(),
        )?;
        self.log.trim_through(t)?;
        self.trim_due = None;
        Ok(())
    }

    /// Unacked batches, oldest first (for replay after a reconnect).
    pub fn unacked(&self) -> impl Iterator<Item = &SpooledBatch> {
        self.unacked.values().map(|(_, b)| b)
    }

    pub fn pending_batches(&self) -> usize {
        self.unacked.len()
    }

    pub fn usage(&self) -> (u64, u64) {
        self.log.usage()
    }
}

impl Drop for BatchSpool {
    /// A clean stop leaves no acked batch on the disk.
    fn drop(&mut self) {
        if let Err(e) = self.persist_acks() {
            tracing::warn!(error = %e, "could not trim acked batches at shutdown (the core's acked_through trims them at the next start)");
        }
    }
}

fn read_u64_file(path: &Path) -> Result<Option<u64>, SpoolError> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map(Some).map_err(|_| SpoolError::File {
            path: path.to_path_buf(),
            reason: format!("'{}' is not a number", s.trim()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SpoolError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

fn read_marks(path: &Path) -> Result<BTreeMap<u16, u64>, SpoolError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => {
            return Err(SpoolError::File {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    let mut marks = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = line
            .split_once(' ')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
        match parsed {
            Some((lane, idx)) => {
                marks.insert(lane, idx);
            }
            None => {
                return Err(SpoolError::File {
                    path: path.to_path_buf(),
                    reason: format!("bad line '{line}' (expected 'LANE INDEX')"),
                })
            }
        }
    }
    Ok(marks)
}

fn write_marks(path: &Path, marks: &BTreeMap<u16, u64>) -> Result<(), SpoolError> {
    let text: String = marks.iter().map(|(l, i)| format!("{l} {i}\n")).collect();
    write_atomic(path, text.as_bytes())
}

/// Write to a temporary file, fsync, rename over the target, fsync the folder.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), SpoolError> {
    let err = |e: std::io::Error| SpoolError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn put_str(b: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    let n = bytes.len().min(u16::MAX as usize);
    b.put_u16_le(n as u16);
    b.put_slice(&bytes[..n]);
}

fn put_en(b: &mut BytesMut, e: &Extranonce) {
    b.put_u8(e.len() as u8);
    b.put_slice(e.as_bytes());
}

/// Lane record: one accepted share (and, for a block candidate, its header and coinbase).
pub fn encode_event(ev: &ShareEvent, b: &mut BytesMut) {
    let (s, block) = match ev {
        ShareEvent::Accepted(s) => (s, None),
        ShareEvent::Block(bc) => (&bc.share, Some(bc)),
    };
    b.put_u8(block.is_some() as u8);
    put_str(b, &s.worker);
    put_str(b, s.job_id.as_str());
    put_en(b, &s.extranonce1);
    put_en(b, &s.extranonce2);
    b.put_u32_le(s.ntime);
    b.put_u32_le(s.nonce);
    b.put_u32_le(s.version);
    b.put_f64_le(s.difficulty.value());
    b.put_f64_le(s.achieved);
    b.put_u64_le(unix_ms(s.received_at));
    b.put_u8(s.meets_upstream as u8);
    if let Some(bc) = block {
        b.put_slice(&bc.header);
        b.put_u32_le(bc.coinbase.len() as u32);
        b.put_slice(&bc.coinbase);
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err(format!("{what}: need {n} bytes, {} left", b.len()));
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

fn get_u32(b: &mut &[u8], what: &str) -> Result<u32, String> {
    Ok(u32::from_le_bytes(
        take(b, 4, what)?.try_into().map_err(|_| what.to_string())?,
    ))
}

fn get_u64(b: &mut &[u8], what: &str) -> Result<u64, String> {
    Ok(u64::from_le_bytes(
        take(b, 8, what)?.try_into().map_err(|_| what.to_string())?,
    ))
}

fn get_str(b: &mut &[u8], what: &str) -> Result<String, String> {
    let n = u16::from_le_bytes(take(b, 2, what)?.try_into().map_err(|_| what.to_string())?);
    String::from_utf8(take(b, n as usize, what)?.to_vec()).map_err(|_| format!("{what}: not UTF-8"))
}

fn get_en(b: &mut &[u8], what: &str) -> Result<Extranonce, String> {
    let n = take(b, 1, what)?[0] as usize;
    Extranonce::from_slice(take(b, n, what)?).map_err(|e| format!("{what}: {e}"))
}

pub fn decode_event(mut b: &[u8]) -> Result<ShareEvent, String> {
    let b = &mut b;
    let is_block = take(b, 1, "kind")?[0] == 1;
    let worker: Arc<str> = get_str(b, "worker")?.into();
    let job_id = JobId::new(&get_str(b, "job id")?);
    let extranonce1 = get_en(b, "extranonce1")?;
    let extranonce2 = get_en(b, "extranonce2")?;
    let ntime = get_u32(b, "ntime")?;
    let nonce = get_u32(b, "nonce")?;
    let version = get_u32(b, "version")?;
    let difficulty = Difficulty::new(f64::from_bits(get_u64(b, "difficulty")?))
        .map_err(|e| format!("difficulty: {e}"))?;
    let achieved = f64::from_bits(get_u64(b, "achieved")?);
    let received_at = UNIX_EPOCH + Duration::from_millis(get_u64(b, "received_at")?);
    let meets_upstream = take(b, 1, "meets_upstream")?[0] == 1;
    let share = ShareRecord {
        worker,
        job_id,
        extranonce1,
        extranonce2,
        ntime,
        nonce,
        version,
        difficulty,
        achieved,
        received_at,
        meets_upstream,
        spool_ref: None,
    };
    if is_block {
        let header: [u8; 80] = take(b, 80, "header")?
            .try_into()
            .map_err(|_| "header".to_string())?;
        let n = get_u32(b, "coinbase length")? as usize;
        let coinbase = take(b, n, "coinbase")?.to_vec();
        Ok(ShareEvent::Block(Box::new(BlockCandidate {
            share,
            header,
            coinbase,
        })))
    } else {
        Ok(ShareEvent::Accepted(share))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::share::sample_record as share;

    fn cfg() -> SegLogConfig {
        SegLogConfig {
            segment_bytes: 4096,
            max_total_bytes: 1 << 20,
            fsync: true,
        }
    }

    #[test]
    fn lane_records_round_trip_shares_and_blocks() {
        let evs = [
            ShareEvent::Accepted(share(1)),
            ShareEvent::Block(Box::new(BlockCandidate {
                share: share(2),
                header: [7; 80],
                coinbase: vec![1, 2, 3],
            })),
        ];
        for ev in evs {
            let mut b = BytesMut::new();
            encode_event(&ev, &mut b);
            assert_eq!(decode_event(&b).unwrap(), ev);
            assert!(decode_event(&b[..b.len() - 1]).is_err());
        }
    }

    #[test]
    fn lane_survives_reopen_and_reports_pending_after_mark() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut lane = LaneWriter::open(dir.path(), 0, cfg()).unwrap();
            for n in 0..10 {
                lane.append(&ShareEvent::Accepted(share(n))).unwrap();
            }
            lane.flush().unwrap();
            // No sync: a killed process still leaves the flushed bytes with the kernel.
        }
        let mut lane = LaneWriter::open(dir.path(), 0, cfg()).unwrap();
        let pending = lane.pending_after(Some(6)).unwrap();
        assert_eq!(
            pending.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![7, 8, 9, 10]
        );
        lane.detach_trim(8).unwrap().expect("trim work").run();
        drop(lane);
        let mut lane = LaneWriter::open(dir.path(), 0, cfg()).unwrap();
        assert_eq!(lane.pending_after(None).unwrap().len(), 2);
        assert_eq!(existing_lanes(dir.path()), vec![0]);
    }

    #[test]
    fn lane_work_run_by_the_syncer_trims_and_syncs_the_lane() {
        let dir = tempfile::TempDir::new().unwrap();
        let syncer = LaneSyncer::start().unwrap();
        let tx = syncer.sender();
        {
            let mut lane = LaneWriter::open(dir.path(), 0, cfg()).unwrap();
            for i in 0..10 {
                lane.append(&ShareEvent::Accepted(share(i))).unwrap();
            }
            lane.flush().unwrap();
            tx.send(lane.detach_sync().unwrap().expect("sync work"))
                .unwrap();
            assert!(lane.detach_sync().unwrap().is_none(), "nothing new");
            tx.send(lane.detach_trim(4).unwrap().expect("trim work"))
                .unwrap();
            assert_eq!(lane.pending_after(None).unwrap()[0].0, 5);
        }
        drop(tx);
        syncer.join();
        let mut lane = LaneWriter::open(dir.path(), 0, cfg()).unwrap();
        let idx: Vec<u64> = lane
            .pending_after(None)
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(idx, (5..=10).collect::<Vec<_>>());
    }

    #[test]
    fn batch_spool_keeps_unacked_batches_and_marks_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = BatchSpool::open(dir.path(), cfg()).unwrap();
            s.set_epoch(77).unwrap();
            for i in 0..4u64 {
                let seq = s.take_seq().unwrap();
                s.append(SpooledBatch {
                    seq,
                    marks: vec![(0, i * 10 + 9)],
                    stream: vec![1, 2, 3, i as u8],
                })
                .unwrap();
            }
            assert_eq!(s.ack_through(2).unwrap(), 2);
        }
        let s = BatchSpool::open(dir.path(), cfg()).unwrap();
        assert_eq!(s.epoch, Some(77));
        assert_eq!(s.unacked().map(|b| b.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(s.marks.get(&0), Some(&39));
        assert_eq!(s.next_seq, 5);
    }

    #[test]
    fn acks_within_the_persist_interval_reach_the_disk_when_due_or_at_drop() {
        let dir = tempfile::tempdir().unwrap();
        let append = |s: &mut BatchSpool, lane_idx: u64| {
            let seq = s.take_seq().unwrap();
            s.append(SpooledBatch {
                seq,
                marks: vec![(0, lane_idx)],
                stream: vec![1, 2, 3],
            })
            .unwrap();
            seq
        };
        let mut s = BatchSpool::open(dir.path(), cfg()).unwrap();
        let (a, b, c) = (append(&mut s, 10), append(&mut s, 20), append(&mut s, 30));
        // The first ack goes to the disk at once, the second waits for the interval.
        assert_eq!(s.ack_through(a).unwrap(), 1);
        assert_eq!(s.trim_due, None);
        assert_eq!(s.ack_through(b).unwrap(), 1);
        assert!(s.trim_due.is_some());
        assert_eq!(s.unacked().map(|x| x.seq).collect::<Vec<_>>(), vec![c]);
        // Reopened as after a crash (the live spool is leaked, so nothing is trimmed at drop):
        // batch b is still on the disk, to be trimmed by the core's acked_through.
        {
            let copy = tempfile::tempdir().unwrap();
            for sub in ["batches", ""] {
                let from = dir.path().join(sub);
                for e in std::fs::read_dir(&from).unwrap().flatten() {
                    if e.path().is_file() {
                        let to = copy.path().join(sub);
                        std::fs::create_dir_all(&to).unwrap();
                        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
                    }
                }
            }
            let crashed = BatchSpool::open(copy.path(), cfg()).unwrap();
            assert_eq!(
                crashed.unacked().map(|x| x.seq).collect::<Vec<_>>(),
                vec![b, c]
            );
        }
        s.persist_acks_if_due(Instant::now() + ACK_PERSIST_EVERY)
            .unwrap();
        assert_eq!(s.trim_due, None);
        assert_eq!(s.ack_through(c).unwrap(), 1);
        drop(s);
        let s = BatchSpool::open(dir.path(), cfg()).unwrap();
        assert_eq!(s.pending_batches(), 0);
        assert_eq!(s.next_seq, c + 1);
        assert_eq!(s.marks.get(&0), Some(&30));
    }

    #[test]
    fn fully_acked_spool_continues_its_sequence() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = BatchSpool::open(dir.path(), cfg()).unwrap();
            let seq = s.take_seq().unwrap();
            s.append(SpooledBatch {
                seq,
                marks: vec![(1, 4)],
                stream: vec![9],
            })
            .unwrap();
            s.ack_through(seq).unwrap();
        }
        let s = BatchSpool::open(dir.path(), cfg()).unwrap();
        assert_eq!(s.pending_batches(), 0);
        assert_eq!(s.next_seq, 2);
        assert_eq!(s.marks.get(&1), Some(&4));
    }
}
