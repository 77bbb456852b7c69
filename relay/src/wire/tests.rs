use super::*;
use crate::work::{
    CompactTarget, Difficulty, Extranonce, Job, JobId, PrevHash, Target, VersionMask,
};
use crate::Hash256;
use bytes::BytesMut;
use proptest::prelude::*;
use std::sync::Arc;

fn ctx() -> BatchContext {
    BatchContext {
        lease_prefix: Extranonce::from_hex("0207").unwrap(),
        extranonce2_size: 4,
    }
}

/// Ten workers, two jobs, one difficulty, 100 shares received over ~1 s: what a small farm's edge
/// sends. A third of the miners roll the version (BIP310), the rest do not.
fn realistic_shares(n: usize) -> (Vec<ShareData>, impl Fn(&JobId) -> Option<JobBase>) {
    let workers: Vec<Arc<str>> = (0..10)
        .map(|i| Arc::from(format!("farm{}.rig{:02}", i % 3, i).as_str()))
        .collect();
    let jobs = [
        (JobId::new("6a1f"), 1_700_000_000u32),
        (JobId::new("6a20"), 1_700_000_030u32),
    ];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut e2_counters = [0u32; 10];
    let mut t = 1_700_000_031_000u64;
    let shares = (0..n)
        .map(|i| {
            let w = (next() % 10) as usize;
            let (job_id, job_ntime) = jobs[usize::from(i >= n / 3)].clone();
            e2_counters[w] += 1 + (next() % 50) as u32;
            t += next() % 20;
            let rolls = [true, false, false][w % 3];
            let version = if rolls {
                0x2000_0000 | ((next() as u32) & 0x1fff_e000)
            } else {
                0x2000_0000
            };
            ShareData {
                worker: workers[w].clone(),
                job_id,
                extranonce1: Extranonce::from_hex(&format!("0207{:04x}", 0x100 + w)).unwrap(),
                extranonce2: Extranonce::from_counter(u64::from(e2_counters[w]), 4).unwrap(),
                ntime: job_ntime + (next() % 40) as u32,
                nonce: next() as u32,
                version,
                difficulty: Difficulty::new(65536.0).unwrap(),
                received_at_ms: t,
                meets_upstream: next() % 50 == 0,
            }
        })
        .collect();
    let base = move |id: &JobId| {
        jobs.iter()
            .find(|(j, _)| j == id)
            .map(|(_, ntime)| JobBase {
                ntime: *ntime,
                version: 0x2000_0000,
            })
    };
    (shares, base)
}

#[test]
fn a_100_share_batch_fits_18_bytes_per_share_and_24_on_the_wire() {
    let (shares, base) = realistic_shares(100);
    let mut b = BatchBuilder::new(ctx());
    for s in shares.clone() {
        b.push(s).unwrap();
    }
    let bytes = b.finish(3, 41, base).unwrap();
    let payload = bytes.len() as f64 / 100.0;
    let wire = estimated_wire_bytes(bytes.len()) as f64 / 100.0;
    println!(
        "100-share batch: {} bytes payload = {payload:.2} B/share; estimated on the wire {} bytes = {wire:.2} B/share",
        bytes.len(),
        estimated_wire_bytes(bytes.len())
    );
    assert!(payload <= 18.0, "{payload} bytes per share");
    assert!(wire <= 24.0, "{wire} bytes per share on the wire");
    let batch = Batch::decode(&bytes, &ctx()).unwrap();
    assert_eq!((batch.epoch, batch.seq), (3, 41));
    assert_eq!(batch.shares(&ctx()).unwrap(), shares);
    assert!(b.is_empty());
}

#[test]
fn estimated_wire_bytes_counts_packets_and_stream_cost() {
    assert_eq!(estimated_wire_bytes(0), 60 + 30);
    assert_eq!(estimated_wire_bytes(1168), 1168 + 60 + 30);
    assert_eq!(estimated_wire_bytes(1169), 1169 + 120 + 30);
}

