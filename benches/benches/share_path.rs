//! The per-share hot path of an edge: parse a `mining.submit` line, rebuild the header the miner
//! hashed, hash it and compare against the share target. Plus baselines for the bare hash
//! functions, so the overhead of our code over the hashing itself can be read off directly.
//!
//! Reproduce: `cargo bench -p quarry-benches -- --warm-up-time 1 --measurement-time 5`
//! (figures and machine in docs/BENCHMARKS.md).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use relay::pow::PowAlgorithm;
use relay::stratum::{
    ClientRequest, LineFramer, Request, RequestId, ServerMessage, ServerNotification,
    DEFAULT_MAX_LINE,
};
use relay::wire::{Batch, BatchContext, JobBase, ShareData};
use relay::work::{CompactTarget, Difficulty, Extranonce, Job, JobId, PrevHash, ShareWork, Target};
use relay::{sha256d, Hash256};
use sha2::{Digest, Sha256};
use std::ops::ControlFlow;

/// A submit as an ASIC with version rolling sends it: long worker name, 6 params.
const SUBMIT_LINE: &[u8] = br#"{"params": ["bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq.antminer-s19-rack07", "1f3a9c", "0000a1b2", "6650d2f1", "a1b2c3d4", "00a2e000"], "id": 184467, "method": "mining.submit"}"#;

/// Deterministic filler bytes (no RNG dependency; content does not affect timing).
fn filler(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A mainnet-shaped job: ~100-byte coinb1 (version, input, BIP34 height, pool tag), ~80-byte
/// coinb2 (rest of scriptSig, outputs, witness commitment) and 12 merkle levels (a block of
/// 2049–4096 transactions).
fn job_with_branches(levels: usize) -> Job {
    let branch = (0..levels)
        .map(|i| sha256d(&[i as u8]))
        .collect::<Vec<[u8; 32]>>();
    Job::new(
        JobId::new("1f3a9c"),
        PrevHash(Hash256(sha256d(b"previous block"))),
        filler(100, 1),
        filler(80, 2),
        branch,
        0x2000_0000,
        CompactTarget(0x1703_6e3a),
        0x6650_d2f1,
        true,
    )
}

fn share_work() -> ShareWork {
    ShareWork {
        extranonce1: Extranonce::from_hex("02070102").expect("hex"),
        extranonce2: Extranonce::from_hex("0000a1b2").expect("hex"),
        ntime: 0x6650_d2f1,
        nonce: 0,
        version: 0x2000_0000,
    }
}

fn header_80() -> [u8; 80] {
    let mut h = [0u8; 80];
    h.copy_from_slice(&filler(80, 3));
    h
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("stratum");
    g.throughput(Throughput::Elements(1));
    // Sanity: the line is a valid 6-param submit.
    match Request::parse(SUBMIT_LINE).expect("submit parses").body {
        ClientRequest::Submit(s) => assert_eq!(s.version_bits, Some(0x00a2_e000)),
        other => panic!("not a submit: {other:?}"),
    }
    g.bench_function("parse_submit", |b| {
        b.iter(|| Request::parse(black_box(SUBMIT_LINE)))
    });
    // What every miner reads with each new job (a simulated miner parses 10,000 of these per
    // job broadcast in the load harness).
    let notify = ServerNotification::Notify(job_with_branches(12)).encode(&RequestId::Null);
    let notify = notify.as_bytes();
    match ServerMessage::parse(notify.trim_ascii_end()).expect("notify parses") {
        ServerMessage::Notification {
            body: ServerNotification::Notify(j),
            ..
        } => assert_eq!(j.merkle_branch.len(), 12),
        other => panic!("not a notify: {other:?}"),
    }
    g.bench_function("parse_notify_12_branches", |b| {
        b.iter(|| ServerMessage::parse(black_box(notify.trim_ascii_end())))
    });
    // What a harness thread does instead for every miner after the first (loadtest's
    // `parse_pool_line`): compare the line with the last notify it parsed, and copy that job.
    let line = notify.trim_ascii_end();
    let seen: Box<[u8]> = line.into();
    let parsed = ServerMessage::parse(line).expect("notify parses");
    g.bench_function("notify_reused_12_branches", |b| {
        b.iter(|| (*seen == *black_box(line)).then(|| parsed.clone()))
    });
    g.finish();
}

/// Framing one read that holds one whole submit line, as nearly every read on the edge does:
/// through the framer's buffer (`push` + `next_line`), and lent straight from the read (`feed`).
fn bench_framing(c: &mut Criterion) {
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Elements(1));
    let mut read = SUBMIT_LINE.to_vec();
    read.push(b'\n');
    let mut framer = LineFramer::new(DEFAULT_MAX_LINE);
    g.bench_function("submit_push_next_line", |b| {
        b.iter(|| {
            framer.push(black_box(&read));
            let mut bytes = 0;
            while let Some(Ok(line)) = framer.next_line() {
                bytes += black_box(&line[..]).len();
            }
            framer.shrink_if_empty();
            bytes
        })
    });
    g.bench_function("submit_feed", |b| {
        b.iter(|| {
            let mut bytes = 0;
            let _ = framer.feed(black_box(&read), |line| {
                if let Ok(line) = line {
                    bytes += black_box(line).len();
                }
                ControlFlow::Continue(())
            });
            framer.shrink_if_empty();
            bytes
        })
    });
    g.finish();
}

