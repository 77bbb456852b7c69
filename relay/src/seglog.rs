//! A durable, append-only record log: the edge's spool and the core's journal.
//!
//! Both ends of the relay need the same thing: accept records fast, make them durable in batches,
//! survive a crash at any instant without losing a record that was reported durable, and let go
//! of records once someone downstream has them (the edge trims through the core's ack; the core
//! trims once the ledger has ingested). So both use this one format.
//!
//! A log is a folder of segment files named after the index of their first record
//! (`000000000001.seg`, `000000004097.seg`, …). Records are numbered from 1 without gaps. Each is
//!
//! ```text
//! len u32 LE ‖ crc32c(len ‖ payload) u32 LE ‖ payload
//! ```
//!
//! The checksum covers the length too, so a zero-filled tail (a file extended by the kernel but
//! never written) or a flipped length bit cannot pass for a record.
//!
//! **Group commit.** [`SegLog::append`] only buffers; [`SegLog::sync`] writes and fsyncs once for
//! everything appended since the last sync. Callers append a batch of records, sync once, and only
//! then report them durable (the core acks, the edge sends). Before a new segment is started the
//! old one is fsynced and afterwards the folder is, so only the *last* segment can ever hold a
//! torn write.
//!
//! **Recovery.** [`SegLog::open`] validates every record of every segment. Damage at the end of the
//! last segment is what a crash mid-write leaves: it is truncated and the [`Recovery`] report says
//! how many bytes went and where. Damage anywhere else cannot come from a crash, so it is an error
//! naming the file and offset, and nothing is touched.
//!
//! **Trim.** [`SegLog::trim_through`] records the trim point in a small `trim` file (written to a
//! temporary file, fsynced, renamed over, folder fsynced: atomic) and deletes whole segments whose
//! records are all at or below it. Records at or below the trim point are never returned again,
//! even if their segment still exists.
//!
//! **Durability off the caller's thread.** A thread that answers miners must not wait on a disk:
//! an fsync takes a millisecond on a quiet disk and far longer on a busy one. For such a caller,
//! [`SegLog::detach_sync`] writes the records to the kernel and returns a [`PendingSync`] (the
//! fsync, on a duplicate of the segment's file descriptor), and [`SegLog::detach_trim`] moves the
//! trim point in memory and returns a [`PendingTrim`] (the trim file and the segment removals);
//! another thread runs them, in order. Whole-segment rotation stays synchronous (it is rare), so
//! a segment is still complete on disk before the next one exists.
//!
//! **Cap.** A spool that cannot reach its core grows; [`SegLog::append`] refuses with
//! [`SegLogError::Full`] rather than exceed `max_total_bytes`, and [`SegLog::usage`] lets the
//! caller raise an alarm well before that.
//!
//! One process at a time: the log does not lock its folder, the binaries that own it do.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Largest record payload. Batches are at most 1 MiB; this leaves room without letting a corrupt
/// length field send recovery reading gigabytes.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// Bytes before each payload: length and checksum.
pub const RECORD_HEADER_BYTES: u64 = 8;

const SEGMENT_EXT: &str = "seg";
const TRIM_FILE: &str = "trim";
const TRIM_TMP: &str = "trim.tmp";
const WRITE_BUFFER: usize = 256 << 10;

/// How a log is laid out and how hard it tries to be durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegLogConfig {
    /// A new segment starts when the next record would take the current one past this (a record
    /// larger than this gets a segment to itself). Whole segments are the unit of deletion.
    pub segment_bytes: u64,
    /// The most the log's segments may occupy; [`SegLog::append`] refuses beyond it. Trimmed
    /// records still count until their whole segment is deleted, so allow a few segments.
    pub max_total_bytes: u64,
    /// fsync on [`SegLog::sync`], segment changes and trims. Off only for tests and for logs
    /// whose loss on power failure is acceptable.
    pub fsync: bool,
}

impl Default for SegLogConfig {
    fn default() -> Self {
        SegLogConfig {
            segment_bytes: 64 << 20,
            max_total_bytes: 4 << 30,
            fsync: true,
        }
    }
}

/// Why a log operation failed. Every variant names the file involved where there is one.
#[derive(Debug, thiserror::Error)]
pub enum SegLogError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "{}: segment starts at record {found}, expected {expected}: a segment file is missing",
        path.display()
    )]
    Gap {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("log is full: {used} of {max} bytes used, the record needs {needed} more")]
    Full { needed: u64, used: u64, max: u64 },
    #[error("record of {len} bytes is over the limit of {max}")]
    RecordTooLarge { len: usize, max: usize },
    #[error("{}: {reason}", path.display())]
    BadTrimFile { path: PathBuf, reason: String },
    #[error("seglog config: {0}")]
    BadConfig(String),
    #[error("an earlier write to {} failed; reopen the log to recover", path.display())]
    Poisoned { path: PathBuf },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SegLogError + 'a {
    move |source| SegLogError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What [`SegLog::open`] found and what it had to drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Live records (after the trim point) now in the log.
    pub records: u64,
    /// Segment files kept.
    pub segments: usize,
    /// Bytes cut off the end of the last segment (a torn or corrupt tail); 0 after a clean stop.
    pub truncated_bytes: u64,
    /// Where the cut was made and why, when there was one.
    pub truncated_at: Option<(PathBuf, u64, String)>,
    /// Index of the first live record (trim point + 1).
    pub first_index: u64,
    /// Index the next append gets.
    pub next_index: u64,
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} live records ({}..{}) in {} segments",
            self.records, self.first_index, self.next_index, self.segments
        )?;
        if let Some((path, offset, reason)) = &self.truncated_at {
            write!(
                f,
                "; truncated {} bytes at {} offset {offset} ({reason})",
                self.truncated_bytes,
                path.display()
            )?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
struct Segment {
    /// Index of the segment's first record (also its file name).
    base: u64,
    /// Records in it.
    count: u64,
    /// Bytes in it, including what is still in the write buffer.
    bytes: u64,
    path: PathBuf,
}

impl Segment {
    /// Index after its last record.
    fn end(&self) -> u64 {
        self.base + self.count
    }
}

/// An open log. See the module documentation for the format and guarantees.
pub struct SegLog {
    dir: PathBuf,
    cfg: SegLogConfig,
    /// Oldest first; never empty; the last one is being appended to.
    segments: Vec<Segment>,
    active: BufWriter<File>,
    trimmed_through: u64,
    next_index: u64,
    /// Every record below this index has been fsynced (or flushed, without fsync).
    synced_until: u64,
    total_bytes: u64,
    poisoned: bool,
}

impl fmt::Debug for SegLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegLog")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("trimmed_through", &self.trimmed_through)
            .field("next_index", &self.next_index)
            .field("total_bytes", &self.total_bytes)
            .finish()
    }
}

