//! End to end against real litecoind: the job manager's jobs, mined here with real scrypt, become
//! blocks the daemon accepts, before and inside the MWEB era's steady state.
//!
//! Needs `litecoind` on PATH (or `$LITECOIND`); Debian's `litecoind` package provides it.

use core_pool::daemon::RpcClient;
use core_pool::jobs::{
    BlockCandidate, BlockVerdict, JobManager, JobManagerConfig, PoolJob, SubmitError,
};
use core_pool::regtest::{RegtestNet, MWEB_ACTIVATION_HEIGHT};
use crossbeam_channel::Receiver;
use relay::work::{Extranonce, JobId, ShareWork};
use relay::PowAlgorithm;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POOL_TAG: &str = "/quarry-test/";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
}

/// The first job for `height` that arrives within 30 s and satisfies `want`.
fn job_where(
    jobs: &Receiver<Arc<PoolJob>>,
    height: u64,
    want: impl Fn(&PoolJob) -> bool,
) -> Arc<PoolJob> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let job = jobs
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no suitable job for height {height} within 30 s: {e}"));
        if job.height == height && want(&job) {
            return job;
        }
    }
}

/// Grinds nonces with scrypt until the header meets the job's network target.
fn mine(job: &PoolJob, e1: Extranonce, e2: Extranonce) -> (Vec<u8>, [u8; 80]) {
    for nonce in 0..10_000u32 {
        let work = ShareWork {
            extranonce1: e1,
            extranonce2: e2,
            ntime: job.job.ntime,
            nonce,
            version: job.job.version,
        };
        let header = job.job.header(&work).to_bytes();
        if job
            .network_target
            .is_met_by(&PowAlgorithm::Scrypt.hash(&header))
        {
            return (job.job.coinbase(&e1, &e2), header);
        }
    }
    panic!("no nonce below 10000 meets the regtest target; about half of all hashes should");
}

/// Mines `job` with extranonces derived from `i`, submits it, checks the chain took it and the
/// coinbase pays the pool and carries its tag; returns `getblock <hash> 2`.
fn mine_submit_and_check(
    net: &RegtestNet,
    manager: &JobManager,
    rpc: &RpcClient,
    job: &PoolJob,
    i: u64,
) -> Value {
    let height = job.height;
    let e1 = Extranonce::from_slice(&[0xe1, 0, 0, i as u8]).expect("e1");
    let e2 = Extranonce::from_counter(i, 4).expect("e2");
    let (coinbase, header) = mine(job, e1, e2);
    let outcome = manager
        .submit_block(BlockCandidate {
            job_id: job.job.id.clone(),
            coinbase,
            header,
        })
        .expect("submitted");
    assert!(
        outcome.is_accepted(),
        "block {height} rejected: {:?}",
        outcome.verdict
    );
    assert_eq!(outcome.height, height);

    let count: u64 = rpc.call("getblockcount", &[]).expect("count");
    assert_eq!(count, height, "the chain grew by our block");
    let best: String = rpc.call("getbestblockhash", &[]).expect("best");
    assert_eq!(best, outcome.block_hash.to_display_hex());

    let block: Value = rpc
        .call("getblock", &[json!(best), json!(2)])
        .expect("getblock");
    let txs = block["tx"].as_array().expect("tx array");
    assert_eq!(
        txs.len(),
        1 + job.template.as_ref().unwrap().transactions.len()
    );
    let cb = &txs[0];
    let script_sig = cb["vin"][0]["coinbase"]
        .as_str()
        .expect("coinbase scriptSig");
    assert!(
        script_sig.contains(&hex::encode(POOL_TAG)),
        "scriptSig {script_sig} lacks the pool tag"
    );
    assert!(
        script_sig.contains(&hex::encode(e1.as_bytes())),
        "scriptSig {script_sig} lacks extranonce1"
    );
    let payout: Value = rpc
        .call("validateaddress", &[json!(net.payout_address())])
        .expect("validateaddress");
    let out0 = &cb["vout"][0]["scriptPubKey"];
    assert_eq!(out0["hex"], payout["scriptPubKey"]);
    let paid_to = out0["address"]
        .as_str()
        .or_else(|| out0["addresses"][0].as_str())
        .expect("payout output has an address");
    assert_eq!(paid_to, net.payout_address());
    block
}

