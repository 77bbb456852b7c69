//! A flood of garbage at the core's QUIC port does not cost the edge its uplink or any share.
//!
//! synthetic-core (the real gateway) ← counting relay ← quarry-edge ← a few miners. While they
//! submit, 24,000 random datagrams hit the gateway's UDP port from a plain socket: a third
//! shaped like QUIC v1 Initial packets (long header, random connection ids, padded to 1,200+
//! bytes, so the server has to derive keys and fail to decrypt), the rest random bytes of
//! random length. The edge's `quarry_edge_uplink_connected` gauge must read 1 at every sample
//! during and after the flood, the core must keep crediting shares during it, and at the end
//! every share a miner heard "accepted" for must be credited exactly once.
//!
//! Needs the binaries: `cargo build --workspace --bins`.

use loadtest::bench_uplink::{
    miner_config, Miners, RigOptions, UplinkRig, CHEAP_DIFFICULTY, HARD_NBITS,
};
use loadtest::exactly_once::compare;
use loadtest::process::find_binary;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const DATAGRAMS: usize = 24_000;

/// A datagram shaped like a QUIC v1 Initial packet (RFC 9000 §17.2.2), with garbage for the
/// protected payload, padded to at least 1,200 bytes as clients must (RFC 9000 §14.1).
fn fake_initial(rng: &mut StdRng) -> Vec<u8> {
    let mut p = Vec::with_capacity(1300);
    // Long header, fixed bit, type Initial (0b00), random packet-number length bits.
    p.push(0xc0 | rng.gen_range(0..4u8));
    p.extend_from_slice(&1u32.to_be_bytes());
    let dcid: [u8; 8] = rng.gen();
    let scid: [u8; 8] = rng.gen();
    p.push(8);
    p.extend_from_slice(&dcid);
    p.push(8);
    p.extend_from_slice(&scid);
    // Token length 0, then a 2-byte varint length covering the rest.
    p.push(0);
    let len = rng.gen_range(1200..1350u16);
    p.extend_from_slice(&(0x4000 | len).to_be_bytes());
    let start = p.len();
    p.resize(start + usize::from(len), 0);
    rng.fill(&mut p[start..]);
    p
}

fn garbage(rng: &mut StdRng) -> Vec<u8> {
    let mut p = vec![0u8; rng.gen_range(1..1500)];
    rng.fill(&mut p[..]);
    p
}

fn flood(target: SocketAddr) -> usize {
    let mut rng = StdRng::seed_from_u64(42);
    let sockets: Vec<UdpSocket> = (0..16)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let mut sent = 0;
    for i in 0..DATAGRAMS {
        let p = if i % 3 == 0 {
            fake_initial(&mut rng)
        } else {
            garbage(&mut rng)
        };
        // A full socket buffer on loopback drops the datagram; that is fine for a flood.
        if sockets[i % sockets.len()].send_to(&p, target).is_ok() {
            sent += 1;
        }
        // About 8,000 datagrams a second: long enough to sample the edge during it.
        if i % 800 == 799 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    sent
}

#[test]
fn garbage_flood_at_the_gateway_keeps_the_edge_connected_and_credits_exact() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
    if find_binary("quarry-edge").is_err() || find_binary("quarry-loadtest").is_err() {
        panic!("build the binaries first: cargo build --workspace --bins");
    }
    let dir = loadtest::stack::fresh_dir("quarry-uplink-flood");
    let mut rig = UplinkRig::start(&RigOptions {
        dir: dir.clone(),
        nbits: HARD_NBITS,
        difficulty: CHEAP_DIFFICULTY,
        job_interval_secs: 30.0,
    })
    .expect("rig");
    let mut cfg = miner_config(rig.edge_stratum, 8, 200.0, CHEAP_DIFFICULTY, None);
    cfg.record_accepted = true;
    let miners = Miners::start(cfg);

    // Shares flowing before the flood.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rig
        .core_metric("quarry_core_shares_credited_total")
        .unwrap_or(0.0)
        < 200.0
    {
        assert!(
            Instant::now() < deadline,
            "no shares credited before the flood"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let credited_before = rig
        .core_metric("quarry_core_shares_credited_total")
        .expect("core metrics");

    let gateway = rig.gateway;
    let flooder = std::thread::spawn(move || flood(gateway));
    let mut samples = 0;
    while !flooder.is_finished() {
        let up = rig
            .edge_metric("quarry_edge_uplink_connected")
            .expect("edge metrics");
        assert_eq!(up, 1.0, "the edge lost its uplink during the flood");
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent = flooder.join().expect("flood thread");
    let credited_after_flood = rig
        .core_metric("quarry_core_shares_credited_total")
        .expect("core metrics");
    assert!(sent >= 20_000, "only {sent} datagrams sent");
    assert!(samples >= 5, "only {samples} samples during the flood");
    assert!(
        credited_after_flood > credited_before + 100.0,
        "shares stopped being credited during the flood: {credited_before} → {credited_after_flood}"
    );
    for _ in 0..10 {
        let up = rig
            .edge_metric("quarry_edge_uplink_connected")
            .expect("edge metrics");
        assert_eq!(up, 1.0, "the edge lost its uplink after the flood");
        std::thread::sleep(Duration::from_millis(200));
    }
    rig.check_alive().expect("edge and core alive");

    let stats = miners.finish().expect("miners ran");
    assert_eq!(stats.shares.rejected, 0, "{:?}", stats.problems);
    rig.settle(Duration::from_secs(20)).expect("settled");
    rig.stop();
    let out = std::process::Command::new(find_binary("quarry-core").expect("quarry-core"))
        .args(["journal-dump", "--dir"])
        .arg(&rig.journal)
        .output()
        .expect("journal-dump");
    assert!(
        out.status.success(),
        "journal-dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let credited: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("journal-dump line"))
        .collect();
    let report = compare(&stats.accepted_ids, &credited);
    assert!(report.accepted > 1000, "{report:?}");
    assert!(report.is_exact(), "{report:?}");
    assert_eq!(report.credited, report.accepted, "{report:?}");
    drop(rig);
    loadtest::stack::remove_dir(&dir);
}