/// The outcome of validating one segment file.
struct Scan {
    count: u64,
    /// Bytes of whole, valid records.
    valid_bytes: u64,
    file_bytes: u64,
    /// The first bad record's offset and what was wrong with it.
    damage: Option<(u64, String)>,
}

fn scan_segment(path: &Path) -> Result<Scan, SegLogError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let file_bytes = file.metadata().map_err(io_err("stat", path))?.len();
    let mut r = BufReader::with_capacity(WRITE_BUFFER, file);
    let mut offset = 0u64;
    let mut count = 0u64;
    let mut payload = Vec::new();
    loop {
        let left = file_bytes - offset;
        if left == 0 {
            return Ok(Scan {
                count,
                valid_bytes: offset,
                file_bytes,
                damage: None,
            });
        }
        let damage = |reason: String| {
            Ok(Scan {
                count,
                valid_bytes: offset,
                file_bytes,
                damage: Some((offset, reason)),
            })
        };
        if left < RECORD_HEADER_BYTES {
            return damage(format!("{left} bytes, too short for a record header"));
        }
        let mut header = [0u8; 8];
        r.read_exact(&mut header).map_err(io_err("read", path))?;
        let (len, crc) = split_header(&header);
        if len > MAX_RECORD_BYTES {
            return damage(format!(
                "record length {len} is over the limit of {MAX_RECORD_BYTES}"
            ));
        }
        if len as u64 > left - RECORD_HEADER_BYTES {
            return damage(format!(
                "record of {len} bytes but only {} follow",
                left - RECORD_HEADER_BYTES
            ));
        }
        payload.resize(len, 0);
        r.read_exact(&mut payload).map_err(io_err("read", path))?;
        if record_crc(&payload) != crc {
            return damage(format!("checksum mismatch on a record of {len} bytes"));
        }
        offset += RECORD_HEADER_BYTES + len as u64;
        count += 1;
    }
}

fn split_header(h: &[u8; 8]) -> (usize, u32) {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (len, crc)
}

/// crc32c over the little-endian length and the payload.
fn record_crc(payload: &[u8]) -> u32 {
    let len = (payload.len() as u32).to_le_bytes();
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:012}.{SEGMENT_EXT}"))
}

/// The base index of a segment file name, or `None` for files that are not segments.
fn segment_base(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), SegLogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync folder", dir))
}