#[test]
fn a_share_from_another_lease_is_refused_at_push_naming_the_prefix() {
    let (mut shares, _) = realistic_shares(1);
    shares[0].extranonce1 = Extranonce::from_hex("09090001").unwrap();
    let mut b = BatchBuilder::new(ctx());
    let rejected = b.push(shares[0].clone()).unwrap_err();
    assert!(matches!(rejected.error, PushError::Invalid(_)));
    assert!(
        rejected.error.to_string().contains("lease prefix 0207"),
        "{}",
        rejected.error
    );
    assert_eq!(*rejected.share, shares[0]);
    assert!(b.is_empty());
}

#[test]
fn a_third_difficulty_past_the_table_cap_reports_full() {
    let (shares, _) = realistic_shares(1);
    let mut b = BatchBuilder::new(ctx());
    for i in 0..MAX_BATCH_DIFFICULTIES {
        let mut s = shares[0].clone();
        s.difficulty = Difficulty::new(1.0 + i as f64).unwrap();
        b.push(s).unwrap();
    }
    let mut s = shares[0].clone();
    s.difficulty = Difficulty::new(1e9).unwrap();
    let rejected = b.push(s).unwrap_err();
    assert!(
        matches!(rejected.error, PushError::Full(_)),
        "{:?}",
        rejected.error
    );
    // What is held still encodes.
    let bytes = b.finish(0, 0, |_| None).unwrap();
    assert_eq!(
        Batch::decode(&bytes, &ctx()).unwrap().difficulties.len(),
        MAX_BATCH_DIFFICULTIES
    );
}

#[test]
fn a_batch_near_the_frame_cap_still_encodes_under_it() {
    let wide = BatchContext {
        lease_prefix: Extranonce::default(),
        extranonce2_size: 16,
    };
    let mut b = BatchBuilder::new(wide);
    let mut n = 0u64;
    loop {
        let s = ShareData {
            worker: Arc::from(format!("w{}", n % 5000).as_str()),
            job_id: JobId::from_counter(n % 200),
            extranonce1: Extranonce::from_counter(n, 16).unwrap(),
            extranonce2: Extranonce::from_counter(n, 16).unwrap(),
            ntime: u32::MAX - (n as u32),
            nonce: n as u32,
            version: !(n as u32),
            difficulty: Difficulty::new(1.0 + (n % 200) as f64).unwrap(),
            received_at_ms: u64::MAX - n * 1_000_000,
            meets_upstream: n & 1 == 0,
        };
        match b.push(s) {
            Ok(()) => n += 1,
            Err(r) => {
                assert!(matches!(r.error, PushError::Full(_)), "{:?}", r.error);
                break;
            }
        }
    }
    let shares = b.shares().to_vec();
    let bytes = b.finish(1, 2, |_| None).unwrap();
    assert!(bytes.len() <= MAX_FRAME_LEN);
    assert!(
        bytes.len() > MAX_FRAME_LEN / 2,
        "{} bytes for {n} shares",
        bytes.len()
    );
    assert_eq!(
        Batch::decode(&bytes, &wide).unwrap().shares(&wide).unwrap(),
        shares
    );
}

#[test]
fn truncated_batches_name_the_field_that_was_cut() {
    let (shares, base) = realistic_shares(5);
    let batch = Batch::from_shares(1, 1, &shares, &ctx(), base).unwrap();
    let bytes = batch.to_bytes(&ctx()).unwrap();
    for cut in 0..bytes.len() {
        let err = Batch::decode(&bytes[..cut], &ctx()).unwrap_err();
        assert!(!err.to_string().is_empty());
    }
    let err = Batch::decode(&bytes[..bytes.len() - 3], &ctx()).unwrap_err();
    assert!(err.to_string().starts_with("batch record 4:"), "{err}");
}

#[test]
fn oversized_control_frame_is_refused_from_its_length_alone() {
    let mut buf = BytesMut::from(&((MAX_FRAME_LEN + 1) as u32).to_le_bytes()[..]);
    let err = ControlFrame::take_from(&mut buf).unwrap_err();
    assert!(matches!(err, WireError::TooLarge { .. }), "{err}");
}

