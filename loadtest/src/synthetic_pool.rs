//! A pool with made-up work, served by the real edge Stratum server.
//!
//! To measure the edge's miner-facing server alone (its latency, its memory per connection),
//! nothing else of the pool may be in the way: no core, no coin daemon, no uplink. This module
//! runs the real [`edge::server`] exactly as the edge binary does and feeds it synthetic jobs
//! shaped like mainnet Bitcoin work: a coinbase split around the extranonces at typical sizes,
//! a 12-level merkle branch (a block of 2,049–4,096 transactions) and nBits `0x1d00ffff`
//! (network difficulty 1): a share is a block only if its hash happens to reach difficulty 1,
//! which at a load test's tiny share difficulties is about one share in a billion. A new job
//! comes every 30 s, every fourth one with `clean_jobs` (a new block every 120 s), as a pool's
//! job manager would send them.
//!
//! Difficulty is fixed (vardiff's floor and ceiling are both the configured difficulty), so a
//! load test controls the share rate exactly through the miners' hashrate.

use crossbeam_channel::{Receiver, RecvTimeoutError};
use edge::jobs::JobEntry;
use edge::server::{ServerConfig, ServerHandle};
use edge::session::SessionConfig;
use edge::share::ShareEvent;
use edge::vardiff::VardiffConfig;
use relay::work::{CompactTarget, Difficulty, ExtranonceLayout, Job, JobId, PrevHash, VersionMask};
use relay::{sha256d, Hash256, PowAlgorithm};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Mainnet's proof-of-work limit (difficulty 1): shares at lower difficulty are not blocks.
pub const MAINNET_LIKE_NBITS: CompactTarget = CompactTarget(0x1d00_ffff);
/// BIP9 version with no deployment bits set.
const BLOCK_VERSION: u32 = 0x2000_0000;
/// Merkle levels of a block of 2,049–4,096 transactions.
pub const MERKLE_LEVELS: usize = 12;

/// How the synthetic pool runs.
#[derive(Clone, Debug)]
pub struct SyntheticPoolConfig {
    pub listen: SocketAddr,
    pub algorithm: PowAlgorithm,
    /// The share difficulty of every connection (vardiff pinned to it).
    pub difficulty: Difficulty,
    /// Connector threads of the server; 0 means one per core.
    pub threads: usize,
    pub max_connections: usize,
    /// A new job this often.
    pub job_interval: Duration,
    /// Every this many jobs, one with `clean_jobs` (a new block).
    pub clean_every: u64,
    /// Bytes of extranonce2 each connection rolls (4 for ordinary miners; a proxy or an edge
    /// mining through this pool for its own miners needs 8).
    pub extranonce2_size: usize,
    /// The version-rolling mask the pool grants (BIP310).
    pub version_mask: VersionMask,
}

impl SyntheticPoolConfig {
    pub fn new(listen: SocketAddr, algorithm: PowAlgorithm, difficulty: Difficulty) -> Self {
        SyntheticPoolConfig {
            listen,
            algorithm,
            difficulty,
            threads: 0,
            // Below the 20,000 open files a process may have here, with room for the rest.
            max_connections: 19_000,
            job_interval: Duration::from_secs(30),
            clean_every: 4,
            extranonce2_size: 4,
            version_mask: VersionMask::BIP320,
        }
    }

    /// The edge server's configuration: defaults, except the algorithm, the connection limit and
    /// a fixed difficulty.
    pub fn server_config(&self) -> ServerConfig {
        let d = self.difficulty;
        ServerConfig {
            listen: self.listen,
            threads: self.threads,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections,
            session: SessionConfig {
                algorithm: self.algorithm,
                extranonce2_size: self.extranonce2_size,
                version_mask: self.version_mask,
                start_difficulty: d,
                vardiff: VardiffConfig {
                    min: d,
                    max: d,
                    ..VardiffConfig::default()
                },
                ..SessionConfig::default()
            },
            layout: ExtranonceLayout {
                extranonce2_len: self.extranonce2_size,
                ..ExtranonceLayout::default()
            },
            ..ServerConfig::default()
        }
    }
}

/// Deterministic bytes standing in for hashes and keys.
fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(&sha256d(&[seed.to_le_bytes(), i.to_le_bytes()].concat()));
        i += 1;
    }
    out.truncate(len);
    out
}

