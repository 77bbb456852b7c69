//! One miner connection to the simulated pool, without I/O: lines in, lines out, every share
//! judged for real.
//!
//! The checks are a real pool's, in the order that gives the most specific answer: the worker
//! must be authorized, the job known and not stale, the extranonce2 of the size the pool gave,
//! ntime within the window, rolled version bits inside the granted mask, the share not seen
//! before; then the coinbase is rebuilt (`coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2`), the
//! merkle root folded from the branch, the 80-byte header hashed with the pool's algorithm and
//! compared with the share target in force when the job was sent. The extranonce1 used is the
//! session's *current* one: a client that missed a `mining.set_extranonce` hashes a coinbase
//! the pool never issued, and its shares fail the proof of work — exactly what a real pool
//! does to it.

use super::{Reject, SimJob};
use relay::stratum::message::{encode_bool_result, encode_error, encode_result};
use relay::stratum::{ClientRequest, ErrorCode, Request, StratumError};
use relay::work::{Difficulty, Extranonce, ShareWork, Target, VersionMask};
use relay::PowAlgorithm;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// How far a share's ntime may run ahead of its job's (seconds), as Bitcoin Core allows blocks
/// up to two hours in the future.
pub const NTIME_WINDOW: u32 = 7200;

/// The verdict on one submit, for the pool's books.
#[derive(Clone, Debug, PartialEq)]
pub enum Judged {
    Accepted {
        worker: String,
        /// The difficulty the share was judged at.
        difficulty: f64,
        /// Its hash meets the network target (nbits).
        block: bool,
    },
    Rejected {
        worker: String,
        reason: Reject,
    },
    /// Not a submit (handshake and the like).
    Other,
}

/// What the session needs from the pool at the moment of a line.
pub struct PoolView<'a> {
    pub algorithm: PowAlgorithm,
    /// Newest last; only jobs miners may still submit on.
    pub jobs: &'a [Arc<SimJob>],
    pub version_mask: VersionMask,
    pub extranonce2_size: usize,
}

#[derive(Debug)]
pub struct SimSession {
    pub extranonce1: Extranonce,
    subscribed: bool,
    pub extranonce_subscribed: bool,
    authorized: HashSet<String>,
    /// Granted by mining.configure (`None`: the client did not ask).
    granted: Option<VersionMask>,
    /// Difficulty in force when each job was sent to this session, by job id.
    job_difficulty: HashMap<Arc<str>, Difficulty>,
    pub difficulty: Difficulty,
    seen: HashSet<(Arc<str>, Extranonce, u32, u32, u32)>,
}

impl SimSession {
    pub fn new(extranonce1: Extranonce, difficulty: Difficulty) -> Self {
        SimSession {
            extranonce1,
            subscribed: false,
            extranonce_subscribed: false,
            authorized: HashSet::new(),
            granted: None,
            job_difficulty: HashMap::new(),
            difficulty,
            seen: HashSet::new(),
        }
    }

    pub fn is_subscribed(&self) -> bool {
        self.subscribed
    }

    /// Lines that announce `job` to this session (set_difficulty first when it changed).
    pub fn notify(&mut self, job: &SimJob, difficulty: Difficulty, out: &mut Vec<u8>) {
        if difficulty != self.difficulty || self.job_difficulty.is_empty() {
            self.difficulty = difficulty;
            out.extend_from_slice(
                relay::stratum::ServerNotification::SetDifficulty(difficulty)
                    .encode(&relay::stratum::RequestId::Null)
                    .as_bytes(),
            );
        }
        self.job_difficulty
            .insert(job.job.id.as_str().into(), self.difficulty);
        // Forget difficulties of jobs long gone.
        if self.job_difficulty.len() > 64 {
            self.job_difficulty.clear();
            self.job_difficulty
                .insert(job.job.id.as_str().into(), self.difficulty);
        }
        out.extend_from_slice(job.notify_line.as_bytes());
    }

    pub fn granted_mask(&self) -> Option<VersionMask> {
        self.granted
    }