#[test]
fn take_from_waits_for_a_whole_frame_then_yields_each_in_turn() {
    let mut all = BytesMut::new();
    ControlFrame::Ping { nonce: 7 }.encode(&mut all).unwrap();
    ControlFrame::Ack(Ack {
        epoch: 1,
        through_seq: 9,
    })
    .encode(&mut all)
    .unwrap();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in all.iter() {
        buf.extend_from_slice(&[*b]);
        if let Some(f) = ControlFrame::take_from(&mut buf).unwrap() {
            got.push(f);
        }
    }
    assert_eq!(
        got,
        vec![
            ControlFrame::Ping { nonce: 7 },
            ControlFrame::Ack(Ack {
                epoch: 1,
                through_seq: 9
            })
        ]
    );
    assert!(buf.is_empty());
}

fn sample_job_frame(version_mask: Option<VersionMask>) -> ControlFrame {
    ControlFrame::Job(Box::new(JobMsg {
        job: Job::new(
            JobId::new("6a1f"),
            PrevHash(Hash256([7; 32])),
            vec![1, 2, 3],
            vec![4, 5],
            vec![[9; 32]],
            0x2000_0000,
            CompactTarget(0x1d00_ffff),
            1_700_000_000,
            true,
        ),
        upstream_target: Some(Target::MAX),
        version_mask,
    }))
}

#[test]
fn a_job_carries_the_upstreams_version_mask_as_its_last_field() {
    let with = sample_job_frame(Some(VersionMask(0x00ff_e000)))
        .to_bytes()
        .unwrap();
    let without = sample_job_frame(None).to_bytes().unwrap();
    // Tag byte plus the mask, little-endian, at the very end.
    assert_eq!(with.len(), without.len() + 4);
    assert_eq!(&with[with.len() - 5..], &[1, 0x00, 0xe0, 0xff, 0x00]);
    assert_eq!(without[without.len() - 1], 0);
    assert_eq!(
        ControlFrame::decode(&with).unwrap(),
        sample_job_frame(Some(VersionMask(0x00ff_e000)))
    );
}

#[test]
fn a_job_from_a_core_without_the_mask_field_reads_as_no_mask() {
    let new = sample_job_frame(None).to_bytes().unwrap();
    // The frame as older cores sent it: no mask tag at the end, length prefix one less.
    let mut old = BytesMut::from(&new[..new.len() - 1]);
    let len = (old.len() - 4) as u32;
    old[..4].copy_from_slice(&len.to_le_bytes());
    assert_eq!(ControlFrame::decode(&old).unwrap(), sample_job_frame(None));
    // A tag that promises a mask must deliver it.
    let mut cut = BytesMut::from(&new[..]);
    let last = cut.len() - 1;
    cut[last] = 1;
    let e = ControlFrame::decode(&cut).unwrap_err().to_string();
    assert!(e.contains("job.version_mask"), "{e}");
}

#[test]
fn edge_ids_refuse_separators_and_overlong_names() {
    assert!(EdgeId::new("farm-3.rack:7").is_ok());
    assert!(EdgeId::new("").is_err());
    assert!(EdgeId::new("a b").is_err());
    assert!(EdgeId::new("x".repeat(65)).is_err());
}

// ---- strategies ----

fn extranonce(max: usize) -> impl Strategy<Value = Extranonce> {
    prop::collection::vec(any::<u8>(), 0..=max).prop_map(|b| Extranonce::from_slice(&b).unwrap())
}

fn job_id() -> impl Strategy<Value = JobId> {
    "[0-9a-zA-Z_-]{0,24}".prop_map(|s| JobId::new(&s))
}