fn read_trim(dir: &Path) -> Result<u64, SegLogError> {
    let path = dir.join(TRIM_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let bad = |reason: String| SegLogError::BadTrimFile {
        path: path.clone(),
        reason,
    };
    let Ok(b): Result<[u8; 12], _> = bytes.as_slice().try_into() else {
        return Err(bad(format!("{} bytes, expected 12", bytes.len())));
    };
    let (index, crc) = b.split_at(8);
    if crc32c::crc32c(index).to_le_bytes() != crc {
        return Err(bad("checksum mismatch".into()));
    }
    let mut le = [0u8; 8];
    le.copy_from_slice(index);
    Ok(u64::from_le_bytes(le))
}

impl SegLog {
    /// Opens (creating if needed) the log in `dir`, validating every record and truncating a
    /// torn tail of the last segment. The report says what was found and dropped.
    pub fn open(
        dir: impl AsRef<Path>,
        cfg: SegLogConfig,
    ) -> Result<(SegLog, Recovery), SegLogError> {
        if cfg.segment_bytes == 0 {
            return Err(SegLogError::BadConfig(
                "segment_bytes must be positive".into(),
            ));
        }
        if cfg.max_total_bytes < cfg.segment_bytes {
            return Err(SegLogError::BadConfig(format!(
                "max_total_bytes {} is smaller than one segment ({})",
                cfg.max_total_bytes, cfg.segment_bytes
            )));
        }
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err("create folder", &dir))?;
        let tmp = dir.join(TRIM_TMP);
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(io_err("remove", &tmp))?;
        }
        let trimmed_through = read_trim(&dir)?;

        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            if let Some(base) = entry.file_name().to_str().and_then(segment_base) {
                bases.push(base);
            }
        }
        bases.sort_unstable();

        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
        let mut truncated_bytes = 0;
        let mut truncated_at = None;
        let n = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let path = segment_path(&dir, base);
            let scan = scan_segment(&path)?;
            if let Some(prev) = segments.last() {
                if prev.end() != base {
                    return Err(SegLogError::Gap {
                        path,
                        expected: prev.end(),
                        found: base,
                    });
                }
            }
            if let Some((offset, reason)) = scan.damage {
                if i + 1 < n {
                    return Err(SegLogError::Corrupt {
                        path,
                        offset,
                        reason,
                    });
                }
                // The last segment: what a crash mid-append leaves. Cut it off, durably.
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                f.set_len(scan.valid_bytes)
                    .map_err(io_err("truncate", &path))?;
                if cfg.fsync {
                    f.sync_all().map_err(io_err("fsync", &path))?;
                }
                truncated_bytes = scan.file_bytes - scan.valid_bytes;
                truncated_at = Some((path.clone(), offset, reason));
            }
            segments.push(Segment {
                base,
                count: scan.count,
                bytes: scan.valid_bytes,
                path,
            });
        }

        let mut next_index = segments.last().map_or(1, Segment::end);
        if let Some(first) = segments.first() {
            if first.base > trimmed_through + 1 && trimmed_through < next_index {
                return Err(SegLogError::Gap {
                    path: first.path.clone(),
                    expected: trimmed_through + 1,
                    found: first.base,
                });
            }
        }
        if trimmed_through >= next_index {
            // Everything is trimmed (perhaps past the end): start afresh after the trim point so
            // indexes are never reused.
            for s in segments.drain(..) {
                fs::remove_file(&s.path).map_err(io_err("remove", &s.path))?;
            }
            next_index = trimmed_through + 1;
        }
        // Segments wholly at or below the trim point whose deletion a crash interrupted.
        while segments.len() > 1 && segments[0].end() <= trimmed_through + 1 {
            let s = segments.remove(0);
            fs::remove_file(&s.path).map_err(io_err("remove", &s.path))?;
        }
        let mut created = false;
        if segments.is_empty() {
            let path = segment_path(&dir, next_index);
            File::create(&path).map_err(io_err("create", &path))?;
            segments.push(Segment {
                base: next_index,
                count: 0,
                bytes: 0,
                path,
            });
            created = true;
        }
        if cfg.fsync && created {
            sync_dir(&dir)?;
        }
        let active = open_for_append(&segments[segments.len() - 1].path)?;
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let first_index = (trimmed_through + 1).max(segments[0].base);
        let recovery = Recovery {
            records: next_index - first_index,
            segments: segments.len(),
            truncated_bytes,
            truncated_at,
            first_index,
            next_index,
        };
        Ok((
            SegLog {
                dir,
                cfg,
                segments,
                active,
                trimmed_through,
                next_index,
                synced_until: next_index,
                total_bytes,
                poisoned: false,
            },
            recovery,
        ))
    }

    fn active_segment(&self) -> &Segment {
        // `segments` is never empty: open creates one and rotation replaces, never removes, the
        // last.
        &self.segments[self.segments.len() - 1]
    }

    fn check_poisoned(&self) -> Result<(), SegLogError> {
        if self.poisoned {
            return Err(SegLogError::Poisoned {
                path: self.active_segment().path.clone(),
            });
        }
        Ok(())
    }

    /// Buffers one record and returns its index. Not durable until [`SegLog::sync`] returns.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SegLogError> {
        self.check_poisoned()?;
        if payload.len() > MAX_RECORD_BYTES {
            return Err(SegLogError::RecordTooLarge {
                len: payload.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        let needed = RECORD_HEADER_BYTES + payload.len() as u64;
        if self.total_bytes + needed > self.cfg.max_total_bytes {
            return Err(SegLogError::Full {
                needed,
                used: self.total_bytes,
                max: self.cfg.max_total_bytes,
            });
        }
        let active = self.active_segment();
        if active.count > 0 && active.bytes + needed > self.cfg.segment_bytes {
            self.rotate()?;
        }
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&record_crc(payload).to_le_bytes());
        let written = self
            .active
            .write_all(&header)
            .and_then(|()| self.active.write_all(payload));
        if let Err(e) = written {
            // Part of the record may be in the file; appending after it would bury a torn
            // record mid-segment. Stop here: reopening truncates it as a torn tail.
            self.poisoned = true;
            return Err(io_err("write", &self.active_segment().path.clone())(e));
        }
        let index = self.next_index;
        self.next_index += 1;
        self.total_bytes += needed;
        let last = self.segments.len() - 1;
        self.segments[last].count += 1;
        self.segments[last].bytes += needed;
        Ok(index)
    }

    /// Hands every appended record to the kernel without fsync: they then survive the process
    /// being killed (not a power loss). The edge calls this before telling a miner "accepted"
    /// and leaves the fsync to group commit.
    pub fn flush(&mut self) -> Result<(), SegLogError> {
        self.check_poisoned()?;
        let path = self.active_segment().path.clone();
        if let Err(e) = self.active.flush() {
            self.poisoned = true;
            return Err(io_err("write", &path)(e));
        }
        Ok(())
    }

    /// Makes every record appended so far durable: one write and one fsync for all of them.
    pub fn sync(&mut self) -> Result<(), SegLogError> {
        self.check_poisoned()?;
        if self.synced_until == self.next_index {
            return Ok(());
        }
        let path = self.active_segment().path.clone();
        let result = self
            .active
            .flush()
            .map_err(io_err("write", &path))
            .and_then(|()| {
                if self.cfg.fsync {
                    self.active
                        .get_ref()
                        .sync_data()
                        .map_err(io_err("fsync", &path))
                } else {
                    Ok(())
                }
            });
        if result.is_err() {
            // After a failed fsync the kernel may have dropped the dirty pages: we can no longer
            // tell what is on disk.
            self.poisoned = true;
            return result;
        }
        self.synced_until = self.next_index;
        Ok(())
    }

    /// Closes the active segment (durably) and starts the next one at `next_index`.
    fn rotate(&mut self) -> Result<(), SegLogError> {
        self.sync_active_fully()?;
        let base = self.next_index;
        let path = segment_path(&self.dir, base);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        if self.cfg.fsync {
            sync_dir(&self.dir)?;
        }
        self.active = BufWriter::with_capacity(WRITE_BUFFER, file);
        self.segments.push(Segment {
            base,
            count: 0,
            bytes: 0,
            path,
        });
        Ok(())
    }

    /// Flushes and fsyncs the active segment even when nothing is pending, so that a segment is
    /// complete on disk before a later one exists.
    fn sync_active_fully(&mut self) -> Result<(), SegLogError> {
        let path = self.active_segment().path.clone();
        let result = self
            .active
            .flush()
            .map_err(io_err("write", &path))
            .and_then(|()| {
                if self.cfg.fsync {
                    self.active
                        .get_ref()
                        .sync_data()
                        .map_err(io_err("fsync", &path))
                } else {
                    Ok(())
                }
            });
        if result.is_err() {
            self.poisoned = true;
            return result;
        }
        self.synced_until = self.next_index;
        Ok(())
    }

    /// Forgets every record at or below `index`: persists the trim point atomically, then
    /// deletes whole segments holding only such records. Trimming past the end is allowed (the
    /// core acked records this log lost) and moves the next index past it, so an index is never
    /// handed out twice.
    pub fn trim_through(&mut self, index: u64) -> Result<(), SegLogError> {
        self.check_poisoned()?;
        if index <= self.trimmed_through {
            return Ok(());
        }
        self.write_trim(index)?;
        self.trimmed_through = index;
        if index >= self.next_index {
            // Nothing live is left, and the next record must come after `index`. Old segments go
            // first: a crash then leaves either them (all at or below the persisted trim point,
            // which open discards) or nothing, never an old segment beside a new one.
            self.sync_active_fully()?;
            let old: Vec<Segment> = self.segments.drain(..).collect();
            self.total_bytes = 0;
            // Keep the log usable even if a removal fails below: poison until the new segment
            // is in place.
            self.poisoned = true;
            for s in &old {
                fs::remove_file(&s.path).map_err(io_err("remove", &s.path))?;
            }
            let base = index + 1;
            let path = segment_path(&self.dir, base);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err("create", &path))?;
            if self.cfg.fsync {
                sync_dir(&self.dir)?;
            }
            self.active = BufWriter::with_capacity(WRITE_BUFFER, file);
            self.segments.push(Segment {
                base,
                count: 0,
                bytes: 0,
                path,
            });
            self.next_index = base;
            self.synced_until = base;
            self.poisoned = false;
            return Ok(());
        }
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[0].end() <= index + 1 {
            let s = self.segments.remove(0);
            self.total_bytes -= s.bytes;
            fs::remove_file(&s.path).map_err(io_err("remove", &s.path))?;
            removed = true;
        }
        if removed && self.cfg.fsync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn write_trim(&self, index: u64) -> Result<(), SegLogError> {
        write_trim_file(&self.dir, index, self.cfg.fsync)
    }

    /// Hands every appended record to the kernel (as [`SegLog::flush`]) and returns the fsync
    /// that makes them durable, for a thread that may block. `None` when nothing was appended
    /// since the last sync, or the log does not fsync. The records count as synced from here:
    /// the caller owns running it, and a failure there is its to report.
    pub fn detach_sync(&mut self) -> Result<Option<PendingSync>, SegLogError> {
        self.flush()?;
        if self.synced_until == self.next_index {
            return Ok(None);
        }
        let through = self.next_index;
        self.synced_until = through;
        if !self.cfg.fsync {
            return Ok(None);
        }
        let path = self.active_segment().path.clone();
        let file = self
            .active
            .get_ref()
            .try_clone()
            .map_err(io_err("duplicate descriptor of", &path))?;
        Ok(Some(PendingSync {
            file,
            path,
            through,
        }))
    }

    /// Forgets every record at or below `index` at once, and returns the file work of the trim
    /// (see [`PendingTrim`]) for a thread that may block. A trim past the end is done here, as
    /// [`SegLog::trim_through`] does it (it replaces the active segment), and returns `None`,
    /// as does a trim point at or below the current one.
    pub fn detach_trim(&mut self, index: u64) -> Result<Option<PendingTrim>, SegLogError> {
        self.check_poisoned()?;
        if index <= self.trimmed_through {
            return Ok(None);
        }
        if index >= self.next_index {
            self.trim_through(index)?;
            return Ok(None);
        }
        self.trimmed_through = index;
        let mut remove = Vec::new();
        while self.segments.len() > 1 && self.segments[0].end() <= index + 1 {
            let s = self.segments.remove(0);
            self.total_bytes -= s.bytes;
            remove.push(s.path);
        }
        Ok(Some(PendingTrim {
            dir: self.dir.clone(),
            index,
            fsync: self.cfg.fsync,
            remove,
        }))
    }

    /// Reads records with index ≥ `from` (and above the trim point), oldest first, including
    /// ones appended but not yet synced. The log cannot change while the iterator lives.
    pub fn iter_from(&mut self, from: u64) -> Result<Iter<'_>, SegLogError> {
        self.check_poisoned()?;
        let path = self.active_segment().path.clone();
        if let Err(e) = self.active.flush() {
            self.poisoned = true;
            return Err(io_err("write", &path)(e));
        }
        let start = from.max(self.first_index());
        // The segment holding `start`: the last one whose base is at or below it.
        let seg = self
            .segments
            .partition_point(|s| s.base <= start)
            .saturating_sub(1);
        Ok(Iter {
            log: self,
            seg,
            reader: None,
            index: 0,
            offset: 0,
            start,
            end: self.next_index,
            failed: false,
        })
    }

    /// `(bytes used, max_total_bytes)`: alert well before they meet, because then appends fail.
    pub fn usage(&self) -> (u64, u64) {
        (self.total_bytes, self.cfg.max_total_bytes)
    }

    /// Index of the oldest live record (the next one appended, if none is live).
    pub fn first_index(&self) -> u64 {
        (self.trimmed_through + 1).max(self.segments[0].base)
    }

    /// Index the next append gets.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Records with an index below this are durable.
    pub fn synced_until(&self) -> u64 {
        self.synced_until
    }

    /// The trim point: records at or below it are gone.
    pub fn trimmed_through(&self) -> u64 {
        self.trimmed_through
    }

    /// Live (untrimmed) records.
    pub fn len(&self) -> u64 {
        self.next_index - self.first_index()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// An fsync detached from its log by [`SegLog::detach_sync`], to be run on another thread.
#[derive(Debug)]
pub struct PendingSync {
    file: File,
    path: PathBuf,
    through: u64,
}

impl PendingSync {
    /// Makes every record before [`PendingSync::through`] durable.
    pub fn run(&self) -> Result<(), SegLogError> {
        self.file.sync_data().map_err(io_err("fsync", &self.path))
    }

    /// Index after the last record this fsync covers.
    pub fn through(&self) -> u64 {
        self.through
    }
}

/// A trim detached from its log by [`SegLog::detach_trim`]: the log already forgets the records;
/// this persists the trim point and deletes the segments, to be run on another thread, after
/// every earlier [`PendingTrim`] of the same log.
#[derive(Debug)]
pub struct PendingTrim {
    dir: PathBuf,
    index: u64,
    fsync: bool,
    remove: Vec<PathBuf>,
}

impl PendingTrim {
    /// Persists the trim point, then deletes the segments it frees. A crash before the end
    /// leaves records at or below the point on disk; [`SegLog::open`] skips them.
    /// A later trim done in place (past the end) may have got there first: the trim point
    /// never moves back, and a segment already gone is fine.
    pub fn run(&self) -> Result<(), SegLogError> {
        if read_trim(&self.dir)? < self.index {
            write_trim_file(&self.dir, self.index, self.fsync)?;
        }
        for path in &self.remove {
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("remove", path)(e))
                }
                _ => {}
            }
        }
        if !self.remove.is_empty() && self.fsync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The trim point it persists.
    pub fn index(&self) -> u64 {
        self.index
    }
}