    /// One line from the client; answers go to `out`.
    pub fn handle_line(&mut self, line: &[u8], view: &PoolView<'_>, out: &mut Vec<u8>) -> Judged {
        let req = match Request::parse(line) {
            Ok(r) => r,
            Err(f) => {
                encode_error(&f.id, &f.error.to_stratum(), out);
                return Judged::Rejected {
                    worker: String::new(),
                    reason: Reject::Malformed,
                };
            }
        };
        let id = req.id.clone();
        match req.body {
            ClientRequest::Subscribe { .. } => {
                self.subscribed = true;
                let sub = json!([
                    [["mining.set_difficulty", "sim"], ["mining.notify", "sim"]],
                    self.extranonce1.to_hex(),
                    view.extranonce2_size
                ]);
                encode_result(&id, &sub, out);
                Judged::Other
            }
            ClientRequest::Authorize { username, .. } => {
                self.authorized.insert(username.to_string());
                encode_bool_result(&id, true, out);
                Judged::Other
            }
            ClientRequest::Configure(c) => {
                let mut result = serde_json::Map::new();
                if let Some(vr) = c.version_rolling {
                    let m = VersionMask::negotiate(vr.mask, view.version_mask);
                    self.granted = Some(m);
                    result.insert("version-rolling".into(), json!(true));
                    result.insert("version-rolling.mask".into(), json!(format!("{:08x}", m.0)));
                }
                if c.subscribe_extranonce {
                    self.extranonce_subscribed = true;
                    result.insert("subscribe-extranonce".into(), json!(true));
                }
                for u in &c.unknown {
                    result.insert(u.clone(), json!(false));
                }
                if c.minimum_difficulty.is_some() {
                    result.insert("minimum-difficulty".into(), json!(false));
                }
                encode_result(&id, &serde_json::Value::Object(result), out);
                Judged::Other
            }
            ClientRequest::ExtranonceSubscribe => {
                self.extranonce_subscribed = true;
                encode_bool_result(&id, true, out);
                Judged::Other
            }
            ClientRequest::SuggestDifficulty(_) => {
                // A large pool sets difficulty itself.
                encode_bool_result(&id, true, out);
                Judged::Other
            }
            ClientRequest::Ping => {
                encode_result(&id, &json!("pong"), out);
                Judged::Other
            }
            ClientRequest::Unknown(m) => {
                encode_error(
                    &id,
                    &StratumError::new(ErrorCode::OTHER, format!("unknown method {m}")),
                    out,
                );
                Judged::Other
            }
            ClientRequest::Submit(s) => {
                let worker = s.worker.to_string();
                match self.judge(&s, view) {
                    Ok((difficulty, block)) => {
                        encode_bool_result(&id, true, out);
                        Judged::Accepted {
                            worker,
                            difficulty,
                            block,
                        }
                    }
                    Err(reason) => {
                        encode_error(&id, &reason.to_stratum(), out);
                        Judged::Rejected { worker, reason }
                    }
                }
            }
        }
    }