/// One share, end to end after parsing: header rebuild (coinbase midstate, merkle fold), PoW hash,
/// target comparison. The nonce changes every iteration so no step can be hoisted.
fn validate(job: &Job, work: &mut ShareWork, algo: PowAlgorithm, target: &Target) -> bool {
    work.nonce = work.nonce.wrapping_add(1);
    let header = job.header(black_box(work));
    let hash = algo.hash(&header.to_bytes());
    target.is_met_by(&hash)
}

fn bench_share(c: &mut Criterion) {
    let mut g = c.benchmark_group("share");
    g.throughput(Throughput::Elements(1));

    let job = job_with_branches(12);
    let sha_target = Target::from_difficulty(
        Difficulty::new(65536.0).expect("difficulty"),
        Target::SHA256_DIFF1,
    );
    let mut work = share_work();
    g.bench_function("validate_sha256d_12_branches", |b| {
        b.iter(|| validate(&job, &mut work, PowAlgorithm::Sha256d, &sha_target))
    });

    let scrypt_target = Target::from_difficulty(
        Difficulty::new(65536.0).expect("difficulty"),
        Target::SCRYPT_DIFF1,
    );
    let mut work = share_work();
    g.bench_function("validate_scrypt", |b| {
        b.iter(|| validate(&job, &mut work, PowAlgorithm::Scrypt, &scrypt_target))
    });
    g.finish();
}

fn bench_baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Elements(1));

    let params = scrypt::Params::new(10, 1, 1, 32).expect("N=1024 r=1 p=1");
    let mut header = header_80();
    let mut nonce = 0u32;
    g.bench_function("scrypt_crate", |b| {
        b.iter(|| {
            nonce = nonce.wrapping_add(1);
            header[76..80].copy_from_slice(&nonce.to_le_bytes());
            let mut out = [0u8; 32];
            scrypt::scrypt(&header, &header, &params, &mut out).expect("32-byte output");
            black_box(out)
        })
    });

    let mut header = header_80();
    let mut nonce = 0u32;
    g.bench_function("sha256d_80", |b| {
        b.iter(|| {
            nonce = nonce.wrapping_add(1);
            header[76..80].copy_from_slice(&nonce.to_le_bytes());
            // The sha2 crate as any caller would use it, not relay's fixed-size sha256d_80.
            let first = Sha256::digest(black_box(&header));
            black_box(Sha256::digest(first))
        })
    });
    g.finish();
}

/// What the edge uplink does with a batch of accepted shares before it goes on the wire: index
/// jobs, workers and sessions, delta-code the records and encode them. 1,000 shares from 1,000
/// different workers on two jobs, as at 50,000 shares/s with batches of 1,000.
fn bench_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("uplink");
    const SHARES: usize = 1000;
    g.throughput(Throughput::Elements(SHARES as u64));
    let ctx = BatchContext {
        lease_prefix: Extranonce::from_hex("0207").expect("hex"),
        extranonce2_size: 4,
    };
    let jobs = [JobId::new("1f3a9c"), JobId::new("1f3a9d")];
    let shares: Vec<ShareData> = (0..SHARES)
        .map(|i| ShareData {
            worker: format!("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq.rig{i:05}").into(),
            job_id: jobs[i % 7 / 6].clone(),
            extranonce1: Extranonce::from_hex(&format!("0207{:04x}", i)).expect("hex"),
            extranonce2: Extranonce::from_counter(i as u64 * 7919, 4).expect("4 bytes"),
            ntime: 0x6650_d2f1 + (i as u32 % 3),
            nonce: (i as u32).wrapping_mul(2_654_435_761),
            version: 0x2000_0000 | ((i as u32 & 0xff) << 13),
            difficulty: Difficulty::new(65536.0).expect("difficulty"),
            received_at_ms: 1_780_000_000_000 + i as u64 / 50,
            meets_upstream: false,
        })
        .collect();
    let base = JobBase {
        ntime: 0x6650_d2f1,
        version: 0x2000_0000,
    };
    g.bench_function("batch_1000_shares_encode", |b| {
        b.iter(|| {
            let batch = Batch::from_shares(1, 42, black_box(&shares), &ctx, |_| Some(base))
                .expect("a valid batch");
            black_box(batch.to_bytes(&ctx).expect("encodes"))
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_parse,
    bench_framing,
    bench_share,
    bench_baseline,
    bench_batch
);
criterion_main!(benches);