fn write_trim_file(dir: &Path, index: u64, fsync: bool) -> Result<(), SegLogError> {
    let tmp = dir.join(TRIM_TMP);
    let path = dir.join(TRIM_FILE);
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&index.to_le_bytes());
    bytes[8..].copy_from_slice(&crc32c::crc32c(&index.to_le_bytes()).to_le_bytes());
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(&bytes).map_err(io_err("write", &tmp))?;
    if fsync {
        f.sync_all().map_err(io_err("fsync", &tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    if fsync {
        sync_dir(dir)?;
    }
    Ok(())
}

fn open_for_append(path: &Path) -> Result<BufWriter<File>, SegLogError> {
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err("open", path))?;
    Ok(BufWriter::with_capacity(WRITE_BUFFER, file))
}

/// Records of a [`SegLog`] in index order, as `(index, payload)`. Each record's checksum is
/// checked again as it is read: an error names the file and offset, and ends the iteration.
pub struct Iter<'a> {
    log: &'a SegLog,
    seg: usize,
    reader: Option<BufReader<File>>,
    /// Index of the next record in the current segment.
    index: u64,
    /// Its byte offset.
    offset: u64,
    start: u64,
    end: u64,
    failed: bool,
}

impl Iter<'_> {
    fn next_record(&mut self) -> Result<Option<(u64, Vec<u8>)>, SegLogError> {
        let log = self.log;
        loop {
            let Some(seg) = log.segments.get(self.seg) else {
                return Ok(None);
            };
            let reader = match &mut self.reader {
                Some(r) => r,
                None => {
                    let file = File::open(&seg.path).map_err(io_err("open", &seg.path))?;
                    self.index = seg.base;
                    self.offset = 0;
                    self.reader
                        .insert(BufReader::with_capacity(WRITE_BUFFER, file))
                }
            };
            if self.index >= self.end {
                return Ok(None);
            }
            if self.index >= seg.end() {
                self.seg += 1;
                self.reader = None;
                continue;
            }
            let path = &seg.path;
            let corrupt = |offset: u64, reason: String| SegLogError::Corrupt {
                path: path.clone(),
                offset,
                reason,
            };
            let (index, offset) = (self.index, self.offset);
            let mut header = [0u8; 8];
            reader
                .read_exact(&mut header)
                .map_err(|e| corrupt(offset, format!("reading record {index}: {e}")))?;
            let (len, crc) = split_header(&header);
            if len > MAX_RECORD_BYTES || offset + RECORD_HEADER_BYTES + len as u64 > seg.bytes {
                return Err(corrupt(
                    offset,
                    format!("record {index} claims {len} bytes"),
                ));
            }
            self.index += 1;
            self.offset += RECORD_HEADER_BYTES + len as u64;
            if index < self.start {
                // Within the buffer when records are small: no syscall per skipped record.
                reader
                    .seek_relative(len as i64)
                    .map_err(io_err("seek", path))?;
                continue;
            }
            let mut payload = vec![0u8; len];
            reader
                .read_exact(&mut payload)
                .map_err(|e| corrupt(offset, format!("reading record {index}: {e}")))?;
            if record_crc(&payload) != crc {
                return Err(corrupt(
                    offset,
                    format!("checksum mismatch on record {index}"),
                ));
            }
            return Ok(Some((index, payload)));
        }
    }
}