/// Job `seq` on block `height`: a mainnet-shaped coinbase (non-witness serialization, split
/// around the 4+4 extranonce bytes) and a 12-level merkle branch.
pub fn synthetic_job(seq: u64, height: u32, clean: bool, ntime: u32) -> Job {
    const TAG: &[u8] = b"/quarry-synthetic/";
    // coinb1: version, one input spending nothing (null prevout), scriptSig length, BIP34 height
    // push, the pool tag; the extranonces follow inside the scriptSig.
    let mut coinb1 = Vec::with_capacity(64);
    coinb1.extend_from_slice(&1u32.to_le_bytes());
    coinb1.push(1);
    coinb1.extend_from_slice(&[0; 32]);
    coinb1.extend_from_slice(&u32::MAX.to_le_bytes());
    let script_len = 4 + TAG.len() + 8 + 8;
    coinb1.push(script_len as u8);
    coinb1.push(3);
    coinb1.extend_from_slice(&height.to_le_bytes()[..3]);
    coinb1.extend_from_slice(TAG);
    // coinb2: the rest of the scriptSig (8 bytes of job nonce), sequence, two outputs (a P2WPKH
    // payout and the BIP141 witness commitment), locktime.
    let mut coinb2 = Vec::with_capacity(112);
    coinb2.extend_from_slice(&seq.to_le_bytes());
    coinb2.extend_from_slice(&u32::MAX.to_le_bytes());
    coinb2.push(2);
    coinb2.extend_from_slice(&312_500_000u64.to_le_bytes());
    coinb2.push(22);
    coinb2.extend_from_slice(&[0x00, 0x14]);
    coinb2.extend_from_slice(&filler(20, 7));
    coinb2.extend_from_slice(&0u64.to_le_bytes());
    coinb2.push(38);
    coinb2.extend_from_slice(&[0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed]);
    coinb2.extend_from_slice(&filler(32, seq));
    coinb2.extend_from_slice(&0u32.to_le_bytes());
    let branch = (0..MERKLE_LEVELS as u64)
        .map(|i| sha256d(&[seq.to_le_bytes(), i.to_le_bytes()].concat()))
        .collect();
    Job::new(
        JobId::from_counter(seq),
        PrevHash(Hash256(sha256d(&height.to_le_bytes()))),
        coinb1,
        coinb2,
        branch,
        BLOCK_VERSION,
        MAINNET_LIKE_NBITS,
        ntime,
        clean,
    )
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

/// What the server handed on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShareTally {
    pub accepted: u64,
    pub blocks: u64,
}

impl ShareTally {
    pub fn count(&mut self, ev: &ShareEvent) {
        match ev {
            ShareEvent::Accepted(_) => self.accepted += 1,
            ShareEvent::Block(_) => self.blocks += 1,
        }
    }
}

/// The running edge server and its synthetic work.
pub struct SyntheticPool {
    cfg: SyntheticPoolConfig,
    server: ServerHandle,
    shares: Receiver<ShareEvent>,
    seq: u64,
    height: u32,
}

