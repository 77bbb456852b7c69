use super::*;
use relay::hash::Hash256;
use relay::work::{CompactTarget, Job, PrevHash};

fn d(v: f64) -> Difficulty {
    Difficulty::new(v).unwrap()
}

fn cfg() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        algorithm: PowAlgorithm::Sha256d,
        // SHA-256 difficulty 2^-24: about one hash in 256 is a share.
        start_difficulty: d(1.0 / 16_777_216.0),
        vardiff: VardiffConfig {
            min: d(1.0 / 1e12),
            ..Default::default()
        },
        ..Default::default()
    })
}

fn job(id: u64, prev: u8, clean: bool, nbits: u32) -> Arc<JobEntry> {
    let j = Job::new(
        JobId::from_counter(id),
        PrevHash(Hash256([prev; 32])),
        hex::decode("01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff20020862062f503253482f04b8864e5008").unwrap(),
        hex::decode("072f736c7573682f000000000100f2052a010000001976a914d23fcdf86f7e756a64a7a9688ef9903327048ed988ac00000000").unwrap(),
        vec![[0x11; 32], [0x22; 32]],
        0x2000_0000,
        CompactTarget(nbits),
        0x5e9a_0b0c,
        clean,
    );
    Arc::new(JobEntry::new(j, None, Instant::now()))
}

/// Mainnet-like nBits: no share in these tests is a block.
const HARD_BITS: u32 = 0x1d00ffff;

struct Rig {
    s: Session,
    book: JobBook,
    now: Instant,
    out: Vec<u8>,
    events: Vec<ShareEvent>,
}

impl Rig {
    fn new(cfg: Arc<SessionConfig>) -> Rig {
        let now = Instant::now();
        let book = JobBook::default().with_job(job(1, 1, true, HARD_BITS), now);
        Rig {
            s: Session::new(cfg, Extranonce::from_hex("01000002").unwrap(), now),
            book,
            now,
            out: vec![],
            events: vec![],
        }
    }