fn job() -> impl Strategy<Value = Job> {
    (
        job_id(),
        any::<[u8; 32]>(),
        prop::collection::vec(any::<u8>(), 0..200),
        prop::collection::vec(any::<u8>(), 0..200),
        prop::collection::vec(any::<[u8; 32]>(), 0..=MAX_MERKLE_BRANCH),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(|(id, prev, c1, c2, branch, version, nbits, ntime, clean)| {
            Job::new(
                id,
                PrevHash(Hash256(prev)),
                c1,
                c2,
                branch,
                version,
                CompactTarget(nbits),
                ntime,
                clean,
            )
        })
}

fn control_frame() -> impl Strategy<Value = ControlFrame> {
    prop_oneof![
        (
            any::<u16>(),
            "[a-zA-Z0-9._:-]{1,64}",
            "\\PC{0,40}",
            prop::option::of((any::<u64>(), any::<u64>()))
        )
            .prop_map(|(v, id, sw, resume)| ControlFrame::Hello(Hello {
                protocol_version: v,
                edge_id: EdgeId::new(id).unwrap(),
                software: sw,
                resume: resume.map(|(epoch, next_seq)| ResumeState { epoch, next_seq }),
            })),
        (
            any::<u8>(),
            extranonce(16),
            0u8..=16,
            any::<u64>(),
            prop::option::of(any::<u64>()),
            0u16..=1000,
            1u16..,
            any::<u32>()
        )
            .prop_map(|(shard, lease, e2, epoch, acked, audit, mbs, delay)| {
                ControlFrame::Welcome(Welcome {
                    shard_id: shard,
                    lease_prefix: lease,
                    extranonce2_size: e2,
                    epoch,
                    acked_through: acked,
                    policies: Policies {
                        audit_per_mille: audit,
                        max_batch_shares: mbs,
                        max_batch_delay_ms: delay,
                    },
                })
            }),
        (
            job(),
            prop::option::of(any::<[u8; 32]>()),
            prop::option::of(any::<u32>())
        )
            .prop_map(|(job, t, mask)| {
                ControlFrame::Job(Box::new(JobMsg {
                    job,
                    upstream_target: t.map(Target::from_le_bytes),
                    version_mask: mask.map(VersionMask),
                }))
            }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(epoch, through_seq)| ControlFrame::Ack(Ack { epoch, through_seq })),
        any::<u64>().prop_map(|nonce| ControlFrame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| ControlFrame::Pong { nonce }),
        (any::<u16>(), "\\PC{0,100}")
            .prop_map(|(code, message)| ControlFrame::Error(ErrorFrame { code, message })),
    ]
}

fn batch_ctx() -> impl Strategy<Value = BatchContext> {
    (extranonce(8), 0u8..=8).prop_map(|(lease_prefix, extranonce2_size)| BatchContext {
        lease_prefix,
        extranonce2_size,
    })
}

/// Shares valid for `ctx`, drawn from small pools of workers, jobs and difficulties so tables
/// get reused, with times and versions anywhere in their ranges.
fn shares_for(ctx: BatchContext) -> impl Strategy<Value = Vec<ShareData>> {
    let slot_max = 16 - ctx.lease_prefix.len();
    let e2 = ctx.extranonce2_size as usize;
    let share = (
        prop::sample::select(vec!["a.1", "a.2", "bob.rig", "", "x.y.z"]),
        prop::sample::select(vec!["1", "2", "ff", "upstream-job-77"]),
        extranonce(slot_max.min(4)),
        prop::collection::vec(any::<u8>(), e2),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        prop::sample::select(vec![1.0, 0.001, 65536.0, 1e12]),
        prop_oneof![0u64..1_000_000, Just(u64::MAX), any::<u64>()],
        any::<bool>(),
    )
        .prop_map(
            move |(w, j, slot, e2, ntime, nonce, version, d, t, up)| ShareData {
                worker: Arc::from(w),
                job_id: JobId::new(j),
                extranonce1: ctx.lease_prefix.concat(&slot).unwrap(),
                extranonce2: Extranonce::from_slice(&e2).unwrap(),
                ntime,
                nonce,
                version,
                difficulty: Difficulty::new(d).unwrap(),
                received_at_ms: t,
                meets_upstream: up,
            },
        );
    prop::collection::vec(share, 0..60)
}

fn block() -> impl Strategy<Value = BlockFound> {
    (
        any::<u64>(),
        any::<u64>(),
        batch_ctx().prop_flat_map(shares_for),
        prop::collection::vec(any::<u8>(), 80),
        prop::collection::vec(any::<u8>(), 0..400),
        extranonce(16),
    )
        .prop_filter_map(
            "needs a share",
            |(epoch, seq, shares, header, coinbase, e1)| {
                let mut share = shares.into_iter().next()?;
                share.extranonce1 = e1;
                let mut h = [0u8; 80];
                h.copy_from_slice(&header);
                Some(BlockFound {
                    epoch,
                    seq,
                    share,
                    header: h,
                    coinbase,
                })
            },
        )
}

proptest! {
    #[test]
    fn control_frames_roundtrip(frame in control_frame()) {
        let bytes = frame.to_bytes().unwrap();
        prop_assert_eq!(&ControlFrame::decode(&bytes).unwrap(), &frame);
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(ControlFrame::take_from(&mut buf).unwrap(), Some(frame));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn batches_roundtrip_share_for_share(
        (ctx, shares) in batch_ctx().prop_flat_map(|c| (Just(c), shares_for(c))),
        epoch in any::<u64>(),
        seq in any::<u64>(),
        use_bases in any::<bool>(),
    ) {
        let mut b = BatchBuilder::new(ctx);
        for s in shares.clone() {
            prop_assert!(b.push(s).is_ok());
        }
        let batch = b
            .build(epoch, seq, |id| use_bases.then(|| JobBase { ntime: id.as_str().len() as u32, version: 0x2000_0000 }))
            .unwrap();
        let bytes = batch.to_bytes(&ctx).unwrap();
        let decoded = Batch::decode(&bytes, &ctx).unwrap();
        prop_assert_eq!(&decoded, &batch);
        prop_assert_eq!(decoded.shares(&ctx).unwrap(), shares);
        // The encoding of a decoded batch is the same bytes: one encoding per batch.
        prop_assert_eq!(decoded.to_bytes(&ctx).unwrap(), bytes.clone());
        match UniMessage::decode(&bytes, &ctx).unwrap() {
            UniMessage::Batch(b) => prop_assert_eq!(b, batch),
            other => prop_assert!(false, "decoded as {:?}", other),
        }
    }

    #[test]
    fn block_candidates_roundtrip(block in block()) {
        let bytes = block.to_bytes().unwrap();
        prop_assert_eq!(&BlockFound::decode(&bytes).unwrap(), &block);
        let any_ctx = ctx();
        prop_assert_eq!(
            UniMessage::decode(&bytes, &any_ctx).unwrap(),
            UniMessage::Block(Box::new(block))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        ctx in batch_ctx(),
    ) {
        let _ = ControlFrame::decode(&bytes);
        let _ = ControlFrame::decode_payload(&bytes);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = ControlFrame::take_from(&mut buf) {}
        if let Ok(b) = Batch::decode(&bytes, &ctx) {
            let _ = b.shares(&ctx);
        }
        let _ = BlockFound::decode(&bytes);
        let _ = UniMessage::decode(&bytes, &ctx);
    }

    /// Random bytes rarely get past the first fields; mutating valid messages reaches deep into
    /// every decoder.
    #[test]
    fn mutated_valid_messages_never_panic_and_reencode_when_accepted(
        (ctx, shares) in batch_ctx().prop_flat_map(|c| (Just(c), shares_for(c))),
        frame in control_frame(),
        block in block(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let batch = Batch::from_shares(1, 2, &shares, &ctx, |_| None).unwrap().to_bytes(&ctx).unwrap();
        let control = frame.to_bytes().unwrap();
        let block = block.to_bytes().unwrap();
        for original in [batch, control, block] {
            let mut m = original.to_vec();
            for (i, v) in &flips {
                let i = i.index(m.len());
                m[i] ^= v;
            }
            let truncated = &m[..cut.index(m.len() + 1)];
            for input in [&m[..], truncated] {
                if let Ok(b) = Batch::decode(input, &ctx) {
                    let _ = b.shares(&ctx);
                    prop_assert!(b.to_bytes(&ctx).is_ok());
                }
                if let Ok(f) = ControlFrame::decode(input) {
                    prop_assert!(f.to_bytes().is_ok());
                }
                if let Ok(b) = BlockFound::decode(input) {
                    prop_assert_eq!(&b.to_bytes().unwrap()[..], input);
                }
            }
        }
    }
}