/// Candidates that are not blocks: caught before the daemon when they do not match their job,
/// and answered with the daemon's reason when only the proof of work is short.
fn bad_candidates_are_refused_or_rejected(manager: &JobManager, job: &PoolJob) {
    let e1 = Extranonce::from_hex("eeeeeeee").expect("e1");
    let e2 = Extranonce::from_hex("00000000").expect("e2");
    let (coinbase, header) = mine(job, e1, e2);

    let err = manager
        .submit_block(BlockCandidate {
            job_id: JobId::new("no-such-job"),
            coinbase: coinbase.clone(),
            header,
        })
        .expect_err("unknown job");
    assert!(matches!(err, SubmitError::UnknownJob { .. }), "{err}");

    let mut tampered = coinbase.clone();
    let last = tampered.len() - 5; // inside the last output's script, before the locktime
    tampered[last] ^= 1;
    let err = manager
        .submit_block(BlockCandidate {
            job_id: job.job.id.clone(),
            coinbase: tampered,
            header,
        })
        .expect_err("tampered coinbase");
    assert!(matches!(err, SubmitError::MerkleMismatch { .. }), "{err}");

    // A nonce whose scrypt hash misses the target: a well-formed block the daemon refuses.
    let weak = (0..10_000u32)
        .map(|nonce| {
            let mut h = header;
            h[76..80].copy_from_slice(&nonce.to_le_bytes());
            h
        })
        .find(|h| !job.network_target.is_met_by(&PowAlgorithm::Scrypt.hash(h)))
        .expect("about half of all hashes miss the regtest target");
    let outcome = manager
        .submit_block(BlockCandidate {
            job_id: job.job.id.clone(),
            coinbase,
            header: weak,
        })
        .expect("submitted");
    assert_eq!(
        outcome.verdict,
        BlockVerdict::Rejected {
            reason: "high-hash".into()
        }
    );
}

fn has_mweb(block: &Value) -> bool {
    block.get("mweb").is_some_and(|m| !m.is_null())
}

fn manager_for(net: &RegtestNet) -> JobManager {
    let mut config = JobManagerConfig::new(net.payout_address(), POOL_TAG);
    config.poll_interval = Duration::from_millis(200);
    config.tx_update_interval = Duration::ZERO;
    JobManager::start(net.daemon_pool(), config).expect("job manager")
}

#[test]
fn mined_jobs_become_accepted_blocks_paying_the_pool_with_mweb_active() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = RegtestNet::start(dir.path()).expect("regtest network");
    eprintln!("regtest startup to MWEB: {:?}", net.startup_time());
    let rpc: RpcClient = net.rpc_client();

    // A wallet transaction in the mempool, so a block has a real merkle branch (coinbase,
    // payment, HogEx) and not just the HogEx.
    let to: String = rpc
        .call("getnewaddress", &[json!("other"), json!("bech32")])
        .expect("address");
    let _: String = rpc
        .call("sendtoaddress", &[json!(to), json!(2.5)])
        .expect("wallet payment");

    let manager = manager_for(&net);
    let jobs = manager.subscribe();
    let start_height: u64 = rpc.call("getblockcount", &[]).expect("height");
    assert!(start_height >= MWEB_ACTIVATION_HEIGHT);

    let mut saw_payment = false;
    for i in 0..3u64 {
        let height = start_height + 1 + i;
        let job = job_where(&jobs, height, |_| true);
        assert!(
            job.template.as_ref().unwrap().mweb.is_some(),
            "template at {height} has no mweb"
        );
        assert!(
            job.template.as_ref().unwrap().has_hogex(),
            "template at {height} does not end with a HogEx"
        );
        // litecoind reuses its last template for 5 s unless the tip changes, so the payment
        // shows up in the first job or in the next block's.
        saw_payment |= job.template.as_ref().unwrap().transactions.len() >= 2;
        if i == 0 {
            bad_candidates_are_refused_or_rejected(&manager, &job);
        }
        let block = mine_submit_and_check(&net, &manager, &rpc, &job, i);
        assert!(has_mweb(&block), "block {height} carries no MWEB data");
    }
    assert!(
        saw_payment,
        "no block carried the wallet payment besides the HogEx"
    );
    manager.stop();
}

#[test]
fn pool_mines_the_last_pre_mweb_block_and_the_activation_block() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let net = RegtestNet::start_before_mweb(dir.path()).expect("regtest network");
    let rpc: RpcClient = net.rpc_client();
    let manager = manager_for(&net);
    let jobs = manager.subscribe();

    let last_plain = MWEB_ACTIVATION_HEIGHT - 1;
    let job = job_where(&jobs, last_plain, |_| true);
    assert!(
        job.template.as_ref().unwrap().mweb.is_none(),
        "MWEB data before activation"
    );
    assert!(!job.template.as_ref().unwrap().has_hogex());
    let block = mine_submit_and_check(&net, &manager, &rpc, &job, 0);
    assert!(!has_mweb(&block));

    // The activation block needs a peg-in; litecoind takes it into the mempool only now.
    net.peg_in(1.0).expect("peg-in");
    let job = job_where(&jobs, MWEB_ACTIVATION_HEIGHT, |j| {
        j.template.as_ref().is_some_and(|t| t.has_hogex())
    });
    assert!(job.template.as_ref().unwrap().mweb.is_some());
    let block = mine_submit_and_check(&net, &manager, &rpc, &job, 1);
    assert!(has_mweb(&block), "activation block carries no MWEB data");
    let info: Value = rpc.call("getblockchaininfo", &[]).expect("chain info");
    assert_eq!(info["softforks"]["mweb"]["active"], true);

    let job = job_where(&jobs, MWEB_ACTIVATION_HEIGHT + 1, |_| true);
    assert!(job.template.as_ref().unwrap().has_hogex());
    let block = mine_submit_and_check(&net, &manager, &rpc, &job, 2);
    assert!(has_mweb(&block));
    manager.stop();
}