    fn send(&mut self, line: &str) -> Vec<String> {
        self.out.clear();
        self.s.handle_line(
            line.as_bytes(),
            &self.book,
            self.now,
            SystemTime::now(),
            &mut self.out,
            &mut self.events,
        );
        String::from_utf8(self.out.clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn login(&mut self) -> Vec<String> {
        self.send(r#"{"id":1,"method":"mining.subscribe","params":["test/1.0"]}"#);
        self.send(r#"{"id":2,"method":"mining.authorize","params":["acct.rig1","x"]}"#)
    }

    fn publish(&mut self, entry: Arc<JobEntry>) -> Vec<String> {
        self.book = self.book.with_job(entry, self.now);
        self.out.clear();
        self.s.on_jobs(&self.book, self.now, &mut self.out);
        String::from_utf8(self.out.clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Finds a nonce whose hash meets `target` (and, if `miss` is set, does NOT meet `miss`).
    fn find_nonce(
        &self,
        job: &JobEntry,
        version: u32,
        target: Target,
        miss: Option<Target>,
    ) -> u32 {
        self.find_nonce_from(0, job, version, target, miss)
    }

    /// [`Rig::find_nonce`], searching from `start` (to find further shares on one job).
    fn find_nonce_from(
        &self,
        start: u32,
        job: &JobEntry,
        version: u32,
        target: Target,
        miss: Option<Target>,
    ) -> u32 {
        let e2 = Extranonce::from_hex("00000001").unwrap();
        for nonce in start.. {
            let w = ShareWork {
                extranonce1: self.s.extranonce1(),
                extranonce2: e2,
                ntime: job.job.ntime,
                nonce,
                version,
            };
            let h = PowAlgorithm::Sha256d.hash(&job.job.header(&w).to_bytes());
            if target.is_met_by(&h) && !miss.is_some_and(|m| m.is_met_by(&h)) {
                return nonce;
            }
        }
        unreachable!()
    }
}

fn submit_line(id: u32, job: &str, nonce: u32) -> String {
    format!(
        r#"{{"id":{id},"method":"mining.submit","params":["acct.rig1","{job}","00000001","5e9a0b0c","{nonce:08x}"]}}"#
    )
}

fn target_of(diff: f64) -> Target {
    Target::from_difficulty(d(diff), Target::SHA256_DIFF1)
}

#[test]
fn subscribe_gives_extranonce1_and_size_and_work_follows_authorize() {
    let mut r = Rig::new(cfg());
    let sub = r.send(r#"{"id":1,"method":"mining.subscribe","params":[]}"#);
    assert_eq!(
        sub,
        vec![
            r#"{"id":1,"result":[[["mining.set_difficulty","01000002"],["mining.notify","01000002"]],"01000002",4],"error":null}"#
        ]
    );
    let auth = r.send(r#"{"id":2,"method":"mining.authorize","params":["acct.rig1","x"]}"#);
    assert_eq!(auth[0], r#"{"id":2,"result":true,"error":null}"#);
    assert!(auth[1].contains("mining.set_difficulty"), "{auth:?}");
    assert!(auth[2].contains("mining.notify"), "{auth:?}");
}

#[test]
fn valid_share_is_accepted_and_reported() {
    let mut r = Rig::new(cfg());
    r.login();
    let j = r.book.current().unwrap().clone();
    let nonce = r.find_nonce(&j, 0x2000_0000, target_of(1.0 / 16_777_216.0), None);
    let resp = r.send(&submit_line(7, "1", nonce));
    assert_eq!(resp, vec![r#"{"id":7,"result":true,"error":null}"#]);
    match &r.events[..] {
        [ShareEvent::Accepted(rec)] => {
            assert_eq!(&*rec.worker, "acct.rig1");
            assert_eq!(rec.nonce, nonce);
            assert_eq!(rec.version, 0x2000_0000);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicate_share_is_rejected_with_code_22() {
    let mut r = Rig::new(cfg());
    r.login();
    let j = r.book.current().unwrap().clone();
    let nonce = r.find_nonce(&j, 0x2000_0000, target_of(1.0 / 16_777_216.0), None);
    r.send(&submit_line(7, "1", nonce));
    let resp = r.send(&submit_line(8, "1", nonce));
    assert_eq!(
        resp,
        vec![r#"{"id":8,"result":null,"error":[22,"Duplicate share",null]}"#]
    );
    assert_eq!(r.events.len(), 1);
}

#[test]
fn duplicate_on_a_superseded_job_is_caught_within_grace_and_its_records_go_after_it() {
    let mut r = Rig::new(cfg());
    r.login();
    let old = r.book.current().unwrap().clone();
    let share = target_of(1.0 / 16_777_216.0);
    let nonce = r.find_nonce(&old, 0x2000_0000, share, None);
    assert_eq!(
        r.send(&submit_line(7, "1", nonce)),
        vec![r#"{"id":7,"result":true,"error":null}"#]
    );
    // A new job on the same prevhash: job 1 stays live for the grace period, and so does its
    // record of accepted shares.
    r.publish(job(2, 1, false, HARD_BITS));
    assert_eq!(
        r.send(&submit_line(8, "1", nonce)),
        vec![r#"{"id":8,"result":null,"error":[22,"Duplicate share",null]}"#]
    );
    assert_eq!(r.s.jobs[0].seen.len(), 1);
    assert!(
        r.s.jobs[0].seen.capacity() < 4,
        "the superseded job's record is shrunk"
    );
    // Within the grace period a tick keeps it; past it the tick frees it, without waiting for
    // the next job: such a share is stale before it could be a duplicate.
    assert!(r
        .s
        .on_tick(&r.book, r.now + Duration::from_secs(29))
        .is_none());
    assert_eq!(r.s.jobs[0].seen.len(), 1);
    r.now += Duration::from_secs(31);
    assert!(r.s.on_tick(&r.book, r.now).is_none());
    assert_eq!(r.s.jobs[0].seen.capacity(), 0);
    r.publish(job(3, 1, false, HARD_BITS));
    assert_eq!(r.s.jobs[0].entry.job.id.as_str(), "1");
    assert_eq!(r.s.jobs[0].seen.capacity(), 0);
    assert_eq!(
        r.send(&submit_line(9, "1", nonce)),
        vec![r#"{"id":9,"result":null,"error":[21,"Stale share",null]}"#]
    );
    assert_eq!(r.events.len(), 1);
}

#[test]
fn many_shares_on_one_job_are_each_accepted_once() {
    let mut r = Rig::new(cfg());
    r.login();
    let j = r.book.current().unwrap().clone();
    let share = target_of(1.0 / 16_777_216.0);
    let mut nonces = Vec::new();
    let mut from = 0;
    for _ in 0..5 {
        let n = r.find_nonce_from(from, &j, 0x2000_0000, share, None);
        nonces.push(n);
        from = n + 1;
    }
    for (i, n) in nonces.iter().enumerate() {
        let resp = r.send(&submit_line(10 + i as u32, "1", *n));
        assert_eq!(
            resp[0],
            format!(r#"{{"id":{},"result":true,"error":null}}"#, 10 + i)
        );
    }
    // Again, in another order: every one is a duplicate.
    for (i, n) in nonces.iter().rev().enumerate() {
        let resp = r.send(&submit_line(20 + i as u32, "1", *n));
        assert!(resp[0].contains("[22,\"Duplicate share\""), "{resp:?}");
    }
    assert_eq!(r.events.len(), 5);
    let seen = &r.s.jobs[0].seen;
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "kept sorted");
}

#[test]
fn a_share_under_another_extranonce2_is_judged_by_its_own_merkle_root() {
    let mut r = Rig::new(cfg());
    r.login();
    let j = r.book.current().unwrap().clone();
    let share = target_of(1.0 / 16_777_216.0);
    let first = r.find_nonce(&j, 0x2000_0000, share, None);
    assert_eq!(
        r.send(&submit_line(7, "1", first)),
        vec![r#"{"id":7,"result":true,"error":null}"#]
    );
    // A nonce that meets the target under extranonce2 00000001 but not under 00000002: with
    // the first share's root reused it would pass.
    let e2 = Extranonce::from_hex("00000002").unwrap();
    let hash_under = |nonce: u32, e2: Extranonce| {
        let w = ShareWork {
            extranonce1: r.s.extranonce1(),
            extranonce2: e2,
            ntime: j.job.ntime,
            nonce,
            version: 0x2000_0000,
        };
        PowAlgorithm::Sha256d.hash(&j.job.header(&w).to_bytes())
    };
    let mut nonce = first + 1;
    loop {
        nonce = r.find_nonce_from(nonce, &j, 0x2000_0000, share, None);
        if !share.is_met_by(&hash_under(nonce, e2)) {
            break;
        }
        nonce += 1;
    }
    let line = format!(
        r#"{{"id":8,"method":"mining.submit","params":["acct.rig1","1","00000002","5e9a0b0c","{nonce:08x}"]}}"#
    );
    assert_eq!(
        r.send(&line),
        vec![r#"{"id":8,"result":null,"error":[23,"Low difficulty share",null]}"#]
    );
    assert_eq!(r.events.len(), 1);
}

#[test]
fn low_difficulty_share_is_rejected_with_code_23() {
    let mut r = Rig::new(cfg());
    r.login();
    let j = r.book.current().unwrap().clone();
    let share = target_of(1.0 / 16_777_216.0);
    // Any hash that misses the share target.
    let nonce = r.find_nonce(&j, 0x2000_0000, Target::MAX, Some(share));
    let resp = r.send(&submit_line(9, "1", nonce));
    assert_eq!(
        resp,
        vec![r#"{"id":9,"result":null,"error":[23,"Low difficulty share",null]}"#]
    );
    assert!(r.events.is_empty());
}

#[test]
fn unknown_job_is_rejected_with_code_21() {
    let mut r = Rig::new(cfg());
    r.login();
    let resp = r.send(&submit_line(3, "beef", 1));
    assert_eq!(
        resp,
        vec![r#"{"id":3,"result":null,"error":[21,"Job not found",null]}"#]
    );
}

#[test]
fn stale_share_after_clean_jobs_is_rejected_with_code_21() {
    let mut r = Rig::new(cfg());
    r.login();
    let old = r.book.current().unwrap().clone();
    let nonce = r.find_nonce(&old, 0x2000_0000, target_of(1.0 / 16_777_216.0), None);
    let notify = r.publish(job(2, 2, true, HARD_BITS));
    assert!(notify.iter().any(|l| l.contains("mining.notify")));
    let resp = r.send(&submit_line(4, "1", nonce));
    assert_eq!(
        resp,
        vec![r#"{"id":4,"result":null,"error":[21,"Stale share",null]}"#]
    );
}

#[test]
fn a_stale_share_on_work_the_miner_was_not_sent_yet_gets_the_new_job_before_the_reject() {
    let mut r = Rig::new(cfg());
    r.login();
    let old = r.book.current().unwrap().clone();
    let nonce = r.find_nonce(&old, 0x2000_0000, target_of(1.0 / 16_777_216.0), None);
    // The connector holds the new clean job but has not reached this miner in its broadcast.
    r.book = r.book.with_job(job(2, 2, true, HARD_BITS), r.now);
    let resp = r.send(&submit_line(4, "1", nonce));
    assert_eq!(resp.len(), 2, "{resp:?}");
    assert!(
        resp[0].contains("mining.notify") && resp[0].contains("\"2\""),
        "{resp:?}"
    );
    assert_eq!(
        resp[1],
        r#"{"id":4,"result":null,"error":[21,"Stale share",null]}"#
    );
    // The broadcast reaching it later sends nothing twice.
    r.out.clear();
    r.s.on_jobs(&r.book, r.now, &mut r.out);
    assert!(r.out.is_empty(), "{}", String::from_utf8_lossy(&r.out));
}

#[test]
fn share_on_previous_job_with_same_prevhash_is_accepted_within_grace_then_stale() {
    let mut r = Rig::new(cfg());
    r.login();
    let old = r.book.current().unwrap().clone();
    let nonce = r.find_nonce(&old, 0x2000_0000, target_of(1.0 / 16_777_216.0), None);
    r.publish(job(2, 1, false, HARD_BITS));
    let resp = r.send(&submit_line(4, "1", nonce));
    assert_eq!(resp, vec![r#"{"id":4,"result":true,"error":null}"#]);
    r.now += Duration::from_secs(31);
    let nonce2 = r.find_nonce_from(
        nonce + 1,
        &old,
        0x2000_0000,
        target_of(1.0 / 16_777_216.0),
        None,
    );
    let resp = r.send(&submit_line(5, "1", nonce2));
    assert_eq!(
        resp,
        vec![r#"{"id":5,"result":null,"error":[21,"Stale share",null]}"#]
    );
}

#[test]
fn unauthorized_worker_is_rejected_with_code_24() {
    let mut r = Rig::new(cfg());
    r.login();
    let resp = r.send(
        r#"{"id":5,"method":"mining.submit","params":["other.rig","1","00000001","5e9a0b0c","00000000"]}"#,
    );
    assert_eq!(
        resp,
        vec![r#"{"id":5,"result":null,"error":[24,"Unauthorized worker",null]}"#]
    );
}

#[test]
fn submit_before_subscribe_is_rejected_with_code_25() {
    let mut r = Rig::new(cfg());
    let resp = r.send(&submit_line(6, "1", 0));
    assert_eq!(
        resp,
        vec![r#"{"id":6,"result":null,"error":[25,"Not subscribed",null]}"#]
    );
}

#[test]
fn malformed_submit_gets_code_20_naming_the_field() {
    let mut r = Rig::new(cfg());
    r.login();
    let resp = r.send(
        r#"{"id":10,"method":"mining.submit","params":["acct.rig1","1","00000001","5e9a0b0c","1234"]}"#,
    );
    assert_eq!(
        resp,
        vec![
            r#"{"id":10,"result":null,"error":[20,"Malformed request: mining.submit: nonce has 4 hex characters, expected 8",null]}"#
        ]
    );
    let resp = r.send(
        r#"{"id":11,"method":"mining.submit","params":["acct.rig1","1","0001","5e9a0b0c","00000000"]}"#,
    );
    assert_eq!(
        resp,
        vec![
            r#"{"id":11,"result":null,"error":[20,"Invalid share: extranonce2 has 2 bytes, expected 4",null]}"#
        ]
    );
    let resp = r.send("this is not json");
    assert!(
        resp[0].starts_with(r#"{"id":null,"result":null,"error":[20,"Malformed request: "#),
        "{resp:?}"
    );
}

#[test]
fn oversized_line_gets_an_error_and_the_session_lives_on() {
    let mut r = Rig::new(cfg());
    let mut out = vec![];
    r.s.on_frame_error(
        &FrameError::LineTooLong {
            max: 16384,
            seen: 20000,
        },
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"id\":null,\"result\":null,\"error\":[20,\"line longer than the 16384-byte limit (at least 20000 bytes without a newline)\",null]}\n"
    );
    assert!(r.s.close_reason().is_none());
    let resp = r.login();
    assert_eq!(resp[0], r#"{"id":2,"result":true,"error":null}"#);
}

#[test]
fn vardiff_retarget_does_not_reject_in_flight_shares() {
    // Fast retargets so a handful of shares moves the difficulty up.
    let c = Arc::new(SessionConfig {
        vardiff: VardiffConfig {
            min: d(1.0 / 1e12),
            min_interval: Duration::from_secs(1),
            shares_per_window: 4,
            ..Default::default()
        },
        ..(*cfg()).clone()
    });
    let mut r = Rig::new(c);
    r.login();
    let j1 = r.book.current().unwrap().clone();
    let easy = target_of(1.0 / 16_777_216.0);
    // Find many shares on job 1 at the starting difficulty.
    let mut nonces = vec![];
    let mut n = 0;
    while nonces.len() < 12 {
        let nonce = r.find_nonce_from(n, &j1, 0x2000_0000, easy, None);
        nonces.push(nonce);
        n = nonce + 1;
    }
    // Submit quickly: 4 shares within 2 s is far above 18/min, so vardiff raises the difficulty.
    for (i, nonce) in nonces[..6].iter().enumerate() {
        r.now += Duration::from_millis(400);
        let resp = r.send(&submit_line(100 + i as u32, "1", *nonce));
        assert_eq!(
            resp[0],
            format!(r#"{{"id":{},"result":true,"error":null}}"#, 100 + i)
        );
    }
    let before = r.s.difficulty();
    assert!(
        before > d(1.0 / 16_777_216.0),
        "vardiff should have raised difficulty"
    );
    // A new (non-clean) job goes out with set_difficulty first.
    let lines = r.publish(job(2, 1, false, HARD_BITS));
    assert!(lines[0].contains("mining.set_difficulty"), "{lines:?}");
    assert!(lines[1].contains("mining.notify"), "{lines:?}");
    // In-flight shares for job 1, found at the old difficulty, are all still accepted.
    for (i, nonce) in nonces[6..].iter().enumerate() {
        let resp = r.send(&submit_line(200 + i as u32, "1", *nonce));
        assert_eq!(
            resp[0],
            format!(r#"{{"id":{},"result":true,"error":null}}"#, 200 + i)
        );
    }
}

#[test]
fn version_rolling_miner_gets_shares_validated_under_the_negotiated_mask() {
    let mut r = Rig::new(cfg());
    let resp = r.send(
        r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"1fffe000","version-rolling.min-bit-count":2}]}"#,
    );
    assert_eq!(
        resp,
        vec![
            r#"{"id":1,"result":{"version-rolling":true,"version-rolling.mask":"1fffe000"},"error":null}"#
        ]
    );
    r.login();
    let j = r.book.current().unwrap().clone();
    let bits = 0x0a5a_6000;
    let nonce = r.find_nonce(&j, 0x2000_0000 | bits, target_of(1.0 / 16_777_216.0), None);
    let resp = r.send(&format!(
        r#"{{"id":7,"method":"mining.submit","params":["acct.rig1","1","00000001","5e9a0b0c","{nonce:08x}","{bits:08x}"]}}"#
    ));
    assert_eq!(resp, vec![r#"{"id":7,"result":true,"error":null}"#]);
    let ShareEvent::Accepted(rec) = &r.events[0] else {
        panic!()
    };
    assert_eq!(rec.version, 0x2a5a_6000);
    // Bits outside the mask are refused.
    let resp = r.send(
        r#"{"id":8,"method":"mining.submit","params":["acct.rig1","1","00000001","5e9a0b0c","00000000","40000000"]}"#,
    );
    assert!(resp[0].contains(r#""error":[20,"Invalid share: version bits 40000000 touch bits outside the allowed mask 1fffe000""#), "{resp:?}");
}

#[test]
fn mask_wider_than_the_pool_gets_only_the_intersection() {
    let mut r = Rig::new(cfg());
    let resp = r.send(
        r#"{"id":1,"method":"mining.configure","params":[["version-rolling","x-future"],{"version-rolling.mask":"ffffffff"}]}"#,
    );
    assert_eq!(
        resp,
        vec![
            r#"{"id":1,"result":{"version-rolling":true,"version-rolling.mask":"1fffe000","x-future":false},"error":null}"#
        ]
    );
}

#[test]
fn antminer_version_bits_without_configure_are_validated_under_the_pool_mask() {
    let mut r = Rig::new(cfg());
    r.login();
    let j = r.book.current().unwrap().clone();
    let bits = 0x0000_e000;
    let nonce = r.find_nonce(&j, 0x2000_0000 | bits, target_of(1.0 / 16_777_216.0), None);
    let resp = r.send(&format!(
        r#"{{"id":7,"method":"mining.submit","params":["acct.rig1","1","00000001","5e9a0b0c","{nonce:08x}","{bits:08x}"]}}"#
    ));
    assert_eq!(resp, vec![r#"{"id":7,"result":true,"error":null}"#]);
    assert_eq!(r.s.counters.version_rolling_unnegotiated, 1);
    // The full-version form (job bits kept) means the same header.
    let nonce = r.find_nonce(
        &j,
        0x2000_0000 | 0x0000_4000,
        target_of(1.0 / 16_777_216.0),
        None,
    );
    let resp = r.send(&format!(
        r#"{{"id":8,"method":"mining.submit","params":["acct.rig1","1","00000001","5e9a0b0c","{nonce:08x}","20004000"]}}"#
    ));
    assert_eq!(resp, vec![r#"{"id":8,"result":true,"error":null}"#]);
}

#[test]
fn share_meeting_network_target_becomes_a_block_candidate() {
    let mut r = Rig::new(cfg());
    // Regtest nBits: about half of all hashes are blocks.
    r.book = JobBook::default().with_job(job(5, 9, true, 0x207fffff), r.now);
    r.login();
    let j = r.book.current().unwrap().clone();
    let nonce = r.find_nonce(
        &j,
        0x2000_0000,
        target_of(1.0 / 16_777_216.0).min(j.network_target),
        None,
    );
    let resp = r.send(&submit_line(1, "5", nonce));
    assert_eq!(resp, vec![r#"{"id":1,"result":true,"error":null}"#]);
    let ShareEvent::Block(b) = &r.events[0] else {
        panic!("{:?}", r.events)
    };
    assert_eq!(
        b.coinbase,
        j.job.coinbase(
            &r.s.extranonce1(),
            &Extranonce::from_hex("00000001").unwrap()
        )
    );
    assert!(j
        .network_target
        .is_met_by(&Hash256(relay::sha256d(&b.header))));
}

#[test]
fn bad_worker_names_and_passwords_are_refused_with_code_24() {
    let mut r = Rig::new(Arc::new(SessionConfig {
        password: Some("s3cret".into()),
        ..(*cfg()).clone()
    }));
    r.send(r#"{"id":1,"method":"mining.subscribe","params":[]}"#);
    let resp = r.send(r#"{"id":2,"method":"mining.authorize","params":["acct.rig1","x"]}"#);
    assert_eq!(
        resp,
        vec![r#"{"id":2,"result":null,"error":[24,"Unauthorized worker: wrong password",null]}"#]
    );
    let resp = r.send(r#"{"id":3,"method":"mining.authorize","params":["bad name!","s3cret"]}"#);
    assert!(resp[0].contains("[24,"), "{resp:?}");
    let resp = r.send(r#"{"id":4,"method":"mining.authorize","params":["acct","s3cret"]}"#);
    assert_eq!(resp[0], r#"{"id":4,"result":true,"error":null}"#);
}

#[test]
fn invalid_share_flood_leads_to_a_ban() {
    let mut r = Rig::new(Arc::new(SessionConfig {
        ban_after_invalid: 5,
        ..(*cfg()).clone()
    }));
    r.login();
    for i in 0..5 {
        r.send(&format!(
            r#"{{"id":{i},"method":"mining.submit","params":["acct.rig1","1","0001","5e9a0b0c","00000000"]}}"#
        ));
    }
    assert_eq!(
        r.s.close_reason(),
        Some(&CloseReason::Banned {
            invalid: 5,
            shares: 5
        })
    );
}

fn guard_cfg(ban_after_invalid: u32, ban_invalid_ratio: f64) -> SessionConfig {
    SessionConfig {
        ban_after_invalid,
        ban_invalid_ratio,
        ..(*cfg()).clone()
    }
}

#[test]
fn a_flood_that_mixes_in_valid_shares_is_banned_by_its_reject_ratio() {
    let c = guard_cfg(100, 0.5);
    let mut g = InvalidShareGuard::default();
    // Three rejects, then a valid share: the run never reaches 100, the ratio is 75%.
    let mut ban = None;
    let mut shares = 0;
    while ban.is_none() && shares < 10_000 {
        for _ in 0..3 {
            ban = ban.or(g.on_invalid(&c));
        }
        g.on_accepted(&c);
        shares += 4;
    }
    assert_eq!(
        ban,
        Some(CloseReason::Banned {
            invalid: 100,
            shares: 133
        })
    );
}

#[test]
fn a_miner_with_a_few_rejects_among_many_shares_is_never_banned() {
    let c = guard_cfg(100, 0.5);
    let mut g = InvalidShareGuard::default();
    // 30% rejects (a badly tuned rig after a difficulty change), sustained for a long time.
    for i in 0..100_000u32 {
        if i % 10 < 3 {
            assert_eq!(g.on_invalid(&c), None, "share {i}");
        } else {
            g.on_accepted(&c);
        }
    }
}

#[test]
fn an_honest_past_does_not_shield_a_flood_for_long() {
    let c = guard_cfg(10, 0.5);
    let mut g = InvalidShareGuard::default();
    for _ in 0..10_000 {
        g.on_accepted(&c);
    }
    // Without the window, 10,000 honest shares would dilute the ratio for 20,000 more.
    let mut flood_shares = 0;
    let mut ban = None;
    while ban.is_none() {
        for _ in 0..3 {
            ban = ban.or(g.on_invalid(&c));
            flood_shares += 1;
        }
        g.on_accepted(&c);
        flood_shares += 1;
        assert!(
            flood_shares <= 4 * 40,
            "not banned after {flood_shares} flood shares"
        );
    }
}

#[test]
fn a_zero_ratio_leaves_only_the_run_rule_and_a_zero_limit_never_bans() {
    let mut g = InvalidShareGuard::default();
    let c = guard_cfg(10, 0.0);
    for _ in 0..1_000 {
        assert_eq!(g.on_invalid(&c), None);
        assert_eq!(g.on_invalid(&c), None);
        g.on_accepted(&c);
    }
    let never = guard_cfg(0, 0.5);
    for _ in 0..1_000 {
        assert_eq!(g.on_invalid(&never), None);
    }
}

#[test]
fn silent_connection_times_out() {
    let mut r = Rig::new(cfg());
    assert!(r
        .s
        .on_tick(&r.book, r.now + Duration::from_secs(5))
        .is_none());
    assert_eq!(
        r.s.on_tick(&r.book, r.now + Duration::from_secs(31)),
        Some(&CloseReason::HandshakeTimeout)
    );
}

#[test]
fn suggest_difficulty_sets_the_starting_difficulty_within_bounds() {
    let mut r = Rig::new(Arc::new(SessionConfig {
        vardiff: VardiffConfig {
            min: d(0.001),
            max: d(1000.0),
            ..Default::default()
        },
        ..(*cfg()).clone()
    }));
    r.send(r#"{"id":1,"method":"mining.suggest_difficulty","params":[5000]}"#);
    let lines = r.login();
    assert_eq!(
        lines[1],
        r#"{"id":null,"method":"mining.set_difficulty","params":[1000.0]}"#
    );
}

fn job_with_mask(id: u64, prev: u8, mask: Option<VersionMask>) -> Arc<JobEntry> {
    let base = job(id, prev, true, HARD_BITS);
    Arc::new(JobEntry::new(base.job.clone(), None, Instant::now()).with_version_mask(mask))
}

fn submit_bits(id: u32, job: &str, nonce: u32, bits: u32) -> String {
    format!(
        r#"{{"id":{id},"method":"mining.submit","params":["acct.rig1","{job}","00000001","5e9a0b0c","{nonce:08x}","{bits:08x}"]}}"#
    )
}

#[test]
fn a_job_with_a_narrower_upstream_mask_sends_set_version_mask_before_its_notify() {
    let mut r = Rig::new(cfg());
    r.send(
        r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"1fffe000","version-rolling.min-bit-count":2}]}"#,
    );
    let first = r.login();
    assert!(
        !first.iter().any(|l| l.contains("set_version_mask")),
        "no upstream limit, no notification: {first:?}"
    );
    let narrow = job_with_mask(2, 2, Some(VersionMask(0x00ff_e000)));
    let lines = r.publish(narrow.clone());
    assert_eq!(
        lines,
        vec![
            r#"{"id":null,"method":"mining.set_version_mask","params":["00ffe000"]}"#.to_string(),
            narrow.notify_line.trim_end().to_string(),
        ]
    );
    // Bits inside the narrower mask are fine.
    let bits = 0x00a0_6000;
    let nonce = r.find_nonce(
        &narrow,
        0x2000_0000 | bits,
        target_of(1.0 / 16_777_216.0),
        None,
    );
    assert_eq!(
        r.send(&submit_bits(7, "2", nonce, bits)),
        vec![r#"{"id":7,"result":true,"error":null}"#]
    );
    // A bit the miner was granted at configure but the upstream does not allow is refused.
    let nonce = r.find_nonce(
        &narrow,
        0x2000_0000 | 0x1000_0000,
        target_of(1.0 / 16_777_216.0),
        None,
    );
    assert_eq!(
        r.send(&submit_bits(8, "2", nonce, 0x1000_0000)),
        vec![
            r#"{"id":8,"result":null,"error":[20,"Invalid share: version bits 10000000 touch bits outside the allowed mask 00ffe000",null]}"#
        ]
    );
    // Back to work without a limit: the full grant is announced again.
    let free = job_with_mask(3, 3, None);
    let lines = r.publish(free.clone());
    assert_eq!(
        lines,
        vec![
            r#"{"id":null,"method":"mining.set_version_mask","params":["1fffe000"]}"#.to_string(),
            free.notify_line.trim_end().to_string(),
        ]
    );
    let nonce = r.find_nonce(
        &free,
        0x2000_0000 | 0x1000_0000,
        target_of(1.0 / 16_777_216.0),
        None,
    );
    assert_eq!(
        r.send(&submit_bits(9, "3", nonce, 0x1000_0000)),
        vec![r#"{"id":9,"result":true,"error":null}"#]
    );
}

#[test]
fn an_upstream_mask_as_wide_as_the_grant_sends_no_notification() {
    let mut r = Rig::new(cfg());
    r.send(
        r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"00ffe000"}]}"#,
    );
    r.login();
    let j = job_with_mask(2, 2, Some(VersionMask::BIP320));
    assert_eq!(
        r.publish(j.clone()),
        vec![j.notify_line.trim_end().to_string()]
    );
}

#[test]
fn a_miner_rolling_without_configure_is_held_to_the_upstream_mask_without_a_notification() {
    let mut r = Rig::new(cfg());
    r.login();
    let j = job_with_mask(2, 2, Some(VersionMask(0x0000_e000)));
    // BIP310: set_version_mask only goes to miners that negotiated version rolling.
    assert_eq!(
        r.publish(j.clone()),
        vec![j.notify_line.trim_end().to_string()]
    );
    let nonce = r.find_nonce(
        &j,
        0x2000_0000 | 0x0001_0000,
        target_of(1.0 / 16_777_216.0),
        None,
    );
    assert_eq!(
        r.send(&submit_bits(7, "2", nonce, 0x0001_0000)),
        vec![
            r#"{"id":7,"result":null,"error":[20,"Invalid share: version bits 00010000 touch bits outside the allowed mask 0000e000",null]}"#
        ]
    );
    let nonce = r.find_nonce(
        &j,
        0x2000_0000 | 0x0000_2000,
        target_of(1.0 / 16_777_216.0),
        None,
    );
    assert_eq!(
        r.send(&submit_bits(8, "2", nonce, 0x0000_2000)),
        vec![r#"{"id":8,"result":true,"error":null}"#]
    );
}