    fn judge(
        &mut self,
        s: &relay::stratum::message::Submit<'_>,
        view: &PoolView<'_>,
    ) -> Result<(f64, bool), Reject> {
        if !self.subscribed {
            return Err(Reject::NotSubscribed);
        }
        if !self.authorized.contains(s.worker.as_ref()) {
            return Err(Reject::Unauthorized);
        }
        let Some(pos) = view
            .jobs
            .iter()
            .rposition(|j| j.job.id.as_str() == s.job_id.as_ref())
        else {
            return Err(Reject::JobNotFound);
        };
        let job = &view.jobs[pos];
        if job.stale_since.is_some() {
            return Err(Reject::Stale);
        }
        if s.extranonce2.len() != view.extranonce2_size {
            return Err(Reject::BadExtranonce2Size);
        }
        if s.ntime < job.job.ntime || s.ntime > job.job.ntime + NTIME_WINDOW {
            return Err(Reject::BadNtime);
        }
        let version = match s.version_bits {
            None | Some(0) => job.job.version,
            Some(bits) => {
                let mask = self
                    .granted
                    .map(|g| VersionMask(g.0 & view.version_mask.0))
                    .unwrap_or(VersionMask::NONE);
                mask.apply(job.job.version, bits)
                    .map_err(|_| Reject::BadVersionBits)?
            }
        };
        let key = (
            Arc::<str>::from(s.job_id.as_ref()),
            s.extranonce2,
            s.ntime,
            s.nonce,
            version,
        );
        if self.seen.contains(&key) {
            return Err(Reject::Duplicate);
        }
        let header = job.job.header(&ShareWork {
            extranonce1: self.extranonce1,
            extranonce2: s.extranonce2,
            ntime: s.ntime,
            nonce: s.nonce,
            version,
        });
        let hash = view.algorithm.hash(&header.to_bytes());
        let diff1 = view.algorithm.diff1();
        let at_job = self
            .job_difficulty
            .get(s.job_id.as_ref())
            .copied()
            .unwrap_or(self.difficulty);
        // Judged at the job's difficulty, or the current one if that is lower.
        let judged = if self.difficulty.value() < at_job.value() {
            self.difficulty
        } else {
            at_job
        };
        if !Target::from_difficulty(judged, diff1).is_met_by(&hash) {
            return Err(Reject::LowDifficulty);
        }
        self.seen.insert(key);
        if self.seen.len() > 200_000 {
            self.seen.clear();
        }
        Ok((judged.value(), job.network_target.is_met_by(&hash)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim_pool::{build_job, SimPoolConfig};
    use relay::work::{Job, ShareWork};

    const DIFF: f64 = 1.0 / 1024.0 / 1024.0 / 1024.0; // 2^-30: ~4 hashes a share

    fn setup(version_mask: VersionMask) -> (SimSession, Vec<Arc<SimJob>>, SimPoolConfig) {
        let cfg = SimPoolConfig::new("127.0.0.1:0".parse().unwrap());
        let job = build_job(&cfg, 1, 7, true, 1_700_000_000);
        let sj = Arc::new(SimJob {
            network_target: Target::from_compact(job.nbits).unwrap(),
            notify_line: String::new(),
            job,
            stale_since: None,
            superseded_at: None,
        });
        let mut s = SimSession::new(
            Extranonce::from_hex("0a0b0c0d").unwrap(),
            Difficulty::new(DIFF).unwrap(),
        );
        let mut out = Vec::new();
        let view = PoolView {
            algorithm: PowAlgorithm::Sha256d,
            jobs: &[],
            version_mask,
            extranonce2_size: 8,
        };
        s.handle_line(
            br#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"ffffffff"}]}"#,
            &view,
            &mut out,
        );
        s.handle_line(
            br#"{"id":2,"method":"mining.subscribe","params":[]}"#,
            &view,
            &mut out,
        );
        s.handle_line(
            br#"{"id":3,"method":"mining.authorize","params":["up.user","x"]}"#,
            &view,
            &mut out,
        );
        s.notify(&sj, Difficulty::new(DIFF).unwrap(), &mut Vec::new());
        (s, vec![sj], cfg)
    }

    /// Brute-forces a nonce whose header meets `DIFF` (and, when `miss`, one that does not).
    fn find(job: &Job, e1: Extranonce, e2: Extranonce, version: u32, miss: bool) -> u32 {
        let target = Target::from_difficulty(
            Difficulty::new(DIFF).unwrap(),
            PowAlgorithm::Sha256d.diff1(),
        );
        (0u32..)
            .find(|&nonce| {
                let h = job.header(&ShareWork {
                    extranonce1: e1,
                    extranonce2: e2,
                    ntime: job.ntime,
                    nonce,
                    version,
                });
                target.is_met_by(&PowAlgorithm::Sha256d.hash(&h.to_bytes())) != miss
            })
            .unwrap()
    }

    fn submit(
        s: &mut SimSession,
        jobs: &[Arc<SimJob>],
        mask: VersionMask,
        e2: &str,
        nonce: u32,
        bits: Option<u32>,
    ) -> Judged {
        let job = &jobs[0].job;
        let mut params = format!(
            r#"["up.user","{}","{e2}","{:08x}","{nonce:08x}""#,
            job.id, job.ntime
        );
        if let Some(b) = bits {
            params.push_str(&format!(r#","{b:08x}""#));
        }
        let line = format!(r#"{{"id":9,"method":"mining.submit","params":{params}]}}"#);
        let view = PoolView {
            algorithm: PowAlgorithm::Sha256d,
            jobs,
            version_mask: mask,
            extranonce2_size: 8,
        };
        s.handle_line(line.as_bytes(), &view, &mut Vec::new())
    }

    #[test]
    fn a_real_share_is_accepted_once_and_a_resubmit_is_a_duplicate() {
        let (mut s, jobs, _) = setup(VersionMask::BIP320);
        let e1 = s.extranonce1;
        let e2 = Extranonce::from_hex("0000000000000001").unwrap();
        let nonce = find(&jobs[0].job, e1, e2, jobs[0].job.version, false);
        assert!(matches!(
            submit(
                &mut s,
                &jobs,
                VersionMask::BIP320,
                "0000000000000001",
                nonce,
                None
            ),
            Judged::Accepted { .. }
        ));
        assert_eq!(
            submit(
                &mut s,
                &jobs,
                VersionMask::BIP320,
                "0000000000000001",
                nonce,
                None
            ),
            Judged::Rejected {
                worker: "up.user".into(),
                reason: Reject::Duplicate
            }
        );
    }

    #[test]
    fn a_hash_that_misses_the_target_is_low_difficulty() {
        let (mut s, jobs, _) = setup(VersionMask::BIP320);
        let e2 = Extranonce::from_hex("0000000000000002").unwrap();
        let nonce = find(&jobs[0].job, s.extranonce1, e2, jobs[0].job.version, true);
        assert_eq!(
            submit(
                &mut s,
                &jobs,
                VersionMask::BIP320,
                "0000000000000002",
                nonce,
                None
            ),
            Judged::Rejected {
                worker: "up.user".into(),
                reason: Reject::LowDifficulty
            }
        );
    }

    #[test]
    fn after_an_extranonce_change_shares_built_on_the_old_one_fail() {
        let (mut s, jobs, _) = setup(VersionMask::BIP320);
        let old = s.extranonce1;
        let new = Extranonce::from_hex("01010101").unwrap();
        let e2 = Extranonce::from_hex("0000000000000003").unwrap();
        let job = &jobs[0].job;
        let target = Target::from_difficulty(
            Difficulty::new(DIFF).unwrap(),
            PowAlgorithm::Sha256d.diff1(),
        );
        let meets = |e1: Extranonce, nonce: u32| {
            let h = job.header(&ShareWork {
                extranonce1: e1,
                extranonce2: e2,
                ntime: job.ntime,
                nonce,
                version: job.version,
            });
            target.is_met_by(&PowAlgorithm::Sha256d.hash(&h.to_bytes()))
        };
        // Good work for the old extranonce1 that is not good for the new one.
        let nonce = (0u32..).find(|&n| meets(old, n) && !meets(new, n)).unwrap();
        s.extranonce1 = new;
        assert_eq!(
            submit(
                &mut s,
                &jobs,
                VersionMask::BIP320,
                "0000000000000003",
                nonce,
                None
            ),
            Judged::Rejected {
                worker: "up.user".into(),
                reason: Reject::LowDifficulty
            }
        );
        let fresh = find(job, new, e2, job.version, false);
        assert!(matches!(
            submit(
                &mut s,
                &jobs,
                VersionMask::BIP320,
                "0000000000000003",
                fresh,
                None
            ),
            Judged::Accepted { .. }
        ));
    }

    #[test]
    fn stale_jobs_wrong_sizes_and_bits_outside_the_mask_are_refused() {
        let (mut s, jobs, _) = setup(VersionMask(0x0000_6000));
        assert_eq!(s.granted_mask(), Some(VersionMask(0x0000_6000)));
        let r = submit(&mut s, &jobs, VersionMask(0x0000_6000), "00000000", 1, None);
        assert_eq!(
            r,
            Judged::Rejected {
                worker: "up.user".into(),
                reason: Reject::BadExtranonce2Size
            }
        );
        let r = submit(
            &mut s,
            &jobs,
            VersionMask(0x0000_6000),
            "0000000000000004",
            1,
            Some(0x0001_0000),
        );
        assert_eq!(
            r,
            Judged::Rejected {
                worker: "up.user".into(),
                reason: Reject::BadVersionBits
            }
        );
        let stale: Vec<Arc<SimJob>> = jobs
            .iter()
            .map(|j| {
                Arc::new(SimJob {
                    job: j.job.clone(),
                    network_target: j.network_target,
                    notify_line: String::new(),
                    stale_since: Some(std::time::Instant::now()),
                    superseded_at: None,
                })
            })
            .collect();
        let r = submit(
            &mut s,
            &stale,
            VersionMask(0x0000_6000),
            "0000000000000004",
            1,
            None,
        );
        assert_eq!(
            r,
            Judged::Rejected {
                worker: "up.user".into(),
                reason: Reject::Stale
            }
        );
        let mut out = Vec::new();
        let view = PoolView {
            algorithm: PowAlgorithm::Sha256d,
            jobs: &jobs,
            version_mask: VersionMask::BIP320,
            extranonce2_size: 8,
        };
        let r = s.handle_line(br#"{"id":5,"method":"mining.submit","params":["nobody","sim1","0000000000000004","00000000","00000000"]}"#, &view, &mut out);
        assert_eq!(
            r,
            Judged::Rejected {
                worker: "nobody".into(),
                reason: Reject::Unauthorized
            }
        );
        assert!(String::from_utf8(out).unwrap().contains("[24,"));
    }
}