impl SyntheticPool {
    /// Starts the server and publishes the first (clean) job.
    pub fn start(cfg: SyntheticPoolConfig) -> io::Result<Self> {
        let (tx, shares) = crossbeam_channel::unbounded();
        let server = edge::server::start(cfg.server_config(), tx)?;
        let mut pool = SyntheticPool {
            cfg,
            server,
            shares,
            seq: 0,
            height: 840_000,
        };
        pool.publish(true);
        Ok(pool)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn connected(&self) -> usize {
        self.server.connected()
    }

    pub fn server(&self) -> &ServerHandle {
        &self.server
    }

    /// Accepted shares and block candidates, as the server hands them on.
    pub fn shares(&self) -> &Receiver<ShareEvent> {
        &self.shares
    }

    /// Publishes the next job; a clean one starts a new block.
    pub fn publish(&mut self, clean: bool) {
        self.seq += 1;
        if clean {
            self.height += 1;
        }
        let job = synthetic_job(self.seq, self.height, clean, unix_now());
        self.server
            .publish(Arc::new(JobEntry::new(job, None, Instant::now())));
    }

    /// Publishes jobs on schedule and counts shares until `stop` is set, calling `report` with a
    /// status line every `report_every`. Returns the final tally.
    pub fn serve(
        &mut self,
        stop: &AtomicBool,
        report_every: Duration,
        mut report: impl FnMut(&str),
    ) -> ShareTally {
        let start = Instant::now();
        let mut tally = ShareTally::default();
        let mut next_job = start + self.cfg.job_interval;
        let mut next_report = start + report_every;
        let mut last = (start, 0u64);
        while !stop.load(Ordering::Relaxed) {
            match self.shares.recv_timeout(Duration::from_millis(100)) {
                Ok(ev) => {
                    tally.count(&ev);
                    while let Ok(ev) = self.shares.try_recv() {
                        tally.count(&ev);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now >= next_job {
                let clean = self.seq.is_multiple_of(self.cfg.clean_every.max(1));
                self.publish(clean);
                next_job += self.cfg.job_interval;
            }
            if now >= next_report {
                let rate = (tally.accepted - last.1) as f64
                    / now.duration_since(last.0).as_secs_f64().max(1e-9);
                last = (now, tally.accepted);
                report(&self.status(now - start, tally, rate));
                next_report += report_every;
            }
        }
        while let Ok(ev) = self.shares.try_recv() {
            tally.count(&ev);
        }
        tally
    }

    /// The status line `serve` reports; `bench-stratum` reads `accepted=`, `connected=` and
    /// `heap=` back from it.
    pub fn status(&self, elapsed: Duration, tally: ShareTally, rate: f64) -> String {
        format!(
            "synthetic-pool t={:.1}s connected={} accepted={} blocks={} jobs={} rate={rate:.1}/s heap={}",
            elapsed.as_secs_f64(),
            self.connected(),
            tally.accepted,
            tally.blocks,
            self.seq,
            heap_in_use().map_or("?".into(), |b| b.to_string())
        )
    }
}

/// Bytes the C allocator has handed out and not got back (glibc `mallinfo2`: arena chunks in
/// use plus mmapped blocks). Unlike RSS it ignores free memory the allocator keeps.
pub fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let m = unsafe { libc::mallinfo2() };
        Some((m.uordblks + m.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Reads `key=N` from the newest status line in `log` (see [`SyntheticPool::status`]).
pub fn last_status_value(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .rev()
        .filter(|l| l.starts_with("synthetic-pool "))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .and_then(|n| n.parse().ok())
        })
}

/// Reads `accepted=N` from the newest status line in `log` (see [`SyntheticPool::status`]).
pub fn last_accepted(log: &str) -> Option<u64> {
    last_status_value(log, "accepted")
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::work::{Extranonce, ShareWork, Target};

    #[test]
    fn synthetic_jobs_look_like_mainnet_work_and_are_never_blocks_at_low_difficulty() {
        let j = synthetic_job(7, 840_001, true, 1_700_000_000);
        assert_eq!(j.merkle_branch.len(), MERKLE_LEVELS);
        assert!((60..=80).contains(&j.coinb1.len()), "{}", j.coinb1.len());
        assert!((90..=120).contains(&j.coinb2.len()), "{}", j.coinb2.len());
        // The scriptSig length byte covers what follows it up to the sequence number.
        let script_len = j.coinb1[41] as usize;
        assert_eq!(j.coinb1.len() - 42 + 8 + 8, script_len);
        let coinbase = j.coinbase(
            &Extranonce::from_hex("00000001").unwrap(),
            &Extranonce::from_hex("00000002").unwrap(),
        );
        assert_eq!(coinbase.len(), j.coinb1.len() + 8 + j.coinb2.len());
        let network = Target::from_compact(j.nbits).unwrap();
        let work = ShareWork {
            extranonce1: Extranonce::from_hex("00000001").unwrap(),
            extranonce2: Extranonce::from_hex("00000002").unwrap(),
            ntime: j.ntime,
            nonce: 0,
            version: j.version,
        };
        let hash = PowAlgorithm::Sha256d.hash(&j.header(&work).to_bytes());
        assert!(!network.is_met_by(&hash));
    }

    #[test]
    fn last_accepted_reads_the_newest_status_line() {
        let log = "noise accepted=9\nsynthetic-pool t=5.0s connected=3 accepted=10 blocks=0 jobs=1 rate=2.0/s\n\
                   2026 INFO something\nsynthetic-pool t=10.0s connected=3 accepted=25 blocks=0 jobs=1 rate=3.0/s\n";
        assert_eq!(last_accepted(log), Some(25));
        assert_eq!(last_status_value(log, "connected"), Some(3));
        assert_eq!(last_status_value(log, "jobs"), Some(1));
        assert_eq!(last_accepted("nothing"), None);
    }
}