impl Iterator for Iter<'_> {
    type Item = Result<(u64, Vec<u8>), SegLogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_record() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use tempfile::TempDir;

    fn cfg(segment_bytes: u64, max_total_bytes: u64) -> SegLogConfig {
        SegLogConfig {
            segment_bytes,
            max_total_bytes,
            fsync: true,
        }
    }

    fn payload(i: u64) -> Vec<u8> {
        format!("record {i} {}", "x".repeat((i % 17) as usize)).into_bytes()
    }

    fn all(log: &mut SegLog, from: u64) -> Vec<(u64, Vec<u8>)> {
        log.iter_from(from)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn seg_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    fn filled(dir: &Path, c: SegLogConfig, n: u64) -> SegLog {
        let (mut log, rec) = SegLog::open(dir, c).unwrap();
        assert_eq!(rec.next_index, 1);
        for i in 1..=n {
            assert_eq!(log.append(&payload(i)).unwrap(), i);
        }
        log.sync().unwrap();
        log
    }

    #[test]
    fn records_come_back_in_order_after_reopen_with_nothing_truncated() {
        let dir = TempDir::new().unwrap();
        drop(filled(dir.path(), cfg(1 << 20, 1 << 24), 100));
        let (mut log, rec) = SegLog::open(dir.path(), cfg(1 << 20, 1 << 24)).unwrap();
        assert_eq!(rec.records, 100);
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(rec.truncated_at, None);
        let got = all(&mut log, 0);
        assert_eq!(got.len(), 100);
        for (i, (index, p)) in got.into_iter().enumerate() {
            assert_eq!(index, i as u64 + 1);
            assert_eq!(p, payload(index));
        }
        assert_eq!(log.append(b"next").unwrap(), 101);
    }

    #[test]
    fn iteration_sees_appends_not_yet_synced() {
        let dir = TempDir::new().unwrap();
        let (mut log, _) = SegLog::open(dir.path(), cfg(1 << 20, 1 << 24)).unwrap();
        log.append(b"a").unwrap();
        log.append(b"").unwrap();
        assert_eq!(log.synced_until(), 1);
        assert_eq!(all(&mut log, 1), vec![(1, b"a".to_vec()), (2, vec![])]);
        log.sync().unwrap();
        assert_eq!(log.synced_until(), 3);
    }

    #[test]
    fn a_record_torn_mid_write_is_truncated_and_reported() {
        let dir = TempDir::new().unwrap();
        drop(filled(dir.path(), cfg(1 << 20, 1 << 24), 10));
        let seg = &seg_files(dir.path())[0];
        let full = fs::metadata(seg).unwrap().len();
        // Cut the last record (8-byte header + "record 10 " + 10 x's = 28 bytes) in half.
        let last_len = RECORD_HEADER_BYTES + payload(10).len() as u64;
        fs::OpenOptions::new()
            .write(true)
            .open(seg)
            .unwrap()
            .set_len(full - last_len / 2)
            .unwrap();
        let (mut log, rec) = SegLog::open(dir.path(), cfg(1 << 20, 1 << 24)).unwrap();
        assert_eq!(rec.records, 9);
        assert_eq!(rec.truncated_bytes, last_len - last_len / 2);
        let (path, offset, reason) = rec.truncated_at.clone().unwrap();
        assert_eq!(&path, seg);
        assert_eq!(offset, full - last_len);
        assert!(reason.contains("only"), "{reason}");
        assert!(rec.to_string().contains("truncated"), "{rec}");
        assert_eq!(fs::metadata(seg).unwrap().len(), full - last_len);
        // The torn record's index is handed out again: it was never durable.
        assert_eq!(log.append(b"again").unwrap(), 10);
        log.sync().unwrap();
        drop(log);
        let (mut log, rec) = SegLog::open(dir.path(), cfg(1 << 20, 1 << 24)).unwrap();
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(all(&mut log, 10), vec![(10, b"again".to_vec())]);
    }

    #[test]
    fn garbage_and_zeros_after_the_last_record_are_truncated() {
        for tail in [
            vec![0u8; 4096],
            b"\x05\x00\x00\x00garbage!".to_vec(),
            vec![0xff; 3],
        ] {
            let dir = TempDir::new().unwrap();
            drop(filled(dir.path(), cfg(1 << 20, 1 << 24), 5));
            let seg = &seg_files(dir.path())[0];
            let good = fs::metadata(seg).unwrap().len();
            let mut f = fs::OpenOptions::new().append(true).open(seg).unwrap();
            f.write_all(&tail).unwrap();
            drop(f);
            let (mut log, rec) = SegLog::open(dir.path(), cfg(1 << 20, 1 << 24)).unwrap();
            assert_eq!(rec.records, 5);
            assert_eq!(rec.truncated_bytes, tail.len() as u64);
            assert_eq!(rec.truncated_at.as_ref().unwrap().1, good);
            assert_eq!(all(&mut log, 1).len(), 5);
        }
    }

    #[test]
    fn a_flipped_bit_in_an_older_segment_is_an_error_naming_file_and_offset() {
        let dir = TempDir::new().unwrap();
        drop(filled(dir.path(), cfg(256, 1 << 20), 40));
        let segs = seg_files(dir.path());
        assert!(segs.len() > 3, "{segs:?}");
        let victim = &segs[1];
        let mut bytes = fs::read(victim).unwrap();
        // Second record of the segment: skip the first.
        let first = RECORD_HEADER_BYTES as usize
            + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        bytes[first + 9] ^= 0x10;
        fs::write(victim, &bytes).unwrap();
        let err = SegLog::open(dir.path(), cfg(256, 1 << 20)).unwrap_err();
        match &err {
            SegLogError::Corrupt {
                path,
                offset,
                reason,
            } => {
                assert_eq!(path, victim);
                assert_eq!(*offset, first as u64);
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("{other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&format!("offset {first}")), "{msg}");
        // Nothing was modified.
        assert_eq!(fs::read(victim).unwrap(), bytes);
    }

    #[test]
    fn a_flipped_bit_in_the_last_segment_is_cut_there_and_reported() {
        let dir = TempDir::new().unwrap();
        drop(filled(dir.path(), cfg(1 << 20, 1 << 24), 6));
        let seg = &seg_files(dir.path())[0];
        let mut bytes = fs::read(seg).unwrap();
        let len = bytes.len();
        bytes[len - 2] ^= 1;
        fs::write(seg, &bytes).unwrap();
        let (_, rec) = SegLog::open(dir.path(), cfg(1 << 20, 1 << 24)).unwrap();
        assert_eq!(rec.records, 5);
        assert!(rec.truncated_at.unwrap().2.contains("checksum"));
    }

    #[test]
    fn a_missing_segment_is_an_error() {
        let dir = TempDir::new().unwrap();
        drop(filled(dir.path(), cfg(256, 1 << 20), 40));
        let segs = seg_files(dir.path());
        fs::remove_file(&segs[1]).unwrap();
        let err = SegLog::open(dir.path(), cfg(256, 1 << 20)).unwrap_err();
        assert!(matches!(err, SegLogError::Gap { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn trim_deletes_whole_segments_and_reopen_hides_trimmed_records() {
        let dir = TempDir::new().unwrap();
        let c = cfg(256, 1 << 20);
        let mut log = filled(dir.path(), c, 60);
        let before = seg_files(dir.path()).len();
        let (used_before, _) = log.usage();
        log.trim_through(25).unwrap();
        assert!(seg_files(dir.path()).len() < before);
        assert!(log.usage().0 < used_before);
        assert_eq!(log.first_index(), 26);
        assert_eq!(all(&mut log, 0).first().unwrap().0, 26);
        // Trimming backwards is a no-op.
        log.trim_through(3).unwrap();
        assert_eq!(log.trimmed_through(), 25);
        drop(log);
        let (mut log, rec) = SegLog::open(dir.path(), c).unwrap();
        assert_eq!(rec.first_index, 26);
        assert_eq!(rec.records, 35);
        let got = all(&mut log, 0);
        assert_eq!(got.len(), 35);
        assert_eq!(got[0], (26, payload(26)));
        assert_eq!(all(&mut log, 50)[0].0, 50);
        assert_eq!(log.append(b"more").unwrap(), 61);
    }

    #[test]
    fn detached_sync_and_trim_leave_the_same_log_as_in_place_ones() {
        let d = TempDir::new().unwrap();
        let (mut log, _) = SegLog::open(d.path(), cfg(64, 1 << 20)).unwrap();
        for i in 0..10u8 {
            log.append(&[i; 20]).unwrap();
        }
        let sync = log.detach_sync().unwrap().expect("records to sync");
        assert_eq!(sync.through(), 11);
        assert!(log.detach_sync().unwrap().is_none(), "nothing new since");
        // Another thread runs it; here, in line.
        sync.run().unwrap();
        let segments = log.segment_count();
        let trim = log.detach_trim(6).unwrap().expect("a trim to run");
        // The log forgets at once; the files go when the trim runs.
        assert_eq!(log.trimmed_through(), 6);
        assert!(log.segment_count() < segments);
        assert_eq!(log.iter_from(0).unwrap().next().unwrap().unwrap().0, 7);
        assert!(
            log.detach_trim(5).unwrap().is_none(),
            "a trim never goes back"
        );
        trim.run().unwrap();
        drop(log);
        let (mut log, rec) = SegLog::open(d.path(), cfg(64, 1 << 20)).unwrap();
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(log.trimmed_through(), 6);
        let idx: Vec<u64> = log.iter_from(0).unwrap().map(|r| r.unwrap().0).collect();
        assert_eq!(idx, vec![7, 8, 9, 10]);
    }

    #[test]
    fn a_detached_trim_not_yet_run_at_a_crash_leaves_a_log_that_opens() {
        let d = TempDir::new().unwrap();
        let (mut log, _) = SegLog::open(d.path(), cfg(64, 1 << 20)).unwrap();
        for i in 0..10u8 {
            log.append(&[i; 20]).unwrap();
        }
        log.sync().unwrap();
        let early = log.detach_trim(3).unwrap().expect("trim");
        let late = log.detach_trim(8).unwrap().expect("trim");
        // Crash: neither ran. Everything is still there, and open says so.
        drop(log);
        let (mut log, _) = SegLog::open(d.path(), cfg(64, 1 << 20)).unwrap();
        assert_eq!(log.iter_from(0).unwrap().count(), 10);
        drop(log);
        // Run late, then early: the trim point stays at 8.
        late.run().unwrap();
        early.run().unwrap();
        let (mut log, _) = SegLog::open(d.path(), cfg(64, 1 << 20)).unwrap();
        assert_eq!(log.trimmed_through(), 8);
        let idx: Vec<u64> = log.iter_from(0).unwrap().map(|r| r.unwrap().0).collect();
        assert_eq!(idx, vec![9, 10]);
    }

    #[test]
    fn trimming_everything_and_past_the_end_never_reuses_an_index() {
        let dir = TempDir::new().unwrap();
        let c = cfg(256, 1 << 20);
        let mut log = filled(dir.path(), c, 30);
        log.trim_through(30).unwrap();
        assert!(log.is_empty());
        assert!(all(&mut log, 0).is_empty());
        log.trim_through(100).unwrap();
        assert_eq!(log.usage().0, 0);
        assert_eq!(seg_files(dir.path()).len(), 1);
        assert_eq!(log.append(b"after").unwrap(), 101);
        log.sync().unwrap();
        drop(log);
        let (mut log, rec) = SegLog::open(dir.path(), c).unwrap();
        assert_eq!((rec.first_index, rec.next_index), (101, 102));
        assert_eq!(all(&mut log, 0), vec![(101, b"after".to_vec())]);
    }

    #[test]
    fn a_trim_point_past_the_end_found_at_open_starts_after_it() {
        // A crash after the trim file was written but before the segments were replaced.
        let dir = TempDir::new().unwrap();
        let c = cfg(256, 1 << 20);
        let log = filled(dir.path(), c, 30);
        log.write_trim(500).unwrap();
        drop(log);
        let (mut log, rec) = SegLog::open(dir.path(), c).unwrap();
        assert_eq!((rec.records, rec.next_index), (0, 501));
        assert_eq!(seg_files(dir.path()).len(), 1);
        assert_eq!(log.append(b"x").unwrap(), 501);
    }

    #[test]
    fn a_corrupt_trim_file_is_an_error() {
        let dir = TempDir::new().unwrap();
        let mut log = filled(dir.path(), cfg(256, 1 << 20), 10);
        log.trim_through(4).unwrap();
        drop(log);
        let trim = dir.path().join(TRIM_FILE);
        let mut b = fs::read(&trim).unwrap();
        b[0] ^= 1;
        fs::write(&trim, b).unwrap();
        let err = SegLog::open(dir.path(), cfg(256, 1 << 20)).unwrap_err();
        assert!(matches!(err, SegLogError::BadTrimFile { .. }), "{err}");
    }

    #[test]
    fn the_size_cap_refuses_appends_before_dropping_anything() {
        let dir = TempDir::new().unwrap();
        let (mut log, _) = SegLog::open(dir.path(), cfg(1000, 2000)).unwrap();
        let rec = vec![7u8; 92]; // 100 bytes with its header
        for _ in 0..20 {
            log.append(&rec).unwrap();
        }
        assert_eq!(log.usage(), (2000, 2000));
        let err = log.append(&rec).unwrap_err();
        match err {
            SegLogError::Full { needed, used, max } => {
                assert_eq!((needed, used, max), (100, 2000, 2000))
            }
            other => panic!("{other}"),
        }
        log.sync().unwrap();
        assert_eq!(all(&mut log, 0).len(), 20);
        // Trimming a whole segment makes room again.
        log.trim_through(10).unwrap();
        assert_eq!(log.usage().0, 1000);
        assert_eq!(log.append(&rec).unwrap(), 21);
    }

    #[test]
    fn many_segments_survive_reopen_and_iterate_from_any_index() {
        let dir = TempDir::new().unwrap();
        let c = SegLogConfig {
            segment_bytes: 512,
            max_total_bytes: 1 << 24,
            fsync: false,
        };
        let n = 2000;
        let log = filled(dir.path(), c, n);
        let segs = log.segment_count();
        assert!(segs > 50, "{segs}");
        assert_eq!(seg_files(dir.path()).len(), segs);
        drop(log);
        let (mut log, rec) = SegLog::open(dir.path(), c).unwrap();
        assert_eq!((rec.records, rec.segments), (n, segs));
        for from in [1, 2, 777, 1999, 2000, 2001, 5000] {
            let got = all(&mut log, from);
            assert_eq!(got.len() as u64, (n + 1).saturating_sub(from));
            if let Some((i, p)) = got.first() {
                assert_eq!((*i, p), (from, &payload(from)));
            }
        }
        // Segment files are named after their first record.
        let names: Vec<u64> = seg_files(dir.path())
            .iter()
            .map(|p| segment_base(p.file_name().unwrap().to_str().unwrap()).unwrap())
            .collect();
        assert_eq!(names[0], 1);
        assert!(names.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_record_larger_than_a_segment_gets_one_to_itself() {
        let dir = TempDir::new().unwrap();
        let (mut log, _) = SegLog::open(dir.path(), cfg(100, 10_000)).unwrap();
        log.append(b"small").unwrap();
        log.append(&[1u8; 500]).unwrap();
        log.append(b"small again").unwrap();
        log.sync().unwrap();
        assert_eq!(log.segment_count(), 3);
        drop(log);
        let (mut log, rec) = SegLog::open(dir.path(), cfg(100, 10_000)).unwrap();
        assert_eq!(rec.records, 3);
        assert_eq!(all(&mut log, 2)[0].1, vec![1u8; 500]);
    }

    #[test]
    fn corruption_found_while_iterating_names_the_file() {
        let dir = TempDir::new().unwrap();
        let mut log = filled(dir.path(), cfg(1 << 20, 1 << 24), 3);
        let seg = seg_files(dir.path())[0].clone();
        let mut bytes = fs::read(&seg).unwrap();
        bytes[RECORD_HEADER_BYTES as usize] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let results: Vec<_> = log.iter_from(1).unwrap().collect();
        assert_eq!(results.len(), 1);
        let err = results.into_iter().next().unwrap().unwrap_err();
        assert!(err.to_string().contains("000000000001.seg"), "{err}");
    }

    #[test]
    fn bad_configs_are_refused() {
        let dir = TempDir::new().unwrap();
        assert!(matches!(
            SegLog::open(dir.path(), cfg(0, 10)),
            Err(SegLogError::BadConfig(_))
        ));
        assert!(matches!(
            SegLog::open(dir.path(), cfg(100, 10)),
            Err(SegLogError::BadConfig(_))
        ));
    }
}
