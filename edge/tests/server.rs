//! The real mio server over real loopback sockets.

use edge::jobs::JobEntry;
use edge::server::{start, ServerConfig};
use edge::session::SessionConfig;
use edge::share::ShareEvent;
use edge::vardiff::VardiffConfig;
use relay::hash::Hash256;
use relay::pow::PowAlgorithm;
use relay::work::{CompactTarget, Difficulty, Extranonce, Job, JobId, PrevHash, ShareWork, Target};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn d(v: f64) -> Difficulty {
    Difficulty::new(v).unwrap()
}

const SHARE_DIFF: f64 = 1.0 / 16_777_216.0;

fn config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        max_connections: 50,
        session: SessionConfig {
            algorithm: PowAlgorithm::Sha256d,
            start_difficulty: d(SHARE_DIFF),
            vardiff: VardiffConfig {
                min: d(1e-12),
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn job(id: u64) -> Arc<JobEntry> {
    Arc::new(JobEntry::new(
        Job::new(
            JobId::from_counter(id),
            PrevHash(Hash256([id as u8; 32])),
            hex::decode("0100000001000000000000000000000000000000000000000000000000000000000000000000ffffffff0f03a0860108").unwrap(),
            hex::decode("ffffffff0100f2052a010000001976a914d23fcdf86f7e756a64a7a9688ef9903327048ed988ac00000000").unwrap(),
            vec![[0x33; 32]; 3],
            0x2000_0000,
            CompactTarget(0x1d00ffff),
            0x6500_0000,
            true,
        ),
        None,
        Instant::now(),
    ))
}

struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
    extranonce1: Extranonce,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).unwrap())
    }
    fn from_stream(s: TcpStream) -> Client {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            extranonce1: Extranonce::default(),
        }
    }
    fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
    }
    fn recv(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    }
    fn recv_until(&mut self, needle: &str) -> String {
        loop {
            let l = self.recv();
            assert!(
                !l.is_empty(),
                "connection closed while waiting for {needle}"
            );
            if l.contains(needle) {
                return l;
            }
        }
    }
    fn login(&mut self) {
        self.send(r#"{"id":1,"method":"mining.subscribe","params":["it/1"]}"#);
        let sub = self.recv_until(r#""id":1"#);
        let v: serde_json::Value = serde_json::from_str(&sub).unwrap();
        self.extranonce1 = Extranonce::from_hex(v["result"][1].as_str().unwrap()).unwrap();
        self.send(r#"{"id":2,"method":"mining.authorize","params":["acct.w","x"]}"#);
        assert_eq!(
            self.recv_until(r#""id":2"#),
            r#"{"id":2,"result":true,"error":null}"#
        );
        self.recv_until("mining.notify");
    }
    /// Subscribes; false when the edge resets or closes the connection instead (full house).
    fn try_login(&mut self) -> bool {
        let line = b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"it/1\"]}\n";
        if self.w.write_all(line).is_err() {
            return false;
        }
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        let v: serde_json::Value = serde_json::from_str(l.trim_end()).unwrap();
        self.extranonce1 = Extranonce::from_hex(v["result"][1].as_str().unwrap()).unwrap();
        self.send(r#"{"id":2,"method":"mining.authorize","params":["acct.w","x"]}"#);
        self.recv_until(r#""id":2,"result":true"#);
        self.recv_until("mining.notify");
        true
    }
}

fn find_share(job: &JobEntry, e1: Extranonce, start: u32) -> u32 {
    let target = Target::from_difficulty(d(SHARE_DIFF), Target::SHA256_DIFF1);
    (start..)
        .find(|&nonce| {
            let w = ShareWork {
                extranonce1: e1,
                extranonce2: Extranonce::from_hex("00000000").unwrap(),
                ntime: job.job.ntime,
                nonce,
                version: job.job.version,
            };
            target.is_met_by(&PowAlgorithm::Sha256d.hash(&job.job.header(&w).to_bytes()))
        })
        .unwrap()
}

#[test]
fn miners_get_distinct_extranonces_and_their_shares_are_validated() {
    let (tx, rx) = crossbeam_channel::unbounded();
    let server = start(config(), tx).unwrap();
    let j = job(1);
    server.publish(j.clone());
    let mut clients: Vec<Client> = (0..6)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut clients {
        c.login();
    }
    let mut e1s: Vec<_> = clients.iter().map(|c| c.extranonce1).collect();
    e1s.sort_by_key(|e| e.to_hex());
    e1s.dedup();
    assert_eq!(e1s.len(), 6, "every connection has its own extranonce1");
    for c in &mut clients {
        let nonce = find_share(&j, c.extranonce1, 0);
        c.send(&format!(
            r#"{{"id":9,"method":"mining.submit","params":["acct.w","1","00000000","65000000","{nonce:08x}"]}}"#
        ));
        assert_eq!(c.recv(), r#"{"id":9,"result":true,"error":null}"#);
        // The same share again is a duplicate.
        c.send(&format!(
            r#"{{"id":10,"method":"mining.submit","params":["acct.w","1","00000000","65000000","{nonce:08x}"]}}"#
        ));
        assert_eq!(
            c.recv(),
            r#"{"id":10,"result":null,"error":[22,"Duplicate share",null]}"#
        );
    }
    let mut accepted = 0;
    while let Ok(ev) = rx.recv_timeout(Duration::from_secs(2)) {
        if let ShareEvent::Accepted(_) = ev {
            accepted += 1;
        }
        if accepted == 6 {
            break;
        }
    }
    assert_eq!(accepted, 6);
    // A new block: shares on job 1 are stale now.
    server.publish(job(2));
    let c = &mut clients[0];
    c.recv_until("mining.notify");
    let nonce = find_share(&j, c.extranonce1, 1_000_000);
    c.send(&format!(
        r#"{{"id":11,"method":"mining.submit","params":["acct.w","1","00000000","65000000","{nonce:08x}"]}}"#
    ));
    assert_eq!(
        c.recv(),
        r#"{"id":11,"result":null,"error":[21,"Stale share",null]}"#
    );
}

#[test]
fn malformed_and_oversized_lines_get_errors_and_the_connection_survives() {
    let (tx, _rx) = crossbeam_channel::unbounded();
    let mut cfg = config();
    cfg.max_line_bytes = 1024;
    let server = start(cfg, tx).unwrap();
    server.publish(job(1));
    let mut c = Client::connect(server.local_addr());
    c.send("{\"id\":1,\"method\":");
    assert!(c
        .recv()
        .starts_with(r#"{"id":null,"result":null,"error":[20,"Malformed request"#));
    let big = "x".repeat(5000);
    c.send(&big);
    assert!(c.recv().starts_with(
        r#"{"id":null,"result":null,"error":[20,"line longer than the 1024-byte limit"#
    ));
    c.send("\u{0}\u{1}\u{2}garbage");
    assert!(c.recv().contains("[20,"));
    c.login();
}

#[test]
fn connections_over_the_limit_are_refused_at_once_and_the_served_ones_keep_working() {
    let (tx, _rx) = crossbeam_channel::unbounded();
    let mut cfg = config();
    cfg.max_connections = 3;
    let server = start(cfg, tx).unwrap();
    let j = job(1);
    server.publish(j.clone());
    let mut served: Vec<Client> = (0..3)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut served {
        c.login();
    }
    for _ in 0..5 {
        assert_refused(server.local_addr());
    }
    // A miner leaves: the door opens again and the next one is served, then it closes again.
    drop(served.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut newcomer = loop {
        match TcpStream::connect(server.local_addr()) {
            Ok(s) => {
                let mut c = Client::from_stream(s);
                if c.try_login() {
                    break c;
                }
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        }
        assert!(Instant::now() < deadline, "the door never opened again");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_refused(server.local_addr());
    let nonce = find_share(&j, newcomer.extranonce1, 0);
    newcomer.send(&format!(
        r#"{{"id":9,"method":"mining.submit","params":["acct.w","1","00000000","65000000","{nonce:08x}"]}}"#
    ));
    assert_eq!(newcomer.recv(), r#"{"id":9,"result":true,"error":null}"#);
    let c = &mut served[0];
    let nonce = find_share(&j, c.extranonce1, 0);
    c.send(&format!(
        r#"{{"id":9,"method":"mining.submit","params":["acct.w","1","00000000","65000000","{nonce:08x}"]}}"#
    ));
    assert_eq!(c.recv(), r#"{"id":9,"result":true,"error":null}"#);
    assert_eq!(server.connected(), 3);
}

/// At full house the edge stops listening: the connect itself is refused by the kernel. A
/// connection the acceptor took just before the door closed is reset instead. Either way
/// within moments, never left waiting.
fn assert_refused(addr: std::net::SocketAddr) {
    let t = Instant::now();
    let mut extra = match TcpStream::connect(addr) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            assert!(t.elapsed() < Duration::from_secs(1));
            return;
        }
        Err(e) => panic!("connect failed with {e}, not a refusal"),
        Ok(s) => s,
    };
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = extra.write_all(b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n");
    let mut buf = [0u8; 256];
    match std::io::Read::read(&mut extra, &mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("refused connection must be closed, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(4));
}

/// A wave of hang-ups is closed a slice per loop turn: every one is forgotten (its slot and
/// its place under the limit come back) and the miner who stayed keeps being answered.
#[test]
fn a_wave_of_disconnects_is_closed_in_slices_and_the_survivor_keeps_working() {
    let (tx, _rx) = crossbeam_channel::unbounded();
    let mut cfg = config();
    cfg.max_connections = 1_000;
    let server = start(cfg, tx).unwrap();
    let j = job(1);
    server.publish(j.clone());
    let mut survivor = Client::connect(server.local_addr());
    survivor.login();
    let wave: Vec<TcpStream> = (0..900)
        .map(|_| TcpStream::connect(server.local_addr()).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    wait_for(
        deadline,
        || server.connected() == 901,
        || format!("{} connected", server.connected()),
    );
    drop(wave);
    let nonce = find_share(&j, survivor.extranonce1, 0);
    survivor.send(&format!(
        r#"{{"id":9,"method":"mining.submit","params":["acct.w","1","00000000","65000000","{nonce:08x}"]}}"#
    ));
    assert_eq!(survivor.recv(), r#"{"id":9,"result":true,"error":null}"#);
    wait_for(
        deadline,
        || server.connected() == 1,
        || format!("{} still connected", server.connected()),
    );
    // Their slots are free again: the house fills up to the limit once more.
    let again: Vec<TcpStream> = (0..999)
        .map(|_| TcpStream::connect(server.local_addr()).unwrap())
        .collect();
    wait_for(
        deadline,
        || server.connected() == 1_000,
        || format!("{} connected", server.connected()),
    );
    drop(again);
}

fn wait_for(deadline: Instant, done: impl Fn() -> bool, state: impl Fn() -> String) {
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {}", state());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Real-time connectors gather submits between turns and send a broadcast in gathered slices:
/// every miner still gets its answers and every job. (Where the process may not run real-time,
/// the connectors stay fair-scheduled and this checks that fallback instead.)
#[test]
fn real_time_connectors_answer_every_miner_and_send_every_job() {
    let (tx, rx) = crossbeam_channel::unbounded();
    let server = start(
        ServerConfig {
            realtime_priority: Some(5),
            realtime_gather: Duration::from_micros(500),
            ..config()
        },
        tx,
    )
    .unwrap();
    let j = job(1);
    server.publish(j.clone());
    let mut clients: Vec<Client> = (0..40)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut clients {
        c.login();
    }
    // All submits out before any answer is read, so turns find several ready sockets.
    let nonces: Vec<u32> = clients
        .iter()
        .map(|c| find_share(&j, c.extranonce1, 0))
        .collect();
    for (c, nonce) in clients.iter_mut().zip(&nonces) {
        c.send(&format!(
            r#"{{"id":9,"method":"mining.submit","params":["acct.w","1","00000000","65000000","{nonce:08x}"]}}"#
        ));
    }
    for c in &mut clients {
        assert_eq!(c.recv(), r#"{"id":9,"result":true,"error":null}"#);
    }
    let mut accepted = 0;
    while accepted < clients.len() {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(ShareEvent::Accepted(_)) => accepted += 1,
            Ok(_) => {}
            Err(e) => panic!("{accepted} of {} shares handed on: {e}", clients.len()),
        }
    }
    server.publish(job(2));
    for c in &mut clients {
        c.recv_until("mining.notify");
    }
}
